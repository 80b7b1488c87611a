//! Any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, Ollama, llama.cpp's
//! server, ...), called with `reqwest` directly so that retries are decided in one place
//! ([`super::resilient`]) rather than also inside a client library.
//!
//! The request is written as JSON as it was validated (tools, `response_format` and the
//! messages of a tool round trip pass through unchanged). Answers are read into small borrowed
//! structs that pick out only what tenantry needs (text, tool calls, refusal, model, finish
//! reason, usage) and skip the rest unparsed.
use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{
    Attempt, ChatModel, ChatRequest, ChatResponse, ChatStream, Chunk, Cost, LlmError, Message,
    Usage,
};

/// Client of one OpenAI-compatible endpoint.
pub struct OpenAiChat {
    http: reqwest::Client,
    /// For streams: the timeout bounds each wait for data, not the whole answer.
    stream_http: reqwest::Client,
    /// `…/chat/completions`, parsed once.
    url: reqwest::Url,
    api_key: Option<String>,
}

impl OpenAiChat {
    /// A client of `base_url` (e.g. `http://127.0.0.1:8080/v1`) with an optional API key and a
    /// timeout: of a whole call, or for a stream of each wait for data (connect timeout: 10 s or
    /// less).
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, LlmError> {
        Self::with_connect_timeout(base_url, api_key, timeout, Duration::from_secs(10))
    }

    /// Like [`OpenAiChat::new`] with a connect timeout (capped at `timeout`).
    pub fn with_connect_timeout(
        base_url: &str,
        api_key: Option<String>,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, LlmError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout.min(timeout))
            .build()
            .map_err(|e| LlmError::Upstream(format!("cannot build HTTP client: {e}")))?;
        let stream_http = reqwest::Client::builder()
            .read_timeout(timeout)
            .connect_timeout(connect_timeout.min(timeout))
            .build()
            .map_err(|e| LlmError::Upstream(format!("cannot build HTTP client: {e}")))?;
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let url = reqwest::Url::parse(&url)
            .map_err(|e| LlmError::Upstream(format!("invalid upstream URL: {e}")))?;
        Ok(Self {
            http,
            stream_http,
            url,
            api_key: api_key.filter(|k| !k.is_empty()),
        })
    }
}

/// 429 and 5xx are worth retrying; other error statuses are the request's fault.
fn status_retryable(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

/// Transport errors: timeouts are not retried on the same endpoint (the upstream may still be
/// working on the request); failures to connect (no request reached it) are.
fn transport_error(e: reqwest::Error) -> Attempt {
    if e.is_timeout() {
        return Attempt::Failed(LlmError::Timeout);
    }
    // reqwest's Display includes the URL but never headers (the API key).
    let connect = e.is_connect();
    let error = LlmError::Upstream(e.without_url().to_string());
    if connect {
        Attempt::Retryable {
            error,
            retry_after: None,
            cost: Cost::Nothing,
        }
    } else {
        Attempt::Failed(error)
    }
}

/// `Retry-After` in seconds (the HTTP-date form is ignored).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl OpenAiChat {
    /// Sends one request; an error status is classified into an [`Attempt`].
    async fn send(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::Response, Attempt> {
        let body = UpstreamRequest {
            model: &request.model,
            messages: &request.messages,
            // `max_tokens` rather than `max_completion_tokens`: every OpenAI-compatible server
            // (vLLM, llama.cpp, Ollama) understands it.
            max_tokens: request.max_tokens,
            params: &request.params,
            stream: stream.then_some(true),
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        };
        let client = if stream {
            &self.stream_http
        } else {
            &self.http
        };
        let mut builder = client.post(self.url.clone()).json(&body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        // W3C trace context of the current (`llm`) span, when traces are exported.
        for (k, v) in crate::telemetry::traceparent_headers() {
            if let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::try_from(k),
                reqwest::header::HeaderValue::try_from(v),
            ) {
                builder = builder.header(k, v);
            }
        }
        let resp = builder.send().await.map_err(transport_error)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let wait = retry_after(resp.headers());
        let bytes = resp.bytes().await.map_err(transport_error)?;
        let text = String::from_utf8_lossy(&bytes);
        let detail: String = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(200).collect());
        let error = LlmError::Upstream(format!("upstream answered {status} {detail}"));
        Err(if status_retryable(status) {
            Attempt::Retryable {
                error,
                retry_after: wait,
                // A 429 is a refusal; a 5xx came after the upstream read the request.
                cost: if status.is_server_error() {
                    Cost::Prompt
                } else {
                    Cost::Nothing
                },
            }
        } else {
            Attempt::Fatal(error)
        })
    }
}

/// The body sent upstream.
#[derive(Serialize)]
struct UpstreamRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    max_tokens: u32,
    #[serde(flatten)]
    params: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// `usage` of an answer or of a stream's last chunk.
#[derive(Deserialize)]
struct UsageIn {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl From<UsageIn> for Usage {
    fn from(u: UsageIn) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens.unwrap_or(0),
            completion_tokens: u.completion_tokens.unwrap_or(0),
        }
    }
}

/// A whole answer: what tenantry reads of it.
#[derive(Deserialize)]
struct CompletionIn {
    #[serde(default)]
    model: String,
    choices: Vec<CompletionChoiceIn>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Deserialize)]
struct CompletionChoiceIn {
    #[serde(default)]
    finish_reason: Option<String>,
    message: AnswerIn,
}

#[derive(Deserialize)]
struct AnswerIn {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<serde_json::Value>,
    #[serde(default)]
    refusal: Option<String>,
}

/// One event of a stream: what tenantry reads of it (borrowed from the event's text).
#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(default, borrow)]
    choices: Option<Vec<EventChoiceIn<'a>>>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct EventChoiceIn<'a> {
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<DeltaIn<'a>>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<serde_json::Value>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
}

/// What a streamed answer has told so far, turning each `data:` payload into [`Chunk`]s.
#[derive(Debug, Default)]
struct StreamDecoder {
    /// Whether the model was reported ([`Chunk::Model`]).
    announced: bool,
    /// The model answering: the requested one until the upstream names it.
    model: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl StreamDecoder {
    /// The final [`Chunk::Done`].
    fn done(&mut self) -> Chunk {
        Chunk::Done {
            model: std::mem::take(&mut self.model),
            finish_reason: self
                .finish_reason
                .take()
                .unwrap_or_else(|| "stop".to_string()),
            usage: self.usage.take(),
        }
    }

    /// Interprets one `data:` payload: what it carries (the model, first; a delta), in order.
    fn event(&mut self, data: &str) -> Result<Vec<Chunk>, LlmError> {
        let v: EventIn<'_> = serde_json::from_str(data)
            .map_err(|e| LlmError::Upstream(format!("unreadable upstream stream event: {e}")))?;
        if let Some(error) = v.error {
            let detail = error["message"]
                .as_str()
                .or_else(|| error.as_str())
                .unwrap_or("unknown error");
            return Err(LlmError::Upstream(format!(
                "upstream stream failed: {detail}"
            )));
        }
        let mut out = Vec::new();
        if let Some(m) = v.model.filter(|m| !m.is_empty()) {
            if *m != *self.model {
                self.model = m.into_owned();
            }
            if !self.announced {
                self.announced = true;
                out.push(Chunk::Model(self.model.clone()));
            }
        }
        if let Some(u) = v.usage {
            self.usage = Some(u.into());
        }
        let Some(choice) = v.choices.and_then(|c| c.into_iter().next()) else {
            return Ok(out);
        };
        if let Some(r) = choice.finish_reason {
            self.finish_reason = Some(r.into_owned());
        }
        if let Some(delta) = choice.delta {
            if let Some(c) = delta.content.filter(|c| !c.is_empty()) {
                out.push(Chunk::Delta(c.into_owned()));
            }
            if let Some(r) = delta.refusal.filter(|r| !r.is_empty()) {
                out.push(Chunk::Refusal(r.into_owned()));
            }
            if let Some(calls) = delta.tool_calls {
                out.push(Chunk::ToolCalls(calls));
            }
        }
        Ok(out)
    }
}

/// The [`Chunk`]s of a server-sent-event body (one JSON payload per event, until `[DONE]`);
/// `transport` classifies a failure to read the body. A body that ends without `[DONE]` is the
/// answer if the upstream said why it stopped, otherwise a cut stream (an error).
fn decode_stream<S, B, E>(
    body: S,
    model: String,
    transport: fn(E) -> LlmError,
) -> impl futures::Stream<Item = Result<Chunk, LlmError>> + Send
where
    S: futures::Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send,
    E: std::fmt::Display + Send,
{
    use eventsource_stream::{EventStreamError, Eventsource as _};
    use futures::StreamExt as _;
    async_stream::stream! {
        let mut events = Box::pin(body.eventsource());
        let mut decoder = StreamDecoder { model, ..StreamDecoder::default() };
        loop {
            let data = match events.next().await {
                Some(Ok(event)) => event.data,
                Some(Err(EventStreamError::Transport(e))) => {
                    yield Err(transport(e));
                    return;
                }
                Some(Err(e)) => {
                    yield Err(LlmError::Upstream(format!("unreadable upstream stream: {e}")));
                    return;
                }
                None if decoder.finish_reason.is_some() => {
                    yield Ok(decoder.done());
                    return;
                }
                None => {
                    yield Err(LlmError::Upstream("upstream stream ended early".to_string()));
                    return;
                }
            };
            let data = data.trim();
            if data == "[DONE]" {
                yield Ok(decoder.done());
                return;
            }
            match decoder.event(data) {
                Ok(chunks) => {
                    for chunk in chunks {
                        yield Ok(chunk);
                    }
                }
                Err(e) => {
                    yield Err(e);
                    return;
                }
            }
        }
    }
}

/// A transport failure while reading a stream.
fn stream_transport_error(e: reqwest::Error) -> LlmError {
    transport_error(e).into_error()
}

#[async_trait]
impl ChatModel for OpenAiChat {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.attempt(request).await.map_err(Attempt::into_error)
    }

    async fn stream_attempt(&self, request: ChatRequest) -> Result<ChatStream, Attempt> {
        let resp = self.send(&request, true).await?;
        Ok(Box::pin(decode_stream(
            resp.bytes_stream(),
            request.model,
            stream_transport_error,
        )))
    }

    async fn attempt(&self, request: ChatRequest) -> Result<ChatResponse, Attempt> {
        let bytes = self
            .send(&request, false)
            .await?
            .bytes()
            .await
            .map_err(transport_error)?;
        let resp: CompletionIn = serde_json::from_slice(&bytes).map_err(|e| {
            Attempt::Failed(LlmError::Upstream(format!(
                "unreadable upstream response: {e}"
            )))
        })?;
        let no_answer = || {
            Attempt::Failed(LlmError::Upstream(
                "upstream returned no answer".to_string(),
            ))
        };
        let choice = resp.choices.into_iter().next().ok_or_else(no_answer)?;
        let message = choice.message;
        let tool_calls = message
            .tool_calls
            .filter(|c| c.as_array().is_none_or(|a| !a.is_empty()));
        if message.content.is_none() && tool_calls.is_none() && message.refusal.is_none() {
            return Err(no_answer());
        }
        Ok(ChatResponse {
            content: message.content.unwrap_or_default(),
            tool_calls,
            refusal: message.refusal,
            model: resp.model,
            finish_reason: choice.finish_reason.unwrap_or_else(|| "stop".to_string()),
            usage: resp.usage.map(Usage::from).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    /// Decodes `body`, delivered in the given pieces.
    async fn decode(pieces: &[&'static str]) -> Vec<Result<Chunk, String>> {
        let pieces: Vec<Result<&'static [u8], String>> =
            pieces.iter().map(|&p| Ok(p.as_bytes())).collect();
        let body = futures::stream::iter(pieces);
        decode_stream(body, "asked".to_string(), LlmError::Upstream)
            .map(|c| c.map_err(|e| e.to_string()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn multi_line_data_fields_are_joined() {
        let chunks = decode(&[
            "data: {\"model\": \"m1\",\n",
            "data:  \"choices\": [{\"delta\": {\"content\": \"Hi\"}}]}\n\n",
            ": a comment\n\nevent: ping\n\n",
            "data: {\"choices\": [{\"delta\": {}, \"finish_reason\": \"length\"}],\n",
            "data: \"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 1}}\n\n",
            "data: [DONE]\n\n",
        ])
        .await;
        assert_eq!(
            chunks,
            vec![
                Ok(Chunk::Model("m1".to_string())),
                Ok(Chunk::Delta("Hi".to_string())),
                Ok(Chunk::Done {
                    model: "m1".to_string(),
                    finish_reason: "length".to_string(),
                    usage: Some(Usage {
                        prompt_tokens: 3,
                        completion_tokens: 1,
                    }),
                }),
            ]
        );
    }

    #[tokio::test]
    async fn tool_call_and_refusal_deltas_pass_through() {
        let calls = r#"[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]"#;
        let chunks = decode(&[
            "data: {\"model\": \"m\", \"choices\": [{\"delta\": {\"role\": \"assistant\", \"content\": null, \"tool_calls\": ",
            calls,
            "}}]}\n\n",
            "data: {\"choices\": [{\"delta\": {\"refusal\": \"no \\u00e9\"}}]}\n\n",
            "data: {\"choices\": [{\"delta\": {}, \"finish_reason\": \"tool_calls\"}], \"usage\": null}\n\n",
            "data: [DONE]\n\n",
        ])
        .await;
        assert_eq!(
            chunks,
            vec![
                Ok(Chunk::Model("m".to_string())),
                Ok(Chunk::ToolCalls(
                    serde_json::from_str(calls).unwrap_or_default()
                )),
                Ok(Chunk::Refusal("no \u{e9}".to_string())),
                Ok(Chunk::Done {
                    model: "m".to_string(),
                    finish_reason: "tool_calls".to_string(),
                    usage: None,
                }),
            ]
        );
    }

    #[tokio::test]
    async fn a_cut_stream_is_an_error_unless_it_said_why_it_stopped() {
        let cut = decode(&["data: {\"choices\": [{\"delta\": {\"content\": \"a\"}}]}\n\n"]).await;
        assert_eq!(cut.len(), 2);
        assert!(cut[1].as_ref().is_err_and(|e| e.contains("ended early")));
        let stopped =
            decode(&["data: {\"choices\": [{\"delta\": {}, \"finish_reason\": \"stop\"}]}\n\n"])
                .await;
        assert_eq!(
            stopped,
            vec![Ok(Chunk::Done {
                model: "asked".to_string(),
                finish_reason: "stop".to_string(),
                usage: None,
            })]
        );
        let failed = decode(&["data: {\"error\": {\"message\": \"overloaded\"}}\n\n"]).await;
        assert!(failed[0].as_ref().is_err_and(|e| e.contains("overloaded")));
    }
}
