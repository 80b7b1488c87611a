//! The tenant console at `GET /` in a real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from npm, installed by `scripts/node-env.sh playwright`) against a real
//! `serve --dev`: sign-in through `/dev/token` and with a pasted token, uploads by file
//! picker and by drag and drop, a streamed answer with its sources, the usage table, a strict
//! CSP and no request leaving the server's origin. The test writes a screenshot and prints its
//! path.
mod common;

use std::process::Command;

use axum::http::StatusCode;
use common::server::{Dirs, Server, Start};
use serde_json::Value;

/// `NODE_PATH` with playwright-core (installed once, cached).
fn playwright() -> String {
    let out = Command::new(common::root().join("scripts/node-env.sh"))
        .arg("playwright")
        .output()
        .expect("run scripts/node-env.sh");
    assert!(
        out.status.success(),
        "scripts/node-env.sh playwright failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn the_console_uploads_answers_with_sources_and_shows_usage() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: apt-get install -y chromium"
    );
    let node_path = playwright();
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let server = Server::start(
        &dirs,
        Start {
            args: vec!["--dev".to_string()],
            ..Default::default()
        },
    );

    // The page and its assets: same origin, typed, under a strict policy.
    let csp = tenantry::api::console::CSP;
    for (path, kind) in [
        ("/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let r = server.http.get(server.url(path)).send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        assert_eq!(header("content-security-policy"), csp, "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff");
        let body = r.text().await.expect("body");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} refers to another origin"
        );
    }
    let (s, config) = common::server::status_json(
        server
            .http
            .get(server.url("/console/config.json"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(
        (s, config),
        (StatusCode::OK, serde_json::json!({"dev": true}))
    );
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe"), "{csp}");

    let work = tempfile::tempdir().expect("tmp");
    let file = work.path().join("refunds.md");
    std::fs::write(
        &file,
        "# Refunds\n\nAcme customers may return any product within 30 days of delivery for a full refund.\n",
    )
    .expect("write");
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let _ = std::fs::remove_file(&screenshot);
    let token = dirs.token("acme", "pasted");
    let script = common::root().join("tests/console/console.cjs");
    let url = server.url("/");
    let out = tokio::task::spawn_blocking({
        let (file, screenshot) = (file.clone(), screenshot.clone());
        move || {
            Command::new("node")
                .arg(script)
                .env("NODE_PATH", node_path)
                .env("CONSOLE_URL", url)
                .env("CONSOLE_TENANT", "acme")
                .env("CONSOLE_TOKEN", token)
                .env("CONSOLE_FILE", file)
                .env("CONSOLE_SCREENSHOT", screenshot)
                .output()
                .expect("run node")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "console script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("the script's JSON");
    println!("console screenshot: {}", screenshot.display());

    assert_eq!(seen["csp"], csp);
    assert_eq!(seen["who"], "tenant acme", "{seen}");
    assert_eq!(seen["app_visible_before"], false, "{seen}");
    assert_eq!(seen["signin_visible_after"], false, "{seen}");
    assert_eq!(seen["more_visible"], false, "one page of documents: {seen}");
    assert_eq!(seen["stored_token"], true);
    assert_eq!(seen["upload_status"], "Uploaded 1/1", "{seen}");
    assert_eq!(seen["upload_progress"], serde_json::json!([1, 1]));
    assert!(
        seen["docs_error"]
            .as_str()
            .expect("error text")
            .contains("1 file(s) skipped"),
        "the .pdf is refused: {seen}"
    );
    let documents = seen["documents"].to_string();
    assert!(
        documents.contains("refunds.md") && documents.contains("shipping.txt"),
        "{documents}"
    );
    assert!(documents.contains("1 chunk ·"), "{documents}");
    // Streamed: the console asked for a stream, with retrieval, and got server-sent events.
    assert_eq!(seen["chat_request"]["stream"], true, "{seen}");
    assert_eq!(seen["chat_request"]["tenantry"]["rag"], true);
    assert!(
        seen["chat_content_type"]
            .as_str()
            .expect("content type")
            .starts_with("text/event-stream")
    );
    let answer = seen["answer"].as_str().expect("answer");
    assert!(answer.contains("within 30 days"), "{answer}");
    let sources = seen["sources"].as_array().expect("sources");
    assert!(
        sources[0]
            .as_str()
            .expect("source")
            .starts_with("refunds.md"),
        "{sources:?}"
    );
    // Usage against limits: the two documents, and the embedding tokens their ingestion used.
    assert!(
        seen["usage"]["Documents"]
            .as_str()
            .expect("row")
            .starts_with("2 / "),
        "{seen}"
    );
    let tokens: u64 = seen["usage"]["Tokens today"]
        .as_str()
        .and_then(|t| t.split(" / ").next())
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .expect("tokens today");
    assert!(tokens > 0, "{seen}");
    let check = dirs.token("acme", "check");
    let (_, usage) = server.get("/v1/usage", &check).await;
    assert_eq!(usage["storage"]["documents"], 2, "{usage}");
    // The console derives ids from the content as `tenantry ingest` does.
    let id = tenantry::ingest::content_id(&std::fs::read(&file).expect("read"));
    let (s, doc) = server.get(&format!("/v1/documents/{id}"), &check).await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    assert_eq!(doc["title"], "refunds.md");
    assert_eq!(doc["metadata"]["kind"], "markdown");
    // The pasted token works in a fresh tab, a bad one is refused, signing out forgets it.
    assert!(
        seen["bad_token"].as_str().expect("message").contains("401"),
        "{seen}"
    );
    assert_eq!(seen["pasted_documents"].as_array().map(Vec::len), Some(2));
    assert_eq!(seen["signed_out"], true);
    // Nothing went wrong in the page (a CSP violation would be logged) and nothing left the origin.
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["foreign"], serde_json::json!([]), "{seen}");
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}
