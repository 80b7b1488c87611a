//! Tokens of external OIDC issuers (`spec.auth.issuers`) against a real `tenantry serve` and a
//! JWKS served on loopback: RS256 and EdDSA keys, the tenant taken from the configuration that
//! matched, audience/expiry/signature/algorithm checks, issuers shared by tenants, key rotation
//! at the issuer, and an unreachable JWKS.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::server::{Dirs, Server, Start};
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};

const ISS_A: &str = "https://idp.example.test/acme";
const ISS_G: &str = "https://idp.example.test/globex";
const ISS_SHARED: &str = "https://idp.example.test/shared";
const AUD: &str = "tenantry-api";

/// JWKS documents by path, and how often each was fetched.
#[derive(Clone, Default)]
struct Idp {
    sets: Arc<Mutex<std::collections::HashMap<String, Value>>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks(State(idp): State<Idp>, Path(name): Path<String>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    match idp.sets.lock().expect("lock").get(&name) {
        Some(v) => axum::Json(v.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl Idp {
    async fn start() -> (Self, String) {
        let idp = Self::default();
        let app = axum::Router::new()
            .route("/{name}/jwks", axum::routing::get(jwks))
            .with_state(idp.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (idp, base)
    }
    fn publish(&self, name: &str, keys: Vec<Value>) {
        self.sets
            .lock()
            .expect("lock")
            .insert(name.to_string(), json!({"keys": keys}));
    }
    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A signing key of an external issuer and its public JWK.
struct IssuerKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl IssuerKey {
    fn rsa(kid: &str) -> Self {
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("rsa key");
        let der = private.to_pkcs1_der().expect("der");
        let public = private.to_public_key();
        Self {
            kid: kid.to_string(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            }),
        }
    }

    fn ed25519(kid: &str) -> Self {
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = signing.to_pkcs8_der().expect("der");
        Self {
            kid: kid.to_string(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes()),
            }),
        }
    }

    fn sign(&self, claims: Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("sign")
    }
}

fn claims(iss: &str, extra: Value) -> Value {
    let now = tenantry::auth::keys::unix_now();
    let mut c =
        json!({"iss": iss, "sub": "user@example.test", "aud": AUD, "iat": now, "exp": now + 600});
    for (k, v) in extra.as_object().expect("object") {
        if v.is_null() {
            c.as_object_mut().expect("object").remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// The tenant a token is served as, or the refusal's status and code.
async fn tenant_of(server: &Server, token: &str) -> Result<String, (StatusCode, String)> {
    let (s, body) = server.get("/v1/usage", token).await;
    if s == StatusCode::OK {
        Ok(body["tenant_id"].as_str().expect("tenant_id").to_string())
    } else {
        Err((
            s,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ))
    }
}

fn refused() -> Result<String, (StatusCode, String)> {
    Err((StatusCode::UNAUTHORIZED, "unauthorized".to_string()))
}

#[tokio::test]
async fn external_issuers_are_accepted_only_for_their_tenants() {
    let (idp, base) = Idp::start().await;
    let a1 = IssuerKey::rsa("a-1");
    let g1 = IssuerKey::ed25519("g-1");
    let s1 = IssuerKey::rsa("s-1");
    idp.publish("acme", vec![a1.jwk.clone()]);
    idp.publish("globex", vec![g1.jwk.clone()]);
    idp.publish("shared", vec![s1.jwk.clone()]);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };

    let dirs = Dirs::new();
    let shared = format!("    - {{issuer: {ISS_SHARED}, jwksUri: {base}/shared/jwks}}\n");
    dirs.add_tenant(
        "acme",
        &format!("  auth:\n    issuers:\n    - {{issuer: {ISS_A}, jwksUri: {base}/acme/jwks, audience: {AUD}}}\n{shared}"),
    );
    dirs.add_tenant(
        "globex",
        &format!("  auth:\n    issuers:\n    - {{issuer: {ISS_G}, jwksUri: {base}/globex/jwks}}\n{shared}"),
    );
    dirs.add_tenant(
        "initech",
        &format!("  auth:\n    issuers:\n    - {{issuer: https://down.example.test, jwksUri: http://{dead}/jwks}}\n"),
    );
    let server = Server::start(&dirs, Start::default());
    let own = dirs.token("acme", "alice");
    server.wait_for_token(&own).await;
    for t in ["globex", "initech"] {
        server.wait_for_token(&dirs.token(t, "x")).await;
    }

    // RS256 from acme's issuer: acme, with or without a tenant_id claim.
    let ok = a1.sign(claims(ISS_A, json!({})));
    assert_eq!(tenant_of(&server, &ok).await, Ok("acme".to_string()));
    let named = a1.sign(claims(ISS_A, json!({"tenant_id": "acme"})));
    assert_eq!(tenant_of(&server, &named).await, Ok("acme".to_string()));
    // Claiming another tenant with acme's issuer: globex does not trust it.
    let other = a1.sign(claims(ISS_A, json!({"tenant_id": "globex"})));
    assert_eq!(tenant_of(&server, &other).await, refused());
    // Audience, expiry, subject, issuer, signature, algorithm.
    for bad in [
        a1.sign(claims(ISS_A, json!({"aud": "someone-else"}))),
        a1.sign(claims(ISS_A, json!({"aud": null}))),
        a1.sign(claims(ISS_A, json!({"exp": 1_000_000_000}))),
        a1.sign(claims(ISS_A, json!({"sub": null}))),
        a1.sign(claims(
            "https://idp.example.test/unknown",
            json!({"tenant_id": "acme"}),
        )),
        // A key the issuer never published, under a published kid.
        IssuerKey {
            kid: "a-1".into(),
            ..IssuerKey::rsa("forged")
        }
        .sign(claims(ISS_A, json!({}))),
        // A kid the issuer does not publish.
        IssuerKey::rsa("a-404").sign(claims(ISS_A, json!({}))),
        // HMAC with the public key's text as the secret: never accepted from an issuer.
        jsonwebtoken::encode(
            &Header {
                kid: Some("a-1".into()),
                ..Header::new(Algorithm::HS256)
            },
            &claims(ISS_A, json!({})),
            &EncodingKey::from_secret(a1.jwk.to_string().as_bytes()),
        )
        .expect("sign"),
    ] {
        assert_eq!(tenant_of(&server, &bad).await, refused(), "{bad}");
    }
    // EdDSA (OKP JWK) from globex's issuer, no audience configured.
    let g = g1.sign(claims(ISS_G, json!({"aud": null})));
    assert_eq!(tenant_of(&server, &g).await, Ok("globex".to_string()));
    // A shared issuer needs the tenant claim; without it there is no scope to give.
    let s = s1.sign(claims(ISS_SHARED, json!({"tenant_id": "globex"})));
    assert_eq!(tenant_of(&server, &s).await, Ok("globex".to_string()));
    let s = s1.sign(claims(ISS_SHARED, json!({})));
    assert_eq!(tenant_of(&server, &s).await, refused());
    // The tenant's own keyring still works.
    assert_eq!(tenant_of(&server, &own).await, Ok("acme".to_string()));

    // JWKS are cached: many requests, one fetch per issuer (plus the refetches the unknown kids
    // above were allowed).
    let before = idp.fetches();
    for _ in 0..10 {
        assert_eq!(tenant_of(&server, &ok).await, Ok("acme".to_string()));
    }
    assert_eq!(idp.fetches(), before, "a cached JWKS is not fetched again");

    // The issuer rotates: after the refetch interval an unknown kid refetches the JWKS.
    let a2 = IssuerKey::rsa("a-2");
    idp.publish("acme", vec![a2.jwk.clone()]);
    tokio::time::sleep(tenantry::auth::oidc::JWKS_MIN_REFETCH + Duration::from_millis(200)).await;
    let rotated = a2.sign(claims(ISS_A, json!({})));
    assert_eq!(tenant_of(&server, &rotated).await, Ok("acme".to_string()));
    assert_eq!(idp.fetches(), before + 1);
    assert_eq!(tenant_of(&server, &ok).await, refused(), "the retired key");

    // An issuer whose JWKS cannot be fetched: 503, not 401 (the token may well be valid).
    let down = IssuerKey::rsa("d-1").sign(claims("https://down.example.test", json!({})));
    assert_eq!(
        tenant_of(&server, &down).await,
        Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "issuer_keys_unavailable".to_string()
        ))
    );
}
