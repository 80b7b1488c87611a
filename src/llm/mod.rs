//! Chat models: the [`ChatModel`] trait, the OpenAI-compatible client ([`openai::OpenAiChat`])
//! and the offline [`extractive::Extractive`] responder used when no endpoint is configured;
//! [`resilient::ResilientChat`] adds retries, fallbacks and circuit breakers around endpoints.
pub mod extractive;
pub mod openai;
pub mod resilient;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use serde::{Deserialize, Serialize};

/// Errors from a chat model.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The upstream answered with an error or an unusable response (HTTP 502).
    #[error("upstream model error: {0}")]
    Upstream(String),
    /// The upstream did not answer in time (HTTP 504).
    #[error("upstream model timed out")]
    Timeout,
}

/// What a failed upstream call may have cost, for billing: whether the request reached the
/// upstream and how much of it the upstream may have worked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Provably never reached an upstream, or refused before any work: no connection could be
    /// made, or the upstream answered with a 4xx status (a refusal, 429 included).
    Nothing,
    /// The upstream read the request and answered with an error (5xx): the prompt may have been
    /// processed, no answer was generated.
    Prompt,
    /// The outcome is unknown (a timeout, a connection cut, an unreadable answer): the upstream
    /// may have generated a whole answer.
    Unknown,
}

/// A failed call, classified for [`resilient::ResilientChat`]: whether it may be retried on the
/// same upstream, and what it may have cost.
#[derive(Debug)]
pub enum Attempt {
    /// Retry may help: the upstream answered 429 or 5xx, or the connection failed before any
    /// response. `retry_after`: the upstream's `Retry-After`, when known.
    Retryable {
        /// The error.
        error: LlmError,
        /// How long the upstream asked to wait.
        retry_after: Option<std::time::Duration>,
        /// What the call may have cost ([`Cost::Nothing`] for 429 and connect failures,
        /// [`Cost::Prompt`] for 5xx).
        cost: Cost,
    },
    /// The upstream failed in a way not worth retrying on it (e.g. a timeout: it may still be
    /// working on the request), but another upstream may answer. Its cost is unknown.
    Failed(LlmError),
    /// The request itself is at fault (4xx other than 429, or it could not be built): no retry,
    /// no fallback, no cost.
    Fatal(LlmError),
}

impl Attempt {
    /// The error, whatever its class.
    pub fn into_error(self) -> LlmError {
        match self {
            Self::Retryable { error, .. } => error,
            Self::Failed(e) | Self::Fatal(e) => e,
        }
    }

    /// What the failed call may have cost.
    pub fn cost(&self) -> Cost {
        match self {
            Self::Retryable { cost, .. } => *cost,
            Self::Failed(_) => Cost::Unknown,
            Self::Fatal(_) => Cost::Nothing,
        }
    }
}

/// Told about the upstream calls one request makes, so that each is paid for: every failed
/// call with what it may have cost, and, before every call after the first (a retry or a
/// fallback), asked whether one more may be made.
#[async_trait]
pub trait Attempts: Send + Sync {
    /// A call failed with `cost`.
    async fn failed(&self, cost: Cost);
    /// Another call is about to be made: whether it may.
    async fn another(&self) -> bool;
}

/// No accounting: every call may be made.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unmetered;

#[async_trait]
impl Attempts for Unmetered {
    async fn failed(&self, _: Cost) {}
    async fn another(&self) -> bool {
        true
    }
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text (empty for an assistant message that only calls tools, whose
    /// `content` is null on the wire).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    /// The other fields of a tool round trip, passed to the upstream as sent: an assistant
    /// message's `tool_calls`, a `tool` message's `tool_call_id`, a `name`.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl Serialize for Message {
    /// `role`, `content` (null for an assistant message with `tool_calls` and no text, as
    /// OpenAI writes it), then the other fields.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(2 + self.extra.len()))?;
        map.serialize_entry("role", &self.role)?;
        if self.content.is_empty() && self.extra.contains_key("tool_calls") {
            map.serialize_entry("content", &())?;
        } else {
            map.serialize_entry("content", &self.content)?;
        }
        for (k, v) in &self.extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
            extra: serde_json::Map::new(),
        }
    }
}

/// One completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// Model to call.
    pub model: String,
    /// Conversation, system prompt first.
    pub messages: Vec<Message>,
    /// Most completion tokens to generate.
    pub max_tokens: u32,
    /// The retrieved passages the messages were built from (for responders that answer from
    /// them directly); best first.
    pub passages: Vec<String>,
    /// Parameters passed to the upstream as they are (`temperature`, `top_p`, `stop`, `seed`,
    /// `tools`, `tool_choice`, `response_format`, ...), already validated by the API.
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// Token usage of one completion.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[schemars(rename = "TokenUsage")]
pub struct Usage {
    /// Tokens of the prompt (the whole conversation sent).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

/// One completion.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatResponse {
    /// The answer text (empty when the model only calls tools).
    pub content: String,
    /// The tool calls the model asks for, as the upstream sent them.
    pub tool_calls: Option<serde_json::Value>,
    /// The model's refusal, when it refused (structured outputs).
    pub refusal: Option<String>,
    /// Model that answered.
    pub model: String,
    /// Why generation stopped (`stop`, `length`, ...).
    pub finish_reason: String,
    /// Tokens used.
    pub usage: Usage,
}

/// One event of a streamed completion.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// The model answering, as soon as it is known (before the first delta, at most once).
    Model(String),
    /// More answer text.
    Delta(String),
    /// Tool-call deltas (the `tool_calls` of a streamed delta), as the upstream sent them.
    ToolCalls(serde_json::Value),
    /// More of the model's refusal.
    Refusal(String),
    /// The end of the answer: the model that answered, why it stopped, and the usage when the
    /// upstream reported it.
    Done {
        /// Model that answered.
        model: String,
        /// `stop`, `length`, ...
        finish_reason: String,
        /// Tokens used, when reported.
        usage: Option<Usage>,
    },
}

/// A streamed completion: optionally the [`Chunk::Model`], deltas, then one [`Chunk::Done`]; an
/// error ends it early.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<Chunk, LlmError>> + Send>>;

/// A whole answer as a stream (for models that do not stream).
pub fn one_shot(resp: ChatResponse) -> ChatStream {
    let mut chunks = Vec::with_capacity(3);
    chunks.push(Ok(Chunk::Model(resp.model.clone())));
    if !resp.content.is_empty() {
        chunks.push(Ok(Chunk::Delta(resp.content)));
    }
    if let Some(refusal) = resp.refusal {
        chunks.push(Ok(Chunk::Refusal(refusal)));
    }
    if let Some(calls) = resp.tool_calls.as_ref().and_then(indexed_tool_calls) {
        chunks.push(Ok(Chunk::ToolCalls(calls)));
    }
    chunks.push(Ok(Chunk::Done {
        model: resp.model,
        finish_reason: resp.finish_reason,
        usage: Some(resp.usage),
    }));
    Box::pin(futures::stream::iter(chunks))
}

/// The `tool_calls` of a whole answer as one stream delta: each call with its `index`.
fn indexed_tool_calls(calls: &serde_json::Value) -> Option<serde_json::Value> {
    let calls: Vec<serde_json::Value> = calls
        .as_array()?
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut c = c.clone();
            if let Some(o) = c.as_object_mut() {
                o.entry("index").or_insert(serde_json::Value::from(i));
            }
            c
        })
        .collect();
    Some(serde_json::Value::Array(calls))
}

/// A chat-completion model.
#[async_trait]
pub trait ChatModel: Send + Sync + 'static {
    /// Whether this is the offline responder (answers name the model `extractive`).
    fn offline(&self) -> bool {
        false
    }
    /// Generates an answer.
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError>;
    /// Like [`ChatModel::complete`], with failures classified for retries and fallbacks. The
    /// default treats a timeout as [`Attempt::Failed`] and any other error as retryable.
    async fn attempt(&self, request: ChatRequest) -> Result<ChatResponse, Attempt> {
        self.complete(request).await.map_err(|e| match e {
            LlmError::Timeout => Attempt::Failed(e),
            e => Attempt::Retryable {
                error: e,
                retry_after: None,
                cost: Cost::Prompt,
            },
        })
    }
    /// Streams an answer. Returns once the upstream accepted the request (so refusals are
    /// errors here, not in the stream). The default streams [`ChatModel::complete`]'s answer
    /// in one piece.
    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LlmError> {
        self.stream_attempt(request)
            .await
            .map_err(Attempt::into_error)
    }
    /// Like [`ChatModel::stream`], with failures classified as in [`ChatModel::attempt`].
    async fn stream_attempt(&self, request: ChatRequest) -> Result<ChatStream, Attempt> {
        self.attempt(request).await.map(one_shot)
    }
    /// Like [`ChatModel::complete`], telling `attempts` about every upstream call (and asking
    /// it before every retry or fallback). The default makes one call.
    async fn complete_metered(
        &self,
        request: ChatRequest,
        attempts: &dyn Attempts,
    ) -> Result<ChatResponse, LlmError> {
        match self.attempt(request).await {
            Ok(resp) => Ok(resp),
            Err(a) => {
                attempts.failed(a.cost()).await;
                Err(a.into_error())
            }
        }
    }
    /// Like [`ChatModel::stream`], metered as [`ChatModel::complete_metered`].
    async fn stream_metered(
        &self,
        request: ChatRequest,
        attempts: &dyn Attempts,
    ) -> Result<ChatStream, LlmError> {
        match self.stream_attempt(request).await {
            Ok(stream) => Ok(stream),
            Err(a) => {
                attempts.failed(a.cost()).await;
                Err(a.into_error())
            }
        }
    }
}
