//! HTTPS for `serve`: loads the certificate chain and private key (PEM), builds the rustls
//! server configuration (ring provider, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`), and reloads
//! it when the files change, so rotated certificates (cert-manager, mounted Secrets) take
//! effect without a restart and without dropping open connections.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::runtime::{FileStamp, watch_files};

/// Why a certificate/key pair could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only one of `--tls-cert` / `--tls-key` was given.
    #[error("--tls-cert and --tls-key must be given together (or neither, for plain HTTP)")]
    Incomplete,
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// `certificate` or `private key`.
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM object of the expected kind.
    #[error("{path}: {reason}")]
    Pem {
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not belong to the certificate).
    #[error("certificate {cert} and key {key} cannot be used together: {source}")]
    Pair {
        /// Certificate file.
        cert: String,
        /// Key file.
        key: String,
        #[source]
        source: rustls::Error,
    },
}

/// The certificate chain and key files of the API port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Both paths or neither: `Ok(None)` means plain HTTP.
    pub fn from_args(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Self>, TlsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })),
            (None, None) => Ok(None),
            _ => Err(TlsError::Incomplete),
        }
    }

    /// Reads both files and builds the server configuration; fails on unreadable files, a
    /// missing certificate or key, or a key that does not match the certificate.
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let cert_path = self.cert.display().to_string();
        let key_path = self.key.display().to_string();
        let cert_pem = std::fs::read(&self.cert).map_err(|source| TlsError::Read {
            what: "certificate",
            path: cert_path.clone(),
            source,
        })?;
        let key_pem = std::fs::read(&self.key).map_err(|source| TlsError::Read {
            what: "private key",
            path: key_path.clone(),
            source,
        })?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                path: cert_path.clone(),
                reason: format!("invalid PEM: {e}"),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                path: cert_path,
                reason: "no CERTIFICATE in the file".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            path: key_path.clone(),
            reason: format!("no usable private key: {e}"),
        })?;
        server_config(chain, key).map_err(|source| TlsError::Pair {
            cert: cert_path,
            key: key_path,
            source,
        })
    }

    /// The certificate and key files, as watched for changes.
    fn paths(&self) -> Vec<PathBuf> {
        vec![self.cert.clone(), self.key.clone()]
    }
}

/// The rustls server configuration: ring, TLS 1.2 and 1.3 only, ALPN h2 then http/1.1, no
/// client certificates. rustls checks that the key matches the certificate.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Loads the pair once (a start-up error when it is unusable) into a reloadable
/// configuration, with the files' state before reading them (a change while starting up is
/// picked up by [`watch`]).
pub fn initial(files: &TlsFiles) -> Result<(RustlsConfig, FileStamp), TlsError> {
    let seen = FileStamp::of(&files.paths());
    Ok((RustlsConfig::from_config(Arc::new(files.load()?)), seen))
}

/// Reloads the pair into `config` whenever either file changes, checking every `every`, until
/// the task is dropped. New connections get the new certificate; open ones keep theirs. A pair
/// that cannot be used is logged once and the previous certificate stays in service; the next
/// change of either file is tried again (rotations write cert and key in turn).
pub async fn watch(files: TlsFiles, config: RustlsConfig, seen: FileStamp, every: Duration) {
    let paths = files.paths();
    watch_files(paths, seen, every, move || match files.load() {
        Ok(new) => {
            config.reload_from_config(Arc::new(new));
            tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
        }
        Err(e) => tracing::error!(
            error = %e,
            "TLS certificate reload failed; still serving the previous certificate"
        ),
    })
    .await;
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_paths_or_neither() {
        let (c, k) = (Path::new("c.pem"), Path::new("k.pem"));
        assert_eq!(TlsFiles::from_args(None, None).expect("neither"), None);
        assert!(
            TlsFiles::from_args(Some(c), Some(k))
                .expect("both")
                .is_some()
        );
        assert!(matches!(
            TlsFiles::from_args(Some(c), None),
            Err(TlsError::Incomplete)
        ));
        assert!(matches!(
            TlsFiles::from_args(None, Some(k)),
            Err(TlsError::Incomplete)
        ));
    }

    #[test]
    fn unusable_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            key: empty.clone(),
        };
        let e = missing.load().expect_err("missing cert");
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let no_cert = TlsFiles {
            cert: empty.clone(),
            key: empty,
        };
        let e = no_cert.load().expect_err("empty cert");
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
    }
}
