//! The production vector backend: [`QdrantBackend`], a Qdrant server reached over gRPC with
//! `qdrant-client` (tonic; TLS through rustls with the process's ring provider and the
//! platform's root certificates).
//!
//! It implements [`VectorBackend`] with the same semantics as the embedded
//! [`EdgeBackend`](super::edge::EdgeBackend): reads of a missing collection are empty, an upsert
//! to a missing collection is [`VectorError::Invalid`], scroll offsets are inclusive ids, and
//! every write is sent with `wait=true`, so `Ok` means Qdrant applied it (and wrote it to its
//! WAL). Vector dimensions are checked here before a batch is sent, so a batch with one bad
//! vector writes nothing. Tenant scoping happens above, in [`TenantVectors`](super::TenantVectors).
//!
//! Errors: connection failures, timeouts and refused credentials are
//! [`VectorError::Unavailable`] (HTTP 503); invalid requests are [`VectorError::Invalid`]. No
//! message ever contains the API key.
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use qdrant_client::qdrant::{
    self as pb, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, KeywordIndexParamsBuilder,
    OptimizersConfigDiffBuilder, PointStruct, QueryPointsBuilder, ScalarQuantizationBuilder,
    ScrollPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder, WalConfigDiffBuilder,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tonic::Code;

use super::{
    CollectionSpec, Filter, MAX_LIMIT, MatchValue, Point, Record, ScoredPoint, TENANT_KEY,
    VectorBackend, VectorError, check_vector, validate_collection_name,
};

/// Collection whose existence [`VectorBackend::ready`] asks about (never created).
const READY_PROBE: &str = "tenantry_ready_probe";

/// Vector quantization of new collections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Quantization {
    /// Full-precision vectors only.
    #[default]
    None,
    /// Scalar (int8) quantization kept in RAM: ~4x less memory for the index, originals
    /// (on disk with `onDisk`) used for rescoring.
    Scalar,
}

impl FromStr for Quantization {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "scalar" => Ok(Self::Scalar),
            other => Err(format!(
                "unknown quantization {other:?} (expected none or scalar)"
            )),
        }
    }
}

/// How to reach the Qdrant server and how to create collections on it.
#[derive(Clone, PartialEq)]
pub struct QdrantConfig {
    /// gRPC URL, e.g. `http://qdrant:6334` or `https://xyz.cloud.qdrant.io:6334` (TLS).
    pub url: String,
    /// API key sent with every request (never logged).
    pub api_key: Option<String>,
    /// Bound on one request.
    pub timeout: Duration,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Store vectors and payloads of new collections on disk (memory-mapped) instead of RAM.
    pub on_disk: bool,
    /// Quantization of new collections.
    pub quantization: Quantization,
    /// Copies of each shard of new collections (Qdrant distributed mode); `None`: the
    /// server's default (1 unless its config says otherwise).
    pub replication_factor: Option<u32>,
    /// Replicas that must apply a write before it is acknowledged; `None`: the server's
    /// default (1). At most `replication_factor`.
    pub write_consistency_factor: Option<u32>,
}

impl QdrantConfig {
    /// A configuration for `url` with default timeouts (5 s per request, 2 s to connect), no
    /// API key, vectors in RAM and no quantization.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            api_key: None,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            on_disk: false,
            quantization: Quantization::None,
            replication_factor: None,
            write_consistency_factor: None,
        }
    }

    /// Refuses a configuration that cannot work (before anything is contacted).
    fn validate(&self) -> Result<(), VectorError> {
        let scheme_ok = self.url.starts_with("http://") || self.url.starts_with("https://");
        if !scheme_ok {
            return Err(VectorError::Invalid(format!(
                "Qdrant URL {:?} must start with http:// or https:// (the gRPC port, usually 6334)",
                self.url
            )));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(VectorError::Invalid(
                "Qdrant timeouts must be positive".to_string(),
            ));
        }
        check_replication(self.replication_factor, self.write_consistency_factor)
            .map_err(VectorError::Invalid)
    }
}

/// Checks a replication factor and write consistency factor (`None`: the server's default, 1):
/// both positive, and no more replicas asked to acknowledge than there are.
pub fn check_replication(replication: Option<u32>, consistency: Option<u32>) -> Result<(), String> {
    if replication == Some(0) || consistency == Some(0) {
        return Err(
            "Qdrant replicationFactor and writeConsistencyFactor must be positive".to_string(),
        );
    }
    match consistency {
        Some(w) if w > replication.unwrap_or(1) => Err(format!(
            "Qdrant writeConsistencyFactor {w} exceeds replicationFactor {}",
            replication.unwrap_or(1)
        )),
        _ => Ok(()),
    }
}

impl std::fmt::Debug for QdrantConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("on_disk", &self.on_disk)
            .field("quantization", &self.quantization)
            .field("replication_factor", &self.replication_factor)
            .field("write_consistency_factor", &self.write_consistency_factor)
            .finish()
    }
}

/// A Qdrant server as a [`VectorBackend`]. Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct QdrantBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Qdrant,
    config: QdrantConfig,
    /// Known vector dimensions of collections (checked before sending a batch).
    dims: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for QdrantBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantBackend")
            .field("url", &self.inner.config.url)
            .finish_non_exhaustive()
    }
}

impl QdrantBackend {
    /// Builds a client for `config.url`. Does not contact the server (connections are made
    /// lazily and re-made after failures); use [`VectorBackend::ready`] to check it.
    pub fn connect(config: QdrantConfig) -> Result<Self, VectorError> {
        config.validate()?;
        let client = Qdrant::from_url(&config.url)
            .api_key(config.api_key.clone())
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            // Otherwise the client contacts the server at build time and prints to stdout,
            // which would corrupt the JSON logs.
            .skip_compatibility_check()
            .build()
            .map_err(|e| VectorError::Invalid(format!("Qdrant URL {:?}: {e}", config.url)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                config,
                dims: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.inner.config.url
    }

    /// Maps a client error of `what` to a [`VectorError`], without the API key.
    fn map_err(&self, what: &str, e: QdrantError) -> VectorError {
        let (invalid, msg) = match &e {
            QdrantError::ResponseError { status }
            | QdrantError::ResourceExhaustedError { status, .. } => {
                let code = status.code();
                let invalid = matches!(
                    code,
                    Code::InvalidArgument | Code::OutOfRange | Code::AlreadyExists
                );
                let msg = match code {
                    Code::Unauthenticated | Code::PermissionDenied => {
                        format!("the server refused the credentials ({code:?}): check the API key")
                    }
                    // Connection failures arrive as `Internal` "Failed to connect to ...".
                    _ => format!("{code:?}: {}", status.message()),
                };
                (invalid, msg)
            }
            QdrantError::ConversionError(m) => (true, m.clone()),
            QdrantError::InvalidUri(u) => (true, format!("invalid URL: {u}")),
            QdrantError::JsonToPayload(_) => (true, "payload is not a JSON object".to_string()),
            other => (false, other.to_string()),
        };
        let mut msg = format!("qdrant at {}: {what}: {msg}", self.inner.config.url);
        if let Some(key) = self
            .inner
            .config
            .api_key
            .as_deref()
            .filter(|k| !k.is_empty())
        {
            msg = msg.replace(key, "<redacted>");
        }
        if invalid {
            VectorError::Invalid(msg)
        } else {
            VectorError::Unavailable(msg)
        }
    }

    fn cached_dim(&self, name: &str) -> Option<usize> {
        self.inner.dims.lock().get(name).copied()
    }

    fn set_dim(&self, name: &str, dim: Option<usize>) {
        let mut dims = self.inner.dims.lock();
        match dim {
            Some(d) => dims.insert(name.to_string(), d),
            None => dims.remove(name),
        };
    }

    /// Collection info; `None` if the collection does not exist.
    async fn info(&self, name: &str) -> Result<Option<pb::CollectionInfo>, VectorError> {
        match self.inner.client.collection_info(name).await {
            Ok(r) => Ok(r.result),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.map_err(&format!("collection info {name}"), e)),
        }
    }

    /// The dimension of collection `name` (cached unless `refresh`); `None` if missing.
    async fn dimension(&self, name: &str, refresh: bool) -> Result<Option<usize>, VectorError> {
        if !refresh && let Some(d) = self.cached_dim(name) {
            return Ok(Some(d));
        }
        let dim = match self.info(name).await? {
            Some(info) => Some(dimension_of(name, &info)?),
            None => None,
        };
        self.set_dim(name, dim);
        Ok(dim)
    }

    /// Checks `vectors` against the collection's dimension, re-reading it once if a cached
    /// value disagrees (the collection may have been re-created). `Ok(false)`: missing.
    async fn check_vectors(&self, name: &str, vectors: &[&[f32]]) -> Result<bool, VectorError> {
        let Some(mut dim) = self.dimension(name, false).await? else {
            return Ok(false);
        };
        if vectors.iter().any(|v| v.len() != dim) {
            match self.dimension(name, true).await? {
                Some(d) => dim = d,
                None => return Ok(false),
            }
        }
        for v in vectors {
            check_vector(v, dim, name)?;
        }
        Ok(true)
    }
}

/// WAL segment size of a collection of one tenant, in MiB (Qdrant's default is 32).
const TENANT_WAL_MB: u64 = 4;
/// Segments a collection of one tenant starts with (Qdrant's default: one per CPU of the
/// server).
const TENANT_SEGMENTS: u64 = 2;

impl QdrantBackend {
    /// Creates collection `name` for `spec` with this backend's storage and replication
    /// settings and returns its info. Another replica creating it meanwhile is success.
    async fn create(
        &self,
        name: &str,
        spec: &CollectionSpec,
    ) -> Result<pb::CollectionInfo, VectorError> {
        let cfg = &self.inner.config;
        let mut create = CreateCollectionBuilder::new(name)
            .vectors_config(
                VectorParamsBuilder::new(spec.dimension as u64, Distance::Cosine)
                    .on_disk(cfg.on_disk),
            )
            .on_disk_payload(cfg.on_disk);
        if !spec.multi_tenant {
            // One tenant's collection is small: Qdrant's defaults (a 32 MiB WAL segment, mapped
            // twice, and a segment per CPU) cost a creation ~230 MiB of mappings and, with
            // hundreds of tenants created at once, make creations time out.
            create = create
                .wal_config(WalConfigDiffBuilder::default().wal_capacity_mb(TENANT_WAL_MB))
                .optimizers_config(
                    OptimizersConfigDiffBuilder::default().default_segment_number(TENANT_SEGMENTS),
                );
        }
        if cfg.quantization == Quantization::Scalar {
            create =
                create.quantization_config(ScalarQuantizationBuilder::default().always_ram(true));
        }
        if let Some(r) = cfg.replication_factor {
            create = create.replication_factor(r);
        }
        if let Some(w) = cfg.write_consistency_factor {
            create = create.write_consistency_factor(w);
        }
        let created = self.inner.client.create_collection(create).await;
        let refused = match created {
            Ok(_) => None,
            Err(e) => match self.map_err(&format!("create collection {name}"), e) {
                // "already exists" is Invalid: it may have been created meanwhile.
                err @ VectorError::Invalid(_) => Some(err),
                err => return Err(err),
            },
        };
        // In a cluster, a collection just created may not answer yet on every node ("0 of 0
        // read operations failed"): ask again for a moment before reporting it.
        let mut info = self.info(name).await;
        for _ in 0..20 {
            match &info {
                Err(VectorError::Unavailable(_)) if refused.is_none() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    info = self.info(name).await;
                }
                _ => break,
            }
        }
        match (info?, refused) {
            (Some(info), _) => Ok(info),
            (None, Some(err)) => Err(err),
            (None, None) => Err(VectorError::Unavailable(format!(
                "collection {name} was created but is not visible"
            ))),
        }
    }

    /// Adds the payload indexes `spec` asks for that `info` lacks: the tenant key (a tenant
    /// index in shared collections, a plain keyword index otherwise: every read filters on
    /// it), the keyword and the integer keys.
    async fn ensure_indexes(
        &self,
        name: &str,
        spec: &CollectionSpec,
        info: &pb::CollectionInfo,
    ) -> Result<(), VectorError> {
        let missing = |key: &str| !info.payload_schema.contains_key(key);
        if missing(TENANT_KEY) {
            let index =
                CreateFieldIndexCollectionBuilder::new(name, TENANT_KEY, FieldType::Keyword)
                    .field_index_params(
                        KeywordIndexParamsBuilder::default().is_tenant(spec.multi_tenant),
                    );
            self.create_index(name, TENANT_KEY, index).await?;
        }
        for key in spec.keyword_indexes.iter().filter(|k| missing(k)) {
            let index = CreateFieldIndexCollectionBuilder::new(name, *key, FieldType::Keyword);
            self.create_index(name, key, index).await?;
        }
        for key in spec.integer_indexes.iter().filter(|k| missing(k)) {
            let index = CreateFieldIndexCollectionBuilder::new(name, *key, FieldType::Integer);
            self.create_index(name, key, index).await?;
        }
        Ok(())
    }

    async fn create_index(
        &self,
        name: &str,
        key: &str,
        index: CreateFieldIndexCollectionBuilder,
    ) -> Result<(), VectorError> {
        self.inner
            .client
            .create_field_index(index.wait(true))
            .await
            .map(|_| ())
            .map_err(|e| self.map_err(&format!("create index {key} on {name}"), e))
    }
}

fn is_not_found(e: &QdrantError) -> bool {
    matches!(e, QdrantError::ResponseError { status } if status.code() == Code::NotFound)
}

/// The single unnamed dense vector's size of a collection.
fn dimension_of(name: &str, info: &pb::CollectionInfo) -> Result<usize, VectorError> {
    let size = info
        .config
        .as_ref()
        .and_then(|c| c.params.as_ref())
        .and_then(|p| p.vectors_config.as_ref())
        .and_then(|v| v.config.as_ref())
        .and_then(|c| match c {
            pb::vectors_config::Config::Params(p) => Some(p.size),
            pb::vectors_config::Config::ParamsMap(_) => None,
        });
    match size {
        Some(s) => usize::try_from(s)
            .map_err(|_| VectorError::Invalid(format!("collection {name}: dimension {s}"))),
        None => Err(VectorError::Invalid(format!(
            "collection {name} exists but has no single unnamed dense vector (not created by tenantry)"
        ))),
    }
}

/// Our filter as a Qdrant filter: every condition in `must`. `None` when empty.
fn to_qdrant_filter(filter: &Filter) -> Option<pb::Filter> {
    if filter.must.is_empty() {
        return None;
    }
    Some(pb::Filter::must(filter.must.iter().map(
        |(key, value)| match value {
            MatchValue::Keyword(s) => pb::Condition::matches(key.as_str(), s.clone()),
            MatchValue::Integer(i) => pb::Condition::matches(key.as_str(), *i),
            #[allow(clippy::cast_precision_loss)] // timestamps in ms are far below 2^53
            MatchValue::Below(i) => pb::Condition::range(
                key.as_str(),
                pb::Range {
                    lt: Some(*i as f64),
                    ..Default::default()
                },
            ),
            #[allow(clippy::cast_precision_loss)] // chunk indexes and timestamps
            MatchValue::AtLeast(i) => pb::Condition::range(
                key.as_str(),
                pb::Range {
                    gte: Some(*i as f64),
                    ..Default::default()
                },
            ),
        },
    )))
}

fn point_id(id: uuid::Uuid) -> pb::PointId {
    pb::PointId::from(id.to_string())
}

fn to_uuid(id: Option<pb::PointId>) -> Result<uuid::Uuid, VectorError> {
    match id.and_then(|p| p.point_id_options) {
        Some(pb::point_id::PointIdOptions::Uuid(s)) => uuid::Uuid::parse_str(&s)
            .map_err(|e| VectorError::Invalid(format!("point id {s:?} is not a UUID: {e}"))),
        Some(pb::point_id::PointIdOptions::Num(n)) => Err(VectorError::Invalid(format!(
            "point id {n} is an integer; this store only holds UUID ids"
        ))),
        None => Err(VectorError::Invalid("point without an id".to_string())),
    }
}

fn to_json(payload: HashMap<String, pb::Value>) -> Map<String, Value> {
    payload
        .into_iter()
        .map(|(k, v)| (k, Value::from(v)))
        .collect()
}

#[async_trait]
impl VectorBackend for QdrantBackend {
    async fn ensure_collection(
        &self,
        name: &str,
        spec: &CollectionSpec,
    ) -> Result<(), VectorError> {
        validate_collection_name(name)?;
        if spec.dimension == 0 {
            return Err(VectorError::Invalid(format!(
                "collection {name}: dimension must be positive"
            )));
        }
        let info = match self.info(name).await? {
            Some(info) => info,
            None => self.create(name, spec).await?,
        };
        let dim = dimension_of(name, &info)?;
        self.set_dim(name, Some(dim));
        if dim != spec.dimension {
            return Err(VectorError::Invalid(format!(
                "collection {name} exists with dimension {dim}, requested {}",
                spec.dimension
            )));
        }
        self.ensure_indexes(name, spec, &info).await
    }

    async fn drop_collection(&self, name: &str) -> Result<(), VectorError> {
        validate_collection_name(name)?;
        self.set_dim(name, None);
        match self.inner.client.delete_collection(name).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.map_err(&format!("delete collection {name}"), e)),
        }
    }

    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<(), VectorError> {
        validate_collection_name(collection)?;
        let missing = || VectorError::Invalid(format!("collection {collection} does not exist"));
        let vectors: Vec<&[f32]> = points.iter().map(|p| p.vector.as_slice()).collect();
        if !self.check_vectors(collection, &vectors).await? {
            return Err(missing());
        }
        if points.is_empty() {
            return Ok(());
        }
        let list: Vec<PointStruct> = points
            .into_iter()
            .map(|p| PointStruct::new(point_id(p.id), p.vector, Payload::from(p.payload)))
            .collect();
        match self
            .inner
            .client
            .upsert_points(UpsertPointsBuilder::new(collection, list).wait(true))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => {
                self.set_dim(collection, None);
                Err(missing())
            }
            Err(e) => Err(self.map_err(&format!("upsert into {collection}"), e)),
        }
    }

    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<ScoredPoint>, VectorError> {
        validate_collection_name(collection)?;
        if !self.check_vectors(collection, &[vector.as_slice()]).await? {
            return Ok(Vec::new());
        }
        let limit = limit.min(MAX_LIMIT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut request = QueryPointsBuilder::new(collection)
            .query(pb::Query::from(pb::VectorInput::from(vector)))
            .limit(limit as u64)
            .with_payload(true);
        if let Some(f) = to_qdrant_filter(filter) {
            request = request.filter(f);
        }
        let found = match self.inner.client.query(request).await {
            Ok(r) => r.result,
            Err(e) if is_not_found(&e) => {
                self.set_dim(collection, None);
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.map_err(&format!("search {collection}"), e)),
        };
        found
            .into_iter()
            .map(|p| {
                Ok(ScoredPoint {
                    id: to_uuid(p.id)?,
                    score: p.score,
                    payload: to_json(p.payload),
                })
            })
            .collect()
    }

    async fn scroll(
        &self,
        collection: &str,
        filter: &Filter,
        limit: usize,
        offset: Option<uuid::Uuid>,
    ) -> Result<(Vec<Record>, Option<uuid::Uuid>), VectorError> {
        validate_collection_name(collection)?;
        let limit = limit.min(MAX_LIMIT);
        if limit == 0 {
            // Qdrant refuses limit 0; answer as the embedded backend does.
            return match self.dimension(collection, true).await? {
                Some(_) => Ok((Vec::new(), offset)),
                None => Ok((Vec::new(), None)),
            };
        }
        // Qdrant's `offset` is inclusive and its next offset is the first id of the next page;
        // without `order_by`, points come in id order.
        let mut request = ScrollPointsBuilder::new(collection)
            .limit(u32::try_from(limit).unwrap_or(u32::MAX))
            .with_payload(true)
            .with_vectors(false);
        if let Some(f) = to_qdrant_filter(filter) {
            request = request.filter(f);
        }
        if let Some(o) = offset {
            request = request.offset(point_id(o));
        }
        let response = match self.inner.client.scroll(request).await {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Ok((Vec::new(), None)),
            Err(e) => return Err(self.map_err(&format!("scroll {collection}"), e)),
        };
        let records = response
            .result
            .into_iter()
            .map(|r| {
                Ok(Record {
                    id: to_uuid(r.id)?,
                    payload: to_json(r.payload),
                })
            })
            .collect::<Result<Vec<_>, VectorError>>()?;
        let next = response
            .next_page_offset
            .map(|id| to_uuid(Some(id)))
            .transpose()?;
        Ok((records, next))
    }

    async fn count(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError> {
        validate_collection_name(collection)?;
        let mut request = CountPointsBuilder::new(collection).exact(true);
        if let Some(f) = to_qdrant_filter(filter) {
            request = request.filter(f);
        }
        match self.inner.client.count(request).await {
            Ok(r) => Ok(r.result.map_or(0, |c| c.count)),
            Err(e) if is_not_found(&e) => Ok(0),
            Err(e) => Err(self.map_err(&format!("count {collection}"), e)),
        }
    }

    async fn delete(&self, collection: &str, filter: &Filter) -> Result<(), VectorError> {
        validate_collection_name(collection)?;
        // An empty filter matches every point, as in the embedded backend.
        let selector = to_qdrant_filter(filter).unwrap_or_default();
        let request = DeletePointsBuilder::new(collection)
            .points(selector)
            .wait(true);
        match self.inner.client.delete_points(request).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.map_err(&format!("delete from {collection}"), e)),
        }
    }

    /// Qdrant answers its health check without looking at the API key, so readiness also
    /// makes one cheap authenticated call: a refused key is reported as not ready. A token
    /// scoped to some collections (JWT RBAC) may not ask about the probe collection; the
    /// server then answers PermissionDenied, as it does for an expired or badly signed token,
    /// so the call is repeated as a listing of collections, which every accepted token may
    /// make (and which lists only the collections it may reach).
    async fn ready(&self) -> Result<(), VectorError> {
        let client = &self.inner.client;
        client
            .health_check()
            .await
            .map_err(|e| self.map_err("health check", e))?;
        match client.collection_exists(READY_PROBE).await {
            Ok(_) => Ok(()),
            Err(QdrantError::ResponseError { status })
                if status.code() == Code::PermissionDenied =>
            {
                client
                    .list_collections()
                    .await
                    .map(|_| ())
                    .map_err(|e| self.map_err("authenticated request", e))
            }
            Err(e) => Err(self.map_err("authenticated request", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn filters_become_must_match_conditions() {
        assert_eq!(to_qdrant_filter(&Filter::default()), None);
        let f = Filter::default()
            .keyword(TENANT_KEY, "acme")
            .integer("n", 3);
        let q = to_qdrant_filter(&f).unwrap();
        assert_eq!(
            q,
            pb::Filter::must([
                pb::Condition::matches(TENANT_KEY, "acme".to_string()),
                pb::Condition::matches("n", 3i64),
            ])
        );
    }

    #[test]
    fn config_validation_and_redaction() {
        assert!(matches!(
            QdrantBackend::connect(QdrantConfig::new("qdrant:6334")),
            Err(VectorError::Invalid(_))
        ));
        let mut cfg = QdrantConfig::new("http://127.0.0.1:6334");
        cfg.api_key = Some("s3cr3t-key".into());
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
        let b = QdrantBackend::connect(cfg).unwrap();
        assert!(!format!("{b:?}").contains("s3cr3t"));
        let status = tonic::Status::unauthenticated("bad api key s3cr3t-key");
        let err = b.map_err("count x", QdrantError::ResponseError { status });
        assert!(
            matches!(&err, VectorError::Unavailable(m) if !m.contains("s3cr3t")),
            "{err}"
        );
        let status = tonic::Status::internal("Failed to connect to http://x: s3cr3t-key");
        let err = b.map_err("count x", QdrantError::ResponseError { status });
        assert!(
            matches!(&err, VectorError::Unavailable(m) if !m.contains("s3cr3t")),
            "{err}"
        );
        let status = tonic::Status::invalid_argument("Wrong input: Vector dimension error");
        let err = b.map_err("upsert x", QdrantError::ResponseError { status });
        assert!(matches!(err, VectorError::Invalid(_)));
        assert_eq!("scalar".parse::<Quantization>(), Ok(Quantization::Scalar));
        assert!("int4".parse::<Quantization>().is_err());
    }

    /// Nothing listens on port 1: every operation fails fast with `Unavailable` (the outage
    /// path: HTTP 503), within the configured timeouts.
    #[tokio::test]
    async fn unreachable_server_is_unavailable_within_the_timeouts() {
        let mut cfg = QdrantConfig::new("http://127.0.0.1:1");
        cfg.api_key = Some("s3cr3t-key".into());
        cfg.timeout = Duration::from_millis(500);
        cfg.connect_timeout = Duration::from_millis(200);
        let b = QdrantBackend::connect(cfg).unwrap();
        let started = std::time::Instant::now();
        for err in [
            b.ready().await.unwrap_err(),
            b.count("docs", &Filter::default()).await.unwrap_err(),
            b.upsert("docs", vec![]).await.unwrap_err(),
            b.ensure_collection(
                "docs",
                &CollectionSpec {
                    dimension: 4,
                    multi_tenant: true,
                    keyword_indexes: &[],
                    integer_indexes: &[],
                },
            )
            .await
            .unwrap_err(),
        ] {
            assert!(
                matches!(&err, VectorError::Unavailable(m) if !m.contains("s3cr3t")),
                "{err}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
