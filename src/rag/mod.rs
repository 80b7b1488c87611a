//! One chat request from question to answer, whichever API asked it: admission check →
//! semantic-cache lookup → embed → admission check → retrieve → quota reserve → model call →
//! settle → cache store. A [`Turn`] carries the request through these steps (and what they
//! learn: the question's embedding, the passages, the rate-limit status, the time spent
//! upstream); `/v1/chat` and `/v1/chat/completions` (streamed or not) only translate their wire
//! formats to and from it.
//!
//! Charging: a tenant whose limits are used up is refused before any embedding or retrieval;
//! the quota is reserved once the prompt is known (the estimate covers the real messages,
//! retrieved passages included, with a margin) and settled to the upstream's `usage`, up to the
//! reservation. Once a call may have reached an upstream it is billable: a failed call is
//! charged by what it may have cost, a cancelled one (client gone, whole-request timeout) its
//! whole reservation, a cut stream its prompt and the text generated until then; only a call
//! that provably never reached an upstream (no connection, a 4xx refusal) is refunded. Each
//! retry or fallback needs a reservation of its own. A stream is stopped when its text
//! reaches its reservation. A cache hit is a request (rate limits apply) that consumes no
//! tokens. See [`settle`] for the details.
mod settle;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use crate::cache;
use crate::embed::{EmbedError, Embedder};
use crate::llm::{ChatModel, ChatRequest, ChatResponse, ChatStream, LlmError};
use crate::metrics::{Metrics, RequestRecord, RequestStatus};
use crate::quota::{
    LimitStatus, Limits, Quota, QuotaError, RateLimited, Refusal, Reservation, statuses,
};
use crate::tenants::TenantConfig;
use crate::vector::{Filter, Kind, TenantVectors, VectorError, payload_str};
use settle::Settlement;

/// Target of this module's log lines: the chat API's, which log filters and dashboards select.
pub const LOG_TARGET: &str = "tenantry::api::chat";

/// Why a turn could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The question could not be embedded.
    #[error("embedding failed")]
    Embedding(#[source] EmbedError),
    /// The vector store failed while retrieving passages.
    #[error(transparent)]
    Store(#[from] VectorError),
    /// The chat model failed or timed out (charged by what the calls may have cost).
    #[error(transparent)]
    Upstream(#[from] LlmError),
    /// A quota or rate limit would be exceeded.
    #[error("{} limit exceeded", .0.limit)]
    RateLimited(Box<RateLimited>),
    /// The quota store is unreachable and the fail mode is `failClosed`.
    #[error("quota service unavailable")]
    QuotaUnavailable(#[source] QuotaError),
    /// The embedder broke its contract (no vector for a text).
    #[error("{0}")]
    Internal(String),
}

impl From<EmbedError> for Error {
    fn from(e: EmbedError) -> Self {
        Self::Embedding(e)
    }
}

/// The models and stores a turn uses (cheap to clone: shared handles).
#[derive(Clone)]
pub struct Services {
    /// Embeds questions.
    pub embedder: Arc<dyn Embedder>,
    /// Answers them.
    pub llm: Arc<dyn ChatModel>,
    /// Meters them.
    pub quota: Quota,
    /// Counts them.
    pub metrics: Arc<Metrics>,
}

impl Services {
    /// Reserves `estimate` tokens and one request for `tenant`; a refusal is counted and
    /// logged. A reservation served unmetered (quota store down, `failOpen`) is counted too.
    pub async fn reserve(
        &self,
        tenant: &TenantConfig,
        estimate: u64,
    ) -> Result<Reservation, Error> {
        let tenant_id = tenant.id.as_str();
        let reservation = match self
            .quota
            .reserve(&tenant.id, Limits::from(&tenant.quota), estimate)
            .instrument(tracing::info_span!("quota", tenant_id, estimate))
            .await
        {
            Ok(r) => r,
            Err(Refusal::Limited(r)) => {
                let limit = r.limit.as_str();
                self.metrics.record_rate_limited(tenant_id, limit);
                self.metrics
                    .record_daily_remaining(tenant_id, &statuses(&r.limits, &r.used, r.now_ms));
                tracing::info!(target: LOG_TARGET, tenant_id, limit, estimate, "rate limited");
                return Err(Error::RateLimited(r));
            }
            Err(Refusal::Unavailable(e)) => return Err(Error::QuotaUnavailable(e)),
        };
        if !reservation.metered() {
            self.metrics.record_fail_open(tenant_id);
        }
        if let Some(limits) = reservation.statuses() {
            self.metrics.record_daily_remaining(tenant_id, &limits);
        }
        Ok(reservation)
    }

    /// Refuses now, before expensive work, when `tenant` could not be admitted a request of
    /// `floor` tokens (its limits are used up); a refusal is counted and logged.
    pub async fn admit(&self, tenant: &TenantConfig, floor: u64) -> Result<(), Error> {
        let tenant_id = tenant.id.as_str();
        match self
            .quota
            .admit(&tenant.id, Limits::from(&tenant.quota), floor)
            .await
        {
            Ok(()) => Ok(()),
            Err(Refusal::Limited(r)) => {
                let limit = r.limit.as_str();
                self.metrics.record_rate_limited(tenant_id, limit);
                self.metrics
                    .record_daily_remaining(tenant_id, &statuses(&r.limits, &r.used, r.now_ms));
                tracing::info!(target: LOG_TARGET, tenant_id, limit, floor, "rate limited before any work");
                Err(Error::RateLimited(r))
            }
            Err(Refusal::Unavailable(e)) => Err(Error::QuotaUnavailable(e)),
        }
    }

    /// The model an answer to `request` is reported under before the upstream names one: the
    /// requested model, or the offline responder's.
    pub fn asked_model(&self, request: &ChatRequest) -> String {
        if self.llm.offline() {
            crate::llm::extractive::MODEL.to_string()
        } else {
            request.model.clone()
        }
    }

    /// Embeds one text (a question).
    async fn embed_one(&self, text: &str) -> Result<Vec<f32>, Error> {
        self.embedder
            .embed(vec![text.to_string()])
            .instrument(tracing::info_span!("embed"))
            .await?
            .pop()
            .ok_or_else(|| Error::Internal("embedder returned no vector".to_string()))
    }
}

/// A passage an answer was built from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Source {
    /// Id of the document the passage is from.
    #[schemars(extend("format" = "uuid"))]
    pub document_id: String,
    /// Index of the chunk within the document.
    pub chunk: u64,
    /// Cosine similarity to the question.
    pub score: f32,
    /// The passage.
    pub text: String,
    /// Title of the document, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// An answer found in the semantic cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAnswer {
    /// The answer text.
    pub answer: String,
    /// Model that gave it.
    pub model: String,
    /// Passages it was built from.
    pub sources: Vec<Source>,
    /// Found by the question itself (an exact repeat), not by a similar question.
    pub exact: bool,
}

/// Where a fresh answer is stored in the semantic cache, once known.
struct CacheSlot {
    key: cache::Key,
}

/// One question on its way to an answer (see the module docs for the steps).
pub struct Turn {
    services: Services,
    tenant: Arc<TenantConfig>,
    vectors: TenantVectors,
    /// Whether the semantic cache may be used (the tenant's setting and the request's).
    use_cache: bool,
    question: Option<String>,
    /// The question's embedding, computed at most once.
    query: Option<Vec<f32>>,
    slot: Option<CacheSlot>,
    sources: Vec<Source>,
    limit_statuses: Option<Vec<LimitStatus>>,
    upstream: Duration,
}

impl Turn {
    /// A turn for `tenant`; `no_cache` when the request opts out of the semantic cache.
    pub fn new(
        services: Services,
        tenant: Arc<TenantConfig>,
        vectors: TenantVectors,
        no_cache: bool,
    ) -> Self {
        let use_cache = tenant.spec.semantic_cache.enabled && !no_cache;
        Self {
            services,
            tenant,
            vectors,
            use_cache,
            question: None,
            query: None,
            slot: None,
            sources: Vec::new(),
            limit_statuses: None,
            upstream: Duration::ZERO,
        }
    }

    /// Serves this turn without the semantic cache (nothing looked up, nothing stored).
    pub fn bypass_cache(&mut self) {
        self.use_cache = false;
    }

    /// The tenant served.
    pub fn tenant(&self) -> &TenantConfig {
        &self.tenant
    }

    /// Time spent waiting for a remote model (zero when none was called; the offline
    /// responder is tenantry's own work).
    pub fn upstream_time(&self) -> Duration {
        self.upstream
    }

    /// Status of every limit as of this turn's reservation (for response headers); None before
    /// one, or when served unmetered.
    pub fn limit_statuses(&self) -> Option<&[LimitStatus]> {
        self.limit_statuses.as_deref()
    }

    /// The passages retrieved so far, best first.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Takes the retrieved passages out of the turn (for the response).
    pub fn take_sources(&mut self) -> Vec<Source> {
        std::mem::take(&mut self.sources)
    }

    /// Sets the `question` this turn answers and looks it up in the tenant's semantic cache
    /// under `cache_key` (a hash of everything else that changes the answer): an exact repeat
    /// first, then — with the question embedded — the most similar cached question. A hit is
    /// reserved and settled here (no tokens). A lookup failure is a miss that stores nothing:
    /// the cache is an optimisation, never a reason to fail the request.
    pub async fn lookup(
        &mut self,
        question: &str,
        cache_key: String,
    ) -> Result<Option<CachedAnswer>, Error> {
        self.question = Some(question.to_string());
        if !self.use_cache {
            return Ok(None);
        }
        // A hit costs no tokens, but embedding the question is work: a tenant out of requests
        // (or over its token budget) is refused before it.
        self.services.admit(&self.tenant, 0).await?;
        let tenant = self.tenant.clone();
        let tenant_id = tenant.id.as_str();
        let started = Instant::now();
        let (key, entry) = match self.find(question, cache_key).await? {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(target: LOG_TARGET, tenant_id, error = %e, "semantic-cache lookup failed; treating as a miss");
                self.services.metrics.record_cache(tenant_id, false);
                return Ok(None);
            }
        };
        let Some((entry, exact)) = entry else {
            self.services.metrics.record_cache(tenant_id, false);
            self.slot = Some(CacheSlot { key });
            return Ok(None);
        };
        let reservation = self.services.reserve(&self.tenant, 0).await?;
        self.limit_statuses = reservation.statuses();
        reservation.settle(0).await;
        let metrics = &self.services.metrics;
        metrics.record_cache(tenant_id, true);
        metrics.record(&RequestRecord {
            tenant_id,
            model: &entry.model,
            status: RequestStatus::Success,
            seconds: started.elapsed().as_secs_f64(),
            prompt_tokens: 0,
            completion_tokens: 0,
        });
        tracing::info!(target: LOG_TARGET, tenant_id, model = %entry.model, exact, "semantic-cache hit");
        Ok(Some(CachedAnswer {
            answer: entry.answer,
            model: entry.model,
            sources: serde_json::from_value(entry.sources).unwrap_or_default(),
            exact,
        }))
    }

    /// The cache entry for `question`, if any, and whether it is the question's own (an exact
    /// repeat): `Err(..)` only for a failing embedder (the request fails), `Ok(Err(..))` for a
    /// failing store (a miss). An entry found by similarity is copied under this question's
    /// key (with its original age), so the next repeat is exact and needs no embedding.
    async fn find(
        &mut self,
        question: &str,
        cache_key: String,
    ) -> Result<Result<(cache::Key, Option<(cache::Entry, bool)>), VectorError>, Error> {
        let span = tracing::info_span!("cache_lookup", tenant_id = self.tenant.id.as_str());
        let ttl = self.tenant.cache_ttl;
        let vectors = &self.vectors;
        let exact = async {
            let key = cache::Key {
                cache_key,
                question_hash: cache::question_hash(question),
                docs_version: cache::docs_version(vectors).await?,
            };
            let entry = cache::lookup_exact(vectors, &key, ttl).await?;
            Ok::<_, VectorError>((key, entry))
        }
        .instrument(span.clone())
        .await;
        let key = match exact {
            Ok((key, None)) => key,
            Ok((key, Some(entry))) => return Ok(Ok((key, Some((entry, true))))),
            Err(e) => return Ok(Err(e)),
        };
        let query = self.query().await?.to_vec();
        let threshold = self.tenant.spec.semantic_cache.threshold;
        let similar = cache::lookup_similar(&self.vectors, &key, &query, threshold, ttl)
            .instrument(span)
            .await;
        let entry = match similar {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(Ok((key, None))),
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = cache::store(&self.vectors, &key, query, &entry).await {
            tracing::warn!(target: LOG_TARGET, tenant_id = self.tenant.id.as_str(), error = %e, "could not copy a semantic-cache entry for its new question");
        }
        Ok(Ok((key, Some((entry, false)))))
    }

    /// The question's embedding (computed on first use).
    async fn query(&mut self) -> Result<&[f32], Error> {
        if self.query.is_none() {
            let question = self.question.as_deref().unwrap_or_default();
            self.query = Some(self.services.embed_one(question).await?);
        }
        Ok(self.query.as_deref().unwrap_or_default())
    }

    /// Retrieves the tenant's `top_k` passages nearest to the question, best first (none when
    /// the turn has no question).
    pub async fn retrieve(&mut self, top_k: i32) -> Result<&[Source], Error> {
        if self.question.is_none() {
            return Ok(&self.sources);
        }
        // Retrieval (and embedding the question) only for a request the quota could admit.
        let floor = u64::from(!self.services.llm.offline());
        self.services.admit(&self.tenant, floor).await?;
        let query = self.query().await?.to_vec();
        let hits = self
            .vectors
            .search(
                Kind::Docs,
                query,
                crate::documents::chunks_only(Filter::default()),
                usize::try_from(top_k).unwrap_or(1),
            )
            .instrument(tracing::info_span!("retrieve", top_k))
            .await?;
        self.sources = hits
            .iter()
            .map(|h| Source {
                document_id: payload_str(&h.payload, "document_id")
                    .unwrap_or_default()
                    .to_string(),
                chunk: h
                    .payload
                    .get("chunk_index")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
                score: h.score,
                text: payload_str(&h.payload, "text")
                    .unwrap_or_default()
                    .to_string(),
                title: payload_str(&h.payload, "title").map(str::to_string),
            })
            .collect();
        Ok(&self.sources)
    }

    /// Reserves the quota for `request` and opens its settlement.
    async fn reserve(&mut self, request: &ChatRequest) -> Result<Settlement, Error> {
        let estimate = settle::estimate(self.services.llm.as_ref(), request);
        let reservation = self.services.reserve(&self.tenant, estimate.total).await?;
        self.limit_statuses = reservation.statuses();
        Ok(Settlement::open(
            self.services.clone(),
            self.tenant.clone(),
            request,
            reservation,
            estimate,
        ))
    }

    /// The time since `started`, when a remote model was waited for.
    fn waited_upstream(&mut self, started: Instant) {
        if !self.services.llm.offline() {
            self.upstream = started.elapsed();
        }
    }

    /// Where the answer goes in the semantic cache, with the question's embedding.
    fn cache_store(&mut self) -> Option<stream::CacheStore> {
        match (self.slot.take(), self.query.clone()) {
            (Some(CacheSlot { key }), Some(query)) => Some(stream::CacheStore {
                vectors: self.vectors.clone(),
                key,
                query,
                sources: self.sources.clone(),
            }),
            _ => None,
        }
    }

    /// Asks the chat model with the quota reserved: settles on success (and stores the answer
    /// in the semantic cache), by what the calls may have cost on failure.
    pub async fn answer(&mut self, request: ChatRequest) -> Result<ChatResponse, Error> {
        let settlement = self.reserve(&request).await?;
        let span = settlement.span().clone();
        // Dropping the settlement (client gone, whole-request timeout) charges the reservation.
        let result = self
            .services
            .llm
            .complete_metered(request, settlement.meter())
            .instrument(span)
            .await;
        self.waited_upstream(settlement.started());
        match result {
            Ok(resp) => {
                settlement.finish(&resp.model, Some(resp.usage)).await;
                let text_only = resp.tool_calls.is_none() && resp.refusal.is_none();
                if let Some(store) = self.cache_store().filter(|_| text_only) {
                    store.remember(&resp.content, &resp.model, resp.usage).await;
                }
                Ok(resp)
            }
            Err(e) => Err(settlement.failed(e).await),
        }
    }

    /// Streams the chat model's answer with the quota reserved. Returns once the upstream
    /// accepted the request; the stream settles when it ends (see the module docs) and stores
    /// the answer in the semantic cache. Its final [`crate::llm::Chunk::Done`] carries the
    /// usage charged.
    pub async fn stream(&mut self, request: ChatRequest) -> Result<ChatStream, Error> {
        let settlement = self.reserve(&request).await?;
        let span = settlement.span().clone();
        let opened = self
            .services
            .llm
            .stream_metered(request, settlement.meter())
            .instrument(span)
            .await;
        self.waited_upstream(settlement.started());
        match opened {
            Ok(chunks) => Ok(stream::settled(chunks, settlement, self.cache_store())),
            Err(e) => Err(settlement.failed(e).await),
        }
    }
}
