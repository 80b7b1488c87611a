//! tenantry: a Kubernetes operator and a tenant-aware RAG chat API in one binary.
//!
//! Module map:
//! - [`cli`]: command-line interface (`serve`, `token`, `crd`).
//! - [`controller`]: the operator's reconciler, a pipeline validate → build → apply → status
//!   (plus cleanup, signing keys, leader election, its metrics).
//! - [`operator`]: wiring of `tenantry operator` and its lifecycle.
//! - [`domain`]: the shared vocabulary (tenant ids, isolation, algorithms, quotas, durations).
//! - [`crd`]: the `Tenant` and `QuotaTier` custom resources (group `tenantry.dev`).
//! - [`config`]: the `serve` configuration file and its defaults.
//! - [`tenants`]: the tenant catalog `serve` reads from manifests on disk, reloaded on change.
//! - [`auth`]: per-tenant signing keys and JWT verification (token -> verified tenant).
//! - [`vector`]: the vector-store trait, the tenant-scoped handle, the embedded backend and the
//!   Qdrant-server backend.
//! - [`embed`]: the embedding trait, the in-process model and the OpenAI-compatible client.
//! - [`llm`]: the chat-model trait, the OpenAI-compatible client and the offline responder.
//! - [`ingest`]: the `tenantry ingest` client (files and folders to a tenant's API).
//! - [`chunk`]: splitting documents into overlapping chunks.
//! - [`rag`]: one chat request from question to answer (cache, retrieval, quota, model call,
//!   settlement), whichever endpoint asked it; no HTTP.
//! - [`api`]: the HTTP API (axum router, handlers, errors); [`api::openai`] is the
//!   OpenAI-compatible surface.
//! - [`cache`]: the tenant-scoped semantic cache of chat answers.
//! - [`quota`]: per-tenant quotas and rate limits (Redis or in-process), token estimates.
//! - [`runtime`]: what both long-running modes need: shutdown signal, admin router, file watching.
//! - [`serve`]: wiring of `tenantry serve` and its lifecycle.
//! - [`tls`]: HTTPS for `serve`: certificate loading and reload on change.
//! - [`healthcheck`]: `tenantry healthcheck`, the probe of the image's HEALTHCHECK.
//! - [`metrics`]: Prometheus metric families.
//! - [`telemetry`]: logging setup.
pub mod api;
pub mod auth;
pub mod cache;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod controller;
pub mod crd;
pub mod domain;
pub mod embed;
pub mod healthcheck;
pub mod ingest;
pub mod llm;
pub mod metrics;
pub mod operator;
pub mod quota;
pub mod rag;
pub mod runtime;
pub mod serve;
pub mod telemetry;
pub mod tenants;
pub mod tls;
pub mod vector;

/// Installs ring as the process-wide rustls crypto provider (idempotent). Every TLS client and
/// server in the program uses ring; without one installed, rustls cannot pick a provider and
/// building an HTTP client panics. `main` calls this once, first thing; a program (or test)
/// that uses the library without `main` calls it before building any client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
