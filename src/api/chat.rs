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
    ApiJson(body): ApiJson<ChatBody>,
) -> Response {
    let mut upstream = Duration::ZERO;
    let tenant_id = caller.tenant.id.as_str().to_string();
    let mut resp = answer(&state, &caller, body, &mut upstream)
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

    let hits = async {
        let query = state
            .embedder
            .embed(vec![question.to_string()])
            .await?
            .pop()
            .ok_or_else(|| ApiError::Internal("embedder returned no vector".to_string()))?;
        let hits = caller
            .vectors
            .search(Kind::Docs, query, Filter::default(), top_k as usize)
            .await?;
        Ok::<_, ApiError>(hits)
    }
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
    let tenant_id = tenant.id.as_str();
    // The offline responder calls no model: it needs a request slot but no tokens.
    let estimate = if state.llm.offline() {
        0
    } else {
        tokens::prompt_tokens(&model, &request.messages) + u64::from(request.max_tokens)
    };
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
    let headers = reservation
        .statuses()
        .map(|s| super::error::statuses_headers(&s))
        .unwrap_or_default();
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
            Ok((
                headers,
                ApiJson(ChatAnswer {
                    answer: resp.content,
                    tenant_id: tenant_id.to_string(),
                    model: resp.model,
                    sources,
                    cached: false,
                    usage: resp.usage,
                }),
            ))
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
