//! The operator: reconciles each `Tenant` into its namespace, signing-key Secret, rendered
//! config, chat API (Deployment, Service, HPA, PDB, NetworkPolicy), vector collections and
//! effective quota, and reports what it did in the Tenant's status and as Events.
//!
//! Steps per reconcile: validate (pure) → resolve the tier → build (pure) → apply (server-side
//! apply under one field manager) → status. Deletion runs behind the `tenantry.dev/cleanup`
//! finalizer (vector data per `deletionPolicy`; owned objects go by garbage collection).
pub mod build;
pub mod keys;
pub mod leader;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::keys::{Keyring, unix_now};
use crate::crd::{
    DeletionPolicy, FIELD_MANAGER, FINALIZER, QuotaTier, QuotaTierSpec, ROTATE_ANNOTATION, Tenant,
    TenantStatus, builtin_tier, parse_duration, reason,
};
use crate::vector::{Kind, TenantVectors, VectorBackend};
use build::{BuildConfig, Names};
use status::{Outcome, Outcomes};

/// Label every object the operator creates carries (its watches select on it).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=tenantry";
/// Requeue after a successful reconcile: vector stores can drift.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{step}: {source}")]
    Kube {
        /// Which step.
        step: &'static str,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The vector store failed.
    #[error("vector store: {0}")]
    Vector(#[from] crate::vector::VectorError),
    /// The finalizer machinery failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The object lacks a name.
    #[error("Tenant has no name")]
    NoName,
    /// A credentials Secret named by `--api-env-from-secret` is missing or lacks the key.
    #[error("{0}")]
    Credentials(String),
}

impl Error {
    /// Label for the failure counter and the Event reason.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube {
                source: kube::Error::Api(e),
                ..
            } if e.code == 409 => "Conflict",
            Error::Kube { .. } => "KubeError",
            Error::Vector(_) => "VectorStoreError",
            Error::Finalizer(_) => "FinalizerError",
            Error::NoName => "InvalidObject",
            Error::Credentials(_) => "CredentialsMissing",
        }
    }
}

fn kube_err(step: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { step, source }
}

/// Labels of `tenantry_reconcile_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or the error's label.
    pub result: String,
}

/// Labels of `tenantry_tenants`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `Ready`, `NotReady`, `Invalid`, `Suspended`.
    pub phase: String,
}

/// Operator metrics.
pub struct Metrics {
    registry: Registry,
    /// `tenantry_reconcile_total{result}`.
    pub reconciles: Family<ResultLabels, Counter>,
    /// `tenantry_reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `tenantry_tenants{phase}`.
    pub tenants: Family<PhaseLabels, Gauge>,
    phases: Mutex<HashMap<String, String>>,
}

impl Default for Metrics {
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

impl Metrics {
    /// Text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn count(&self, result: &str) {
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Records a tenant's phase (`None`: the tenant is gone).
    fn phase(&self, tenant: &str, phase: Option<&str>) {
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        match phase {
            Some(p) => {
                phases.insert(tenant.to_string(), p.to_string());
            }
            None => {
                phases.remove(tenant);
            }
        }
        for p in ["Ready", "NotReady", "Invalid", "Suspended"] {
            let n = phases.values().filter(|v| *v == p).count() as i64;
            self.tenants
                .get_or_create(&PhaseLabels {
                    phase: p.to_string(),
                })
                .set(n);
        }
    }
}

/// Shared state of the reconciler.
pub struct Context {
    /// API client.
    pub client: Client,
    /// What to build.
    pub build: BuildConfig,
    /// Vector store the tenants' collections live in.
    pub vectors: Arc<dyn VectorBackend>,
    /// Embedding dimension of the collections.
    pub dimension: usize,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    backoff: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A reconciler context.
    pub fn new(
        client: Client,
        build: BuildConfig,
        vectors: Arc<dyn VectorBackend>,
        dimension: usize,
        identity: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "tenantry-operator".to_string(),
                instance: Some(identity.to_string()),
            },
        );
        Self {
            client,
            build,
            vectors,
            dimension,
            recorder,
            metrics,
            backoff: Mutex::new(HashMap::new()),
        }
    }

    async fn event(&self, tenant: &Tenant, type_: EventType, reason: &str, note: String) {
        let ev = KubeEvent {
            type_,
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &tenant.object_ref(&())).await {
            tracing::warn!(error = %e, "cannot publish event");
        }
    }
}

async fn apply<K>(api: &Api<K>, obj: &K, step: &'static str) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(kube_err(step))
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Reconciles one Tenant (entry point for the controller).
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let name = tenant.metadata.name.clone().ok_or(Error::NoName)?;
    let result = finalizer(&api, FINALIZER, tenant, |event| async {
        match event {
            Finalizer::Apply(t) => apply_tenant(t, ctx.clone()).await,
            Finalizer::Cleanup(t) => cleanup(t, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => {
            ctx.metrics.count("success");
            ctx.backoff
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
        }
        Err(e) => ctx.metrics.count(e.metric_label()),
    }
    result
}

/// Requeue policy on errors: conflicts retry in about a second; other failures back off per
/// object from 5 s to 5 min (reset by a success).
pub fn error_policy(tenant: Arc<Tenant>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = tenant.name_any();
    tracing::warn!(tenant = %name, error = %error, "reconcile failed");
    if error.metric_label() == "Conflict" {
        return Action::requeue(Duration::from_secs(1));
    }
    let mut backoff = ctx.backoff.lock().unwrap_or_else(|e| e.into_inner());
    let n = backoff.entry(name.clone()).or_insert(0);
    let delay = Duration::from_secs(5u64.saturating_mul(1 << (*n).min(6))).min(RESYNC);
    *n += 1;
    let note = error.to_string();
    let reason = error.metric_label();
    let ctx2 = ctx.clone();
    // Events are best effort and must not block the policy.
    tokio::spawn(async move {
        ctx2.event(&tenant, EventType::Warning, reason, note).await;
    });
    Action::requeue(delay)
}

async fn patch_status(ctx: &Context, tenant: &Tenant, status: TenantStatus) -> Result<(), Error> {
    if tenant.status.as_ref() == Some(&status) {
        return Ok(()); // unchanged: no write, no watch event, no loop
    }
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "Tenant",
        "status": status,
    });
    api.patch_status(
        &tenant.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_err("patch status"))?;
    Ok(())
}

fn invalid_status(tenant: &Tenant, reason: &str, message: &str) -> TenantStatus {
    let prev = tenant.status.clone().unwrap_or_default();
    let failing = Outcome::fail(reason, message);
    let unknown = |r: &str| Outcome::fail(r, "not reconciled: the spec is invalid");
    let o = Outcomes {
        signing_key: prev_or(&prev, crate::crd::condition::SIGNING_KEY_READY)
            .unwrap_or_else(|| unknown(reason)),
        quota: failing.clone(),
        vector_store: prev_or(&prev, crate::crd::condition::VECTOR_STORE_READY)
            .unwrap_or_else(|| unknown(reason)),
        api: prev_or(&prev, crate::crd::condition::API_READY).unwrap_or_else(|| unknown(reason)),
    };
    let mut conditions = status::all_conditions(
        &prev.conditions,
        &o,
        tenant.metadata.generation,
        &now_rfc3339(),
    );
    // Ready carries the spec problem itself.
    if let Some(r) = conditions
        .iter_mut()
        .find(|c| c.type_ == crate::crd::condition::READY)
    {
        r.reason = reason.to_string();
        r.message = message.to_string();
    }
    TenantStatus {
        observed_generation: tenant.metadata.generation,
        conditions,
        ..prev
    }
}

fn prev_or(prev: &TenantStatus, type_: &str) -> Option<Outcome> {
    prev.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| Outcome {
            ok: c.status == "True",
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
}

async fn resolve_tier(ctx: &Context, name: &str) -> Result<Option<QuotaTierSpec>, Error> {
    let api: Api<QuotaTier> = Api::all(ctx.client.clone());
    match api.get_opt(name).await.map_err(kube_err("get QuotaTier"))? {
        Some(t) => Ok(Some(t.spec)),
        None => Ok(builtin_tier(name)),
    }
}

async fn apply_tenant(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let id_name = tenant.name_any();
    if let Err(errs) = tenant.validate() {
        let message = errs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let st = invalid_status(&tenant, reason::INVALID_SPEC, &message);
        if tenant.status.as_ref() != Some(&st) {
            ctx.event(&tenant, EventType::Warning, reason::INVALID_SPEC, message)
                .await;
        }
        patch_status(&ctx, &tenant, st).await?;
        ctx.metrics.phase(&id_name, Some("Invalid"));
        return Ok(Action::await_change());
    }
    let id = tenant.tenant_id().map_err(|_| Error::NoName)?;
    let Some(tier) = resolve_tier(&ctx, &tenant.spec.tier).await? else {
        let message = format!("QuotaTier {:?} does not exist", tenant.spec.tier);
        let st = invalid_status(&tenant, reason::TIER_NOT_FOUND, &message);
        if tenant.status.as_ref() != Some(&st) {
            ctx.event(&tenant, EventType::Warning, reason::TIER_NOT_FOUND, message)
                .await;
        }
        patch_status(&ctx, &tenant, st).await?;
        ctx.metrics.phase(&id_name, Some("Invalid"));
        // The QuotaTier watch brings this tenant back when the tier appears.
        return Ok(Action::await_change());
    };
    let names = Names::new(&id, &ctx.build.namespace_prefix);
    let client = ctx.client.clone();

    apply(
        &Api::<Namespace>::all(client.clone()),
        &build::namespace(&tenant, &names),
        "apply Namespace",
    )
    .await?;

    // Signing key.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let existing = secrets
        .get_opt(&names.secret)
        .await
        .map_err(kube_err("get Secret"))?;
    let mut key_warning = None;
    let stored = existing.as_ref().and_then(|s| {
        let raw = s.data.as_ref()?.get(build::KEYRING_KEY)?;
        match serde_json::from_slice::<Keyring>(&raw.0) {
            Ok(ring) if ring.current_key().is_some() => Some((
                ring,
                s.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(keys::ROTATED_FOR_ANNOTATION).cloned()),
            )),
            _ => {
                key_warning =
                    Some("the signing-key Secret held no valid keyring; a new key was generated");
                None
            }
        }
    });
    let requested = tenant.annotations().get(ROTATE_ANNOTATION).cloned();
    let rotate_every = tenant
        .spec
        .auth
        .rotate_every
        .as_deref()
        .and_then(parse_duration);
    let plan = keys::plan(
        stored,
        tenant.spec.auth.algorithm,
        rotate_every,
        requested.as_deref(),
        unix_now(),
    );
    apply(
        &secrets,
        &build::secret(&tenant, &names, &plan.ring, plan.rotated_for.as_deref()),
        "apply Secret",
    )
    .await?;
    if let Some(w) = key_warning {
        ctx.event(
            &tenant,
            EventType::Warning,
            "SigningKeyInvalid",
            w.to_string(),
        )
        .await;
    }
    if let Some(change) = plan.change.filter(|c| *c != keys::Change::Pruned) {
        let note = format!(
            "signing key {} is now current ({change:?})",
            plan.ring.current
        );
        tracing::info!(tenant = %id, kid = %plan.ring.current, ?change, "signing key updated");
        ctx.event(&tenant, EventType::Normal, "SigningKeyUpdated", note)
            .await;
    }

    // Platform credentials the API pods read (copied: a secretKeyRef only reaches Secrets in
    // the pod's own namespace).
    if !ctx.build.api_secret_env.is_empty() {
        let source: Api<Secret> = Api::namespaced(client.clone(), &ctx.build.operator_namespace);
        let mut data = std::collections::BTreeMap::new();
        for (env, secret, key) in &ctx.build.api_secret_env {
            let s = source
                .get_opt(secret)
                .await
                .map_err(kube_err("get credentials Secret"))?;
            let value = s.and_then(|s| s.data?.get(key).cloned()).ok_or_else(|| {
                Error::Credentials(format!(
                    "Secret {}/{secret} has no key {key:?} (for {env})",
                    ctx.build.operator_namespace
                ))
            })?;
            data.insert(env.clone(), value);
        }
        apply(
            &secrets,
            &build::credentials_secret(&tenant, &names, data),
            "apply credentials Secret",
        )
        .await?;
    }

    // Rendered config for the API pods.
    let manifest = build::tenant_manifest(&tenant, &tenant.spec.tier, &tier);
    let ns = names.namespace.clone();
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns),
        &build::config_map(&tenant, &names, manifest),
        "apply ConfigMap",
    )
    .await?;

    // The chat API.
    let deployment = apply(
        &Api::<Deployment>::namespaced(client.clone(), &ns),
        &build::deployment(&tenant, &names, &ctx.build),
        "apply Deployment",
    )
    .await?;
    apply(
        &Api::<Service>::namespaced(client.clone(), &ns),
        &build::service(&tenant, &names),
        "apply Service",
    )
    .await?;
    apply(
        &Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns),
        &build::hpa(&tenant, &names, build::replicas(&tenant, &tier)),
        "apply HorizontalPodAutoscaler",
    )
    .await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns),
        &build::pdb(&tenant, &names),
        "apply PodDisruptionBudget",
    )
    .await?;
    apply(
        &Api::<NetworkPolicy>::namespaced(client.clone(), &ns),
        &build::network_policy(&tenant, &names),
        "apply NetworkPolicy",
    )
    .await?;

    // Vector collections.
    let vectors = TenantVectors::new(
        ctx.vectors.clone(),
        id.clone(),
        tenant.spec.retrieval.isolation,
        ctx.dimension,
    );
    let vector_result = vectors.ensure().await;
    let vector_store = match &vector_result {
        Ok(()) => Outcome::ok("CollectionsReady", "vector collections exist"),
        Err(e) => Outcome::fail("VectorStoreUnavailable", e.to_string()),
    };

    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let api = if tenant.spec.suspend {
        Outcome::fail(
            reason::SUSPENDED,
            "the tenant is suspended: its API is scaled to zero",
        )
    } else if available > 0 {
        Outcome::ok("Available", format!("{available} API replica(s) available"))
    } else {
        Outcome::fail(
            "Progressing",
            "waiting for the chat API to become available",
        )
    };
    let outcomes = Outcomes {
        signing_key: Outcome::ok("KeyReady", format!("current key {}", plan.ring.current)),
        quota: Outcome::ok("Resolved", format!("tier {}", tenant.spec.tier)),
        vector_store,
        api,
    };
    let prev = tenant.status.clone().unwrap_or_default();
    let ready = status::ready(&outcomes).ok;
    let st = TenantStatus {
        observed_generation: tenant.metadata.generation,
        conditions: status::all_conditions(
            &prev.conditions,
            &outcomes,
            tenant.metadata.generation,
            &now_rfc3339(),
        ),
        namespace: Some(names.namespace.clone()),
        signing_secret: Some(names.secret.clone()),
        current_key_id: Some(plan.ring.current.clone()),
        collections: vec![
            vectors.collection(Kind::Docs),
            vectors.collection(Kind::Cache),
        ],
        endpoint: Some(names.endpoint()),
        effective_quota: Some(build::effective_quota(&tenant, &tier)),
    };
    let became_ready = ready && !status::is_ready(tenant.status.as_ref());
    patch_status(&ctx, &tenant, st).await?;
    if became_ready {
        ctx.event(
            &tenant,
            EventType::Normal,
            reason::RECONCILED,
            "tenant is ready".to_string(),
        )
        .await;
    }
    ctx.metrics.phase(
        &id_name,
        Some(if tenant.spec.suspend {
            "Suspended"
        } else if ready {
            "Ready"
        } else {
            "NotReady"
        }),
    );
    vector_result?;
    let requeue = plan
        .next_rotation_in
        .map(|s| Duration::from_secs(s as u64).min(RESYNC))
        .unwrap_or(RESYNC);
    Ok(Action::requeue(requeue))
}

async fn cleanup(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = tenant.name_any();
    if let Ok(id) = tenant.tenant_id()
        && tenant.spec.deletion_policy == DeletionPolicy::Delete
    {
        let vectors = TenantVectors::new(
            ctx.vectors.clone(),
            id,
            tenant.spec.retrieval.isolation,
            ctx.dimension,
        );
        vectors.purge().await?;
        ctx.event(
            &tenant,
            EventType::Normal,
            "VectorDataDeleted",
            "deletionPolicy Delete: the tenant's vector data was deleted".to_string(),
        )
        .await;
    } else {
        ctx.event(
            &tenant,
            EventType::Normal,
            "VectorDataRetained",
            "deletionPolicy Retain: the tenant's vector data was kept".to_string(),
        )
        .await;
    }
    ctx.metrics.phase(&name, None);
    Ok(Action::await_change())
}

/// Builds the controller over `client` and runs it until `stop` resolves.
pub async fn run_controller(
    ctx: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let tenants: Api<Tenant> = Api::all(client.clone());
    let owned = || watcher::Config::default().labels(MANAGED_BY);
    let controller = Controller::new(tenants, watcher::Config::default());
    let store = controller.store();
    // Owned objects map to their Tenant by owner reference. Not `.owns()`: it keys a
    // namespaced child's owner in the child's namespace, which for our cluster-scoped Tenant is
    // a second key for the same object, and the runner would then reconcile (apply and
    // cleanup) one Tenant concurrently.
    controller
        .watches(Api::<Namespace>::all(client.clone()), owned(), |o| {
            tenant_owner(&o)
        })
        .watches(Api::<Secret>::all(client.clone()), owned(), |o| {
            tenant_owner(&o)
        })
        .watches(Api::<ConfigMap>::all(client.clone()), owned(), |o| {
            tenant_owner(&o)
        })
        .watches(Api::<Deployment>::all(client.clone()), owned(), |o| {
            tenant_owner(&o)
        })
        .watches(Api::<Service>::all(client.clone()), owned(), |o| {
            tenant_owner(&o)
        })
        .watches(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            owned(),
            |o| tenant_owner(&o),
        )
        .watches(
            Api::<PodDisruptionBudget>::all(client.clone()),
            owned(),
            |o| tenant_owner(&o),
        )
        .watches(Api::<NetworkPolicy>::all(client.clone()), owned(), |o| {
            tenant_owner(&o)
        })
        .watches(
            Api::<QuotaTier>::all(client.clone()),
            watcher::Config::default(),
            move |tier: QuotaTier| {
                let name = tier.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|t| t.spec.tier == name)
                    .map(|t| ObjectRef::from_obj(&*t))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// The Tenant owning an object (cluster-scoped: no namespace in the reference).
pub fn tenant_owner<K: Resource>(obj: &K) -> Option<ObjectRef<Tenant>> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "Tenant" && o.api_version == "tenantry.dev/v1alpha1")
        .map(|o| ObjectRef::new(&o.name))
}

/// The Lease API for leader election in `namespace`.
pub fn lease_api(client: Client, namespace: &str) -> Api<Lease> {
    Api::namespaced(client, namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_namespaced_objects_map_to_the_cluster_scoped_tenant() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "acme-signing-key", "namespace": "tenant-acme",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"},
                    {"apiVersion": "tenantry.dev/v1alpha1", "kind": "Tenant", "name": "acme", "uid": "2", "controller": true},
                ]},
        }))
        .expect("secret");
        let owner = tenant_owner(&secret).expect("owner");
        assert_eq!(owner, ObjectRef::<Tenant>::new("acme"));
        assert_eq!(
            owner.namespace, None,
            "one key per Tenant, whatever the child's namespace"
        );
        let orphan: Secret = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "x", "namespace": "y"}}),
        )
        .expect("secret");
        assert!(tenant_owner(&orphan).is_none());
    }
}
