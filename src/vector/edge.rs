//! The embedded vector backend: [`EdgeBackend`], Qdrant's engine running in-process through the
//! `qdrant-edge` crate (pinned `=0.7.2`).
//!
//! This module owns everything below `root` (the data directory given to [`EdgeBackend::open`]):
//!
//! - `root/.edge.lock`: an exclusive `flock(2)` held for the lifetime of the backend, so at most
//!   one [`EdgeBackend`] (in this or any other process) uses a data directory at a time. A second
//!   open fails with [`VectorError::Locked`].
//! - `root/<collection>/`: one qdrant-edge shard per collection (`edge_config.json`, `wal/`,
//!   `segments/`, ...). Collections are loaded lazily on first use, so data written by an
//!   earlier process is visible after a restart.
//!
//! Concurrency model, per collection: reads (search, scroll, count) run concurrently; writes
//! (upsert, delete, index creation) are serialised by a mutex and each is followed by
//! `EdgeShard::flush()` under the same mutex, which fsyncs the WAL and the segments. This is
//! required: qdrant-edge's `flush()` panics (`try_lock().expect(..)`) if a write is in progress,
//! and qdrant-edge 0.7.2 never replays its WAL on load, so only flushed segments survive a crash.
//! Every qdrant-edge call is blocking and runs on `tokio::task::spawn_blocking`.

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use qdrant_edge as qe;
use serde_json::{Map, Value};

use super::{
    CollectionSpec, Filter, MAX_LIMIT, MatchValue, Point, Record, ScoredPoint, TENANT_KEY,
    VectorBackend, VectorError, check_vector, validate_collection_name,
};

/// Capacity of one WAL segment file per collection (the qdrant-edge default is 32 MiB, too much
/// when there are hundreds of collections). Larger single writes still fit: the WAL grows a
/// segment for an oversized entry. Note that qdrant-edge 0.7.2 never truncates (nor replays) its
/// WAL, so `wal/` keeps every operation ever written, in files of this size.
pub const WAL_SEGMENT_CAPACITY: usize = 4 * 1024 * 1024;

/// Name of the lock file in the data directory.
const LOCK_FILE: &str = ".edge.lock";

/// Name of the file qdrant-edge writes into every shard directory.
const EDGE_CONFIG_FILE: &str = "edge_config.json";

/// The embedded Qdrant backend: one qdrant-edge shard per collection under a data directory.
///
/// Open at most one `EdgeBackend` per data directory; share it (`Arc<dyn VectorBackend>`)
/// instead of opening it again. A second [`EdgeBackend::open`] of the same root, from this
/// process or another one, fails with [`VectorError::Locked`] while the first is alive. Cloning
/// is cheap and shares the same shards.
#[derive(Clone)]
pub struct EdgeBackend {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// Holds the exclusive lock on `root/.edge.lock` until the backend is dropped.
    _lock: File,
    /// Loaded collections. Structural changes (load, create, drop) happen with this held.
    collections: Mutex<HashMap<String, Arc<Collection>>>,
    /// Set for a backend that only provisions ([`EdgeBackend::open_provisioner`]): the
    /// one-tenant collections it ensured, by name, with their dimension. They are not kept
    /// loaded, and ensuring one again touches nothing.
    provisioned: Option<Mutex<HashMap<String, usize>>>,
}

/// One loaded collection.
struct Collection {
    name: String,
    dimension: usize,
    /// Serialises writes and flushes. Lock order: `collections` -> `write` -> `shard`.
    write: Mutex<()>,
    /// The shard; `None` once the collection was dropped (late holders of the `Arc` then see
    /// a missing collection).
    shard: RwLock<Option<qe::EdgeShard>>,
}

impl std::fmt::Debug for EdgeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeBackend")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

impl EdgeBackend {
    /// Upserts `points`, flushed when `flush`.
    async fn upsert_with(
        &self,
        collection: &str,
        points: Vec<Point>,
        flush: bool,
    ) -> Result<(), VectorError> {
        let name = collection.to_string();
        self.blocking(move |inner| {
            let missing = || VectorError::Invalid(format!("collection {name} does not exist"));
            let c = inner.get(&name)?.ok_or_else(missing)?;
            if points.is_empty() {
                return Ok(());
            }
            let mut list = Vec::with_capacity(points.len());
            for p in points {
                check_vector(&p.vector, c.dimension, &c.name)?;
                list.push(qe::PointStructPersisted {
                    id: qe::PointId::Uuid(p.id),
                    vector: qe::VectorStructPersisted::Single(p.vector),
                    payload: Some(qe::Payload(p.payload)),
                });
            }
            let op = qe::UpdateOperation::PointOperation(qe::PointOperations::UpsertPoints(
                qe::PointInsertOperations::PointsList(list),
            ));
            if c.write_with(op, flush)? {
                Ok(())
            } else {
                Err(missing())
            }
        })
        .await
    }

    /// Opens (creating it if needed) the data directory `root` and locks it exclusively.
    ///
    /// Collections already on disk are loaded lazily on first use. Fails with
    /// [`VectorError::Locked`] if another `EdgeBackend` — in this process or another — holds
    /// `root`, and with [`VectorError::Unavailable`] if `root` cannot be created or locked.
    pub fn open(root: &Path) -> Result<EdgeBackend, VectorError> {
        std::fs::create_dir_all(root).map_err(|e| {
            VectorError::Unavailable(format!(
                "cannot create data directory {}: {e}",
                root.display()
            ))
        })?;
        let lock_path = root.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                VectorError::Unavailable(format!("cannot open {}: {e}", lock_path.display()))
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(VectorError::Locked(root.display().to_string()));
            }
            Err(TryLockError::Error(e)) => {
                return Err(VectorError::Unavailable(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )));
            }
        }
        Ok(EdgeBackend {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                _lock: lock,
                collections: Mutex::new(HashMap::new()),
                provisioned: None,
            }),
        })
    }

    /// [`EdgeBackend::open`] for a process that creates collections for others and does not
    /// use them (the operator): a collection of one tenant is closed as soon as it is created
    /// and indexed, so a thousand tenants do not hold a thousand open shards (their memory,
    /// WAL files and mappings), and is not looked at again by later ensures. Collections many
    /// tenants share stay loaded, as with [`EdgeBackend::open`]. One collection must not be
    /// ensured concurrently with itself (a Tenant's reconciles never overlap).
    pub fn open_provisioner(root: &Path) -> Result<EdgeBackend, VectorError> {
        let mut backend = Self::open(root)?;
        let inner = Arc::get_mut(&mut backend.inner).expect("a new backend");
        inner.provisioned = Some(Mutex::new(HashMap::new()));
        Ok(backend)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Runs `f` on the blocking pool with the shared state; a panic in `f` (qdrant-edge panics
    /// on some I/O failures, e.g. in `flush`) becomes [`VectorError::Unavailable`].
    async fn blocking<T, F>(&self, f: F) -> Result<T, VectorError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, VectorError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err(VectorError::Unavailable(format!(
                    "qdrant-edge panicked: {msg}"
                )))
            }
            Err(e) => Err(VectorError::Unavailable(format!("vector task failed: {e}"))),
        }
    }
}

/// Maps a qdrant-edge error; `path` is the shard directory (for lock errors).
fn map_err(path: &Path, e: qe::OperationError) -> VectorError {
    use qe::OperationError as E;
    let msg = e.to_string();
    match e {
        E::WrongVectorDimension { .. }
        | E::VectorNameNotExists { .. }
        | E::PointIdError { .. }
        | E::TypeError { .. }
        | E::TypeInferenceError { .. }
        | E::ValidationError { .. }
        | E::WrongSparse
        | E::WrongMulti
        | E::NonFiniteNumber { .. } => VectorError::Invalid(msg),
        // The WAL directory is `flock`ed; the error arrives stringified
        // (`InitWalError("Os { .. kind: WouldBlock .. }")`).
        _ if msg.contains("WouldBlock") => VectorError::Locked(path.display().to_string()),
        _ => VectorError::Unavailable(msg),
    }
}

fn to_edge_filter(filter: &Filter) -> Result<Option<qe::Filter>, VectorError> {
    if filter.must.is_empty() {
        return Ok(None);
    }
    let mut conditions = Vec::with_capacity(filter.must.len());
    for (key, value) in &filter.must {
        let path = qe::JsonPath::try_from(key.as_str())
            .map_err(|()| VectorError::Invalid(format!("invalid payload key {key:?}")))?;
        let condition = match value {
            MatchValue::Keyword(s) => {
                qe::FieldCondition::new_match(path, qe::Match::from(s.clone()))
            }
            MatchValue::Integer(i) => qe::FieldCondition::new_match(path, qe::Match::from(*i)),
            // Qdrant's range condition, through its REST shape (numbers compare as floats).
            MatchValue::Below(i) => serde_json::from_value(serde_json::json!({
                "key": key,
                "range": {"lt": *i},
            }))
            .map_err(|e| VectorError::Invalid(format!("range condition on {key:?}: {e}")))?,
            MatchValue::AtLeast(i) => serde_json::from_value(serde_json::json!({
                "key": key,
                "range": {"gte": *i},
            }))
            .map_err(|e| VectorError::Invalid(format!("range condition on {key:?}: {e}")))?,
        };
        conditions.push(qe::Condition::Field(condition));
    }
    Ok(Some(qe::Filter {
        must: Some(conditions),
        ..Default::default()
    }))
}

fn to_uuid(id: qe::PointId) -> Result<uuid::Uuid, VectorError> {
    match id {
        qe::PointId::Uuid(u) => Ok(u),
        qe::PointId::NumId(n) => Err(VectorError::Invalid(format!(
            "point id {n} is an integer; this store only holds UUID ids"
        ))),
    }
}

fn payload_map(payload: Option<qe::Payload>) -> Map<String, Value> {
    payload.map(|p| p.0).unwrap_or_default()
}

fn edge_config(dimension: usize) -> Result<qe::EdgeConfig, VectorError> {
    let retain_closed = NonZeroUsize::new(1)
        .ok_or_else(|| VectorError::Invalid("retain_closed must be non-zero".into()))?;
    Ok(qe::EdgeConfigBuilder::new()
        .vector(
            qe::DEFAULT_VECTOR_NAME,
            qe::EdgeVectorParamsBuilder::new(dimension, qe::Distance::Cosine).build(),
        )
        .wal_options(qe::WalOptions {
            segment_capacity: WAL_SEGMENT_CAPACITY,
            segment_queue_len: 0,
            retain_closed,
        })
        .build())
}

impl Collection {
    fn open_existing(name: &str, path: &Path) -> Result<Collection, VectorError> {
        let shard = qe::EdgeShard::load(path, None).map_err(|e| map_err(path, e))?;
        let dimension = shard
            .config()
            .vectors
            .get(qe::DEFAULT_VECTOR_NAME)
            .map(|v| v.size)
            .ok_or_else(|| {
                VectorError::Unavailable(format!(
                    "collection {name} at {} has no default dense vector",
                    path.display()
                ))
            })?;
        Ok(Collection::new(name, dimension, shard))
    }

    fn new(name: &str, dimension: usize, shard: qe::EdgeShard) -> Collection {
        Collection {
            name: name.to_string(),
            dimension,
            write: Mutex::new(()),
            shard: RwLock::new(Some(shard)),
        }
    }

    /// Applies `op` and flushes, serialised with all other writes to this collection.
    /// Returns `Ok(false)` if the collection was dropped meanwhile.
    fn write(&self, op: qe::UpdateOperation) -> Result<bool, VectorError> {
        self.write_with(op, true)
    }

    /// Applies `op`, then flushes if `flush`. Without a flush the operation is in the in-memory
    /// segments only (qdrant-edge does not replay its WAL): the next flushed write, or a clean
    /// shutdown, persists it; a crash before that loses it.
    fn write_with(&self, op: qe::UpdateOperation, flush: bool) -> Result<bool, VectorError> {
        let _writer = self.write.lock();
        let guard = self.shard.read();
        let Some(shard) = guard.as_ref() else {
            return Ok(false);
        };
        let result = shard.update(op).map_err(|e| map_err(shard.path(), e));
        // Flush even if the update failed: the operation may be in the WAL already.
        if flush {
            shard.flush();
        }
        result.map(|()| true)
    }

    /// Whether the tenant keyword index exists.
    fn has_tenant_index(&self) -> bool {
        self.has_index(TENANT_KEY)
    }

    /// Whether a payload index on `key` exists.
    fn has_index(&self, key: &str) -> bool {
        let Ok(path) = qe::JsonPath::try_from(key) else {
            return false;
        };
        self.shard
            .read()
            .as_ref()
            .is_some_and(|s| s.info().payload_schema.contains_key(&path))
    }

    /// Creates a keyword index on [`TENANT_KEY`] with `is_tenant: true`.
    fn create_tenant_index(&self) -> Result<(), VectorError> {
        self.create_keyword_index(TENANT_KEY, true)
    }

    /// Creates a keyword index on `key` (`is_tenant`: Qdrant's tenant-key optimisation).
    fn create_keyword_index(&self, key: &str, is_tenant: bool) -> Result<(), VectorError> {
        let create: qe::CreateIndex = serde_json::from_value(serde_json::json!({
            "field_name": key,
            "field_schema": {"type": "keyword", "is_tenant": is_tenant},
        }))
        .map_err(|e| VectorError::Invalid(format!("index definition for {key}: {e}")))?;
        let op =
            qe::UpdateOperation::FieldIndexOperation(qe::FieldIndexOperations::CreateIndex(create));
        self.write(op).map(|_| ())
    }
}

impl Inner {
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The collection `name`, loading it from disk if needed; `None` if it does not exist.
    fn get(&self, name: &str) -> Result<Option<Arc<Collection>>, VectorError> {
        validate_collection_name(name)?;
        let mut map = self.collections.lock();
        self.get_locked(&mut map, name)
    }

    fn get_locked(
        &self,
        map: &mut HashMap<String, Arc<Collection>>,
        name: &str,
    ) -> Result<Option<Arc<Collection>>, VectorError> {
        if let Some(c) = map.get(name) {
            return Ok(Some(Arc::clone(c)));
        }
        let path = self.path(name);
        if !path.join(EDGE_CONFIG_FILE).is_file() {
            return Ok(None);
        }
        let collection = Arc::new(Collection::open_existing(name, &path)?);
        map.insert(name.to_string(), Arc::clone(&collection));
        Ok(Some(collection))
    }

    fn ensure(&self, name: &str, spec: &CollectionSpec) -> Result<(), VectorError> {
        validate_collection_name(name)?;
        if spec.dimension == 0 {
            return Err(VectorError::Invalid(format!(
                "collection {name}: dimension must be positive"
            )));
        }
        let close_after = self.provisioned.as_ref().filter(|_| !spec.multi_tenant);
        if let Some(done) = close_after
            && done.lock().get(name) == Some(&spec.dimension)
        {
            return Ok(());
        }
        let mut map = self.collections.lock();
        let collection = match self.get_locked(&mut map, name)? {
            Some(c) => {
                if c.dimension != spec.dimension {
                    return Err(VectorError::Invalid(format!(
                        "collection {name} exists with dimension {}, requested {}",
                        c.dimension, spec.dimension
                    )));
                }
                c
            }
            None => {
                let path = self.path(name);
                std::fs::create_dir_all(&path).map_err(|e| {
                    VectorError::Unavailable(format!("cannot create {}: {e}", path.display()))
                })?;
                let shard = qe::EdgeShard::new(&path, edge_config(spec.dimension)?)
                    .map_err(|e| map_err(&path, e))?;
                let c = Arc::new(Collection::new(name, spec.dimension, shard));
                map.insert(name.to_string(), Arc::clone(&c));
                c
            }
        };
        drop(map);
        if spec.multi_tenant && !collection.has_tenant_index() {
            collection.create_tenant_index()?;
        }
        for key in spec.keyword_indexes {
            if !collection.has_index(key) {
                collection.create_keyword_index(key, false)?;
            }
        }
        if let Some(done) = close_after {
            self.close(name);
            done.lock().insert(name.to_string(), spec.dimension);
        }
        Ok(())
    }

    /// Unloads collection `name` (flushed and closed; its data stays on disk).
    fn close(&self, name: &str) {
        let Some(c) = self.collections.lock().remove(name) else {
            return;
        };
        let _writer = c.write.lock();
        // Dropping the shard flushes it and releases its WAL lock.
        drop(c.shard.write().take());
    }

    fn drop_collection(&self, name: &str) -> Result<(), VectorError> {
        validate_collection_name(name)?;
        if let Some(done) = &self.provisioned {
            done.lock().remove(name);
        }
        let mut map = self.collections.lock();
        if let Some(c) = map.remove(name) {
            let _writer = c.write.lock();
            let shard = c.shard.write().take();
            // Dropping the shard flushes it and releases its WAL lock.
            drop(shard);
        }
        let path = self.path(name);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(VectorError::Unavailable(format!(
                "cannot delete {}: {e}",
                path.display()
            ))),
        }
    }
}

#[async_trait]
impl VectorBackend for EdgeBackend {
    async fn ensure_collection(
        &self,
        name: &str,
        spec: &CollectionSpec,
    ) -> Result<(), VectorError> {
        let name = name.to_string();
        let spec = spec.clone();
        self.blocking(move |inner| inner.ensure(&name, &spec)).await
    }

    async fn drop_collection(&self, name: &str) -> Result<(), VectorError> {
        let name = name.to_string();
        self.blocking(move |inner| inner.drop_collection(&name))
            .await
    }

    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<(), VectorError> {
        self.upsert_with(collection, points, true).await
    }

    async fn upsert_lazy(&self, collection: &str, points: Vec<Point>) -> Result<(), VectorError> {
        self.upsert_with(collection, points, false).await
    }

    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<ScoredPoint>, VectorError> {
        let name = collection.to_string();
        let filter = to_edge_filter(filter)?;
        let limit = limit.min(MAX_LIMIT);
        self.blocking(move |inner| {
            let Some(c) = inner.get(&name)? else {
                return Ok(Vec::new());
            };
            check_vector(&vector, c.dimension, &c.name)?;
            if limit == 0 {
                return Ok(Vec::new());
            }
            let guard = c.shard.read();
            let Some(shard) = guard.as_ref() else {
                return Ok(Vec::new());
            };
            let request = qe::SearchRequest {
                query: qe::QueryEnum::Nearest(qe::NamedQuery {
                    query: qe::VectorInternal::Dense(vector),
                    using: None,
                }),
                filter,
                params: None,
                limit,
                offset: 0,
                with_payload: Some(qe::WithPayloadInterface::Bool(true)),
                with_vector: Some(qe::WithVector::Bool(false)),
                score_threshold: None,
            };
            let found = shard
                .search(request)
                .map_err(|e| map_err(shard.path(), e))?;
            found
                .into_iter()
                .map(|p| {
                    Ok(ScoredPoint {
                        id: to_uuid(p.id)?,
                        score: p.score,
                        payload: payload_map(p.payload),
                    })
                })
                .collect()
        })
        .await
    }

    async fn scroll(
        &self,
        collection: &str,
        filter: &Filter,
        limit: usize,
        offset: Option<uuid::Uuid>,
    ) -> Result<(Vec<Record>, Option<uuid::Uuid>), VectorError> {
        let name = collection.to_string();
        let filter = to_edge_filter(filter)?;
        let limit = limit.min(MAX_LIMIT);
        self.blocking(move |inner| {
            let Some(c) = inner.get(&name)? else {
                return Ok((Vec::new(), None));
            };
            if limit == 0 {
                return Ok((Vec::new(), offset));
            }
            let guard = c.shard.read();
            let Some(shard) = guard.as_ref() else {
                return Ok((Vec::new(), None));
            };
            // qdrant's `offset` is inclusive and its next offset is the first id of the next
            // page, so feeding the returned offset back continues exactly where the page ended.
            let request = qe::ScrollRequest {
                offset: offset.map(qe::PointId::Uuid),
                limit: Some(limit),
                filter,
                with_payload: Some(qe::WithPayloadInterface::Bool(true)),
                with_vector: qe::WithVector::Bool(false),
                order_by: None,
            };
            let (records, next) = shard
                .scroll(request)
                .map_err(|e| map_err(shard.path(), e))?;
            let records = records
                .into_iter()
                .map(|r| {
                    Ok(Record {
                        id: to_uuid(r.id)?,
                        payload: payload_map(r.payload),
                    })
                })
                .collect::<Result<Vec<_>, VectorError>>()?;
            Ok((records, next.map(to_uuid).transpose()?))
        })
        .await
    }

    async fn count(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError> {
        let name = collection.to_string();
        let filter = to_edge_filter(filter)?;
        self.blocking(move |inner| {
            let Some(c) = inner.get(&name)? else {
                return Ok(0);
            };
            let guard = c.shard.read();
            let Some(shard) = guard.as_ref() else {
                return Ok(0);
            };
            let n = shard
                .count(qe::CountRequest {
                    filter,
                    exact: true,
                })
                .map_err(|e| map_err(shard.path(), e))?;
            Ok(n as u64)
        })
        .await
    }

    async fn delete(&self, collection: &str, filter: &Filter) -> Result<(), VectorError> {
        let name = collection.to_string();
        let filter = to_edge_filter(filter)?.unwrap_or_default();
        self.blocking(move |inner| {
            let Some(c) = inner.get(&name)? else {
                return Ok(());
            };
            let op = qe::UpdateOperation::PointOperation(
                qe::PointOperations::DeletePointsByFilter(filter),
            );
            c.write(op).map(|_| ())
        })
        .await
    }

    async fn ready(&self) -> Result<(), VectorError> {
        let root = self.inner.root.clone();
        match tokio::fs::metadata(&root).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(VectorError::Unavailable(format!(
                "{} is not a directory",
                root.display()
            ))),
            Err(e) => Err(VectorError::Unavailable(format!(
                "data directory {}: {e}",
                root.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Tests of what is specific to the embedded store (folders, locks, crash recovery, WAL
    //! options, concurrency). The behaviour every backend shares (search, filters, scroll,
    //! count, deletes, missing collections, dimensions, isolation, durability) is tested once
    //! for all backends in `vector::conformance`.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::vector::VectorBackend;

    use crate::vector::conformance::{DIM, point, six_points, spec};

    async fn backend() -> (tempfile::TempDir, EdgeBackend) {
        let dir = tempfile::tempdir().unwrap();
        let backend = EdgeBackend::open(dir.path()).unwrap();
        (dir, backend)
    }

    /// Two tenants, three points each; `n` is 0..3.
    async fn seeded(name: &str) -> (tempfile::TempDir, EdgeBackend, Vec<Point>) {
        let (dir, b) = backend().await;
        b.ensure_collection(name, &spec(true)).await.unwrap();
        let points = six_points();
        b.upsert(name, points.clone()).await.unwrap();
        (dir, b, points)
    }

    #[tokio::test]
    async fn ensure_collection_is_idempotent_and_validates() {
        let (dir, b) = backend().await;
        b.ensure_collection("docs", &spec(false)).await.unwrap();
        b.ensure_collection("docs", &spec(false)).await.unwrap();
        b.upsert("docs", vec![point([1.0, 2.0, 3.0, 4.0], "acme", 1)])
            .await
            .unwrap();
        b.ensure_collection("docs", &spec(false)).await.unwrap();
        assert_eq!(b.count("docs", &Filter::default()).await.unwrap(), 1);
        assert!(dir.path().join("docs").join(EDGE_CONFIG_FILE).is_file());

        let other_dim = CollectionSpec {
            dimension: 8,
            multi_tenant: false,
            keyword_indexes: &[],
            integer_indexes: &[],
        };
        assert!(matches!(
            b.ensure_collection("docs", &other_dim).await,
            Err(VectorError::Invalid(_))
        ));
        for bad in ["", "../etc", "a/b", "Docs", "a-b", ".edge", "a.b"] {
            assert!(
                matches!(
                    b.ensure_collection(bad, &spec(false)).await,
                    Err(VectorError::Invalid(_))
                ),
                "{bad:?} accepted"
            );
            assert!(matches!(
                b.count(bad, &Filter::default()).await,
                Err(VectorError::Invalid(_))
            ));
        }
        assert!(b.ready().await.is_ok());
    }

    #[tokio::test]
    async fn a_provisioner_closes_one_tenants_collections_and_keeps_shared_ones() {
        let dir = tempfile::tempdir().unwrap();
        let own = CollectionSpec {
            keyword_indexes: &["document_id"],
            ..spec(false)
        };
        {
            let b = EdgeBackend::open_provisioner(dir.path()).unwrap();
            b.ensure_collection("own", &own).await.unwrap();
            b.ensure_collection("shared", &spec(true)).await.unwrap();
            let loaded: Vec<String> = b.inner.collections.lock().keys().cloned().collect();
            assert_eq!(loaded, ["shared"], "only the shared collection stays open");
            // Ensured again: nothing is opened.
            b.ensure_collection("own", &own).await.unwrap();
            assert!(!b.inner.collections.lock().contains_key("own"));
            // A new dimension is still checked against the collection on disk.
            let wider = CollectionSpec {
                dimension: 8,
                ..own.clone()
            };
            assert!(matches!(
                b.ensure_collection("own", &wider).await,
                Err(VectorError::Invalid(_))
            ));
            b.drop_collection("own").await.unwrap();
            assert!(!dir.path().join("own").exists());
            b.ensure_collection("own", &own).await.unwrap();
            assert!(dir.path().join("own").join(EDGE_CONFIG_FILE).is_file());
        }
        // What it created is on disk, indexed, for the process that uses it.
        let b = EdgeBackend::open(dir.path()).unwrap();
        b.upsert("own", vec![point([1.0, 2.0, 3.0, 4.0], "acme", 1)])
            .await
            .unwrap();
        assert_eq!(b.count("own", &Filter::default()).await.unwrap(), 1);
        let c = b.inner.get("own").unwrap().expect("loaded");
        assert!(c.has_index("document_id"));
    }

    #[tokio::test]
    async fn multi_tenant_collection_gets_tenant_keyword_index() {
        let (_dir, b) = backend().await;
        b.ensure_collection("shared", &spec(true)).await.unwrap();
        b.ensure_collection("shared", &spec(true)).await.unwrap();
        b.ensure_collection("single", &spec(false)).await.unwrap();
        let inner = &b.inner;
        let shared = inner.get("shared").unwrap().unwrap();
        let single = inner.get("single").unwrap().unwrap();
        assert!(shared.has_tenant_index());
        assert!(!single.has_tenant_index());
        let info = shared.shard.read().as_ref().unwrap().info();
        let index = info
            .payload_schema
            .get(&qe::JsonPath::try_from(TENANT_KEY).unwrap())
            .unwrap();
        let params = serde_json::to_value(index.params.as_ref().unwrap()).unwrap();
        assert_eq!(params["type"], "keyword");
        assert_eq!(params["is_tenant"], true);
    }

    #[tokio::test]
    async fn keyword_indexes_are_created_also_on_existing_collections() {
        let (_dir, b, _points) = seeded("cache").await;
        let c = b.inner.get("cache").unwrap().unwrap();
        assert!(!c.has_index("text") && !c.has_index("question_hash"));
        let with_indexes = CollectionSpec {
            keyword_indexes: &["text", "question_hash"],
            ..spec(true)
        };
        b.ensure_collection("cache", &with_indexes).await.unwrap();
        b.ensure_collection("cache", &with_indexes).await.unwrap();
        assert!(c.has_index("text") && c.has_index("question_hash"));
        assert!(c.has_tenant_index());
        // Points written before the index are in it.
        let f = Filter::default().keyword("text", "acme-1");
        assert_eq!(b.count("cache", &f).await.unwrap(), 1);
        let (found, _) = b.scroll("cache", &f, 10, None).await.unwrap();
        assert_eq!(found.len(), 1);
    }

    #[tokio::test]
    async fn drop_collection_removes_points_and_folder() {
        let (dir, b, _points) = seeded("docs").await;
        b.drop_collection("docs").await.unwrap();
        assert!(!dir.path().join("docs").exists());
        assert_eq!(b.count("docs", &Filter::default()).await.unwrap(), 0);
        // Dropping again (or something that never existed) is fine.
        b.drop_collection("docs").await.unwrap();
        b.drop_collection("never").await.unwrap();
        // The name can be reused, empty.
        b.ensure_collection("docs", &spec(true)).await.unwrap();
        assert_eq!(b.count("docs", &Filter::default()).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn data_survives_reopening_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let points = {
            let b = EdgeBackend::open(dir.path()).unwrap();
            b.ensure_collection("docs", &spec(true)).await.unwrap();
            b.ensure_collection("cache", &spec(false)).await.unwrap();
            let points: Vec<Point> = (0..12)
                .map(|i| point([1.0, i as f32, 0.0, 1.0], "acme", i))
                .collect();
            b.upsert("docs", points.clone()).await.unwrap();
            b.upsert("cache", points[..2].to_vec()).await.unwrap();
            b.delete("docs", &Filter::default().integer("n", 11))
                .await
                .unwrap();
            points
        };
        let b = EdgeBackend::open(dir.path()).unwrap();
        assert_eq!(b.count("docs", &Filter::default()).await.unwrap(), 11);
        assert_eq!(b.count("cache", &Filter::default()).await.unwrap(), 2);
        let hits = b
            .search("docs", points[3].vector.clone(), &Filter::default(), 1)
            .await
            .unwrap();
        assert_eq!(hits[0].id, points[3].id);
        assert_eq!(hits[0].payload, points[3].payload);
        // Loaded collections keep their dimension, WAL options and tenant index.
        let docs = b.inner.get("docs").unwrap().unwrap();
        assert_eq!(docs.dimension, DIM);
        assert!(docs.has_tenant_index());
        let wal = docs
            .shard
            .read()
            .as_ref()
            .unwrap()
            .config()
            .wal_options
            .clone()
            .unwrap();
        assert_eq!(wal.segment_capacity, WAL_SEGMENT_CAPACITY);
        b.ensure_collection("docs", &spec(true)).await.unwrap();
        b.upsert("docs", vec![point([0.0, 1.0, 0.0, 0.0], "acme", 20)])
            .await
            .unwrap();
        assert_eq!(b.count("docs", &Filter::default()).await.unwrap(), 12);
    }

    #[tokio::test]
    async fn second_open_in_same_process_is_locked() {
        let (dir, b) = backend().await;
        b.ensure_collection("docs", &spec(false)).await.unwrap();
        let err = EdgeBackend::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, VectorError::Locked(p) if p.contains(&*dir.path().to_string_lossy()))
        );
        // Opening the shard directly is refused too (the WAL directory is flocked).
        let shard_dir = dir.path().join("docs");
        match qe::EdgeShard::load(&shard_dir, None) {
            Ok(_) => panic!("shard opened twice"),
            Err(e) => assert!(matches!(map_err(&shard_dir, e), VectorError::Locked(_))),
        }
        drop(b);
        let b = EdgeBackend::open(dir.path()).unwrap();
        assert_eq!(b.count("docs", &Filter::default()).await.unwrap(), 0);
    }

    const LOCK_CHILD_ENV: &str = "TENANTRY_EDGE_LOCK_CHILD_ROOT";
    const CRASH_CHILD_ENV: &str = "TENANTRY_EDGE_CRASH_CHILD_ROOT";

    /// Runs the test `name` of this test binary in a child process with `env=root`; returns
    /// whether it succeeded. Asserts the child really ran that one test.
    fn run_child(name: &str, env: &str, root: &Path) -> bool {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads", "1"])
            .env(env, root)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("running 1 test"), "child output: {stdout}");
        out.status.success()
    }

    /// Child of `second_open_in_other_process_is_locked`; a no-op in a normal test run.
    #[test]
    fn lock_child_process() {
        let Some(root) = std::env::var_os(LOCK_CHILD_ENV) else {
            return;
        };
        match EdgeBackend::open(Path::new(&root)) {
            Err(VectorError::Locked(_)) => {}
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn second_open_in_other_process_is_locked() {
        let (dir, b) = backend().await;
        b.ensure_collection("docs", &spec(false)).await.unwrap();
        assert!(
            run_child(
                "vector::edge::tests::lock_child_process",
                LOCK_CHILD_ENV,
                dir.path()
            ),
            "child did not see the data dir as locked"
        );
        drop(b);
        // Once released, another process can open it (the child now fails its assertion).
        assert!(!run_child(
            "vector::edge::tests::lock_child_process",
            LOCK_CHILD_ENV,
            dir.path()
        ));
    }

    /// Child of `acknowledged_writes_survive_a_crash`: writes, then aborts without running any
    /// destructor (so nothing is flushed on drop). A no-op in a normal test run.
    #[test]
    fn crash_child_process() {
        let Some(root) = std::env::var_os(CRASH_CHILD_ENV) else {
            return;
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let b = EdgeBackend::open(Path::new(&root)).unwrap();
            b.ensure_collection("docs", &spec(true)).await.unwrap();
            let points: Vec<Point> = (0..10)
                .map(|i| point([1.0, i as f32, 0.0, 0.0], "acme", i))
                .collect();
            b.upsert("docs", points).await.unwrap();
            b.delete("docs", &Filter::default().integer("n", 3))
                .await
                .unwrap();
            b.upsert("docs", vec![point([0.0, 0.0, 1.0, 0.0], "globex", 0)])
                .await
                .unwrap();
            std::process::abort();
        });
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!run_child(
            "vector::edge::tests::crash_child_process",
            CRASH_CHILD_ENV,
            dir.path()
        ));
        let b = EdgeBackend::open(dir.path()).unwrap();
        assert_eq!(b.count("docs", &Filter::default()).await.unwrap(), 10);
        let acme = Filter::default().keyword(TENANT_KEY, "acme");
        assert_eq!(b.count("docs", &acme).await.unwrap(), 9);
        assert_eq!(b.count("docs", &acme.integer("n", 3)).await.unwrap(), 0);
        assert!(b.inner.get("docs").unwrap().unwrap().has_tenant_index());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_upserts_and_reads_do_not_panic() {
        let (_dir, b) = backend().await;
        b.ensure_collection("docs", &spec(true)).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                let tenant = format!("t{t}");
                for i in 0..10 {
                    let pts = (0..5)
                        .map(|j| point([1.0, t as f32, i as f32, j as f32], &tenant, i * 5 + j))
                        .collect();
                    b.upsert("docs", pts).await.unwrap();
                    let f = Filter::default().keyword(TENANT_KEY, tenant.as_str());
                    b.search("docs", vec![1.0, 0.0, 0.0, 0.0], &f, 3)
                        .await
                        .unwrap();
                    b.count("docs", &f).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(b.count("docs", &Filter::default()).await.unwrap(), 400);
        for t in 0..8 {
            let f = Filter::default().keyword(TENANT_KEY, format!("t{t}"));
            assert_eq!(b.count("docs", &f).await.unwrap(), 50);
        }
    }
}
