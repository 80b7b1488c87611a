//! What both long-running modes (`serve`, `operator`) need around their main job: the
//! shutdown signal, the admin router of their metrics port (OpenMetrics `/metrics`, and for a
//! leader-elected process `/healthz` and `/readyz`), noticing that mounted files changed, and
//! the binary's hook for when start-up is done.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

/// What the binary does once a long-running command has started (e.g. return the memory
/// start-up freed to the OS; the binary knows its allocator, the library does not).
static ON_STARTED: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Registers what [`started`] runs (the first registration wins).
pub fn on_started(hook: fn()) {
    let _ = ON_STARTED.set(hook);
}

/// Called once start-up is done (models loaded, caches warm), before serving.
pub fn started() {
    if let Some(hook) = ON_STARTED.get() {
        hook();
    }
}

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

/// How often watched files (tenant manifests, keyrings, TLS certificates) are checked.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// What a set of paths looked like: the modification time and size of each file, following
/// symlinks (a mounted ConfigMap or Secret swaps a `..data` link, which changes no path). A
/// folder stands for the entries directly inside it; a missing path is recorded as missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileStamp(Vec<(PathBuf, Option<(SystemTime, u64)>)>);

impl FileStamp {
    /// The stamp of `paths` now (blocking: reads file metadata).
    pub fn of<P: AsRef<Path>>(paths: &[P]) -> Self {
        let mut files = Vec::new();
        for path in paths.iter().map(AsRef::as_ref) {
            match std::fs::read_dir(path) {
                Ok(entries) => files.extend(entries.flatten().map(|e| e.path())),
                Err(_) if path.is_dir() => {}
                Err(_) => files.push(path.to_path_buf()),
            }
        }
        let mut stamp: Vec<_> = files
            .into_iter()
            .map(|file| {
                let seen = std::fs::metadata(&file)
                    .ok()
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
                (file, seen)
            })
            .collect();
        stamp.sort();
        Self(stamp)
    }
}

/// Calls `on_change` each time the stamp of `paths` differs from the last one seen (starting
/// from `seen`), checking every `every`, until the task is dropped. Both the check and
/// `on_change` run on blocking threads (they read files). The new stamp is remembered before
/// `on_change` runs, so a change that `on_change` cannot use is reported once, not on every
/// check; the next change is tried again.
pub async fn watch_files<F>(paths: Vec<PathBuf>, mut seen: FileStamp, every: Duration, on_change: F)
where
    F: Fn() + Send + Sync + 'static,
{
    let paths = Arc::new(paths);
    let on_change = Arc::new(on_change);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let watched = paths.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || FileStamp::of(&watched)).await else {
            continue;
        };
        if now == seen {
            continue;
        }
        seen = now;
        let f = on_change.clone();
        let _ = tokio::task::spawn_blocking(move || f()).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

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

    #[test]
    fn stamps_change_with_content_and_entries() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cert.pem");
        let missing = dir.path().join("nothing-here");
        let before = FileStamp::of(&[dir.path(), missing.as_path()]);
        std::fs::write(&file, "a").unwrap();
        let added = FileStamp::of(&[dir.path(), missing.as_path()]);
        assert_ne!(before, added, "a new entry in a watched folder");
        std::fs::write(&file, "abc").unwrap();
        let grown = FileStamp::of(&[dir.path(), missing.as_path()]);
        assert_ne!(added, grown, "a file that changed size");
        assert_eq!(grown, FileStamp::of(&[dir.path(), missing.as_path()]));
        assert_eq!(
            FileStamp::of(&[&file]).0.len(),
            1,
            "a file stands for itself"
        );
    }

    #[tokio::test]
    async fn on_change_runs_once_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tenant.yaml");
        std::fs::write(&file, "a").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let seen = FileStamp::of(&[dir.path()]);
        let task = tokio::spawn(watch_files(
            vec![dir.path().to_path_buf()],
            seen,
            Duration::from_millis(20),
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
            },
        ));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing changed yet");
        std::fs::write(&file, "longer").unwrap();
        for _ in 0..100 {
            if calls.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one change, one call");
        task.abort();
    }
}
