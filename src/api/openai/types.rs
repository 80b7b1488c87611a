//! Wire types of the OpenAI-compatible surface: request bodies as clients send them, response
//! bodies and stream chunks as OpenAI answers them (plus tenantry's `tenantry` extension).
//!
//! The responses are our own structs rather than async-openai's: those serialize fields we do
//! not send (`service_tier`, `system_fingerprint`, `null` tool calls in every delta) and skip
//! `logprobs: null`, which OpenAI always sends; ours keep the exact shape clients have seen.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::opt_int;
use crate::domain::MAX_TOP_K;
use crate::llm::Usage;
use crate::rag::Source;

/// `tenantry` extension of a completion request.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// Add the passages retrieved for the last user message (default: the tenant's
    /// `retrieval.augmentCompletions`).
    #[serde(default)]
    pub rag: Option<bool>,
    /// Passages to retrieve (1..=50; default: the tenant's `retrieval.topK`).
    #[serde(default, deserialize_with = "opt_int")]
    #[schemars(range(min = 1, max = MAX_TOP_K))]
    pub top_k: Option<i32>,
}

/// One message of a completion request's conversation, as sent. Fields are optional here so
/// that validation can name the one at fault; the document describes the messages clients
/// may send, which is all validation lets through (other fields pass only when null).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(
    deny_unknown_fields,
    extend(
        "required" = ["role"],
        "allOf" = [
            {
                "if": {"required": ["role"], "properties": {"role": {"enum": ["system", "developer", "user", "tool"]}}},
                "then": {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}}
            },
            {
                "if": {"required": ["role"], "properties": {"role": {"const": "tool"}}},
                "then": {"required": ["tool_call_id"], "properties": {"tool_call_id": {"type": "string"}}}
            }
        ]
    )
)]
pub struct RequestMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool` (others are refused).
    #[serde(default)]
    #[schemars(
        with = "String",
        extend("enum" = ["system", "developer", "user", "assistant", "tool"])
    )]
    pub role: Option<String>,
    /// The text, as a string or as text parts; required but for an assistant message with
    /// `tool_calls`, where it may be null.
    #[serde(default)]
    #[schemars(with = "Option<MessageContent>")]
    pub content: Option<MessageContent>,
    /// The author's name (accepted, not used).
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant message's tool calls (as the model asked for them), passed through.
    #[serde(default)]
    #[schemars(with = "Option<Vec<crate::api::openapi::ToolCall>>")]
    pub tool_calls: Option<Value>,
    /// A `tool` message's answer to this tool call id (required for `tool` messages).
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// An assistant message's refusal (structured outputs), passed through.
    #[serde(default)]
    pub refusal: Option<String>,
    /// Every other field: refused unless null (e.g. `function_call`).
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, Value>,
}

/// The `content` of a request message.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(
    untagged,
    expecting = "content must be a string or an array of text parts"
)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts; only `text` parts are supported.
    Parts(Vec<ContentPart>),
}

/// One part of a request message's `content` (documented as the `text` part validation
/// requires; the fields are optional here so that validation can name the one at fault).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(extend("required" = ["type", "text"]))]
pub struct ContentPart {
    /// The part's kind: `text` (others, such as `image_url`, are refused).
    #[serde(rename = "type", default)]
    #[schemars(with = "String", extend("const" = "text"))]
    pub kind: Option<String>,
    /// The text of a `text` part.
    #[serde(default)]
    #[schemars(with = "String")]
    pub text: Option<String>,
}

/// Body of `POST /v1/chat/completions` (OpenAI's parameters that apply to text chat). Loosely
/// typed fields (`Value`) are validated by hand so that errors name the parameter; the document
/// carries the shapes that validation accepts, and `stream_options` only with `stream: true`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[schemars(
    rename = "CompletionRequest",
    deny_unknown_fields,
    extend(
        "if" = {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
        "then" = {"required": ["stream"], "properties": {"stream": {"const": true}}}
    )
)]
pub struct CompletionBody {
    /// Chat model; the tenant's default when absent.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    #[schemars(length(min = 1))]
    pub messages: Vec<RequestMessage>,
    /// Answer with server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options (`include_usage`: send a last chunk with the usage of the whole
    /// request; other options are ignored).
    #[serde(default)]
    #[schemars(with = "Option<crate::api::openapi::StreamOptions>")]
    pub stream_options: Option<Value>,
    /// Most completion tokens (legacy name); lowered to the server's `llm.maxTokens` when
    /// above it.
    #[serde(default, deserialize_with = "opt_int")]
    #[schemars(range(min = 1, max = i64::MAX))]
    pub max_tokens: Option<u64>,
    /// Most completion tokens.
    #[serde(default, deserialize_with = "opt_int")]
    #[schemars(range(min = 1, max = i64::MAX))]
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature, 0..=2.
    #[serde(default)]
    #[schemars(range(min = 0, max = 2))]
    pub temperature: Option<f64>,
    /// Nucleus sampling, 0..=1.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1))]
    pub top_p: Option<f64>,
    /// Choices to generate; only 1 is supported.
    #[serde(default, deserialize_with = "opt_int")]
    #[schemars(extend("enum" = [1, null]))]
    pub n: Option<u32>,
    /// Stop sequence(s): a string or up to 4 strings.
    #[serde(default)]
    #[schemars(with = "Option<crate::api::openapi::Stop>")]
    pub stop: Option<Value>,
    /// Sampling seed.
    #[serde(default, deserialize_with = "opt_int")]
    #[schemars(range(min = i64::MIN, max = i64::MAX))]
    pub seed: Option<i64>,
    /// Presence penalty, -2..=2.
    #[serde(default)]
    #[schemars(range(min = -2, max = 2))]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty, -2..=2.
    #[serde(default)]
    #[schemars(range(min = -2, max = 2))]
    pub frequency_penalty: Option<f64>,
    /// Tools the model may call (`type: function`), passed through.
    #[serde(default)]
    #[schemars(with = "Option<Vec<crate::api::openapi::Tool>>")]
    pub tools: Option<Value>,
    /// Which tool the model must call: `none`, `auto`, `required` or
    /// `{"type": "function", "function": {"name": ...}}`; only with `tools`.
    #[serde(default)]
    #[schemars(with = "Option<crate::api::openapi::ToolChoice>")]
    pub tool_choice: Option<Value>,
    /// Whether the model may call several tools at once (passed through with `tools`).
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub parallel_tool_calls: Option<Value>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or
    /// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`, passed through.
    #[serde(default)]
    #[schemars(with = "Option<crate::api::openapi::ResponseFormat>")]
    pub response_format: Option<Value>,
    /// tenantry's own options (an [`Extension`]).
    #[serde(default)]
    #[schemars(with = "Option<Extension>")]
    pub tenantry: Option<Value>,
    /// Everything else: refused unless null or harmless (the harmless ones are documented).
    #[serde(flatten)]
    #[schemars(with = "crate::api::openapi::IgnoredParams")]
    pub other: BTreeMap<String, Value>,
}

/// Token usage as OpenAI reports it.
#[derive(Debug, Clone, Copy, Serialize, schemars::JsonSchema)]
pub struct WireUsage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

impl From<Usage> for WireUsage {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// The answer's message in a [`ChatCompletion`].
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The answer text; null when the model only calls tools.
    pub content: Option<String>,
    /// The model's refusal (structured outputs), as the upstream sent it; else null.
    pub refusal: Option<String>,
    /// The tools the model calls, as the upstream sent them (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Vec<crate::api::openapi::AnswerToolCall>>")]
    pub tool_calls: Option<Value>,
}

/// The one choice of a [`ChatCompletion`].
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Choice {
    /// Always 0 (only `n = 1` is supported).
    pub index: u32,
    /// The answer.
    pub message: AssistantMessage,
    /// Always null (not supported).
    pub logprobs: Option<()>,
    /// Why generation stopped (`stop`, `length`, `tool_calls`, ...).
    pub finish_reason: String,
}

/// tenantry's additions to a completion: whether it came from the semantic cache, and the
/// passages retrieved for it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CompletionExtras {
    /// Whether the answer came from the semantic cache.
    pub cached: bool,
    /// Passages added to the conversation, best first.
    pub sources: Vec<Source>,
}

/// A `chat.completion` object.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-<uuid>`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix time of the answer.
    pub created: u64,
    /// Model that answered.
    pub model: String,
    /// The answer.
    pub choices: Vec<Choice>,
    /// Tokens used (zero for a cache hit).
    pub usage: WireUsage,
    /// tenantry's additions.
    pub tenantry: CompletionExtras,
}

/// The `delta` of a [`ChunkChoice`]: the role first, then text, tool calls or a refusal.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// More answer text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// More of the model's refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Tool-call deltas, as the upstream sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
}

/// The one choice of a [`CompletionChunk`].
#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    /// Always 0.
    pub index: u32,
    /// What this chunk adds.
    pub delta: Delta,
    /// Always null (not supported).
    pub logprobs: Option<()>,
    /// Why generation stopped, in the last chunk of the answer.
    pub finish_reason: Option<String>,
}

/// A `chat.completion.chunk` event of a streamed completion.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChunk {
    /// The same for every chunk of a completion.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix time of the completion's start.
    pub created: u64,
    /// Model that answers.
    pub model: String,
    /// One choice, or none in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// With `include_usage`: null in every chunk but the last, which carries the usage of the
    /// whole request; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<WireUsage>>,
    /// On the first chunk only: whether the answer comes from the semantic cache, and the
    /// passages retrieved for it (as on a `chat.completion`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenantry: Option<CompletionExtras>,
}

/// One model of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Model {
    /// The model's name.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Always 0 (unknown).
    pub created: u64,
    /// Always `tenantry`.
    pub owned_by: &'static str,
}

/// An OpenAI list object (`GET /v1/models`, `POST /v1/embeddings`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "List_of_{T}")]
pub struct List<T> {
    /// Always `list`.
    pub object: &'static str,
    /// The items.
    pub data: Vec<T>,
    /// Model that made the items (embeddings only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Tokens used (embeddings only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<EmbeddingUsage>,
}

/// Body of `POST /v1/embeddings`. The document lists the one model and dimension the server
/// accepts, filled in when the document is built.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "EmbeddingsRequest")]
pub struct EmbeddingsBody {
    /// A string or an array of strings, or token ids (an array, or an array of arrays).
    #[schemars(with = "crate::api::openapi::EmbeddingInput")]
    pub input: Value,
    /// The embedding model; `serve`'s when absent.
    #[serde(default)]
    pub model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32).
    #[serde(default)]
    #[schemars(extend("enum" = ["float", "base64", null]))]
    pub encoding_format: Option<String>,
    /// Must equal the model's dimension when given.
    #[serde(default, deserialize_with = "opt_int")]
    pub dimensions: Option<usize>,
    /// The end user (accepted, not used).
    #[serde(default)]
    pub user: Option<String>,
}

/// One vector of a `POST /v1/embeddings` answer.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: &'static str,
    /// Position of the input it embeds.
    pub index: usize,
    /// The vector.
    pub embedding: EmbeddingVector,
}

/// A vector as floats, or base64 of its little-endian f32s.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// `encoding_format: float`: each f32 written as the f64 it widens to, so that it equals
    /// what a client decodes from the base64 form.
    Float(Vec<f64>),
    /// `encoding_format: base64`.
    Base64(String),
}

/// Tokens used by `POST /v1/embeddings`.
#[derive(Debug, Clone, Copy, Serialize, schemars::JsonSchema)]
pub struct EmbeddingUsage {
    /// Tokens of the inputs.
    pub prompt_tokens: u64,
    /// The same (nothing is generated).
    pub total_tokens: u64,
}
