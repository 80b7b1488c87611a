//! Process helpers both long-running modes (`serve`, `operator`) share: the shutdown signal and
//! the admin router of their metrics port (OpenMetrics `/metrics`, and for a leader-elected
//! process `/healthz` and `/readyz`).
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// A `/metrics` response: `body` (text exposition) with the OpenMetrics content type.
pub fn openmetrics(body: String) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// The admin router: `GET /metrics` answers with what `encode` renders. With `leader` (a
/// leader-elected process), also `GET /healthz` (alive) and `GET /readyz`, which reports
/// whether this replica currently holds the Lease (a standby is ready too: it takes over).
pub fn admin_router<E>(encode: E, leader: Option<watch::Receiver<bool>>) -> Router
where
    E: Fn() -> String + Clone + Send + Sync + 'static,
{
    let metrics = Router::new().route(
        "/metrics",
        get(move || {
            let encode = encode.clone();
            async move { openmetrics(encode()) }
        }),
    );
    let Some(leading) = leader else {
        return metrics;
    };
    metrics
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let leader = *leading.borrow();
                async move { axum::Json(serde_json::json!({"status": "ready", "leader": leader})) }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    async fn get(router: Router, path: &str) -> (StatusCode, String, String) {
        let resp = router
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).to_string(),
        )
    }

    #[tokio::test]
    async fn metrics_only_without_a_leader_flag() {
        let router = admin_router(|| "m_total 1\n".to_string(), None);
        let (status, content_type, body) = get(router.clone(), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with("application/openmetrics-text"));
        assert_eq!(body, "m_total 1\n");
        assert_eq!(get(router, "/readyz").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn readyz_reports_leadership() {
        let (tx, rx) = watch::channel(false);
        let router = admin_router(String::new, Some(rx));
        assert_eq!(get(router.clone(), "/healthz").await.0, StatusCode::OK);
        let (_, _, body) = get(router.clone(), "/readyz").await;
        assert!(body.contains(r#""leader":false"#), "{body}");
        tx.send(true).expect("send");
        let (_, _, body) = get(router, "/readyz").await;
        assert!(body.contains(r#""leader":true"#), "{body}");
    }
}
