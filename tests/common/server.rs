//! The `tenantry serve` process under test: its folders (`Dirs`), the options of one start
//! (`Start`), the running child (`Server`, terminated on drop) with HTTP helpers, and the
//! collection of a child's JSON log lines that every spawned tenantry process shares.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tenantry::auth::keys::{Keyring, keyring_path};
use tenantry::domain::TenantId;

use super::llm::ScriptedLlm;

/// The JSON log lines a child process has printed so far, filled by a reader thread.
pub type Logs = Arc<Mutex<Vec<String>>>;

/// The local embedding model folder: `TENANTRY_MODEL_DIR`, or wherever
/// `scripts/install-model.sh` installs it (the script is idempotent); fails loudly when missing.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("TENANTRY_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let out = Command::new(super::root().join("scripts/install-model.sh"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/install-model.sh");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        });
    assert!(
        dir.join("model.safetensors").exists(),
        "embedding model missing at {}: run scripts/install-model.sh",
        dir.display()
    );
    dir
}

/// A Tenant manifest of tier `pro` named `name`, with `extra_spec` (indented YAML) appended to
/// its spec.
pub fn tenant_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata:\n  name: {name}\nspec:\n  tier: pro\n{extra_spec}"
    )
}

/// Folders of one `serve` instance (kept across restarts).
pub struct Dirs {
    /// Holds everything; removed on drop.
    pub root: tempfile::TempDir,
}

impl Dirs {
    /// New empty folders.
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("tenants")).expect("mkdir");
        Self { root }
    }
    /// The `--data-dir` folder (documents, usage, generated signing keys).
    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }
    /// The `--tenants` folder of Tenant manifests `serve` watches.
    pub fn tenants(&self) -> PathBuf {
        self.root.path().join("tenants")
    }
    /// `tenantry serve` on 127.0.0.1:0 (API and metrics) with these folders; more arguments
    /// may follow.
    pub fn serve_command(&self) -> Command {
        // A benchmark may compare another build of the binary (`TENANTRY_BENCH_BIN`).
        let bin = std::env::var_os("TENANTRY_BENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_tenantry").into());
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(self.data())
            .arg("--tenants")
            .arg(self.tenants());
        cmd
    }
    /// Writes a tenant manifest file.
    pub fn add_tenant(&self, name: &str, extra_spec: &str) {
        self.write_manifest(&format!("{name}.yaml"), &tenant_yaml(name, extra_spec));
    }
    /// Writes any manifest file.
    pub fn write_manifest(&self, file: &str, text: &str) {
        std::fs::write(self.tenants().join(file), text).expect("write manifest");
    }
    /// Writes a config file and returns its path.
    pub fn config(&self, yaml: &str) -> PathBuf {
        let p = self.root.path().join("config.yaml");
        std::fs::write(&p, yaml).expect("write config");
        p
    }
    /// Mints a token with the tenant's current key from the data folder.
    pub fn token(&self, tenant: &str, sub: &str) -> String {
        let id = TenantId::parse(tenant).expect("tenant id");
        self.keyring(tenant).mint(&id, sub, 3600).expect("mint")
    }
    /// The tenant's keyring, as `serve` generated it in the data folder.
    pub fn keyring(&self, tenant: &str) -> Keyring {
        let id = TenantId::parse(tenant).expect("tenant id");
        Keyring::read(&keyring_path(&self.data().join("keys"), &id)).expect("keyring")
    }
}

/// A running `tenantry serve` child process; terminated on drop.
pub struct Server {
    child: Child,
    /// Address of the API.
    pub addr: SocketAddr,
    /// Address of `/metrics` (plain HTTP even when the API is HTTPS).
    pub metrics_addr: SocketAddr,
    /// JSON log lines printed so far.
    pub logs: Logs,
    /// A plain-HTTP client for the API.
    pub http: reqwest::Client,
}

/// Options of one start.
#[derive(Default)]
pub struct Start<'a> {
    /// Scripted LLM to use (none: offline responder).
    pub llm: Option<&'a ScriptedLlm>,
    /// Config file.
    pub config: Option<PathBuf>,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Extra environment variables (they win over the defaults, e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
}

impl Server {
    /// Starts `serve` on 127.0.0.1:0 with `dirs` and waits until it listens.
    pub fn start(dirs: &Dirs, opts: Start<'_>) -> Self {
        tenantry::install_crypto_provider();
        let mut cmd = dirs.serve_command();
        cmd.args(&opts.args)
            .current_dir(dirs.root.path())
            .env("TENANTRY_MODEL_DIR", model_dir())
            .env("RUST_LOG", "info")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        if let Some(c) = &opts.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(llm) = opts.llm {
            cmd.env("OPENAI_BASE_URL", llm.base_url());
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        Self::spawn(&mut cmd)
    }

    /// Spawns `cmd` (a `tenantry serve` command line) and waits until it listens.
    pub fn spawn(cmd: &mut Command) -> Self {
        tenantry::install_crypto_provider();
        let (child, logs, (addr, metrics_addr)) =
            spawn_ready(cmd, "listening", Duration::from_secs(120), |v| {
                Some((
                    v["addr"].as_str()?.parse().ok()?,
                    v["metrics_addr"].as_str()?.parse().ok()?,
                ))
            });
        Self {
            child,
            addr,
            metrics_addr,
            logs,
            http: reqwest::Client::new(),
        }
    }

    /// URL of `path` on the API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Process id of the `serve` child (e.g. to read its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        super::sigterm(&self.child);
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "serve exited with {status}");
    }

    /// Sends `req` with a bearer token; returns status and JSON body.
    async fn send(&self, req: reqwest::RequestBuilder, token: &str) -> (StatusCode, Value) {
        status_json(req.bearer_auth(token).send().await.expect("request")).await
    }

    /// POSTs JSON with a bearer token; returns status and JSON body.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).json(&body), token)
            .await
    }

    /// GETs with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(path)), token).await
    }

    /// DELETEs with a bearer token.
    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(self.http.delete(self.url(path)), token).await
    }

    /// Ingests a document; returns its id.
    pub async fn ingest(&self, token: &str, title: &str, text: &str) -> String {
        let (status, body) = self
            .post(
                "/v1/documents",
                token,
                json!({"text": text, "title": title}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("id").to_string()
    }

    /// Asks a question.
    pub async fn chat(&self, token: &str, question: &str) -> (StatusCode, Value) {
        self.post("/v1/chat", token, json!({"question": question}))
            .await
    }

    /// Waits until a request succeeds (tenant reloads are asynchronous).
    pub async fn wait_for_token(&self, token: &str) {
        for _ in 0..100 {
            let (s, _) = self.get("/v1/documents", token).await;
            if s == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("token never accepted");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        super::kill(&mut self.child);
    }
}

/// Spawns `cmd` (stdout piped; stderr inherited), collects its JSON log lines and waits up to
/// `timeout` for the first line whose `message` is `ready`; `parse` takes what the caller
/// needs from that line. Panics with the logs so far (and kills the child) when the line does
/// not come or `parse` finds nothing in it.
pub fn spawn_ready<T>(
    cmd: &mut Command,
    ready: &'static str,
    timeout: Duration,
    parse: impl FnOnce(&Value) -> Option<T>,
) -> (Child, Logs, T) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let (logs, lines) = collect_logs(&mut child, ready);
    let line = lines.recv_timeout(timeout);
    match line.as_ref().ok().and_then(parse) {
        Some(parsed) => (child, logs, parsed),
        None => {
            super::kill(&mut child);
            panic!(
                "{cmd:?} did not start ({line:?}); logs:\n{}",
                logs.lock().expect("lock").join("\n")
            );
        }
    }
}

/// Collects a child's JSON log lines from its stdout; the receiver gets the first line whose
/// `message` is `ready`.
fn collect_logs(
    child: &mut Child,
    ready: &'static str,
) -> (Logs, std::sync::mpsc::Receiver<Value>) {
    let stdout = child.stdout.take().expect("child stdout is piped");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let parsed = serde_json::from_str::<Value>(&line).ok();
            // Stored before the ready line is announced: whoever waited for it finds it logged.
            sink.lock().expect("lock").push(line);
            if let Some(v) = parsed.filter(|v| v["message"] == ready) {
                let _ = tx.send(v);
            }
        }
    });
    (logs, rx)
}

/// Status and JSON body (Null when the body is empty or not JSON).
pub async fn status_json(r: reqwest::Response) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(r.status().as_u16()).expect("status");
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}
