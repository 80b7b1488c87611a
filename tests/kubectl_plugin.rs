//! The kubectl plugin: this binary under the name `kubectl-tenantry` on PATH, run by the real
//! kubectl as `kubectl tenantry ...` against the test API server, with a kubeconfig whose
//! current context points nowhere (so `--context` must be honoured). Tenants get a status
//! written here (no operator runs), their signing-key Secret holds the keyring of a real
//! `serve`, whose address is the Tenant's endpoint: tokens the plugin mints must verify there,
//! and the usage it prints must be what that `serve` counted.
mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use axum::http::StatusCode;
use base64::Engine as _;
use common::cluster::{Cluster, table_column, unique};
use common::llm::ScriptedLlm;
use common::server::{Dirs, Server, Start};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tenantry::crd::{ROTATE_ANNOTATION, builtin_tier};
use tenantry::domain::EffectiveQuota;

/// A folder on PATH with `kubectl-tenantry` (a symlink to the binary) and a kubeconfig with
/// a dead current context and a working context `test`.
struct Plugin {
    dir: tempfile::TempDir,
    kubectl: PathBuf,
}

impl Plugin {
    fn new(cluster: &Cluster) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_tenantry"),
            dir.path().join("kubectl-tenantry"),
        )
        .expect("symlink");
        let admin: Value = serde_json::from_str(&cluster.env.kubectl(
            &["config", "view", "--raw", "--flatten", "-o", "json"],
            None,
        ))
        .expect("kubeconfig json");
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "test", "cluster": admin["clusters"][0]["cluster"]},
                {"name": "nowhere", "cluster": {"server": "https://127.0.0.1:1"}},
            ],
            "users": [{"name": "admin", "user": admin["users"][0]["user"]}],
            "contexts": [
                {"name": "test", "context": {"cluster": "test", "user": "admin"}},
                {"name": "dead", "context": {"cluster": "nowhere", "user": "admin"}},
            ],
            "current-context": "dead",
        });
        std::fs::write(
            dir.path().join("kubeconfig"),
            serde_json::to_vec_pretty(&kubeconfig).expect("json"),
        )
        .expect("write kubeconfig");
        Self {
            kubectl: cluster.env.bin.join("kubectl"),
            dir,
        }
    }

    /// `kubectl tenantry ARGS` with the plugin folder first on PATH.
    fn run(&self, args: &[&str]) -> Output {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.dir.path().to_path_buf()];
        paths.extend(std::env::split_paths(&path));
        Command::new(&self.kubectl)
            .arg("tenantry")
            .args(args)
            .env("PATH", std::env::join_paths(paths).expect("PATH"))
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .output()
            .expect("run kubectl tenantry")
    }

    /// `kubectl tenantry --context test ARGS`; its stdout, panicking when it fails.
    fn ok(&self, args: &[&str]) -> String {
        let mut all = vec!["--context", "test"];
        all.extend(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "kubectl tenantry {all:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Like [`Plugin::ok`], for a command that must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let mut all = vec!["--context", "test"];
        all.extend(args);
        let out = self.run(&all);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "kubectl tenantry {all:?} succeeded");
        stderr
    }
}

/// The table row whose first column is `name`, split into its cells (cells hold no spaces).
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"))
}

/// `rfc3339` of `secs` seconds ago.
fn ago(secs: i64) -> String {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(now - secs)
        .expect("time")
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The claims of a JWT (its payload, not verified).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("claims json")
}

async fn create_namespace(cluster: &Cluster, name: &str) {
    cluster.remove_on_drop("namespace", None, name);
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

#[tokio::test]
async fn kubectl_tenantry_shows_mints_reads_usage_and_rotates() {
    let cluster = Cluster::new().await;
    let plugin = Plugin::new(&cluster);
    let name = unique("kp");
    let pending = format!("{name}-new");
    let ns = format!("tenant-{name}");

    // A real serve of tenant `name` (it generates the keyring the Secret will hold).
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant(&name, "  auth:\n    maxTokenLifetime: 2h\n");
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(&llm),
            ..Default::default()
        },
    );
    let ring = dirs.keyring(&name);

    // The Tenant, its namespace and Secret, and the status an operator would write.
    cluster
        .create_tenant(
            &name,
            json!({"tier": "pro", "auth": {"maxTokenLifetime": "2h"}}),
        )
        .await;
    cluster
        .create_tenant(&pending, json!({"tier": "pro"}))
        .await;
    create_namespace(&cluster, &ns).await;
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-signing-key")},
        "stringData": {"keyring.json": serde_json::to_string(&ring).expect("ring json")},
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let quota = EffectiveQuota::resolve(&builtin_tier("pro").expect("pro tier"), None);
    let endpoint = server.url("");
    let status = json!({"status": {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Reconciled", "message": "tenant is ready", "lastTransitionTime": ago(900)},
            {"type": "SigningKeyReady", "status": "True", "reason": "KeyReady", "message": format!("current key {}", ring.current), "lastTransitionTime": ago(3 * 3600)},
        ],
        "namespace": ns,
        "signingSecret": format!("{name}-signing-key"),
        "currentKeyId": ring.current,
        "keyCreatedAt": ago(3 * 86400),
        "endpoint": endpoint,
        "effectiveQuota": quota,
        "replicas": "1-3",
    }});
    cluster
        .tenants
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch status");

    // The current context points nowhere: without --context nothing is reached.
    let out = plugin.run(&["status"]);
    assert!(
        !out.status.success(),
        "reached a cluster through the dead context"
    );

    // status: one line per tenant.
    let table = plugin.ok(&["status"]);
    assert_eq!(
        table
            .lines()
            .next()
            .map(|h| h.split_whitespace().collect::<Vec<_>>()),
        Some(vec![
            "NAME", "PHASE", "TIER", "REASON", "KEY", "ENDPOINT", "AGE"
        ]),
        "{table}"
    );
    assert_eq!(
        row(&table, &name)[..6],
        [
            name.as_str(),
            "Ready",
            "pro",
            "Reconciled",
            ring.current.as_str(),
            endpoint.as_str()
        ]
    );
    assert_eq!(
        row(&table, &pending)[..6],
        [pending.as_str(), "Pending", "pro", "-", "-", "-"]
    );
    // -n: the tenant of that namespace only.
    let only = plugin.ok(&["-n", &ns, "status"]);
    assert_eq!(only.lines().count(), 2, "{only}");
    assert_eq!(table_column(&only, "NAME").as_deref(), Some(name.as_str()));
    let err = plugin.fails(&["status", &pending, "--namespace", &ns]);
    assert!(err.contains("is not the tenant of namespace"), "{err}");

    // status TENANT: fields and conditions.
    let described = plugin.ok(&["status", &name]);
    for want in [
        "Phase:         Ready".to_string(),
        format!("Endpoint:      {endpoint}"),
        format!("Namespace:     {ns}"),
        format!("Key ID:        {} (created ", ring.current),
        "3d ago)".to_string(),
        "Replicas:      1-3".to_string(),
    ] {
        assert!(described.contains(&want), "no {want:?} in:\n{described}");
    }
    let conditions = described.split("Conditions:\n").nth(1).expect("conditions");
    assert_eq!(
        conditions.lines().next().map(str::trim),
        Some("TYPE              STATUS   REASON       AGE   MESSAGE"),
        "{described}"
    );
    let ready: Vec<&str> = conditions
        .lines()
        .find(|l| l.trim_start().starts_with("Ready "))
        .expect("Ready row")
        .split_whitespace()
        .collect();
    assert_eq!(
        ready,
        [
            "Ready",
            "True",
            "Reconciled",
            "15m",
            "tenant",
            "is",
            "ready"
        ]
    );
    let err = plugin.fails(&["status", "no-such-tenant"]);
    assert!(err.contains("Tenant no-such-tenant not found"), "{err}");

    // token: signed with the Secret's key, accepted by serve; the lifetime limit holds.
    let token = plugin.ok(&["token", &name, "--subject", "alice", "--ttl", "30m"]);
    let token = token.trim();
    let c = claims(token);
    assert_eq!(
        (c["sub"].as_str(), c["tenant_id"].as_str()),
        (Some("alice"), Some(name.as_str()))
    );
    assert_eq!(
        c["exp"].as_u64().expect("exp") - c["iat"].as_u64().expect("iat"),
        1800
    );
    let err = plugin.fails(&["token", &name, "--subject", "alice", "--ttl", "3h"]);
    assert!(err.contains("maximum token lifetime of 2h"), "{err}");
    let err = plugin.fails(&["token", &pending, "--subject", "alice"]);
    assert!(err.contains("has no signing key yet"), "{err}");

    // usage: what serve counted, against its limits.
    let (s, body) = server.chat(token, "How do refunds work?").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, counted) = server.get("/v1/usage", token).await;
    assert_eq!(s, StatusCode::OK, "{counted}");
    let today = counted["tokens_today"].as_u64().expect("tokens_today");
    assert!(today > 0, "{counted}");
    let daily = quota.daily_tokens.expect("pro has a daily limit");
    let expect = |r: Vec<&str>| {
        assert_eq!(r[1], today.to_string(), "{r:?}");
        assert_eq!(r[2], daily.to_string(), "{r:?}");
        assert_eq!(r[3], (daily as u64 - today).to_string(), "{r:?}");
        // This minute's requests: 1, or 0 once the minute turned.
        let rpm = quota.requests_per_minute.expect("rpm");
        assert!(
            [format!("1/{rpm}"), format!("0/{rpm}")].contains(&r[5].to_string()),
            "{r:?}"
        );
    };
    let one = plugin.ok(&["usage", &name, "--url", &endpoint]);
    assert_eq!(
        one.lines()
            .next()
            .map(|h| h.split_whitespace().collect::<Vec<_>>()),
        Some(vec![
            "TENANT",
            "TOKENS-TODAY",
            "DAILY-LIMIT",
            "REMAINING",
            "USED",
            "REQUESTS/MIN",
            "TOKENS/MIN",
            "DOCUMENTS",
            "BYTES"
        ]),
        "{one}"
    );
    expect(row(&one, &name));
    // --all: each tenant at its status.endpoint; one without an endpoint shows its limits
    // and says why its usage is unknown.
    let out = plugin.run(&["--context", "test", "usage", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = String::from_utf8_lossy(&out.stdout);
    expect(row(&all, &name));
    let unknown = row(&all, &pending);
    assert_eq!(unknown[1], "?", "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{pending}: usage unavailable (no endpoint yet")),
        "{stderr}"
    );

    // rotate: a new value of the annotation each time.
    let said = plugin.ok(&["rotate", &name]);
    assert!(
        said.contains(&format!("tenant/{name} annotated {ROTATE_ANNOTATION}="))
            && said.contains("(was unset)")
            && said.contains(&ring.current),
        "{said}"
    );
    let annotation = |t: tenantry::crd::Tenant| {
        t.metadata
            .annotations
            .unwrap_or_default()
            .get(ROTATE_ANNOTATION)
            .cloned()
            .expect("rotate annotation")
    };
    let first = annotation(cluster.tenants.get(&name).await.expect("get"));
    assert!(said.contains(&format!("={first} ")), "{said}");
    let said = plugin.ok(&["rotate", &name]);
    let second = annotation(cluster.tenants.get(&name).await.expect("get"));
    assert_ne!(first, second);
    assert!(said.contains(&format!("(was {first})")), "{said}");

    // The binary under its own name has the same commands.
    let direct = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["kubectl", "--context", "test", "status", &name])
        .env("KUBECONFIG", plugin.dir.path().join("kubeconfig"))
        .output()
        .expect("run tenantry kubectl");
    assert!(direct.status.success());
    assert!(String::from_utf8_lossy(&direct.stdout).contains("Phase:         Ready"));
}
