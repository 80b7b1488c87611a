//! tenantry: a Kubernetes operator and a tenant-aware RAG chat API in one binary.
//!
//! Module map, by layer (a change belongs in the lowest layer that can hold it):
//!
//! Vocabulary
//! - [`domain`]: what every part shares, free of Kubernetes and HTTP: tenant ids, isolation
//!   modes, signing algorithms, external issuers, effective quotas, durations, limits.
//! - [`crd`]: the `Tenant` and `QuotaTier` custom resources (group `tenantry.dev`) built from
//!   those types, their defaults and validation, condition types and reasons.
//!
//! Capabilities (import [`domain`], never axum or kube)
//! - [`auth`]: per-tenant signing keys and JWT verification (token -> verified tenant).
//! - [`quota`]: per-tenant quotas and rate limits (Redis or in-process), token estimates.
//! - [`vector`]: the vector-store trait, the tenant-scoped handle, the embedded backend and the
//!   Qdrant-server backend.
//! - [`embed`]: the embedding trait, the in-process model and the OpenAI-compatible client.
//! - [`llm`]: the chat-model trait, the OpenAI-compatible client, retries/fallbacks/breakers and
//!   the offline responder.
//! - [`cache`]: the tenant-scoped semantic cache of chat answers.
//! - [`chunk`]: splitting documents into overlapping chunks.
//! - [`documents`]: how a document is kept in the vector store (chunks and its text record) and
//!   read back.
//! - [`tenants`]: the tenant catalog `serve` reads from manifests on disk, reloaded on change.
//! - [`rag`]: one chat request from question to answer (cache, retrieval, quota, model call,
//!   settlement, cache store), whichever endpoint asked it; no HTTP.
//!
//! Adapters
//! - [`api`]: the HTTP API: `AppState`, `router`, extractors, errors, one file per group of
//!   endpoints; [`api::openai`] is the OpenAI-compatible surface (a folder: routes, wire types,
//!   parameter checks, completions, streaming, embeddings, models).
//! - [`controller`]: the operator's reconciler, a pipeline validate → build → apply → status
//!   (plus cleanup, signing keys, leader election, its metrics).
//!
//! Processes
//! - [`cli`]: the command line (`serve`, `operator`, `token`, `kubectl`, `ingest`, `export`, `import`, `crd`,
//!   `healthcheck`), with typed flag values.
//! - [`serve`], [`operator`]: wiring of the two long-running modes.
//! - [`runtime`]: what both need: shutdown signal, admin router (metrics, health), file watching.
//! - [`config`]: the `serve` configuration file and its defaults.
//! - [`tls`]: HTTPS for `serve`: certificate loading and reload on change.
//! - [`listen`]: `serve`'s accept loop: connection cap, header-read and idle timeouts.
//! - [`metrics`], [`telemetry`]: Prometheus metric families; logging and tracing setup.
//! - [`tenant_gauges`]: the operator's per-tenant gauges (ready, signing-key age), from the
//!   Tenants' status.
//! - [`ingest`], [`healthcheck`]: the `tenantry ingest` client and the image's HEALTHCHECK probe.
//! - [`kubectl`]: `tenantry kubectl`, the kubectl plugin `kubectl tenantry` (tenants through the
//!   user's kubeconfig).
//! - [`transfer`]: the `tenantry export` / `tenantry import` clients (a tenant's documents as
//!   JSONL).
pub mod api;
pub mod auth;
pub mod cache;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod controller;
pub mod crd;
pub mod documents;
pub mod domain;
pub mod embed;
pub mod healthcheck;
pub mod ingest;
pub mod kubectl;
pub mod listen;
pub mod llm;
pub mod metrics;
pub mod operator;
pub mod quota;
pub mod rag;
pub mod runtime;
pub mod serve;
pub mod telemetry;
pub mod tenant_gauges;
pub mod tenants;
pub mod tls;
pub mod transfer;
pub mod vector;

/// Installs ring as the process-wide rustls crypto provider (idempotent). Every TLS client and
/// server in the program uses ring; without one installed, rustls cannot pick a provider and
/// building an HTTP client panics. `main` calls this once, first thing; a program (or test)
/// that uses the library without `main` calls it before building any client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The crate's folder for tests: cargo's `CARGO_MANIFEST_DIR` at run time (the compile-time
/// value names whichever checkout built the binary last, when checkouts share a target dir).
#[cfg(test)]
pub(crate) fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
