//! The operator's per-tenant gauges, served on its `/metrics` next to the reconciler's
//! families: whether each tenant is ready and how old its signing key is, from what the
//! operator writes in the Tenants' status (the `Ready` condition, `keyCreatedAt`) and the
//! rotation period of their spec. Every replica watches the Tenants and reports them, so the
//! series do not pause while leadership changes hands.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;

use futures::StreamExt as _;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt as _};
use parking_lot::Mutex;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::crd::{Tenant, condition};
use crate::domain::parse_duration;
use crate::metrics::TenantLabels;

/// What the gauges of one tenant are computed from.
#[derive(Debug, Clone, Default, PartialEq)]
struct Facts {
    /// Its `Ready` condition is `True`.
    ready: bool,
    /// When its current signing key was created (Unix seconds), once the operator made one.
    key_created_at: Option<i64>,
    /// `spec.auth.rotateEvery`, in seconds, when set.
    rotate_every: Option<i64>,
}

impl Facts {
    fn of(t: &Tenant) -> Self {
        let status = t.status.as_ref();
        Self {
            ready: status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == condition::READY && c.status == "True")
            }),
            key_created_at: status
                .and_then(|s| s.key_created_at.as_deref())
                .and_then(|at| at.parse::<Timestamp>().ok())
                .map(|at| at.as_second()),
            rotate_every: t
                .spec
                .auth
                .rotate_every
                .as_deref()
                .and_then(parse_duration)
                .map(|d| d.as_secs() as i64),
        }
    }
}

/// The per-tenant gauges, in their own registry.
pub struct TenantGauges {
    registry: Registry,
    /// `tenantry_tenant_ready{tenant_id}`: 1 while the Tenant's `Ready` condition is `True`.
    ready: Family<TenantLabels, Gauge>,
    /// `tenantry_tenant_signing_key_age_seconds{tenant_id}`: age of the current signing key.
    key_age: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    /// `tenantry_tenant_signing_key_rotation_period_seconds{tenant_id}`: `rotateEvery`, for the
    /// tenants that set it.
    rotation_period: Family<TenantLabels, Gauge>,
    facts: Mutex<BTreeMap<String, Facts>>,
}

impl Default for TenantGauges {
    fn default() -> Self {
        let mut registry = Registry::default();
        let ready = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "tenantry_tenant_ready",
            "1 while the Tenant's Ready condition is True, else 0",
            ready.clone(),
        );
        let key_age = Family::<TenantLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "tenantry_tenant_signing_key_age_seconds",
            "Age of the tenant's current signing key",
            key_age.clone(),
        );
        let rotation_period = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "tenantry_tenant_signing_key_rotation_period_seconds",
            "The tenant's spec.auth.rotateEvery (tenants without one have no series)",
            rotation_period.clone(),
        );
        Self {
            registry,
            ready,
            key_age,
            rotation_period,
            facts: Mutex::new(BTreeMap::new()),
        }
    }
}

impl TenantGauges {
    /// Records the Tenant as it is now.
    pub fn observe(&self, t: &Tenant) {
        self.facts.lock().insert(t.name_any(), Facts::of(t));
    }

    /// Forgets a Tenant that is gone.
    pub fn forget(&self, name: &str) {
        self.facts.lock().remove(name);
    }

    /// Keeps only the Tenants named in `names` (after a full relist).
    fn retain(&self, names: &BTreeSet<String>) {
        self.facts.lock().retain(|n, _| names.contains(n));
    }

    /// Text exposition of the gauges at `now` (Unix seconds; the key ages grow with it).
    pub fn encode(&self, now: i64) -> String {
        let facts = self.facts.lock();
        self.ready.clear();
        self.key_age.clear();
        self.rotation_period.clear();
        for (name, f) in facts.iter() {
            let labels = TenantLabels {
                tenant_id: name.clone(),
            };
            self.ready.get_or_create(&labels).set(i64::from(f.ready));
            if let Some(created) = f.key_created_at {
                self.key_age
                    .get_or_create(&labels)
                    .set((now - created).max(0) as f64);
            }
            if let Some(every) = f.rotate_every {
                self.rotation_period.get_or_create(&labels).set(every);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Keeps the gauges in step with the cluster's Tenants until the watch ends (never, short
    /// of a shutdown: errors are retried with backoff).
    pub async fn watch(&self, client: Client) {
        let api: Api<Tenant> = Api::all(client);
        let mut relisted = BTreeSet::new();
        let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Apply(t)) => self.observe(&t),
                Ok(Event::Delete(t)) => self.forget(&t.name_any()),
                Ok(Event::Init) => relisted.clear(),
                Ok(Event::InitApply(t)) => {
                    relisted.insert(t.name_any());
                    self.observe(&t);
                }
                Ok(Event::InitDone) => self.retain(&relisted),
                Err(e) => tracing::warn!(error = %e, "watching Tenants for the tenant gauges"),
            }
        }
    }
}

/// Text expositions joined into one: each family once, a single `# EOF` at the end.
pub fn join_expositions(parts: &[String]) -> String {
    let mut out = String::new();
    for p in parts {
        out.push_str(p.strip_suffix("# EOF\n").unwrap_or(p));
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tenant(
        name: &str,
        ready: &str,
        key_created_at: Option<&str>,
        rotate: Option<&str>,
    ) -> Tenant {
        let mut status = json!({"conditions": [{"type": "Ready", "status": ready, "reason": "X"}]});
        if let Some(at) = key_created_at {
            status["keyCreatedAt"] = json!(at);
        }
        let mut auth = json!({});
        if let Some(r) = rotate {
            auth["rotateEvery"] = json!(r);
        }
        serde_json::from_value(json!({
            "apiVersion": "tenantry.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name},
            "spec": {"tier": "pro", "auth": auth},
            "status": status,
        }))
        .expect("tenant")
    }

    #[test]
    fn gauges_follow_the_tenants_status_and_the_clock() {
        let g = TenantGauges::default();
        let created: Timestamp = "2026-12-01T00:00:00Z".parse().expect("ts");
        g.observe(&tenant(
            "acme",
            "True",
            Some("2026-12-01T00:00:00Z"),
            Some("720h"),
        ));
        g.observe(&tenant("beta", "False", None, None));
        let now = created.as_second() + 3600;
        let text = g.encode(now);
        for needle in [
            r#"tenantry_tenant_ready{tenant_id="acme"} 1"#,
            r#"tenantry_tenant_ready{tenant_id="beta"} 0"#,
            r#"tenantry_tenant_signing_key_age_seconds{tenant_id="acme"} 3600.0"#,
            r#"tenantry_tenant_signing_key_rotation_period_seconds{tenant_id="acme"} 2592000"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(
            !text.contains(r#"signing_key_age_seconds{tenant_id="beta"}"#),
            "{text}"
        );
        assert!(
            g.encode(now + 60)
                .contains(r#"age_seconds{tenant_id="acme"} 3660.0"#)
        );
        g.forget("beta");
        g.retain(&BTreeSet::from(["beta".to_string()]));
        let text = g.encode(now);
        assert!(!text.contains("acme") && !text.contains("beta"), "{text}");
    }

    #[test]
    fn joined_expositions_end_in_one_eof() {
        let joined = join_expositions(&["a 1\n# EOF\n".to_string(), "b 2\n# EOF\n".to_string()]);
        assert_eq!(joined, "a 1\nb 2\n# EOF\n");
    }
}
