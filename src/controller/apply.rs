//! The apply step of a reconcile: reads what the build needs from the cluster (the stored
//! keyring), then server-side applies each built object under one field manager, copies the
//! platform credentials into the tenant namespace and ensures the vector collections. Returns
//! the applied form, which the status step reads.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::build::{self, Names, Prepared, Resources, SigningKey, StoredKey};
use super::keys::{self, StoredKeyring};
use super::validate::ValidTenant;
use super::{Context, Error, kube_err};
use crate::auth::keys::Keyring;
use crate::crd::{FIELD_MANAGER, Tenant};
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
}

/// What the tenant's signing-key Secret holds now.
pub async fn read_signing_key(ctx: &Context, names: &Names) -> Result<StoredKey, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let Some(secret) = secrets
        .get_opt(&names.secret)
        .await
        .map_err(kube_err("get Secret"))?
    else {
        return Ok(StoredKey::Missing);
    };
    let Some(raw) = secret.data.as_ref().and_then(|d| d.get(build::KEYRING_KEY)) else {
        return Ok(StoredKey::Missing);
    };
    Ok(match serde_json::from_slice::<Keyring>(&raw.0) {
        Ok(ring) if ring.current_key().is_some() => StoredKey::Valid(StoredKeyring {
            ring,
            rotated_for: secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(keys::ROTATED_FOR_ANNOTATION).cloned()),
        }),
        _ => StoredKey::Invalid,
    })
}

/// Applies every object of `resources`, in dependency order (namespace first).
pub async fn apply(
    ctx: &Context,
    valid: &ValidTenant<'_>,
    resources: Resources<Prepared>,
) -> Result<Resources<Applied>, Error> {
    // No `..`: an object added to `Resources` must be applied here or the build breaks.
    let Resources {
        names,
        namespace,
        signing_key,
        config,
        deployment,
        service,
        autoscaler,
        disruption_budget,
        network_policy,
        effective_quota,
        scaling,
        stage: Prepared,
    } = resources;
    let client = &ctx.client;
    let ns = names.namespace.as_str();
    let namespace = ssa(&Api::all(client.clone()), &namespace, "apply Namespace").await?;
    let signing_key = apply_signing_key(ctx, valid, ns, signing_key).await?;
    let credentials = copy_credentials(ctx, valid.tenant, &names).await?;
    let config = ssa(&in_ns(client, ns), &config, "apply ConfigMap").await?;
    let deployment = ssa(&in_ns(client, ns), &deployment, "apply Deployment").await?;
    let service = ssa(&in_ns(client, ns), &service, "apply Service").await?;
    let autoscaler = ssa(
        &in_ns(client, ns),
        &autoscaler,
        "apply HorizontalPodAutoscaler",
    )
    .await?;
    let disruption_budget = ssa(
        &in_ns(client, ns),
        &disruption_budget,
        "apply PodDisruptionBudget",
    )
    .await?;
    let network_policy = ssa(&in_ns(client, ns), &network_policy, "apply NetworkPolicy").await?;
    let (collections, vector_error) = ensure_collections(ctx, valid).await;
    Ok(Resources {
        names,
        namespace,
        signing_key,
        config,
        deployment,
        service,
        autoscaler,
        disruption_budget,
        network_policy,
        effective_quota,
        scaling,
        stage: Applied {
            credentials,
            collections,
            vector_error,
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
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(kube_err(step))
}

/// Applies the signing-key Secret, then reports what happened to the keyring as Events.
async fn apply_signing_key(
    ctx: &Context,
    valid: &ValidTenant<'_>,
    namespace: &str,
    key: SigningKey,
) -> Result<SigningKey, Error> {
    let secret = ssa(&in_ns(&ctx.client, namespace), &key.secret, "apply Secret").await?;
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
/// secretKeyRef only reaches Secrets in the pod's own namespace).
async fn copy_credentials(
    ctx: &Context,
    tenant: &Tenant,
    names: &Names,
) -> Result<Option<Secret>, Error> {
    let cfg = &ctx.build;
    if cfg.api_secret_env.is_empty() {
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
    let copy = build::credentials_secret(tenant, names, data);
    let api = in_ns(&ctx.client, &names.namespace);
    Ok(Some(ssa(&api, &copy, "apply credentials Secret").await?))
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
    );
    let error = vectors.ensure().await.err();
    let names = vec![
        vectors.collection(Kind::Docs),
        vectors.collection(Kind::Cache),
    ];
    (names, error)
}
