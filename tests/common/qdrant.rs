//! Real Qdrant server processes on 127.0.0.1: one node ([`QdrantServer`]) or a cluster of
//! nodes in distributed mode ([`QdrantCluster`]). Each node has its own free ports and storage
//! folder, telemetry off, and is killed on drop; a node can be killed (SIGKILL) and restarted
//! on the same storage and ports.
//!
//! The binary is `QDRANT_BIN` (set by `scripts/test.sh`), else what `$QDRANT_SRC/build.sh`
//! (default `../shared/qdrant` next to the checkout) prints last.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Generous bound on a node becoming ready (a loaded 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The `qdrant` binary to run; panics with what to set when there is none.
pub fn qdrant_bin() -> PathBuf {
    static BIN: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
        if let Some(bin) = std::env::var_os("QDRANT_BIN").filter(|b| !b.is_empty()) {
            return bin.into();
        }
        let src = std::env::var_os("QDRANT_SRC")
            .map_or_else(|| super::root().join("../shared/qdrant"), PathBuf::from);
        let out = Command::new(src.join("build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "no qdrant binary: set QDRANT_BIN, or QDRANT_SRC to the vendored Qdrant source ({}/build.sh: {e})",
                    src.display()
                )
            });
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
    });
    assert!(BIN.is_file(), "qdrant binary {} missing", BIN.display());
    BIN.clone()
}

/// How a node joins: alone, as a cluster's first peer, or through the first peer's p2p port.
#[derive(Clone, Copy)]
enum Role {
    Standalone,
    First,
    Join(u16),
}

/// One `qdrant` process on 127.0.0.1; killed on drop.
pub struct QdrantServer {
    child: Option<Child>,
    /// REST port.
    pub http_port: u16,
    /// gRPC port (what tenantry talks to).
    pub grpc_port: u16,
    p2p_port: u16,
    role: Role,
    api_key: Option<String>,
    /// `service.jwt_rbac`: the API key also verifies JWTs (HS256) scoped by their `access`.
    jwt_rbac: bool,
    dir: tempfile::TempDir,
}

impl QdrantServer {
    /// Starts a standalone node requiring `api_key` (none: open) and waits until it is ready.
    pub fn start(api_key: Option<&str>) -> Self {
        Self::start_as(Role::Standalone, api_key)
    }

    /// Starts a standalone node requiring `api_key` that also accepts JWTs signed with it
    /// (`service.jwt_rbac: true`), and waits until it is ready.
    pub fn start_jwt_rbac(api_key: &str) -> Self {
        Self::start_with(Role::Standalone, Some(api_key), true)
    }

    fn start_as(role: Role, api_key: Option<&str>) -> Self {
        Self::start_with(role, api_key, false)
    }

    fn start_with(role: Role, api_key: Option<&str>, jwt_rbac: bool) -> Self {
        let mut s = Self {
            child: None,
            http_port: super::free_port(),
            grpc_port: super::free_port(),
            p2p_port: super::free_port(),
            role,
            api_key: api_key.map(str::to_string),
            jwt_rbac,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        s.restart();
        s
    }

    /// `http://127.0.0.1:<grpc port>`.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Kills it (SIGKILL, like a crash) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::kill(&mut c);
        }
    }

    /// Starts it (again) on the same storage and ports and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill();
        let storage = self.dir.path().join("storage");
        let mut cmd = Command::new(qdrant_bin());
        cmd.current_dir(self.dir.path())
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", self.http_port.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc_port.to_string())
            .env("QDRANT__STORAGE__STORAGE_PATH", &storage)
            .env(
                "QDRANT__STORAGE__SNAPSHOTS_PATH",
                self.dir.path().join("snapshots"),
            )
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .env("QDRANT__LOG_LEVEL", "WARN")
            .env_remove("QDRANT__SERVICE__API_KEY")
            .env("QDRANT__SERVICE__JWT_RBAC", self.jwt_rbac.to_string());
        if let Some(key) = &self.api_key {
            cmd.env("QDRANT__SERVICE__API_KEY", key);
        }
        let own_uri = format!("http://127.0.0.1:{}", self.p2p_port);
        match self.role {
            Role::Standalone => {}
            Role::First => {
                cluster_env(&mut cmd, self.p2p_port).args(["--uri", &own_uri]);
            }
            Role::Join(first) => {
                let bootstrap = format!("http://127.0.0.1:{first}");
                cluster_env(&mut cmd, self.p2p_port).args([
                    "--bootstrap",
                    &bootstrap,
                    "--uri",
                    &own_uri,
                ]);
            }
        }
        let log = std::fs::File::create(self.dir.path().join("qdrant.log")).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Restarts it requiring `api_key` from now on.
    pub fn restart_with_key(&mut self, api_key: Option<&str>) {
        self.api_key = api_key.map(str::to_string);
        self.restart();
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("qdrant exited ({status}):\n{}", self.log_tail());
            }
            if self.get("/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "qdrant on port {} not ready:\n{}",
            self.http_port,
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("qdrant.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// GET `path` on the REST port with the node's key; status and body, `None` when
    /// unreachable.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.http_port)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let key = self
            .api_key
            .as_ref()
            .map(|k| format!("api-key: {k}\r\n"))
            .unwrap_or_default();
        write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{key}\r\n").ok()?;
        let mut response = String::new();
        conn.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())?;
        Some((status, body))
    }

    /// GET `path` as JSON (panics unless 200).
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        match self.get(path) {
            Some((200, body)) => serde_json::from_str(&body).expect("JSON body"),
            other => panic!("GET {path}: {other:?}"),
        }
    }

    /// Whether collection `name` exists.
    pub fn has_collection(&self, name: &str) -> bool {
        let body = self.get_json(&format!("/collections/{name}/exists"));
        body["result"]["exists"]
            .as_bool()
            .unwrap_or_else(|| panic!("unexpected answer {body}"))
    }
}

fn cluster_env(cmd: &mut Command, p2p_port: u16) -> &mut Command {
    cmd.env("QDRANT__CLUSTER__ENABLED", "true")
        .env("QDRANT__CLUSTER__P2P__PORT", p2p_port.to_string())
}

impl Drop for QdrantServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Qdrant nodes in distributed mode on 127.0.0.1: the first started with its own `--uri`, the
/// others with `--bootstrap` to it. Every node has the same API key.
pub struct QdrantCluster {
    /// The nodes; `nodes[0]` is the first peer.
    pub nodes: Vec<QdrantServer>,
}

impl QdrantCluster {
    /// Starts `n` nodes and waits until the first one counts all of them as peers.
    pub fn start(n: usize, api_key: &str) -> Self {
        let first = QdrantServer::start_as(Role::First, Some(api_key));
        let p2p = first.p2p_port;
        let mut nodes = vec![first];
        for _ in 1..n {
            nodes.push(QdrantServer::start_as(Role::Join(p2p), Some(api_key)));
        }
        let cluster = Self { nodes };
        let started = Instant::now();
        while cluster.peers() < n {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "cluster has {} of {n} peers",
                cluster.peers()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster
    }

    /// Peers the first node knows.
    pub fn peers(&self) -> usize {
        let v = self.nodes[0].get_json("/cluster");
        v["result"]["peers"].as_object().map_or(0, |p| p.len())
    }
}
