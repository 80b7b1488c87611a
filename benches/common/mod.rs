//! What the HTTP benchmarks share: a real `tenantry serve` process on 127.0.0.1 with the
//! sample tenants (`config/tenants/`, limits raised so the benchmark is never rate-limited) and
//! their sample documents ingested, a token per tenant, and percentiles.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The sample tenants, in the order of [`Serve::tokens`].
pub const TENANTS: [&str; 2] = ["acme", "globex"];

/// The `p` quantile (0..=1) of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `TENANTRY_BENCH_REQUESTS`, or `default`.
pub fn requests(default: usize) -> usize {
    std::env::var("TENANTRY_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The local embedding model folder (installed if needed).
pub fn model_dir() -> PathBuf {
    let out = Command::new(root().join("scripts/install-model.sh"))
        .output()
        .expect("install model");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A running `serve`; terminated on drop.
pub struct Serve {
    child: Child,
    /// `host:port` of the API.
    pub addr: String,
    /// A token per tenant of [`TENANTS`].
    pub tokens: Vec<String>,
    /// The tenants' manifests after the quota override, in [`TENANTS`] order.
    pub manifests: Vec<String>,
    /// Data and tenants folders.
    pub data: tempfile::TempDir,
}

impl Serve {
    /// Starts `serve` with the sample tenants and ingests their sample documents. `upstream`:
    /// an OpenAI-compatible base URL (none: the offline responder).
    pub async fn start(upstream: Option<&str>) -> Self {
        tenantry::install_crypto_provider();
        let data = tempfile::tempdir().expect("tmp");
        let tenants = data.path().join("tenants");
        std::fs::create_dir_all(&tenants).expect("mkdir");
        let mut manifests = Vec::new();
        for t in TENANTS {
            let text = std::fs::read_to_string(root().join(format!("config/tenants/{t}.yaml")))
                .expect("sample");
            let text = text.replace(
                "spec:\n",
                "spec:\n  quota: {dailyTokens: 1000000000, requestsPerMinute: 1000000, tokensPerMinute: 1000000000, maxConcurrentRequests: 1000}\n",
            );
            std::fs::write(tenants.join(format!("{t}.yaml")), &text).expect("write");
            manifests.push(text);
        }
        let bin = env!("CARGO_BIN_EXE_tenantry");
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--tenants")
            .arg(&tenants)
            .env("TENANTRY_MODEL_DIR", model_dir())
            .env("RUST_LOG", "warn,tenantry::serve=info")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdout(Stdio::piped());
        if let Some(url) = upstream {
            cmd.env("OPENAI_BASE_URL", url);
        }
        let mut child = cmd.spawn().expect("serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut addr = String::new();
        for line in lines.by_ref().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "listening" {
                addr = v["addr"].as_str().unwrap_or_default().to_string();
                break;
            }
        }
        assert!(!addr.is_empty(), "serve did not start");
        // Keep draining the server's log so it never blocks or fails on a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let http = reqwest::Client::new();
        let mut tokens = Vec::new();
        for tenant in TENANTS {
            let out = Command::new(bin)
                .args(["token", "--tenant", tenant, "--sub", "bench"])
                .arg("--data-dir")
                .arg(data.path())
                .arg("--tenants")
                .arg(&tenants)
                .output()
                .expect("token");
            let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
            for doc in std::fs::read_dir(root().join("config/documents").join(tenant))
                .expect("docs")
                .flatten()
            {
                let text = std::fs::read_to_string(doc.path()).expect("read");
                let r = http
                    .post(format!("http://{addr}/v1/documents"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"text": text, "title": doc.file_name().to_string_lossy()}))
                    .send()
                    .await
                    .expect("ingest");
                assert!(r.status().is_success());
            }
            tokens.push(token);
        }
        Self {
            child,
            addr,
            tokens,
            manifests,
            data,
        }
    }

    /// Resident memory of the `serve` process, in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Stops `serve` (SIGTERM, then waits up to 10 s).
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let child = &mut self.child;
        let _ = tokio::time::timeout(Duration::from_secs(10), async { child.wait() }).await;
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
