//! Semantic-cache hits and gateway overhead on `POST /v1/chat`: a real `tenantry serve` process
//! (embedded store, local embeddings) on 127.0.0.1 with the sample tenants and documents, in
//! front of a mock OpenAI-compatible upstream (in this process, on 127.0.0.1) that answers
//! every `/v1/chat/completions` at once with a fixed completion.
//!
//! Measured, sequentially, in blocks of questions (so every path sees the same load):
//! - **miss, stored**: distinct questions asked once (each one calls the upstream and is
//!   stored in the cache);
//! - **hit, exact repeat**: the same questions again (every one must be a hit);
//! - **miss, `Cache-Control: no-cache`**: the same questions skipping the cache (no lookup,
//!   no store);
//! - **direct**: the request tenantry sends upstream, sent straight to the mock;
//! - **embedding**: each question through the same embedding model in this process.
//!
//! Then **hit, paraphrase**: questions about the sample documents, each followed by a rewording
//! (only those that hit at the tenant's threshold are timed; the hit ratio is reported).
//! Besides end-to-end latency, each `/v1/chat` records `x-tenantry-overhead-ms`, and the mock
//! its own handler time.
//!
//! Run: `cargo bench --profile dev --bench cache` (dependencies are optimised in the dev
//! profile; `TENANTRY_BENCH_REQUESTS`, default 300).
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::routing::post;
use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
use serde_json::{Value, json};
use tenantry::embed::Embedder as _;

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use support::percentile;

/// Latencies in milliseconds.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }
    fn p(&self, p: f64) -> f64 {
        percentile(&self.sorted(), p)
    }
    /// `p50 / p90 / p99` with `digits` decimals.
    fn three(&self, digits: usize) -> String {
        if self.0.is_empty() {
            return "—".to_string();
        }
        format!(
            "{:.digits$} / {:.digits$} / {:.digits$}",
            self.p(0.5),
            self.p(0.9),
            self.p(0.99)
        )
    }
    /// `p50 / p99` with `digits` decimals.
    fn two(&self, digits: usize) -> String {
        if self.0.is_empty() {
            return "—".to_string();
        }
        format!("{:.digits$} / {:.digits$}", self.p(0.5), self.p(0.99))
    }
}

/// Latencies of one `/v1/chat` path.
#[derive(Default)]
struct PathStats {
    /// End to end, as the client saw it.
    e2e: Samples,
    /// `x-tenantry-overhead-ms`.
    overhead: Samples,
    /// Time in the mock upstream's handler.
    handler: Samples,
}

impl PathStats {
    fn record(&mut self, r: Reply) {
        self.e2e.0.push(r.ms);
        self.overhead.0.push(r.overhead_ms);
    }
}

/// What the mock upstream saw.
#[derive(Default)]
struct Mock {
    calls: AtomicUsize,
    /// Time spent in the handler per call, in milliseconds.
    handler_ms: Mutex<Vec<f64>>,
    /// The last request body (replayed for the direct baseline).
    last_body: Mutex<Option<Value>>,
}

/// `POST /v1/chat/completions`: a fixed, valid `chat.completion` with usage, at once.
async fn completions(
    State(mock): State<Arc<Mock>>,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    let start = Instant::now();
    let model = body["model"].as_str().unwrap_or("gpt-4o-mini").to_string();
    let out = json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000u64,
        "model": model,
        "choices": [{
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Refunds are accepted within 30 days of delivery."},
        }],
        "usage": {"prompt_tokens": 180, "completion_tokens": 12, "total_tokens": 192},
    });
    mock.calls.fetch_add(1, Ordering::Relaxed);
    *mock.last_body.lock().expect("lock") = Some(body);
    let resp = axum::response::IntoResponse::into_response(axum::Json(out));
    mock.handler_ms
        .lock()
        .expect("lock")
        .push(start.elapsed().as_secs_f64() * 1000.0);
    resp
}

/// Words the distinct questions are drawn from (unrelated to one another, so that two
/// questions are never near-duplicates).
const WORDS: &[&str] = &[
    "glacier",
    "invoice",
    "violin",
    "pepper",
    "passport",
    "volcano",
    "battery",
    "recipe",
    "warranty",
    "satellite",
    "orchard",
    "keyboard",
    "lantern",
    "harbor",
    "mortgage",
    "tulip",
    "compiler",
    "saddle",
    "thunder",
    "ledger",
    "bicycle",
    "cathedral",
    "penguin",
    "magnet",
    "vaccine",
    "canyon",
    "trumpet",
    "spreadsheet",
    "lighthouse",
    "marathon",
    "cactus",
    "pillow",
    "tractor",
    "galaxy",
    "sandwich",
    "umbrella",
    "diamond",
    "blanket",
    "hammock",
    "telescope",
    "avalanche",
    "carpet",
    "dolphin",
    "elevator",
    "firewall",
    "gasoline",
    "helmet",
    "igloo",
    "jellyfish",
    "kettle",
    "lemonade",
    "microscope",
    "necklace",
    "oyster",
    "parachute",
    "quarantine",
    "radiator",
    "scooter",
    "tornado",
    "uniform",
    "vineyard",
    "wardrobe",
    "yogurt",
    "zeppelin",
    "almond",
    "bamboo",
    "chimney",
    "dentist",
    "earthquake",
    "feather",
    "giraffe",
    "hurricane",
    "insurance",
    "jacket",
    "kangaroo",
    "library",
    "mushroom",
    "notebook",
    "opera",
    "pyramid",
    "quilt",
    "rainbow",
    "submarine",
    "tennis",
    "utensil",
    "vitamin",
    "waterfall",
    "xylophone",
    "yacht",
    "zucchini",
    "anchor",
    "blizzard",
    "cinnamon",
    "dinosaur",
    "engine",
    "fossil",
    "granite",
    "hospital",
    "iceberg",
    "jungle",
    "kitchen",
    "locomotive",
    "meteor",
    "nursery",
    "octopus",
    "pharmacy",
    "quartz",
    "reactor",
    "skyscraper",
    "thermostat",
    "unicorn",
    "volleyball",
    "windmill",
    "accordion",
    "brewery",
    "caravan",
    "dialysis",
    "escalator",
    "fireworks",
    "greenhouse",
    "hedgehog",
    "ink",
    "jigsaw",
    "karaoke",
    "lobster",
    "mosaic",
    "nitrogen",
    "omelette",
    "pelican",
    "quiver",
    "robot",
    "scarecrow",
    "tapestry",
    "ultrasound",
    "velvet",
    "wrestling",
    "asteroid",
    "ballet",
    "coral",
    "drought",
    "eclipse",
    "ferry",
    "goblet",
    "hydrogen",
    "insomnia",
    "javelin",
    "kayak",
    "lasagna",
    "monsoon",
    "neutron",
    "orchestra",
    "porcelain",
    "raccoon",
    "sapphire",
    "turbine",
    "vortex",
    "walnut",
];

/// `n` distinct questions of five random words each (seeded: the same every run).
fn distinct_questions(n: usize) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(20_240_601);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let words: Vec<&str> = WORDS.choose_multiple(&mut rng, 5).copied().collect();
        let q = format!(
            "What about the {}, the {} and the {} near the {} {}?",
            words[0], words[1], words[2], words[3], words[4]
        );
        if seen.insert(q.clone()) {
            out.push(q);
        }
    }
    out
}

/// Questions about the sample documents, each with a rewording.
const PARAPHRASES: &[(&str, &str)] = &[
    ("What is the refund policy?", "What is your refund policy?"),
    (
        "How long does shipping take?",
        "How long does the shipping take?",
    ),
    ("When is support open?", "When is the support open?"),
    (
        "Can I get my money back?",
        "Can I get my money back, please?",
    ),
    (
        "How do I reset my password?",
        "How can I reset my password?",
    ),
    (
        "Do you ship internationally?",
        "Do you ship to other countries?",
    ),
    (
        "What payment methods do you accept?",
        "Which payment methods do you accept?",
    ),
    (
        "How do I cancel my subscription?",
        "How can I cancel my subscription?",
    ),
    (
        "Is there a warranty on products?",
        "Do products come with a warranty?",
    ),
    (
        "How do I contact customer service?",
        "How can I contact customer service?",
    ),
    ("Where is my order?", "Where is my order right now?"),
    (
        "Can I change my delivery address?",
        "Can I change the delivery address?",
    ),
];

/// Questions per block of the interleaved phases.
const BLOCK: usize = 25;

/// One `/v1/chat` answer as the client saw it.
struct Reply {
    ms: f64,
    overhead_ms: f64,
    hit: bool,
}

#[tokio::main]
async fn main() {
    tenantry::install_crypto_provider();
    let n = support::requests(300);

    // The mock upstream.
    let mock = Arc::new(Mock::default());
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mock_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let serve = support::Sample::start(Some(&format!("http://{mock_addr}/v1"))).await;
    let thresholds: Vec<f64> = serve
        .manifests
        .iter()
        .map(|text| {
            let tenant: tenantry::crd::Tenant = serde_saphyr::from_str(text).expect("tenant");
            tenant.spec.semantic_cache.threshold
        })
        .collect();
    let (addr, tokens) = (serve.addr(), serve.tokens.clone());
    let http = reqwest::Client::new();
    let model_dir = common::server::model_dir();

    let url = format!("http://{addr}/v1/chat");
    let ask = |tenant: usize, question: String, no_cache: bool| {
        let http = http.clone();
        let url = url.clone();
        let token = tokens[tenant % 2].clone();
        async move {
            let t = Instant::now();
            let mut req = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "question": question }));
            if no_cache {
                req = req.header("cache-control", "no-cache");
            }
            let r = req.send().await.expect("chat");
            let status = r.status();
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let x_cache = header("x-cache");
            let overhead_ms: f64 = header("x-tenantry-overhead-ms").parse().unwrap_or(f64::NAN);
            let body = r.bytes().await.expect("body");
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert!(
                status.is_success(),
                "{status}: {}",
                String::from_utf8_lossy(&body)
            );
            let body: Value = serde_json::from_slice(&body).expect("json");
            let hit = x_cache == "hit";
            assert_eq!(
                body["cached"].as_bool(),
                Some(hit),
                "x-cache {x_cache:?} and cached {} disagree",
                body["cached"]
            );
            assert!(overhead_ms.is_finite(), "no x-tenantry-overhead-ms header");
            Reply {
                ms,
                overhead_ms,
                hit,
            }
        }
    };
    let questions = distinct_questions(n);
    // `POST /v1/chat/completions` without retrieval and with the cache bypassed: nothing is
    // embedded, so this is the gateway alone (token, quota, request, upstream, settlement).
    let completions_url = format!("http://{addr}/v1/chat/completions");
    let complete = |tenant: usize, question: String| {
        let http = http.clone();
        let url = completions_url.clone();
        let token = tokens[tenant % 2].clone();
        async move {
            let t = Instant::now();
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("cache-control", "no-cache")
                .json(&json!({"messages": [{"role": "user", "content": question}]}))
                .send()
                .await
                .expect("completion");
            let status = r.status();
            let overhead_ms: f64 = r
                .headers()
                .get("x-tenantry-overhead-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            let body = r.bytes().await.expect("body");
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert!(
                status.is_success(),
                "{status}: {}",
                String::from_utf8_lossy(&body)
            );
            let body: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(body["object"], "chat.completion", "{body}");
            assert!(overhead_ms.is_finite(), "no x-tenantry-overhead-ms header");
            Reply {
                ms,
                overhead_ms,
                hit: false,
            }
        }
    };

    // The same embedding model in this process, for comparison (idle while serve works).
    let embedder =
        tenantry::embed::local::LocalEmbedder::load(&model_dir).expect("load the embedding model");

    // Warm-up: cache bypassed, nothing stored; also the in-process embedder.
    for (i, q) in questions.iter().cycle().take(20).enumerate() {
        let r = ask(i, q.clone(), true).await;
        assert!(!r.hit);
        embedder.embed(vec![q.clone()]).await.expect("embed");
    }
    let rss_warm = serve.rss_kib();
    // Direct baseline: the request tenantry last sent upstream, replayed straight to the mock.
    let upstream_body = mock
        .last_body
        .lock()
        .expect("lock")
        .clone()
        .expect("a request reached the mock");
    for (i, q) in questions.iter().cycle().take(20).enumerate() {
        complete(i, q.clone()).await;
    }
    let completion_body = mock
        .last_body
        .lock()
        .expect("lock")
        .clone()
        .expect("a completion reached the mock");
    let direct_client = reqwest::Client::new();
    let direct_url = format!("http://{mock_addr}/v1/chat/completions");
    let send_direct = |body: &Value| {
        let body = body.clone();
        let (client, url) = (direct_client.clone(), direct_url.clone());
        async move {
            let t = Instant::now();
            let r = client.post(&url).json(&body).send().await.expect("direct");
            assert!(r.status().is_success());
            let _ = r.bytes().await;
            t.elapsed().as_secs_f64() * 1000.0
        }
    };
    for _ in 0..20 {
        send_direct(&upstream_body).await;
        send_direct(&completion_body).await;
    }
    let calls = || mock.calls.load(Ordering::Relaxed);
    let handler_times = || std::mem::take(&mut *mock.handler_ms.lock().expect("lock"));
    handler_times();

    // In blocks of questions (so that every path sees the same load on a shared machine):
    // misses that store, then the same questions again (hits), then misses that skip the
    // cache, then the direct baseline and the in-process embedding.
    let (mut miss, mut hit, mut bypass) = (
        PathStats::default(),
        PathStats::default(),
        PathStats::default(),
    );
    let (mut direct, mut embed) = (Samples::default(), Samples::default());
    let (mut plain, mut direct_plain) = (PathStats::default(), Samples::default());
    let mut hit_by_size = Vec::new();
    let mut rss_by_size = Vec::new();
    for block in (0..n).collect::<Vec<_>>().chunks(BLOCK) {
        let before = calls();
        for &i in block {
            let r = ask(i, questions[i].clone(), false).await;
            assert!(
                !r.hit,
                "a distinct question hit the cache: {}",
                questions[i]
            );
            miss.record(r);
        }
        assert_eq!(
            calls() - before,
            block.len(),
            "a miss did not call the upstream"
        );
        miss.handler.0.extend(handler_times());
        let before = calls();
        let mut block_hits = Samples::default();
        for &i in block {
            let r = ask(i, questions[i].clone(), false).await;
            assert!(r.hit, "an exact repeat was not a hit: {}", questions[i]);
            block_hits.0.push(r.ms);
            hit.record(r);
        }
        // Entries stored so far (both tenants; the paraphrases come later).
        hit_by_size.push((block[block.len() - 1] + 1, block_hits.p(0.5)));
        rss_by_size.push((block[block.len() - 1] + 1, serve.rss_kib()));
        assert_eq!(calls(), before, "a hit called the upstream");
        for &i in block {
            let r = ask(i, questions[i].clone(), true).await;
            assert!(
                !r.hit,
                "Cache-Control: no-cache was answered from the cache"
            );
            bypass.record(r);
        }
        assert_eq!(
            calls() - before,
            block.len(),
            "a no-cache miss did not call the upstream"
        );
        bypass.handler.0.extend(handler_times());
        let before = calls();
        for &i in block {
            plain.record(complete(i, questions[i].clone()).await);
        }
        assert_eq!(
            calls() - before,
            block.len(),
            "a completion did not call the upstream"
        );
        plain.handler.0.extend(handler_times());
        // The direct baseline right after, under the same conditions (no embedding in between).
        for _ in block {
            direct_plain.0.push(send_direct(&completion_body).await);
        }
        handler_times();
        for &i in block {
            direct.0.push(send_direct(&upstream_body).await);
            let t = Instant::now();
            let v = embedder
                .embed(vec![questions[i].clone()])
                .await
                .expect("embed");
            assert_eq!(v.len(), 1);
            embed.0.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    handler_times();

    // Paraphrases: each original once per tenant (a miss, stored), then its rewording.
    let mut para = PathStats::default();
    let mut para_asked = 0;
    let mut para_missed = Vec::new();
    for tenant in 0..2 {
        for (original, reworded) in PARAPHRASES {
            let r = ask(tenant, (*original).to_string(), false).await;
            assert!(!r.hit, "an original question hit the cache: {original}");
            let r = ask(tenant, (*reworded).to_string(), false).await;
            para_asked += 1;
            if r.hit {
                para.record(r);
            } else {
                para_missed.push((tenant, *reworded));
            }
        }
    }
    let mut similarities = Vec::new();
    for (original, reworded) in PARAPHRASES {
        let v = embedder
            .embed(vec![(*original).to_string(), (*reworded).to_string()])
            .await
            .expect("embed");
        // Unit vectors: the dot product is the cosine similarity.
        let cos: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum();
        similarities.push((*reworded, cos));
    }

    let rss_end = serve.rss_kib();
    serve.stop();

    println!(
        "tenant thresholds: {thresholds:?}; {n} distinct questions; upstream request body {} bytes",
        serde_json::to_vec(&upstream_body).map_or(0, |b| b.len())
    );
    println!();
    println!(
        "| `POST /v1/chat` | requests | end to end p50 / p90 / p99 (ms) | `x-tenantry-overhead-ms` p50 / p99 | mock upstream handler p50 / p99 (ms) | added vs direct p50 / p99 (ms) |"
    );
    println!("|---|---|---|---|---|---|");
    let row = |label: &str, stats: &PathStats, upstream: bool, direct: &Samples| {
        let (handler, added) = if upstream {
            (
                stats.handler.two(3),
                format!(
                    "{:.2} / {:.2}",
                    stats.e2e.p(0.5) - direct.p(0.5),
                    stats.e2e.p(0.99) - direct.p(0.99)
                ),
            )
        } else {
            ("not called".to_string(), "—".to_string())
        };
        println!(
            "| {label} | {} | {} | {} | {handler} | {added} |",
            stats.e2e.0.len(),
            stats.e2e.three(2),
            stats.overhead.two(2),
        );
    };
    row("hit, exact repeat", &hit, false, &direct);
    row(
        &format!(
            "hit, paraphrase ({} of {para_asked} reworded questions hit)",
            para.e2e.0.len()
        ),
        &para,
        false,
        &direct,
    );
    row("miss, stored (distinct question)", &miss, true, &direct);
    row("miss, `Cache-Control: no-cache`", &bypass, true, &direct);
    println!(
        "| direct to the mock upstream (no tenantry) | {} | {} | — | — | — |",
        direct.0.len(),
        direct.three(2)
    );
    println!(
        "| embedding one question in-process (no HTTP) | {} | {} | — | — | — |",
        embed.0.len(),
        embed.three(2)
    );
    println!();
    println!(
        "`POST /v1/chat/completions`, no retrieval, `Cache-Control: no-cache` (nothing embedded):"
    );
    println!();
    println!(
        "| path | requests | end to end p50 / p90 / p99 (ms) | `x-tenantry-overhead-ms` p50 / p99 | mock upstream handler p50 / p99 (ms) | added vs direct p50 / p99 (ms) |"
    );
    println!("|---|---|---|---|---|---|");
    row("through tenantry", &plain, true, &direct_plain);
    println!(
        "| direct to the mock upstream (the same upstream request) | {} | {} | — | — | — |",
        direct_plain.0.len(),
        direct_plain.three(2)
    );
    println!();
    println!(
        "exact-repeat hit p50 by cache entries stored (both tenants): {}",
        hit_by_size
            .iter()
            .map(|(size, p50)| format!("{size}: {p50:.1} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    let mib =
        |k: Option<u64>| k.map_or("?".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "serve RSS: {} after warm-up, {} at the end ({} requests to serve in all)",
        mib(rss_warm),
        mib(rss_end),
        40 + 4 * n + 48
    );
    let step = (rss_by_size.len() / 6).max(1);
    let samples: Vec<String> = rss_by_size
        .iter()
        .step_by(step)
        .chain(rss_by_size.last())
        .map(|(entries, k)| format!("{entries}: {}", mib(*k)))
        .collect();
    println!("serve RSS by cache entries stored: {}", samples.join(", "));
    println!();
    println!("cosine similarity of each rewording to its original (threshold {thresholds:?}):");
    for (reworded, cos) in similarities {
        let missed = match para_missed.iter().filter(|(_, r)| *r == reworded).count() {
            0 => "",
            1 => " (missed for one tenant)",
            _ => " (missed)",
        };
        println!("  {cos:.3} {reworded:?}{missed}");
    }
}
