//! HTTP tests against a real `tenantry serve` on 127.0.0.1 (embedded qdrant-edge store, local
//! embedding model) with a scripted OpenAI-compatible chat server on loopback.
mod common;

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::llm::ScriptedLlm;
use common::server::{Dirs, Server, Start};
use serde_json::{Value, json};
use tenantry::auth::keys::{Keyring, unix_now};
use tenantry::domain::Algorithm;

const ACME_REFUND: &str = "Acme customers may return any product within 30 days of delivery for a full refund. Refunds go back to the original payment method within 5 business days.";
const ACME_SHIPPING: &str =
    "Acme ships worldwide from Rotterdam. Standard shipping is free on orders over 50 euros.";
const GLOBEX_REFUND: &str = "All Globex sales are final after 14 days. Within those 14 days Globex offers store credit only, never cash refunds.";
const GLOBEX_SUPPORT: &str =
    "Globex support is open Monday to Friday, 9:00 to 17:00 Central European Time.";
const QUESTION: &str = "What is the refund policy?";

fn source_ids(body: &Value) -> HashSet<String> {
    body["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .map(|s| s["document_id"].as_str().expect("id").to_string())
        .collect()
}

/// Two tenants per isolation mode ask the same question: each answer is built only from the
/// asker's documents, and the model only ever sees the asker's passages.
#[tokio::test]
async fn isolation_in_both_modes() {
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "  retrieval: {isolation: Collection}\n");
    dirs.add_tenant("globex", "  retrieval: {isolation: Collection}\n");
    dirs.add_tenant("pa", "  retrieval: {isolation: Partition}\n");
    dirs.add_tenant(
        "pb",
        "  retrieval: {isolation: Partition}\n  auth: {algorithm: HS256}\n",
    );
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(&llm),
            ..Default::default()
        },
    );

    for (a, b) in [("acme", "globex"), ("pa", "pb")] {
        let ta = dirs.token(a, "alice");
        let tb = dirs.token(b, "bob");
        let a_docs: HashSet<String> = [
            server.ingest(&ta, "refunds", ACME_REFUND).await,
            server.ingest(&ta, "shipping", ACME_SHIPPING).await,
        ]
        .into();
        let b_docs: HashSet<String> = [
            server.ingest(&tb, "refunds", GLOBEX_REFUND).await,
            server.ingest(&tb, "support", GLOBEX_SUPPORT).await,
        ]
        .into();

        let before = llm.user_messages().len();
        let (s, ans_a) = server.chat(&ta, QUESTION).await;
        assert_eq!(s, StatusCode::OK, "{ans_a}");
        let (s, ans_b) = server.chat(&tb, QUESTION).await;
        assert_eq!(s, StatusCode::OK, "{ans_b}");

        assert_eq!(ans_a["tenant_id"], a);
        assert_eq!(ans_b["tenant_id"], b);
        assert!(!source_ids(&ans_a).is_empty());
        assert!(
            source_ids(&ans_a).is_subset(&a_docs),
            "{a} got foreign sources: {ans_a}"
        );
        assert!(
            source_ids(&ans_b).is_subset(&b_docs),
            "{b} got foreign sources: {ans_b}"
        );
        // The best source answers the question.
        assert!(
            ans_a["sources"][0]["text"]
                .as_str()
                .expect("text")
                .contains("30 days")
        );
        assert!(
            ans_b["sources"][0]["text"]
                .as_str()
                .expect("text")
                .contains("14 days")
        );
        // What reached the model.
        let sent = llm.user_messages();
        let (to_a, to_b) = (&sent[before], &sent[before + 1]);
        assert!(
            to_a.contains("30 days") && !to_a.contains("Globex"),
            "{to_a}"
        );
        assert!(to_b.contains("14 days") && !to_b.contains("Acme"), "{to_b}");
        assert_ne!(ans_a["answer"], ans_b["answer"]);
        assert_eq!(ans_a["cached"], false);
        assert!(ans_a["usage"]["prompt_tokens"].as_u64().expect("usage") > 0);
        assert_eq!(ans_a["usage"]["completion_tokens"], 7);

        // Listing shows only own documents.
        let (s, list) = server.get("/v1/documents", &tb).await;
        assert_eq!(s, StatusCode::OK);
        let listed: HashSet<String> = list["documents"]
            .as_array()
            .expect("docs")
            .iter()
            .map(|d| d["id"].as_str().expect("id").to_string())
            .collect();
        assert_eq!(listed, b_docs);

        // Another tenant's document id is not found, not forbidden; nothing is deleted.
        let foreign = a_docs.iter().next().expect("doc");
        let (s, body) = server.get(&format!("/v1/documents/{foreign}"), &tb).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
        let (s, _) = server
            .delete(&format!("/v1/documents/{foreign}"), &tb)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, doc) = server.get(&format!("/v1/documents/{foreign}"), &ta).await;
        assert_eq!(s, StatusCode::OK, "the owner still has it");
        assert!([ACME_REFUND, ACME_SHIPPING].contains(&doc["text"].as_str().expect("text")));
        assert_eq!(doc["text_exact"], true);

        // Re-ingesting under a foreign document id cannot overwrite the owner's chunks.
        let (s, _) = server
            .post(
                "/v1/documents",
                &tb,
                json!({"id": foreign, "text": "Overwritten by someone else."}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let (_, ans_a2) = server.chat(&ta, QUESTION).await;
        assert!(
            ans_a2["sources"]
                .as_array()
                .expect("sources")
                .iter()
                .all(|s| !s["text"].as_str().unwrap_or("").contains("Overwritten")),
            "{ans_a2}"
        );
        assert!(
            ans_a2["sources"][0]["text"]
                .as_str()
                .expect("text")
                .contains("30 days")
        );
        // Each reads back its own text under the shared id.
        let (_, mine) = server.get(&format!("/v1/documents/{foreign}"), &tb).await;
        assert_eq!(mine["text"], "Overwritten by someone else.");
        let (_, theirs) = server.get(&format!("/v1/documents/{foreign}"), &ta).await;
        assert_eq!(theirs["text"], doc["text"]);
    }
}

#[tokio::test]
async fn documents_can_be_listed_paged_replaced_and_deleted() {
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let server = Server::start(&dirs, Start::default());
    let t = dirs.token("acme", "alice");

    let mut ids = HashSet::new();
    for i in 0..5 {
        ids.insert(
            server
                .ingest(
                    &t,
                    &format!("doc {i}"),
                    &format!("Document number {i} about topic {i}."),
                )
                .await,
        );
    }
    // Page through with limit 2.
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/v1/documents?limit=2&cursor={c}"),
            None => "/v1/documents?limit=2".to_string(),
        };
        let (s, page) = server.get(&path, &t).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for d in page["documents"].as_array().expect("docs") {
            assert!(
                seen.insert(d["id"].as_str().expect("id").to_string()),
                "duplicate in paging"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    // Replace a long document by a short one under the same id: old chunks disappear.
    let long: String = (0..200)
        .map(|i| format!("Sentence {i} of the long version. "))
        .collect();
    let (s, body) = server
        .post(
            "/v1/documents",
            &t,
            json!({"text": long, "title": "v1", "metadata": {"lang": "en"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = body["id"].as_str().expect("id").to_string();
    assert!(body["chunks"].as_u64().expect("chunks") > 3);
    // Read back exactly, though stored as overlapping, trimmed chunks.
    let (s, doc) = server.get(&format!("/v1/documents/{id}"), &t).await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    assert_eq!(doc["text"], long.as_str());
    assert_eq!(doc["text_exact"], true);
    assert_eq!(doc["metadata"], json!({"lang": "en"}));
    let (s, body) = server
        .post(
            "/v1/documents",
            &t,
            json!({"id": id, "text": "The short version.", "title": "v2"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(body["chunks"], 1);
    let (s, doc) = server.get(&format!("/v1/documents/{id}"), &t).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["title"], "v2");
    assert_eq!(doc["chunks"], 1);
    assert_eq!(doc["text"], "The short version.");
    let (_, list) = server.get("/v1/documents", &t).await;
    assert!(
        list["documents"]
            .as_array()
            .expect("docs")
            .iter()
            .all(|d| d.get("text").is_none()),
        "listings stay light: {list}"
    );
    let (_, ans) = server
        .post(
            "/v1/chat",
            &t,
            json!({"question": "Sentence 150 of the long version", "top_k": 10}),
        )
        .await;
    assert!(
        ans["sources"]
            .as_array()
            .expect("sources")
            .iter()
            .all(|s| !s["text"].as_str().unwrap_or("").contains("long version")),
        "stale chunks remain: {ans}"
    );

    // Delete: 204, then 404, and it is gone from retrieval.
    let (s, _) = server.delete(&format!("/v1/documents/{id}"), &t).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = server.delete(&format!("/v1/documents/{id}"), &t).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = server.get(&format!("/v1/documents/{id}"), &t).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = server.get("/v1/documents/not-a-uuid", &t).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
}

/// Every way a token can be wrong is a 401 with a JSON error, all with one and the same
/// message (the reason is in the log): unknown tenants, keys and algorithms are not told apart
/// from bad signatures. Lifetimes are bounded: `exp - iat` at most the tenant's
/// `maxTokenLifetime` (24 h by default), `iat` required and not in the future, `nbf` honoured.
#[tokio::test]
async fn bad_tokens_are_refused() {
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    dirs.add_tenant("globex", "  auth: {algorithm: HS256}\n");
    dirs.add_tenant("initech", "  auth: {maxTokenLifetime: 1h}\n");
    let server = Server::start(&dirs, Start::default());
    let acme = dirs.keyring("acme");
    let acme_kid = acme.current.clone();
    let now = unix_now() as u64;
    // A token of `tenant`'s current key with these claims.
    let signed = |tenant: &str, claims: Value| {
        let ring = dirs.keyring(tenant);
        let key = ring.current_key().expect("key");
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(ring.current.clone());
        let enc = jsonwebtoken::EncodingKey::from_ed_pem(
            key.private_key.as_deref().expect("pk").as_bytes(),
        )
        .expect("key");
        jsonwebtoken::encode(&h, &claims, &enc).expect("sign")
    };
    let acme_claims = |extra: Value| -> Value {
        let mut c = json!({"sub": "a", "tenant_id": "acme", "iat": now, "exp": now + 600});
        for (k, v) in extra.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };

    let expired = {
        let key = acme.current_key().expect("key");
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(acme_kid.clone());
        let enc = jsonwebtoken::EncodingKey::from_ed_pem(
            key.private_key.as_deref().expect("pk").as_bytes(),
        )
        .expect("key");
        jsonwebtoken::encode(
            &h,
            &json!({"sub": "a", "tenant_id": "acme", "exp": now - 300, "iat": now - 600}),
            &enc,
        )
        .expect("sign")
    };
    let no_exp = {
        let key = acme.current_key().expect("key");
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(acme_kid.clone());
        let enc = jsonwebtoken::EncodingKey::from_ed_pem(
            key.private_key.as_deref().expect("pk").as_bytes(),
        )
        .expect("key");
        jsonwebtoken::encode(&h, &json!({"sub": "a", "tenant_id": "acme"}), &enc).expect("sign")
    };
    // Same kid, different key: the signature does not verify.
    let wrong_signature = {
        let mut other = Keyring::generate(Algorithm::EdDSA);
        other.keys[0].kid = acme_kid.clone();
        other.current = acme_kid.clone();
        other.mint(&"acme".parse_id(), "a", 600).expect("mint")
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": acme_kid})),
        b64(&json!({"sub": "a", "tenant_id": "acme", "exp": now + 600}))
    );
    // HS256 token for the EdDSA tenant, "signed" with its public key as the HMAC secret (the
    // classic algorithm-confusion attack).
    let hs_for_eddsa = {
        let public = acme
            .current_key()
            .and_then(|k| k.public_key.clone())
            .expect("pub");
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(acme_kid.clone());
        jsonwebtoken::encode(
            &h,
            &json!({"sub": "a", "tenant_id": "acme", "exp": now + 600}),
            &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
        )
        .expect("sign")
    };
    // Signed with acme's key, claims globex.
    let cross_tenant = acme
        .mint(&"globex".parse_id(), "mallory", 600)
        .expect("mint");
    // Signed with globex's key, claims acme.
    let cross_tenant_hs = dirs
        .keyring("globex")
        .mint(&"acme".parse_id(), "mallory", 600)
        .expect("mint");
    let tampered = {
        let good = dirs.token("acme", "alice");
        let parts: Vec<&str> = good.split('.').collect();
        let claims = b64(&json!({"sub": "alice", "tenant_id": "globex", "exp": now + 600}));
        format!("{}.{}.{}", parts[0], claims, parts[2])
    };

    let lifetime_cases = [
        (
            "lifetime over the 24h default",
            signed("acme", acme_claims(json!({"exp": now + 25 * 3600}))),
        ),
        ("no iat", signed("acme", acme_claims(json!({"iat": null})))),
        (
            "iat in the future",
            signed(
                "acme",
                acme_claims(json!({"iat": now + 3600, "exp": now + 4000})),
            ),
        ),
        (
            "nbf in the future",
            signed("acme", acme_claims(json!({"nbf": now + 300}))),
        ),
        (
            "lifetime over the tenant's 1h",
            dirs.keyring("initech")
                .mint(&"initech".parse_id(), "a", 2 * 3600)
                .expect("mint"),
        ),
        (
            "unknown tenant",
            signed("acme", acme_claims(json!({"tenant_id": "nobody"}))),
        ),
    ];
    // Within the limits: accepted.
    for ok in [
        signed("acme", acme_claims(json!({"exp": now + 23 * 3600}))),
        signed("acme", acme_claims(json!({"nbf": now - 10}))),
        dirs.keyring("initech")
            .mint(&"initech".parse_id(), "a", 3000)
            .expect("mint"),
    ] {
        let (s, body) = server.get("/v1/usage", &ok).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }

    let mut cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("malformed", Some("Bearer not.a.jwt".into())),
        (
            "not bearer",
            Some(format!("Basic {}", dirs.token("acme", "a"))),
        ),
        ("expired", Some(format!("Bearer {expired}"))),
        ("no exp", Some(format!("Bearer {no_exp}"))),
        ("wrong signature", Some(format!("Bearer {wrong_signature}"))),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        (
            "HS256 for EdDSA tenant",
            Some(format!("Bearer {hs_for_eddsa}")),
        ),
        ("A's key claims B", Some(format!("Bearer {cross_tenant}"))),
        (
            "B's key claims A",
            Some(format!("Bearer {cross_tenant_hs}")),
        ),
        ("tampered claims", Some(format!("Bearer {tampered}"))),
    ];
    cases.extend(
        lifetime_cases
            .iter()
            .map(|(name, t)| (*name, Some(format!("Bearer {t}")))),
    );
    let mut messages = HashSet::new();
    for (name, header) in cases {
        let mut req = server
            .http
            .post(server.url("/v1/chat"))
            .json(&json!({"question": QUESTION}));
        if let Some(h) = header {
            req = req.header("Authorization", h);
        }
        let (status, body) = common::server::status_json(req.send().await.expect("send")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{name}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        messages.insert(body["error"]["message"].to_string());
    }
    assert_eq!(
        messages.len(),
        1,
        "every refusal says the same: {messages:?}"
    );
    // The log keeps the reasons.
    let logs = server.logs.lock().expect("lock").join("\n");
    for reason in [
        "token expired",
        "iat is required",
        "nbf",
        "unknown tenant or signing key",
    ] {
        assert!(logs.contains(reason), "the log lacks {reason:?}");
    }
    // And the good token works.
    let (s, body) = server.chat(&dirs.token("acme", "alice"), QUESTION).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

trait ParseId {
    fn parse_id(&self) -> tenantry::domain::TenantId;
}
impl ParseId for str {
    fn parse_id(&self) -> tenantry::domain::TenantId {
        tenantry::domain::TenantId::parse(self).expect("id")
    }
}

/// Bad input gets a 4xx JSON error and the server keeps serving.
#[tokio::test]
async fn bad_input_is_refused_with_json_errors() {
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant(
        "acme",
        "  models: {chat: gpt-4o-mini, allowed: [gpt-4o-mini]}\n",
    );
    dirs.add_tenant("frozen", "  suspend: true\n");
    let config = dirs.config("limits:\n  maxBodyBytes: 4096\n  maxQuestionChars: 200\n");
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(&llm),
            config: Some(config),
            ..Default::default()
        },
    );
    let t = dirs.token("acme", "alice");

    let raw = |body: &'static str, ctype: &'static str| {
        server
            .http
            .post(server.url("/v1/chat"))
            .bearer_auth(&t)
            .header("Content-Type", ctype)
            .body(body)
            .send()
    };
    let cases = vec![
        (
            "invalid json",
            raw("{\"question\": ", "application/json").await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "missing field",
            raw("{\"model\": \"gpt-4o-mini\"}", "application/json").await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            raw("{\"question\": \"q\", \"qestion\": 1}", "application/json").await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "wrong type",
            raw("{\"question\": 42}", "application/json").await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "empty question",
            raw("{\"question\": \"   \"}", "application/json").await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "not json",
            raw("question=hi", "application/x-www-form-urlencoded").await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "an array, not an object",
            raw("[\"What is the refund policy?\"]", "application/json").await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "integer written as a float with a fraction",
            raw("{\"question\": \"q\", \"top_k\": 2.5}", "application/json").await,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (name, resp, want) in cases {
        let (status, body) = common::server::status_json(resp.expect("send")).await;
        assert_eq!(status, want, "{name}: {body}");
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{name}: {body}"
        );
    }

    let (s, body) = server
        .post("/v1/documents", &t, json!({"text": "x".repeat(10_000)}))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    let (s, body) = server
        .post("/v1/chat", &t, json!({"question": "q".repeat(201)}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (s, body) = server.post("/v1/documents", &t, json!({"text": ""})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (s, body) = server
        .post("/v1/chat", &t, json!({"question": "q", "top_k": 0}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // JSON Schema's integer: 2.0 is 2.
    let (s, body) = server
        .post("/v1/chat", &t, json!({"question": "q", "top_k": 2.0}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = server
        .post("/v1/chat", &t, json!({"question": "q", "model": "gpt-4o"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    let (s, body) = server.get("/v1/nope", &t).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (s, body) = server.delete("/v1/chat", &t).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["error"]["code"], "method_not_allowed");

    // A suspended tenant is refused with 403.
    let (s, body) = server.chat(&dirs.token("frozen", "u"), QUESTION).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "tenant_suspended");

    // No token minting without --dev.
    let (s, _) = server.get("/dev/token?tenant_id=acme&sub=x", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Still serving.
    let (s, body) = server.chat(&t, QUESTION).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

/// An upstream failure is a 502 JSON error, counted in the metrics; nothing leaks.
#[tokio::test]
async fn upstream_failure_is_502_and_metrics_count_requests() {
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant(
        "acme",
        "  models: {chat: gpt-4o-mini, allowed: [gpt-4o-mini, fail-500]}\n",
    );
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(&llm),
            ..Default::default()
        },
    );
    let t = dirs.token("acme", "alice");
    server.ingest(&t, "refunds", ACME_REFUND).await;

    let (s, body) = server
        .post(
            "/v1/chat",
            &t,
            json!({"question": QUESTION, "model": "fail-500"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "upstream_error");
    let (s, _) = server.chat(&t, QUESTION).await;
    assert_eq!(s, StatusCode::OK);

    let metrics = server.metrics().await;
    for needle in [
        r#"llm_requests_total{tenant_id="acme",model="gpt-4o-mini",status="success"} 1"#,
        r#"llm_requests_total{tenant_id="acme",model="fail-500",status="error"} 1"#,
        r#"llm_tokens_total{tenant_id="acme",model="gpt-4o-mini",type="completion"} 7"#,
        "llm_request_latency_seconds_bucket",
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }
    // No token or key material in the logs.
    let logs = server.logs.lock().expect("logs").join("\n");
    assert!(!logs.contains(&t), "token leaked into logs");
    let ring = dirs.keyring("acme");
    assert!(
        !logs.contains(
            ring.current_key()
                .and_then(|k| k.private_key.as_deref())
                .expect("pk")
                .lines()
                .nth(1)
                .expect("line")
        )
    );
}

/// With no chat endpoint configured, the offline responder answers from the best passage.
#[tokio::test]
async fn offline_responder_answers_from_passages() {
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let server = Server::start(&dirs, Start::default());
    let t = dirs.token("acme", "alice");
    server.ingest(&t, "refunds", ACME_REFUND).await;
    server.ingest(&t, "shipping", ACME_SHIPPING).await;
    let (s, body) = server
        .chat(&t, "How long do I have to return a product?")
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["model"], "extractive");
    let answer = body["answer"].as_str().expect("answer");
    assert!(
        answer.contains("No language model is configured"),
        "{answer}"
    );
    assert!(answer.contains("30 days"), "{answer}");
    assert_eq!(body["usage"]["prompt_tokens"], 0);
}

/// Documents and signing keys survive a restart; a token minted before still works.
#[tokio::test]
async fn documents_and_keys_survive_restart() {
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    dirs.add_tenant(
        "globex",
        "  retrieval: {isolation: Partition}\n  auth: {algorithm: HS256}\n",
    );
    let server = Server::start(&dirs, Start::default());
    let ta = dirs.token("acme", "alice");
    let tg = dirs.token("globex", "bob");
    let a = server.ingest(&ta, "refunds", ACME_REFUND).await;
    let g = server.ingest(&tg, "refunds", GLOBEX_REFUND).await;
    server.stop();

    let server = Server::start(&dirs, Start::default());
    let (s, doc) = server.get(&format!("/v1/documents/{a}"), &ta).await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    let (s, doc) = server.get(&format!("/v1/documents/{g}"), &tg).await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    let (_, ans) = server.chat(&tg, QUESTION).await;
    assert_eq!(source_ids(&ans), HashSet::from([g]));
}

/// Tenants are reloaded when files change; a broken manifest does not take others down.
#[tokio::test]
async fn tenants_reload_and_bad_manifests_are_isolated() {
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let server = Server::start(&dirs, Start::default());
    let t = dirs.token("acme", "alice");

    dirs.write_manifest("broken.yaml", "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: Bad_Name}\nspec: {tier: pro}\n");
    dirs.add_tenant("newco", "");
    // The new tenant's key appears once the reload ran.
    let key = dirs.data().join("keys/newco.json");
    for _ in 0..100 {
        if key.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tn = dirs.token("newco", "nina");
    server.wait_for_token(&tn).await;
    let (s, _) = server.get("/v1/documents", &t).await;
    assert_eq!(s, StatusCode::OK, "acme still served");
    let logs = server.logs.lock().expect("logs").join("\n");
    assert!(
        logs.contains("broken.yaml") && logs.contains("metadata.name"),
        "problem not reported:\n{logs}"
    );

    // Suspending a tenant by editing its manifest takes effect without restart.
    dirs.add_tenant("newco", "  suspend: true\n");
    let mut status = StatusCode::OK;
    for _ in 0..100 {
        status = server.get("/v1/documents", &tn).await.0;
        if status == StatusCode::FORBIDDEN {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn health_readiness_openapi_and_dev_token() {
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let server = Server::start(
        &dirs,
        Start {
            args: vec!["--dev".into()],
            ..Default::default()
        },
    );
    let (s, _) = server.get("/healthz", "").await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = server.get("/readyz", "").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, doc) = server.get("/openapi.json", "").await;
    assert_eq!(s, StatusCode::OK);
    for path in [
        "/v1/chat",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/embeddings",
        "/v1/usage",
        "/v1/documents",
        "/v1/documents/{id}",
        "/healthz",
        "/readyz",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
    let (s, body) = server
        .get("/dev/token?tenant_id=acme&sub=dev&ttl=48h", "")
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (s, body) = server.get("/dev/token?tenant_id=acme&sub=dev", "").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let token = body["token"].as_str().expect("token");
    let (s, _) = server.get("/v1/documents", token).await;
    assert_eq!(s, StatusCode::OK);
}

/// `tenantry token` prints a token `serve` accepts; a second `serve` on the same data dir
/// fails with a clear error instead of corrupting the store.
#[tokio::test]
async fn token_cli_and_exclusive_data_dir() {
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let server = Server::start(&dirs, Start::default());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args([
            "token", "--tenant", "acme", "--sub", "carol", "--ttl", "10m",
        ])
        .arg("--data-dir")
        .arg(dirs.data())
        .arg("--tenants")
        .arg(dirs.tenants())
        .output()
        .expect("run token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    let (s, body) = server.get("/v1/documents", &token).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // Longer than the tenant's maximum token lifetime (24h by default): refused, saying why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args([
            "token", "--tenant", "acme", "--sub", "carol", "--ttl", "720h",
        ])
        .arg("--data-dir")
        .arg(dirs.data())
        .arg("--tenants")
        .arg(dirs.tenants())
        .output()
        .expect("run token");
    assert!(!out.status.success(), "a 720h token was minted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("maximum token lifetime of 24h") && err.contains("maxTokenLifetime"),
        "{err}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["token", "--tenant", "nobody", "--sub", "x"])
        .arg("--data-dir")
        .arg(dirs.data())
        .arg("--tenants")
        .arg(dirs.tenants())
        .output()
        .expect("run token");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));

    let second = dirs
        .serve_command()
        .env("TENANTRY_MODEL_DIR", common::server::model_dir())
        .current_dir(dirs.root.path())
        .output()
        .expect("run second serve");
    assert!(
        !second.status.success(),
        "a second serve on the same data dir must fail"
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another process"), "{err}");
}
