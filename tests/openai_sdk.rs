//! The official `openai` Python SDK (PyPI, installed by `scripts/python-env.sh sdk`), unmodified,
//! against a running `tenantry serve` with a scripted upstream: chat completions with and
//! without streaming (sync and async clients), models, embeddings (base64 and float), the
//! cache header, tenantry's `extra_body` extension, and errors raised as the SDK's exceptions.
//! The checks themselves are in `tests/sdk/openai_sdk_check.py`.
mod common;

use std::process::Command;

use common::llm::ScriptedLlm;
use common::server::{Dirs, Server, Start};

#[tokio::test]
async fn the_official_openai_sdk_works_unmodified() {
    let python = common::python::python_env("sdk").remove(0);
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    dirs.add_tenant("globex", "");
    dirs.add_tenant(
        "initech",
        "  quota: {requestsPerMinute: 3}\n  semanticCache: {enabled: false}\n",
    );
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(&llm),
            ..Default::default()
        },
    );
    let token = |t: &str| dirs.token(t, "sdk-user");
    for t in ["acme", "globex", "initech"] {
        server.wait_for_token(&token(t)).await;
    }
    server
        .ingest(
            &token("acme"),
            "refunds",
            "Acme customers may return any product within 30 days of delivery for a full refund.",
        )
        .await;
    let script = common::root().join("tests/sdk/openai_sdk_check.py");
    let out = tokio::task::spawn_blocking({
        let base = server.url("/v1");
        let (acme, globex, initech) = (token("acme"), token("globex"), token("initech"));
        move || {
            Command::new(python)
                .arg(script)
                .env("TENANTRY_BASE_URL", base)
                .env("TENANTRY_TOKEN", acme)
                .env("TENANTRY_OTHER_TOKEN", globex)
                .env("TENANTRY_LIMITED_TOKEN", initech)
                .env_remove("OPENAI_API_KEY")
                .env_remove("OPENAI_BASE_URL")
                .output()
                .expect("run python")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "SDK checks failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
