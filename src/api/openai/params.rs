//! Validation of OpenAI request parameters: what a completion or embeddings request may ask,
//! with refusals that name the parameter at fault (`param` in the error body).
use serde_json::Value;

use super::types::{CompletionBody, ContentPart, Extension, MessageContent, RequestMessage};
use crate::api::{ApiError, AppState};
use crate::domain::{TOP_K_RULE, top_k_ok};
use crate::llm::Message;
use crate::tenants::TenantConfig;

/// Parameters accepted and ignored: they change nothing about the answer here.
const IGNORED: &[&str] = &["user", "store", "metadata", "service_tier"];

/// Most tools one request may offer (OpenAI's limit).
const MAX_TOOLS: usize = 128;

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
    /// Sampling parameters, tools and `response_format`, passed to the upstream as they are.
    pub params: serde_json::Map<String, Value>,
    /// Whether the request offers tools or asks for a `response_format`: such an answer is not
    /// a text to reuse, so the semantic cache is bypassed.
    pub structured: bool,
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

/// Whether `name` is a valid function name (1 to 64 letters, digits, `_` or `-`).
fn function_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A required string field of `o`, named `param` in errors.
fn string_field<'a>(
    o: &'a serde_json::Map<String, Value>,
    key: &str,
    param: &str,
) -> Result<&'a str, ApiError> {
    match o.get(key) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(invalid_param(
            &format!("{param}.{key}"),
            format!("{key} must be a string"),
        )),
    }
}

/// An object, named `param` in errors.
fn object<'a>(v: &'a Value, param: &str) -> Result<&'a serde_json::Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| invalid_param(param, format!("{param} must be an object")))
}

/// The `tool_calls` of an assistant message: `{id, type: function, function: {name,
/// arguments}}` each (other fields pass through).
fn tool_calls(i: usize, calls: &Value) -> Result<(), ApiError> {
    let param = format!("messages[{i}].tool_calls");
    let calls = calls
        .as_array()
        .ok_or_else(|| invalid_param(&param, "tool_calls must be an array"))?;
    for (j, call) in calls.iter().enumerate() {
        let param = format!("{param}[{j}]");
        let call = object(call, &param)?;
        string_field(call, "id", &param)?;
        if call.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid_param(
                &format!("{param}.type"),
                "type must be \"function\"",
            ));
        }
        let fparam = format!("{param}.function");
        let function = object(call.get("function").unwrap_or(&Value::Null), &fparam)?;
        string_field(function, "name", &fparam)?;
        string_field(function, "arguments", &fparam)?;
    }
    Ok(())
}

/// One message, its role normalised; the fields of a tool round trip (an assistant message's
/// `tool_calls` and `refusal`, a `tool` message's `tool_call_id`) are kept to pass upstream.
fn message(i: usize, m: &RequestMessage) -> Result<Message, ApiError> {
    let role_param = format!("messages[{i}].role");
    let role = match m.role.as_deref() {
        Some("system" | "developer") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("tool") => "tool",
        Some("function") => {
            return Err(invalid_param(
                &role_param,
                "function messages (the legacy function calling) are not supported; use tool messages",
            ));
        }
        Some(r) => {
            return Err(invalid_param(
                &role_param,
                format!("unknown role {r:?}; expected system, developer, user, assistant or tool"),
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
    if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_null()) {
        tool_calls(i, calls)?;
    }
    let text = match (role, &m.content) {
        // An assistant message may carry only tool calls (or nothing).
        ("assistant", None) => String::new(),
        _ => content_text(i, m.content.as_ref())?,
    };
    let mut out = Message::new(role, text);
    match role {
        "assistant" => {
            if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_null()) {
                out.extra.insert("tool_calls".to_string(), calls.clone());
            }
            if let Some(refusal) = &m.refusal {
                out.extra
                    .insert("refusal".to_string(), Value::from(refusal.as_str()));
            }
        }
        "tool" => {
            let id = m.tool_call_id.as_ref().ok_or_else(|| {
                invalid_param(
                    &format!("messages[{i}].tool_call_id"),
                    "a tool message needs the tool_call_id it answers",
                )
            })?;
            out.extra
                .insert("tool_call_id".to_string(), Value::from(id.as_str()));
        }
        _ => {}
    }
    Ok(out)
}

/// `tools`: at most [`MAX_TOOLS`] `{type: function, function: {name, description?,
/// parameters?, strict?}}` (other fields pass through). Returns whether any tool is offered.
fn tools(tools: Option<&Value>) -> Result<bool, ApiError> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(false),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid_param("tools", "tools must be an array")),
    };
    if tools.len() > MAX_TOOLS {
        return Err(invalid_param(
            "tools",
            format!("at most {MAX_TOOLS} tools may be offered"),
        ));
    }
    for (i, tool) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        let tool = object(tool, &param)?;
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid_param(
                &format!("{param}.type"),
                "type must be \"function\"",
            ));
        }
        let fparam = format!("{param}.function");
        let function = object(tool.get("function").unwrap_or(&Value::Null), &fparam)?;
        let name = string_field(function, "name", &fparam)?;
        if !function_name_ok(name) {
            return Err(invalid_param(
                &format!("{fparam}.name"),
                "a function name is 1 to 64 letters, digits, '_' or '-'",
            ));
        }
        optional(
            function,
            "description",
            &fparam,
            Value::is_string,
            "a string",
        )?;
        optional(
            function,
            "parameters",
            &fparam,
            Value::is_object,
            "an object",
        )?;
        optional(function, "strict", &fparam, Value::is_boolean, "a boolean")?;
    }
    Ok(!tools.is_empty())
}

/// An optional field of `o`: null or absent, or of the kind `ok` accepts (`what`).
fn optional(
    o: &serde_json::Map<String, Value>,
    key: &str,
    param: &str,
    ok: fn(&Value) -> bool,
    what: &str,
) -> Result<(), ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if ok(v) => Ok(()),
        Some(_) => Err(invalid_param(
            &format!("{param}.{key}"),
            format!("{key} must be {what}"),
        )),
    }
}

/// `tool_choice`: `none`, `auto`, `required`, or `{type: function, function: {name}}`.
fn tool_choice(choice: &Value) -> Result<(), ApiError> {
    let refused = || {
        invalid_param(
            "tool_choice",
            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
        )
    };
    match choice {
        Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => Ok(()),
        Value::Object(o) => {
            if o.get("type").and_then(Value::as_str) != Some("function") {
                return Err(refused());
            }
            let function = o
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(refused)?;
            string_field(function, "name", "tool_choice.function")?;
            Ok(())
        }
        _ => Err(refused()),
    }
}

/// `response_format`: `{type: text}`, `{type: json_object}` or `{type: json_schema,
/// json_schema: {name, description?, schema?, strict?}}` (other fields pass through).
fn response_format(format: &Value) -> Result<(), ApiError> {
    let o = object(format, "response_format")?;
    match o.get("type").and_then(Value::as_str) {
        Some("text" | "json_object") => Ok(()),
        Some("json_schema") => {
            let param = "response_format.json_schema";
            let schema = object(o.get("json_schema").unwrap_or(&Value::Null), param)?;
            let name = string_field(schema, "name", param)?;
            if !function_name_ok(name) {
                return Err(invalid_param(
                    &format!("{param}.name"),
                    "a schema name is 1 to 64 letters, digits, '_' or '-'",
                ));
            }
            optional(schema, "description", param, Value::is_string, "a string")?;
            optional(schema, "schema", param, Value::is_object, "an object")?;
            optional(schema, "strict", param, Value::is_boolean, "a boolean")?;
            Ok(())
        }
        _ => Err(invalid_param(
            "response_format.type",
            "type must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

/// Tools and `response_format`, checked and added to the parameters passed upstream.
/// `tool_choice` and `parallel_tool_calls` go only with tools. Returns whether the request is
/// structured (offers tools or asks for a response format).
fn structured(
    body: &CompletionBody,
    params: &mut serde_json::Map<String, Value>,
) -> Result<bool, ApiError> {
    let offers_tools = tools(body.tools.as_ref())?;
    let choice = body.tool_choice.as_ref().filter(|c| !c.is_null());
    if let Some(choice) = choice {
        tool_choice(choice)?;
    }
    let parallel = body.parallel_tool_calls.as_ref().filter(|p| !p.is_null());
    if parallel.is_some_and(|p| !p.is_boolean()) {
        return Err(invalid_param(
            "parallel_tool_calls",
            "parallel_tool_calls must be a boolean",
        ));
    }
    let format = body.response_format.as_ref().filter(|f| !f.is_null());
    if let Some(format) = format {
        response_format(format)?;
        params.insert("response_format".to_string(), format.clone());
    }
    if offers_tools {
        for (k, v) in [
            ("tools", body.tools.as_ref()),
            ("tool_choice", choice),
            ("parallel_tool_calls", parallel),
        ] {
            if let Some(v) = v {
                params.insert(k.to_string(), v.clone());
            }
        }
    }
    Ok(offers_tools || format.is_some())
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
    let total: usize = out
        .iter()
        .map(|m| {
            let extra = if m.extra.is_empty() {
                0
            } else {
                serde_json::to_string(&m.extra).map_or(0, |s| s.chars().count())
            };
            m.content.chars().count() + extra
        })
        .sum();
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
    let model = match body.model.as_deref() {
        Some(asked) => tenant.resolve_model(asked).to_string(),
        None => tenant.chat_model.clone(),
    };
    if !tenant.model_allowed(&model) {
        return Err(ApiError::ModelNotAllowed(
            body.model.clone().unwrap_or(model),
        ));
    }
    let messages = messages(state, &body.messages)?;
    if body.n.is_some_and(|n| n != 1) {
        return Err(invalid_param("n", "only n = 1 is supported"));
    }
    let max_tokens = max_tokens(state, tenant, &body)?;
    let mut params = sampling(&body)?;
    let structured = structured(&body, &mut params)?;
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
        structured,
        stream,
        include_usage,
        rag: ext.rag.unwrap_or(tenant.spec.retrieval.augment_completions),
        top_k,
    })
}
