//! Any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, Ollama, llama.cpp's
//! server, ...): requests and responses use `async-openai`'s types, sent with `reqwest`
//! directly so that retries are decided in one place ([`super::resilient`]) rather than also
//! inside the client library (whose executor retries 429/5xx on its own).
use std::time::Duration;

use async_openai::types::chat::{CreateChatCompletionRequest, CreateChatCompletionResponse};
use async_trait::async_trait;
use reqwest::StatusCode;

use super::{Attempt, ChatModel, ChatRequest, ChatResponse, LlmError, Usage};

/// Client of one OpenAI-compatible endpoint.
pub struct OpenAiChat {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
}

impl OpenAiChat {
    /// A client of `base_url` (e.g. `http://127.0.0.1:8080/v1`) with an optional API key and a
    /// per-call timeout (connect timeout: 10 s or less).
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
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout.min(timeout))
            .build()
            .map_err(|e| LlmError::Upstream(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
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

#[async_trait]
impl ChatModel for OpenAiChat {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.attempt(request).await.map_err(Attempt::into_error)
    }

    async fn attempt(&self, request: ChatRequest) -> Result<ChatResponse, Attempt> {
        let body = serde_json::json!({
            "model": request.model,
            "messages": request.messages,
            // `max_tokens` rather than `max_completion_tokens`: every OpenAI-compatible server
            // (vLLM, llama.cpp, Ollama) understands it.
            "max_tokens": request.max_tokens,
        });
        let req: CreateChatCompletionRequest = serde_json::from_value(body).map_err(|e| {
            Attempt::Fatal(LlmError::Upstream(format!("cannot build request: {e}")))
        })?;
        let mut builder = self.http.post(&self.url).json(&req);
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
        let wait = retry_after(resp.headers());
        let bytes = resp.bytes().await.map_err(transport_error)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let detail: String = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(200).collect());
            let error = LlmError::Upstream(format!("upstream answered {status} {detail}"));
            return Err(if status_retryable(status) {
                Attempt::Retryable {
                    error,
                    retry_after: wait,
                }
            } else {
                Attempt::Fatal(error)
            });
        }
        let resp: CreateChatCompletionResponse = serde_json::from_slice(&bytes).map_err(|e| {
            Attempt::Failed(LlmError::Upstream(format!(
                "unreadable upstream response: {e}"
            )))
        })?;
        let content = resp
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| {
                Attempt::Failed(LlmError::Upstream(
                    "upstream returned no answer".to_string(),
                ))
            })?;
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
            usage,
        })
    }
}
