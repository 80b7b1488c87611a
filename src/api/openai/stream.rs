//! A streamed completion as OpenAI sends it: server-sent `chat.completion.chunk` events (the
//! role first, with tenantry's `tenantry` object: cached or not, the sources; then the text
//! or tool-call deltas, then the finish reason), optionally a usage chunk, then `[DONE]`. A
//! failure after the headers went out is an error event (what OpenAI's SDKs raise).
use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use futures::StreamExt as _;

use super::completions::{completion_id, unix_now};
use super::types::{ChunkChoice, CompletionChunk, CompletionExtras, Delta, WireUsage};
use crate::api::ApiError;
use crate::llm::{ChatStream, Chunk};

/// The chunks of one completion: what every chunk repeats.
struct ChunkWriter {
    id: String,
    created: u64,
    include_usage: bool,
    /// The model answering (every chunk names it, a fallback's too).
    model: String,
}

impl ChunkWriter {
    fn event(chunk: &CompletionChunk) -> Event {
        Event::default().data(serde_json::to_string(chunk).unwrap_or_default())
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Option<WireUsage>>) -> Event {
        Self::event(&self.chunk_with(choices, usage, None))
    }

    fn chunk_with(
        &self,
        choices: Vec<ChunkChoice>,
        usage: Option<Option<WireUsage>>,
        tenantry: Option<CompletionExtras>,
    ) -> CompletionChunk {
        CompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
            tenantry,
        }
    }

    /// The first chunk: the role, and tenantry's additions.
    fn first(&self, extras: CompletionExtras) -> Event {
        let choice = ChunkChoice {
            index: 0,
            delta: Delta {
                role: Some("assistant"),
                content: Some(String::new()),
                ..Delta::default()
            },
            logprobs: None,
            finish_reason: None,
        };
        Self::event(&self.chunk_with(
            vec![choice],
            self.include_usage.then_some(None),
            Some(extras),
        ))
    }

    /// A chunk of the one choice (with `usage: null` under `include_usage`).
    fn choice(&self, delta: Delta, finish_reason: Option<String>) -> Event {
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        };
        self.chunk(vec![choice], self.include_usage.then_some(None))
    }

    /// The last chunk under `include_usage`: no choice, the usage of the whole request.
    fn usage(&self, usage: WireUsage) -> Event {
        self.chunk(Vec::new(), Some(Some(usage)))
    }
}

/// `chunks` as an SSE response; `model` names the answering model until the stream says
/// which answers; `extras` go with the first chunk. While it waits for a chunk, a
/// `: keep-alive` comment goes out every `keep_alive` (none when zero).
pub(super) fn sse(
    chunks: ChatStream,
    model: String,
    include_usage: bool,
    extras: CompletionExtras,
    keep_alive: Duration,
) -> Response {
    let writer = ChunkWriter {
        id: completion_id(),
        created: unix_now(),
        include_usage,
        model,
    };
    let events = events(chunks, writer, extras).map(Ok::<_, Infallible>);
    let sse = Sse::new(events);
    let mut resp = if keep_alive.is_zero() {
        sse.into_response()
    } else {
        sse.keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
            .into_response()
    };
    // Proxies (nginx) would otherwise buffer the events.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn events(
    mut chunks: ChatStream,
    mut w: ChunkWriter,
    extras: CompletionExtras,
) -> impl futures::Stream<Item = Event> + Send {
    async_stream::stream! {
        // Wait for the stream to name the model before the first chunk.
        let mut next = chunks.next().await;
        if let Some(Ok(Chunk::Model(m))) = &next {
            w.model.clone_from(m);
            next = chunks.next().await;
        }
        yield w.first(extras);
        loop {
            match next {
                Some(Ok(Chunk::Model(m))) => w.model = m,
                Some(Ok(Chunk::Delta(text))) => {
                    yield w.choice(Delta { content: Some(text), ..Delta::default() }, None);
                }
                Some(Ok(Chunk::Refusal(text))) => {
                    yield w.choice(Delta { refusal: Some(text), ..Delta::default() }, None);
                }
                Some(Ok(Chunk::ToolCalls(calls))) => {
                    yield w.choice(Delta { tool_calls: Some(calls), ..Delta::default() }, None);
                }
                Some(Ok(Chunk::Done { model, finish_reason, usage })) => {
                    if !model.is_empty() {
                        w.model = model;
                    }
                    yield w.choice(Delta::default(), Some(finish_reason));
                    if w.include_usage {
                        yield w.usage(usage.unwrap_or_default().into());
                    }
                    yield Event::default().data("[DONE]");
                    return;
                }
                Some(Err(e)) => {
                    yield Event::default().data(ApiError::Upstream(e).body().to_string());
                    return;
                }
                None => return,
            }
            next = chunks.next().await;
        }
    }
}
