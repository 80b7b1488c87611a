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
    // A limit the tenant does not have: null in `limits` and `remaining`.
    let set = statuses(&limits, &used, now_ms);
    state
        .metrics
        .record_daily_remaining(tenant.id.as_str(), &set);
    for limit in Limit::ALL {
        let key = limit.as_str().to_string();
        let status = set.iter().find(|s| s.limit == limit);
        usage.insert(key.clone(), json!(used.get(limit)));
        limit_map.insert(key.clone(), json!(status.map(|s| s.max)));
        remaining.insert(key.clone(), json!(status.map(|s| s.remaining)));
        if limit != Limit::ConcurrentRequests {
            resets.insert(key, json!(reset_at_ms(limit, now_ms) / 1000));
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
