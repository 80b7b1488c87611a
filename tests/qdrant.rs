//! tenantry against real Qdrant processes that the tests start, stop and kill: acknowledged
//! writes across a crash and restart, `serve` with a refused API key, and a three-node cluster
//! in distributed mode with one node down. Each test runs its own Qdrant (`common::qdrant`).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use common::qdrant::{QdrantCluster, QdrantServer};
use common::server::{Dirs, Server, Start};
use serde_json::json;
use tenantry::vector::qdrant::{QdrantBackend, QdrantConfig};
use tenantry::vector::{CollectionSpec, Filter, Point, VectorBackend, VectorError};

const KEY: &str = "test-qdrant-key-7c1e";
const DIM: usize = 4;
/// Bound on "eventually" (a loaded 2-core machine); never a speed assertion.
const EVENTUALLY: Duration = Duration::from_secs(120);

fn spec() -> CollectionSpec {
    CollectionSpec {
        dimension: DIM,
        multi_tenant: true,
        keyword_indexes: &[],
        integer_indexes: &["n"],
    }
}

fn config(url: String, key: &str) -> QdrantConfig {
    let mut c = QdrantConfig::new(url);
    c.api_key = Some(key.to_string());
    c.timeout = Duration::from_secs(10);
    c.connect_timeout = Duration::from_secs(1);
    c
}

fn points(n: usize, from: usize) -> Vec<Point> {
    (from..from + n)
        .map(|i| Point {
            id: uuid::Uuid::new_v4(),
            vector: vec![1.0, i as f32, 0.5, 0.25],
            payload: json!({"tenant_id": "acme", "n": i})
                .as_object()
                .unwrap()
                .clone(),
        })
        .collect()
}

/// Polls `check` until it holds; panics with `what` after [`EVENTUALLY`].
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < EVENTUALLY, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every id in `collection`, paged through with scroll.
async fn all_ids(b: &dyn VectorBackend, collection: &str) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    let mut offset = None;
    loop {
        let (page, next) = b
            .scroll(collection, &Filter::default(), 500, offset)
            .await
            .unwrap();
        ids.extend(page.into_iter().map(|r| r.id));
        match next {
            Some(n) => offset = Some(n),
            None => return ids,
        }
    }
}

/// What a writer saw: ids of acknowledged points, refused batches.
#[derive(Default)]
struct Writes {
    acked: Mutex<Vec<uuid::Uuid>>,
    failed: AtomicUsize,
    stop: AtomicBool,
}

impl Writes {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

/// Upserts batches of 5 points until told to stop (at most 20 000 batches); failures are
/// `Unavailable` and never name the key.
async fn write_loop(b: QdrantBackend, collection: String, w: Arc<Writes>) {
    for i in 0..20_000 {
        if w.stop.load(Ordering::SeqCst) {
            return;
        }
        let batch = points(5, i * 5);
        let ids: Vec<_> = batch.iter().map(|p| p.id).collect();
        match b.upsert(&collection, batch).await {
            Ok(()) => w.acked.lock().unwrap().extend(ids),
            Err(e) => {
                assert!(
                    matches!(&e, VectorError::Unavailable(m) if !m.contains(KEY)),
                    "{e}"
                );
                w.failed.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// kill -9 of the server while a writer runs, restart on the same storage: every write that
/// was acknowledged is there afterwards, and the same backend (its connections dropped)
/// writes again without being rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_crash_and_restart() {
    let mut server = QdrantServer::start(Some(KEY));
    let b = QdrantBackend::connect(config(server.grpc_url(), KEY)).unwrap();
    b.ensure_collection("crash", &spec()).await.unwrap();
    let w = Arc::new(Writes::default());
    let writer = tokio::spawn(write_loop(b.clone(), "crash".into(), w.clone()));
    eventually("100 writes acknowledged", async || w.acked() >= 100).await;
    server.kill();
    eventually("a write refused while down", async || {
        w.failed.load(Ordering::SeqCst) > 0
    })
    .await;
    let before_restart = w.acked();
    server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    eventually("100 more writes after the restart", async || {
        w.acked() >= before_restart + 100
    })
    .await;
    w.stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    let stored: HashSet<uuid::Uuid> = all_ids(&b, "crash").await.into_iter().collect();
    let acked = w.acked.lock().unwrap().clone();
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged points lost",
        lost.len(),
        acked.len()
    );
    // Unacknowledged batches may or may not have been applied; nothing else appears.
    assert!(stored.len() >= acked.len());
    assert!(stored.len() <= acked.len() + 5 * w.failed.load(Ordering::SeqCst));
    drop(server);
}

/// `serve` given a key the server refuses: it starts, says why in its log, reports the vector
/// store unavailable in /readyz and answers API requests with a JSON 503, never showing the
/// key; once the server accepts that key (rotated on the server side), it recovers without
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_refused_key_answers_503_then_recovers() {
    const WRONG: &str = "serve-side-key-3f9a";
    let mut qdrant = QdrantServer::start(Some(KEY));
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let server = Server::start(
        &dirs,
        Start {
            env: vec![
                env("TENANTRY_QDRANT_URL", &qdrant.grpc_url()),
                env("TENANTRY_QDRANT_API_KEY", WRONG),
            ],
            ..Default::default()
        },
    );
    let logs = || server.logs.lock().unwrap().join("\n");
    assert!(
        logs().contains("refused the credentials"),
        "no start-up warning:\n{}",
        logs()
    );
    let (status, ready) =
        common::server::status_json(server.http.get(server.url("/readyz")).send().await.unwrap())
            .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["checks"]["vector_store"], "unavailable");

    let token = dirs.token("acme", "alice");
    let doc = json!({"title": "t", "text": "Refunds take five days."});
    let (status, body) = server.post("/v1/documents", &token, doc.clone()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    let (status, body2) = server.get("/v1/documents", &token).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body2}");
    for text in [body.to_string(), body2.to_string(), logs()] {
        assert!(!text.contains(WRONG) && !text.contains(KEY), "{text}");
    }

    qdrant = tokio::task::spawn_blocking(move || {
        qdrant.restart_with_key(Some(WRONG));
        qdrant
    })
    .await
    .unwrap();
    eventually("/readyz ok", async || {
        let r = server.http.get(server.url("/readyz")).send().await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let (status, body) = server.post("/v1/documents", &token, doc).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap();
    let (status, stored) = server.get(&format!("/v1/documents/{id}"), &token).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["text"], "Refunds take five days.", "{stored}");
    assert!(!logs().contains(WRONG));
    server.stop();
    drop(qdrant);
}

/// A collection of one tenant is created small (a 4 MiB WAL, two segments) so that hundreds
/// of tenants created at once do not time out; a collection many tenants share keeps
/// Qdrant's defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_collection_is_created_small_a_shared_one_with_the_defaults() {
    let server = QdrantServer::start(Some(KEY));
    let b = QdrantBackend::connect(config(server.grpc_url(), KEY)).unwrap();
    let own = CollectionSpec {
        multi_tenant: false,
        ..spec()
    };
    b.ensure_collection("own", &own).await.unwrap();
    b.ensure_collection("shared", &spec()).await.unwrap();
    let own = &server.get_json("/collections/own")["result"]["config"];
    assert_eq!(own["wal_config"]["wal_capacity_mb"], 4, "{own}");
    assert_eq!(
        own["optimizer_config"]["default_segment_number"], 2,
        "{own}"
    );
    let shared = &server.get_json("/collections/shared")["result"]["config"];
    assert_eq!(shared["wal_config"]["wal_capacity_mb"], 32, "{shared}");
    assert_eq!(
        shared["optimizer_config"]["default_segment_number"], 0,
        "{shared}"
    );
    // Both answer reads and writes alike.
    for name in ["own", "shared"] {
        b.upsert(name, points(10, 0)).await.unwrap();
        assert_eq!(b.count(name, &Filter::default()).await.unwrap(), 10);
    }
}

/// Three nodes in distributed mode, collections with two replicas per shard: with one node
/// killed, reads see every point and writes are acknowledged and readable; after it
/// returns, everything is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_serves_reads_and_writes_with_one_node_down() {
    let mut cluster = QdrantCluster::start(3, KEY);
    let mut cfg = config(cluster.nodes[0].grpc_url(), KEY);
    cfg.replication_factor = Some(2);
    let b = QdrantBackend::connect(cfg).unwrap();
    b.ensure_collection("replicated", &spec()).await.unwrap();
    let info = cluster.nodes[0].get_json("/collections/replicated");
    assert_eq!(info["result"]["config"]["params"]["replication_factor"], 2);
    let first = points(200, 0);
    b.upsert("replicated", first.clone()).await.unwrap();

    cluster.nodes[2].kill();
    let mut expected: HashSet<_> = first.iter().map(|p| p.id).collect();
    let ids: HashSet<_> = all_ids(&b, "replicated").await.into_iter().collect();
    assert_eq!(ids, expected, "reads with a node down");
    let filter = Filter::default().integer("n", 7);
    assert_eq!(b.count("replicated", &filter).await.unwrap(), 1);
    let more = points(100, 200);
    b.upsert("replicated", more.clone()).await.unwrap();
    expected.extend(more.iter().map(|p| p.id));
    let ids: HashSet<_> = all_ids(&b, "replicated").await.into_iter().collect();
    assert_eq!(ids, expected, "acknowledged writes with a node down");
    // The vectors of neighbouring `n` are all but parallel: find the new point by its `n`.
    let its_n = Filter::default().integer("n", 200);
    let hits = b
        .search("replicated", more[0].vector.clone(), &its_n, 1)
        .await
        .unwrap();
    assert_eq!(hits[0].payload, more[0].payload);

    cluster = tokio::task::spawn_blocking(move || {
        cluster.nodes[2].restart();
        cluster
    })
    .await
    .unwrap();
    assert_eq!(
        b.count("replicated", &Filter::default()).await.unwrap(),
        300
    );
    drop(cluster);
}
