//! Semantic cache of `POST /v1/chat` against a real `tenantry serve` and a scripted upstream:
//! tenant scoping in both isolation modes, paraphrase hits, invalidation by ingest/delete, TTL,
//! `Cache-Control: no-cache`, `enabled: false`, and hits consuming no tokens.
mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::llm::ScriptedLlm;
use common::server::{Dirs, Server, Start};
use serde_json::{Value, json};

const ACME_REFUND: &str = "Acme customers may return any product within 30 days of delivery for a full refund. Refunds go back to the original payment method within 5 business days.";
const GLOBEX_REFUND: &str = "All Globex sales are final after 14 days. Within those 14 days Globex offers store credit only, never cash refunds.";
const INITECH_REFUND: &str =
    "Initech refunds are handled by the finance team and take up to 60 days.";
const SHIPPING: &str =
    "Acme ships worldwide from Rotterdam. Standard shipping is free on orders over 50 euros.";
const QUESTION: &str = "What is the refund policy?";
const PARAPHRASE: &str = "What's the refund policy?";

/// Asks `question`; returns status, `X-Cache` and body.
async fn ask(
    server: &Server,
    token: &str,
    question: &str,
    no_cache: bool,
) -> (StatusCode, String, Value) {
    let (s, x_cache, _, body) = ask_matching(server, token, question, no_cache).await;
    (s, x_cache, body)
}

/// [`ask`], also returning `X-Cache-Match` (empty when absent).
async fn ask_matching(
    server: &Server,
    token: &str,
    question: &str,
    no_cache: bool,
) -> (StatusCode, String, String, Value) {
    let mut req = server
        .http
        .post(server.url("/v1/chat"))
        .bearer_auth(token)
        .json(&json!({"question": question}));
    if no_cache {
        req = req.header("cache-control", "no-cache");
    }
    let r = req.send().await.expect("request");
    let header = |name| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (x_cache, x_match) = (header("x-cache"), header("x-cache-match"));
    let (s, body) = common::server::status_json(r).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    (s, x_cache, x_match, body)
}

/// Asks and expects a miss that reached the upstream.
async fn miss(server: &Server, llm: &ScriptedLlm, token: &str, question: &str) -> Value {
    let before = llm.calls();
    let (_, x_cache, body) = ask(server, token, question, false).await;
    assert_eq!(body["cached"], false, "{body}");
    assert_eq!(x_cache, "miss");
    assert_eq!(llm.calls(), before + 1, "upstream not called: {body}");
    body
}

/// Asks and expects a hit that did not reach the upstream.
async fn hit(server: &Server, llm: &ScriptedLlm, token: &str, question: &str) -> Value {
    hit_matching(server, llm, token, question).await.1
}

/// [`hit`], returning how it matched (`X-Cache-Match`: `exact` or `similar`).
async fn hit_matching(
    server: &Server,
    llm: &ScriptedLlm,
    token: &str,
    question: &str,
) -> (String, Value) {
    let before = llm.calls();
    let (_, x_cache, x_match, body) = ask_matching(server, token, question, false).await;
    assert_eq!(body["cached"], true, "{body}");
    assert_eq!(x_cache, "hit");
    assert_eq!(llm.calls(), before, "upstream called on a hit");
    (x_match, body)
}

fn start(dirs: &Dirs, llm: &ScriptedLlm) -> Server {
    Server::start(
        dirs,
        Start {
            llm: Some(llm),
            ..Default::default()
        },
    )
}

/// Three tenants per isolation mode: A's answers (exact and paraphrase) never reach B or C,
/// while A's own paraphrase hits.
#[tokio::test]
async fn tenants_never_share_cached_answers_in_both_modes() {
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    let cache = "  semanticCache: {threshold: 0.9}\n";
    for (name, mode) in [
        ("acme", "Collection"),
        ("globex", "Collection"),
        ("initech", "Collection"),
        ("pa", "Partition"),
        ("pb", "Partition"),
        ("pc", "Partition"),
    ] {
        dirs.add_tenant(
            name,
            &format!("  retrieval: {{isolation: {mode}}}\n{cache}"),
        );
    }
    let server = start(&dirs, &llm);

    for (a, b, c) in [("acme", "globex", "initech"), ("pa", "pb", "pc")] {
        let (ta, tb, tc) = (
            dirs.token(a, "alice"),
            dirs.token(b, "bob"),
            dirs.token(c, "carol"),
        );
        server.ingest(&ta, "refunds", ACME_REFUND).await;
        server.ingest(&tb, "refunds", GLOBEX_REFUND).await;
        server.ingest(&tc, "refunds", INITECH_REFUND).await;

        let ans_a = miss(&server, &llm, &ta, QUESTION).await;
        assert_eq!(
            hit(&server, &llm, &ta, QUESTION).await["answer"],
            ans_a["answer"]
        );

        // Same question and a paraphrase from other tenants: never A's answer.
        let ans_b = miss(&server, &llm, &tb, QUESTION).await;
        assert_eq!(ans_b["tenant_id"], b);
        assert_ne!(ans_b["answer"], ans_a["answer"]);
        assert!(
            !ans_b["answer"]
                .as_str()
                .unwrap_or_default()
                .contains("Acme")
        );
        let ans_c = miss(&server, &llm, &tc, PARAPHRASE).await;
        assert_eq!(ans_c["tenant_id"], c);
        assert!(
            !ans_c["answer"]
                .as_str()
                .unwrap_or_default()
                .contains("Acme")
        );

        // Within A, the paraphrase (cosine >= 0.9) is answered from the cache, by similarity
        // the first time and as an exact repeat (no embedding) from then on.
        assert_eq!(hit_matching(&server, &llm, &ta, QUESTION).await.0, "exact");
        let (how, para) = hit_matching(&server, &llm, &ta, PARAPHRASE).await;
        assert_eq!(how, "similar");
        assert_eq!(para["answer"], ans_a["answer"]);
        assert_eq!(para["tenant_id"], a);
        assert_eq!(para["sources"], ans_a["sources"]);
        let (how, again) = hit_matching(&server, &llm, &ta, PARAPHRASE).await;
        assert_eq!(
            how, "exact",
            "a paraphrase answered once is an exact repeat"
        );
        assert_eq!(again["answer"], ans_a["answer"]);
        assert_eq!(again["sources"], ans_a["sources"]);
    }
}

/// A hit counts as a request but consumes no tokens, shows in the metrics, and stops hitting
/// once the tenant's documents change (ingest or delete).
#[tokio::test]
async fn hits_consume_no_tokens_and_document_changes_invalidate() {
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "  semanticCache: {threshold: 0.9}\n");
    let server = start(&dirs, &llm);
    let t = dirs.token("acme", "alice");
    server.ingest(&t, "refunds", ACME_REFUND).await;

    miss(&server, &llm, &t, QUESTION).await;
    let (_, before) = server.get("/v1/usage", &t).await;
    let tokens = before["tokens_today"].as_u64().expect("tokens_today");
    assert!(tokens > 0, "{before}");
    let hit_body = hit(&server, &llm, &t, PARAPHRASE).await;
    assert_eq!(hit_body["usage"]["prompt_tokens"], 0);
    assert_eq!(hit_body["usage"]["completion_tokens"], 0);
    let (_, after) = server.get("/v1/usage", &t).await;
    assert_eq!(after["tokens_today"].as_u64(), Some(tokens), "{after}");
    // A hit counts as a request (1 when the minute rolled over in between).
    let (rb, ra) = (
        before["requests_this_minute"].as_u64().expect("requests"),
        after["requests_this_minute"].as_u64().expect("requests"),
    );
    assert!(ra == rb + 1 || ra == 1, "{before} {after}");

    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"llm_cache_hits_total{tenant_id="acme"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"llm_cache_misses_total{tenant_id="acme"} 1"#),
        "{metrics}"
    );

    // A new document: the same question misses, then hits again.
    let shipping = server.ingest(&t, "shipping", SHIPPING).await;
    miss(&server, &llm, &t, QUESTION).await;
    hit(&server, &llm, &t, QUESTION).await;
    // A deleted document: misses again.
    let (s, _) = server
        .delete(&format!("/v1/documents/{shipping}"), &t)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    miss(&server, &llm, &t, QUESTION).await;
}

/// TTL expiry, `Cache-Control: no-cache` and `enabled: false`.
#[tokio::test]
async fn ttl_no_cache_and_disabled_miss() {
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("short", "  semanticCache: {ttl: 2s}\n");
    dirs.add_tenant("nocache-off", "  semanticCache: {enabled: false}\n");
    dirs.add_tenant("nc", "");
    let server = start(&dirs, &llm);
    let (short, off, nc) = (
        dirs.token("short", "a"),
        dirs.token("nocache-off", "b"),
        dirs.token("nc", "c"),
    );
    for t in [&short, &off, &nc] {
        server.ingest(t, "refunds", ACME_REFUND).await;
    }

    // TTL: a hit while young, a miss after it expires.
    miss(&server, &llm, &short, QUESTION).await;
    hit(&server, &llm, &short, QUESTION).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    miss(&server, &llm, &short, QUESTION).await;

    // Disabled: always a miss.
    for _ in 0..3 {
        miss(&server, &llm, &off, QUESTION).await;
    }

    // no-cache: skips lookup and store.
    let before = llm.calls();
    let (_, x_cache, body) = ask(&server, &nc, QUESTION, true).await;
    assert_eq!(
        (x_cache.as_str(), body["cached"].clone()),
        ("miss", json!(false))
    );
    assert_eq!(llm.calls(), before + 1);
    miss(&server, &llm, &nc, QUESTION).await; // nothing was stored by the no-cache request
    let before = llm.calls();
    let (_, x_cache, body) = ask(&server, &nc, QUESTION, true).await;
    assert_eq!(
        (x_cache.as_str(), body["cached"].clone()),
        ("miss", json!(false))
    );
    assert_eq!(llm.calls(), before + 1, "no-cache must skip the lookup");
    hit(&server, &llm, &nc, QUESTION).await;
}
