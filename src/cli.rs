//! Command-line interface. Every flag can also be set through the `TENANTRY_*` environment
//! variable shown in `--help`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::domain::parse_duration;

/// tenantry: a Kubernetes operator and a tenant-aware RAG chat API.
#[derive(Debug, Parser)]
#[command(name = "tenantry", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once at start: boxing the operator's larger args would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the tenant-aware chat API.
    Serve(ServeArgs),
    /// Print a JWT for a user of a tenant, signed with the tenant's current key.
    Token(TokenArgs),
    /// Print the CustomResourceDefinitions (the YAML checked in under crds/).
    Crd,
    /// Run the Kubernetes operator that turns Tenants into running chat APIs.
    Operator(OperatorArgs),
    /// Exit 0 if a running `serve` answers 200 at /healthz within 2 s (for the image's
    /// HEALTHCHECK); otherwise print the reason and exit 1.
    Healthcheck(HealthcheckArgs),
    /// Upload files and folders of documents (txt, md, html) to a tenant's chat API; files
    /// already uploaded with the same content are skipped, so an interrupted run resumes.
    Ingest(IngestArgs),
    /// Write a tenant's documents (id, title, text, metadata) as JSONL, one document per line,
    /// to stdout or a file.
    Export(ExportArgs),
    /// Store the documents of a JSONL export in a tenant; documents already there (same id)
    /// are skipped, so an interrupted run resumes. Failed lines are reported, not fatal.
    Import(ImportArgs),
    /// Tenants in a cluster, through your kubeconfig: their status, usage, tokens and key
    /// rotation. Also run as the kubectl plugin `kubectl tenantry` (this binary under the name
    /// `kubectl-tenantry` on PATH).
    Kubectl(KubectlArgs),
}

/// Basename under which the binary acts as the kubectl plugin `kubectl tenantry`.
pub const PLUGIN_NAME: &str = "kubectl-tenantry";

/// Whether the program was run as [`PLUGIN_NAME`] (its `argv[0]`): kubectl runs plugins by
/// that name, with the arguments after `kubectl tenantry`, which [`Plugin`] parses.
pub fn invoked_as_plugin(argv0: Option<&std::ffi::OsStr>) -> bool {
    argv0.is_some_and(|a| {
        std::path::Path::new(a)
            .file_stem()
            .is_some_and(|stem| stem == PLUGIN_NAME)
    })
}

/// The kubectl plugin `kubectl tenantry`: the commands of `tenantry kubectl`.
#[derive(Debug, Parser)]
#[command(name = "kubectl-tenantry", bin_name = "kubectl tenantry", version)]
#[command(
    about = "Tenants of tenantry through your kubeconfig: status, usage, tokens, key rotation."
)]
pub struct Plugin {
    /// The cluster and the command.
    #[command(flatten)]
    pub args: KubectlArgs,
}

/// Options of `tenantry kubectl` (`kubectl tenantry`): which cluster, and what to do.
#[derive(Debug, Clone, Args)]
pub struct KubectlArgs {
    /// The cluster to talk to.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: KubectlCommand,
}

/// The cluster of `tenantry kubectl`, chosen like kubectl chooses it: the kubeconfig
/// (`--kubeconfig`, else `KUBECONFIG`, else `~/.kube/config`, else the in-cluster
/// ServiceAccount) and its context.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Kubeconfig file to use (unset: `KUBECONFIG`, else `~/.kube/config`, else in-cluster).
    #[arg(long, global = true, env = "TENANTRY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (unset: its current context).
    #[arg(long, global = true, env = "TENANTRY_KUBE_CONTEXT")]
    pub context: Option<String>,
    /// Only the tenant whose namespace (`status.namespace`, e.g. tenant-acme) this is.
    /// Tenants are cluster-scoped; this selects a tenant by the namespace its API runs in.
    #[arg(long, short = 'n', global = true, env = "TENANTRY_KUBE_NAMESPACE")]
    pub namespace: Option<String>,
}

/// Subcommands of `tenantry kubectl`.
#[derive(Debug, Clone, Subcommand)]
pub enum KubectlCommand {
    /// A tenant's phase, endpoint, signing key and conditions; without TENANT, one line per
    /// tenant.
    Status {
        /// Tenant (the Tenant's name); unset: every tenant.
        tenant: Option<String>,
    },
    /// Tokens used today against the daily limit, and the other limits, per tenant. Usage is
    /// read from the tenant's API (`GET /v1/usage`, with a token minted from the tenant's
    /// signing key), limits from the Tenant's status.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["tenant", "all"])))]
    Usage {
        /// Tenant (the Tenant's name).
        tenant: Option<String>,
        /// Every tenant.
        #[arg(long)]
        all: bool,
        /// Base URL of the tenant's API instead of its `status.endpoint` (an in-cluster URL
        /// unless the operator exposes the API), e.g. http://127.0.0.1:8000 after
        /// `kubectl port-forward -n tenant-acme svc/acme-api 8000:80`. Only with TENANT.
        #[arg(long, env = "TENANTRY_TENANT_URL", conflicts_with = "all")]
        url: Option<String>,
    },
    /// Print a JWT for a user of a tenant, signed with the tenant's current key read from its
    /// signing-key Secret.
    Token {
        /// Tenant (the Tenant's name).
        tenant: String,
        /// User the token is for (`sub` claim).
        #[arg(long, env = "TENANTRY_SUB")]
        subject: String,
        /// Validity, as a duration like `1h`, `30m` (at most the tenant's
        /// `spec.auth.maxTokenLifetime`).
        #[arg(long, env = "TENANTRY_TTL", default_value = "1h", value_parser = token_ttl)]
        ttl: Duration,
    },
    /// Ask the operator for a new signing key now: sets the Tenant's
    /// `tenantry.dev/rotate-key` annotation to a new value.
    Rotate {
        /// Tenant (the Tenant's name).
        tenant: String,
    },
}

/// The tenant API that `export` and `import` talk to.
#[derive(Debug, Clone, Args)]
pub struct TenantApiArgs {
    /// Base URL of the tenant's chat API, e.g. http://127.0.0.1:8000.
    #[arg(long, env = "TENANTRY_TENANT_URL")]
    pub tenant_url: String,
    /// The tenant JWT (prefer the environment variable: command lines are visible to others).
    #[arg(long, env = "TENANTRY_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Do not show progress on stderr.
    #[arg(long, env = "TENANTRY_NO_PROGRESS", default_value_t = false)]
    pub no_progress: bool,
}

/// Options of `tenantry export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The tenant's API.
    #[command(flatten)]
    pub api: TenantApiArgs,
    /// File to write (replaced only once the export is complete). Unset or `-`: stdout.
    #[arg(long, short, env = "TENANTRY_EXPORT_OUTPUT")]
    pub output: Option<PathBuf>,
}

/// Options of `tenantry import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The tenant's API.
    #[command(flatten)]
    pub api: TenantApiArgs,
    /// Documents stored at once.
    #[arg(long, env = "TENANTRY_IMPORT_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// JSONL file to import (as `tenantry export` writes it); `-` or unset: stdin.
    #[arg(env = "TENANTRY_IMPORT_INPUT")]
    pub input: Option<PathBuf>,
}

/// Options of `tenantry ingest`.
#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Base URL of the tenant's chat API, e.g. http://127.0.0.1:8000.
    #[arg(long, env = "TENANTRY_TENANT_URL")]
    pub tenant_url: String,
    /// The tenant JWT (prefer the environment variable: command lines are visible to others).
    #[arg(long, env = "TENANTRY_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Uploads in flight at once.
    #[arg(long, env = "TENANTRY_INGEST_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Do not draw a progress bar.
    #[arg(long, env = "TENANTRY_NO_PROGRESS", default_value_t = false)]
    pub no_progress: bool,
    /// Files and folders to ingest (folders recursively; hidden entries are skipped).
    #[arg(required = true, env = "TENANTRY_INGEST_PATHS", value_delimiter = ',')]
    pub paths: Vec<PathBuf>,
}

/// Options of `tenantry operator`.
#[derive(Debug, Clone, Args)]
pub struct OperatorArgs {
    /// Prefix of tenant namespaces (`tenant-` makes `tenant-acme`); must not be empty, so a
    /// Tenant can never be named after an existing namespace such as `monitoring`.
    #[arg(long, env = "TENANTRY_NAMESPACE_PREFIX", default_value = "tenant-")]
    pub namespace_prefix: String,
    /// Sources allowed to reach the tenants' chat API port (repeatable; comma-separated in the
    /// environment variable): a namespace name, cidr:<CIDR>, or * (any). Unset: any source.
    #[arg(long, env = "TENANTRY_API_INGRESS_FROM", value_delimiter = ',')]
    pub api_ingress_from: Vec<String>,
    /// Sources allowed to reach the chat API pods' metrics port (unauthenticated), e.g. the
    /// monitoring namespace (repeatable; same forms). Unset: the metrics port is closed.
    #[arg(long, env = "TENANTRY_METRICS_FROM", value_delimiter = ',')]
    pub metrics_from: Vec<String>,
    /// Destinations the chat API pods may connect to besides DNS, as PEER:PORT[/udp]
    /// (repeatable; e.g. qdrant:6334, cidr:10.0.0.0/8:6379, *:443). Unset: any destination on
    /// ports 443, 6333, 6334 and 6379.
    #[arg(long, env = "TENANTRY_API_EGRESS", value_delimiter = ',')]
    pub api_egress: Vec<String>,
    /// Size limit of the chat API pods' data folder (an emptyDir; the embedded vector store
    /// and scratch files live there), a Kubernetes quantity.
    #[arg(long, env = "TENANTRY_API_DATA_SIZE_LIMIT", default_value = "1Gi")]
    pub api_data_size_limit: String,
    /// Image of the tenants' chat API (this same binary, run as `serve`).
    #[arg(long, env = "TENANTRY_IMAGE", default_value = concat!("tenantry:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Pull policy of that image.
    #[arg(
        long,
        env = "TENANTRY_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub image_pull_policy: String,
    /// Extra environment of the chat API containers, as KEY=VALUE (repeatable; comma-separated
    /// in the environment variable), e.g. OPENAI_BASE_URL=http://llm:8080/v1.
    #[arg(long, env = "TENANTRY_API_ENV", value_delimiter = ',', value_parser = KeyValue::parse)]
    pub api_env: Vec<KeyValue>,
    /// Secret environment of the chat API containers, as ENV=SECRET:KEY (repeatable;
    /// comma-separated in the environment variable): the operator copies key KEY of Secret
    /// SECRET in its own namespace (`--lease-namespace`) into each tenant namespace and the
    /// pods read it through a secretKeyRef, e.g. OPENAI_API_KEY=llm-credentials:api-key.
    #[arg(
        long,
        env = "TENANTRY_API_ENV_FROM_SECRET",
        value_delimiter = ',',
        value_parser = SecretKeyRef::parse
    )]
    pub api_env_from_secret: Vec<SecretKeyRef>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "TENANTRY_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Namespace of the leader-election Lease and of the Secrets --api-env-from-secret names
    /// (the operator's own namespace). Unset: `POD_NAMESPACE`, else the namespace of the
    /// in-cluster ServiceAccount or of the kubeconfig's context, else `default`.
    #[arg(long, env = "TENANTRY_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// ClusterRole the operator binds to its own ServiceAccount in each tenant namespace it
    /// creates: its Secret rights there (it has none elsewhere).
    #[arg(
        long,
        env = "TENANTRY_TENANT_ROLE",
        default_value = "tenantry-operator-tenant"
    )]
    pub tenant_role: String,
    /// The operator's own ServiceAccount (in --lease-namespace), the subject of those bindings.
    #[arg(
        long,
        env = "TENANTRY_SERVICE_ACCOUNT",
        default_value = "tenantry-operator"
    )]
    pub service_account: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "TENANTRY_LEASE_NAME", default_value = "tenantry-operator")]
    pub lease_name: String,
    /// How long a leader's Lease lasts without renewal (e.g. 15s).
    #[arg(long, env = "TENANTRY_LEASE_DURATION", default_value = "15s", value_parser = lease_duration)]
    pub lease_duration: Duration,
    /// This replica's identity in the Lease (default: the pod's hostname).
    #[arg(long, env = "TENANTRY_IDENTITY")]
    pub identity: Option<String>,
    /// Folder of the embedded vector store in which tenants' collections are provisioned
    /// (only without --qdrant-url). Unset: `$XDG_STATE_HOME/tenantry/operator-vectors`, else
    /// `~/.local/state/tenantry/operator-vectors`, else under the temporary folder.
    #[arg(long, env = "TENANTRY_VECTOR_DATA_DIR")]
    pub vector_data_dir: Option<PathBuf>,
    /// Dimension of the tenants' embedding vectors (all-MiniLM-L6-v2: 384).
    #[arg(long, env = "TENANTRY_EMBEDDING_DIMENSION", default_value_t = 384)]
    pub embedding_dimension: usize,
    /// Qdrant server (gRPC, `http://qdrant:6334`, or `https://...` for TLS) in which tenants'
    /// collections are provisioned and deleted, instead of the embedded store in
    /// --vector-data-dir; also given to the chat API pods. The operator's API key is read from
    /// TENANTRY_QDRANT_API_KEY.
    #[arg(long, env = "TENANTRY_QDRANT_URL")]
    pub qdrant_url: Option<String>,
    /// Bound on one Qdrant request, in milliseconds.
    #[arg(long, env = "TENANTRY_QDRANT_TIMEOUT_MS", default_value_t = 10_000)]
    pub qdrant_timeout_ms: u64,
    /// Bound on connecting to Qdrant, in milliseconds.
    #[arg(
        long,
        env = "TENANTRY_QDRANT_CONNECT_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub qdrant_connect_timeout_ms: u64,
    /// Create tenants' collections with vectors and payloads on disk (memory-mapped).
    #[arg(long, env = "TENANTRY_QDRANT_ON_DISK", default_value_t = false)]
    pub qdrant_on_disk: bool,
    /// Quantization of new collections: `none` or `scalar` (int8, kept in RAM).
    #[arg(long, env = "TENANTRY_QDRANT_QUANTIZATION", default_value = "none")]
    pub qdrant_quantization: crate::vector::qdrant::Quantization,
    /// Copies of each shard of new collections (Qdrant distributed mode). Unset: the server's
    /// default (1).
    #[arg(long, env = "TENANTRY_QDRANT_REPLICATION_FACTOR")]
    pub qdrant_replication_factor: Option<u32>,
    /// Replicas that must apply a write before Qdrant acknowledges it (at most the replication
    /// factor). Unset: the server's default (1).
    #[arg(long, env = "TENANTRY_QDRANT_WRITE_CONSISTENCY_FACTOR")]
    pub qdrant_write_consistency_factor: Option<u32>,
    /// Secret holding the Qdrant API key of the chat API pods (read through
    /// `valueFrom.secretKeyRef`, so it must exist in every tenant namespace). Unset: no key.
    #[arg(long, env = "TENANTRY_QDRANT_API_KEY_SECRET")]
    pub qdrant_api_key_secret: Option<String>,
    /// Key of the API key inside that Secret.
    #[arg(
        long,
        env = "TENANTRY_QDRANT_API_KEY_SECRET_KEY",
        default_value = "api-key"
    )]
    pub qdrant_api_key_secret_key: String,
    /// Serve configuration of the chat API pods (the keys of config/local.yaml), checked at
    /// start and rendered per tenant (with its overrides, e.g. quota.maxTokens) into
    /// `<tenant>-api-config`. It may hold no secrets: keys come from Secrets, named by
    /// `apiKeyEnv`. Unset: the defaults.
    #[arg(long, env = "TENANTRY_API_CONFIG")]
    pub api_config: Option<PathBuf>,
    /// Platform defaults of the chat API pods (YAML: imagePullSecrets, nodeSelector,
    /// tolerations, affinity, topologySpreadConstraints, podLabels, podAnnotations,
    /// priorityClassName, resources), checked at start and applied to every tenant Deployment.
    #[arg(long, env = "TENANTRY_API_POD_DEFAULTS")]
    pub api_pod_defaults: Option<PathBuf>,
    /// How tenants' chat APIs are reached from outside the cluster.
    #[command(flatten)]
    pub expose: ExposeArgs,
    /// Per-tenant store credentials.
    #[command(flatten)]
    pub store_credentials: crate::controller::credentials::CredentialArgs,
}

/// How tenants' chat APIs are reachable from outside the cluster (`tenantry operator`);
/// checked together by `controller::build::expose::Expose::from_args`.
#[derive(Debug, Clone, Args)]
pub struct ExposeArgs {
    /// Exposure of each tenant's chat API: `none` (in-cluster only), `gateway` (a Gateway API
    /// HTTPRoute per tenant) or `ingress` (an Ingress per tenant). A Tenant with
    /// `spec.api.expose: false` stays in-cluster.
    #[arg(long = "expose", env = "TENANTRY_EXPOSE", default_value = "none")]
    pub mode: ExposeMode,
    /// Hostname of each tenant's API, a template containing {tenant}, e.g.
    /// {tenant}.chat.example.com (required with --expose gateway|ingress).
    #[arg(long = "expose-hostname", env = "TENANTRY_EXPOSE_HOSTNAME")]
    pub hostname: Option<String>,
    /// The Gateway the HTTPRoutes attach to, as NAMESPACE/NAME[/SECTION] (SECTION: a
    /// listener name); required with --expose gateway.
    #[arg(long, env = "TENANTRY_GATEWAY_PARENT")]
    pub gateway_parent: Option<String>,
    /// The Gateway's listener terminates TLS, so the tenants' URLs are https://.
    #[arg(long, env = "TENANTRY_GATEWAY_HTTPS", default_value_t = false)]
    pub gateway_https: bool,
    /// IngressClass of the Ingresses (unset: the cluster's default class).
    #[arg(long, env = "TENANTRY_INGRESS_CLASS")]
    pub ingress_class: Option<String>,
    /// Name of the TLS Secret of each tenant's Ingress, in the tenant namespace; may contain
    /// {tenant}, e.g. {tenant}-tls (unset: no TLS, http:// URLs).
    #[arg(long, env = "TENANTRY_INGRESS_TLS_SECRET")]
    pub ingress_tls_secret: Option<String>,
    /// Annotation of every Ingress, as KEY=VALUE (repeatable; one per line in the environment
    /// variable), e.g. cert-manager.io/cluster-issuer=letsencrypt.
    #[arg(
        long,
        env = "TENANTRY_INGRESS_ANNOTATIONS",
        value_delimiter = '\n',
        value_parser = KeyValue::parse
    )]
    pub ingress_annotation: Vec<KeyValue>,
}

/// The kinds of exposure of `--expose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExposeMode {
    /// In-cluster only.
    #[default]
    None,
    /// A Gateway API HTTPRoute per tenant.
    Gateway,
    /// An Ingress per tenant.
    Ingress,
}

/// Options of `tenantry serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Configuration file (chat endpoint, embeddings, chunking, limits). A missing file at the
    /// default path means built-in defaults.
    #[arg(long, env = "TENANTRY_CONFIG", default_value = "config/local.yaml")]
    pub config: PathBuf,
    /// Address the API listens on.
    #[arg(long, env = "TENANTRY_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    /// Address the Prometheus metrics endpoint (/metrics) listens on.
    #[arg(long, env = "TENANTRY_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Folder for the embedded vector store and generated signing keys.
    #[arg(long, env = "TENANTRY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Folder of Tenant/QuotaTier manifests (YAML, as for kubectl apply); reloaded on change.
    #[arg(long, env = "TENANTRY_TENANTS", default_value = "config/tenants")]
    pub tenants: PathBuf,
    /// Folder of read-only `<tenant>.json` keyrings (e.g. mounted from the operator's
    /// Secrets). Unset: `<data-dir>/keys`, where missing keyrings are generated.
    #[arg(long, env = "TENANTRY_KEYS_DIR")]
    pub keys_dir: Option<PathBuf>,
    /// Folder with the local embedding model; overrides `embedding.modelDir` of the config.
    #[arg(long, env = "TENANTRY_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Development mode: enables GET /dev/token to mint tokens over HTTP. Never in production.
    #[arg(long, env = "TENANTRY_DEV", default_value_t = false)]
    pub dev: bool,
    /// Redis for quotas and rate limits shared by every replica, e.g. `redis://host:6379`,
    /// `rediss://:password@host:6380/0` (TLS). Overrides `quota.redisUrl` of the config; unset
    /// in both: in-process counters (one replica only).
    #[arg(long, env = "TENANTRY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<RedisUrl>,
    /// Qdrant server holding the vectors (gRPC, `http://qdrant:6334`, or `https://...` for
    /// TLS); overrides `vector.qdrantUrl` of the config. Unset in both: the embedded store under
    /// --data-dir. The API key is read from TENANTRY_QDRANT_API_KEY (or `vector.apiKeyEnv`).
    #[arg(long, env = "TENANTRY_QDRANT_URL")]
    pub qdrant_url: Option<String>,
    /// PEM certificate chain (leaf first): the API port serves HTTPS (TLS 1.2/1.3, h2 and
    /// http/1.1). Needs --tls-key. Reloaded when the file changes (checked every 2 s).
    #[arg(long, env = "TENANTRY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1). Needs --tls-cert.
    #[arg(long, env = "TENANTRY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

/// Options of `tenantry healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// URL of the server's liveness endpoint (`https://...` when it serves TLS).
    #[arg(
        long,
        env = "TENANTRY_HEALTHCHECK_URL",
        default_value = "http://127.0.0.1:8000/healthz"
    )]
    pub url: String,
    /// PEM CA bundle to verify an https server with (instead of the system roots).
    #[arg(long, env = "TENANTRY_HEALTHCHECK_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Do not verify the https server's certificate (a probe of the local server, whose
    /// certificate names the Service rather than 127.0.0.1).
    #[arg(long, env = "TENANTRY_HEALTHCHECK_INSECURE", default_value_t = false)]
    pub insecure: bool,
}

/// Options of `tenantry token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Tenant id (the Tenant's name).
    #[arg(long, env = "TENANTRY_TENANT")]
    pub tenant: String,
    /// User the token is for (`sub` claim).
    #[arg(long, env = "TENANTRY_SUB")]
    pub sub: String,
    /// Validity, as a duration like `1h`, `30m`, `720h`.
    #[arg(long, env = "TENANTRY_TTL", default_value = "1h", value_parser = token_ttl)]
    pub ttl: Duration,
    /// Data folder holding the signing keys (the one `serve` uses).
    #[arg(long, env = "TENANTRY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Folder of Tenant manifests (to find the tenant and its key algorithm).
    #[arg(long, env = "TENANTRY_TENANTS", default_value = "config/tenants")]
    pub tenants: PathBuf,
}

/// `KEY=VALUE`: a plain environment variable for the chat API pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Variable name (not empty).
    pub key: String,
    /// Its value (may be empty).
    pub value: String,
}

impl KeyValue {
    /// Parses `KEY=VALUE` (the value may itself contain `=`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok(Self {
                key: key.to_string(),
                value: value.to_string(),
            }),
            _ => Err(format!("{s:?} is not KEY=VALUE")),
        }
    }
}

/// `ENV=SECRET:KEY`: environment variable `env` of the chat API pods is key `key` of Secret
/// `secret` in the operator's namespace (copied into each tenant namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// Variable name in the pods.
    pub env: String,
    /// Secret in the operator's namespace.
    pub secret: String,
    /// Key in that Secret.
    pub key: String,
}

impl SecretKeyRef {
    /// Parses `ENV=SECRET:KEY`, all three parts non-empty.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parsed = s.split_once('=').and_then(|(env, r)| {
            let (secret, key) = r.split_once(':')?;
            (!env.is_empty() && !secret.is_empty() && !key.is_empty()).then(|| Self {
                env: env.to_string(),
                secret: secret.to_string(),
                key: key.to_string(),
            })
        });
        parsed.ok_or_else(|| format!("{s:?} is not ENV=SECRET:KEY"))
    }
}

/// A Lease duration: a Go-style duration of at least one second.
fn lease_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
        .filter(|d| *d >= Duration::from_secs(1))
        .ok_or_else(|| format!("{s:?} is not a duration of at least 1s"))
}

/// A token lifetime: a non-zero Go-style duration.
fn token_ttl(s: &str) -> Result<Duration, String> {
    parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration like 1h or 30m"))
}

/// A Redis URL from the command line; its `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(pub String);

impl std::str::FromStr for RedisUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::quota::redact_url(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn redis_url_debug_hides_the_password() {
        let cli = Cli::try_parse_from([
            "tenantry",
            "serve",
            "--redis-url",
            "rediss://:hunter2@redis:6380",
        ])
        .expect("parses");
        let text = format!("{cli:?}");
        assert!(
            !text.contains("hunter2") && text.contains("redis:6380"),
            "{text}"
        );
    }

    #[test]
    fn typed_flags_parse_or_say_what_they_expect() {
        let cli = Cli::try_parse_from([
            "tenantry",
            "operator",
            "--api-env",
            "A=b=c,EMPTY=",
            "--api-env-from-secret",
            "OPENAI_API_KEY=llm:api-key",
            "--lease-duration",
            "1m30s",
        ])
        .expect("parses");
        let Command::Operator(args) = cli.command else {
            panic!("not the operator");
        };
        assert_eq!(
            args.api_env,
            [
                KeyValue::parse("A=b=c").expect("kv"),
                KeyValue::parse("EMPTY=").expect("kv")
            ]
        );
        assert_eq!(args.api_env[0].value, "b=c");
        assert_eq!(
            args.api_env_from_secret,
            [SecretKeyRef {
                env: "OPENAI_API_KEY".into(),
                secret: "llm".into(),
                key: "api-key".into()
            }]
        );
        assert_eq!(args.lease_duration, Duration::from_secs(90));
        for (flag, value, says) in [
            ("--api-env", "NOEQUALS", "is not KEY=VALUE"),
            ("--api-env", "=v", "is not KEY=VALUE"),
            ("--api-env-from-secret", "E=secret", "is not ENV=SECRET:KEY"),
            ("--api-env-from-secret", "E=:key", "is not ENV=SECRET:KEY"),
            ("--lease-duration", "500ms", "at least 1s"),
        ] {
            let err = Cli::try_parse_from(["tenantry", "operator", flag, value])
                .expect_err(value)
                .to_string();
            assert!(
                err.contains(says) && err.contains(flag),
                "{flag} {value}: {err}"
            );
        }
        let err = Cli::try_parse_from([
            "tenantry", "token", "--tenant", "a", "--sub", "b", "--ttl", "0s",
        ])
        .expect_err("zero ttl")
        .to_string();
        assert!(err.contains("is not a duration like 1h"), "{err}");
    }

    #[test]
    fn as_kubectl_tenantry_the_binary_parses_the_plugins_commands() {
        assert!(invoked_as_plugin(Some(
            "/usr/local/bin/kubectl-tenantry".as_ref()
        )));
        assert!(!invoked_as_plugin(Some("/usr/local/bin/tenantry".as_ref())));
        assert!(!invoked_as_plugin(None));
        let p = Plugin::try_parse_from(["kubectl-tenantry", "status", "-n", "x"]).expect("parses");
        assert_eq!(p.args.kube.namespace.as_deref(), Some("x"));
        assert!(matches!(
            p.args.command,
            KubectlCommand::Status { tenant: None }
        ));
        let err = Plugin::try_parse_from(["kubectl-tenantry", "usage"])
            .expect_err("usage without a tenant")
            .to_string();
        assert!(
            err.contains("--all") && err.contains("kubectl tenantry usage"),
            "{err}"
        );
        Plugin::command().debug_assert();
        // The same commands under `tenantry kubectl`.
        let cli = Cli::try_parse_from(["tenantry", "kubectl", "--context", "c", "rotate", "acme"])
            .expect("parses");
        let Command::Kubectl(args) = cli.command else {
            panic!("not kubectl");
        };
        assert_eq!(args.kube.context.as_deref(), Some("c"));
    }

    #[test]
    fn cli_is_consistent_and_every_flag_has_an_env_var() {
        Cli::command().debug_assert();
        for sub in Cli::command().get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_id() == "help" || arg.get_id() == "version" {
                    continue;
                }
                let env = arg.get_env().map(|e| e.to_string_lossy().to_string());
                assert!(
                    env.as_deref().is_some_and(|e| e.starts_with("TENANTRY_")),
                    "{} --{} has no TENANTRY_* env var",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }
}
