//! `tenantry healthcheck`: asks a running `serve` for `/healthz` and reports whether it answered
//! 200 in time. For the container image's HEALTHCHECK (the runtime image has no curl).
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::HealthcheckArgs;

/// Bound on the whole check (connect, TLS handshake, request, response).
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Why the server is not healthy (one line each, printed by the binary).
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    /// The URL is not an http(s) URL.
    #[error("--url {0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    /// The CA file could not be read or parsed.
    #[error("cannot use CA file {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// No answer in time.
    #[error("{url}: no answer within {}s", TIMEOUT.as_secs())]
    Timeout { url: String },
    /// Connection, TLS or protocol failure.
    #[error("{url}: {reason}")]
    Request {
        url: String,
        /// Cause, with its sources.
        reason: String,
    },
    /// The server answered, but not 200.
    #[error("{url}: answered {status}")]
    Status {
        url: String,
        /// The status it answered.
        status: u16,
    },
}

/// Checks that `GET <url>` answers 200 within [`TIMEOUT`].
pub async fn check(args: &HealthcheckArgs) -> Result<(), HealthcheckError> {
    let url = args.url.clone();
    let parsed = reqwest::Url::parse(&url).map_err(|_| HealthcheckError::BadUrl(url.clone()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(HealthcheckError::BadUrl(url));
    }
    let mut builder = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        // Local probe: never through a proxy from the environment.
        .no_proxy()
        .danger_accept_invalid_certs(args.insecure);
    if let Some(path) = &args.cacert {
        let ca_err = |reason: String| HealthcheckError::Ca {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no CERTIFICATE in the file".into()));
        }
        builder = builder.tls_certs_only(certs);
    }
    let client = builder
        .build()
        .map_err(|e| HealthcheckError::Client(e.to_string()))?;
    let resp = client.get(parsed).send().await.map_err(|e| {
        if e.is_timeout() {
            HealthcheckError::Timeout { url: url.clone() }
        } else {
            HealthcheckError::Request {
                url: url.clone(),
                reason: chain(&e),
            }
        }
    })?;
    let status = resp.status().as_u16();
    if status == 200 {
        Ok(())
    } else {
        Err(HealthcheckError::Status { url, status })
    }
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}
