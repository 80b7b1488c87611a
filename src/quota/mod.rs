//! Per-tenant quotas and rate limits: the [`QuotaStore`] trait, its Redis implementation
//! ([`redis::RedisStore`], shared by every replica) and its in-process one
//! ([`memory::MemoryStore`], the embedded default), the [`Quota`] front end that applies the
//! fail mode, and the [`Reservation`] guard that charges whatever it did not settle.
//!
//! Lifecycle of one request: [`Quota::admit`] checks the limits without reserving anything
//! (before expensive work: embedding, retrieval, tokenizing) → [`Quota::reserve`] checks all
//! four limits and reserves the estimate (prompt tokens with a margin + max completion tokens)
//! in one atomic step → the upstream call → [`Reservation::settle`] with the actual usage,
//! charged up to the reservation and never more (what exceeds it is returned to the caller,
//! who counts it separately), or [`Reservation::release`] when the call provably never reached
//! an upstream (refunding the tokens and the request). A reservation dropped without either
//! (the client went away, the whole-request timeout fired, and the handler future was
//! dropped) is charged its whole estimate in the background: the upstream may have done all
//! the work, so a cancelled request is billed, never free.
//!
//! Windows: `dailyTokens` per UTC day; `requestsPerMinute` and `tokensPerMinute` per UTC
//! calendar minute (fixed windows, reset at the minute boundary); `maxConcurrentRequests` counts
//! reservations in flight. An in-flight entry carries a lease (the request timeout plus a
//! margin); a replica that crashes mid-request frees its concurrency slots when the lease ends.
//! Tokens it had reserved stay charged (the upstream may have used them).
//!
//! Storage: the documents and bytes a tenant stores are counted in the same store
//! ([`QuotaStore::change_storage`]), checked against `maxDocuments` and `maxStoredBytes`
//! atomically, so replicas share them.
//!
//! This module imports neither axum nor kube.
pub mod memory;
pub mod redis;
pub mod tokens;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{EffectiveQuota, TenantId};

/// Milliseconds in a UTC day.
pub const DAY_MS: u64 = 86_400_000;
/// Milliseconds in a minute.
pub const MINUTE_MS: u64 = 60_000;

/// Errors of the quota stores.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The Redis URL cannot be used (the message never contains the password).
    #[error("invalid Redis URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with its password redacted.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The store did not answer (unreachable, error, or timed out).
    #[error("quota store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this version does not understand.
    #[error("unexpected answer from the quota store: {0}")]
    Protocol(String),
}

/// One of the four limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// `dailyTokens`: tokens per UTC day.
    DailyTokens,
    /// `requestsPerMinute`: requests per UTC minute.
    RequestsPerMinute,
    /// `tokensPerMinute`: tokens per UTC minute.
    TokensPerMinute,
    /// `maxConcurrentRequests`: requests in flight at once.
    ConcurrentRequests,
}

impl Limit {
    /// All limits, in the order they are checked.
    pub const ALL: [Limit; 4] = [
        Limit::DailyTokens,
        Limit::RequestsPerMinute,
        Limit::TokensPerMinute,
        Limit::ConcurrentRequests,
    ];

    /// Label value (metrics, JSON): `daily_tokens`, `requests_per_minute`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::DailyTokens => "daily_tokens",
            Limit::RequestsPerMinute => "requests_per_minute",
            Limit::TokensPerMinute => "tokens_per_minute",
            Limit::ConcurrentRequests => "concurrent_requests",
        }
    }

    /// Suffix of the per-limit `X-RateLimit-*-<suffix>` headers.
    pub fn header_suffix(self) -> &'static str {
        match self {
            Limit::DailyTokens => "Tokens-Day",
            Limit::RequestsPerMinute => "Requests",
            Limit::TokensPerMinute => "Tokens",
            Limit::ConcurrentRequests => "Concurrent",
        }
    }

    fn from_index(i: i64) -> Option<Self> {
        Self::ALL.get(usize::try_from(i).ok()?).copied()
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant's limits (its effective quota; negative values count as 0; `None`: no limit of
/// that kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Tokens per UTC day.
    pub daily_tokens: Option<u64>,
    /// Requests per minute.
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight at once.
    pub max_concurrent_requests: Option<u64>,
}

impl Limits {
    /// Every limit set (`daily`, `rpm`, `tpm`, `concurrent`).
    pub const fn all(daily: u64, rpm: u64, tpm: u64, concurrent: u64) -> Self {
        Self {
            daily_tokens: Some(daily),
            requests_per_minute: Some(rpm),
            tokens_per_minute: Some(tpm),
            max_concurrent_requests: Some(concurrent),
        }
    }
}

impl From<&EffectiveQuota> for Limits {
    fn from(q: &EffectiveQuota) -> Self {
        let u = |v: Option<i64>| v.map(|v| u64::try_from(v).unwrap_or(0));
        Self {
            daily_tokens: u(q.daily_tokens),
            requests_per_minute: u(q.requests_per_minute),
            tokens_per_minute: u(q.tokens_per_minute),
            max_concurrent_requests: u(q.max_concurrent_requests),
        }
    }
}

impl Limits {
    /// The value of one limit (`None`: no limit of that kind).
    pub fn get(&self, limit: Limit) -> Option<u64> {
        match limit {
            Limit::DailyTokens => self.daily_tokens,
            Limit::RequestsPerMinute => self.requests_per_minute,
            Limit::TokensPerMinute => self.tokens_per_minute,
            Limit::ConcurrentRequests => self.max_concurrent_requests,
        }
    }
}

/// What a tenant has used in the current windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Tokens charged today (UTC), in-flight estimates included.
    pub daily_tokens: u64,
    /// Requests this minute.
    pub minute_requests: u64,
    /// Tokens charged this minute, in-flight estimates included.
    pub minute_tokens: u64,
    /// Reservations in flight.
    pub in_flight: u64,
}

impl Counters {
    /// The used amount of one limit.
    pub fn get(&self, limit: Limit) -> u64 {
        match limit {
            Limit::DailyTokens => self.daily_tokens,
            Limit::RequestsPerMinute => self.minute_requests,
            Limit::TokensPerMinute => self.minute_tokens,
            Limit::ConcurrentRequests => self.in_flight,
        }
    }
}

/// The admission rule shared by both stores (the Redis script implements the same): a request
/// with `estimate` tokens is admitted when, for every limit, usage plus its share stays within
/// the limit. Returns the first limit (in [`Limit::ALL`] order) it would break.
pub fn first_exceeded(used: &Counters, limits: &Limits, estimate: u64) -> Option<Limit> {
    let fits = |used: u64, add: u64, limit: Option<u64>| {
        limit.is_none_or(|limit| used.saturating_add(add) <= limit)
    };
    if !fits(used.daily_tokens, estimate, limits.daily_tokens) {
        Some(Limit::DailyTokens)
    } else if !fits(used.minute_requests, 1, limits.requests_per_minute) {
        Some(Limit::RequestsPerMinute)
    } else if !fits(used.minute_tokens, estimate, limits.tokens_per_minute) {
        Some(Limit::TokensPerMinute)
    } else if !fits(used.in_flight, 1, limits.max_concurrent_requests) {
        Some(Limit::ConcurrentRequests)
    } else {
        None
    }
}

/// The UTC day number (days since the epoch) of `now_ms`.
pub fn day_of(now_ms: u64) -> u64 {
    now_ms / DAY_MS
}

/// The minute number (minutes since the epoch) of `now_ms`.
pub fn minute_of(now_ms: u64) -> u64 {
    now_ms / MINUTE_MS
}

/// When (unix ms) the window of `limit` that contains `now_ms` ends; for the concurrency limit,
/// one second from now (a slot frees when any request finishes).
pub fn reset_at_ms(limit: Limit, now_ms: u64) -> u64 {
    match limit {
        Limit::DailyTokens => (day_of(now_ms) + 1) * DAY_MS,
        Limit::RequestsPerMinute | Limit::TokensPerMinute => (minute_of(now_ms) + 1) * MINUTE_MS,
        Limit::ConcurrentRequests => now_ms + 1_000,
    }
}

/// Current unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What a store needs to reserve.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub tenant: TenantId,
    /// Its limits.
    pub limits: Limits,
    /// Tokens to reserve (prompt estimate + max completion tokens).
    pub estimate: u64,
    /// Now, unix ms (decides the day and minute windows).
    pub now_ms: u64,
    /// How long the in-flight entry lives if never settled (crashed replica).
    pub lease: Duration,
}

/// A reservation a store made: enough to settle or release it later, in whatever window it was
/// made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Unique id (also the in-flight entry).
    pub id: String,
    pub tenant: TenantId,
    /// Tokens reserved.
    pub estimate: u64,
    /// Day number the tokens were charged to.
    pub day: u64,
    /// Minute number the request and tokens were charged to.
    pub minute: u64,
}

/// A store's answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; usage after the reservation.
    Admitted {
        ticket: Ticket,
        /// Usage including this reservation.
        used: Counters,
    },
    /// Refused; nothing was reserved.
    Rejected {
        /// The first limit the request would break.
        limit: Limit,
        /// Usage at the time.
        used: Counters,
    },
}

/// How a reservation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call happened: charge exactly `tokens` (refund or charge the difference to the
    /// estimate); the request stays counted.
    Used {
        /// Actual tokens (prompt + completion); 0 for a cache hit or the offline responder.
        tokens: u64,
    },
    /// The call provably never reached an upstream: refund the tokens and the request.
    Released,
}

/// One of the storage limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageLimit {
    /// `maxDocuments`: documents stored.
    MaxDocuments,
    /// `maxStoredBytes`: bytes of document text stored.
    MaxStoredBytes,
}

impl StorageLimit {
    /// Label value (JSON): `max_documents`, `max_stored_bytes`.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageLimit::MaxDocuments => "max_documents",
            StorageLimit::MaxStoredBytes => "max_stored_bytes",
        }
    }
}

impl fmt::Display for StorageLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant's storage limits (None: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageLimits {
    /// Documents.
    pub max_documents: Option<u64>,
    /// Bytes of document text.
    pub max_stored_bytes: Option<u64>,
}

impl From<&EffectiveQuota> for StorageLimits {
    fn from(q: &EffectiveQuota) -> Self {
        let u = |v: Option<i64>| v.map(|v| u64::try_from(v).unwrap_or(0));
        Self {
            max_documents: u(q.max_documents),
            max_stored_bytes: u(q.max_stored_bytes),
        }
    }
}

/// What a tenant stores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    /// Documents.
    pub documents: u64,
    /// Bytes of document text.
    pub bytes: u64,
}

/// A change of a tenant's stored documents and bytes (negative: removed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageChange {
    /// Documents added (or removed, negative).
    pub documents: i64,
    /// Bytes added (or removed, negative).
    pub bytes: i64,
}

/// A store's answer to a storage change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDecision {
    /// Applied; the totals after it.
    Applied(Storage),
    /// Refused (nothing changed): the limit it would break and the totals.
    Refused(StorageLimit, Storage),
}

/// The storage rule shared by both stores (the Redis script implements the same): a change is
/// refused when it adds documents (bytes) and the total would pass the limit; removals always
/// apply; totals never go below zero.
pub fn apply_storage(
    now: Storage,
    change: StorageChange,
    limits: &StorageLimits,
) -> StorageDecision {
    let add = |v: u64, d: i64| {
        if d >= 0 {
            v.saturating_add(d.unsigned_abs())
        } else {
            v.saturating_sub(d.unsigned_abs())
        }
    };
    let after = Storage {
        documents: add(now.documents, change.documents),
        bytes: add(now.bytes, change.bytes),
    };
    if change.documents > 0 && limits.max_documents.is_some_and(|m| after.documents > m) {
        StorageDecision::Refused(StorageLimit::MaxDocuments, now)
    } else if change.bytes > 0 && limits.max_stored_bytes.is_some_and(|m| after.bytes > m) {
        StorageDecision::Refused(StorageLimit::MaxStoredBytes, now)
    } else {
        StorageDecision::Applied(after)
    }
}

/// A quota backend. Implementations are atomic per tenant: concurrent reservations (from any
/// number of replicas sharing the store) never admit more than the limits allow.
#[async_trait]
pub trait QuotaStore: Send + Sync + 'static {
    /// `redis` or `in-process`.
    fn backend(&self) -> &'static str;
    /// Checks every limit and, when all fit, reserves the estimate, one request and one
    /// in-flight slot — all at once or nothing.
    async fn reserve(&self, req: &ReserveRequest) -> Result<Decision, QuotaError>;
    /// Ends a reservation. Idempotent: a ticket is settled at most once (a second call, or one
    /// after the lease expired, changes nothing and returns `false`).
    async fn finish(&self, ticket: &Ticket, outcome: Outcome) -> Result<bool, QuotaError>;
    /// The tenant's usage in the windows containing `now_ms`.
    async fn usage(&self, tenant: &TenantId, now_ms: u64) -> Result<Counters, QuotaError>;
    /// Whether the store is reachable.
    async fn ping(&self) -> Result<(), QuotaError>;
    /// Applies `change` to the tenant's stored totals if it keeps them within `limits`
    /// ([`apply_storage`]), atomically.
    async fn change_storage(
        &self,
        tenant: &TenantId,
        change: StorageChange,
        limits: &StorageLimits,
    ) -> Result<StorageDecision, QuotaError>;
    /// The tenant's stored totals.
    async fn storage(&self, tenant: &TenantId) -> Result<Storage, QuotaError>;
}

/// What to do when the store is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailMode {
    /// Refuse requests (503 `quota_unavailable`).
    #[default]
    FailClosed,
    /// Serve them unmetered, log and count (`quota_fail_open_total`).
    FailOpen,
}

/// Why [`Quota::reserve`] refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A limit would be exceeded (HTTP 429).
    #[error("{} limit of {} exceeded", .0.limit, .0.limits.get(.0.limit).unwrap_or_default())]
    Limited(Box<RateLimited>),
    /// The store is unreachable and the fail mode is `failClosed` (HTTP 503).
    #[error(transparent)]
    Unavailable(QuotaError),
}

/// Details of a refusal for the 429 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    /// The limit hit.
    pub limit: Limit,
    /// All limits.
    pub limits: Limits,
    /// Usage at the time.
    pub used: Counters,
    /// When it was decided (unix ms).
    pub now_ms: u64,
}

/// Remaining amount and reset time of one limit, for the `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    /// Which limit.
    pub limit: Limit,
    /// Its value.
    pub max: u64,
    /// What is left.
    pub remaining: u64,
    /// Seconds until its window resets (at least 1).
    pub reset_seconds: u64,
}

/// The status of every limit that is set, given usage at `now_ms`.
pub fn statuses(limits: &Limits, used: &Counters, now_ms: u64) -> Vec<LimitStatus> {
    Limit::ALL
        .iter()
        .filter_map(|&limit| {
            let max = limits.get(limit)?;
            Some(LimitStatus {
                limit,
                max,
                remaining: max.saturating_sub(used.get(limit)),
                reset_seconds: reset_at_ms(limit, now_ms)
                    .saturating_sub(now_ms)
                    .div_ceil(1000)
                    .max(1),
            })
        })
        .collect()
}

/// The quota front end `serve` uses: a store, its fail mode, and the lease of in-flight entries.
#[derive(Clone)]
pub struct Quota {
    store: Arc<dyn QuotaStore>,
    fail_mode: FailMode,
    lease: Duration,
    fail_open: Arc<AtomicU64>,
}

impl Quota {
    /// A front end over `store`; `lease` bounds how long an unsettled reservation holds a
    /// concurrency slot (set it above the whole-request timeout).
    pub fn new(store: Arc<dyn QuotaStore>, fail_mode: FailMode, lease: Duration) -> Self {
        Self {
            store,
            fail_mode,
            lease,
            fail_open: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn QuotaStore> {
        &self.store
    }

    /// The fail mode.
    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    /// Requests served unmetered because the store was unreachable (fail-open), since start.
    pub fn fail_open_count(&self) -> u64 {
        self.fail_open.load(Ordering::Relaxed)
    }

    /// Reserves `estimate` tokens and one request for `tenant`. Returns the guard to settle, or
    /// why not. With `failOpen` and the store down, returns an unmetered guard.
    pub async fn reserve(
        &self,
        tenant: &TenantId,
        limits: Limits,
        estimate: u64,
    ) -> Result<Reservation, Refusal> {
        let now_ms = now_ms();
        let req = ReserveRequest {
            tenant: tenant.clone(),
            limits,
            estimate,
            now_ms,
            lease: self.lease,
        };
        match self.store.reserve(&req).await {
            Ok(Decision::Admitted { ticket, used }) => Ok(Reservation {
                store: Some(self.store.clone()),
                ticket: Some(ticket),
                limits,
                used: Some(used),
                now_ms,
            }),
            Ok(Decision::Rejected { limit, used }) => {
                Err(Refusal::Limited(Box::new(RateLimited {
                    limit,
                    limits,
                    used,
                    now_ms,
                })))
            }
            Err(e) => match self.fail_mode {
                FailMode::FailClosed => Err(Refusal::Unavailable(e)),
                FailMode::FailOpen => {
                    self.fail_open.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tenant_id = %tenant, error = %e, "quota store unavailable; serving unmetered (failOpen)");
                    Ok(Reservation {
                        store: None,
                        ticket: None,
                        limits,
                        used: None,
                        now_ms,
                    })
                }
            },
        }
    }

    /// Whether a request of at least `floor` tokens could be admitted now, without reserving
    /// anything: the check made before expensive work (the reservation that follows checks
    /// again, atomically). With `failOpen` and the store down, admits.
    pub async fn admit(
        &self,
        tenant: &TenantId,
        limits: Limits,
        floor: u64,
    ) -> Result<(), Refusal> {
        let now_ms = now_ms();
        match self.store.usage(tenant, now_ms).await {
            Ok(used) => match first_exceeded(&used, &limits, floor) {
                None => Ok(()),
                Some(limit) => Err(Refusal::Limited(Box::new(RateLimited {
                    limit,
                    limits,
                    used,
                    now_ms,
                }))),
            },
            Err(e) => match self.fail_mode {
                FailMode::FailClosed => Err(Refusal::Unavailable(e)),
                FailMode::FailOpen => Ok(()),
            },
        }
    }

    /// Applies a change of the tenant's stored documents and bytes within `limits`. With
    /// `failOpen` and the store down, the change is allowed (and not counted).
    pub async fn change_storage(
        &self,
        tenant: &TenantId,
        change: StorageChange,
        limits: &StorageLimits,
    ) -> Result<StorageDecision, QuotaError> {
        match self.store.change_storage(tenant, change, limits).await {
            Ok(d) => Ok(d),
            Err(e) if self.fail_mode == FailMode::FailOpen => {
                self.fail_open.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tenant_id = %tenant, error = %e, "quota store unavailable; storage change not counted (failOpen)");
                Ok(StorageDecision::Applied(Storage::default()))
            }
            Err(e) => Err(e),
        }
    }

    /// The tenant's stored totals.
    pub async fn storage(&self, tenant: &TenantId) -> Result<Storage, QuotaError> {
        self.store.storage(tenant).await
    }

    /// The tenant's usage now.
    pub async fn usage(&self, tenant: &TenantId) -> Result<(Counters, u64), QuotaError> {
        let now = now_ms();
        Ok((self.store.usage(tenant, now).await?, now))
    }
}

/// A reservation in progress. Settle it with the actual usage or release it; dropping it
/// without either charges its whole estimate in the background (a cancelled request is billed:
/// the upstream may have done all the work).
#[must_use = "settle or release the reservation"]
pub struct Reservation {
    store: Option<Arc<dyn QuotaStore>>,
    ticket: Option<Ticket>,
    limits: Limits,
    used: Option<Counters>,
    now_ms: u64,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("ticket", &self.ticket)
            .field("used", &self.used)
            .finish()
    }
}

impl Reservation {
    /// Whether this reservation is metered (false when served fail-open).
    pub fn metered(&self) -> bool {
        self.ticket.is_some()
    }

    /// The reservation's ticket (None when fail-open).
    pub fn ticket(&self) -> Option<&Ticket> {
        self.ticket.as_ref()
    }

    /// Status of every limit as of the reservation (for response headers); None when
    /// fail-open.
    pub fn statuses(&self) -> Option<Vec<LimitStatus>> {
        self.used
            .map(|used| statuses(&self.limits, &used, self.now_ms))
    }

    /// The call happened and used `tokens` (prompt + completion; 0 for a cache hit): charges
    /// that, up to what was reserved. Returns the tokens beyond the reservation, which are not
    /// charged (the caller counts them separately): a request never takes more of a budget
    /// than it was admitted with.
    pub async fn settle(mut self, tokens: u64) -> u64 {
        let reserved = self.ticket.as_ref().map_or(tokens, |t| t.estimate);
        let charged = tokens.min(reserved);
        self.finish(Outcome::Used { tokens: charged }).await;
        tokens - charged
    }

    /// The call provably never reached an upstream (no connection, or refused with a 4xx):
    /// refunds the tokens and the request.
    pub async fn release(mut self) {
        self.finish(Outcome::Released).await;
    }

    async fn finish(&mut self, outcome: Outcome) {
        if let (Some(store), Some(ticket)) = (self.store.take(), self.ticket.take()) {
            // On its own task, so a caller cancelled mid-settle (client gone) cannot leave the
            // reservation half-finished.
            let task = tokio::spawn(async move {
                finish_logged(store.as_ref(), &ticket, outcome).await;
            });
            let _ = task.await;
        }
    }
}

async fn finish_logged(store: &dyn QuotaStore, ticket: &Ticket, outcome: Outcome) {
    if let Err(e) = store.finish(ticket, outcome).await {
        // The in-flight entry expires with its lease; an unsettled estimate stays charged.
        tracing::warn!(tenant_id = %ticket.tenant, error = %e, ?outcome, "could not settle a quota reservation");
    }
}

impl Drop for Reservation {
    /// Neither settled nor released: the outcome is unknown, so the whole estimate is charged
    /// (and the request stays counted).
    fn drop(&mut self) {
        if let (Some(store), Some(ticket)) = (self.store.take(), self.ticket.take()) {
            let outcome = Outcome::Used {
                tokens: ticket.estimate,
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        finish_logged(store.as_ref(), &ticket, outcome).await;
                    });
                }
                Err(_) => tracing::warn!(
                    tenant_id = %ticket.tenant,
                    "quota reservation dropped outside a runtime; its estimate stays charged and its slot expires with its lease"
                ),
            }
        }
    }
}

/// Replaces the password (and user) of a URL with `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::all(100, 3, 60, 2)
    }

    #[test]
    fn admission_checks_every_limit_in_order() {
        let l = limits();
        let c = Counters::default();
        assert_eq!(first_exceeded(&c, &l, 60), None);
        assert_eq!(first_exceeded(&c, &l, 61), Some(Limit::TokensPerMinute));
        assert_eq!(first_exceeded(&c, &l, 101), Some(Limit::DailyTokens));
        let c = Counters {
            daily_tokens: 90,
            ..Default::default()
        };
        assert_eq!(first_exceeded(&c, &l, 10), None, "exactly the budget fits");
        assert_eq!(first_exceeded(&c, &l, 11), Some(Limit::DailyTokens));
        let c = Counters {
            minute_requests: 3,
            ..Default::default()
        };
        assert_eq!(first_exceeded(&c, &l, 0), Some(Limit::RequestsPerMinute));
        let c = Counters {
            in_flight: 2,
            ..Default::default()
        };
        assert_eq!(first_exceeded(&c, &l, 0), Some(Limit::ConcurrentRequests));
        let zero = Limits {
            daily_tokens: Some(0),
            ..l
        };
        assert_eq!(
            first_exceeded(&Counters::default(), &zero, 0),
            None,
            "a zero-token request (cache hit) fits a zero budget"
        );
        assert_eq!(
            first_exceeded(&Counters::default(), &zero, 1),
            Some(Limit::DailyTokens)
        );
    }

    #[test]
    fn an_absent_limit_does_not_limit_and_reports_no_status() {
        let l = Limits {
            tokens_per_minute: None,
            max_concurrent_requests: None,
            ..limits()
        };
        let busy = Counters {
            minute_tokens: u64::MAX / 2,
            in_flight: 1_000_000,
            ..Default::default()
        };
        assert_eq!(first_exceeded(&busy, &l, 60), None);
        let c = Counters {
            minute_requests: 3,
            ..busy
        };
        assert_eq!(
            first_exceeded(&c, &l, 0),
            Some(Limit::RequestsPerMinute),
            "the limits that are set still hold"
        );
        let s = statuses(&l, &busy, 0);
        let kinds: Vec<_> = s.iter().map(|s| s.limit).collect();
        assert_eq!(kinds, [Limit::DailyTokens, Limit::RequestsPerMinute]);
    }

    #[test]
    fn windows_and_resets() {
        let t = 20_000 * DAY_MS + 5 * MINUTE_MS + 59_999;
        assert_eq!(day_of(t), 20_000);
        assert_eq!(minute_of(t), 20_000 * 1440 + 5);
        assert_eq!(reset_at_ms(Limit::RequestsPerMinute, t), t + 1);
        assert_eq!(reset_at_ms(Limit::DailyTokens, t), 20_001 * DAY_MS);
        let s = statuses(
            &limits(),
            &Counters {
                daily_tokens: 40,
                minute_requests: 3,
                minute_tokens: 70,
                in_flight: 1,
            },
            t,
        );
        assert_eq!(s[0].remaining, 60);
        assert_eq!(s[1].remaining, 0);
        assert_eq!(s[1].reset_seconds, 1, "rounded up, at least 1");
        assert_eq!(s[2].remaining, 0, "saturates");
        assert_eq!(s[3].remaining, 1);
        assert_eq!(
            s[0].reset_seconds,
            (DAY_MS - 5 * MINUTE_MS - 59_999).div_ceil(1000)
        );
    }

    #[test]
    fn limits_from_effective_quota_clamp_negatives() {
        let q = EffectiveQuota {
            daily_tokens: Some(5),
            requests_per_minute: Some(-1),
            tokens_per_minute: Some(7),
            max_concurrent_requests: None,
            max_tokens: None,
            max_documents: None,
            max_stored_bytes: None,
        };
        let l = Limits::from(&q);
        assert_eq!(l.requests_per_minute, Some(0));
        assert_eq!(l.get(Limit::TokensPerMinute), Some(7));
        assert_eq!(l.get(Limit::ConcurrentRequests), None);
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("rediss://user:s3cret@redis.example:6380/0"),
            "rediss://***@redis.example:6380/0"
        );
        assert_eq!(
            redact_url("redis://:p%40ss@h/1?x=y@z"),
            "redis://***@h/1?x=y@z"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[tokio::test]
    async fn a_dropped_reservation_is_charged_and_settle_is_capped() {
        let store: Arc<dyn QuotaStore> = Arc::new(memory::MemoryStore::default());
        let quota = Quota::new(store.clone(), FailMode::FailClosed, Duration::from_secs(60));
        let t = TenantId::parse("acme").expect("id");
        let r = quota.reserve(&t, limits(), 50).await.expect("admitted");
        assert!(r.metered());
        assert_eq!(quota.usage(&t).await.expect("usage").0.daily_tokens, 50);
        drop(r);
        // The release runs on a spawned task.
        for _ in 0..100 {
            if quota.usage(&t).await.expect("usage").0.in_flight == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let (u, _) = quota.usage(&t).await.expect("usage");
        assert_eq!(
            (u.daily_tokens, u.minute_requests, u.in_flight),
            (50, 1, 0),
            "a dropped reservation is charged its estimate and stays a request"
        );
        let roomy = Limits {
            requests_per_minute: Some(10),
            tokens_per_minute: Some(1_000),
            ..limits()
        };
        let r = quota.reserve(&t, roomy, 5).await.expect("admitted");
        assert_eq!(r.settle(2).await, 0);
        let r = quota.reserve(&t, roomy, 5).await.expect("admitted");
        assert_eq!(
            r.settle(9).await,
            4,
            "beyond the reservation: returned, not charged"
        );
        let r = quota.reserve(&t, roomy, 5).await.expect("admitted");
        r.release().await;
        let (u, _) = quota.usage(&t).await.expect("usage");
        assert_eq!(
            (
                u.daily_tokens,
                u.minute_tokens,
                u.minute_requests,
                u.in_flight
            ),
            (57, 57, 3, 0)
        );
    }

    #[test]
    fn storage_changes_within_limits() {
        let limits = StorageLimits {
            max_documents: Some(2),
            max_stored_bytes: Some(100),
        };
        let s = |documents, bytes| Storage { documents, bytes };
        let c = |documents, bytes| StorageChange { documents, bytes };
        assert_eq!(
            apply_storage(s(1, 50), c(1, 50), &limits),
            StorageDecision::Applied(s(2, 100))
        );
        assert_eq!(
            apply_storage(s(2, 50), c(1, 1), &limits),
            StorageDecision::Refused(StorageLimit::MaxDocuments, s(2, 50))
        );
        assert_eq!(
            apply_storage(s(1, 50), c(0, 51), &limits),
            StorageDecision::Refused(StorageLimit::MaxStoredBytes, s(1, 50))
        );
        assert_eq!(
            apply_storage(s(3, 500), c(-1, -10), &limits),
            StorageDecision::Applied(s(2, 490)),
            "removals apply even above the limits"
        );
        assert_eq!(
            apply_storage(s(0, 5), c(-1, -10), &limits),
            StorageDecision::Applied(s(0, 0))
        );
        assert_eq!(
            apply_storage(s(9, 9), c(1, 1), &StorageLimits::default()),
            StorageDecision::Applied(s(10, 10)),
            "no limits"
        );
    }

    struct Down;
    #[async_trait]
    impl QuotaStore for Down {
        fn backend(&self) -> &'static str {
            "down"
        }
        async fn reserve(&self, _: &ReserveRequest) -> Result<Decision, QuotaError> {
            Err(QuotaError::Unavailable("down".into()))
        }
        async fn finish(&self, _: &Ticket, _: Outcome) -> Result<bool, QuotaError> {
            Err(QuotaError::Unavailable("down".into()))
        }
        async fn usage(&self, _: &TenantId, _: u64) -> Result<Counters, QuotaError> {
            Err(QuotaError::Unavailable("down".into()))
        }
        async fn ping(&self) -> Result<(), QuotaError> {
            Err(QuotaError::Unavailable("down".into()))
        }
        async fn change_storage(
            &self,
            _: &TenantId,
            _: StorageChange,
            _: &StorageLimits,
        ) -> Result<StorageDecision, QuotaError> {
            Err(QuotaError::Unavailable("down".into()))
        }
        async fn storage(&self, _: &TenantId) -> Result<Storage, QuotaError> {
            Err(QuotaError::Unavailable("down".into()))
        }
    }

    #[tokio::test]
    async fn fail_modes() {
        let t = TenantId::parse("acme").expect("id");
        let closed = Quota::new(Arc::new(Down), FailMode::FailClosed, Duration::from_secs(1));
        assert!(matches!(
            closed.reserve(&t, limits(), 1).await,
            Err(Refusal::Unavailable(_))
        ));
        let open = Quota::new(Arc::new(Down), FailMode::FailOpen, Duration::from_secs(1));
        let r = open.reserve(&t, limits(), 1).await.expect("served");
        assert!(!r.metered());
        assert_eq!(
            r.settle(5).await,
            0,
            "unmetered: nothing is beyond a reservation"
        );
        assert_eq!(open.fail_open_count(), 1);
    }
}
