//! `GET /v1/models` and `GET /v1/models/{model}`: the models the caller's tenant may use (its
//! chat models, the embedding model, then their aliases).
use axum::Json;
use axum::extract::{Path, State};

use super::types::{List, Model};
use crate::api::{ApiError, AppState, Caller};

/// The tenant's chat models, the embedding model, then the aliases of either (an alias whose
/// model the tenant may not use is not listed: requesting it is refused).
fn model_ids(state: &AppState, caller: &Caller) -> Vec<String> {
    let tenant = &caller.tenant;
    let mut ids = tenant.allowed_models.clone();
    let embedding = state.embedder.model().to_string();
    if !ids.contains(&embedding) {
        ids.push(embedding.clone());
    }
    for (alias, target) in &tenant.model_aliases {
        if (tenant.model_allowed(target) || *target == embedding) && !ids.contains(alias) {
            ids.push(alias.clone());
        }
    }
    ids
}

impl Model {
    fn new(id: String) -> Self {
        Self {
            id,
            object: "model",
            created: 0,
            owned_by: "tenantry",
        }
    }
}

/// `GET /v1/models`: the chat models the tenant may use, the embedding model, then aliases.
pub async fn models(State(state): State<AppState>, caller: Caller) -> Json<List<Model>> {
    Json(List {
        object: "list",
        data: model_ids(&state, &caller)
            .into_iter()
            .map(Model::new)
            .collect(),
        model: None,
        usage: None,
    })
}

/// `GET /v1/models/{model}`.
pub async fn model(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Model>, ApiError> {
    if model_ids(&state, &caller).contains(&id) {
        Ok(Json(Model::new(id)))
    } else {
        Err(ApiError::NotFound(format!("model {id:?} is not available")))
    }
}
