//! `GET /`: the tenant console, one static page (HTML, CSS, JS embedded in the binary) that
//! works only through the public API with the tenant's token. It loads nothing from elsewhere,
//! and its Content-Security-Policy says so: scripts, styles and requests from this origin only,
//! no inline code, no framing. `/console/config.json` tells the page whether `/dev/token`
//! is on (`serve --dev`).
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The policy of the console's responses.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let headers: [(HeaderName, HeaderValue); 5] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    (headers, body)
}

/// The page.
pub async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", PAGE)
}

/// Its script.
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// Its style sheet.
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// What the page needs to know of the server: whether `/dev/token` is enabled.
pub async fn config(State(state): State<AppState>) -> impl IntoResponse {
    let body = if state.dev {
        r#"{"dev":true}"#
    } else {
        r#"{"dev":false}"#
    };
    asset("application/json", body)
}

/// No icon: an empty answer rather than a 404 in the browser's console.
pub async fn favicon() -> StatusCode {
    StatusCode::NO_CONTENT
}
