//! Python peers of the tests (the official `openai` SDK, schemathesis, llama.cpp's server):
//! the virtual environments `scripts/python-env.sh` creates and caches.

use std::process::{Command, Stdio};

/// `scripts/python-env.sh <kind>`'s output (the venv's python, and for `llama` the model
/// file); creates the environment on first use.
pub fn python_env(kind: &str) -> Vec<String> {
    let out = Command::new(super::root().join("scripts/python-env.sh"))
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
