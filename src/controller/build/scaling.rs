//! How many API replicas a tenant may run (pure). Replicas agree only through shared stores:
//! without a shared vector store each pod would keep its own documents, without shared quotas
//! each pod would count its own budget (multiplying it). A tenant whose API would run more
//! than one replica without both is pinned to one, and says why.
use super::BuildConfig;
use crate::crd::Replicas;

/// What `kubectl get tn` shows after the replica count of a pinned tenant.
pub const PINNED_SUFFIX: &str = " (pinned)";

/// A store the API replicas would not share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unshared {
    /// The pods use the embedded vector store (no `--qdrant-url`).
    VectorStore,
    /// The pods count quotas in process (no Redis URL).
    Quotas,
}

impl Unshared {
    /// What is wrong and how to fix it, for the condition message and the Event.
    fn explain(self) -> &'static str {
        match self {
            Unshared::VectorStore => {
                "the vector store is not shared (each pod would keep its own embedded store; run the operator with --qdrant-url)"
            }
            Unshared::Quotas => {
                "quotas are not shared (each pod would count its own budget; give the pods TENANTRY_REDIS_URL with --api-env-from-secret, or set quota.redisUrl in --api-config)"
            }
        }
    }
}

/// The stores the API pods built with `cfg` would not share.
pub fn unshared(cfg: &BuildConfig) -> Vec<Unshared> {
    let redis_env = cfg
        .api_env
        .iter()
        .any(|(k, v)| k == "TENANTRY_REDIS_URL" && !v.is_empty())
        || cfg
            .api_secret_env
            .iter()
            .any(|(k, _, _)| k == "TENANTRY_REDIS_URL");
    let mut missing = Vec::new();
    if cfg.qdrant_url.is_none() {
        missing.push(Unshared::VectorStore);
    }
    if !redis_env && cfg.serve.quota.redis_url.is_none() {
        missing.push(Unshared::Quotas);
    }
    missing
}

/// The replica decision of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaling {
    /// The bounds the tenant asks for (its own, else its tier's, else 1..3).
    pub wanted: Replicas,
    /// The unshared stores that pin it to one replica (empty: not pinned).
    pub pinned_by: Vec<Unshared>,
}

impl Scaling {
    /// Pins `wanted` to one replica when it allows more than one and a store is `unshared`.
    pub fn decide(wanted: Replicas, unshared: Vec<Unshared>) -> Self {
        let pinned_by = if wanted.max > 1 { unshared } else { Vec::new() };
        Self { wanted, pinned_by }
    }

    /// Whether the tenant is pinned to one replica.
    pub fn pinned(&self) -> bool {
        !self.pinned_by.is_empty()
    }

    /// The autoscaler's bounds.
    pub fn bounds(&self) -> Replicas {
        if self.pinned() {
            Replicas { min: 1, max: 1 }
        } else {
            self.wanted
        }
    }

    /// The Deployment's `spec.replicas`: 0 while suspended, 1 while pinned, else unset (the
    /// autoscaler owns it).
    pub fn deployment_replicas(&self, suspended: bool) -> Option<i32> {
        if suspended {
            Some(0)
        } else {
            self.pinned().then_some(1)
        }
    }

    /// The replicas as `kubectl get tn` shows them: `2-5`, `3`, `1 (pinned)`, `0 (suspended)`.
    pub fn summary(&self, suspended: bool) -> String {
        let Replicas { min, max } = self.bounds();
        match (suspended, self.pinned()) {
            (true, _) => "0 (suspended)".to_string(),
            (false, true) => format!("1{PINNED_SUFFIX}"),
            (false, false) if min == max => min.to_string(),
            (false, false) => format!("{min}-{max}"),
        }
    }

    /// Why the tenant is pinned, with the fix (`None`: it is not).
    pub fn pin_message(&self) -> Option<String> {
        let Replicas { min, max } = self.wanted;
        let why: Vec<_> = self.pinned_by.iter().map(|u| u.explain()).collect();
        self.pinned().then(|| {
            format!(
                "pinned to 1 replica instead of {min}-{max}: {}",
                why.join("; and ")
            )
        })
    }
}

/// Whether a recorded `status.replicas` says the tenant was pinned.
pub fn was_pinned(summary: Option<&str>) -> bool {
    summary.is_some_and(|s| s.ends_with(PINNED_SUFFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE: Replicas = Replicas { min: 2, max: 5 };

    fn shared_config() -> BuildConfig {
        let mut c = BuildConfig::test();
        c.qdrant_url = Some("http://qdrant:6334".into());
        c.api_secret_env
            .push(("TENANTRY_REDIS_URL".into(), "redis".into(), "url".into()));
        c
    }

    #[test]
    fn each_unshared_store_is_found() {
        assert_eq!(
            unshared(&BuildConfig::test()),
            [Unshared::VectorStore, Unshared::Quotas]
        );
        assert_eq!(unshared(&shared_config()), []);
        let mut c = BuildConfig::test();
        c.serve.quota.redis_url = Some("redis://redis:6379".into());
        assert_eq!(unshared(&c), [Unshared::VectorStore]);
        let mut c = BuildConfig::test();
        c.qdrant_url = Some("http://qdrant:6334".into());
        c.api_env.push(("TENANTRY_REDIS_URL".into(), String::new()));
        assert_eq!(unshared(&c), [Unshared::Quotas], "an empty URL is none");
        c.api_env
            .push(("TENANTRY_REDIS_URL".into(), "redis://r".into()));
        assert_eq!(unshared(&c), []);
    }

    #[test]
    fn more_than_one_replica_without_shared_stores_is_pinned_with_the_reason() {
        let s = Scaling::decide(FIVE, unshared(&BuildConfig::test()));
        assert_eq!(s.bounds(), Replicas { min: 1, max: 1 });
        assert_eq!(s.deployment_replicas(false), Some(1));
        assert_eq!(s.deployment_replicas(true), Some(0));
        assert_eq!(s.summary(false), "1 (pinned)");
        assert!(was_pinned(Some(&s.summary(false))));
        let m = s.pin_message().expect("pinned");
        assert!(m.starts_with("pinned to 1 replica instead of 2-5: "), "{m}");
        assert!(
            m.contains("--qdrant-url") && m.contains("TENANTRY_REDIS_URL"),
            "{m}"
        );
    }

    #[test]
    fn shared_stores_or_a_single_replica_keep_the_bounds() {
        let s = Scaling::decide(FIVE, unshared(&shared_config()));
        assert_eq!((s.bounds(), s.pin_message()), (FIVE, None));
        assert_eq!(s.deployment_replicas(false), None, "left to the autoscaler");
        assert_eq!(s.summary(false), "2-5");
        assert!(!was_pinned(Some("2-5")) && !was_pinned(None));
        let one = Replicas { min: 1, max: 1 };
        let s = Scaling::decide(one, unshared(&BuildConfig::test()));
        assert!(!s.pinned(), "one replica needs nothing shared");
        assert_eq!(s.summary(false), "1");
    }
}
