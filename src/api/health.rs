//! `GET /healthz`, `GET /readyz`, `GET /openapi.json`, and `GET /dev/token` (only with
//! `serve --dev`).
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiJson, AppState};
use crate::domain::{TenantId, parse_duration};
use crate::quota::FailMode;

/// Liveness: the process answers.
pub async fn healthz() -> impl IntoResponse {
    ApiJson(json!({"status": "ok"}))
}

/// Readiness: tenants are loaded, the vector store is usable, and the quota store answers (a
/// Redis outage is reported but keeps the replica ready with `failOpen`).
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let tenants = state.tenants.loaded();
    let store = state.vectors.ready().await;
    let quota = state.quota.store().ping().await;
    let quota_ok = quota.is_ok() || state.quota.fail_mode() == FailMode::FailOpen;
    let ready = tenants && store.is_ok() && quota_ok;
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {
            "tenants": if tenants { "ok" } else { "loading" },
            "vector_store": if store.is_ok() { "ok" } else { "unavailable" },
            "quota": if quota.is_ok() { "ok" } else { "unavailable" },
        },
        "quota_backend": state.quota.store().backend(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, ApiJson(body))
}

/// Query of `GET /dev/token`.
#[derive(Debug, Deserialize)]
pub struct DevTokenQuery {
    /// The tenant the token is for.
    pub tenant_id: String,
    /// The user the token names (its `sub` claim).
    pub sub: String,
    /// Validity (default `1h`).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Mints a token (development only; without `--dev` the route does not exist: 404).
pub async fn dev_token(
    State(state): State<AppState>,
    query: Result<Query<DevTokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    if !state.dev {
        return Err(ApiError::NotFound(
            "no route for GET /dev/token".to_string(),
        ));
    }
    let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let ttl = parse_duration(q.ttl.as_deref().unwrap_or("1h"))
        .ok_or_else(|| ApiError::Invalid("ttl must be a duration like 1h".to_string()))?;
    let tenant = TenantId::parse(&q.tenant_id)
        .ok()
        .and_then(|id| state.tenants.get(&id))
        .ok_or_else(|| ApiError::NotFound("unknown tenant".to_string()))?;
    if !tenant.keyring.can_sign() {
        // The operator's pods mount verify-only keyrings: minting stays with the operator. As
        // without `--dev`, there is no such route here, and the message says why.
        return Err(ApiError::NotFound(format!(
            "GET /dev/token is unavailable: this server holds only the verification keys of \
             tenant {}, so it cannot mint tokens",
            tenant.id
        )));
    }
    let max = tenant.spec.auth.max_token_lifetime();
    if ttl > max {
        return Err(ApiError::Invalid(format!(
            "ttl must not exceed the tenant's maximum token lifetime ({} s)",
            max.as_secs()
        )));
    }
    let token = tenant
        .keyring
        .mint(&tenant.id, &q.sub, ttl.as_secs())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(ApiJson(json!({"token": token})))
}

/// The OpenAPI 3.1 description of the API.
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    ApiJson(super::openapi::document(
        state.embedder.model(),
        state.embedder.dimension(),
    ))
}
