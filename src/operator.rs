//! `tenantry operator`: connects to the cluster, campaigns for the leader Lease, serves
//! `/metrics`, `/healthz` and `/readyz`, and runs the Tenant controller while it leads. A
//! replica that loses the Lease exits (its pod restarts and campaigns again), so two replicas
//! never write at the same time.
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use kube::Client;
use tokio::sync::watch;

use crate::cli::OperatorArgs;
use crate::controller::build::BuildConfig;
use crate::controller::leader::Elector;
use crate::controller::{Context, Metrics, lease_api, run_controller};
use crate::serve::shutdown_signal;
use crate::vector::edge::EdgeBackend;
use crate::vector::qdrant::{QdrantBackend, QdrantConfig};
use crate::vector::{VectorBackend, VectorError};

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No usable kubeconfig or in-cluster config.
    #[error("cannot connect to the Kubernetes API: {0}")]
    Connect(#[from] kube::Error),
    /// The vector store could not be opened.
    #[error("cannot open the vector store: {0}")]
    Vector(#[from] VectorError),
    /// A flag is invalid.
    #[error("{0}")]
    Args(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Another replica took the Lease.
    #[error("lost leadership; exiting so that only one replica writes")]
    LostLeadership,
}

/// Runs the operator until a shutdown signal (Ok) or loss of leadership (Err).
pub async fn run(args: OperatorArgs) -> Result<(), OperatorError> {
    let lease_duration = args.lease_duration;
    let api_env = args
        .api_env
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    let api_secret_env = args
        .api_env_from_secret
        .iter()
        .map(|r| (r.env.clone(), r.secret.clone(), r.key.clone()))
        .collect();
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("tenantry-{}", std::process::id()));

    let client = Client::try_default().await?;
    let vectors: Arc<dyn VectorBackend> = match args.qdrant_url.clone().filter(|u| !u.is_empty()) {
        Some(url) => {
            let backend = QdrantBackend::connect(QdrantConfig {
                url,
                api_key: std::env::var("TENANTRY_QDRANT_API_KEY")
                    .ok()
                    .filter(|k| !k.is_empty()),
                timeout: Duration::from_millis(args.qdrant_timeout_ms),
                connect_timeout: Duration::from_millis(args.qdrant_connect_timeout_ms),
                on_disk: args.qdrant_on_disk,
                quantization: args.qdrant_quantization,
            })?;
            tracing::info!(qdrant = %backend.url(), "provisioning collections on a Qdrant server");
            Arc::new(backend)
        }
        None => Arc::new(EdgeBackend::open(&args.vector_data_dir)?),
    };
    let metrics = Arc::new(Metrics::default());

    let (tx, mut rx) = watch::channel(false);
    let elector = Elector::new(
        lease_api(client.clone(), &args.lease_namespace),
        &args.lease_name,
        &identity,
        lease_duration,
    );
    let campaign = tokio::spawn(elector.clone().run(tx));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| OperatorError::Listen {
            addr: args.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| OperatorError::Listen {
            addr: args.listen,
            source,
        })?;
    let m = metrics.clone();
    let leading = rx.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { crate::api::openmetrics(m.encode()) }
            }),
        )
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let leader = *leading.borrow();
                async move { axum::Json(serde_json::json!({"status": "ready", "leader": leader})) }
            }),
        );
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    tracing::info!(%addr, %identity, lease = %args.lease_name, "operator started; waiting for leadership");

    // Wait to lead (or stop).
    let wait = async {
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = wait => {},
        () = shutdown_signal() => {
            campaign.abort();
            return Ok(());
        }
    }
    tracing::info!(%identity, "leading: starting the Tenant controller");
    let build = BuildConfig {
        namespace_prefix: args.namespace_prefix.clone(),
        image: args.image.clone(),
        image_pull_policy: args.image_pull_policy.clone(),
        api_env,
        api_secret_env,
        operator_namespace: args.lease_namespace.clone(),
        qdrant_url: args.qdrant_url.clone().filter(|u| !u.is_empty()),
        qdrant_api_key_secret: args
            .qdrant_api_key_secret
            .clone()
            .filter(|s| !s.is_empty())
            .map(|name| (name, args.qdrant_api_key_secret_key.clone())),
    };
    let ctx = Arc::new(Context::new(
        client,
        build,
        vectors,
        args.embedding_dimension,
        &identity,
        metrics,
    ));
    let lost = async {
        loop {
            if rx.changed().await.is_err() || !*rx.borrow() {
                return;
            }
        }
    };
    let result = tokio::select! {
        () = run_controller(ctx, shutdown_signal()) => Ok(()),
        () = lost => Err(OperatorError::LostLeadership),
    };
    campaign.abort();
    if result.is_ok() {
        elector.release().await;
        tracing::info!("operator stopped; lease released");
    }
    result
}
