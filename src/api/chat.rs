//! `POST /v1/chat`: retrieve the caller's passages, ask the chat model, answer with sources.
//! Also what every chat endpoint shares around a [`Turn`]: its start from the request, the
//! response headers of an answer, and the gateway-overhead measurement.
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, AppState, Caller};
use crate::domain::{MAX_TOP_K, TOP_K_RULE, top_k_ok};
use crate::llm::{ChatRequest, Message, Usage};
use crate::quota::LimitStatus;
use crate::rag::Turn;

/// Body of `POST /v1/chat`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ChatRequest")]
pub struct ChatBody {
    /// The question.
    #[schemars(length(min = 1), pattern(r"\S"))]
    pub question: String,
    /// Chat model; the tenant's default when absent. Must be in the tenant's allow-list.
    #[serde(default)]
    pub model: Option<String>,
    /// Passages to retrieve (1..=50); the tenant's `retrieval.topK` when absent.
    #[serde(default, deserialize_with = "super::opt_int")]
    #[schemars(range(min = 1, max = MAX_TOP_K))]
    pub top_k: Option<i32>,
}

pub use crate::rag::Source;

/// Response of `POST /v1/chat`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(rename = "ChatResponse")]
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

/// The system prompt: answer only from the tenant's passages, and say so when they do not
/// hold the answer.
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
fn no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
}

/// The start of every chat request: a [`Turn`] for the caller, honouring the request's
/// `Cache-Control: no-cache`.
pub(super) fn begin(state: &AppState, caller: Caller, headers: &HeaderMap) -> Turn {
    Turn::new(
        state.rag_services(),
        caller.tenant,
        caller.vectors,
        no_cache(headers),
    )
}

/// The end of every chat request: the response, carrying for [`overhead`] the time the turn
/// spent upstream.
pub(super) fn end(turn: &Turn, result: Result<impl IntoResponse, ApiError>) -> Response {
    let mut resp = result.into_response();
    resp.extensions_mut().insert(UpstreamTime {
        tenant_id: turn.tenant().id.as_str().to_string(),
        upstream: turn.upstream_time(),
    });
    resp
}

/// Response header: `hit` when the answer came from the semantic cache, `miss` otherwise.
pub const CACHE_HEADER: &str = "x-cache";
/// Response header saying how a cache hit matched: `exact` (the question itself) or `similar`.
pub const CACHE_MATCH_HEADER: &str = "x-cache-match";

/// Whether an answer came from the semantic cache (the `X-Cache` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CacheUse {
    /// Answered from the cache: `exact` when by the question itself (`X-Cache-Match: exact`),
    /// not by a similar one (`similar`).
    Hit {
        /// Whether the cached entry is the question's own.
        exact: bool,
    },
    /// Answered by the model.
    Miss,
}

/// The headers of an answer: the status of every limit as of its reservation (none when
/// served unmetered) and, for a chat answer, `X-Cache`.
pub(super) fn answer_headers(limits: Option<&[LimitStatus]>, cache: Option<CacheUse>) -> HeaderMap {
    let mut headers = limits
        .map(super::error::statuses_headers)
        .unwrap_or_default();
    if let Some(cache) = cache {
        let value = match cache {
            CacheUse::Hit { exact } => {
                let how = if exact { "exact" } else { "similar" };
                headers.insert(CACHE_MATCH_HEADER, HeaderValue::from_static(how));
                "hit"
            }
            CacheUse::Miss => "miss",
        };
        headers.insert(CACHE_HEADER, HeaderValue::from_static(value));
    }
    headers
}

/// Answers a question from the caller's documents (see [`crate::rag`] for how it is charged).
pub async fn chat(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ChatBody>,
) -> Response {
    let mut turn = begin(&state, caller, &headers);
    let result = answer(&state, &mut turn, body).await;
    end(&turn, result)
}

/// A validated `/v1/chat` question.
struct Question {
    text: String,
    model: String,
    top_k: i32,
}

fn validate(state: &AppState, turn: &Turn, body: ChatBody) -> Result<Question, ApiError> {
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
    let tenant = turn.tenant();
    let model = match body.model.as_deref() {
        Some(asked) => tenant.resolve_model(asked).to_string(),
        None => tenant.chat_model.clone(),
    };
    if !tenant.model_allowed(&model) {
        return Err(ApiError::ModelNotAllowed(body.model.unwrap_or(model)));
    }
    let top_k = body.top_k.unwrap_or(tenant.spec.retrieval.top_k);
    if !top_k_ok(top_k) {
        return Err(ApiError::Invalid(TOP_K_RULE.to_string()));
    }
    Ok(Question {
        text: question.to_string(),
        model,
        top_k,
    })
}

async fn answer(
    state: &AppState,
    turn: &mut Turn,
    body: ChatBody,
) -> Result<(HeaderMap, ApiJson<ChatAnswer>), ApiError> {
    let Question { text, model, top_k } = validate(state, turn, body)?;
    let tenant_id = turn.tenant().id.as_str().to_string();
    let max_tokens = turn
        .tenant()
        .quota
        .max_tokens_or(state.config.llm.max_tokens);
    // Semantic cache: scoped to the tenant, its answer parameters and its document set.
    let key = crate::cache::cache_key(&model, &system_prompt(&tenant_id), max_tokens, top_k);
    if let Some(hit) = turn.lookup(&text, key).await? {
        let headers = answer_headers(
            turn.limit_statuses(),
            Some(CacheUse::Hit { exact: hit.exact }),
        );
        return Ok((
            headers,
            ApiJson(ChatAnswer {
                answer: hit.answer,
                tenant_id,
                model: hit.model,
                sources: hit.sources,
                cached: true,
                usage: Usage::default(),
            }),
        ));
    }
    let passages: Vec<String> = turn
        .retrieve(top_k)
        .await?
        .iter()
        .map(|s| s.text.clone())
        .collect();
    let context = passages.join("\n\n---\n\n");
    let request = ChatRequest {
        model,
        messages: vec![
            Message::new("system", system_prompt(&tenant_id)),
            Message::new("user", format!("Context: {context}\n\nQuestion: {text}")),
        ],
        max_tokens,
        passages,
        params: Default::default(),
    };
    let resp = turn.answer(request).await?;
    let headers = answer_headers(turn.limit_statuses(), Some(CacheUse::Miss));
    Ok((
        headers,
        ApiJson(ChatAnswer {
            answer: resp.content,
            tenant_id,
            model: resp.model,
            sources: turn.take_sources(),
            cached: false,
            usage: resp.usage,
        }),
    ))
}
