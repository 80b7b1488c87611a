//! `POST /v1/chat/completions`, JSON or streamed. It takes the same path as `/v1/chat` (a
//! [`Turn`]): semantic cache → optional retrieval (the tenant's
//! `retrieval.augmentCompletions`, or the request's `tenantry.rag`) → quota → upstream →
//! settlement (see [`crate::rag`] for how a stream is charged).
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse as _, Response};

use super::params::{self, CompletionParams};
use super::stream::sse;
use super::types::{AssistantMessage, ChatCompletion, Choice, CompletionBody, CompletionExtras};
use crate::api::chat::{self, CacheUse, answer_headers};
use crate::api::{ApiError, ApiJson, AppState, Caller};
use crate::llm::{ChatRequest, ChatResponse, Message, one_shot};
use crate::rag::{CachedAnswer, Source, Turn};

/// A new completion id, `chatcmpl-<uuid>`.
pub(super) fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

/// Seconds since the Unix epoch.
pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ChatCompletion {
    /// The `chat.completion` of `answer`.
    fn new(answer: ChatResponse, cached: bool, sources: Vec<Source>) -> Self {
        Self {
            id: completion_id(),
            object: "chat.completion",
            created: unix_now(),
            model: answer.model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    // OpenAI's shape: null content when the model only calls tools or refuses.
                    content: (!answer.content.is_empty()
                        || (answer.tool_calls.is_none() && answer.refusal.is_none()))
                    .then_some(answer.content),
                    refusal: answer.refusal,
                    tool_calls: answer.tool_calls,
                },
                logprobs: None,
                finish_reason: answer.finish_reason,
            }],
            usage: answer.usage.into(),
            tenantry: CompletionExtras { cached, sources },
        }
    }
}

/// The semantic-cache key of a completion: everything but the last user message (the
/// question, matched by similarity).
fn cache_key(p: &CompletionParams) -> String {
    let history = serde_json::to_string(&p.messages[..p.messages.len() - 1]).unwrap_or_default();
    let params = serde_json::to_string(&p.params).unwrap_or_default();
    let retrieval = if p.rag {
        p.top_k.to_string()
    } else {
        "-".to_string()
    };
    crate::cache::cache_key_of(&[
        "chat.completions",
        &p.model,
        &history,
        &p.max_tokens.to_string(),
        &params,
        &retrieval,
    ])
}

/// Adds the retrieved passages to the conversation, after its leading system messages.
fn augment(messages: &mut Vec<Message>, sources: &[Source]) {
    if sources.is_empty() {
        return;
    }
    let context: Vec<&str> = sources.iter().map(|s| s.text.as_str()).collect();
    let at = messages
        .iter()
        .position(|m| m.role != "system")
        .unwrap_or(messages.len());
    messages.insert(
        at,
        Message::new(
            "system",
            format!(
                "Passages from the user's documents that may help answer (say so when they \
                 do not contain the answer):\n\n{}",
                context.join("\n\n---\n\n")
            ),
        ),
    );
}

/// The interval of a stream's keep-alive comments (`llm.streamKeepAliveSeconds`).
fn keep_alive(state: &AppState) -> std::time::Duration {
    std::time::Duration::from_secs(state.config.llm.stream_keep_alive_seconds)
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CompletionBody>,
) -> Response {
    let mut turn = chat::begin(&state, caller, &headers);
    let result = complete(&state, &mut turn, body).await;
    chat::end(&turn, result)
}

/// A cached answer, as JSON or as a stream.
fn from_cache(
    state: &AppState,
    hit: CachedAnswer,
    p: &CompletionParams,
    headers: HeaderMap,
) -> Response {
    let answer = ChatResponse {
        content: hit.answer,
        model: hit.model,
        finish_reason: "stop".to_string(),
        ..ChatResponse::default()
    };
    if p.stream {
        let model = answer.model.clone();
        let extras = CompletionExtras {
            cached: true,
            sources: hit.sources,
        };
        let keep_alive = keep_alive(state);
        (
            headers,
            sse(one_shot(answer), model, p.include_usage, extras, keep_alive),
        )
            .into_response()
    } else {
        let body = ChatCompletion::new(answer, true, hit.sources);
        (headers, axum::Json(body)).into_response()
    }
}

async fn complete(
    state: &AppState,
    turn: &mut Turn,
    body: CompletionBody,
) -> Result<Response, ApiError> {
    let mut p = params::validate(state, turn.tenant(), body)?;
    // The offline responder can only answer from retrieved passages (it answers in text: it
    // calls no tools and follows no response format).
    p.rag |= state.llm.offline();
    if p.structured {
        // Tool calls and structured outputs are not answers to a question to reuse.
        turn.bypass_cache();
    }
    // The question: the last message, when it is the user's (the cache and retrieval use it).
    let question = p
        .messages
        .last()
        .filter(|m| m.role == "user" && !m.content.trim().is_empty())
        .map(|m| m.content.trim().to_string());
    if let Some(q) = &question
        && let Some(hit) = turn.lookup(q, cache_key(&p)).await?
    {
        let headers = answer_headers(
            turn.limit_statuses(),
            Some(CacheUse::Hit { exact: hit.exact }),
        );
        return Ok(from_cache(state, hit, &p, headers));
    }
    if p.rag {
        augment(&mut p.messages, turn.retrieve(p.top_k).await?);
    }
    let request = ChatRequest {
        model: p.model,
        messages: p.messages,
        max_tokens: p.max_tokens,
        passages: turn.sources().iter().map(|s| s.text.clone()).collect(),
        params: p.params,
    };
    if !p.stream {
        let answer = turn.answer(request).await?;
        let headers = answer_headers(turn.limit_statuses(), Some(CacheUse::Miss));
        let body = ChatCompletion::new(answer, false, turn.take_sources());
        return Ok((headers, axum::Json(body)).into_response());
    }
    let model = state.rag_services().asked_model(&request);
    let extras = CompletionExtras {
        cached: false,
        sources: turn.sources().to_vec(),
    };
    let chunks = turn.stream(request).await?;
    let headers = answer_headers(turn.limit_statuses(), Some(CacheUse::Miss));
    let keep_alive = keep_alive(state);
    Ok((
        headers,
        sse(chunks, model, p.include_usage, extras, keep_alive),
    )
        .into_response())
}
