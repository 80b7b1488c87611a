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

/// cl100k_base in tiktoken's file format (base64 of each token's bytes, then its rank),
/// written from the vocabulary compiled into tenantry, so that tiktoken works offline.
fn cl100k_file(path: &std::path::Path) {
    use base64::Engine as _;
    let bpe = tiktoken_rs::cl100k_base_singleton();
    let mut text = String::new();
    let mut rank = 0u32;
    while let Ok(bytes) = bpe.decode_bytes(&[rank]) {
        // Ranks from 100256 on are special tokens, which the file does not hold.
        if rank >= 100_256 {
            break;
        }
        text.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
        text.push_str(&format!(" {rank}\n"));
        rank += 1;
    }
    std::fs::write(path, text).expect("write cl100k_base");
}

#[tokio::test]
async fn openai_sdk_and_langchain_call_tools_and_get_structured_outputs() {
    let python = common::python::python_env("sdk").remove(0);
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(&llm),
            ..Default::default()
        },
    );
    let token = dirs.token("acme", "agent");
    server.wait_for_token(&token).await;
    let tiktoken = tempfile::tempdir().expect("tmp");
    cl100k_file(&tiktoken.path().join("cl100k_base.tiktoken"));
    let script = common::root().join("tests/sdk/tools_check.py");
    let out = tokio::task::spawn_blocking({
        let base = server.url("/v1");
        let cache = tiktoken.path().to_path_buf();
        move || {
            Command::new(python)
                .arg(script)
                .env("TENANTRY_BASE_URL", base)
                .env("TENANTRY_TOKEN", token)
                .env("TENANTRY_CL100K", cache.join("cl100k_base.tiktoken"))
                .env("TIKTOKEN_CACHE_DIR", cache.join("cache"))
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
        out.status.success() && stdout.lines().last() == Some("ok"),
        "SDK checks failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // What the clients sent with tools or a response format reached the upstream unchanged.
    let received = llm.requests.lock().expect("lock").clone();
    let passed = [
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
    ];
    let mut structured = 0;
    for line in stdout.lines().filter_map(|l| l.strip_prefix("sent ")) {
        let sent: serde_json::Value = serde_json::from_str(line).expect("sent body");
        if !passed.iter().any(|k| !sent[*k].is_null()) || sent["messages"].is_null() {
            continue;
        }
        structured += 1;
        assert!(
            received
                .iter()
                .any(|r| passed.iter().all(|k| r[*k] == sent[*k])
                    && r["messages"].as_array().map(Vec::len)
                        == sent["messages"].as_array().map(Vec::len)),
            "the upstream never received {sent}"
        );
    }
    // Two parses and a refusal, a round trip of two calls, a stream, the stream helper,
    // LangChain's round trip and structured output; the refused requests never went upstream.
    assert!(structured >= 10, "{structured} structured requests seen");
    // The tool round trip: the assistant's call (content null) and the tool's answer to it.
    let round_trip = received
        .iter()
        .find(|r| r["messages"].as_array().is_some_and(|m| m.len() == 3))
        .expect("a request with the tool's result");
    let m = &round_trip["messages"];
    assert_eq!(m[1]["role"], "assistant");
    assert_eq!(m[1]["content"], serde_json::Value::Null);
    assert_eq!(m[1]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(m[2]["role"], "tool");
    assert_eq!(m[2]["tool_call_id"], m[1]["tool_calls"][0]["id"]);
    assert_eq!(m[2]["content"], "12 degrees, sunny");
}
