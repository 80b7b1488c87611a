//! Settling one model call: what it is charged, the metrics it counts, its span fields and the
//! log line of its end — the same for a whole answer and a stream.
use std::time::Instant;

use tracing::Span;
use tracing::field::Empty;

use super::{Error, LOG_TARGET, Services};
use crate::llm::{ChatModel, ChatRequest, LlmError, Usage};
use crate::metrics::{RequestRecord, RequestStatus};
use crate::quota::{Reservation, tokens};

/// Tokens to reserve for `request`: its prompt plus the most it may generate. The offline
/// responder calls no model: it needs a request slot but no tokens.
pub(super) fn estimate(llm: &dyn ChatModel, request: &ChatRequest) -> u64 {
    if llm.offline() {
        0
    } else {
        tokens::prompt_tokens(&request.model, &request.messages) + u64::from(request.max_tokens)
    }
}

/// The span of one upstream call (GenAI semantic conventions; response fields recorded by
/// [`record_response`]).
fn llm_span(llm: &dyn ChatModel, request: &ChatRequest, tenant_id: &str) -> Span {
    tracing::info_span!(
        "llm",
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.system = if llm.offline() { "tenantry.extractive" } else { "openai" },
        gen_ai.request.model = %request.model,
        gen_ai.request.max_tokens = i64::from(request.max_tokens),
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        error.type = Empty,
        tenant_id,
    )
}

/// Records the response of an upstream call on its span.
fn record_response(span: &Span, model: &str, usage: Usage) {
    span.record("gen_ai.response.model", model);
    // As i64: OpenTelemetry has no unsigned integers (u64 would become a string).
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    span.record("gen_ai.usage.input_tokens", int(usage.prompt_tokens));
    span.record("gen_ai.usage.output_tokens", int(usage.completion_tokens));
}

/// Records the failure of an upstream call on its span.
fn record_failure(span: &Span, e: &LlmError) {
    span.record("otel.status_code", "ERROR");
    span.record(
        "error.type",
        match e {
            LlmError::Timeout => "timeout",
            LlmError::Upstream(_) => "upstream_error",
        },
    );
}

/// The reservation of one model call and what is needed to settle it: on the usage when the
/// answer is complete ([`Settlement::finish`]), nothing when the call fails
/// ([`Settlement::failed`]). Once streaming, dropping it unfinished (client gone, upstream cut)
/// charges the prompt and the text generated so far.
pub(super) struct Settlement {
    reservation: Option<Reservation>,
    services: Services,
    tenant_id: String,
    /// The model asked for (the offline responder's when offline).
    model: String,
    estimate: u64,
    prompt_tokens: u64,
    started: Instant,
    span: Span,
    /// Whether the answer is being streamed to the client (parts of it may be delivered).
    streaming: bool,
    /// The answer text streamed so far.
    text: String,
}

impl Settlement {
    /// The settlement of `request`, about to be sent, holding `reservation` of `estimate`
    /// tokens.
    pub(super) fn open(
        services: Services,
        tenant_id: &str,
        request: &ChatRequest,
        reservation: Reservation,
        estimate: u64,
    ) -> Self {
        let llm = services.llm.as_ref();
        Self {
            reservation: Some(reservation),
            tenant_id: tenant_id.to_string(),
            model: services.asked_model(request),
            estimate,
            prompt_tokens: estimate.saturating_sub(u64::from(request.max_tokens)),
            started: Instant::now(),
            span: llm_span(llm, request, tenant_id),
            streaming: false,
            text: String::new(),
            services,
        }
    }

    /// The span of the call.
    pub(super) fn span(&self) -> &Span {
        &self.span
    }

    /// When the call started.
    pub(super) fn started(&self) -> Instant {
        self.started
    }

    /// The model asked for.
    pub(super) fn model(&self) -> &str {
        &self.model
    }

    /// The answer is now streamed: from here on, an unfinished end is charged what was
    /// generated.
    pub(super) fn streaming(mut self) -> Self {
        self.streaming = true;
        self
    }

    /// Adds streamed answer text.
    pub(super) fn push_text(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// The answer text streamed so far.
    pub(super) fn text(&self) -> &str {
        &self.text
    }

    /// Tokens of what was generated so far (prompt included).
    fn partial(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: if self.services.llm.offline() {
                0
            } else {
                tokens::count(&self.model, &self.text)
            },
        }
    }

    /// Tokens charged for a finished call: its usage, or the estimate when an upstream reports
    /// none (never less than what it may have used).
    fn charge(&self, usage: Usage) -> u64 {
        let used = usage.prompt_tokens + usage.completion_tokens;
        if used == 0 && !self.services.llm.offline() {
            self.estimate
        } else {
            used
        }
    }

    /// Counts the call's end in the metrics; returns the seconds since it started.
    fn record(&self, model: &str, status: RequestStatus, usage: Usage) -> f64 {
        let seconds = self.started.elapsed().as_secs_f64();
        self.services.metrics.record(&RequestRecord {
            tenant_id: &self.tenant_id,
            model,
            status,
            seconds,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        });
        seconds
    }

    /// The answer is complete: settles on `usage` (or, when the upstream reported none, on the
    /// tokens counted here), records it and logs it. Returns the usage settled on.
    pub(super) async fn finish(mut self, model: &str, usage: Option<Usage>) -> Usage {
        let usage = usage.unwrap_or_else(|| self.partial());
        record_response(&self.span, model, usage);
        let charge = self.charge(usage);
        if let Some(r) = self.reservation.take() {
            r.settle(charge).await;
        }
        let elapsed = self.record(model, RequestStatus::Success, usage);
        tracing::info!(
            target: LOG_TARGET,
            tenant_id = %self.tenant_id,
            model = %model,
            latency_ms = elapsed * 1000.0,
            tokens = usage.prompt_tokens + usage.completion_tokens,
            stream = self.streaming.then_some(true),
            "LLM request completed"
        );
        usage
    }

    /// The call failed before any answer: nothing is charged (the reservation is released),
    /// the failure is counted and logged, and the error to answer is returned.
    pub(super) async fn failed(mut self, e: LlmError) -> Error {
        record_failure(&self.span, &e);
        if let Some(r) = self.reservation.take() {
            r.release().await;
        }
        self.record(&self.model, RequestStatus::Error, Usage::default());
        tracing::warn!(target: LOG_TARGET, tenant_id = %self.tenant_id, model = %self.model, error = %e, "LLM request failed");
        Error::Upstream(e)
    }

    /// The stream failed mid-way: the failure goes on the span, and the partial answer is
    /// charged as the settlement drops.
    pub(super) fn broken(self, e: &LlmError) {
        tracing::warn!(target: LOG_TARGET, error = %e, "upstream stream failed");
        record_failure(&self.span, e);
    }
}

impl Drop for Settlement {
    /// Not finished. Before streaming, the reservation is released (as it drops). While
    /// streaming, the client went away or the upstream failed mid-stream: what was generated
    /// was paid for upstream, so it is charged; the rest of the reservation is returned.
    fn drop(&mut self) {
        if !self.streaming {
            return;
        }
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let usage = self.partial();
        let charged = usage.prompt_tokens + usage.completion_tokens;
        let elapsed = self.record(&self.model, RequestStatus::Error, usage);
        tracing::info!(
            target: LOG_TARGET,
            tenant_id = %self.tenant_id,
            model = %self.model,
            latency_ms = elapsed * 1000.0,
            tokens = charged,
            "stream ended before the answer was complete; charged what was generated"
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(reservation.settle(charged));
        }
    }
}
