//! The reconciler's Prometheus metrics: reconciles by result, their duration, and tenants by
//! phase, served on the operator's `/metrics`.
use std::collections::HashMap;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `tenantry_reconcile_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success`, or the failure's [`super::Error::metric_label`].
    pub result: String,
}

/// Labels of `tenantry_tenants`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// One of [`Phase`]'s names.
    pub phase: String,
}

/// Where a tenant stands after its last reconcile (the `phase` label of `tenantry_tenants`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Every component is ready.
    Ready,
    /// Applied, but some component is not ready yet.
    NotReady,
    /// The spec is invalid or its tier does not exist.
    Invalid,
    /// `spec.suspend`: the API is scaled to zero.
    Suspended,
}

impl Phase {
    const ALL: [Phase; 4] = [
        Phase::Ready,
        Phase::NotReady,
        Phase::Invalid,
        Phase::Suspended,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Ready => "Ready",
            Phase::NotReady => "NotReady",
            Phase::Invalid => "Invalid",
            Phase::Suspended => "Suspended",
        }
    }
}

/// The reconciler's metric families, in their own registry.
pub struct ReconcileMetrics {
    registry: Registry,
    /// `tenantry_reconcile_total{result}`: reconciles by outcome.
    pub reconciles: Family<ResultLabels, Counter>,
    /// `tenantry_reconcile_duration_seconds`: how long one reconcile takes.
    pub duration: Histogram,
    /// `tenantry_tenants{phase}`: how many tenants are in each phase.
    pub tenants: Family<PhaseLabels, Gauge>,
    phases: Mutex<HashMap<String, Phase>>,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tenantry_reconcile",
            "Tenant reconciles by result",
            reconciles.clone(),
        );
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register(
            "tenantry_reconcile_duration_seconds",
            "Duration of one Tenant reconcile",
            duration.clone(),
        );
        let tenants = Family::<PhaseLabels, Gauge>::default();
        registry.register("tenantry_tenants", "Tenants by phase", tenants.clone());
        Self {
            registry,
            reconciles,
            duration,
            tenants,
            phases: Mutex::new(HashMap::new()),
        }
    }
}

impl ReconcileMetrics {
    /// Text exposition of the families.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one reconcile that ended in `result`.
    pub(super) fn count(&self, result: &str) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Records a tenant's phase (`None`: the tenant is gone) and updates the gauges.
    pub(super) fn phase(&self, tenant: &str, phase: Option<Phase>) {
        let mut phases = self.phases.lock();
        match phase {
            Some(p) => {
                phases.insert(tenant.to_string(), p);
            }
            None => {
                phases.remove(tenant);
            }
        }
        for p in Phase::ALL {
            let n = phases.values().filter(|v| **v == p).count() as i64;
            self.tenants
                .get_or_create(&PhaseLabels {
                    phase: p.name().to_string(),
                })
                .set(n);
        }
    }
}
