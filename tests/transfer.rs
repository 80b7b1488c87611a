//! `tenantry export` and `tenantry import` against real `serve` processes: a tenant's
//! documents go out of one server (embedded store, Collection isolation) and into another
//! (its own data folder, Partition isolation) with the same texts, titles, metadata and
//! answers; a second import skips everything; bad lines are reported without stopping the
//! rest; an import killed halfway resumes.
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::server::{Dirs, Server, Start};
use serde_json::{Value, json};

fn tenantry(server: &Server, token: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
    cmd.env("TENANTRY_TENANT_URL", format!("http://{}", server.addr))
        .env("TENANTRY_TOKEN", token)
        .env_remove("TENANTRY_NO_PROGRESS");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run tenantry")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// Every document of the tenant, by id, as `GET /v1/documents/{id}` returns it.
async fn documents(server: &Server, token: &str) -> BTreeMap<String, Value> {
    let (s, list) = server.get("/v1/documents?limit=500", token).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let mut out = BTreeMap::new();
    for d in list["documents"].as_array().expect("documents") {
        let id = d["id"].as_str().expect("id").to_string();
        let (s, doc) = server.get(&format!("/v1/documents/{id}"), token).await;
        assert_eq!(s, StatusCode::OK, "{doc}");
        out.insert(id, doc);
    }
    out
}

/// What a document is, server aside (its creation time is the import's).
fn essence(doc: &Value) -> Value {
    json!({
        "title": doc["title"], "text": doc["text"], "metadata": doc["metadata"],
        "chunks": doc["chunks"], "text_exact": doc["text_exact"],
    })
}

/// The answer and its sources (document, chunk, text) to a question.
async fn answer(server: &Server, token: &str, question: &str) -> Value {
    let (s, ans) = server
        .post("/v1/chat", token, json!({"question": question, "top_k": 3}))
        .await;
    assert_eq!(s, StatusCode::OK, "{ans}");
    let sources: Vec<Value> = ans["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| json!([s["document_id"], s["chunk"], s["text"]]))
        .collect();
    assert!(!sources.is_empty(), "{ans}");
    json!({"answer": ans["answer"], "sources": sources})
}

fn write_corpus(dir: &Path) {
    std::fs::write(
        dir.join("refunds.md"),
        "# Refunds\n\nAcme customers may return any product within 30 days of delivery.\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("shipping.txt"),
        "Acme ships worldwide from Rotterdam. Shipping is free over 50 euros.",
    )
    .expect("write");
    std::fs::write(
        dir.join("support.html"),
        "<html><body><h1>Support</h1><p>Support is open Monday to Friday &amp; by phone.</p></body></html>",
    )
    .expect("write");
}

#[tokio::test]
async fn export_then_import_into_another_server_keeps_documents_and_answers() {
    let dirs_a = Dirs::new();
    dirs_a.add_tenant("acme", "  retrieval: {isolation: Collection}\n");
    let a = Server::start(&dirs_a, Start::default());
    let ta = dirs_a.token("acme", "alice");
    let corpus = tempfile::tempdir().expect("tmp");
    write_corpus(corpus.path());
    let out = run(tenantry(&a, &ta)
        .args(["ingest", "--no-progress"])
        .arg(corpus.path()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A long document (several chunks) with whitespace the chunks do not keep, and metadata.
    let long: String = (0..60)
        .map(|i| {
            format!(
                "Clause {i}:  the warranty\tcovers part {i} for {} months.\n\n",
                i + 12
            )
        })
        .collect();
    let (s, body) = a
        .post(
            "/v1/documents",
            &ta,
            json!({"title": "warranty", "text": long, "metadata": {"lang": "en", "rev": 3, "tags": ["a", "b"]}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert!(body["chunks"].as_u64().expect("chunks") > 3, "{body}");
    let before = documents(&a, &ta).await;
    assert_eq!(before.len(), 4);

    // Export to a file (progress on stderr) and to stdout: the same lines.
    let work = tempfile::tempdir().expect("tmp");
    let file = work.path().join("acme.jsonl");
    let out = run(tenantry(&a, &ta).arg("export").arg("--output").arg(&file));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "the export went to the file");
    assert!(
        stderr.contains("4/4 documents exported"),
        "progress: {stderr}"
    );
    assert!(stderr.contains("exported 4 documents"), "{stderr}");
    assert!(!stderr.contains(&ta), "token leaked");
    let exported = std::fs::read_to_string(&file).expect("export file");
    let leftovers: Vec<_> = std::fs::read_dir(work.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    let out = run(tenantry(&a, &ta).args(["export", "--no-progress"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), exported);
    let lines: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 4);
    for line in &lines {
        let mut keys: Vec<&str> = line
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["id", "metadata", "text", "title"], "{line}");
        let doc = &before[line["id"].as_str().expect("id")];
        assert_eq!(line["text"], doc["text"]);
        assert_eq!(line["metadata"], doc["metadata"]);
    }
    assert!(lines.iter().any(|l| l["text"] == long.as_str()));

    // A failing export (bad token) leaves an existing file alone.
    let out = run(tenantry(&a, "not-a-token")
        .args(["export", "--no-progress", "--output"])
        .arg(&file));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&file).expect("still there"),
        exported
    );

    // Import into another server: other data folder, other isolation mode, other keys.
    let dirs_b = Dirs::new();
    dirs_b.add_tenant("acme", "  retrieval: {isolation: Partition}\n");
    let b = Server::start(&dirs_b, Start::default());
    let tb = dirs_b.token("acme", "bob");
    let out = run(tenantry(&b, &tb).arg("import").arg(&file));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        text(&out.stdout).contains("imported 4, already present 0, failed 0"),
        "{}",
        text(&out.stdout)
    );
    assert!(stderr.contains("4/4 lines imported"), "progress: {stderr}");
    let after = documents(&b, &tb).await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (id, doc) in &before {
        assert_eq!(essence(&after[id]), essence(doc), "{id}");
        assert_eq!(after[id]["text_exact"], true);
    }
    for question in [
        "What is the refund policy?",
        "Which part does clause 41 of the warranty cover?",
        "When is support open?",
    ] {
        assert_eq!(
            answer(&b, &tb, question).await,
            answer(&a, &ta, question).await,
            "{question}"
        );
    }

    // Again, from stdin: everything is there already.
    let mut child = tenantry(&b, &tb)
        .args(["import", "--no-progress", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn import");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), exported.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("import");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("imported 0, already present 4, failed 0"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn import_reports_bad_lines_and_goes_on() {
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let config = dirs.config("limits:\n  maxBodyBytes: 4096\n");
    let server = Server::start(
        &dirs,
        Start {
            config: Some(config),
            ..Default::default()
        },
    );
    let token = dirs.token("acme", "alice");
    let work = tempfile::tempdir().expect("tmp");
    let file = work.path().join("mixed.jsonl");
    let lines = [
        json!({"id": "0b0e9d5e-7d0c-4d7e-9a43-9f1f7c0c1a01", "title": "ok", "text": "Refunds within 30 days.", "metadata": {}}).to_string(),
        "{not json".to_string(),
        json!({"text": "   "}).to_string(),
        String::new(),
        json!({"text": "x", "colour": "blue"}).to_string(),
        json!({"text": "word ".repeat(2000)}).to_string(),
        json!({"title": "no id", "text": "Shipping is free over 50 euros."}).to_string(),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    let out = run(tenantry(&server, &token)
        .args(["import", "--no-progress"])
        .arg(&file));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "a failed line fails the run");
    assert!(
        stdout.contains("imported 2, already present 0, failed 4"),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("line 2: not a document"), "{stderr}");
    assert!(stderr.contains("line 3: no text"), "{stderr}");
    assert!(
        stderr.contains("line 5: not a document") && stderr.contains("colour"),
        "{stderr}"
    );
    assert!(stderr.contains("line 6: 413"), "{stderr}");
    let docs = documents(&server, &token).await;
    assert_eq!(docs.len(), 2);
    assert!(docs.contains_key("0b0e9d5e-7d0c-4d7e-9a43-9f1f7c0c1a01"));
    // The line without an id got one from its text: a re-run finds it.
    let out = run(tenantry(&server, &token)
        .args(["import", "--no-progress"])
        .arg(&file));
    assert!(
        text(&out.stdout).contains("imported 0, already present 2, failed 4"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn an_interrupted_import_resumes() {
    const N: usize = 40;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let server = Server::start(&dirs, Start::default());
    let token = dirs.token("acme", "alice");
    let work = tempfile::tempdir().expect("tmp");
    let file = work.path().join("many.jsonl");
    let texts: Vec<String> = (0..N)
        .map(|i| {
            (0..30)
                .map(|j| format!("Document {i} sentence {j} describes item {}. ", i * 100 + j))
                .collect()
        })
        .collect();
    let jsonl: String = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"title": format!("doc {i}"), "text": t}).to_string() + "\n")
        .collect();
    std::fs::write(&file, jsonl).expect("write");

    // Documents listed (the usage counters also count a write in flight).
    let stored = async || -> u64 {
        let (_, list) = server.get("/v1/documents?limit=500", &token).await;
        list["documents"].as_array().expect("documents").len() as u64
    };
    let mut child = tenantry(&server, &token)
        .args(["import", "--no-progress", "--concurrency", "1"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn import");
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored().await < 3 {
        assert!(Instant::now() < deadline, "the import stored nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    common::kill(&mut child);
    let at_kill = stored().await;
    assert!(
        (at_kill as usize) < N,
        "the import finished before it was interrupted ({at_kill})"
    );

    let out = run(tenantry(&server, &token)
        .args(["import", "--no-progress"])
        .arg(&file));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let count = |what: &str| -> usize {
        stdout
            .split(", ")
            .find_map(|part| part.trim().strip_prefix(what))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {what:?} in {stdout}"))
    };
    let (imported, skipped) = (count("imported "), count("already present "));
    assert_eq!(imported + skipped, N, "{stdout}");
    assert!(
        skipped >= at_kill as usize,
        "{stdout} (stored before: {at_kill})"
    );
    assert!(imported > 0, "{stdout}");
    let docs = documents(&server, &token).await;
    assert_eq!(docs.len(), N);
    let mut got: Vec<&str> = docs
        .values()
        .map(|d| d["text"].as_str().expect("text"))
        .collect();
    got.sort_unstable();
    let mut want: Vec<&str> = texts.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(got, want);
}
