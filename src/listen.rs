//! The listeners of `serve` (the API port, plain HTTP or TLS, and the metrics port): accepts
//! connections up to a cap and serves them with hyper (HTTP/1.1 and HTTP/2), closing those that
//! hold a socket without using it.
//!
//! Each connection is watched:
//! - it must deliver a complete request head within `headerReadTimeoutSeconds` of opening (the
//!   TLS handshake included, on the TLS port), and later within that time of the first byte
//!   that follows a finished request — a client sending its headers byte by byte is closed;
//! - with no request in flight and no byte received for `idleTimeoutSeconds`, it is closed;
//! - while a request is in flight the whole-request timeout (`limits.requestTimeoutSeconds`)
//!   bounds it instead.
//!
//! A listener holds at most `maxConnections` connections; one beyond is closed at once. On
//! shutdown the listener stops accepting, open connections finish their requests (HTTP/2 gets a
//! GOAWAY), and [`serve`] returns when the last one is closed.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum_server::accept::Accept as _;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::config::ListenerConfig;

/// The limits every connection of a listener is held to (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time to deliver a complete request head.
    pub header_read_timeout: Duration,
    /// Time a connection may sit with no request in flight and no byte received.
    pub idle_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

impl From<&ListenerConfig> for Limits {
    fn from(c: &ListenerConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(c.header_read_timeout_seconds),
            idle_timeout: Duration::from_secs(c.idle_timeout_seconds),
            max_connections: c.max_connections.max(1),
        }
    }
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` resolves, then lets
/// open connections finish and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<RustlsConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    let mut refused = Refusals::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refused.one(limits.max_connections);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (router, tls, stopping) = (router.clone(), tls.clone(), stopping.clone());
        tokio::spawn(async move {
            connection(tcp, router, tls, limits, stopping).await;
            drop(permit);
        });
    }
    let _ = stop.send(true);
    drop(listener);
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = open.acquire_many(all).await;
    Ok(())
}

/// Counts connections refused over the cap and logs them at most every ten seconds.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn one(&mut self, cap: usize) {
        self.since_log += 1;
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                max_connections = cap,
                refused = self.since_log,
                "connection limit reached: closing new connections"
            );
            self.logged = Some(Instant::now());
            self.since_log = 0;
        }
    }
}

/// One accepted connection, from the TLS handshake (if any) to its end.
async fn connection(
    tcp: tokio::net::TcpStream,
    router: Router,
    tls: Option<RustlsConfig>,
    limits: Limits,
    stopping: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = Watched {
        io: tcp,
        activity: activity.clone(),
    };
    match tls {
        None => http(io, router, activity, limits, stopping).await,
        Some(config) => {
            let acceptor =
                RustlsAcceptor::new(config).handshake_timeout(limits.header_read_timeout);
            let handshake = tokio::select! {
                done = acceptor.accept(io, ()) => done,
                _ = activity.expired(limits) => return,
            };
            match handshake {
                Ok((stream, _)) => http(stream, router, activity, limits, stopping).await,
                Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
            }
        }
    }
}

/// Serves HTTP on one connection until it ends, outstays its limits, or — after shutdown began —
/// has finished its requests.
async fn http<I>(
    io: I,
    router: Router,
    activity: Arc<Activity>,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let per_request = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let done = InFlight::start(per_request.clone());
        let router = router.clone();
        async move {
            let resp = router.oneshot(req).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| Guarded { body, _done: done }))
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    // Request heads are timed by the watchdog below, for HTTP/1.1 and HTTP/2 alike.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let expired = activity.expired(limits);
    tokio::pin!(expired);
    if !*stopping.borrow_and_update() {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            why = &mut expired => {
                tracing::debug!(reason = why, "closing a connection");
                return;
            }
            _ = stopping.changed() => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn => {}
        _ = expired => {}
    }
}

/// What a connection is doing, as its watchdog sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a complete request head since then (opened, or bytes after an idle spell).
    Head(Instant),
    /// No request in flight and nothing received since then.
    Idle(Instant),
    /// This many requests in flight.
    Busy(usize),
}

/// The phase of one connection, updated by its I/O and its requests.
struct Activity {
    phase: parking_lot::Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            phase: parking_lot::Mutex::new(Phase::Head(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock() = phase;
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection starts a request head.
    fn received(&self) {
        let mut phase = self.phase.lock();
        if matches!(*phase, Phase::Idle(_)) {
            *phase = Phase::Head(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        let next = match *self.phase.lock() {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
        self.set(next);
    }

    fn request_done(&self) {
        let next = match *self.phase.lock() {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        };
        self.set(next);
    }

    /// Resolves (with the reason) once the connection outstays its limits.
    async fn expired(&self, limits: Limits) -> &'static str {
        loop {
            let changed = self.changed.notified();
            let phase = *self.phase.lock();
            let (deadline, why) = match phase {
                Phase::Head(t) => (t + limits.header_read_timeout, "header read timeout"),
                Phase::Idle(t) => (t + limits.idle_timeout, "idle timeout"),
                Phase::Busy(_) => {
                    changed.await;
                    continue;
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if *self.phase.lock() == phase {
                        return why;
                    }
                }
                () = changed => {}
            }
        }
    }
}

/// A request in flight on a connection, until its response body is sent or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// A response body that keeps its request in flight until it is dropped.
struct Guarded {
    body: axum::body::Body,
    _done: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket, reporting received bytes to its [`Activity`].
struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.received();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
