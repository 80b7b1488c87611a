//! `serve` with a verify-only keyring (the operator's pods mount one: public keys, no private
//! key): tokens signed elsewhere verify, and every minting path says clearly that it cannot.
mod common;

use std::process::Command;

use axum::http::StatusCode;
use common::server::{Dirs, Server, Start};
use tenantry::auth::keys::{Keyring, keyring_path};
use tenantry::domain::{Algorithm, TenantId};

#[tokio::test]
async fn a_verify_only_keyring_verifies_but_mints_nothing() {
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let id = TenantId::parse("acme").expect("id");
    let signing = Keyring::generate(Algorithm::EdDSA);
    let keys = dirs.root.path().join("mounted-keys");
    let public = signing.public_only();
    public
        .write(&keyring_path(&keys, &id))
        .expect("write keyring");
    let server = Server::start(
        &dirs,
        Start {
            args: vec![
                "--keys-dir".into(),
                keys.display().to_string(),
                "--dev".into(),
            ],
            ..Default::default()
        },
    );
    let token = signing.mint(&id, "alice", 600).expect("mint");
    let (status, body) = server.get("/v1/documents", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .get("/dev/token?tenant_id=acme&sub=mallory", &token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("only the verification keys") && message.contains("cannot mint"),
        "{body}"
    );
    server.stop();

    // `tenantry token` over the same keyring fails with the reason.
    let data = dirs.root.path().join("cli");
    public
        .write(&keyring_path(&data.join("keys"), &id))
        .expect("write keyring");
    let out = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args([
            "token",
            "--tenant",
            "acme",
            "--sub",
            "mallory",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--tenants")
        .arg(dirs.tenants())
        .output()
        .expect("run tenantry token");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "minted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("verify-only keyring cannot mint"),
        "{stderr}"
    );
}
