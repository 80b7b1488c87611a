//! Exposure of a tenant's chat API outside the cluster (pure): the operator's `--expose`
//! settings, checked once at start ([`Expose::from_args`]), and per tenant either a Gateway
//! API `HTTPRoute` (built as a [`DynamicObject`]: no Gateway API crate) or an `Ingress`, both
//! named like the tenant's Service and routing to its port 80. The hostname comes only from
//! the operator's template, so no tenant can claim another tenant's hostname.
use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use kube::api::{ApiResource, DynamicObject};
use serde_json::json;

use super::{Names, Scope, meta};
use crate::cli::{ExposeArgs, ExposeMode};
use crate::crd::Tenant;
use crate::domain::{MAX_TENANT_ID_LEN, TenantId};

/// The placeholder of the tenant id in `--expose-hostname` and `--ingress-tls-secret`.
pub const TENANT_PLACEHOLDER: &str = "{tenant}";

/// Why the exposure flags were refused (the operator exits with this message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ExposeConfigError(pub String);

/// How the operator exposes tenants' chat APIs (from the `--expose*` flags).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Expose {
    /// In-cluster only.
    #[default]
    None,
    /// A Gateway API HTTPRoute per tenant.
    Gateway(GatewayExpose),
    /// An Ingress per tenant.
    Ingress(IngressExpose),
}

/// Settings of `--expose gateway`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayExpose {
    /// Hostname of each tenant.
    pub hostname: Template,
    /// The Gateway the routes attach to.
    pub parent: GatewayParent,
    /// Whether the Gateway's listener terminates TLS (`https://` URLs).
    pub https: bool,
}

/// Settings of `--expose ingress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressExpose {
    /// Hostname of each tenant.
    pub hostname: Template,
    /// IngressClass (`None`: the cluster's default).
    pub class: Option<String>,
    /// Name of the TLS Secret in the tenant namespace (`None`: no TLS).
    pub tls_secret: Option<Template>,
    /// Annotations of every Ingress (e.g. cert-manager's issuer).
    pub annotations: BTreeMap<String, String>,
}

/// A Gateway reference: `namespace/name[/sectionName]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayParent {
    /// Namespace of the Gateway.
    pub namespace: String,
    /// Name of the Gateway.
    pub name: String,
    /// Listener of the Gateway (`None`: every listener that accepts the route).
    pub section: Option<String>,
}

/// A name with `{tenant}` placeholders, checked to render a valid DNS name for every tenant id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    /// A hostname template: must contain `{tenant}` (so each tenant's hostname is its own) and
    /// render a lowercase DNS name with at least two labels, no wildcard and no IP address.
    pub fn hostname(s: &str) -> Result<Self, ExposeConfigError> {
        let t = Self(s.to_string());
        if !s.contains(TENANT_PLACEHOLDER) {
            return Err(refused(
                "--expose-hostname",
                s,
                "must contain {tenant}, e.g. {tenant}.chat.example.com",
            ));
        }
        let ok = |h: &str| {
            dns_subdomain(h)
                && h.contains('.')
                && !h
                    .rsplit('.')
                    .next()
                    .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        };
        if !t.samples().iter().all(|h| ok(h)) {
            return Err(refused(
                "--expose-hostname",
                s,
                "must give a lowercase DNS name (labels of at most 63 letters, digits or '-', \
                 at least two labels, no wildcard, not an IP) for every tenant id of up to 40 characters",
            ));
        }
        Ok(t)
    }

    /// An object-name template (`{tenant}` optional): must render a DNS-1123 subdomain.
    pub fn object_name(flag: &str, s: &str) -> Result<Self, ExposeConfigError> {
        let t = Self(s.to_string());
        if !t.samples().iter().all(|n| dns_subdomain(n)) {
            return Err(refused(
                flag,
                s,
                "must give a DNS-1123 name (lowercase letters, digits, '-' and '.') for every tenant id",
            ));
        }
        Ok(t)
    }

    /// The template with `{tenant}` replaced by `tenant`.
    pub fn render(&self, tenant: &TenantId) -> String {
        self.0.replace(TENANT_PLACEHOLDER, tenant.as_str())
    }

    /// Renderings for the shortest and the longest tenant id.
    fn samples(&self) -> [String; 2] {
        let long = "a".repeat(MAX_TENANT_ID_LEN);
        [
            self.0.replace(TENANT_PLACEHOLDER, "a"),
            self.0.replace(TENANT_PLACEHOLDER, &long),
        ]
    }
}

impl GatewayParent {
    /// Parses `namespace/name[/sectionName]`.
    pub fn parse(s: &str) -> Result<Self, ExposeConfigError> {
        let parts: Vec<&str> = s.split('/').collect();
        let (namespace, name, section) = match parts[..] {
            [ns, name] => (ns, name, None),
            [ns, name, section] => (ns, name, Some(section)),
            _ => ("", "", None),
        };
        if !dns_label(namespace) || !dns_subdomain(name) || !section.is_none_or(dns_subdomain) {
            return Err(refused(
                "--gateway-parent",
                s,
                "is not NAMESPACE/NAME[/SECTION] (DNS names, SECTION a listener of the Gateway)",
            ));
        }
        Ok(Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            section: section.map(str::to_string),
        })
    }
}

impl Expose {
    /// The exposure the flags ask for; refuses missing, malformed or inapplicable flags.
    pub fn from_args(args: &ExposeArgs) -> Result<Self, ExposeConfigError> {
        let hostname = || match &args.hostname {
            Some(h) => Template::hostname(h),
            None => Err(ExposeConfigError(format!(
                "--expose {} needs --expose-hostname (a template with {TENANT_PLACEHOLDER})",
                mode_name(args.mode)
            ))),
        };
        match args.mode {
            ExposeMode::None => {
                only_for(args, ExposeMode::None)?;
                Ok(Self::None)
            }
            ExposeMode::Gateway => {
                only_for(args, ExposeMode::Gateway)?;
                let parent = args.gateway_parent.as_deref().ok_or_else(|| {
                    ExposeConfigError(
                        "--expose gateway needs --gateway-parent NAMESPACE/NAME[/SECTION]".into(),
                    )
                })?;
                Ok(Self::Gateway(GatewayExpose {
                    hostname: hostname()?,
                    parent: GatewayParent::parse(parent)?,
                    https: args.gateway_https,
                }))
            }
            ExposeMode::Ingress => {
                only_for(args, ExposeMode::Ingress)?;
                Ok(Self::Ingress(ingress_settings(args, hostname()?)?))
            }
        }
    }
}

fn ingress_settings(
    args: &ExposeArgs,
    hostname: Template,
) -> Result<IngressExpose, ExposeConfigError> {
    if let Some(class) = args.ingress_class.as_deref().filter(|c| !dns_subdomain(c)) {
        return Err(refused(
            "--ingress-class",
            class,
            "is not an IngressClass name",
        ));
    }
    let tls_secret = args
        .ingress_tls_secret
        .as_deref()
        .map(|s| Template::object_name("--ingress-tls-secret", s))
        .transpose()?;
    let mut annotations = BTreeMap::new();
    for kv in &args.ingress_annotation {
        if !annotation_key(&kv.key) {
            return Err(refused(
                "--ingress-annotation",
                &kv.key,
                "is not an annotation key ([prefix/]name, name at most 63 characters)",
            ));
        }
        annotations.insert(kv.key.clone(), kv.value.clone());
    }
    Ok(IngressExpose {
        hostname,
        class: args.ingress_class.clone(),
        tls_secret,
        annotations,
    })
}

/// Refuses flags that have no effect in `mode` (a likely mistake, e.g. a forgotten --expose).
fn only_for(args: &ExposeArgs, mode: ExposeMode) -> Result<(), ExposeConfigError> {
    let given = [
        (
            "--expose-hostname",
            args.hostname.is_some(),
            mode != ExposeMode::None,
        ),
        (
            "--gateway-parent",
            args.gateway_parent.is_some(),
            mode == ExposeMode::Gateway,
        ),
        (
            "--gateway-https",
            args.gateway_https,
            mode == ExposeMode::Gateway,
        ),
        (
            "--ingress-class",
            args.ingress_class.is_some(),
            mode == ExposeMode::Ingress,
        ),
        (
            "--ingress-tls-secret",
            args.ingress_tls_secret.is_some(),
            mode == ExposeMode::Ingress,
        ),
        (
            "--ingress-annotation",
            !args.ingress_annotation.is_empty(),
            mode == ExposeMode::Ingress,
        ),
    ];
    match given.iter().find(|(_, set, applies)| *set && !applies) {
        Some((flag, ..)) => Err(ExposeConfigError(format!(
            "{flag} has no effect with --expose {}",
            mode_name(mode)
        ))),
        None => Ok(()),
    }
}

fn mode_name(mode: ExposeMode) -> &'static str {
    match mode {
        ExposeMode::None => "none",
        ExposeMode::Gateway => "gateway",
        ExposeMode::Ingress => "ingress",
    }
}

fn refused(flag: &str, value: &str, rule: &str) -> ExposeConfigError {
    let value: String = value.chars().take(120).collect();
    ExposeConfigError(format!("{flag} {value:?} {rule}"))
}

/// A DNS-1123 label: 1–63 lowercase letters, digits or '-', alphanumeric at both ends.
fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// An annotation key: `[prefix/]name`, prefix a DNS subdomain, name 1–63 characters of
/// letters, digits, '-', '_', '.', alphanumeric at both ends.
fn annotation_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    prefix.is_none_or(dns_subdomain)
        && (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && edge(name.chars().next())
        && edge(name.chars().last())
}

/// The Gateway API `HTTPRoute` resource (gateway.networking.k8s.io/v1).
pub fn http_route_resource() -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

/// The kinds of object that expose a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExposeKind {
    /// gateway.networking.k8s.io/v1 HTTPRoute.
    HttpRoute,
    /// networking.k8s.io/v1 Ingress.
    Ingress,
}

/// The object that exposes a tenant; once applied, as the API server holds it.
#[derive(Debug, Clone)]
pub enum ExposeObject {
    /// A Gateway API HTTPRoute.
    HttpRoute(Box<DynamicObject>),
    /// An Ingress.
    Ingress(Box<Ingress>),
}

/// What exposes one tenant's API.
#[derive(Debug, Clone)]
pub struct Exposure {
    /// The object to apply and the tenant's external URL (`None`: in-cluster only).
    pub exposed: Option<(ExposeObject, String)>,
    /// Kinds of which the operator's object (named like the Service) must not exist: removed
    /// when exposure is turned off or switched to the other kind.
    pub stale: Vec<ExposeKind>,
}

/// The exposure of `tenant` under `cfg`: none when the operator exposes nothing or the Tenant
/// opts out (`spec.api.expose: false`).
pub fn exposure(tenant: &Tenant, names: &Names, cfg: &Expose) -> Exposure {
    let opted_out = tenant.spec.api.expose == Some(false);
    let exposed = match cfg {
        _ if opted_out => None,
        Expose::None => None,
        Expose::Gateway(g) => Some(http_route(tenant, names, g)),
        Expose::Ingress(i) => Some(ingress(tenant, names, i)),
    };
    let kept = exposed.as_ref().map(|(o, _)| match o {
        ExposeObject::HttpRoute(_) => ExposeKind::HttpRoute,
        ExposeObject::Ingress(_) => ExposeKind::Ingress,
    });
    Exposure {
        exposed,
        stale: [ExposeKind::HttpRoute, ExposeKind::Ingress]
            .into_iter()
            .filter(|k| Some(*k) != kept)
            .collect(),
    }
}

/// Why the parent Gateway refuses `route`, as its controller reports in the route's status
/// (a parent with `Accepted=False`): `None` while accepted or not yet looked at.
pub fn route_refusal(route: &DynamicObject) -> Option<String> {
    let parents = route.data.get("status")?.get("parents")?.as_array()?;
    let refused = parents
        .iter()
        .flat_map(|p| p["conditions"].as_array().into_iter().flatten())
        .find(|c| c["type"] == "Accepted" && c["status"] == "False")?;
    let field = |k: &str| refused[k].as_str().unwrap_or_default().to_string();
    Some(format!("{}: {}", field("reason"), field("message")))
}

fn url(https: bool, host: &str) -> String {
    format!("{}://{host}", if https { "https" } else { "http" })
}

/// The tenant's HTTPRoute: its hostname on the parent Gateway, every path to its Service.
pub fn http_route(tenant: &Tenant, names: &Names, g: &GatewayExpose) -> (ExposeObject, String) {
    let host = g.hostname.render(&names.tenant);
    let mut parent = json!({
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "namespace": g.parent.namespace,
        "name": g.parent.name,
    });
    if let Some(section) = &g.parent.section {
        parent["sectionName"] = json!(section);
    }
    let resource = http_route_resource();
    let mut route = DynamicObject::new(&names.api, &resource).data(json!({
        "spec": {
            "parentRefs": [parent],
            "hostnames": [host],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"name": names.api, "port": 80}],
            }],
        }
    }));
    route.metadata = meta(tenant, names, &names.api, Scope::Tenant);
    let url = url(g.https, &host);
    (ExposeObject::HttpRoute(Box::new(route)), url)
}

/// The tenant's Ingress: its hostname (with TLS when a Secret name is set), every path to its
/// Service's port 80.
pub fn ingress(tenant: &Tenant, names: &Names, i: &IngressExpose) -> (ExposeObject, String) {
    let host = i.hostname.render(&names.tenant);
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: names.api.clone(),
            port: Some(ServiceBackendPort {
                number: Some(80),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let mut metadata = meta(tenant, names, &names.api, Scope::Tenant);
    metadata.annotations = (!i.annotations.is_empty()).then(|| i.annotations.clone());
    let ingress = Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: i.class.clone(),
            rules: Some(vec![IngressRule {
                host: Some(host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend,
                    }],
                }),
            }]),
            tls: i.tls_secret.as_ref().map(|s| {
                vec![IngressTLS {
                    hosts: Some(vec![host.clone()]),
                    secret_name: Some(s.render(&names.tenant)),
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let url = url(i.tls_secret.is_some(), &host);
    (ExposeObject::Ingress(Box::new(ingress)), url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::KeyValue;

    fn args(mode: ExposeMode) -> ExposeArgs {
        ExposeArgs {
            mode,
            hostname: Some("{tenant}.chat.example.com".into()),
            gateway_parent: None,
            gateway_https: false,
            ingress_class: None,
            ingress_tls_secret: None,
            ingress_annotation: vec![],
        }
    }

    fn names() -> Names {
        Names::new(&TenantId::parse("acme").expect("id"), "tenant-")
    }

    fn gateway() -> Expose {
        Expose::from_args(&ExposeArgs {
            gateway_parent: Some("infra/public/https".into()),
            gateway_https: true,
            ..args(ExposeMode::Gateway)
        })
        .expect("valid")
    }

    fn ingress_cfg() -> Expose {
        Expose::from_args(&ExposeArgs {
            ingress_class: Some("nginx".into()),
            ingress_tls_secret: Some("{tenant}-tls".into()),
            ingress_annotation: vec![
                KeyValue::parse("cert-manager.io/cluster-issuer=letsencrypt").expect("kv"),
            ],
            ..args(ExposeMode::Ingress)
        })
        .expect("valid")
    }

    #[test]
    fn hostname_templates_must_name_each_tenant_with_a_valid_dns_name() {
        let t = Template::hostname("chat-{tenant}.example.com").expect("valid");
        let id = TenantId::parse("globex").expect("id");
        assert_eq!(t.render(&id), "chat-globex.example.com");
        for (bad, says) in [
            ("chat.example.com", "must contain {tenant}"),
            ("*.{tenant}.example.com", "DNS name"),
            ("{tenant}", "at least two labels"),
            ("{tenant}.Example.com", "lowercase"),
            ("{tenant}.10.0.0.1", "not an IP"),
            (
                "{tenant}-a-very-long-prefix-that-overflows-the-label.example.com",
                "63",
            ),
        ] {
            let err = Template::hostname(bad).expect_err(bad).to_string();
            assert!(
                err.contains(says) && err.contains("--expose-hostname"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn gateway_parents_parse_with_an_optional_section() {
        let p = GatewayParent::parse("infra/public/https").expect("valid");
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str(), p.section.as_deref()),
            ("infra", "public", Some("https"))
        );
        assert_eq!(
            GatewayParent::parse("infra/public").expect("valid").section,
            None
        );
        for bad in [
            "public",
            "infra/",
            "/public",
            "a/b/c/d",
            "Infra/public",
            "infra/public/",
        ] {
            let err = GatewayParent::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("NAMESPACE/NAME[/SECTION]"), "{bad}: {err}");
        }
    }

    #[test]
    fn flags_are_refused_when_missing_malformed_or_inapplicable() {
        let cases = [
            (
                ExposeArgs {
                    hostname: None,
                    ..args(ExposeMode::Ingress)
                },
                "--expose ingress needs --expose-hostname",
            ),
            (args(ExposeMode::Gateway), "needs --gateway-parent"),
            (
                args(ExposeMode::None),
                "--expose-hostname has no effect with --expose none",
            ),
            (
                ExposeArgs {
                    ingress_class: Some("nginx".into()),
                    gateway_parent: Some("a/b".into()),
                    ..args(ExposeMode::Gateway)
                },
                "--ingress-class has no effect with --expose gateway",
            ),
            (
                ExposeArgs {
                    gateway_https: true,
                    ..args(ExposeMode::Ingress)
                },
                "--gateway-https has no effect",
            ),
            (
                ExposeArgs {
                    ingress_tls_secret: Some("{tenant}_tls".into()),
                    ..args(ExposeMode::Ingress)
                },
                "--ingress-tls-secret \"{tenant}_tls\" must give a DNS-1123 name",
            ),
            (
                ExposeArgs {
                    ingress_annotation: vec![KeyValue::parse("bad key=v").expect("kv")],
                    ..args(ExposeMode::Ingress)
                },
                "--ingress-annotation \"bad key\" is not an annotation key",
            ),
        ];
        for (a, says) in cases {
            let err = Expose::from_args(&a).expect_err(says).to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
        let none = ExposeArgs {
            hostname: None,
            ..args(ExposeMode::None)
        };
        assert_eq!(Expose::from_args(&none), Ok(Expose::None));
    }

    #[test]
    fn the_route_attaches_the_tenant_hostname_to_the_parent_gateway() {
        let t = Tenant::test();
        let e = exposure(&t, &names(), &gateway());
        assert_eq!(e.stale, [ExposeKind::Ingress]);
        let Some((ExposeObject::HttpRoute(route), url)) = e.exposed else {
            panic!("no route: {e:?}");
        };
        assert_eq!(url, "https://acme.chat.example.com");
        let v = serde_json::to_value(&route).expect("json");
        assert_eq!(v["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(v["kind"], "HTTPRoute");
        assert_eq!(v["metadata"]["namespace"], "tenant-acme");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(v["metadata"]["labels"]["tenantry.dev/tenant"], "acme");
        assert_eq!(
            v["spec"]["parentRefs"],
            json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                    "namespace": "infra", "name": "public", "sectionName": "https"}])
        );
        assert_eq!(v["spec"]["hostnames"], json!(["acme.chat.example.com"]));
        assert_eq!(
            v["spec"]["rules"][0]["backendRefs"],
            json!([{"name": "acme-api", "port": 80}])
        );
    }

    #[test]
    fn the_ingress_routes_the_tenant_hostname_with_tls_and_annotations() {
        let t = Tenant::test();
        let e = exposure(&t, &names(), &ingress_cfg());
        assert_eq!(e.stale, [ExposeKind::HttpRoute]);
        let Some((ExposeObject::Ingress(ing), url)) = e.exposed else {
            panic!("no ingress: {e:?}");
        };
        assert_eq!(url, "https://acme.chat.example.com");
        let annotations = ing.metadata.annotations.clone().expect("annotations");
        assert_eq!(annotations["cert-manager.io/cluster-issuer"], "letsencrypt");
        let spec = ing.spec.expect("spec");
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let tls = &spec.tls.expect("tls")[0];
        assert_eq!(tls.secret_name.as_deref(), Some("acme-tls"));
        assert_eq!(tls.hosts, Some(vec!["acme.chat.example.com".to_string()]));
        let rule = &spec.rules.expect("rules")[0];
        assert_eq!(rule.host.as_deref(), Some("acme.chat.example.com"));
        let path = &rule.http.as_ref().expect("http").paths[0];
        let svc = path.backend.service.as_ref().expect("service");
        assert_eq!(
            (svc.name.as_str(), path.path_type.as_str()),
            ("acme-api", "Prefix")
        );
        assert_eq!(svc.port.as_ref().and_then(|p| p.number), Some(80));
    }

    #[test]
    fn a_route_the_gateway_refuses_says_why() {
        let (ExposeObject::HttpRoute(mut route), _) = http_route(
            &Tenant::test(),
            &names(),
            &match gateway() {
                Expose::Gateway(g) => g,
                other => panic!("{other:?}"),
            },
        ) else {
            panic!("not a route");
        };
        assert_eq!(route_refusal(&route), None, "no status yet");
        let parent = |status: &str| {
            json!({"parents": [{"controllerName": "example.com/gw", "parentRef": {"name": "public"},
                "conditions": [{"type": "Accepted", "status": status, "reason": "NotAllowedByListeners",
                                "message": "no listener admits this namespace"}]}]})
        };
        route.data["status"] = parent("True");
        assert_eq!(route_refusal(&route), None);
        route.data["status"] = parent("False");
        assert_eq!(
            route_refusal(&route).as_deref(),
            Some("NotAllowedByListeners: no listener admits this namespace")
        );
    }

    #[test]
    fn without_tls_the_url_is_http() {
        let cfg = Expose::from_args(&args(ExposeMode::Ingress)).expect("valid");
        let e = exposure(&Tenant::test(), &names(), &cfg);
        let (ExposeObject::Ingress(ing), url) = e.exposed.expect("exposed") else {
            panic!("not an ingress");
        };
        assert_eq!(url, "http://acme.chat.example.com");
        assert!(ing.spec.expect("spec").tls.is_none());
        assert!(ing.metadata.annotations.is_none());
    }

    #[test]
    fn a_tenant_that_opts_out_or_an_operator_that_exposes_nothing_removes_both_kinds() {
        let mut t = Tenant::test();
        t.spec.api.expose = Some(false);
        for (tenant, cfg) in [(&t, gateway()), (&Tenant::test(), Expose::None)] {
            let e = exposure(tenant, &names(), &cfg);
            assert!(e.exposed.is_none());
            assert_eq!(e.stale, [ExposeKind::HttpRoute, ExposeKind::Ingress]);
        }
        t.spec.api.expose = Some(true);
        assert!(exposure(&t, &names(), &gateway()).exposed.is_some());
    }
}
