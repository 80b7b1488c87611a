//! Quotas and rate limits: the same behavioural tests against the Redis store (real
//! `redis-server` processes on 127.0.0.1, a single node or a Redis Cluster) and the in-process
//! store, first at the store level with an explicit clock (exact window boundaries), then over
//! HTTP against real `tenantry serve` processes with a scripted model that reports a chosen
//! `usage`.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::llm::ScriptedLlm;
use common::redis::{RedisCluster, RedisServer, SharedRedis};
use common::server::{Dirs, Server, Start};
use serde_json::{Value, json};
use tenantry::domain::TenantId;
use tenantry::quota::memory::MemoryStore;
use tenantry::quota::redis::{FINISH, Keys, RESERVE, RedisOptions, RedisStore};
use tenantry::quota::{
    Counters, DAY_MS, Decision, Limit, Limits, MINUTE_MS, Outcome, QuotaStore, ReserveRequest,
    Ticket,
};

// ---------------------------------------------------------------------------------------------
// Store level: explicit clock.

/// A store of its own (its own connections) on `redis`.
fn redis_store(redis: &dyn SharedRedis) -> Arc<dyn QuotaStore> {
    // A cluster's first command fetches the slot map, and a failover moves slots: more room.
    let timeout = Duration::from_millis(if redis.is_cluster() { 2_000 } else { 500 });
    Arc::new(
        RedisStore::new(&RedisOptions {
            url: redis.url(),
            cluster: redis.is_cluster(),
            command_timeout: timeout,
            connect_timeout: timeout,
        })
        .expect("store"),
    )
}

fn limits(daily: u64, rpm: u64, tpm: u64, conc: u64) -> Limits {
    Limits::all(daily, rpm, tpm, conc)
}

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant id")
}

/// A minute start well inside a day, so day and minute windows are independent.
const T0: u64 = 20_000 * DAY_MS + 600 * MINUTE_MS;

async fn reserve(
    store: &dyn QuotaStore,
    t: &TenantId,
    l: Limits,
    estimate: u64,
    now_ms: u64,
) -> Decision {
    store
        .reserve(&ReserveRequest {
            tenant: t.clone(),
            limits: l,
            estimate,
            now_ms,
            lease: Duration::from_secs(60),
        })
        .await
        .expect("store answers")
}

fn admitted(d: Decision) -> Ticket {
    match d {
        Decision::Admitted { ticket, .. } => ticket,
        other => panic!("expected admission, got {other:?}"),
    }
}

fn rejected(d: &Decision) -> Limit {
    match d {
        Decision::Rejected { limit, .. } => *limit,
        other => panic!("expected rejection, got {other:?}"),
    }
}

/// The behaviour both stores must have.
async fn store_behaviour(store: Arc<dyn QuotaStore>, prefix: &str) {
    let s = store.as_ref();

    // Daily budget: exactly the budget fits, one token more does not; settle refunds the
    // difference; release refunds everything; a second settle changes nothing.
    let t = tenant(&format!("{prefix}-daily"));
    let l = limits(1_000, 1_000, 1_000_000, 100);
    let a = admitted(reserve(s, &t, l, 600, T0).await);
    let b = admitted(reserve(s, &t, l, 400, T0).await);
    let d = reserve(s, &t, l, 1, T0).await;
    assert_eq!(rejected(&d), Limit::DailyTokens);
    assert!(
        s.finish(&a, Outcome::Used { tokens: 250 })
            .await
            .expect("settle")
    );
    assert!(
        !s.finish(&a, Outcome::Used { tokens: 0 })
            .await
            .expect("settle"),
        "exactly once"
    );
    assert!(
        !s.finish(&a, Outcome::Released).await.expect("release"),
        "exactly once"
    );
    assert!(s.finish(&b, Outcome::Released).await.expect("release"));
    let u = s.usage(&t, T0).await.expect("usage");
    assert_eq!(
        u,
        Counters {
            daily_tokens: 250,
            minute_requests: 1,
            minute_tokens: 250,
            in_flight: 0
        }
    );
    // The next day starts empty; yesterday's late settle lands in yesterday.
    let next_day = (T0 / DAY_MS + 1) * DAY_MS;
    let c = admitted(reserve(s, &t, l, 700, next_day - 1_000).await);
    assert_eq!(s.usage(&t, next_day).await.expect("usage").daily_tokens, 0);
    let e = admitted(reserve(s, &t, l, 1_000, next_day).await);
    assert!(
        s.finish(&c, Outcome::Used { tokens: 100 })
            .await
            .expect("settle")
    );
    assert_eq!(s.usage(&t, T0).await.expect("usage").daily_tokens, 350);
    assert_eq!(
        s.usage(&t, next_day).await.expect("usage").daily_tokens,
        1_000
    );
    assert!(
        s.finish(&e, Outcome::Used { tokens: 1_000 })
            .await
            .expect("settle")
    );

    // Requests per minute at the boundary: the 4th request in the minute is refused up to its
    // last millisecond and admitted at the first of the next.
    let t = tenant(&format!("{prefix}-rpm"));
    let l = limits(1_000_000, 3, 1_000_000, 100);
    for i in 0..3 {
        let k = admitted(reserve(s, &t, l, 1, T0 + i * 1_000).await);
        assert!(
            s.finish(&k, Outcome::Used { tokens: 1 })
                .await
                .expect("settle")
        );
    }
    let d = reserve(s, &t, l, 1, T0 + MINUTE_MS - 1).await;
    assert_eq!(rejected(&d), Limit::RequestsPerMinute);
    if let Decision::Rejected { used, .. } = d {
        assert_eq!(used.minute_requests, 3);
    }
    // A released (failed) request gives its slot back.
    let k = admitted(reserve(s, &t, l, 1, T0 + MINUTE_MS).await);
    assert!(s.finish(&k, Outcome::Released).await.expect("release"));
    for _ in 0..3 {
        admitted(reserve(s, &t, l, 1, T0 + MINUTE_MS + 5).await);
    }
    assert_eq!(
        rejected(&reserve(s, &t, l, 1, T0 + 2 * MINUTE_MS - 1).await),
        Limit::RequestsPerMinute
    );

    // Tokens per minute, same boundary.
    let t = tenant(&format!("{prefix}-tpm"));
    let l = limits(1_000_000, 1_000, 100, 100);
    admitted(reserve(s, &t, l, 60, T0).await);
    assert_eq!(
        rejected(&reserve(s, &t, l, 41, T0 + MINUTE_MS - 1).await),
        Limit::TokensPerMinute
    );
    admitted(reserve(s, &t, l, 40, T0 + MINUTE_MS - 1).await);
    admitted(reserve(s, &t, l, 100, T0 + MINUTE_MS).await);

    // Concurrency: slots free on settle or release, and a crashed holder's lease expires.
    let t = tenant(&format!("{prefix}-conc"));
    let l = limits(1_000_000, 1_000, 1_000_000, 2);
    let a = admitted(reserve(s, &t, l, 1, T0).await);
    let _leaked = admitted(reserve(s, &t, l, 1, T0).await);
    assert_eq!(
        rejected(&reserve(s, &t, l, 1, T0).await),
        Limit::ConcurrentRequests
    );
    assert!(
        s.finish(&a, Outcome::Used { tokens: 1 })
            .await
            .expect("settle")
    );
    let b = admitted(reserve(s, &t, l, 1, T0).await);
    assert_eq!(s.usage(&t, T0).await.expect("usage").in_flight, 2);
    // 60 s lease: just before it ends both are still in flight, after it the leaked one and
    // `b` are gone.
    assert_eq!(
        rejected(&reserve(s, &t, l, 1, T0 + 59_999).await),
        Limit::ConcurrentRequests
    );
    admitted(reserve(s, &t, l, 1, T0 + 60_000).await);
    assert!(
        !s.finish(&b, Outcome::Used { tokens: 1 })
            .await
            .expect("settle"),
        "an expired lease is not settled again"
    );

    // Tenants are independent.
    let other = tenant(&format!("{prefix}-other"));
    assert_eq!(
        s.usage(&other, T0).await.expect("usage"),
        Counters::default()
    );

    exact_under_concurrency(
        std::slice::from_ref(&store),
        &tenant(&format!("{prefix}-race")),
    )
    .await;
    absent_limits_do_not_limit(s, prefix).await;
}

/// A limit that is not set (a QuotaTier that leaves it out) never refuses; the ones that are
/// set still do.
async fn absent_limits_do_not_limit(s: &dyn QuotaStore, prefix: &str) {
    let t = tenant(&format!("{prefix}-rpm-only"));
    let rpm_only = Limits {
        daily_tokens: None,
        requests_per_minute: Some(5),
        tokens_per_minute: None,
        max_concurrent_requests: None,
    };
    // Five huge reservations, all still in flight: no token or concurrency limit applies.
    for _ in 0..5 {
        admitted(reserve(s, &t, rpm_only, 1_000_000_000_000, T0).await);
    }
    let u = s.usage(&t, T0).await.expect("usage");
    assert_eq!((u.daily_tokens, u.in_flight), (5_000_000_000_000, 5));
    assert_eq!(
        rejected(&reserve(s, &t, rpm_only, 0, T0).await),
        Limit::RequestsPerMinute
    );

    let t = tenant(&format!("{prefix}-daily-only"));
    let daily_only = Limits {
        daily_tokens: Some(10),
        requests_per_minute: None,
        tokens_per_minute: None,
        max_concurrent_requests: None,
    };
    for _ in 0..100 {
        admitted(reserve(s, &t, daily_only, 0, T0).await);
    }
    admitted(reserve(s, &t, daily_only, 10, T0).await);
    assert_eq!(
        rejected(&reserve(s, &t, daily_only, 1, T0).await),
        Limit::DailyTokens
    );
}

/// 300 concurrent reservations of 7 tokens against a budget of 1,000, spread over `stores`
/// (replicas sharing one backend): never more than the budget, and used up exactly.
async fn exact_under_concurrency(stores: &[Arc<dyn QuotaStore>], t: &TenantId) {
    let l = limits(1_000, 1_000_000, 1_000_000, 1_000_000);
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let t = t.clone();
            tokio::spawn(async move {
                matches!(
                    reserve(store.as_ref(), &t, l, 7, T0).await,
                    Decision::Admitted { .. }
                )
            })
        })
        .collect();
    let mut n = 0u64;
    for task in tasks {
        n += u64::from(task.await.expect("task"));
    }
    assert_eq!(n, 1_000 / 7, "admitted exactly floor(budget / estimate)");
    for s in stores {
        assert_eq!(s.usage(t, T0).await.expect("usage").daily_tokens, n * 7);
    }
}

#[tokio::test]
async fn memory_store_behaviour() {
    store_behaviour(Arc::new(MemoryStore::default()), "m").await;
}

#[tokio::test]
async fn redis_store_behaviour_keys_and_expiry() {
    let redis = RedisServer::start();
    store_behaviour(redis_store(&redis), "r").await;
    keys_tagged_and_expiring(&redis).await;
    a_repeated_reserve_counts_once(&redis);
}

/// Every key is namespaced under its tenant's hash tag and expires; returns them all.
async fn keys_tagged_and_expiring(redis: &dyn SharedRedis) -> Vec<String> {
    let store = redis_store(redis);
    let t = tenant("keys");
    let now = tenantry::quota::now_ms();
    let ticket = admitted(reserve(store.as_ref(), &t, limits(100, 100, 100, 100), 5, now).await);
    let keys = Keys::new(&t, ticket.day, ticket.minute);
    let Some(redis::Value::Array(all)) = redis.query(&["KEYS", "*"]) else {
        panic!("KEYS");
    };
    assert!(!all.is_empty());
    let all: Vec<String> = all
        .into_iter()
        .map(|k| match k {
            redis::Value::BulkString(k) => String::from_utf8(k).expect("utf8"),
            other => panic!("key {other:?}"),
        })
        .collect();
    for k in &all {
        assert!(k.starts_with("tenantry:{"), "{k}");
        let Some(redis::Value::Int(ttl)) = redis.query(&["TTL", k]) else {
            panic!("TTL")
        };
        assert!(ttl > 0, "{k} has no expiry");
    }
    assert_eq!(redis.get_int(&keys.day_tokens), 5);
    assert_eq!(redis.get_int(&keys.minute_requests), 1);
    all
}

/// The reserve script run twice with one id (a client resending a command whose connection
/// dropped) reserves once; finishing twice applies once.
fn a_repeated_reserve_counts_once(redis: &dyn SharedRedis) {
    let keys = Keys::new(&tenant("twice"), T0 / DAY_MS, T0 / MINUTE_MS);
    let k = keys.all();
    let (est, now, lease) = ("9".to_string(), T0.to_string(), (T0 + 60_000).to_string());
    let mut reserve = vec![
        "EVAL", RESERVE, "4", k[0], k[1], k[2], k[3], &est, "1000", "1000",
    ];
    reserve.extend(["1000", "10", &now, &lease, "id-1", "172800", "120"]);
    for _ in 0..2 {
        let answer = redis.query(&reserve);
        assert_eq!(
            answer,
            Some(redis::Value::Array(
                [1, -1, 9, 1, 9, 1].map(redis::Value::Int).to_vec()
            ))
        );
    }
    let finish = [
        "EVAL", FINISH, "4", k[0], k[1], k[2], k[3], "id-1", &est, "4", "0",
    ];
    assert_eq!(redis.query(&finish), Some(redis::Value::Int(1)));
    assert_eq!(redis.query(&finish), Some(redis::Value::Int(0)));
    assert_eq!(
        (
            redis.get_int(k[0]),
            redis.get_int(k[1]),
            redis.get_int(k[2])
        ),
        (4, 1, 4)
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP: real `serve` processes.

const CONFIG: &str = "llm:\n  maxTokens: 50\n";

/// The semantic cache is off: these tests count the tokens of upstream calls (a repeated
/// question would otherwise be a cache hit that consumes none; see tests/cache.rs).
fn quota_spec(daily: u64, rpm: u64, tpm: u64, conc: u64) -> String {
    format!(
        "  quota: {{dailyTokens: {daily}, requestsPerMinute: {rpm}, tokensPerMinute: {tpm}, maxConcurrentRequests: {conc}}}\n  semanticCache: {{enabled: false}}\n"
    )
}

/// A `serve` process with `config`, on `redis` when given (a cluster: `quota.redisCluster`
/// added to the config's quota section).
fn start(dirs: &Dirs, llm: &ScriptedLlm, redis: Option<&dyn SharedRedis>, config: &str) -> Server {
    let mut args = Vec::new();
    let mut config = config.to_string();
    if let Some(r) = redis {
        args.extend(["--redis-url".to_string(), r.url()]);
        if r.is_cluster() {
            let cluster = "quota:\n  redisCluster: true\n";
            config = match config.contains("quota:\n") {
                true => config.replacen("quota:\n", cluster, 1),
                false => format!("{config}{cluster}"),
            };
        }
    }
    Server::start(
        dirs,
        Start {
            llm: Some(llm),
            config: Some(dirs.config(&config)),
            args,
            ..Default::default()
        },
    )
}

/// Sends a chat request; returns status, headers and body.
async fn chat_full(
    server: &Server,
    token: &str,
    question: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let r = server
        .http
        .post(server.url("/v1/chat"))
        .bearer_auth(token)
        .json(&json!({"question": question}))
        .send()
        .await
        .expect("request");
    let headers = r.headers().clone();
    let (s, body) = common::server::status_json(r).await;
    (s, headers, body)
}

/// A header's text.
fn header_text<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("missing header {name}: {h:?}"))
        .to_str()
        .expect("ascii")
}

/// Seconds of a duration in OpenAI's format (`1s`, `6m0s`), checking the format.
fn openai_seconds(text: &str) -> u64 {
    let (m, s) = text
        .strip_suffix('s')
        .and_then(|t| t.split_once('m').or(Some(("0", t))))
        .unwrap_or_else(|| panic!("not an OpenAI duration: {text}"));
    m.parse::<u64>().expect("minutes") * 60 + s.parse::<u64>().expect("seconds")
}

fn header(h: &reqwest::header::HeaderMap, name: &str) -> u64 {
    h.get(name)
        .unwrap_or_else(|| panic!("missing header {name}: {h:?}"))
        .to_str()
        .expect("ascii")
        .parse()
        .expect("integer")
}

fn tokens_of(body: &Value) -> u64 {
    body["usage"]["prompt_tokens"].as_u64().expect("usage")
        + body["usage"]["completion_tokens"].as_u64().expect("usage")
}

async fn usage(server: &Server, token: &str) -> Value {
    let (s, body) = server.get("/v1/usage", token).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

/// Waits until the tenant has nothing in flight (releases of cancelled requests run in the
/// background).
async fn wait_idle(server: &Server, token: &str) -> Value {
    for _ in 0..200 {
        let u = usage(server, token).await;
        if u["in_flight"] == 0 {
            return u;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "reservations still in flight: {}",
        usage(server, token).await
    );
}

/// Sleeps into the next minute when fewer than `need` seconds are left in this one, so a
/// sequence of requests stays within one minute window.
async fn fresh_minute(need: u64) {
    let now = tenantry::quota::now_ms();
    let left = MINUTE_MS - now % MINUTE_MS;
    if left < need * 1000 {
        tokio::time::sleep(Duration::from_millis(left + 50)).await;
    }
}

async fn metric_value(server: &Server, needle: &str) -> Option<f64> {
    let text = server.metrics().await;
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The HTTP behaviour both backends must have: settle to actual usage (successes, upstream
/// failures, client cancellations), concurrency limit, budget exhaustion, headers, metrics,
/// `/v1/usage` scoped to the caller.
/// Waits, if the UTC day ends within 3 minutes, until it has begun again: a test that uses up
/// a daily budget must not straddle midnight, where the budget rightly starts over (and a run
/// across it admits a second day's worth).
async fn clear_of_midnight() {
    const MARGIN_MS: u64 = 3 * 60_000;
    let left = DAY_MS - tenantry::quota::now_ms() % DAY_MS;
    if left < MARGIN_MS {
        tokio::time::sleep(Duration::from_millis(left + 1_000)).await;
    }
}

async fn http_behaviour(redis: Option<&dyn SharedRedis>) {
    clear_of_midnight().await;
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", &quota_spec(100_000, 1_000, 10_000_000, 2));
    dirs.add_tenant("tiny", &quota_spec(300, 1_000, 10_000_000, 10));
    dirs.add_tenant("globex", &quota_spec(100_000, 1_000, 10_000_000, 10));
    let server = start(&dirs, &llm, redis, CONFIG);
    let acme = dirs.token("acme", "alice");
    let expected_backend = if redis.is_some() {
        "redis"
    } else {
        "in-process"
    };
    assert_eq!(usage(&server, &acme).await["backend"], expected_backend);

    // Settle: successes charge their actual usage; a failure after the upstream read the
    // request and a cancellation are billed too (the request stays counted).
    fresh_minute(20).await;
    let (s, h, body) = chat_full(&server, &acme, "one [[usage:100:20]]").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(tokens_of(&body), 120);
    assert_eq!(header(&h, "x-ratelimit-limit-tokens-day"), 100_000);
    assert_eq!(header(&h, "x-ratelimit-limit-requests"), 1_000);
    assert_eq!(header(&h, "x-ratelimit-remaining-requests"), 999);
    assert_eq!(header(&h, "x-ratelimit-limit-concurrent"), 2);
    assert!(openai_seconds(header_text(&h, "x-ratelimit-reset-requests")) <= 60);
    assert!(openai_seconds(header_text(&h, "x-ratelimit-reset-tokens")) <= 60);
    assert!(header(&h, "x-ratelimit-reset-tokens-day") <= 86_400);
    let (s, _, body) = chat_full(&server, &acme, "two [[usage:30:5]]").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, _, body) = chat_full(&server, &acme, "three [[fail]]").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    // The client gives up while the model is still answering: the handler is dropped.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .expect("client");
    let r = impatient
        .post(server.url("/v1/chat"))
        .bearer_auth(&acme)
        .json(&json!({"question": "four [[delay:3000]] [[usage:999:999]]"}))
        .send()
        .await;
    assert!(r.is_err(), "the request was expected to time out");
    let u = wait_idle(&server, &acme).await;
    let charged = u["tokens_today"].as_u64().expect("tokens");
    // The failed call its prompt, the cancelled one its whole reservation (more than the 50
    // tokens the answer was allowed).
    assert!(charged > 155 + 50, "{u}");
    assert_eq!(u["tokens_this_minute"], charged, "{u}");
    assert_eq!(
        u["requests_this_minute"], 6,
        "every call counts, each of the failed one's three attempts too: {u}"
    );
    assert_eq!(u["limits"]["daily_tokens"], 100_000);
    assert_eq!(u["remaining"]["daily_tokens"], 100_000 - charged);
    // The usage read set the gauge of what is left.
    assert_eq!(
        metric_value(&server, r#"quota_daily_tokens_remaining{tenant_id="acme"}"#).await,
        Some((100_000 - charged) as f64)
    );
    assert_eq!(u["tenant_id"], "acme");
    assert!(u["resets_at"]["daily_tokens"].as_u64().expect("reset") % 86_400 == 0);
    if let Some(r) = redis {
        let now = tenantry::quota::now_ms();
        let keys = Keys::new(&tenant("acme"), tenantry::quota::day_of(now), 0);
        assert_eq!(r.get_int(&keys.day_tokens) as u64, charged);
    }
    // Other tenants see only their own usage.
    let globex = dirs.token("globex", "bob");
    let g = usage(&server, &globex).await;
    assert_eq!(
        (g["tenant_id"].clone(), g["tokens_today"].clone()),
        (json!("globex"), json!(0))
    );

    // Concurrency: two requests in flight fill acme's two slots.
    let holders: Vec<_> = (0..2)
        .map(|i| {
            let (http, url, token) = (server.http.clone(), server.url("/v1/chat"), acme.clone());
            tokio::spawn(async move {
                let r = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({"question": format!("hold {i} [[delay:2500]] [[usage:1:1]]")}))
                    .send()
                    .await
                    .expect("request");
                r.status().as_u16()
            })
        })
        .collect();
    for _ in 0..200 {
        if usage(&server, &acme).await["in_flight"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, h, body) = chat_full(&server, &acme, "third [[usage:1:1]]").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["limit"], "concurrent_requests");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("concurrent_requests")
    );
    assert_eq!(header(&h, "retry-after"), 1);
    assert_eq!(header(&h, "x-ratelimit-limit"), 2);
    assert_eq!(header(&h, "x-ratelimit-remaining"), 0);
    assert_eq!(header(&h, "x-ratelimit-limit-concurrent"), 2);
    for hld in holders {
        assert_eq!(hld.await.expect("task"), 200);
    }
    let (s, _, body) = chat_full(&server, &acme, "after [[usage:1:1]]").await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // Daily budget: admitted until the next estimate no longer fits, then 429 naming the limit.
    let tiny = dirs.token("tiny", "t");
    let mut admitted_tokens = 0;
    let mut estimate = 0;
    let last = loop {
        let (s, h, body) = chat_full(&server, &tiny, "budget [[usage:exact]]").await;
        if s != StatusCode::OK {
            break (s, h, body);
        }
        estimate = tokens_of(&body);
        admitted_tokens += estimate;
        assert!(admitted_tokens <= 300);
    };
    let (s, h, body) = last;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["limit"], "daily_tokens");
    // OpenAI's code for a spent quota, and its SDKs are told not to retry.
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    assert_eq!(header_text(&h, "x-should-retry"), "false");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("daily_tokens")
    );
    assert!(
        estimate > 50 && admitted_tokens + estimate > 300,
        "budget used up: {admitted_tokens}"
    );
    assert_eq!(header(&h, "x-ratelimit-limit"), 300);
    assert_eq!(header(&h, "x-ratelimit-remaining"), 300 - admitted_tokens);
    let retry = header(&h, "retry-after");
    assert_eq!(header(&h, "x-ratelimit-reset"), retry);
    assert_eq!(header(&h, "x-ratelimit-reset-tokens-day"), retry);
    let to_midnight = (DAY_MS - tenantry::quota::now_ms() % DAY_MS).div_ceil(1000);
    assert!(
        retry >= to_midnight.saturating_sub(5) && retry <= to_midnight + 5,
        "{retry}"
    );
    // The refusal set the gauge of what is left, as the usage read does.
    assert_eq!(
        metric_value(&server, r#"quota_daily_tokens_remaining{tenant_id="tiny"}"#).await,
        Some((300 - admitted_tokens) as f64)
    );
    assert_eq!(usage(&server, &tiny).await["tokens_today"], admitted_tokens);
    assert_eq!(
        metric_value(
            &server,
            r#"llm_rate_limited_total{tenant_id="tiny",limit="daily_tokens"}"#
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &server,
            r#"llm_rate_limited_total{tenant_id="acme",limit="concurrent_requests"}"#
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn http_behaviour_in_process() {
    http_behaviour(None).await;
}

#[tokio::test]
async fn http_behaviour_redis() {
    let redis = RedisServer::start();
    http_behaviour(Some(&redis)).await;
}

/// Requests per minute over HTTP at a real minute boundary: refused with the time to the
/// boundary, admitted again after it; a call the upstream failed counts (it reached it).
async fn rpm_boundary(redis: Option<&dyn SharedRedis>) {
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", &quota_spec(1_000_000, 3, 10_000_000, 10));
    let server = start(&dirs, &llm, redis, &format!("{CONFIG}  retries: 0\n"));
    let token = dirs.token("acme", "alice");
    fresh_minute(15).await;
    let (s, _, _) = chat_full(&server, &token, "x [[fail]]").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    for i in 0..2 {
        let (s, h, body) = chat_full(&server, &token, &format!("q{i} [[usage:1:1]]")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(header(&h, "x-ratelimit-remaining-requests"), 1 - i);
    }
    let (s, h, body) = chat_full(&server, &token, "q3 [[usage:1:1]]").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["limit"], "requests_per_minute");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert!(
        h.get("x-should-retry").is_none(),
        "a per-minute limit may be retried"
    );
    let retry = header(&h, "retry-after");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(header(&h, "x-ratelimit-limit"), 3);
    assert_eq!(header(&h, "x-ratelimit-remaining"), 0);
    assert_eq!(header(&h, "x-ratelimit-reset"), retry);
    assert_eq!(
        openai_seconds(header_text(&h, "x-ratelimit-reset-requests")),
        retry
    );
    let u = usage(&server, &token).await;
    assert_eq!(u["requests_this_minute"], 3);
    let reset = u["resets_at"]["requests_per_minute"]
        .as_u64()
        .expect("reset");
    assert_eq!(reset % 60, 0);
    // Wait for the boundary the server announced.
    let wait = (reset * 1000).saturating_sub(tenantry::quota::now_ms()) + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let (s, h, body) = chat_full(&server, &token, "q4 [[usage:1:1]]").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(header(&h, "x-ratelimit-remaining-requests"), 2);
}

/// A QuotaTier with only some limits (here only `requestsPerMinute`): the others do not limit
/// (no headers, null in `/v1/usage`), the one set does.
async fn partial_tier(redis: Option<&dyn SharedRedis>) {
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.write_manifest(
        "open.yaml",
        "apiVersion: tenantry.dev/v1alpha1\nkind: QuotaTier\nmetadata: {name: rpm-only}\nspec: {requestsPerMinute: 3}\n---\napiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: open}\nspec:\n  tier: rpm-only\n  semanticCache: {enabled: false}\n",
    );
    let server = start(&dirs, &llm, redis, CONFIG);
    let token = dirs.token("open", "alice");
    fresh_minute(15).await;
    for i in 0..3 {
        let (s, h, body) = chat_full(&server, &token, &format!("q{i} [[usage:100000:50]]")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(header(&h, "x-ratelimit-limit-requests"), 3);
        assert_eq!(header(&h, "x-ratelimit-remaining-requests"), 2 - i);
        for absent in ["tokens-day", "tokens", "concurrent"] {
            let name = format!("x-ratelimit-limit-{absent}");
            assert!(h.get(&name).is_none(), "{name} without such a limit");
        }
    }
    let u = usage(&server, &token).await;
    assert_eq!(u["limits"]["requests_per_minute"], 3);
    assert_eq!(u["remaining"]["requests_per_minute"], 0);
    for absent in ["daily_tokens", "tokens_per_minute", "concurrent_requests"] {
        assert_eq!(u["limits"][absent], Value::Null, "{u}");
        assert_eq!(u["remaining"][absent], Value::Null, "{u}");
    }
    assert!(u["tokens_today"].as_u64().expect("tokens") > 0, "{u}");
    let (s, _, body) = chat_full(&server, &token, "q3 [[usage:1:1]]").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["limit"], "requests_per_minute");
}

#[tokio::test]
async fn a_partial_tier_limits_only_what_it_sets_in_process() {
    partial_tier(None).await;
}

#[tokio::test]
async fn a_partial_tier_limits_only_what_it_sets_redis() {
    let redis = RedisServer::start();
    partial_tier(Some(&redis)).await;
}

#[tokio::test]
async fn rpm_window_boundary_in_process() {
    rpm_boundary(None).await;
}

#[tokio::test]
async fn rpm_window_boundary_redis() {
    let redis = RedisServer::start();
    rpm_boundary(Some(&redis)).await;
}

/// 500 concurrent requests against a small daily budget over `replicas` `serve` processes
/// (sharing one Redis when given): admitted tokens never exceed the budget and use it up to
/// within one request's estimate; nothing stays reserved.
async fn concurrent_budget(redis: Option<&dyn SharedRedis>, replicas: usize) {
    const BUDGET: u64 = 5_000;
    clear_of_midnight().await;
    let llm = ScriptedLlm::start().await;
    let spec = quota_spec(BUDGET, 1_000_000, 1_000_000_000, 1_000_000);
    let all_dirs: Vec<Dirs> = (0..replicas).map(|_| Dirs::new()).collect();
    let mut servers = Vec::new();
    for (i, dirs) in all_dirs.iter().enumerate() {
        dirs.add_tenant("acme", &spec);
        if i > 0 {
            // Every replica verifies the same tenant key (as with the operator's Secret).
            let keys = dirs.data().join("keys");
            std::fs::create_dir_all(&keys).expect("mkdir");
            std::fs::copy(
                all_dirs[0].data().join("keys/acme.json"),
                keys.join("acme.json"),
            )
            .expect("copy key");
        }
        servers.push(start(dirs, &llm, redis, CONFIG));
    }
    let token = all_dirs[0].token("acme", "alice");
    let servers = Arc::new(servers);
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let (servers, token) = (servers.clone(), token.clone());
            tokio::spawn(async move {
                let server = &servers[i % servers.len()];
                let (s, _, body) = chat_full(
                    server,
                    &token,
                    "What is the refund policy? [[usage:exact]] [[delay:20]]",
                )
                .await;
                (s, body)
            })
        })
        .collect();
    let mut admitted = 0u64;
    let mut estimate = 0u64;
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (s, body) = t.await.expect("task");
        match s {
            StatusCode::OK => {
                ok += 1;
                let n = tokens_of(&body);
                assert!(
                    estimate == 0 || estimate == n,
                    "same question, same estimate"
                );
                estimate = n;
                admitted += n;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert_eq!(body["error"]["limit"], "daily_tokens", "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ok + limited, 500);
    assert!(estimate > 50, "{estimate}");
    assert!(
        admitted <= BUDGET,
        "admitted {admitted} tokens over a budget of {BUDGET}"
    );
    assert!(
        BUDGET - admitted < estimate,
        "budget under-used: {admitted} of {BUDGET} with requests of {estimate}"
    );
    assert_eq!(ok as u64, BUDGET / estimate);
    for server in servers.iter() {
        let u = wait_idle(server, &token).await;
        assert_eq!(u["tokens_today"], admitted, "{u}");
    }
    if let Some(r) = redis {
        let keys = Keys::new(
            &tenant("acme"),
            tenantry::quota::day_of(tenantry::quota::now_ms()),
            0,
        );
        assert_eq!(r.get_int(&keys.day_tokens) as u64, admitted);
        assert_eq!(
            r.query(&["ZCARD", &keys.in_flight]),
            Some(redis::Value::Int(0))
        );
    }
}

#[tokio::test]
async fn five_hundred_concurrent_three_replicas_one_redis() {
    let redis = RedisServer::start();
    concurrent_budget(Some(&redis), 3).await;
}

#[tokio::test]
async fn five_hundred_concurrent_in_process() {
    concurrent_budget(None, 1).await;
}

#[tokio::test]
async fn five_hundred_concurrent_three_replicas_redis_cluster() {
    let cluster = RedisCluster::start(3, 0);
    concurrent_budget(Some(&cluster), 3).await;
}

// ---------------------------------------------------------------------------------------------
// Redis Cluster at the store level.

/// Three primaries: the whole store behaviour on the cluster; every tenant's keys share one slot
/// (CLUSTER KEYSLOT over the real keys) and the tenants land on several primaries (so scripts
/// really are routed); exact under concurrency over three stores of their own.
#[tokio::test]
async fn redis_cluster_store_behaviour_slots_and_replicas() {
    let cluster = RedisCluster::start(3, 0);
    store_behaviour(redis_store(&cluster), "c").await;
    a_repeated_reserve_counts_once(&cluster);
    let mut slots: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for k in keys_tagged_and_expiring(&cluster).await {
        let tag = k.split(['{', '}']).nth(1).expect("hash tag").to_string();
        slots.entry(tag).or_default().insert(cluster.keyslot(&k));
    }
    for t in [
        "c-daily", "c-rpm", "c-tpm", "c-conc", "c-race", "keys", "twice",
    ] {
        assert!(slots.contains_key(t), "no keys of {t}: {slots:?}");
    }
    for (tenant, s) in &slots {
        assert_eq!(s.len(), 1, "{tenant}'s keys span slots {s:?}");
    }
    let primaries: BTreeSet<u16> = slots
        .values()
        .flatten()
        .map(|slot| cluster.shard_of(*slot).0)
        .collect();
    assert!(
        primaries.len() >= 2,
        "all tenants on one primary: {slots:?}"
    );
    let stores: Vec<_> = (0..3).map(|_| redis_store(&cluster)).collect();
    exact_under_concurrency(&stores, &tenant("c-replicas")).await;
}

/// Reservations of 7 tokens against a budget of [`TRAFFIC_BUDGET`] reservations, from
/// [`TRAFFIC_TASKS`] loops spread over several stores, each settled (retried until the store
/// answers); a loop ends once it sees the budget used up after `done` was set.
struct Traffic {
    admitted: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const TRAFFIC_BUDGET: u64 = 3_000;
const TRAFFIC_TASKS: usize = 24;

impl Traffic {
    fn start(stores: &[Arc<dyn QuotaStore>], t: &TenantId) -> Self {
        let (admitted, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let done = Arc::new(AtomicBool::new(false));
        let tasks = (0..TRAFFIC_TASKS)
            .map(|i| {
                let store = stores[i % stores.len()].clone();
                let (t, admitted, errors, done) =
                    (t.clone(), admitted.clone(), errors.clone(), done.clone());
                tokio::spawn(async move {
                    traffic_loop(store.as_ref(), &t, &admitted, &errors, &done).await;
                })
            })
            .collect();
        Self {
            admitted,
            errors,
            done,
            tasks,
        }
    }

    async fn wait_admitted(&self, n: u64) {
        while self.admitted.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Lets the loops run out the budget; returns (admitted, store errors seen).
    async fn finish(self) -> (u64, u64) {
        self.done.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("traffic task");
        }
        (
            self.admitted.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

async fn traffic_loop(
    store: &dyn QuotaStore,
    t: &TenantId,
    admitted: &AtomicU64,
    errors: &AtomicU64,
    done: &AtomicBool,
) {
    let l = limits(7 * TRAFFIC_BUDGET, u64::MAX / 2, u64::MAX / 2, u64::MAX / 2);
    let req = ReserveRequest {
        tenant: t.clone(),
        limits: l,
        estimate: 7,
        now_ms: T0,
        lease: Duration::from_secs(60),
    };
    let mut answered = Instant::now();
    loop {
        let reply = store.reserve(&req).await;
        if reply.is_ok() {
            answered = Instant::now();
        }
        assert!(
            answered.elapsed() < Duration::from_secs(60),
            "the store did not recover: {reply:?}"
        );
        match reply {
            Ok(Decision::Admitted { ticket, .. }) => {
                admitted.fetch_add(1, Ordering::Relaxed);
                while let Err(e) = store.finish(&ticket, Outcome::Used { tokens: 7 }).await {
                    assert!(
                        answered.elapsed() < Duration::from_secs(60),
                        "the store did not recover: {e}"
                    );
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Ok(Decision::Rejected { limit, .. }) => {
                assert_eq!(limit, Limit::DailyTokens);
                if done.load(Ordering::Relaxed) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Six nodes (three primaries with a replica each), traffic from three stores:
/// - `CLUSTER FAILOVER` of the tenant's primary mid-traffic: the budget stays exact — exactly
///   `TRAFFIC_BUDGET` reservations admitted, the counter exactly theirs, nothing left in flight;
/// - the primary of another tenant killed mid-traffic: its replica takes over and the store
///   serves again; what a crash loses (writes not yet replicated) is measured and bounded by
///   the reservations that were in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_failover_during_traffic() {
    let mut cluster = RedisCluster::start(3, 1);
    let stores: Vec<_> = (0..3).map(|_| redis_store(&cluster)).collect();

    let t = tenant("graceful");
    let keys = Keys::new(&t, T0 / DAY_MS, T0 / MINUTE_MS);
    let slot = cluster.keyslot(&keys.day_tokens);
    let traffic = Traffic::start(&stores, &t);
    traffic.wait_admitted(TRAFFIC_BUDGET / 3).await;
    let started = Instant::now();
    let before = traffic.admitted.load(Ordering::Relaxed);
    let (old, new) = tokio::task::block_in_place(|| cluster.failover(slot));
    let took = started.elapsed();
    let (admitted, errors) = traffic.finish().await;
    eprintln!(
        "CLUSTER FAILOVER {old} -> {new}: {took:?}; {before} admitted before, {admitted} in all, \
         {errors} store errors"
    );
    assert_eq!(admitted, TRAFFIC_BUDGET, "admitted exactly the budget");
    let u = wait_store_idle(stores[0].as_ref(), &t).await;
    assert_eq!(u.daily_tokens, 7 * TRAFFIC_BUDGET, "{u:?}");
    assert_eq!(cluster.get_int(&keys.day_tokens) as u64, 7 * TRAFFIC_BUDGET);

    let t = tenant("crash");
    let keys = Keys::new(&t, T0 / DAY_MS, T0 / MINUTE_MS);
    let slot = cluster.keyslot(&keys.day_tokens);
    let traffic = Traffic::start(&stores, &t);
    traffic.wait_admitted(TRAFFIC_BUDGET / 3).await;
    let started = Instant::now();
    let (killed, new) = tokio::task::block_in_place(|| cluster.kill_primary(slot));
    let took = started.elapsed();
    let (admitted, errors) = traffic.finish().await;
    let u = stores[0]
        .usage(&t, T0)
        .await
        .expect("usage after the failover");
    // Left in flight: reservations whose answer or settlement the crash lost (never released:
    // the explicit clock stands still, so their leases never end).
    let stuck = u.in_flight;
    // Reservations admitted beyond the budget: the primary acknowledged them but died before
    // its replica had them (Redis replicates asynchronously).
    let overshoot = (admitted + stuck).saturating_sub(TRAFFIC_BUDGET);
    eprintln!(
        "primary {killed} killed, {new} took over after {took:?}: {admitted} admitted for a \
         budget of {TRAFFIC_BUDGET}, {stuck} left in flight, at most {overshoot} lost by the \
         crash, {errors} store errors"
    );
    assert_eq!(
        u.daily_tokens,
        7 * TRAFFIC_BUDGET,
        "the surviving primary never exceeds the budget and uses it up"
    );
    assert!(
        stuck <= TRAFFIC_TASKS as u64,
        "only what was in flight: {u:?}"
    );
    assert!(
        admitted + stuck >= TRAFFIC_BUDGET,
        "nothing charged that was neither admitted nor in flight: {admitted} {u:?}"
    );
}

/// Waits until the tenant has nothing in flight at `T0` (background releases of reservations
/// whose answer was lost); returns its usage.
async fn wait_store_idle(store: &dyn QuotaStore, t: &TenantId) -> Counters {
    for _ in 0..200 {
        if let Ok(u) = store.usage(t, T0).await
            && u.in_flight == 0
        {
            return u;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{t}: reservations still in flight: {:?}",
        store.usage(t, T0).await
    );
}

/// Redis killed mid-run: fail-closed answers 503, fail-open serves (and says so in /readyz and
/// the metrics); once Redis is back both enforce again, without a restart.
#[tokio::test]
async fn redis_killed_mid_run() {
    let mut redis = RedisServer::start();
    let llm = ScriptedLlm::start().await;
    let timeouts = "  commandTimeoutMs: 200\n  connectTimeoutMs: 200\n";
    let closed_dirs = Dirs::new();
    closed_dirs.add_tenant("acme", &quota_spec(1_000_000, 5, 10_000_000, 10));
    let closed = start(
        &closed_dirs,
        &llm,
        Some(&redis),
        &format!("{CONFIG}quota:\n  failMode: failClosed\n{timeouts}"),
    );
    let open_dirs = Dirs::new();
    open_dirs.add_tenant("acme", &quota_spec(1_000_000, 5, 10_000_000, 10));
    let open = start(
        &open_dirs,
        &llm,
        Some(&redis),
        &format!("{CONFIG}quota:\n  failMode: failOpen\n{timeouts}"),
    );
    let tc = closed_dirs.token("acme", "a");
    let to = open_dirs.token("acme", "a");
    // Both instances use the same Redis and the same tenant: they share its budget.
    let (s, _, body) = chat_full(&closed, &tc, "up [[usage:1:1]]").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, _, body) = chat_full(&open, &to, "up [[usage:1:1]]").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, ready) = closed.get("/readyz", "").await;
    assert_eq!(
        (s, ready["checks"]["quota"].clone()),
        (StatusCode::OK, json!("ok"))
    );

    redis.kill();
    for _ in 0..3 {
        let (s, _, body) = chat_full(&closed, &tc, "down [[usage:1:1]]").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "quota_unavailable");
        assert!(
            !body.to_string().contains("127.0.0.1"),
            "no internals: {body}"
        );
        let (s, _, body) = chat_full(&open, &to, "down [[usage:1:1]]").await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    let (s, _) = closed.get("/v1/usage", &tc).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, ready) = closed.get("/readyz", "").await;
    assert_eq!(
        (s, ready["checks"]["quota"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("unavailable"))
    );
    let (s, ready) = open.get("/readyz", "").await;
    assert_eq!(
        (s, ready["checks"]["quota"].clone()),
        (StatusCode::OK, json!("unavailable"))
    );
    assert_eq!(
        metric_value(&open, r#"quota_fail_open_total{tenant_id="acme"}"#).await,
        Some(3.0)
    );

    redis.restart();
    let mut back = false;
    for _ in 0..100 {
        let (s, _, _) = chat_full(&closed, &tc, "back [[usage:1:1]]").await;
        if s == StatusCode::OK {
            back = true;
            break;
        }
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "fail-closed instance never recovered");
    // Enforcement resumes on the fail-open instance too: 5 requests per minute.
    let mut limited = None;
    for _ in 0..12 {
        let (s, _, body) = chat_full(&open, &to, "again [[usage:1:1]]").await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(body);
            break;
        }
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    let body = limited.expect("rate limit enforced again after Redis returned");
    assert_eq!(body["error"]["limit"], "requests_per_minute");
    let (s, u) = open.get("/v1/usage", &to).await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(u["backend"], "redis");
}

/// `rediss://` with a password and a private CA (trusted through SSL_CERT_FILE): quotas are
/// enforced over TLS; a wrong password is a clean 503 and no password ever reaches the logs.
#[tokio::test]
async fn redis_over_tls_with_password() {
    let redis = RedisServer::start_tls("s3cret-pw");
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", &quota_spec(1_000_000, 2, 10_000_000, 10));
    let env = vec![("SSL_CERT_FILE".to_string(), redis.ca())];
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(&llm),
            config: Some(dirs.config(CONFIG)),
            args: vec![
                "--redis-url".into(),
                format!("rediss://:s3cret-pw@127.0.0.1:{}", redis.port),
            ],
            env: env.clone(),
        },
    );
    let token = dirs.token("acme", "alice");
    fresh_minute(10).await;
    for i in 0..2 {
        let (s, _, body) = chat_full(&server, &token, &format!("tls {i} [[usage:3:4]]")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    let (s, _, body) = chat_full(&server, &token, "tls 2 [[usage:3:4]]").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let u = usage(&server, &token).await;
    assert_eq!(
        (u["backend"].clone(), u["tokens_today"].clone()),
        (json!("redis"), json!(14))
    );

    let bad_dirs = Dirs::new();
    bad_dirs.add_tenant("acme", "");
    let bad = Server::start(
        &bad_dirs,
        Start {
            llm: Some(&llm),
            args: vec![
                "--redis-url".into(),
                format!("rediss://:wrong-pw@127.0.0.1:{}", redis.port),
            ],
            env,
            ..Default::default()
        },
    );
    let (s, _, body) = chat_full(&bad, &bad_dirs.token("acme", "a"), "x").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "quota_unavailable");
    for (srv, secret) in [(&server, "s3cret-pw"), (&bad, "wrong-pw")] {
        let logs = srv.logs.lock().expect("lock").join("\n");
        assert!(logs.contains("quotas in Redis"), "{logs}");
        assert!(!logs.contains(secret), "password in the logs:\n{logs}");
    }
}
