//! Vector storage: the backend trait, and [`TenantVectors`], the only way the rest of the
//! program reaches stored points.
//!
//! Backends ([`VectorBackend`]) know about collections, points and filters, nothing about
//! tenants. [`TenantVectors`] is built from a verified [`TenantId`] and is the single choke point
//! that scopes every operation: it picks the collection for the tenant's isolation mode, stamps
//! `tenant_id` into every payload it writes, and adds a `tenant_id == <tenant>` condition to
//! every read, count and delete — in both isolation modes, so a mistake in collection naming
//! still cannot leak points across tenants.
//!
//! A handle may also be bound to a data owner (the UID of the Tenant object, see
//! [`TenantVectors::with_owner`]): then `tenant_uid` is stamped and matched the same way, so a
//! Tenant created again under a deleted one's name starts empty although the old data is
//! retained, and point ids are derived per owner, so its writes never replace the old points.
#[cfg(test)]
pub(crate) mod conformance;
pub mod edge;
pub mod qdrant;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::domain::{Isolation, TenantId};

/// Upper bound applied to `limit` in [`VectorBackend::search`] and [`VectorBackend::scroll`]
/// by both backends (qdrant-edge pre-allocates result buffers of `limit` entries).
pub const MAX_LIMIT: usize = 10_000;

/// Longest accepted collection name (one path component for the embedded store).
const MAX_NAME_LEN: usize = 200;

/// Payload key holding the owning tenant of every point.
pub const TENANT_KEY: &str = "tenant_id";
/// Payload key holding the data owner (the Tenant object's UID) of every point written by a
/// handle bound to one.
pub const OWNER_KEY: &str = "tenant_uid";

/// Errors from a vector backend.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// The backend cannot be reached or refused the operation (HTTP 503).
    #[error("vector store unavailable: {0}")]
    Unavailable(String),
    /// The data directory is locked by another process (HTTP 503 at start-up).
    #[error("vector store data directory {0} is in use by another process")]
    Locked(String),
    /// The request was invalid for this collection (wrong dimension, ...). HTTP 500.
    #[error("invalid vector operation: {0}")]
    Invalid(String),
}

/// A value a payload field is matched against.
#[derive(Debug, Clone, PartialEq)]
pub enum MatchValue {
    /// Exact keyword match.
    Keyword(String),
    /// Exact integer match.
    Integer(i64),
    /// A number strictly below this one.
    Below(i64),
    /// A number at or above this one.
    AtLeast(i64),
}

/// A conjunction of conditions on payload fields (all must hold).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// `(payload key, value)` pairs that must all match.
    pub must: Vec<(String, MatchValue)>,
}

impl Filter {
    /// Adds a keyword condition.
    pub fn keyword(mut self, key: &str, value: impl Into<String>) -> Self {
        self.must
            .push((key.to_string(), MatchValue::Keyword(value.into())));
        self
    }

    /// Adds an integer condition.
    pub fn integer(mut self, key: &str, value: i64) -> Self {
        self.must
            .push((key.to_string(), MatchValue::Integer(value)));
        self
    }

    /// Adds a condition: the number at `key` is below `value`.
    pub fn below(mut self, key: &str, value: i64) -> Self {
        self.must.push((key.to_string(), MatchValue::Below(value)));
        self
    }

    /// Adds a condition: the number at `key` is at least `value`.
    pub fn at_least(mut self, key: &str, value: i64) -> Self {
        self.must
            .push((key.to_string(), MatchValue::AtLeast(value)));
        self
    }
}

/// A point to store: id (UUID), dense vector, JSON object payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Point id; a UUID.
    pub id: uuid::Uuid,
    /// Dense vector; its length must equal the collection's dimension.
    pub vector: Vec<f32>,
    /// Payload fields.
    pub payload: Map<String, Value>,
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPoint {
    /// Point id.
    pub id: uuid::Uuid,
    /// Cosine similarity (higher is closer).
    pub score: f32,
    /// Payload fields.
    pub payload: Map<String, Value>,
}

/// A stored point without its vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Point id.
    pub id: uuid::Uuid,
    /// Payload fields.
    pub payload: Map<String, Value>,
}

/// Parameters of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionSpec {
    /// Vector dimension.
    pub dimension: usize,
    /// Whether many tenants share the collection: backends that can, index [`TENANT_KEY`] as a
    /// tenant key (Qdrant's keyword index with `is_tenant: true`).
    pub multi_tenant: bool,
    /// Payload keys matched exactly by lookups: each gets a keyword index, so a filtered read
    /// does not scan every point's payload (indexes are added to existing collections too).
    pub keyword_indexes: &'static [&'static str],
    /// Integer payload keys filtered on (exact or below a bound): a Qdrant server gets an
    /// integer index for each, so a collection in strict mode (unindexed filtering refused)
    /// still answers every read and delete tenantry makes. The embedded store needs none.
    pub integer_indexes: &'static [&'static str],
}

/// A vector database: collections of points with cosine distance.
///
/// Every write is durable when the call returns `Ok` (a crash right after does not lose it).
/// Implementations are tenant-agnostic; use [`TenantVectors`] to reach them.
#[async_trait]
pub trait VectorBackend: Send + Sync + 'static {
    /// Creates the collection if it does not exist (idempotent).
    async fn ensure_collection(&self, name: &str, spec: &CollectionSpec)
    -> Result<(), VectorError>;
    /// Deletes the collection and all its points; succeeds if it does not exist.
    async fn drop_collection(&self, name: &str) -> Result<(), VectorError>;
    /// Inserts or replaces points; durable on return.
    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<(), VectorError>;
    /// Inserts or replaces points that can be rebuilt (semantic-cache entries): visible to
    /// reads on return, but the backend may skip waiting for them to be durable. The default
    /// is [`VectorBackend::upsert`].
    async fn upsert_lazy(&self, collection: &str, points: Vec<Point>) -> Result<(), VectorError> {
        self.upsert(collection, points).await
    }
    /// Nearest neighbours of `vector` among points matching `filter`, best first.
    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<ScoredPoint>, VectorError>;
    /// Points matching `filter`, ordered by id, at most `limit`, starting after `offset`;
    /// returns the page and the id to continue from.
    async fn scroll(
        &self,
        collection: &str,
        filter: &Filter,
        limit: usize,
        offset: Option<uuid::Uuid>,
    ) -> Result<(Vec<Record>, Option<uuid::Uuid>), VectorError>;
    /// Number of points matching `filter` (exact).
    async fn count(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError>;
    /// Deletes the points matching `filter`; durable on return.
    async fn delete(&self, collection: &str, filter: &Filter) -> Result<(), VectorError>;
    /// Whether the backend is usable (for `/readyz`).
    async fn ready(&self) -> Result<(), VectorError>;
}

/// Which of a tenant's two collections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Document chunks.
    Docs,
    /// Semantic-cache entries.
    Cache,
}

impl Kind {
    /// Payload keys lookups match exactly in this kind's collections (documents by id; cache
    /// entries by type, key, document-set version and question hash, see `crate::cache`).
    pub fn keyword_indexes(self) -> &'static [&'static str] {
        match self {
            Kind::Docs => &["document_id", OWNER_KEY],
            Kind::Cache => &[
                "cache_type",
                "cache_key",
                "docs_version",
                "question_hash",
                OWNER_KEY,
            ],
        }
    }

    /// Integer payload keys lookups filter on in this kind's collections (chunks by index;
    /// cache entries by creation time, for the TTL sweep).
    pub fn integer_indexes(self) -> &'static [&'static str] {
        match self {
            Kind::Docs => &["chunk_index"],
            Kind::Cache => &["created_at"],
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Kind::Docs => "docs",
            Kind::Cache => "cache",
        }
    }
}

/// Name of the collection holding `tenant`'s points of `kind` under `isolation`.
///
/// `Collection`: `tenant_<id>_docs` / `tenant_<id>_cache` (dashes become underscores, the
/// `tenant_{tenant_id}` naming of the Python pattern tenantry replaces). `Partition`: one shared `shared_<kind>_<dimension>` collection
/// per embedding dimension.
pub fn collection_name(tenant: &TenantId, isolation: Isolation, kind: Kind, dim: usize) -> String {
    match isolation {
        Isolation::Collection => {
            format!(
                "tenant_{}_{}",
                tenant.as_str().replace('-', "_"),
                kind.suffix()
            )
        }
        Isolation::Partition => format!("shared_{}_{}", kind.suffix(), dim),
    }
}

/// The vector store as seen by one tenant. Built only from a verified [`TenantId`]; every
/// operation is confined to that tenant's points.
#[derive(Clone)]
pub struct TenantVectors {
    backend: Arc<dyn VectorBackend>,
    tenant: TenantId,
    owner: Option<String>,
    isolation: Isolation,
    dimension: usize,
}

impl TenantVectors {
    /// Scopes `backend` to `tenant`.
    pub fn new(
        backend: Arc<dyn VectorBackend>,
        tenant: TenantId,
        isolation: Isolation,
        dimension: usize,
    ) -> Self {
        Self {
            backend,
            tenant,
            owner: None,
            isolation,
            dimension,
        }
    }

    /// Binds the handle to a data owner (`None`: the tenant id alone scopes the data, as for
    /// manifests without a UID): every point written carries it, every read, count and delete
    /// matches it.
    pub fn with_owner(mut self, owner: Option<String>) -> Self {
        self.owner = owner.filter(|o| !o.is_empty());
        self
    }

    /// The data owner this handle is bound to, if any.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The tenant this handle is scoped to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Vector dimension of the tenant's collections.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Collection used for `kind`.
    pub fn collection(&self, kind: Kind) -> String {
        collection_name(&self.tenant, self.isolation, kind, self.dimension)
    }

    fn scoped(&self, filter: Filter) -> Filter {
        let mut f = Filter::default().keyword(TENANT_KEY, self.tenant.as_str());
        if let Some(owner) = &self.owner {
            f = f.keyword(OWNER_KEY, owner.as_str());
        }
        // The tenant (and owner) conditions come first and cannot be removed by the caller's
        // conditions: all conditions are conjunctive.
        f.must.extend(
            filter
                .must
                .into_iter()
                .filter(|(k, _)| k != TENANT_KEY && k != OWNER_KEY),
        );
        f
    }

    /// Ensures both collections exist.
    pub async fn ensure(&self) -> Result<(), VectorError> {
        for kind in [Kind::Docs, Kind::Cache] {
            let spec = CollectionSpec {
                dimension: self.dimension,
                multi_tenant: self.isolation == Isolation::Partition,
                keyword_indexes: kind.keyword_indexes(),
                integer_indexes: kind.integer_indexes(),
            };
            self.backend
                .ensure_collection(&self.collection(kind), &spec)
                .await?;
        }
        Ok(())
    }

    /// Stores points, stamping the tenant into each payload (overriding any caller value).
    pub async fn upsert(&self, kind: Kind, points: Vec<Point>) -> Result<(), VectorError> {
        let points = self.stamped(points);
        self.backend.upsert(&self.collection(kind), points).await
    }

    /// Like [`TenantVectors::upsert`] for points that can be rebuilt (see
    /// [`VectorBackend::upsert_lazy`]).
    pub async fn upsert_lazy(&self, kind: Kind, points: Vec<Point>) -> Result<(), VectorError> {
        let points = self.stamped(points);
        self.backend
            .upsert_lazy(&self.collection(kind), points)
            .await
    }

    fn stamped(&self, mut points: Vec<Point>) -> Vec<Point> {
        for p in &mut points {
            p.payload.insert(
                TENANT_KEY.to_string(),
                Value::String(self.tenant.as_str().to_string()),
            );
            if let Some(owner) = &self.owner {
                p.payload
                    .insert(OWNER_KEY.to_string(), Value::String(owner.clone()));
                // Ids derived per owner: a deterministic id (a chunk's, the cache marker's)
                // never names another owner's retained point, so this write cannot replace it.
                p.id = uuid::Uuid::new_v5(&p.id, owner.as_bytes());
            }
        }
        points
    }

    /// Nearest neighbours among this tenant's points.
    pub async fn search(
        &self,
        kind: Kind,
        vector: Vec<f32>,
        filter: Filter,
        limit: usize,
    ) -> Result<Vec<ScoredPoint>, VectorError> {
        self.backend
            .search(&self.collection(kind), vector, &self.scoped(filter), limit)
            .await
    }

    /// A page of this tenant's points.
    pub async fn scroll(
        &self,
        kind: Kind,
        filter: Filter,
        limit: usize,
        offset: Option<uuid::Uuid>,
    ) -> Result<(Vec<Record>, Option<uuid::Uuid>), VectorError> {
        self.backend
            .scroll(&self.collection(kind), &self.scoped(filter), limit, offset)
            .await
    }

    /// Counts this tenant's points matching `filter`.
    pub async fn count(&self, kind: Kind, filter: Filter) -> Result<u64, VectorError> {
        self.backend
            .count(&self.collection(kind), &self.scoped(filter))
            .await
    }

    /// Deletes this tenant's points matching `filter`.
    pub async fn delete(&self, kind: Kind, filter: Filter) -> Result<(), VectorError> {
        self.backend
            .delete(&self.collection(kind), &self.scoped(filter))
            .await
    }

    /// Removes all of this tenant's vector data (both kinds). In `Collection` mode the
    /// collections are dropped; in `Partition` mode only this tenant's points are deleted.
    /// A handle bound to an owner deletes that owner's points only, and drops a collection only
    /// once no other owner's points of the tenant remain in it (retained data of a deleted
    /// Tenant of the same name is neither deleted nor stranded).
    pub async fn purge(&self) -> Result<(), VectorError> {
        for kind in [Kind::Docs, Kind::Cache] {
            let name = self.collection(kind);
            match (self.isolation, &self.owner) {
                (Isolation::Collection, None) => self.backend.drop_collection(&name).await?,
                (Isolation::Collection, Some(_)) => {
                    self.delete(kind, Filter::default()).await?;
                    let tenant = Filter::default().keyword(TENANT_KEY, self.tenant.as_str());
                    if self.backend.count(&name, &tenant).await? == 0 {
                        self.backend.drop_collection(&name).await?;
                    }
                }
                (Isolation::Partition, _) => self.delete(kind, Filter::default()).await?,
            }
        }
        Ok(())
    }
}

/// Refuses a vector of the wrong dimension or with a non-finite value, before anything is
/// written (shared by the backends so both refuse the same inputs).
pub(crate) fn check_vector(
    vector: &[f32],
    dimension: usize,
    collection: &str,
) -> Result<(), VectorError> {
    if vector.len() != dimension {
        return Err(VectorError::Invalid(format!(
            "vector dimension {} does not match collection {collection} (dimension {dimension})",
            vector.len()
        )));
    }
    if vector.iter().any(|v| !v.is_finite()) {
        return Err(VectorError::Invalid(format!(
            "vector for collection {collection} contains a non-finite value"
        )));
    }
    Ok(())
}

/// Refuses collection names that are not `[a-z0-9_]+` (so a name is one safe path component).
pub(crate) fn validate_collection_name(name: &str) -> Result<(), VectorError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(VectorError::Invalid(format!(
            "invalid collection name {name:?}: must match [a-z0-9_]+ (at most {MAX_NAME_LEN} bytes)"
        )))
    }
}

/// Payload helper: a string field.
pub fn payload_str<'a>(payload: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    payload.get(key).and_then(Value::as_str)
}

/// Payload helper: metadata object as a string map (non-string values rendered as JSON).
pub fn payload_metadata(payload: &Map<String, Value>) -> BTreeMap<String, Value> {
    payload
        .get("metadata")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}
