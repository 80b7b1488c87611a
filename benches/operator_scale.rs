//! Operator at scale against the real test API server: time for N Tenants (default 100,
//! `TENANTRY_BENCH_TENANTS`) to reach Ready, time for a change of their QuotaTier to reach every
//! Tenant's status, and the operator's memory.
//!
//! Run: `cargo bench --profile dev --bench operator_scale` (or `--release`). Needs
//! `scripts/kube-test-env.sh` (started here; point `TENANTRY_KUBE_PORT`, `TENANTRY_ETCD_PORT`
//! and `TENANTRY_CACHE` elsewhere for a server of its own). The bench plays kubelet and
//! deployment controller with a watch (`TENANTRY_QDRANT_URL`: collections in that server): each tenant Deployment the operator creates is marked
//! available as soon as the watch reports it. Readiness and the tier change are observed with
//! a watch of the Tenants, so the measurement costs no polling.
use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::cluster::{KubeEnv, tenant};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tenantry::crd::{QuotaTier, Tenant};
use tokio::sync::Mutex;

/// Resident and peak resident memory of process `pid`, in KiB (0 when unknown).
fn rss_kib(pid: u32) -> (u64, u64) {
    let field = |name| support::memory_kib(pid, name).unwrap_or(0);
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What the Tenant watch saw of the bench's tenants.
#[derive(Default)]
struct Seen {
    /// Tenants with `Ready=True`.
    ready: HashSet<String>,
    /// Each tenant's effective daily token limit.
    daily: HashMap<String, i64>,
}

impl Seen {
    fn with_daily(&self, want: i64) -> usize {
        self.daily.values().filter(|d| **d == want).count()
    }
}

/// Waits until `done` holds of what the watch saw, or `limit` passes; returns the time taken.
async fn until(seen: &Mutex<Seen>, limit: Duration, done: impl Fn(&Seen) -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit && !done(&*seen.lock().await) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// The operator's reconcile counters: by result, and the duration histogram's sum and count.
#[derive(Clone, Default)]
struct Reconciles {
    by_result: std::collections::BTreeMap<String, f64>,
    seconds: f64,
    count: f64,
}

impl Reconciles {
    fn since(&self, before: &Self) -> Self {
        let mut by_result = self.by_result.clone();
        for (k, v) in &mut by_result {
            *v -= before.by_result.get(k).copied().unwrap_or(0.0);
        }
        Self {
            by_result,
            seconds: self.seconds - before.seconds,
            count: self.count - before.count,
        }
    }

    fn show(&self) -> String {
        let results: Vec<String> = self
            .by_result
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "{} ({}), mean {:.0} ms",
            self.count,
            results.join(", "),
            1000.0 * self.seconds / self.count.max(1.0)
        )
    }
}

/// Scrapes the operator's `/metrics` for its reconcile counters.
async fn reconciles(listen: &str) -> Reconciles {
    let text = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .expect("scrape operator")
        .text()
        .await
        .expect("metrics body");
    let mut r = Reconciles::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if let Some(rest) = series.strip_prefix("tenantry_reconcile_total{result=\"") {
            r.by_result
                .insert(rest.trim_end_matches("\"}").to_string(), value);
        } else if series == "tenantry_reconcile_duration_seconds_sum" {
            r.seconds = value;
        } else if series == "tenantry_reconcile_duration_seconds_count" {
            r.count = value;
        }
    }
    r
}

#[tokio::main]
async fn main() {
    tenantry::install_crypto_provider();
    let n: usize = support::env_or("TENANTRY_BENCH_TENANTS", 100);
    let env = KubeEnv::get();
    let client = env.client().await;
    let vdir = tempfile::tempdir().expect("tmp");
    // The operator's log (warnings and errors), kept for reading after the run.
    let log_path = std::env::temp_dir().join("tenantry-operator-bench.log");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
    cmd.args([
        "operator",
        "--listen",
        &listen,
        "--identity",
        "bench",
        "--lease-name",
        "tenantry-bench",
    ]);
    // With TENANTRY_QDRANT_URL (and TENANTRY_QDRANT_API_KEY) set, the operator provisions the
    // collections in that Qdrant server, as the chart's default does; else in its embedded store.
    let store = match std::env::var("TENANTRY_QDRANT_URL") {
        Ok(url) => format!("Qdrant server {url}"),
        Err(_) => {
            cmd.arg("--vector-data-dir").arg(vdir.path());
            "embedded store".to_string()
        }
    };
    let mut op = cmd
        .env("KUBECONFIG", &env.kubeconfig)
        .env("POD_NAMESPACE", "tenantry-system")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(
            std::fs::File::create(&log_path).expect("operator log file"),
        ))
        .spawn()
        .expect("operator");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, _) = rss_kib(op.id());

    let run = format!("{:x}", std::process::id());
    let prefix = format!("bench-{run}-");
    let tier_name = format!("bench-{run}");
    let tiers: Api<QuotaTier> = Api::all(client.clone());
    let tier = |daily: i64| -> QuotaTier {
        serde_json::from_value(json!({
            "apiVersion": "tenantry.dev/v1alpha1", "kind": "QuotaTier",
            "metadata": {"name": tier_name},
            "spec": {"dailyTokens": daily, "requestsPerMinute": 600},
        }))
        .expect("tier")
    };
    tiers
        .create(&PostParams::default(), &tier(100_000))
        .await
        .expect("create tier");

    // kubelet + deployment controller: every new tenant Deployment becomes available.
    let kubelet = {
        let client = client.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let all: Api<Deployment> = Api::all(client.clone());
            let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=tenantry");
            let mut deployments = watcher(all, config).applied_objects().boxed();
            while let Some(Ok(d)) = deployments.next().await {
                let available = d
                    .status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .is_some_and(|a| a > 0);
                let ns = d.namespace().unwrap_or_default();
                if available || !ns.starts_with(&format!("tenant-{prefix}")) {
                    continue;
                }
                let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
                let status = json!({"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1}});
                let _ = api
                    .patch_status(
                        &d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&status),
                    )
                    .await;
            }
        })
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let observer = {
        let (tenants, seen, prefix) = (
            Api::<Tenant>::all(client.clone()),
            seen.clone(),
            prefix.clone(),
        );
        tokio::spawn(async move {
            let mut events = watcher(tenants, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(t)) = events.next().await {
                let name = t.name_any();
                if !name.starts_with(&prefix) {
                    continue;
                }
                let status = t.status.as_ref();
                let ready = status.is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
                let daily = status
                    .and_then(|s| s.effective_quota.as_ref())
                    .and_then(|q| q.daily_tokens);
                let mut seen = seen.lock().await;
                if ready {
                    seen.ready.insert(name.clone());
                } else {
                    seen.ready.remove(&name);
                }
                if let Some(d) = daily {
                    seen.daily.insert(name, d);
                }
            }
        })
    };

    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let tenants: Api<Tenant> = Api::all(client.clone());
    let start = Instant::now();
    // Eight creators at once, as `kubectl apply` of a GitOps folder would send them.
    futures::stream::iter(names.iter())
        .for_each_concurrent(8, |name| {
            let tenants = tenants.clone();
            let tier_name = tier_name.clone();
            async move {
                tenants
                    .create(
                        &PostParams::default(),
                        &tenant(name, json!({"tier": tier_name})),
                    )
                    .await
                    .expect("create tenant");
            }
        })
        .await;
    let created = start.elapsed();
    let limit = Duration::from_secs(900);
    until(&seen, limit.saturating_sub(created), |s| s.ready.len() >= n).await;
    let all_ready = start.elapsed();
    let ready = seen.lock().await.ready.len();
    let (rss, hwm) = rss_kib(op.id());
    let reconciles_ready = reconciles(&listen).await;

    // The tier changes: time until every tenant's status shows the new limit.
    tiers
        .patch(
            &tier_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dailyTokens": 200_000}})),
        )
        .await
        .expect("patch tier");
    let propagated = until(&seen, Duration::from_secs(300), |s| {
        s.with_daily(200_000) >= n
    })
    .await;
    let reached = seen.lock().await.with_daily(200_000);
    let (rss_after, hwm_after) = rss_kib(op.id());
    let reconciles_after = reconciles(&listen).await;

    println!("tenants: {n} (vectors: {store})");
    println!("created in: {:.2} s", created.as_secs_f64());
    println!(
        "all Ready after: {:.2} s ({ready}/{n} ready)",
        all_ready.as_secs_f64()
    );
    println!(
        "QuotaTier change in every status after: {:.2} s ({reached}/{n})",
        propagated.as_secs_f64()
    );
    println!("operator RSS idle: {:.1} MiB", mib(idle_rss));
    println!(
        "operator RSS at {n} Ready tenants: {:.1} MiB (peak {:.1} MiB); after the tier change {:.1} MiB (peak {:.1} MiB)",
        mib(rss),
        mib(hwm),
        mib(rss_after),
        mib(hwm_after)
    );

    println!("reconciles until all Ready: {}", reconciles_ready.show());
    println!(
        "reconciles for the tier change: {}",
        reconciles_after.since(&reconciles_ready).show()
    );
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!(
        "operator log: {} warnings, {} errors ({})",
        log.matches("\"level\":\"WARN\"").count(),
        log.matches("\"level\":\"ERROR\"").count(),
        log_path.display()
    );
    kubelet.abort();
    observer.abort();
    futures::stream::iter(names.iter())
        .for_each_concurrent(8, |name| {
            let tenants = tenants.clone();
            async move {
                let _ = tenants.delete(name, &DeleteParams::default()).await;
            }
        })
        .await;
    let cleanup = Instant::now();
    while cleanup.elapsed() < Duration::from_secs(300) {
        let left = tenants.list(&Default::default()).await.map(|l| {
            l.items
                .iter()
                .filter(|t| t.name_any().starts_with(&prefix))
                .count()
        });
        if left.is_ok_and(|l| l == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = tiers.delete(&tier_name, &DeleteParams::default()).await;
    common::kill(&mut op);
}
