//! Pure construction of the objects a Tenant becomes (no I/O): namespace, signing-key Secret,
//! the rendered tenant config, and the chat API's Deployment, Service, HPA, PDB and
//! NetworkPolicy. Every object is labelled and owned by the Tenant.
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, Namespace, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use crate::auth::keys::Keyring;
use crate::crd::{EffectiveQuota, QuotaTierSpec, Replicas, TENANT_LABEL, Tenant, TenantId};

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
    /// Signing-key Secret.
    pub secret: String,
    /// Rendered-config ConfigMap.
    pub config: String,
    /// Deployment, Service, HPA, PDB and NetworkPolicy.
    pub api: String,
    /// Secret with the API pods' copied credentials.
    pub credentials: String,
}

impl Names {
    /// Names for `tenant` with a namespace prefix.
    pub fn new(tenant: &TenantId, prefix: &str) -> Self {
        Self {
            tenant: tenant.clone(),
            namespace: format!("{prefix}{tenant}"),
            secret: format!("{tenant}-signing-key"),
            config: format!("{tenant}-api-config"),
            api: format!("{tenant}-api"),
            credentials: format!("{tenant}-api-credentials"),
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

fn meta(tenant: &Tenant, names: &Names, name: &str, namespaced: bool, api: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespaced.then(|| names.namespace.clone()),
        labels: Some(if api {
            api_labels(names)
        } else {
            labels(names)
        }),
        owner_references: owner(tenant).map(|o| vec![o]),
        ..Default::default()
    }
}

fn owner(tenant: &Tenant) -> Option<OwnerReference> {
    tenant.controller_owner_ref(&())
}

/// The tenant namespace.
pub fn namespace(tenant: &Tenant, names: &Names) -> Namespace {
    Namespace {
        metadata: meta(tenant, names, &names.namespace, false, false),
        ..Default::default()
    }
}

/// The signing-key Secret: the whole keyring (read by the tenant's API pods) and, for
/// convenience, the current `kid` and public key.
pub fn secret(tenant: &Tenant, names: &Names, ring: &Keyring, rotated_for: Option<&str>) -> Secret {
    let mut data = BTreeMap::from([
        (
            KEYRING_KEY.to_string(),
            ByteString(serde_json::to_vec_pretty(ring).unwrap_or_default()),
        ),
        (
            "kid".to_string(),
            ByteString(ring.current.clone().into_bytes()),
        ),
    ]);
    if let Some(public) = ring.current_key().and_then(|k| k.public_key.clone()) {
        data.insert("public.pem".to_string(), ByteString(public.into_bytes()));
    }
    let mut metadata = meta(tenant, names, &names.secret, true, false);
    if let Some(v) = rotated_for {
        metadata.annotations = Some(BTreeMap::from([(
            super::keys::ROTATED_FOR_ANNOTATION.to_string(),
            v.to_string(),
        )]));
    }
    Secret {
        metadata,
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// The tenant's copy of the platform credentials its API pods need (keys named by the
/// environment variable they fill).
pub fn credentials_secret(
    tenant: &Tenant,
    names: &Names,
    data: BTreeMap<String, ByteString>,
) -> Secret {
    Secret {
        metadata: meta(tenant, names, &names.credentials, true, false),
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// The tenant manifest the API pods load: the Tenant's spec and its tier, so the pods
/// resolve the same effective quota as the operator without any API access.
pub fn tenant_manifest(tenant: &Tenant, tier_name: &str, tier: &QuotaTierSpec) -> String {
    let doc = serde_json::json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": tenant.metadata.name},
        "spec": tenant.spec,
    });
    let tier_doc = serde_json::json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "QuotaTier",
        "metadata": {"name": tier_name},
        "spec": tier,
    });
    format!(
        "# Rendered by the tenantry operator from Tenant/{name}; do not edit.\n{}---\n{}",
        serde_saphyr::to_string(&doc).unwrap_or_default(),
        serde_saphyr::to_string(&tier_doc).unwrap_or_default(),
        name = tenant.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The ConfigMap holding the rendered tenant manifest.
pub fn config_map(tenant: &Tenant, names: &Names, manifest: String) -> ConfigMap {
    ConfigMap {
        metadata: meta(tenant, names, &names.config, true, false),
        data: Some(BTreeMap::from([(
            TENANT_MANIFEST_KEY.to_string(),
            manifest,
        )])),
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

fn quantities(m: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!m.is_empty()).then(|| {
        m.iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect()
    })
}

/// The chat API Deployment. `spec.replicas` is set only while suspended (0); otherwise the
/// HorizontalPodAutoscaler owns it, so the operator never fights the autoscaler.
pub fn deployment(tenant: &Tenant, names: &Names, cfg: &BuildConfig) -> Deployment {
    let res = tenant.spec.api.resources.clone().unwrap_or_default();
    let resources = ResourceRequirements {
        requests: quantities(&res.requests).or_else(|| {
            Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("250m".to_string())),
                ("memory".to_string(), Quantity("512Mi".to_string())),
            ]))
        }),
        limits: quantities(&res.limits).or_else(|| {
            Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("2Gi".to_string()),
            )]))
        }),
        ..Default::default()
    };
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    };
    let mut env = vec![EnvVar {
        name: "RUST_LOG".to_string(),
        value: Some("info".to_string()),
        ..Default::default()
    }];
    if let Some(url) = &cfg.qdrant_url {
        env.push(EnvVar {
            name: "TENANTRY_QDRANT_URL".to_string(),
            value: Some(url.clone()),
            ..Default::default()
        });
        if let Some((name, key)) = &cfg.qdrant_api_key_secret {
            env.push(EnvVar {
                name: "TENANTRY_QDRANT_API_KEY".to_string(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: name.clone(),
                        key: key.clone(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    env.extend(cfg.api_env.iter().map(|(k, v)| EnvVar {
        name: k.clone(),
        value: Some(v.clone()),
        ..Default::default()
    }));
    env.extend(cfg.api_secret_env.iter().map(|(k, _, _)| EnvVar {
        name: k.clone(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: names.credentials.clone(),
                key: k.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }));
    // One entry per name (server-side apply refuses duplicates): a later one wins, so
    // `--api-env RUST_LOG=debug` replaces the default.
    let mut seen = std::collections::HashSet::new();
    env.reverse();
    env.retain(|e| seen.insert(e.name.clone()));
    env.reverse();
    let container = Container {
        name: "api".to_string(),
        image: Some(cfg.image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        args: Some(
            [
                "serve",
                "--listen",
                "0.0.0.0:8000",
                "--metrics-listen",
                "0.0.0.0:9090",
                "--tenants",
                TENANTS_MOUNT,
                "--keys-dir",
                KEYS_MOUNT,
                "--data-dir",
                "/data",
            ]
            .map(str::to_string)
            .to_vec(),
        ),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".to_string()),
                container_port: API_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("metrics".to_string()),
                container_port: METRICS_PORT,
                ..Default::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(resources),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("tenant-config", TENANTS_MOUNT),
            mount("signing-key", KEYS_MOUNT),
            mount("data", "/data"),
            mount("tmp", "/tmp"),
        ]),
        ..Default::default()
    };
    let empty = |name: &str| Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    let pod = PodSpec {
        // The API needs no Kubernetes API access: its config and keys are mounted.
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "tenant-config".to_string(),
                config_map: Some(ConfigMapVolumeSource {
                    name: names.config.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "signing-key".to_string(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(names.secret.clone()),
                    default_mode: Some(0o400),
                    items: Some(vec![KeyToPath {
                        key: KEYRING_KEY.to_string(),
                        path: format!("{}.json", names.tenant),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            empty("data"),
            empty("tmp"),
        ]),
        ..Default::default()
    };
    Deployment {
        metadata: meta(tenant, names, &names.api, true, true),
        spec: DeploymentSpec {
            replicas: tenant.spec.suspend.then_some(0),
            selector: LabelSelector {
                match_labels: Some(api_selector(names)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(api_labels(names)),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(!matches!(name, "data" | "tmp")),
        ..Default::default()
    }
}

/// The chat API Service (port 80 → 8000, and metrics).
pub fn service(tenant: &Tenant, names: &Names) -> Service {
    Service {
        metadata: meta(tenant, names, &names.api, true, true),
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
        metadata: meta(tenant, names, &names.api, true, true),
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
        metadata: meta(tenant, names, &names.api, true, true),
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

/// The NetworkPolicy: the API pods accept traffic only on the API and metrics ports.
pub fn network_policy(tenant: &Tenant, names: &Names) -> NetworkPolicy {
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".to_string()),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: meta(tenant, names, &names.api, true, true),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(api_selector(names)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![port(API_PORT), port(METRICS_PORT)]),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// The effective quota of a tenant under a tier.
pub fn effective_quota(tenant: &Tenant, tier: &QuotaTierSpec) -> EffectiveQuota {
    EffectiveQuota::resolve(tier, tenant.spec.quota.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::TenantSpec;

    fn tenant(yaml: &str) -> Tenant {
        let mut t: Tenant = serde_saphyr::from_str(yaml).expect("tenant yaml");
        t.metadata.uid = Some("uid-1".to_string());
        t
    }

    fn cfg() -> BuildConfig {
        BuildConfig {
            namespace_prefix: "tenant-".into(),
            image: "img:1".into(),
            image_pull_policy: "IfNotPresent".into(),
            api_env: vec![("OPENAI_BASE_URL".into(), "http://llm/v1".into())],
            api_secret_env: vec![],
            operator_namespace: "tenantry-system".into(),
            qdrant_url: None,
            qdrant_api_key_secret: None,
        }
    }

    #[test]
    fn secret_env_comes_from_the_tenant_copy_and_env_names_are_unique() {
        let n = Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
        let mut c = cfg();
        c.api_env.push(("RUST_LOG".into(), "debug".into()));
        c.api_secret_env
            .push(("OPENAI_API_KEY".into(), "llm".into(), "key".into()));
        let d = deployment(&tenant(ACME), &n, &c);
        let env = d.spec.template.spec.expect("pod").containers[0]
            .env
            .clone()
            .expect("env");
        let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(names.len(), unique.len(), "{names:?}");
        let log = env.iter().find(|e| e.name == "RUST_LOG").expect("RUST_LOG");
        assert_eq!(log.value.as_deref(), Some("debug"));
        let key = env
            .iter()
            .find(|e| e.name == "OPENAI_API_KEY")
            .expect("key");
        assert!(key.value.is_none(), "never a plain value");
        let r = key
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("ref");
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("acme-api-credentials", "OPENAI_API_KEY")
        );
    }

    #[test]
    fn pods_get_the_qdrant_url_and_the_api_key_from_a_secret() {
        let n = Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
        let env_of = |cfg: &BuildConfig| {
            let d = deployment(&tenant(ACME), &n, cfg);
            d.spec.template.spec.expect("pod").containers[0]
                .env
                .clone()
                .expect("env")
        };
        let plain = env_of(&cfg());
        assert!(plain.iter().all(|e| !e.name.starts_with("TENANTRY_QDRANT")));

        let mut c = cfg();
        c.qdrant_url = Some("https://qdrant.db:6334".into());
        c.qdrant_api_key_secret = Some(("qdrant".into(), "api-key".into()));
        let env = env_of(&c);
        let url = env
            .iter()
            .find(|e| e.name == "TENANTRY_QDRANT_URL")
            .expect("url");
        assert_eq!(url.value.as_deref(), Some("https://qdrant.db:6334"));
        let key = env
            .iter()
            .find(|e| e.name == "TENANTRY_QDRANT_API_KEY")
            .expect("key");
        assert_eq!(key.value, None, "the key is never inlined");
        let sel = key
            .value_from
            .clone()
            .and_then(|v| v.secret_key_ref)
            .expect("secretKeyRef");
        assert_eq!((sel.name.as_str(), sel.key.as_str()), ("qdrant", "api-key"));

        c.qdrant_api_key_secret = None;
        let env = env_of(&c);
        assert!(env.iter().any(|e| e.name == "TENANTRY_QDRANT_URL"));
        assert!(env.iter().all(|e| e.name != "TENANTRY_QDRANT_API_KEY"));
    }

    const ACME: &str = "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {tier: pro}\n";

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
        let t = tenant(ACME);
        let n = Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
        let d = deployment(&t, &n, &cfg());
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
    fn replicas_are_left_to_the_hpa_unless_suspended() {
        let n = Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
        let mut t = tenant(ACME);
        assert_eq!(deployment(&t, &n, &cfg()).spec.replicas, None);
        t.spec.suspend = true;
        assert_eq!(deployment(&t, &n, &cfg()).spec.replicas, Some(0));
    }

    #[test]
    fn pods_run_locked_down_with_mounted_config() {
        let n = Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
        let d = deployment(&tenant(ACME), &n, &cfg());
        let pod = d.spec.template.spec.expect("pod");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        let sc = c.security_context.clone().expect("sc");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let args = c.args.clone().expect("args").join(" ");
        assert!(
            args.starts_with("serve ") && args.contains("--keys-dir /etc/tenantry/keys"),
            "{args}"
        );
        let secret_vol = pod
            .volumes
            .expect("volumes")
            .into_iter()
            .find_map(|v| v.secret)
            .expect("secret volume");
        assert_eq!(secret_vol.items.expect("items")[0].path, "acme.json");
    }

    #[test]
    fn hpa_bounds_come_from_tenant_then_tier() {
        let tier = crate::crd::builtin_tier("pro").expect("pro");
        let t = tenant(ACME);
        assert_eq!(replicas(&t, &tier), tier.replicas.expect("tier replicas"));
        let t2 = tenant(
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
        let mut t = tenant(ACME);
        t.spec = TenantSpec {
            quota: Some(crate::crd::QuotaOverrides {
                daily_tokens: Some(42),
                ..Default::default()
            }),
            ..t.spec
        };
        let tier = crate::crd::builtin_tier("pro").expect("pro");
        let text = tenant_manifest(&t, "pro", &tier);
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("t")).expect("mkdir");
        std::fs::write(dir.path().join("t/tenant.yaml"), text).expect("write");
        let reg = crate::tenants::Registry::new(
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
        assert_eq!(cfg.quota, effective_quota(&t, &tier));
        assert_eq!(cfg.quota.daily_tokens, 42);
    }
}
