//! `POST /v1/chat`: retrieve the caller's passages, ask the chat model, answer with sources.
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use tracing::field::Empty;

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
    #[serde(default)]
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
    let no_cache = req_headers
        .get_all(axum::http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"));
    let mut resp = answer(&state, &caller, body, no_cache, &mut upstream)
        .await
        .into_response();
    resp.extensions_mut().insert(UpstreamTime {
        tenant_id,
        upstream,
    });
    resp
}

async fn answer(
    state: &AppState,
    caller: &Caller,
    body: ChatBody,
    no_cache: bool,
    upstream: &mut Duration,
) -> Result<(HeaderMap, ApiJson<ChatAnswer>), ApiError> {
    let started = Instant::now();
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
    let query = state
        .embedder
        .embed(vec![question.to_string()])
        .instrument(tracing::info_span!("embed"))
        .await?
        .pop()
        .ok_or_else(|| ApiError::Internal("embedder returned no vector".to_string()))?;

    // Semantic cache: scoped to the tenant, its answer parameters and its document set.
    let cache_on = tenant.spec.semantic_cache.enabled && !no_cache;
    let cache_key = if cache_on {
        cached_answer(state, caller, question, &model, top_k, &query).await?
    } else {
        None
    };
    let cache_key = match cache_key {
        Some(CacheLookup::Hit(hit)) => return Ok(*hit),
        Some(CacheLookup::Miss(key)) => Some(key),
        None => None,
    };

    let hits = caller
        .vectors
        .search(Kind::Docs, query.clone(), Filter::default(), top_k as usize)
        .instrument(tracing::info_span!("retrieve", top_k))
        .await?;
    let sources: Vec<Source> = hits
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
    };
    // The offline responder calls no model: it needs a request slot but no tokens.
    let estimate = if state.llm.offline() {
        0
    } else {
        tokens::prompt_tokens(&model, &request.messages) + u64::from(request.max_tokens)
    };
    let reservation = reserve(state, caller, estimate).await?;
    let mut headers = reservation
        .statuses()
        .map(|s| super::error::statuses_headers(&s))
        .unwrap_or_default();
    headers.insert(CACHE_HEADER, HeaderValue::from_static("miss"));
    // GenAI semantic conventions (the response fields are recorded once known).
    let llm_span = tracing::info_span!(
        "llm",
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.system = if state.llm.offline() { "tenantry.extractive" } else { "openai" },
        gen_ai.request.model = %model,
        gen_ai.request.max_tokens = i64::from(request.max_tokens),
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        error.type = Empty,
        tenant_id,
    );
    // Dropping `reservation` (client gone, whole-request timeout) releases it.
    let llm_started = Instant::now();
    let result = state
        .llm
        .complete(request)
        .instrument(llm_span.clone())
        .await;
    // The offline responder is tenantry's own work: it counts as overhead.
    if !state.llm.offline() {
        *upstream = llm_started.elapsed();
    }
    let elapsed = started.elapsed();
    match &result {
        Ok(resp) => {
            llm_span.record("gen_ai.response.model", resp.model.as_str());
            // As i64: OpenTelemetry has no unsigned integers (u64 would become a string).
            let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            llm_span.record("gen_ai.usage.input_tokens", int(resp.usage.prompt_tokens));
            llm_span.record(
                "gen_ai.usage.output_tokens",
                int(resp.usage.completion_tokens),
            );
        }
        Err(e) => {
            llm_span.record("otel.status_code", "ERROR");
            llm_span.record(
                "error.type",
                match e {
                    crate::llm::LlmError::Timeout => "timeout",
                    crate::llm::LlmError::Upstream(_) => "upstream_error",
                },
            );
        }
    }
    match result {
        Ok(resp) => {
            let used = resp.usage.prompt_tokens + resp.usage.completion_tokens;
            // An upstream that reports no usage is charged the estimate (never less than
            // what it may have used).
            let charge = if used == 0 && !state.llm.offline() {
                estimate
            } else {
                used
            };
            reservation.settle(charge).await;
            state.metrics.record(
                tenant_id,
                &resp.model,
                true,
                elapsed.as_secs_f64(),
                resp.usage.prompt_tokens,
                resp.usage.completion_tokens,
            );
            tracing::info!(
                tenant_id,
                model = %resp.model,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                tokens = resp.usage.prompt_tokens + resp.usage.completion_tokens,
                sources = sources.len(),
                "LLM request completed"
            );
            let answer = ChatAnswer {
                answer: resp.content,
                tenant_id: tenant_id.to_string(),
                model: resp.model,
                sources,
                cached: false,
                usage: resp.usage,
            };
            if let Some(key) = cache_key {
                let entry = crate::cache::Entry {
                    answer: answer.answer.clone(),
                    sources: serde_json::to_value(&answer.sources).unwrap_or_default(),
                    model: answer.model.clone(),
                    usage: serde_json::to_value(answer.usage).unwrap_or_default(),
                };
                if let Err(e) = crate::cache::store(&caller.vectors, &key, query, &entry).await {
                    tracing::warn!(tenant_id, error = %e, "could not store a semantic-cache entry");
                }
            }
            Ok((headers, ApiJson(answer)))
        }
        Err(e) => {
            reservation.release().await;
            state
                .metrics
                .record(tenant_id, &model, false, elapsed.as_secs_f64(), 0, 0);
            tracing::warn!(tenant_id, model = %model, error = %e, "LLM request failed");
            Err(ApiError::Upstream(e))
        }
    }
}

/// Response header: `hit` when the answer came from the semantic cache, `miss` otherwise.
pub const CACHE_HEADER: &str = "x-cache";

/// Outcome of a semantic-cache lookup.
enum CacheLookup {
    /// Answered from the cache (response ready).
    Hit(Box<(HeaderMap, ApiJson<ChatAnswer>)>),
    /// Not in the cache: store the answer under this key.
    Miss(crate::cache::Key),
}

/// Reserves `estimate` tokens and one request, mapping refusals to API errors.
async fn reserve(
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

/// Looks the question up in the tenant's semantic cache. A hit is answered here: it counts
/// as a request but consumes no tokens. A lookup failure is a miss (the cache is an
/// optimisation, never a reason to fail the request).
async fn cached_answer(
    state: &AppState,
    caller: &Caller,
    question: &str,
    model: &str,
    top_k: i32,
    query: &[f32],
) -> Result<Option<CacheLookup>, ApiError> {
    let tenant = &caller.tenant;
    let tenant_id = tenant.id.as_str();
    let started = Instant::now();
    let span = tracing::info_span!("cache_lookup", tenant_id);
    let found = async {
        let docs_version = crate::cache::docs_version(&caller.vectors).await?;
        let key = crate::cache::Key {
            cache_key: crate::cache::cache_key(
                model,
                &system_prompt(tenant_id),
                state.config.llm.max_tokens,
                top_k,
            ),
            question_hash: crate::cache::question_hash(question),
            docs_version,
        };
        let entry = crate::cache::lookup(
            &caller.vectors,
            &key,
            query,
            tenant.spec.semantic_cache.threshold,
            tenant.cache_ttl,
        )
        .await?;
        Ok::<_, crate::vector::VectorError>((key, entry))
    }
    .instrument(span)
    .await;
    let (key, entry) = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(tenant_id, error = %e, "semantic-cache lookup failed; treating as a miss");
            state.metrics.record_cache(tenant_id, false);
            return Ok(None);
        }
    };
    let Some(entry) = entry else {
        state.metrics.record_cache(tenant_id, false);
        return Ok(Some(CacheLookup::Miss(key)));
    };
    let sources: Vec<Source> = match serde_json::from_value(entry.sources) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(tenant_id, error = %e, "unreadable semantic-cache entry; treating as a miss");
            state.metrics.record_cache(tenant_id, false);
            return Ok(Some(CacheLookup::Miss(key)));
        }
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
    tracing::info!(tenant_id, model = %entry.model, sources = sources.len(), "semantic-cache hit");
    Ok(Some(CacheLookup::Hit(Box::new((
        headers,
        ApiJson(ChatAnswer {
            answer: entry.answer,
            tenant_id: tenant_id.to_string(),
            model: entry.model,
            sources,
            cached: true,
            usage: Usage::default(),
        }),
    )))))
}
