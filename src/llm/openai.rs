//! Any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, Ollama, llama.cpp's
//! server, ...): requests and responses use `async-openai`'s types, sent with `reqwest`
//! directly so that retries are decided in one place ([`super::resilient`]) rather than also
//! inside the client library (whose executor retries 429/5xx on its own).
use std::time::Duration;

use async_openai::types::chat::{CreateChatCompletionRequest, CreateChatCompletionResponse};
use async_trait::async_trait;
use reqwest::StatusCode;

use super::{
    Attempt, ChatModel, ChatRequest, ChatResponse, ChatStream, Chunk, Cost, LlmError, Usage,
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
        let mut body = serde_json::json!({
            "model": request.model,
            "messages": request.messages,
            // `max_tokens` rather than `max_completion_tokens`: every OpenAI-compatible server
            // (vLLM, llama.cpp, Ollama) understands it.
            "max_tokens": request.max_tokens,
        });
        for (k, v) in &request.params {
            body[k] = v.clone();
        }
        if stream {
            body["stream"] = serde_json::Value::Bool(true);
            body["stream_options"] = serde_json::json!({"include_usage": true});
        }
        // Typed through async-openai: a parameter it cannot represent is refused here.
        let req: CreateChatCompletionRequest = serde_json::from_value(body).map_err(|e| {
            Attempt::Fatal(LlmError::Upstream(format!("cannot build request: {e}")))
        })?;
        let client = if stream {
            &self.stream_http
        } else {
            &self.http
        };
        let mut builder = client.post(self.url.clone()).json(&req);
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
        let v: serde_json::Value = serde_json::from_str(data)
            .map_err(|e| LlmError::Upstream(format!("unreadable upstream stream event: {e}")))?;
        if let Some(msg) = v.get("error") {
            let detail = msg["message"].as_str().unwrap_or("unknown error");
            return Err(LlmError::Upstream(format!(
                "upstream stream failed: {detail}"
            )));
        }
        let mut out = Vec::new();
        if let Some(m) = v["model"].as_str().filter(|m| !m.is_empty()) {
            self.model = m.to_string();
            if !self.announced {
                self.announced = true;
                out.push(Chunk::Model(m.to_string()));
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(Usage {
                prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
                completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
            });
        }
        let choice = &v["choices"][0];
        if let Some(r) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(r.to_string());
        }
        if let Some(c) = choice["delta"]["content"]
            .as_str()
            .filter(|c| !c.is_empty())
        {
            out.push(Chunk::Delta(c.to_string()));
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
        let resp: CreateChatCompletionResponse = serde_json::from_slice(&bytes).map_err(|e| {
            Attempt::Failed(LlmError::Upstream(format!(
                "unreadable upstream response: {e}"
            )))
        })?;
        let choice = resp.choices.into_iter().next().ok_or_else(|| {
            Attempt::Failed(LlmError::Upstream(
                "upstream returned no answer".to_string(),
            ))
        })?;
        let content = choice.message.content.ok_or_else(|| {
            Attempt::Failed(LlmError::Upstream(
                "upstream returned no answer".to_string(),
            ))
        })?;
        let finish_reason = choice
            .finish_reason
            .and_then(|r| serde_json::to_value(r).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "stop".to_string());
        let usage = resp
            .usage
            .map(|u| Usage {
                prompt_tokens: u64::from(u.prompt_tokens),
                completion_tokens: u64::from(u.completion_tokens),
            })
            .unwrap_or_default();
        Ok(ChatResponse {
            content,
            model: resp.model,
            finish_reason,
            usage,
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
