//! Any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, Ollama, llama.cpp's
//! server, ...) through `async-openai`.
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::traits::RequestOptionsBuilder as _;
use async_openai::types::chat::CreateChatCompletionRequest;
use async_trait::async_trait;

use super::{ChatModel, ChatRequest, ChatResponse, LlmError, Usage};

/// Client of one OpenAI-compatible endpoint.
pub struct OpenAiChat {
    client: Client<OpenAIConfig>,
}

impl OpenAiChat {
    /// A client of `base_url` (e.g. `http://127.0.0.1:8080/v1`) with an optional API key and a
    /// per-call timeout.
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, LlmError> {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .build()
            .map_err(|e| LlmError::Upstream(format!("cannot build HTTP client: {e}")))?;
        let mut config = OpenAIConfig::new().with_api_base(base_url.trim_end_matches('/'));
        if let Some(key) = api_key {
            config = config.with_api_key(key);
        }
        Ok(Self {
            client: Client::with_config(config).with_http_client(http),
        })
    }
}

fn map_error(e: OpenAIError) -> LlmError {
    match e {
        OpenAIError::Reqwest(e) if e.is_timeout() => LlmError::Timeout,
        OpenAIError::Reqwest(e) => {
            // reqwest's Display includes the URL but never headers (the API key).
            LlmError::Upstream(e.without_url().to_string())
        }
        OpenAIError::ApiError(e) => LlmError::Upstream(format!("upstream answered {e}")),
        OpenAIError::JSONDeserialize(e, _) => {
            LlmError::Upstream(format!("unreadable upstream response: {e}"))
        }
        other => LlmError::Upstream(other.to_string()),
    }
}

#[async_trait]
impl ChatModel for OpenAiChat {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        let body = serde_json::json!({
            "model": request.model,
            "messages": request.messages,
            // `max_tokens` rather than `max_completion_tokens`: every OpenAI-compatible server
            // (vLLM, llama.cpp, Ollama) understands it.
            "max_tokens": request.max_tokens,
        });
        let req: CreateChatCompletionRequest = serde_json::from_value(body)
            .map_err(|e| LlmError::Upstream(format!("cannot build request: {e}")))?;
        // W3C trace context of the current (`llm`) span, when traces are exported.
        let mut trace_headers = reqwest::header::HeaderMap::new();
        for (k, v) in crate::telemetry::traceparent_headers() {
            if let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::try_from(k),
                reqwest::header::HeaderValue::try_from(v),
            ) {
                trace_headers.insert(k, v);
            }
        }
        let resp = self
            .client
            .chat()
            .headers(trace_headers)
            .create(req)
            .await
            .map_err(map_error)?;
        let content = resp
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| LlmError::Upstream("upstream returned no answer".to_string()))?;
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
