//! The apply step of a reconcile: reads what the build needs from the cluster (the stored
//! keyring), then server-side applies each built object under one field manager, copies the
//! platform credentials into the tenant namespace, applies the tenant's HTTPRoute or Ingress
//! (removing one of the other kind it made) and ensures the vector collections. Returns the
//! applied form, which the status step reads.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::build::expose::{self, ExposeKind, ExposeObject, Exposure};
use super::build::{self, Names, Prepared, Resources, SigningKey, StoredKey};
use super::keys::{self, StoredKeyring};
use super::validate::ValidTenant;
use super::{Context, Error, credentials, kube_err};
use crate::auth::keys::Keyring;
use crate::crd::{FIELD_MANAGER, Tenant, reason};
use crate::vector::{Kind, TenantVectors, VectorError};

/// Marks [`Resources`] the API server holds: each object as the server returned it, plus what
/// was provisioned besides them.
#[derive(Debug)]
pub struct Applied {
    /// The tenant's copy of the platform credentials (`None`: the operator copies none).
    pub credentials: Option<Secret>,
    /// The tenant's vector collections (named whether or not ensuring them succeeded).
    pub collections: Vec<String>,
    /// Why the collections could not be ensured, if they could not; the status reports it
    /// and the reconcile then fails, so it is retried.
    pub vector_error: Option<VectorError>,
    /// The HTTPRoute could not be applied because the API server serves no Gateway API; the
    /// status reports it and the reconcile then fails, so it is retried with backoff.
    pub gateway_api_missing: bool,
}

/// An existing object the Tenant would take over but did not create: the reconcile stops
/// (`Ready=False` with this reason) instead of adopting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// `NamespaceConflict` or `SecretConflict` (or `ConfigMapConflict`).
    pub reason: &'static str,
    /// What is in the way, and what to do about it.
    pub message: String,
}

/// What the cluster holds of the tenant before a reconcile applies anything.
#[derive(Debug)]
pub struct Existing {
    /// Whether the tenant namespace exists (then it is this Tenant's).
    pub namespace: bool,
    /// What the signing-key Secret holds.
    pub signing_key: StoredKey,
}

/// Whether `meta` is of an object this operator made for `tenant`: labelled as the
/// operator's and controlled by the Tenant of this UID (a Tenant of the same name deleted
/// and created again is another Tenant).
pub fn owned_by(meta: &ObjectMeta, tenant: &Tenant) -> bool {
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"))
        .is_some_and(|v| v == "tenantry");
    let Some(uid) = tenant.meta().uid.as_deref() else {
        return false;
    };
    labelled
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true) && o.kind == "Tenant")
}

/// Reads what exists of the tenant, refusing what it does not own: the namespace, and in
/// it the Secrets and the ConfigMap the pods read (a planted keyring would become the tenant's
/// signing key). A missing namespace holds nothing, so nothing else is read.
pub async fn read_existing(
    ctx: &Context,
    tenant: &Tenant,
    names: &Names,
) -> Result<Result<Existing, Conflict>, Error> {
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    // What the operator applied and the watch shows unchanged since is known to be the
    // Tenant's: only other objects are read.
    let ns_known = ctx.applied.current::<Namespace>("", &names.namespace);
    let read = if ns_known {
        None
    } else {
        namespaces
            .get_opt(&names.namespace)
            .await
            .map_err(kube_err("get Namespace"))?
    };
    let Some(ns) = read.or_else(|| ns_known.then(Namespace::default)) else {
        return Ok(Ok(Existing {
            namespace: false,
            signing_key: StoredKey::Missing,
        }));
    };
    if !ns_known && !owned_by(&ns.metadata, tenant) {
        let message = if ns.metadata.deletion_timestamp.is_some() {
            format!(
                "namespace {} is being deleted and is not this Tenant's; waiting until it is gone",
                names.namespace
            )
        } else {
            format!(
                "namespace {} exists and was not created by the operator for this Tenant (uid {}); \
                 the operator does not take it over: delete or rename it, or rename the Tenant",
                names.namespace,
                tenant.meta().uid.as_deref().unwrap_or_default()
            )
        };
        return Ok(Err(Conflict {
            reason: reason::NAMESPACE_CONFLICT,
            message,
        }));
    }
    // The namespace is the Tenant's: the operator binds itself its Secret rights there.
    grant_access(ctx, tenant, names).await?;
    let secrets: Api<Secret> = in_ns(&ctx.client, &names.namespace);
    let mut signing = None;
    let mut secret_names = vec![&names.secret, &names.verify_keys];
    if !ctx.build.api_secret_env.is_empty() {
        secret_names.push(&names.credentials);
    }
    for name in secret_names {
        let Some(secret) = once_authorized(|| secrets.get_opt(name))
            .await
            .map_err(kube_err("get Secret"))?
        else {
            ctx.applied.absent::<Secret>(&names.namespace, name);
            continue;
        };
        // Secrets are read, not watched: this read stands for the watch's report.
        ctx.applied.observe(&secret);
        if !owned_by(&secret.metadata, tenant) {
            return Ok(Err(foreign(reason::SECRET_CONFLICT, "Secret", names, name)));
        }
        if *name == names.secret {
            signing = Some(secret);
        }
    }
    let maps: Api<ConfigMap> = in_ns(&ctx.client, &names.namespace);
    if !ctx
        .applied
        .current::<ConfigMap>(&names.namespace, &names.config)
        && let Some(map) = maps
            .get_opt(&names.config)
            .await
            .map_err(kube_err("get ConfigMap"))?
        && !owned_by(&map.metadata, tenant)
    {
        return Ok(Err(foreign(
            reason::CONFIG_MAP_CONFLICT,
            "ConfigMap",
            names,
            &names.config,
        )));
    }
    Ok(Ok(Existing {
        namespace: true,
        signing_key: signing.map_or(StoredKey::Missing, |s| stored_key(&s)),
    }))
}

fn foreign(reason: &'static str, kind: &str, names: &Names, name: &str) -> Conflict {
    Conflict {
        reason,
        message: format!(
            "{kind} {}/{name} exists and was not created by the operator for this Tenant; \
             the operator does not adopt it: delete it and the operator creates its own",
            names.namespace
        ),
    }
}

/// What a signing-key Secret (owned by the tenant) holds.
fn stored_key(secret: &Secret) -> StoredKey {
    let Some(raw) = secret.data.as_ref().and_then(|d| d.get(build::KEYRING_KEY)) else {
        return StoredKey::Missing;
    };
    let annotation = |key: &str| {
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key).cloned())
    };
    match serde_json::from_slice::<Keyring>(&raw.0) {
        Ok(ring) if ring.current_key().is_some() => StoredKey::Valid(StoredKeyring {
            ring,
            rotated_for: annotation(keys::ROTATED_FOR_ANNOTATION),
            revoked_for: annotation(keys::REVOKED_FOR_ANNOTATION),
        }),
        _ => StoredKey::Invalid,
    }
}

/// Applies every object of `resources`, in dependency order (namespace first).
pub async fn apply(
    ctx: &Context,
    valid: &ValidTenant<'_>,
    namespace_exists: bool,
    resources: Resources<Prepared>,
) -> Result<Resources<Applied>, Error> {
    // No `..`: an object added to `Resources` must be applied here or the build breaks.
    let Resources {
        names,
        namespace,
        signing_key,
        verify_keys,
        resource_quota,
        limit_range,
        config,
        deployment,
        service,
        autoscaler,
        disruption_budget,
        network_policy,
        exposure,
        effective_quota,
        scaling,
        stage: Prepared,
    } = resources;
    let client = &ctx.client;
    let ns = names.namespace.as_str();
    let namespaces = Api::all(client.clone());
    let namespace = if namespace_exists {
        ssa_changed(ctx, &namespaces, &namespace, "apply Namespace").await?
    } else {
        // Created, not applied: a namespace someone makes meanwhile is refused (409) and the
        // next reconcile reports it, rather than being taken over.
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        namespaces
            .create(&params, &namespace)
            .await
            .map_err(kube_err("create Namespace"))?
    };
    if !namespace_exists {
        // (An existing one was bound to when it was read.)
        grant_access(ctx, valid.tenant, &names).await?;
    }
    let resource_quota = ssa_changed(
        ctx,
        &in_ns(client, ns),
        &resource_quota,
        "apply ResourceQuota",
    )
    .await?;
    let limit_range =
        ssa_changed(ctx, &in_ns(client, ns), &limit_range, "apply LimitRange").await?;
    let signing_key = apply_signing_key(ctx, valid, ns, signing_key).await?;
    let secrets = in_ns(client, ns);
    let verify_keys = ssa_changed_authorized(ctx, &secrets, &verify_keys).await?;
    let credentials = copy_credentials(ctx, valid, &names).await?;
    let config = ssa_changed(ctx, &in_ns(client, ns), &config, "apply ConfigMap").await?;
    let deployment = credentials::stamp(deployment, credentials.as_ref());
    let deployment = ssa(&in_ns(client, ns), &deployment, "apply Deployment").await?;
    let service = ssa_changed(ctx, &in_ns(client, ns), &service, "apply Service").await?;
    let autoscaler = ssa_changed(
        ctx,
        &in_ns(client, ns),
        &autoscaler,
        "apply HorizontalPodAutoscaler",
    )
    .await?;
    let disruption_budget = ssa_changed(
        ctx,
        &in_ns(client, ns),
        &disruption_budget,
        "apply PodDisruptionBudget",
    )
    .await?;
    let network_policy = ssa_changed(
        ctx,
        &in_ns(client, ns),
        &network_policy,
        "apply NetworkPolicy",
    )
    .await?;
    let (exposure, gateway_api_missing) =
        apply_exposure(ctx, valid.tenant, &names, exposure).await?;
    let (collections, vector_error) = ensure_collections(ctx, valid).await;
    Ok(Resources {
        names,
        namespace,
        signing_key,
        verify_keys,
        resource_quota,
        limit_range,
        config,
        deployment,
        service,
        autoscaler,
        disruption_budget,
        network_policy,
        exposure,
        effective_quota,
        scaling,
        stage: Applied {
            credentials,
            collections,
            vector_error,
            gateway_api_missing,
        },
    })
}

fn in_ns<K>(client: &Client, namespace: &str) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    Api::namespaced(client.clone(), namespace)
}

/// Server-side apply of `obj` under the operator's field manager, taking over conflicting
/// fields; returns the object as the API server holds it.
async fn ssa<K>(api: &Api<K>, obj: &K, step: &'static str) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    ssa_raw(api, obj).await.map_err(kube_err(step))
}

/// [`ssa`], skipped when `obj` is what was last applied and the watch shows the object
/// untouched since ([`super::cache::ApplyCache`]); then the desired object stands for the
/// stored one (only the Deployment's and the HTTPRoute's stored status is read, and those are
/// always applied). A drifted or deleted object shows a new resourceVersion, so it is applied.
async fn ssa_changed<K>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    step: &'static str,
) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let digest = super::cache::digest(obj);
    if ctx.applied.unchanged(obj, &digest) {
        return Ok(obj.clone());
    }
    let stored = ssa(api, obj, step).await?;
    ctx.applied.applied(&stored, digest);
    Ok(stored)
}

/// [`ssa_changed`] for a Secret, retried while the RoleBinding that allows it is not yet seen
/// by the authorizer ([`once_authorized`]). Secrets are not watched: [`read_existing`]'s read
/// of them is what shows them untouched.
async fn ssa_changed_authorized(
    ctx: &Context,
    api: &Api<Secret>,
    obj: &Secret,
) -> Result<Secret, Error> {
    let digest = super::cache::digest(obj);
    if ctx.applied.unchanged(obj, &digest) {
        return Ok(obj.clone());
    }
    let stored = once_authorized(|| ssa_raw(api, obj))
        .await
        .map_err(kube_err("apply Secret"))?;
    ctx.applied.applied(&stored, digest);
    Ok(stored)
}

async fn ssa_raw<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
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
}

/// Binds the operator's tenant role to its ServiceAccount in the tenant namespace (its only
/// Secret rights there, see [`build::access`]).
async fn grant_access(ctx: &Context, tenant: &Tenant, names: &Names) -> Result<(), Error> {
    let binding = build::access::role_binding(
        tenant,
        names,
        &ctx.build.access,
        &ctx.build.operator_namespace,
    );
    ssa(
        &in_ns(&ctx.client, &names.namespace),
        &binding,
        "apply RoleBinding",
    )
    .await?;
    Ok(())
}

/// Runs `op` again while the API server answers 403: right after [`grant_access`] created the
/// RoleBinding, the authorizer may not have seen it yet (it catches up within moments).
async fn once_authorized<T, F, Fut>(mut op: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut tries = 0;
    loop {
        match op().await {
            Err(kube::Error::Api(s)) if s.code == 403 && tries < 30 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Removes the operator's object of each stale exposure kind, then applies the tenant's
/// HTTPRoute or Ingress. A 404 on the HTTPRoute means the Gateway API is not served: reported
/// (`true`) with nothing exposed, rather than failing the other steps.
async fn apply_exposure(
    ctx: &Context,
    tenant: &Tenant,
    names: &Names,
    exposure: Exposure,
) -> Result<(Exposure, bool), Error> {
    let Exposure { exposed, stale } = exposure;
    let (client, ns) = (&ctx.client, names.namespace.as_str());
    for kind in &stale {
        match kind {
            ExposeKind::HttpRoute => {
                let steps = ("get HTTPRoute", "delete HTTPRoute");
                remove_owned(&routes(client, ns), tenant, &names.api, steps).await?;
            }
            ExposeKind::Ingress => {
                let steps = ("get Ingress", "delete Ingress");
                remove_owned(&in_ns::<Ingress>(client, ns), tenant, &names.api, steps).await?;
            }
        }
    }
    let applied = match exposed {
        None => None,
        Some((ExposeObject::Ingress(i), url)) => {
            let i = ssa(&in_ns(client, ns), &*i, "apply Ingress").await?;
            Some((ExposeObject::Ingress(Box::new(i)), url))
        }
        Some((ExposeObject::HttpRoute(r), url)) => {
            match ssa(&routes(client, ns), &*r, "apply HTTPRoute").await {
                Ok(r) => Some((ExposeObject::HttpRoute(Box::new(r)), url)),
                Err(Error::Kube { source, .. }) if is_404(&source) => {
                    return Ok((
                        Exposure {
                            exposed: None,
                            stale,
                        },
                        true,
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    };
    Ok((
        Exposure {
            exposed: applied,
            stale,
        },
        false,
    ))
}

/// The HTTPRoutes of `namespace`.
fn routes(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &expose::http_route_resource())
}

/// Deletes `name` if it exists and `tenant` owns it (an object someone else made under that
/// name is left alone); a missing object, or a kind the API server does not serve, is fine.
async fn remove_owned<K>(
    api: &Api<K>,
    tenant: &Tenant,
    name: &str,
    (get, delete): (&'static str, &'static str),
) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let obj = match api.get(name).await {
        Ok(obj) => obj,
        Err(e) if is_404(&e) => return Ok(()),
        Err(e) => return Err(kube_err(get)(e)),
    };
    let owner = tenant.meta().uid.as_deref();
    let owned = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == owner);
    if !owned {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.meta().uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {
            tracing::info!(namespace = ?obj.meta().namespace, name, "exposure removed");
            Ok(())
        }
        Err(e) if is_404(&e) => Ok(()),
        Err(e) => Err(kube_err(delete)(e)),
    }
}

/// A 404: no such object, or no such resource type (for a kind whose CRD is not installed the
/// API server answers a plain-text "404 page not found", not a `NotFound` Status).
fn is_404(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Applies the signing-key Secret, then reports what happened to the keyring as Events.
async fn apply_signing_key(
    ctx: &Context,
    valid: &ValidTenant<'_>,
    namespace: &str,
    key: SigningKey,
) -> Result<SigningKey, Error> {
    let api = in_ns(&ctx.client, namespace);
    let secret = ssa_changed_authorized(ctx, &api, &key.secret).await?;
    let tenant = valid.tenant;
    if key.replaced_invalid {
        let note = "the signing-key Secret held no valid keyring; a new key was generated";
        ctx.event(
            tenant,
            EventType::Warning,
            "SigningKeyInvalid",
            note.to_string(),
        )
        .await;
    }
    let plan = &key.plan;
    if let Some(change) = plan.change.filter(|c| *c != keys::Change::Pruned) {
        let note = format!(
            "signing key {} is now current ({change:?})",
            plan.ring.current
        );
        tracing::info!(tenant = %valid.id, kid = %plan.ring.current, ?change, "signing key updated");
        ctx.event(tenant, EventType::Normal, "SigningKeyUpdated", note)
            .await;
    }
    Ok(SigningKey { secret, ..key })
}

/// Copies the platform credentials the API pods read into the tenant namespace (a
/// secretKeyRef only reaches Secrets in the pod's own namespace), with the tenant's own store
/// credentials in place of the shared ones where the operator provisions them.
async fn copy_credentials(
    ctx: &Context,
    valid: &ValidTenant<'_>,
    names: &Names,
) -> Result<Option<Secret>, Error> {
    let cfg = &ctx.build;
    if cfg.api_secret_env.is_empty() && !cfg.store_credentials.enabled() {
        return Ok(None);
    }
    let source: Api<Secret> = Api::namespaced(ctx.client.clone(), &cfg.operator_namespace);
    let mut data = BTreeMap::new();
    for (env, secret, key) in &cfg.api_secret_env {
        let s = source
            .get_opt(secret)
            .await
            .map_err(kube_err("get credentials Secret"))?;
        let value = s.and_then(|s| s.data?.get(key).cloned()).ok_or_else(|| {
            Error::Credentials(format!(
                "Secret {}/{secret} has no key {key:?} (for {env})",
                cfg.operator_namespace
            ))
        })?;
        data.insert(env.clone(), value);
    }
    let annotations = credentials::provision(ctx, valid, names, &mut data).await?;
    let mut copy = build::credentials_secret(valid.tenant, names, data);
    copy.metadata.annotations = Some(annotations).filter(|a| !a.is_empty());
    let api = in_ns(&ctx.client, &names.namespace);
    let copy = once_authorized(|| ssa_raw(&api, &copy))
        .await
        .map_err(kube_err("apply credentials Secret"))?;
    Ok(Some(copy))
}

/// Ensures the tenant's collections; returns their names and the failure, if any.
async fn ensure_collections(
    ctx: &Context,
    valid: &ValidTenant<'_>,
) -> (Vec<String>, Option<VectorError>) {
    let vectors = TenantVectors::new(
        ctx.vectors.clone(),
        valid.id.clone(),
        valid.tenant.spec.retrieval.isolation,
        ctx.dimension,
    )
    .with_owner(super::validate::vector_owner(valid.tenant));
    let error = vectors.ensure().await.err();
    let names = vec![
        vectors.collection(Kind::Docs),
        vectors.collection(Kind::Cache),
    ];
    (names, error)
}
