//! Exposure of tenants' chat APIs (`--expose`) against the real test API server, which serves
//! the Gateway API CRDs (`scripts/kube-test-env.sh` installs them): HTTPRoutes and Ingresses
//! as the API server stores them, `status.endpoint`, opting out and turning exposure off
//! (both remove the object), switching kinds, and a cluster without the Gateway API.
mod common;

use std::process::Command;

use common::cluster::{Cluster, eventually, unique};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const GATEWAY: [&str; 7] = [
    "--expose",
    "gateway",
    "--expose-hostname",
    "{tenant}.chat.example.test",
    "--gateway-parent",
    "infra/public/https",
    "--gateway-https",
];

fn routes(client: &Client, tenant: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    };
    Api::namespaced_with(client.clone(), &format!("tenant-{tenant}"), &ar)
}

fn ingresses(client: &Client, tenant: &str) -> Api<Ingress> {
    Api::namespaced(client.clone(), &format!("tenant-{tenant}"))
}

/// Creates Tenant `name` with `spec`; its namespace goes too when the test ends.
async fn create(cluster: &Cluster, name: &str, spec: Value) {
    cluster.remove_on_drop("namespace", None, &format!("tenant-{name}"));
    cluster.create_tenant(name, spec).await;
}

/// Waits until Tenant `name` reports `endpoint`.
async fn wait_endpoint(cluster: &Cluster, name: &str, endpoint: &str) {
    eventually(90, &format!("{name} endpoint {endpoint}"), || async {
        let t = cluster.tenants.get(name).await.ok()?;
        (t.status?.endpoint.as_deref() == Some(endpoint)).then_some(())
    })
    .await;
}

/// Waits until `api` holds `name` and returns it as stored.
async fn wait_present<K>(api: &Api<K>, name: &str) -> K
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(60, &format!("{name} present"), || async {
        api.get_opt(name).await.ok().flatten()
    })
    .await
}

/// Waits until `api` no longer holds `name`.
async fn wait_absent<K>(api: &Api<K>, name: &str)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(60, &format!("{name} removed"), || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// Writes the route status a gateway controller would (`Accepted` = `accepted` on the one
/// parent); returns it as the API server stored it.
async fn write_route_status(api: &Api<DynamicObject>, name: &str, accepted: &str) -> String {
    let status = json!({"status": {"parents": [{
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                      "namespace": "infra", "name": "public", "sectionName": "https"},
        "controllerName": "example.com/gateway-controller",
        "conditions": [{"type": "Accepted", "status": accepted,
            "reason": if accepted == "True" { "Accepted" } else { "NotAllowedByListeners" },
            "message": if accepted == "True" { "accepted" } else { "no listener admits this namespace" },
            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }]}});
    let stored = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("write route status");
    stored.data["status"].to_string()
}

fn in_cluster(name: &str) -> String {
    format!("http://{name}-api.tenant-{name}.svc:80")
}

/// Labels, controller owner and field manager every exposing object carries.
fn assert_managed(meta: &kube::api::ObjectMeta, tenant: &str) {
    let labels = meta.labels.clone().unwrap_or_default();
    assert_eq!(labels["tenantry.dev/tenant"], tenant);
    assert_eq!(labels["app.kubernetes.io/managed-by"], "tenantry");
    let owner = &meta.owner_references.clone().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Tenant", tenant)
    );
    assert_eq!(owner.controller, Some(true));
    let managers: Vec<_> = meta
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (m.manager.clone(), m.operation.clone()))
        .collect();
    assert!(
        managers.contains(&(Some("tenantry".into()), Some("Apply".into()))),
        "{managers:?}"
    );
}

#[tokio::test]
async fn gateway_mode_routes_each_tenant_by_its_own_hostname_and_opting_out_removes_it() {
    let cluster = Cluster::new().await;
    let (a, b) = (unique("gw"), unique("gwout"));
    let _operator = cluster.operator("expose-gw", &GATEWAY);
    create(&cluster, &a, json!({"tier": "pro"})).await;
    create(
        &cluster,
        &b,
        json!({"tier": "pro", "api": {"expose": false}}),
    )
    .await;

    let api = routes(&cluster.client, &a);
    let route = wait_present(&api, &format!("{a}-api")).await;
    assert_managed(&route.metadata, &a);
    let spec = &route.data["spec"];
    assert_eq!(
        spec["parentRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                "namespace": "infra", "name": "public", "sectionName": "https"}])
    );
    assert_eq!(spec["hostnames"], json!([format!("{a}.chat.example.test")]));
    let rules = spec["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1, "{spec}");
    assert_eq!(
        rules[0]["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/"}}])
    );
    // As stored: the API server filled in the Gateway API defaults of the backend.
    assert_eq!(
        rules[0]["backendRefs"],
        json!([{"group": "", "kind": "Service", "name": format!("{a}-api"), "port": 80, "weight": 1}])
    );
    wait_endpoint(&cluster, &a, &format!("https://{a}.chat.example.test")).await;

    // A Gateway that refuses the route (as its controller reports in the route's status)
    // makes the API not ready, with the Gateway's reason; accepting it clears that.
    let stored = write_route_status(&api, &format!("{a}-api"), "False").await;
    assert!(stored.contains("NotAllowedByListeners"), "{stored}");
    let t = cluster
        .wait_reason(&a, "ApiReady", "False", "RouteNotAccepted")
        .await;
    let api_ready = t
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "ApiReady")
        .expect("ApiReady");
    assert!(
        api_ready
            .message
            .contains("NotAllowedByListeners: no listener admits this namespace"),
        "{}",
        api_ready.message
    );
    write_route_status(&api, &format!("{a}-api"), "True").await;
    cluster
        .wait_reason(&a, "ApiReady", "False", "Progressing")
        .await;

    // The opted-out tenant has no route and reports its in-cluster URL.
    wait_endpoint(&cluster, &b, &in_cluster(&b)).await;
    assert!(
        routes(&cluster.client, &b)
            .get_opt(&format!("{b}-api"))
            .await
            .expect("get")
            .is_none()
    );

    // A deleted route is put back (the operator watches HTTPRoutes).
    let uid = route.uid().expect("uid");
    api.delete(&format!("{a}-api"), &DeleteParams::default())
        .await
        .expect("delete");
    eventually(60, "route re-created", || async {
        let r = api.get_opt(&format!("{a}-api")).await.ok()??;
        (r.uid() != Some(uid.clone())).then_some(())
    })
    .await;

    // Opting out removes the route; the endpoint falls back to the in-cluster URL.
    let patch = json!({"spec": {"api": {"expose": false}}});
    cluster
        .tenants
        .patch(&a, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("opt out");
    wait_absent(&api, &format!("{a}-api")).await;
    wait_endpoint(&cluster, &a, &in_cluster(&a)).await;
}

#[tokio::test]
async fn ingress_mode_then_gateway_then_none_each_leave_only_their_own_object() {
    let cluster = Cluster::new().await;
    let name = unique("ing");
    let object = format!("{name}-api");
    let operator = cluster.operator(
        "expose-ing",
        &[
            "--expose",
            "ingress",
            "--expose-hostname",
            "chat-{tenant}.example.test",
            "--ingress-class",
            "nginx",
            "--ingress-tls-secret",
            "{tenant}-tls",
            "--ingress-annotation",
            "cert-manager.io/cluster-issuer=letsencrypt",
            "--ingress-annotation",
            "nginx.ingress.kubernetes.io/proxy-read-timeout=3600",
        ],
    );
    create(&cluster, &name, json!({"tier": "pro"})).await;
    let host = format!("chat-{name}.example.test");

    let ing_api = ingresses(&cluster.client, &name);
    let ing = wait_present(&ing_api, &object).await;
    assert_managed(&ing.metadata, &name);
    let annotations = ing.metadata.annotations.clone().expect("annotations");
    assert_eq!(annotations["cert-manager.io/cluster-issuer"], "letsencrypt");
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"],
        "3600"
    );
    let spec = serde_json::to_value(ing.spec.expect("spec")).expect("json");
    assert_eq!(
        spec,
        json!({
            "ingressClassName": "nginx",
            "tls": [{"hosts": [host], "secretName": format!("{name}-tls")}],
            "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": object, "port": {"number": 80}}},
            }]}}],
        })
    );
    wait_endpoint(&cluster, &name, &format!("https://{host}")).await;
    operator.stop();

    // Switching to a Gateway: the Ingress goes, the route comes (http: no --gateway-https).
    let operator = cluster.operator("expose-ing", &GATEWAY[..6]);
    let route_api = routes(&cluster.client, &name);
    wait_present(&route_api, &object).await;
    wait_absent(&ing_api, &object).await;
    wait_endpoint(&cluster, &name, &format!("http://{name}.chat.example.test")).await;
    operator.stop();

    // Exposure turned off: the route goes too.
    let _operator = cluster.operator("expose-ing", &[]);
    wait_absent(&route_api, &object).await;
    wait_endpoint(&cluster, &name, &in_cluster(&name)).await;
}

/// Puts the Gateway API CRDs back when the test ends, however it ends.
struct RestoreGatewayApi;

impl RestoreGatewayApi {
    fn now() {
        let out = Command::new(common::root().join("scripts/kube-test-env.sh"))
            .arg("start")
            .output()
            .expect("run kube-test-env.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for RestoreGatewayApi {
    fn drop(&mut self) {
        Self::now();
    }
}

#[tokio::test]
async fn a_cluster_without_the_gateway_api_is_reported_and_recovers_once_installed() {
    let cluster = Cluster::new().await;
    let _restore = RestoreGatewayApi;
    cluster.env.kubectl(
        &[
            "delete",
            "crd",
            "httproutes.gateway.networking.k8s.io",
            "--wait=true",
            "--timeout=60s",
        ],
        None,
    );
    let name = unique("nogw");
    let operator = cluster.operator("expose-nogw", &GATEWAY);
    create(&cluster, &name, json!({"tier": "pro"})).await;

    let t = cluster
        .wait_reason(&name, "ApiReady", "False", "GatewayApiMissing")
        .await;
    let status = t.status.expect("status");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "GatewayApiMissing")
    );
    assert!(
        ready.message.contains("install the Gateway API CRDs"),
        "{}",
        ready.message
    );
    assert_eq!(status.endpoint.as_deref(), Some(in_cluster(&name).as_str()));
    // The rest of the tenant was still applied.
    assert_eq!(
        status.namespace.as_deref(),
        Some(format!("tenant-{name}").as_str())
    );
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    eventually(30, "GatewayApiMissing Warning Event", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("GatewayApiMissing")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
            })
            .then_some(())
    })
    .await;
    // Retried with backoff, not in a hot loop.
    let failures = operator.log_count("reconcile failed");
    assert!(
        failures < 10,
        "{failures} failed reconciles: {}",
        operator.logs()
    );

    RestoreGatewayApi::now();
    wait_present(&routes(&cluster.client, &name), &format!("{name}-api")).await;
    wait_endpoint(
        &cluster,
        &name,
        &format!("https://{name}.chat.example.test"),
    )
    .await;
    cluster
        .wait_reason(&name, "ApiReady", "False", "Progressing")
        .await;
}

#[test]
fn the_operator_refuses_exposure_flags_that_do_not_fit_together() {
    for (args, says) in [
        (
            &[
                "--expose",
                "gateway",
                "--expose-hostname",
                "{tenant}.x.test",
            ][..],
            "--expose gateway needs --gateway-parent",
        ),
        (
            &["--expose", "ingress", "--expose-hostname", "chat.x.test"][..],
            "must contain {tenant}",
        ),
        (
            &["--ingress-class", "nginx"][..],
            "--ingress-class has no effect with --expose none",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .arg("operator")
            .args(args)
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .expect("run the operator");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
