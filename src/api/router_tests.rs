//! The router alone, called with `oneshot`: no sockets, no processes. Its seams get small
//! stand-ins (an embedder that counts a few words, the offline responder, in-process quotas,
//! the embedded vector store in a temporary folder), so these tests pin what the HTTP layer
//! itself does: routing, JSON errors, authentication and tenant scoping.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::{AppState, router};
use crate::auth::oidc::JwksCache;
use crate::config::ServeConfig;
use crate::domain::TenantId;
use crate::embed::{EmbedError, Embedder};
use crate::llm::extractive::Extractive;
use crate::metrics::Metrics;
use crate::quota::memory::MemoryStore;
use crate::quota::{FailMode, Quota};
use crate::tenants::{Catalog, KeySource};
use crate::vector::edge::EdgeBackend;

/// Words whose counts make up a text's vector: questions land near passages sharing them.
const WORDS: [&str; 4] = ["refund", "credit", "shipping", "days"];

struct WordCounts;

#[async_trait]
impl Embedder for WordCounts {
    fn model(&self) -> &str {
        "word-counts"
    }
    fn dimension(&self) -> usize {
        WORDS.len()
    }
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts
            .iter()
            .map(|t| {
                let t = t.to_lowercase();
                let v: Vec<f32> = WORDS
                    .iter()
                    .map(|w| t.matches(w).count() as f32 + 0.1)
                    .collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect())
    }
}

/// A router over two tenants, `acme` and `globex`, and the folder holding their files.
async fn app() -> (tempfile::TempDir, AppState, Router) {
    crate::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("tenants");
    std::fs::create_dir_all(&manifests).unwrap();
    for name in ["acme", "globex"] {
        std::fs::write(
            manifests.join(format!("{name}.yaml")),
            format!("apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec: {{tier: pro}}\n"),
        )
        .unwrap();
    }
    let keys = KeySource {
        dir: dir.path().join("keys"),
        create_missing: true,
    };
    let tenants = Arc::new(Catalog::new(manifests, keys, String::new()));
    tenants.reload();
    let state = AppState {
        tenants,
        vectors: Arc::new(EdgeBackend::open(&dir.path().join("vectors")).unwrap()),
        embedder: Arc::new(WordCounts),
        llm: Arc::new(Extractive),
        metrics: Arc::new(Metrics::default()),
        config: Arc::new(ServeConfig::default()),
        dev: false,
        quota: Quota::new(
            Arc::new(MemoryStore::default()),
            FailMode::FailClosed,
            Duration::from_secs(120),
        ),
        jwks: Arc::new(JwksCache::new()),
    };
    let app = router(state.clone());
    (dir, state, app)
}

fn token(state: &AppState, tenant: &str) -> String {
    let id = TenantId::parse(tenant).unwrap();
    let config = state.tenants.get(&id).unwrap();
    config.keyring.mint(&id, "alice", 600).unwrap()
}

/// Sends one request (a JSON body when `body` is given) and returns the status and JSON body.
async fn call(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = match body {
        Some(b) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => request.body(Body::empty()),
    };
    let response = app.clone().oneshot(request.unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn unknown_routes_methods_and_tokens_get_json_errors() {
    let (_dir, state, app) = app().await;
    let (status, body) = call(&app, Method::GET, "/v1/nothing", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]["code"].is_string(), "{body}");
    let (status, body) = call(&app, Method::DELETE, "/v1/chat", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"]["message"].is_string(), "{body}");
    let question = json!({"question": "What is the refund policy?"});
    for bad in [None, Some("not-a-jwt")] {
        let (status, body) =
            call(&app, Method::POST, "/v1/chat", bad, Some(question.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}: {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    let acme = token(&state, "acme");
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/chat",
        Some(&acme),
        Some(json!({"question": ""})),
    )
    .await;
    assert!(
        status.is_client_error(),
        "an empty question: {status} {body}"
    );
    assert!(body["error"]["code"].is_string(), "{body}");
}

#[tokio::test]
async fn a_tenant_is_answered_only_from_its_own_documents() {
    let (_dir, state, app) = app().await;
    let (acme, globex) = (token(&state, "acme"), token(&state, "globex"));
    let (status, doc) = call(
        &app,
        Method::POST,
        "/v1/documents",
        Some(&acme),
        Some(json!({"title": "refunds", "text": "Acme refunds any product within 30 days."})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{doc}");
    let acme_doc = doc["id"].as_str().unwrap().to_string();
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/documents",
        Some(&globex),
        Some(json!({"title": "credit", "text": "Globex gives store credit, no refund, within 14 days."})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let question = json!({"question": "How many days do I have for a refund?"});
    for (token, tenant, own_text) in [(&acme, "acme", "30 days"), (&globex, "globex", "14 days")] {
        let (status, answer) = call(
            &app,
            Method::POST,
            "/v1/chat",
            Some(token),
            Some(question.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["tenant_id"], tenant);
        let sources = answer["sources"].as_array().unwrap();
        assert!(!sources.is_empty(), "{answer}");
        for s in sources {
            assert!(
                s["text"].as_str().unwrap().contains(own_text),
                "{tenant} saw {s}"
            );
        }
    }
    let path = format!("/v1/documents/{acme_doc}");
    let (status, body) = call(&app, Method::GET, &path, Some(&globex), None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's document: {body}"
    );
    let (status, body) = call(&app, Method::GET, &path, Some(&acme), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
