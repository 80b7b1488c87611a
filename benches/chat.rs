//! `/v1/chat` latency with the offline responder on the sample tenants and documents: a real
//! `tenantry serve` process (embedded store, local embeddings) on 127.0.0.1, the semantic cache
//! bypassed (`Cache-Control: no-cache`), so every question is embedded and retrieved.
//!
//! Run: `cargo bench --bench chat` (release; `TENANTRY_BENCH_REQUESTS`, default 300;
//! `TENANTRY_BENCH_CLIENTS` for the concurrent part, default 8).
#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::Instant;

use support::percentile;

#[tokio::main]
async fn main() {
    let n = support::requests(300);
    let serve = support::Sample::start(None).await;
    let (addr, tokens) = (serve.addr(), serve.tokens.clone());
    let http = reqwest::Client::new();
    let questions = [
        "What is the refund policy?",
        "How long does shipping take?",
        "When is support open?",
        "Can I get my money back?",
    ];
    let ask = |i: usize| {
        let http = http.clone();
        let url = format!("http://{addr}/v1/chat");
        let token = tokens[i % 2].clone();
        let q = questions[i % questions.len()];
        async move {
            let t = Instant::now();
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("cache-control", "no-cache")
                .json(&serde_json::json!({"question": q}))
                .send()
                .await
                .expect("chat");
            assert!(r.status().is_success());
            let _ = r.bytes().await;
            t.elapsed().as_secs_f64() * 1000.0
        }
    };
    let mib = |kib: Option<u64>| kib.map_or(f64::NAN, |k| k as f64 / 1024.0);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    println!(
        "serve RSS idle (model loaded, sample documents ingested): {:.1} MiB",
        mib(serve.rss_kib())
    );
    for i in 0..20 {
        ask(i).await; // warm-up
    }
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        lat.push(ask(i).await);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "sequential /v1/chat, {n} requests: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    let clients: usize = support::env_or("TENANTRY_BENCH_CLIENTS", 8);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        set.spawn(ask(i));
        if set.len() >= clients {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{clients} concurrent clients: {n} requests in {secs:.2} s = {:.0} requests/s",
        n as f64 / secs
    );
    println!("serve RSS at the end: {:.1} MiB", mib(serve.rss_kib()));
    serve.stop();
}
