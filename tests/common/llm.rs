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
/// model, and records every request body. Model `fail-500` gets a 500; `slow` waits 30 s;
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
    let answer = format!("ANSWER[{model}]: {user}");
    if body["stream"] == true {
        return stream_answer(&body, &model, &answer, &user, scripted_usage);
    }
    let (p, c) = scripted_usage.unwrap_or((prompt_words(&body), 7));
    Json(json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
    }))
    .into_response()
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
            (
                tenantry::quota::tokens::with_margin(tenantry::quota::tokens::prompt_tokens(
                    model, &messages,
                )),
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
