//! Observability of a real `tenantry serve`: the gateway-overhead header and metric, the JSON
//! log lines and their trace ids, and OpenTelemetry traces exported over OTLP/gRPC to a real
//! receiver on loopback.
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::llm::ScriptedLlm;
use common::server::{Dirs, Server, Start};
use serde_json::{Value, json};

const DOC: &str = "The vault code word is PERIWINKLE-ELEPHANT-42. Acme customers may return any product within 30 days for a full refund.";
const QUESTION: &str = "What is the refund policy?";

#[cfg(feature = "telemetry")]
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The parsed JSON log lines (every line must be one JSON object).
fn log_lines(server_logs: &Arc<Mutex<Vec<String>>>) -> Vec<Value> {
    server_logs
        .lock()
        .expect("logs")
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(v.is_object(), "not an object: {l}");
            v
        })
        .collect()
}

/// Waits until a log line matches `pred` (the logs are read by a thread).
async fn wait_for_line(
    server_logs: &Arc<Mutex<Vec<String>>>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..100 {
        if let Some(v) = log_lines(server_logs).into_iter().find(|v| pred(v)) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no such log line in:\n{}",
        server_logs.lock().expect("logs").join("\n")
    );
}

fn overhead_ms(resp: &reqwest::Response) -> f64 {
    resp.headers()
        .get("x-tenantry-overhead-ms")
        .expect("X-Tenantry-Overhead-Ms header")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}

/// `X-Tenantry-Overhead-Ms` is on successful and failed chats, excludes the upstream call, and
/// `llm_gateway_overhead_seconds{tenant_id}` counts every chat of the tenant.
#[tokio::test]
async fn overhead_header_and_metric() {
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
    server.ingest(&t, "refunds", DOC).await;

    // The upstream takes 300 ms: the overhead must not include it.
    let started = Instant::now();
    let resp = server
        .http
        .post(server.url("/v1/chat"))
        .bearer_auth(&t)
        .json(&json!({"question": format!("{QUESTION} [[delay:300]]")}))
        .send()
        .await
        .expect("chat");
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(resp.status().as_u16(), 200);
    let overhead = overhead_ms(&resp);
    assert!(
        overhead >= 0.0 && overhead <= total_ms - 250.0,
        "overhead {overhead} ms of {total_ms} ms"
    );

    // An upstream error still answers the header.
    let started = Instant::now();
    let resp = server
        .http
        .post(server.url("/v1/chat"))
        .bearer_auth(&t)
        .json(&json!({"question": QUESTION, "model": "fail-500"}))
        .send()
        .await
        .expect("chat");
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(resp.status().as_u16(), 502);
    let overhead = overhead_ms(&resp);
    assert!(
        (0.0..=total_ms).contains(&overhead),
        "{overhead} of {total_ms}"
    );

    let metrics = server.metrics().await;
    for needle in [
        "# TYPE llm_gateway_overhead_seconds histogram",
        r#"llm_gateway_overhead_seconds_bucket{le="0.0005",tenant_id="acme"}"#,
        r#"llm_gateway_overhead_seconds_bucket{le="0.5",tenant_id="acme"}"#,
        r#"llm_gateway_overhead_seconds_count{tenant_id="acme"} 2"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }
}

/// Logs are one JSON object per line with the seed's fields; every line of a request shares
/// its per-request trace id; no token or document text is logged.
#[tokio::test]
async fn json_logs_carry_the_seed_fields_and_one_trace_id_per_request() {
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(&llm),
            ..Default::default()
        },
    );
    let t = dirs.token("acme", "alice");
    server.ingest(&t, "vault", DOC).await;
    let (s, body) = server.chat(&t, "What is the vault code word?").await;
    assert_eq!(s, StatusCode::OK, "{body}");

    let done = wait_for_line(&server.logs, |v| v["message"] == "LLM request completed").await;
    for field in [
        "timestamp",
        "level",
        "logger",
        "message",
        "trace_id",
        "tenant_id",
        "model",
        "latency_ms",
        "tokens",
    ] {
        assert!(!done[field].is_null(), "{field} missing in {done}");
    }
    assert_eq!(done["level"], "INFO");
    assert_eq!(done["logger"], "tenantry::api::chat");
    assert_eq!(done["tenant_id"], "acme");
    assert_eq!(done["model"], "gpt-4o-mini");
    assert!(done["latency_ms"].as_f64().expect("latency_ms") >= 0.0);
    assert!(done["tokens"].as_u64().expect("tokens") > 0);
    let trace_id = done["trace_id"].as_str().expect("trace_id").to_string();
    assert!(
        trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{trace_id}"
    );

    let access = wait_for_line(&server.logs, |v| {
        v["message"] == "http request" && v["route"] == "/v1/chat"
    })
    .await;
    assert_eq!(access["trace_id"], trace_id.as_str(), "{access}");
    assert_eq!(access["tenant_id"], "acme", "{access}");
    // Another request has another trace id.
    let ingest = wait_for_line(&server.logs, |v| {
        v["message"] == "http request" && v["route"] == "/v1/documents"
    })
    .await;
    assert_ne!(ingest["trace_id"], trace_id.as_str());
    // No tracing when no endpoint is configured: nothing propagated upstream.
    let headers = llm.request_headers.lock().expect("headers").clone();
    assert!(headers.iter().all(|h| h.get("traceparent").is_none()));

    let logs = server.logs.lock().expect("logs").join("\n");
    assert!(!logs.contains(&t), "token leaked into logs");
    assert!(
        !logs.contains("PERIWINKLE") && !logs.contains("vault code word"),
        "document or question text leaked into logs:\n{logs}"
    );
}

/// OpenTelemetry export (only built with the `telemetry` feature).
#[cfg(feature = "telemetry")]
mod otlp {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::Span;

    /// A real OTLP/gRPC trace receiver: keeps every span it is sent.
    #[derive(Clone, Default)]
    struct Receiver {
        spans: Arc<Mutex<Vec<Span>>>,
    }

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut spans = self.spans.lock().expect("spans");
            for rs in request.into_inner().resource_spans {
                for ss in rs.scope_spans {
                    spans.extend(ss.spans);
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    fn attr(span: &Span, key: &str) -> Option<any_value::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }

    fn attr_str(span: &Span, key: &str) -> Option<String> {
        match attr(span, key)? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    fn attr_int(span: &Span, key: &str) -> Option<i64> {
        match attr(span, key)? {
            any_value::Value::IntValue(i) => Some(i),
            _ => None,
        }
    }

    /// With `OTEL_EXPORTER_OTLP_ENDPOINT`, a chat is one trace: the request span with children
    /// auth, retrieve, quota and llm (GenAI attributes), flushed on shutdown; its trace id is the
    /// log lines' and the one in the `traceparent` sent to the upstream model.
    // Multi-threaded: the receiver must keep serving while the test blocks on the shutdown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn otlp_traces_cover_the_stages_and_match_logs_and_upstream() {
        let receiver = Receiver::default();
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().expect("addr"))
                .expect("bind");
        let otlp_addr = incoming.local_addr().expect("addr");
        let grpc = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(incoming);
        tokio::spawn(grpc);

        let llm = ScriptedLlm::start().await;
        let dirs = Dirs::new();
        dirs.add_tenant("acme", "");
        let server = Server::start(
            &dirs,
            Start {
                llm: Some(&llm),
                env: vec![(
                    "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
                    format!("http://{otlp_addr}"),
                )],
                ..Default::default()
            },
        );
        let t = dirs.token("acme", "alice");
        server.ingest(&t, "refunds", DOC).await;
        let (s, body) = server.chat(&t, QUESTION).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let logs = server.logs.clone();
        let done = wait_for_line(&logs, |v| v["message"] == "LLM request completed").await;
        let log_trace_id = done["trace_id"].as_str().expect("trace_id").to_string();
        // Spans are batched; a clean shutdown flushes them.
        server.stop();

        let spans = receiver.spans.lock().expect("spans").clone();
        let llm_span = spans.iter().find(|s| s.name == "llm").unwrap_or_else(|| {
            panic!(
                "no llm span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
        let trace_id = hex(&llm_span.trace_id);
        assert_eq!(trace_id, log_trace_id, "log trace_id is not the span's");

        let in_trace: Vec<&Span> = spans
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect();
        let root = in_trace
            .iter()
            .find(|s| s.name == "POST /v1/chat")
            .expect("request span");
        assert!(root.parent_span_id.is_empty(), "request span has a parent");
        for stage in ["auth", "retrieve", "quota", "llm"] {
            let span = in_trace
                .iter()
                .find(|s| s.name == stage)
                .unwrap_or_else(|| panic!("no {stage} span in the chat's trace"));
            assert_eq!(span.parent_span_id, root.span_id, "{stage} is not a child");
        }
        assert!(
            !in_trace.iter().any(|s| s.name == "cache"),
            "no cache stage exists yet"
        );

        assert_eq!(
            attr_str(llm_span, "gen_ai.operation.name").as_deref(),
            Some("chat")
        );
        assert_eq!(
            attr_str(llm_span, "gen_ai.system").as_deref(),
            Some("openai")
        );
        assert_eq!(
            attr_str(llm_span, "gen_ai.request.model").as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(
            attr_str(llm_span, "gen_ai.response.model").as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(attr_str(llm_span, "tenant_id").as_deref(), Some("acme"));
        let input = attr_int(llm_span, "gen_ai.usage.input_tokens").expect("input tokens");
        let output = attr_int(llm_span, "gen_ai.usage.output_tokens").expect("output tokens");
        assert!(input > 0, "{input}");
        assert_eq!(output, 7);
        assert_eq!(
            done["tokens"].as_i64().expect("tokens"),
            input + output,
            "log and span disagree"
        );

        // The upstream got the llm span's W3C trace context.
        let headers = llm.request_headers.lock().expect("headers").clone();
        let traceparent = headers
            .last()
            .and_then(|h| h.get("traceparent"))
            .expect("traceparent sent upstream")
            .to_str()
            .expect("ascii")
            .to_string();
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[1], trace_id, "{traceparent}");
        assert_eq!(parts[2], hex(&llm_span.span_id), "{traceparent}");
    }
}
