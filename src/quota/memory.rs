//! The in-process quota store (embedded default): one mutex-guarded table of counters per
//! tenant. Exact for a single `serve` process; several replicas need [`super::redis`].
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    Counters, Decision, Outcome, QuotaError, QuotaStore, ReserveRequest, Storage, StorageChange,
    StorageDecision, StorageLimits, Ticket, apply_storage, day_of, first_exceeded, minute_of,
};
use crate::domain::TenantId;

/// Windows older than this many days are forgotten (a request may settle into yesterday).
const KEEP_DAYS: u64 = 1;

#[derive(Debug, Default)]
struct TenantState {
    /// Tokens per day number.
    days: HashMap<u64, u64>,
    /// (requests, tokens) per minute number.
    minutes: HashMap<u64, (u64, u64)>,
    /// In-flight reservation id -> lease expiry (unix ms).
    in_flight: HashMap<String, u64>,
    /// Stored documents and bytes.
    storage: Storage,
}

impl TenantState {
    fn prune(&mut self, now_ms: u64) {
        let (day, minute) = (day_of(now_ms), minute_of(now_ms));
        self.days.retain(|d, _| *d + KEEP_DAYS >= day);
        self.minutes.retain(|m, _| *m + 1 >= minute);
        self.in_flight.retain(|_, expiry| *expiry > now_ms);
    }

    fn counters(&self, now_ms: u64) -> Counters {
        let (req, tok) = self
            .minutes
            .get(&minute_of(now_ms))
            .copied()
            .unwrap_or_default();
        Counters {
            daily_tokens: self.days.get(&day_of(now_ms)).copied().unwrap_or(0),
            minute_requests: req,
            minute_tokens: tok,
            in_flight: self
                .in_flight
                .values()
                .filter(|expiry| **expiry > now_ms)
                .count() as u64,
        }
    }
}

/// Counters in this process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tenants: Mutex<HashMap<TenantId, TenantState>>,
    next_id: AtomicU64,
}

impl MemoryStore {
    fn with<R>(&self, tenant: &TenantId, f: impl FnOnce(&mut TenantState) -> R) -> R {
        let mut map = self.tenants.lock();
        f(map.entry(tenant.clone()).or_default())
    }
}

#[async_trait]
impl QuotaStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "in-process"
    }

    async fn reserve(&self, req: &ReserveRequest) -> Result<Decision, QuotaError> {
        let id = format!("m{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let now = req.now_ms;
        let lease_ms = u64::try_from(req.lease.as_millis()).unwrap_or(u64::MAX);
        Ok(self.with(&req.tenant, |s| {
            s.prune(now);
            let used = s.counters(now);
            if let Some(limit) = first_exceeded(&used, &req.limits, req.estimate) {
                return Decision::Rejected { limit, used };
            }
            let (day, minute) = (day_of(now), minute_of(now));
            *s.days.entry(day).or_default() += req.estimate;
            let m = s.minutes.entry(minute).or_default();
            m.0 += 1;
            m.1 += req.estimate;
            s.in_flight.insert(id.clone(), now.saturating_add(lease_ms));
            Decision::Admitted {
                ticket: Ticket {
                    id,
                    tenant: req.tenant.clone(),
                    estimate: req.estimate,
                    day,
                    minute,
                },
                used: s.counters(now),
            }
        }))
    }

    async fn finish(&self, ticket: &Ticket, outcome: Outcome) -> Result<bool, QuotaError> {
        Ok(self.with(&ticket.tenant, |s| {
            if s.in_flight.remove(&ticket.id).is_none() {
                return false;
            }
            let (refund_tokens, charge, refund_request) = match outcome {
                Outcome::Used { tokens } => (ticket.estimate, tokens, false),
                Outcome::Released => (ticket.estimate, 0, true),
            };
            // Windows that already expired are not re-created.
            if let Some(d) = s.days.get_mut(&ticket.day) {
                *d = d.saturating_sub(refund_tokens).saturating_add(charge);
            }
            if let Some(m) = s.minutes.get_mut(&ticket.minute) {
                m.1 = m.1.saturating_sub(refund_tokens).saturating_add(charge);
                if refund_request {
                    m.0 = m.0.saturating_sub(1);
                }
            }
            true
        }))
    }

    async fn usage(&self, tenant: &TenantId, now_ms: u64) -> Result<Counters, QuotaError> {
        Ok(self.with(tenant, |s| s.counters(now_ms)))
    }

    async fn ping(&self) -> Result<(), QuotaError> {
        Ok(())
    }

    async fn change_storage(
        &self,
        tenant: &TenantId,
        change: StorageChange,
        limits: &StorageLimits,
    ) -> Result<StorageDecision, QuotaError> {
        Ok(self.with(tenant, |s| {
            let decision = apply_storage(s.storage, change, limits);
            if let StorageDecision::Applied(after) = decision {
                s.storage = after;
            }
            decision
        }))
    }

    async fn storage(&self, tenant: &TenantId) -> Result<Storage, QuotaError> {
        Ok(self.with(tenant, |s| s.storage))
    }
}
