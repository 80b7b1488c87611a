//! The operator's reconciler: each `Tenant` becomes its namespace, signing-key Secret,
//! verify-only keyring Secret, ResourceQuota and LimitRange, rendered config, chat API
//! (Deployment, Service, HPA, PDB, NetworkPolicy), vector collections and effective quota, and
//! its status and Events report what was done. It takes over nothing it did not create: an
//! existing namespace, Secret or ConfigMap not labelled and owned by this Tenant's UID stops
//! the reconcile with `Ready=False` (see [`apply::read_existing`]).
//!
//! A reconcile is a pipeline, one module per step: [`validate`] (pure; an invalid spec or a
//! missing tier is reported and waited on) → [`build`] (pure; every desired object as one
//! [`build::Resources`] value) → [`apply`] (server-side apply, credentials copy, vector
//! collections) → [`status`] (computed from what was applied, patched only when it changed).
//! Deletion runs behind the `tenantry.dev/cleanup` finalizer ([`cleanup`]).
pub mod apply;
pub mod build;
pub mod cache;
pub mod cleanup;
pub mod credentials;
#[cfg(test)]
pub mod fixtures;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod status;
pub mod tenant_credential;
#[cfg(test)]
mod tests;
pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, Namespace, ResourceQuota, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DynamicObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;

use crate::auth::keys::unix_now;
use crate::crd::{FINALIZER, QuotaTier, QuotaTierSpec, Tenant, builtin_tier, reason};
use crate::vector::VectorBackend;
use build::expose::Expose;
use build::{BuildConfig, BuildError, Names, scaling};
pub use metrics::{Phase, ReconcileMetrics};
use validate::{InvalidSpec, ValidTenant};

/// Label every object the operator creates carries (its watches select on it).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=tenantry";
/// Requeue after a successful reconcile: vector stores can drift.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Errors of one reconcile, each naming the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{step}: {source}")]
    Kube {
        /// The call, e.g. `apply Deployment`.
        step: &'static str,
        /// The API's error (a 409 is a conflict: retried at once).
        #[source]
        source: kube::Error,
    },
    /// Building the desired objects failed.
    #[error("build: {0}")]
    Build(#[from] BuildError),
    /// Ensuring or purging the vector collections failed.
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
    /// `--expose gateway`, but the API server serves no Gateway API HTTPRoute.
    #[error("{}", status::GATEWAY_API_MISSING)]
    GatewayApiMissing,
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
            Error::Build(_) => "BuildError",
            Error::Vector(_) => "VectorStoreError",
            Error::Finalizer(_) => "FinalizerError",
            Error::NoName => "InvalidObject",
            Error::Credentials(_) => "CredentialsMissing",
            Error::GatewayApiMissing => reason::GATEWAY_API_MISSING,
        }
    }
}

fn kube_err(step: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { step, source }
}

/// What a [`Context`] is made of besides its API client.
pub struct ContextParts {
    /// What to build for each tenant.
    pub build: BuildConfig,
    /// The vector store the tenants' collections live in.
    pub vectors: Arc<dyn VectorBackend>,
    /// Embedding dimension of the collections.
    pub dimension: usize,
    /// This replica's identity (the Events' reporting instance).
    pub identity: String,
    /// Where reconciles are counted.
    pub metrics: Arc<ReconcileMetrics>,
}

/// Shared state of the reconciler.
pub struct Context {
    /// The Kubernetes API client.
    pub client: Client,
    /// What to build for each tenant.
    pub build: BuildConfig,
    /// The vector store the tenants' collections live in.
    pub vectors: Arc<dyn VectorBackend>,
    /// Embedding dimension of the collections.
    pub dimension: usize,
    /// Publishes the Tenants' Events.
    pub recorder: Recorder,
    /// Where reconciles are counted.
    pub metrics: Arc<ReconcileMetrics>,
    /// Consecutive failures per tenant, for the error backoff (reset by a success).
    backoff: Mutex<HashMap<String, u32>>,
    /// What was applied and what the watches saw since, so unchanged objects are not
    /// applied again.
    pub applied: Arc<cache::ApplyCache>,
    /// The QuotaTiers the tenants use, read once per change.
    pub tiers: Arc<cache::TierCache>,
}

impl Context {
    /// A reconciler context over `client`.
    pub fn new(client: Client, parts: ContextParts) -> Self {
        let ContextParts {
            build,
            vectors,
            dimension,
            identity,
            metrics,
        } = parts;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "tenantry-operator".to_string(),
                instance: Some(identity),
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
            applied: Arc::default(),
            tiers: Arc::default(),
        }
    }

    /// Publishes an Event about `tenant` (best effort: a failure is only logged).
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

/// Reconciles one Tenant (entry point for the controller).
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let name = tenant.metadata.name.clone().ok_or(Error::NoName)?;
    let result = finalizer(&api, FINALIZER, tenant, |event| async {
        match event {
            Finalizer::Apply(t) => apply_tenant(t, ctx.clone()).await,
            Finalizer::Cleanup(t) => cleanup::cleanup(t, ctx.clone()).await,
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
            ctx.backoff.lock().remove(&name);
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
    let delay = {
        let mut backoff = ctx.backoff.lock();
        let n = backoff.entry(name).or_insert(0);
        let delay = Duration::from_secs(5u64.saturating_mul(1 << (*n).min(6))).min(RESYNC);
        *n += 1;
        delay
    };
    let note = error.to_string();
    let reason = error.metric_label();
    let ctx2 = ctx.clone();
    // Events are best effort and must not block the policy.
    tokio::spawn(async move {
        ctx2.event(&tenant, EventType::Warning, reason, note).await;
    });
    Action::requeue(delay)
}

/// The apply path of a reconcile: validate → build → apply → status.
async fn apply_tenant(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let valid = match validate(&ctx, &tenant).await? {
        Ok(valid) => valid,
        Err(problem) => return report_invalid(&ctx, &tenant, problem).await,
    };
    let names = Names::new(&valid.id, &ctx.build.namespace_prefix);
    let existing = match apply::read_existing(&ctx, &tenant, &names).await? {
        Ok(existing) => existing,
        Err(conflict) => return report_conflict(&ctx, &tenant, conflict).await,
    };
    let built = build::resources(&valid, &ctx.build, existing.signing_key, unix_now())?;
    let applied = apply::apply(&ctx, &valid, existing.namespace, built).await?;
    let new_status = status::applied(&tenant, &applied, &status::now_rfc3339());
    let ready = status::is_ready(Some(&new_status));
    let became_ready = ready && !status::is_ready(tenant.status.as_ref());
    let recorded_replicas = tenant.status.as_ref().and_then(|s| s.replicas.as_deref());
    let pin_started = !scaling::was_pinned(recorded_replicas)
        && scaling::was_pinned(new_status.replicas.as_deref());
    status::patch(&ctx, &tenant, new_status).await?;
    if let Some(why) = applied.scaling.pin_message().filter(|_| pin_started) {
        ctx.event(&tenant, EventType::Warning, reason::PINNED, why)
            .await;
    }
    if became_ready {
        let note = "tenant is ready".to_string();
        ctx.event(&tenant, EventType::Normal, reason::RECONCILED, note)
            .await;
    }
    let phase = match (tenant.spec.suspend, ready) {
        (true, _) => Phase::Suspended,
        (false, true) => Phase::Ready,
        (false, false) => Phase::NotReady,
    };
    ctx.metrics.phase(&tenant.name_any(), Some(phase));
    if let Some(e) = applied.stage.vector_error {
        return Err(e.into());
    }
    if applied.stage.gateway_api_missing {
        return Err(Error::GatewayApiMissing);
    }
    let requeue = applied
        .signing_key
        .plan
        .next_rotation_in
        .map(|s| Duration::from_secs(s as u64).min(RESYNC))
        .unwrap_or(RESYNC);
    Ok(Action::requeue(requeue))
}

/// The validate step: the spec on its own, then with the tier it names (looked up only for a
/// valid spec). The outer `Result` is the tier lookup's.
async fn validate<'a>(
    ctx: &Context,
    tenant: &'a Tenant,
) -> Result<Result<ValidTenant<'a>, InvalidSpec>, Error> {
    let id = match validate::spec(tenant) {
        Ok(id) => id,
        Err(problem) => return Ok(Err(problem)),
    };
    let tier = resolve_tier(ctx, &tenant.spec.tier).await?;
    Ok(validate::with_tier(tenant, id, tier))
}

/// The spec of the QuotaTier `name`: the object's, else a built-in tier's (`None`: neither).
/// The object is read once per change for all tenants of the tier ([`cache::TierCache`]).
async fn resolve_tier(ctx: &Context, name: &str) -> Result<Option<QuotaTierSpec>, Error> {
    let api: Api<QuotaTier> = Api::all(ctx.client.clone());
    let fetch = || async {
        let tier = api.get_opt(name).await.map_err(kube_err("get QuotaTier"))?;
        Ok::<_, Error>(tier.map(|t| t.spec))
    };
    match ctx.tiers.get(name, fetch).await? {
        Some(spec) => Ok(Some(spec)),
        None => Ok(builtin_tier(name)),
    }
}

/// Reports why `tenant` cannot be reconciled (a Warning Event when the status changes, and the
/// status) and waits for a change: of the Tenant, or of the QuotaTier whose absence this is
/// (the QuotaTier watch brings the tenant back when the tier appears).
async fn report_invalid(
    ctx: &Context,
    tenant: &Tenant,
    problem: InvalidSpec,
) -> Result<Action, Error> {
    let new_status = status::invalid(tenant, &problem, &status::now_rfc3339());
    if status::changed(tenant.status.as_ref(), &new_status) {
        ctx.event(
            tenant,
            EventType::Warning,
            problem.reason(),
            problem.to_string(),
        )
        .await;
    }
    status::patch(ctx, tenant, new_status).await?;
    ctx.metrics.phase(&tenant.name_any(), Some(Phase::Invalid));
    Ok(Action::await_change())
}

/// How soon a Tenant refused for an object in its way is looked at again (the object is not
/// the operator's, so no watch brings the Tenant back when it goes).
pub const CONFLICT_RETRY: Duration = Duration::from_secs(30);

/// Reports that `tenant` is not reconciled because an object it would take over is not its
/// own (a Warning Event when the status changes, and the status), and looks again later.
async fn report_conflict(
    ctx: &Context,
    tenant: &Tenant,
    conflict: apply::Conflict,
) -> Result<Action, Error> {
    let new_status = status::refused(tenant, &conflict, &status::now_rfc3339());
    if status::changed(tenant.status.as_ref(), &new_status) {
        let note = conflict.message.clone();
        ctx.event(tenant, EventType::Warning, conflict.reason, note)
            .await;
    }
    status::patch(ctx, tenant, new_status).await?;
    ctx.metrics.phase(&tenant.name_any(), Some(Phase::NotReady));
    Ok(Action::requeue(CONFLICT_RETRY))
}

/// Builds the controller over `client` and runs it until `stop` resolves.
pub async fn run(
    ctx: Arc<Context>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let tenants: Api<Tenant> = Api::all(client.clone());
    let owned = || watcher::Config::default().labels(MANAGED_BY);
    // The Tenants' own watch triggers on what the operator acts on, not on the status it
    // writes: every status patch would otherwise come back as one more reconcile.
    let (reader, writer) = reflector::store();
    let trigger = watcher(tenants, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(acted_on, Default::default());
    let controller = Controller::for_stream(trigger, reader);
    let store = controller.store();
    let tiers = ctx.tiers.clone();
    let controller = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY));
    let controller = watch_exposure(controller, &client, &ctx.build.expose);
    // Owned objects map to their Tenant by owner reference. Not `.owns()`: it keys a
    // namespaced child's owner in the child's namespace, which for our cluster-scoped Tenant is
    // a second key for the same object, and the runner would then reconcile (apply and
    // cleanup) one Tenant concurrently.
    controller
        .watches(
            Api::<Namespace>::all(client.clone()),
            owned(),
            observe(ctx.applied.clone()),
        )
        .watches(
            Api::<ConfigMap>::all(client.clone()),
            owned(),
            observe(ctx.applied.clone()),
        )
        .watches(
            Api::<Deployment>::all(client.clone()),
            owned(),
            observe(ctx.applied.clone()),
        )
        .watches(
            Api::<Service>::all(client.clone()),
            owned(),
            observe(ctx.applied.clone()),
        )
        .watches(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            owned(),
            observe(ctx.applied.clone()),
        )
        .watches(
            Api::<PodDisruptionBudget>::all(client.clone()),
            owned(),
            observe(ctx.applied.clone()),
        )
        .watches(
            Api::<NetworkPolicy>::all(client.clone()),
            owned(),
            observe(ctx.applied.clone()),
        )
        .watches(
            Api::<ResourceQuota>::all(client.clone()),
            owned(),
            observe(ctx.applied.clone()),
        )
        .watches(
            Api::<LimitRange>::all(client.clone()),
            owned(),
            observe(ctx.applied.clone()),
        )
        .watches(
            Api::<QuotaTier>::all(client.clone()),
            watcher::Config::default(),
            move |tier: QuotaTier| {
                let name = tier.name_any();
                // Before the tenants are triggered: their reconciles read the new spec.
                tiers.invalidate(&name);
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

/// Adds the watch of the kind exposing the tenants, so a changed or deleted HTTPRoute or
/// Ingress is repaired. Without the Gateway API the HTTPRoute watch retries with backoff.
fn watch_exposure(
    controller: Controller<Tenant>,
    client: &Client,
    expose: &Expose,
) -> Controller<Tenant> {
    let owned = watcher::Config::default().labels(MANAGED_BY);
    match expose {
        Expose::None => controller,
        Expose::Gateway(_) => {
            let ar = build::expose::http_route_resource();
            let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
            controller.watches_with(api, ar, owned, |o| tenant_owner(&o))
        }
        Expose::Ingress(_) => {
            let api = Api::<Ingress>::all(client.clone());
            controller.watches(api, owned, |o| tenant_owner(&o))
        }
    }
}

/// How many Tenants are reconciled at once. Unbounded, a burst of a thousand new Tenants
/// starts a thousand reconciles whose API calls all queue at the API server together, and
/// each holds its built objects meanwhile; a bound keeps the server busy without the pile-up.
pub const CONCURRENCY: u16 = 32;

/// A watch mapper of an owned kind: records what the watch saw (for [`cache::ApplyCache`]),
/// then names the owning Tenant.
fn observe<K: Resource<DynamicType = ()>>(
    cache: Arc<cache::ApplyCache>,
) -> impl Fn(K) -> Option<ObjectRef<Tenant>> + Send + Sync + 'static {
    // The echo of the operator's own apply changes nothing it did not just do.
    move |o| cache.observe(&o).then(|| tenant_owner(&o)).flatten()
}

/// What of a Tenant the operator acts on: its spec (the generation, which the API server also
/// bumps when it marks the Tenant deleted), annotations (key rotation), labels, finalizers and
/// deletion. A status-only change hashes the same and triggers nothing.
fn acted_on(t: &Tenant) -> Option<u64> {
    use std::hash::{Hash as _, Hasher as _};
    let m = t.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.generation.hash(&mut h);
    m.annotations.hash(&mut h);
    m.labels.hash(&mut h);
    m.finalizers.hash(&mut h);
    m.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// The Tenant owning an object (cluster-scoped: no namespace in the reference).
pub fn tenant_owner<K: Resource>(obj: &K) -> Option<ObjectRef<Tenant>> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == Tenant::kind(&()) && is_tenantry_group(&o.api_version))
        .map(|o| ObjectRef::new(&o.name))
}

/// Whether `api_version` (`group/version`) is of the Tenant's API group, whatever its version:
/// owner references written under an older version still name the Tenant.
fn is_tenantry_group(api_version: &str) -> bool {
    api_version
        .split_once('/')
        .is_some_and(|(group, _)| group == Tenant::group(&()))
}

/// The Lease API for leader election in `namespace`.
pub fn lease_api(client: Client, namespace: &str) -> Api<Lease> {
    Api::namespaced(client, namespace)
}
