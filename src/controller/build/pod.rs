//! Platform defaults of every tenant's API pods (`--api-pod-defaults`): scheduling (node
//! selector, tolerations, affinity, topology spread, priority class), image pull Secrets, extra
//! pod labels and annotations, and default container resources. The file holds Kubernetes
//! types under the names a pod spec uses; unknown keys are refused.
use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Deserializer};

use super::serve_config::CONFIG_HASH_ANNOTATION;

/// Labels the operator sets on API pods itself (the selector, the owner, the tenant); pod
/// defaults may not set them.
pub const RESERVED_LABELS: [&str; 4] = [
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    crate::crd::TENANT_LABEL,
];

/// The contents of `--api-pod-defaults`. Empty values (as Helm renders unset ones) mean unset.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodDefaults {
    /// Secrets for pulling the API image (they must exist in each tenant namespace).
    #[serde(default, deserialize_with = "or_default")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Node labels the pods must run on.
    #[serde(default, deserialize_with = "or_default")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, deserialize_with = "or_default")]
    pub tolerations: Vec<Toleration>,
    /// Node and pod (anti-)affinity.
    #[serde(default, deserialize_with = "or_default")]
    pub affinity: Affinity,
    /// Spread of the pods; a constraint without `labelSelector` selects the tenant's own pods.
    #[serde(default, deserialize_with = "or_default")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Extra pod labels (never the operator's own, see [`RESERVED_LABELS`]).
    #[serde(default, deserialize_with = "or_default")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra pod annotations (never `tenantry.dev/config-hash`).
    #[serde(default, deserialize_with = "or_default")]
    pub pod_annotations: BTreeMap<String, String>,
    /// PriorityClass of the pods.
    #[serde(default, deserialize_with = "or_default")]
    pub priority_class_name: String,
    /// Container resources of tenants whose `spec.api.resources` is unset.
    #[serde(default, deserialize_with = "or_default")]
    pub resources: ResourceRequirements,
}

/// An explicit `null` (an empty Helm value) is the default, like an absent key.
fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl PodDefaults {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("invalid {}: {e}", path.display()))
    }

    /// Parses and checks the YAML of a pod-defaults file (an empty file: no defaults).
    pub fn parse(text: &str) -> Result<Self, String> {
        let defaults: Option<Self> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let defaults = defaults.unwrap_or_default();
        if let Some(key) = defaults
            .pod_labels
            .keys()
            .find(|k| RESERVED_LABELS.contains(&k.as_str()))
        {
            return Err(format!(
                "podLabels may not set {key:?}: the operator selects and owns its pods by it"
            ));
        }
        if defaults
            .pod_annotations
            .contains_key(CONFIG_HASH_ANNOTATION)
        {
            return Err(format!(
                "podAnnotations may not set {CONFIG_HASH_ANNOTATION:?}: the operator sets it"
            ));
        }
        Ok(defaults)
    }

    /// The default container resources, if any are set.
    pub fn default_resources(&self) -> Option<&ResourceRequirements> {
        (self.resources != ResourceRequirements::default()).then_some(&self.resources)
    }

    /// The topology spread constraints, each selecting the pods `selector` matches when it
    /// names no pods of its own (a platform-wide file cannot name one tenant's pods).
    pub fn spread(&self, selector: &BTreeMap<String, String>) -> Vec<TopologySpreadConstraint> {
        self.topology_spread_constraints
            .iter()
            .cloned()
            .map(|mut c| {
                c.label_selector.get_or_insert_with(|| LabelSelector {
                    match_labels: Some(selector.clone()),
                    ..Default::default()
                });
                c
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_into_pod_spec_types() {
        let d = PodDefaults::parse(
            r#"
imagePullSecrets: [{name: regcred}]
nodeSelector: {pool: api}
tolerations: [{key: dedicated, operator: Equal, value: api, effect: NoSchedule}]
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a, b]}]}]
topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}]
podLabels: {team: platform}
podAnnotations: {prometheus.io/scrape: "true"}
priorityClassName: tenant-api
resources: {requests: {cpu: 100m}, limits: {memory: 1Gi}}
"#,
        )
        .expect("valid");
        assert_eq!(d.image_pull_secrets[0].name, "regcred");
        assert_eq!(d.tolerations[0].effect.as_deref(), Some("NoSchedule"));
        assert!(d.affinity.node_affinity.is_some());
        assert_eq!(d.priority_class_name, "tenant-api");
        assert!(d.default_resources().is_some());
        let selector = BTreeMap::from([("app".to_string(), "x".to_string())]);
        let spread = d.spread(&selector);
        assert_eq!(
            spread[0]
                .label_selector
                .clone()
                .and_then(|s| s.match_labels),
            Some(selector)
        );
    }

    #[test]
    fn empty_values_are_unset() {
        let d = PodDefaults::parse(
            "imagePullSecrets: []\nnodeSelector: {}\ntolerations:\naffinity: {}\npodLabels:\npriorityClassName: \"\"\nresources: {}\n",
        )
        .expect("valid");
        assert_eq!(d, PodDefaults::default());
        assert_eq!(d.default_resources(), None);
        assert_eq!(
            PodDefaults::parse("").expect("empty"),
            PodDefaults::default()
        );
    }

    #[test]
    fn unknown_keys_and_the_operators_own_labels_are_refused() {
        let err = PodDefaults::parse("nodeSelectors: {pool: api}\n").expect_err("typo");
        assert!(err.contains("nodeSelectors"), "{err}");
        let err = PodDefaults::parse("podLabels: {app.kubernetes.io/instance: x}\n")
            .expect_err("selector label");
        assert!(err.contains("podLabels may not set"), "{err}");
        let err = PodDefaults::parse("podAnnotations: {tenantry.dev/config-hash: x}\n")
            .expect_err("hash");
        assert!(err.contains("the operator sets it"), "{err}");
    }
}
