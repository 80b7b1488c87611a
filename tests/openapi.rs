//! The API conforms to its own OpenAPI document: schemathesis (PyPI, installed by
//! `scripts/python-env.sh schemathesis`) generates valid and invalid requests for every
//! operation in `/openapi.json` and checks a running `tenantry serve` (offline responder,
//! embedded store) with all its checks: no server errors, only documented status codes,
//! responses (SSE events included) matching their schemas, schema-valid requests accepted,
//! schema-violating requests refused.
mod common;

use std::process::Command;

use common::server::{Dirs, Server, Start};

#[tokio::test]
async fn the_api_conforms_to_its_openapi_document() {
    let st = common::python::python_env("schemathesis").remove(0);
    let dirs = Dirs::new();
    // Limits high enough that the fuzzer reaches the handlers rather than the rate limiter.
    dirs.add_tenant(
        "acme",
        "  quota: {dailyTokens: 1000000000, requestsPerMinute: 1000000, tokensPerMinute: 1000000000, maxConcurrentRequests: 1000}\n",
    );
    let server = Server::start(&dirs, Start::default());
    let token = dirs.token("acme", "fuzzer");
    server.wait_for_token(&token).await;
    server
        .ingest(
            &token,
            "refunds",
            "Acme refunds any product within 30 days.",
        )
        .await;
    let work = tempfile::tempdir().expect("tmp");
    let url = server.url("/openapi.json");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .args(["run", &url, "--checks", "all", "--no-color"])
            .args(["--max-examples", "40", "--seed", "20261126"])
            // Conformance, not speed: a generated batch of 2,048 inputs to /v1/embeddings takes
            // more than schemathesis' default 10 s on a loaded 2-core machine (both the request
            // timeout and the response-time check of `--checks all`; speed is measured in the
            // benchmarks).
            .args(["--request-timeout", "120", "--max-response-time", "120"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            // Its example database and reports stay out of the checkout.
            .current_dir(work.path())
            .output()
            .expect("run schemathesis")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
}
