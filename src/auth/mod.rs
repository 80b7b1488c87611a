//! Authentication: a bearer JWT in, a verified [`Principal`] (tenant + user) out.
//!
//! A token is accepted only if all of these hold:
//! - its header names an allowed algorithm (`EdDSA` or `HS256`; never `none`, no RSA/ECDSA)
//!   and that algorithm is the one the tenant it claims is configured for;
//! - its `kid` names a key in *that tenant's* keyring (so a token signed with tenant A's key
//!   that claims tenant B finds no key), and the key has not expired after a rotation;
//! - the signature verifies with that key, `exp` is present and not past (30 s leeway), `sub`
//!   is present;
//! - `iat` is present and not in the future (30 s leeway), `exp - iat` is at most the tenant's
//!   `spec.auth.maxTokenLifetime` (24 h when unset), and `nbf`, when present, is not in the
//!   future (30 s leeway).
//!
//! Every refusal answers the caller with one and the same 401 message (see
//! [`crate::api::ApiError`]); the [`AuthError`] that says why goes to the log only, so an
//! unauthenticated caller learns nothing about which tenants, keys or algorithms exist.
//!
//! Tokens of a tenant's external OIDC issuers (`spec.auth.issuers`) are verified by [`oidc`]
//! with the issuer's published keys; see [`verify_any`].
//!
//! The tenant scope of every request comes only from here.
//!
//! A token of a tenant's own keys that verified is remembered by its SHA-256 digest (never the
//! token itself) in that tenant's [`TenantKeys`] until it expires, so a client presenting the
//! same token again skips the signature check. The memory is bounded per tenant and belongs to
//! the keys: a reload of the tenant (key rotation, revocation, a changed lifetime limit) builds
//! new keys with an empty memory, and an entry never outlives its token's `exp` or its key's
//! retirement.
pub mod keys;
pub mod oidc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::domain::{Algorithm, TenantId};
use keys::{Claims, Keyring, unix_now};

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant every operation of this request is scoped to.
    pub tenant: TenantId,
    /// The user (`sub` claim).
    pub sub: String,
}

/// Why a token was refused. Every variant but [`AuthError::KeysUnavailable`] maps to HTTP 401
/// with one message for all (the variant is logged); messages never include the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// Not a well-formed JWT.
    #[error("malformed token")]
    Malformed,
    /// The header's algorithm is not accepted for the tenant.
    #[error("token algorithm not allowed")]
    Algorithm,
    /// The token names no tenant or one that does not exist, or its key is unknown or retired.
    #[error("unknown tenant or signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("invalid token signature")]
    Signature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    /// `iat` is missing or in the future, or `exp - iat` exceeds the tenant's maximum.
    #[error("token lifetime refused: {0}")]
    Lifetime(String),
    /// An external issuer's token fails one of the issuer's claim conditions.
    #[error("claim {0:?} does not satisfy the issuer's conditions")]
    Condition(String),
    /// The token's id is on the tenant's revocation list.
    #[error("token revoked")]
    Revoked,
    /// A required claim is missing or malformed.
    #[error("invalid token claims: {0}")]
    Claims(String),
    /// The token's issuer publishes its keys at a JWKS that cannot be fetched (HTTP 503).
    #[error("the token issuer's keys are unavailable; try again later")]
    KeysUnavailable,
}

/// The keys that verify one tenant's tokens.
#[derive(Clone)]
pub struct TenantKeys {
    /// The tenant's only accepted algorithm.
    pub algorithm: Algorithm,
    /// `(kid, expires_at, key)` of every key of that algorithm.
    pub keys: Vec<(String, Option<i64>, DecodingKey)>,
    /// Tokens these keys verified (a clone starts empty).
    verified: VerifiedTokens,
    /// Token ids refused although their signature verifies.
    pub revoked: keys::Revocations,
}

/// Most tokens remembered per tenant; when full, expired ones are dropped, then the whole
/// memory (a tenant minting a fresh token per request only loses its own shortcut).
pub const VERIFIED_TOKENS_PER_TENANT: usize = 4096;

/// The tokens one tenant's keys verified: SHA-256 of the token → its subject and until when
/// it may be accepted without verifying it again.
#[derive(Default)]
struct VerifiedTokens(parking_lot::Mutex<HashMap<[u8; 32], Verified>>);

struct Verified {
    sub: String,
    /// Unix seconds: the earlier of the token's `exp` and its key's retirement.
    until: i64,
}

impl Clone for VerifiedTokens {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl VerifiedTokens {
    /// The subject of a token remembered and still valid at `now`.
    fn get(&self, digest: &[u8; 32], now: i64) -> Option<String> {
        let map = self.0.lock();
        map.get(digest)
            .filter(|v| now < v.until)
            .map(|v| v.sub.clone())
    }

    fn insert(&self, digest: [u8; 32], sub: &str, until: i64, now: i64) {
        let mut map = self.0.lock();
        if map.len() >= VERIFIED_TOKENS_PER_TENANT {
            map.retain(|_, v| now < v.until);
            if map.len() >= VERIFIED_TOKENS_PER_TENANT {
                map.clear();
            }
        }
        map.insert(
            digest,
            Verified {
                sub: sub.to_string(),
                until,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().len()
    }
}

impl TenantKeys {
    /// Verification keys from a keyring; keys of another algorithm are left out.
    pub fn from_keyring(ring: &Keyring, algorithm: Algorithm) -> Self {
        let keys = ring
            .keys
            .iter()
            .filter(|k| k.algorithm == algorithm)
            .filter_map(|k| Some((k.kid.clone(), k.expires_at, k.decoding_key()?)))
            .collect();
        Self {
            algorithm,
            keys,
            verified: VerifiedTokens::default(),
            revoked: keys::Revocations::default(),
        }
    }

    /// These keys, refusing the tokens `revoked` names.
    pub fn with_revocations(mut self, revoked: keys::Revocations) -> Self {
        self.revoked = revoked;
        self
    }
}

/// Finds the verification keys of a tenant.
pub trait KeyLookup: Send + Sync {
    /// The tenant's keys, or `None` for an unknown tenant.
    fn tenant_keys(&self, tenant: &TenantId) -> Option<Arc<TenantKeys>>;
    /// The external issuers configured for a tenant.
    fn tenant_issuers(&self, _tenant: &TenantId) -> Vec<crate::domain::Issuer> {
        Vec::new()
    }
    /// The tenants that configure `iss` as an external issuer.
    fn issuer_tenants(&self, _iss: &str) -> Vec<TenantId> {
        Vec::new()
    }
    /// The longest token lifetime (`exp - iat`) accepted for a tenant.
    fn max_token_lifetime(&self, _tenant: &TenantId) -> Duration {
        crate::domain::DEFAULT_MAX_TOKEN_LIFETIME
    }
}

#[derive(Deserialize)]
struct UnverifiedTenant {
    tenant_id: Option<String>,
    #[serde(default)]
    iss: Option<String>,
}

/// The unverified `tenant_id` and `iss` of a token (only to choose which keys to try).
fn unverified(token: &str) -> Result<UnverifiedTenant, AuthError> {
    let payload = token.split('.').nth(1).ok_or(AuthError::Malformed)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)
}

/// A token's verification error, as an [`AuthError`].
fn decode_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidSignature => AuthError::Signature,
        K::InvalidAlgorithm => AuthError::Algorithm,
        K::InvalidIssuer => AuthError::Claims("iss is not the configured issuer".to_string()),
        K::InvalidAudience => AuthError::Claims("aud is not the configured audience".to_string()),
        K::MissingRequiredClaim(c) => AuthError::Claims(format!("{c} is required")),
        K::InvalidClaimFormat(c) => AuthError::Claims(format!("{c} is malformed")),
        _ => AuthError::Malformed,
    }
}

/// Verifies a token of the tenant's own keys or of one of its external issuers: a token whose
/// `iss` is an issuer configured for the tenant it names (or, naming none, for exactly one
/// tenant) is verified with that issuer's JWKS; any other token with the tenant's keyring
/// ([`verify`]).
pub async fn verify_any(
    token: &str,
    lookup: &dyn KeyLookup,
    jwks: &oidc::JwksCache,
) -> Result<Principal, AuthError> {
    let claimed = unverified(token)?;
    if let Some(iss) = claimed.iss.as_deref() {
        let tenant = match claimed.tenant_id.as_deref() {
            Some(t) => TenantId::parse(t).ok(),
            None => match lookup.issuer_tenants(iss).as_slice() {
                [only] => Some(only.clone()),
                // No tenant claim and an issuer shared by several tenants: no scope to give.
                _ => None,
            },
        };
        if let Some(tenant) = tenant
            && let Some(issuer) = lookup
                .tenant_issuers(&tenant)
                .into_iter()
                .find(|i| i.issuer == iss)
        {
            let max_lifetime = lookup.max_token_lifetime(&tenant);
            return oidc::verify(token, tenant, &issuer, max_lifetime, jwks).await;
        }
    }
    verify_claimed(token, claimed, lookup)
}

/// Extracts the token from an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

/// Verifies `token` and returns the caller it proves.
pub fn verify(token: &str, lookup: &dyn KeyLookup) -> Result<Principal, AuthError> {
    verify_claimed(token, unverified(token)?, lookup)
}

/// [`verify`], with the token's unverified claims already decoded.
fn verify_claimed(
    token: &str,
    claimed: UnverifiedTenant,
    lookup: &dyn KeyLookup,
) -> Result<Principal, AuthError> {
    // Which tenant's keys to try comes from the unverified payload; the signature check below
    // then proves the key belongs to that tenant, because only that tenant's keys are tried.
    let tenant = claimed
        .tenant_id
        .as_deref()
        .and_then(|t| TenantId::parse(t).ok())
        .ok_or_else(|| AuthError::Claims("tenant_id missing or invalid".to_string()))?;
    let keys = lookup.tenant_keys(&tenant).ok_or(AuthError::UnknownKey)?;
    let now = unix_now();
    // This very token verified with these keys before (and has not expired since).
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if let Some(sub) = keys.verified.get(&digest, now) {
        return Ok(Principal { tenant, sub });
    }

    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
    let alg = match header.alg {
        jsonwebtoken::Algorithm::EdDSA => Algorithm::EdDSA,
        jsonwebtoken::Algorithm::HS256 => Algorithm::HS256,
        _ => return Err(AuthError::Algorithm),
    };
    let kid = header.kid.ok_or(AuthError::UnknownKey)?;
    if keys.algorithm != alg {
        return Err(AuthError::Algorithm);
    }
    let (_, key_expires, key) = keys
        .keys
        .iter()
        .find(|(k, expires, _)| *k == kid && expires.is_none_or(|e| e > now))
        .ok_or(AuthError::UnknownKey)?;

    let validation = validation(header.alg, &["exp", "sub"]);
    let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map_err(decode_error)?
        .claims;
    check_lifetime(
        claims.iat,
        claims.exp,
        lookup.max_token_lifetime(&tenant),
        now,
    )?;
    if let Some(jti) = claims.jti.as_deref()
        && keys.revoked.revokes(jti, now)
    {
        return Err(AuthError::Revoked);
    }
    let principal = principal(tenant, Some(&claims.tenant_id), claims.sub)?;
    let exp = i64::try_from(claims.exp).unwrap_or(i64::MAX);
    let until = key_expires.map_or(exp, |k| k.min(exp));
    keys.verified.insert(digest, &principal.sub, until, now);
    Ok(principal)
}

/// The checks every accepted token passes, whoever signed it: the header's algorithm, an
/// expiry and a `nbf` when present (both with [`LEEWAY_SECS`] of clock skew) and the
/// `required` claims present.
fn validation(alg: jsonwebtoken::Algorithm, required: &[&str]) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(required);
    validation
}

/// A token's lifetime is acceptable: it says when it was issued (`iat`), that is not in the
/// future (beyond [`LEEWAY_SECS`]), and it expires at most `max` after it was issued.
fn check_lifetime(iat: Option<u64>, exp: u64, max: Duration, now: i64) -> Result<(), AuthError> {
    let iat = iat.ok_or_else(|| AuthError::Lifetime("iat is required".to_string()))?;
    let now = u64::try_from(now).unwrap_or(0);
    if iat > now.saturating_add(LEEWAY_SECS) {
        return Err(AuthError::Lifetime("iat is in the future".to_string()));
    }
    let lifetime = exp.saturating_sub(iat);
    if lifetime > max.as_secs() {
        return Err(AuthError::Lifetime(format!(
            "exp - iat is {lifetime} s, more than the tenant's maximum of {} s",
            max.as_secs()
        )));
    }
    Ok(())
}

/// The principal of verified claims: a tenant the claims name (if they name one) must be the
/// tenant the token was verified for, and the subject must not be blank.
fn principal(tenant: TenantId, claimed: Option<&str>, sub: String) -> Result<Principal, AuthError> {
    if claimed.is_some_and(|t| t != tenant.as_str()) {
        return Err(AuthError::Claims("tenant_id mismatch".to_string()));
    }
    if sub.trim().is_empty() {
        return Err(AuthError::Claims("sub is required".to_string()));
    }
    Ok(Principal { tenant, sub })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Map(HashMap<TenantId, Arc<TenantKeys>>);
    impl KeyLookup for Map {
        fn tenant_keys(&self, tenant: &TenantId) -> Option<Arc<TenantKeys>> {
            self.0.get(tenant).cloned()
        }
    }

    fn id(s: &str) -> TenantId {
        TenantId::parse(s).expect("id")
    }

    fn setup() -> (Map, Keyring, Keyring) {
        let a = Keyring::generate(Algorithm::EdDSA);
        let b = Keyring::generate(Algorithm::HS256);
        let map = Map(HashMap::from([
            (
                id("a"),
                Arc::new(TenantKeys::from_keyring(&a, Algorithm::EdDSA)),
            ),
            (
                id("b"),
                Arc::new(TenantKeys::from_keyring(&b, Algorithm::HS256)),
            ),
        ]));
        (map, a, b)
    }

    #[test]
    fn valid_tokens_of_both_algorithms() {
        let (map, a, b) = setup();
        let t = a.mint(&id("a"), "alice", 60).expect("mint");
        assert_eq!(
            verify(&t, &map),
            Ok(Principal {
                tenant: id("a"),
                sub: "alice".into()
            })
        );
        let t = b.mint(&id("b"), "bob", 60).expect("mint");
        assert_eq!(verify(&t, &map).map(|p| p.tenant), Ok(id("b")));
    }

    #[test]
    fn key_of_one_tenant_cannot_claim_another() {
        let (map, a, _) = setup();
        // Signed with a's key, claims b.
        let t = a.mint(&id("b"), "mallory", 60).expect("mint");
        assert!(matches!(
            verify(&t, &map),
            Err(AuthError::Algorithm | AuthError::UnknownKey)
        ));
        // Same algorithm: a second EdDSA tenant.
        let c = Keyring::generate(Algorithm::EdDSA);
        let mut map = map;
        map.0.insert(
            id("c"),
            Arc::new(TenantKeys::from_keyring(&c, Algorithm::EdDSA)),
        );
        let t = a.mint(&id("c"), "mallory", 60).expect("mint");
        assert_eq!(verify(&t, &map), Err(AuthError::UnknownKey));
    }

    #[test]
    fn rotation_keeps_the_previous_key_for_the_overlap() {
        let (mut map, mut a, _) = setup();
        let old = a.mint(&id("a"), "u", 600).expect("mint");
        a.rotate(Algorithm::EdDSA, Some(3600));
        map.0.insert(
            id("a"),
            Arc::new(TenantKeys::from_keyring(&a, Algorithm::EdDSA)),
        );
        assert!(verify(&old, &map).is_ok());
        let new = a.mint(&id("a"), "u", 600).expect("mint");
        assert!(verify(&new, &map).is_ok());
        // Overlap over: the old key no longer verifies, and the next rotation drops it.
        let old_kid = a.keys[0].kid.clone();
        a.keys[0].expires_at = Some(unix_now() - 1);
        map.0.insert(
            id("a"),
            Arc::new(TenantKeys::from_keyring(&a, Algorithm::EdDSA)),
        );
        assert_eq!(verify(&old, &map), Err(AuthError::UnknownKey));
        assert!(verify(&new, &map).is_ok());
        a.rotate(Algorithm::EdDSA, Some(3600));
        assert!(a.keys.iter().all(|k| k.kid != old_kid));
        assert_eq!(a.keys.len(), 2);
    }

    #[test]
    fn a_verified_token_is_remembered_until_its_keys_change() {
        let (mut map, mut a, _) = setup();
        let t = a.mint(&id("a"), "alice", 600).expect("mint");
        let keys = map.0[&id("a")].clone();
        assert_eq!(keys.verified.len(), 0);
        assert!(verify(&t, &map).is_ok());
        assert_eq!(keys.verified.len(), 1);
        // The remembered token answers with the same principal.
        assert_eq!(verify(&t, &map).map(|p| p.sub), Ok("alice".to_string()));
        assert_eq!(keys.verified.len(), 1);
        // A bad signature is never remembered, and a tampered copy is a different digest.
        let mut forged = t.clone();
        forged.pop();
        assert!(verify(&forged, &map).is_err());
        assert_eq!(keys.verified.len(), 1);
        // Revocation: new keys without the old one refuse the token the old keys remembered.
        a.keys.clear();
        a.rotate(Algorithm::EdDSA, None);
        map.0.insert(
            id("a"),
            Arc::new(TenantKeys::from_keyring(&a, Algorithm::EdDSA)),
        );
        assert_eq!(verify(&t, &map), Err(AuthError::UnknownKey));
    }

    #[test]
    fn remembered_tokens_expire_and_are_bounded() {
        let memory = VerifiedTokens::default();
        let now = 1_000;
        memory.insert([1; 32], "u", now + 10, now);
        assert_eq!(memory.get(&[1; 32], now + 9), Some("u".to_string()));
        assert_eq!(memory.get(&[1; 32], now + 10), None);
        for i in 0..VERIFIED_TOKENS_PER_TENANT + 10 {
            let mut d = [0; 32];
            d[..8].copy_from_slice(&(i as u64).to_le_bytes());
            d[31] = 7;
            memory.insert(d, "u", now + 60, now);
        }
        assert!(memory.len() <= VERIFIED_TOKENS_PER_TENANT);
    }

    #[test]
    fn lifetimes_are_bounded() {
        let max = Duration::from_secs(3600);
        let now = 1_000_000;
        let ok = |iat, exp| check_lifetime(iat, exp, max, now as i64);
        assert_eq!(ok(Some(now), now + 3600), Ok(()));
        assert_eq!(ok(Some(now - 100), now + 10), Ok(()));
        // Within the clock-skew leeway.
        assert_eq!(ok(Some(now + LEEWAY_SECS), now + 600), Ok(()));
        assert!(matches!(
            ok(Some(now), now + 3601),
            Err(AuthError::Lifetime(_))
        ));
        assert!(matches!(ok(None, now + 60), Err(AuthError::Lifetime(_))));
        assert!(matches!(
            ok(Some(now + LEEWAY_SECS + 1), now + 600),
            Err(AuthError::Lifetime(_))
        ));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Malformed));
        assert_eq!(bearer(Some("Bearer ")), Err(AuthError::Malformed));
        assert_eq!(bearer(Some("bearer abc")), Ok("abc"));
    }
}
