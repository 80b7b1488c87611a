//! The remote embedder: a client of any OpenAI-compatible `POST {base_url}/embeddings`
//! endpoint (OpenAI, vLLM, Ollama, text-embeddings-inference, ...) ([`OpenAiEmbedder`]).
//!
//! This module owns the request (model name and inputs, the bearer key when one is set, a
//! deadline per request, large inputs split into several requests), the checks on the answer
//! (one vector per input, each of the configured dimension, returned in input order and
//! L2-normalised) and the mapping of failures onto [`EmbedError`] without ever echoing the key.
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use async_trait::async_trait;

use super::{EmbedError, Embedder};

/// Most inputs sent in one request (OpenAI accepts up to 2048); larger calls are split.
const MAX_INPUTS_PER_REQUEST: usize = 256;

/// Embeds texts by calling an OpenAI-compatible embeddings endpoint.
///
/// Cheap to share behind an `Arc`: the HTTP connection pool is reused across calls.
pub struct OpenAiEmbedder {
    client: Client<OpenAIConfig>,
    /// `{base_url}/embeddings`, for error messages.
    endpoint: String,
    model: String,
    dimension: usize,
    timeout: Duration,
    /// Kept only to scrub it from error messages.
    api_key: Option<String>,
}

impl std::fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("dimension", &self.dimension)
            .field("timeout", &self.timeout)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl OpenAiEmbedder {
    /// Creates a client of `{base_url}/embeddings` (e.g. `https://api.openai.com/v1`) for
    /// `model`, whose vectors have `dimension` components.
    ///
    /// `api_key` is sent as `Authorization: Bearer <key>`; with `None` an empty bearer is sent
    /// (local servers ignore it) and the `OPENAI_API_KEY` environment variable is *not* used.
    /// Each request (connect, send, answer) must complete within `timeout`. Nothing is sent
    /// here: an unreachable endpoint shows up on the first [`Embedder::embed`]. A base URL that
    /// is not `http(s)://...`, an empty model name or a zero dimension is an
    /// [`EmbedError::Load`].
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        model: &str,
        dimension: usize,
        timeout: Duration,
    ) -> Result<Self, EmbedError> {
        let base = base_url.trim().trim_end_matches('/');
        let load_err = |reason: &str| EmbedError::Load {
            path: base_url.to_string(),
            reason: reason.to_string(),
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(load_err(
                "the embeddings base URL must start with http:// or https://",
            ));
        }
        if model.trim().is_empty() {
            return Err(load_err("the embedding model name is empty"));
        }
        if dimension == 0 {
            return Err(load_err("the embedding dimension must be at least 1"));
        }
        let api_key = api_key.filter(|k| !k.is_empty());

        // Every field is set explicitly so that OPENAI_API_KEY / OPENAI_ORG_ID /
        // OPENAI_PROJECT_ID from the environment never leak to an arbitrary endpoint.
        let config = OpenAIConfig::new()
            .with_api_base(base)
            .with_api_key(api_key.clone().unwrap_or_default())
            .with_org_id("")
            .with_project_id("");
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| load_err(&format!("cannot build the HTTP client: {e}")))?;
        let client = Client::with_config(config).with_http_client(http);

        Ok(Self {
            client,
            endpoint: format!("{base}/embeddings"),
            model: model.to_string(),
            dimension,
            timeout,
            api_key,
        })
    }

    /// Sends one request for `texts` (at most [`MAX_INPUTS_PER_REQUEST`]) and checks the answer.
    async fn embed_chunk(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let count = texts.len();
        self.embed_input(EmbeddingInput::StringArray(texts), count)
            .await
    }

    /// Sends one request for `input` (`count` inputs) and checks the answer.
    async fn embed_input(
        &self,
        input: EmbeddingInput,
        count: usize,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let request = CreateEmbeddingRequest {
            model: self.model.clone(),
            input,
            ..CreateEmbeddingRequest::default()
        };
        let embeddings = self.client.embeddings();
        let response = embeddings
            .create(request)
            .await
            .map_err(|e| self.unavailable(&e))?;

        if response.data.len() != count {
            return Err(EmbedError::Compute(format!(
                "{} returned {} vectors for {count} inputs",
                self.endpoint,
                response.data.len()
            )));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; count];
        for item in response.data {
            let index = item.index as usize;
            let slot = out.get_mut(index).ok_or_else(|| {
                EmbedError::Compute(format!(
                    "{} returned a vector for input {index} of {count}",
                    self.endpoint
                ))
            })?;
            if slot.is_some() {
                return Err(EmbedError::Compute(format!(
                    "{} returned input {index} twice",
                    self.endpoint
                )));
            }
            *slot = Some(self.checked(item.embedding, index)?);
        }
        // Every slot is filled: `count` distinct in-range indices were seen.
        Ok(out.into_iter().flatten().collect())
    }

    /// Checks one returned vector (dimension, finite, non-zero) and L2-normalises it.
    fn checked(&self, mut vector: Vec<f32>, index: usize) -> Result<Vec<f32>, EmbedError> {
        if vector.len() != self.dimension {
            return Err(EmbedError::Compute(format!(
                "model {:?} at {} returned a vector of dimension {} for input {index}, but the \
                 configured dimension is {}",
                self.model,
                self.endpoint,
                vector.len(),
                self.dimension
            )));
        }
        if vector.iter().any(|x| !x.is_finite()) {
            return Err(EmbedError::Compute(format!(
                "{} returned a non-finite component for input {index}",
                self.endpoint
            )));
        }
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 {
            return Err(EmbedError::Compute(format!(
                "{} returned an all-zero vector for input {index}",
                self.endpoint
            )));
        }
        // Normalise defensively: most endpoints already do, some (e.g. local servers) don't.
        for x in &mut vector {
            *x /= norm;
        }
        Ok(vector)
    }

    /// Maps a client error to [`EmbedError::Unavailable`], with the cause chain and without
    /// the API key.
    fn unavailable(&self, err: &OpenAIError) -> EmbedError {
        if let OpenAIError::Reqwest(e) = err
            && e.is_timeout()
        {
            return EmbedError::Unavailable(format!(
                "{} did not answer within {:?}",
                self.endpoint, self.timeout
            ));
        }
        let mut message = format!("{}: {err}", self.endpoint);
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        if let Some(key) = &self.api_key {
            message = message.replace(key.as_str(), "<redacted>");
        }
        if let OpenAIError::Reqwest(e) = err
            && e.is_connect()
        {
            return EmbedError::Unreachable(message);
        }
        EmbedError::Unavailable(message)
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        let mut texts = texts.into_iter().peekable();
        while texts.peek().is_some() {
            let chunk: Vec<String> = texts.by_ref().take(MAX_INPUTS_PER_REQUEST).collect();
            out.extend(self.embed_chunk(chunk).await?);
        }
        Ok(out)
    }

    /// The token arrays go to the endpoint as they are (it tokenizes as the client did).
    async fn embed_tokens(
        &self,
        tokens: Vec<Vec<u32>>,
        _texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(MAX_INPUTS_PER_REQUEST) {
            let input = EmbeddingInput::ArrayOfIntegerArray(chunk.to_vec());
            out.extend(self.embed_input(input, chunk.len()).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::Json;
    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use serde_json::{Value, json};

    use super::*;

    const KEY: &str = "sk-test-secret-123";

    /// A request the scripted server received.
    #[derive(Debug, Clone)]
    struct Seen {
        authorization: Option<String>,
        body: Value,
    }

    /// How the scripted server answers.
    #[derive(Clone)]
    enum Reply {
        /// This status and JSON body, whatever the request.
        Fixed(StatusCode, Value),
        /// One vector `[i + 1, 1, 0, ...]` of `dim` components per input `i` of the request,
        /// listed in reverse index order.
        PerInput { dim: usize },
        /// Never answers (until the test ends).
        Hang,
    }

    struct Server {
        reply: Reply,
        seen: Mutex<Vec<Seen>>,
    }

    async fn handle(
        State(server): State<Arc<Server>>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        let authorization = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        let inputs = body["input"].as_array().map_or(0, Vec::len);
        server.seen.lock().unwrap().push(Seen {
            authorization,
            body,
        });
        match &server.reply {
            Reply::Fixed(status, value) => (*status, Json(value.clone())),
            Reply::PerInput { dim } => {
                let data: Vec<Value> = (0..inputs)
                    .rev()
                    .map(|i| {
                        let mut v = vec![0.0f32; *dim];
                        v[0] = (i + 1) as f32;
                        v[1] = 1.0;
                        json!({"object": "embedding", "index": i, "embedding": v})
                    })
                    .collect();
                (StatusCode::OK, Json(embeddings_body(data)))
            }
            Reply::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                (StatusCode::OK, Json(json!({})))
            }
        }
    }

    fn embeddings_body(data: Vec<Value>) -> Value {
        json!({
            "object": "list",
            "model": "scripted-embed",
            "data": data,
            "usage": {"prompt_tokens": 3, "total_tokens": 3}
        })
    }

    /// Starts the scripted server on 127.0.0.1:0; returns its base URL (`.../v1`).
    async fn start(reply: Reply) -> (String, Arc<Server>) {
        let server = Arc::new(Server {
            reply,
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/embeddings", post(handle))
            .with_state(Arc::clone(&server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/v1"), server)
    }

    fn embedder(base: &str, key: Option<&str>, dim: usize) -> OpenAiEmbedder {
        crate::install_crypto_provider();
        OpenAiEmbedder::new(
            base,
            key.map(str::to_string),
            "scripted-embed",
            dim,
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|t| t.to_string()).collect()
    }

    #[tokio::test]
    async fn token_arrays_are_sent_as_they_are() {
        let (base, server) = start(Reply::PerInput { dim: 4 }).await;
        let e = embedder(&base, None, 4);
        let tokens = vec![vec![1116, 60, 82], vec![9906]];
        let out = e
            .embed_tokens(tokens.clone(), texts(&["refunds", "Hello"]))
            .await
            .unwrap();
        assert_eq!(out.len(), 2);
        let seen = server.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].body["input"],
            json!(tokens),
            "the ids, not the texts"
        );
    }

    #[test]
    fn openai_embedder_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<OpenAiEmbedder>();
    }

    #[tokio::test]
    async fn returns_vectors_in_input_order_normalised_with_key_and_body() {
        // Unnormalised vectors, listed out of order.
        let (base, server) = start(Reply::Fixed(
            StatusCode::OK,
            embeddings_body(vec![
                json!({"object": "embedding", "index": 2, "embedding": [0.0, 0.0, 5.0]}),
                json!({"object": "embedding", "index": 0, "embedding": [3.0, 4.0, 0.0]}),
                json!({"object": "embedding", "index": 1, "embedding": [0.0, 2.0, 0.0]}),
            ]),
        ))
        .await;
        let e = embedder(&format!("{base}/"), Some(KEY), 3);
        assert_eq!(e.model(), "scripted-embed");
        assert_eq!(e.dimension(), 3);

        let v = e.embed(texts(&["first", "second", "third"])).await.unwrap();
        assert_eq!(
            v,
            vec![
                vec![0.6, 0.8, 0.0],
                vec![0.0, 1.0, 0.0],
                vec![0.0, 0.0, 1.0]
            ]
        );
        for x in &v {
            let norm: f32 = x.iter().map(|c| c * c).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-6);
        }

        let seen = server.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].authorization.as_deref(),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(seen[0].body["model"], "scripted-embed");
        assert_eq!(seen[0].body["input"], json!(["first", "second", "third"]));
        assert!(!format!("{e:?}").contains(KEY));
    }

    #[tokio::test]
    async fn empty_input_sends_nothing() {
        let (base, server) = start(Reply::PerInput { dim: 4 }).await;
        let e = embedder(&base, None, 4);
        assert!(e.embed(Vec::new()).await.unwrap().is_empty());
        assert!(server.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn large_inputs_are_split_and_keep_order() {
        let (base, server) = start(Reply::PerInput { dim: 4 }).await;
        let e = embedder(&base, None, 4);
        let n = MAX_INPUTS_PER_REQUEST + 10;
        let inputs: Vec<String> = (0..n).map(|i| format!("text {i}")).collect();
        let v = e.embed(inputs).await.unwrap();
        assert_eq!(v.len(), n);
        // Input j went out as input j % 256 of its request, answered with (j % 256 + 1, 1, 0, 0).
        for (j, x) in v.iter().enumerate() {
            let want = (j % MAX_INPUTS_PER_REQUEST + 1) as f32;
            assert!((x[0] / x[1] - want).abs() < 1e-3, "vector {j}: {x:?}");
            assert!((x.iter().map(|c| c * c).sum::<f32>() - 1.0).abs() < 1e-5);
        }
        let seen = server.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].body["input"].as_array().unwrap().len(), 256);
        assert_eq!(seen[0].body["input"][0], "text 0");
        assert_eq!(seen[1].body["input"][0], "text 256");
        assert_eq!(seen[1].body["input"].as_array().unwrap().len(), 10);
        // No key configured: no OPENAI_API_KEY from the environment, just an empty bearer
        // (the header value's trailing space is trimmed on the wire).
        assert_eq!(
            seen[0].authorization.as_deref().map(str::trim),
            Some("Bearer")
        );
    }

    /// The error of embedding one text against a server answering `reply`, and its message.
    async fn failure(reply: Reply) -> (EmbedError, String) {
        let (base, _server) = start(reply).await;
        let err = embedder(&base, Some(KEY), 3)
            .embed(texts(&["x"]))
            .await
            .unwrap_err();
        let msg = err.to_string();
        (err, msg)
    }

    #[tokio::test]
    async fn server_error_is_unavailable_without_key() {
        let (err, msg) = failure(Reply::Fixed(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": "boom", "type": "server_error"}}),
        ))
        .await;
        assert!(matches!(err, EmbedError::Unavailable(_)), "{msg}");
        assert!(msg.contains("500"), "{msg}");
        assert!(!msg.contains(KEY), "{msg}");
    }

    #[tokio::test]
    async fn client_error_is_unavailable() {
        let (err, msg) = failure(Reply::Fixed(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"message": "invalid api key", "type": "invalid_request_error",
                             "param": null, "code": "invalid_api_key"}}),
        ))
        .await;
        assert!(matches!(err, EmbedError::Unavailable(_)), "{msg}");
        assert!(msg.contains("invalid api key"), "{msg}");
        assert!(!msg.contains(KEY), "{msg}");
    }

    #[tokio::test]
    async fn wrong_dimension_is_compute_error() {
        let (base, _server) = start(Reply::PerInput { dim: 5 }).await;
        let err = embedder(&base, Some(KEY), 3)
            .embed(texts(&["x", "y"]))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, EmbedError::Compute(_)), "{msg}");
        assert!(msg.contains("dimension 5"), "{msg}");
        assert!(msg.contains("configured dimension is 3"), "{msg}");
    }

    #[tokio::test]
    async fn malformed_answers_are_compute_errors() {
        let bodies = [
            // Too few vectors.
            embeddings_body(vec![
                json!({"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}),
            ]),
            // Duplicate index.
            embeddings_body(vec![
                json!({"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}),
                json!({"object": "embedding", "index": 0, "embedding": [0.0, 1.0]}),
            ]),
            // Index out of range.
            embeddings_body(vec![
                json!({"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}),
                json!({"object": "embedding", "index": 7, "embedding": [0.0, 1.0]}),
            ]),
            // All-zero vector.
            embeddings_body(vec![
                json!({"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}),
                json!({"object": "embedding", "index": 1, "embedding": [0.0, 0.0]}),
            ]),
        ];
        for body in bodies {
            let (base, _server) = start(Reply::Fixed(StatusCode::OK, body.clone())).await;
            let err = embedder(&base, None, 2)
                .embed(texts(&["a", "b"]))
                .await
                .unwrap_err();
            assert!(matches!(err, EmbedError::Compute(_)), "{body}: {err}");
        }
    }

    #[tokio::test]
    async fn unreachable_and_slow_endpoints_are_unavailable() {
        // A port nothing listens on: bind, note the port, close.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = embedder(&format!("http://{addr}/v1"), Some(KEY), 3)
            .embed(texts(&["x"]))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, EmbedError::Unreachable(_)), "{msg}");
        assert!(!err.billable(), "never reached the endpoint: {msg}");
        assert!(!msg.contains(KEY), "{msg}");

        let (base, _server) = start(Reply::Hang).await;
        let slow = OpenAiEmbedder::new(
            &base,
            Some(KEY.to_string()),
            "scripted-embed",
            3,
            Duration::from_millis(200),
        )
        .unwrap();
        let err = slow.embed(texts(&["x"])).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, EmbedError::Unavailable(_)), "{msg}");
        assert!(msg.contains("did not answer"), "{msg}");
    }

    #[test]
    fn new_rejects_bad_configuration() {
        crate::install_crypto_provider();
        let t = Duration::from_secs(1);
        for (base, model, dim) in [
            ("localhost:8080/v1", "m", 3),
            ("http://localhost/v1", " ", 3),
            ("http://localhost/v1", "m", 0),
        ] {
            let err = OpenAiEmbedder::new(base, None, model, dim, t).unwrap_err();
            assert!(matches!(err, EmbedError::Load { .. }), "{err}");
        }
    }
}
