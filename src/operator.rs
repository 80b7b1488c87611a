//! `tenantry operator`: connects to the cluster, campaigns for the leader Lease, serves
//! `/metrics` (the reconciler's families and the per-tenant gauges), `/healthz` and `/readyz`,
//! and runs the Tenant controller while it leads. A replica that loses the Lease exits (its pod
//! restarts and campaigns again), so two replicas never write at the same time.
//!
//! Wiring only: flags → [`Context`] → leader gate → [`controller::run`].
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;

use crate::cli::OperatorArgs;
use crate::config::ServeConfig;
use crate::controller::build::BuildConfig;
use crate::controller::build::access::Access;
use crate::controller::build::expose::{Expose, ExposeConfigError};
use crate::controller::build::network::NetworkConfig;
use crate::controller::build::pod::PodDefaults;
use crate::controller::credentials::StoreCredentials;
use crate::controller::leader::Elector;
use crate::controller::{self, Context, ContextParts, ReconcileMetrics, lease_api};
use crate::runtime::{admin_router, shutdown_signal};
use crate::tenant_gauges::{TenantGauges, join_expositions};
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
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address of `--listen`.
        addr: SocketAddr,
        /// Why it could not be bound.
        #[source]
        source: std::io::Error,
    },
    /// `--api-config` cannot be read, is invalid or holds a secret.
    #[error("--api-config: {0}")]
    ApiConfig(String),
    /// `--api-pod-defaults` cannot be read or is invalid.
    #[error("--api-pod-defaults: {0}")]
    PodDefaults(String),
    /// A flag is malformed or unsafe (an empty namespace prefix, `TENANTRY_DEV` in
    /// `--api-env`, a bad network peer).
    #[error("{0}")]
    Flags(String),
    /// The `--expose*` flags are missing, malformed or inapplicable.
    #[error("invalid exposure flags: {0}")]
    Expose(#[from] ExposeConfigError),
    /// The per-tenant store credentials flags cannot work with the rest.
    #[error("{0}")]
    Credentials(String),
    /// Another replica took the Lease.
    #[error("lost leadership; exiting so that only one replica writes")]
    LostLeadership,
}

/// Runs the operator until a shutdown signal (Ok) or loss of leadership (Err).
pub async fn run(args: OperatorArgs) -> Result<(), OperatorError> {
    let mut build = build_config(&args)?;
    let identity = identity(&args);
    let client = Client::try_default().await?;
    let pod_namespace = std::env::var("POD_NAMESPACE").ok();
    let (namespace, from) = own_namespace(
        args.lease_namespace.as_deref(),
        pod_namespace.as_deref(),
        client.default_namespace(),
    );
    build.operator_namespace = namespace.clone();
    let vectors = open_vectors(&args)?;
    let metrics = Arc::new(ReconcileMetrics::default());
    let gauges = Arc::new(TenantGauges::default());
    let watched = gauges.clone();
    let watch_client = client.clone();
    tokio::spawn(async move { watched.watch(watch_client).await });

    let (tx, mut rx) = watch::channel(false);
    let elector = Elector::new(
        lease_api(client.clone(), &namespace),
        &namespace,
        &args.lease_name,
        &identity,
        args.lease_duration,
    );
    let campaign = tokio::spawn(elector.clone().run(tx));
    let addr = serve_admin(args.listen, metrics.clone(), gauges, rx.clone()).await?;
    tracing::info!(
        %addr,
        %identity,
        lease = %args.lease_name,
        lease_namespace = %namespace,
        namespace_from = from,
        "operator started; waiting for leadership"
    );

    if !wait_for_leadership(&mut rx).await {
        campaign.abort();
        return Ok(());
    }
    tracing::info!(%identity, "leading: starting the Tenant and TenantCredential controllers");
    let parts = ContextParts {
        build,
        vectors,
        dimension: args.embedding_dimension,
        identity,
        metrics,
    };
    let result = lead(Arc::new(Context::new(client, parts)), rx).await;
    campaign.abort();
    if result.is_ok() {
        elector.release().await;
        tracing::info!("operator stopped; lease released");
    }
    result
}

/// What the reconciler builds, from the flags and the files they name (checked here, before
/// anything connects, so a bad file stops the operator with its reason).
fn build_config(args: &OperatorArgs) -> Result<BuildConfig, OperatorError> {
    let qdrant_url = args.qdrant_url.clone().filter(|u| !u.is_empty());
    let serve = api_config(args, qdrant_url.as_deref())?;
    let pod_defaults = match &args.api_pod_defaults {
        Some(path) => PodDefaults::load(path).map_err(OperatorError::PodDefaults)?,
        None => PodDefaults::default(),
    };
    check_flags(args).map_err(OperatorError::Flags)?;
    let network =
        NetworkConfig::from_flags(&args.api_ingress_from, &args.metrics_from, &args.api_egress)
            .map_err(OperatorError::Flags)?;
    let mut build = BuildConfig {
        network,
        data_size_limit: args.api_data_size_limit.clone(),
        namespace_prefix: args.namespace_prefix.clone(),
        image: args.image.clone(),
        image_pull_policy: args.image_pull_policy.clone(),
        api_env: args
            .api_env
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
        api_secret_env: args
            .api_env_from_secret
            .iter()
            .map(|r| (r.env.clone(), r.secret.clone(), r.key.clone()))
            .collect(),
        // Set once the client is there to say which namespace it runs in.
        operator_namespace: String::new(),
        qdrant_url,
        qdrant_api_key_secret: args
            .qdrant_api_key_secret
            .clone()
            .filter(|s| !s.is_empty())
            .map(|name| (name, args.qdrant_api_key_secret_key.clone())),
        serve,
        pod_defaults,
        expose: Expose::from_args(&args.expose)?,
        access: Access {
            tenant_role: args.tenant_role.clone(),
            service_account: args.service_account.clone(),
        },
        store_credentials: Default::default(),
    };
    let qdrant_key = std::env::var("TENANTRY_QDRANT_API_KEY").ok();
    build.store_credentials =
        StoreCredentials::from_args(&args.store_credentials, &build, qdrant_key)
            .map_err(OperatorError::Credentials)?;
    Ok(build)
}

/// Environment variables the API pods may not be given: they enable `/dev/token`, which
/// mints tokens over HTTP.
pub const FORBIDDEN_API_ENV: [&str; 1] = ["TENANTRY_DEV"];

/// Refuses flags that would let a Tenant take over a namespace or a pod mint tokens.
fn check_flags(args: &OperatorArgs) -> Result<(), String> {
    let prefix = &args.namespace_prefix;
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= 22
        && prefix.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !prefix_ok {
        return Err(format!(
            "--namespace-prefix {prefix:?}: must be 1 to 22 characters of [a-z0-9-] starting \
             with a letter or digit (an empty prefix would name tenant namespaces after \
             existing ones, e.g. Tenant monitoring -> namespace monitoring)"
        ));
    }
    let envs = args
        .api_env
        .iter()
        .map(|kv| kv.key.as_str())
        .chain(args.api_env_from_secret.iter().map(|r| r.env.as_str()));
    for env in envs {
        if FORBIDDEN_API_ENV.contains(&env) {
            return Err(format!(
                "--api-env {env}: refused: it enables GET /dev/token, which mints tokens \
                 for any tenant; tenant pods only verify tokens"
            ));
        }
    }
    if !args
        .api_data_size_limit
        .starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(format!(
            "--api-data-size-limit {:?}: not a quantity like 1Gi",
            args.api_data_size_limit
        ));
    }
    Ok(())
}

/// The API pods' serve configuration: `--api-config`, checked (valid, no secrets, the vector
/// store the operator provisions in), else the defaults.
fn api_config(args: &OperatorArgs, qdrant_url: Option<&str>) -> Result<ServeConfig, OperatorError> {
    let Some(path) = &args.api_config else {
        return Ok(ServeConfig::default());
    };
    let config =
        ServeConfig::load(path, true).map_err(|e| OperatorError::ApiConfig(e.to_string()))?;
    let refuse = |reason: String| OperatorError::ApiConfig(format!("{}: {reason}", path.display()));
    config.check_no_secrets().map_err(refuse)?;
    if let Some(url) = config.vector.qdrant_url.as_deref()
        && Some(url) != qdrant_url
    {
        return Err(refuse(
            "vector.qdrantUrl differs from --qdrant-url: the operator provisions the collections in the store of --qdrant-url and gives the pods that URL; set --qdrant-url instead".to_string(),
        ));
    }
    Ok(config)
}

/// The operator's own namespace (its Lease, the Secrets it copies) and where it came from:
/// `--lease-namespace`, else `POD_NAMESPACE`, else the client's default namespace (the
/// in-cluster ServiceAccount's, the kubeconfig context's, or `default`).
pub fn own_namespace(
    flag: Option<&str>,
    pod_namespace: Option<&str>,
    client_default: &str,
) -> (String, &'static str) {
    let set = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    if let Some(ns) = set(flag) {
        (ns, "--lease-namespace")
    } else if let Some(ns) = set(pod_namespace) {
        (ns, "POD_NAMESPACE")
    } else {
        let ns = set(Some(client_default)).unwrap_or_else(|| "default".to_string());
        (
            ns,
            "the client's namespace (in-cluster ServiceAccount or kubeconfig context)",
        )
    }
}

/// The embedded store's folder when `--vector-data-dir` is unset: the user's state folder
/// (`$XDG_STATE_HOME`, else `$HOME/.local/state`), else the temporary folder; never the
/// working directory.
pub fn default_vector_dir(
    xdg_state_home: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> std::path::PathBuf {
    let nonempty =
        |v: Option<&std::ffi::OsStr>| v.filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    nonempty(xdg_state_home)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            nonempty(home)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local/state"))
        })
        .unwrap_or_else(std::env::temp_dir)
        .join("tenantry/operator-vectors")
}

/// This replica's name in the Lease: `--identity`, else the pod's hostname, else one made up.
fn identity(args: &OperatorArgs) -> String {
    args.identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("tenantry-{}", std::process::id()))
}

/// The store tenants' collections are provisioned in: a Qdrant server, else the embedded one.
fn open_vectors(args: &OperatorArgs) -> Result<Arc<dyn VectorBackend>, OperatorError> {
    let Some(url) = args.qdrant_url.clone().filter(|u| !u.is_empty()) else {
        let dir = args.vector_data_dir.clone().unwrap_or_else(|| {
            default_vector_dir(
                std::env::var_os("XDG_STATE_HOME").as_deref(),
                std::env::var_os("HOME").as_deref(),
            )
        });
        tracing::info!(dir = %dir.display(), "provisioning collections in the embedded vector store");
        return Ok(Arc::new(EdgeBackend::open_provisioner(&dir)?));
    };
    let backend = QdrantBackend::connect(QdrantConfig {
        url,
        api_key: std::env::var("TENANTRY_QDRANT_API_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
        timeout: Duration::from_millis(args.qdrant_timeout_ms),
        connect_timeout: Duration::from_millis(args.qdrant_connect_timeout_ms),
        on_disk: args.qdrant_on_disk,
        quantization: args.qdrant_quantization,
        replication_factor: args.qdrant_replication_factor,
        write_consistency_factor: args.qdrant_write_consistency_factor,
    })?;
    tracing::info!(qdrant = %backend.url(), "provisioning collections on a Qdrant server");
    Ok(Arc::new(backend))
}

/// Binds `listen` and serves the admin router in the background until a shutdown signal;
/// returns the bound address.
async fn serve_admin(
    listen: SocketAddr,
    metrics: Arc<ReconcileMetrics>,
    gauges: Arc<TenantGauges>,
    leading: watch::Receiver<bool>,
) -> Result<SocketAddr, OperatorError> {
    let listen_err = |source| OperatorError::Listen {
        addr: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let encode = move || {
        let now = crate::auth::keys::unix_now();
        join_expositions(&[metrics.encode(), gauges.encode(now)])
    };
    let app = admin_router(encode, Some(leading));
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    Ok(addr)
}

/// Waits until this replica leads (true) or a shutdown signal arrives first (false).
async fn wait_for_leadership(leading: &mut watch::Receiver<bool>) -> bool {
    let wait = async {
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = wait => true,
        () = shutdown_signal() => false,
    }
}

/// Runs the controller until a shutdown signal (Ok) or until the Lease is lost (Err).
async fn lead(ctx: Arc<Context>, mut leading: watch::Receiver<bool>) -> Result<(), OperatorError> {
    let lost = async {
        loop {
            if leading.changed().await.is_err() || !*leading.borrow() {
                return;
            }
        }
    };
    let credentials = Arc::new(controller::tenant_credential::CredentialContext {
        client: ctx.client.clone(),
        namespace_prefix: ctx.build.namespace_prefix.clone(),
    });
    // One shutdown signal stops both controllers.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let controllers = async {
        tokio::join!(
            controller::run(ctx, stopped(stop_rx.clone())),
            controller::tenant_credential::run(credentials, stopped(stop_rx)),
        )
    };
    let signal = async {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = controllers => Ok(()),
        () = signal => Ok(()),
        () = lost => Err(OperatorError::LostLeadership),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn the_own_namespace_is_the_flag_then_the_pods_then_the_clients() {
        assert_eq!(own_namespace(Some("ops"), Some("pod-ns"), "ctx").0, "ops");
        assert_eq!(
            own_namespace(None, Some("pod-ns"), "ctx"),
            ("pod-ns".to_string(), "POD_NAMESPACE")
        );
        assert_eq!(own_namespace(Some(" "), Some(""), "ctx").0, "ctx");
        assert_eq!(own_namespace(None, None, "").0, "default");
    }

    #[test]
    fn the_embedded_store_defaults_to_a_state_folder_not_the_working_directory() {
        let state = default_vector_dir(Some(OsStr::new("/state")), Some(OsStr::new("/home/u")));
        assert_eq!(state, PathBuf::from("/state/tenantry/operator-vectors"));
        let home = default_vector_dir(Some(OsStr::new("relative")), Some(OsStr::new("/home/u")));
        assert_eq!(
            home,
            PathBuf::from("/home/u/.local/state/tenantry/operator-vectors")
        );
        let tmp = default_vector_dir(None, Some(OsStr::new("")));
        assert_eq!(tmp, std::env::temp_dir().join("tenantry/operator-vectors"));
        assert!(tmp.is_absolute());
    }
}
