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
use crate::llm::resilient::{ResilientChat, Upstream};
use crate::llm::{ChatModel, LlmError};
use crate::metrics::Metrics;
use crate::quota::memory::MemoryStore;
use crate::quota::redis::{RedisOptions, RedisStore};
use crate::quota::{Quota, QuotaError, QuotaStore};
use crate::runtime::{self, shutdown_signal};
use crate::tenants::{Catalog, KeySource};
use crate::vector::edge::EdgeBackend;
use crate::vector::qdrant::{QdrantBackend, QdrantConfig};
use crate::vector::{VectorBackend, VectorError};

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
    /// The quota store could not be set up (bad Redis URL).
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The chat client could not be built.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// `--tls-cert`/`--tls-key` are incomplete or unusable.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A folder could not be created or an address bound.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
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

    let vectors = build_vectors(args, &config).await?;

    let embedder = build_embedder(args, &config).await?;
    let metrics = Arc::new(Metrics::default());
    let llm = build_chat_model(&config, &metrics)?;
    let tenants = Arc::new(build_catalog(args, &config));
    let r = tenants.clone();
    let _ = tokio::task::spawn_blocking(move || r.reload()).await;
    let quota = build_quota(args, &config)?;
    let _ = tokio::task::spawn_blocking(crate::quota::tokens::warm_up).await;
    crate::runtime::started();

    Ok(AppState {
        tenants,
        vectors,
        embedder,
        llm,
        metrics,
        config: Arc::new(config),
        dev: args.dev,
        quota,
        jwks: Arc::new(crate::auth::oidc::JwksCache::new()),
    })
}

/// The embedding model: in-process (candle, loaded on a blocking thread) or an
/// OpenAI-compatible `/v1/embeddings` endpoint.
async fn build_embedder(
    args: &ServeArgs,
    config: &ServeConfig,
) -> Result<Arc<dyn Embedder>, ServeError> {
    Ok(match &config.embedding {
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
    })
}

/// The chat model: the configured endpoint and its fallbacks behind retries and circuit
/// breakers (their state in `metrics`), or the offline extractive responder when no endpoint
/// is configured.
fn build_chat_model(
    config: &ServeConfig,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn ChatModel>, ServeError> {
    let Some(url) = config.llm_base_url() else {
        tracing::warn!(
            "no chat model endpoint configured (llm.baseUrl / OPENAI_BASE_URL): answers come from the offline extractive responder"
        );
        return Ok(Arc::new(Extractive));
    };
    tracing::info!(base_url = %url, "chat model endpoint configured");
    let timeout = Duration::from_secs(config.llm.timeout_seconds);
    let connect = Duration::from_secs(config.llm.connect_timeout_seconds);
    let endpoint = |url: &str, key_env: Option<&str>| -> Result<Arc<dyn ChatModel>, ServeError> {
        let key = key_env.and_then(|k| std::env::var(k).ok());
        Ok(Arc::new(OpenAiChat::with_connect_timeout(
            url, key, timeout, connect,
        )?))
    };
    let mut upstreams = vec![Upstream::new(
        "primary",
        endpoint(&url, Some(config.llm.api_key_env.as_str()))?,
    )];
    for (i, f) in config.llm.fallbacks.iter().enumerate() {
        tracing::info!(base_url = %f.base_url, "fallback chat model endpoint configured");
        upstreams.push(
            Upstream::new(
                format!("fallback-{}", i + 1),
                endpoint(&f.base_url, f.api_key_env.as_deref())?,
            )
            .with_model(f.model.clone()),
        );
    }
    let metrics = metrics.clone();
    Ok(Arc::new(
        ResilientChat::new(upstreams, config.llm.policy()).with_observer(Arc::new(
            move |upstream, open| metrics.record_circuit(upstream, open),
        )),
    ))
}

/// The tenant catalog (not loaded yet): manifests from `--tenants`, keys from `--keys-dir`
/// (mounted, never created) or `<data-dir>/keys` (created for tenants that have none).
fn build_catalog(args: &ServeArgs, config: &ServeConfig) -> Catalog {
    let keys = match &args.keys_dir {
        Some(dir) => KeySource {
            dir: dir.clone(),
            create_missing: false,
        },
        None => KeySource {
            dir: args.data_dir.join("keys"),
            create_missing: true,
        },
    };
    Catalog::new(args.tenants.clone(), keys, config.llm.model.clone())
}

/// Every `every`, deletes each tenant's semantic-cache entries older than its TTL, so the cache
/// holds at most a TTL's worth of answers (expired entries never hit, but would stay stored).
async fn sweep_caches(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: nothing has expired yet
    loop {
        tick.tick().await;
        for id in state.tenants.ids() {
            let Some(tenant) = state.tenants.get(&id) else {
                continue;
            };
            let vectors = crate::vector::TenantVectors::new(
                state.vectors.clone(),
                id.clone(),
                tenant.spec.retrieval.isolation,
                state.embedder.dimension(),
            )
            .with_owner(tenant.data_owner.clone());
            if let Err(e) = crate::cache::purge_expired(&vectors, tenant.cache_ttl).await {
                tracing::warn!(tenant_id = %id, error = %e, "could not delete expired semantic-cache entries");
            }
        }
    }
}

/// The vector store: a Qdrant server when `--qdrant-url`/`TENANTRY_QDRANT_URL` or
/// `vector.qdrantUrl` names one, the embedded store under `<data-dir>/vectors` otherwise.
async fn build_vectors(
    args: &ServeArgs,
    config: &ServeConfig,
) -> Result<Arc<dyn VectorBackend>, ServeError> {
    let v = &config.vector;
    let url = args
        .qdrant_url
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| v.qdrant_url.clone());
    let Some(url) = url else {
        return Ok(Arc::new(EdgeBackend::open(&args.data_dir.join("vectors"))?));
    };
    let backend = QdrantBackend::connect(QdrantConfig {
        url,
        api_key: std::env::var(&v.api_key_env).ok().filter(|k| !k.is_empty()),
        timeout: Duration::from_millis(v.timeout_ms),
        connect_timeout: Duration::from_millis(v.connect_timeout_ms),
        on_disk: v.on_disk,
        quantization: v.quantization,
        replication_factor: v.replication_factor,
        write_consistency_factor: v.write_consistency_factor,
    })?;
    // Not fatal: the client reconnects by itself, and /readyz reports the outage meanwhile.
    match backend.ready().await {
        Ok(()) => tracing::info!(qdrant = %backend.url(), "vector store on a Qdrant server"),
        Err(e) => tracing::warn!(
            qdrant = %backend.url(),
            error = %e,
            "vector store on a Qdrant server that is not reachable yet"
        ),
    }
    Ok(Arc::new(backend))
}

/// The quota backend: Redis when `--redis-url`/`TENANTRY_REDIS_URL` or `quota.redisUrl` names
/// one, in-process counters otherwise.
fn build_quota(args: &ServeArgs, config: &ServeConfig) -> Result<Quota, ServeError> {
    let q = &config.quota;
    // In-flight entries outlive the longest possible request, so only a crashed replica's
    // entries ever expire unsettled.
    let lease = Duration::from_secs(config.limits.request_timeout_seconds + 60);
    let url = args
        .redis_url
        .as_ref()
        .map(|u| u.0.clone())
        .filter(|u| !u.is_empty())
        .or_else(|| q.redis_url.clone());
    let store: Arc<dyn QuotaStore> = match url {
        Some(url) => {
            let store = RedisStore::new(&RedisOptions {
                url,
                cluster: q.redis_cluster,
                command_timeout: Duration::from_millis(q.command_timeout_ms),
                connect_timeout: Duration::from_millis(q.connect_timeout_ms),
            })?;
            tracing::info!(redis = %store.url(), cluster = q.redis_cluster, fail_mode = ?q.fail_mode, "quotas in Redis");
            Arc::new(store)
        }
        None if q.redis_cluster => {
            return Err(QuotaError::InvalidUrl {
                url: String::new(),
                reason: "quota.redisCluster is set but no Redis URL names the cluster's nodes"
                    .to_string(),
            }
            .into());
        }
        None => {
            tracing::info!("quotas in-process (single replica; set --redis-url to share them)");
            Arc::new(MemoryStore::default())
        }
    };
    Ok(Quota::new(store, q.fail_mode, lease))
}

/// Runs the API and the metrics endpoint until a shutdown signal.
pub async fn run(args: ServeArgs) -> Result<(), ServeError> {
    // Bad certificate files fail the start at once, before the slow model load.
    let tls = crate::tls::TlsFiles::from_args(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    let tls_config = match &tls {
        Some(files) => Some(crate::tls::initial(files)?),
        None => None,
    };
    let state = build_state(&args).await?;
    if args.dev {
        tracing::warn!("development mode: GET /dev/token mints tokens for any tenant");
    }
    let watcher = tokio::spawn(state.tenants.clone().watch(crate::runtime::POLL_EVERY));
    let sweep_every = Duration::from_secs(state.config.vector.cache_sweep_seconds);
    let sweeper = tokio::spawn(sweep_caches(state.clone(), sweep_every));

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(io(format!("cannot listen on {}", args.listen)))?;
    let metrics_listener = TcpListener::bind(args.metrics_listen)
        .await
        .map_err(io(format!("cannot listen on {}", args.metrics_listen)))?;
    let addr = listener.local_addr().map_err(io("local address"))?;
    let metrics_addr = metrics_listener.local_addr().map_err(io("local address"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, %metrics_addr, scheme, tenants = state.tenants.ids().len(), "listening");

    let limits = crate::listen::Limits::from(&state.config.listener);
    let encoder = state.metrics.clone();
    let metrics_router = runtime::admin_router(move || encoder.encode(), None);
    let metrics = tokio::spawn(crate::listen::serve(
        metrics_listener,
        metrics_router,
        None,
        limits,
        shutdown_signal(),
    ));
    let app = api::router(state);
    let served = match (tls, tls_config) {
        (Some(files), Some(config)) => serve_tls(listener, app, files, config, limits).await,
        _ => crate::listen::serve(listener, app, None, limits, shutdown_signal()).await,
    };
    watcher.abort();
    sweeper.abort();
    let _ = metrics.await;
    served.map_err(io("server error"))?;
    tracing::info!("stopped");
    Ok(())
}

/// Serves `app` over TLS on `listener` until a shutdown signal, then finishes in-flight
/// requests (no deadline, like the plain-HTTP path: the pod's grace period bounds it); the
/// certificate is reloaded in the background when its files change.
async fn serve_tls(
    listener: TcpListener,
    app: axum::Router,
    files: crate::tls::TlsFiles,
    (config, seen): (
        axum_server::tls_rustls::RustlsConfig,
        crate::runtime::FileStamp,
    ),
    limits: crate::listen::Limits,
) -> std::io::Result<()> {
    let reloader = tokio::spawn(crate::tls::watch(
        files,
        config.clone(),
        seen,
        crate::runtime::POLL_EVERY,
    ));
    let served = crate::listen::serve(listener, app, Some(config), limits, shutdown_signal()).await;
    reloader.abort();
    served
}
