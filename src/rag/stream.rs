//! A streamed answer as it passes through: its text is kept for the settlement, it is settled
//! when it ends, and a complete answer is stored in the semantic cache.
use futures::StreamExt as _;

use super::settle::Settlement;
use super::{LOG_TARGET, Source};
use crate::cache;
use crate::llm::{ChatStream, Chunk, Usage};
use crate::vector::TenantVectors;

/// Where a fresh answer goes in the tenant's semantic cache.
pub(super) struct CacheStore {
    pub(super) vectors: TenantVectors,
    pub(super) key: cache::Key,
    /// The question's embedding.
    pub(super) query: Vec<f32>,
    /// Passages the answer was built from.
    pub(super) sources: Vec<Source>,
}

impl CacheStore {
    /// Stores a final answer; a failure is logged, never returned.
    pub(super) async fn remember(self, answer: &str, model: &str, usage: Usage) {
        let entry = cache::Entry {
            answer: answer.to_string(),
            sources: serde_json::to_value(&self.sources).unwrap_or_default(),
            model: model.to_string(),
            usage: serde_json::to_value(usage).unwrap_or_default(),
            created_ms: None,
        };
        if let Err(e) = cache::store(&self.vectors, &self.key, self.query, &entry).await {
            tracing::warn!(target: LOG_TARGET, tenant_id = %self.vectors.tenant(), error = %e, "could not store a semantic-cache entry");
        }
    }
}

/// `chunks` settled by `settlement`: on the final usage when the stream completes (its
/// [`Chunk::Done`] then carries the usage charged), on what was generated when it breaks off or
/// is dropped. A stream whose text reaches its reservation is stopped there (finish reason
/// `length`). A complete answer is stored in `store`.
pub(super) fn settled(
    mut chunks: ChatStream,
    settlement: Settlement,
    store: Option<CacheStore>,
) -> ChatStream {
    let mut settlement = settlement.streaming();
    Box::pin(async_stream::stream! {
        // The model answering: the one asked for until the stream names another.
        let mut model = settlement.model().to_string();
        // Tool calls or a refusal make the answer no text to reuse: it is not cached.
        let mut store = store;
        // Time to first token: to the first output of any kind (text, tool calls, refusal).
        let mut first_output = true;
        while let Some(item) = chunks.next().await {
            if first_output && matches!(item, Ok(Chunk::Delta(_) | Chunk::ToolCalls(_) | Chunk::Refusal(_))) {
                first_output = false;
                settlement.first_output(&model);
            }
            match item {
                Ok(Chunk::Model(m)) => {
                    model.clone_from(&m);
                    yield Ok(Chunk::Model(m));
                }
                Ok(Chunk::Delta(text)) => {
                    if !settlement.push_text(&text) {
                        // The answer reached its reservation: stopped here, as `max_tokens`
                        // would (an upstream may ignore it), and charged what was reserved.
                        tracing::warn!(target: LOG_TARGET, model = %model, "stream stopped at its reservation");
                        drop(chunks);
                        let usage = settlement.finish(&model, None).await;
                        yield Ok(Chunk::Done { model, finish_reason: "length".to_string(), usage: Some(usage) });
                        return;
                    }
                    yield Ok(Chunk::Delta(text));
                }
                Ok(chunk @ (Chunk::ToolCalls(_) | Chunk::Refusal(_))) => {
                    store = None;
                    let generated = match &chunk {
                        Chunk::ToolCalls(calls) => calls.to_string(),
                        Chunk::Refusal(text) => text.clone(),
                        _ => String::new(),
                    };
                    if !settlement.push_generated(&generated) {
                        tracing::warn!(target: LOG_TARGET, model = %model, "stream stopped at its reservation");
                        drop(chunks);
                        let usage = settlement.finish(&model, None).await;
                        yield Ok(Chunk::Done { model, finish_reason: "length".to_string(), usage: Some(usage) });
                        return;
                    }
                    yield Ok(chunk);
                }
                Ok(Chunk::Done { model: done_model, finish_reason, usage }) => {
                    if !done_model.is_empty() {
                        model = done_model;
                    }
                    let text = settlement.text().to_string();
                    let usage = settlement.finish(&model, usage).await;
                    if let Some(store) = store {
                        store.remember(&text, &model, usage).await;
                    }
                    yield Ok(Chunk::Done { model, finish_reason, usage: Some(usage) });
                    return;
                }
                Err(e) => {
                    settlement.broken(&e);
                    yield Err(e);
                    return;
                }
            }
        }
        // The model's stream ended without a final chunk: cut (the settlement drops).
    })
}
