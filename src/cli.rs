//! Command-line interface. Every flag can also be set through the `TENANTRY_*` environment
//! variable shown in `--help`.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// tenantry: a Kubernetes operator and a tenant-aware RAG chat API.
#[derive(Debug, Parser)]
#[command(name = "tenantry", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the tenant-aware chat API.
    Serve(ServeArgs),
    /// Print a JWT for a user of a tenant, signed with the tenant's current key.
    Token(TokenArgs),
    /// Print the CustomResourceDefinitions (the YAML checked in under crds/).
    Crd,
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
    /// Folder with the local embedding model; overrides `embedding.modelDir` of the config.
    #[arg(long, env = "TENANTRY_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Development mode: enables GET /dev/token to mint tokens over HTTP. Never in production.
    #[arg(long, env = "TENANTRY_DEV", default_value_t = false)]
    pub dev: bool,
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
    #[arg(long, env = "TENANTRY_TTL", default_value = "1h")]
    pub ttl: String,
    /// Data folder holding the signing keys (the one `serve` uses).
    #[arg(long, env = "TENANTRY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Folder of Tenant manifests (to find the tenant and its key algorithm).
    #[arg(long, env = "TENANTRY_TENANTS", default_value = "config/tenants")]
    pub tenants: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

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
