//! Settling one model call: what it is charged, the metrics it counts, its span fields and the
//! log line of its end — the same for a whole answer and a stream.
//!
//! Billing rule: once a call may have reached an upstream it is billable. A finished call is
//! charged its usage, up to its reservation (what an upstream reports beyond it is counted in
//! `quota_unreserved_tokens_total`, not charged). A failed call is charged by what it may have
//! cost ([`Cost`]): nothing when it provably never reached an upstream (no connection, a 4xx
//! refusal), the prompt estimate when the upstream answered with an error (5xx), the whole
//! reservation when the outcome is unknown (a timeout, a cut connection). A call cancelled
//! before its answer (client gone, whole-request timeout) is charged its whole reservation; a
//! stream cut after it started, the prompt and the text generated so far. Every retry and
//! fallback is a call of its own: it needs a reservation of its own (the previous call's is
//! settled first), and none is made when the quota does not admit it.
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;
use tracing::Span;
use tracing::field::Empty;

use super::{Error, LOG_TARGET, Services};
use crate::llm::{Attempts, ChatModel, ChatRequest, Cost, LlmError, Usage};
use crate::metrics::{RequestRecord, RequestStatus};
use crate::quota::{Reservation, tokens};
use crate::tenants::TenantConfig;

/// What a call reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Estimate {
    /// Tokens of the prompt, as counted here.
    pub(super) prompt: u64,
    /// Tokens reserved: the prompt, its margin and the most the answer may use.
    pub(super) total: u64,
}

/// Tokens to reserve for `request`: its prompt with a margin ([`tokens::with_margin`]) plus the
/// most it may generate. The
/// offline responder calls no model: it needs a request slot but no tokens.
pub(super) fn estimate(llm: &dyn ChatModel, request: &ChatRequest) -> Estimate {
    if llm.offline() {
        return Estimate {
            prompt: 0,
            total: 0,
        };
    }
    let prompt = tokens::request_prompt_tokens(&request.model, &request.messages, &request.params);
    Estimate {
        prompt,
        total: tokens::with_margin(prompt) + u64::from(request.max_tokens),
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

/// The reservation of the upstream call in progress, settled per call: told by the model
/// client about each failed call (and asked before each retry or fallback), it settles that
/// call's reservation by what it may have cost and reserves the next one.
pub(super) struct Meter {
    services: Services,
    tenant: Arc<TenantConfig>,
    estimate: Estimate,
    /// The reservation of the call in progress (None once settled).
    current: Mutex<Option<Reservation>>,
}

impl Meter {
    /// Takes the reservation of the call in progress.
    fn take(&self) -> Option<Reservation> {
        self.current.lock().take()
    }
}

#[async_trait]
impl Attempts for Meter {
    async fn failed(&self, cost: Cost) {
        let Some(reservation) = self.take() else {
            return;
        };
        match cost {
            Cost::Nothing => reservation.release().await,
            Cost::Prompt => {
                reservation.settle(self.estimate.prompt).await;
            }
            Cost::Unknown => {
                reservation.settle(self.estimate.total).await;
            }
        }
    }

    async fn another(&self) -> bool {
        if self.current.lock().is_some() {
            return true;
        }
        match self
            .services
            .reserve(&self.tenant, self.estimate.total)
            .await
        {
            Ok(r) => {
                *self.current.lock() = Some(r);
                true
            }
            Err(e) => {
                tracing::info!(target: LOG_TARGET, tenant_id = %self.tenant.id, error = %e, "no further upstream call: the quota does not admit it");
                false
            }
        }
    }
}

/// The reservation of one model call and what is needed to settle it: on the usage when the
/// answer is complete ([`Settlement::finish`]), by what the call may have cost when it fails
/// ([`Settlement::failed`]; see the module docs). Dropped unfinished before streaming (client
/// gone, whole-request timeout), the whole reservation is charged; once streaming, the prompt
/// and the text generated so far.
pub(super) struct Settlement {
    meter: Meter,
    /// The model asked for (the offline responder's when offline).
    model: String,
    started: Instant,
    span: Span,
    /// Whether the answer is being streamed to the client (parts of it may be delivered).
    streaming: bool,
    /// The answer text streamed so far.
    text: String,
    /// Tokens of the streamed text so far (counted delta by delta).
    completion_tokens: u64,
    /// Whether the call has ended (finished or failed), so dropping it settles nothing more.
    ended: bool,
}

impl Settlement {
    /// The settlement of `request`, about to be sent, holding `reservation` of `estimate`.
    pub(super) fn open(
        services: Services,
        tenant: Arc<TenantConfig>,
        request: &ChatRequest,
        reservation: Reservation,
        estimate: Estimate,
    ) -> Self {
        let llm = services.llm.as_ref();
        let span = llm_span(llm, request, tenant.id.as_str());
        Self {
            model: services.asked_model(request),
            started: Instant::now(),
            span,
            streaming: false,
            text: String::new(),
            completion_tokens: 0,
            ended: false,
            meter: Meter {
                services,
                tenant,
                estimate,
                current: Mutex::new(Some(reservation)),
            },
        }
    }

    /// What the model client reports its calls to.
    pub(super) fn meter(&self) -> &Meter {
        &self.meter
    }

    fn services(&self) -> &Services {
        &self.meter.services
    }

    fn tenant_id(&self) -> &str {
        self.meter.tenant.id.as_str()
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

    /// The stream's first output arrived: records its time to first token.
    pub(super) fn first_output(&self, model: &str) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.services()
            .metrics
            .record_first_token(self.tenant_id(), model, seconds);
    }

    /// The answer is now streamed: from here on, an unfinished end is charged what was
    /// generated.
    pub(super) fn streaming(mut self) -> Self {
        self.streaming = true;
        self
    }

    /// Adds streamed answer text, unless it would take the answer past its reservation: then
    /// returns false (the text is counted as generated, and the stream is to be stopped).
    pub(super) fn push_text(&mut self, text: &str) -> bool {
        if !self.push_generated(text) {
            return false;
        }
        self.text.push_str(text);
        true
    }

    /// Counts streamed output that is not answer text (tool-call deltas, a refusal) as
    /// generated, as [`Settlement::push_text`] does.
    pub(super) fn push_generated(&mut self, text: &str) -> bool {
        if self.services().llm.offline() {
            return true;
        }
        self.completion_tokens += tokens::count(&self.model, text);
        let allowance = self.meter.estimate.total - self.meter.estimate.prompt;
        if self.completion_tokens > allowance {
            self.completion_tokens = allowance;
            return false;
        }
        true
    }

    /// The answer text streamed so far.
    pub(super) fn text(&self) -> &str {
        &self.text
    }

    /// Tokens of what was generated so far (prompt included).
    pub(super) fn partial(&self) -> Usage {
        Usage {
            prompt_tokens: self.meter.estimate.prompt,
            completion_tokens: if self.services().llm.offline() {
                0
            } else if self.streaming {
                self.completion_tokens
            } else {
                tokens::count(&self.model, &self.text)
            },
        }
    }

    /// Tokens charged for a finished call: its usage, or the whole reservation when an
    /// upstream reports none (never less than what it may have used).
    fn charge(&self, usage: Usage) -> u64 {
        let used = usage.prompt_tokens + usage.completion_tokens;
        if used == 0 && !self.services().llm.offline() {
            self.meter.estimate.total
        } else {
            used
        }
    }

    /// Counts the call's end in the metrics; returns the seconds since it started.
    fn record(&self, model: &str, status: RequestStatus, usage: Usage) -> f64 {
        let seconds = self.started.elapsed().as_secs_f64();
        self.services().metrics.record(&RequestRecord {
            tenant_id: self.tenant_id(),
            model,
            status,
            seconds,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        });
        seconds
    }

    /// Counts tokens beyond the reservation (not charged).
    fn unreserved(&self, excess: u64, model: &str) {
        if excess > 0 {
            self.services()
                .metrics
                .record_unreserved(self.tenant_id(), excess);
            tracing::warn!(
                target: LOG_TARGET,
                tenant_id = %self.tenant_id(),
                model = %model,
                reserved = self.meter.estimate.total,
                unreserved = excess,
                "the upstream reported more tokens than were reserved; charged the reservation"
            );
        }
    }

    /// The answer is complete: settles on `usage` (or, when the upstream reported none, on the
    /// tokens counted here), records it and logs it. Returns the usage settled on.
    pub(super) async fn finish(mut self, model: &str, usage: Option<Usage>) -> Usage {
        self.ended = true;
        let usage = usage.unwrap_or_else(|| self.partial());
        record_response(&self.span, model, usage);
        let charge = self.charge(usage);
        if let Some(r) = self.meter.take() {
            let excess = r.settle(charge).await;
            self.unreserved(excess, model);
        }
        let elapsed = self.record(model, RequestStatus::Success, usage);
        tracing::info!(
            target: LOG_TARGET,
            tenant_id = %self.tenant_id(),
            model = %model,
            latency_ms = elapsed * 1000.0,
            tokens = usage.prompt_tokens + usage.completion_tokens,
            stream = self.streaming.then_some(true),
            "LLM request completed"
        );
        usage
    }

    /// The call failed before any answer: each call it made was settled as it failed (see the
    /// module docs); the failure is counted and logged, and the error to answer is returned.
    pub(super) async fn failed(mut self, e: LlmError) -> Error {
        self.ended = true;
        record_failure(&self.span, &e);
        if let Some(r) = self.meter.take() {
            // Not reported by the client (it always reports): the outcome is unknown.
            r.settle(self.meter.estimate.total).await;
        }
        self.record(&self.model, RequestStatus::Error, Usage::default());
        tracing::warn!(target: LOG_TARGET, tenant_id = %self.tenant_id(), model = %self.model, error = %e, "LLM request failed");
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
    /// Not finished. Before streaming, the client went away (or the whole-request timeout
    /// fired) while the upstream was working: the outcome is unknown, so the whole reservation
    /// is charged (as it drops). While streaming, the client went away or the upstream failed
    /// mid-stream: the prompt and what was generated are charged; the rest of the reservation
    /// is returned.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let Some(reservation) = self.meter.take() else {
            return;
        };
        let usage = if self.streaming {
            self.partial()
        } else {
            Usage {
                prompt_tokens: self.meter.estimate.prompt,
                completion_tokens: self.meter.estimate.total - self.meter.estimate.prompt,
            }
        };
        let charged = usage.prompt_tokens + usage.completion_tokens;
        let elapsed = self.record(&self.model, RequestStatus::Error, usage);
        tracing::info!(
            target: LOG_TARGET,
            tenant_id = %self.tenant_id(),
            model = %self.model,
            latency_ms = elapsed * 1000.0,
            tokens = charged,
            stream = self.streaming.then_some(true),
            "request ended before the answer was complete; charged what the upstream may have used"
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                reservation.settle(charged).await;
            });
        }
        // Outside a runtime the reservation drops here and charges its whole estimate.
    }
}
