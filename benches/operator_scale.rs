//! Operator at scale: time for N Tenants (default 100, `TENANTRY_BENCH_TENANTS`) to reach
//! Ready against the real test API server, and the operator's memory at that point.
//!
//! Run: `cargo bench --bench operator_scale`. Needs `scripts/kube-test-env.sh` (started here).
//! The bench plays kubelet + deployment controller: it marks each tenant's Deployment
//! available as soon as the operator has created it.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::cluster::{KubeEnv, tenant};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tenantry::crd::Tenant;

/// Resident and peak resident memory of process `pid`, in KiB (0 when unknown).
fn rss_kib(pid: u32) -> (u64, u64) {
    let field = |name| support::memory_kib(pid, name).unwrap_or(0);
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::main]
async fn main() {
    tenantry::install_crypto_provider();
    let n: usize = support::env_or("TENANTRY_BENCH_TENANTS", 100);
    let env = KubeEnv::get();
    let client = env.client().await;
    let vdir = tempfile::tempdir().expect("tmp");
    let mut op = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args([
            "operator",
            "--listen",
            "127.0.0.1:0",
            "--identity",
            "bench",
            "--lease-name",
            "tenantry-bench",
        ])
        .arg("--vector-data-dir")
        .arg(vdir.path())
        .env("KUBECONFIG", &env.kubeconfig)
        .env("POD_NAMESPACE", "tenantry-system")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("operator");
    let (idle_rss, _) = {
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss_kib(op.id())
    };

    let run = format!("{:x}", std::process::id());
    let names: Vec<String> = (0..n).map(|i| format!("bench-{run}-{i}")).collect();
    let tenants: Api<Tenant> = Api::all(client.clone());
    let start = Instant::now();
    for name in &names {
        tenants
            .create(
                &PostParams::default(),
                &tenant(name, json!({"tier": "pro"})),
            )
            .await
            .expect("create tenant");
    }
    let created = start.elapsed();
    let mut marked = std::collections::HashSet::new();
    let mut ready = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while ready < n && Instant::now() < deadline {
        ready = 0;
        for name in &names {
            let t = tenants.get(name).await.expect("get");
            let is_ready = t.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if is_ready {
                ready += 1;
            } else if !marked.contains(name) {
                let deps: Api<Deployment> =
                    Api::namespaced(client.clone(), &format!("tenant-{name}"));
                let status = json!({"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1}});
                if deps
                    .patch_status(
                        &format!("{name}-api"),
                        &PatchParams::default(),
                        &Patch::Merge(&status),
                    )
                    .await
                    .is_ok()
                {
                    marked.insert(name.clone());
                }
            }
        }
        if ready < n {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let all_ready = start.elapsed();
    let (rss, hwm) = rss_kib(op.id());
    println!("tenants: {n}");
    println!("created in: {:.2} s", created.as_secs_f64());
    println!(
        "all Ready after: {:.2} s ({ready}/{n} ready)",
        all_ready.as_secs_f64()
    );
    println!("operator RSS idle: {:.1} MiB", idle_rss as f64 / 1024.0);
    println!(
        "operator RSS at {n} tenants: {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    for name in &names {
        let _ = tenants.delete(name, &DeleteParams::default()).await;
    }
    let cleanup = Instant::now();
    while cleanup.elapsed() < Duration::from_secs(120) {
        let left = tenants.list(&Default::default()).await.map(|l| {
            l.items
                .iter()
                .filter(|t| t.name_any().starts_with(&format!("bench-{run}-")))
                .count()
        });
        if left.is_ok_and(|l| l == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    common::kill(&mut op);
}
