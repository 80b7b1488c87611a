//! The build step of a reconcile (pure, no I/O): a validated Tenant becomes its desired
//! objects as one [`Resources<Prepared>`] value: namespace, signing-key Secret, the rendered
//! tenant manifest and serve configuration ([`serve_config`]), and the chat API's Deployment
//! (see [`deployment`], with the platform's [`pod`] defaults), Service, HPA (bounded by
//! [`scaling`]), PDB and NetworkPolicy, and what exposes it outside the cluster (see
//! [`expose`]). Every object is labelled and owned by the Tenant.
pub mod access;
pub mod deployment;
pub mod expose;
pub mod limits;
pub mod network;
pub mod pod;
pub mod scaling;
pub mod serve_config;

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, ResourceQuota, Secret, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::keys::{self, KeyInputs, KeyPlan, StoredKeyring};
use super::validate::ValidTenant;
use crate::auth::keys::Keyring;
use crate::config::ServeConfig;
use crate::crd::{
    QuotaTierSpec, REVOKE_ANNOTATION, ROTATE_ANNOTATION, Replicas, TENANT_LABEL, Tenant,
};
use crate::domain::{EffectiveQuota, TenantId};
pub use deployment::deployment;
use expose::{Expose, Exposure};
use network::NetworkConfig;
pub use network::network_policy;
use pod::PodDefaults;
use scaling::Scaling;

/// Why the desired objects could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The keyring could not be serialised into the signing-key Secret.
    #[error("cannot serialise the keyring: {0}")]
    Keyring(#[source] serde_json::Error),
    /// The tenant manifest for the API pods could not be rendered.
    #[error("cannot render the tenant manifest: {0}")]
    Manifest(#[source] serde_saphyr::SerializeError),
    /// The serve configuration for the API pods could not be rendered.
    #[error("cannot render the serve configuration: {0}")]
    ServeConfig(#[source] serde_saphyr::SerializeError),
}

/// Marks [`Resources`] that are built but not yet applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared;

/// Every object a Tenant becomes, plus what its status reports about them. `S` is the stage:
/// [`Prepared`] from [`resources`], `Applied` (see the apply step) once the API server holds
/// them, so the status can only be computed from what was applied.
#[derive(Debug, Clone)]
pub struct Resources<S> {
    /// Names of the tenant's objects.
    pub names: Names,
    /// The tenant namespace (cluster-scoped).
    pub namespace: Namespace,
    /// The signing-key Secret and the keyring decision it stores.
    pub signing_key: SigningKey,
    /// The verify-only keyring the API pods mount (no private keys).
    pub verify_keys: Secret,
    /// The namespace's ResourceQuota (from the replica bounds and the API's resources).
    pub resource_quota: ResourceQuota,
    /// The namespace's LimitRange (the API container's resources as defaults and maxima).
    pub limit_range: LimitRange,
    /// The ConfigMap with the tenant manifest and the serve configuration the API pods load.
    pub config: ConfigMap,
    /// The chat API; once applied, as the API server returned it (with its status).
    pub deployment: Deployment,
    /// The chat API's Service.
    pub service: Service,
    /// The chat API's HorizontalPodAutoscaler.
    pub autoscaler: HorizontalPodAutoscaler,
    /// The chat API's PodDisruptionBudget.
    pub disruption_budget: PodDisruptionBudget,
    /// The chat API's NetworkPolicy.
    pub network_policy: NetworkPolicy,
    /// The HTTPRoute or Ingress exposing the chat API, and the kinds to remove.
    pub exposure: Exposure,
    /// The limits in force (tier plus overrides), reported in the status.
    pub effective_quota: EffectiveQuota,
    /// The replica bounds, and why they are pinned to one if they are.
    pub scaling: Scaling,
    /// What the stage adds.
    pub stage: S,
}

/// The signing-key Secret with the keyring decision behind it.
#[derive(Debug, Clone)]
pub struct SigningKey {
    /// The Secret to apply.
    pub secret: Secret,
    /// The keyring it holds and why it changed.
    pub plan: KeyPlan,
    /// Whether the stored Secret held no valid keyring (so a new key replaced it).
    pub replaced_invalid: bool,
}

/// What the signing-key Secret held when the reconcile read it.
#[derive(Debug, Clone)]
pub enum StoredKey {
    /// No Secret, or no keyring in it.
    Missing,
    /// A keyring that does not parse or has no current key.
    Invalid,
    /// A usable keyring.
    Valid(StoredKeyring),
}

/// Builds every desired object of `valid`; `stored` is what its signing-key Secret holds,
/// `now` the Unix time the keyring decision is made at.
pub fn resources(
    valid: &ValidTenant<'_>,
    cfg: &BuildConfig,
    stored: StoredKey,
    now: i64,
) -> Result<Resources<Prepared>, BuildError> {
    let tenant = valid.tenant;
    let names = Names::new(&valid.id, &cfg.namespace_prefix);
    let (stored, replaced_invalid) = match stored {
        StoredKey::Missing => (None, false),
        StoredKey::Invalid => (None, true),
        StoredKey::Valid(k) => (Some(k), false),
    };
    let requested = tenant.annotations().get(ROTATE_ANNOTATION).cloned();
    let revoke = tenant
        .annotations()
        .get(REVOKE_ANNOTATION)
        .filter(|v| !v.is_empty())
        .cloned();
    let plan = keys::plan(KeyInputs {
        stored,
        algorithm: tenant.spec.auth.algorithm,
        rotate_every: valid.rotate_every,
        requested: requested.as_deref(),
        revoke: revoke.as_deref(),
        now,
    });
    let manifest = tenant_manifest(tenant, &tenant.spec.tier, &valid.tier)?;
    let effective_quota = effective_quota(tenant, &valid.tier, &cfg.serve);
    let serve = serve_config::for_tenant(&cfg.serve, &effective_quota);
    let serve = serve_config::render(&serve, valid.id.as_str())?;
    let scaling = Scaling::decide(replicas(tenant, &valid.tier), scaling::unshared(cfg));
    let pod = deployment::PodInputs {
        config_hash: serve_config::hash(&serve),
        replicas: scaling.deployment_replicas(tenant.spec.suspend),
    };
    let container = deployment::container_resources(tenant, cfg);
    Ok(Resources {
        namespace: namespace(tenant, &names),
        verify_keys: verify_keys_secret(tenant, &names, &plan.ring)?,
        signing_key: SigningKey {
            secret: secret(tenant, &names, &plan)?,
            plan,
            replaced_invalid,
        },
        resource_quota: limits::resource_quota(tenant, &names, scaling.bounds(), &container),
        limit_range: limits::limit_range(tenant, &names, &container),
        config: config_map(tenant, &names, manifest, serve),
        deployment: deployment(tenant, &names, cfg, &pod),
        service: service(tenant, &names),
        autoscaler: hpa(tenant, &names, scaling.bounds()),
        disruption_budget: pdb(tenant, &names),
        network_policy: network_policy(tenant, &names, &cfg.network),
        exposure: expose::exposure(tenant, &names, &cfg.expose),
        effective_quota,
        scaling,
        names,
        stage: Prepared,
    })
}

/// Settings of the operator that shape what it builds.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildConfig {
    /// Prefix of tenant namespaces (`tenant-` gives `tenant-acme`).
    pub namespace_prefix: String,
    /// Image of the chat API (this same binary).
    pub image: String,
    /// Pull policy of that image.
    pub image_pull_policy: String,
    /// Extra environment for the chat API containers (e.g. `OPENAI_BASE_URL`); a `RUST_LOG`
    /// here replaces the default `info`.
    pub api_env: Vec<(String, String)>,
    /// Secret environment for the chat API containers: `(ENV, Secret, key)` in the operator's
    /// namespace, copied into each tenant's `<tenant>-api-credentials` Secret.
    pub api_secret_env: Vec<(String, String, String)>,
    /// The operator's own namespace (where `api_secret_env` Secrets live).
    pub operator_namespace: String,
    /// Qdrant server of the chat API pods (`TENANTRY_QDRANT_URL`); `None`: embedded store.
    pub qdrant_url: Option<String>,
    /// `(Secret name, key)` of the Qdrant API key, read by the pods through
    /// `valueFrom.secretKeyRef` into `TENANTRY_QDRANT_API_KEY` (the Secret must exist in the
    /// tenant namespace).
    pub qdrant_api_key_secret: Option<(String, String)>,
    /// The API pods' serve configuration (`--api-config`, else the defaults), before the
    /// tenant's overrides.
    pub serve: ServeConfig,
    /// Platform defaults of the API pods (`--api-pod-defaults`).
    pub pod_defaults: PodDefaults,
    /// How the chat APIs are exposed outside the cluster (`--expose`).
    pub expose: Expose,
    /// The operator's own access to tenant namespaces (`--tenant-role`, `--service-account`).
    pub access: access::Access,
    /// Who may reach the API pods and where they may connect to (`--api-ingress-from`,
    /// `--metrics-from`, `--api-egress`).
    pub network: NetworkConfig,
    /// `sizeLimit` of the API pods' data folder (`--api-data-size-limit`).
    pub data_size_limit: String,
    /// Which stores give each tenant its own credentials (`--redis-acl-users`,
    /// `--qdrant-tenant-tokens`).
    pub store_credentials: crate::controller::credentials::StoreCredentials,
}

/// Port the chat API listens on inside the pod.
pub const API_PORT: i32 = 8000;
/// Port of the chat API's metrics endpoint.
pub const METRICS_PORT: i32 = 9090;
/// Key of the keyring in the signing-key Secret.
pub const KEYRING_KEY: &str = "keyring.json";
/// Key of the rendered Tenant manifest in the config ConfigMap.
pub const TENANT_MANIFEST_KEY: &str = "tenant.yaml";
/// Where the chat API reads its tenant manifest.
pub const TENANTS_MOUNT: &str = "/etc/tenantry/tenants";
/// Where the chat API reads its keyring.
pub const KEYS_MOUNT: &str = "/etc/tenantry/keys";

/// Names of a tenant's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Tenant id.
    pub tenant: TenantId,
    /// Namespace.
    pub namespace: String,
    /// Signing-key Secret (the whole keyring; never mounted by the API pods).
    pub secret: String,
    /// Verify-only keyring Secret the API pods mount.
    pub verify_keys: String,
    /// Rendered-config ConfigMap.
    pub config: String,
    /// Deployment, Service, HPA, PDB and NetworkPolicy.
    pub api: String,
    /// Secret with the API pods' copied credentials.
    pub credentials: String,
    /// ConfigMap with the revoked token ids the API pods refuse (written by the
    /// TenantCredential controller; mounted next to the keyring).
    pub revoked: String,
}

impl Names {
    /// Names for `tenant` with a namespace prefix.
    pub fn new(tenant: &TenantId, prefix: &str) -> Self {
        Self {
            tenant: tenant.clone(),
            namespace: format!("{prefix}{tenant}"),
            secret: format!("{tenant}-signing-key"),
            verify_keys: format!("{tenant}-verify-keys"),
            config: format!("{tenant}-api-config"),
            api: format!("{tenant}-api"),
            credentials: format!("{tenant}-api-credentials"),
            revoked: format!("{tenant}-revoked-tokens"),
        }
    }

    /// In-cluster URL of the chat API.
    pub fn endpoint(&self) -> String {
        format!("http://{}.{}.svc:80", self.api, self.namespace)
    }
}

/// Labels on every object of a tenant.
pub fn labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "tenantry".to_string(),
        ),
        (TENANT_LABEL.to_string(), names.tenant.to_string()),
    ])
}

/// Labels selecting the tenant's chat API pods.
pub fn api_selector(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "tenantry-api".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), names.api.clone()),
    ])
}

fn api_labels(names: &Names) -> BTreeMap<String, String> {
    let mut l = labels(names);
    l.extend(api_selector(names));
    l
}

/// Where an object lives and which labels it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Cluster-scoped (the namespace itself).
    Cluster,
    /// In the tenant namespace.
    Tenant,
    /// In the tenant namespace, part of the chat API (also carries the pod selector labels).
    Api,
}

fn meta(tenant: &Tenant, names: &Names, name: &str, scope: Scope) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: (scope != Scope::Cluster).then(|| names.namespace.clone()),
        labels: Some(if scope == Scope::Api {
            api_labels(names)
        } else {
            labels(names)
        }),
        owner_references: tenant.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The tenant namespace.
pub fn namespace(tenant: &Tenant, names: &Names) -> Namespace {
    Namespace {
        metadata: meta(tenant, names, &names.namespace, Scope::Cluster),
        ..Default::default()
    }
}

/// The signing-key Secret: the whole keyring with its private keys (read by the operator and
/// whoever mints tokens, never mounted by the API pods) and, for convenience, the current
/// `kid` and public key.
pub fn secret(tenant: &Tenant, names: &Names, plan: &KeyPlan) -> Result<Secret, BuildError> {
    let ring = &plan.ring;
    let mut data = BTreeMap::from([
        (
            KEYRING_KEY.to_string(),
            ByteString(serde_json::to_vec_pretty(ring).map_err(BuildError::Keyring)?),
        ),
        (
            "kid".to_string(),
            ByteString(ring.current.clone().into_bytes()),
        ),
    ]);
    if let Some(public) = ring.current_key().and_then(|k| k.public_key.clone()) {
        data.insert("public.pem".to_string(), ByteString(public.into_bytes()));
    }
    let mut metadata = meta(tenant, names, &names.secret, Scope::Tenant);
    let annotations: BTreeMap<String, String> = [
        (keys::ROTATED_FOR_ANNOTATION, &plan.rotated_for),
        (keys::REVOKED_FOR_ANNOTATION, &plan.revoked_for),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), v.clone()?)))
    .collect();
    if !annotations.is_empty() {
        metadata.annotations = Some(annotations);
    }
    Ok(Secret {
        metadata,
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Default::default()
    })
}

/// The Secret the API pods mount: the verify-only keyring (EdDSA: public keys only; HS256:
/// the shared secrets, which verifying needs), current and still-valid previous keys.
pub fn verify_keys_secret(
    tenant: &Tenant,
    names: &Names,
    ring: &Keyring,
) -> Result<Secret, BuildError> {
    let public = serde_json::to_vec_pretty(&ring.public_only()).map_err(BuildError::Keyring)?;
    Ok(Secret {
        metadata: meta(tenant, names, &names.verify_keys, Scope::Tenant),
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            KEYRING_KEY.to_string(),
            ByteString(public),
        )])),
        ..Default::default()
    })
}

/// Key of the revocation list in the tenant's revoked-tokens ConfigMap.
pub const REVOCATIONS_KEY: &str = "revoked.json";

/// The ConfigMap with the tenant's revoked token ids (not secret: ids only), mounted by the API
/// pods as `<tenant>.revoked.json` next to the keyring.
pub fn revocations_config_map(
    tenant: &Tenant,
    names: &Names,
    list: &crate::auth::keys::Revocations,
) -> Result<ConfigMap, BuildError> {
    let json = serde_json::to_string_pretty(list).map_err(BuildError::Keyring)?;
    Ok(ConfigMap {
        metadata: meta(tenant, names, &names.revoked, Scope::Tenant),
        data: Some(BTreeMap::from([(REVOCATIONS_KEY.to_string(), json)])),
        ..Default::default()
    })
}

/// The tenant's copy of the platform credentials its API pods need (keys named by the
/// environment variable they fill).
pub fn credentials_secret(
    tenant: &Tenant,
    names: &Names,
    data: BTreeMap<String, ByteString>,
) -> Secret {
    Secret {
        metadata: meta(tenant, names, &names.credentials, Scope::Tenant),
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// The tenant manifest the API pods load: the Tenant's spec and its tier, so the pods
/// resolve the same effective quota as the operator without any API access, and the
/// Tenant's UID and data-adoption annotation, which bind its stored data to this Tenant.
pub fn tenant_manifest(
    tenant: &Tenant,
    tier_name: &str,
    tier: &QuotaTierSpec,
) -> Result<String, BuildError> {
    let mut metadata = serde_json::json!({"name": tenant.metadata.name});
    if let Some(uid) = &tenant.metadata.uid {
        metadata["uid"] = serde_json::json!(uid);
    }
    let owner = super::validate::data_owner(tenant);
    if let Some(adopt) = owner.filter(|o| Some(o) != tenant.metadata.uid.as_ref()) {
        metadata["annotations"] = serde_json::json!({ crate::crd::ADOPT_DATA_ANNOTATION: adopt });
    }
    use kube::Resource as _;
    let doc = serde_json::json!({
        "apiVersion": Tenant::api_version(&()),
        "kind": Tenant::kind(&()),
        "metadata": metadata,
        "spec": tenant.spec,
    });
    let tier_doc = serde_json::json!({
        "apiVersion": crate::crd::QuotaTier::api_version(&()),
        "kind": crate::crd::QuotaTier::kind(&()),
        "metadata": {"name": tier_name},
        "spec": tier,
    });
    let yaml = |v: &serde_json::Value| serde_saphyr::to_string(v).map_err(BuildError::Manifest);
    Ok(format!(
        "# Rendered by the tenantry operator from Tenant/{name}; do not edit.\n{}---\n{}",
        yaml(&doc)?,
        yaml(&tier_doc)?,
        name = tenant.metadata.name.as_deref().unwrap_or_default(),
    ))
}

/// The ConfigMap holding the rendered tenant manifest and serve configuration.
pub fn config_map(tenant: &Tenant, names: &Names, manifest: String, serve: String) -> ConfigMap {
    ConfigMap {
        metadata: meta(tenant, names, &names.config, Scope::Tenant),
        data: Some(BTreeMap::from([
            (TENANT_MANIFEST_KEY.to_string(), manifest),
            (serve_config::SERVE_CONFIG_KEY.to_string(), serve),
        ])),
        ..Default::default()
    }
}

/// Replica bounds: the tenant's, else the tier's, else 1..3.
pub fn replicas(tenant: &Tenant, tier: &QuotaTierSpec) -> Replicas {
    tenant
        .spec
        .api
        .replicas
        .or(tier.replicas)
        .unwrap_or(Replicas { min: 1, max: 3 })
}

/// The chat API Service (port 80 → 8000, and metrics).
pub fn service(tenant: &Tenant, names: &Names) -> Service {
    Service {
        metadata: meta(tenant, names, &names.api, Scope::Api),
        spec: Some(ServiceSpec {
            selector: Some(api_selector(names)),
            ports: Some(vec![
                ServicePort {
                    name: Some("http".to_string()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".to_string())),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("metrics".to_string()),
                    port: METRICS_PORT,
                    target_port: Some(IntOrString::String("metrics".to_string())),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The HorizontalPodAutoscaler (autoscaling/v2, CPU utilisation).
pub fn hpa(tenant: &Tenant, names: &Names, bounds: Replicas) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        metadata: meta(tenant, names, &names.api, Scope::Api),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_string()),
                kind: "Deployment".to_string(),
                name: names.api.clone(),
            },
            min_replicas: Some(bounds.min),
            max_replicas: bounds.max,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_string(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_string(),
                    target: MetricTarget {
                        type_: "Utilization".to_string(),
                        average_utilization: Some(
                            tenant.spec.api.target_cpu_utilization_percentage,
                        ),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The PodDisruptionBudget: at most one API pod down at a time for voluntary disruptions.
pub fn pdb(tenant: &Tenant, names: &Names) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(tenant, names, &names.api, Scope::Api),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(api_selector(names)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The effective quota of a tenant under a tier; its `maxTokens`, when neither sets one, is
/// the serve configuration's (so the status shows the limit in force).
pub fn effective_quota(
    tenant: &Tenant,
    tier: &QuotaTierSpec,
    serve: &ServeConfig,
) -> EffectiveQuota {
    let mut quota = EffectiveQuota::resolve(tier, tenant.spec.quota.as_ref());
    quota.max_tokens = Some(i64::from(quota.max_tokens_or(serve.llm.max_tokens)));
    quota
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::TenantSpec;

    #[test]
    fn names_follow_the_design() {
        let n = Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
        assert_eq!(
            (n.namespace.as_str(), n.secret.as_str(), n.api.as_str()),
            ("tenant-acme", "acme-signing-key", "acme-api")
        );
        assert_eq!(n.endpoint(), "http://acme-api.tenant-acme.svc:80");
    }

    #[test]
    fn objects_are_labelled_and_owned() {
        let t = Tenant::test();
        let n = Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
        let d = deployment(&t, &n, &BuildConfig::test(), &deployment::PodInputs::test());
        let owner = d.metadata.owner_references.clone().expect("owner");
        assert_eq!(owner[0].uid, "uid-1");
        assert_eq!(owner[0].controller, Some(true));
        assert_eq!(
            d.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(TENANT_LABEL))
                .map(String::as_str),
            Some("acme")
        );
        let ns = namespace(&t, &n);
        assert_eq!(ns.metadata.namespace, None, "namespaces are cluster-scoped");
    }

    #[test]
    fn hpa_bounds_come_from_tenant_then_tier() {
        let tier = crate::crd::builtin_tier("pro").expect("pro");
        let t = Tenant::test();
        assert_eq!(replicas(&t, &tier), tier.replicas.expect("tier replicas"));
        let t2 = Tenant::from_yaml(
            "metadata: {name: b}\nspec: {tier: pro, api: {replicas: {min: 4, max: 9}, targetCPUUtilizationPercentage: 55}}\n",
        );
        let n = Names::new(&TenantId::parse("b").expect("id"), "tenant-");
        let h = hpa(&t2, &n, replicas(&t2, &tier));
        assert_eq!((h.spec.min_replicas, h.spec.max_replicas), (Some(4), 9));
        let target = &h.spec.metrics.expect("metrics")[0];
        assert_eq!(
            target
                .resource
                .as_ref()
                .and_then(|r| r.target.average_utilization),
            Some(55)
        );
    }

    #[test]
    fn rendered_manifest_loads_in_serve_with_the_same_quota() {
        let mut t = Tenant::test();
        t.spec = TenantSpec {
            quota: Some(crate::crd::QuotaOverrides {
                daily_tokens: Some(42),
                ..Default::default()
            }),
            ..t.spec
        };
        let tier = crate::crd::builtin_tier("pro").expect("pro");
        let text = tenant_manifest(&t, "pro", &tier).expect("rendered");
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("t")).expect("mkdir");
        std::fs::write(dir.path().join("t/tenant.yaml"), text).expect("write");
        let reg = crate::tenants::Catalog::new(
            dir.path().join("t"),
            crate::tenants::KeySource {
                dir: dir.path().join("k"),
                create_missing: true,
            },
            "m".into(),
        );
        reg.reload();
        assert!(reg.problems().is_empty(), "{:?}", reg.problems());
        let cfg = reg
            .get(&TenantId::parse("acme").expect("id"))
            .expect("loaded");
        let serve = ServeConfig::default();
        let operator = effective_quota(&t, &tier, &serve);
        assert_eq!(
            cfg.quota.max_tokens_or(serve.llm.max_tokens),
            operator.max_tokens_or(0)
        );
        assert_eq!(
            EffectiveQuota {
                max_tokens: operator.max_tokens,
                ..cfg.quota.clone()
            },
            operator
        );
        assert_eq!(cfg.quota.daily_tokens, Some(42));
        assert_eq!(
            cfg.data_owner.as_deref(),
            Some("uid-1"),
            "serve binds the data to the Tenant's UID"
        );
        // Adopting a deleted Tenant's data, and a Tenant older than data binding.
        t.metadata.annotations = Some(BTreeMap::from([(
            crate::crd::ADOPT_DATA_ANNOTATION.to_string(),
            "uid-0".to_string(),
        )]));
        let adopted = tenant_manifest(&t, "pro", &tier).expect("rendered");
        std::fs::write(dir.path().join("t/tenant.yaml"), adopted).expect("write");
        reg.reload();
        let id = TenantId::parse("acme").expect("id");
        assert_eq!(
            reg.get(&id).and_then(|c| c.data_owner.clone()).as_deref(),
            Some("uid-0")
        );
        t.metadata.annotations = None;
        t.status = Some(crate::crd::TenantStatus {
            collections: vec!["tenant_acme_docs".into()],
            ..Default::default()
        });
        let legacy = tenant_manifest(&t, "pro", &tier).expect("rendered");
        std::fs::write(dir.path().join("t/tenant.yaml"), legacy).expect("write");
        reg.reload();
        assert_eq!(reg.get(&id).and_then(|c| c.data_owner.clone()), None);
    }

    #[test]
    fn one_value_holds_every_object_in_the_tenant_namespace() {
        let t = Tenant::test();
        let id = crate::controller::validate::spec(&t).expect("valid");
        let tier = crate::crd::builtin_tier("pro");
        let valid = crate::controller::validate::with_tier(&t, id, tier).expect("valid");
        let r = resources(&valid, &BuildConfig::test(), StoredKey::Invalid, 1_000).expect("built");
        assert!(r.signing_key.replaced_invalid);
        assert_eq!(r.signing_key.plan.change, Some(keys::Change::Created));
        assert_eq!(r.namespace.metadata.name.as_deref(), Some("tenant-acme"));
        for namespace in [
            &r.signing_key.secret.metadata.namespace,
            &r.verify_keys.metadata.namespace,
            &r.resource_quota.metadata.namespace,
            &r.limit_range.metadata.namespace,
            &r.config.metadata.namespace,
            &r.deployment.metadata.namespace,
            &r.service.metadata.namespace,
            &r.autoscaler.metadata.namespace,
            &r.disruption_budget.metadata.namespace,
            &r.network_policy.metadata.namespace,
        ] {
            assert_eq!(namespace.as_deref(), Some("tenant-acme"));
        }
        assert_eq!(
            r.effective_quota,
            effective_quota(&t, &valid.tier, &ServeConfig::default())
        );
        let data = r.config.data.as_ref().expect("data");
        let manifest = &data[TENANT_MANIFEST_KEY];
        assert!(manifest.contains("kind: QuotaTier"), "{manifest}");
        let serve = &data[serve_config::SERVE_CONFIG_KEY];
        let annotations = r
            .deployment
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone());
        assert_eq!(
            annotations.expect("annotations")[serve_config::CONFIG_HASH_ANNOTATION],
            serve_config::hash(serve)
        );
    }
}
