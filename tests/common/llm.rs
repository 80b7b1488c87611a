//! A scripted OpenAI-compatible chat server on loopback (`ScriptedLlm`): answers that show
//! exactly what reached the model, failures, delays, usage and streaming scripted by the model
//! name and by markers in the question, and a record of every request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt as _;
use serde_json::{Value, json};

/// A scripted OpenAI-compatible chat server. It answers
/// `ANSWER[<model>]: <the user message>` so tests can see exactly what context reached the
/// model, and records every request body. Offered `tools` (and no tool result yet), it calls
/// the tool `tool_choice` names, else the first one, with arguments built from the tool's
/// parameter schema and the user message; given tool results (`tool` messages), it answers
/// `TOOL-RESULT[<tool_call_id>]: <content>` for each; asked for a `response_format`, it answers
/// JSON: `json_schema` an object built from the schema, `json_object` `{"answer": ...}`; the
/// marker `[[refuse]]` with a `response_format` gets a refusal. Model `fail-500` gets a 500; `slow` waits 30 s;
/// `fail-first-N` gets a 500 for the server's first N requests.
#[derive(Clone)]
pub struct ScriptedLlm {
    /// Address it listens on.
    pub addr: SocketAddr,
    /// Bodies of the requests received, in arrival order.
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// Headers of the requests received (same order as `requests`).
    pub request_headers: Arc<Mutex<Vec<HeaderMap>>>,
}

type Recorded = (Arc<Mutex<Vec<Value>>>, Arc<Mutex<Vec<HeaderMap>>>);

/// The `created` timestamp of every scripted response.
const CREATED: u64 = 1_700_000_000;

async fn completions(
    State((log, header_log)): State<Recorded>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    header_log.lock().expect("lock").push(headers);
    let calls = {
        let mut log = log.lock().expect("lock");
        log.push(body.clone());
        log.len()
    };
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rfind(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    if let Some(failure) = scripted_failure(&model, calls, &user).await {
        return failure;
    }
    let scripted_usage = scripted_usage(&body, &model, &user);
    let reply = reply(&body, &model, &user);
    if body["stream"] == true {
        return match reply {
            Reply::Text(answer) => stream_answer(&body, &model, &answer, &user, scripted_usage),
            other => stream_structured(&body, &model, &other),
        };
    }
    let (p, c) = scripted_usage.unwrap_or((prompt_words(&body), 7));
    let (message, finish) = match reply {
        Reply::Text(answer) => (json!({"role": "assistant", "content": answer}), "stop"),
        Reply::Json(answer) => (
            json!({"role": "assistant", "content": answer, "refusal": null}),
            "stop",
        ),
        Reply::Refusal(text) => (
            json!({"role": "assistant", "content": null, "refusal": text}),
            "stop",
        ),
        Reply::ToolCalls(calls) => (
            json!({"role": "assistant", "content": null, "tool_calls": calls}),
            "tool_calls",
        ),
    };
    Json(json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "finish_reason": finish, "message": message}],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
    }))
    .into_response()
}

/// What the scripted model answers a request.
enum Reply {
    /// Plain text.
    Text(String),
    /// JSON text (a `response_format` was asked for).
    Json(String),
    /// A refusal.
    Refusal(String),
    /// Tool calls (each `{id, type, function: {name, arguments}}`).
    ToolCalls(Vec<Value>),
}

/// The reply to `body`, derived from it (see [`ScriptedLlm`]).
fn reply(body: &Value, model: &str, user: &str) -> Reply {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let results: Vec<String> = messages
        .iter()
        .rev()
        .take_while(|m| m["role"] == "tool")
        .map(|m| {
            format!(
                "TOOL-RESULT[{}]: {}",
                m["tool_call_id"].as_str().unwrap_or_default(),
                m["content"].as_str().unwrap_or_default()
            )
        })
        .collect();
    if !results.is_empty() {
        return Reply::Text(results.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    let format = &body["response_format"];
    if format.is_object() && format["type"] != "text" && user.contains("[[refuse]]") {
        return Reply::Refusal("I cannot help with that.".to_string());
    }
    if let Some(tools) = body["tools"].as_array().filter(|t| !t.is_empty())
        && body["tool_choice"] != "none"
    {
        let named = body["tool_choice"]["function"]["name"].as_str();
        let tool = tools
            .iter()
            .find(|t| Some(t["function"]["name"].as_str().unwrap_or_default()) == named)
            .unwrap_or(&tools[0]);
        let arguments = from_schema(&tool["function"]["parameters"], user);
        return Reply::ToolCalls(vec![json!({
            "id": format!("call_{}", messages.len()),
            "type": "function",
            "function": {
                "name": tool["function"]["name"],
                "arguments": arguments.to_string(),
            },
        })]);
    }
    match format["type"].as_str() {
        Some("json_schema") => {
            Reply::Json(from_schema(&format["json_schema"]["schema"], user).to_string())
        }
        Some("json_object") => {
            Reply::Json(json!({"answer": format!("ANSWER[{model}]: {user}")}).to_string())
        }
        _ => Reply::Text(format!("ANSWER[{model}]: {user}")),
    }
}

/// A value following the JSON `schema`, built from `user`: strings are the user message (an
/// `enum`'s first value), integers and numbers its word count, booleans true, arrays one
/// item, objects every property (references into `$defs` followed).
fn from_schema(schema: &Value, user: &str) -> Value {
    fn build(schema: &Value, root: &Value, user: &str, depth: usize) -> Value {
        if depth > 8 {
            return Value::Null;
        }
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.rsplit('/').next().unwrap_or_default();
            let target = if root["$defs"][name].is_null() {
                &root["definitions"][name]
            } else {
                &root["$defs"][name]
            };
            return build(target, root, user, depth + 1);
        }
        if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
            return first.clone();
        }
        if let Some(any) = schema["anyOf"].as_array().and_then(|a| a.first()) {
            return build(any, root, user, depth + 1);
        }
        let kind = match &schema["type"] {
            Value::Array(kinds) => kinds.first().cloned().unwrap_or_default(),
            k => k.clone(),
        };
        let words = user.split_whitespace().count();
        match kind.as_str() {
            Some("string") => Value::from(user),
            Some("integer") => Value::from(words),
            Some("number") => Value::from(words as f64),
            Some("boolean") => Value::Bool(true),
            Some("null") => Value::Null,
            Some("array") => Value::Array(vec![build(&schema["items"], root, user, depth + 1)]),
            _ => {
                let mut out = serde_json::Map::new();
                if let Some(props) = schema["properties"].as_object() {
                    for (k, v) in props {
                        out.insert(k.clone(), build(v, root, user, depth + 1));
                    }
                }
                Value::Object(out)
            }
        }
    }
    build(schema, schema, user, 0)
}

/// A structured reply (JSON content, a refusal, tool calls) as server-sent events, in pieces
/// as OpenAI streams them: JSON text and refusals in chunks of 8 characters, a tool call's
/// id and name first, then its arguments in chunks of 8 characters; usage with
/// `stream_options.include_usage` (the prompt's words, one token per chunk).
fn stream_structured(body: &Value, model: &str, reply: &Reply) -> Response {
    let pieces = |text: &str| -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(8).map(|c| c.iter().collect()).collect()
    };
    let mut deltas = vec![json!({"role": "assistant", "content": null})];
    let finish = match reply {
        Reply::Text(text) | Reply::Json(text) => {
            deltas.extend(pieces(text).into_iter().map(|p| json!({"content": p})));
            "stop"
        }
        Reply::Refusal(text) => {
            deltas.extend(pieces(text).into_iter().map(|p| json!({"refusal": p})));
            "stop"
        }
        Reply::ToolCalls(calls) => {
            for (i, call) in calls.iter().enumerate() {
                deltas.push(
                    json!({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}]}),
                );
                let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
                for p in pieces(arguments) {
                    deltas
                        .push(json!({"tool_calls": [{"index": i, "function": {"arguments": p}}]}));
                }
            }
            "tool_calls"
        }
    };
    let event = |fields: Value| {
        let mut chunk = json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
                               "created": CREATED, "model": model});
        if let (Some(chunk), Value::Object(fields)) = (chunk.as_object_mut(), fields) {
            chunk.extend(fields);
        }
        format!("data: {chunk}\n\n")
    };
    let c = deltas.len() as u64;
    let mut events: Vec<String> = deltas
        .into_iter()
        .map(|d| event(json!({"choices": [{"index": 0, "delta": d, "finish_reason": null}]})))
        .collect();
    events.push(event(
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}),
    ));
    if body["stream_options"]["include_usage"] == true {
        let p = prompt_words(body);
        events.push(event(json!({"choices": [],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})));
    }
    events.push("data: [DONE]\n\n".to_string());
    let stream = futures::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>));
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/event-stream"),
    );
    resp
}

/// The scripted 500 of this request, if any, after the scripted waits: model `fail-first-N`
/// (the server's first N requests), model `fail-500`, marker `[[fail]]`. Model `slow` waits
/// 30 s and `[[delay:MS]]` waits MS before answering.
async fn scripted_failure(model: &str, calls: usize, user: &str) -> Option<Response> {
    let error = |message: &str| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": message, "type": "server_error"}})),
        )
            .into_response()
    };
    if let Some(n) = model
        .strip_prefix("fail-first-")
        .and_then(|n| n.parse::<usize>().ok())
        && calls <= n
    {
        return Some(error("scripted early failure"));
    }
    if model == "fail-500" {
        return Some(error("boom"));
    }
    if model == "slow" {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    if let Some(ms) = marker(user, "delay").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    user.contains("[[fail]]").then(|| error("scripted failure"))
}

/// The usage the question scripts: `[[usage:P:C]]` reports that usage, `[[usage:exact]]`
/// reports exactly what tenantry reserved (its tokenizer's prompt count with its margin +
/// max_tokens).
fn scripted_usage(body: &Value, model: &str, user: &str) -> Option<(u64, u64)> {
    marker(user, "usage").map(|v| {
        if v == "exact" {
            let messages: Vec<tenantry::llm::Message> =
                serde_json::from_value(body["messages"].clone()).expect("messages");
            let params = body.as_object().cloned().unwrap_or_default();
            (
                tenantry::quota::tokens::with_margin(
                    tenantry::quota::tokens::request_prompt_tokens(model, &messages, &params),
                ),
                body["max_tokens"].as_u64().expect("max_tokens"),
            )
        } else {
            let (p, c) = v.split_once(':').expect("usage:P:C");
            (p.parse().expect("P"), c.parse().expect("C"))
        }
    })
}

/// The number of whitespace-separated words in the request's messages, the scripted prompt
/// token count.
fn prompt_words(body: &Value) -> u64 {
    body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    m["content"]
                        .as_str()
                        .unwrap_or("")
                        .split_whitespace()
                        .count() as u64
                })
                .sum::<u64>()
        })
        .unwrap_or(0)
}

/// The answer as server-sent events, one word per chunk. `[[chunk-delay:MS]]` waits between
/// chunks; `[[cut-after:N]]` drops the connection after N words (no finish, no `[DONE]`). The
/// usage chunk (only with `stream_options.include_usage`) reports the scripted usage, or the
/// prompt's words and the number of chunks.
fn stream_answer(
    body: &Value,
    model: &str,
    answer: &str,
    user: &str,
    scripted_usage: Option<(u64, u64)>,
) -> Response {
    let delay = marker(user, "chunk-delay")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let cut = marker(user, "cut-after").and_then(|v| v.parse::<usize>().ok());
    let words: Vec<String> = answer
        .split_whitespace()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    let (p, c) = scripted_usage.unwrap_or((prompt_words(body), words.len() as u64));
    let event = |fields: Value| {
        let mut chunk = json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
                               "created": CREATED, "model": model});
        if let (Some(chunk), Value::Object(fields)) = (chunk.as_object_mut(), fields) {
            chunk.extend(fields);
        }
        format!("data: {chunk}\n\n")
    };
    let chunk = |delta: Value, finish: Value| {
        event(json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for w in words.iter().take(cut.unwrap_or(usize::MAX)) {
        events.push(chunk(json!({"content": w}), Value::Null));
    }
    if cut.is_none() {
        events.push(chunk(json!({}), json!("stop")));
        if body["stream_options"]["include_usage"] == true {
            events.push(event(json!({"choices": [],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})));
        }
        events.push("data: [DONE]\n\n".to_string());
    }
    let stream =
        futures::stream::iter(events.into_iter().enumerate()).then(move |(i, e)| async move {
            if i > 1 && delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            Ok::<_, std::convert::Infallible>(e)
        });
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/event-stream"),
    );
    resp
}

/// The value of the first `[[name:value]]` marker in `text`.
fn marker<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text.find(&format!("[[{name}:"))? + name.len() + 3;
    let len = text[start..].find("]]")?;
    Some(&text[start..start + len])
}

impl ScriptedLlm {
    /// Starts the server on 127.0.0.1:0.
    pub async fn start() -> Self {
        tenantry::install_crypto_provider();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let request_headers = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state((requests.clone(), request_headers.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            requests,
            request_headers,
        }
    }

    /// Base URL for `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Number of requests received so far.
    pub fn calls(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }

    /// The body of the last request received (panics when none came).
    pub fn last_request(&self) -> Value {
        self.requests
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("the upstream received a request")
    }

    /// The user messages received so far.
    pub fn user_messages(&self) -> Vec<String> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|b| {
                b["messages"]
                    .as_array()
                    .and_then(|m| m.iter().find(|m| m["role"] == "user"))
                    .and_then(|m| m["content"].as_str())
                    .map(str::to_string)
            })
            .collect()
    }
}
