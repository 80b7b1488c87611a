//! The OpenAI-compatible surface: `POST /v1/chat/completions` (JSON or server-sent events),
//! `GET /v1/models`, `GET /v1/models/{model}` and `POST /v1/embeddings`. The tenant's JWT is
//! the API key, so an unmodified OpenAI SDK works with `base_url=<endpoint>/v1`.
//!
//! A completion takes the same path as `/v1/chat`: verified tenant → semantic cache → optional
//! retrieval (the tenant's `retrieval.augmentCompletions`, or the request's `tenantry.rag`) →
//! quota reservation → upstream → settlement → metrics. A stream is settled on the upstream's
//! final usage; a client that goes away mid-stream is charged for what was generated until
//! then (its prompt and the tokens of the text produced), never for the whole reservation.
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{Instrument as _, Span};

use super::chat::{self, CACHE_HEADER, Lookup, Source, UpstreamTime};
use super::{ApiError, ApiJson, AppState, Caller};
use crate::llm::{ChatRequest, ChatStream, Chunk, Message, Usage};
use crate::quota::{Reservation, tokens};
use crate::vector::TenantVectors;

/// On this surface a request the API cannot take is a 400 (as OpenAI answers), not a 422.
pub async fn openai_status(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::UNPROCESSABLE_ENTITY {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
    }
    resp
}

/// `tenantry` extension of a completion request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// Add the passages retrieved for the last user message (default: the tenant's
    /// `retrieval.augmentCompletions`).
    #[serde(default)]
    pub rag: Option<bool>,
    /// Passages to retrieve (1..=50; default: the tenant's `retrieval.topK`).
    #[serde(default, deserialize_with = "super::opt_int")]
    pub top_k: Option<i32>,
}

/// Body of `POST /v1/chat/completions` (OpenAI's parameters that apply to text chat).
#[derive(Debug, Deserialize)]
pub struct CompletionBody {
    /// Chat model; the tenant's default when absent.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<Value>,
    /// Answer with server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options (`include_usage`: send a last chunk with the usage of the whole
    /// request; other options are ignored).
    #[serde(default)]
    pub stream_options: Option<Value>,
    /// Most completion tokens (legacy name).
    #[serde(default, deserialize_with = "super::opt_int")]
    pub max_tokens: Option<u64>,
    /// Most completion tokens.
    #[serde(default, deserialize_with = "super::opt_int")]
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature, 0..=2.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling, 0..=1.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Choices to generate; only 1 is supported.
    #[serde(default, deserialize_with = "super::opt_int")]
    pub n: Option<u32>,
    /// Stop sequence(s).
    #[serde(default)]
    pub stop: Option<Value>,
    /// Sampling seed.
    #[serde(default, deserialize_with = "super::opt_int")]
    pub seed: Option<i64>,
    /// Presence penalty, -2..=2.
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty, -2..=2.
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// tenantry's own options (an [`Extension`]).
    #[serde(default)]
    pub tenantry: Option<Value>,
    /// Everything else: refused unless null or harmless (see [`IGNORED`]).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// Parameters accepted and ignored: they change nothing about the answer here.
const IGNORED: &[&str] = &[
    "user",
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
];

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadParam {
        param: param.to_string(),
        message: message.into(),
    }
}

/// A validated completion request.
struct Prepared {
    model: String,
    messages: Vec<Message>,
    max_tokens: u32,
    params: serde_json::Map<String, Value>,
    stream: bool,
    include_usage: bool,
    rag: bool,
    top_k: i32,
}

/// The text of one message's `content`: a string, or an array of text parts.
fn content_text(i: usize, content: &Value) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for part in parts {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(text)) => out.push_str(text),
                    (Some(kind), _) if kind != "text" => {
                        return Err(bad(
                            &param,
                            format!("content parts of type {kind:?} are not supported; only text"),
                        ));
                    }
                    _ => {
                        return Err(bad(&param, "a text part needs a string `text`"));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(bad(
            &param,
            "content must be a string or an array of text parts",
        )),
    }
}

fn messages(state: &AppState, raw: &[Value]) -> Result<Vec<Message>, ApiError> {
    if raw.is_empty() {
        return Err(bad("messages", "messages must not be empty"));
    }
    let mut total = 0usize;
    let mut out = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(bad(
                &format!("messages[{i}]"),
                "a message must be an object",
            ));
        };
        let role = match obj.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => "system",
            Some("user") => "user",
            Some("assistant") => "assistant",
            Some(r @ ("tool" | "function")) => {
                return Err(bad(
                    &format!("messages[{i}].role"),
                    format!("{r} messages are not supported (no tool calling)"),
                ));
            }
            Some(r) => {
                return Err(bad(
                    &format!("messages[{i}].role"),
                    format!("unknown role {r:?}; expected system, developer, user or assistant"),
                ));
            }
            None => return Err(bad(&format!("messages[{i}].role"), "role is required")),
        };
        if obj
            .get("name")
            .is_some_and(|n| !n.is_string() && !n.is_null())
        {
            return Err(bad(&format!("messages[{i}].name"), "name must be a string"));
        }
        for (k, v) in obj {
            if !matches!(k.as_str(), "role" | "content" | "name") && !v.is_null() {
                return Err(bad(
                    &format!("messages[{i}].{k}"),
                    format!("unsupported message field {k:?}"),
                ));
            }
        }
        let text = content_text(i, obj.get("content").unwrap_or(&Value::Null))?;
        total += text.chars().count();
        out.push(Message::new(role, text));
    }
    // A conversation may be longer than one question, within reason.
    let max = state.config.limits.max_question_chars.saturating_mul(8);
    if total > max {
        return Err(bad(
            "messages",
            format!("the conversation must be at most {max} characters"),
        ));
    }
    Ok(out)
}

fn in_range(param: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => {
            Err(bad(param, format!("{param} must be between {lo} and {hi}")))
        }
        _ => Ok(()),
    }
}

fn prepare(state: &AppState, caller: &Caller, body: CompletionBody) -> Result<Prepared, ApiError> {
    if let Some((k, _)) = body
        .other
        .iter()
        .find(|(k, v)| !v.is_null() && !IGNORED.contains(&k.as_str()))
    {
        return Err(bad(k, format!("unsupported parameter {k:?}")));
    }
    let tenant = &caller.tenant;
    let model = body.model.unwrap_or_else(|| tenant.chat_model.clone());
    if !tenant.model_allowed(&model) {
        return Err(ApiError::ModelNotAllowed(model));
    }
    let messages = messages(state, &body.messages)?;
    if body.n.is_some_and(|n| n != 1) {
        return Err(bad("n", "only n = 1 is supported"));
    }
    // Above the server's limit a request is lowered to it (it bounds the reservation too).
    for (param, v) in [
        ("max_tokens", body.max_tokens),
        ("max_completion_tokens", body.max_completion_tokens),
    ] {
        if v == Some(0) {
            return Err(bad(param, format!("{param} must be at least 1")));
        }
    }
    let limit = state.config.llm.max_tokens;
    let max_tokens = body
        .max_completion_tokens
        .or(body.max_tokens)
        .map_or(limit, |n| u32::try_from(n).unwrap_or(u32::MAX).min(limit));
    in_range("temperature", body.temperature, 0.0, 2.0)?;
    in_range("top_p", body.top_p, 0.0, 1.0)?;
    in_range("presence_penalty", body.presence_penalty, -2.0, 2.0)?;
    in_range("frequency_penalty", body.frequency_penalty, -2.0, 2.0)?;
    let mut params = serde_json::Map::new();
    for (k, v) in [
        ("temperature", body.temperature.map(Value::from)),
        ("top_p", body.top_p.map(Value::from)),
        ("presence_penalty", body.presence_penalty.map(Value::from)),
        ("frequency_penalty", body.frequency_penalty.map(Value::from)),
        ("seed", body.seed.map(Value::from)),
    ] {
        if let Some(v) = v {
            params.insert(k.to_string(), v);
        }
    }
    match body.stop {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            params.insert("stop".to_string(), Value::String(s));
        }
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => {
            params.insert("stop".to_string(), Value::Array(a));
        }
        Some(_) => {
            return Err(bad(
                "stop",
                "stop must be a string or an array of at most 4 strings",
            ));
        }
    }
    // Objects only: serde would also read a struct from an array.
    let ext: Extension = match body.tenantry {
        None | Some(Value::Null) => Extension::default(),
        Some(v @ Value::Object(_)) => {
            serde_json::from_value(v).map_err(|e| bad("tenantry", e.to_string()))?
        }
        Some(_) => return Err(bad("tenantry", "tenantry must be an object")),
    };
    let top_k = ext.top_k.unwrap_or(tenant.spec.retrieval.top_k);
    if !(1..=50).contains(&top_k) {
        return Err(bad("tenantry.top_k", "top_k must be between 1 and 50"));
    }
    let stream = body.stream.unwrap_or(false);
    let include_usage = match body.stream_options {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => Some(false),
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                return Err(bad(
                    "stream_options.include_usage",
                    "include_usage must be a boolean",
                ));
            }
        },
        Some(_) => return Err(bad("stream_options", "stream_options must be an object")),
    };
    if include_usage.is_some() && !stream {
        return Err(bad(
            "stream_options",
            "stream_options is only allowed with stream: true",
        ));
    }
    Ok(Prepared {
        model,
        messages,
        max_tokens,
        params,
        stream,
        include_usage: include_usage.unwrap_or(false),
        rag: ext.rag.unwrap_or(tenant.spec.retrieval.augment_completions),
        top_k,
    })
}

/// The semantic-cache key of a completion: everything but the last user message (the
/// question, matched by similarity).
fn cache_key(p: &Prepared) -> String {
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

fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// A `chat.completion` object.
fn completion_json(
    model: &str,
    content: &str,
    finish_reason: &str,
    usage: Usage,
    cached: bool,
    sources: &[Source],
) -> Value {
    json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage_json(usage),
        "tenantry": {"cached": cached, "sources": sources},
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    req_headers: HeaderMap,
    ApiJson(body): ApiJson<CompletionBody>,
) -> Response {
    let mut upstream = Duration::ZERO;
    let tenant_id = caller.tenant.id.as_str().to_string();
    let no_cache = chat::no_cache(&req_headers);
    let mut resp = match completion(&state, caller, body, no_cache, &mut upstream).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(UpstreamTime {
        tenant_id,
        upstream,
    });
    resp
}

async fn completion(
    state: &AppState,
    caller: Caller,
    body: CompletionBody,
    no_cache: bool,
    upstream: &mut Duration,
) -> Result<Response, ApiError> {
    let mut p = prepare(state, &caller, body)?;
    // The offline responder can only answer from retrieved passages.
    p.rag |= state.llm.offline();
    let tenant_id = caller.tenant.id.as_str().to_string();
    // The question: the last message, when it is the user's (the cache and retrieval use it).
    let question = p
        .messages
        .last()
        .filter(|m| m.role == "user" && !m.content.trim().is_empty())
        .map(|m| m.content.trim().to_string());
    // The question is embedded only when needed: for a similarity lookup after no exact repeat
    // was found, or for retrieval.
    let mut query = None;
    let mut cache_key_found = None;
    if let Some(q) = &question {
        match chat::lookup(state, &caller, no_cache, cache_key(&p), q, &mut query).await? {
            Lookup::Hit { entry, headers } => {
                let (entry, headers) = (*entry, *headers);
                let sources: Vec<Source> =
                    serde_json::from_value(entry.sources).unwrap_or_default();
                return Ok(if p.stream {
                    let model = entry.model.clone();
                    let stream = crate::llm::one_shot(crate::llm::ChatResponse {
                        content: entry.answer,
                        model: entry.model,
                        finish_reason: "stop".to_string(),
                        usage: Usage::default(),
                    });
                    let events = Events::new(stream, model, p.include_usage, None);
                    (headers, sse(events)).into_response()
                } else {
                    let body = completion_json(
                        &entry.model,
                        &entry.answer,
                        "stop",
                        Usage::default(),
                        true,
                        &sources,
                    );
                    (headers, axum::Json(body)).into_response()
                });
            }
            Lookup::Miss(key) => cache_key_found = key,
        }
    }
    if let (true, None, Some(q)) = (p.rag, &query, &question) {
        query = Some(chat::embed_one(state, q).await?);
    }
    let mut sources = Vec::new();
    if let (true, Some(query)) = (p.rag, &query) {
        sources = chat::retrieve(&caller, query, p.top_k).await?;
        augment(&mut p.messages, &sources);
    }
    let request = ChatRequest {
        model: p.model.clone(),
        messages: p.messages,
        max_tokens: p.max_tokens,
        passages: sources.iter().map(|s| s.text.clone()).collect(),
        params: p.params,
    };
    let estimate = chat::estimate(state, &request);
    let reservation = chat::reserve(state, &caller, estimate).await?;
    let mut headers = reservation
        .statuses()
        .map(|s| super::error::statuses_headers(&s))
        .unwrap_or_default();
    headers.insert(CACHE_HEADER, HeaderValue::from_static("miss"));
    let remember = match (cache_key_found, query) {
        (Some(key), Some(query)) => Some((key, query)),
        _ => None,
    };

    if !p.stream {
        let resp = chat::complete(state, &tenant_id, request, reservation, upstream).await?;
        if let Some((key, query)) = remember {
            chat::remember(
                &caller.vectors,
                &key,
                query,
                &resp.content,
                &sources,
                &resp.model,
                resp.usage,
            )
            .await;
        }
        let body = completion_json(
            &resp.model,
            &resp.content,
            &resp.finish_reason,
            resp.usage,
            false,
            &sources,
        );
        return Ok((headers, axum::Json(body)).into_response());
    }

    let started = Instant::now();
    let span = chat::llm_span(state, &request, &tenant_id);
    let prompt_tokens = if state.llm.offline() {
        0
    } else {
        tokens::prompt_tokens(&request.model, &request.messages)
    };
    let model = if state.llm.offline() {
        crate::llm::extractive::MODEL.to_string()
    } else {
        request.model.clone()
    };
    let opened = state.llm.stream(request).instrument(span.clone()).await;
    if !state.llm.offline() {
        *upstream = started.elapsed();
    }
    let stream = match opened {
        Ok(s) => s,
        Err(e) => {
            chat::record_llm(&span, Err(&e));
            let elapsed = started.elapsed().as_secs_f64();
            return Err(chat::failed(state, &tenant_id, &model, elapsed, reservation, e).await);
        }
    };
    let settle = Settlement {
        reservation: Some(reservation),
        state: state.clone(),
        tenant_id,
        model: model.clone(),
        estimate,
        prompt_tokens,
        text: String::new(),
        started,
        span,
        remember: remember.map(|(key, query)| (caller.vectors.clone(), key, query, sources)),
    };
    let events = Events::new(stream, model, p.include_usage, Some(settle));
    Ok((headers, sse(events)).into_response())
}

fn sse(events: Events) -> Response {
    let stream = futures::stream::unfold(events, |mut e| async move {
        e.next().await.map(|ev| (Ok::<_, Infallible>(ev), e))
    });
    let mut resp = Sse::new(stream).into_response();
    // Proxies (nginx) would otherwise buffer the events.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// The reservation of a streamed completion and what is needed to settle it: on the final
/// usage when the stream ends, or — when the client goes away or the upstream fails mid-way —
/// on the prompt and the text generated so far (in [`Drop`]).
struct Settlement {
    reservation: Option<Reservation>,
    state: AppState,
    tenant_id: String,
    model: String,
    estimate: u64,
    prompt_tokens: u64,
    text: String,
    started: Instant,
    span: Span,
    remember: Option<(TenantVectors, crate::cache::Key, Vec<f32>, Vec<Source>)>,
}

impl Settlement {
    /// Tokens of what was generated so far (prompt included).
    fn partial(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: if self.state.llm.offline() {
                0
            } else {
                tokens::count(&self.model, &self.text)
            },
        }
    }

    /// The stream ended normally: settle on the upstream's usage (or, when it sent none, on
    /// the tokens counted here), record it, and cache the answer.
    async fn finish(mut self, model: &str, usage: Option<Usage>) -> Usage {
        let usage = usage.unwrap_or_else(|| self.partial());
        let charge = chat::charge(&self.state, usage, self.estimate);
        if let Some(r) = self.reservation.take() {
            r.settle(charge).await;
        }
        chat::record_llm(&self.span, Ok((model, usage)));
        let elapsed = self.started.elapsed().as_secs_f64();
        self.state.metrics.record(
            &self.tenant_id,
            model,
            true,
            elapsed,
            usage.prompt_tokens,
            usage.completion_tokens,
        );
        tracing::info!(
            tenant_id = %self.tenant_id,
            model = %model,
            latency_ms = elapsed * 1000.0,
            tokens = usage.prompt_tokens + usage.completion_tokens,
            stream = true,
            "LLM request completed"
        );
        if let Some((vectors, key, query, sources)) = self.remember.take() {
            chat::remember(&vectors, &key, query, &self.text, &sources, model, usage).await;
        }
        usage
    }
}

impl Drop for Settlement {
    /// Not finished: the client went away or the upstream failed mid-stream. What was
    /// generated was paid for upstream, so it is charged; the rest of the reservation is
    /// returned.
    fn drop(&mut self) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let usage = self.partial();
        let charged = usage.prompt_tokens + usage.completion_tokens;
        let elapsed = self.started.elapsed().as_secs_f64();
        self.state.metrics.record(
            &self.tenant_id,
            &self.model,
            false,
            elapsed,
            usage.prompt_tokens,
            usage.completion_tokens,
        );
        tracing::info!(
            tenant_id = %self.tenant_id,
            model = %self.model,
            latency_ms = elapsed * 1000.0,
            tokens = charged,
            "stream ended before the answer was complete; charged what was generated"
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(reservation.settle(charged));
        }
    }
}

/// Where an [`Events`] stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The `role` chunk is next.
    Role,
    /// Passing the model's deltas on.
    Streaming,
    /// The usage chunk is next (`include_usage`).
    Usage,
    /// `[DONE]` is next.
    Done,
    /// Nothing more.
    Over,
}

/// Turns a [`ChatStream`] into OpenAI `chat.completion.chunk` events.
struct Events {
    inner: ChatStream,
    id: String,
    created: u64,
    include_usage: bool,
    settle: Option<Settlement>,
    phase: Phase,
    /// An item read ahead (to learn the model before the first event), not yet handled.
    ahead: Option<Option<Result<Chunk, crate::llm::LlmError>>>,
    model: String,
    usage: Usage,
}

impl Events {
    fn new(
        inner: ChatStream,
        model: String,
        include_usage: bool,
        settle: Option<Settlement>,
    ) -> Self {
        Self {
            inner,
            id: completion_id(),
            created: unix_now(),
            include_usage,
            settle,
            phase: Phase::Role,
            ahead: None,
            model,
            usage: Usage::default(),
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Event {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        Event::default().data(v.to_string())
    }

    async fn next(&mut self) -> Option<Event> {
        match self.phase {
            Phase::Role => {
                // Every chunk names the model that answers (a fallback's too), so wait for the
                // stream to say which before the first one.
                match self.inner.next().await {
                    Some(Ok(Chunk::Model(m))) => self.model = m,
                    other => self.ahead = Some(other),
                }
                self.phase = Phase::Streaming;
                return Some(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            Phase::Usage => {
                self.phase = Phase::Done;
                let v = json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage_json(self.usage),
                });
                return Some(Event::default().data(v.to_string()));
            }
            Phase::Done => {
                self.phase = Phase::Over;
                return Some(Event::default().data("[DONE]"));
            }
            Phase::Over => return None,
            Phase::Streaming => {}
        }
        let mut item = match self.ahead.take() {
            Some(item) => item,
            None => self.inner.next().await,
        };
        while let Some(Ok(Chunk::Model(m))) = item {
            self.model = m;
            item = self.inner.next().await;
        }
        match item {
            Some(Ok(Chunk::Model(_))) => None, // consumed by the loop above
            Some(Ok(Chunk::Delta(text))) => {
                if let Some(s) = self.settle.as_mut() {
                    s.text.push_str(&text);
                }
                Some(self.chunk(json!({"content": text}), None))
            }
            Some(Ok(Chunk::Done {
                model,
                finish_reason,
                usage,
            })) => {
                if !model.is_empty() {
                    self.model = model;
                }
                self.usage = match self.settle.take() {
                    Some(s) => s.finish(&self.model, usage).await,
                    None => usage.unwrap_or_default(),
                };
                self.phase = if self.include_usage {
                    Phase::Usage
                } else {
                    Phase::Done
                };
                Some(self.chunk(json!({}), Some(&finish_reason)))
            }
            Some(Err(e)) => {
                // Headers are gone: the failure is an error event (what OpenAI's SDKs raise),
                // and the partial answer is settled by dropping the settlement.
                tracing::warn!(error = %e, "upstream stream failed");
                if let Some(s) = self.settle.as_ref() {
                    chat::record_llm(&s.span, Err(&e));
                }
                self.settle = None;
                self.phase = Phase::Over;
                let body = ApiError::Upstream(e).body();
                Some(Event::default().data(body.to_string()))
            }
            None => {
                // The model's stream ended without a final chunk: treat as cut.
                self.settle = None;
                self.phase = Phase::Over;
                None
            }
        }
    }
}

/// `GET /v1/models`: the chat models the tenant may use, then the embedding model.
pub async fn models(State(state): State<AppState>, caller: Caller) -> Response {
    let data: Vec<Value> = model_ids(&state, &caller)
        .iter()
        .map(|id| model_json(id))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /v1/models/{model}`.
pub async fn model(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if model_ids(&state, &caller).contains(&id) {
        Ok(axum::Json(model_json(&id)).into_response())
    } else {
        Err(ApiError::NotFound(format!("model {id:?} is not available")))
    }
}

fn model_ids(state: &AppState, caller: &Caller) -> Vec<String> {
    let mut ids = caller.tenant.allowed_models.clone();
    let embedding = state.embedder.model().to_string();
    if !ids.contains(&embedding) {
        ids.push(embedding);
    }
    ids
}

fn model_json(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "tenantry"})
}

/// Body of `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsBody {
    /// A string or an array of strings.
    pub input: Value,
    /// The embedding model; `serve`'s when absent.
    #[serde(default)]
    pub model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Must equal the model's dimension when given.
    #[serde(default, deserialize_with = "super::opt_int")]
    pub dimensions: Option<usize>,
    /// Ignored.
    #[serde(default)]
    pub user: Option<String>,
}

/// Most inputs per embeddings request (as OpenAI).
const MAX_INPUTS: usize = 2048;

/// `POST /v1/embeddings`: the tenant's texts through `serve`'s embedding model, charged to the
/// tenant's token quota.
pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<EmbeddingsBody>,
) -> Result<Response, ApiError> {
    let embedding_model = state.embedder.model().to_string();
    let model = body.model.unwrap_or_else(|| embedding_model.clone());
    if model != embedding_model {
        return Err(ApiError::ModelNotAllowed(model));
    }
    let inputs: Vec<String> = match body.input {
        Value::String(s) => vec![s],
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Value::Array(_) => {
            return Err(bad(
                "input",
                "input must be a string or an array of strings (token arrays are not supported)",
            ));
        }
        _ => {
            return Err(bad(
                "input",
                "input must be a string or an array of strings",
            ));
        }
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(bad(
            "input",
            format!("input must hold between 1 and {MAX_INPUTS} texts"),
        ));
    }
    if let Some(i) = inputs.iter().position(|t| t.is_empty()) {
        return Err(bad(&format!("input[{i}]"), "input texts must not be empty"));
    }
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(bad(
                "encoding_format",
                format!("encoding_format must be float or base64, not {other:?}"),
            ));
        }
    };
    let dimension = state.embedder.dimension();
    if body.dimensions.is_some_and(|d| d != dimension) {
        return Err(bad(
            "dimensions",
            format!("{model} has {dimension} dimensions; other sizes are not supported"),
        ));
    }
    let tenant_id = caller.tenant.id.as_str();
    let used: u64 = inputs.iter().map(|t| tokens::count(&model, t)).sum();
    let reservation = chat::reserve(&state, &caller, used).await?;
    let headers = reservation
        .statuses()
        .map(|s| super::error::statuses_headers(&s))
        .unwrap_or_default();
    let started = Instant::now();
    let vectors = match state
        .embedder
        .embed(inputs)
        .instrument(tracing::info_span!("embed", tenant_id))
        .await
    {
        Ok(v) => v,
        Err(e) => {
            reservation.release().await;
            state.metrics.record(
                tenant_id,
                &model,
                false,
                started.elapsed().as_secs_f64(),
                0,
                0,
            );
            return Err(e.into());
        }
    };
    reservation.settle(used).await;
    state.metrics.record(
        tenant_id,
        &model,
        true,
        started.elapsed().as_secs_f64(),
        used,
        0,
    );
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    });
    Ok((headers, axum::Json(body)).into_response())
}
