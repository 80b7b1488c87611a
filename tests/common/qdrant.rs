//! A real Qdrant server child process on 127.0.0.1 (`QdrantServer`): its own storage in a temp
//! dir, free HTTP and gRPC ports, killed on drop. The binary is `QDRANT_BIN`, else the path
//! the build script named by `TENANTRY_QDRANT_BUILD` (default `../shared/qdrant/build.sh`,
//! next to the checkout) prints on its last line.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A Qdrant server on 127.0.0.1; killed on drop, also when a test panics.
pub struct QdrantServer {
    child: Child,
    /// Its gRPC port (what tenantry talks to).
    pub grpc_port: u16,
    /// Its REST port (what tests inspect it with).
    pub http_port: u16,
    _storage: tempfile::TempDir,
}

impl QdrantServer {
    /// Starts one on free ports and waits until it is ready.
    pub fn start() -> Self {
        let storage = tempfile::tempdir().expect("tempdir");
        let (grpc_port, http_port) = (super::free_port(), super::free_port());
        let child = Command::new(binary())
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__GRPC_PORT", grpc_port.to_string())
            .env("QDRANT__SERVICE__HTTP_PORT", http_port.to_string())
            .env("QDRANT__STORAGE__STORAGE_PATH", storage.path().join("data"))
            .env(
                "QDRANT__STORAGE__SNAPSHOTS_PATH",
                storage.path().join("snap"),
            )
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .current_dir(storage.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qdrant");
        let server = Self {
            child,
            grpc_port,
            http_port,
            _storage: storage,
        };
        server.wait_ready();
        server
    }

    /// `http://127.0.0.1:<grpc port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Whether collection `name` exists (asked over REST).
    pub async fn has_collection(&self, name: &str) -> bool {
        let url = format!(
            "http://127.0.0.1:{}/collections/{name}/exists",
            self.http_port
        );
        let body: serde_json::Value = reqwest::get(url)
            .await
            .expect("qdrant answers")
            .json()
            .await
            .expect("json");
        body["result"]["exists"]
            .as_bool()
            .unwrap_or_else(|| panic!("unexpected answer {body}"))
    }

    fn wait_ready(&self) {
        for _ in 0..600 {
            let http = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).is_ok();
            let grpc = std::net::TcpStream::connect(("127.0.0.1", self.grpc_port)).is_ok();
            if http && grpc {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "qdrant on ports {}/{} did not start",
            self.grpc_port, self.http_port
        );
    }
}

/// The Qdrant server binary (see the module docs).
fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("QDRANT_BIN") {
        return bin.into();
    }
    let script = std::env::var_os("TENANTRY_QDRANT_BUILD").map_or_else(
        || super::root().join("../shared/qdrant/build.sh"),
        Into::into,
    );
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("a path").trim())
}

impl Drop for QdrantServer {
    fn drop(&mut self) {
        super::kill(&mut self.child);
    }
}
