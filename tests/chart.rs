//! The Helm chart (`charts/tenantry`) with the real tools: `helm` (built by
//! `scripts/kube-test-env.sh` from the Go module proxy), and the test kube-apiserver. The chart
//! is linted, rendered and validated by the API server (server-side dry run, so every object —
//! QuotaTiers included — is checked against the Kubernetes and CRD schemas), installed, and
//! the operator binary is run exactly as the chart's Deployment would run it (its args, env and
//! ServiceAccount) to reconcile a sample Tenant from `config/samples/`.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use common::cluster::{Cluster, KubeEnv, Operator, eventually, unique};
use common::root;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Namespace, PodSpec, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
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
        (
            "a non-boolean deploy",
            "qdrant.deploy=yes",
            "/qdrant/deploy",
        ),
        (
            "an empty store image tag",
            "redis.image.tag=",
            "/redis/image/tag",
        ),
        (
            "a volume size that is no quantity",
            "qdrant.persistence.size=lots",
            "/qdrant/persistence/size",
        ),
        (
            "a typo in the API pods' serve config",
            "api.config.llm.modell=gpt-4o",
            "additional properties 'modell'",
        ),
        (
            "a bad quota fail mode",
            "api.config.quota.failMode=sometimes",
            "/api/config/quota/failMode",
        ),
        (
            "credentials in the LLM URL of the serve config",
            "api.config.llm.baseUrl=https://user:pw@llm.example/v1",
            "/api/config/llm/baseUrl",
        ),
        (
            "a wrong type of API pod value",
            "api.priorityClassName[0]=high",
            "/api/priorityClassName",
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

#[test]
fn chart_refuses_contradictory_store_values_saying_what_to_change() {
    let env = KubeEnv::get();
    let cases: [(&str, &[&str], &str); 7] = [
        (
            "the chart's Qdrant and an external URL",
            &["qdrant.url=http://qdrant.example:6334"],
            "qdrant.url is set while qdrant.deploy is true",
        ),
        (
            "the chart's Qdrant and an external key",
            &["qdrant.apiKeySecret.name=qdrant"],
            "the chart generates the key of its own Qdrant",
        ),
        (
            "an external key without an external Qdrant",
            &["qdrant.deploy=false", "qdrant.apiKeySecret.name=qdrant"],
            "qdrant.apiKeySecret is set without qdrant.url",
        ),
        (
            "the chart's Redis and an external URL Secret",
            &["redis.urlSecret.name=redis"],
            "redis.url / redis.urlSecret is set while redis.deploy is true",
        ),
        (
            "two external Redis URLs",
            &[
                "redis.deploy=false",
                "redis.url=redis://redis.example:6379",
                "redis.urlSecret.name=redis",
            ],
            "redis.url and redis.urlSecret are both set",
        ),
        (
            "a Qdrant URL in the serve config",
            &["api.config.vector.qdrantUrl=http://qdrant.example:6334"],
            "api.config.vector.qdrantUrl is not used by the chart",
        ),
        (
            "a second Redis in the serve config",
            &["api.config.quota.redisUrl=redis://redis.example:6379"],
            "api.config.quota.redisUrl contradicts redis.deploy",
        ),
    ];
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    for (what, sets, needle) in cases {
        let mut args = vec!["template", "x", chart];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = helm(env, &args);
        assert!(!out.status.success(), "{what} ({sets:?}) rendered");
        assert!(text(&out).contains(needle), "{what}: {}", text(&out));
    }
    // Each value alone, with the other store's setting that makes it consistent, renders.
    template(
        env,
        "ns",
        &[
            "qdrant.deploy=false",
            "qdrant.url=http://qdrant.example:6334",
            "qdrant.apiKeySecret.name=qdrant",
            "redis.deploy=false",
            "redis.urlSecret.name=redis",
        ],
    );
    template(
        env,
        "ns",
        &[
            "redis.deploy=false",
            "api.config.quota.redisUrl=redis://redis.example:6379",
        ],
    );
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

    // Rendered under the names config/rbac/ uses, the chart's RBAC and admission policy are
    // exactly the repo's.
    let docs = yaml_docs(&template(
        env,
        "tenantry-system",
        &["fullnameOverride=tenantry-operator"],
    ));
    let repo = |path: &str| {
        let text = std::fs::read_to_string(root().join(path)).expect("rbac file");
        yaml_docs(&text)
    };
    let named = |kind: &str, name: &str| -> Value {
        of_kind(&docs, kind)
            .into_iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
            .clone()
    };
    assert_eq!(of_kind(&docs, "ClusterRole").len(), 3);
    for (name, path) in [
        ("tenantry-operator", "config/rbac/role.yaml"),
        ("tenantry-operator-tenant", "config/rbac/tenant_role.yaml"),
        (
            "tenantry-operator-credentials",
            "config/rbac/credentials_role.yaml",
        ),
    ] {
        assert_eq!(
            named("ClusterRole", name)["rules"],
            repo(path)[0]["rules"],
            "the chart's ClusterRole {name} must grant exactly {path}"
        );
    }
    let roles = of_kind(&docs, "Role");
    assert_eq!(roles.len(), 1);
    assert_eq!(
        roles[0]["rules"],
        repo("config/rbac/leader_election_role.yaml")[0]["rules"],
        "the chart's Role must grant exactly config/rbac/leader_election_role.yaml"
    );
    assert_eq!(roles[0]["metadata"]["namespace"], "tenantry-system");
    let policy = repo("config/rbac/admission_policy.yaml");
    for (i, kind) in [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            named(kind, "tenantry-operator")["spec"],
            policy[i]["spec"],
            "the chart's {kind} must be config/rbac/admission_policy.yaml's"
        );
    }
    let off = yaml_docs(&template(env, "ns", &["rbac.admissionPolicy=false"]));
    assert!(of_kind(&off, "ValidatingAdmissionPolicy").is_empty());
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
    for file in [
        "src/metrics.rs",
        "src/controller/metrics.rs",
        "src/tenant_gauges.rs",
    ] {
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
        "bool",
        "topk",
        "on",
        "ignoring",
        "group_left",
        "group_right",
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
    // Drop the label lists of `by (...)` / `without (...)` and of the vector matchings
    // `on (...)`, `ignoring (...)`, `group_left (...)`, `group_right (...)`.
    let mut out = String::new();
    let mut rest = cleaned.as_str();
    while let Some(i) = rest.find(['b', 'w', 'o', 'i', 'g']) {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let keyword = [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
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
        "llm_time_to_first_token_seconds_bucket",
        "llm_gateway_overhead_seconds_bucket",
        "quota_daily_tokens_remaining",
        "quota_daily_tokens_limit",
        "tenantry_upstream_circuit_open",
        "tenantry_tenant_ready",
        "tenantry_tenant_signing_key_age_seconds",
        "tenantry_tenant_signing_key_rotation_period_seconds",
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
    let cm = of_kind(&docs, "ConfigMap")
        .into_iter()
        .find(|c| c["data"]["tenantry.json"].is_string())
        .expect("the dashboard ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(cm["data"]["tenantry.json"].as_str().expect("data")).expect("json");
    assert_eq!(shipped, dash);
}

/// `promtool` (Debian's `prometheus` package; `scripts/test.sh` installs it).
fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool (apt-get install prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

/// The PrometheusRule: off by default; its rules are valid for Prometheus (`promtool check
/// rules`), every expression names only metrics of the code, and each alert fires for the
/// series it is about and not for healthy ones (`promtool test rules`).
#[test]
fn prometheus_rule_parses_and_alerts_on_metrics_of_the_code() {
    let env = KubeEnv::get();
    let docs = yaml_docs(&template(env, "monitoring", &[]));
    assert!(
        of_kind(&docs, "PrometheusRule").is_empty(),
        "off by default"
    );
    let docs = yaml_docs(&template(
        env,
        "monitoring",
        &[
            "prometheusRule.enabled=true",
            "prometheusRule.labels.release=kps",
        ],
    ));
    let rules = of_kind(&docs, "PrometheusRule");
    assert_eq!(rules.len(), 1);
    let rule = rules[0];
    assert_eq!(rule["metadata"]["namespace"], "monitoring");
    assert_eq!(rule["metadata"]["labels"]["release"], "kps");
    let known = code_metrics();
    let mut alerts = BTreeSet::new();
    for group in rule["spec"]["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("alert name");
            alerts.insert(name.to_string());
            let expr = r["expr"].as_str().expect("expr");
            let metrics = expr_metrics(expr);
            assert!(!metrics.is_empty(), "{name}: no metric in {expr}");
            for m in &metrics {
                assert!(
                    known.contains(m),
                    "{name}: {m} is not a metric of the code ({expr})"
                );
            }
            assert_eq!(r["labels"]["severity"], "warning", "{name}");
            assert!(r["annotations"]["summary"].is_string(), "{name}");
        }
    }
    assert_eq!(
        alerts,
        [
            "GatewayOverheadHigh",
            "SigningKeyOld",
            "TenantBudgetNearlyExhausted",
            "TenantHighErrorRate",
            "TenantNotReady",
            "UpstreamBreakerOpen",
        ]
        .map(String::from)
        .into()
    );

    // JSON is YAML: promtool reads the spec (a rule file) as it is.
    let dir = tempfile::tempdir().expect("tmp");
    let write = |file: &str, v: &Value| {
        std::fs::write(
            dir.path().join(file),
            serde_json::to_vec_pretty(v).expect("json"),
        )
        .expect("write");
    };
    write("rules.json", &rule["spec"]);
    let checked = promtool(&["check", "rules", "rules.json"], dir.path());
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");

    // Which alerts fire: the expressions only (annotations would have to be matched verbatim).
    let mut bare = rule["spec"].clone();
    for group in bare["groups"].as_array_mut().expect("groups") {
        for r in group["rules"].as_array_mut().expect("rules") {
            r.as_object_mut().expect("rule").remove("annotations");
        }
    }
    write("bare.json", &bare);
    let series = |s: &str, values: &str| json!({"series": s, "values": values});
    let alert = |labels: Value| {
        let mut l = labels;
        l["severity"] = json!("warning");
        json!({"exp_labels": l})
    };
    let at = |minutes: u32, name: &str, exp: Vec<Value>| json!({"eval_time": format!("{minutes}m"), "alertname": name, "exp_alerts": exp});
    let bucket = |tenant: &str, le: &str, values: &str| {
        series(
            &format!(r#"llm_gateway_overhead_seconds_bucket{{tenant_id="{tenant}",le="{le}"}}"#),
            values,
        )
    };
    let test = json!({
        "rule_files": ["bare.json"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                // Two operator replicas report the same tenants.
                series(r#"tenantry_tenant_ready{tenant_id="down",pod="op-0"}"#, "0x90"),
                series(r#"tenantry_tenant_ready{tenant_id="down",pod="op-1"}"#, "0x90"),
                series(r#"tenantry_tenant_ready{tenant_id="up",pod="op-0"}"#, "1x90"),
                series(r#"tenantry_tenant_ready{tenant_id="up",pod="op-1"}"#, "1x90"),
                // Past 1.5 rotation periods; within one; no rotateEvery and older than 90 days.
                series(r#"tenantry_tenant_signing_key_age_seconds{tenant_id="overdue"}"#, "1600000x90"),
                series(r#"tenantry_tenant_signing_key_rotation_period_seconds{tenant_id="overdue"}"#, "1000000x90"),
                series(r#"tenantry_tenant_signing_key_age_seconds{tenant_id="fresh"}"#, "900000x90"),
                series(r#"tenantry_tenant_signing_key_rotation_period_seconds{tenant_id="fresh"}"#, "1000000x90"),
                series(r#"tenantry_tenant_signing_key_age_seconds{tenant_id="unrotated"}"#, "8000000x90"),
                series(r#"tenantry_tenant_signing_key_age_seconds{tenant_id="young"}"#, "86400x90"),
                // 5 % and 90 % of the daily budget left.
                series(r#"quota_daily_tokens_remaining{tenant_id="low"}"#, "50x90"),
                series(r#"quota_daily_tokens_limit{tenant_id="low"}"#, "1000x90"),
                series(r#"quota_daily_tokens_remaining{tenant_id="ok"}"#, "900x90"),
                series(r#"quota_daily_tokens_limit{tenant_id="ok"}"#, "1000x90"),
                // Half the requests fail; one in a hundred does.
                series(r#"llm_requests_total{tenant_id="flaky",model="m",status="error"}"#, "0+10x90"),
                series(r#"llm_requests_total{tenant_id="flaky",model="m",status="success"}"#, "0+10x90"),
                series(r#"llm_requests_total{tenant_id="fine",model="m",status="error"}"#, "0+1x90"),
                series(r#"llm_requests_total{tenant_id="fine",model="m",status="success"}"#, "0+99x90"),
                series(r#"tenantry_upstream_circuit_open{namespace="tenant-a",pod="a-1",upstream="primary"}"#, "1x90"),
                series(r#"tenantry_upstream_circuit_open{namespace="tenant-b",pod="b-1",upstream="primary"}"#, "0x90"),
                // Overhead between 0.25 s and 0.5 s; under 5 ms.
                bucket("slow", "0.25", "0x90"),
                bucket("slow", "0.5", "0+10x90"),
                bucket("slow", "+Inf", "0+10x90"),
                bucket("fast", "0.005", "0+10x90"),
                bucket("fast", "0.25", "0+10x90"),
                bucket("fast", "0.5", "0+10x90"),
                bucket("fast", "+Inf", "0+10x90"),
            ],
            "alert_rule_test": [
                at(25, "TenantNotReady", vec![alert(json!({"tenant_id": "down"}))]),
                at(10, "TenantNotReady", vec![]),
                at(70, "SigningKeyOld", vec![
                    alert(json!({"tenant_id": "overdue"})),
                    alert(json!({"tenant_id": "unrotated"})),
                ]),
                at(30, "SigningKeyOld", vec![]),
                at(25, "TenantBudgetNearlyExhausted", vec![alert(json!({"tenant_id": "low"}))]),
                at(25, "TenantHighErrorRate", vec![alert(json!({"tenant_id": "flaky"}))]),
                at(25, "UpstreamBreakerOpen", vec![alert(json!({"namespace": "tenant-a", "upstream": "primary"}))]),
                at(25, "GatewayOverheadHigh", vec![alert(json!({"tenant_id": "slow"}))]),
            ],
        }],
    });
    write("test.json", &test);
    let tested = promtool(&["test", "rules", "test.json"], dir.path());
    assert!(tested.contains("SUCCESS"), "{tested}");
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
        "qdrant.deploy=false",
        "redis.deploy=false",
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
        "api.config.llm.model=gpt-4o",
        "api.imagePullSecrets[0].name=registry",
        "api.nodeSelector.pool=api",
        "api.tolerations[0].operator=Exists",
        "api.priorityClassName=tenant-api",
        "api.resources.requests.cpu=250m",
        "api.podLabels.team=rag",
    ];
    let variants: [(&str, &[&str]); 4] = [
        ("defaults (the chart's Qdrant and Redis)", &[]),
        (
            "the chart's stores on a StorageClass, no NetworkPolicies",
            &[
                "qdrant.persistence.storageClass=fast",
                "redis.persistence.storageClass=fast",
                "networkPolicy.enabled=false",
            ],
        ),
        ("everything", &everything),
        (
            "one replica, nothing optional, embedded stores",
            &[
                "qdrant.deploy=false",
                "redis.deploy=false",
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
        "tenantcredential.tenantry.dev/acme-reports",
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
            "Stalled, whatever Ready's reason",
            {
                let mut t = tenant(pro.clone(), 1, Some(("False", "SomeNewReason", 1)));
                t["status"]["conditions"].as_array_mut().expect("list").push(json!({
                    "type": "Stalled", "status": "True", "reason": "InvalidSpec",
                    "message": "spec.auth.issuers[0].claims[0].pattern: is not a regular expression",
                    "observedGeneration": 1}));
                t
            },
            "Degraded",
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
    assert!(
        results[7].1.starts_with("InvalidSpec: spec.auth"),
        "the stall is shown: {:?}",
        results[7]
    );
}

/// Decoded data of Secrets, by name.
type Secrets = BTreeMap<String, BTreeMap<String, String>>;

/// The value of the env var of a container, resolving what a kubelet would resolve.
fn resolve_env(e: &EnvVar, pod_name: &str, secrets: &Secrets) -> String {
    if let Some(v) = &e.value {
        return v.clone();
    }
    if let Some(r) = e
        .value_from
        .as_ref()
        .and_then(|f| f.secret_key_ref.as_ref())
    {
        let value = secrets.get(&r.name).and_then(|s| s.get(&r.key));
        return value.expect("a key of a fetched Secret").clone();
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

/// The files of the ConfigMap volumes mounted into container `c` of `pod`, written under `dir`
/// (what a kubelet would do): mounted path -> local path.
async fn mounted_configmap(
    client: &Client,
    ns: &str,
    pod: &PodSpec,
    c: &Container,
    dir: &Path,
) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for m in c.volume_mounts.iter().flatten() {
        let volume = pod.volumes.iter().flatten().find(|v| v.name == m.name);
        let Some(cm) = volume.and_then(|v| v.config_map.as_ref()) else {
            continue;
        };
        let data = Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get(&cm.name)
            .await
            .expect("the mounted ConfigMap")
            .data
            .unwrap_or_default();
        let local = dir.join(&m.name);
        std::fs::create_dir_all(&local).expect("mkdir");
        for (key, value) in data {
            std::fs::write(local.join(&key), value).expect("write");
            files.insert(
                format!("{}/{key}", m.mount_path),
                local.join(&key).display().to_string(),
            );
        }
    }
    files
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
        // The chart's own Qdrant and Redis (the defaults). No kubelet runs their pods: the
        // operator is pointed at a real Qdrant run as the chart's StatefulSet runs it.
        // Through ConfigMap <release>-api into every tenant's serve.yaml and Deployment.
        "api.config.llm.model=chart-model".to_string(),
        "api.nodeSelector.pool=tenant-apis".to_string(),
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

    // Run the binary as that pod would: its args (only --listen, the vector folder and the
    // mounted ConfigMap's files replaced), its env (downward API resolved), its
    // ServiceAccount's token.
    let work = tempfile::tempdir().expect("tmp");
    let api_files = mounted_configmap(&client, &ns, &pod, &c, work.path()).await;
    let qdrant_name = format!("{release}-qdrant");
    let (_, qdrant_c) = statefulset(&client, &ns, &qdrant_name).await;
    let mut release_secrets = Secrets::new();
    for store in ["qdrant", "redis"] {
        let name = format!("{release}-{store}");
        release_secrets.insert(name.clone(), secret_strings(&client, &ns, &name).await);
    }
    let qdrant = ChartQdrant::run(&qdrant_c, &release_secrets[&qdrant_name], work.path()).await;
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
            "--qdrant-url" => Some(qdrant.grpc_url()),
            "--api-config" | "--api-pod-defaults" => {
                let path = inline.and_then(|p| api_files.get(p));
                Some(path.expect("a file of a mounted ConfigMap").clone())
            }
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
        [
            "--api-config",
            "--api-pod-defaults",
            "--listen",
            "--qdrant-url"
        ],
        "the chart sets them all"
    );

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
        cmd.env(&e.name, resolve_env(e, &pod_name, &release_secrets));
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
    let api_pod = api_dep.spec.clone().template.spec.expect("pod");
    assert_eq!(
        api_pod.node_selector.and_then(|n| n.get("pool").cloned()),
        Some("tenant-apis".to_string()),
        "api.nodeSelector, through --api-pod-defaults"
    );
    let api_config = Api::<ConfigMap>::namespaced(client.clone(), &tns)
        .get(&format!("{name}-api-config"))
        .await
        .expect("the tenant's API ConfigMap");
    let serve_yaml = api_config
        .data
        .and_then(|d| d.get("serve.yaml").cloned())
        .expect("serve.yaml");
    let serve: tenantry::config::ServeConfig =
        serde_saphyr::from_str(&serve_yaml).expect("a serve config");
    assert_eq!(
        serve.llm.model, "chart-model",
        "api.config, through --api-config"
    );
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
    assert_eq!(api_env.get("RUST_LOG").map(String::as_str), Some("debug"));
    // Secrets of the release namespace, copied into the tenant's and read by secretKeyRef.
    let credentials = format!("{name}-api-credentials");
    let copied = eventually(60, "the copied credentials", || async {
        let secrets = Api::<Secret>::namespaced(client.clone(), &tns);
        secrets.get_opt(&credentials).await.ok()?.map(decoded)
    })
    .await;
    for (var, from_release) in [
        ("OPENAI_API_KEY", "sk-chart-test"),
        (
            "TENANTRY_QDRANT_API_KEY",
            &release_secrets[&qdrant_name]["api-key"],
        ),
        (
            "TENANTRY_REDIS_URL",
            &release_secrets[&format!("{release}-redis")]["url"],
        ),
    ] {
        let want = Some((credentials.clone(), var.to_string()));
        assert_eq!(secret_ref(&api_c, var), want, "{var}");
        assert_eq!(
            copied.get(var).map(String::as_str),
            Some(from_release),
            "{var}"
        );
    }

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
    assert_eq!(q.daily_tokens, Some(400_000), "the chart's pro tier");

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
    // Its collections are on the chart's Qdrant, provisioned with the generated key.
    let ready = tenants.get(&name).await.expect("tenant");
    let collections = ready.status.clone().expect("status").collections;
    assert!(!collections.is_empty(), "collections in the status");
    for coll in &collections {
        let url = format!("{}/collections/{coll}", qdrant.http);
        assert_eq!(
            http_status(&url, Some(&qdrant.key)).await,
            Some(200),
            "{coll}"
        );
    }

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

/// The operator args of a rendered chart, from `values` (YAML), with the files of the mounted
/// `<fullname>-api` ConfigMap written into `files` and its mount path mapped there (as a kubelet
/// would mount them).
fn operator_args_with(
    env: &KubeEnv,
    values: &str,
    files: &std::path::Path,
) -> Result<Vec<String>, String> {
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
    let args: Vec<String> = serde_json::from_value(args.clone()).expect("args");
    for cm in of_kind(&docs, "ConfigMap") {
        if cm["metadata"]["name"] == "tenantry-api" {
            for (key, text) in cm["data"].as_object().expect("data") {
                std::fs::write(files.join(key), text.as_str().expect("text")).expect("write");
            }
        }
    }
    let mount = format!("{}/", files.display());
    Ok(args
        .into_iter()
        .map(|a| a.replace("/etc/tenantry/api/", &mount))
        .collect())
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
        let files = tempfile::tempdir().expect("tmp");
        let args = operator_args_with(env, values, files.path()).expect("renders");
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
        let files = tempfile::tempdir().expect("tmp");
        let err = operator_args_with(env, values, files.path()).expect_err(values);
        assert!(err.contains(says), "{values}: {err}");
    }
}

/// The string values of Secret `ns/name`.
async fn secret_strings(client: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("Secret {ns}/{name}: {e}"));
    decoded(secret)
}

/// The string values of a Secret.
fn decoded(secret: Secret) -> BTreeMap<String, String> {
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).expect("utf-8")))
        .collect()
}

/// The `(Secret, key)` an env var of a container reads.
fn secret_ref(c: &Container, env: &str) -> Option<(String, String)> {
    let e = c.env.iter().flatten().find(|e| e.name == env)?;
    assert!(e.value.is_none(), "{env}: never a plain value");
    let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
    Some((r.name.clone(), r.key.clone()))
}

/// The only container of StatefulSet `ns/name`, with its pod spec and claim templates.
async fn statefulset(client: &Client, ns: &str, name: &str) -> (StatefulSetSpec, Container) {
    let sts = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("StatefulSet {name}: {e}"));
    let spec = sts.spec;
    let pod = spec.template.spec.clone().expect("pod spec");
    assert_eq!(pod.containers.len(), 1, "{name}: one container");
    assert_eq!(pod.automount_service_account_token, Some(false), "{name}");
    (spec, pod.containers[0].clone())
}

/// Non-root as `uid`, read-only root filesystem, and every mount a volume of the pod or a
/// claim template; returns the claim templates' `(name, size, storageClass)`.
fn assert_locked_down(
    what: &str,
    spec: &StatefulSetSpec,
    c: &Container,
    uid: i64,
) -> Vec<(String, String, Option<String>)> {
    let pod = spec.template.spec.clone().expect("pod spec");
    let psc = pod.security_context.expect("pod securityContext");
    assert_eq!(
        (psc.run_as_non_root, psc.run_as_user),
        (Some(true), Some(uid)),
        "{what}"
    );
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(
        (sc.read_only_root_filesystem, sc.allow_privilege_escalation),
        (Some(true), Some(false)),
        "{what}"
    );
    let claims: Vec<_> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .map(|t| {
            let s = t.spec.clone().expect("claim spec");
            let size = s
                .resources
                .and_then(|r| r.requests?.get("storage").cloned());
            (
                t.metadata.name.clone().expect("claim name"),
                size.expect("a size").0,
                s.storage_class_name,
            )
        })
        .collect();
    for m in c.volume_mounts.iter().flatten() {
        let in_pod = pod.volumes.iter().flatten().any(|v| v.name == m.name);
        let claimed = claims.iter().any(|(n, _, _)| *n == m.name);
        assert!(in_pod || claimed, "{what}: mount {} has no volume", m.name);
    }
    claims
}

fn http_probe_path(p: &Option<k8s_openapi::api::core::v1::Probe>) -> Option<String> {
    p.as_ref()?.http_get.as_ref()?.path.clone()
}

/// The chart's Qdrant: image, key from the generated Secret, probes, writable mounts, volume.
async fn assert_chart_qdrant(client: &Client, ns: &str, name: &str) {
    let (spec, c) = statefulset(client, ns, name).await;
    assert_eq!(
        spec.service_name.as_deref(),
        Some(&*format!("{name}-headless"))
    );
    assert_eq!(c.image.as_deref(), Some("qdrant/qdrant:v1.18.3"));
    assert_eq!(
        secret_ref(&c, "QDRANT__SERVICE__API_KEY"),
        Some((name.to_string(), "api-key".to_string()))
    );
    let env: BTreeMap<_, _> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
        .collect();
    assert_eq!(env.get("QDRANT__TELEMETRY_DISABLED"), Some(&"true"));
    assert_eq!(
        http_probe_path(&c.readiness_probe).as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        http_probe_path(&c.liveness_probe).as_deref(),
        Some("/livez")
    );
    let claims = assert_locked_down("qdrant", &spec, &c, 1000);
    assert_eq!(claims, [("storage".to_string(), "10Gi".to_string(), None)]);
    // Every folder Qdrant writes to (storage, snapshots, temp, init marker) is mounted.
    let mounts: BTreeSet<&str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    for var in [
        "QDRANT__STORAGE__STORAGE_PATH",
        "QDRANT__STORAGE__SNAPSHOTS_PATH",
        "QDRANT__STORAGE__TEMP_PATH",
    ] {
        assert!(mounts.contains(env[var]), "{var} is not on a volume");
    }
    let init = env["QDRANT_INIT_FILE_PATH"]
        .rsplit_once('/')
        .expect("a path")
        .0;
    assert!(mounts.contains(init), "the init marker is not on a volume");
}

/// The chart's Redis: AOF on the volume, password only from the Secret (no command line holds
/// it), probes through redis-cli with REDISCLI_AUTH.
async fn assert_chart_redis(client: &Client, ns: &str, name: &str, password: &str) {
    let (spec, c) = statefulset(client, ns, name).await;
    assert_eq!(c.image.as_deref(), Some("redis:7.4-alpine"));
    let args = c.args.clone().unwrap_or_default();
    let aof = args.windows(2).any(|w| w == ["--appendonly", "yes"]);
    assert!(aof, "AOF on: {args:?}");
    assert_eq!(
        secret_ref(&c, "REDISCLI_AUTH"),
        Some((name.to_string(), "password".to_string()))
    );
    for probe in [&c.readiness_probe, &c.liveness_probe] {
        let cmd = probe.as_ref().and_then(|p| p.exec.clone()?.command);
        let cmd = cmd.expect("an exec probe").join(" ");
        assert!(cmd.contains("redis-cli") && cmd.contains("ping"), "{cmd}");
    }
    let pod_json = serde_json::to_string(&spec).expect("json");
    assert!(
        !pod_json.contains(password),
        "the password is in the pod spec"
    );
    let claims = assert_locked_down("redis", &spec, &c, 999);
    assert_eq!(claims, [("data".to_string(), "2Gi".to_string(), None)]);
    let data = c.volume_mounts.iter().flatten().find(|m| m.name == "data");
    let dir = args
        .windows(2)
        .find(|w| w[0] == "--dir")
        .map(|w| w[1].clone());
    assert_eq!(data.map(|m| m.mount_path.clone()), dir, "AOF on the volume");
}

/// The operator Deployment gives itself and every tenant's pods the chart's stores.
async fn assert_operator_wiring(client: &Client, ns: &str, release: &str) -> String {
    let dep = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(release)
        .await
        .expect("operator Deployment");
    let template = dep.spec.template;
    let c = template.spec.expect("pod").containers[0].clone();
    let args = c.args.clone().expect("args");
    for want in [
        format!("--qdrant-url=http://{release}-qdrant.{ns}.svc:6334"),
        format!("--api-env-from-secret=TENANTRY_QDRANT_API_KEY={release}-qdrant:api-key"),
        format!("--api-env-from-secret=TENANTRY_REDIS_URL={release}-redis:url"),
        "--api-config=/etc/tenantry/api/serve.yaml".to_string(),
        "--api-pod-defaults=/etc/tenantry/api/pod.yaml".to_string(),
    ] {
        assert!(args.contains(&want), "{want} in {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--vector-data-dir")
            || a.starts_with("--qdrant-api-key-secret")),
        "{args:?}"
    );
    assert_eq!(
        secret_ref(&c, "TENANTRY_QDRANT_API_KEY"),
        Some((format!("{release}-qdrant"), "api-key".to_string()))
    );
    // The URL names the client Service's gRPC port.
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(&format!("{release}-qdrant"))
        .await
        .expect("Qdrant Service");
    let ports = svc.spec.and_then(|s| s.ports).unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|p| p.port == 6334 && p.name.as_deref() == Some("grpc"))
    );
    let annotations = template.metadata.and_then(|m| m.annotations);
    annotations
        .and_then(|a| a.get("checksum/api").cloned())
        .expect("checksum/api on the operator pods")
}

/// Only the operator's pods and the tenants' API pods (as the operator labels them) may
/// connect to each store, on its port only.
async fn assert_store_network_policies(client: &Client, ns: &str, release: &str) {
    let dep = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(release)
        .await
        .expect("operator Deployment");
    let operator = dep.spec.selector.match_labels;
    let names =
        tenantry::controller::build::Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
    let api_pods = tenantry::controller::build::api_selector(&names);
    for (store, port) in [("qdrant", 6334), ("redis", 6379)] {
        let name = format!("{release}-{store}");
        let np = Api::<NetworkPolicy>::namespaced(client.clone(), ns)
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("NetworkPolicy {name}: {e}"));
        let spec = np.spec.expect("spec");
        let (sts, _) = statefulset(client, ns, &name).await;
        let selected = spec.pod_selector.and_then(|s| s.match_labels);
        assert_eq!(selected, sts.selector.match_labels);
        let rules = spec.ingress.expect("ingress rules");
        assert_eq!(rules.len(), 1, "{store}");
        let ports: Vec<_> = rules[0]
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.clone())
            .collect();
        assert_eq!(ports, [Some(IntOrString::Int(port))], "{store}");
        let from = rules[0].from.clone().expect("peers");
        assert_eq!(from.len(), 2, "{store}: {from:?}");
        assert_eq!(
            from[0].pod_selector.clone().and_then(|s| s.match_labels),
            operator
        );
        assert!(
            from[0].namespace_selector.is_none(),
            "the release namespace only"
        );
        let any_ns = from[1]
            .namespace_selector
            .clone()
            .expect("namespaceSelector");
        assert!(any_ns.match_labels.is_none() && any_ns.match_expressions.is_none());
        let peer = from[1].pod_selector.clone().and_then(|s| s.match_labels);
        let peer = peer.expect("API pod labels");
        assert!(
            peer.iter().all(|(k, v)| api_pods.get(k) == Some(v)),
            "{store}: {peer:?} does not select the API pods {api_pods:?}"
        );
    }
}

/// The generated secrets of the chart's stores: the Qdrant key, the Redis password (checked
/// against the Secret's url and redis.conf).
async fn store_secrets(client: &Client, ns: &str, release: &str) -> (String, String) {
    let random = |s: &str| s.len() == 32 && s.chars().all(|c| c.is_ascii_alphanumeric());
    let qdrant = secret_strings(client, ns, &format!("{release}-qdrant")).await;
    let key = qdrant.get("api-key").expect("api-key").clone();
    assert!(random(&key), "a generated key");
    let redis = secret_strings(client, ns, &format!("{release}-redis")).await;
    let password = redis.get("password").expect("password").clone();
    assert!(random(&password) && password != key, "a generated password");
    assert_eq!(
        redis.get("url"),
        Some(&format!(
            "redis://:{password}@{release}-redis.{ns}.svc:6379"
        ))
    );
    assert_eq!(
        redis.get("redis.conf"),
        Some(&format!("requirepass {password}\n"))
    );
    for store in ["qdrant", "redis"] {
        let s = Api::<Secret>::namespaced(client.clone(), ns)
            .get(&format!("{release}-{store}"))
            .await
            .expect("secret");
        let keep = s.annotations().get("helm.sh/resource-policy").cloned();
        assert_eq!(keep.as_deref(), Some("keep"), "{store}");
    }
    (key, password)
}

#[tokio::test]
async fn installed_chart_deploys_its_stores_and_keeps_their_secrets_across_upgrades() {
    let cluster = Cluster::new().await;
    let (env, client) = (cluster.env, cluster.client.clone());
    remove_leftovers(env, &client).await;
    let release = unique(RELEASE_PREFIX);
    let ns = release.clone();
    for store in ["qdrant", "redis"] {
        cluster.remove_on_drop("secret", Some(&ns), &format!("{release}-{store}"));
    }
    let chart = chart();
    let chart = chart.to_str().expect("utf-8");
    let lease = format!("leaderElection.leaseName={}", unique("chart-lease"));
    let install = |extra: &'static str| {
        let mut args = vec!["upgrade", "--install", &release, chart, "-n", &ns];
        args.extend(["--create-namespace", "--set", "quotaTiers.create=false"]);
        args.extend(["--set", &lease, "--set", extra]);
        helm_ok(env, &args)
    };
    install("api.config.llm.model=first");
    let secrets = store_secrets(&client, &ns, &release).await;
    assert_chart_qdrant(&client, &ns, &format!("{release}-qdrant")).await;
    assert_chart_redis(&client, &ns, &format!("{release}-redis"), &secrets.1).await;
    let checksum = assert_operator_wiring(&client, &ns, &release).await;
    assert_store_network_policies(&client, &ns, &release).await;

    // An upgrade that changes the API pods' config: same secrets, the operator rolls.
    install("api.config.llm.model=second");
    assert_eq!(store_secrets(&client, &ns, &release).await, secrets);
    let rolled = assert_operator_wiring(&client, &ns, &release).await;
    assert_ne!(rolled, checksum, "checksum/api follows the API config");

    // Uninstalled, the secrets stay (the volumes keep data written with them); installed
    // again, the release takes them back unchanged.
    helm_ok(env, &["uninstall", &release, "-n", &ns]);
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns);
    assert!(
        sts.get_opt(&format!("{release}-qdrant"))
            .await
            .expect("get")
            .is_none()
    );
    assert_eq!(store_secrets(&client, &ns, &release).await, secrets);
    install("api.config.llm.model=third");
    assert_eq!(store_secrets(&client, &ns, &release).await, secrets);
    helm_ok(env, &["uninstall", &release, "-n", &ns]);
}

/// `value` (a serialized config) has exactly the keys `schema` declares, at every level.
fn assert_schema_has_keys(path: &str, value: &Value, schema: &Value) {
    let Some(obj) = value.as_object() else {
        return;
    };
    let props = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{path}: no properties in the schema"));
    let declared: BTreeSet<&String> = props.keys().collect();
    let real: BTreeSet<&String> = obj.keys().collect();
    assert_eq!(declared, real, "{path}: values.schema.json vs ServeConfig");
    assert_eq!(schema["additionalProperties"], false, "{path}");
    for (k, v) in obj {
        assert_schema_has_keys(&format!("{path}.{k}"), v, &props[k]);
    }
}

#[test]
fn schema_of_api_config_has_the_keys_of_the_serve_config() {
    use tenantry::config::{EmbeddingConfig, LlmFallback, ServeConfig};
    let text = std::fs::read_to_string(chart().join("values.schema.json")).expect("schema");
    let schema: Value = serde_json::from_str(&text).expect("json");
    let config = &schema["properties"]["api"]["properties"]["config"];
    let mut defaults = serde_json::to_value(ServeConfig::default()).expect("json");
    // Each embedding provider is one variant of the schema (the default is `local`).
    let local = defaults["embedding"].take();
    let embedding = &config["properties"]["embedding"]["oneOf"];
    assert_schema_has_keys("embedding(local)", &local, &embedding[0]);
    let openai = EmbeddingConfig::OpenAi {
        base_url: "https://e.example/v1".into(),
        api_key_env: "KEY".into(),
        model: "m".into(),
        dimension: 3,
    };
    let openai = serde_json::to_value(openai).expect("json");
    assert_schema_has_keys("embedding(openai)", &openai, &embedding[1]);
    let fallback = LlmFallback {
        base_url: "https://f.example/v1".into(),
        api_key_env: Some("KEY".into()),
        model: Some("m".into()),
    };
    let items = &config["properties"]["llm"]["properties"]["fallbacks"]["items"];
    let fallback = serde_json::to_value(fallback).expect("json");
    assert_schema_has_keys("llm.fallbacks[]", &fallback, items);
    // The rest (embedding is now null: checked above).
    assert_schema_has_keys("api.config", &defaults, config);
}

/// ConfigMap `<fullname>-api` of a rendering.
fn api_configmap(docs: &[Value]) -> (String, String) {
    let cm = of_kind(docs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "tenantry-api")
        .expect("ConfigMap tenantry-api");
    let file = |k: &str| cm["data"][k].as_str().expect(k).to_string();
    (file("serve.yaml"), file("pod.yaml"))
}

#[test]
fn api_configmap_holds_a_serve_config_and_pod_defaults_of_the_right_types() {
    use tenantry::config::ServeConfig;
    let env = KubeEnv::get();
    let (serve, pod) = api_configmap(&yaml_docs(&template(env, "ns", &[])));
    let serve: ServeConfig = serde_saphyr::from_str(&serve).expect("serve.yaml");
    assert_eq!(
        serve,
        ServeConfig::default(),
        "empty api.config: the defaults"
    );
    assert_eq!(pod.trim(), "{}", "no pod defaults set");

    let sets = [
        "api.config.llm.model=gpt-4o",
        "api.config.llm.maxTokens=256",
        "api.config.quota.failMode=failOpen",
        "api.config.limits.maxQuestionChars=2000",
        "api.imagePullSecrets[0].name=registry",
        "api.nodeSelector.pool=api",
        "api.tolerations[0].key=dedicated",
        "api.tolerations[0].operator=Exists",
        "api.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=pool",
        "api.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        "api.topologySpreadConstraints[0].maxSkew=1",
        "api.topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
        "api.topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "api.podLabels.team=rag",
        "api.podAnnotations.owner=platform",
        "api.priorityClassName=tenant-api",
        "api.resources.requests.cpu=250m",
        "api.resources.limits.memory=1Gi",
    ];
    let (serve, pod) = api_configmap(&yaml_docs(&template(env, "ns", &sets)));
    let serve: ServeConfig = serde_saphyr::from_str(&serve).expect("serve.yaml");
    serve.check().expect("a valid serve config");
    assert_eq!(
        (serve.llm.model.as_str(), serve.llm.max_tokens),
        ("gpt-4o", 256)
    );
    assert_eq!(serve.quota.fail_mode, tenantry::quota::FailMode::FailOpen);
    assert_eq!(serve.limits.max_question_chars, 2000);

    // pod.yaml: the scheduling keys are those of a PodSpec, resources a ResourceRequirements.
    let mut pod: Value = serde_saphyr::from_str(&pod).expect("pod.yaml");
    let keys: BTreeSet<&str> = pod
        .as_object()
        .expect("map")
        .keys()
        .map(|k| k.as_str())
        .collect();
    let interface = [
        "affinity",
        "imagePullSecrets",
        "nodeSelector",
        "podAnnotations",
        "podLabels",
        "priorityClassName",
        "resources",
        "tolerations",
        "topologySpreadConstraints",
    ];
    assert_eq!(
        keys,
        BTreeSet::from(interface),
        "the keys of --api-pod-defaults"
    );
    let obj = pod.as_object_mut().expect("map");
    let resources = obj.remove("resources").expect("resources");
    let r: k8s_openapi::api::core::v1::ResourceRequirements =
        serde_json::from_value(resources).expect("resources");
    assert_eq!(r.requests.expect("requests")["cpu"].0, "250m");
    for (k, want) in [("podLabels", "team"), ("podAnnotations", "owner")] {
        let m: BTreeMap<String, String> = serde_json::from_value(obj.remove(k).expect(k)).expect(k);
        assert!(m.contains_key(want), "{k}: {m:?}");
    }
    obj.insert("containers".into(), json!([]));
    let spec: PodSpec = serde_json::from_value(pod).expect("PodSpec fields");
    assert_eq!(spec.priority_class_name.as_deref(), Some("tenant-api"));
    assert_eq!(
        spec.tolerations.expect("tolerations")[0].key.as_deref(),
        Some("dedicated")
    );
    assert!(spec.affinity.and_then(|a| a.node_affinity).is_some());
    assert_eq!(
        spec.topology_spread_constraints.expect("spread")[0].max_skew,
        1
    );
    assert_eq!(
        spec.image_pull_secrets.expect("secrets")[0].name,
        "registry"
    );
}

/// The Qdrant server binary: `QDRANT_BIN`, else the last line printed by
/// `$QDRANT_SRC/build.sh` (default `../shared/qdrant`, next to the checkout).
fn qdrant_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("QDRANT_BIN") {
        return PathBuf::from(bin);
    }
    let src = std::env::var_os("QDRANT_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/qdrant"));
    let out = Command::new(src.join("build.sh"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{}/build.sh (set QDRANT_BIN): {e}", src.display()));
    assert!(out.status.success(), "build.sh failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("a path").trim())
}

/// The container of the rendered StatefulSet `name`, and the rendered Secrets' decoded data.
fn rendered_store(docs: &[Value], name: &str) -> (Container, BTreeMap<String, String>) {
    let sts = of_kind(docs, "StatefulSet")
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .expect("StatefulSet");
    let c = sts["spec"]["template"]["spec"]["containers"][0].clone();
    let secret = of_kind(docs, "Secret")
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .expect("Secret");
    let data: BTreeMap<String, String> =
        serde_json::from_value(secret["data"].clone()).expect("data");
    let decode = |v: &String| {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v)
            .expect("base64");
        String::from_utf8(raw).expect("utf-8")
    };
    let data = data.iter().map(|(k, v)| (k.clone(), decode(v))).collect();
    (serde_json::from_value(c).expect("container"), data)
}

/// The container's env as a kubelet resolves it (secretKeyRef from `secret`), with every
/// value that is a mounted path moved under `dir`.
fn store_env(
    c: &Container,
    secret: &BTreeMap<String, String>,
    dir: &Path,
) -> Vec<(String, String)> {
    let local = |v: &str| {
        let mounted = c
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| v.starts_with(&m.mount_path));
        if !mounted {
            return v.to_string();
        }
        let p = dir.join(v.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        p.display().to_string()
    };
    let value = |e: &EnvVar| match (&e.value, &e.value_from) {
        (Some(v), _) => local(v),
        (None, Some(from)) => {
            let key = &from.secret_key_ref.as_ref().expect("secretKeyRef").key;
            secret
                .get(key)
                .expect("a key of the store's Secret")
                .clone()
        }
        _ => panic!("env {}: no value", e.name),
    };
    c.env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), value(e)))
        .collect()
}

/// Status of GET `url` (with Qdrant's `api-key` header when given).
async fn http_status(url: &str, key: Option<&str>) -> Option<u16> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(k) = key {
        req = req.header("api-key", k);
    }
    Some(req.send().await.ok()?.status().as_u16())
}

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        common::kill(&mut self.0);
    }
}

/// A real Qdrant run as the chart's StatefulSet runs it: its container's env (the API key from
/// the Secret, the mounted folders under a temp dir), on free ports of 127.0.0.1.
struct ChartQdrant {
    _child: Killed,
    /// `http://127.0.0.1:<port>`: its REST port.
    http: String,
    grpc: u16,
    /// Its API key.
    key: String,
}

impl ChartQdrant {
    /// Starts it and waits until its readiness probe passes.
    async fn run(c: &Container, secret: &BTreeMap<String, String>, dir: &Path) -> Self {
        let (http, grpc) = (common::free_port(), common::free_port());
        let mut cmd = Command::new(qdrant_bin());
        cmd.envs(store_env(c, secret, dir))
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", http.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", grpc.to_string())
            .current_dir(dir)
            .stdout(Stdio::null());
        let child = Killed(cmd.spawn().expect("spawn qdrant"));
        let http = format!("http://127.0.0.1:{http}");
        let ready = http_probe_path(&c.readiness_probe).expect("readiness path");
        eventually(60, "Qdrant ready on its readiness probe", || async {
            (http_status(&format!("{http}{ready}"), None).await? == 200).then_some(())
        })
        .await;
        let key = secret.get("api-key").expect("api-key").clone();
        Self {
            _child: child,
            http,
            grpc,
            key,
        }
    }

    /// Its gRPC URL (what `--qdrant-url` names).
    fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }
}

#[tokio::test]
async fn the_chart_qdrant_runs_as_rendered_with_its_generated_key() {
    let env = KubeEnv::get();
    let docs = yaml_docs(&template(env, "stores", &[]));
    let (c, secret) = rendered_store(&docs, "tenantry-qdrant");
    let dir = tempfile::tempdir().expect("tmp");
    let qdrant = ChartQdrant::run(&c, &secret, dir.path()).await;
    let base = &qdrant.http;
    let live = http_probe_path(&c.liveness_probe).expect("liveness path");
    assert_eq!(http_status(&format!("{base}{live}"), None).await, Some(200));
    let collections = format!("{base}/collections");
    assert_eq!(http_status(&collections, None).await, Some(401), "no key");
    let key = Some(qdrant.key.as_str());
    assert_eq!(
        http_status(&collections, key).await,
        Some(200),
        "the Secret's key"
    );
    // Everything it wrote is under the mounted folders (the root filesystem is read-only).
    for sub in ["qdrant/storage", "qdrant/init/.qdrant-initialized"] {
        assert!(dir.path().join(sub).exists(), "{sub}");
    }
}

#[tokio::test]
async fn the_chart_redis_runs_as_rendered_with_aof_and_its_generated_password() {
    let env = KubeEnv::get();
    let docs = yaml_docs(&template(env, "stores", &[]));
    let (c, secret) = rendered_store(&docs, "tenantry-redis");
    let dir = tempfile::tempdir().expect("tmp");
    // The mounted files: redis.conf from the Secret, /data.
    let conf = dir.path().join("etc/redis/redis.conf");
    std::fs::create_dir_all(conf.parent().expect("parent")).expect("mkdir");
    std::fs::write(&conf, &secret["redis.conf"]).expect("write");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let local = |a: &String| match a.as_str() {
        "/etc/redis/redis.conf" => conf.display().to_string(),
        "/data" => data.display().to_string(),
        _ => a.clone(),
    };
    let port = common::free_port();
    let command = c.command.clone().expect("command");
    let _redis = Killed(
        Command::new(&command[0])
            .args(c.args.iter().flatten().map(local))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .envs(store_env(&c, &secret, dir.path()))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-server"),
    );
    // The readiness probe, as the kubelet runs it (redis-cli pointed at this port).
    let probe = c.readiness_probe.clone().and_then(|p| p.exec?.command);
    let probe = probe.expect("exec probe");
    let run_probe = |with_env: bool| {
        let script = probe[2].replace("redis-cli", &format!("redis-cli -p {port}"));
        let mut cmd = Command::new(&probe[0]);
        cmd.args([&probe[1], &script]).env_remove("REDISCLI_AUTH");
        if with_env {
            cmd.envs(store_env(&c, &secret, dir.path()));
        }
        cmd.output().expect("probe").status.success()
    };
    eventually(30, "the readiness probe passes", || async {
        run_probe(true).then_some(())
    })
    .await;
    assert!(!run_probe(false), "the probe needs the password");

    // The `url` the API pods get (the Service name resolved to this process).
    let host = "tenantry-redis.stores.svc:6379";
    let url = secret["url"].replace(host, &format!("127.0.0.1:{port}"));
    let client = redis::Client::open(url).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let aof: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut conn)
        .await
        .expect("CONFIG GET");
    assert_eq!(aof, ["appendonly", "yes"]);
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let dir_of: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dir")
        .query_async(&mut conn)
        .await
        .expect("CONFIG GET dir");
    assert_eq!(
        dir_of[1],
        data.display().to_string(),
        "the AOF is on the volume"
    );
}
