//! Quota check + settle overhead: `cargo bench --bench quota`.
//!
//! Starts its own `redis-server` on a free 127.0.0.1 port (no persistence), then measures
//! 1. latency of one reserve + settle pair (two Lua scripts, two round trips), sequential,
//!    p50/p90/p99/max over many pairs, for the Redis and the in-process store;
//! 2. sustained reserve + settle pairs per second with N concurrent tasks (one tenant, so every
//!    pair contends for the same keys, the worst case), for both stores.
//!
//! Environment: `BENCH_SECONDS` (default 5) per throughput run, `BENCH_PAIRS` (default 20000)
//! for the latency run.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use support::percentile;
use tenantry::domain::TenantId;
use tenantry::quota::memory::MemoryStore;
use tenantry::quota::redis::{RedisOptions, RedisStore};
use tenantry::quota::{Decision, Limits, Outcome, QuotaStore, ReserveRequest, now_ms};

const LIMITS: Limits = Limits::all(u64::MAX / 4, u64::MAX / 4, u64::MAX / 4, u64::MAX / 4);

async fn pair(store: &dyn QuotaStore, tenant: &TenantId) {
    let d = store
        .reserve(&ReserveRequest {
            tenant: tenant.clone(),
            limits: LIMITS,
            estimate: 600,
            now_ms: now_ms(),
            lease: Duration::from_secs(180),
        })
        .await
        .expect("reserve");
    let Decision::Admitted { ticket, .. } = d else {
        panic!("rejected: {d:?}");
    };
    let done = store
        .finish(&ticket, Outcome::Used { tokens: 420 })
        .await
        .expect("settle");
    assert!(done);
}

/// Microseconds since `t`.
fn micros(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

async fn latency(name: &str, store: &dyn QuotaStore, pairs: usize) {
    let tenant = TenantId::parse("bench-latency").expect("id");
    for _ in 0..500 {
        pair(store, &tenant).await; // warm-up (script load, connection)
    }
    let mut samples = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let t = Instant::now();
        pair(store, &tenant).await;
        samples.push(micros(t));
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "{name:<11} reserve+settle latency over {pairs} sequential pairs: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
    );
}

async fn throughput(name: &str, store: Arc<dyn QuotaStore>, tasks: usize, seconds: u64) {
    let tenant = TenantId::parse("bench-throughput").expect("id");
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (store, tenant, done) = (store.clone(), tenant.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    pair(store.as_ref(), &tenant).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    for h in handles {
        h.await.expect("task");
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "{name:<11} {tasks:>3} concurrent tasks: {:.0} reserve+settle pairs/s ({n} in {:.1} s)",
        n as f64 / start.elapsed().as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

/// The estimate's cost: counting a typical RAG prompt (system prompt, 4 passages of 800
/// characters, a question) with o200k_base.
fn tokenizer(n: usize) {
    use tenantry::llm::Message;
    tenantry::quota::tokens::warm_up();
    let passage = "Acme customers may return any product within 30 days of delivery for a full \
                   refund. Refunds go back to the original payment method within 5 business days. ";
    let context = vec![passage.repeat(5); 4].join("\n\n---\n\n");
    let messages = vec![
        Message::new("system", tenantry::api::chat::system_prompt("acme")),
        Message::new(
            "user",
            format!("Context: {context}\n\nQuestion: What is the refund policy?"),
        ),
    ];
    let chars: usize = messages.iter().map(|m| m.content.len()).sum();
    let mut samples = Vec::with_capacity(n);
    let mut tokens = 0;
    for _ in 0..n {
        let t = Instant::now();
        tokens = tenantry::quota::tokens::prompt_tokens("gpt-4o-mini", &messages);
        samples.push(micros(t));
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "tokenizer   prompt estimate ({chars} chars -> {tokens} tokens, o200k_base) over {n} runs: p50 {:.0} µs, p99 {:.0} µs",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
    );
}

fn main() {
    tenantry::install_crypto_provider();
    let seconds = support::env_or("BENCH_SECONDS", 5);
    let pairs = support::env_or("BENCH_PAIRS", 20_000);
    let redis_server = common::redis::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokenizer(pairs / 10);
    rt.block_on(async {
        let redis: Arc<dyn QuotaStore> = Arc::new(
            RedisStore::new(&RedisOptions {
                url: redis_server.url(),
                cluster: false,
                command_timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(2),
            })
            .expect("store"),
        );
        let memory: Arc<dyn QuotaStore> = Arc::new(MemoryStore::default());
        latency("redis", redis.as_ref(), pairs).await;
        latency("in-process", memory.as_ref(), pairs).await;
        for tasks in [1, 16, 64] {
            throughput("redis", redis.clone(), tasks, seconds).await;
        }
        throughput("in-process", memory.clone(), 16, seconds).await;
    });
}
