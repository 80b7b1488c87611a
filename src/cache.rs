//! Tenant-scoped semantic cache of `/v1/chat` and `/v1/chat/completions` answers.
//!
//! Entries are points in the tenant's [`Kind::Cache`] collection, reached only through
//! [`TenantVectors`] (so every read and write is confined to the tenant). An entry holds the
//! answer, its sources, model and usage, and is keyed by:
//! - `cache_key`: a hash of the parameters that change the answer (model, system prompt,
//!   `max_tokens`, `top_k`);
//! - `docs_version`: the tenant's document-set version, a random UUID rewritten on every
//!   ingest or delete (stored in one marker point of the same collection), so an answer made
//!   from another set of documents never hits.
//!
//! Lookup: an exact repeat (same question hash) first, before the question is even embedded,
//! then a vector search; a hit needs a cosine similarity at or above the tenant's threshold and
//! an age below its TTL.
use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::vector::{Filter, Kind, Point, TenantVectors, VectorError, payload_str};

/// Payload key telling entries (`entry`) from the version marker (`docs_version`).
const TYPE_KEY: &str = "cache_type";
const ENTRY: &str = "entry";
const MARKER: &str = "docs_version";
/// `docs_version` of a tenant that never ingested or deleted anything.
const INITIAL_VERSION: &str = "0";
/// Candidates examined per lookup step (the first fresh one wins).
const CANDIDATES: usize = 8;

/// Hex SHA-256 of `parts`, each length-prefixed (no ambiguity between fields).
fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Hash of `parts` (everything that changes an answer), for callers with their own parameters
/// (e.g. `/v1/chat/completions`, whose first part names the endpoint).
pub fn cache_key_of(parts: &[&str]) -> String {
    hash(parts)
}

/// Hash of the parameters that change a `/v1/chat` answer.
pub fn cache_key(model: &str, system_prompt: &str, max_tokens: u32, top_k: i32) -> String {
    hash(&[
        model,
        system_prompt,
        &max_tokens.to_string(),
        &top_k.to_string(),
    ])
}

/// Hash of a question (trimmed; exact repeats only).
pub fn question_hash(question: &str) -> String {
    hash(&[question.trim()])
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whether an entry created at `created_ms` is still valid at `now_ms` under `ttl`.
pub fn fresh(created_ms: i64, now_ms: i64, ttl: Duration) -> bool {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(created_ms) < ttl_ms
}

fn marker_id(vectors: &TenantVectors) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("tenantry/cache-docs-version/{}", vectors.tenant()).as_bytes(),
    )
}

/// A unit vector (the marker is never searched for: searches filter on `cache_key`).
fn marker_vector(dimension: usize) -> Vec<f32> {
    let mut v = vec![0.0; dimension];
    if let Some(first) = v.first_mut() {
        *first = 1.0;
    }
    v
}

/// The tenant's current document-set version.
pub async fn docs_version(vectors: &TenantVectors) -> Result<String, VectorError> {
    let (records, _) = vectors
        .scroll(
            Kind::Cache,
            Filter::default().keyword(TYPE_KEY, MARKER),
            1,
            None,
        )
        .await?;
    Ok(records
        .first()
        .and_then(|r| payload_str(&r.payload, MARKER))
        .unwrap_or(INITIAL_VERSION)
        .to_string())
}

/// Gives the tenant a new document-set version (after an ingest or a delete): every earlier
/// entry stops hitting, and the entries made for the previous version are deleted (they never
/// can hit again; failing to delete them is logged, not returned).
pub async fn bump_docs_version(vectors: &TenantVectors) -> Result<(), VectorError> {
    vectors.ensure().await?;
    let previous = docs_version(vectors).await?;
    let mut payload = Map::new();
    payload.insert(TYPE_KEY.to_string(), json!(MARKER));
    payload.insert(MARKER.to_string(), json!(Uuid::new_v4().to_string()));
    // Durable: a marker lost in a crash would bring back answers made for older documents.
    vectors
        .upsert(
            Kind::Cache,
            vec![Point {
                id: marker_id(vectors),
                vector: marker_vector(vectors.dimension()),
                payload,
            }],
        )
        .await?;
    let stale = Filter::default()
        .keyword(TYPE_KEY, ENTRY)
        .keyword(MARKER, previous);
    if let Err(e) = vectors.delete(Kind::Cache, stale).await {
        tracing::warn!(tenant_id = %vectors.tenant(), error = %e, "could not delete semantic-cache entries of older documents");
    }
    Ok(())
}

/// Deletes the tenant's entries older than `ttl` (they never hit; this bounds the cache's size).
pub async fn purge_expired(vectors: &TenantVectors, ttl: Duration) -> Result<(), VectorError> {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expired = Filter::default()
        .keyword(TYPE_KEY, ENTRY)
        .below("created_at", now_ms().saturating_sub(ttl_ms));
    vectors.delete(Kind::Cache, expired).await
}

/// What a lookup is for.
#[derive(Debug, Clone)]
pub struct Key {
    /// [`cache_key`] of the request.
    pub cache_key: String,
    /// [`question_hash`] of the question.
    pub question_hash: String,
    /// The tenant's [`docs_version`].
    pub docs_version: String,
}

impl Key {
    fn filter(&self) -> Filter {
        Filter::default()
            .keyword(TYPE_KEY, ENTRY)
            .keyword("cache_key", self.cache_key.clone())
            .keyword(MARKER, self.docs_version.clone())
    }
}

/// A cached answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The answer.
    pub answer: String,
    /// Sources (JSON array, as answered).
    pub sources: Value,
    /// Model that answered.
    pub model: String,
    /// Usage of the original call (JSON).
    pub usage: Value,
    /// When the answer was first stored (ms since the Unix epoch); `None` for a new answer.
    /// A copy of an entry keeps it, so the copy expires with the original.
    pub created_ms: Option<i64>,
}

fn entry_of(payload: &Map<String, Value>, now: i64, ttl: Duration) -> Option<Entry> {
    let created = payload.get("created_at").and_then(Value::as_i64)?;
    if !fresh(created, now, ttl) {
        return None;
    }
    Some(Entry {
        answer: payload_str(payload, "answer")?.to_string(),
        sources: payload.get("sources").cloned().unwrap_or(Value::Null),
        model: payload_str(payload, "model")?.to_string(),
        usage: payload.get("usage").cloned().unwrap_or(Value::Null),
        created_ms: Some(created),
    })
}

/// An exact repeat of the question (same hash) under `key`, younger than `ttl`. Needs no
/// embedding, so it runs before the question is embedded.
pub async fn lookup_exact(
    vectors: &TenantVectors,
    key: &Key,
    ttl: Duration,
) -> Result<Option<Entry>, VectorError> {
    let now = now_ms();
    let (exact, _) = vectors
        .scroll(
            Kind::Cache,
            key.filter()
                .keyword("question_hash", key.question_hash.clone()),
            CANDIDATES,
            None,
        )
        .await?;
    Ok(exact.iter().find_map(|r| entry_of(&r.payload, now, ttl)))
}

/// The nearest cached question under `key` at or above `threshold` (cosine), younger than
/// `ttl`.
pub async fn lookup_similar(
    vectors: &TenantVectors,
    key: &Key,
    query: &[f32],
    threshold: f64,
    ttl: Duration,
) -> Result<Option<Entry>, VectorError> {
    let now = now_ms();
    let near = vectors
        .search(Kind::Cache, query.to_vec(), key.filter(), CANDIDATES)
        .await?;
    Ok(near
        .iter()
        .filter(|p| f64::from(p.score) >= threshold)
        .find_map(|p| entry_of(&p.payload, now, ttl)))
}

/// Stores an answer under `key` with the question's embedding. Storing an entry found by
/// similarity under the new question's key makes the next repeat of that question an exact
/// hit, answered without embedding it.
pub async fn store(
    vectors: &TenantVectors,
    key: &Key,
    query: Vec<f32>,
    entry: &Entry,
) -> Result<(), VectorError> {
    vectors.ensure().await?;
    let mut payload = Map::new();
    payload.insert(TYPE_KEY.to_string(), json!(ENTRY));
    payload.insert("answer".to_string(), json!(entry.answer));
    payload.insert("sources".to_string(), entry.sources.clone());
    payload.insert("model".to_string(), json!(entry.model));
    payload.insert("usage".to_string(), entry.usage.clone());
    payload.insert(
        "created_at".to_string(),
        json!(entry.created_ms.unwrap_or_else(now_ms)),
    );
    payload.insert("question_hash".to_string(), json!(key.question_hash));
    payload.insert("cache_key".to_string(), json!(key.cache_key));
    payload.insert(MARKER.to_string(), json!(key.docs_version));
    // An entry can be rebuilt: it need not wait for a disk flush.
    vectors
        .upsert_lazy(
            Kind::Cache,
            vec![Point {
                id: Uuid::new_v4(),
                vector: query,
                payload,
            }],
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant's handle on an embedded store in a temporary folder (dimension 4).
    fn store_for(
        isolation: crate::domain::Isolation,
    ) -> (tempfile::TempDir, TenantVectors, TenantVectors) {
        let dir = tempfile::tempdir().expect("tmp");
        let backend: std::sync::Arc<dyn crate::vector::VectorBackend> =
            std::sync::Arc::new(crate::vector::edge::EdgeBackend::open(dir.path()).expect("open"));
        let handle = |t: &str| {
            TenantVectors::new(
                backend.clone(),
                crate::domain::TenantId::parse(t).expect("id"),
                isolation,
                4,
            )
        };
        (dir, handle("acme"), handle("globex"))
    }

    fn entry() -> Entry {
        Entry {
            answer: "a".into(),
            sources: json!([]),
            model: "m".into(),
            usage: json!({}),
            created_ms: None,
        }
    }

    async fn entries(v: &TenantVectors) -> u64 {
        v.count(Kind::Cache, Filter::default().keyword(TYPE_KEY, ENTRY))
            .await
            .expect("count")
    }

    async fn key(v: &TenantVectors, q: &str) -> Key {
        Key {
            cache_key: cache_key("m", "sys", 16, 4),
            question_hash: question_hash(q),
            docs_version: docs_version(v).await.expect("version"),
        }
    }

    /// Expired entries and entries of an older document set are deleted, only the tenant's own.
    #[tokio::test]
    async fn expired_and_outdated_entries_are_deleted() {
        for isolation in [
            crate::domain::Isolation::Collection,
            crate::domain::Isolation::Partition,
        ] {
            let (_dir, acme, globex) = store_for(isolation);
            for v in [&acme, &globex] {
                let k = key(v, "q1").await;
                store(v, &k, vec![1.0, 0.0, 0.0, 0.0], &entry())
                    .await
                    .expect("store");
            }
            purge_expired(&acme, Duration::from_secs(3600))
                .await
                .expect("purge");
            assert_eq!(entries(&acme).await, 1, "a fresh entry stays");
            purge_expired(&acme, Duration::ZERO).await.expect("purge");
            assert_eq!(entries(&acme).await, 0, "an expired entry goes");
            assert_eq!(entries(&globex).await, 1, "another tenant's entry stays");

            let k = key(&acme, "q2").await;
            store(&acme, &k, vec![0.0, 1.0, 0.0, 0.0], &entry())
                .await
                .expect("store");
            assert_eq!(entries(&acme).await, 1);
            bump_docs_version(&acme).await.expect("bump");
            assert_eq!(entries(&acme).await, 0, "entries of the older documents go");
            assert_ne!(docs_version(&acme).await.expect("version"), k.docs_version);
            assert_eq!(entries(&globex).await, 1);
        }
    }

    #[test]
    fn cache_key_changes_with_every_parameter() {
        let base = cache_key("m", "sys", 256, 4);
        assert_eq!(base, cache_key("m", "sys", 256, 4));
        assert_ne!(base, cache_key("m2", "sys", 256, 4));
        assert_ne!(base, cache_key("m", "sys2", 256, 4));
        assert_ne!(base, cache_key("m", "sys", 257, 4));
        assert_ne!(base, cache_key("m", "sys", 256, 5));
        // Length prefixes: no ambiguity from concatenation.
        assert_ne!(cache_key("ab", "c", 1, 1), cache_key("a", "bc", 1, 1));
    }

    #[test]
    fn question_hash_ignores_surrounding_whitespace() {
        assert_eq!(question_hash(" hi "), question_hash("hi"));
        assert_ne!(question_hash("hi"), question_hash("hello"));
    }

    #[test]
    fn freshness_respects_the_ttl() {
        let ttl = Duration::from_secs(2);
        assert!(fresh(1_000, 2_999, ttl));
        assert!(!fresh(1_000, 3_000, ttl));
        assert!(!fresh(1_000, 10_000, ttl));
    }

    #[test]
    fn stale_or_incomplete_payloads_are_not_entries() {
        let ttl = Duration::from_secs(60);
        let mut p = Map::new();
        p.insert("answer".into(), json!("a"));
        p.insert("model".into(), json!("m"));
        p.insert("created_at".into(), json!(1_000));
        assert!(entry_of(&p, 2_000, ttl).is_some());
        assert!(entry_of(&p, 1_000 + 60_000, ttl).is_none());
        p.remove("answer");
        assert!(entry_of(&p, 2_000, ttl).is_none());
    }
}
