//! `tenantry ingest` against a real `serve`: folders of txt/md/html are uploaded, unsupported
//! and refused files are reported without stopping the rest, and a re-run skips what is there.
mod common;

use axum::http::StatusCode;
use common::server::{Dirs, Server, Start};
use serde_json::json;

fn ingest(server: &Server, token: &str, paths: &[&std::path::Path]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .arg("ingest")
        .args([
            "--tenant-url",
            &format!("http://{}", server.addr),
            "--no-progress",
        ])
        .args(paths)
        .env("TENANTRY_TOKEN", token)
        .output()
        .expect("run tenantry ingest")
}

#[tokio::test]
async fn ingests_folders_reports_failures_and_resumes() {
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let config = dirs.config("limits:\n  maxBodyBytes: 8192\n");
    let server = Server::start(
        &dirs,
        Start {
            config: Some(config),
            ..Default::default()
        },
    );
    let token = dirs.token("acme", "alice");

    let docs = tempfile::tempdir().expect("tmp");
    let d = docs.path();
    std::fs::create_dir_all(d.join("policies/.git")).expect("mkdir");
    std::fs::write(
        d.join("policies/refunds.md"),
        "# Refunds\n\nReturns are accepted within 30 days.",
    )
    .expect("write");
    std::fs::write(
        d.join("policies/shipping.txt"),
        "Shipping is free over 50 euros.",
    )
    .expect("write");
    std::fs::write(
        d.join("policies/support.html"),
        "<html><head><script>var secret = 'do not index';</script></head><body><h1>Support</h1><p>Open Monday&ndash;Friday &amp; weekends by phone.</p></body></html>",
    )
    .expect("write");
    std::fs::write(d.join("policies/.git/config"), "[core]").expect("write");
    std::fs::write(d.join("policies/logo.png"), [0x89u8, b'P', b'N', b'G']).expect("write");
    std::fs::write(d.join("huge.txt"), "word ".repeat(5000)).expect("write");

    let out = ingest(&server, &token, &[&d.join("policies"), &d.join("huge.txt")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed file makes the run fail");
    assert!(
        stdout.contains("ingested 3, already present 0, unsupported 1, failed 1"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("huge.txt") && stderr.contains("413"),
        "{stderr}"
    );
    assert!(stderr.contains("logo.png"), "{stderr}");
    assert!(!stderr.contains(&token), "token leaked");

    let (s, list) = server.get("/v1/documents", &token).await;
    assert_eq!(s, StatusCode::OK);
    let docs_listed = list["documents"].as_array().expect("docs");
    assert_eq!(docs_listed.len(), 3, "{list}");
    assert!(
        docs_listed
            .iter()
            .any(|d| d["metadata"]["kind"] == "html" && d["title"] == "support.html")
    );

    // HTML went in as text: no markup, no script.
    let (_, ans) = server
        .post(
            "/v1/chat",
            &token,
            json!({"question": "When is support open?", "top_k": 1}),
        )
        .await;
    let text = ans["sources"][0]["text"].as_str().expect("text");
    assert!(
        text.contains("Open Monday") && text.contains("& weekends"),
        "{text}"
    );
    assert!(
        !text.contains('<') && !text.contains("do not index"),
        "{text}"
    );

    // A re-run uploads nothing again.
    let out = ingest(&server, &token, &[&d.join("policies")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ingested 0, already present 3, unsupported 1, failed 0"),
        "{stdout}"
    );

    // A bad token fails every file, clearly.
    let out = ingest(&server, "not-a-token", &[&d.join("policies/refunds.md")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}
