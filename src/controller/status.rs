//! Tenant status: conditions computed from what the reconcile achieved, with transition times
//! kept when a condition's status did not change, so an unchanged status is byte-identical and
//! no patch (and no watch event) is made for it.
use crate::crd::{Condition, TenantStatus, condition, reason};

/// One condition's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether it holds.
    pub ok: bool,
    /// PascalCase reason.
    pub reason: String,
    /// Message for humans.
    pub message: String,
}

impl Outcome {
    /// A condition that holds.
    pub fn ok(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    /// A condition that does not hold.
    pub fn fail(reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// The four component conditions, in the order `Ready` reports the first failing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcomes {
    /// `SigningKeyReady`.
    pub signing_key: Outcome,
    /// `QuotaReady`.
    pub quota: Outcome,
    /// `VectorStoreReady`.
    pub vector_store: Outcome,
    /// `ApiReady`.
    pub api: Outcome,
}

/// The `Ready` outcome: true when all components are.
pub fn ready(o: &Outcomes) -> Outcome {
    let parts = [&o.signing_key, &o.quota, &o.vector_store, &o.api];
    match parts.iter().find(|p| !p.ok) {
        None => Outcome::ok(reason::RECONCILED, "all components are ready"),
        Some(p) => Outcome::fail(&p.reason, p.message.clone()),
    }
}

/// Builds conditions, keeping `lastTransitionTime` of conditions whose status is unchanged.
pub fn conditions(
    previous: &[Condition],
    outcomes: &[(&str, &Outcome)],
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    outcomes
        .iter()
        .map(|(type_, o)| {
            let status = if o.ok { "True" } else { "False" };
            let prev = previous.iter().find(|c| c.type_ == *type_);
            let last = match prev {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Some(now.to_string()),
            };
            Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: o.reason.clone(),
                message: o.message.clone(),
                last_transition_time: last,
                observed_generation: generation,
            }
        })
        .collect()
}

/// All five conditions of a Tenant.
pub fn all_conditions(
    previous: &[Condition],
    o: &Outcomes,
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let r = ready(o);
    conditions(
        previous,
        &[
            (condition::READY, &r),
            (condition::SIGNING_KEY_READY, &o.signing_key),
            (condition::QUOTA_READY, &o.quota),
            (condition::VECTOR_STORE_READY, &o.vector_store),
            (condition::API_READY, &o.api),
        ],
        generation,
        now,
    )
}

/// Whether `Ready` is true in a status.
pub fn is_ready(status: Option<&TenantStatus>) -> bool {
    status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.status == "True")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(api_ok: bool) -> Outcomes {
        Outcomes {
            signing_key: Outcome::ok("KeyReady", "k"),
            quota: Outcome::ok("Resolved", "q"),
            vector_store: Outcome::ok("CollectionsReady", "v"),
            api: if api_ok {
                Outcome::ok("Available", "a")
            } else {
                Outcome::fail("Progressing", "waiting")
            },
        }
    }

    #[test]
    fn ready_reports_the_first_failing_component() {
        assert!(ready(&outcomes(true)).ok);
        let r = ready(&outcomes(false));
        assert!(!r.ok);
        assert_eq!(r.reason, "Progressing");
    }

    #[test]
    fn transition_time_only_moves_on_status_change() {
        let first = all_conditions(&[], &outcomes(false), Some(1), "t1");
        assert!(
            first
                .iter()
                .all(|c| c.last_transition_time.as_deref() == Some("t1"))
        );
        let same = all_conditions(&first, &outcomes(false), Some(1), "t2");
        assert_eq!(first, same, "unchanged status must be identical");
        let changed = all_conditions(&first, &outcomes(true), Some(2), "t3");
        let api = changed.iter().find(|c| c.type_ == "ApiReady").expect("api");
        assert_eq!(api.last_transition_time.as_deref(), Some("t3"));
        let key = changed
            .iter()
            .find(|c| c.type_ == "SigningKeyReady")
            .expect("key");
        assert_eq!(key.last_transition_time.as_deref(), Some("t1"));
    }
}
