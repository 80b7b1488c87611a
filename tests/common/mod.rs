//! The test harness, one file per thing it provides: the `tenantry serve` process
//! ([`server`]), a scripted OpenAI-compatible model ([`llm`]), Redis ([`redis`]), test
//! certificates ([`certs`]), Python peers ([`python`]), real Qdrant servers and clusters
//! ([`qdrant`]), the cluster fixture with the operator ([`cluster`]) and a kubelet stand-in
//! that runs its pods ([`kubelet`]). Fixtures that start processes stop them on drop. The
//! benchmarks include this module too.
// Every test binary compiles the whole harness and uses only part of it.
#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod kubelet;
pub mod llm;
pub mod python;
pub mod qdrant;
pub mod redis;
pub mod server;

use std::path::Path;
use std::process::{Child, Command};

/// The repository root: cargo's `CARGO_MANIFEST_DIR` at run time (the compile-time value
/// names whichever checkout built the binary last, when checkouts share a target dir).
pub fn root() -> &'static Path {
    static ROOT: std::sync::LazyLock<std::path::PathBuf> = std::sync::LazyLock::new(|| {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
    });
    &ROOT
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

/// Asks a child process to stop with SIGTERM (what Kubernetes sends), without waiting.
pub fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Kills a child process (SIGKILL, like a crash) and reaps it.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
