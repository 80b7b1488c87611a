//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one reconciles. Every write to the Lease carries its `resourceVersion`, so two
//! candidates can never both win: the API server accepts one and answers 409 to the other.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

/// One candidate for leadership.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    lease_duration: Duration,
}

impl Elector {
    /// A candidate `identity` for the Lease `name` behind `api` (in `namespace`).
    pub fn new(
        api: Api<Lease>,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Self {
        Self {
            api,
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration,
        }
    }

    fn spec(&self, now: Timestamp, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs().max(1) as i32),
            acquire_time: acquire.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Takes or renews the Lease. `Ok(true)`: this candidate leads until `lease_duration`
    /// from now. `Ok(false)`: another candidate holds a live Lease, or won a race.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) => {
                let until = renewed
                    .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                        secs,
                    )))
                    .unwrap_or(*renewed);
                until < now
            }
            _ => true,
        };
        if !ours && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquire = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        let mut next = lease.clone();
        next.spec = Some(self.spec(now, acquire, transitions));
        // `replace` sends metadata.resourceVersion: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Logs why the Lease cannot be written (once per distinct problem; retried meanwhile).
    fn report(&self, e: &kube::Error) {
        let (namespace, lease) = (&self.namespace, &self.name);
        match e {
            kube::Error::Api(s) if s.code == 404 => tracing::error!(
                %namespace,
                %lease,
                error = %e,
                "leader election: namespace {namespace:?} does not exist, so the Lease cannot be \
                 created and this operator never leads: create the namespace or run with \
                 --lease-namespace (TENANTRY_LEASE_NAMESPACE) naming the operator's namespace; \
                 retrying"
            ),
            kube::Error::Api(s) if s.code == 403 => tracing::error!(
                %namespace,
                %lease,
                error = %e,
                "leader election: not allowed to read or write Lease {namespace}/{lease} (RBAC); \
                 retrying"
            ),
            _ => {
                tracing::warn!(%namespace, %lease, error = %e, "leader election: lease update failed; retrying")
            }
        }
    }

    /// Gives the Lease up (on shutdown), so another candidate takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(&self.identity)
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await;
        }
    }

    /// Campaigns forever: publishes `true` while leading, `false` otherwise. Leadership is
    /// considered lost as soon as a renewal is refused or no renewal succeeded for the lease
    /// duration. A failure is logged when it starts (or changes), not at every retry, and its
    /// end is logged too.
    pub async fn run(self, tx: watch::Sender<bool>) {
        let period = (self.lease_duration / 3).max(Duration::from_millis(200));
        let mut last_ok: Option<tokio::time::Instant> = None;
        let mut failing: Option<String> = None;
        loop {
            let result = self.try_acquire_or_renew().await;
            match (&result, &failing) {
                (Ok(_), Some(_)) => {
                    tracing::info!(namespace = %self.namespace, lease = %self.name, "leader election: the Lease can be written again");
                    failing = None;
                }
                (Err(e), previous) => {
                    let problem = e.to_string();
                    if previous.as_ref() != Some(&problem) {
                        self.report(e);
                        failing = Some(problem);
                    }
                }
                (Ok(_), None) => {}
            }
            let leading = match result {
                Ok(true) => {
                    last_ok = Some(tokio::time::Instant::now());
                    true
                }
                Ok(false) => {
                    last_ok = None;
                    false
                }
                Err(_) => last_ok.is_some_and(|t| t.elapsed() < self.lease_duration),
            };
            if *tx.borrow() != leading {
                tracing::info!(identity = %self.identity, leading, "leadership changed");
            }
            tx.send_replace(leading);
            tokio::time::sleep(period).await;
        }
    }
}
