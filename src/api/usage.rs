//! `GET /v1/usage`: the caller's tenant's usage in the current windows, its limits and when each
//! window resets, and what it stores against its storage limits. Only ever the caller's own
//! tenant (it comes from the verified token).
use axum::extract::State;
use serde_json::{Map, Value, json};

use super::{ApiError, ApiJson, AppState, Caller};
use crate::quota::{Limit, Limits, StorageLimits, reset_at_ms, statuses};

/// The caller's usage and limits.
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<ApiJson<Value>, ApiError> {
    let tenant = &caller.tenant;
    let limits = Limits::from(&tenant.quota);
    let (used, now_ms) = state
        .quota
        .usage(&tenant.id)
        .await
        .map_err(ApiError::QuotaUnavailable)?;
    let stored = state
        .quota
        .storage(&tenant.id)
        .await
        .map_err(ApiError::QuotaUnavailable)?;
    let storage_limits = StorageLimits::from(&tenant.quota);
    let mut usage = Map::new();
    let mut limit_map = Map::new();
    let mut remaining = Map::new();
    let mut resets = Map::new();
    for s in statuses(&limits, &used, now_ms) {
        let key = s.limit.as_str().to_string();
        usage.insert(key.clone(), json!(used.get(s.limit)));
        limit_map.insert(key.clone(), json!(s.max));
        remaining.insert(key.clone(), json!(s.remaining));
        if s.limit != Limit::ConcurrentRequests {
            resets.insert(key, json!(reset_at_ms(s.limit, now_ms) / 1000));
        }
    }
    Ok(ApiJson(json!({
        "tenant_id": tenant.id.as_str(),
        "backend": state.quota.store().backend(),
        "now": now_ms / 1000,
        "tokens_today": used.daily_tokens,
        "requests_this_minute": used.minute_requests,
        "tokens_this_minute": used.minute_tokens,
        "in_flight": used.in_flight,
        "usage": usage,
        "limits": limit_map,
        "remaining": remaining,
        "resets_at": resets,
        "storage": {
            "documents": stored.documents,
            "bytes": stored.bytes,
            "max_documents": storage_limits.max_documents,
            "max_stored_bytes": storage_limits.max_stored_bytes,
        },
    })))
}
