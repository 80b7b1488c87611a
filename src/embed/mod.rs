//! Embeddings: the [`Embedder`] trait and its two implementations — the in-process
//! all-MiniLM-L6-v2 model ([`local::LocalEmbedder`]) and any OpenAI-compatible
//! `/v1/embeddings` endpoint ([`openai::OpenAiEmbedder`]).
pub mod bert;
pub mod local;
pub mod openai;

use async_trait::async_trait;

/// Errors from an embedder.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// Model files missing or unreadable (start-up error).
    #[error("cannot load embedding model from {path}: {reason}")]
    Load {
        /// Model folder.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The model failed on this input.
    #[error("embedding failed: {0}")]
    Compute(String),
    /// The remote embedding endpoint failed after the request was sent (HTTP 503).
    #[error("embedding endpoint unavailable: {0}")]
    Unavailable(String),
    /// No connection to the remote embedding endpoint could be made: the request never
    /// reached it (HTTP 503).
    #[error("embedding endpoint unreachable: {0}")]
    Unreachable(String),
}

impl EmbedError {
    /// Whether the work may have been done (and paid for) although it failed: anything but a
    /// request that provably never reached the endpoint.
    pub fn billable(&self) -> bool {
        !matches!(self, Self::Load { .. } | Self::Unreachable(_))
    }
}

/// Turns texts into L2-normalised dense vectors (so cosine similarity is a dot product).
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// Name of the embedding model (recorded with cached answers).
    fn model(&self) -> &str;
    /// Vector dimension.
    fn dimension(&self) -> usize;
    /// Embeds each text; the result has one vector per input, in order.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError>;
    /// Embeds inputs sent as token arrays (cl100k_base ids, as OpenAI clients encode them);
    /// `texts` are the same inputs decoded. The default embeds the texts (a local model has
    /// a tokenizer of its own); an OpenAI-compatible endpoint gets the tokens as they are.
    async fn embed_tokens(
        &self,
        tokens: Vec<Vec<u32>>,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        drop(tokens);
        self.embed(texts).await
    }
}
