//! The status step of a reconcile: the Tenant's status computed only from what was applied
//! (or from why the spec is invalid), with transition times kept when a condition's status did
//! not change, and patched only when it changed (conditions compared ignoring their times), so
//! a steady tenant causes no write and no watch event.
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use super::apply::Applied;
use super::apply::Conflict;
use super::build::Resources;
use super::build::expose::{self, ExposeObject, Exposure};
use super::validate::InvalidSpec;
use super::{Context, Error, kube_err};
use crate::crd::{Condition, FIELD_MANAGER, PreviousKey, Tenant, TenantStatus, condition, reason};

/// What one component of a tenant (signing key, quota, vector store, API) came to: the
/// condition it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentOutcome {
    /// Whether the condition holds (`True`).
    pub ok: bool,
    /// PascalCase reason.
    pub reason: String,
    /// Message for humans.
    pub message: String,
}

impl ComponentOutcome {
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
pub struct ComponentOutcomes {
    /// `SigningKeyReady`.
    pub signing_key: ComponentOutcome,
    /// `QuotaReady`.
    pub quota: ComponentOutcome,
    /// `VectorStoreReady`.
    pub vector_store: ComponentOutcome,
    /// `ApiReady`.
    pub api: ComponentOutcome,
}

/// The `Ready` outcome: true when all components are.
pub fn ready(o: &ComponentOutcomes) -> ComponentOutcome {
    let parts = [&o.signing_key, &o.quota, &o.vector_store, &o.api];
    match parts.iter().find(|p| !p.ok) {
        None => ComponentOutcome::ok(reason::RECONCILED, "all components are ready"),
        Some(p) => ComponentOutcome::fail(&p.reason, p.message.clone()),
    }
}

/// Builds conditions, keeping `lastTransitionTime` of conditions whose status is unchanged.
pub fn conditions(
    previous: &[Condition],
    outcomes: &[(&str, &ComponentOutcome)],
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
    o: &ComponentOutcomes,
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

/// The component outcome a previous status recorded for condition `type_`, if any.
fn recorded_outcome(prev: &TenantStatus, type_: &str) -> Option<ComponentOutcome> {
    prev.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| ComponentOutcome {
            ok: c.status == "True",
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
}

/// The status of a Tenant that cannot be reconciled: `Ready` and `QuotaReady` carry the
/// problem; the other components keep what was last recorded (nothing was applied).
pub fn invalid(tenant: &Tenant, problem: &InvalidSpec, now: &str) -> TenantStatus {
    let prev = tenant.status.clone().unwrap_or_default();
    let (reason, message) = (problem.reason(), problem.to_string());
    let recorded = |type_: &str| {
        recorded_outcome(&prev, type_).unwrap_or_else(|| {
            ComponentOutcome::fail(reason, "not reconciled: the spec is invalid")
        })
    };
    let outcomes = ComponentOutcomes {
        signing_key: recorded(condition::SIGNING_KEY_READY),
        quota: ComponentOutcome::fail(reason, message.clone()),
        vector_store: recorded(condition::VECTOR_STORE_READY),
        api: recorded(condition::API_READY),
    };
    let mut conditions =
        all_conditions(&prev.conditions, &outcomes, tenant.metadata.generation, now);
    // Ready carries the spec problem itself.
    if let Some(r) = conditions.iter_mut().find(|c| c.type_ == condition::READY) {
        r.reason = reason.to_string();
        r.message = message.clone();
    }
    if problem.stalled() {
        let stalled = ComponentOutcome::ok(reason, message);
        conditions.extend(self::conditions(
            &prev.conditions,
            &[(condition::STALLED, &stalled)],
            tenant.metadata.generation,
            now,
        ));
    }
    TenantStatus {
        observed_generation: tenant.metadata.generation,
        conditions,
        ..prev
    }
}

/// The status of a Tenant whose reconcile stopped at an object it does not own: `Ready`
/// carries the conflict (and `SigningKeyReady` too, for a Secret); the other components keep
/// what was last recorded (nothing was applied).
pub fn refused(tenant: &Tenant, conflict: &Conflict, now: &str) -> TenantStatus {
    let prev = tenant.status.clone().unwrap_or_default();
    let fail = || ComponentOutcome::fail(conflict.reason, conflict.message.clone());
    let recorded = |type_: &str| {
        recorded_outcome(&prev, type_).unwrap_or_else(|| {
            ComponentOutcome::fail(conflict.reason, "not reconciled: an object is in the way")
        })
    };
    let outcomes = ComponentOutcomes {
        signing_key: if conflict.reason == reason::SECRET_CONFLICT {
            fail()
        } else {
            recorded(condition::SIGNING_KEY_READY)
        },
        quota: recorded(condition::QUOTA_READY),
        vector_store: recorded(condition::VECTOR_STORE_READY),
        api: recorded(condition::API_READY),
    };
    let mut conditions =
        all_conditions(&prev.conditions, &outcomes, tenant.metadata.generation, now);
    if let Some(r) = conditions.iter_mut().find(|c| c.type_ == condition::READY) {
        let was_ready = r.status == "True";
        r.status = "False".to_string();
        r.reason = conflict.reason.to_string();
        r.message = conflict.message.clone();
        if was_ready {
            r.last_transition_time = Some(now.to_string());
        }
    }
    TenantStatus {
        observed_generation: tenant.metadata.generation,
        conditions,
        ..prev
    }
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(unix: i64) -> Option<String> {
    let t = k8s_openapi::jiff::Timestamp::from_second(unix).ok()?;
    Some(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// The status of a Tenant whose objects were applied.
pub fn applied(tenant: &Tenant, resources: &Resources<Applied>, now: &str) -> TenantStatus {
    let Resources {
        names,
        signing_key,
        deployment,
        exposure,
        effective_quota,
        scaling,
        stage,
        ..
    } = resources;
    let suspended = tenant.spec.suspend;
    let ring = &signing_key.plan.ring;
    let kid = &ring.current;
    let outcomes = ComponentOutcomes {
        signing_key: ComponentOutcome::ok("KeyReady", format!("current key {kid}")),
        quota: ComponentOutcome::ok("Resolved", format!("tier {}", tenant.spec.tier)),
        vector_store: match &stage.vector_error {
            None => ComponentOutcome::ok("CollectionsReady", "vector collections exist"),
            Some(e) => ComponentOutcome::fail("VectorStoreUnavailable", e.to_string()),
        },
        api: match exposure_outcome(stage.gateway_api_missing, exposure) {
            Some(o) if !suspended => o,
            _ => api_outcome(suspended, deployment, scaling.pin_message()),
        },
    };
    let prev = tenant.status.clone().unwrap_or_default();
    TenantStatus {
        observed_generation: tenant.metadata.generation,
        conditions: all_conditions(&prev.conditions, &outcomes, tenant.metadata.generation, now),
        namespace: Some(names.namespace.clone()),
        signing_secret: Some(names.secret.clone()),
        current_key_id: Some(kid.clone()),
        key_created_at: ring.current_key().and_then(|k| rfc3339(k.created_at)),
        next_rotation_at: signing_key.plan.next_rotation_at.and_then(rfc3339),
        previous_keys: ring
            .keys
            .iter()
            .filter(|k| &k.kid != kid)
            .map(|k| PreviousKey {
                kid: k.kid.clone(),
                valid_until: k.expires_at.and_then(rfc3339),
            })
            .collect(),
        data_owner: super::validate::data_owner(tenant),
        collections: stage.collections.clone(),
        endpoint: Some(match &exposure.exposed {
            Some((_, url)) => url.clone(),
            None => names.endpoint(),
        }),
        effective_quota: Some(effective_quota.clone()),
        replicas: Some(scaling.summary(suspended)),
    }
}

/// The `ApiReady` message when HTTPRoutes cannot be applied.
pub const GATEWAY_API_MISSING: &str = "the API server serves no Gateway API \
    (gateway.networking.k8s.io/v1 HTTPRoute): install the Gateway API CRDs, or run the \
    operator with --expose ingress or --expose none; the API is reachable in-cluster only";

/// `ApiReady` when the exposure keeps the API from its external URL: no Gateway API, or a
/// Gateway that refuses the route.
fn exposure_outcome(gateway_api_missing: bool, exposure: &Exposure) -> Option<ComponentOutcome> {
    if gateway_api_missing {
        return Some(ComponentOutcome::fail(
            reason::GATEWAY_API_MISSING,
            GATEWAY_API_MISSING,
        ));
    }
    let Some((ExposeObject::HttpRoute(route), _)) = &exposure.exposed else {
        return None;
    };
    let why = expose::route_refusal(route)?;
    let message = format!("the parent Gateway does not accept the HTTPRoute: {why}");
    Some(ComponentOutcome::fail(reason::ROUTE_NOT_ACCEPTED, message))
}

/// `ApiReady`: suspended, available (the applied Deployment reports an available replica), or
/// still progressing; the message ends with why the API is pinned to one replica, if it is.
fn api_outcome(
    suspended: bool,
    deployment: &k8s_openapi::api::apps::v1::Deployment,
    pinned: Option<String>,
) -> ComponentOutcome {
    let mut outcome = api_availability(suspended, deployment);
    if let Some(why) = pinned.filter(|_| !suspended) {
        outcome.message = format!("{}; {why}", outcome.message);
    }
    outcome
}

fn api_availability(
    suspended: bool,
    deployment: &k8s_openapi::api::apps::v1::Deployment,
) -> ComponentOutcome {
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    if suspended {
        ComponentOutcome::fail(
            reason::SUSPENDED,
            "the tenant is suspended: its API is scaled to zero",
        )
    } else if available > 0 {
        ComponentOutcome::ok("Available", format!("{available} API replica(s) available"))
    } else {
        ComponentOutcome::fail(
            "Progressing",
            "waiting for the chat API to become available",
        )
    }
}

/// Whether `new` differs from the recorded status, ignoring condition transition times.
pub fn changed(recorded: Option<&TenantStatus>, new: &TenantStatus) -> bool {
    let Some(old) = recorded else {
        return true;
    };
    let untimed = |s: &TenantStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = None;
        }
        s
    };
    untimed(old) != untimed(new)
}

/// Writes `status` (server-side apply of the status subresource) unless it is unchanged.
pub async fn patch(ctx: &Context, tenant: &Tenant, status: TenantStatus) -> Result<(), Error> {
    if !changed(tenant.status.as_ref(), &status) {
        return Ok(()); // unchanged: no write, no watch event, no loop
    }
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    apply_status(&api, &tenant.name_any(), &status)
        .await
        .map_err(kube_err("patch status"))
}

/// Server-side apply of `status` to the status subresource of `name` under the operator's
/// field manager.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl serde::Serialize,
) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(&patch))
        .await
        .map(|_| ())
}

/// The current time as a condition's `lastTransitionTime`.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(api_ok: bool) -> ComponentOutcomes {
        ComponentOutcomes {
            signing_key: ComponentOutcome::ok("KeyReady", "k"),
            quota: ComponentOutcome::ok("Resolved", "q"),
            vector_store: ComponentOutcome::ok("CollectionsReady", "v"),
            api: if api_ok {
                ComponentOutcome::ok("Available", "a")
            } else {
                ComponentOutcome::fail("Progressing", "waiting")
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

    #[test]
    fn only_a_real_change_needs_a_patch() {
        let first = TenantStatus {
            conditions: all_conditions(&[], &outcomes(false), Some(1), "t1"),
            ..Default::default()
        };
        let mut retimed = first.clone();
        for c in &mut retimed.conditions {
            c.last_transition_time = Some("t2".to_string());
        }
        assert!(
            !changed(Some(&first), &retimed),
            "times alone are no change"
        );
        let progressed = TenantStatus {
            conditions: all_conditions(&first.conditions, &outcomes(true), Some(1), "t3"),
            ..Default::default()
        };
        assert!(changed(Some(&first), &progressed));
        assert!(changed(None, &first));
    }
}
