//! The OpenAI-compatible surface: `POST /v1/chat/completions` (JSON or server-sent events),
//! `GET /v1/models`, `GET /v1/models/{model}` and `POST /v1/embeddings`. The tenant's JWT is
//! the API key, so an unmodified OpenAI SDK works with `base_url=<endpoint>/v1`.
//!
//! This file holds the routes; [`types`] the wire types, [`params`] the parameter validation,
//! and one file per endpoint ([`completions`], its [`stream`], [`embeddings`], [`models`]).
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod params;
pub mod stream;
pub mod types;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

pub use completions::chat_completions;
pub use embeddings::embeddings;
pub use models::{model, models};

use super::{AppState, chat};

/// On this surface a request the API cannot take is a 400 (as OpenAI answers), not a 422.
pub async fn openai_status(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::UNPROCESSABLE_ENTITY {
        *resp.status_mut() = StatusCode::BAD_REQUEST;
    }
    resp
}

/// The routes of the OpenAI-compatible surface.
pub fn routes(state: &AppState) -> Router<AppState> {
    let status = || middleware::from_fn(openai_status);
    Router::new()
        .route(
            "/v1/chat/completions",
            post(chat_completions)
                .layer(status())
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    chat::overhead,
                )),
        )
        .route("/v1/models", get(models).layer(status()))
        .route("/v1/models/{model}", get(model).layer(status()))
        .route("/v1/embeddings", post(embeddings).layer(status()))
}
