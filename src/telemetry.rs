//! Logs and traces.
//!
//! Logs: one JSON object per line on stdout, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]:
//! `info`, without what the embedded vector store says that means nothing to an operator), with the
//! fields log pipelines of the Python LangChain pattern already parse: `timestamp, level,
//! logger, message, trace_id, tenant_id, model, latency_ms, tokens` (the last five where known)
//! plus the event's own fields. `trace_id`, `tenant_id`
//! and `model` are inherited from the enclosing spans, so every line of a request carries the
//! request's `trace_id` (see [`request_span`]).
//!
//! Traces (cargo feature `telemetry`, on by default): when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans are exported over OTLP/gRPC and the W3C
//! `traceparent` of incoming requests is honoured and passed on to the upstream model
//! ([`traceparent_headers`]). Without it no exporter or OpenTelemetry layer is installed.
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Span fields every log line inside the span inherits (innermost span wins; the event's own
/// fields win over all).
pub const INHERITED_FIELDS: [&str; 3] = ["trace_id", "tenant_id", "model"];

/// Whether OpenTelemetry export is on (set once by [`init`]).
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported over OTLP.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// What [`init`] installed; [`Telemetry::shutdown`] flushes the spans still buffered.
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    #[cfg(feature = "telemetry")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter (no-op without one).
    pub async fn shutdown(self) {
        #[cfg(feature = "telemetry")]
        if let Some(provider) = self.provider {
            // Blocks until the batch is exported; keep it off the async workers.
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "could not flush the remaining spans");
            }
        }
    }
}

/// The log filter without `RUST_LOG`: `info`, but the embedded vector store (`qdrant_edge`)
/// only from `warn` (it logs every WAL it opens at `info`: one line per collection), and not
/// its two warnings about process-wide settings only a Qdrant server's `main` makes (feature
/// flags, the multi-mmap check), which it repeats for every collection. `RUST_LOG` replaces it
/// as a whole (e.g. `RUST_LOG=info` shows them all again).
pub const DEFAULT_FILTER: &str =
    "info,qdrant_edge=warn,qdrant_edge::common::flags=error,qdrant_edge::common::mmap=error";

/// The filter of `rust_log` (the `RUST_LOG` value), else (unset or unparsable)
/// [`DEFAULT_FILTER`].
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    rust_log
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER))
}

/// Installs the global subscriber (JSON logs, `RUST_LOG` filter, OTLP export when configured).
/// Call once, first thing in `main`, inside the Tokio runtime.
pub fn init() -> Telemetry {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let logs = tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines)
        .with_writer(std::io::stdout);
    let registry = tracing_subscriber::registry().with(filter).with(logs);
    #[cfg(feature = "telemetry")]
    {
        let (layer, provider, error) = match otel::provider() {
            Ok(Some(provider)) => (Some(otel::layer(&provider)), Some(provider), None),
            Ok(None) => (None, None, None),
            Err(e) => (None, None, Some(e)),
        };
        let installed = registry.with(layer).try_init().is_ok();
        if installed && provider.is_some() {
            TRACING.store(true, Ordering::Relaxed);
            otel::set_propagator();
            tracing::info!("OpenTelemetry traces exported over OTLP/gRPC");
        }
        if let Some(e) = error {
            tracing::warn!(error = %e, "OpenTelemetry export disabled: cannot build the OTLP exporter");
        }
        Telemetry { provider }
    }
    #[cfg(not(feature = "telemetry"))]
    {
        let _ = registry.try_init();
        Telemetry {}
    }
}

/// The span of one HTTP request: every log line and child span of the request runs inside it.
/// Its `trace_id` is the OpenTelemetry trace id when traces are exported (continuing an
/// incoming `traceparent`), else a fresh random id in the same format (32 hex digits);
/// `tenant_id` is recorded once the caller is authenticated. Returns the span and its trace id
/// (answered as `X-Request-Id`).
pub fn request_span(
    method: &axum::http::Method,
    route: &str,
    headers: &axum::http::HeaderMap,
) -> (tracing::Span, String) {
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        trace_id = tracing::field::Empty,
        tenant_id = tracing::field::Empty,
    );
    #[cfg(feature = "telemetry")]
    if !span.is_disabled()
        && tracing_enabled()
        && let Some(id) = otel::start_trace(&span, headers)
    {
        span.record("trace_id", id.as_str());
        return (span, id);
    }
    let _ = headers;
    let id = uuid::Uuid::new_v4().simple().to_string();
    span.record("trace_id", id.as_str());
    (span, id)
}

/// The W3C trace-context headers (`traceparent`, `tracestate`) of the current span, to send
/// upstream; empty when traces are not exported.
pub fn traceparent_headers() -> Vec<(String, String)> {
    #[cfg(feature = "telemetry")]
    if tracing_enabled() {
        return otel::inject_current();
    }
    Vec::new()
}

#[cfg(feature = "telemetry")]
mod otel {
    use std::collections::HashMap;

    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::Subscriber;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::registry::LookupSpan;

    fn configured() -> bool {
        [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
    }

    /// A batching OTLP/gRPC tracer provider when an endpoint is configured.
    pub(super) fn provider() -> Result<Option<SdkTracerProvider>, String> {
        if !configured() {
            return Ok(None);
        }
        // The exporter reads the endpoint, headers and timeout from the OTEL_* variables.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| e.to_string())?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("tenantry");
        }
        Ok(Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build(),
        ))
    }

    pub(super) fn layer<S>(
        provider: &SdkTracerProvider,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("tenantry"))
    }

    pub(super) fn set_propagator() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }

    /// Continues the caller's `traceparent` (if any) and returns the span's trace id.
    pub(super) fn start_trace(
        span: &tracing::Span,
        headers: &axum::http::HeaderMap,
    ) -> Option<String> {
        let carrier: HashMap<String, String> = headers
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "traceparent" | "tracestate"))
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        if !carrier.is_empty() {
            let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
            let _ = span.set_parent(parent);
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }

    pub(super) fn inject_current() -> Vec<(String, String)> {
        let cx = tracing::Span::current().context();
        let mut carrier = HashMap::new();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
        carrier.into_iter().collect()
    }
}

/// The log line format: one JSON object per line (see the module docs).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut line = Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("logger".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                // The span's fields, as formatted by `JsonFields`: a JSON object.
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    for key in INHERITED_FIELDS {
                        if let Some(v) = fields.get(key) {
                            line.insert(key.into(), v.clone());
                        }
                    }
                }
            }
        }
        event.record(&mut Fields(&mut line));
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields into the JSON line.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        if !field.name().starts_with("log.") {
            self.0.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // Milliseconds rounded to 0.01 ms.
        let value = if field.name().ends_with("_ms") {
            (value * 100.0).round() / 100.0
        } else {
            value
        };
        self.put(field, serde_json::json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The targets and messages of the events `filter` lets through, of: the embedded store's
    /// noise (as its `log` records arrive: the module path as target), one of its real
    /// warnings, and tenantry's own info.
    fn passed(filter: EnvFilter) -> Vec<String> {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::registry().with(filter).with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines)
                .with_writer(move || out.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "qdrant_edge::common::flags", "Feature flags not initialized!");
            tracing::warn!(target: "qdrant_edge::common::mmap::ops", "MULTI_MMAP_SUPPORT_CHECK_RESULT should be initialized before accessing MULTI_MMAP_IS_SUPPORTED");
            tracing::info!(target: "qdrant_edge::wal", "Wal {{ path: \"/data/tenant_acme_docs/wal\" }}: opened");
            tracing::warn!(target: "qdrant_edge::shard::segment_holder", "segment failed to load");
            tracing::info!(target: "tenantry::operator", "operator started");
            tracing::debug!(target: "tenantry::operator", "details");
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("json line");
                format!(
                    "{} {}",
                    v["logger"].as_str().unwrap_or_default(),
                    v["message"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn the_default_filter_drops_the_vector_stores_noise_and_rust_log_brings_it_back() {
        let default = passed(filter(None));
        assert_eq!(
            default,
            [
                "qdrant_edge::shard::segment_holder segment failed to load",
                "tenantry::operator operator started",
            ],
            "the store's real warnings stay"
        );
        assert_eq!(passed(filter(Some(""))), default, "empty is unset");
        assert_eq!(
            passed(filter(Some("not a filter=="))),
            default,
            "unparsable"
        );
        let all = passed(filter(Some("info")));
        assert_eq!(all.len(), 5, "{all:?}");
        assert!(
            all.iter()
                .any(|l| l.contains("Feature flags not initialized!"))
        );
        assert!(all.iter().any(|l| l.ends_with(": opened")));
        let debug = passed(filter(Some("warn,tenantry=debug")));
        assert_eq!(debug.len(), 5, "{debug:?}");
        assert!(debug.iter().any(|l| l.ends_with("details")), "{debug:?}");
    }

    #[test]
    fn lines_are_json_with_the_request_fields() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines)
                .with_writer(move || out.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = request_span(
                &axum::http::Method::POST,
                "/v1/chat",
                &axum::http::HeaderMap::new(),
            );
            let _request = span.0.enter();
            tracing::Span::current().record("tenant_id", "acme");
            let llm = tracing::info_span!("llm", gen_ai.system = "openai");
            let _llm = llm.enter();
            tracing::info!(model = "m", latency_ms = 1.23456, tokens = 5u64, "done");
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: Value = serde_json::from_str(text.trim()).expect("one JSON object");
        assert_eq!(v["message"], "done");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["logger"], "tenantry::telemetry::tests");
        assert_eq!(v["tenant_id"], "acme");
        assert_eq!(v["model"], "m");
        assert_eq!(v["latency_ms"], 1.23);
        assert_eq!(v["tokens"], 5);
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{v}"
        );
        let id = v["trace_id"].as_str().expect("trace_id");
        assert!(
            id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        // Other span fields stay in the span.
        assert!(v.get("gen_ai.system").is_none(), "{v}");
    }
}
