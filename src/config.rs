//! The `serve` configuration file (`config/local.yaml` by default) and its defaults.
//!
//! Command-line flags and `TENANTRY_*` variables choose addresses and folders; this file holds
//! the settings a deployment tunes: the chat model endpoint, embeddings, chunking and limits.
//! Unknown keys are refused so a typo is an error, not a silently ignored setting.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid config {path}: {reason}")]
    Invalid {
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServeConfig {
    /// Chat model endpoint.
    #[serde(default)]
    pub llm: LlmConfig,
    /// Embedding model.
    #[serde(default)]
    pub embedding: EmbeddingConfig,
    /// How documents are split.
    #[serde(default)]
    pub chunking: ChunkingConfig,
    /// Request limits.
    #[serde(default)]
    pub limits: Limits,
    /// Where quotas are enforced.
    #[serde(default)]
    pub quota: QuotaConfig,
    /// Where vectors are stored.
    #[serde(default)]
    pub vector: VectorConfig,
    /// Connection limits of the API and metrics listeners.
    #[serde(default)]
    pub listener: ListenerConfig,
}

/// Connection limits of each listener of `serve` (the API port, plain or TLS, and the metrics
/// port), against clients that open connections and keep them busy without finishing requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerConfig {
    /// A connection must deliver a complete request head (after the TLS handshake, on the TLS
    /// port) within this many seconds of its first byte — of the connection's opening for the
    /// first request — or it is closed.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_seconds: u64,
    /// A connection with no request in flight and no byte received for this many seconds is
    /// closed (HTTP/1.1 keep-alive and HTTP/2 alike).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// Open connections per listener; a connection beyond it is closed at once (the listener
    /// keeps accepting, so the cap frees up as soon as a connection ends).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_seconds: default_header_read_timeout(),
            idle_timeout_seconds: default_idle_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_header_read_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_max_connections() -> usize {
    1024
}

/// Vector store: a Qdrant server (gRPC) when a URL is given here, in `TENANTRY_QDRANT_URL` or
/// `--qdrant-url`; the embedded store under `--data-dir` otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VectorConfig {
    /// `http://host:6334`, or `https://...` for TLS (the gRPC port).
    #[serde(default)]
    pub qdrant_url: Option<String>,
    /// Name of the environment variable holding the Qdrant API key (unset or empty: none).
    #[serde(default = "default_qdrant_api_key_env")]
    pub api_key_env: String,
    /// Bound on one Qdrant request, in milliseconds.
    #[serde(default = "default_qdrant_timeout")]
    pub timeout_ms: u64,
    /// Bound on connecting to Qdrant, in milliseconds.
    #[serde(default = "default_qdrant_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Collections this process creates keep vectors and payloads on disk (memory-mapped).
    #[serde(default)]
    pub on_disk: bool,
    /// Quantization of collections this process creates: `none` or `scalar` (int8).
    #[serde(default)]
    pub quantization: crate::vector::qdrant::Quantization,
    /// Copies of each shard of collections this process creates (Qdrant distributed mode);
    /// unset: the server's default (1).
    #[serde(default)]
    pub replication_factor: Option<u32>,
    /// Replicas that must apply a write before Qdrant acknowledges it (at most
    /// `replicationFactor`); unset: the server's default (1).
    #[serde(default)]
    pub write_consistency_factor: Option<u32>,
    /// How often semantic-cache entries older than their tenant's TTL are deleted, in seconds.
    #[serde(default = "default_cache_sweep")]
    pub cache_sweep_seconds: u64,
}

impl Default for VectorConfig {
    fn default() -> Self {
        Self {
            qdrant_url: None,
            api_key_env: default_qdrant_api_key_env(),
            timeout_ms: default_qdrant_timeout(),
            connect_timeout_ms: default_qdrant_connect_timeout(),
            on_disk: false,
            quantization: crate::vector::qdrant::Quantization::None,
            replication_factor: None,
            write_consistency_factor: None,
            cache_sweep_seconds: default_cache_sweep(),
        }
    }
}

fn default_cache_sweep() -> u64 {
    600
}

fn default_qdrant_api_key_env() -> String {
    "TENANTRY_QDRANT_API_KEY".to_string()
}
fn default_qdrant_timeout() -> u64 {
    10_000
}
fn default_qdrant_connect_timeout() -> u64 {
    2_000
}

/// Quota backend: Redis (shared by every replica) when a URL is given here, in
/// `TENANTRY_REDIS_URL` or `--redis-url`; in-process counters otherwise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuotaConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` for TLS; with `redisCluster`,
    /// one or more seed nodes: `redis://[user:password@]host:port[,host:port...]`.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// The Redis URL names nodes of a Redis Cluster (the others are discovered from them).
    #[serde(default)]
    pub redis_cluster: bool,
    /// What to do when Redis is unreachable: `failClosed` (503) or `failOpen` (serve unmetered).
    #[serde(default)]
    pub fail_mode: crate::quota::FailMode,
    /// Bound on one Redis command, in milliseconds.
    #[serde(default = "default_command_timeout")]
    pub command_timeout_ms: u64,
    /// Bound on connecting to Redis, in milliseconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_cluster: false,
            fail_mode: crate::quota::FailMode::default(),
            command_timeout_ms: default_command_timeout(),
            connect_timeout_ms: default_connect_timeout(),
        }
    }
}

fn default_command_timeout() -> u64 {
    500
}
fn default_connect_timeout() -> u64 {
    1_000
}

/// An OpenAI-compatible chat endpoint. Without a base URL (here or in `OPENAI_BASE_URL`),
/// answers come from the offline extractive responder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LlmConfig {
    /// Base URL, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the environment variable holding the API key.
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// Chat model used when neither the request nor the tenant names one.
    #[serde(default = "default_chat_model")]
    pub model: String,
    /// Completion tokens requested per answer.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Timeout of one upstream call, in seconds.
    #[serde(default = "default_llm_timeout")]
    pub timeout_seconds: u64,
    /// Bound on connecting to an upstream, in seconds.
    #[serde(default = "default_llm_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Retries per upstream on 429, 5xx and connection failures (jittered exponential backoff).
    #[serde(default = "default_llm_retries")]
    pub retries: u32,
    /// First backoff delay, in milliseconds (doubled per retry).
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Largest backoff delay, in milliseconds; a longer `Retry-After` is not waited for.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Endpoints tried in order when the primary fails after its retries.
    #[serde(default)]
    pub fallbacks: Vec<LlmFallback>,
    /// Circuit breaker of each upstream.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Seconds between SSE keep-alive comments (`: keep-alive`) while a stream waits for the
    /// upstream's next chunk, so that proxies do not cut an idle stream; 0: none.
    #[serde(default = "default_stream_keep_alive")]
    pub stream_keep_alive_seconds: u64,
}

/// A fallback OpenAI-compatible endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LlmFallback {
    /// Base URL, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// Name of the environment variable holding its API key (none: no key is sent, so the
    /// primary's key never reaches another host unless asked to).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Model to call there instead of the requested one.
    #[serde(default)]
    pub model: Option<String>,
}

/// Circuit breaker settings (per upstream).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed calls that open the circuit.
    #[serde(default = "default_breaker_failures")]
    pub failure_threshold: u32,
    /// Seconds an open circuit fails fast before one trial call is let through.
    #[serde(default = "default_breaker_cooldown")]
    pub cooldown_seconds: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: default_breaker_failures(),
            cooldown_seconds: default_breaker_cooldown(),
        }
    }
}

fn default_llm_connect_timeout() -> u64 {
    10
}
fn default_llm_retries() -> u32 {
    2
}
fn default_retry_base_ms() -> u64 {
    200
}
fn default_retry_max_ms() -> u64 {
    2_000
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> u64 {
    30
}

impl LlmConfig {
    /// The retry and breaker policy.
    pub fn policy(&self) -> crate::llm::resilient::Policy {
        crate::llm::resilient::Policy {
            retries: self.retries,
            base_delay: std::time::Duration::from_millis(self.retry_base_ms),
            max_delay: std::time::Duration::from_millis(self.retry_max_ms),
            failure_threshold: self.breaker.failure_threshold,
            cooldown: std::time::Duration::from_secs(self.breaker.cooldown_seconds),
        }
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            api_key_env: default_api_key_env(),
            model: default_chat_model(),
            max_tokens: default_max_tokens(),
            timeout_seconds: default_llm_timeout(),
            connect_timeout_seconds: default_llm_connect_timeout(),
            retries: default_llm_retries(),
            retry_base_ms: default_retry_base_ms(),
            retry_max_ms: default_retry_max_ms(),
            fallbacks: Vec::new(),
            breaker: BreakerConfig::default(),
            stream_keep_alive_seconds: default_stream_keep_alive(),
        }
    }
}

fn default_api_key_env() -> String {
    "OPENAI_API_KEY".to_string()
}
fn default_chat_model() -> String {
    "gpt-4o-mini".to_string()
}
fn default_stream_keep_alive() -> u64 {
    15
}
fn default_max_tokens() -> u32 {
    512
}
fn default_llm_timeout() -> u64 {
    60
}

/// Where embeddings come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", tag = "provider", deny_unknown_fields)]
pub enum EmbeddingConfig {
    /// all-MiniLM-L6-v2 in-process (384 dimensions).
    #[serde(rename = "local", rename_all = "camelCase")]
    Local {
        /// Folder with `model.safetensors`, `tokenizer.json`, `config.json`
        /// (installed by `scripts/install-model.sh`).
        #[serde(default = "default_model_dir")]
        model_dir: PathBuf,
    },
    /// An OpenAI-compatible `/v1/embeddings` endpoint.
    #[serde(rename = "openai", rename_all = "camelCase")]
    OpenAi {
        /// Base URL, e.g. `https://api.openai.com/v1`.
        base_url: String,
        /// Environment variable holding the API key.
        #[serde(default = "default_api_key_env")]
        api_key_env: String,
        /// Model name, e.g. `text-embedding-3-small`.
        model: String,
        /// Vector dimension the model returns.
        dimension: usize,
    },
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self::Local {
            model_dir: default_model_dir(),
        }
    }
}

fn default_model_dir() -> PathBuf {
    PathBuf::from("models/all-MiniLM-L6-v2")
}

/// Chunking of ingested documents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChunkingConfig {
    /// Target chunk length in characters.
    #[serde(default = "default_chunk_size")]
    pub size: usize,
    /// Characters shared by consecutive chunks.
    #[serde(default = "default_overlap")]
    pub overlap: usize,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        Self {
            size: default_chunk_size(),
            overlap: default_overlap(),
        }
    }
}

fn default_chunk_size() -> usize {
    800
}
fn default_overlap() -> usize {
    160
}

/// Request limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Largest request body, in bytes (larger: 413).
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Longest question, in characters.
    #[serde(default = "default_question")]
    pub max_question_chars: usize,
    /// Whole-request timeout, in seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: default_body(),
            max_question_chars: default_question(),
            request_timeout_seconds: default_request_timeout(),
        }
    }
}

fn default_body() -> usize {
    2 * 1024 * 1024
}
fn default_question() -> usize {
    4_000
}
fn default_request_timeout() -> u64 {
    120
}

impl ServeConfig {
    /// Reads `path`; a missing file at the default location means all defaults.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let config: Self = serde_saphyr::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        config.check().map_err(|reason| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(config)
    }

    /// Cross-field checks.
    pub fn check(&self) -> Result<(), String> {
        let c = &self.chunking;
        if c.size < 50 {
            return Err("chunking.size must be at least 50".to_string());
        }
        if c.overlap >= c.size / 2 {
            return Err("chunking.overlap must be less than half of chunking.size".to_string());
        }
        if self.limits.max_body_bytes < 1024 {
            return Err("limits.maxBodyBytes must be at least 1024".to_string());
        }
        if self.quota.command_timeout_ms == 0 || self.quota.connect_timeout_ms == 0 {
            return Err(
                "quota.commandTimeoutMs and quota.connectTimeoutMs must be positive".to_string(),
            );
        }
        if self.llm.breaker.failure_threshold == 0 {
            return Err("llm.breaker.failureThreshold must be positive".to_string());
        }
        if self.llm.timeout_seconds == 0 || self.llm.connect_timeout_seconds == 0 {
            return Err(
                "llm.timeoutSeconds and llm.connectTimeoutSeconds must be positive".to_string(),
            );
        }
        if self.vector.timeout_ms == 0 || self.vector.connect_timeout_ms == 0 {
            return Err(
                "vector.timeoutMs and vector.connectTimeoutMs must be positive".to_string(),
            );
        }
        let l = &self.listener;
        if l.header_read_timeout_seconds == 0
            || l.idle_timeout_seconds == 0
            || l.max_connections == 0
        {
            return Err("listener.headerReadTimeoutSeconds, listener.idleTimeoutSeconds and listener.maxConnections must be positive".to_string());
        }
        if self.vector.cache_sweep_seconds == 0 {
            return Err("vector.cacheSweepSeconds must be positive".to_string());
        }
        crate::vector::qdrant::check_replication(
            self.vector.replication_factor,
            self.vector.write_consistency_factor,
        )
        .map_err(|e| format!("vector: {e}"))?;
        Ok(())
    }

    /// Refuses secret values: a URL with credentials (`user:password@`, or a query parameter
    /// such as `api_key=`). The operator renders this file into ConfigMaps, where anyone who
    /// may read the tenant namespace sees it; secrets reach the pods as environment variables
    /// from Secrets, named here by `apiKeyEnv`.
    pub fn check_no_secrets(&self) -> Result<(), String> {
        let mut urls = vec![
            ("llm.baseUrl", self.llm.base_url.as_deref(), "llm.apiKeyEnv"),
            (
                "quota.redisUrl",
                self.quota.redis_url.as_deref(),
                "TENANTRY_REDIS_URL from a Secret (--api-env-from-secret; in the chart, redis.urlSecret)",
            ),
            (
                "vector.qdrantUrl",
                self.vector.qdrant_url.as_deref(),
                "vector.apiKeyEnv",
            ),
        ];
        for f in &self.llm.fallbacks {
            urls.push(("llm.fallbacks[].baseUrl", Some(&f.base_url), "apiKeyEnv"));
        }
        if let EmbeddingConfig::OpenAi { base_url, .. } = &self.embedding {
            urls.push(("embedding.baseUrl", Some(base_url), "embedding.apiKeyEnv"));
        }
        match urls
            .into_iter()
            .find(|(_, url, _)| url.is_some_and(url_has_credentials))
        {
            Some((field, _, instead)) => Err(format!(
                "{field} carries credentials; this file is rendered into ConfigMaps, so keep them in a Secret and use {instead}"
            )),
            None => Ok(()),
        }
    }

    /// The chat endpoint's base URL: `OPENAI_BASE_URL` wins over the file.
    pub fn llm_base_url(&self) -> Option<String> {
        std::env::var("OPENAI_BASE_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| self.llm.base_url.clone())
    }
}

/// Whether `url` holds credentials: user info before the host, or a query parameter whose
/// name says key, token, secret or password.
fn url_has_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    let secret_param = query.split('&').any(|pair| {
        let name = pair
            .split('=')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        ["key", "token", "secret", "password"]
            .iter()
            .any(|w| name.contains(w))
    });
    authority.contains('@') || secret_param
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_refused_by_field() {
        let mut c = ServeConfig::default();
        c.quota.redis_url = Some("redis://redis:6379/0".into());
        c.llm.base_url = Some("https://llm.example/v1?api-version=2024".into());
        assert_eq!(c.check_no_secrets(), Ok(()));
        c.quota.redis_url = Some("rediss://:hunter2@redis:6380".into());
        let err = c.check_no_secrets().expect_err("password in the Redis URL");
        assert!(
            err.starts_with("quota.redisUrl carries credentials")
                && err.contains("redis.urlSecret"),
            "{err}"
        );
        assert!(
            !err.contains("hunter2"),
            "the secret is never repeated: {err}"
        );
        c.quota.redis_url = None;
        c.llm.base_url = Some("https://llm.example/v1?api_key=sk-1".into());
        let err = c.check_no_secrets().expect_err("key in the query");
        assert!(
            err.starts_with("llm.baseUrl") && err.contains("llm.apiKeyEnv"),
            "{err}"
        );
        c.llm.base_url = None;
        c.vector.qdrant_url = Some("https://user:pw@qdrant:6334".into());
        assert!(c.check_no_secrets().is_err());
    }

    #[test]
    fn checked_in_local_config_parses() {
        let path = crate::manifest_dir().join("config/local.yaml");
        let c = ServeConfig::load(&path, true).expect("config/local.yaml is valid");
        assert!(matches!(c.embedding, EmbeddingConfig::Local { .. }));
    }

    #[test]
    fn quota_section_parses() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            "quota:\n  redisUrl: redis://127.0.0.1:6379\n  failMode: failOpen\n  commandTimeoutMs: 50\n",
        )
        .expect("write");
        let c = ServeConfig::load(&p, true).expect("valid");
        assert_eq!(c.quota.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(c.quota.fail_mode, crate::quota::FailMode::FailOpen);
        assert_eq!(c.quota.command_timeout_ms, 50);
        assert!(!c.quota.redis_cluster);
        std::fs::write(
            &p,
            "quota:\n  redisUrl: redis://a:7000,b:7001\n  redisCluster: true\n",
        )
        .expect("write");
        assert!(
            ServeConfig::load(&p, true)
                .expect("valid")
                .quota
                .redis_cluster
        );
        assert_eq!(
            ServeConfig::default().quota.fail_mode,
            crate::quota::FailMode::FailClosed
        );
        std::fs::write(&p, "quota:\n  failMode: sometimes\n").expect("write");
        assert!(ServeConfig::load(&p, true).is_err());
    }

    #[test]
    fn vector_section_parses() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            "vector:\n  qdrantUrl: https://qdrant:6334\n  apiKeyEnv: QKEY\n  timeoutMs: 700\n  onDisk: true\n  quantization: scalar\n",
        )
        .expect("write");
        let c = ServeConfig::load(&p, true).expect("valid");
        assert_eq!(c.vector.qdrant_url.as_deref(), Some("https://qdrant:6334"));
        assert_eq!(c.vector.api_key_env, "QKEY");
        assert_eq!(c.vector.timeout_ms, 700);
        assert_eq!(c.vector.connect_timeout_ms, 2_000);
        assert!(c.vector.on_disk);
        assert_eq!(
            c.vector.quantization,
            crate::vector::qdrant::Quantization::Scalar
        );
        assert_eq!(ServeConfig::default().vector.qdrant_url, None);
        std::fs::write(&p, "vector:\n  timeoutMs: 0\n").expect("write");
        assert!(ServeConfig::load(&p, true).is_err());
        std::fs::write(&p, "vector:\n  quantization: pq\n").expect("write");
        assert!(ServeConfig::load(&p, true).is_err());
        assert_eq!(c.vector.replication_factor, None);
        std::fs::write(
            &p,
            "vector:\n  replicationFactor: 2\n  writeConsistencyFactor: 2\n",
        )
        .expect("write");
        let c = ServeConfig::load(&p, true).expect("valid");
        assert_eq!(c.vector.replication_factor, Some(2));
        assert_eq!(c.vector.write_consistency_factor, Some(2));
        for bad in ["replicationFactor: 0", "writeConsistencyFactor: 2"] {
            std::fs::write(&p, format!("vector:\n  {bad}\n")).expect("write");
            let err = ServeConfig::load(&p, true)
                .expect_err("refused")
                .to_string();
            assert!(err.contains("writeConsistencyFactor"), "{bad}: {err}");
        }
    }

    #[test]
    fn llm_resilience_section_parses() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c.yaml");
        std::fs::write(
            &p,
            "llm:\n  baseUrl: http://a/v1\n  retries: 1\n  fallbacks:\n    - {baseUrl: http://b/v1, model: small}\n    - {baseUrl: http://c/v1, apiKeyEnv: CKEY}\n  breaker: {failureThreshold: 2}\n",
        )
        .expect("write");
        let c = ServeConfig::load(&p, true).expect("valid");
        assert_eq!(c.llm.retries, 1);
        assert_eq!(c.llm.fallbacks.len(), 2);
        assert_eq!(c.llm.fallbacks[0].model.as_deref(), Some("small"));
        assert_eq!(c.llm.fallbacks[0].api_key_env, None);
        assert_eq!(c.llm.fallbacks[1].api_key_env.as_deref(), Some("CKEY"));
        assert_eq!(c.llm.breaker.failure_threshold, 2);
        assert_eq!(c.llm.breaker.cooldown_seconds, 30);
        let d = ServeConfig::default().llm.policy();
        assert_eq!((d.retries, d.failure_threshold), (2, 5));
        std::fs::write(&p, "llm:\n  breaker: {failureThreshold: 0}\n").expect("write");
        assert!(ServeConfig::load(&p, true).is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "llm:\n  baseUrl: http://x\n  modle: typo\n").expect("write");
        let err = ServeConfig::load(&p, true).expect_err("typo refused");
        assert!(err.to_string().contains("modle"), "{err}");
    }

    #[test]
    fn missing_default_file_is_defaults_but_missing_explicit_file_is_an_error() {
        let p = Path::new("/nonexistent/tenantry.yaml");
        assert_eq!(
            ServeConfig::load(p, false).ok(),
            Some(ServeConfig::default())
        );
        assert!(ServeConfig::load(p, true).is_err());
    }
}
