//! `POST /v1/documents`, `GET /v1/documents`, `GET|DELETE /v1/documents/{id}`.
//!
//! How a document is kept in the store (chunks and a text record), and read back with its
//! text: [`crate::documents`]. Re-ingesting a document under the same id replaces it in place.
//! A document id of another tenant is indistinguishable from a missing one (404).
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{ApiError, ApiJson, AppState, Caller};
use crate::auth::keys::unix_now;
use crate::chunk::chunk;
use crate::documents::{
    DocumentInfo, NewDocument, chunks_only, document_points, info, read_document,
};
use crate::domain::TenantId;
use crate::quota::{StorageChange, StorageDecision, StorageLimit, StorageLimits, tokens};
use crate::vector::{Filter, Kind};

/// Body of `POST /v1/documents`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestRequest {
    /// Document text.
    #[schemars(length(min = 1), pattern(r"\S"))]
    pub text: String,
    /// Optional title.
    #[serde(default)]
    #[schemars(length(max = 512))]
    pub title: Option<String>,
    /// Free-form metadata (a JSON object; null is none), returned with the document and its
    /// sources.
    #[serde(default, deserialize_with = "null_as_empty")]
    #[schemars(with = "Option<Map<String, Value>>")]
    pub metadata: Map<String, Value>,
    /// Optional id (UUID): ingesting again under the same id replaces the document.
    #[serde(default)]
    #[schemars(with = "Option<String>", extend("format" = "uuid"))]
    pub id: Option<Uuid>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(Option::<Map<String, Value>>::deserialize(d)?.unwrap_or_default())
}

/// Response of `POST /v1/documents`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct IngestResponse {
    /// Document id.
    #[schemars(with = "String", extend("format" = "uuid"))]
    pub id: Uuid,
    /// Tenant the document belongs to.
    pub tenant_id: String,
    /// Number of chunks stored.
    pub chunks: usize,
}

const MAX_TITLE: usize = 512;

/// A storage change applied ahead of the write it counts: reverted when dropped uncommitted
/// (the document was not stored: the embedding failed or the client went away before the
/// write was sent).
struct StorageHold {
    quota: crate::quota::Quota,
    tenant: TenantId,
    change: Option<StorageChange>,
    /// The write was sent: dropped now (client gone), the change stays.
    sent: bool,
}

impl StorageHold {
    /// The write is about to be sent.
    fn sent(mut self) -> Self {
        self.sent = true;
        self
    }

    /// The write succeeded: the change stays.
    fn commit(mut self) {
        self.change = None;
    }

    /// The write failed: the change is reverted.
    fn revert(mut self) {
        self.sent = false;
    }
}

impl Drop for StorageHold {
    fn drop(&mut self) {
        if self.sent {
            return;
        }
        let Some(change) = self.change.take() else {
            return;
        };
        let revert = StorageChange {
            documents: -change.documents,
            bytes: -change.bytes,
        };
        let (quota, tenant) = (self.quota.clone(), self.tenant.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = quota
                    .change_storage(&tenant, revert, &StorageLimits::default())
                    .await
                {
                    tracing::warn!(tenant_id = %tenant, error = %e, "could not revert a storage change");
                }
            });
        }
    }
}

/// Bytes of a stored document (as recorded with its chunks; 0 for documents stored before
/// sizes were recorded), if it exists.
async fn stored_bytes(caller: &Caller, id: Uuid) -> Result<Option<u64>, ApiError> {
    let (page, _) = caller
        .vectors
        .scroll(
            Kind::Docs,
            Filter::default()
                .keyword("document_id", id.to_string())
                .integer("chunk_index", 0),
            1,
            None,
        )
        .await?;
    Ok(page.first().map(|r| {
        r.payload
            .get("document_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }))
}

/// Stores a document: admission, storage limits, chunk, embed (metered), upsert (durable), then
/// answer with its id.
///
/// Metering: the tokens of the chunks embedded count against the tenant's token budget and
/// per-minute limits (the request counts as one), reserved before the embedding starts and
/// charged once it may have been done (also when the client goes away: the work is cancelled
/// at the next batch). Storage: a new document counts against `maxDocuments`, its text bytes
/// against `maxStoredBytes` (a replacement counts the difference); over a limit the answer is
/// 403 `storage_limit_exceeded` and nothing is embedded.
pub async fn ingest(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(mut body): ApiJson<IngestRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if body.text.trim().is_empty() {
        return Err(ApiError::Invalid("text must not be empty".to_string()));
    }
    if body
        .title
        .as_ref()
        .is_some_and(|t| t.chars().count() > MAX_TITLE)
    {
        return Err(ApiError::Invalid(format!(
            "title must be at most {MAX_TITLE} characters"
        )));
    }
    let services = state.rag_services();
    let tenant = caller.tenant.clone();
    // Nothing is chunked, counted or embedded for a tenant whose limits are used up.
    services.admit(&tenant, 1).await?;
    let id = body.id.unwrap_or_else(Uuid::new_v4);
    let document_bytes = body.text.len() as u64;
    let previous = stored_bytes(&caller, id).await?;
    let change = StorageChange {
        documents: i64::from(previous.is_none()),
        bytes: i64::try_from(document_bytes).unwrap_or(i64::MAX)
            - i64::try_from(previous.unwrap_or(0)).unwrap_or(0),
    };
    let limits = StorageLimits::from(&tenant.quota);
    let hold = match state
        .quota
        .change_storage(&tenant.id, change, &limits)
        .await
        .map_err(ApiError::QuotaUnavailable)?
    {
        StorageDecision::Applied(_) => StorageHold {
            quota: state.quota.clone(),
            tenant: tenant.id.clone(),
            change: Some(change),
            sent: false,
        },
        StorageDecision::Refused(limit, stored) => {
            tracing::info!(tenant_id = %tenant.id, %limit, "document refused: storage limit");
            return Err(ApiError::StorageLimited {
                limit,
                max: match limit {
                    StorageLimit::MaxDocuments => limits.max_documents,
                    StorageLimit::MaxStoredBytes => limits.max_stored_bytes,
                }
                .unwrap_or(u64::MAX),
                stored: match limit {
                    StorageLimit::MaxDocuments => stored.documents,
                    StorageLimit::MaxStoredBytes => stored.bytes,
                },
            });
        }
    };
    let cfg = state.config.chunking.clone();
    let model = state.embedder.model().to_string();
    let text = std::mem::take(&mut body.text);
    let (text, chunks, used) = tokio::task::spawn_blocking(move || {
        let chunks = chunk(&text, cfg.size, cfg.overlap);
        let used: u64 = chunks.iter().map(|c| tokens::count(&model, c)).sum();
        (text, chunks, used)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("chunking failed: {e}")))?;
    body.text = text;
    let reservation = services.reserve(&tenant, used).await?;
    // Dropped while embedding (client gone), the reservation is charged and the hold reverted.
    let vectors = match state.embedder.embed(chunks.clone()).await {
        Ok(v) => {
            reservation.settle(used).await;
            v
        }
        Err(e) => {
            if e.billable() {
                reservation.settle(used).await;
            } else {
                reservation.release().await;
            }
            return Err(e.into());
        }
    };
    if vectors.len() != chunks.len() {
        return Err(ApiError::Internal(format!(
            "embedder returned {} vectors for {} chunks",
            vectors.len(),
            chunks.len()
        )));
    }
    let count = chunks.len();
    let doc = NewDocument {
        text: &body.text,
        title: body.title.as_deref(),
        metadata: &body.metadata,
    };
    let points = document_points(
        &caller.principal.tenant,
        id,
        &doc,
        chunks,
        vectors,
        unix_now(),
    );
    caller.vectors.ensure().await?;
    // From here the document may be stored, whatever happens to this request: the change
    // stays if the request is dropped, and is reverted only when the write fails.
    let hold = hold.sent();
    if let Err(e) = caller.vectors.upsert(Kind::Docs, points).await {
        hold.revert();
        return Err(e.into());
    }
    hold.commit();
    // A replaced document may have had more chunks: remove the tail.
    let stale = caller
        .vectors
        .count(
            Kind::Docs,
            chunks_only(Filter::default().keyword("document_id", id.to_string())),
        )
        .await?;
    if stale > count as u64 {
        remove_tail(&caller, id, count).await?;
    }
    // New documents: cached answers made from the old set stop hitting.
    crate::cache::bump_docs_version(&caller.vectors).await?;
    tracing::info!(tenant_id = %caller.principal.tenant, document_id = %id, chunks = count, tokens = used, "document ingested");
    Ok((
        StatusCode::CREATED,
        ApiJson(IngestResponse {
            id,
            tenant_id: caller.principal.tenant.to_string(),
            chunks: count,
        }),
    ))
}

async fn remove_tail(caller: &Caller, id: Uuid, keep: usize) -> Result<(), ApiError> {
    let filter = Filter::default().keyword("document_id", id.to_string());
    let mut offset = None;
    let mut stale = Vec::new();
    loop {
        let (page, next) = caller
            .vectors
            .scroll(Kind::Docs, filter.clone(), 256, offset)
            .await?;
        stale.extend(page.iter().filter_map(|r| {
            let idx = r.payload.get("chunk_index")?.as_i64()?;
            (idx >= keep as i64).then_some(idx)
        }));
        match next {
            Some(n) => offset = Some(n),
            None => break,
        }
    }
    for idx in stale {
        caller
            .vectors
            .delete(Kind::Docs, filter.clone().integer("chunk_index", idx))
            .await?;
    }
    Ok(())
}

/// Query of `GET /v1/documents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size (1..=500, default 50).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Cursor from the previous page's `next_cursor`.
    #[serde(default)]
    pub cursor: Option<Uuid>,
}

/// Lists the caller's documents, a page at a time.
pub async fn list(
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::Invalid("limit must be between 1 and 500".into()));
    }
    let (page, next) = caller
        .vectors
        .scroll(
            Kind::Docs,
            Filter::default().integer("chunk_index", 0),
            limit,
            q.cursor,
        )
        .await?;
    let documents: Vec<DocumentInfo> = page.iter().filter_map(info).collect();
    Ok(ApiJson(json!({
        "tenant_id": caller.principal.tenant.to_string(),
        "documents": documents,
        "next_cursor": next,
    })))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    // An unparseable id is as unknown as a foreign one.
    id.parse()
        .map_err(|_| ApiError::NotFound("document not found".to_string()))
}

/// One document: its metadata and its text.
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    read_document(&caller.vectors, id, state.config.chunking.overlap)
        .await?
        .map(ApiJson)
        .ok_or_else(|| ApiError::NotFound("document not found".to_string()))
}

/// Deletes a document, its chunks and its text record (durable when 204 is returned); its count and bytes
/// are freed.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let filter = Filter::default().keyword("document_id", id.to_string());
    let n = caller.vectors.count(Kind::Docs, filter.clone()).await?;
    if n == 0 {
        return Err(ApiError::NotFound("document not found".to_string()));
    }
    let bytes = stored_bytes(&caller, id).await?.unwrap_or(0);
    caller.vectors.delete(Kind::Docs, filter).await?;
    let freed = StorageChange {
        documents: -1,
        bytes: -i64::try_from(bytes).unwrap_or(i64::MAX),
    };
    if let Err(e) = state
        .quota
        .change_storage(&caller.tenant.id, freed, &StorageLimits::default())
        .await
    {
        // The document is gone; its count stays until the store is reachable again.
        tracing::warn!(tenant_id = %caller.principal.tenant, error = %e, "could not count a deleted document");
    }
    crate::cache::bump_docs_version(&caller.vectors).await?;
    tracing::info!(tenant_id = %caller.principal.tenant, document_id = %id, "document deleted");
    Ok(StatusCode::NO_CONTENT)
}
