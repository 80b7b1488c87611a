//! The chat API Deployment (pure), assembled by concern: the pod's security and the platform's
//! scheduling defaults, the container's environment, volumes and their mounts, probes,
//! resources and the container itself.
use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecretProjection, SecurityContext, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::serve_config::{CONFIG_HASH_ANNOTATION, CONFIG_MOUNT, SERVE_CONFIG_KEY};
use super::{
    API_PORT, BuildConfig, KEYRING_KEY, KEYS_MOUNT, METRICS_PORT, Names, REVOCATIONS_KEY, Scope,
    TENANT_MANIFEST_KEY, TENANTS_MOUNT, api_labels, api_selector, meta,
};
use crate::crd::Tenant;

/// Unprivileged user and group the chat API runs as.
const RUN_AS: i64 = 65532;

/// What the Deployment takes from the rest of the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInputs {
    /// sha256 of the rendered serve configuration (a change rolls the pods).
    pub config_hash: String,
    /// `spec.replicas`: set only while suspended (0) or pinned (1); otherwise the
    /// HorizontalPodAutoscaler owns it, so the operator never fights the autoscaler.
    pub replicas: Option<i32>,
}

/// The chat API Deployment.
pub fn deployment(
    tenant: &Tenant,
    names: &Names,
    cfg: &BuildConfig,
    inputs: &PodInputs,
) -> Deployment {
    Deployment {
        metadata: meta(tenant, names, &names.api, Scope::Api),
        spec: DeploymentSpec {
            replicas: inputs.replicas,
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
                metadata: Some(pod_meta(names, cfg, inputs)),
                spec: Some(pod(tenant, names, cfg)),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The pod template's labels and annotations: the platform's, then the operator's own (which
/// the platform's cannot replace: the selector and the config hash).
fn pod_meta(names: &Names, cfg: &BuildConfig, inputs: &PodInputs) -> ObjectMeta {
    let defaults = &cfg.pod_defaults;
    let mut labels = defaults.pod_labels.clone();
    labels.extend(api_labels(names));
    let mut annotations = defaults.pod_annotations.clone();
    annotations.insert(
        CONFIG_HASH_ANNOTATION.to_string(),
        inputs.config_hash.clone(),
    );
    ObjectMeta {
        labels: Some(labels),
        annotations: Some(annotations),
        ..Default::default()
    }
}

fn pod(tenant: &Tenant, names: &Names, cfg: &BuildConfig) -> PodSpec {
    let d = &cfg.pod_defaults;
    // Unset stays absent: an empty list or map would be a field the operator claims.
    fn set<T: Clone + Default + PartialEq>(v: &T) -> Option<T> {
        (*v != T::default()).then(|| v.clone())
    }
    PodSpec {
        // The API needs no Kubernetes API access: its config and keys are mounted.
        automount_service_account_token: Some(false),
        security_context: Some(pod_security()),
        containers: vec![container(tenant, names, cfg)],
        volumes: Some(volumes(names, cfg)),
        image_pull_secrets: set(&d.image_pull_secrets),
        node_selector: set(&d.node_selector),
        tolerations: set(&d.tolerations),
        affinity: set(&d.affinity),
        topology_spread_constraints: set(&d.spread(&api_selector(names))),
        priority_class_name: set(&d.priority_class_name),
        ..Default::default()
    }
}

fn container(tenant: &Tenant, names: &Names, cfg: &BuildConfig) -> Container {
    Container {
        name: "api".to_string(),
        image: Some(cfg.image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        args: Some(serve_args()),
        env: Some(env(names, cfg)),
        ports: Some(vec![port("http", API_PORT), port("metrics", METRICS_PORT)]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(container_resources(tenant, cfg)),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![
            mount("tenant-config", TENANTS_MOUNT),
            mount("serve-config", CONFIG_MOUNT),
            mount("signing-key", KEYS_MOUNT),
            mount("data", "/data"),
            mount("tmp", "/tmp"),
        ]),
        ..Default::default()
    }
}

/// `tenantry serve` reading its configuration, tenant and keyring from the mounted ConfigMap
/// and Secret.
fn serve_args() -> Vec<String> {
    let config = format!("{CONFIG_MOUNT}/{SERVE_CONFIG_KEY}");
    [
        "serve",
        "--config",
        config.as_str(),
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
    .to_vec()
}

fn port(name: &str, container_port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port,
        ..Default::default()
    }
}

/// The container's environment: the default log filter, the Qdrant server, the operator's
/// `--api-env` and the copied credentials; one entry per name (server-side apply refuses
/// duplicates), a later one winning, so `--api-env RUST_LOG=debug` replaces the default.
fn env(names: &Names, cfg: &BuildConfig) -> Vec<EnvVar> {
    let mut env = vec![value_env("RUST_LOG", crate::telemetry::DEFAULT_FILTER)];
    if let Some(url) = &cfg.qdrant_url {
        env.push(value_env("TENANTRY_QDRANT_URL", url));
        if let Some((name, key)) = &cfg.qdrant_api_key_secret {
            env.push(secret_env("TENANTRY_QDRANT_API_KEY", name, key));
        }
    }
    env.extend(cfg.api_env.iter().map(|(k, v)| value_env(k, v)));
    env.extend(
        cfg.api_secret_env
            .iter()
            .map(|(k, _, _)| secret_env(k, &names.credentials, k)),
    );
    env.extend(crate::controller::credentials::pod_env(names, cfg));
    let mut seen = HashSet::new();
    env.reverse();
    env.retain(|e| seen.insert(e.name.clone()));
    env.reverse();
    env
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

/// A variable read from key `key` of Secret `secret` (never inlined into the pod spec).
fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The tenant's `spec.api.resources`, else the platform's default resources, else 250m CPU /
/// 512Mi requested and a 2Gi memory limit.
pub fn container_resources(tenant: &Tenant, cfg: &BuildConfig) -> ResourceRequirements {
    if tenant.spec.api.resources.is_none()
        && let Some(defaults) = cfg.pod_defaults.default_resources()
    {
        return defaults.clone();
    }
    let res = tenant.spec.api.resources.clone().unwrap_or_default();
    ResourceRequirements {
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
    }
}

fn quantities(m: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!m.is_empty()).then(|| {
        m.iter()
            .map(|(k, v)| (k.clone(), Quantity(v.clone())))
            .collect()
    })
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `sizeLimit` of the API pods' `/tmp`.
pub const TMP_SIZE_LIMIT: &str = "256Mi";

/// The mounted ConfigMap, one key per folder (the tenant manifest folder holds manifests
/// only), the verify-only keyring (as `<tenant>.json`, owner-read-only; the private keys stay
/// in the signing-key Secret, which the pods never mount), and bounded scratch space for the
/// data folder and `/tmp` (the root filesystem is read-only).
fn volumes(names: &Names, cfg: &BuildConfig) -> Vec<Volume> {
    let empty = |name: &str, limit: &str| Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(limit.to_string())),
            ..Default::default()
        }),
        ..Default::default()
    };
    let config_key = |name: &str, key: &str| Volume {
        name: name.to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: names.config.clone(),
            items: Some(vec![KeyToPath {
                key: key.to_string(),
                path: key.to_string(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        config_key("tenant-config", TENANT_MANIFEST_KEY),
        config_key("serve-config", SERVE_CONFIG_KEY),
        // The verify-only keyring and, once a TenantCredential was revoked, the revoked ids.
        Volume {
            name: "signing-key".to_string(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o400),
                sources: Some(vec![
                    VolumeProjection {
                        secret: Some(SecretProjection {
                            name: names.verify_keys.clone(),
                            items: Some(vec![KeyToPath {
                                key: KEYRING_KEY.to_string(),
                                path: format!("{}.json", names.tenant),
                                ..Default::default()
                            }]),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: names.revoked.clone(),
                            items: Some(vec![KeyToPath {
                                key: REVOCATIONS_KEY.to_string(),
                                path: format!("{}.revoked.json", names.tenant),
                                ..Default::default()
                            }]),
                            optional: Some(true),
                        }),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        },
        empty("data", &cfg.data_size_limit),
        empty("tmp", TMP_SIZE_LIMIT),
    ]
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(!matches!(name, "data" | "tmp")),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantId;

    #[test]
    fn secret_env_comes_from_the_tenant_copy_and_env_names_are_unique() {
        let n = Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
        let mut c = BuildConfig::test();
        c.api_env.push(("RUST_LOG".into(), "debug".into()));
        c.api_secret_env
            .push(("OPENAI_API_KEY".into(), "llm".into(), "key".into()));
        let d = deployment(&Tenant::test(), &n, &c, &PodInputs::test());
        let env = d.spec.template.spec.expect("pod").containers[0]
            .env
            .clone()
            .expect("env");
        let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(names.len(), unique.len(), "{names:?}");
        let log = env.iter().find(|e| e.name == "RUST_LOG").expect("RUST_LOG");
        assert_eq!(log.value.as_deref(), Some("debug"));
        let plain = deployment(
            &Tenant::test(),
            &n,
            &BuildConfig::test(),
            &PodInputs::test(),
        );
        let plain_env = plain.spec.template.spec.expect("pod").containers[0]
            .env
            .clone()
            .expect("env");
        let plain_log = plain_env
            .iter()
            .find(|e| e.name == "RUST_LOG")
            .expect("RUST_LOG");
        assert_eq!(
            plain_log.value.as_deref(),
            Some(crate::telemetry::DEFAULT_FILTER),
            "by default the pods filter as the binary does"
        );
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
            let d = deployment(&Tenant::test(), &n, cfg, &PodInputs::test());
            d.spec.template.spec.expect("pod").containers[0]
                .env
                .clone()
                .expect("env")
        };
        let plain = env_of(&BuildConfig::test());
        assert!(plain.iter().all(|e| !e.name.starts_with("TENANTRY_QDRANT")));

        let mut c = BuildConfig::test();
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

    #[test]
    fn replicas_and_the_config_hash_come_from_the_inputs() {
        let n = Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
        let t = Tenant::test();
        let cfg = BuildConfig::test();
        let d = deployment(&t, &n, &cfg, &PodInputs::test());
        assert_eq!(d.spec.replicas, None, "left to the autoscaler");
        let inputs = PodInputs {
            config_hash: "abc".into(),
            replicas: Some(1),
        };
        let d = deployment(&t, &n, &cfg, &inputs);
        assert_eq!(d.spec.replicas, Some(1));
        let meta = d.spec.template.metadata.expect("meta");
        assert_eq!(
            meta.annotations.expect("annotations")[CONFIG_HASH_ANNOTATION],
            "abc"
        );
    }

    #[test]
    fn pod_defaults_reach_the_pod_but_never_replace_the_selector() {
        let n = Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
        let mut cfg = BuildConfig::test();
        cfg.pod_defaults = super::super::pod::PodDefaults::parse(
            "imagePullSecrets: [{name: regcred}]\nnodeSelector: {pool: api}\ntolerations: [{key: k, operator: Exists}]\naffinity: {podAntiAffinity: {}}\ntopologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}]\npodLabels: {team: ai}\npodAnnotations: {a: b}\npriorityClassName: high\nresources: {requests: {cpu: 50m}}\n",
        )
        .expect("defaults");
        let d = deployment(&Tenant::test(), &n, &cfg, &PodInputs::test());
        let meta = d.spec.template.metadata.clone().expect("meta");
        let labels = meta.labels.expect("labels");
        assert_eq!(labels["team"], "ai");
        assert_eq!(labels["app.kubernetes.io/instance"], "acme-api");
        let annotations = meta.annotations.expect("annotations");
        assert_eq!(annotations["a"], "b");
        assert!(annotations.contains_key(CONFIG_HASH_ANNOTATION));
        let pod = d.spec.template.spec.expect("pod");
        assert_eq!(pod.image_pull_secrets.expect("pull")[0].name, "regcred");
        assert_eq!(pod.node_selector.expect("nodes")["pool"], "api");
        assert_eq!(pod.tolerations.expect("tolerations").len(), 1);
        assert!(pod.affinity.expect("affinity").pod_anti_affinity.is_some());
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
        let spread = &pod.topology_spread_constraints.expect("spread")[0];
        assert_eq!(
            spread.label_selector.clone().and_then(|s| s.match_labels),
            Some(api_selector(&n))
        );
        let res = pod.containers[0].resources.clone().expect("resources");
        assert_eq!(res.requests.expect("requests")["cpu"].0, "50m");
        assert_eq!(
            res.limits, None,
            "the platform's resources replace the built-in ones"
        );

        let own = Tenant::from_yaml(
            "metadata: {name: acme}\nspec: {tier: pro, api: {resources: {requests: {cpu: 1}}}}\n",
        );
        let d = deployment(&own, &n, &cfg, &PodInputs::test());
        let res = d.spec.template.spec.expect("pod").containers[0]
            .resources
            .clone()
            .expect("resources");
        assert_eq!(
            res.requests.expect("requests")["cpu"].0,
            "1",
            "the tenant's win"
        );

        let plain = deployment(
            &Tenant::test(),
            &n,
            &BuildConfig::test(),
            &PodInputs::test(),
        );
        let pod = plain.spec.template.spec.expect("pod");
        assert_eq!(
            (
                pod.node_selector,
                pod.tolerations,
                pod.affinity,
                pod.priority_class_name
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn pods_run_locked_down_with_mounted_config() {
        let n = Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
        let d = deployment(
            &Tenant::test(),
            &n,
            &BuildConfig::test(),
            &PodInputs::test(),
        );
        let pod = d.spec.template.spec.expect("pod");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        let sc = c.security_context.clone().expect("sc");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let args = c.args.clone().expect("args").join(" ");
        assert!(
            args.starts_with("serve --config /etc/tenantry/config/serve.yaml ")
                && args.contains("--keys-dir /etc/tenantry/keys"),
            "{args}"
        );
        let volumes = pod.volumes.expect("volumes");
        assert!(volumes.iter().all(|v| v.secret.is_none()));
        let sources = volumes
            .iter()
            .find_map(|v| v.projected.clone())
            .and_then(|p| p.sources)
            .expect("projected keys volume");
        let secret = sources[0].secret.clone().expect("secret");
        assert_eq!(
            secret.name, "acme-verify-keys",
            "the pods mount the verify-only keyring, never the signing key"
        );
        assert_eq!(secret.items.expect("items")[0].path, "acme.json");
        let revoked = sources[1].config_map.clone().expect("revocations");
        assert_eq!(
            (revoked.name.as_str(), revoked.optional),
            ("acme-revoked-tokens", Some(true))
        );
        assert_eq!(revoked.items.expect("items")[0].path, "acme.revoked.json");
        for v in volumes.iter().filter_map(|v| v.empty_dir.as_ref()) {
            assert!(v.size_limit.is_some(), "every emptyDir is bounded: {v:?}");
        }
        // One key per folder: the manifest folder never sees serve.yaml.
        let keys_of = |name: &str| {
            let v = volumes.iter().find(|v| v.name == name).expect(name);
            let items = v.config_map.clone().and_then(|c| c.items).expect("items");
            items.into_iter().map(|i| i.key).collect::<Vec<_>>()
        };
        assert_eq!(keys_of("tenant-config"), ["tenant.yaml"]);
        assert_eq!(keys_of("serve-config"), ["serve.yaml"]);
        let mounts = c.volume_mounts.clone().expect("mounts");
        let at = |name: &str| {
            mounts
                .iter()
                .find(|m| m.name == name)
                .map(|m| m.mount_path.clone())
        };
        assert_eq!(at("serve-config").as_deref(), Some(CONFIG_MOUNT));
        assert_eq!(at("tenant-config").as_deref(), Some(TENANTS_MOUNT));
    }
}
