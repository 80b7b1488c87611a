//! Upstream resilience against real `tenantry serve` processes: retries, fallbacks and the
//! circuit breaker, with scripted OpenAI-compatible servers on loopback.
mod common;

use axum::http::StatusCode;
use common::llm::ScriptedLlm;
use common::server::{Dirs, Server, Start};
use serde_json::Value;

const DOC: &str =
    "Acme customers may return any product within 30 days of delivery for a full refund.";

/// A server whose tenant `acme` chats with `model` and whose config is `llm_yaml`.
async fn start(model: &str, llm_yaml: &str) -> (Dirs, Server, String) {
    let dirs = Dirs::new();
    dirs.add_tenant(
        "acme",
        &format!("  models: {{chat: {model}, allowed: [{model}]}}\n"),
    );
    let config = dirs.config(llm_yaml);
    let server = Server::start(
        &dirs,
        Start {
            config: Some(config),
            ..Default::default()
        },
    );
    let token = dirs.token("acme", "alice");
    server.wait_for_token(&token).await;
    server.ingest(&token, "refunds", DOC).await;
    (dirs, server, token)
}

fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}/v1")
}

/// The value of the metric line that starts with `series` (its name and labels).
async fn metric(server: &Server, series: &str) -> Option<f64> {
    let text = server.metrics().await;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const PRIMARY_OPEN: &str = r#"tenantry_upstream_circuit_open{upstream="primary"}"#;

fn assert_upstream_error(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "upstream_error", "{body}");
}

/// A primary that always answers 500 and a working fallback: 200 from the fallback, whose
/// model override is used and named in the response.
#[tokio::test]
async fn failing_primary_falls_back() {
    let primary = ScriptedLlm::start().await;
    let fallback = ScriptedLlm::start().await;
    let yaml = format!(
        "llm:\n  baseUrl: {}\n  retries: 1\n  retryBaseMs: 10\n  fallbacks:\n    - {{baseUrl: {}, model: fallback-ok}}\n",
        primary.base_url(),
        fallback.base_url()
    );
    let (_dirs, server, token) = start("fail-500", &yaml).await;
    let (s, body) = server.chat(&token, "What is the refund policy?").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["model"], "fallback-ok@fallback-1", "{body}");
    assert!(
        body["answer"]
            .as_str()
            .expect("answer")
            .starts_with("ANSWER[fallback-ok]"),
        "{body}"
    );
    assert_eq!(primary.calls(), 2, "first call + 1 retry on the primary");
    assert_eq!(fallback.calls(), 1);
}

/// A primary that fails twice then succeeds: 200 after exactly 3 calls (default 2 retries).
#[tokio::test]
async fn transient_failures_are_retried() {
    let llm = ScriptedLlm::start().await;
    let yaml = format!("llm:\n  baseUrl: {}\n  retryBaseMs: 10\n", llm.base_url());
    let (_dirs, server, token) = start("fail-first-2", &yaml).await;
    let (s, body) = server.chat(&token, "What is the refund policy?").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["model"], "fail-first-2", "{body}");
    assert_eq!(llm.calls(), 3);
}

/// An always-failing upstream with no fallback: 502s, and once the breaker opens the upstream
/// sees no more requests.
#[tokio::test]
async fn breaker_opens_and_stops_calling_the_upstream() {
    let llm = ScriptedLlm::start().await;
    let yaml = format!(
        "llm:\n  baseUrl: {}\n  retries: 1\n  retryBaseMs: 10\n  breaker: {{failureThreshold: 3, cooldownSeconds: 600}}\n",
        llm.base_url()
    );
    let (_dirs, server, token) = start("fail-500", &yaml).await;
    // Request 1: 2 calls; request 2: 1 call opens the circuit (3 consecutive failures).
    for _ in 0..2 {
        let (s, body) = server.chat(&token, "What is the refund policy?").await;
        assert_upstream_error(s, &body);
    }
    assert_eq!(llm.calls(), 3);
    for _ in 0..4 {
        let (s, body) = server.chat(&token, "What is the refund policy?").await;
        assert_upstream_error(s, &body);
    }
    assert_eq!(
        llm.calls(),
        3,
        "no upstream calls while the circuit is open"
    );
    let logs = server.logs.lock().expect("lock").join("\n");
    assert!(logs.contains("circuit open"), "{logs}");
}

/// A dead endpoint (closed port), no fallback: 502 JSON, then fail-fast once the breaker opens.
#[tokio::test]
async fn dead_endpoint_gives_502() {
    let yaml = format!(
        "llm:\n  baseUrl: {}\n  retryBaseMs: 10\n  connectTimeoutSeconds: 5\n",
        closed_port_url()
    );
    let (_dirs, server, token) = start("gpt-4o-mini", &yaml).await;
    // Default: 3 attempts per request, breaker opens after 5 consecutive failures.
    for _ in 0..4 {
        let (s, body) = server.chat(&token, "What is the refund policy?").await;
        assert_upstream_error(s, &body);
    }
    let logs = server.logs.lock().expect("lock").join("\n");
    assert!(logs.contains("circuit open"), "{logs}");
}

/// A flapping upstream: it fails its first 3 calls, then recovers. The breaker opens after 3
/// consecutive failures (fail-fast, no call), lets one trial through after the cool-down, and
/// closes again when the trial succeeds.
#[tokio::test]
async fn breaker_opens_then_closes_when_the_upstream_recovers() {
    let llm = ScriptedLlm::start().await;
    let yaml = format!(
        "llm:\n  baseUrl: {}\n  retries: 0\n  breaker: {{failureThreshold: 3, cooldownSeconds: 1}}\n",
        llm.base_url()
    );
    let (_dirs, server, token) = start("fail-first-3", &yaml).await;
    assert_eq!(
        metric(&server, PRIMARY_OPEN).await,
        Some(0.0),
        "closed at start"
    );
    for _ in 0..3 {
        let (s, body) = server.chat(&token, "What is the refund policy?").await;
        assert_upstream_error(s, &body);
    }
    assert_eq!(llm.calls(), 3);
    assert_eq!(metric(&server, PRIMARY_OPEN).await, Some(1.0), "open");
    let (s, body) = server.chat(&token, "What is the refund policy?").await;
    assert_upstream_error(s, &body);
    assert_eq!(llm.calls(), 3, "open: failed fast without a call");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, body) = server.chat(&token, "What is the refund policy?").await;
    assert_eq!(s, StatusCode::OK, "half-open trial: {body}");
    assert_eq!(llm.calls(), 4);
    assert_eq!(
        metric(&server, PRIMARY_OPEN).await,
        Some(0.0),
        "closed again"
    );
    for i in 0..3 {
        let (s, body) = server.chat(&token, &format!("Another question {i}")).await;
        assert_eq!(s, StatusCode::OK, "closed again: {body}");
    }
    assert_eq!(llm.calls(), 7);
}

/// An upstream slower than `llm.timeoutSeconds`: 504 with an upstream-timeout error, not
/// retried on the same upstream, and billed its whole reservation (the upstream may have
/// generated the answer).
#[tokio::test]
async fn a_slow_upstream_times_out_with_504() {
    let llm = ScriptedLlm::start().await;
    let yaml = format!(
        "llm:\n  baseUrl: {}\n  timeoutSeconds: 1\n  retryBaseMs: 10\n",
        llm.base_url()
    );
    let (_dirs, server, token) = start("slow", &yaml).await;
    let (_, before) = server.get("/v1/usage", &token).await;
    let (s, body) = server.chat(&token, "What is the refund policy?").await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");
    assert_eq!(
        llm.calls(),
        1,
        "a timeout is not retried on the same upstream"
    );
    let (s, body) = server
        .post(
            "/v1/chat/completions",
            &token,
            serde_json::json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}),
        )
        .await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "stream: {body}");
    let (_, usage) = server.get("/v1/usage", &token).await;
    let reserved: u64 = llm
        .requests
        .lock()
        .expect("lock")
        .iter()
        .map(|body| {
            let messages: Vec<tenantry::llm::Message> =
                serde_json::from_value(body["messages"].clone()).expect("messages");
            tenantry::quota::tokens::with_margin(tenantry::quota::tokens::prompt_tokens(
                body["model"].as_str().expect("model"),
                &messages,
            )) + body["max_tokens"].as_u64().expect("max_tokens")
        })
        .sum();
    assert_eq!(llm.calls(), 2);
    assert_eq!(
        usage["tokens_today"].as_u64(),
        before["tokens_today"].as_u64().map(|t| t + reserved),
        "{usage}"
    );
}

/// Streamed completions go through the same retries and fallbacks: a primary that always
/// fails is retried, then the fallback streams the answer and names itself in the model.
#[tokio::test]
async fn streams_are_retried_and_fall_back() {
    let primary = ScriptedLlm::start().await;
    let fallback = ScriptedLlm::start().await;
    let yaml = format!(
        "llm:\n  baseUrl: {}\n  retries: 1\n  retryBaseMs: 10\n  fallbacks:\n    - {{baseUrl: {}, model: fallback-ok}}\n",
        primary.base_url(),
        fallback.base_url()
    );
    let (_dirs, server, token) = start("fail-500", &yaml).await;
    let r = server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(
            &serde_json::json!({"messages": [{"role": "user", "content": "Stream it"}],
                                  "stream": true, "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    let answer: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(answer, "ANSWER[fallback-ok]: Stream it");
    // One time to first token, under the model that answered.
    assert_eq!(
        metric(
            &server,
            r#"llm_time_to_first_token_seconds_count{tenant_id="acme",model="fallback-ok@fallback-1"}"#
        )
        .await,
        Some(1.0),
        "{}",
        server.metrics().await
    );
    // Two failures do not open the primary's circuit (threshold 5); the fallback's is closed.
    assert_eq!(metric(&server, PRIMARY_OPEN).await, Some(0.0));
    assert_eq!(
        metric(
            &server,
            r#"tenantry_upstream_circuit_open{upstream="fallback-1"}"#
        )
        .await,
        Some(0.0)
    );
    // Every chunk, the first included, names the fallback that answered.
    for c in &chunks {
        assert_eq!(c["model"], "fallback-ok@fallback-1", "{c}");
    }
    assert_eq!(primary.calls(), 2, "first call + 1 retry on the primary");
    assert_eq!(fallback.calls(), 1);
}

/// A stream longer than `llm.timeoutSeconds` that keeps producing is not cut: for streams the
/// timeout bounds each wait for data. One that stalls longer than that is.
#[tokio::test]
async fn streams_time_out_when_idle_not_when_long() {
    let llm = ScriptedLlm::start().await;
    let yaml = format!("llm:\n  baseUrl: {}\n  timeoutSeconds: 1\n", llm.base_url());
    let (_dirs, server, token) = start("gpt-4o-mini", &yaml).await;
    let stream = |question: &str| {
        server
            .http
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .header("cache-control", "no-cache")
            .json(&serde_json::json!({"messages": [{"role": "user", "content": question}], "stream": true}))
            .send()
    };
    // 8 words, 400 ms apart: 2.8 s in all, never idle for 1 s.
    let long = "[[chunk-delay:400]] one two three four five six";
    let body = stream(long)
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(body.contains("\"six\"") || body.contains(" six"), "{body}");
    // A stall of 1.5 s between words: cut with an error event.
    let stalled = "[[chunk-delay:1500]] one two";
    let body = stream(stalled)
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert!(!body.contains("[DONE]"), "{body}");
    assert!(body.contains("upstream_error"), "{body}");
}
