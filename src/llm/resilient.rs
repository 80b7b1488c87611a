//! Upstream resilience: retries with jittered exponential backoff, an ordered list of fallback
//! endpoints and a circuit breaker per endpoint, around any [`ChatModel`]s.
//!
//! A chat completion is not strictly idempotent, so a call is retried only when the upstream
//! answered with an error status that says "try again" (429, 5xx) or the connection failed
//! before any response ([`ChatModel::attempt`] classifies this). Timeouts are not retried on the
//! same endpoint (the upstream may still be working on it) but do move on to the next fallback.
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, MutexGuard};
use rand::Rng as _;
use tokio::time::Instant;

use futures::StreamExt as _;
use futures::future::BoxFuture;

use super::{
    Attempt, Attempts, ChatModel, ChatRequest, ChatResponse, ChatStream, Chunk, LlmError, Unmetered,
};

/// One call to an upstream, as [`ResilientChat::try_upstream`] repeats it.
type Call<T> = for<'a> fn(&'a dyn ChatModel, ChatRequest) -> BoxFuture<'a, Result<T, Attempt>>;

fn call_complete(
    chat: &dyn ChatModel,
    req: ChatRequest,
) -> BoxFuture<'_, Result<ChatResponse, Attempt>> {
    chat.attempt(req)
}

fn call_stream(
    chat: &dyn ChatModel,
    req: ChatRequest,
) -> BoxFuture<'_, Result<ChatStream, Attempt>> {
    chat.stream_attempt(req)
}

/// Retry and circuit-breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Retries per upstream after the first attempt.
    pub retries: u32,
    /// First backoff delay (doubled per retry, jittered).
    pub base_delay: Duration,
    /// Largest backoff delay; a `Retry-After` above it is not waited for.
    pub max_delay: Duration,
    /// Consecutive failures that open an upstream's circuit.
    pub failure_threshold: u32,
    /// How long an open circuit fails fast before letting one trial call through.
    pub cooldown: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            retries: 2,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// One upstream: a name (logged, and appended to the answering model of fallbacks), the
/// client, and optionally the model name to use instead of the requested one.
pub struct Upstream {
    name: String,
    model: Option<String>,
    chat: Arc<dyn ChatModel>,
    breaker: Breaker,
}

impl Upstream {
    /// An upstream called with the requested model.
    pub fn new(name: impl Into<String>, chat: Arc<dyn ChatModel>) -> Self {
        Self {
            name: name.into(),
            model: None,
            chat,
            breaker: Breaker::default(),
        }
    }

    /// Calls this upstream with `model` instead of the requested one.
    #[must_use]
    pub fn with_model(mut self, model: Option<String>) -> Self {
        self.model = model;
        self
    }
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    opened_at: Option<Instant>,
    trial_in_flight: bool,
}

#[derive(Debug, Default)]
struct Breaker(Mutex<BreakerState>);

impl Breaker {
    fn lock(&self) -> MutexGuard<'_, BreakerState> {
        self.0.lock()
    }

    /// Whether a call may go through now (closed, or the one half-open trial). Granting the
    /// trial restarts the cool-down, so other calls keep failing fast meanwhile, and a trial
    /// that never reports back (cancelled) is followed by another one after a cool-down.
    fn allow(&self, cooldown: Duration) -> bool {
        let mut s = self.lock();
        match s.opened_at {
            None => true,
            Some(at) if at.elapsed() < cooldown => false,
            Some(_) => {
                s.opened_at = Some(Instant::now());
                s.trial_in_flight = true;
                true
            }
        }
    }

    fn is_open(&self) -> bool {
        self.lock().opened_at.is_some()
    }

    fn success(&self) {
        *self.lock() = BreakerState::default();
    }

    fn failure(&self, threshold: u32) {
        let mut s = self.lock();
        s.failures = s.failures.saturating_add(1);
        if s.trial_in_flight || s.failures >= threshold.max(1) {
            s.opened_at = Some(Instant::now());
            s.trial_in_flight = false;
        }
    }
}

/// Told the state of an upstream's circuit (its name, whether it is open) whenever a call
/// may have changed it, and once per upstream at start (closed).
pub type CircuitObserver = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// A [`ChatModel`] over an ordered list of upstreams (primary first): each is retried per the
/// [`Policy`], skipped while its circuit is open, and the next one is tried when it fails.
pub struct ResilientChat {
    upstreams: Vec<Upstream>,
    policy: Policy,
    observer: Option<CircuitObserver>,
}

impl ResilientChat {
    /// Upstreams in the order they are tried.
    pub fn new(upstreams: Vec<Upstream>, policy: Policy) -> Self {
        Self {
            upstreams,
            policy,
            observer: None,
        }
    }

    /// Reports every upstream's circuit state to `observer` (e.g. a gauge), starting now.
    #[must_use]
    pub fn with_observer(mut self, observer: CircuitObserver) -> Self {
        for up in &self.upstreams {
            observer(&up.name, up.breaker.is_open());
        }
        self.observer = Some(observer);
        self
    }

    /// Tells the observer the state of `up`'s circuit.
    fn report(&self, up: &Upstream) {
        if let Some(observe) = &self.observer {
            observe(&up.name, up.breaker.is_open());
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .policy
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.min(16)))
            .min(self.policy.max_delay);
        // Equal jitter: half fixed, half random.
        let half = exp / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }

    /// Tries one upstream with retries. Every call after the request's first (`made` counts
    /// them) must be allowed by `attempts`, and every failed call is reported to it.
    /// A stream counts as a success once the upstream accepted the request; a failure in the
    /// middle of it is not retried (part of the answer may already be with the client).
    async fn try_upstream<T>(
        &self,
        up: &Upstream,
        request: &ChatRequest,
        call: Call<T>,
        attempts: &dyn Attempts,
        made: &mut u32,
    ) -> Tried<T> {
        let p = &self.policy;
        let mut last = None;
        for attempt in 0..=p.retries {
            if !up.breaker.allow(p.cooldown) {
                tracing::warn!(upstream = %up.name, "circuit open: skipping upstream");
                return Tried::Next(last.unwrap_or_else(|| {
                    LlmError::Upstream(format!("circuit open for upstream {}", up.name))
                }));
            }
            if *made > 0 && !attempts.another().await {
                tracing::warn!(upstream = %up.name, "the quota does not cover another upstream call; giving up");
                return match last {
                    Some(e) => Tried::GiveUp(e),
                    None => Tried::Stopped,
                };
            }
            *made += 1;
            let mut req = request.clone();
            if let Some(m) = &up.model {
                req.model = m.clone();
            }
            let failure = match call(up.chat.as_ref(), req).await {
                Ok(resp) => {
                    up.breaker.success();
                    self.report(up);
                    return Tried::Answer(resp);
                }
                Err(failure) => failure,
            };
            attempts.failed(failure.cost()).await;
            match failure {
                Attempt::Fatal(e) => {
                    // The upstream answered (e.g. 400): it is healthy, the request is not.
                    up.breaker.success();
                    self.report(up);
                    return Tried::GiveUp(e);
                }
                Attempt::Failed(e) => {
                    up.breaker.failure(p.failure_threshold);
                    self.report(up);
                    tracing::warn!(upstream = %up.name, error = %e, "upstream call failed; not retried");
                    return Tried::Next(e);
                }
                Attempt::Retryable {
                    error, retry_after, ..
                } => {
                    up.breaker.failure(p.failure_threshold);
                    self.report(up);
                    tracing::warn!(upstream = %up.name, attempt, error = %error, "upstream call failed");
                    last = Some(error);
                    if attempt == p.retries || up.breaker.is_open() {
                        break;
                    }
                    let delay = match retry_after {
                        Some(d) if d <= p.max_delay => d,
                        Some(_) => break,
                        None => self.backoff(attempt),
                    };
                    tokio::time::sleep(delay).await;
                }
            }
        }
        Tried::Next(last.unwrap_or_else(|| {
            LlmError::Upstream(format!("circuit open for upstream {}", up.name))
        }))
    }

    /// Tries the upstreams in order until one answers.
    async fn first_answer<T>(
        &self,
        request: &ChatRequest,
        call: Call<T>,
        attempts: &dyn Attempts,
    ) -> Result<(usize, T), LlmError> {
        let mut last = LlmError::Upstream("no upstream configured".to_string());
        let mut made = 0;
        for (i, up) in self.upstreams.iter().enumerate() {
            match self
                .try_upstream(up, request, call, attempts, &mut made)
                .await
            {
                Tried::Answer(t) => return Ok((i, t)),
                Tried::GiveUp(e) => return Err(e),
                Tried::Stopped => return Err(last),
                Tried::Next(e) => last = e,
            }
        }
        Err(last)
    }
}

/// How trying one upstream ended.
enum Tried<T> {
    /// It answered.
    Answer(T),
    /// Give up on every upstream with this error (the request is at fault, or no further call
    /// is allowed).
    GiveUp(LlmError),
    /// No further call is allowed and this upstream made none: give up with the previous
    /// upstream's error.
    Stopped,
    /// Try the next upstream; this one failed so.
    Next(LlmError),
}

#[async_trait]
impl ChatModel for ResilientChat {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.complete_metered(request, &Unmetered).await
    }

    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LlmError> {
        self.stream_metered(request, &Unmetered).await
    }

    /// Every retry and fallback is a call `attempts` must allow.
    async fn complete_metered(
        &self,
        request: ChatRequest,
        attempts: &dyn Attempts,
    ) -> Result<ChatResponse, LlmError> {
        let (i, mut resp) = self.first_answer(&request, call_complete, attempts).await?;
        if i > 0 {
            resp.model = format!("{}@{}", resp.model, self.upstreams[i].name);
        }
        Ok(resp)
    }

    async fn stream_metered(
        &self,
        request: ChatRequest,
        attempts: &dyn Attempts,
    ) -> Result<ChatStream, LlmError> {
        let (i, stream) = self.first_answer(&request, call_stream, attempts).await?;
        if i == 0 {
            return Ok(stream);
        }
        // A fallback names itself in the answering model, as in `complete`.
        let name = self.upstreams[i].name.clone();
        Ok(Box::pin(stream.map(move |c| match c {
            Ok(Chunk::Model(model)) => Ok(Chunk::Model(format!("{model}@{name}"))),
            Ok(Chunk::Done {
                model,
                finish_reason,
                usage,
            }) => Ok(Chunk::Done {
                model: format!("{model}@{name}"),
                finish_reason,
                usage,
            }),
            other => other,
        })))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Fails its first `fail` calls with `kind`, then answers.
    struct Fake {
        calls: AtomicUsize,
        fail: usize,
        kind: fn() -> Attempt,
    }

    impl Fake {
        fn new(fail: usize, kind: fn() -> Attempt) -> Arc<Self> {
            Arc::new(Self {
                calls: AtomicUsize::new(0),
                fail,
                kind,
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    fn server_error() -> Attempt {
        Attempt::Retryable {
            error: LlmError::Upstream("500".into()),
            retry_after: None,
            cost: crate::llm::Cost::Prompt,
        }
    }
    fn bad_request() -> Attempt {
        Attempt::Fatal(LlmError::Upstream("400".into()))
    }

    #[async_trait]
    impl ChatModel for Fake {
        async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
            self.attempt(request).await.map_err(Attempt::into_error)
        }
        async fn attempt(&self, request: ChatRequest) -> Result<ChatResponse, Attempt> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail {
                return Err((self.kind)());
            }
            Ok(ChatResponse {
                content: "ok".into(),
                model: request.model,
                finish_reason: "stop".into(),
                ..ChatResponse::default()
            })
        }
    }

    fn policy() -> Policy {
        Policy {
            retries: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            failure_threshold: 3,
            cooldown: Duration::from_secs(3600),
        }
    }

    fn request() -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![],
            max_tokens: 8,
            passages: vec![],
            params: Default::default(),
        }
    }

    fn chat(ups: Vec<(&str, Arc<Fake>)>, policy: Policy) -> ResilientChat {
        ResilientChat::new(
            ups.into_iter()
                .map(|(n, f)| Upstream::new(n, f as Arc<dyn ChatModel>))
                .collect(),
            policy,
        )
    }

    #[tokio::test]
    async fn retries_then_succeeds() {
        let a = Fake::new(2, server_error);
        let c = chat(vec![("primary", a.clone())], policy());
        let r = c.complete(request()).await.expect("answer");
        assert_eq!(r.model, "m");
        assert_eq!(a.calls(), 3);
    }

    #[tokio::test]
    async fn no_retry_and_no_fallback_on_400() {
        let a = Fake::new(10, bad_request);
        let b = Fake::new(0, server_error);
        let c = chat(vec![("primary", a.clone()), ("b", b.clone())], policy());
        assert!(c.complete(request()).await.is_err());
        assert_eq!(a.calls(), 1);
        assert_eq!(b.calls(), 0);
    }

    #[tokio::test]
    async fn falls_back_in_order_with_model_override() {
        let a = Fake::new(100, server_error);
        let b = Fake::new(100, server_error);
        let d = Fake::new(0, server_error);
        let c = ResilientChat::new(
            vec![
                Upstream::new("primary", a.clone() as Arc<dyn ChatModel>),
                Upstream::new("b", b.clone() as Arc<dyn ChatModel>),
                Upstream::new("d", d.clone() as Arc<dyn ChatModel>)
                    .with_model(Some("small".into())),
            ],
            Policy {
                failure_threshold: 100,
                ..policy()
            },
        );
        let r = c.complete(request()).await.expect("answer");
        assert_eq!(r.model, "small@d");
        assert_eq!((a.calls(), b.calls(), d.calls()), (3, 3, 1));
    }

    #[tokio::test]
    async fn breaker_opens_and_fails_fast() {
        let a = Fake::new(1000, server_error);
        let c = chat(vec![("primary", a.clone())], policy());
        // 3 failures (threshold 3) open the circuit during the first request.
        let e = c.complete(request()).await.expect_err("fails");
        assert!(matches!(e, LlmError::Upstream(_)));
        assert_eq!(a.calls(), 3);
        for _ in 0..5 {
            let e = c.complete(request()).await.expect_err("fails fast");
            assert!(e.to_string().contains("circuit open"), "{e}");
        }
        assert_eq!(a.calls(), 3, "no calls while open");
    }

    #[tokio::test]
    async fn open_primary_goes_to_fallback() {
        let a = Fake::new(1000, server_error);
        let b = Fake::new(0, server_error);
        let c = chat(vec![("primary", a.clone()), ("b", b.clone())], policy());
        c.complete(request()).await.expect("fallback answers");
        c.complete(request()).await.expect("fallback answers");
        assert_eq!(a.calls(), 3);
        assert_eq!(b.calls(), 2);
    }

    #[tokio::test]
    async fn half_open_lets_one_trial_through_and_recovers() {
        let a = Fake::new(3, server_error);
        let p = Policy {
            retries: 0,
            cooldown: Duration::from_millis(50),
            ..policy()
        };
        let c = chat(vec![("primary", a.clone())], p);
        for _ in 0..3 {
            assert!(c.complete(request()).await.is_err());
        }
        let e = c.complete(request()).await.expect_err("open");
        assert!(e.to_string().contains("circuit open"), "{e}");
        assert_eq!(a.calls(), 3);
        tokio::time::sleep(Duration::from_millis(120)).await;
        c.complete(request()).await.expect("trial call succeeds");
        c.complete(request()).await.expect("closed again");
        assert_eq!(a.calls(), 5);
    }

    #[tokio::test]
    async fn long_retry_after_skips_to_the_fallback() {
        fn limited() -> Attempt {
            Attempt::Retryable {
                error: LlmError::Upstream("429".into()),
                retry_after: Some(Duration::from_secs(60)),
                cost: crate::llm::Cost::Nothing,
            }
        }
        let a = Fake::new(100, limited);
        let b = Fake::new(0, server_error);
        let c = chat(vec![("primary", a.clone()), ("b", b.clone())], policy());
        c.complete(request()).await.expect("fallback answers");
        assert_eq!((a.calls(), b.calls()), (1, 1));
    }

    #[tokio::test]
    async fn timeouts_are_not_retried_but_fall_back() {
        fn timeout() -> Attempt {
            Attempt::Failed(LlmError::Timeout)
        }
        let a = Fake::new(100, timeout);
        let c = chat(vec![("primary", a.clone())], policy());
        let e = c.complete(request()).await.expect_err("times out");
        assert!(matches!(e, LlmError::Timeout), "{e}");
        assert_eq!(a.calls(), 1);
        let b = Fake::new(0, server_error);
        let a = Fake::new(100, timeout);
        let c = chat(vec![("primary", a.clone()), ("b", b.clone())], policy());
        c.complete(request()).await.expect("fallback answers");
        assert_eq!((a.calls(), b.calls()), (1, 1));
    }

    /// Allows `allow` calls after the first; records what each failed call may have cost.
    struct Budget {
        allow: AtomicUsize,
        costs: Mutex<Vec<crate::llm::Cost>>,
    }

    #[async_trait]
    impl Attempts for Budget {
        async fn failed(&self, cost: crate::llm::Cost) {
            self.costs.lock().push(cost);
        }
        async fn another(&self) -> bool {
            self.allow
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        }
    }

    #[tokio::test]
    async fn every_retry_and_fallback_needs_the_meters_consent_and_is_reported() {
        use crate::llm::Cost;
        let a = Fake::new(100, server_error);
        let b = Fake::new(0, server_error);
        let c = chat(vec![("primary", a.clone()), ("b", b.clone())], policy());
        let budget = Budget {
            allow: AtomicUsize::new(1),
            costs: Mutex::new(Vec::new()),
        };
        let e = c
            .complete_metered(request(), &budget)
            .await
            .expect_err("no call left for the fallback");
        assert!(e.to_string().contains("500"), "{e}");
        assert_eq!((a.calls(), b.calls()), (2, 0), "one retry allowed");
        assert_eq!(*budget.costs.lock(), [Cost::Prompt, Cost::Prompt]);

        let a = Fake::new(100, server_error);
        let b = Fake::new(0, server_error);
        let c = chat(vec![("primary", a.clone()), ("b", b.clone())], policy());
        let budget = Budget {
            allow: AtomicUsize::new(10),
            costs: Mutex::new(Vec::new()),
        };
        let r = c
            .complete_metered(request(), &budget)
            .await
            .expect("answer");
        assert_eq!(r.model, "m@b");
        assert_eq!((a.calls(), b.calls()), (3, 1));
        assert_eq!(
            budget.allow.load(Ordering::SeqCst),
            7,
            "three calls after the first"
        );
        assert_eq!(budget.costs.lock().len(), 3, "only failures are reported");

        let a = Fake::new(100, bad_request);
        let c = chat(vec![("primary", a.clone())], policy());
        let budget = Budget {
            allow: AtomicUsize::new(10),
            costs: Mutex::new(Vec::new()),
        };
        assert!(c.complete_metered(request(), &budget).await.is_err());
        assert_eq!(
            *budget.costs.lock(),
            [Cost::Nothing],
            "a 4xx refusal costs nothing"
        );
    }

    #[tokio::test]
    async fn failed_trial_reopens() {
        let a = Fake::new(1000, server_error);
        let p = Policy {
            retries: 0,
            failure_threshold: 1,
            cooldown: Duration::from_millis(50),
            ..policy()
        };
        let c = chat(vec![("primary", a.clone())], p);
        assert!(c.complete(request()).await.is_err());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(c.complete(request()).await.is_err());
        assert_eq!(a.calls(), 2, "one trial call");
        let e = c.complete(request()).await.expect_err("open again");
        assert!(e.to_string().contains("circuit open"), "{e}");
        assert_eq!(a.calls(), 2);
    }
}
