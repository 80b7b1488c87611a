//! Gateway overhead, side by side: the same `POST /v1/chat/completions` sent straight to a mock
//! OpenAI-compatible upstream and through each gateway in front of it, driven by `wrk`.
//!
//! Run: `scripts/bench-gateways.sh` (installs the peers and `wrk`, then runs this in release).
//! Targets: direct to the mock; `tenantry serve` with in-process quotas and with Redis quotas
//! (a `redis-server` started here); LiteLLM's proxy (`TENANTRY_BENCH_LITELLM`: its `litellm`
//! command) and Portkey's gateway (`TENANTRY_BENCH_PORTKEY`: its `build/start-server.js`) when
//! given. Each round runs every target at c=1 (`wrk -t1 -c1`) and c=16 (`wrk -t2 -c16`) for
//! `TENANTRY_BENCH_SECONDS` (default 10) after a 2 s warm-up, in turn; `TENANTRY_BENCH_ROUNDS`
//! rounds (default 2). Then a streaming case, sequential, measured by this process: time to
//! the first content chunk and to the end of a 50-chunk stream. Prints one Markdown table,
//! overhead = gateway − direct of the same round.
//!
//! Soak (`TENANTRY_BENCH_SOAK_MINUTES`, e.g. 10): instead of the rounds, tenantry with
//! in-process quotas under `wrk -c16` for that long, its RSS sampled every 30 s; prints one
//! table of RSS and requests/s per 30 s slice.
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use axum::routing::post;
use futures::StreamExt as _;

/// The mock's answer to a plain completion.
const COMPLETION: &str = r#"{"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Acme customers may return any product within 30 days for a full refund."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":16,"total_tokens":40}}"#;

/// The LiteLLM proxy's master key (a fixed benchmark value; the proxy listens on loopback).
const LITELLM_KEY: &str = "sk-5f0c1b7e9a2d4c6e8f1a3b5d7c9e0f2a4b6d8c0e1f3a5b7c9d0e2f4a6b8c0d1e";

/// Chunks of the mock's streamed answer.
const STREAM_CHUNKS: usize = 50;

/// The request every target gets.
const PLAIN: &str = r#"{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the refund policy?"}]}"#;
const STREAMED: &str = r#"{"model":"gpt-4o-mini","max_tokens":512,"stream":true,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the refund policy?"}]}"#;

/// The mock upstream's SSE body: [`STREAM_CHUNKS`] one-word chunks, usage, `[DONE]`.
fn stream_body() -> String {
    let mut body = String::new();
    for i in 0..STREAM_CHUNKS {
        body.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    body.push_str("data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":24,\"completion_tokens\":50,\"total_tokens\":74}}\n\ndata: [DONE]\n\n");
    body
}

/// Starts the mock upstream on its own runtime thread; returns its address.
fn start_mock() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let streamed = Bytes::from(stream_body());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/v1/chat/completions",
                post(move |body: Bytes| {
                    let streamed = streamed.clone();
                    async move {
                        let stream = asks_for_stream(&body);
                        let (kind, bytes) = if stream {
                            ("text/event-stream", streamed)
                        } else {
                            (
                                "application/json",
                                Bytes::from_static(COMPLETION.as_bytes()),
                            )
                        };
                        Response::builder()
                            .header(header::CONTENT_TYPE, kind)
                            .body(Body::from(bytes))
                            .expect("response")
                    }
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("mock");
        });
    });
    addr
}

/// Whether a request body asks for a stream.
fn asks_for_stream(body: &[u8]) -> bool {
    body.windows(13).any(|w| w == b"\"stream\":true")
        || body.windows(14).any(|w| w == b"\"stream\": true")
}

/// One gateway under test.
struct Target {
    name: &'static str,
    url: String,
    headers: Vec<(String, String)>,
    _process: Option<Guard>,
}

/// Kills a child process on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free 127.0.0.1 port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until `url` answers a plain completion with 200 (with `headers`).
async fn wait_ready(url: &str, headers: &[(String, String)], what: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut req = client
            .post(url)
            .header("content-type", "application/json")
            .body(PLAIN);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Ok(r) = req.send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not become ready");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One round's runs of every target: (c=1, c=16).
type Round = [(Run, Run)];

/// wrk's figures for one run.
#[derive(Clone, Copy, Default)]
struct Run {
    p50_us: f64,
    p99_us: f64,
    rps: f64,
}

/// A wrk duration (`123.45us`, `1.20ms`, `2.00s`) in microseconds.
fn micros(s: &str) -> f64 {
    let (n, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 6e7,
        _ => f64::NAN,
    }
}

/// Runs wrk against `target` with `c` connections for `secs` seconds.
fn wrk(target: &Target, script: &std::path::Path, c: usize, secs: u64) -> Run {
    let threads = c.min(2);
    let out = Command::new("wrk")
        .args([
            format!("-t{threads}"),
            format!("-c{c}"),
            format!("-d{secs}s"),
            "--latency".to_string(),
            "-s".to_string(),
        ])
        .arg(script)
        .arg(&target.url)
        .output()
        .expect("wrk (Debian: apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "{}: wrk saw errors:\n{text}",
        target.name
    );
    let mut run = Run::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("50%"), Some(v)) => run.p50_us = micros(v),
            (Some("99%"), Some(v)) => run.p99_us = micros(v),
            (Some("Requests/sec:"), Some(v)) => run.rps = v.parse().unwrap_or(f64::NAN),
            _ => {}
        }
    }
    run
}

/// `target` under 16 connections for `minutes`, in 30 s slices, with `sample`'s RSS after each.
fn soak(target: &Target, script: &std::path::Path, sample: &support::Sample, minutes: u64) {
    let mib = |s: &support::Sample| s.rss_kib().map_or(f64::NAN, |k| k as f64 / 1024.0);
    println!("| time (s) | RSS (MiB) | requests/s in the slice | p99 in the slice (µs) |");
    println!("|---|---|---|---|");
    println!("| 0 (idle) | {:.1} | — | — |", mib(sample));
    for slice in 1..=minutes * 2 {
        let run = wrk(target, script, 16, 30);
        println!(
            "| {} | {:.1} | {:.0} | {:.0} |",
            slice * 30,
            mib(sample),
            run.rps,
            run.p99_us
        );
    }
}

/// The wrk script posting `body` with `headers`.
fn wrk_script(dir: &std::path::Path, target: &Target) -> std::path::PathBuf {
    let path = dir.join(format!("{}.lua", target.name.replace([' ', ','], "_")));
    let mut f = std::fs::File::create(&path).expect("script");
    writeln!(f, "wrk.method = \"POST\"").expect("write");
    writeln!(f, "wrk.body = [[{PLAIN}]]").expect("write");
    writeln!(f, "wrk.headers[\"Content-Type\"] = \"application/json\"").expect("write");
    for (k, v) in &target.headers {
        writeln!(f, "wrk.headers[\"{k}\"] = \"{v}\"").expect("write");
    }
    path
}

/// Time to the first content chunk and to the end of the stream, in microseconds, over `n`
/// sequential streamed requests on one connection; an error status ends the measurement.
async fn stream_times(target: &Target, n: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
    let client = reqwest::Client::new();
    let (mut first, mut total) = (Vec::new(), Vec::new());
    for i in 0..n + 20 {
        let mut req = client
            .post(&target.url)
            .header("content-type", "application/json")
            .body(STREAMED);
        for (k, v) in &target.headers {
            req = req.header(k, v);
        }
        let started = Instant::now();
        let resp = req.send().await.expect("stream");
        assert!(
            resp.status().is_success(),
            "{}: {}",
            target.name,
            resp.status()
        );
        let mut body = resp.bytes_stream();
        let mut seen = Vec::new();
        let mut first_at = None;
        while let Some(chunk) = body.next().await {
            seen.extend_from_slice(&chunk.expect("chunk"));
            if first_at.is_none() && seen.windows(9).any(|w| w == b"\"content\"") {
                first_at = Some(started.elapsed());
            }
        }
        let end = started.elapsed();
        let text = String::from_utf8_lossy(&seen);
        assert!(text.contains("w49"), "{}: stream incomplete", target.name);
        if i >= 20 {
            first.push(first_at.expect("content").as_secs_f64() * 1e6);
            total.push(end.as_secs_f64() * 1e6);
        }
    }
    first.sort_by(f64::total_cmp);
    total.sort_by(f64::total_cmp);
    Ok((first, total))
}

#[tokio::main]
async fn main() {
    tenantry::install_crypto_provider();
    let secs: u64 = support::env_or("TENANTRY_BENCH_SECONDS", 10);
    let rounds: usize = support::env_or("TENANTRY_BENCH_ROUNDS", 2);
    let stream_n: usize = support::env_or("TENANTRY_BENCH_STREAMS", 500);
    let mock = start_mock();
    let upstream = format!("http://{mock}/v1");
    let scripts = tempfile::tempdir().expect("tmp");

    let mut targets = vec![Target {
        name: "direct to the mock",
        url: format!("{upstream}/chat/completions"),
        headers: vec![],
        _process: None,
    }];

    let memory = support::Sample::start(Some(&upstream)).await;
    let redis = common::redis::RedisServer::start();
    let redis_serve = support::Sample::start_with(
        Some(&upstream),
        vec![("TENANTRY_REDIS_URL".to_string(), redis.url())],
    )
    .await;
    for (name, sample) in [
        ("tenantry, in-process quota", &memory),
        ("tenantry, Redis quota", &redis_serve),
    ] {
        targets.push(Target {
            name,
            url: format!("http://{}/v1/chat/completions", sample.addr()),
            headers: vec![
                (
                    "Authorization".to_string(),
                    format!("Bearer {}", sample.tokens[0]),
                ),
                ("Cache-Control".to_string(), "no-cache".to_string()),
            ],
            _process: None,
        });
    }

    if let Some(minutes) = std::env::var("TENANTRY_BENCH_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
    {
        let script = wrk_script(scripts.path(), &targets[1]);
        soak(&targets[1], &script, &memory, minutes);
        memory.stop();
        redis_serve.stop();
        return;
    }

    if let Ok(litellm) = std::env::var("TENANTRY_BENCH_LITELLM") {
        let port = free_port();
        let config = scripts.path().join("litellm.yaml");
        std::fs::write(
            &config,
            format!(
                "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: {upstream}\n      api_key: sk-bench\n"
            ),
        )
        .expect("config");
        let child = Command::new(litellm)
            .arg("--config")
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env("LITELLM_LOG", "ERROR")
            // Its proxy refuses to start without a master key; requests then present it.
            .env("LITELLM_MASTER_KEY", LITELLM_KEY)
            // Its model price list from the package, not from the network.
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("litellm");
        let target = Target {
            name: "LiteLLM proxy",
            url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
            headers: vec![("Authorization".to_string(), format!("Bearer {LITELLM_KEY}"))],
            _process: Some(Guard(child)),
        };
        wait_ready(&target.url, &target.headers, "LiteLLM").await;
        targets.push(target);
    }
    if let Ok(portkey) = std::env::var("TENANTRY_BENCH_PORTKEY") {
        let port = free_port();
        let child = Command::new("node")
            .arg(portkey)
            .arg(format!("--port={port}"))
            .arg("--headless")
            .env("NODE_ENV", "production")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("portkey");
        let target = Target {
            name: "Portkey gateway",
            url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
            headers: vec![
                ("Authorization".to_string(), "Bearer sk-bench".to_string()),
                ("x-portkey-provider".to_string(), "openai".to_string()),
                ("x-portkey-custom-host".to_string(), upstream.clone()),
            ],
            _process: Some(Guard(child)),
        };
        wait_ready(&target.url, &target.headers, "Portkey").await;
        targets.push(target);
    }

    let script_paths: Vec<_> = targets
        .iter()
        .map(|t| wrk_script(scripts.path(), t))
        .collect();
    // results[round][target] = (c=1, c=16)
    let mut results = Vec::new();
    for round in 0..rounds {
        let mut row = Vec::new();
        for (t, script) in targets.iter().zip(&script_paths) {
            wrk(t, script, 1, 2);
            let one = wrk(t, script, 1, secs);
            let sixteen = wrk(t, script, 16, secs);
            eprintln!(
                "round {}: {}: c=1 p50 {:.0} µs p99 {:.0} µs; c=16 {:.0} req/s p50 {:.0} µs p99 {:.0} µs",
                round + 1,
                t.name,
                one.p50_us,
                one.p99_us,
                sixteen.rps,
                sixteen.p50_us,
                sixteen.p99_us
            );
            row.push((one, sixteen));
        }
        results.push(row);
    }

    println!(
        "| target | c=1 p50 / p99 (µs) | overhead c=1 p50 / p99 (µs) | c=16 requests/s | c=16 p50 / p99 (µs) |"
    );
    println!("|---|---|---|---|---|");
    for (i, t) in targets.iter().enumerate() {
        let cell = |f: &dyn Fn(&Round) -> String| {
            results
                .iter()
                .map(|row| f(row))
                .collect::<Vec<_>>()
                .join(" · ")
        };
        let c1 = cell(&|row| format!("{:.0} / {:.0}", row[i].0.p50_us, row[i].0.p99_us));
        let over = if i == 0 {
            "—".to_string()
        } else {
            cell(&|row| {
                format!(
                    "{:.0} / {:.0}",
                    row[i].0.p50_us - row[0].0.p50_us,
                    row[i].0.p99_us - row[0].0.p99_us
                )
            })
        };
        let rps = cell(&|row| format!("{:.0}", row[i].1.rps));
        let c16 = cell(&|row| format!("{:.0} / {:.0}", row[i].1.p50_us, row[i].1.p99_us));
        println!("| {} | {c1} | {over} | {rps} | {c16} |", t.name);
    }

    println!();
    println!(
        "| streamed, {STREAM_CHUNKS} chunks, sequential (n = {stream_n}) | first chunk p50 / p99 (µs) | added to first chunk p50 / p99 (µs) | whole stream p50 (µs) | added per chunk after the first (µs) |"
    );
    println!("|---|---|---|---|---|");
    let mut direct: Option<(Vec<f64>, Vec<f64>)> = None;
    for t in &targets {
        let (first, total) = match stream_times(t, stream_n).await {
            Ok(times) => times,
            Err(e) => {
                println!("| {} | {e} | — | — | — |", t.name);
                continue;
            }
        };
        let p = support::percentile;
        let (added, per_chunk) = match &direct {
            None => ("—".to_string(), "—".to_string()),
            Some((df, dt)) => (
                format!(
                    "{:.0} / {:.0}",
                    p(&first, 0.5) - p(df, 0.5),
                    p(&first, 0.99) - p(df, 0.99)
                ),
                format!(
                    "{:.2}",
                    ((p(&total, 0.5) - p(&first, 0.5)) - (p(dt, 0.5) - p(df, 0.5)))
                        / (STREAM_CHUNKS - 1) as f64
                ),
            ),
        };
        println!(
            "| {} | {:.0} / {:.0} | {added} | {:.0} | {per_chunk} |",
            t.name,
            p(&first, 0.5),
            p(&first, 0.99),
            p(&total, 0.5)
        );
        if direct.is_none() {
            direct = Some((first, total));
        }
    }
    for (name, sample) in [("in-process", &memory), ("Redis", &redis_serve)] {
        if let Some(kib) = sample.rss_kib() {
            eprintln!(
                "tenantry ({name} quota) RSS at the end: {:.1} MiB",
                kib as f64 / 1024.0
            );
        }
    }
    memory.stop();
    redis_serve.stop();
}
