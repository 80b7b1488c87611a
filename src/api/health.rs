//! `GET /healthz`, `GET /readyz`, `GET /openapi.json`, and `GET /dev/token` (only with
//! `serve --dev`).
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, AppState};
use crate::crd::{TenantId, parse_duration};
use crate::quota::FailMode;

/// Liveness: the process answers.
pub async fn healthz() -> impl IntoResponse {
    ApiJson(json!({"status": "ok"}))
}

/// Readiness: tenants are loaded, the vector store is usable, and the quota store answers (a
/// Redis outage is reported but keeps the replica ready with `failOpen`).
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let tenants = state.tenants.loaded();
    let store = state.vectors.ready().await;
    let quota = state.quota.store().ping().await;
    let quota_ok = quota.is_ok() || state.quota.fail_mode() == FailMode::FailOpen;
    let ready = tenants && store.is_ok() && quota_ok;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "tenants": if tenants { "ok" } else { "loading" },
            "vector_store": if store.is_ok() { "ok" } else { "unavailable" },
            "quota": if quota.is_ok() { "ok" } else { "unavailable" },
        },
        "quota_backend": state.quota.store().backend(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, ApiJson(body))
}

/// Query of `GET /dev/token`.
#[derive(Debug, Deserialize)]
pub struct DevTokenQuery {
    /// The tenant the token is for.
    pub tenant_id: String,
    /// The user the token names (its `sub` claim).
    pub sub: String,
    /// Validity (default `1h`).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Mints a token (development only; without `--dev` the route does not exist: 404).
pub async fn dev_token(
    State(state): State<AppState>,
    query: Result<Query<DevTokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.dev {
        return Err(ApiError::NotFound(
            "no route for GET /dev/token".to_string(),
        ));
    }
    let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let ttl = parse_duration(q.ttl.as_deref().unwrap_or("1h"))
        .ok_or_else(|| ApiError::Invalid("ttl must be a duration like 1h".to_string()))?;
    let tenant = TenantId::parse(&q.tenant_id)
        .ok()
        .and_then(|id| state.tenants.get(&id))
        .ok_or_else(|| ApiError::NotFound("unknown tenant".to_string()))?;
    let token = tenant
        .keyring
        .mint(&tenant.id, &q.sub, ttl.as_secs())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(ApiJson(json!({"token": token})))
}

/// The OpenAPI 3.1 description of the API.
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    ApiJson(openapi_document(
        state.embedder.model(),
        state.embedder.dimension(),
    ))
}

/// The OpenAPI document served at `/openapi.json`, for a server whose embedding model is
/// `embedding_model` with `dimension` dimensions.
pub fn openapi_document(embedding_model: &str, dimension: usize) -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let err = |description: &str| json!({"description": description, "content": {"application/json": {"schema": error}}});
    let json_body = |schema: Value| json!({"required": true, "content": {"application/json": {"schema": schema}}});
    let ok = |description: &str, schema: Value| json!({"description": description, "content": {"application/json": {"schema": schema}}});
    let common = |mut responses: serde_json::Map<String, Value>| {
        responses.insert(
            "401".into(),
            err("Missing, malformed, expired or wrongly signed token"),
        );
        responses.insert("403".into(), err("Tenant suspended"));
        responses.insert(
            "503".into(),
            err("A dependency is unavailable (`quota_unavailable`: the quota store, with failClosed)"),
        );
        Value::Object(responses)
    };
    let int_header =
        |description: &str| json!({"description": description, "schema": {"type": "integer"}});
    let rate_limited = json!({
        "description": "A quota or rate limit would be exceeded; `error.limit` names it",
        "headers": {
            "Retry-After": int_header("Seconds until the limit's window resets"),
            "X-RateLimit-Limit": int_header("Value of the limit hit"),
            "X-RateLimit-Remaining": int_header("What is left of it"),
            "X-RateLimit-Reset": int_header("Seconds until it resets"),
        },
        "content": {"application/json": {"schema": error}},
    });
    let x_cache = json!({"description": "`hit` when the answer came from the tenant's semantic cache, `miss` otherwise", "schema": {"type": "string", "enum": ["hit", "miss"]}});
    let with_cache_header = |description: &str, content: Value| json!({"description": description, "headers": {"X-Cache": x_cache.clone()}, "content": content});
    let map = |pairs: Vec<(&str, Value)>| {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tenantry chat API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Tenant-scoped RAG chat. Every request carries a tenant JWT (`Authorization: Bearer`); everything it reaches is scoped to that tenant.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/chat": {"post": {
                "summary": "Answer a question from the tenant's documents",
                "requestBody": json_body(json!({"$ref": "#/components/schemas/ChatRequest"})),
                "responses": common(map(vec![
                    ("200", with_cache_header("Answer", json!({"application/json": {"schema": {"$ref": "#/components/schemas/ChatResponse"}}}))),
                    ("403", err("Tenant suspended or model not allowed")),
                    ("413", err("Body too large")),
                    ("415", err("Body is not JSON")),
                    ("422", err("Invalid body")),
                    ("429", rate_limited.clone()),
                    ("502", err("Upstream model failed")),
                    ("504", err("Upstream model timed out")),
                ])),
            }},
            "/v1/chat/completions": {"post": {
                "summary": "OpenAI-compatible chat completion (JSON, or server-sent `chat.completion.chunk` events with `stream: true`)",
                "description": "OpenAI's request and response shapes; an OpenAI SDK works with `base_url=<endpoint>/v1` and the tenant JWT as API key. Text messages only (no tools, no images), n = 1. The `tenantry` object decides retrieval (`rag`, `top_k`); responses carry `tenantry.cached` and `tenantry.sources`. Invalid requests are 400 here.",
                "requestBody": json_body(json!({"$ref": "#/components/schemas/CompletionRequest"})),
                "responses": common(map(vec![
                    ("200", with_cache_header("A `chat.completion` object, or an event stream ending with `data: [DONE]`", json!({
                        "application/json": {"schema": {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"]}},
                        "text/event-stream": {"schema": {"type": "object", "required": ["data"], "properties": {"data": {"type": "string", "description": "A `chat.completion.chunk` as JSON, an `{\"error\"}` object, or `[DONE]`"}}}},
                    }))),
                    ("400", err("Invalid request (`error.param` names the parameter)")),
                    ("403", err("Tenant suspended or model not allowed")),
                    ("413", err("Body too large")),
                    ("415", err("Body is not JSON")),
                    ("429", rate_limited.clone()),
                    ("502", err("Upstream model failed")),
                    ("504", err("Upstream model timed out")),
                ])),
            }},
            "/v1/models": {"get": {
                "summary": "The models this tenant may use (chat models, then the embedding model)",
                "responses": common(map(vec![
                    ("200", ok("`{\"object\": \"list\", \"data\": [model]}`", json!({"type": "object", "required": ["object", "data"]}))),
                ])),
            }},
            "/v1/models/{model}": {"get": {
                "summary": "One model, if this tenant may use it",
                "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": common(map(vec![
                    ("200", ok("The model", json!({"type": "object", "required": ["id", "object", "owned_by"]}))),
                    ("404", err("Not available to this tenant")),
                ])),
            }},
            "/v1/embeddings": {"post": {
                "summary": "OpenAI-compatible embeddings with serve's embedding model (charged to the tenant's tokens)",
                "requestBody": json_body(json!({"type": "object", "required": ["input"], "additionalProperties": false, "properties": {
                    "input": {"oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "maxItems": 2048, "items": {"type": "string", "minLength": 1}}]},
                    "model": {"type": "string", "enum": [embedding_model]},
                    "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                    "dimensions": {"type": "integer", "enum": [dimension]},
                    "user": {"type": "string"},
                }})),
                "responses": common(map(vec![
                    ("200", ok("`{\"object\": \"list\", \"data\": [{\"object\": \"embedding\", \"index\", \"embedding\"}], \"model\", \"usage\"}`", json!({"type": "object", "required": ["object", "data", "model", "usage"]}))),
                    ("400", err("Invalid request (`error.param` names the parameter)")),
                    ("403", err("Tenant suspended or model not served")),
                    ("413", err("Body too large")),
                    ("415", err("Body is not JSON")),
                    ("429", rate_limited.clone()),
                ])),
            }},
            "/v1/documents": {
                "post": {
                    "summary": "Ingest a document (returns after the write is durable)",
                    "requestBody": json_body(json!({"$ref": "#/components/schemas/IngestRequest"})),
                    "responses": common(map(vec![
                        ("201", ok("Stored", json!({"$ref": "#/components/schemas/IngestResponse"}))),
                        ("413", err("Body too large")),
                        ("415", err("Body is not JSON")),
                        ("422", err("Invalid body")),
                    ])),
                },
                "get": {
                    "summary": "List the tenant's documents",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                    ],
                    "responses": common(map(vec![
                        ("200", ok("A page of documents", json!({"$ref": "#/components/schemas/DocumentList"}))),
                        ("422", err("Invalid query parameters")),
                    ])),
                },
            },
            "/v1/documents/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}],
                "get": {
                    "summary": "A document's metadata",
                    "responses": common(map(vec![
                        ("200", ok("The document", json!({"$ref": "#/components/schemas/Document"}))),
                        ("404", err("No such document for this tenant")),
                    ])),
                },
                "delete": {
                    "summary": "Delete a document and its chunks",
                    "responses": common(map(vec![
                        ("204", json!({"description": "Deleted"})),
                        ("404", err("No such document for this tenant")),
                    ])),
                },
            },
            "/v1/usage": {"get": {
                "summary": "The tenant's usage in the current windows, its limits and reset times",
                "responses": common(map(vec![
                    ("200", ok("Usage", json!({"$ref": "#/components/schemas/Usage"}))),
                ])),
            }},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "Alive"}}}},
            "/readyz": {"get": {"summary": "Readiness", "security": [], "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI document"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message", "type", "param"], "properties": {
                    "code": {"type": "string", "description": "Stable machine-readable code"},
                    "message": {"type": "string"},
                    "type": {"type": "string", "description": "Class, as OpenAI names them", "enum": ["authentication_error", "permission_error", "not_found_error", "invalid_request_error", "rate_limit_error", "upstream_error", "server_error"]},
                    "param": {"type": ["string", "null"], "description": "The request parameter at fault, when one is"},
                }}}},
                "CompletionRequest": {"type": "object", "required": ["messages"], "additionalProperties": false,
                    "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
                    "then": {"required": ["stream"], "properties": {"stream": {"const": true}}},
                    "properties": {
                    "model": {"type": "string", "description": "Default: the tenant's chat model"},
                    "messages": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["role", "content"], "additionalProperties": false, "properties": {
                        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
                        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object", "required": ["type", "text"], "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]},
                        "name": {"type": "string"},
                    }}},
                    "stream": {"type": "boolean"},
                    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
                    "max_tokens": {"type": "integer", "minimum": 1, "maximum": i64::MAX, "description": "Lowered to the server's llm.maxTokens when above it"},
                    "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": i64::MAX},
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                    "n": {"const": 1},
                    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "maxItems": 4, "items": {"type": "string"}}]},
                    "seed": {"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX},
                    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
                    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
                    "tenantry": {"type": "object", "additionalProperties": false, "properties": {
                        "rag": {"type": "boolean", "description": "Add passages retrieved for the last user message (default: the tenant's retrieval.augmentCompletions)"},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": 50},
                    }},
                    "user": {"description": "Accepted and ignored"},
                    "store": {"description": "Accepted and ignored"},
                    "metadata": {"description": "Accepted and ignored"},
                    "service_tier": {"description": "Accepted and ignored"},
                    "parallel_tool_calls": {"description": "Accepted and ignored"},
                }},
                "ChatRequest": {"type": "object", "required": ["question"], "additionalProperties": false, "properties": {
                    "question": {"type": "string", "minLength": 1, "pattern": "\\S"},
                    "model": {"type": ["string", "null"]},
                    "top_k": {"type": "integer", "minimum": 1, "maximum": 50},
                }},
                "ChatResponse": {"type": "object", "required": ["answer", "tenant_id", "model", "sources", "cached", "usage"], "properties": {
                    "answer": {"type": "string"},
                    "tenant_id": {"type": "string"},
                    "model": {"type": "string"},
                    "sources": {"type": "array", "items": {"type": "object", "required": ["document_id", "chunk", "score", "text"], "properties": {
                        "document_id": {"type": "string", "format": "uuid"},
                        "chunk": {"type": "integer"},
                        "score": {"type": "number"},
                        "text": {"type": "string"},
                        "title": {"type": "string"},
                    }}},
                    "cached": {"type": "boolean"},
                    "usage": {"type": "object", "required": ["prompt_tokens", "completion_tokens"], "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}}},
                }},
                "Usage": {"type": "object", "required": ["tenant_id", "backend", "tokens_today", "requests_this_minute", "tokens_this_minute", "in_flight", "usage", "limits", "remaining", "resets_at"], "properties": {
                    "tenant_id": {"type": "string"},
                    "backend": {"type": "string", "enum": ["redis", "in-process"]},
                    "now": {"type": "integer", "description": "Unix seconds"},
                    "tokens_today": {"type": "integer", "description": "Tokens charged this UTC day, in-flight estimates included"},
                    "requests_this_minute": {"type": "integer"},
                    "tokens_this_minute": {"type": "integer"},
                    "in_flight": {"type": "integer"},
                    "usage": {"$ref": "#/components/schemas/PerLimit"},
                    "limits": {"$ref": "#/components/schemas/PerLimit"},
                    "remaining": {"$ref": "#/components/schemas/PerLimit"},
                    "resets_at": {"type": "object", "description": "Unix seconds when each window resets", "additionalProperties": {"type": "integer"}},
                }},
                "PerLimit": {"type": "object", "properties": {
                    "daily_tokens": {"type": "integer"}, "requests_per_minute": {"type": "integer"},
                    "tokens_per_minute": {"type": "integer"}, "concurrent_requests": {"type": "integer"},
                }},
                "IngestRequest": {"type": "object", "required": ["text"], "additionalProperties": false, "properties": {
                    "text": {"type": "string", "minLength": 1, "pattern": "\\S"},
                    "title": {"type": "string", "maxLength": 512},
                    "metadata": {"type": "object"},
                    "id": {"type": ["string", "null"], "format": "uuid", "description": "Ingesting again under the same id replaces the document"},
                }},
                "IngestResponse": {"type": "object", "required": ["id", "tenant_id", "chunks"], "properties": {
                    "id": {"type": "string", "format": "uuid"}, "tenant_id": {"type": "string"}, "chunks": {"type": "integer"},
                }},
                "Document": {"type": "object", "required": ["id", "metadata", "chunks", "created_at"], "properties": {
                    "id": {"type": "string", "format": "uuid"}, "title": {"type": ["string", "null"]}, "metadata": {"type": "object"},
                    "chunks": {"type": "integer"}, "created_at": {"type": "integer", "description": "Unix seconds"},
                }},
                "DocumentList": {"type": "object", "required": ["tenant_id", "documents"], "properties": {
                    "tenant_id": {"type": "string"},
                    "documents": {"type": "array", "items": {"$ref": "#/components/schemas/Document"}},
                    "next_cursor": {"type": ["string", "null"], "format": "uuid"},
                }},
            },
        },
    });
    // Optional request fields may be null (the server treats null as absent).
    for schema in ["ChatRequest", "IngestRequest", "CompletionRequest"] {
        nullable_optionals(&mut doc["components"]["schemas"][schema]);
    }
    nullable_optionals(
        &mut doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"],
    );
    doc
}

/// Lets every optional property of an object schema also be `null`.
fn nullable_optionals(schema: &mut Value) {
    let required: Vec<Value> = schema["required"].as_array().cloned().unwrap_or_default();
    let Some(props) = schema["properties"].as_object_mut() else {
        return;
    };
    for (name, prop) in props.iter_mut() {
        // Nested objects (and arrays of them) follow the same rule.
        if prop.get("properties").is_some() {
            nullable_optionals(prop);
        }
        if prop["items"].get("properties").is_some() {
            nullable_optionals(&mut prop["items"]);
        }
        if required.contains(&Value::String(name.clone())) {
            continue;
        }
        let Some(p) = prop.as_object_mut() else {
            continue;
        };
        if let Some(c) = p.remove("const") {
            p.insert("enum".into(), json!([c]));
        }
        if let Some(Value::Array(e)) = p.get_mut("enum") {
            e.push(Value::Null);
        }
        if let Some(Value::Array(one_of)) = p.get_mut("oneOf") {
            one_of.push(json!({"type": "null"}));
        }
        match p.get_mut("type") {
            Some(Value::String(t)) => {
                let t = t.clone();
                p.insert("type".into(), json!([t, "null"]));
            }
            Some(Value::Array(types)) if !types.contains(&json!("null")) => {
                types.push(json!("null"));
            }
            _ => {}
        }
    }
}
