//! `/v1/chat` latency with the offline responder on the sample tenants and documents: a real
//! `tenantry serve` process (embedded store, local embeddings) on 127.0.0.1.
//!
//! Run: `cargo bench --profile dev --bench chat` (dependencies are optimised in the dev
//! profile; `TENANTRY_BENCH_REQUESTS`, default 300).
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    tenantry::install_crypto_provider();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let n: usize = std::env::var("TENANTRY_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let model = Command::new(root.join("scripts/install-model.sh"))
        .output()
        .expect("install model");
    let model_dir = String::from_utf8_lossy(&model.stdout).trim().to_string();
    let data = tempfile::tempdir().expect("tmp");
    // The sample tenants, with limits high enough not to rate-limit the benchmark.
    let tenants = data.path().join("tenants");
    std::fs::create_dir_all(&tenants).expect("mkdir");
    for t in ["acme", "globex"] {
        let text =
            std::fs::read_to_string(root.join(format!("config/tenants/{t}.yaml"))).expect("sample");
        let text = text.replace(
            "spec:\n",
            "spec:\n  quota: {dailyTokens: 1000000000, requestsPerMinute: 1000000, tokensPerMinute: 1000000000, maxConcurrentRequests: 1000}\n",
        );
        std::fs::write(tenants.join(format!("{t}.yaml")), text).expect("write");
    }
    let bin = env!("CARGO_BIN_EXE_tenantry");
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--tenants")
        .arg(&tenants)
        .env("TENANTRY_MODEL_DIR", &model_dir)
        .env("RUST_LOG", "warn,tenantry::serve=info")
        .env_remove("OPENAI_BASE_URL")
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut addr = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "listening" {
            addr = v["addr"].as_str().unwrap_or_default().to_string();
            break;
        }
    }
    // Keep draining the server's log so it never blocks or fails on a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();
    for tenant in ["acme", "globex"] {
        let out = Command::new(bin)
            .args(["token", "--tenant", tenant, "--sub", "bench"])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--tenants")
            .arg(&tenants)
            .output()
            .expect("token");
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        for doc in std::fs::read_dir(root.join("config/documents").join(tenant))
            .expect("docs")
            .flatten()
        {
            let text = std::fs::read_to_string(doc.path()).expect("read");
            let r = http
                .post(format!("http://{addr}/v1/documents"))
                .bearer_auth(&token)
                .json(
                    &serde_json::json!({"text": text, "title": doc.file_name().to_string_lossy()}),
                )
                .send()
                .await
                .expect("ingest");
            assert!(r.status().is_success());
        }
        tokens.push(token);
    }
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
                .json(&serde_json::json!({"question": q}))
                .send()
                .await
                .expect("chat");
            assert!(r.status().is_success());
            let _ = r.bytes().await;
            t.elapsed().as_secs_f64() * 1000.0
        }
    };
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
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        set.spawn(ask(i));
        if set.len() >= 8 {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    println!(
        "8 concurrent clients: {n} requests in {secs:.2} s = {:.0} requests/s",
        n as f64 / secs
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(10), async { child.wait() }).await;
}
