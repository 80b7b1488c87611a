//! The Helm chart (`charts/tenantry`) with the real tools: `helm` (built by
//! `scripts/kube-test-env.sh` from the Go module proxy), and the test kube-apiserver. The chart
//! is linted, rendered and validated by the API server (server-side dry run, so every object —
//! QuotaTiers included — is checked against the Kubernetes and CRD schemas), installed, and
//! the operator binary is run exactly as the chart's Deployment would run it (its args, env and
//! ServiceAccount) to reconcile a sample Tenant from `config/samples/`.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use common::cluster::{Cluster, KubeEnv, Operator, eventually, unique};
use common::root;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{EnvVar, Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tenantry::crd::Tenant;
use tenantry::domain::TenantId;

/// Release names of this suite start with this (leftovers of a crashed run are removed).
const RELEASE_PREFIX: &str = "tenantry-ct";
/// Tenant names of this suite start with this.
const TENANT_PREFIX: &str = "chart-";

fn chart() -> PathBuf {
    root().join("charts/tenantry")
}

fn helm_bin(env: &KubeEnv) -> PathBuf {
    let helm = env.bin.join("helm");
    assert!(
        helm.exists(),
        "{} missing: run scripts/kube-test-env.sh build",
        helm.display()
    );
    helm
}

/// Runs helm (against the test API server's admin kubeconfig).
fn helm(env: &KubeEnv, args: &[&str]) -> Output {
    let home = std::env::temp_dir().join("tenantry-chart-test-helm");
    Command::new(helm_bin(env))
        .args(args)
        .env("KUBECONFIG", &env.kubeconfig)
        // Keep helm's cache/config/data out of the user's home.
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn helm_ok(env: &KubeEnv, args: &[&str]) -> String {
    let out = helm(env, args);
    assert!(out.status.success(), "helm {args:?} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .expect("valid YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// `helm template` of the chart with `--set`-style values.
fn template(env: &KubeEnv, namespace: &str, sets: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        "tenantry",
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        namespace,
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm_ok(env, &args)
}

#[tokio::test]
async fn chart_lints_and_its_schema_refuses_bad_values() {
    let env = KubeEnv::get();
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let out = helm(env, &["lint", "--strict", chart]);
    assert!(out.status.success(), "helm lint: {}", text(&out));
    assert!(text(&out).contains("0 chart(s) failed"), "{}", text(&out));

    let cases = [
        (
            "a typo in a top-level key",
            "imagee.tag=1.0",
            "additional properties 'imagee'",
        ),
        (
            "a typo in a nested key",
            "image.tagg=1.0",
            "additional properties 'tagg'",
        ),
        ("a wrong type", "replicaCount=two", "/replicaCount"),
        (
            "a bad enum",
            "image.pullPolicy=Sometimes",
            "/image/pullPolicy",
        ),
        (
            "an env var the operator sets",
            "apiEnv.RUST_LOG=debug",
            "/apiEnv/RUST_LOG",
        ),
        (
            "a comma in an api env value",
            "apiEnv.FOO=a\\,b",
            "/apiEnv/FOO",
        ),
        (
            "a negative quota",
            "quotaTiers.tiers.pro.dailyTokens=-1",
            "dailyTokens",
        ),
        (
            "a bad duration",
            "leaderElection.leaseDuration=soon",
            "leaseDuration",
        ),
    ];
    for (what, set, needle) in cases {
        let out = helm(env, &["lint", chart, "--set", set]);
        let msg = text(&out);
        assert!(
            !out.status.success(),
            "{what} ({set}) passed helm lint: {msg}"
        );
        assert!(
            msg.contains("values don't meet the specifications of the schema")
                && msg.contains(needle),
            "{what} ({set}): not refused by values.schema.json for {needle:?}: {msg}"
        );
        // install/template validate the same schema.
        let out = helm(env, &["template", "x", chart, "--set", set]);
        assert!(!out.status.success(), "{what}: helm template accepted it");
    }
}

#[tokio::test]
async fn chart_crds_and_rbac_are_those_of_the_repo() {
    let env = KubeEnv::get();
    let chart_crds = std::fs::read(chart().join("crds/tenantry.yaml")).expect("chart CRDs");
    let repo_crds = std::fs::read(root().join("crds/tenantry.yaml")).expect("repo CRDs");
    assert!(
        chart_crds == repo_crds,
        "charts/tenantry/crds/tenantry.yaml differs from crds/tenantry.yaml: cp crds/tenantry.yaml charts/tenantry/crds/"
    );
    let crd_files: Vec<_> = std::fs::read_dir(chart().join("crds"))
        .expect("crds dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(crd_files, ["tenantry.yaml"], "only the repo's CRDs");

    let docs = yaml_docs(&template(env, "tenantry-system", &[]));
    let rules_of = |path: &str| {
        let text = std::fs::read_to_string(root().join(path)).expect("rbac file");
        yaml_docs(&text)[0]["rules"].clone()
    };
    let cluster_roles = of_kind(&docs, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1);
    assert_eq!(
        cluster_roles[0]["rules"],
        rules_of("config/rbac/role.yaml"),
        "the chart's ClusterRole must grant exactly config/rbac/role.yaml"
    );
    let roles = of_kind(&docs, "Role");
    assert_eq!(roles.len(), 1);
    assert_eq!(
        roles[0]["rules"],
        rules_of("config/rbac/leader_election_role.yaml"),
        "the chart's Lease Role must grant exactly config/rbac/leader_election_role.yaml"
    );
    assert_eq!(roles[0]["metadata"]["namespace"], "tenantry-system");
    // Both are bound to the chart's ServiceAccount, which the Deployment runs as.
    let sa = of_kind(&docs, "ServiceAccount")[0]["metadata"]["name"].clone();
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        let b = of_kind(&docs, kind)[0];
        assert_eq!(b["subjects"][0]["name"], sa, "{kind}");
        assert_eq!(b["subjects"][0]["namespace"], "tenantry-system", "{kind}");
    }
    let dep = of_kind(&docs, "Deployment")[0];
    assert_eq!(dep["spec"]["template"]["spec"]["serviceAccountName"], sa);

    // The default QuotaTiers are the operator's built-in ones (DESIGN: 50k / 500k / 5M a day).
    let tiers = of_kind(&docs, "QuotaTier");
    assert_eq!(tiers.len(), 3);
    for t in tiers {
        let name = t["metadata"]["name"].as_str().expect("name");
        let builtin = tenantry::crd::builtin_tier(name).expect("a built-in tier name");
        assert_eq!(
            t["spec"],
            serde_json::to_value(&builtin).expect("json"),
            "QuotaTier {name}"
        );
    }
}

/// Metric names the code registers (`registry.register("name", ...)`), with the suffixes
/// Prometheus exposes them under.
fn code_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in ["src/metrics.rs", "src/controller/metrics.rs"] {
        let src = std::fs::read_to_string(root().join(file)).expect("source");
        for part in src.split("register(").skip(1) {
            let name = part
                .trim_start()
                .strip_prefix('"')
                .and_then(|s| s.split('"').next())
                .expect("register(\"name\", ...)");
            for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Metric names in a PromQL expression: identifiers outside label matchers, ranges, strings,
/// `by (...)`/`without (...)` clauses and Grafana variables, minus PromQL's own words.
fn expr_metrics(expr: &str) -> BTreeSet<String> {
    const PROMQL: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "by",
        "without",
        "rate",
        "irate",
        "increase",
        "histogram_quantile",
        "clamp_min",
        "topk",
        "on",
        "ignoring",
        "group_left",
        "and",
        "or",
        "unless",
        "offset",
        "h",
        "m",
        "s",
        "d",
    ];
    let mut cleaned = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_str = false;
    for c in expr.chars() {
        match c {
            '"' => in_str = !in_str,
            _ if in_str => {}
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => cleaned.push(c),
        }
        if c == '{' || c == '[' || c == '"' {
            cleaned.push(' ');
        }
    }
    // Drop the label lists of `by (...)` / `without (...)`.
    let mut out = String::new();
    let mut rest = cleaned.as_str();
    while let Some(i) = rest.find(['b', 'w']) {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let keyword = ["by", "without"]
            .into_iter()
            .find(|k| tail.starts_with(k) && tail[k.len()..].trim_start().starts_with('('));
        let boundary = head
            .chars()
            .last()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        match keyword {
            Some(k) if boundary => {
                let after = tail[k.len()..].trim_start();
                let close = after.find(')').expect("closing parenthesis");
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '$' || c == '.'))
        .filter(|w| !w.is_empty() && !w.starts_with('$'))
        .filter(|w| !w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .filter(|w| !PROMQL.contains(w))
        .map(str::to_string)
        .collect()
}

#[test]
fn dashboard_is_valid_json_and_queries_only_metrics_of_the_code() {
    let text =
        std::fs::read_to_string(chart().join("dashboards/tenantry.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let known = code_metrics();
    assert!(known.contains("llm_requests_total") && known.contains("tenantry_tenants"));

    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"tenant_id"),
        "a tenant_id variable: {vars:?}"
    );

    let mut panels: Vec<&Value> = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "duplicate id: {title}"
        );
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            let metrics = expr_metrics(expr);
            assert!(!metrics.is_empty(), "{title}: no metric in {expr}");
            for m in &metrics {
                assert!(
                    known.contains(m),
                    "{title}: {m} is not a metric of the code ({expr})"
                );
                if m.starts_with("llm_") || m.starts_with("quota_") {
                    assert!(
                        expr.contains("tenant_id=~\"$tenant_id\""),
                        "{title}: not filtered by the tenant_id variable: {expr}"
                    );
                }
            }
            used.extend(metrics);
        }
    }
    for m in [
        "llm_requests_total",
        "llm_request_latency_seconds_bucket",
        "llm_tokens_total",
        "llm_rate_limited_total",
        "tenantry_reconcile_total",
        "tenantry_reconcile_duration_seconds_bucket",
        "tenantry_tenants",
    ] {
        assert!(used.contains(m), "no panel shows {m}");
    }
    // Shipped as a ConfigMap for Grafana's sidecar when enabled.
    let env = KubeEnv::get();
    let docs = yaml_docs(&template(
        env,
        "monitoring",
        &["grafanaDashboard.enabled=true"],
    ));
    let cm = of_kind(&docs, "ConfigMap")[0];
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(cm["data"]["tenantry.json"].as_str().expect("data")).expect("json");
    assert_eq!(shipped, dash);
}

#[tokio::test]
async fn rendered_chart_passes_the_api_servers_validation() {
    let cluster = Cluster::new().await;
    let env = cluster.env;
    let ns = unique("chart-dry");
    let out = env.kubectl_output(&["create", "namespace", &ns]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = tempfile::tempdir().expect("tmp");
    let everything = [
        "qdrant.url=https://qdrant.example:6334",
        "qdrant.apiKeySecret.name=qdrant",
        "qdrant.onDisk=true",
        "qdrant.quantization=scalar",
        "redis.url=redis://redis.example:6379/0",
        "llm.baseUrl=http://vllm.llm:8000/v1",
        "apiEnv.EXTRA=yes",
        "tracing.otlpEndpoint=http://otel.example:4317",
        "grafanaDashboard.enabled=true",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        "networkPolicy.egress[0].ports[0].port=443",
        "extraEnv[0].name=FOO",
        "extraEnv[0].value=bar",
        "imagePullSecrets[0].name=registry",
        "tolerations[0].operator=Exists",
        "replicaCount=3",
        "apiImage.repository=registry.example/tenantry-api",
        "apiImage.tag=1.2.3",
    ];
    let variants: [(&str, &[&str]); 3] = [
        ("defaults", &[]),
        ("everything", &everything),
        (
            "one replica, nothing optional",
            &[
                "replicaCount=1",
                "networkPolicy.enabled=false",
                "quotaTiers.create=false",
            ],
        ),
    ];
    for (what, sets) in variants {
        let rendered = template(env, &ns, sets);
        let docs = yaml_docs(&rendered);
        assert!(!of_kind(&docs, "Deployment").is_empty(), "{what}");
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &rendered).expect("write");
        let out = env.kubectl_output(&[
            "apply",
            "--dry-run=server",
            "-f",
            file.to_str().expect("utf-8"),
        ]);
        assert!(
            out.status.success(),
            "{what}: the API server refused the rendered chart: {}",
            text(&out)
        );
        let applied = text(&out);
        for d in &docs {
            let name = d["metadata"]["name"].as_str().expect("name");
            assert!(
                applied.contains(&format!("/{name} ")),
                "{what}: {name} not validated: {applied}"
            );
        }
    }
    // The GitOps samples are valid too.
    let out = env.kubectl_output(&[
        "apply",
        "--dry-run=server",
        "-k",
        root().join("config/samples").to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "config/samples: {}", text(&out));
    for obj in [
        "quotatier.tenantry.dev/startup",
        "tenant.tenantry.dev/acme",
        "tenant.tenantry.dev/globex",
    ] {
        assert!(text(&out).contains(obj), "{obj}: {}", text(&out));
    }

    // The dry run checks QuotaTiers against the CRD (a rule values.schema.json leaves to it).
    let rendered = template(
        env,
        &ns,
        &[
            "quotaTiers.tiers.pro.replicas.min=9",
            "quotaTiers.tiers.pro.replicas.max=2",
        ],
    );
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, rendered).expect("write");
    let out = env.kubectl_output(&[
        "apply",
        "--dry-run=server",
        "-f",
        file.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success(), "min > max accepted");
    assert!(
        text(&out).contains("replicas.min must not exceed replicas.max"),
        "{}",
        text(&out)
    );

    // ServiceMonitors (their CRD is not installed here): rendered only when enabled; the
    // tenants' one selects the Services the operator creates.
    let docs = yaml_docs(&template(env, &ns, &[]));
    assert!(
        of_kind(&docs, "ServiceMonitor").is_empty(),
        "off by default"
    );
    let docs = yaml_docs(&template(env, &ns, &["serviceMonitor.enabled=true"]));
    let monitors = of_kind(&docs, "ServiceMonitor");
    assert_eq!(monitors.len(), 2);
    let names =
        tenantry::controller::build::Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
    let mut service_labels = tenantry::controller::build::labels(&names);
    service_labels.extend(tenantry::controller::build::api_selector(&names));
    for m in monitors {
        let sel: BTreeMap<String, String> =
            serde_json::from_value(m["spec"]["selector"]["matchLabels"].clone()).expect("labels");
        assert_eq!(m["spec"]["endpoints"][0]["port"], "metrics");
        if m["spec"]["namespaceSelector"]["any"] == true {
            assert!(
                sel.iter().all(|(k, v)| service_labels.get(k) == Some(v)),
                "{sel:?} does not select the tenants' API Services {service_labels:?}"
            );
        }
    }
}

/// The Argo CD health check of `docs/gitops.md` (the Lua under
/// `resource.customizations.health.tenantry.dev_Tenant: |`).
fn health_script() -> String {
    let doc = std::fs::read_to_string(root().join("docs/gitops.md")).expect("docs/gitops.md");
    let key = "resource.customizations.health.tenantry.dev_Tenant: |";
    let start = doc.find(key).expect("the health check in docs/gitops.md") + key.len();
    let block = &doc[start..doc[start..].find("```").expect("end of block") + start];
    let lines: Vec<&str> = block.lines().skip(1).collect();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .expect("a script");
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the health check on objects as Argo CD does (gopher-lua, `obj`); `(status, message)`.
fn argocd_health(env: &KubeEnv, objects: &[Value]) -> Vec<(String, String)> {
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("tmp");
    let script = dir.path().join("health.lua");
    std::fs::write(&script, health_script()).expect("write");
    let mut child = Command::new(env.bin.join("argocd-health"))
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run argocd-health (scripts/kube-test-env.sh build)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&serde_json::to_vec(objects).expect("json"))
        .expect("write objects");
    let out = child.wait_with_output().expect("argocd-health");
    assert!(out.status.success(), "health check failed: {}", text(&out));
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("results");
    results
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap_or_default().to_string(),
                r["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn argocd_health_check_of_the_docs_classifies_tenants() {
    let env = KubeEnv::get();
    let tenant = |spec: Value, generation: i64, ready: Option<(&str, &str, i64)>| {
        let conditions: Vec<Value> = ready
            .into_iter()
            .map(|(status, reason, observed)| {
                json!({"type": "Ready", "status": status, "reason": reason, "message": format!("{reason} message"),
                       "observedGeneration": observed, "lastTransitionTime": "2026-01-01T00:00:00Z"})
            })
            .chain([json!({"type": "SigningKeyReady", "status": "True", "reason": "KeyReady", "message": "", "observedGeneration": generation})])
            .collect();
        json!({"apiVersion": "tenantry.dev/v1alpha1", "kind": "Tenant",
               "metadata": {"name": "acme", "generation": generation},
               "spec": spec, "status": {"conditions": conditions}})
    };
    let pro = json!({"tier": "pro"});
    let cases = [
        (
            "Ready=True",
            tenant(pro.clone(), 2, Some(("True", "Ready", 2))),
            "Healthy",
        ),
        (
            "TierNotFound",
            tenant(pro.clone(), 1, Some(("False", "TierNotFound", 1))),
            "Degraded",
        ),
        (
            "InvalidSpec",
            tenant(pro.clone(), 1, Some(("False", "InvalidSpec", 1))),
            "Degraded",
        ),
        (
            "API not available yet",
            tenant(pro.clone(), 1, Some(("False", "ApiNotReady", 1))),
            "Progressing",
        ),
        (
            "Unknown",
            tenant(pro.clone(), 1, Some(("Unknown", "Reconciling", 1))),
            "Progressing",
        ),
        (
            "a newer generation",
            tenant(pro.clone(), 3, Some(("True", "Ready", 2))),
            "Progressing",
        ),
        (
            "no Ready condition yet",
            tenant(pro.clone(), 1, None),
            "Progressing",
        ),
        (
            "no status at all",
            json!({"apiVersion": "tenantry.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "acme"}, "spec": pro}),
            "Progressing",
        ),
        (
            "suspended",
            tenant(
                json!({"tier": "pro", "suspend": true}),
                1,
                Some(("True", "Ready", 1)),
            ),
            "Suspended",
        ),
    ];
    let objects: Vec<Value> = cases.iter().map(|c| c.1.clone()).collect();
    let results = argocd_health(env, &objects);
    for ((what, _, want), (status, message)) in cases.iter().zip(&results) {
        assert_eq!(status, want, "{what}: {message}");
    }
    assert!(
        results[1].1.contains("TierNotFound"),
        "the reason is shown: {:?}",
        results[1]
    );
}

/// The value of the env var of a container, resolving what a kubelet would resolve.
fn resolve_env(e: &EnvVar, pod_name: &str) -> String {
    if let Some(v) = &e.value {
        return v.clone();
    }
    let field = e
        .value_from
        .as_ref()
        .and_then(|f| f.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    match field {
        Some("metadata.name") => pod_name.to_string(),
        other => panic!("env {} from {other:?}: not resolved by this test", e.name),
    }
}

/// Removes leftovers of crashed runs: this suite's releases and Tenants.
async fn remove_leftovers(env: &KubeEnv, client: &Client) {
    let list: Value =
        serde_json::from_str(&helm_ok(env, &["list", "-A", "-o", "json"])).expect("helm list");
    for r in list.as_array().into_iter().flatten() {
        let (Some(name), Some(ns)) = (r["name"].as_str(), r["namespace"].as_str()) else {
            continue;
        };
        if name.starts_with(RELEASE_PREFIX) {
            let _ = helm(env, &["uninstall", name, "-n", ns]);
        }
    }
    let tenants: Api<Tenant> = Api::all(client.clone());
    for t in tenants.list(&Default::default()).await.expect("list").items {
        let name = t.name_any();
        if name.starts_with(TENANT_PREFIX) {
            let _ = tenants
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
            let _ = tenants.delete(&name, &DeleteParams::default()).await;
        }
    }
}

#[tokio::test]
async fn installed_chart_runs_an_operator_that_reconciles_a_sample_tenant() {
    let cluster = Cluster::new().await;
    let (env, client) = (cluster.env, cluster.client.clone());
    remove_leftovers(env, &client).await;

    let release = unique(RELEASE_PREFIX);
    let ns = release.clone();
    // A Lease and namespace prefix of its own: other suites' operators use other Leases.
    let lease = unique("chart-lease");
    let prefix = "ct-";
    let chart = chart();
    let sets = [
        format!("leaderElection.leaseName={lease}"),
        format!("namespacePrefix={prefix}"),
        "leaderElection.leaseDuration=5s".to_string(),
        "apiImage.repository=registry.example/tenantry-api".to_string(),
        "apiImage.tag=chart-test".to_string(),
        "llm.baseUrl=http://llm.example/v1".to_string(),
        "redis.url=redis://redis.example:6379".to_string(),
        // The API key goes by Secret reference, copied by the operator into tenant namespaces.
        "llm.apiKeySecret.name=llm-credentials".to_string(),
        "apiLogLevel=debug".to_string(),
        // The chart's pro tier, changed so the HPA shows it (not the built-in one) is used.
        "quotaTiers.tiers.pro.replicas.min=3".to_string(),
        "quotaTiers.tiers.pro.replicas.max=6".to_string(),
        "quotaTiers.tiers.pro.dailyTokens=400000".to_string(),
    ];
    let mut args = vec![
        "install",
        release.as_str(),
        chart.to_str().expect("utf-8"),
        "--namespace",
        ns.as_str(),
        "--create-namespace",
        // The cluster-scoped QuotaTiers may exist from elsewhere (e.g. config/samples).
        "--take-ownership",
    ];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let installed = helm_ok(env, &args);
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    let llm_secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-credentials"},
        "stringData": {"api-key": "sk-chart-test"},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &llm_secret)
        .await
        .expect("create the LLM key Secret");
    let notes = helm_ok(env, &["get", "notes", &release, "-n", &ns]);
    assert!(
        notes.contains("jsonpath='{.data.keyring\\.json}'")
            && notes.contains("tenantry token --tenant acme --sub alice"),
        "NOTES explain minting a token: {notes}"
    );

    // The Deployment as installed.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let dep = deployments
        .get(&release)
        .await
        .expect("operator Deployment");
    let spec = dep.spec.clone();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.clone().expect("pod spec");
    let sa = pod.service_account_name.clone().expect("service account");
    let c = pod
        .containers
        .iter()
        .find(|c| c.name == "operator")
        .expect("operator container")
        .clone();
    assert_eq!(c.command, None, "the image's entrypoint is tenantry");
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(
        (
            sc.run_as_non_root,
            sc.read_only_root_filesystem,
            sc.allow_privilege_escalation
        ),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
    let args = c.args.clone().expect("args");
    assert_eq!(args[0], "operator");
    for want in [
        format!("--lease-namespace={ns}"),
        format!("--lease-name={lease}"),
        "--listen=0.0.0.0:8080".to_string(),
    ] {
        assert!(args.contains(&want), "{want} in {args:?}");
    }
    let identity = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "TENANTRY_IDENTITY")
        .and_then(|e| e.value_from.clone())
        .and_then(|v| v.field_ref)
        .map(|f| f.field_path);
    assert_eq!(identity.as_deref(), Some("metadata.name"));

    // Run the binary as that pod would: its args (only --listen and the vector folder
    // replaced), its env (downward API resolved), its ServiceAccount's token.
    let work = tempfile::tempdir().expect("tmp");
    let vectors = work.path().join("vectors");
    let mut run_args = Vec::new();
    let mut replaced = BTreeSet::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (a.as_str(), None),
        };
        let replacement = match flag {
            "--listen" => Some("127.0.0.1:0".to_string()),
            "--vector-data-dir" => Some(vectors.display().to_string()),
            _ => None,
        };
        match replacement {
            Some(v) => {
                replaced.insert(flag.to_string());
                if inline.is_none() {
                    it.next();
                }
                run_args.push(format!("{flag}={v}"));
            }
            None => run_args.push(a.clone()),
        }
    }
    assert_eq!(
        replaced.into_iter().collect::<Vec<_>>(),
        ["--listen", "--vector-data-dir"],
        "the chart sets both (the root filesystem is read-only)"
    );
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| {
            args.iter()
                .any(|a| a.starts_with(&format!("--vector-data-dir={}", m.mount_path)))
        })
        .expect("the vector folder is on a mounted volume");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("volume");
    assert!(volume.empty_dir.is_some(), "an emptyDir");

    let pod_name = format!("{release}-7d9f8-x2k4q");
    let token = env.kubectl_output(&["create", "token", &sa, "-n", &ns, "--duration=1h"]);
    assert!(token.status.success(), "{}", text(&token));
    let kubeconfig = env.write_token_kubeconfig(
        "chart-operator",
        String::from_utf8_lossy(&token.stdout).trim(),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
    cmd.args(&run_args);
    // Only the pod's environment: no TENANTRY_* of this shell.
    for (k, _) in std::env::vars() {
        if k.starts_with("TENANTRY_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    for e in c.env.iter().flatten() {
        cmd.env(&e.name, resolve_env(e, &pod_name));
    }
    let op = Operator::spawn(cmd.env("KUBECONFIG", &kubeconfig));
    assert_eq!(op.identity, pod_name, "the identity from the downward API");
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let url = format!("http://{}{path}", op.addr);
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.ok()?;
            r.status().is_success().then_some(())?;
            r.text().await.ok()
        }
    };
    get("/healthz").await.expect("/healthz");
    eventually(30, "the operator leads", || async {
        let body: Value = serde_json::from_str(&get("/readyz").await?).ok()?;
        (body["leader"] == true).then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let held = leases.get(&lease).await.expect("the chart's Lease");
    assert_eq!(
        held.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(pod_name.as_str())
    );

    // A sample Tenant from config/samples, under a name of this run.
    let sample =
        std::fs::read_to_string(root().join("config/samples/tenant-acme.yaml")).expect("sample");
    let mut doc = yaml_docs(&sample).remove(0);
    assert_eq!(doc["spec"]["tier"], "pro");
    let name = unique(&format!("{TENANT_PREFIX}acme"));
    doc["metadata"]["name"] = json!(name);
    let tenants = &cluster.tenants;
    cluster.remove_on_drop("tenant", None, &name);
    tenants
        .create(
            &PostParams::default(),
            &serde_json::from_value::<Tenant>(doc).expect("tenant"),
        )
        .await
        .expect("create the sample tenant");

    let tns = format!("{prefix}{name}");
    let api = format!("{name}-api");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &tns);
    let api_deployments: Api<Deployment> = Api::namespaced(client.clone(), &tns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &tns);
    eventually(60, "the tenant's namespace", || async {
        namespaces.get_opt(&tns).await.ok()?
    })
    .await;
    let secret = eventually(60, "the signing-key Secret", || async {
        secrets.get_opt(&format!("{name}-signing-key")).await.ok()?
    })
    .await;
    let data = secret.data.clone().expect("data");
    assert!(data.contains_key("keyring.json"));
    let kid = String::from_utf8(data.get("kid").expect("kid").0.clone()).expect("utf-8");

    let api_dep = eventually(60, "the API Deployment", || async {
        api_deployments.get_opt(&api).await.ok()?
    })
    .await;
    let api_c = api_dep.spec.clone().template.spec.expect("pod").containers[0].clone();
    assert_eq!(
        api_c.image.as_deref(),
        Some("registry.example/tenantry-api:chart-test"),
        "the chart's apiImage"
    );
    assert_eq!(api_c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let api_env: BTreeMap<String, String> = api_c
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    assert_eq!(
        api_env.get("OPENAI_BASE_URL").map(String::as_str),
        Some("http://llm.example/v1")
    );
    assert_eq!(
        api_env.get("TENANTRY_REDIS_URL").map(String::as_str),
        Some("redis://redis.example:6379")
    );
    assert_eq!(api_env.get("RUST_LOG").map(String::as_str), Some("debug"));
    let key_env = api_c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "OPENAI_API_KEY")
        .expect("OPENAI_API_KEY env");
    assert!(key_env.value.is_none(), "the key is never a plain value");
    let key_ref = key_env
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("secretKeyRef");
    assert_eq!(key_ref.name, format!("{name}-api-credentials"));
    let copied = Api::<Secret>::namespaced(client.clone(), &tns)
        .get(&key_ref.name)
        .await
        .expect("credentials copied into the tenant namespace");
    assert_eq!(
        copied
            .data
            .expect("data")
            .get("OPENAI_API_KEY")
            .map(|v| v.0.clone()),
        Some(b"sk-chart-test".to_vec())
    );

    let hpa = eventually(60, "the HPA", || async { hpas.get_opt(&api).await.ok()? }).await;
    assert_eq!(
        (hpa.spec.min_replicas, hpa.spec.max_replicas),
        (Some(3), 6),
        "bounds from the chart's pro QuotaTier"
    );
    let t = eventually(60, "the effective quota", || async {
        let t = tenants.get(&name).await.ok()?;
        t.status.as_ref()?.effective_quota.as_ref()?;
        Some(t)
    })
    .await;
    let q = t.status.expect("status").effective_quota.expect("quota");
    assert_eq!(q.daily_tokens, 400_000, "the chart's pro tier");

    // What a kubelet + deployment controller would report; then Ready.
    let status = json!({"status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3, "updatedReplicas": 3,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "ok"}]}});
    api_deployments
        .patch_status(&api, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch deployment status");
    let out = env.kubectl_output(&[
        "wait",
        "--for=condition=Ready",
        &format!("tenant/{name}"),
        "--timeout=60s",
    ]);
    assert!(
        out.status.success(),
        "kubectl wait: {}\n{}",
        text(&out),
        op.logs()
    );

    // The Argo CD health check of docs/gitops.md on the real objects: this Ready Tenant, and
    // one whose tier does not exist.
    let missing = unique(&format!("{TENANT_PREFIX}missing"));
    cluster.remove_on_drop("tenant", None, &missing);
    tenants
        .create(
            &PostParams::default(),
            &serde_json::from_value::<Tenant>(json!({
                "apiVersion": "tenantry.dev/v1alpha1", "kind": "Tenant",
                "metadata": {"name": missing}, "spec": {"tier": unique("no-such-tier")},
            }))
            .expect("tenant"),
        )
        .await
        .expect("create a tenant with a missing tier");
    let broken = eventually(60, "Ready=False/TierNotFound", || async {
        let t = tenants.get(&missing).await.ok()?;
        let ready = t
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")?;
        (ready.reason == "TierNotFound").then_some(t)
    })
    .await;
    let ready = tenants.get(&name).await.expect("tenant");
    let health = argocd_health(
        env,
        &[
            serde_json::to_value(&ready).expect("json"),
            serde_json::to_value(&broken).expect("json"),
        ],
    );
    assert_eq!(health[0].0, "Healthy", "{health:?}");
    assert_eq!(health[1].0, "Degraded", "{health:?}");

    // NOTES.txt step 3: the keyring from the Secret, the manifest from the ConfigMap.
    let data_dir = work.path().join("tenantry");
    std::fs::create_dir_all(data_dir.join("keys")).expect("mkdir");
    std::fs::create_dir_all(data_dir.join("tenants")).expect("mkdir");
    let jsonpath = |kind: &str, obj: &str, path: &str| {
        let out = env.kubectl_output(&[
            "get",
            kind,
            obj,
            "-n",
            &tns,
            "-o",
            &format!("jsonpath={path}"),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        out.stdout
    };
    let keyring = base64::engine::general_purpose::STANDARD
        .decode(jsonpath(
            "secret",
            &format!("{name}-signing-key"),
            "{.data.keyring\\.json}",
        ))
        .expect("base64");
    std::fs::write(data_dir.join(format!("keys/{name}.json")), keyring).expect("write");
    std::fs::write(
        data_dir.join(format!("tenants/{name}.yaml")),
        jsonpath(
            "configmap",
            &format!("{name}-api-config"),
            "{.data.tenant\\.yaml}",
        ),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["token", "--tenant", &name, "--sub", "alice", "--data-dir"])
        .arg(&data_dir)
        .arg("--tenants")
        .arg(data_dir.join("tenants"))
        .env_remove("TENANTRY_DATA_DIR")
        .env_remove("TENANTRY_TENANTS")
        .output()
        .expect("run tenantry token");
    assert!(out.status.success(), "tenantry token: {}", text(&out));
    let jwt = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').next().expect("header"))
            .expect("base64url"),
    )
    .expect("header json");
    assert_eq!(
        header["kid"],
        json!(kid),
        "signed with the tenant's current key"
    );

    let metrics = get("/metrics").await.expect("/metrics");
    assert!(metrics.contains("tenantry_reconcile_total"), "{metrics}");

    // Clean up: the Tenants (the operator removes its finalizer), the operator, the release.
    for t in [&name, &missing] {
        tenants
            .delete(t, &DeleteParams::default())
            .await
            .expect("delete tenant");
    }
    for t in [&name, &missing] {
        eventually(60, "the tenant is gone", || async {
            tenants.get_opt(t).await.ok()?.is_none().then_some(())
        })
        .await;
    }
    op.stop();
    helm_ok(env, &["uninstall", &release, "-n", &ns]);
    let tiers: Api<tenantry::crd::QuotaTier> = Api::all(client.clone());
    eventually(30, "uninstall removes the chart's QuotaTiers", || async {
        tiers.get_opt("pro").await.ok()?.is_none().then_some(())
    })
    .await;
}

/// The operator args of a rendered chart, from `values` (YAML).
fn operator_args_with(env: &KubeEnv, values: &str) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).expect("write values");
    let chart = chart();
    let out = helm(
        env,
        &[
            "template",
            "tenantry",
            chart.to_str().expect("utf-8 path"),
            "-f",
            file.to_str().expect("utf-8 path"),
        ],
    );
    if !out.status.success() {
        return Err(text(&out));
    }
    let docs = yaml_docs(&String::from_utf8_lossy(&out.stdout));
    let deployment = of_kind(&docs, "Deployment")[0];
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    Ok(serde_json::from_value(args.clone()).expect("args"))
}

#[test]
fn chart_expose_values_become_operator_flags_the_operator_accepts() {
    let env = KubeEnv::get();
    let cases = [
        (
            "expose: {mode: gateway, hostname: '{tenant}.chat.example.com', gateway: {parent: infra/public/https}}",
            vec![
                "--expose=gateway",
                "--expose-hostname={tenant}.chat.example.com",
                "--gateway-parent=infra/public/https",
                "--gateway-https",
            ],
        ),
        (
            "expose: {mode: ingress, hostname: 'chat-{tenant}.example.com', ingress: {className: nginx, tlsSecret: '{tenant}-tls', annotations: {cert-manager.io/cluster-issuer: letsencrypt}}}",
            vec![
                "--expose=ingress",
                "--expose-hostname=chat-{tenant}.example.com",
                "--ingress-class=nginx",
                "--ingress-tls-secret={tenant}-tls",
                "--ingress-annotation=cert-manager.io/cluster-issuer=letsencrypt",
            ],
        ),
        ("expose: {mode: none}", vec![]),
    ];
    for (values, want) in cases {
        let args = operator_args_with(env, values).expect("renders");
        let exposure: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|a| {
                ["--expose", "--gateway", "--ingress"]
                    .iter()
                    .any(|p| a.starts_with(p))
            })
            .collect();
        assert_eq!(exposure, want, "{values}");
        // The operator checks these flags before it connects: getting as far as connecting
        // means it accepted them.
        let out = Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .args(&args)
            .env("KUBECONFIG", "/nonexistent")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("run the operator");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot connect to the Kubernetes API"),
            "{values}: {stderr}"
        );
    }
    for (values, says) in [
        (
            "expose: {mode: gateway, hostname: '{tenant}.x.test'}",
            "expose.gateway.parent is required",
        ),
        ("expose: {mode: ingress}", "expose.hostname is required"),
        (
            "expose: {mode: ingress, hostname: chat.x.test}",
            "/expose/hostname",
        ),
        ("expose: {mode: route}", "/expose/mode"),
    ] {
        let err = operator_args_with(env, values).expect_err(values);
        assert!(err.contains(says), "{values}: {err}");
    }
}
