//! Tokens of external OIDC issuers (a Tenant's `spec.auth.issuers`): keys from the issuer's
//! JWKS, fetched over HTTPS and cached.
//!
//! A token is routed here when its unverified `iss` is one of the issuers configured for the
//! tenant it names in `tenant_id` — or, when it names no tenant, for exactly one tenant. It is
//! then accepted only if all of these hold: an asymmetric algorithm (RS*, PS*, ES256/384,
//! EdDSA; never HMAC or `none`); a `kid` found in that issuer's JWKS whose key matches the
//! algorithm; a valid signature; `iss` equal to the issuer, `aud` containing the configured
//! audience (required in the configuration); `exp` present and not past, `nbf` not in the
//! future, `iat` present and not in the future (30 s leeway each), `exp - iat` within the
//! tenant's maximum token lifetime; `sub` present; every claim condition of the issuer holds.
//! The tenant scope then comes from the configuration that matched, never from the token alone.
//!
//! JWKS fetches are bounded: no redirects are followed, a document may be at most
//! [`JWKS_MAX_BYTES`] and a fetch (connect, headers and body) takes at most [`FETCH_TIMEOUT`].
//! Each JWKS URL has its own cache entry and at most one fetch in flight (callers that need the
//! same document wait for that fetch, callers of other issuers never do), and a URL is fetched
//! at most once per [`JWKS_MIN_REFETCH`] whether the last fetch worked or failed, so tokens with
//! made-up `kid`s cannot turn into a stream of fetches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::{AuthError, Principal};
use crate::domain::{Issuer, TenantId};

/// A JWKS is used for this long before it is fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(600);
/// A JWKS URL is fetched at most this often (an unknown `kid` refetches, as the issuer may have
/// rotated; a failed fetch is not retried sooner either).
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(5);
/// Bound on one JWKS fetch: connecting, the response headers and the whole body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted, in bytes.
pub const JWKS_MAX_BYTES: usize = 256 * 1024;

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

/// What is known of one JWKS URL.
#[derive(Default)]
struct Known {
    /// The keys of the last successful fetch.
    keys: Option<Arc<Vec<Jwk>>>,
    /// When the last successful fetch ended.
    fetched: Option<Instant>,
    /// When the last fetch, successful or not, ended.
    attempted: Option<Instant>,
}

impl Known {
    fn find(&self, kid: &str) -> Option<Jwk> {
        self.keys
            .as_deref()?
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid))
            .cloned()
    }

    /// The answer from what is known, or `None` when a fetch is due: a key of fresh keys; or,
    /// when the URL was fetched (or tried) too recently to fetch again, whatever the keys known
    /// say (stale keys are used while refreshes fail).
    fn answer(&self, kid: &str) -> Option<Result<Jwk, AuthError>> {
        let fresh = self.fetched.is_some_and(|t| t.elapsed() < JWKS_TTL);
        if fresh && let Some(k) = self.find(kid) {
            return Some(Ok(k));
        }
        if self
            .attempted
            .is_some_and(|t| t.elapsed() < JWKS_MIN_REFETCH)
        {
            return Some(self.settle(kid));
        }
        None
    }

    /// The answer after a fetch (or when none may be made).
    fn settle(&self, kid: &str) -> Result<Jwk, AuthError> {
        match (self.find(kid), &self.keys) {
            (Some(k), _) => Ok(k),
            (None, Some(_)) => Err(AuthError::UnknownKey),
            (None, None) => Err(AuthError::KeysUnavailable),
        }
    }
}

/// One JWKS URL: what is known, and the lock that makes its fetches single-flight.
#[derive(Default)]
struct Entry {
    known: parking_lot::Mutex<Known>,
    fetching: tokio::sync::Mutex<()>,
}

/// JWKS documents by URL, fetched on first use, refreshed after [`JWKS_TTL`] or when a token
/// names a key they lack (at most once per [`JWKS_MIN_REFETCH`]). A refresh that fails keeps
/// the keys already known.
pub struct JwksCache {
    http: reqwest::Client,
    /// Keyed by the configured JWKS URLs (never by anything a token says).
    entries: parking_lot::Mutex<HashMap<String, Arc<Entry>>>,
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
            // A redirect could lead to plain HTTP or an internal address: never followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            http,
            entries: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    async fn fetch(&self, uri: &str) -> Result<Vec<Jwk>, String> {
        let mut resp = self
            .http
            .get(uri)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            // Redirects included: the configured URL must serve the JWKS itself.
            return Err(format!("answered {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > JWKS_MAX_BYTES as u64)
        {
            return Err(format!(
                "the document is larger than {JWKS_MAX_BYTES} bytes"
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            if body.len() + chunk.len() > JWKS_MAX_BYTES {
                return Err(format!(
                    "the document is larger than {JWKS_MAX_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
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

    fn entry(&self, uri: &str) -> Arc<Entry> {
        self.entries
            .lock()
            .entry(uri.to_string())
            .or_default()
            .clone()
    }

    /// The key `kid` of the JWKS at `uri`.
    pub async fn key(&self, uri: &str, kid: &str) -> Result<Jwk, AuthError> {
        let entry = self.entry(uri);
        if let Some(answer) = entry.known.lock().answer(kid) {
            return answer;
        }
        // Single flight: whoever waited here while another caller fetched finds the fresh
        // result (or a recent attempt) below and does not fetch again.
        let _fetching = entry.fetching.lock().await;
        if let Some(answer) = entry.known.lock().answer(kid) {
            return answer;
        }
        let fetched = self.fetch(uri).await;
        let mut known = entry.known.lock();
        let now = Instant::now();
        known.attempted = Some(now);
        match fetched {
            Ok(keys) => {
                known.keys = Some(Arc::new(keys));
                known.fetched = Some(now);
            }
            Err(e) => {
                tracing::warn!(jwks_uri = %uri, error = %e, "cannot fetch the issuer's JWKS");
            }
        }
        known.settle(kid)
    }
}

/// Verifies a token of `issuer`, configured for `tenant`, whose tokens may live at most
/// `max_lifetime`.
pub async fn verify(
    token: &str,
    tenant: TenantId,
    issuer: &Issuer,
    max_lifetime: Duration,
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
    // Without `aud` among the required claims a token with no `aud` at all would pass.
    let mut validation = super::validation(header.alg, &["exp", "sub", "iss", "aud"]);
    validation.set_issuer(&[issuer.issuer.as_str()]);
    validation.set_audience(&[issuer.audience.as_str()]);
    let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
        .map_err(super::decode_error)?
        .claims;
    // Some issuers write times as floats; the signature already verified, so a value that is
    // not a number is a malformed token.
    let time = |name: &str| claims.get(name).and_then(Value::as_f64).map(|t| t as u64);
    let exp = time("exp").ok_or_else(|| AuthError::Claims("exp is malformed".to_string()))?;
    super::check_lifetime(time("iat"), exp, max_lifetime, super::keys::unix_now())?;
    if let Some(failed) = issuer
        .claims
        .iter()
        .find(|c| !c.holds(claims.get(&c.claim)))
    {
        return Err(AuthError::Condition(failed.claim.clone()));
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| AuthError::Claims("sub must be a string".to_string()))?;
    let claimed = match claims.get("tenant_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err(AuthError::Claims("tenant_id is malformed".to_string())),
    };
    super::principal(tenant, claimed, sub.to_string())
}
