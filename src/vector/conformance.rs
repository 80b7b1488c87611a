//! The vector-store conformance suite: written once against [`VectorBackend`] and
//! [`TenantVectors`], run against every backend.
//!
//! - `edge::*` — the embedded [`EdgeBackend`], always.
//! - `qdrant_server::*` — a real Qdrant server, when `QDRANT_URL` (gRPC, e.g.
//!   `http://127.0.0.1:6334`) and optionally `QDRANT_API_KEY` are set.
//! - `qdrant_cluster::*` — a Qdrant cluster in distributed mode, when `QDRANT_CLUSTER_URL` is
//!   set; collections are created with two replicas per shard.
//!
//! `scripts/test.sh` starts both servers with `scripts/qdrant-test-env.sh` and sets the
//! variables (`scripts/test.sh --lib vector::conformance`). Without a URL, its cases print that
//! they did not run and pass, except under CI, where they fail. Cases for what only a server
//! has (API keys, strict mode, payload index inspection) run on the two server kinds only.
//!
//! Every case uses tenant ids and collection names unique to the run (`t<10 hex>`), so a shared
//! server is safe, and removes what it created when it passes. Partition-mode cases share the
//! `shared_*_4` collections (that is the point of the mode) and only ever remove their own
//! tenants' points.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::Arc;

use serde_json::json;

use super::edge::EdgeBackend;
use super::qdrant::{QdrantBackend, QdrantConfig};
use super::{
    CollectionSpec, Filter, Kind, Point, TENANT_KEY, TenantVectors, VectorBackend, VectorError,
};
use crate::domain::{Isolation, TenantId};

/// Vector dimension used by the suite.
pub(super) const DIM: usize = 4;

/// What a backend under test provides.
trait Harness: Send + Sync {
    /// Opens the backend; called again after the previous instance was dropped (durability).
    fn open(&self) -> Arc<dyn VectorBackend>;
    /// A prefix unique to this test (`t` + 10 hex digits): a valid tenant id and name part.
    fn run(&self) -> &str;
}

fn run_id() -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("t{}", &u[..10])
}

struct EdgeHarness {
    dir: tempfile::TempDir,
    run: String,
}

impl EdgeHarness {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            run: run_id(),
        }
    }
}

impl Harness for EdgeHarness {
    fn open(&self) -> Arc<dyn VectorBackend> {
        Arc::new(EdgeBackend::open(self.dir.path()).unwrap())
    }
    fn run(&self) -> &str {
        &self.run
    }
}

/// Which Qdrant server a case runs against.
#[derive(Clone, Copy)]
enum Server {
    /// One node: `QDRANT_URL`.
    Single,
    /// A cluster in distributed mode: `QDRANT_CLUSTER_URL`, collections with two replicas.
    Cluster,
}

impl Server {
    fn url_var(self) -> &'static str {
        match self {
            Server::Single => "QDRANT_URL",
            Server::Cluster => "QDRANT_CLUSTER_URL",
        }
    }
    fn module(self) -> &'static str {
        match self {
            Server::Single => "qdrant_server",
            Server::Cluster => "qdrant_cluster",
        }
    }
}

struct QdrantHarness {
    config: QdrantConfig,
    run: String,
}

impl QdrantHarness {
    /// From the server's URL variable and `QDRANT_API_KEY`; `None` (after saying so on stderr)
    /// when the URL is unset. Under CI (`CI` set and not `false`/`0`) an unset URL fails the
    /// case instead: CI starts the servers (`scripts/qdrant-test-env.sh`), so a missing one is
    /// a defect.
    fn from_env(server: Server, case: &str) -> Option<Self> {
        let (var, module) = (server.url_var(), server.module());
        let Some(url) = std::env::var(var).ok().filter(|u| !u.is_empty()) else {
            assert!(
                !in_ci(),
                "vector::conformance::{module}::{case}: {var} is not set under CI \
                 (scripts/test.sh sets it with scripts/qdrant-test-env.sh start)"
            );
            // Written to the real stderr (not the test's captured output), so a run shows it.
            let _ = writeln!(
                std::io::stderr(),
                "NOT RUN: vector::conformance::{module}::{case} (set {var}=http://host:6334 to run it against a Qdrant server)"
            );
            return None;
        };
        let mut config = QdrantConfig::new(url);
        config.api_key = std::env::var("QDRANT_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        config.timeout = std::time::Duration::from_secs(30);
        if let Server::Cluster = server {
            config.replication_factor = Some(2);
        }
        Some(Self {
            config,
            run: run_id(),
        })
    }

    /// A plain client of the same server, for what tenantry never does itself (creating a
    /// collection without its indexes, enabling strict mode).
    fn raw_client(&self) -> qdrant_client::Qdrant {
        qdrant_client::Qdrant::from_url(&self.config.url)
            .api_key(self.config.api_key.clone())
            .skip_compatibility_check()
            .build()
            .unwrap()
    }
}

/// Whether this run is CI's (`CI` set to anything but empty, `false` or `0`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

impl Harness for QdrantHarness {
    fn open(&self) -> Arc<dyn VectorBackend> {
        Arc::new(QdrantBackend::connect(self.config.clone()).unwrap())
    }
    fn run(&self) -> &str {
        &self.run
    }
}

pub(super) fn spec(multi_tenant: bool) -> CollectionSpec {
    CollectionSpec {
        dimension: DIM,
        multi_tenant,
        keyword_indexes: &[],
        integer_indexes: &[],
    }
}

pub(super) fn point(vector: [f32; DIM], tenant: &str, n: i64) -> Point {
    let payload = json!({ "tenant_id": tenant, "n": n, "text": format!("{tenant}-{n}") });
    Point {
        id: uuid::Uuid::new_v4(),
        vector: vector.to_vec(),
        payload: payload.as_object().unwrap().clone(),
    }
}

/// A chunk of document `doc` as the API stores it (id derived from document, tenant, chunk).
fn chunk(tenant: &TenantId, doc: uuid::Uuid, index: usize, vector: [f32; DIM]) -> Point {
    let payload = json!({
        "document_id": doc.to_string(),
        "chunk": index,
        "text": format!("chunk {index}"),
    });
    Point {
        id: uuid::Uuid::new_v5(&doc, format!("{tenant}/{index}").as_bytes()),
        vector: vector.to_vec(),
        payload: payload.as_object().unwrap().clone(),
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Two tenants, three points each (`n` = 0..3), in a fresh collection `name`.
async fn seeded(b: &Arc<dyn VectorBackend>, name: &str) -> Vec<Point> {
    b.ensure_collection(name, &spec(true)).await.unwrap();
    let points = six_points();
    b.upsert(name, points.clone()).await.unwrap();
    points
}

/// Two tenants, three points each (`n` = 0..3): acme's near the first axes, globex's spread.
pub(super) fn six_points() -> Vec<Point> {
    vec![
        point([1.0, 0.0, 0.0, 0.0], "acme", 0),
        point([0.9, 0.1, 0.0, 0.0], "acme", 1),
        point([0.0, 1.0, 0.0, 0.0], "acme", 2),
        point([1.0, 0.0, 0.0, 0.0], "globex", 0),
        point([0.0, 0.0, 1.0, 0.0], "globex", 1),
        point([0.0, 0.0, 0.0, 1.0], "globex", 2),
    ]
}

const VECTORS: [[f32; DIM]; 3] = [
    [1.0, 0.0, 0.0, 0.0],
    [0.7, 0.7, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.2],
];

/// Isolation through [`TenantVectors`]: two tenants with identical documents (same document
/// id, same vectors, same payloads) never see, count or delete each other's points, in docs
/// and cache; a forged `tenant_id` is overwritten; `purge` (deletionPolicy Delete) removes
/// only the purging tenant's data.
async fn isolation(h: &dyn Harness, isolation: Isolation) {
    let backend = h.open();
    let a = TenantId::parse(&format!("{}-a", h.run())).unwrap();
    let b = TenantId::parse(&format!("{}-b", h.run())).unwrap();
    let va = TenantVectors::new(backend.clone(), a.clone(), isolation, DIM);
    let vb = TenantVectors::new(backend.clone(), b.clone(), isolation, DIM);
    va.ensure().await.unwrap();
    vb.ensure().await.unwrap();
    if isolation == Isolation::Partition {
        assert_eq!(va.collection(Kind::Docs), vb.collection(Kind::Docs));
    } else {
        assert_ne!(va.collection(Kind::Docs), vb.collection(Kind::Docs));
    }

    let doc = uuid::Uuid::new_v4();
    let chunks = |t: &TenantId| -> Vec<Point> {
        VECTORS
            .iter()
            .enumerate()
            .map(|(i, v)| chunk(t, doc, i, *v))
            .collect()
    };
    va.upsert(Kind::Docs, chunks(&a)).await.unwrap();
    let mut b_points = chunks(&b);
    b_points.push(chunk(&b, uuid::Uuid::new_v4(), 0, [0.0, 1.0, 0.0, 0.0]));
    vb.upsert(Kind::Docs, b_points).await.unwrap();
    // Cache entries: identical for both tenants.
    let entry = |t: &TenantId| {
        let mut p = point([0.5, 0.5, 0.5, 0.5], t.as_str(), 0);
        p.payload.insert("answer".into(), json!("cached answer"));
        p
    };
    va.upsert(Kind::Cache, vec![entry(&a)]).await.unwrap();
    vb.upsert(Kind::Cache, vec![entry(&b)]).await.unwrap();

    let owned_by = |payload: &serde_json::Map<String, serde_json::Value>, t: &TenantId| {
        payload[TENANT_KEY] == t.as_str()
    };
    for (v, t, n) in [(&va, &a, 3), (&vb, &b, 4)] {
        let hits = v
            .search(Kind::Docs, VECTORS[0].to_vec(), Filter::default(), 100)
            .await
            .unwrap();
        assert_eq!(hits.len(), n, "{t} search");
        assert!(hits.iter().all(|h| owned_by(&h.payload, t)));
        let (page, next) = v
            .scroll(Kind::Docs, Filter::default(), 100, None)
            .await
            .unwrap();
        assert_eq!((page.len(), next), (n, None), "{t} scroll");
        assert!(page.iter().all(|r| owned_by(&r.payload, t)));
        assert_eq!(
            v.count(Kind::Docs, Filter::default()).await.unwrap(),
            n as u64
        );
        let same_doc = Filter::default().keyword("document_id", doc.to_string());
        assert_eq!(v.count(Kind::Docs, same_doc).await.unwrap(), 3);
        let cached = v
            .search(Kind::Cache, vec![0.5; DIM], Filter::default(), 10)
            .await
            .unwrap();
        assert_eq!(cached.len(), 1, "{t} cache");
        assert!(owned_by(&cached[0].payload, t));
        assert_eq!(cached[0].payload["answer"], "cached answer");
    }

    // A caller's condition on the tenant key cannot widen the scope.
    let other = Filter::default().keyword(TENANT_KEY, b.as_str());
    let hits = va
        .search(Kind::Docs, VECTORS[0].to_vec(), other.clone(), 100)
        .await
        .unwrap();
    assert!(hits.iter().all(|h| owned_by(&h.payload, &a)));
    assert_eq!(va.count(Kind::Docs, other.clone()).await.unwrap(), 3);
    va.delete(Kind::Docs, other).await.unwrap();
    assert_eq!(vb.count(Kind::Docs, Filter::default()).await.unwrap(), 4);
    assert_eq!(va.count(Kind::Docs, Filter::default()).await.unwrap(), 0);
    va.upsert(Kind::Docs, chunks(&a)).await.unwrap();

    // A forged tenant id in a payload is overwritten with the handle's tenant.
    let mut forged = chunk(&a, uuid::Uuid::new_v4(), 0, VECTORS[1]);
    forged
        .payload
        .insert(TENANT_KEY.into(), json!(b.as_str().to_string()));
    va.upsert(Kind::Docs, vec![forged]).await.unwrap();
    assert_eq!(va.count(Kind::Docs, Filter::default()).await.unwrap(), 4);
    assert_eq!(vb.count(Kind::Docs, Filter::default()).await.unwrap(), 4);

    // Deleting a document of one tenant leaves the other's identical document alone.
    let same_doc = || Filter::default().keyword("document_id", doc.to_string());
    va.delete(Kind::Docs, same_doc()).await.unwrap();
    assert_eq!(va.count(Kind::Docs, same_doc()).await.unwrap(), 0);
    assert_eq!(va.count(Kind::Docs, Filter::default()).await.unwrap(), 1);
    assert_eq!(vb.count(Kind::Docs, same_doc()).await.unwrap(), 3);

    // Cache deletes are scoped too.
    va.delete(Kind::Cache, Filter::default()).await.unwrap();
    assert_eq!(va.count(Kind::Cache, Filter::default()).await.unwrap(), 0);
    assert_eq!(vb.count(Kind::Cache, Filter::default()).await.unwrap(), 1);

    // Purge (deletionPolicy Delete) of A: B keeps everything.
    va.upsert(Kind::Cache, vec![entry(&a)]).await.unwrap();
    va.purge().await.unwrap();
    for kind in [Kind::Docs, Kind::Cache] {
        assert_eq!(va.count(kind, Filter::default()).await.unwrap(), 0);
    }
    assert_eq!(vb.count(Kind::Docs, Filter::default()).await.unwrap(), 4);
    assert_eq!(vb.count(Kind::Cache, Filter::default()).await.unwrap(), 1);
    if isolation == Isolation::Collection {
        // A's collections are gone: writing needs ensure() again.
        assert!(matches!(
            va.upsert(Kind::Docs, chunks(&a)).await,
            Err(VectorError::Invalid(_))
        ));
    }
    vb.purge().await.unwrap();
    assert_eq!(vb.count(Kind::Docs, Filter::default()).await.unwrap(), 0);
}

/// deletionPolicy semantics through [`TenantVectors`]: `Retain` keeps the data for a Tenant
/// re-created later (a new handle sees it); `Delete` (purge) removes it, idempotently, also
/// when nothing was ever created.
async fn deletion_policy(h: &dyn Harness, isolation: Isolation) {
    let backend = h.open();
    let t = TenantId::parse(&format!("{}-r", h.run())).unwrap();
    let v = TenantVectors::new(backend.clone(), t.clone(), isolation, DIM);
    v.ensure().await.unwrap();
    let doc = uuid::Uuid::new_v4();
    v.upsert(Kind::Docs, vec![chunk(&t, doc, 0, VECTORS[0])])
        .await
        .unwrap();
    drop(v);
    // Retain: nothing is done on deletion; the same tenant's new handle finds its data.
    let again = TenantVectors::new(backend.clone(), t.clone(), isolation, DIM);
    again.ensure().await.unwrap();
    assert_eq!(again.count(Kind::Docs, Filter::default()).await.unwrap(), 1);
    // Delete: purge, twice (a retried finalizer), then reads are empty.
    again.purge().await.unwrap();
    again.purge().await.unwrap();
    assert_eq!(again.count(Kind::Docs, Filter::default()).await.unwrap(), 0);
    let never = TenantId::parse(&format!("{}-n", h.run())).unwrap();
    TenantVectors::new(backend, never, isolation, DIM)
        .purge()
        .await
        .unwrap();
}

/// Data bound to an owner (the Tenant object's UID): a Tenant created again under the same
/// name (another owner) starts empty although the old data is retained, its writes of the
/// same deterministic ids do not replace the old points, adopting the old owner sees them, and
/// purging one owner leaves the other's data (the collection is dropped with the last owner).
async fn data_owners(h: &dyn Harness, isolation: Isolation) {
    let backend = h.open();
    let t = TenantId::parse(&format!("{}-o", h.run())).unwrap();
    let handle = |owner: &str| {
        TenantVectors::new(backend.clone(), t.clone(), isolation, DIM)
            .with_owner(Some(owner.to_string()))
    };
    let (old, new) = (handle("uid-old"), handle("uid-new"));
    old.ensure().await.unwrap();
    let doc = uuid::Uuid::new_v4();
    let chunks = vec![chunk(&t, doc, 0, VECTORS[0]), chunk(&t, doc, 1, VECTORS[1])];
    old.upsert(Kind::Docs, chunks).await.unwrap();
    old.upsert_lazy(Kind::Cache, vec![point(VECTORS[1], "x", 0)])
        .await
        .unwrap();
    // The new Tenant sees nothing of the old one's, in either kind, by any read.
    new.ensure().await.unwrap();
    for kind in [Kind::Docs, Kind::Cache] {
        assert_eq!(
            new.count(kind, Filter::default()).await.unwrap(),
            0,
            "{kind:?}"
        );
        let hits = new
            .search(kind, VECTORS[0].to_vec(), Filter::default(), 10)
            .await
            .unwrap();
        assert!(hits.is_empty(), "{kind:?}: {hits:?}");
        let (page, _) = new.scroll(kind, Filter::default(), 10, None).await.unwrap();
        assert!(page.is_empty(), "{kind:?}");
    }
    // A caller's filter cannot name another owner.
    let forged = Filter::default().keyword(super::OWNER_KEY, "uid-old");
    assert_eq!(new.count(Kind::Docs, forged).await.unwrap(), 0);
    // The same chunk ids written by the new owner do not replace the old points.
    new.upsert(Kind::Docs, vec![chunk(&t, doc, 0, VECTORS[2])])
        .await
        .unwrap();
    assert_eq!(new.count(Kind::Docs, Filter::default()).await.unwrap(), 1);
    let adopted = handle("uid-old");
    assert_eq!(
        adopted.count(Kind::Docs, Filter::default()).await.unwrap(),
        2
    );
    // Purging the new owner keeps the retained data (the collection is not dropped) ...
    new.purge().await.unwrap();
    assert_eq!(new.count(Kind::Docs, Filter::default()).await.unwrap(), 0);
    assert_eq!(
        adopted.count(Kind::Docs, Filter::default()).await.unwrap(),
        2
    );
    assert_eq!(
        adopted.count(Kind::Cache, Filter::default()).await.unwrap(),
        1
    );
    // ... and purging the last owner removes it.
    adopted.purge().await.unwrap();
    adopted.purge().await.unwrap();
    assert_eq!(
        adopted.count(Kind::Docs, Filter::default()).await.unwrap(),
        0
    );
}

/// Acknowledged writes (upserts and deletes) are visible to a new backend instance opened
/// after the first one is gone.
async fn durability(h: &dyn Harness) {
    let name = format!("ct_{}_durable", h.run());
    let cache = format!("ct_{}_durable_cache", h.run());
    let points: Vec<Point> = (0..12)
        .map(|i| point([1.0, i as f32, 0.0, 1.0], "acme", i))
        .collect();
    {
        let b = h.open();
        b.ensure_collection(&name, &spec(true)).await.unwrap();
        b.ensure_collection(&cache, &spec(false)).await.unwrap();
        b.upsert(&name, points.clone()).await.unwrap();
        b.upsert(&cache, points[..2].to_vec()).await.unwrap();
        b.delete(&name, &Filter::default().integer("n", 11))
            .await
            .unwrap();
    }
    let b = h.open();
    assert_eq!(b.count(&name, &Filter::default()).await.unwrap(), 11);
    assert_eq!(b.count(&cache, &Filter::default()).await.unwrap(), 2);
    let hits = b
        .search(&name, points[3].vector.clone(), &Filter::default(), 1)
        .await
        .unwrap();
    assert_eq!(hits[0].id, points[3].id);
    assert_eq!(hits[0].payload, points[3].payload);
    // Still writable, ensure still idempotent.
    b.ensure_collection(&name, &spec(true)).await.unwrap();
    b.upsert(&name, vec![point([0.0, 1.0, 0.0, 0.0], "acme", 20)])
        .await
        .unwrap();
    assert_eq!(b.count(&name, &Filter::default()).await.unwrap(), 12);
    b.drop_collection(&name).await.unwrap();
    b.drop_collection(&cache).await.unwrap();
}

/// Keyword and integer filters, alone and combined, in search, scroll and count.
async fn filters(h: &dyn Harness) {
    let b = h.open();
    let name = format!("ct_{}_filters", h.run());
    seeded(&b, &name).await;
    let query = vec![1.0, 0.0, 0.0, 0.0];
    let acme = Filter::default().keyword(TENANT_KEY, "acme");
    let hits = b.search(&name, query.clone(), &acme, 10).await.unwrap();
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| h.payload["tenant_id"] == "acme"));
    let globex_n1 = Filter::default()
        .keyword(TENANT_KEY, "globex")
        .integer("n", 1);
    let hits = b
        .search(&name, query.clone(), &globex_n1, 10)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].payload["text"], "globex-1");
    let n0 = Filter::default().integer("n", 0);
    assert_eq!(
        b.search(&name, query.clone(), &n0, 10).await.unwrap().len(),
        2
    );
    let nobody = Filter::default().keyword(TENANT_KEY, "initech");
    assert!(
        b.search(&name, query, &nobody, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let (page, _) = b.scroll(&name, &acme, 10, None).await.unwrap();
    assert_eq!(page.len(), 3);
    assert!(page.iter().all(|r| r.payload["tenant_id"] == "acme"));
    assert_eq!(b.count(&name, &Filter::default()).await.unwrap(), 6);
    assert_eq!(b.count(&name, &acme).await.unwrap(), 3);
    assert_eq!(b.count(&name, &acme.integer("n", 2)).await.unwrap(), 1);
    assert_eq!(
        b.count(&name, &Filter::default().integer("n", 7))
            .await
            .unwrap(),
        0
    );
    // Numbers below a bound (strictly), alone and with other conditions; deletion by it.
    assert_eq!(
        b.count(&name, &Filter::default().below("n", 2))
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        b.count(&name, &Filter::default().below("n", 0))
            .await
            .unwrap(),
        0
    );
    // Numbers at or above a bound, in count, search and scroll.
    assert_eq!(
        b.count(&name, &Filter::default().at_least("n", 1))
            .await
            .unwrap(),
        4
    );
    let acme_from_2 = Filter::default()
        .keyword(TENANT_KEY, "acme")
        .at_least("n", 2);
    let hits = b
        .search(&name, vec![1.0, 0.0, 0.0, 0.0], &acme_from_2, 10)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].payload["text"], "acme-2");
    let (page, _) = b
        .scroll(&name, &Filter::default().at_least("n", 3), 10, None)
        .await
        .unwrap();
    assert!(page.is_empty());
    let acme_below_1 = Filter::default().keyword(TENANT_KEY, "acme").below("n", 1);
    let (page, _) = b.scroll(&name, &acme_below_1, 10, None).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].payload["text"], "acme-0");
    b.delete(&name, &acme_below_1).await.unwrap();
    let acme = Filter::default().keyword(TENANT_KEY, "acme");
    assert_eq!(b.count(&name, &acme).await.unwrap(), 2);
    assert_eq!(b.count(&name, &Filter::default()).await.unwrap(), 5);
    b.drop_collection(&name).await.unwrap();
}

/// Search returns the nearest first, with cosine similarity as the score.
async fn search_order_and_scores(h: &dyn Harness) {
    let b = h.open();
    let name = format!("ct_{}_search", h.run());
    let points = seeded(&b, &name).await;
    let query = vec![1.0, 0.2, 0.0, 0.0];
    let hits = b
        .search(&name, query.clone(), &Filter::default(), 3)
        .await
        .unwrap();
    assert_eq!(hits.len(), 3);
    for w in hits.windows(2) {
        assert!(w[0].score >= w[1].score);
    }
    assert_eq!(hits[0].id, points[1].id);
    assert_eq!(hits[0].payload, points[1].payload);
    for hit in &hits {
        let p = points.iter().find(|p| p.id == hit.id).unwrap();
        let expected = cosine(&query, &p.vector);
        assert!(
            (hit.score - expected).abs() < 1e-4,
            "{} != {expected}",
            hit.score
        );
    }
    assert!(
        b.search(&name, query, &Filter::default(), 0)
            .await
            .unwrap()
            .is_empty()
    );
    b.drop_collection(&name).await.unwrap();
}

/// Scroll pages through every point exactly once, in id order, with inclusive offsets.
async fn scroll_paging(h: &dyn Harness) {
    let b = h.open();
    let name = format!("ct_{}_scroll", h.run());
    b.ensure_collection(&name, &spec(false)).await.unwrap();
    let points: Vec<Point> = (0..25)
        .map(|i| point([1.0, i as f32, 0.5, 0.0], "acme", i))
        .collect();
    b.upsert(&name, points.clone()).await.unwrap();
    let mut seen = Vec::new();
    let mut offset = None;
    let mut pages = 0;
    loop {
        let (page, next) = b
            .scroll(&name, &Filter::default(), 10, offset)
            .await
            .unwrap();
        pages += 1;
        assert!(page.len() <= 10);
        seen.extend(page.into_iter().map(|r| r.id));
        match next {
            Some(n) => offset = Some(n),
            None => break,
        }
        assert!(pages < 10, "scroll does not terminate");
    }
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages are ordered by id");
    sorted.dedup();
    let mut expected: Vec<_> = points.iter().map(|p| p.id).collect();
    expected.sort();
    assert_eq!(sorted, expected);
    // Filtered paging only returns matching points.
    let (page, _) = b
        .scroll(&name, &Filter::default().integer("n", 7), 10, None)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    b.drop_collection(&name).await.unwrap();
}

/// Delete by filter removes exactly the matching points; an empty filter removes all.
async fn delete_by_filter(h: &dyn Harness) {
    let b = h.open();
    let name = format!("ct_{}_delete", h.run());
    let points = seeded(&b, &name).await;
    let f = Filter::default()
        .keyword(TENANT_KEY, "acme")
        .integer("n", 1);
    b.delete(&name, &f).await.unwrap();
    assert_eq!(b.count(&name, &Filter::default()).await.unwrap(), 5);
    let (rest, _) = b.scroll(&name, &Filter::default(), 10, None).await.unwrap();
    assert!(rest.iter().all(|r| r.id != points[1].id));
    b.delete(&name, &Filter::default().keyword(TENANT_KEY, "globex"))
        .await
        .unwrap();
    let acme = Filter::default().keyword(TENANT_KEY, "acme");
    assert_eq!(b.count(&name, &acme).await.unwrap(), 2);
    assert_eq!(b.count(&name, &Filter::default()).await.unwrap(), 2);
    b.delete(&name, &Filter::default()).await.unwrap();
    assert_eq!(b.count(&name, &Filter::default()).await.unwrap(), 0);
    b.drop_collection(&name).await.unwrap();
}

/// Reads of a missing collection are empty, deletes succeed, upserts fail; ensure is
/// idempotent and keeps data; drop removes data and is idempotent.
async fn collection_lifecycle(h: &dyn Harness) {
    let b = h.open();
    let missing = format!("ct_{}_missing", h.run());
    let f = Filter::default();
    assert!(
        b.search(&missing, vec![1.0; DIM], &f, 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        b.scroll(&missing, &f, 5, None).await.unwrap(),
        (vec![], None)
    );
    assert_eq!(b.count(&missing, &f).await.unwrap(), 0);
    b.delete(&missing, &f).await.unwrap();
    b.drop_collection(&missing).await.unwrap();
    let err = b
        .upsert(&missing, vec![point([1.0; DIM], "acme", 0)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VectorError::Invalid(m) if m.contains("does not exist")),
        "{err}"
    );

    let name = format!("ct_{}_life", h.run());
    b.ensure_collection(&name, &spec(false)).await.unwrap();
    b.ensure_collection(&name, &spec(false)).await.unwrap();
    b.upsert(&name, vec![point([1.0, 2.0, 3.0, 4.0], "acme", 1)])
        .await
        .unwrap();
    b.ensure_collection(&name, &spec(true)).await.unwrap();
    b.ensure_collection(&name, &spec(true)).await.unwrap();
    assert_eq!(b.count(&name, &f).await.unwrap(), 1);
    let other_dim = CollectionSpec {
        dimension: DIM * 2,
        multi_tenant: false,
        keyword_indexes: &[],
        integer_indexes: &[],
    };
    assert!(matches!(
        b.ensure_collection(&name, &other_dim).await,
        Err(VectorError::Invalid(_))
    ));
    for bad in ["", "../etc", "a/b", "Docs", "a-b", "a.b"] {
        assert!(
            matches!(
                b.ensure_collection(bad, &spec(false)).await,
                Err(VectorError::Invalid(_))
            ),
            "{bad:?} accepted"
        );
    }
    b.drop_collection(&name).await.unwrap();
    assert_eq!(b.count(&name, &f).await.unwrap(), 0);
    b.drop_collection(&name).await.unwrap();
    b.ensure_collection(&name, &spec(true)).await.unwrap();
    assert_eq!(b.count(&name, &f).await.unwrap(), 0);
    b.drop_collection(&name).await.unwrap();
    b.ready().await.unwrap();
}

/// A vector of the wrong dimension (or non-finite) is an error, and nothing of a rejected
/// batch is written.
async fn wrong_dimension(h: &dyn Harness) {
    let b = h.open();
    let name = format!("ct_{}_dim", h.run());
    seeded(&b, &name).await;
    let mut bad = point([1.0; DIM], "acme", 9);
    bad.vector.push(1.0);
    let ok = point([1.0; DIM], "acme", 8);
    assert!(matches!(
        b.upsert(&name, vec![ok, bad]).await,
        Err(VectorError::Invalid(_))
    ));
    assert_eq!(b.count(&name, &Filter::default()).await.unwrap(), 6);
    assert!(matches!(
        b.search(&name, vec![1.0; DIM - 1], &Filter::default(), 3)
            .await,
        Err(VectorError::Invalid(_))
    ));
    let mut nan = point([1.0; DIM], "acme", 9);
    nan.vector[0] = f32::NAN;
    assert!(matches!(
        b.upsert(&name, vec![nan]).await,
        Err(VectorError::Invalid(_))
    ));
    assert!(matches!(
        b.ensure_collection(
            &format!("ct_{}_zero", h.run()),
            &CollectionSpec {
                dimension: 0,
                multi_tenant: false,
                keyword_indexes: &[],
                integer_indexes: &[],
            }
        )
        .await,
        Err(VectorError::Invalid(_))
    ));
    b.drop_collection(&name).await.unwrap();
}

/// Thousands of points paged through with small and large pages, filtered and not: each point
/// exactly once, in id order.
async fn large_scroll(h: &dyn Harness) {
    let b = h.open();
    let name = format!("ct_{}_large", h.run());
    b.ensure_collection(&name, &spec(true)).await.unwrap();
    let points: Vec<Point> = (0..3_000)
        .map(|i| {
            point(
                [1.0, (i % 97) as f32, 0.5, 0.0],
                ["acme", "globex"][i % 2],
                i as i64,
            )
        })
        .collect();
    for batch in points.chunks(500) {
        b.upsert(&name, batch.to_vec()).await.unwrap();
    }
    let mut all: Vec<_> = points.iter().map(|p| p.id).collect();
    all.sort();
    for page in [128, 1_000, 5_000] {
        assert_eq!(scroll_all(&b, &name, &Filter::default(), page).await, all);
    }
    let acme = Filter::default().keyword(TENANT_KEY, "acme");
    let mut expected: Vec<_> = points
        .iter()
        .filter(|p| p.payload[TENANT_KEY] == "acme")
        .map(|p| p.id)
        .collect();
    expected.sort();
    assert_eq!(scroll_all(&b, &name, &acme, 99).await, expected);
    assert_eq!(b.count(&name, &acme).await.unwrap(), 1_500);
    b.drop_collection(&name).await.unwrap();
}

/// Every id matching `filter`, in the order scroll returns them with pages of `page`; fails on
/// an oversized page or a scroll that does not end.
async fn scroll_all(
    b: &Arc<dyn VectorBackend>,
    name: &str,
    filter: &Filter,
    page: usize,
) -> Vec<uuid::Uuid> {
    let (mut seen, mut offset) = (Vec::new(), None);
    for _ in 0..10_000 {
        let (records, next) = b.scroll(name, filter, page, offset).await.unwrap();
        assert!(records.len() <= page);
        seen.extend(records.into_iter().map(|r| r.id));
        match next {
            Some(n) => offset = Some(n),
            None => return seen,
        }
    }
    panic!("scroll of {name} does not end");
}

/// A wrong key and no key: every operation is `Unavailable`, says the credentials were
/// refused, and never contains the key sent.
async fn api_key_refusal(h: &QdrantHarness) {
    assert!(
        h.config.api_key.is_some() || !in_ci(),
        "the CI test server requires an API key (QDRANT_API_KEY)"
    );
    let wrong = format!("wrong-key-{}", h.run());
    for key in [Some(wrong.clone()), None] {
        if key.is_none() && h.config.api_key.is_none() {
            continue; // an open server accepts requests without a key
        }
        let mut config = h.config.clone();
        config.api_key = key;
        let b = QdrantBackend::connect(config).unwrap();
        let name = format!("ct_{}_refused", h.run());
        for err in [
            b.ready().await.unwrap_err(),
            b.ensure_collection(&name, &spec(true)).await.unwrap_err(),
            b.count(&name, &Filter::default()).await.unwrap_err(),
            b.scroll(&name, &Filter::default(), 5, None)
                .await
                .unwrap_err(),
            b.delete(&name, &Filter::default()).await.unwrap_err(),
        ] {
            assert!(
                matches!(&err, VectorError::Unavailable(m) if m.contains("credentials") && !m.contains(&wrong)),
                "{err}"
            );
        }
    }
    // The right key still works, and nothing was created by the refused calls.
    let b = h.open();
    b.ready().await.unwrap();
    let name = format!("ct_{}_refused", h.run());
    assert_eq!(b.count(&name, &Filter::default()).await.unwrap(), 0);
}

/// Strict mode (unindexed filtering refused) on collections created without tenantry's
/// payload indexes: tenantry's filtered reads and deletes are refused with a clear
/// [`VectorError::Invalid`] until `ensure` adds the indexes to the existing collections, then
/// every one of them passes; a filter on a key tenantry does not index stays refused.
async fn strict_mode_and_indexes_on_existing_collections(h: &QdrantHarness) {
    use qdrant_client::qdrant::{
        CreateCollectionBuilder, Distance, StrictModeConfigBuilder, UpdateCollectionBuilder,
        VectorParamsBuilder,
    };
    let raw = h.raw_client();
    let tenant = TenantId::parse(&format!("{}-s", h.run())).unwrap();
    let v = TenantVectors::new(h.open(), tenant.clone(), Isolation::Collection, DIM);
    for kind in [Kind::Docs, Kind::Cache] {
        let name = v.collection(kind);
        let create = CreateCollectionBuilder::new(&name)
            .vectors_config(VectorParamsBuilder::new(DIM as u64, Distance::Cosine));
        raw.create_collection(create).await.unwrap();
        let strict = StrictModeConfigBuilder::default()
            .enabled(true)
            .unindexed_filtering_retrieve(false)
            .unindexed_filtering_update(false);
        raw.update_collection(UpdateCollectionBuilder::new(&name).strict_mode_config(strict))
            .await
            .unwrap();
    }
    let doc = uuid::Uuid::new_v4();
    let by_doc = || Filter::default().keyword("document_id", doc.to_string());
    let err = v.count(Kind::Docs, by_doc()).await.unwrap_err();
    assert!(
        matches!(&err, VectorError::Invalid(m) if m.contains("Index required")),
        "{err}"
    );

    v.ensure().await.unwrap();
    let info = raw
        .collection_info(v.collection(Kind::Cache))
        .await
        .unwrap();
    let schema = info.result.unwrap().payload_schema;
    for key in [
        TENANT_KEY,
        super::OWNER_KEY,
        "cache_key",
        "question_hash",
        "created_at",
    ] {
        assert!(schema.contains_key(key), "no index on {key}");
    }
    let mut chunks: Vec<Point> = VECTORS
        .iter()
        .enumerate()
        .map(|(i, vector)| chunk(&tenant, doc, i, *vector))
        .collect();
    for (i, c) in chunks.iter_mut().enumerate() {
        c.payload.insert("chunk_index".into(), json!(i));
    }
    v.upsert(Kind::Docs, chunks).await.unwrap();
    assert_eq!(v.count(Kind::Docs, by_doc()).await.unwrap(), 3);
    let first = by_doc().integer("chunk_index", 0);
    let (page, _) = v.scroll(Kind::Docs, first.clone(), 10, None).await.unwrap();
    assert_eq!(page.len(), 1);
    v.delete(Kind::Docs, first).await.unwrap();
    assert_eq!(v.count(Kind::Docs, by_doc()).await.unwrap(), 2);
    let mut entry = point([0.5; DIM], tenant.as_str(), 0);
    entry.payload.insert("created_at".into(), json!(1_000));
    v.upsert(Kind::Cache, vec![entry]).await.unwrap();
    v.delete(Kind::Cache, Filter::default().below("created_at", 2_000))
        .await
        .unwrap();
    assert_eq!(v.count(Kind::Cache, Filter::default()).await.unwrap(), 0);
    // A handle bound to a data owner filters on its index too.
    let owned = v.clone().with_owner(Some("uid-s".to_string()));
    owned
        .upsert(Kind::Docs, vec![chunk(&tenant, doc, 9, VECTORS[0])])
        .await
        .unwrap();
    assert_eq!(owned.count(Kind::Docs, by_doc()).await.unwrap(), 1);
    owned.delete(Kind::Docs, by_doc()).await.unwrap();
    assert_eq!(v.count(Kind::Docs, by_doc()).await.unwrap(), 2);

    let unindexed = Filter::default().keyword("text", "chunk 1");
    let err = v.count(Kind::Docs, unindexed).await.unwrap_err();
    assert!(
        matches!(&err, VectorError::Invalid(m) if m.contains("\"text\"")),
        "{err}"
    );
    v.purge().await.unwrap();
}

/// A TCP relay on 127.0.0.1 in front of a server, whose open connections can be cut (as a
/// restarting load balancer or a network blip does) while it keeps accepting new ones.
struct Relay {
    url: String,
    conns: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: &str) -> Self {
        let target = reqwest::Url::parse(upstream).unwrap();
        let target = format!(
            "{}:{}",
            target.host_str().unwrap(),
            target.port_or_known_default().unwrap()
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let conns: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let tracked = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tracked.lock().push(tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                }));
            }
        });
        Self { url, conns, accept }
    }

    /// Closes every open connection (both sides); returns how many there were.
    fn cut(&self) -> usize {
        let open: Vec<_> = self.conns.lock().drain(..).collect();
        let n = open.iter().filter(|h| !h.is_finished()).count();
        open.into_iter().for_each(|h| h.abort());
        n
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The backend keeps working after its connections to the server are dropped: the next calls
/// reconnect by themselves (the same backend, nothing rebuilt) and see all data.
async fn reconnects(h: &QdrantHarness) {
    let relay = Relay::start(&h.config.url).await;
    let mut config = h.config.clone();
    config.url = relay.url.clone();
    let b: Arc<dyn VectorBackend> = Arc::new(QdrantBackend::connect(config).unwrap());
    let name = format!("ct_{}_reconnect", h.run());
    let points = seeded(&b, &name).await;
    for round in 0..3u64 {
        assert!(relay.cut() > 0, "round {round}: no connection was open");
        let mut count = None;
        for _ in 0..2 {
            // One refused call right after the cut is tolerated; a second is not recovery.
            if let Ok(n) = b.count(&name, &Filter::default()).await {
                count = Some(n);
                break;
            }
        }
        assert_eq!(count, Some(6 + round), "round {round}: no reconnect");
        b.upsert(
            &name,
            vec![point([0.0, 1.0, 1.0, 0.0], "acme", 10 + round as i64)],
        )
        .await
        .unwrap();
    }
    let hits = b
        .search(&name, points[4].vector.clone(), &Filter::default(), 1)
        .await
        .unwrap();
    assert_eq!(hits[0].id, points[4].id);
    b.ready().await.unwrap();
    b.drop_collection(&name).await.unwrap();
}

/// Documents as the API keeps them ([`crate::documents`]): each tenant reads back exactly the
/// text it stored under a document id both use, never the other's; retrieval never returns a
/// text record; a document without one (stored before they existed) reads back joined from its
/// chunks; deleting a document removes its record too.
async fn document_texts(h: &dyn Harness, isolation: Isolation) {
    use crate::documents::{NewDocument, TEXT_INDEX, chunks_only, document_points, read_document};
    let backend = h.open();
    let a = TenantId::parse(&format!("{}-a", h.run())).unwrap();
    let b = TenantId::parse(&format!("{}-b", h.run())).unwrap();
    let c = TenantId::parse(&format!("{}-c", h.run())).unwrap();
    let handle = |t: &TenantId| TenantVectors::new(backend.clone(), t.clone(), isolation, DIM);
    let (va, vb, vc) = (handle(&a), handle(&b), handle(&c));
    for v in [&va, &vb, &vc] {
        v.ensure().await.unwrap();
    }
    let (size, overlap) = (120, 30);
    let text_of = |who: &str| {
        (0..40)
            .map(|i| format!("{who} sentence {i}: naïve café, 東京.  Two spaces,\ttab."))
            .collect::<Vec<_>>()
            .join("\n\n")
            + "\n"
    };
    let metadata = serde_json::Map::from_iter([("source".to_string(), json!("conformance"))]);
    let points = |t: &TenantId, doc: uuid::Uuid, text: &str| {
        let chunks = crate::chunk::chunk(text, size, overlap);
        let vectors = (0..chunks.len())
            .map(|i| vec![1.0, i as f32, 0.5, 0.0])
            .collect();
        let new = NewDocument {
            text,
            title: Some("handbook"),
            metadata: &metadata,
        };
        document_points(t, doc, &new, chunks, vectors, 1_700_000_000)
    };
    let doc = uuid::Uuid::new_v4();
    let (text_a, text_b) = (text_of("Alpha"), text_of("Beta"));
    let points_a = points(&a, doc, &text_a);
    let chunks_a = points_a.len() - 1;
    assert!(chunks_a > 5, "several chunks: {chunks_a}");
    va.upsert(Kind::Docs, points_a).await.unwrap();
    vb.upsert(Kind::Docs, points(&b, doc, &text_b))
        .await
        .unwrap();

    let read_a = read_document(&va, doc, overlap).await.unwrap().unwrap();
    assert_eq!(
        read_a.text, text_a,
        "exactly as stored, whitespace included"
    );
    assert!(read_a.text_exact);
    assert_eq!(read_a.info.id, doc);
    assert_eq!(read_a.info.title.as_deref(), Some("handbook"));
    assert_eq!(read_a.info.metadata, metadata);
    assert_eq!(read_a.info.chunks, chunks_a as u64);
    let read_b = read_document(&vb, doc, overlap).await.unwrap().unwrap();
    assert_eq!(read_b.text, text_b);
    // Another tenant's id is unknown to this one; so is a random id.
    assert!(read_document(&vc, doc, overlap).await.unwrap().is_none());
    assert!(
        read_document(&va, uuid::Uuid::new_v4(), overlap)
            .await
            .unwrap()
            .is_none()
    );

    // Retrieval sees chunks only, also with the text record's own vector as the query.
    let hits = va
        .search(
            Kind::Docs,
            vec![1.0, 0.0, 0.5, 0.0],
            chunks_only(Filter::default()),
            100,
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), chunks_a);
    assert!(
        hits.iter()
            .all(|h| h.payload["chunk_index"].as_i64() >= Some(0)
                && !h.payload.contains_key("document_text"))
    );

    // A document stored without its text record reads back from its chunks.
    let legacy = uuid::Uuid::new_v4();
    let plain = (0..300)
        .map(|i| format!("word{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let chunk_points: Vec<Point> = points(&a, legacy, &plain)
        .into_iter()
        .filter(|p| p.payload["chunk_index"] != json!(TEXT_INDEX))
        .collect();
    va.upsert(Kind::Docs, chunk_points).await.unwrap();
    let old = read_document(&va, legacy, overlap).await.unwrap().unwrap();
    assert!(!old.text_exact);
    assert_eq!(old.text, plain);

    // Deleting a document removes its text record with its chunks; the other tenant's stays.
    let of_doc = || Filter::default().keyword("document_id", doc.to_string());
    va.delete(Kind::Docs, of_doc()).await.unwrap();
    assert_eq!(va.count(Kind::Docs, of_doc()).await.unwrap(), 0);
    assert!(read_document(&va, doc, overlap).await.unwrap().is_none());
    let read_b = read_document(&vb, doc, overlap).await.unwrap().unwrap();
    assert_eq!(read_b.text, text_b);
    for v in [&va, &vb, &vc] {
        v.purge().await.unwrap();
    }
}

async fn isolation_collection(h: &dyn Harness) {
    isolation(h, Isolation::Collection).await;
}
async fn isolation_partition(h: &dyn Harness) {
    isolation(h, Isolation::Partition).await;
}
async fn deletion_policy_collection(h: &dyn Harness) {
    deletion_policy(h, Isolation::Collection).await;
}
async fn deletion_policy_partition(h: &dyn Harness) {
    deletion_policy(h, Isolation::Partition).await;
}
async fn data_owners_collection(h: &dyn Harness) {
    data_owners(h, Isolation::Collection).await;
}
async fn data_owners_partition(h: &dyn Harness) {
    data_owners(h, Isolation::Partition).await;
}
async fn document_texts_collection(h: &dyn Harness) {
    document_texts(h, Isolation::Collection).await;
}
async fn document_texts_partition(h: &dyn Harness) {
    document_texts(h, Isolation::Partition).await;
}

/// One test per case and backend: `both` cases on the embedded store, a Qdrant server and a
/// Qdrant cluster; `server` cases (features only a server has) on the server and the cluster.
macro_rules! conformance {
    (both: [$($case:ident),* $(,)?], server: [$($server_case:ident),* $(,)?] $(,)?) => {
        /// The embedded store: always run.
        mod edge {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::EdgeHarness::new()).await;
                }
            )*
        }
        conformance!(@server qdrant_server, Single, [$($case),*], [$($server_case),*]);
        conformance!(@server qdrant_cluster, Cluster, [$($case),*], [$($server_case),*]);
    };
    (@server $module:ident, $kind:ident, [$($case:ident),*], [$($server_case:ident),*]) => {
        /// A Qdrant server kind: run when its URL variable is set (always under CI).
        mod $module {
            use super::{QdrantHarness, Server};
            $(
                #[tokio::test]
                async fn $case() {
                    if let Some(h) = QdrantHarness::from_env(Server::$kind, stringify!($case)) {
                        super::$case(&h).await;
                    }
                }
            )*
            $(
                #[tokio::test]
                async fn $server_case() {
                    if let Some(h) = QdrantHarness::from_env(Server::$kind, stringify!($server_case)) {
                        super::$server_case(&h).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    both: [
        isolation_collection,
        isolation_partition,
        deletion_policy_collection,
        deletion_policy_partition,
        data_owners_collection,
        data_owners_partition,
        document_texts_collection,
        document_texts_partition,
        durability,
        filters,
        search_order_and_scores,
        scroll_paging,
        large_scroll,
        delete_by_filter,
        collection_lifecycle,
        wrong_dimension,
    ],
    server: [
        api_key_refusal,
        strict_mode_and_indexes_on_existing_collections,
        reconnects,
    ],
);
