//! Stored data is bound to the Tenant object's UID: `serve` loading the manifest of a Tenant
//! created again under a deleted one's name (another UID, over the same retained data) starts
//! empty, in both isolation modes; naming the old UID in `tenantry.dev/adopt-data-from`
//! adopts the data. Manifests without a UID (the embedded default) keep the tenant id alone.
mod common;

use axum::http::StatusCode;
use common::server::{Dirs, Server, Start};
use serde_json::Value;

const REFUND: &str =
    "Acme customers may return any product within 30 days of delivery for a full refund.";

fn manifest(uid: Option<&str>, adopt: Option<&str>, isolation: &str) -> String {
    let mut meta = String::from("  name: acme\n");
    if let Some(uid) = uid {
        meta.push_str(&format!("  uid: {uid}\n"));
    }
    if let Some(old) = adopt {
        meta.push_str(&format!(
            "  annotations:\n    tenantry.dev/adopt-data-from: {old}\n"
        ));
    }
    format!(
        "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata:\n{meta}spec:\n  tier: pro\n  retrieval: {{isolation: {isolation}}}\n"
    )
}

fn listed(page: &Value) -> Vec<String> {
    page["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect()
}

/// Runs `serve` over `dirs` with the manifest `text`; returns what the tenant's documents list
/// shows and whether document `doc` is found.
async fn documents_seen(dirs: &Dirs, text: &str, doc: &str) -> (Vec<String>, StatusCode) {
    dirs.write_manifest("acme.yaml", text);
    let server = Server::start(dirs, Start::default());
    let t = dirs.token("acme", "alice");
    let (s, page) = server.get("/v1/documents", &t).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let (found, _) = server.get(&format!("/v1/documents/{doc}"), &t).await;
    server.stop();
    (listed(&page), found)
}

async fn a_new_tenant_starts_empty_and_adoption_sees_the_data(isolation: &str) {
    let dirs = Dirs::new();
    dirs.write_manifest("acme.yaml", &manifest(Some("uid-old"), None, isolation));
    let server = Server::start(&dirs, Start::default());
    let t = dirs.token("acme", "alice");
    let doc = server.ingest(&t, "refunds", REFUND).await;
    server.stop();

    // The Tenant is deleted (data retained) and created again: another UID.
    let (docs, found) =
        documents_seen(&dirs, &manifest(Some("uid-new"), None, isolation), &doc).await;
    assert!(docs.is_empty(), "{isolation}: the new Tenant sees {docs:?}");
    assert_eq!(found, StatusCode::NOT_FOUND, "{isolation}");

    // Adopting the old UID's data: it is there, untouched.
    let adopting = manifest(Some("uid-new"), Some("uid-old"), isolation);
    let (docs, found) = documents_seen(&dirs, &adopting, &doc).await;
    assert_eq!(docs, std::slice::from_ref(&doc), "{isolation}");
    assert_eq!(found, StatusCode::OK, "{isolation}");
}

#[tokio::test]
async fn collection_mode() {
    a_new_tenant_starts_empty_and_adoption_sees_the_data("Collection").await;
}

#[tokio::test]
async fn partition_mode() {
    a_new_tenant_starts_empty_and_adoption_sees_the_data("Partition").await;
}

/// Without a UID (the embedded default's hand-written manifests) the tenant id alone scopes
/// the data, as before: a restart sees the documents.
#[tokio::test]
async fn manifests_without_a_uid_keep_their_data() {
    let dirs = Dirs::new();
    dirs.write_manifest("acme.yaml", &manifest(None, None, "Collection"));
    let server = Server::start(&dirs, Start::default());
    let t = dirs.token("acme", "alice");
    let doc = server.ingest(&t, "refunds", REFUND).await;
    server.stop();
    let (docs, found) = documents_seen(&dirs, &manifest(None, None, "Collection"), &doc).await;
    assert_eq!((docs, found), (vec![doc], StatusCode::OK));
}
