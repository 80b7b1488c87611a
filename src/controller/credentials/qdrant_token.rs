//! A tenant's own Qdrant token: a JWT (HS256, signed with the server's API key, which is how a
//! Qdrant server with `service.jwt_rbac: true` verifies tokens) whose `access` claim lists the
//! tenant's collections with `prw` (points read and write: search, scroll, count, upsert,
//! delete; collection info). The server refuses it everything else: other collections,
//! creating or deleting collections, payload indexes, snapshots, cluster operations. The
//! operator, with the server's key, creates the collections and their indexes.
//!
//! Qdrant 1.15 removed payload-scoped access (a `payload` constraint in `access` makes the
//! server refuse the token), so a token cannot be limited to the tenant's points of a shared
//! collection: a `Partition` tenant's token reaches the shared collections, and there the
//! tenant boundary is `serve`'s tenant filter alone. `Collection` isolation gets a boundary
//! the server enforces.
//!
//! Tokens carry `exp`; the operator mints a new one once less than half its lifetime is left
//! (the old one stays valid until its own `exp`, so pods still running with it keep working
//! while the Deployment rolls).
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// One entry of the `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionAccess {
    /// Collection name.
    pub collection: String,
    /// `r`, `rw` or `prw`.
    pub access: String,
}

/// The claims of a tenant token (the subset of Qdrant's claims tenantry uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// `tenantry-<tenant>`, for Qdrant's audit log.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// The collections it may reach.
    pub access: Vec<CollectionAccess>,
}

/// Access mode of a tenant's collections: points only.
pub const MODE: &str = "prw";

/// The claims for `tenant`'s `collections`, expiring at `exp`.
pub fn claims(tenant: &str, collections: &[String], exp: u64) -> Claims {
    Claims {
        sub: format!("tenantry-{tenant}"),
        exp,
        access: collections
            .iter()
            .map(|c| CollectionAccess {
                collection: c.clone(),
                access: MODE.to_string(),
            })
            .collect(),
    }
}

/// Signs `claims` with the server's API key.
pub fn mint(claims: &Claims, key: &str) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .map_err(|e| format!("cannot sign the Qdrant token: {e}"))
}

/// The claims of `token` if `key` signed it (expiry not checked: the caller compares `exp`).
pub fn verify(token: &str, key: &str) -> Option<Claims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
    jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(key.as_bytes()),
        &validation,
    )
    .ok()
    .map(|d| d.claims)
}

/// Whether a stored token can be kept at `now`: signed with `key`, for exactly `want`'s
/// collections and subject, and with more than half of `ttl_secs` left.
pub fn keep(stored: Option<&Claims>, want: &Claims, now: u64, ttl_secs: u64) -> bool {
    stored.is_some_and(|c| {
        c.sub == want.sub && c.access == want.access && c.exp > now.saturating_add(ttl_secs / 2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_renewed_at_half_life() {
        let want = claims(
            "acme",
            &["tenant_acme_docs".into(), "tenant_acme_cache".into()],
            10_000,
        );
        let token = mint(&want, "server-key").expect("signed");
        let got = verify(&token, "server-key").expect("verified");
        assert_eq!(got, want);
        assert_eq!(verify(&token, "another-key"), None);
        let json: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                token.split('.').nth(1).expect("payload"),
            )
            .expect("base64"),
        )
        .expect("json");
        assert_eq!(
            json["access"],
            serde_json::json!([
                {"collection": "tenant_acme_docs", "access": "prw"},
                {"collection": "tenant_acme_cache", "access": "prw"},
            ])
        );
        // Lifetime 8000 s: kept while more than 4000 s are left.
        assert!(keep(
            Some(&got),
            &claims(
                "acme",
                &["tenant_acme_docs".into(), "tenant_acme_cache".into()],
                0
            ),
            5_000,
            8_000
        ));
        assert!(!keep(Some(&got), &want, 6_001, 8_000));
        let other = claims("acme", &["shared_docs_384".into()], 0);
        assert!(!keep(Some(&got), &other, 0, 8_000), "collections changed");
        assert!(!keep(None, &want, 0, 8_000));
    }
}
