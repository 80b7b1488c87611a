//! The cluster fixture: a real Kubernetes API server for tests (`scripts/kube-test-env.sh`,
//! `KubeEnv`) with the CRDs and the operator's RBAC installed, the operator run as a child
//! process under exactly the RBAC rights of `config/rbac/` (`Operator`), one test's exclusive
//! use of the cluster with teardown of what it created (`Cluster`), and polling helpers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use tenantry::crd::{QuotaTier, Tenant};

use super::server::{Logs, spawn_ready};

/// The running test API server.
pub struct KubeEnv {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Folder with the cached kubectl (and helm).
    pub bin: PathBuf,
    /// Kubeconfig of the operator's ServiceAccount (its RBAC rights only).
    pub operator_kubeconfig: PathBuf,
}

static ENV: OnceLock<KubeEnv> = OnceLock::new();
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The namespace of the operator's ServiceAccount and Lease.
pub const SYSTEM_NAMESPACE: &str = "tenantry-system";

impl KubeEnv {
    /// Starts (or reuses) the API server, installs the CRDs and the operator's RBAC.
    pub fn get() -> &'static KubeEnv {
        ENV.get_or_init(|| {
            let out = Command::new(super::root().join("scripts/kube-test-env.sh"))
                .arg("start")
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/kube-test-env.sh start");
            assert!(out.status.success(), "kube-test-env.sh start failed");
            let env = Self::from_exports(&String::from_utf8_lossy(&out.stdout));
            env.install();
            let token = env.kubectl(
                &[
                    "create",
                    "token",
                    "tenantry-operator",
                    "-n",
                    SYSTEM_NAMESPACE,
                    "--duration=2h",
                ],
                None,
            );
            let operator_kubeconfig = env.write_token_kubeconfig("operator", token.trim());
            let env = KubeEnv {
                operator_kubeconfig,
                ..env
            };
            env.wait_for_admission_policy();
            env
        })
    }

    /// The admin kubeconfig and kubectl's folder from `kube-test-env.sh start`'s `export`
    /// lines (no operator kubeconfig yet).
    fn from_exports(text: &str) -> Self {
        let value = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|v| v.trim_matches('\'').trim_matches('"').to_string())
                .unwrap_or_else(|| panic!("no {prefix} line in: {text}"))
        };
        let path = value("export PATH=");
        Self {
            kubeconfig: PathBuf::from(value("export KUBECONFIG=")),
            bin: PathBuf::from(path.split(':').next().unwrap_or_default()),
            operator_kubeconfig: PathBuf::new(),
        }
    }

    /// Installs the CRDs (and waits until they are served), the operator's namespace and RBAC.
    fn install(&self) {
        self.kubectl(
            &["apply", "--server-side", "--force-conflicts", "-f"],
            Some(&super::root().join("crds/tenantry.yaml")),
        );
        self.kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "crd/tenants.tenantry.dev",
                "crd/quotatiers.tenantry.dev",
                "--timeout=60s",
            ],
            None,
        );
        self.apply_yaml(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {SYSTEM_NAMESPACE}}}\n"
        ));
        self.kubectl(&["apply", "-k"], Some(&super::root().join("config/rbac")));
    }

    /// Waits until the API server enforces the operator's admission policy (it loads a new
    /// policy a moment after it is created): a dry-run creation of an unlabelled namespace as
    /// the operator is refused by it.
    fn wait_for_admission_policy(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(self.bin.join("kubectl"))
                .arg("--kubeconfig")
                .arg(&self.operator_kubeconfig)
                .args([
                    "create",
                    "namespace",
                    "tenant-policy-probe",
                    "--dry-run=server",
                ])
                .output()
                .expect("run kubectl");
            let err = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && err.contains("ValidatingAdmissionPolicy") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the admission policy tenantry-operator is not enforced after 60 s: {err}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs kubectl as admin and returns its whole output, failed or not.
    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl as admin (with `-f/-k PATH` appended when given); returns stdout, panics
    /// when it fails.
    pub fn kubectl(&self, args: &[&str], path: Option<&Path>) -> String {
        let mut all: Vec<&str> = args.to_vec();
        let path = path.map(|p| p.to_str().expect("utf-8 path"));
        all.extend(path);
        let out = self.kubectl_output(&all);
        assert!(
            out.status.success(),
            "kubectl {all:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Applies YAML as admin.
    pub fn apply_yaml(&self, yaml: &str) {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("obj.yaml");
        std::fs::write(&p, yaml).expect("write");
        self.kubectl(&["apply", "-f"], Some(&p));
    }

    /// Writes `<name>.kubeconfig` next to the admin kubeconfig: the same cluster, user `name`
    /// authenticated by `token` (e.g. a ServiceAccount token); returns its path.
    pub fn write_token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let admin: Value =
            serde_json::from_str(&self.kubectl(&["config", "view", "--raw", "-o", "json"], None))
                .expect("kubeconfig json");
        let cluster = &admin["clusters"][0]["cluster"];
        let cfg = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "test", "user": name}}],
            "current-context": name,
        });
        let path = self.kubeconfig.with_file_name(format!("{name}.kubeconfig"));
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("json"))
            .expect("write kubeconfig");
        path
    }

    /// An admin client.
    pub async fn client(&self) -> Client {
        tenantry::install_crypto_provider();
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kube config");
        Client::try_from(config).expect("client")
    }
}

/// The log line an operator prints once it serves its metrics port.
const OPERATOR_READY: &str = "operator started; waiting for leadership";

/// A running `tenantry operator` process; killed on drop.
pub struct Operator {
    child: Child,
    /// Address of its /metrics, /healthz, /readyz.
    pub addr: SocketAddr,
    /// Its log lines.
    pub logs: Logs,
    /// Its identity in the Lease, as it reported it on start.
    pub identity: String,
    /// The folder of its embedded vector store, when the fixture made one.
    vectors: Option<tempfile::TempDir>,
}

impl Operator {
    /// Starts an operator under the operator's RBAC with identity `identity`, a 3 s Lease, a
    /// vector folder of its own and `extra` arguments; waits until it serves its metrics port.
    pub fn start(env: &KubeEnv, identity: &str, extra: &[&str]) -> Self {
        Self::start_with_env(env, identity, extra, &[])
    }

    /// Like [`Operator::start`], with environment variables `vars` (e.g. a store's API key,
    /// which the operator reads only from its environment).
    pub fn start_with_env(
        env: &KubeEnv,
        identity: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Self {
        let vectors = tempfile::tempdir().expect("tmp");
        let mut cmd = Self::command(env, identity, vectors.path(), extra);
        cmd.envs(vars.iter().copied());
        let mut operator = Self::spawn(&mut cmd);
        operator.vectors = Some(vectors);
        operator
    }

    /// Runs an operator with `extra` arguments that must refuse to start; returns what it
    /// printed on stderr.
    pub fn refused(env: &KubeEnv, extra: &[&str]) -> String {
        let vectors = tempfile::tempdir().expect("tmp");
        let out = Self::command(env, "op-refused", vectors.path(), extra)
            .output()
            .expect("run the operator");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "started with {extra:?}: {stderr}");
        stderr
    }

    /// The `tenantry operator` command line of [`Operator::start`].
    fn command(env: &KubeEnv, identity: &str, vectors: &Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
        cmd.args([
            "operator",
            "--listen",
            "127.0.0.1:0",
            "--image",
            "registry.example/tenantry:test",
            "--image-pull-policy",
            "Always",
        ])
        .args(["--identity", identity, "--lease-duration", "3s"])
        .arg("--vector-data-dir")
        .arg(vectors)
        .args(["--api-env", "OPENAI_BASE_URL=http://llm.example/v1"])
        .args(extra)
        .env("KUBECONFIG", &env.operator_kubeconfig)
        // What the chart's pod says (its own namespace), as the Downward API would.
        .env("POD_NAMESPACE", SYSTEM_NAMESPACE)
        .env("RUST_LOG", "info,kube=warn");
        cmd
    }

    /// Spawns `cmd` (a `tenantry operator` command line) and waits until it serves its
    /// metrics port.
    pub fn spawn(cmd: &mut Command) -> Self {
        let (child, logs, (addr, identity)) =
            spawn_ready(cmd, OPERATOR_READY, Duration::from_secs(60), |v| {
                Some((
                    v["addr"].as_str()?.parse().ok()?,
                    v["identity"].as_str()?.to_string(),
                ))
            });
        Self {
            child,
            addr,
            logs,
            identity,
            vectors: None,
        }
    }

    /// The folder of its embedded vector store (operators made by [`Operator::start`]).
    pub fn vector_dir(&self) -> &Path {
        self.vectors.as_ref().expect("vector folder").path()
    }

    /// Process id (e.g. to read its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Number of log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .expect("lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// All logs.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("lock").join("\n")
    }

    /// Its metrics text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Sum of `tenantry_reconcile_total` over all results.
    pub async fn reconcile_count(&self) -> u64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("tenantry_reconcile_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Kills it without letting it release the Lease (a crash).
    pub fn kill(mut self) {
        super::kill(&mut self.child);
    }

    /// Stops it with SIGTERM (it releases the Lease).
    pub fn stop(mut self) {
        super::sigterm(&self.child);
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        super::kill(&mut self.child);
    }
}

/// One test's use of the shared cluster: exclusive (tests share one API server and one leader
/// Lease, so they run one at a time), with an admin client. What the test creates through it
/// is removed on drop, finalizers included, so a failed test leaves nothing that a later
/// one trips over. Declare it before the test's operators: they are then killed first.
pub struct Cluster {
    /// The test API server.
    pub env: &'static KubeEnv,
    /// An admin client.
    pub client: Client,
    /// Cluster-scoped Tenants, through the admin client.
    pub tenants: Api<Tenant>,
    /// `(kind, namespace, name)` of what to remove on drop, in creation order.
    created: Mutex<Vec<(&'static str, Option<String>, String)>>,
    _exclusive: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// Waits for exclusive use of the cluster (starting it on first use).
    pub async fn new() -> Self {
        let exclusive = SERIAL.lock().await;
        let env = KubeEnv::get();
        let client = env.client().await;
        Self {
            env,
            tenants: Api::all(client.clone()),
            client,
            created: Mutex::new(Vec::new()),
            _exclusive: exclusive,
        }
    }

    /// Starts an operator (see [`Operator::start`]).
    pub fn operator(&self, identity: &str, extra: &[&str]) -> Operator {
        Operator::start(self.env, identity, extra)
    }

    /// The `Replicas` column of `kubectl get tenant <name> -o wide` (the API server's table
    /// output).
    pub fn replicas_column(&self, name: &str) -> String {
        self.column(name, "REPLICAS", true)
    }

    /// Column `column` (its header, e.g. `REASON`) of `kubectl get tenant <name>` (with
    /// `-o wide` when `wide`); panics when the table has no such column.
    pub fn column(&self, name: &str, column: &str, wide: bool) -> String {
        let mut args = vec!["get", "tenant", name];
        if wide {
            args.extend(["-o", "wide"]);
        }
        let table = self.env.kubectl(&args, None);
        table_column(&table, column).unwrap_or_else(|| panic!("no {column} column in:\n{table}"))
    }
    /// Removes `kind/name` (in `namespace`, if namespaced) when the test ends.
    pub fn remove_on_drop(&self, kind: &'static str, namespace: Option<&str>, name: &str) {
        self.created.lock().expect("lock").push((
            kind,
            namespace.map(str::to_string),
            name.to_string(),
        ));
    }

    /// Creates Tenant `name` with `spec` (removed on drop).
    pub async fn create_tenant(&self, name: &str, spec: Value) {
        self.remove_on_drop("tenant", None, name);
        self.tenants
            .create(&PostParams::default(), &tenant(name, spec))
            .await
            .expect("create tenant");
    }

    /// Creates QuotaTier `name` with `spec` (removed on drop).
    pub async fn create_tier(&self, name: &str, spec: Value) -> Api<QuotaTier> {
        self.remove_on_drop("quotatier", None, name);
        let tiers: Api<QuotaTier> = Api::all(self.client.clone());
        let tier: QuotaTier = serde_json::from_value(json!({
            "apiVersion": "tenantry.dev/v1alpha1", "kind": "QuotaTier",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("tier");
        tiers
            .create(&PostParams::default(), &tier)
            .await
            .expect("create tier");
        tiers
    }

    /// Waits up to 60 s until Tenant `name`'s condition `type_` has `status`.
    pub async fn wait_condition(&self, name: &str, type_: &str, status: &str) -> Tenant {
        eventually(60, &format!("{name} {type_}={status}"), || async {
            let t = self.tenants.get(name).await.ok()?;
            (condition(&t, type_).map(|c| c.0).as_deref() == Some(status)).then_some(t)
        })
        .await
    }

    /// Waits up to 90 s until Tenant `name`'s condition `type_` has `status` for `reason`.
    pub async fn wait_reason(&self, name: &str, type_: &str, status: &str, reason: &str) -> Tenant {
        let want = Some((status.to_string(), reason.to_string()));
        eventually(90, &format!("{name} {type_}={status}/{reason}"), || async {
            let t = self.tenants.get(name).await.ok()?;
            (condition(&t, type_) == want).then_some(t)
        })
        .await
    }

    /// Deletes Tenant `name` and waits until it is gone (its finalizer ran).
    pub async fn delete_and_wait_gone(&self, name: &str) {
        let _ = self.tenants.delete(name, &DeleteParams::default()).await;
        eventually(60, &format!("{name} deleted"), || async {
            self.tenants
                .get_opt(name)
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;
    }

    /// Writes what a kubelet + deployment controller would report once the pods of Deployment
    /// `ns/name` run.
    pub async fn mark_available(&self, ns: &str, name: &str) {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let status = json!({"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "ok"}]}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("patch deployment status");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let created = std::mem::take(&mut *self.created.lock().expect("lock"));
        for (kind, namespace, name) in created.into_iter().rev() {
            let object = format!("{kind}/{name}");
            let mut scope = Vec::new();
            if let Some(ns) = &namespace {
                scope.extend(["-n", ns.as_str()]);
            }
            // Nothing runs a finalizer any more: drop them so the object really goes.
            let unfinalize = r#"{"metadata":{"finalizers":null}}"#;
            let mut patch = vec!["patch", object.as_str(), "--type=merge", "-p", unfinalize];
            patch.extend(&scope);
            let _ = self.env.kubectl_output(&patch);
            let mut delete = vec![
                "delete",
                object.as_str(),
                "--ignore-not-found",
                "--wait=false",
            ];
            delete.extend(&scope);
            let _ = self.env.kubectl_output(&delete);
        }
    }
}

/// A Tenant named `name` with `spec`.
pub fn tenant(name: &str, spec: Value) -> Tenant {
    serde_json::from_value(json!({
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("tenant")
}

/// Status and reason of the Tenant's condition `type_`.
pub fn condition(t: &Tenant, type_: &str) -> Option<(String, String)> {
    t.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of column `column` in the first row of a kubectl table (columns start where
/// their header starts; headers hold no spaces).
pub fn table_column(table: &str, column: &str) -> Option<String> {
    let mut lines = table.lines();
    let header = lines.next()?;
    let row = lines.next().unwrap_or_default();
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .collect();
    let at = starts
        .iter()
        .position(|&i| header[i..].split(' ').next() == Some(column))?;
    let end = starts
        .get(at + 1)
        .copied()
        .unwrap_or(row.len())
        .min(row.len());
    Some(row.get(starts[at].min(end)..end)?.trim().to_string())
}

/// `prefix` with a unique lowercase suffix, for object names.
pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}", (n as u64) & 0xff_ffff)
}
