//! Token verification cost per request, in process: a tenant's own EdDSA and HS256 tokens, and
//! an external issuer's RS256 and EdDSA tokens with the issuer's JWKS cached (served once from
//! loopback, as `serve` would fetch it).
//!
//! Run: `cargo bench --profile dev --bench auth` (`TENANTRY_BENCH_REQUESTS`, default 5000).
#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use tenantry::auth::keys::{Keyring, unix_now};
use tenantry::auth::oidc::JwksCache;
use tenantry::auth::{KeyLookup, TenantKeys, verify_any};
use tenantry::domain::{Algorithm, Issuer, TenantId};

struct Tenants {
    keys: HashMap<TenantId, Arc<TenantKeys>>,
    issuers: HashMap<TenantId, Vec<Issuer>>,
}

impl KeyLookup for Tenants {
    fn tenant_keys(&self, tenant: &TenantId) -> Option<Arc<TenantKeys>> {
        self.keys.get(tenant).cloned()
    }
    fn tenant_issuers(&self, tenant: &TenantId) -> Vec<Issuer> {
        self.issuers.get(tenant).cloned().unwrap_or_default()
    }
    fn issuer_tenants(&self, iss: &str) -> Vec<TenantId> {
        self.issuers
            .iter()
            .filter(|(_, list)| list.iter().any(|i| i.issuer == iss))
            .map(|(t, _)| t.clone())
            .collect()
    }
}

fn id(s: &str) -> TenantId {
    TenantId::parse(s).expect("tenant id")
}

#[tokio::main]
async fn main() {
    tenantry::install_crypto_provider();
    let n = support::requests(5000);

    // The external issuer's keys and its JWKS on loopback.
    let rsa_key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("rsa");
    let ed_key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let jwks = json!({"keys": [
        {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "r1",
         "n": URL_SAFE_NO_PAD.encode(rsa_key.to_public_key().n().to_bytes_be()),
         "e": URL_SAFE_NO_PAD.encode(rsa_key.to_public_key().e().to_bytes_be())},
        {"kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": "e1",
         "x": URL_SAFE_NO_PAD.encode(ed_key.verifying_key().as_bytes())},
    ]});
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let jwks_uri = format!("http://{}/jwks", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let ed_ring = Keyring::generate(Algorithm::EdDSA);
    let hs_ring = Keyring::generate(Algorithm::HS256);
    let iss = "https://idp.example.test";
    let tenants = Tenants {
        keys: HashMap::from([
            (
                id("acme"),
                Arc::new(TenantKeys::from_keyring(&ed_ring, Algorithm::EdDSA)),
            ),
            (
                id("globex"),
                Arc::new(TenantKeys::from_keyring(&hs_ring, Algorithm::HS256)),
            ),
            (
                id("initech"),
                Arc::new(TenantKeys::from_keyring(
                    &Keyring::generate(Algorithm::EdDSA),
                    Algorithm::EdDSA,
                )),
            ),
        ]),
        issuers: HashMap::from([(
            id("initech"),
            vec![Issuer {
                issuer: iss.to_string(),
                jwks_uri,
                audience: "tenantry-api".to_string(),
                claims: Vec::new(),
            }],
        )]),
    };
    let cache = JwksCache::new();
    let external = |alg: jsonwebtoken::Algorithm, kid: &str, key: &EncodingKey| {
        let now = unix_now();
        let claims: Value =
            json!({"iss": iss, "sub": "u", "aud": "tenantry-api", "iat": now, "exp": now + 3600});
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, key).expect("sign")
    };
    let rs_token = external(
        jsonwebtoken::Algorithm::RS256,
        "r1",
        &EncodingKey::from_rsa_der(rsa_key.to_pkcs1_der().expect("der").as_bytes()),
    );
    let ed_token = external(
        jsonwebtoken::Algorithm::EdDSA,
        "e1",
        &EncodingKey::from_ed_der(ed_key.to_pkcs8_der().expect("der").as_bytes()),
    );
    let cases = [
        (
            "tenant key, EdDSA",
            ed_ring.mint(&id("acme"), "u", 3600).expect("mint"),
        ),
        (
            "tenant key, HS256",
            hs_ring.mint(&id("globex"), "u", 3600).expect("mint"),
        ),
        ("external issuer, RS256 (JWKS cached)", rs_token),
        ("external issuer, EdDSA (JWKS cached)", ed_token),
    ];
    println!("| token | verifications | p50 / p90 / p99 (µs) |");
    println!("|---|---|---|");
    for (name, token) in &cases {
        // The first verification of an external token fetches the JWKS; not timed.
        for _ in 0..50 {
            verify_any(token, &tenants, &cache).await.expect("valid");
        }
        let mut us = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            verify_any(token, &tenants, &cache).await.expect("valid");
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        us.sort_by(f64::total_cmp);
        println!(
            "| {name} | {n} | {:.1} / {:.1} / {:.1} |",
            support::percentile(&us, 0.5),
            support::percentile(&us, 0.9),
            support::percentile(&us, 0.99)
        );
    }
}
