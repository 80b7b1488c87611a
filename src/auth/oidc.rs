//! Tokens of external OIDC issuers (a Tenant's `spec.auth.issuers`): keys from the issuer's
//! JWKS, fetched over HTTPS and cached.
//!
//! A token is routed here when its unverified `iss` is one of the issuers configured for the
//! tenant it names in `tenant_id` — or, when it names no tenant, for exactly one tenant. It is
//! then accepted only if all of these hold: an asymmetric algorithm (RS*, PS*, ES256/384,
//! EdDSA; never HMAC or `none`); a `kid` found in that issuer's JWKS whose key matches the
//! algorithm; a valid signature; `iss` equal to the issuer, `aud` containing the configured
//! audience (when one is configured); `exp` present and not past (30 s leeway); `sub` present.
//! The tenant scope then comes from the configuration that matched, never from the token alone.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::{AuthError, Principal};
use crate::domain::{Issuer, TenantId};

/// A JWKS is used for this long before it is fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(600);
/// An unknown `kid` refetches the JWKS (the issuer may have rotated), at most this often.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(5);
/// Timeout of one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Algorithms accepted from external issuers (asymmetric only).
const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

struct Cached {
    keys: Arc<Vec<Jwk>>,
    fetched: Instant,
}

/// JWKS documents by URL, fetched on first use, refreshed after [`JWKS_TTL`] or when a token
/// names a key they lack. A refresh that fails keeps the keys already known.
pub struct JwksCache {
    http: reqwest::Client,
    sets: tokio::sync::Mutex<HashMap<String, Cached>>,
}

impl Default for JwksCache {
    fn default() -> Self {
        Self::new()
    }
}

impl JwksCache {
    /// An empty cache.
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            http,
            sets: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn fetch(&self, uri: &str) -> Result<Vec<Jwk>, String> {
        let resp = self
            .http
            .get(uri)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        let doc: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        let keys = doc["keys"]
            .as_array()
            .ok_or_else(|| "not a JWKS (no `keys` array)".to_string())?;
        // Keys this crate cannot read (other types, encryption keys) are skipped, not fatal.
        Ok(keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|k| !matches!(k.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .collect())
    }

    /// The key `kid` of the JWKS at `uri`.
    pub async fn key(&self, uri: &str, kid: &str) -> Result<Jwk, AuthError> {
        let mut sets = self.sets.lock().await;
        let find = |keys: &[Jwk]| {
            keys.iter()
                .find(|k| k.common.key_id.as_deref() == Some(kid))
                .cloned()
        };
        let (known, age) = match sets.get(uri) {
            Some(c) => (Some(c.keys.clone()), c.fetched.elapsed()),
            None => (None, Duration::MAX),
        };
        if let Some(keys) = &known
            && age < JWKS_TTL
            && let Some(k) = find(keys)
        {
            return Ok(k);
        }
        if known.is_some() && age < JWKS_MIN_REFETCH {
            return Err(AuthError::UnknownKey);
        }
        match self.fetch(uri).await {
            Ok(keys) => {
                let found = find(&keys);
                sets.insert(
                    uri.to_string(),
                    Cached {
                        keys: Arc::new(keys),
                        fetched: Instant::now(),
                    },
                );
                found.ok_or(AuthError::UnknownKey)
            }
            Err(e) => {
                tracing::warn!(jwks_uri = %uri, error = %e, "cannot fetch the issuer's JWKS");
                match known.as_deref().and_then(|keys| find(keys)) {
                    Some(k) => Ok(k),
                    None if known.is_some() => Err(AuthError::UnknownKey),
                    None => Err(AuthError::KeysUnavailable),
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct ExternalClaims {
    sub: String,
    #[serde(default)]
    tenant_id: Option<String>,
}

/// Verifies a token of `issuer`, configured for `tenant`.
pub async fn verify(
    token: &str,
    tenant: TenantId,
    issuer: &Issuer,
    jwks: &JwksCache,
) -> Result<Principal, AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
    if !ALLOWED.contains(&header.alg) {
        return Err(AuthError::Algorithm);
    }
    let kid = header.kid.ok_or(AuthError::UnknownKey)?;
    let jwk = jwks.key(&issuer.jwks_uri, &kid).await?;
    if let Some(alg) = jwk.common.key_algorithm
        && alg.to_string() != format!("{:?}", header.alg)
    {
        return Err(AuthError::Algorithm);
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| AuthError::UnknownKey)?;
    let required: &[&str] = if issuer.audience.is_some() {
        // Without `aud` among the required claims a token with no `aud` at all would pass.
        &["exp", "sub", "iss", "aud"]
    } else {
        &["exp", "sub", "iss"]
    };
    let mut validation = super::validation(header.alg, required);
    validation.set_issuer(&[issuer.issuer.as_str()]);
    match &issuer.audience {
        Some(aud) => validation.set_audience(&[aud.as_str()]),
        None => validation.validate_aud = false,
    }
    let claims = jsonwebtoken::decode::<ExternalClaims>(token, &key, &validation)
        .map_err(super::decode_error)?
        .claims;
    super::principal(tenant, claims.tenant_id.as_deref(), claims.sub)
}
