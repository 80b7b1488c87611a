//! Validation of OpenAI request parameters: what a completion or embeddings request may ask,
//! with refusals that name the parameter at fault (`param` in the error body).
use serde_json::Value;

use super::types::{CompletionBody, ContentPart, Extension, MessageContent, RequestMessage};
use crate::api::{ApiError, AppState};
use crate::domain::{TOP_K_RULE, top_k_ok};
use crate::llm::Message;
use crate::tenants::TenantConfig;

/// Parameters accepted and ignored: they change nothing about the answer here.
const IGNORED: &[&str] = &[
    "user",
    "store",
    "metadata",
    "service_tier",
    "parallel_tool_calls",
];

/// A refusal of one parameter.
pub(super) fn invalid_param(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadParam {
        param: param.to_string(),
        message: message.into(),
    }
}

/// A validated completion request.
pub(super) struct CompletionParams {
    /// The model to ask (allowed for the tenant).
    pub model: String,
    /// The conversation, roles normalised (`developer` is `system`).
    pub messages: Vec<Message>,
    /// Most completion tokens, within the server's limit.
    pub max_tokens: u32,
    /// Sampling parameters passed to the upstream as they are.
    pub params: serde_json::Map<String, Value>,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Send a last chunk with the usage of the whole request.
    pub include_usage: bool,
    /// Add retrieved passages to the conversation.
    pub rag: bool,
    /// Passages to retrieve.
    pub top_k: i32,
}

/// The text of one message's `content`: a string, or an array of text parts.
fn content_text(i: usize, content: Option<&MessageContent>) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match content {
        Some(MessageContent::Text(s)) => Ok(s.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut out = String::new();
            for ContentPart { kind, text } in parts {
                match (kind.as_deref(), text) {
                    (Some("text"), Some(text)) => out.push_str(text),
                    (Some(kind), _) if kind != "text" => {
                        return Err(invalid_param(
                            &param,
                            format!("content parts of type {kind:?} are not supported; only text"),
                        ));
                    }
                    _ => return Err(invalid_param(&param, "a text part needs a string `text`")),
                }
            }
            Ok(out)
        }
        None => Err(invalid_param(
            &param,
            "content must be a string or an array of text parts",
        )),
    }
}

/// One message, its role normalised.
fn message(i: usize, m: &RequestMessage) -> Result<Message, ApiError> {
    let role_param = format!("messages[{i}].role");
    let role = match m.role.as_deref() {
        Some("system" | "developer") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some(r @ ("tool" | "function")) => {
            return Err(invalid_param(
                &role_param,
                format!("{r} messages are not supported (no tool calling)"),
            ));
        }
        Some(r) => {
            return Err(invalid_param(
                &role_param,
                format!("unknown role {r:?}; expected system, developer, user or assistant"),
            ));
        }
        None => return Err(invalid_param(&role_param, "role is required")),
    };
    if let Some((k, _)) = m.other.iter().find(|(_, v)| !v.is_null()) {
        return Err(invalid_param(
            &format!("messages[{i}].{k}"),
            format!("unsupported message field {k:?}"),
        ));
    }
    Ok(Message::new(role, content_text(i, m.content.as_ref())?))
}

/// The conversation, within its length limit.
fn messages(state: &AppState, raw: &[RequestMessage]) -> Result<Vec<Message>, ApiError> {
    if raw.is_empty() {
        return Err(invalid_param("messages", "messages must not be empty"));
    }
    let out = raw
        .iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let total: usize = out.iter().map(|m| m.content.chars().count()).sum();
    // A conversation may be longer than one question, within reason.
    let max = state.config.limits.max_question_chars.saturating_mul(8);
    if total > max {
        return Err(invalid_param(
            "messages",
            format!("the conversation must be at most {max} characters"),
        ));
    }
    Ok(out)
}

fn in_range(param: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(invalid_param(
            param,
            format!("{param} must be between {lo} and {hi}"),
        )),
        _ => Ok(()),
    }
}

/// The most completion tokens: the request's, lowered to the tenant's limit (its
/// `quota.maxTokens`, else the server's `llm.maxTokens`; it bounds the reservation too).
fn max_tokens(
    state: &AppState,
    tenant: &TenantConfig,
    body: &CompletionBody,
) -> Result<u32, ApiError> {
    for (param, v) in [
        ("max_tokens", body.max_tokens),
        ("max_completion_tokens", body.max_completion_tokens),
    ] {
        if v == Some(0) {
            return Err(invalid_param(param, format!("{param} must be at least 1")));
        }
    }
    let limit = tenant.quota.max_tokens_or(state.config.llm.max_tokens);
    Ok(body
        .max_completion_tokens
        .or(body.max_tokens)
        .map_or(limit, |n| u32::try_from(n).unwrap_or(u32::MAX).min(limit)))
}

/// The sampling parameters passed upstream, checked.
fn sampling(body: &CompletionBody) -> Result<serde_json::Map<String, Value>, ApiError> {
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
    match &body.stop {
        None | Some(Value::Null) => {}
        Some(s @ Value::String(_)) => {
            params.insert("stop".to_string(), s.clone());
        }
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => {
            params.insert("stop".to_string(), Value::Array(a.clone()));
        }
        Some(_) => {
            return Err(invalid_param(
                "stop",
                "stop must be a string or an array of at most 4 strings",
            ));
        }
    }
    Ok(params)
}

/// `tenantry`: an object only (serde would also read a struct from an array).
fn extension(tenantry: Option<Value>) -> Result<Extension, ApiError> {
    match tenantry {
        None | Some(Value::Null) => Ok(Extension::default()),
        Some(v @ Value::Object(_)) => {
            serde_json::from_value(v).map_err(|e| invalid_param("tenantry", e.to_string()))
        }
        Some(_) => Err(invalid_param("tenantry", "tenantry must be an object")),
    }
}

/// `stream_options.include_usage`, allowed only with `stream: true`.
fn include_usage(stream: bool, options: Option<&Value>) -> Result<bool, ApiError> {
    let include = match options {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => Some(false),
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                return Err(invalid_param(
                    "stream_options.include_usage",
                    "include_usage must be a boolean",
                ));
            }
        },
        Some(_) => {
            return Err(invalid_param(
                "stream_options",
                "stream_options must be an object",
            ));
        }
    };
    if include.is_some() && !stream {
        return Err(invalid_param(
            "stream_options",
            "stream_options is only allowed with stream: true",
        ));
    }
    Ok(include.unwrap_or(false))
}

/// Validates a completion request of `tenant`'s caller.
pub(super) fn validate(
    state: &AppState,
    tenant: &TenantConfig,
    body: CompletionBody,
) -> Result<CompletionParams, ApiError> {
    if let Some((k, _)) = body
        .other
        .iter()
        .find(|(k, v)| !v.is_null() && !IGNORED.contains(&k.as_str()))
    {
        return Err(invalid_param(k, format!("unsupported parameter {k:?}")));
    }
    let model = body
        .model
        .clone()
        .unwrap_or_else(|| tenant.chat_model.clone());
    if !tenant.model_allowed(&model) {
        return Err(ApiError::ModelNotAllowed(model));
    }
    let messages = messages(state, &body.messages)?;
    if body.n.is_some_and(|n| n != 1) {
        return Err(invalid_param("n", "only n = 1 is supported"));
    }
    let max_tokens = max_tokens(state, tenant, &body)?;
    let params = sampling(&body)?;
    let stream = body.stream.unwrap_or(false);
    let ext = extension(body.tenantry)?;
    let top_k = ext.top_k.unwrap_or(tenant.spec.retrieval.top_k);
    if !top_k_ok(top_k) {
        return Err(invalid_param("tenantry.top_k", TOP_K_RULE));
    }
    let include_usage = include_usage(stream, body.stream_options.as_ref())?;
    Ok(CompletionParams {
        model,
        messages,
        max_tokens,
        params,
        stream,
        include_usage,
        rag: ext.rag.unwrap_or(tenant.spec.retrieval.augment_completions),
        top_k,
    })
}
