//! The OpenAI-compatible surface (`/v1/chat/completions` with and without streaming,
//! `/v1/models`, `/v1/embeddings`) against a real `tenantry serve` and a scripted upstream:
//! responses and usage, the semantic cache per tenant, retrieval, OpenAI-style errors, and
//! what a stream cut short is charged.
mod common;

use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use common::llm::ScriptedLlm;
use common::server::{Dirs, Server, Start};
use serde_json::{Value, json};
use tenantry::llm::Message;
use tenantry::quota::tokens;

const MODEL: &str = "gpt-4o-mini";
const ACME_DOC: &str =
    "Acme customers may return any product within 30 days of delivery for a full refund.";
const GLOBEX_DOC: &str =
    "All Globex sales are final after 14 days; Globex offers store credit only.";

async fn start(tenants: &[(&str, &str)], llm: &ScriptedLlm) -> (Dirs, Server) {
    let dirs = Dirs::new();
    for (name, spec) in tenants {
        dirs.add_tenant(name, spec);
    }
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(llm),
            ..Default::default()
        },
    );
    for (name, _) in tenants {
        server.wait_for_token(&dirs.token(name, "alice")).await;
    }
    (dirs, server)
}

/// POSTs a completion request; returns status, `X-Cache` and the JSON body.
async fn complete(
    server: &Server,
    token: &str,
    body: Value,
    no_cache: bool,
) -> (StatusCode, String, Value) {
    let mut req = server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&body);
    if no_cache {
        req = req.header("cache-control", "no-cache");
    }
    let r = req.send().await.expect("request");
    let x_cache = header(&r, "x-cache");
    let (s, v) = common::server::status_json(r).await;
    (s, x_cache, v)
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A streamed completion: the `data:` payloads in order (`[DONE]` included) and `X-Cache`.
async fn stream(server: &Server, token: &str, body: Value) -> (Vec<String>, String) {
    let r = server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert!(
        header(&r, "content-type").starts_with("text/event-stream"),
        "{:?}",
        r.headers()
    );
    let x_cache = header(&r, "x-cache");
    let text = r.text().await.expect("body");
    (data_lines(&text), x_cache)
}

fn data_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.trim().to_string())
        .collect()
}

/// The text of a streamed answer (the deltas, concatenated).
fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| e.as_str() != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

async fn tokens_today(server: &Server, token: &str) -> u64 {
    let (s, usage) = server.get("/v1/usage", token).await;
    assert_eq!(s, StatusCode::OK, "{usage}");
    usage["tokens_today"].as_u64().expect("tokens_today")
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// Non-streaming and streaming completions are well formed, carry the upstream's usage, pass
/// the sampling parameters on, and are charged exactly that usage.
#[tokio::test]
async fn completions_with_and_without_streaming() {
    let llm = ScriptedLlm::start().await;
    let (dirs, server) = start(&[("acme", "")], &llm).await;
    let token = dirs.token("acme", "alice");

    let (s, x_cache, body) = complete(
        &server,
        &token,
        json!({
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hello there [[usage:11:5]]"}]},
            ],
            "temperature": 0.2,
            "seed": 7,
            "stop": ["\n\n"],
            "max_tokens": 100000,
            "user": "end-user-1",
        }),
        false,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(x_cache, "miss");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["index"], 0);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        format!("ANSWER[{MODEL}]: Hello there [[usage:11:5]]")
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16})
    );
    assert_eq!(body["tenantry"]["cached"], false);
    // What reached the upstream: the conversation as sent, the sampling parameters, and
    // max_tokens lowered to the server's limit.
    let sent = llm.last_request();
    assert_eq!(sent["messages"][0]["content"], "Be brief.");
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["seed"], 7);
    assert_eq!(sent["stop"], json!(["\n\n"]));
    assert_eq!(sent["max_tokens"], 512);
    assert_eq!(tokens_today(&server, &token).await, 16);

    // Streaming with usage: role first, deltas, finish, usage, [DONE].
    let (events, x_cache) = stream(
        &server,
        &token,
        json!({"model": MODEL, "messages": [user("Stream me [[usage:20:9]]")], "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(x_cache, "miss");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let parsed: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk json"))
        .collect();
    assert_eq!(parsed[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        parsed[0]["tenantry"],
        json!({"cached": false, "sources": []}),
        "tenantry's additions on the first chunk"
    );
    assert!(parsed[1..].iter().all(|p| p.get("tenantry").is_none()));
    for p in &parsed {
        assert_eq!(p["object"], "chat.completion.chunk");
        assert_eq!(p["id"], parsed[0]["id"], "one id per stream");
    }
    assert_eq!(
        streamed_text(&events),
        format!("ANSWER[{MODEL}]: Stream me [[usage:20:9]]")
    );
    let finish = &parsed[parsed.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["usage"], Value::Null);
    let last = &parsed[parsed.len() - 1];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29})
    );
    assert_eq!(tokens_today(&server, &token).await, 16 + 29);

    // Streaming without usage: no usage chunk; still charged the upstream's usage.
    let (events, _) = stream(
        &server,
        &token,
        json!({"messages": [user("Quiet [[usage:3:2]]")], "stream": true}),
    )
    .await;
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "{events:?}"
    );
    assert_eq!(
        streamed_text(&events),
        format!("ANSWER[{MODEL}]: Quiet [[usage:3:2]]")
    );
    assert_eq!(tokens_today(&server, &token).await, 16 + 29 + 5);
}

/// The semantic cache serves completions per tenant, in both isolation modes: A's repeat and
/// paraphrase hit (also streamed), B's identical question misses; another system prompt,
/// `no-cache` and a new document miss.
#[tokio::test]
async fn completion_cache_is_per_tenant() {
    completion_cache_is_per_tenant_in("").await;
    completion_cache_is_per_tenant_in("  retrieval: {isolation: Partition}\n").await;
}

async fn completion_cache_is_per_tenant_in(spec: &str) {
    let llm = ScriptedLlm::start().await;
    let (dirs, server) = start(&[("acme", spec), ("globex", spec)], &llm).await;
    let acme = dirs.token("acme", "alice");
    let globex = dirs.token("globex", "bob");
    let ask = |q: &str| json!({"model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, user(q)]});

    let calls = llm.calls();
    let (_, x, first) = complete(&server, &acme, ask("What is the refund policy?"), false).await;
    assert_eq!(x, "miss");
    assert_eq!(llm.calls(), calls + 1);
    let answer = first["choices"][0]["message"]["content"].clone();

    let (_, x, again) = complete(&server, &acme, ask("What is the refund policy?"), false).await;
    assert_eq!(x, "hit", "{again}");
    assert_eq!(again["tenantry"]["cached"], true);
    assert_eq!(again["choices"][0]["message"]["content"], answer);
    assert_eq!(again["usage"]["total_tokens"], 0, "a hit uses no tokens");
    assert_eq!(llm.calls(), calls + 1, "a hit does not reach the upstream");

    let mut para = ask("What's the refund policy?");
    para["stream"] = json!(true);
    para["stream_options"] = json!({"include_usage": true});
    let (events, x) = stream(&server, &acme, para).await;
    assert_eq!(x, "hit");
    assert_eq!(Value::String(streamed_text(&events)), answer);
    let first: Value = serde_json::from_str(&events[0]).expect("chunk json");
    assert_eq!(first["tenantry"]["cached"], true, "{first}");
    assert_eq!(llm.calls(), calls + 1);

    // Another tenant, same question: its own upstream call and its own answer.
    let (_, x, other) = complete(&server, &globex, ask("What is the refund policy?"), false).await;
    assert_eq!(x, "miss");
    assert_eq!(other["tenantry"]["cached"], false);
    assert_eq!(llm.calls(), calls + 2);

    // Another system prompt changes the answer: a miss.
    let other_system = json!({"model": MODEL, "messages": [{"role": "system", "content": "Be verbose."}, user("What is the refund policy?")]});
    let (_, x, _) = complete(&server, &acme, other_system, false).await;
    assert_eq!(x, "miss");
    // Opt-out per request.
    let (_, x, _) = complete(&server, &acme, ask("What is the refund policy?"), true).await;
    assert_eq!(x, "miss");
    // A new document invalidates the tenant's answers.
    server.ingest(&acme, "refunds", ACME_DOC).await;
    let (_, x, _) = complete(&server, &acme, ask("What is the refund policy?"), false).await;
    assert_eq!(x, "miss");
    assert_eq!(llm.calls(), calls + 5);
}

/// Retrieval is off by default, on with `tenantry.rag` or the tenant's
/// `retrieval.augmentCompletions`, and only ever finds the caller's own documents.
#[tokio::test]
async fn retrieval_adds_only_the_tenants_passages() {
    let llm = ScriptedLlm::start().await;
    let (dirs, server) = start(
        &[
            ("acme", ""),
            ("globex", "  retrieval: {augmentCompletions: true}\n"),
        ],
        &llm,
    )
    .await;
    let acme = dirs.token("acme", "alice");
    let globex = dirs.token("globex", "bob");
    let acme_doc = server.ingest(&acme, "refunds", ACME_DOC).await;
    server.ingest(&globex, "refunds", GLOBEX_DOC).await;
    let sent_system = |llm: &ScriptedLlm| -> String {
        let body = llm.last_request();
        body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter(|m| m["role"] == "system")
            .map(|m| m["content"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let q = |rag: Option<bool>| {
        let mut b = json!({"messages": [user("How do refunds work?")]});
        if let Some(rag) = rag {
            b["tenantry"] = json!({"rag": rag, "top_k": 3});
        }
        b
    };

    let (s, _, body) = complete(&server, &acme, q(None), true).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(
        !sent_system(&llm).contains("30 days"),
        "no retrieval by default"
    );
    assert_eq!(body["tenantry"]["sources"], json!([]));

    let (s, _, body) = complete(&server, &acme, q(Some(true)), true).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let system = sent_system(&llm);
    assert!(system.contains(ACME_DOC), "{system}");
    assert!(
        !system.contains("Globex"),
        "another tenant's passage: {system}"
    );
    assert_eq!(body["tenantry"]["sources"][0]["document_id"], acme_doc);
    // Streamed, the sources come with the first chunk.
    let mut streamed = q(Some(true));
    streamed["stream"] = json!(true);
    let (events, _) = stream(&server, &acme, streamed).await;
    let first: Value = serde_json::from_str(&events[0]).expect("chunk json");
    assert_eq!(
        first["tenantry"]["sources"][0]["document_id"], acme_doc,
        "{first}"
    );
    assert_eq!(first["tenantry"]["cached"], false);

    // Globex retrieves by default (its own documents only) and can opt out per request.
    let (s, _, _) = complete(&server, &globex, q(None), true).await;
    assert_eq!(s, StatusCode::OK);
    let system = sent_system(&llm);
    assert!(system.contains(GLOBEX_DOC), "{system}");
    assert!(!system.contains("Acme"), "{system}");
    let (_, _, _) = complete(&server, &globex, q(Some(false)), true).await;
    assert!(!sent_system(&llm).contains("Globex"));
}

/// Refusals on this surface are OpenAI-style: 4xx with `{"error": {message, type, param,
/// code}}`, 400 rather than 422; none reaches the upstream or costs tokens.
#[tokio::test]
async fn errors_are_openai_shaped() {
    let llm = ScriptedLlm::start().await;
    let (dirs, server) = start(&[("acme", "")], &llm).await;
    let token = dirs.token("acme", "alice");
    let ok_messages = json!([user("hi")]);
    let cases = [
        (
            json!({"model": "gpt-4o", "messages": ok_messages}),
            404,
            "invalid_request_error",
            Some("model"),
        ),
        (
            json!({"messages": []}),
            400,
            "invalid_request_error",
            Some("messages"),
        ),
        (
            json!({"messages": ok_messages, "temperature": 3}),
            400,
            "invalid_request_error",
            Some("temperature"),
        ),
        (
            json!({"messages": ok_messages, "tools": [{"type": "function"}]}),
            400,
            "invalid_request_error",
            Some("tools[0].function"),
        ),
        (
            json!({"messages": ok_messages, "tools": {"type": "function"}}),
            400,
            "invalid_request_error",
            Some("tools"),
        ),
        (
            json!({"messages": ok_messages, "tools": [{"type": "function", "function": {"name": "no spaces"}}]}),
            400,
            "invalid_request_error",
            Some("tools[0].function.name"),
        ),
        (
            json!({"messages": ok_messages, "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}),
            400,
            "invalid_request_error",
            Some("tools[0].function.parameters"),
        ),
        (
            json!({"messages": ok_messages, "tool_choice": "sometimes"}),
            400,
            "invalid_request_error",
            Some("tool_choice"),
        ),
        (
            json!({"messages": ok_messages, "parallel_tool_calls": "yes"}),
            400,
            "invalid_request_error",
            Some("parallel_tool_calls"),
        ),
        (
            json!({"messages": ok_messages, "response_format": {"type": "xml"}}),
            400,
            "invalid_request_error",
            Some("response_format.type"),
        ),
        (
            json!({"messages": ok_messages, "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
            400,
            "invalid_request_error",
            Some("response_format.json_schema.name"),
        ),
        (
            json!({"messages": [user("hi"), {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}]}]}),
            400,
            "invalid_request_error",
            Some("messages[1].tool_calls[0].function.arguments"),
        ),
        (
            json!({"messages": [{"role": "function", "content": "x", "name": "f"}]}),
            400,
            "invalid_request_error",
            Some("messages[0].role"),
        ),
        (
            json!({"messages": ok_messages, "n": 2}),
            400,
            "invalid_request_error",
            Some("n"),
        ),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            400,
            "invalid_request_error",
            Some("messages[0].tool_call_id"),
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            400,
            "invalid_request_error",
            Some("messages[0].content"),
        ),
        (
            json!({"messages": ok_messages, "stream_options": {"include_usage": true}}),
            400,
            "invalid_request_error",
            Some("stream_options"),
        ),
        (
            json!({"messages": "hi"}),
            400,
            "invalid_request_error",
            None,
        ),
        (
            json!({"messages": ok_messages, "tenantry": {"top_k": 99}}),
            400,
            "invalid_request_error",
            Some("tenantry.top_k"),
        ),
    ];
    for (body, status, kind, param) in cases {
        let (s, _, err) = complete(&server, &token, body.clone(), false).await;
        assert_eq!(s.as_u16(), status, "{body} -> {err}");
        assert_eq!(err["error"]["type"], kind, "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(err["error"]["code"].is_string());
        assert_eq!(err["error"]["param"].as_str(), param, "{err}");
    }
    // Not JSON at all.
    let r = server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    let (s, err) = common::server::status_json(r).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    // No or a wrong API key.
    let (s, _, err) = complete(
        &server,
        "not-a-jwt",
        json!({"messages": [user("hi")]}),
        false,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(err["error"]["type"], "authentication_error");
    assert_eq!(llm.calls(), 0, "no refused request reached the upstream");
    assert_eq!(tokens_today(&server, &token).await, 0);
    // An upstream failure is a 502 with an OpenAI-style body.
    let (s, _, err) = complete(
        &server,
        &token,
        json!({"messages": [user("boom [[fail]]")]}),
        false,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{err}");
    assert_eq!(err["error"]["type"], "upstream_error");
    assert!(
        tokens_today(&server, &token).await >= prompt_tokens("boom [[fail]]"),
        "a call the upstream failed costs its prompt (it reached the upstream)"
    );
}

/// Tokens `tenantry` counts for a prompt of one user message.
fn prompt_tokens(text: &str) -> u64 {
    tokens::prompt_tokens(MODEL, &[Message::new("user", text)])
}

/// Waits until no request is in flight and returns the tokens charged today.
async fn settled(server: &Server, token: &str) -> u64 {
    for _ in 0..100 {
        let (_, usage) = server.get("/v1/usage", token).await;
        if usage["in_flight"] == 0 {
            return usage["tokens_today"].as_u64().expect("tokens_today");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("a reservation was never settled");
}

/// A client that goes away mid-stream is charged its prompt and what was generated until
/// then — more than the prompt, less than the whole answer, never the whole reservation — and
/// an upstream that cuts its stream yields an error event and the same partial charge.
#[tokio::test]
async fn a_stream_cut_short_is_charged_what_was_generated() {
    let llm = ScriptedLlm::start().await;
    let (dirs, server) = start(&[("acme", "")], &llm).await;
    let token = dirs.token("acme", "alice");
    let words: Vec<String> = (0..80).map(|i| format!("word{i}")).collect();
    let question = format!("[[chunk-delay:60]] {}", words.join(" "));
    let full_answer = format!("ANSWER[{MODEL}]: {question}");

    let mut r = server
        .http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&json!({"messages": [user(&question)], "stream": true}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let mut received = String::new();
    while data_lines(&received).len() < 6 {
        let chunk = r.chunk().await.expect("chunk").expect("stream open");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(r); // the client goes away
    let charged = settled(&server, &token).await;
    let prompt = prompt_tokens(&question);
    let whole = prompt + tokens::count(MODEL, &full_answer);
    assert!(
        charged > prompt,
        "generated text not charged: {charged} <= {prompt}"
    );
    assert!(
        charged < whole,
        "charged as if complete: {charged} >= {whole}"
    );

    // The upstream cuts its stream after 4 words: an error event, no [DONE].
    let cut = "[[cut-after:4]] one two three four five six";
    let (events, _) = stream(
        &server,
        &token,
        json!({"messages": [user(cut)], "stream": true}),
    )
    .await;
    assert_ne!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let err: Value = serde_json::from_str(events.last().expect("event")).expect("json");
    assert_eq!(err["error"]["type"], "upstream_error", "{err}");
    let generated = streamed_text(&events);
    assert_eq!(
        generated,
        format!("ANSWER[{MODEL}]: [[cut-after:4]] one two")
    );
    let after = settled(&server, &token).await;
    assert_eq!(
        after - charged,
        prompt_tokens(cut) + tokens::count(MODEL, &generated)
    );
}

/// `/v1/models` lists the tenant's models; `/v1/embeddings` embeds with serve's model (float
/// and base64), is charged to the tenant and refuses what it cannot do.
#[tokio::test]
async fn models_and_embeddings() {
    let llm = ScriptedLlm::start().await;
    let (dirs, server) = start(
        &[
            ("acme", "  models: {chat: m-a, allowed: [m-a, m-b]}\n"),
            ("globex", ""),
        ],
        &llm,
    )
    .await;
    let acme = dirs.token("acme", "alice");
    let globex = dirs.token("globex", "bob");

    let (s, list) = server.get("/v1/models", &acme).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["m-a", "m-b", "all-MiniLM-L6-v2"]);
    assert!(
        list["data"]
            .as_array()
            .expect("data")
            .iter()
            .all(|m| m["object"] == "model")
    );
    let (_, list) = server.get("/v1/models", &globex).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [MODEL, "all-MiniLM-L6-v2"], "another tenant's models");
    let (s, m) = server.get("/v1/models/m-b", &acme).await;
    assert_eq!((s, m["id"].clone()), (StatusCode::OK, json!("m-b")));
    let (s, err) = server.get("/v1/models/m-b", &globex).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(err["error"]["type"], "not_found_error");

    let texts = [
        "Refunds within 30 days.",
        "Money back in a month.",
        "Rotterdam harbour",
    ];
    let (s, e) = server
        .post(
            "/v1/embeddings",
            &acme,
            json!({"input": texts, "model": "all-MiniLM-L6-v2"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["object"], "list");
    assert_eq!(e["model"], "all-MiniLM-L6-v2");
    let vecs: Vec<Vec<f32>> = e["data"]
        .as_array()
        .expect("data")
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["index"], i);
            assert_eq!(d["object"], "embedding");
            serde_json::from_value(d["embedding"].clone()).expect("floats")
        })
        .collect();
    assert_eq!(vecs.len(), 3);
    assert!(vecs.iter().all(|v| v.len() == 384));
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!((dot(&vecs[0], &vecs[0]) - 1.0).abs() < 1e-3, "normalised");
    assert!(
        dot(&vecs[0], &vecs[1]) > dot(&vecs[0], &vecs[2]),
        "similar texts are closer"
    );
    let used = e["usage"]["prompt_tokens"].as_u64().expect("usage");
    assert!(used > 0);
    assert_eq!(e["usage"]["total_tokens"], used);
    assert_eq!(tokens_today(&server, &acme).await, used);

    // base64: little-endian f32, the same vector.
    let (s, b) = server
        .post(
            "/v1/embeddings",
            &acme,
            json!({"input": texts[0], "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().expect("base64"))
        .expect("decode");
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, vecs[0]);

    // Token arrays (cl100k_base, as OpenAI clients encode): decoded and embedded as the texts,
    // charged the tokens sent.
    let bpe = tiktoken_rs::cl100k_base_singleton();
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| bpe.encode_with_special_tokens(t))
        .collect();
    let before = tokens_today(&server, &acme).await;
    for (input, expected) in [(json!(ids), &vecs[..]), (json!(ids[2]), &vecs[2..])] {
        let (s, t) = server
            .post("/v1/embeddings", &acme, json!({"input": input}))
            .await;
        assert_eq!(s, StatusCode::OK, "{t}");
        let got: Vec<Vec<f32>> = t["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|d| serde_json::from_value(d["embedding"].clone()).expect("floats"))
            .collect();
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert!(
                g.iter().zip(e).all(|(a, b)| (a - b).abs() < 1e-5),
                "same vector"
            );
        }
    }
    let sent = ids.iter().map(Vec::len).sum::<usize>() + ids[2].len();
    assert_eq!(tokens_today(&server, &acme).await - before, sent as u64);

    for (body, status, param) in [
        (
            json!({"input": "x", "model": "text-embedding-3-small"}),
            404,
            "model",
        ),
        (json!({"input": ""}), 400, "input[0]"),
        (json!({"input": [1, "a"]}), 400, "input"),
        (json!({"input": [100_256]}), 400, "input"),
        (json!({"input": [[1, 2], [-1]]}), 400, "input"),
        (json!({"input": [[1, 2], []]}), 400, "input[1]"),
        (json!({"input": [1.5]}), 400, "input"),
        (json!({"input": "x", "dimensions": 128}), 400, "dimensions"),
        (
            json!({"input": "x", "encoding_format": "int8"}),
            400,
            "encoding_format",
        ),
    ] {
        let (s, err) = server.post("/v1/embeddings", &acme, body.clone()).await;
        assert_eq!(s.as_u16(), status, "{body} -> {err}");
        assert_eq!(err["error"]["param"], param, "{err}");
    }
    assert_eq!(llm.calls(), 0);
}

/// Model aliases (the tier's, with the tenant's over them): an OpenAI model name is served by
/// the model it maps to, upstream and in the answer; `/v1/models` lists the aliases it can
/// serve; an alias of a model the tenant may not use, or another tenant's alias, is refused.
#[tokio::test]
async fn model_aliases_serve_openai_names_with_the_tenants_models() {
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.write_manifest(
        "acme.yaml",
        "apiVersion: tenantry.dev/v1alpha1\nkind: QuotaTier\nmetadata: {name: aliased}\n\
         spec: {modelAliases: {gpt-4o-mini: m-b, gpt-4o: m-z}}\n---\n\
         apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
         spec:\n  tier: aliased\n  models:\n    chat: m-a\n    allowed: [m-a]\n    aliases: \
         {gpt-4o-mini: m-a, text-embedding-3-small: all-MiniLM-L6-v2, gpt-4: m-y}\n",
    );
    dirs.add_tenant("globex", "");
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(&llm),
            ..Default::default()
        },
    );
    let acme = dirs.token("acme", "alice");
    let globex = dirs.token("globex", "bob");
    server.wait_for_token(&acme).await;
    server.wait_for_token(&globex).await;

    let (s, list) = server.get("/v1/models", &acme).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    // gpt-4o (tier) and gpt-4 (tenant) name models acme may not use: not listed.
    assert_eq!(
        ids,
        [
            "m-a",
            "all-MiniLM-L6-v2",
            "gpt-4o-mini",
            "text-embedding-3-small"
        ]
    );
    let (s, m) = server.get("/v1/models/gpt-4o-mini", &acme).await;
    assert_eq!((s, m["id"].clone()), (StatusCode::OK, json!("gpt-4o-mini")));

    // The tenant's alias wins over the tier's (gpt-4o-mini → m-a, not m-b); the upstream is
    // asked for the served model, and the answer names it.
    let questions = [
        "Summarise the Rotterdam harbour report",
        "Which colour is the Oslo ferry?",
    ];
    for (streamed, question) in [false, true].into_iter().zip(questions) {
        let calls = llm.calls();
        let body =
            json!({"model": "gpt-4o-mini", "messages": [user(question)], "stream": streamed});
        if streamed {
            let (events, _) = stream(&server, &acme, body).await;
            let first: Value = serde_json::from_str(&events[0]).expect("chunk");
            assert_eq!(first["model"], "m-a", "{first}");
        } else {
            let (s, _, v) = complete(&server, &acme, body, true).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert_eq!(v["model"], "m-a", "{v}");
        }
        assert_eq!(llm.calls(), calls + 1, "answered by the upstream");
        assert_eq!(llm.last_request()["model"], "m-a");
    }
    // /v1/chat (the RAG question) takes aliases too.
    let calls = llm.calls();
    let (s, v) = server
        .post(
            "/v1/chat",
            &acme,
            json!({"question": "How long do refunds take?", "model": "gpt-4o-mini"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(llm.calls(), calls + 1, "answered by the upstream: {v}");
    assert_eq!(llm.last_request()["model"], "m-a");

    // An embedding alias: the same vector as the model's own name.
    let embed = |token: String, model: &'static str| {
        let server = &server;
        async move {
            server
                .post(
                    "/v1/embeddings",
                    &token,
                    json!({"input": "refunds", "model": model}),
                )
                .await
        }
    };
    let (s, by_alias) = embed(acme.clone(), "text-embedding-3-small").await;
    assert_eq!(s, StatusCode::OK, "{by_alias}");
    assert_eq!(by_alias["model"], "all-MiniLM-L6-v2");
    let (_, by_name) = embed(acme.clone(), "all-MiniLM-L6-v2").await;
    assert_eq!(by_alias["data"], by_name["data"]);

    let calls = llm.calls();
    for (token, model, url) in [
        (&acme, "gpt-4", "/v1/chat/completions"),
        (&acme, "gpt-4o", "/v1/chat/completions"),
        (&globex, "text-embedding-3-small", "/v1/embeddings"),
    ] {
        let body = if url == "/v1/embeddings" {
            json!({"input": "x", "model": model})
        } else {
            json!({"model": model, "messages": [user("Hi")]})
        };
        let (s, err) = server.post(url, token, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{model}: {err}");
        assert_eq!(err["error"]["code"], "model_not_found", "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(model),
            "the refusal names what was asked for: {err}"
        );
    }
    let (s, _) = server
        .get("/v1/models/text-embedding-3-small", &globex)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another tenant's alias");
    assert_eq!(
        llm.calls(),
        calls,
        "refused requests never reach the upstream"
    );
}

const WEATHER_TOOL: &str = r#"{"type": "function", "function": {"name": "get_weather",
    "description": "The current weather in a city.", "strict": true,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": false}},
    "x-extension": {"kept": true}}"#;

fn weather_tool() -> Value {
    serde_json::from_str(WEATHER_TOOL).expect("tool")
}

/// The `tool_calls` deltas of a stream's events, in order.
fn tool_call_deltas(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| v["choices"][0]["delta"].get("tool_calls").cloned())
        .collect()
}

#[tokio::test]
async fn tools_and_structured_outputs_pass_through() {
    let llm = ScriptedLlm::start().await;
    let (dirs, server) = start(&[("acme", "")], &llm).await;
    let token = dirs.token("acme", "alice");
    let tools = json!([weather_tool()]);
    let ask = json!({"model": MODEL, "messages": [user("Oslo")], "tools": tools,
                     "tool_choice": "required", "parallel_tool_calls": false});

    // The model's tool call comes back as the upstream sent it; tools reach it unchanged.
    let (s, x_cache, r) = complete(&server, &token, ask.clone(), false).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(x_cache, "miss");
    let sent = llm.last_request();
    assert_eq!(sent["tools"], tools, "tools forwarded unchanged");
    assert_eq!(sent["tool_choice"], "required");
    assert_eq!(sent["parallel_tool_calls"], false);
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    assert_eq!(choice["message"]["content"], Value::Null, "{r}");
    let calls = choice["message"]["tool_calls"].clone();
    assert_eq!(calls[0]["function"]["name"], "get_weather", "{r}");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().expect("args"))
            .expect("JSON arguments");
    assert_eq!(args, json!({"city": "Oslo"}));
    // Not cached: the same request reaches the upstream again.
    let before = llm.calls();
    let (s, x_cache, _) = complete(&server, &token, ask.clone(), false).await;
    assert_eq!((s, x_cache.as_str()), (StatusCode::OK, "miss"));
    assert_eq!(
        llm.calls(),
        before + 1,
        "requests with tools bypass the semantic cache"
    );

    // The round trip: the assistant's call (content null) and the tool's result, forwarded
    // as sent.
    let messages = json!([
        user("Oslo"),
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "12 degrees"},
    ]);
    let (s, _, r) = complete(
        &server,
        &token,
        json!({"model": MODEL, "messages": messages, "tools": tools}),
        false,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let sent = llm.last_request();
    assert_eq!(
        sent["messages"], messages,
        "the round trip's messages forwarded unchanged"
    );
    assert_eq!(
        r["choices"][0]["message"]["content"],
        format!(
            "TOOL-RESULT[{}]: 12 degrees",
            calls[0]["id"].as_str().unwrap_or_default()
        )
    );
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(
        r["choices"][0]["message"].get("tool_calls").is_none(),
        "{r}"
    );

    // Streamed: the tool-call deltas are the upstream's, unchanged and in order.
    let (events, x_cache) = stream(
        &server,
        &token,
        json!({"model": MODEL, "messages": [user("Bergen")], "tools": tools, "stream": true}),
    )
    .await;
    assert_eq!(x_cache, "miss");
    let ours = tool_call_deltas(&events);
    let sent = llm.last_request();
    let direct = server
        .http
        .post(format!("{}/chat/completions", llm.base_url()))
        .json(&sent)
        .send()
        .await
        .expect("upstream")
        .text()
        .await
        .expect("body");
    let theirs = tool_call_deltas(&data_lines(&direct));
    assert!(ours.len() > 2, "{events:?}");
    assert_eq!(ours, theirs, "tool-call deltas passed through unchanged");
    let finishes: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .map(|v| v["choices"][0]["finish_reason"].clone())
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, vec![json!("tool_calls")]);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    // Structured outputs: the schema reaches the upstream unchanged, the JSON comes back.
    let format = json!({"type": "json_schema", "json_schema": {"name": "Weather", "strict": true,
        "schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"], "additionalProperties": false}}});
    let ask =
        json!({"model": MODEL, "messages": [user("Rain in Lima")], "response_format": format});
    for _ in 0..2 {
        let before = llm.calls();
        let (s, x_cache, r) = complete(&server, &token, ask.clone(), false).await;
        assert_eq!((s, x_cache.as_str()), (StatusCode::OK, "miss"), "{r}");
        assert_eq!(
            llm.calls(),
            before + 1,
            "a response_format bypasses the cache"
        );
        let sent = llm.last_request();
        assert_eq!(sent["response_format"], format);
        let content: Value = serde_json::from_str(
            r["choices"][0]["message"]["content"]
                .as_str()
                .expect("text"),
        )
        .expect("JSON content");
        assert_eq!(content, json!({"city": "Rain in Lima", "days": 3}));
    }
    // A refusal comes back as the refusal, streamed too.
    let refuse =
        json!({"model": MODEL, "messages": [user("[[refuse]]")], "response_format": format});
    let (_, _, r) = complete(&server, &token, refuse.clone(), false).await;
    assert_eq!(
        r["choices"][0]["message"]["refusal"], "I cannot help with that.",
        "{r}"
    );
    assert_eq!(r["choices"][0]["message"]["content"], Value::Null, "{r}");
    let mut streamed = refuse;
    streamed["stream"] = json!(true);
    let (events, _) = stream(&server, &token, streamed).await;
    let refusal: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["refusal"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(refusal, "I cannot help with that.");
}

#[tokio::test]
async fn tool_definitions_count_in_the_prompt_estimate() {
    let llm = ScriptedLlm::start().await;
    let (dirs, server) = start(&[("acme", "  quota: {tokensPerMinute: 2000}\n")], &llm).await;
    let token = dirs.token("acme", "alice");
    // A tool whose definition alone is more tokens than the tenant's minute allows.
    let mut tool = weather_tool();
    tool["function"]["description"] = json!("weather ".repeat(2500));
    let ask = json!({"model": MODEL, "messages": [user("Oslo")], "max_tokens": 10});
    let mut with_tools = ask.clone();
    with_tools["tools"] = json!([tool]);
    let (s, _, err) = complete(&server, &token, with_tools, false).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{err}");
    assert_eq!(llm.calls(), 0, "refused before the upstream");
    let mut with_schema = ask.clone();
    with_schema["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "W",
        "schema": {"type": "object", "description": "weather ".repeat(2500)}}});
    let (s, _, err) = complete(&server, &token, with_schema, false).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{err}");
    assert_eq!(llm.calls(), 0, "refused before the upstream");
    // The same request without them fits.
    let (s, _, r) = complete(&server, &token, ask, false).await;
    assert_eq!(s, StatusCode::OK, "{r}");
}

#[tokio::test]
async fn offline_the_extractive_responder_answers_tool_requests_in_text() {
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let server = Server::start(&dirs, Start::default());
    let token = dirs.token("acme", "alice");
    server.wait_for_token(&token).await;
    server.ingest(&token, "refunds", ACME_DOC).await;
    let (s, _, r) = complete(
        &server,
        &token,
        json!({"messages": [user("How do refunds work?")], "tools": [weather_tool()],
               "response_format": {"type": "json_object"}}),
        false,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["model"], "extractive");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(
        r["choices"][0]["message"].get("tool_calls").is_none(),
        "{r}"
    );
    assert!(
        r["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("30 days")),
        "{r}"
    );
}

#[tokio::test]
async fn every_response_names_its_request() {
    let llm = ScriptedLlm::start().await;
    let (dirs, server) = start(&[("acme", "")], &llm).await;
    let token = dirs.token("acme", "alice");
    let post = |path: &str, token: &str, body: Value| {
        server
            .http
            .post(server.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let responses = [
        post(
            "/v1/chat/completions",
            &token,
            json!({"messages": [user("hi")]}),
        )
        .await,
        post("/v1/chat/completions", &token, json!({"messages": []})).await,
        post(
            "/v1/chat/completions",
            "bad",
            json!({"messages": [user("hi")]}),
        )
        .await,
        post("/v1/embeddings", &token, json!({"input": "hi"})).await,
        post(
            "/v1/embeddings",
            &token,
            json!({"input": "hi", "model": "nope"}),
        )
        .await,
        server
            .http
            .get(server.url("/v1/models"))
            .bearer_auth(&token)
            .send()
            .await,
        server
            .http
            .get(server.url("/v1/models/nope"))
            .bearer_auth(&token)
            .send()
            .await,
        server.http.get(server.url("/no/such/route")).send().await,
    ];
    let mut ids = std::collections::HashSet::new();
    let mut logged = Vec::new();
    for r in responses {
        let r = r.expect("response");
        let id = header(&r, "x-request-id");
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{} {}: {id:?}",
            r.url(),
            r.status()
        );
        assert!(ids.insert(id.clone()), "ids are per request");
        logged.push(id);
    }
    // The id is the trace id of the request's log lines (the unmatched route logs none).
    let logged_ids = || -> std::collections::HashSet<String> {
        server
            .logs
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["trace_id"].as_str().map(str::to_string))
            .collect()
    };
    for _ in 0..50 {
        if logged[..logged.len() - 1]
            .iter()
            .all(|id| logged_ids().contains(id))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let in_logs = logged_ids();
    for id in &logged[..logged.len() - 1] {
        assert!(
            in_logs.contains(id),
            "request id {id} is no trace id of the logs"
        );
    }
    // The OpenAI error codes clients branch on.
    let (s, _, err) = complete(
        &server,
        &token,
        json!({"model": "nope", "messages": [user("hi")]}),
        false,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(err["error"]["code"], "model_not_found");
    let (s, _, err) = complete(&server, "bad", json!({"messages": [user("hi")]}), false).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{err}");
    assert_eq!(err["error"]["code"], "invalid_api_key");
}

#[tokio::test]
async fn slow_streams_get_keep_alive_comments() {
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(&llm),
            config: Some(dirs.config("llm:\n  streamKeepAliveSeconds: 1\n")),
            ..Default::default()
        },
    );
    let token = dirs.token("acme", "alice");
    server.wait_for_token(&token).await;
    let body = |q: &str| json!({"model": MODEL, "messages": [user(q)], "stream": true});
    let raw = |q: &str| {
        server
            .http
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .header("cache-control", "no-cache")
            .json(&body(q))
            .send()
    };
    // 2.5 s between chunks: comments in between, and the answer intact.
    let text = raw("slow [[chunk-delay:2500]]")
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert!(text.lines().any(|l| l == ": keep-alive"), "{text}");
    assert_eq!(
        streamed_text(&data_lines(&text)),
        format!("ANSWER[{MODEL}]: slow [[chunk-delay:2500]]")
    );
    // A fast stream needs none.
    let text = raw("fast")
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert!(!text.contains("keep-alive"), "{text}");
}
