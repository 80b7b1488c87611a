//! Tokens of external OIDC issuers (`spec.auth.issuers`) against a real `tenantry serve` and a
//! JWKS served on loopback: RS256 and EdDSA keys, the tenant taken from the configuration that
//! matched, audience/expiry/lifetime/signature/algorithm checks, claim conditions, issuers
//! shared by tenants, key rotation at the issuer, an unreachable JWKS, and JWKS servers that
//! redirect, send huge or endless bodies, fail or hang (fetches counted at the server).
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
        self.sign_as(&self.kid, claims)
    }

    /// Signs with this key but names `kid` in the header.
    fn sign_as(&self, kid: &str, claims: Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_string());
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
    Err((StatusCode::UNAUTHORIZED, "invalid_api_key".to_string()))
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
    let shared =
        format!("    - {{issuer: {ISS_SHARED}, jwksUri: {base}/shared/jwks, audience: {AUD}}}\n");
    dirs.add_tenant(
        "acme",
        &format!("  auth:\n    issuers:\n    - {{issuer: {ISS_A}, jwksUri: {base}/acme/jwks, audience: {AUD}}}\n{shared}"),
    );
    dirs.add_tenant(
        "globex",
        &format!("  auth:\n    issuers:\n    - {{issuer: {ISS_G}, jwksUri: {base}/globex/jwks, audience: {AUD}}}\n{shared}"),
    );
    dirs.add_tenant(
        "initech",
        &format!("  auth:\n    issuers:\n    - {{issuer: https://down.example.test, jwksUri: http://{dead}/jwks, audience: {AUD}}}\n"),
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
        // No iat, a lifetime over the 24h default, not valid yet.
        a1.sign(claims(ISS_A, json!({"iat": null}))),
        a1.sign(claims(
            ISS_A,
            json!({"exp": tenantry::auth::keys::unix_now() + 25 * 3600}),
        )),
        a1.sign(claims(
            ISS_A,
            json!({"nbf": tenantry::auth::keys::unix_now() + 600}),
        )),
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
    // EdDSA (OKP JWK) from globex's issuer.
    let g = g1.sign(claims(ISS_G, json!({})));
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

/// An issuer trusts only tokens whose claims meet its conditions (a CI provider signs tokens
/// for every repository in the world), and an issuer without `audience` is refused.
#[tokio::test]
async fn claim_conditions_narrow_an_issuer() {
    const ISS_CI: &str = "https://ci.example.test";
    const ISS_OPEN: &str = "https://open.example.test";
    let (idp, base) = Idp::start().await;
    let ci = IssuerKey::rsa("ci-1");
    let open = IssuerKey::rsa("open-1");
    idp.publish("ci", vec![ci.jwk.clone()]);
    idp.publish("open", vec![open.jwk.clone()]);
    let dirs = Dirs::new();
    dirs.add_tenant(
        "acme",
        &format!(
            "  auth:\n    issuers:\n    - issuer: {ISS_CI}\n      jwksUri: {base}/ci/jwks\n      audience: {AUD}\n      claims:\n      - {{claim: sub, pattern: 'repo:acme/[^:]+:ref:refs/heads/main'}}\n      - {{claim: repository_owner, values: [acme]}}\n      - {{claim: groups, values: [deployers, admins]}}\n"
        ),
    );
    // No audience: the whole Tenant is refused (it would trust any token of the issuer).
    dirs.add_tenant(
        "globex",
        &format!(
            "  auth:\n    issuers:\n    - {{issuer: {ISS_OPEN}, jwksUri: {base}/open/jwks}}\n"
        ),
    );
    let server = Server::start(&dirs, Start::default());
    server.wait_for_token(&dirs.token("acme", "x")).await;

    let good = json!({
        "sub": "repo:acme/app:ref:refs/heads/main",
        "repository_owner": "acme",
        "groups": ["readers", "deployers"],
    });
    assert_eq!(
        tenant_of(&server, &ci.sign(claims(ISS_CI, good.clone()))).await,
        Ok("acme".to_string())
    );
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    for (what, extra) in [
        (
            "another repository",
            with("sub", json!("repo:evil/app:ref:refs/heads/main")),
        ),
        (
            "the pattern matches whole claims only",
            with("sub", json!("repo:acme/app:ref:refs/heads/main-evil")),
        ),
        ("another owner", with("repository_owner", json!("evil"))),
        ("owner missing", with("repository_owner", Value::Null)),
        ("no listed group", with("groups", json!(["readers"]))),
        (
            "a group claim that is an object",
            with("groups", json!({"deployers": true})),
        ),
    ] {
        let token = ci.sign(claims(ISS_CI, extra));
        assert_eq!(tenant_of(&server, &token).await, refused(), "{what}");
    }
    let logs = server.logs.lock().expect("lock").join("\n");
    assert!(
        logs.contains("does not satisfy the issuer's conditions"),
        "the log says why"
    );

    let token = open.sign(claims(ISS_OPEN, json!({"tenant_id": "globex"})));
    assert_eq!(tenant_of(&server, &token).await, refused());
    assert_eq!(idp.fetches(), 1, "only acme's issuer was ever fetched");
    let logs = server.logs.lock().expect("lock").join("\n");
    assert!(
        logs.contains("globex") && logs.contains("audience"),
        "the refused Tenant is logged"
    );
}

/// What a JWKS route of [`Hostile`] does.
#[derive(Clone)]
enum Behaviour {
    /// Serves this document.
    Keys(Value),
    /// Answers 302 to another path (which serves valid keys).
    Redirect(String),
    /// Streams a valid document padded past the size limit, without a Content-Length.
    Huge(Value),
    /// Sends headers, then one byte every 100 ms, forever.
    Dribble,
    /// Answers 500.
    Fail,
    /// Never answers (until the test ends).
    Hang,
}

/// A JWKS server whose routes misbehave in chosen ways, counting requests per route.
#[derive(Clone, Default)]
struct Hostile {
    routes: Arc<Mutex<std::collections::HashMap<String, Behaviour>>>,
    hits: Arc<Mutex<std::collections::HashMap<String, usize>>>,
}

async fn hostile(State(h): State<Hostile>, Path(name): Path<String>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    *h.hits
        .lock()
        .expect("lock")
        .entry(name.clone())
        .or_default() += 1;
    let behaviour = h.routes.lock().expect("lock").get(&name).cloned();
    match behaviour {
        Some(Behaviour::Keys(doc)) => axum::Json(doc).into_response(),
        Some(Behaviour::Redirect(to)) => {
            (StatusCode::FOUND, [(axum::http::header::LOCATION, to)]).into_response()
        }
        Some(Behaviour::Huge(doc)) => {
            let mut text = doc.to_string();
            text.pop(); // the closing brace, written after the padding
            let pad = format!(",\"pad\":\"{}\"", "x".repeat(64 * 1024));
            let chunks = std::iter::once(text)
                .chain(std::iter::repeat_n(pad, 32))
                .chain(std::iter::once("}".to_string()))
                .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from(c)));
            axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response()
        }
        Some(Behaviour::Dribble) => {
            let bytes = futures::stream::unfold(0u64, |n| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((
                    Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b" ")),
                    n + 1,
                ))
            });
            axum::body::Body::from_stream(bytes).into_response()
        }
        Some(Behaviour::Fail) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Some(Behaviour::Hang) => {
            futures::future::pending::<()>().await;
            StatusCode::OK.into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl Hostile {
    async fn start() -> (Self, String) {
        let h = Self::default();
        let app = axum::Router::new()
            .route("/{name}/jwks", axum::routing::get(hostile))
            .with_state(h.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (h, base)
    }
    fn set(&self, name: &str, b: Behaviour) {
        self.routes
            .lock()
            .expect("lock")
            .insert(name.to_string(), b);
    }
    fn hits(&self, name: &str) -> usize {
        self.hits
            .lock()
            .expect("lock")
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

/// JWKS fetches follow no redirect, read no more than the size limit, give up on an endless
/// body, are not retried right after a failure, and are single-flight per issuer: a flood of
/// tokens with made-up `kid`s neither multiplies fetches nor holds up another issuer's logins.
#[tokio::test]
async fn jwks_fetches_are_bounded_and_per_issuer() {
    let (h, base) = Hostile::start().await;
    let good = IssuerKey::rsa("good-1");
    let keys = json!({"keys": [good.jwk.clone()]});
    h.set("good", Behaviour::Keys(keys.clone()));
    h.set("redirect", Behaviour::Redirect(format!("{base}/good/jwks")));
    h.set("huge", Behaviour::Huge(keys.clone()));
    h.set("dribble", Behaviour::Dribble);
    h.set("fail", Behaviour::Fail);
    h.set("hang", Behaviour::Hang);
    let iss = |name: &str| format!("https://{name}.example.test");
    let dirs = Dirs::new();
    for name in ["good", "redirect", "huge", "dribble", "fail", "hang"] {
        dirs.add_tenant(
            name,
            &format!(
                "  auth:\n    issuers:\n    - {{issuer: '{}', jwksUri: '{base}/{name}/jwks', audience: {AUD}}}\n",
                iss(name)
            ),
        );
    }
    let server = Arc::new(Server::start(&dirs, Start::default()));
    server.wait_for_token(&dirs.token("good", "x")).await;
    let unavailable = Err((
        StatusCode::SERVICE_UNAVAILABLE,
        "issuer_keys_unavailable".to_string(),
    ));
    // The same valid key, served behind a redirect, padded past the limit, or dribbled.
    for name in ["redirect", "huge", "dribble"] {
        let token = good.sign(claims(&iss(name), json!({})));
        assert_eq!(tenant_of(&server, &token).await, unavailable, "{name}");
        assert_eq!(h.hits(name), 1, "{name}");
    }
    assert_eq!(h.hits("good"), 0, "the redirect was not followed");

    // A failing JWKS is not refetched for every token: 20 at once, one fetch.
    let forger = IssuerKey::rsa("forger");
    let flood = |name: &'static str, n: usize| {
        (0..n)
            .map(|i| {
                let token = forger.sign_as(&format!("made-up-{i}"), claims(&iss(name), json!({})));
                let server = server.clone();
                tokio::spawn(async move { tenant_of(&server, &token).await })
            })
            .collect::<Vec<_>>()
    };
    for refused in flood("fail", 20) {
        assert_eq!(refused.await.expect("join"), unavailable);
    }
    assert_eq!(h.hits("fail"), 1, "one fetch for the whole flood");

    // A JWKS that never answers holds up only its own issuer's tokens.
    let stuck = flood("hang", 5);
    while h.hits("hang") == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the rest of the flood queue up behind that fetch.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let token = good.sign(claims(&iss("good"), json!({})));
    assert_eq!(tenant_of(&server, &token).await, Ok("good".to_string()));
    assert_eq!(h.hits("good"), 1);
    assert_eq!(
        h.hits("hang"),
        1,
        "the good login did not wait behind the hanging fetch (and nothing refetched it)"
    );
    for refused in stuck {
        assert_eq!(refused.await.expect("join"), unavailable);
    }
    assert_eq!(h.hits("hang"), 1, "the whole flood shared one fetch");
}
