//! The tenant NetworkPolicy (pure): who may reach the chat API port and the metrics port, and
//! where the API pods may connect to (`--api-ingress-from`, `--metrics-from`, `--api-egress`).
//!
//! A peer is a namespace name (every pod of that namespace), `cidr:<CIDR>` (an IP block) or
//! `*` (no restriction). DNS (port 53, UDP and TCP) is always allowed out: the pods resolve the
//! stores, the LLM and the identity providers by name.
use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{API_PORT, METRICS_PORT, Names, Scope, api_selector, meta};
use crate::crd::Tenant;

/// Destinations the API pods may reach when the operator is given no `--api-egress`: any
/// address on HTTPS (the LLM and identity providers), Qdrant (6333, 6334) and Redis (6379).
pub const DEFAULT_EGRESS: [&str; 4] = ["*:443", "*:6333", "*:6334", "*:6379"];

/// Label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where traffic may come from or go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Anywhere (no peer restriction).
    Any,
    /// Every pod of the namespace of this name.
    Namespace(String),
    /// An IP block.
    Cidr(String),
}

impl Peer {
    /// Parses `*`, `cidr:<CIDR>` or a namespace name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Peer::Any);
        }
        if let Some(cidr) = s.strip_prefix("cidr:") {
            let ok = cidr.split_once('/').is_some_and(|(ip, bits)| {
                ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 128)
            });
            return if ok {
                Ok(Peer::Cidr(cidr.to_string()))
            } else {
                Err(format!("{s:?}: expected cidr:<address>/<bits>"))
            };
        }
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Peer::Namespace(s.to_string()))
        } else {
            Err(format!(
                "{s:?}: expected a namespace name, cidr:<CIDR> or *"
            ))
        }
    }

    /// The peer of a rule (`None`: no restriction).
    fn to_peer(&self) -> Option<NetworkPolicyPeer> {
        match self {
            Peer::Any => None,
            Peer::Namespace(ns) => Some(NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        NAMESPACE_NAME_LABEL.to_string(),
                        ns.clone(),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            Peer::Cidr(cidr) => Some(NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.clone(),
                    except: None,
                }),
                ..Default::default()
            }),
        }
    }
}

/// A destination the API pods may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    /// Where.
    pub to: Peer,
    /// TCP (or UDP) port.
    pub port: i32,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
}

impl Egress {
    /// Parses `PEER:PORT` or `PEER:PORT/udp`, e.g. `qdrant:6334`, `cidr:10.0.0.0/8:443`, `*:443`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (peer, port) = s
            .trim()
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected PEER:PORT, e.g. qdrant:6334 or *:443"))?;
        let (port, protocol) = match port.split_once('/') {
            None => (port, "TCP"),
            Some((p, proto)) if proto.eq_ignore_ascii_case("udp") => (p, "UDP"),
            Some((p, proto)) if proto.eq_ignore_ascii_case("tcp") => (p, "TCP"),
            Some(_) => return Err(format!("{s:?}: the protocol must be tcp or udp")),
        };
        let port = port
            .parse::<i32>()
            .ok()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| format!("{s:?}: {port:?} is not a port"))?;
        Ok(Self {
            to: Peer::parse(peer)?,
            port,
            protocol,
        })
    }
}

/// The operator's network settings of the tenants' API pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Who may reach the API port.
    pub api_from: Vec<Peer>,
    /// Who may reach the metrics port (empty: nobody).
    pub metrics_from: Vec<Peer>,
    /// Where the pods may connect to, besides DNS.
    pub egress: Vec<Egress>,
}

impl Default for NetworkConfig {
    /// Any source on the API port (every route but the probes needs a token), the metrics port
    /// closed, and the default egress.
    fn default() -> Self {
        let egress = DEFAULT_EGRESS
            .iter()
            .filter_map(|s| Egress::parse(s).ok())
            .collect();
        Self {
            api_from: vec![Peer::Any],
            metrics_from: Vec::new(),
            egress,
        }
    }
}

impl NetworkConfig {
    /// From the flags; an empty `api_from` is any source, an empty `egress` is
    /// [`DEFAULT_EGRESS`].
    pub fn from_flags(
        api_from: &[String],
        metrics_from: &[String],
        egress: &[String],
    ) -> Result<Self, String> {
        let peers = |flag: &str, list: &[String]| {
            list.iter()
                .map(|s| Peer::parse(s).map_err(|e| format!("{flag}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        let mut api_from = peers("--api-ingress-from", api_from)?;
        if api_from.is_empty() {
            api_from.push(Peer::Any);
        }
        let egress: Vec<String> = if egress.is_empty() {
            DEFAULT_EGRESS.map(str::to_string).to_vec()
        } else {
            egress.to_vec()
        };
        Ok(Self {
            api_from,
            metrics_from: peers("--metrics-from", metrics_from)?,
            egress: egress
                .iter()
                .map(|s| Egress::parse(s).map_err(|e| format!("--api-egress: {e}")))
                .collect::<Result<_, _>>()?,
        })
    }
}

fn port(p: i32, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some(protocol.to_string()),
        ..Default::default()
    }
}

/// The peers of a rule: `None` (anyone) as soon as one of them is `*`.
fn peers(list: &[Peer]) -> Option<Vec<NetworkPolicyPeer>> {
    list.iter().map(Peer::to_peer).collect()
}

/// The NetworkPolicy of the tenant's API pods: ingress on the API port from `cfg.api_from`,
/// on the metrics port from `cfg.metrics_from` only; egress to DNS and `cfg.egress` only.
pub fn network_policy(tenant: &Tenant, names: &Names, cfg: &NetworkConfig) -> NetworkPolicy {
    let mut ingress = vec![NetworkPolicyIngressRule {
        ports: Some(vec![port(API_PORT, "TCP")]),
        from: peers(&cfg.api_from),
    }];
    if !cfg.metrics_from.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            ports: Some(vec![port(METRICS_PORT, "TCP")]),
            from: peers(&cfg.metrics_from),
        });
    }
    let mut egress = vec![NetworkPolicyEgressRule {
        ports: Some(vec![port(53, "UDP"), port(53, "TCP")]),
        to: None,
    }];
    egress.extend(cfg.egress.iter().map(|e| NetworkPolicyEgressRule {
        ports: Some(vec![port(e.port, e.protocol)]),
        to: e.to.to_peer().map(|p| vec![p]),
    }));
    NetworkPolicy {
        metadata: meta(tenant, names, &names.api, Scope::Api),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(api_selector(names)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".to_string(), "Egress".to_string()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantId;

    fn names() -> Names {
        Names::new(&TenantId::parse("acme").expect("id"), "tenant-")
    }

    fn rule_for(rules: &[NetworkPolicyIngressRule], p: i32) -> Option<&NetworkPolicyIngressRule> {
        rules.iter().find(|r| {
            r.ports
                .iter()
                .flatten()
                .any(|x| x.port == Some(IntOrString::Int(p)))
        })
    }

    #[test]
    fn by_default_the_metrics_port_is_closed_and_egress_is_limited() {
        let spec = network_policy(&Tenant::test(), &names(), &NetworkConfig::default())
            .spec
            .expect("spec");
        let ingress = spec.ingress.expect("ingress");
        assert!(rule_for(&ingress, METRICS_PORT).is_none(), "{ingress:?}");
        assert_eq!(rule_for(&ingress, API_PORT).expect("api").from, None);
        assert_eq!(
            spec.policy_types.expect("types"),
            ["Ingress".to_string(), "Egress".to_string()]
        );
        let egress = spec.egress.expect("egress");
        let ports: Vec<_> = egress
            .iter()
            .flat_map(|r| r.ports.iter().flatten())
            .filter_map(|p| match p.port {
                Some(IntOrString::Int(p)) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(ports, [53, 53, 443, 6333, 6334, 6379]);
    }

    #[test]
    fn sources_and_destinations_come_from_the_flags() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cfg = NetworkConfig::from_flags(
            &s(&["gateway-system"]),
            &s(&["monitoring"]),
            &s(&["qdrant:6334", "cidr:10.0.0.0/8:6379", "*:443"]),
        )
        .expect("flags");
        let spec = network_policy(&Tenant::test(), &names(), &cfg)
            .spec
            .expect("spec");
        let ingress = spec.ingress.expect("ingress");
        let ns = |r: &NetworkPolicyIngressRule| {
            r.from.clone().expect("restricted")[0]
                .namespace_selector
                .clone()
                .and_then(|s| s.match_labels)
                .expect("namespace")[NAMESPACE_NAME_LABEL]
                .clone()
        };
        assert_eq!(
            ns(rule_for(&ingress, API_PORT).expect("api")),
            "gateway-system"
        );
        assert_eq!(
            ns(rule_for(&ingress, METRICS_PORT).expect("metrics")),
            "monitoring"
        );
        let egress = spec.egress.expect("egress");
        assert_eq!(egress.len(), 4);
        assert_eq!(
            egress[2].to.clone().expect("to")[0]
                .ip_block
                .clone()
                .expect("block")
                .cidr,
            "10.0.0.0/8"
        );
        assert_eq!(egress[3].to, None);
    }

    #[test]
    fn no_flags_are_the_defaults() {
        assert_eq!(
            NetworkConfig::from_flags(&[], &[], &[]),
            Ok(NetworkConfig::default())
        );
    }

    #[test]
    fn bad_peers_are_refused() {
        for bad in ["", "Bad_Name", "cidr:10.0.0.0", "cidr:x/8"] {
            assert!(Peer::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["qdrant", "qdrant:0", "qdrant:70000", "qdrant:53/icmp"] {
            assert!(Egress::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Egress::parse("kube-system:53/udp").expect("udp").protocol,
            "UDP"
        );
    }
}
