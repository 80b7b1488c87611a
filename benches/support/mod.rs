//! What the benchmarks add to the test harness: `tenantry serve` on the sample tenants
//! (`config/tenants/`, limits raised so a benchmark is never rate-limited) with their sample
//! documents ingested and a token per tenant, request counts, percentiles and process memory.
#![allow(dead_code)]

use crate::common::root;
use crate::common::server::{Dirs, Server, Start};

/// The sample tenants, in the order of [`Sample::tokens`].
pub const TENANTS: [&str; 2] = ["acme", "globex"];

/// The quota every sample tenant gets instead of its own.
const UNLIMITED: &str = "  quota: {dailyTokens: 1000000000, requestsPerMinute: 1000000000, tokensPerMinute: 1000000000, maxConcurrentRequests: 1000}\n";

/// The `p` quantile (0..=1) of sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The environment variable `name` parsed, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `TENANTRY_BENCH_REQUESTS`, or `default`.
pub fn requests(default: usize) -> usize {
    env_or("TENANTRY_BENCH_REQUESTS", default)
}

/// A memory figure of process `pid` in KiB: `field` (e.g. `VmRSS:`, `VmHWM:`) of
/// `/proc/<pid>/status`.
pub fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A running `serve` with the sample tenants and documents; terminated on drop.
pub struct Sample {
    /// The `serve` process.
    pub server: Server,
    /// A token per tenant of [`TENANTS`].
    pub tokens: Vec<String>,
    /// The tenants' manifests after the quota override, in [`TENANTS`] order.
    pub manifests: Vec<String>,
    dirs: Dirs,
}

impl Sample {
    /// Starts `serve` with the sample tenants and ingests their sample documents. `upstream`:
    /// an OpenAI-compatible base URL (none: the offline responder).
    pub async fn start(upstream: Option<&str>) -> Self {
        Self::start_with(upstream, Vec::new()).await
    }

    /// [`Sample::start`] with extra environment variables for `serve`.
    pub async fn start_with(upstream: Option<&str>, extra_env: Vec<(String, String)>) -> Self {
        let dirs = Dirs::new();
        let mut manifests = Vec::new();
        for t in TENANTS {
            let text = std::fs::read_to_string(root().join(format!("config/tenants/{t}.yaml")))
                .expect("sample");
            let text = text.replace("spec:\n", &format!("spec:\n{UNLIMITED}"));
            dirs.write_manifest(&format!("{t}.yaml"), &text);
            manifests.push(text);
        }
        let mut env = vec![(
            "RUST_LOG".to_string(),
            "warn,tenantry::serve=info".to_string(),
        )];
        env.extend(upstream.map(|url| ("OPENAI_BASE_URL".to_string(), url.to_string())));
        env.extend(extra_env);
        let server = Server::start(
            &dirs,
            Start {
                env,
                ..Default::default()
            },
        );
        let mut tokens = Vec::new();
        for tenant in TENANTS {
            let token = dirs.token(tenant, "bench");
            for doc in std::fs::read_dir(root().join("config/documents").join(tenant))
                .expect("docs")
                .flatten()
            {
                let text = std::fs::read_to_string(doc.path()).expect("read");
                server
                    .ingest(&token, &doc.file_name().to_string_lossy(), &text)
                    .await;
            }
            tokens.push(token);
        }
        Self {
            server,
            tokens,
            manifests,
            dirs,
        }
    }

    /// `host:port` of the API.
    pub fn addr(&self) -> String {
        self.server.addr.to_string()
    }

    /// Resident memory of the `serve` process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        memory_kib(self.server.pid(), "VmRSS:")
    }

    /// Stops `serve` (SIGTERM) and checks that it exits cleanly.
    pub fn stop(self) {
        self.server.stop();
    }
}
