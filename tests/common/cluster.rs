//! A real Kubernetes API server for tests (`scripts/kube-test-env.sh`), an admin client, and
//! the operator run as a child process under exactly the RBAC rights of `config/rbac/`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

/// The running test API server.
pub struct KubeEnv {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Folder with the cached kubectl.
    pub bin: PathBuf,
    /// Kubeconfig of the operator's ServiceAccount (its RBAC rights only).
    pub operator_kubeconfig: PathBuf,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

static ENV: OnceLock<KubeEnv> = OnceLock::new();
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Operator tests share one cluster and one leader Lease: they run one at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

impl KubeEnv {
    /// Starts (or reuses) the API server, installs the CRDs and the operator's RBAC.
    pub fn get() -> &'static KubeEnv {
        ENV.get_or_init(|| {
            let out = Command::new(root().join("scripts/kube-test-env.sh"))
                .arg("start")
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/kube-test-env.sh start");
            assert!(out.status.success(), "kube-test-env.sh start failed");
            let text = String::from_utf8_lossy(&out.stdout);
            let mut kubeconfig = None;
            let mut bin = None;
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("export KUBECONFIG=") {
                    kubeconfig = Some(PathBuf::from(v.trim_matches('\'').trim_matches('"')));
                }
                if let Some(v) = line.strip_prefix("export PATH=") {
                    let first = v
                        .trim_matches('\'')
                        .trim_matches('"')
                        .split(':')
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    bin = Some(PathBuf::from(first));
                }
            }
            let env = KubeEnv {
                kubeconfig: kubeconfig.expect("KUBECONFIG line"),
                bin: bin.expect("PATH line"),
                operator_kubeconfig: PathBuf::new(),
            };
            env.kubectl(
                &["apply", "--server-side", "--force-conflicts", "-f"],
                Some(&root().join("crds/tenantry.yaml")),
            );
            env.kubectl(
                &[
                    "wait",
                    "--for=condition=Established",
                    "crd/tenants.tenantry.dev",
                    "crd/quotatiers.tenantry.dev",
                    "--timeout=60s",
                ],
                None,
            );
            env.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: tenantry-system}\n");
            env.kubectl(&["apply", "-k"], Some(&root().join("config/rbac")));
            let token = env.kubectl(
                &[
                    "create",
                    "token",
                    "tenantry-operator",
                    "-n",
                    "tenantry-system",
                    "--duration=2h",
                ],
                None,
            );
            let operator_kubeconfig = env.write_token_kubeconfig("operator", token.trim());
            KubeEnv {
                operator_kubeconfig,
                ..env
            }
        })
    }

    /// Runs kubectl as admin (with `-f/-k PATH` appended when given); returns stdout.
    pub fn kubectl(&self, args: &[&str], path: Option<&Path>) -> String {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.args(args);
        if let Some(p) = path {
            cmd.arg(p);
        }
        let out = cmd
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
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

    fn write_token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let admin: Value =
            serde_json::from_str(&self.kubectl(&["config", "view", "--raw", "-o", "json"], None))
                .expect("kubeconfig json");
        let cluster = &admin["clusters"][0]["cluster"];
        let cfg = serde_json::json!({
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

/// A running `tenantry operator` process (under the operator's RBAC); killed on drop.
pub struct Operator {
    child: Child,
    /// Address of its /metrics, /healthz, /readyz.
    pub addr: SocketAddr,
    /// Its log lines.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Its identity in the Lease.
    pub identity: String,
}

/// Options of one operator process.
pub struct OperatorOpts<'a> {
    /// Identity in the Lease.
    pub identity: &'a str,
    /// Folder of its embedded vector store.
    pub vector_dir: &'a Path,
    /// Lease duration.
    pub lease_duration: &'a str,
    /// Extra operator arguments.
    pub extra: &'a [&'a str],
}

impl Operator {
    /// Starts an operator and waits until it serves its metrics port.
    pub fn start(env: &KubeEnv, opts: OperatorOpts<'_>) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenantry"))
            .args([
                "operator",
                "--listen",
                "127.0.0.1:0",
                "--image",
                "registry.example/tenantry:test",
                "--image-pull-policy",
                "Always",
            ])
            .args([
                "--identity",
                opts.identity,
                "--lease-duration",
                opts.lease_duration,
            ])
            .arg("--vector-data-dir")
            .arg(opts.vector_dir)
            .args(["--api-env", "OPENAI_BASE_URL=http://llm.example/v1"])
            .args(opts.extra)
            .env("KUBECONFIG", &env.operator_kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tenantry operator");
        let (logs, ready) =
            super::collect_logs(&mut child, "operator started; waiting for leadership");
        let line = ready.recv_timeout(Duration::from_secs(60));
        let Some(addr) = line
            .as_ref()
            .ok()
            .and_then(|v| v["addr"].as_str()?.parse().ok())
        else {
            let _ = child.kill();
            panic!(
                "operator did not start ({line:?}): {}",
                logs.lock().expect("lock").join("\n")
            );
        };
        Self {
            child,
            addr,
            logs,
            identity: opts.identity.to_string(),
        }
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGTERM (it releases the Lease).
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// A unique lowercase suffix for object names.
pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}", (n as u64) & 0xff_ffff)
}
