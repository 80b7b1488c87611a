//! The OpenAPI 3.1 document served at `GET /openapi.json`. Paths, status codes, headers and the
//! security scheme are a table written here; every request and response body schema is derived
//! (JSON Schema 2020-12, which OpenAPI 3.1 uses) from the type the handler reads or writes, so
//! the document follows the code. Where a handler builds its body as JSON rather than from a
//! type, a documentation-only type below describes that body.
use std::collections::BTreeMap;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::transform::ReplaceUnevaluatedProperties;
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use super::chat::{ChatAnswer, ChatBody};
use super::documents::{IngestRequest, IngestResponse};
use super::openai::types::{ChatCompletion, Embedding, EmbeddingsBody, List, Model};
use crate::documents::{DocumentInfo, StoredDocument};

/// The error body of every failed request, as `ApiError::body` builds it (a rate-limited
/// answer adds `limit`, the limit hit).
#[derive(JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[schemars(rename = "Error")]
#[allow(
    dead_code,
    reason = "describes a body built as JSON; never constructed"
)]
struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[allow(
    dead_code,
    reason = "describes a body built as JSON; never constructed"
)]
struct ErrorDetail {
    /// Stable machine-readable code.
    code: String,
    /// What went wrong, for people.
    message: String,
    /// Class, as OpenAI names them.
    #[schemars(rename = "type")]
    #[cfg_attr(test, serde(rename = "type"))]
    kind: ErrorType,
    /// The request parameter at fault, when one is.
    param: Option<String>,
}

/// Error classes, as OpenAI names them.
#[derive(JsonSchema)]
#[cfg_attr(test, derive(serde::Deserialize))]
#[schemars(rename_all = "snake_case")]
#[cfg_attr(test, serde(rename_all = "snake_case"))]
#[allow(
    dead_code,
    reason = "describes a body built as JSON; never constructed"
)]
#[allow(clippy::enum_variant_names, reason = "the names OpenAI gives them")]
enum ErrorType {
    AuthenticationError,
    PermissionError,
    NotFoundError,
    InvalidRequestError,
    RateLimitError,
    UpstreamError,
    ServerError,
}

/// The caller's usage in the current windows, its limits and reset times (`GET /v1/usage`).
#[derive(JsonSchema)]
#[schemars(rename = "Usage")]
#[allow(
    dead_code,
    reason = "describes a body built as JSON; never constructed"
)]
struct UsageReport {
    /// Tenant of the caller.
    tenant_id: String,
    /// Where the counters live.
    backend: QuotaBackend,
    /// Unix seconds.
    now: u64,
    /// Tokens charged this UTC day, in-flight estimates included.
    tokens_today: u64,
    /// Requests started this minute.
    requests_this_minute: u64,
    /// Tokens charged this minute.
    tokens_this_minute: u64,
    /// Requests being answered now.
    in_flight: u64,
    /// What each limit has used.
    usage: PerLimit,
    /// Each limit's value.
    limits: PerLimitOrNone,
    /// What is left of each limit.
    remaining: PerLimitOrNone,
    /// Unix seconds when each window resets (the concurrency limit has no window).
    resets_at: BTreeMap<String, u64>,
    /// What the tenant stores, and its storage limits.
    storage: StorageReport,
}

/// Stored documents and bytes against the storage limits.
#[derive(JsonSchema)]
#[allow(
    dead_code,
    reason = "describes a body built as JSON; never constructed"
)]
struct StorageReport {
    /// Documents stored.
    documents: u64,
    /// Bytes of document text stored.
    bytes: u64,
    /// `maxDocuments` (null: no limit).
    max_documents: Option<u64>,
    /// `maxStoredBytes` (null: no limit).
    max_stored_bytes: Option<u64>,
}

/// One number per quota limit.
#[derive(JsonSchema)]
#[allow(
    dead_code,
    reason = "describes a body built as JSON; never constructed"
)]
struct PerLimit {
    /// Tokens per UTC day.
    daily_tokens: u64,
    /// Requests per minute.
    requests_per_minute: u64,
    /// Tokens per minute.
    tokens_per_minute: u64,
    /// Requests at once.
    concurrent_requests: u64,
}

/// One number per quota limit; null for a limit the tenant does not have.
#[derive(JsonSchema)]
#[allow(
    dead_code,
    reason = "describes a body built as JSON; never constructed"
)]
struct PerLimitOrNone {
    /// Tokens per UTC day.
    daily_tokens: Option<u64>,
    /// Requests per minute.
    requests_per_minute: Option<u64>,
    /// Tokens per minute.
    tokens_per_minute: Option<u64>,
    /// Requests at once.
    concurrent_requests: Option<u64>,
}

/// The quota store's kind.
#[derive(JsonSchema)]
#[schemars(rename_all = "kebab-case")]
#[allow(
    dead_code,
    reason = "describes a body built as JSON; never constructed"
)]
enum QuotaBackend {
    Redis,
    InProcess,
}

/// A page of the caller's documents (`GET /v1/documents`).
#[derive(JsonSchema)]
#[allow(
    dead_code,
    reason = "describes a body built as JSON; never constructed"
)]
struct DocumentList {
    /// Tenant of the caller.
    tenant_id: String,
    /// This page of documents.
    documents: Vec<DocumentInfo>,
    /// Cursor of the next page; null on the last.
    #[schemars(extend("format" = "uuid"))]
    next_cursor: Option<String>,
}

/// `stream_options` of a completion request, as validation accepts it.
#[derive(JsonSchema)]
#[allow(
    dead_code,
    reason = "documents a field read as JSON; never constructed"
)]
pub(crate) struct StreamOptions {
    /// Send a last chunk with the usage of the whole request.
    include_usage: Option<bool>,
}

/// `stop` of a completion request: a string or up to 4 strings.
#[derive(JsonSchema)]
#[schemars(untagged)]
#[allow(
    dead_code,
    reason = "documents a field read as JSON; never constructed"
)]
pub(crate) enum Stop {
    One(String),
    Many(#[schemars(length(max = 4))] Vec<String>),
}

/// OpenAI parameters a completion request may carry that tenantry accepts and ignores.
#[derive(JsonSchema)]
#[allow(dead_code, reason = "documents fields read as JSON; never constructed")]
pub(crate) struct IgnoredParams {
    /// Accepted and ignored.
    user: Option<Value>,
    /// Accepted and ignored.
    store: Option<Value>,
    /// Accepted and ignored.
    metadata: Option<Value>,
    /// Accepted and ignored.
    service_tier: Option<Value>,
}

/// A tool a completion request offers the model (passed through; other fields too).
#[derive(JsonSchema)]
#[allow(dead_code, reason = "documents fields read as JSON; never constructed")]
pub(crate) struct Tool {
    /// Always `function`.
    #[schemars(rename = "type", extend("const" = "function"))]
    kind: String,
    /// The function.
    function: FunctionDef,
}

/// A function the model may call.
#[derive(JsonSchema)]
#[allow(dead_code, reason = "documents fields read as JSON; never constructed")]
pub(crate) struct FunctionDef {
    /// 1 to 64 letters, digits, `_` or `-`.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9_-]{1,64}$"))]
    name: String,
    /// What the function does.
    description: Option<String>,
    /// Its parameters, as a JSON Schema object.
    parameters: Option<Map<String, Value>>,
    /// Whether the model must follow `parameters` exactly.
    strict: Option<bool>,
}

/// `tool_choice`: a mode, or the one function to call.
#[derive(JsonSchema)]
#[schemars(untagged)]
#[allow(dead_code, reason = "documents fields read as JSON; never constructed")]
pub(crate) enum ToolChoice {
    /// `none`, `auto` or `required`.
    Mode(#[schemars(extend("enum" = ["none", "auto", "required"]))] String),
    /// `{"type": "function", "function": {"name": ...}}`.
    Named(NamedToolChoice),
}

/// A `tool_choice` naming the function to call.
#[derive(JsonSchema)]
#[allow(dead_code, reason = "documents fields read as JSON; never constructed")]
pub(crate) struct NamedToolChoice {
    /// Always `function`.
    #[schemars(rename = "type", extend("const" = "function"))]
    kind: String,
    /// The function.
    function: ToolName,
}

/// The name of a function.
#[derive(JsonSchema)]
#[allow(dead_code, reason = "documents fields read as JSON; never constructed")]
pub(crate) struct ToolName {
    /// Its name.
    name: String,
}

/// A tool call of an assistant message (as the model asked for it).
#[derive(JsonSchema)]
#[allow(dead_code, reason = "documents fields read as JSON; never constructed")]
pub(crate) struct ToolCall {
    /// The call's id (a `tool` message answers it).
    id: String,
    /// Always `function`.
    #[schemars(rename = "type", extend("const" = "function"))]
    kind: String,
    /// The function called.
    function: FunctionCall,
}

/// The function of a [`ToolCall`].
#[derive(JsonSchema)]
#[allow(dead_code, reason = "documents fields read as JSON; never constructed")]
pub(crate) struct FunctionCall {
    /// Its name.
    name: String,
    /// Its arguments, as JSON text.
    arguments: String,
}

/// A tool call of an answer, as the upstream sent it (the response's own name for
/// [`ToolCall`]: requests and responses do not share schemas).
#[derive(JsonSchema)]
#[allow(
    dead_code,
    reason = "documents fields written as JSON; never constructed"
)]
pub(crate) struct AnswerToolCall {
    /// The call's id (a `tool` message answers it).
    id: String,
    /// Always `function`.
    #[schemars(rename = "type", extend("const" = "function"))]
    kind: String,
    /// The function called.
    function: AnswerFunctionCall,
}

/// The function of an [`AnswerToolCall`].
#[derive(JsonSchema)]
#[allow(
    dead_code,
    reason = "documents fields written as JSON; never constructed"
)]
pub(crate) struct AnswerFunctionCall {
    /// Its name.
    name: String,
    /// Its arguments, as JSON text.
    arguments: String,
}

/// `response_format` of a completion request (passed through; other fields too).
#[derive(JsonSchema)]
#[schemars(tag = "type", rename_all = "snake_case")]
#[allow(dead_code, reason = "documents fields read as JSON; never constructed")]
pub(crate) enum ResponseFormat {
    /// Text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON following a schema (structured outputs).
    JsonSchema {
        /// The schema.
        json_schema: JsonSchemaFormat,
    },
}

/// The `json_schema` of a `response_format`.
#[derive(JsonSchema)]
#[allow(dead_code, reason = "documents fields read as JSON; never constructed")]
pub(crate) struct JsonSchemaFormat {
    /// 1 to 64 letters, digits, `_` or `-`.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9_-]{1,64}$"))]
    name: String,
    /// What the format is for.
    description: Option<String>,
    /// The JSON Schema the answer follows.
    schema: Option<Map<String, Value>>,
    /// Whether the model must follow it exactly.
    strict: Option<bool>,
}

/// `input` of an embeddings request: a non-empty string or 1 to 2048 of them, or token
/// arrays (cl100k_base text token ids, as OpenAI clients send them): one, or 1 to 2048.
#[derive(JsonSchema)]
#[schemars(untagged)]
#[allow(
    dead_code,
    reason = "documents a field read as JSON; never constructed"
)]
pub(crate) enum EmbeddingInput {
    One(#[schemars(length(min = 1))] String),
    Many(#[schemars(length(min = 1, max = 2048), inner(length(min = 1)))] Vec<String>),
    Tokens(#[schemars(length(min = 1))] Vec<TokenId>),
    TokenArrays(#[schemars(length(min = 1, max = 2048))] Vec<TokenArray>),
}

/// A cl100k_base text token id.
#[derive(JsonSchema)]
#[allow(
    dead_code,
    reason = "documents a field read as JSON; never constructed"
)]
pub(crate) struct TokenId(#[schemars(range(min = 0, max = 100_255))] u32);

/// A non-empty array of token ids.
#[derive(JsonSchema)]
#[allow(
    dead_code,
    reason = "documents a field read as JSON; never constructed"
)]
pub(crate) struct TokenArray(#[schemars(length(min = 1))] Vec<TokenId>);

/// Builds the document: the schema generators (request bodies as they are read, responses as
/// they are written) and the error reference every failure points at.
struct Builder {
    requests: SchemaGenerator,
    responses: SchemaGenerator,
    error: Schema,
}

impl Builder {
    fn new() -> Self {
        let settings = |s: SchemaSettings| {
            s.with(|s| {
                s.definitions_path = "/components/schemas".into();
                s.meta_schema = None;
            })
            // `additionalProperties: false` rather than `unevaluatedProperties` for types with
            // flattened fields: the former is what fuzzers and code generators understand.
            .with_transform(ReplaceUnevaluatedProperties::default())
        };
        let mut responses =
            settings(SchemaSettings::draft2020_12().for_serialize()).into_generator();
        let error = responses.subschema_for::<ErrorBody>();
        Self {
            requests: settings(SchemaSettings::draft2020_12().for_deserialize()).into_generator(),
            responses,
            error,
        }
    }

    /// A required JSON request body of type `T`.
    fn body<T: JsonSchema>(&mut self) -> Value {
        json!({"required": true, "content": {"application/json": {"schema": self.requests.subschema_for::<T>()}}})
    }

    /// A JSON response of type `T`.
    fn ok<T: JsonSchema>(&mut self, description: &str) -> Value {
        json!({"description": description, "content": {"application/json": {"schema": self.responses.subschema_for::<T>()}}})
    }

    /// An error response.
    fn err(&self, description: &str) -> Value {
        json!({"description": description, "content": {"application/json": {"schema": self.error}}})
    }

    /// `429`: the error, with the rate-limit headers.
    fn rate_limited(&self) -> Value {
        let int = |d: &str| json!({"description": d, "schema": {"type": "integer"}});
        json!({
            "description": "A quota or rate limit would be exceeded; `error.limit` names it",
            "headers": {
                "Retry-After": int("Seconds until the limit's window resets"),
                "X-RateLimit-Limit": int("Value of the limit hit"),
                "X-RateLimit-Remaining": int("What is left of it"),
                "X-RateLimit-Reset": int("Seconds until it resets"),
                "X-Should-Retry": {"description": "`false` when the daily token budget is spent (`insufficient_quota`): retrying before midnight UTC cannot succeed", "schema": {"type": "string", "enum": ["false"]}},
            },
            "content": {"application/json": {"schema": self.error}},
        })
    }

    /// The responses of an authenticated operation: `responses` plus the statuses every such
    /// operation may answer (an entry in `responses` wins).
    fn authed(&self, responses: Vec<(&str, Value)>) -> Value {
        let mut all = BTreeMap::from([
            ("401".to_string(), self.err("Missing, malformed, expired or wrongly signed token")),
            ("403".to_string(), self.err("Tenant suspended")),
            (
                "503".to_string(),
                self.err("A dependency is unavailable (`quota_unavailable`: the quota store, with failClosed)"),
            ),
        ]);
        all.extend(responses.into_iter().map(|(k, v)| (k.to_string(), v)));
        // In status order, whatever order the map keeps.
        Value::Object(all.into_iter().collect())
    }

    /// The failures of a JSON-bodied model call.
    fn model_call_errors(&self, not_found: &str) -> Vec<(&'static str, Value)> {
        vec![
            ("404", self.err(not_found)),
            ("413", self.err("Body too large")),
            ("415", self.err("Body is not JSON")),
            ("429", self.rate_limited()),
        ]
    }

    /// `/v1/chat` and `/v1/chat/completions`.
    fn chat_paths(&mut self) -> Value {
        let x_cache = json!({"X-Cache": {"description": "`hit` when the answer came from the tenant's semantic cache, `miss` otherwise", "schema": {"type": "string", "enum": ["hit", "miss"]}}, "X-Cache-Match": {"description": "On a hit: `exact` when the question itself was cached (answered without embedding it), `similar` when a similar question's answer was (the question is then cached too, so its next repeat is exact)", "schema": {"type": "string", "enum": ["exact", "similar"]}}});
        let mut answer = self.ok::<ChatAnswer>("Answer");
        answer["headers"] = x_cache.clone();
        let completion = self.responses.subschema_for::<ChatCompletion>();
        let upstream = [
            ("502", self.err("Upstream model failed")),
            ("504", self.err("Upstream model timed out")),
        ];
        let mut chat = self.model_call_errors(
            "The model does not exist or is not allowed for this tenant (`model_not_found`)",
        );
        chat.extend([("200", answer), ("422", self.err("Invalid body"))]);
        chat.extend(upstream.clone());
        let mut completions = self.model_call_errors(
            "The model does not exist or is not allowed for this tenant (`model_not_found`)",
        );
        completions.extend([
            ("200", json!({
                "description": "A `chat.completion` object, or an event stream ending with `data: [DONE]`",
                "headers": x_cache,
                "content": {
                    "application/json": {"schema": completion},
                    "text/event-stream": {"schema": {"type": "object", "required": ["data"], "properties": {"data": {"type": "string", "description": "A `chat.completion.chunk` as JSON, an `{\"error\"}` object, or `[DONE]`"}}}},
                },
            })),
            ("400", self.err("Invalid request (`error.param` names the parameter)")),
        ]);
        completions.extend(upstream);
        json!({
            "/v1/chat": {"post": {
                "summary": "Answer a question from the tenant's documents",
                "requestBody": self.body::<ChatBody>(),
                "responses": self.authed(chat),
            }},
            "/v1/chat/completions": {"post": {
                "summary": "OpenAI-compatible chat completion (JSON, or server-sent `chat.completion.chunk` events with `stream: true`)",
                "description": "OpenAI's request and response shapes; an OpenAI SDK works with `base_url=<endpoint>/v1` and the tenant JWT as API key. Text messages (no images), tools and tool round trips, response formats (passed through to the upstream), n = 1. The `tenantry` object decides retrieval (`rag`, `top_k`); responses carry `tenantry.cached` and `tenantry.sources`. Invalid requests are 400 here.",
                "requestBody": self.body::<super::openai::types::CompletionBody>(),
                "responses": self.authed(completions),
            }},
        })
    }

    /// `/v1/models`, `/v1/models/{model}` and `/v1/embeddings`.
    fn openai_paths(&mut self) -> Value {
        let mut embeddings = self
            .model_call_errors("Not the embedding model this server serves (`model_not_found`)");
        embeddings.extend([
            ("200", self.ok::<List<Embedding>>("`{\"object\": \"list\", \"data\": [{\"object\": \"embedding\", \"index\", \"embedding\"}], \"model\", \"usage\"}`")),
            ("400", self.err("Invalid request (`error.param` names the parameter)")),
        ]);
        let models = self.ok::<List<Model>>("`{\"object\": \"list\", \"data\": [model]}`");
        let model = self.ok::<Model>("The model");
        json!({
            "/v1/models": {"get": {
                "summary": "The models this tenant may use (chat models, then the embedding model)",
                "responses": self.authed(vec![("200", models)]),
            }},
            "/v1/models/{model}": {"get": {
                "summary": "One model, if this tenant may use it",
                "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": self.authed(vec![
                    ("200", model),
                    ("404", self.err("Not available to this tenant")),
                ]),
            }},
            "/v1/embeddings": {"post": {
                "summary": "OpenAI-compatible embeddings with serve's embedding model (charged to the tenant's tokens)",
                "requestBody": self.body::<EmbeddingsBody>(),
                "responses": self.authed(embeddings),
            }},
        })
    }

    /// `/v1/documents`, `/v1/documents/{id}` and `/v1/usage`.
    fn document_paths(&mut self) -> Value {
        let bad_body = [
            ("413", self.err("Body too large")),
            ("415", self.err("Body is not JSON")),
            ("422", self.err("Invalid body")),
        ];
        let mut ingest = vec![
            ("201", self.ok::<IngestResponse>("Stored")),
            (
                "403",
                self.err("Tenant suspended, or a storage limit would be passed (`storage_limit_exceeded`)"),
            ),
            ("429", self.rate_limited()),
        ];
        ingest.extend(bad_body);
        let uuid = json!({"type": "string", "format": "uuid"});
        let list = self.ok::<DocumentList>("A page of documents");
        let one = self.ok::<StoredDocument>("The document with its text");
        let usage = self.ok::<UsageReport>("Usage");
        json!({
            "/v1/documents": {
                "post": {
                    "summary": "Ingest a document (returns after the write is durable)",
                    "requestBody": self.body::<IngestRequest>(),
                    "responses": self.authed(ingest),
                },
                "get": {
                    "summary": "List the tenant's documents",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                        {"name": "cursor", "in": "query", "schema": uuid},
                    ],
                    "responses": self.authed(vec![
                        ("200", list),
                        ("422", self.err("Invalid query parameters")),
                    ]),
                },
            },
            "/v1/documents/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": uuid}],
                "get": {
                    "summary": "A document: its metadata and its text",
                    "responses": self.authed(vec![
                        ("200", one),
                        ("404", self.err("No such document for this tenant")),
                    ]),
                },
                "delete": {
                    "summary": "Delete a document and its chunks",
                    "responses": self.authed(vec![
                        ("204", json!({"description": "Deleted"})),
                        ("404", self.err("No such document for this tenant")),
                    ]),
                },
            },
            "/v1/usage": {"get": {
                "summary": "The tenant's usage in the current windows, its limits and reset times",
                "responses": self.authed(vec![("200", usage)]),
            }},
        })
    }

    /// The component schemas: every type the paths referred to. The embeddings request lists
    /// the one model and dimension this server accepts.
    fn schemas(mut self, embedding_model: &str, dimension: usize) -> Map<String, Value> {
        let embeddings = self.requests.subschema_for::<EmbeddingsBody>();
        let mut schemas = self.requests.take_definitions(true);
        schemas.extend(self.responses.take_definitions(true));
        let name = embeddings
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit('/').next())
            .unwrap_or_default();
        if let Some(props) = schemas.get_mut(name).and_then(|s| s.get_mut("properties")) {
            props["model"]["enum"] = json!([embedding_model, null]);
            props["dimensions"]["enum"] = json!([dimension, null]);
        }
        schemas
    }
}

/// The operational endpoints: no token needed.
fn operational_paths() -> Value {
    json!({
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "Alive"}}}},
        "/readyz": {"get": {"summary": "Readiness", "security": [], "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI document"}}}},
    })
}

/// The OpenAPI document served at `/openapi.json`, for a server whose embedding model is
/// `embedding_model` with `dimension` dimensions.
pub fn document(embedding_model: &str, dimension: usize) -> Value {
    let mut builder = Builder::new();
    let mut paths = Map::new();
    for group in [
        builder.chat_paths(),
        builder.openai_paths(),
        builder.document_paths(),
        operational_paths(),
    ] {
        if let Value::Object(group) = group {
            paths.extend(group);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tenantry chat API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Tenant-scoped RAG chat. Every request carries a tenant JWT (`Authorization: Bearer`); everything it reaches is scoped to that tenant.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": builder.schemas(embedding_model, dimension),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiError;

    #[test]
    fn the_error_schema_describes_the_error_body() {
        for e in [
            ApiError::Invalid("bad".into()),
            ApiError::NotFound("gone".into()),
            ApiError::Suspended,
        ] {
            let body: ErrorBody = serde_json::from_value(e.body()).expect("error body");
            assert_eq!(body.error.code, e.code());
        }
    }

    #[test]
    fn request_and_response_schemas_do_not_share_names() {
        let mut b = Builder::new();
        b.chat_paths();
        b.openai_paths();
        b.document_paths();
        let requests = b.requests.take_definitions(true);
        let responses = b.responses.take_definitions(true);
        let shared: Vec<_> = requests
            .keys()
            .filter(|k| responses.contains_key(*k))
            .collect();
        assert!(shared.is_empty(), "{shared:?}");
    }

    #[test]
    fn every_operation_has_its_statuses() {
        let doc = document("m", 3);
        let statuses = |path: &str, method: &str| -> Vec<String> {
            doc["paths"][path][method]["responses"]
                .as_object()
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(
            statuses("/v1/chat", "post"),
            [
                "200", "401", "403", "404", "413", "415", "422", "429", "502", "503", "504"
            ]
        );
        assert_eq!(
            statuses("/v1/chat/completions", "post"),
            [
                "200", "400", "401", "403", "404", "413", "415", "429", "502", "503", "504"
            ]
        );
        assert_eq!(
            statuses("/v1/embeddings", "post"),
            [
                "200", "400", "401", "403", "404", "413", "415", "429", "503"
            ]
        );
        assert_eq!(
            statuses("/v1/documents/{id}", "delete"),
            ["204", "401", "403", "404", "503"]
        );
        let embeddings = &doc["components"]["schemas"]["EmbeddingsRequest"]["properties"];
        assert_eq!(embeddings["model"]["enum"], json!(["m", null]));
        assert_eq!(embeddings["dimensions"]["enum"], json!([3, null]));
    }
}
