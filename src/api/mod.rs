//! The HTTP API of `serve`: state, the authenticated-caller extractor, the router and the
//! cross-cutting middleware (request log, whole-request timeout, body limit, JSON 404/405).
pub mod chat;
pub mod console;
pub mod documents;
pub mod error;
pub mod health;
pub mod openai;
pub mod openapi;
pub mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tracing::Instrument as _;

use crate::auth::{self, Principal};
use crate::config::ServeConfig;
use crate::embed::Embedder;
use crate::llm::ChatModel;
use crate::metrics::Metrics;
use crate::quota::Quota;
use crate::tenants::{Catalog, TenantConfig};
use crate::vector::{TenantVectors, VectorBackend};
pub use error::{ApiError, ApiJson};

/// Shared state of every handler. Its I/O seams are trait objects, so tests and deployments
/// choose the implementations.
#[derive(Clone)]
pub struct AppState {
    /// Known tenants and their keys.
    pub tenants: Arc<Catalog>,
    /// Vector store (tenant-agnostic; handlers reach it only through [`Caller::vectors`]).
    pub vectors: Arc<dyn VectorBackend>,
    /// Embeds questions and documents.
    pub embedder: Arc<dyn Embedder>,
    /// Answers questions (an endpoint, or the offline responder).
    pub llm: Arc<dyn ChatModel>,
    /// The metric families `serve` records into.
    pub metrics: Arc<Metrics>,
    /// The `serve` configuration (limits, model settings).
    pub config: Arc<ServeConfig>,
    /// Whether `/dev/token` is enabled.
    pub dev: bool,
    /// Quotas and rate limits (Redis or in-process).
    pub quota: Quota,
    /// Keys of the tenants' external token issuers.
    pub jwks: Arc<auth::oidc::JwksCache>,
}

impl AppState {
    /// The models and stores a chat [`crate::rag::Turn`] uses.
    pub fn rag_services(&self) -> crate::rag::Services {
        crate::rag::Services {
            embedder: self.embedder.clone(),
            llm: self.llm.clone(),
            quota: self.quota.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// An authenticated request: the verified principal, its tenant's configuration, and the
/// vector store scoped to that tenant. The only way handlers learn which tenant they serve.
pub struct Caller {
    /// Verified token subject and tenant.
    pub principal: Principal,
    /// The tenant's configuration.
    pub tenant: Arc<TenantConfig>,
    /// The vector store, confined to this tenant.
    pub vectors: TenantVectors,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let span = tracing::info_span!("auth", tenant_id = tracing::field::Empty);
        let caller = authenticate(parts, state).instrument(span.clone()).await?;
        let tenant_id = caller.principal.tenant.as_str();
        span.record("tenant_id", tenant_id);
        // The request span (see `access_log`): every later log line names the tenant.
        tracing::Span::current().record("tenant_id", tenant_id);
        Ok(caller)
    }
}

/// Verifies the bearer token and resolves the caller's tenant.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = auth::bearer(header)?;
    let principal = auth::verify_any(token, state.tenants.as_ref(), &state.jwks).await?;
    let tenant = state
        .tenants
        .get(&principal.tenant)
        .ok_or(ApiError::Unauthorized(auth::AuthError::UnknownKey))?;
    if tenant.spec.suspend {
        return Err(ApiError::Suspended);
    }
    let vectors = TenantVectors::new(
        state.vectors.clone(),
        principal.tenant.clone(),
        tenant.spec.retrieval.isolation,
        state.embedder.dimension(),
    )
    .with_owner(tenant.data_owner.clone());
    Ok(Caller {
        principal,
        tenant,
        vectors,
    })
}

/// Deserializes an optional integer that JSON may write as `41` or `41.0` (JSON Schema's
/// `integer` allows both); other fractions and out-of-range values are refused.
pub(crate) fn opt_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::Deserialize as _;
    use serde::de::Error as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let i = match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => i,
        // 2^63 as f64: anything at or above it does not fit.
        (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.223_372_036_854_776e18 => f as i64,
        _ => {
            return Err(D::Error::custom(format!(
                "invalid value {n}, expected an integer"
            )));
        }
    };
    T::try_from(i)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{i} is out of range")))
}

/// The API router (without the metrics endpoint, which listens on its own port).
pub fn router(state: AppState) -> Router {
    let limits = state.config.limits.clone();
    let routes = Router::new()
        .route(
            "/v1/chat",
            post(chat::chat).layer(middleware::from_fn_with_state(
                state.clone(),
                chat::overhead,
            )),
        )
        .route("/v1/usage", get(usage::usage))
        .route(
            "/v1/documents",
            post(documents::ingest).get(documents::list),
        )
        .route(
            "/v1/documents/{id}",
            get(documents::get_one).delete(documents::delete),
        )
        .route("/", get(console::page))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .route("/console/config.json", get(console::config))
        .route("/favicon.ico", get(console::favicon))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(health::openapi))
        .route("/dev/token", get(health::dev_token))
        .merge(openai::routes(&state))
        // A route layer sees the matched route, so the log names routes, not raw URIs.
        .route_layer(middleware::from_fn(access_log))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    layers(routes, &limits).with_state(state)
}

/// The middleware around every route and fallback, outermost first: the whole-request timeout
/// (which also marks responses `Cache-Control: no-store`), the body limit, and the panic guard
/// that turns a panicking handler into a JSON 500 instead of a dropped connection.
pub fn layers<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    limits: &crate::config::Limits,
) -> Router<S> {
    routes
        .layer(middleware::from_fn(catch_panic))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            Duration::from_secs(limits.request_timeout_seconds),
            timeout,
        ))
        .layer(middleware::from_fn(request_id))
}

/// Response header naming the request: its trace id, as in the logs (`trace_id`).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Where [`access_log`] puts the trace id of the request, for [`request_id`].
#[derive(Clone, Default)]
struct RequestId(std::sync::Arc<parking_lot::Mutex<Option<String>>>);

/// Every response, errors and timeouts included, carries `X-Request-Id`: the trace id of the
/// request's logs (a fresh id for requests that match no route).
async fn request_id(mut req: Request, next: Next) -> Response {
    let slot = RequestId::default();
    req.extensions_mut().insert(slot.clone());
    let mut resp = next.run(req).await;
    let id = slot
        .0
        .lock()
        .take()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// Runs the request; a panic on the way to the response becomes a 500 with the JSON error body
/// (the panic's message goes to the log only). A panic while a streamed body is being sent can
/// only end that response early.
async fn catch_panic(req: Request, next: Next) -> Response {
    use futures::FutureExt as _;
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(resp) => resp,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text payload".to_string());
            ApiError::Internal(format!("a request handler panicked: {what}")).into_response()
        }
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Bounds the whole request and marks every response `Cache-Control: no-store` (answers are
/// per tenant and must not be kept by shared caches).
async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let mut resp = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout.into_response(),
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Runs each request in its span (trace id, tenant; see [`crate::telemetry::request_span`])
/// and logs one line per request with the matched route (never the raw URI: it may hold ids).
async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let (span, trace_id) = crate::telemetry::request_span(&method, &route, req.headers());
    if let Some(slot) = req.extensions().get::<RequestId>() {
        *slot.0.lock() = Some(trace_id);
    }
    async move {
        let resp = next.run(req).await;
        tracing::info!(
            method = %method,
            route = %route,
            status = resp.status().as_u16(),
            latency_ms = start.elapsed().as_secs_f64() * 1000.0,
            "http request"
        );
        resp
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod router_tests;

#[cfg(test)]
mod layer_tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt as _;

    /// A route that panics, behind the layers `serve` puts around every route: a JSON 500
    /// (with the usual headers), and the router keeps serving.
    #[tokio::test]
    async fn a_panicking_handler_is_a_json_500() {
        async fn boom() -> &'static str {
            panic!("deliberate test panic")
        }
        async fn fine() -> &'static str {
            "ok"
        }
        let routes = axum::Router::new()
            .route("/boom", axum::routing::get(boom))
            .route("/fine", axum::routing::get(fine));
        let app = super::layers(routes, &crate::config::Limits::default());
        let resp = app
            .clone()
            .oneshot(Request::get("/boom").body(Body::empty()).expect("request"))
            .await
            .expect("a response, not an error");
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
        assert_eq!(v["error"]["code"], "internal");
        assert_eq!(
            v["error"]["message"], "internal error",
            "no panic text: {v}"
        );
        let resp = app
            .oneshot(Request::get("/fine").body(Body::empty()).expect("request"))
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct T {
        #[serde(default, deserialize_with = "super::opt_int")]
        n: Option<i32>,
        #[serde(default, deserialize_with = "super::opt_int")]
        u: Option<u32>,
    }

    fn parse(json: &str) -> Result<T, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_may_be_written_with_a_zero_fraction() {
        let t = parse(r#"{"n": 41.0, "u": 7}"#).expect("valid");
        assert_eq!((t.n, t.u), (Some(41), Some(7)));
        assert_eq!(parse("{}").expect("valid").n, None);
        assert_eq!(parse(r#"{"n": null}"#).expect("valid").n, None);
        assert!(
            parse(r#"{"n": 2.5}"#)
                .expect_err("refused")
                .contains("expected an integer")
        );
        assert!(
            parse(r#"{"u": -1}"#)
                .expect_err("refused")
                .contains("out of range")
        );
        assert!(
            parse(r#"{"n": 1e300}"#)
                .expect_err("refused")
                .contains("expected an integer")
        );
        assert!(parse(r#"{"n": "3"}"#).is_err());
    }
}
