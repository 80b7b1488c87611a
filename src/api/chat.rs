//! `POST /v1/chat`: retrieve the caller's passages, ask the chat model, answer with sources.
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use serde::{Deserialize, Serialize};
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

use super::{ApiError, ApiJson, AppState, Caller};
use crate::llm::{ChatRequest, Message, Usage};
use crate::quota::{Limits, Refusal, tokens};
use crate::vector::{Filter, Kind, payload_str};

/// Body of `POST /v1/chat`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatBody {
    /// The question.
    pub question: String,
    /// Chat model; the tenant's default when absent. Must be in the tenant's allow-list.
    #[serde(default)]
    pub model: Option<String>,
    /// Passages to retrieve (1..=50); the tenant's `retrieval.topK` when absent.
    #[serde(default, deserialize_with = "super::opt_int")]
    pub top_k: Option<i32>,
}

/// A passage the answer was built from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// Document id.
    pub document_id: String,
    /// Index of the chunk within the document.
    pub chunk: u64,
    /// Cosine similarity to the question.
    pub score: f32,
    /// The passage.
    pub text: String,
    /// Document title, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// Response of `POST /v1/chat`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatAnswer {
    /// The answer.
    pub answer: String,
    /// Tenant that was served.
    pub tenant_id: String,
    /// Model that answered (`extractive` for the offline responder).
    pub model: String,
    /// Passages used, best first.
    pub sources: Vec<Source>,
    /// Whether the answer came from the semantic cache.
    pub cached: bool,
    /// Tokens used.
    pub usage: Usage,
}

/// The system prompt (the seed's, plus what to do without an answer).
pub fn system_prompt(tenant: &str) -> String {
    format!(
        "Answer using only the provided context. Tenant: {tenant}. If the context does not \
         contain the answer, say that you do not know."
    )
}

/// Response header: milliseconds the request spent in tenantry, excluding the upstream model
/// call.
pub const OVERHEAD_HEADER: &str = "x-tenantry-overhead-ms";

/// What [`chat`] tells [`overhead`] through the response's extensions: the tenant served and
/// how long the upstream model call took.
#[derive(Debug, Clone)]
pub struct UpstreamTime {
    /// Tenant served.
    pub tenant_id: String,
    /// Time spent waiting for the upstream model (zero when it was not called).
    pub upstream: Duration,
}

/// Route middleware of `POST /v1/chat`: measures the gateway overhead (the whole request minus
/// the upstream call), answers it in `X-Tenantry-Overhead-Ms` and records
/// `llm_gateway_overhead_seconds` once the tenant is known.
pub async fn overhead(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let mut resp = next.run(req).await;
    let timing = resp.extensions_mut().remove::<UpstreamTime>();
    let spent = start
        .elapsed()
        .saturating_sub(timing.as_ref().map_or(Duration::ZERO, |t| t.upstream));
    if let Some(t) = &timing {
        state
            .metrics
            .record_overhead(&t.tenant_id, spent.as_secs_f64());
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", spent.as_secs_f64() * 1000.0)) {
        resp.headers_mut().insert(OVERHEAD_HEADER, v);
    }
    resp
}

/// Whether the request opts out of the semantic cache (`Cache-Control: no-cache`).
pub(super) fn no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
}

/// Answers a question from the caller's documents. The quota is reserved once the prompt is
/// known (the estimate covers the real messages, retrieved passages included) and settled to
/// the upstream's `usage`; a failed, timed-out or cancelled call consumes nothing.
pub async fn chat(
    State(state): State<AppState>,
    caller: Caller,
    req_headers: HeaderMap,
    ApiJson(body): ApiJson<ChatBody>,
) -> Response {
    let mut upstream = Duration::ZERO;
    let tenant_id = caller.tenant.id.as_str().to_string();
    let mut resp = answer(&state, &caller, body, no_cache(&req_headers), &mut upstream)
        .await
        .into_response();
    resp.extensions_mut().insert(UpstreamTime {
        tenant_id,
        upstream,
    });
    resp
}

/// Embeds one text (a question).
pub(super) async fn embed_one(state: &AppState, text: &str) -> Result<Vec<f32>, ApiError> {
    state
        .embedder
        .embed(vec![text.to_string()])
        .instrument(tracing::info_span!("embed"))
        .await?
        .pop()
        .ok_or_else(|| ApiError::Internal("embedder returned no vector".to_string()))
}

/// The caller's `top_k` passages nearest to `query`, best first.
pub(super) async fn retrieve(
    caller: &Caller,
    query: &[f32],
    top_k: i32,
) -> Result<Vec<Source>, ApiError> {
    let hits = caller
        .vectors
        .search(
            Kind::Docs,
            query.to_vec(),
            Filter::default(),
            usize::try_from(top_k).unwrap_or(1),
        )
        .instrument(tracing::info_span!("retrieve", top_k))
        .await?;
    Ok(hits
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
        .collect())
}

/// Tokens to reserve for `request`: its prompt plus the most it may generate. The offline
/// responder calls no model: it needs a request slot but no tokens.
pub(super) fn estimate(state: &AppState, request: &ChatRequest) -> u64 {
    if state.llm.offline() {
        0
    } else {
        tokens::prompt_tokens(&request.model, &request.messages) + u64::from(request.max_tokens)
    }
}

/// The span of one upstream call (GenAI semantic conventions; response fields recorded by
/// [`record_llm`]).
pub(super) fn llm_span(state: &AppState, request: &ChatRequest, tenant_id: &str) -> Span {
    tracing::info_span!(
        "llm",
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.system = if state.llm.offline() { "tenantry.extractive" } else { "openai" },
        gen_ai.request.model = %request.model,
        gen_ai.request.max_tokens = i64::from(request.max_tokens),
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        error.type = Empty,
        tenant_id,
    )
}

/// Records the outcome of an upstream call on its span.
pub(super) fn record_llm(span: &Span, outcome: Result<(&str, Usage), &crate::llm::LlmError>) {
    match outcome {
        Ok((model, usage)) => {
            span.record("gen_ai.response.model", model);
            // As i64: OpenTelemetry has no unsigned integers (u64 would become a string).
            let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            span.record("gen_ai.usage.input_tokens", int(usage.prompt_tokens));
            span.record("gen_ai.usage.output_tokens", int(usage.completion_tokens));
        }
        Err(e) => {
            span.record("otel.status_code", "ERROR");
            span.record(
                "error.type",
                match e {
                    crate::llm::LlmError::Timeout => "timeout",
                    crate::llm::LlmError::Upstream(_) => "upstream_error",
                },
            );
        }
    }
}

/// Tokens charged for a finished call: its usage, or the estimate when an upstream reports
/// none (never less than what it may have used).
pub(super) fn charge(state: &AppState, usage: Usage, estimate: u64) -> u64 {
    let used = usage.prompt_tokens + usage.completion_tokens;
    if used == 0 && !state.llm.offline() {
        estimate
    } else {
        used
    }
}

/// A failed upstream call: nothing is charged (the reservation is released), the failure is
/// counted and logged, and the error to answer is returned.
pub(super) async fn failed(
    state: &AppState,
    tenant_id: &str,
    model: &str,
    elapsed_seconds: f64,
    reservation: crate::quota::Reservation,
    e: crate::llm::LlmError,
) -> ApiError {
    reservation.release().await;
    state
        .metrics
        .record(tenant_id, model, false, elapsed_seconds, 0, 0);
    tracing::warn!(tenant_id, model = %model, error = %e, "LLM request failed");
    ApiError::Upstream(e)
}

/// Calls the chat model with a reservation held: settles it to the usage on success, releases
/// it on failure, and records metrics and the log line. `upstream` receives the time spent
/// waiting for a remote model.
pub(super) async fn complete(
    state: &AppState,
    tenant_id: &str,
    request: ChatRequest,
    reservation: crate::quota::Reservation,
    upstream: &mut Duration,
) -> Result<crate::llm::ChatResponse, ApiError> {
    let started = Instant::now();
    let model = request.model.clone();
    let reserved = estimate(state, &request);
    let span = llm_span(state, &request, tenant_id);
    // Dropping `reservation` (client gone, whole-request timeout) releases it.
    let result = state.llm.complete(request).instrument(span.clone()).await;
    // The offline responder is tenantry's own work: it counts as overhead.
    if !state.llm.offline() {
        *upstream = started.elapsed();
    }
    let elapsed = started.elapsed().as_secs_f64();
    record_llm(&span, result.as_ref().map(|r| (r.model.as_str(), r.usage)));
    match result {
        Ok(resp) => {
            reservation
                .settle(charge(state, resp.usage, reserved))
                .await;
            state.metrics.record(
                tenant_id,
                &resp.model,
                true,
                elapsed,
                resp.usage.prompt_tokens,
                resp.usage.completion_tokens,
            );
            tracing::info!(
                tenant_id,
                model = %resp.model,
                latency_ms = elapsed * 1000.0,
                tokens = resp.usage.prompt_tokens + resp.usage.completion_tokens,
                "LLM request completed"
            );
            Ok(resp)
        }
        Err(e) => Err(failed(state, tenant_id, &model, elapsed, reservation, e).await),
    }
}

async fn answer(
    state: &AppState,
    caller: &Caller,
    body: ChatBody,
    no_cache: bool,
    upstream: &mut Duration,
) -> Result<(HeaderMap, ApiJson<ChatAnswer>), ApiError> {
    let question = body.question.trim();
    if question.is_empty() {
        return Err(ApiError::Invalid("question must not be empty".to_string()));
    }
    let max = state.config.limits.max_question_chars;
    if question.chars().count() > max {
        return Err(ApiError::Invalid(format!(
            "question must be at most {max} characters"
        )));
    }
    let tenant = &caller.tenant;
    let model = body
        .model
        .clone()
        .unwrap_or_else(|| tenant.chat_model.clone());
    if !tenant.model_allowed(&model) {
        return Err(ApiError::ModelNotAllowed(model));
    }
    let top_k = body.top_k.unwrap_or(tenant.spec.retrieval.top_k);
    if !(1..=50).contains(&top_k) {
        return Err(ApiError::Invalid(
            "top_k must be between 1 and 50".to_string(),
        ));
    }

    let tenant_id = tenant.id.as_str();
    // Semantic cache: scoped to the tenant, its answer parameters and its document set. The
    // question is embedded only when an exact repeat is not found.
    let key = crate::cache::cache_key(
        &model,
        &system_prompt(tenant_id),
        state.config.llm.max_tokens,
        top_k,
    );
    let mut embedded = None;
    let cache_key = match lookup(state, caller, no_cache, key, question, &mut embedded).await? {
        Lookup::Hit { entry, headers } => {
            let (entry, headers) = (*entry, *headers);
            let sources: Vec<Source> = serde_json::from_value(entry.sources).unwrap_or_default();
            return Ok((
                headers,
                ApiJson(ChatAnswer {
                    answer: entry.answer,
                    tenant_id: tenant_id.to_string(),
                    model: entry.model,
                    sources,
                    cached: true,
                    usage: Usage::default(),
                }),
            ));
        }
        Lookup::Miss(key) => key,
    };
    let query = match embedded {
        Some(q) => q,
        None => embed_one(state, question).await?,
    };

    let sources = retrieve(caller, &query, top_k).await?;
    let passages: Vec<String> = sources.iter().map(|s| s.text.clone()).collect();
    let context = passages.join("\n\n---\n\n");
    let request = ChatRequest {
        model: model.clone(),
        messages: vec![
            Message::new("system", system_prompt(tenant.id.as_str())),
            Message::new(
                "user",
                format!("Context: {context}\n\nQuestion: {question}"),
            ),
        ],
        max_tokens: state.config.llm.max_tokens,
        passages,
        params: Default::default(),
    };
    let reservation = reserve(state, caller, estimate(state, &request)).await?;
    let mut headers = reservation
        .statuses()
        .map(|s| super::error::statuses_headers(&s))
        .unwrap_or_default();
    headers.insert(CACHE_HEADER, HeaderValue::from_static("miss"));
    let resp = complete(state, tenant_id, request, reservation, upstream).await?;
    let answer = ChatAnswer {
        answer: resp.content,
        tenant_id: tenant_id.to_string(),
        model: resp.model,
        sources,
        cached: false,
        usage: resp.usage,
    };
    if let Some(key) = cache_key {
        remember(
            &caller.vectors,
            &key,
            query,
            &answer.answer,
            &answer.sources,
            &answer.model,
            answer.usage,
        )
        .await;
    }
    Ok((headers, ApiJson(answer)))
}

/// Response header: `hit` when the answer came from the semantic cache, `miss` otherwise.
pub const CACHE_HEADER: &str = "x-cache";

/// Outcome of a semantic-cache lookup.
pub(super) enum Lookup {
    /// Answered from the cache: the request was counted (no tokens) and `headers` carry the
    /// rate-limit status and `X-Cache: hit`.
    Hit {
        /// The cached answer.
        entry: Box<crate::cache::Entry>,
        /// Response headers.
        headers: Box<HeaderMap>,
    },
    /// Not answered from the cache; store the answer under the key if there is one (none when
    /// the cache is off for this request or the lookup failed).
    Miss(Option<crate::cache::Key>),
}

/// Reserves `estimate` tokens and one request, mapping refusals to API errors.
pub(super) async fn reserve(
    state: &AppState,
    caller: &Caller,
    estimate: u64,
) -> Result<crate::quota::Reservation, ApiError> {
    let tenant = &caller.tenant;
    let tenant_id = tenant.id.as_str();
    let reservation = match state
        .quota
        .reserve(&tenant.id, Limits::from(&tenant.quota), estimate)
        .instrument(tracing::info_span!("quota", tenant_id, estimate))
        .await
    {
        Ok(r) => r,
        Err(Refusal::Limited(r)) => {
            state
                .metrics
                .record_rate_limited(tenant_id, r.limit.as_str());
            tracing::info!(
                tenant_id,
                limit = r.limit.as_str(),
                estimate,
                "rate limited"
            );
            return Err(ApiError::RateLimited(r));
        }
        Err(Refusal::Unavailable(e)) => return Err(ApiError::QuotaUnavailable(e)),
    };
    if !reservation.metered() {
        state.metrics.record_fail_open(tenant_id);
    }
    Ok(reservation)
}

/// Looks `question` up in the tenant's semantic cache under `cache_key` (a hash of everything
/// else that changes the answer): an exact repeat first, then — with the question embedded into
/// `query` if it is not yet — the most similar cached question. A hit is a request that
/// consumes no tokens: it is reserved and settled here. A lookup failure is a miss that stores
/// nothing (the cache is an optimisation, never a reason to fail the request).
pub(super) async fn lookup(
    state: &AppState,
    caller: &Caller,
    no_cache: bool,
    cache_key: String,
    question: &str,
    query: &mut Option<Vec<f32>>,
) -> Result<Lookup, ApiError> {
    let tenant = &caller.tenant;
    if !tenant.spec.semantic_cache.enabled || no_cache {
        return Ok(Lookup::Miss(None));
    }
    let tenant_id = tenant.id.as_str();
    let started = Instant::now();
    let span = tracing::info_span!("cache_lookup", tenant_id);
    let ttl = tenant.cache_ttl;
    let exact = async {
        let docs_version = crate::cache::docs_version(&caller.vectors).await?;
        let key = crate::cache::Key {
            cache_key,
            question_hash: crate::cache::question_hash(question),
            docs_version,
        };
        let entry = crate::cache::lookup_exact(&caller.vectors, &key, ttl).await?;
        Ok::<_, crate::vector::VectorError>((key, entry))
    }
    .instrument(span.clone())
    .await;
    let found = match exact {
        Ok((key, None)) => {
            if query.is_none() {
                *query = Some(embed_one(state, question).await?);
            }
            let q = query.as_deref().unwrap_or_default();
            let threshold = tenant.spec.semantic_cache.threshold;
            crate::cache::lookup_similar(&caller.vectors, &key, q, threshold, ttl)
                .instrument(span)
                .await
                .map(|entry| (key, entry))
        }
        other => other,
    };
    let (key, entry) = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(tenant_id, error = %e, "semantic-cache lookup failed; treating as a miss");
            state.metrics.record_cache(tenant_id, false);
            return Ok(Lookup::Miss(None));
        }
    };
    let Some(entry) = entry else {
        state.metrics.record_cache(tenant_id, false);
        return Ok(Lookup::Miss(Some(key)));
    };
    // A hit is a request (rate limits apply) that consumes no tokens.
    let reservation = reserve(state, caller, 0).await?;
    let mut headers = reservation
        .statuses()
        .map(|s| super::error::statuses_headers(&s))
        .unwrap_or_default();
    reservation.settle(0).await;
    headers.insert(CACHE_HEADER, HeaderValue::from_static("hit"));
    state.metrics.record_cache(tenant_id, true);
    state.metrics.record(
        tenant_id,
        &entry.model,
        true,
        started.elapsed().as_secs_f64(),
        0,
        0,
    );
    tracing::info!(tenant_id, model = %entry.model, "semantic-cache hit");
    Ok(Lookup::Hit {
        entry: Box::new(entry),
        headers: Box::new(headers),
    })
}

/// Stores a final answer in the tenant's semantic cache; a failure is logged, never returned.
pub(super) async fn remember(
    vectors: &crate::vector::TenantVectors,
    key: &crate::cache::Key,
    query: Vec<f32>,
    answer: &str,
    sources: &[Source],
    model: &str,
    usage: Usage,
) {
    let entry = crate::cache::Entry {
        answer: answer.to_string(),
        sources: serde_json::to_value(sources).unwrap_or_default(),
        model: model.to_string(),
        usage: serde_json::to_value(usage).unwrap_or_default(),
    };
    if let Err(e) = crate::cache::store(vectors, key, query, &entry).await {
        tracing::warn!(tenant_id = %vectors.tenant(), error = %e, "could not store a semantic-cache entry");
    }
}
