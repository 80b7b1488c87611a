//! Budgets a hostile or careless client cannot get around, against real `tenantry serve`
//! processes sharing a real Redis, with a scripted OpenAI-compatible model on loopback:
//! - a call that may have reached the upstream is billed: the client hanging up, the
//!   whole-request timeout, an upstream 5xx, every retry; only what provably never reached an
//!   upstream is refunded;
//! - an upstream that reports more than was reserved cannot take a tenant past its budget (the
//!   excess is counted apart), and a stream stops at its reservation;
//! - documents are metered (their embedding tokens) and limited (`maxDocuments`,
//!   `maxStoredBytes`), and refused before any work when the tenant's limits are used up.
mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::llm::ScriptedLlm;
use common::redis::RedisServer;
use common::server::{Dirs, Server, Start};
use serde_json::{Value, json};
use tenantry::domain::TenantId;
use tenantry::llm::Message;
use tenantry::quota::memory::MemoryStore;
use tenantry::quota::redis::{RedisOptions, RedisStore};
use tenantry::quota::tokens;
use tenantry::quota::{
    QuotaStore, Storage, StorageChange, StorageDecision, StorageLimit, StorageLimits,
};

/// Completion tokens per answer in these tests.
const MAX_TOKENS: u64 = 50;

/// A quota section (and the semantic cache off: every question reaches the model).
fn spec(daily: u64, rpm: u64, extra: &str) -> String {
    format!(
        "  quota: {{dailyTokens: {daily}, requestsPerMinute: {rpm}, tokensPerMinute: 100000000, maxConcurrentRequests: 100{extra}}}\n  semanticCache: {{enabled: false}}\n"
    )
}

/// A `serve` process on `redis` with the scripted model `llm`; `config` is appended to the
/// LLM section.
fn start(dirs: &Dirs, llm: &ScriptedLlm, redis: &RedisServer, config: &str) -> Server {
    Server::start(
        dirs,
        Start {
            llm: Some(llm),
            config: Some(dirs.config(&format!(
                "llm:\n  maxTokens: {MAX_TOKENS}\n  retryBaseMs: 10\n{config}"
            ))),
            args: vec!["--redis-url".to_string(), redis.url()],
            ..Default::default()
        },
    )
}

async fn usage(server: &Server, token: &str) -> Value {
    let (s, body) = server.get("/v1/usage", token).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

/// The tenant's usage once nothing is in flight (settlements of cancelled requests run in the
/// background).
async fn settled(server: &Server, token: &str) -> Value {
    for _ in 0..200 {
        let u = usage(server, token).await;
        if u["in_flight"] == 0 {
            return u;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still in flight: {}", usage(server, token).await);
}

fn user(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

/// Tokens `tenantry` counts for the prompt the upstream received as request `i`.
fn prompt_of(llm: &ScriptedLlm, i: usize) -> u64 {
    let body = llm.requests.lock().expect("lock")[i].clone();
    let messages: Vec<Message> = serde_json::from_value(body["messages"].clone()).expect("msgs");
    tokens::prompt_tokens(body["model"].as_str().expect("model"), &messages)
}

/// What one call reserves: its prompt with the margin, plus the most it may generate.
fn reservation(prompt: u64) -> u64 {
    tokens::with_margin(prompt) + MAX_TOKENS
}

/// Waits until the upstream has received `n` requests.
async fn upstream_saw(llm: &ScriptedLlm, n: usize) {
    for _ in 0..200 {
        if llm.calls() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the upstream received {} requests, not {n}", llm.calls());
}

fn counters(u: &Value) -> (u64, u64) {
    (
        u["requests_this_minute"].as_u64().expect("requests"),
        u["tokens_today"].as_u64().expect("tokens"),
    )
}

/// Sleeps into the next minute when fewer than `need` seconds are left in this one.
async fn fresh_minute(need: u64) {
    let left = 60_000 - tenantry::quota::now_ms() % 60_000;
    if left < need * 1000 {
        tokio::time::sleep(Duration::from_millis(left + 50)).await;
    }
}

/// A client hanging up while the model works, streamed or not, is billed: the request stays
/// counted and its whole reservation is charged (the outcome is unknown).
#[tokio::test]
async fn hanging_up_is_billed() {
    let redis = RedisServer::start();
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", &spec(1_000_000, 1_000, ""));
    let server = start(&dirs, &llm, &redis, "");
    let token = dirs.token("acme", "alice");
    fresh_minute(20).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .expect("client");
    for (i, stream) in [false, true].into_iter().enumerate() {
        let mut body = user(&format!("question {i} [[delay:3000]] [[usage:999:999]]"));
        body["stream"] = json!(stream);
        let r = impatient
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await;
        assert!(r.is_err(), "the client was expected to give up");
        upstream_saw(&llm, i + 1).await;
    }
    let u = settled(&server, &token).await;
    let expected = reservation(prompt_of(&llm, 0)) + reservation(prompt_of(&llm, 1));
    assert_eq!(counters(&u), (2, expected), "{u}");
}

/// The whole-request timeout drops the handler like a client hanging up: billed the same.
#[tokio::test]
async fn the_whole_request_timeout_is_billed() {
    let redis = RedisServer::start();
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", &spec(1_000_000, 1_000, ""));
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(&llm),
            config: Some(dirs.config(&format!(
                "llm:\n  maxTokens: {MAX_TOKENS}\nlimits:\n  requestTimeoutSeconds: 1\n"
            ))),
            args: vec!["--redis-url".to_string(), redis.url()],
            ..Default::default()
        },
    );
    let token = dirs.token("acme", "alice");
    fresh_minute(10).await;
    let (s, body) = server
        .post(
            "/v1/chat/completions",
            &token,
            user("slow [[delay:3000]] [[usage:1:1]]"),
        )
        .await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{body}");
    let u = settled(&server, &token).await;
    assert_eq!(counters(&u), (1, reservation(prompt_of(&llm, 0))), "{u}");
}

/// An upstream 5xx came after the upstream read the request: its prompt is billed and the
/// request counted, for every retry; a retry the quota does not admit is never sent.
#[tokio::test]
async fn failed_calls_and_their_retries_are_billed() {
    let redis = RedisServer::start();
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    let models = "  models: {chat: fail-first-2, allowed: [fail-first-2, gpt-4o-mini]}\n";
    dirs.add_tenant("acme", &format!("{}{models}", spec(1_000_000, 1_000, "")));
    dirs.add_tenant("narrow", &spec(1_000_000, 2, ""));
    let server = start(
        &dirs,
        &llm,
        &redis,
        "  retries: 2\n  breaker: {failureThreshold: 100}\n",
    );
    let acme = dirs.token("acme", "alice");
    let narrow = dirs.token("narrow", "bob");
    fresh_minute(20).await;

    // Two 500s, then an answer: three calls, three requests; the failed two cost their prompt.
    let (s, body) = server
        .post(
            "/v1/chat/completions",
            &acme,
            user("retry me [[usage:5:5]]"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(llm.calls(), 3);
    let u = settled(&server, &acme).await;
    let p = prompt_of(&llm, 0);
    assert_eq!(counters(&u), (3, 2 * p + 10), "{u}");

    // Always 500 with 2 retries, but 2 requests a minute: the third call is not admitted.
    let (s, body) = server
        .post("/v1/chat/completions", &narrow, user("boom [[fail]]"))
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "upstream_error", "{body}");
    assert_eq!(
        llm.calls(),
        5,
        "a retry beyond the quota reached the upstream"
    );
    let u = settled(&server, &narrow).await;
    assert_eq!(counters(&u), (2, 2 * prompt_of(&llm, 3)), "{u}");
}

/// An upstream nothing listens on was never reached: refunded, not counted.
#[tokio::test]
async fn an_unreachable_upstream_is_refunded() {
    let redis = RedisServer::start();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let dirs = Dirs::new();
    dirs.add_tenant("acme", &spec(1_000_000, 1_000, ""));
    let server = Server::start(
        &dirs,
        Start {
            config: Some(dirs.config(&format!(
                "llm:\n  baseUrl: http://{closed}/v1\n  retries: 1\n  retryBaseMs: 10\n"
            ))),
            args: vec!["--redis-url".to_string(), redis.url()],
            ..Default::default()
        },
    );
    let token = dirs.token("acme", "alice");
    let (s, body) = server
        .post("/v1/chat/completions", &token, user("anyone there?"))
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    let u = settled(&server, &token).await;
    assert_eq!(counters(&u), (0, 0), "{u}");
}

/// An upstream that reports ten thousand tokens for each of ten concurrent calls (max_tokens
/// ignored, another tokenizer): the tenant's budget of 2,000 is never passed — each call is
/// charged at most its reservation — and what was reported beyond is counted in
/// `quota_unreserved_tokens_total`. A stream that runs past its reservation is stopped there.
#[tokio::test]
async fn an_over_reporting_upstream_cannot_overshoot_the_budget() {
    const BUDGET: u64 = 2_000;
    let redis = RedisServer::start();
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", &spec(BUDGET, 1_000, ""));
    let server = Arc::new(start(&dirs, &llm, &redis, ""));
    let token = dirs.token("acme", "alice");
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let (server, token) = (server.clone(), token.clone());
            tokio::spawn(async move {
                server
                    .post(
                        "/v1/chat/completions",
                        &token,
                        user(&format!("call {i} [[delay:1000]] [[usage:5000:5000]]")),
                    )
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for c in calls {
        let (s, body) = c.await.expect("task");
        match s {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(body["error"]["limit"], "daily_tokens"),
            other => panic!("{other}: {body}"),
        }
    }
    assert!(ok >= 2, "most calls fit the budget: {ok}");
    let u = settled(&server, &token).await;
    let charged = u["tokens_today"].as_u64().expect("tokens");
    assert!(
        charged <= BUDGET,
        "charged {charged} of a budget of {BUDGET}: {u}"
    );
    let reserved: u64 = (0..llm.calls())
        .map(|i| reservation(prompt_of(&llm, i)))
        .sum();
    assert_eq!(charged, reserved, "each call charged its reservation: {u}");
    let metrics = server.metrics().await;
    let unreserved = metrics
        .lines()
        .find(|l| l.starts_with(r#"quota_unreserved_tokens_total{tenant_id="acme"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(
        unreserved,
        Some(ok * 10_000 - charged),
        "the excess is counted apart"
    );

    // A streamed answer the upstream does not stop at max_tokens (it echoes 300 words).
    let words: Vec<String> = (0..300).map(|i| format!("word{i}")).collect();
    let before = u["tokens_today"].as_u64().expect("tokens");
    let mut body = user(&words.join(" "));
    body["stream"] = json!(true);
    let text = server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
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
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .expect("a finish reason");
    assert_eq!(finish, "length", "stopped at its reservation");
    let last = llm.calls() - 1;
    let model = llm.requests.lock().expect("lock")[last]["model"]
        .as_str()
        .expect("model")
        .to_string();
    let model = model.as_str();
    let prompt = prompt_of(&llm, last);
    let allowance = reservation(prompt) - prompt;
    assert!(
        tokens::count(model, &answer) <= allowance,
        "{} tokens streamed for an allowance of {allowance}",
        tokens::count(model, &answer)
    );
    assert!(!answer.contains("word299"), "{answer}");
    let u = settled(&server, &token).await;
    let spent = u["tokens_today"].as_u64().expect("tokens") - before;
    assert!(spent <= reservation(prompt), "{spent}: {u}");
}

/// Documents: a tenant with every limit at 0 cannot ingest; otherwise ingestion is charged
/// its embedding tokens and counted as a request, and `maxDocuments` / `maxStoredBytes` are
/// enforced with 403 `storage_limit_exceeded` (a replacement counts the difference, a
/// deletion makes room), shown in /v1/usage.
#[tokio::test]
async fn documents_are_metered_and_limited() {
    let redis = RedisServer::start();
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("zero", &spec(0, 0, ""));
    dirs.add_tenant(
        "acme",
        &spec(1_000_000, 1_000, ", maxDocuments: 2, maxStoredBytes: 400"),
    );
    dirs.add_tenant("small", &spec(20, 1_000, ""));
    let server = start(&dirs, &llm, &redis, "");
    let zero = dirs.token("zero", "z");
    let acme = dirs.token("acme", "a");
    let small = dirs.token("small", "s");
    fresh_minute(20).await;

    let doc = |text: &str| json!({"text": text, "title": "t"});
    let (s, body) = server
        .post("/v1/documents", &zero, doc("Nothing is free."))
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let (s, body) = server.get("/v1/documents", &zero).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["documents"], json!([]), "nothing stored");

    // Too many tokens for the budget: refused, nothing stored, nothing charged.
    let long = "Refunds are accepted within thirty days of delivery. ".repeat(5);
    let (s, body) = server.post("/v1/documents", &small, doc(&long)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["limit"], "daily_tokens", "{body}");
    assert_eq!(settled(&server, &small).await["tokens_today"], 0);

    let first = "Acme customers may return any product within 30 days.";
    let (s, a) = server.post("/v1/documents", &acme, doc(first)).await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    let u = settled(&server, &acme).await;
    let embedded = tokens::count("all-MiniLM-L6-v2", first);
    assert_eq!(
        counters(&u),
        (1, embedded),
        "charged its embedding tokens: {u}"
    );
    assert_eq!(
        u["storage"],
        json!({"documents": 1, "bytes": first.len(), "max_documents": 2, "max_stored_bytes": 400}),
        "{u}"
    );
    let second = "Globex ships worldwide.";
    let (s, b) = server.post("/v1/documents", &acme, doc(second)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, body) = server
        .post("/v1/documents", &acme, doc("A third one."))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "storage_limit_exceeded", "{body}");
    assert_eq!(body["error"]["limit"], "max_documents", "{body}");
    // Replacing the first document counts the difference in bytes, not a new document.
    let replaced = format!("{first} Refunds go back to the original payment method.");
    let (s, body) = server
        .post(
            "/v1/documents",
            &acme,
            json!({"id": a["id"], "text": replaced}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let u = usage(&server, &acme).await;
    assert_eq!(u["storage"]["documents"], 2, "{u}");
    assert_eq!(u["storage"]["bytes"], replaced.len() + second.len(), "{u}");
    // Deleting makes room, but not for more bytes than allowed.
    let (s, _) = server
        .delete(
            &format!("/v1/documents/{}", b["id"].as_str().expect("id")),
            &acme,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = server
        .post("/v1/documents", &acme, doc(&"x".repeat(400)))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["limit"], "max_stored_bytes", "{body}");
    let (s, body) = server
        .post("/v1/documents", &acme, doc("A third one."))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let u = usage(&server, &acme).await;
    assert_eq!(u["storage"]["documents"], 2, "{u}");
    assert_eq!(
        u["storage"]["bytes"],
        replaced.len() + "A third one.".len(),
        "{u}"
    );
}

/// Concurrent storage changes against `maxDocuments` 20, in both stores: exactly 20 apply.
#[tokio::test]
async fn storage_limits_are_atomic_in_both_stores() {
    let redis = RedisServer::start();
    let stores: Vec<Arc<dyn QuotaStore>> = vec![
        Arc::new(MemoryStore::default()),
        Arc::new(
            RedisStore::new(&RedisOptions {
                url: redis.url(),
                cluster: false,
                command_timeout: Duration::from_millis(500),
                connect_timeout: Duration::from_millis(500),
            })
            .expect("store"),
        ),
    ];
    let limits = StorageLimits {
        max_documents: Some(20),
        max_stored_bytes: Some(1_000_000),
    };
    let t = TenantId::parse("acme").expect("id");
    for store in stores {
        let tasks: Vec<_> = (0..60)
            .map(|_| {
                let (store, t) = (store.clone(), t.clone());
                tokio::spawn(async move {
                    let add = StorageChange {
                        documents: 1,
                        bytes: 10,
                    };
                    store.change_storage(&t, add, &limits).await.expect("store")
                })
            })
            .collect();
        let mut applied = 0;
        for task in tasks {
            match task.await.expect("task") {
                StorageDecision::Applied(_) => applied += 1,
                StorageDecision::Refused(limit, _) => {
                    assert_eq!(limit, StorageLimit::MaxDocuments);
                }
            }
        }
        assert_eq!(applied, 20, "{}", store.backend());
        assert_eq!(
            store.storage(&t).await.expect("storage"),
            Storage {
                documents: 20,
                bytes: 200
            }
        );
        let remove = StorageChange {
            documents: -25,
            bytes: -500,
        };
        assert_eq!(
            store
                .change_storage(&t, remove, &limits)
                .await
                .expect("store"),
            StorageDecision::Applied(Storage::default()),
            "never below zero"
        );
    }
}
