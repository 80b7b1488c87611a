//! HTTP errors: one enum, one JSON body shape `{"error": {"code", "message"}}`, and a JSON
//! extractor whose rejections use the same shape.
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::auth::AuthError;
use crate::embed::EmbedError;
use crate::llm::LlmError;
use crate::quota::{Limit, QuotaError, RateLimited, StorageLimit, statuses};
use crate::vector::VectorError;

/// Every error the API returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: missing, malformed, expired or wrongly signed token (503 for
    /// [`AuthError::KeysUnavailable`]). The body says [`UNAUTHORIZED_MESSAGE`] whatever the
    /// reason, which goes to the log only.
    #[error("{}", auth_message(.0))]
    Unauthorized(#[from] AuthError),
    /// 403: the tenant is suspended.
    #[error("tenant is suspended")]
    Suspended,
    /// 404 (as OpenAI answers an unknown model): the model is not in the tenant's allow-list.
    #[error("the model {0:?} does not exist or is not available to this tenant")]
    ModelNotAllowed(String),
    /// 404: no such resource (for this tenant).
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists with another method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: body larger than the limit.
    #[error("request body is too large")]
    TooLarge,
    /// 415: body is not JSON.
    #[error("expected a JSON body (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// 422: the body is not valid JSON or does not match the schema, or a value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// 422: one request parameter is invalid or unsupported (named in the body's `param`).
    #[error("{message}")]
    BadParam {
        /// The parameter, e.g. `messages` or `temperature`.
        param: String,
        /// What is wrong with it.
        message: String,
    },
    /// 429: a quota or rate limit would be exceeded; `Retry-After` and `X-RateLimit-*` headers
    /// say when to retry.
    #[error("{} limit exceeded: {} of {} used; retry in {} s", .0.limit, .0.used.get(.0.limit), .0.limits.get(.0.limit).unwrap_or_default(), retry_after(.0))]
    RateLimited(Box<RateLimited>),
    /// 403: storing the document would pass a storage limit (`maxDocuments`,
    /// `maxStoredBytes`); waiting does not help, deleting documents does.
    #[error("{limit} limit of {max} exceeded: {stored} stored; delete documents to make room")]
    StorageLimited {
        /// The limit.
        limit: StorageLimit,
        /// Its value.
        max: u64,
        /// What is stored now.
        stored: u64,
    },
    /// 503: the quota store is unreachable and the fail mode is `failClosed`.
    #[error("quota service unavailable; try again later")]
    QuotaUnavailable(#[source] QuotaError),
    /// 502 / 504: the chat model failed or timed out.
    #[error(transparent)]
    Upstream(#[from] LlmError),
    /// 503: the vector store is down.
    #[error("vector store unavailable")]
    Store(#[source] VectorError),
    /// 503: the embedding model failed.
    #[error("embedding failed")]
    Embedding(#[source] EmbedError),
    /// 504: the whole request took longer than the configured limit.
    #[error("request timed out")]
    Timeout,
    /// 500: a bug or an unexpected condition; details only in the log.
    #[error("internal error")]
    Internal(String),
}

/// The message of every 401: one text for every reason a token is refused, so a caller without
/// a valid token cannot tell unknown tenants, keys or algorithms from bad signatures.
pub const UNAUTHORIZED_MESSAGE: &str = "missing or invalid bearer token";

fn auth_message(e: &AuthError) -> String {
    match e {
        // A valid token may be behind this one: saying so is all it tells.
        AuthError::KeysUnavailable => e.to_string(),
        _ => UNAUTHORIZED_MESSAGE.to_string(),
    }
}

impl From<VectorError> for ApiError {
    /// An unreachable or locked store is a 503; an operation the store refuses (e.g. a vector
    /// of another dimension than the collection's: a configuration error) is a 500.
    fn from(e: VectorError) -> Self {
        match e {
            VectorError::Invalid(msg) => Self::Internal(format!("vector store refused: {msg}")),
            other => Self::Store(other),
        }
    }
}

impl From<EmbedError> for ApiError {
    fn from(e: EmbedError) -> Self {
        Self::Embedding(e)
    }
}

impl From<crate::rag::Error> for ApiError {
    fn from(e: crate::rag::Error) -> Self {
        use crate::rag::Error;
        match e {
            Error::Embedding(e) => Self::Embedding(e),
            Error::Store(e) => e.into(),
            Error::Upstream(e) => Self::Upstream(e),
            Error::RateLimited(r) => Self::RateLimited(r),
            Error::QuotaUnavailable(e) => Self::QuotaUnavailable(e),
            Error::Internal(e) => Self::Internal(e),
        }
    }
}

impl ApiError {
    /// HTTP status of this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized(AuthError::KeysUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Suspended | Self::StorageLimited { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::ModelNotAllowed(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Invalid(_) | Self::BadParam { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Upstream(LlmError::Timeout) | Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Store(_) | Self::Embedding(_) | Self::QuotaUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(AuthError::KeysUnavailable) => "issuer_keys_unavailable",
            Self::Unauthorized(_) => "invalid_api_key",
            Self::Suspended => "tenant_suspended",
            Self::ModelNotAllowed(_) => "model_not_found",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Invalid(_) | Self::BadParam { .. } => "invalid_request",
            Self::Upstream(LlmError::Timeout) => "upstream_timeout",
            Self::Upstream(_) => "upstream_error",
            // OpenAI's codes: the daily budget is a quota (waiting a minute does not help).
            Self::RateLimited(r) if r.limit == Limit::DailyTokens => "insufficient_quota",
            Self::RateLimited(_) => "rate_limit_exceeded",
            Self::StorageLimited { .. } => "storage_limit_exceeded",
            Self::QuotaUnavailable(_) => "quota_unavailable",
            Self::Store(_) => "store_unavailable",
            Self::Embedding(_) => "embedding_unavailable",
            Self::Timeout => "timeout",
            Self::Internal(_) => "internal",
        }
    }
}

impl ApiError {
    /// The error's class in OpenAI's taxonomy (`type` in the body), so OpenAI SDKs raise the
    /// matching exception.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Unauthorized(AuthError::KeysUnavailable) => "server_error",
            Self::Unauthorized(_) => "authentication_error",
            Self::Suspended | Self::StorageLimited { .. } => "permission_error",
            Self::NotFound(_) => "not_found_error",
            Self::ModelNotAllowed(_) => "invalid_request_error",
            Self::MethodNotAllowed
            | Self::TooLarge
            | Self::UnsupportedMediaType
            | Self::Invalid(_)
            | Self::BadParam { .. } => "invalid_request_error",
            Self::RateLimited(r) if r.limit == Limit::DailyTokens => "insufficient_quota",
            Self::RateLimited(_) => "rate_limit_error",
            Self::Upstream(_) | Self::Timeout => "upstream_error",
            Self::QuotaUnavailable(_) | Self::Store(_) | Self::Embedding(_) | Self::Internal(_) => {
                "server_error"
            }
        }
    }

    /// The request parameter at fault, when one is.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::BadParam { param, .. } => Some(param),
            Self::ModelNotAllowed(_) => Some("model"),
            _ => None,
        }
    }
}

impl ApiError {
    /// The JSON error body: `code` and `message` as everywhere; `type` and `param` as in
    /// OpenAI's error bodies.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "code": self.code(),
            "message": self.to_string(),
            "type": self.error_type(),
            "param": self.param(),
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if let Self::Unauthorized(reason) = &self {
            tracing::info!(code = self.code(), reason = %reason, "token refused");
        }
        if status.is_server_error() {
            // The body stays generic; the cause goes to the log only.
            let cause = match &self {
                Self::Store(e) => e.to_string(),
                Self::Embedding(e) => e.to_string(),
                Self::QuotaUnavailable(e) => e.to_string(),
                Self::Internal(e) => e.clone(),
                other => other.to_string(),
            };
            tracing::error!(code = self.code(), status = status.as_u16(), error = %cause, "request failed");
        }
        let mut body = self.body();
        let headers = match &self {
            Self::RateLimited(r) => {
                body["error"]["limit"] = json!(r.limit.as_str());
                rate_limit_headers(r)
            }
            Self::StorageLimited { limit, .. } => {
                body["error"]["limit"] = json!(limit.as_str());
                HeaderMap::new()
            }
            _ => HeaderMap::new(),
        };
        (status, headers, axum::Json(body)).into_response()
    }
}

/// Seconds until the window of the limit hit resets (at least 1).
fn retry_after(r: &RateLimited) -> u64 {
    crate::quota::reset_at_ms(r.limit, r.now_ms)
        .saturating_sub(r.now_ms)
        .div_ceil(1000)
        .max(1)
}

/// `Retry-After`, `X-RateLimit-Limit/Remaining/Reset` of the limit hit, and the same three per
/// limit (`X-RateLimit-Limit-Requests`, `-Tokens`, `-Tokens-Day`, `-Concurrent`).
fn rate_limit_headers(r: &RateLimited) -> HeaderMap {
    let all = statuses(&r.limits, &r.used, r.now_ms);
    let mut h = statuses_headers(&all);
    let hit = all.into_iter().find(|s| s.limit == r.limit);
    if let Some(s) = hit {
        h.insert("x-ratelimit-limit", HeaderValue::from(s.max));
        h.insert("x-ratelimit-remaining", HeaderValue::from(s.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(s.reset_seconds));
    }
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after(r)));
    // The daily budget resets at midnight UTC: OpenAI's SDKs should not retry (they do on a
    // 429 unless told so).
    if r.limit == Limit::DailyTokens {
        h.insert("x-should-retry", HeaderValue::from_static("false"));
    }
    h
}

/// A duration in OpenAI's rate-limit header format (Go's): `20ms`, `1s`, `6m0s`, `1h2m3s`.
pub fn openai_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms.div_ceil(1000);
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

/// The per-limit `X-RateLimit-{Limit,Remaining,Reset}-<limit>` headers. Resets are in seconds,
/// but for `-Requests` and `-Tokens`, which OpenAI's clients read: OpenAI's duration format
/// ([`openai_duration`]).
pub fn statuses_headers(statuses: &[crate::quota::LimitStatus]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for s in statuses {
        let suffix = s.limit.header_suffix().to_ascii_lowercase();
        for (name, value) in [("limit", s.max), ("remaining", s.remaining)] {
            if let Ok(n) = HeaderName::try_from(format!("x-ratelimit-{name}-{suffix}")) {
                h.insert(n, HeaderValue::from(value));
            }
        }
        let reset = match s.limit {
            Limit::RequestsPerMinute | Limit::TokensPerMinute => {
                openai_duration(s.reset_seconds.saturating_mul(1000))
            }
            _ => s.reset_seconds.to_string(),
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(format!("x-ratelimit-reset-{suffix}")),
            HeaderValue::try_from(reset),
        ) {
            h.insert(n, v);
        }
    }
    h
}

/// `axum::Json` whose rejections are [`ApiError`]s (422/413/415 with the JSON error body).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let map = |rejection: JsonRejection| match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
            r => ApiError::Invalid(r.body_text()),
        };
        // Content type first (415, as axum's `Json` decides it), then the body (413 when over
        // the limit).
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let mime = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge
                } else {
                    ApiError::Invalid(r.body_text())
                }
            })?;
        // A JSON object, nothing else: serde would also read a struct from an array.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|&b| b != b'{') {
            return Err(ApiError::Invalid(
                "the body must be a JSON object".to_string(),
            ));
        }
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(v)| Self(v))
            .map_err(map)
    }
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod store_error_tests {
    use super::*;

    #[test]
    fn durations_are_written_as_openai_writes_them() {
        for (ms, text) in [
            (20, "20ms"),
            (1000, "1s"),
            (1001, "2s"),
            (59_000, "59s"),
            (360_000, "6m0s"),
            (3_723_000, "1h2m3s"),
        ] {
            assert_eq!(openai_duration(ms), text);
        }
    }

    #[test]
    fn store_outages_are_503_and_refusals_are_500() {
        let down = ApiError::from(VectorError::Unavailable("connection refused".into()));
        assert_eq!(down.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.code(), "store_unavailable");
        let refused = ApiError::from(VectorError::Invalid("dimension 3 != 384".into()));
        assert_eq!(refused.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            refused.to_string(),
            "internal error",
            "no internals in the body"
        );
    }
}
