//! `tenantry serve`: wires configuration, tenants, vector store, embeddings and chat model
//! into the API and runs it until SIGTERM/Ctrl-C, finishing in-flight requests.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::cli::ServeArgs;
use crate::config::{ConfigError, EmbeddingConfig, ServeConfig};
use crate::embed::local::LocalEmbedder;
use crate::embed::openai::OpenAiEmbedder;
use crate::embed::{EmbedError, Embedder};
use crate::llm::extractive::Extractive;
use crate::llm::openai::OpenAiChat;
use crate::llm::{ChatModel, LlmError};
use crate::metrics::Metrics;
use crate::tenants::{KeySource, Registry};
use crate::vector::VectorError;
use crate::vector::edge::EdgeBackend;

/// How often the tenants folder and keyrings are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad configuration file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The vector store could not be opened.
    #[error("cannot open the vector store: {0}")]
    Vector(#[from] VectorError),
    /// The embedding model could not be loaded.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The chat client could not be built.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// A folder could not be created or an address bound.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// Builds the application state from the arguments (opens stores, loads models and tenants).
pub async fn build_state(args: &ServeArgs) -> Result<AppState, ServeError> {
    let default_config = args.config == Path::new("config/local.yaml");
    let config = ServeConfig::load(&args.config, !default_config)?;
    std::fs::create_dir_all(&args.data_dir).map_err(io(format!(
        "cannot create data dir {}",
        args.data_dir.display()
    )))?;

    let vectors = EdgeBackend::open(&args.data_dir.join("vectors"))?;

    let embedder: Arc<dyn Embedder> = match &config.embedding {
        EmbeddingConfig::Local { model_dir } => {
            let dir = args.model_dir.clone().unwrap_or_else(|| model_dir.clone());
            let dir2 = dir.clone();
            let model = tokio::task::spawn_blocking(move || LocalEmbedder::load(&dir2))
                .await
                .map_err(|e| EmbedError::Load {
                    path: dir.display().to_string(),
                    reason: e.to_string(),
                })??;
            Arc::new(model)
        }
        EmbeddingConfig::OpenAi {
            base_url,
            api_key_env,
            model,
            dimension,
        } => Arc::new(OpenAiEmbedder::new(
            base_url,
            std::env::var(api_key_env).ok(),
            model,
            *dimension,
            Duration::from_secs(config.llm.timeout_seconds),
        )?),
    };

    let llm: Arc<dyn ChatModel> = match config.llm_base_url() {
        Some(url) => {
            tracing::info!(base_url = %url, "chat model endpoint configured");
            Arc::new(OpenAiChat::new(
                &url,
                std::env::var(&config.llm.api_key_env).ok(),
                Duration::from_secs(config.llm.timeout_seconds),
            )?)
        }
        None => {
            tracing::warn!(
                "no chat model endpoint configured (llm.baseUrl / OPENAI_BASE_URL): answers come from the offline extractive responder"
            );
            Arc::new(Extractive)
        }
    };

    let registry = Arc::new(Registry::new(
        args.tenants.clone(),
        KeySource {
            dir: args.data_dir.join("keys"),
            create_missing: true,
        },
        config.llm.model.clone(),
    ));
    let r = registry.clone();
    let _ = tokio::task::spawn_blocking(move || r.reload()).await;

    Ok(AppState {
        registry,
        vectors: Arc::new(vectors),
        embedder,
        llm,
        metrics: Arc::new(Metrics::default()),
        config: Arc::new(config),
        dev: args.dev,
    })
}

/// Runs the API and the metrics endpoint until a shutdown signal.
pub async fn run(args: ServeArgs) -> Result<(), ServeError> {
    crate::install_crypto_provider();
    let state = build_state(&args).await?;
    if args.dev {
        tracing::warn!("development mode: GET /dev/token mints tokens for any tenant");
    }
    let watcher = tokio::spawn(state.registry.clone().watch(RELOAD_EVERY));

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(io(format!("cannot listen on {}", args.listen)))?;
    let metrics_listener = TcpListener::bind(args.metrics_listen)
        .await
        .map_err(io(format!("cannot listen on {}", args.metrics_listen)))?;
    let addr = listener.local_addr().map_err(io("local address"))?;
    let metrics_addr = metrics_listener.local_addr().map_err(io("local address"))?;
    tracing::info!(%addr, %metrics_addr, tenants = state.registry.ids().len(), "listening");

    let metrics_router = api::metrics_router(state.metrics.clone());
    let metrics = tokio::spawn(async move {
        axum::serve(metrics_listener, metrics_router)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    let app = api::router(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    watcher.abort();
    let _ = metrics.await;
    served.map_err(io("server error"))?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
