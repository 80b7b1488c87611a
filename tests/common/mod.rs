//! Test harness: a real `tenantry serve` process on 127.0.0.1 with the embedded vector store
//! and the local embedding model, and a scripted OpenAI-compatible chat server on loopback.
#![allow(dead_code)]

pub mod cluster;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tenantry::auth::keys::{Keyring, keyring_path};
use tenantry::crd::TenantId;

/// The local embedding model folder; fails loudly when missing.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("TENANTRY_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").exists(),
        "embedding model missing at {}: run scripts/install-model.sh",
        dir.display()
    );
    dir
}

/// A Tenant manifest.
pub fn tenant_yaml(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata:\n  name: {name}\nspec:\n  tier: pro\n{extra_spec}"
    )
}

/// A scripted OpenAI-compatible chat server. It answers
/// `ANSWER[<model>]: <the user message>` so tests can see exactly what context reached the
/// model, and records every request body. Model `fail-500` gets a 500; `slow` waits 30 s;
/// `fail-first-N` gets a 500 for the server's first N requests.
#[derive(Clone)]
pub struct ScriptedLlm {
    /// Address it listens on.
    pub addr: SocketAddr,
    /// Bodies of the requests received.
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// Headers of the requests received (same order as `requests`).
    pub request_headers: Arc<Mutex<Vec<axum::http::HeaderMap>>>,
}

type Recorded = (
    Arc<Mutex<Vec<Value>>>,
    Arc<Mutex<Vec<axum::http::HeaderMap>>>,
);

async fn completions(
    State((log, header_log)): State<Recorded>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    header_log.lock().expect("lock").push(headers);
    let calls = {
        let mut log = log.lock().expect("lock");
        log.push(body.clone());
        log.len()
    };
    let model = body["model"].as_str().unwrap_or_default().to_string();
    // Model `fail-first-N`: the server's first N requests get a 500, later ones an answer.
    if let Some(n) = model
        .strip_prefix("fail-first-")
        .and_then(|n| n.parse::<usize>().ok())
        && calls <= n
    {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "scripted early failure", "type": "server_error"}})),
        )
            .into_response();
    }
    if model == "fail-500" {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "boom", "type": "server_error"}})),
        )
            .into_response();
    }
    if model == "slow" {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rfind(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    // Markers in the question script the answer: `[[delay:MS]]` waits, `[[fail]]` answers 500,
    // `[[usage:P:C]]` reports that usage, `[[usage:exact]]` reports exactly what tenantry
    // reserved (its tokenizer's prompt count + max_tokens).
    if let Some(ms) = marker(&user, "delay").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if user.contains("[[fail]]") {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "scripted failure", "type": "server_error"}})),
        )
            .into_response();
    }
    let scripted_usage = marker(&user, "usage").map(|v| {
        if v == "exact" {
            let messages: Vec<tenantry::llm::Message> =
                serde_json::from_value(body["messages"].clone()).expect("messages");
            (
                tenantry::quota::tokens::prompt_tokens(&model, &messages),
                body["max_tokens"].as_u64().expect("max_tokens"),
            )
        } else {
            let (p, c) = v.split_once(':').expect("usage:P:C");
            (p.parse().expect("P"), c.parse().expect("C"))
        }
    });
    let answer = format!("ANSWER[{model}]: {user}");
    if body["stream"] == true {
        return stream_answer(&body, &model, &answer, &user, scripted_usage);
    }
    if let Some((p, c)) = scripted_usage {
        return Json(json!({
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        }))
        .into_response();
    }
    let prompt_tokens = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    m["content"]
                        .as_str()
                        .unwrap_or("")
                        .split_whitespace()
                        .count()
                })
                .sum::<usize>()
        })
        .unwrap_or(0);
    Json(json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000u64,
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 7, "total_tokens": prompt_tokens + 7},
    }))
    .into_response()
}

/// The answer as server-sent events, one word per chunk. `[[chunk-delay:MS]]` waits between
/// chunks; `[[cut-after:N]]` drops the connection after N words (no finish, no `[DONE]`). The
/// usage chunk (only with `stream_options.include_usage`) reports the scripted usage, or the
/// prompt's words and the number of chunks.
fn stream_answer(
    body: &Value,
    model: &str,
    answer: &str,
    user: &str,
    scripted_usage: Option<(u64, u64)>,
) -> axum::response::Response {
    let delay = marker(user, "chunk-delay")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let cut = marker(user, "cut-after").and_then(|v| v.parse::<usize>().ok());
    let words: Vec<String> = answer
        .split_whitespace()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    let prompt_words = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    m["content"]
                        .as_str()
                        .unwrap_or("")
                        .split_whitespace()
                        .count() as u64
                })
                .sum::<u64>()
        })
        .unwrap_or(0);
    let (p, c) = scripted_usage.unwrap_or((prompt_words, words.len() as u64));
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1_700_000_000u64,
                   "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for w in words.iter().take(cut.unwrap_or(usize::MAX)) {
        events.push(chunk(json!({"content": w}), Value::Null));
    }
    if cut.is_none() {
        events.push(chunk(json!({}), json!("stop")));
        if body["stream_options"]["include_usage"] == true {
            events.push(format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1_700_000_000u64,
                       "model": model, "choices": [],
                       "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
            ));
        }
        events.push("data: [DONE]\n\n".to_string());
    }
    let stream =
        futures::stream::iter(events.into_iter().enumerate()).then(move |(i, e)| async move {
            if i > 1 && delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            Ok::<_, std::convert::Infallible>(e)
        });
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/event-stream"),
    );
    resp
}

/// The value of the first `[[name:value]]` marker in `text`.
fn marker<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text.find(&format!("[[{name}:"))? + name.len() + 3;
    let len = text[start..].find("]]")?;
    Some(&text[start..start + len])
}

impl ScriptedLlm {
    /// Starts the server on 127.0.0.1:0.
    pub async fn start() -> Self {
        tenantry::install_crypto_provider();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let request_headers = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state((requests.clone(), request_headers.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            requests,
            request_headers,
        }
    }

    /// Base URL for `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Number of requests received so far.
    pub fn calls(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }

    /// The user messages received so far.
    pub fn user_messages(&self) -> Vec<String> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|b| {
                b["messages"]
                    .as_array()?
                    .iter()
                    .find(|m| m["role"] == "user")?["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }
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
    /// Data folder.
    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }
    /// Tenants folder.
    pub fn tenants(&self) -> PathBuf {
        self.root.path().join("tenants")
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
        let ring = Keyring::read(&keyring_path(&self.data().join("keys"), &id)).expect("keyring");
        ring.mint(&id, sub, 3600).expect("mint")
    }
    /// The tenant's keyring.
    pub fn keyring(&self, tenant: &str) -> Keyring {
        let id = TenantId::parse(tenant).expect("tenant id");
        Keyring::read(&keyring_path(&self.data().join("keys"), &id)).expect("keyring")
    }
}

/// A running `tenantry serve` child process; terminated on drop.
pub struct Server {
    child: Child,
    /// API address.
    pub addr: SocketAddr,
    /// Metrics address.
    pub metrics_addr: SocketAddr,
    /// JSON log lines printed so far.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// HTTP client.
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
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl Server {
    /// Starts `serve` on 127.0.0.1:0 with `dirs` and waits until it listens.
    pub fn start(dirs: &Dirs, opts: Start<'_>) -> Self {
        tenantry::install_crypto_provider();
        let http = reqwest::Client::new();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dirs.data())
            .arg("--tenants")
            .arg(dirs.tenants())
            .args(&opts.args)
            .current_dir(dirs.root.path())
            .env("TENANTRY_MODEL_DIR", model_dir())
            .env("RUST_LOG", "info")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(c) = &opts.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(llm) = opts.llm {
            cmd.env("OPENAI_BASE_URL", llm.base_url());
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("spawn tenantry serve");
        let (logs, ready) = collect_logs(&mut child, "listening");
        let line = ready.recv_timeout(Duration::from_secs(120));
        let parsed = line.as_ref().ok().and_then(|v| {
            Some((
                v["addr"].as_str()?.parse().ok()?,
                v["metrics_addr"].as_str()?.parse().ok()?,
            ))
        });
        let Some((addr, metrics_addr)) = parsed else {
            let _ = child.kill();
            panic!(
                "serve did not start ({line:?}); logs:\n{}",
                logs.lock().expect("lock").join("\n")
            );
        };
        Self {
            child,
            addr,
            metrics_addr,
            logs,
            http,
        }
    }

    /// URL of `path` on the API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "serve exited with {status}");
    }

    /// POSTs JSON with a bearer token; returns status and JSON body.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        status_json(r).await
    }

    /// GETs with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        status_json(r).await
    }

    /// DELETEs with a bearer token.
    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        status_json(r).await
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

/// Collects a child's JSON log lines from its stdout; the receiver gets the first line whose
/// `message` is `ready`.
pub fn collect_logs(
    child: &mut Child,
    ready: &'static str,
) -> (Arc<Mutex<Vec<String>>>, std::sync::mpsc::Receiver<Value>) {
    let stdout = child.stdout.take().expect("child stdout is piped");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["message"] == ready
            {
                let _ = tx.send(v);
            }
            sink.lock().expect("lock").push(line);
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

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` child process on 127.0.0.1 (no persistence, its own temp dir); killed on
/// drop, also when a test panics. Can be killed and restarted on the same port.
pub struct RedisServer {
    child: Option<Child>,
    /// Port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers PING.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let mut r = Self {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        r.restart();
        r
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL, like a crash) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let bin = which_redis();
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server (install it: apt-get install redis-server)");
        self.child = Some(child);
        for _ in 0..200 {
            if self.query(&["PING"]).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// Runs one command with a fresh blocking connection; None if Redis is unreachable.
    pub fn query(&self, args: &[&str]) -> Option<redis::Value> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query::<redis::Value>(&mut conn).ok()
    }

    /// An integer key (0 when missing).
    pub fn get_int(&self, key: &str) -> i64 {
        match self.query(&["GET", key]) {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).parse().expect("int"),
            Some(redis::Value::Nil) => 0,
            other => panic!("GET {key}: {other:?}"),
        }
    }
}

fn which_redis() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("redis-server"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `scripts/python-env.sh <kind>`'s output (the venv's python, and for `llama` the model
/// file); creates the environment on first use.
pub fn python_env(kind: &str) -> Vec<String> {
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python-env.sh"))
        .arg(kind)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/python-env.sh");
    assert!(out.status.success(), "scripts/python-env.sh {kind} failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}
