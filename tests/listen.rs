//! Slow and idle clients against a real `tenantry serve`, over raw sockets: a request head sent
//! byte by byte is cut off after `listener.headerReadTimeoutSeconds` (plain HTTP, inside TLS,
//! and on the metrics port), a keep-alive connection left idle is closed after
//! `listener.idleTimeoutSeconds`, and a listener holds at most `listener.maxConnections`
//! connections (one more is closed at once). A connection that is never closed fails the test
//! after a generous bound; nothing here asserts how fast the server is.
mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::{Ca, KeyKind};
use common::server::{Dirs, Server, Start};

/// How long a test waits for the server to close a connection before calling it held forever.
const NEVER: Duration = Duration::from_secs(30);

/// A request head that never ends: the request line, then one more header byte every 100 ms.
const SLOW_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

/// Sends `SLOW_HEAD` byte by byte over `stream` and then header bytes forever, until the server
/// closes the connection; returns what the server sent before closing (panics after [`NEVER`]).
fn slowloris<S: std::io::Read + std::io::Write>(
    stream: &mut S,
    set_timeout: impl Fn(Duration),
) -> Vec<u8> {
    let start = Instant::now();
    for b in SLOW_HEAD.iter().chain(std::iter::repeat(&b'a')) {
        assert!(
            start.elapsed() < NEVER,
            "a byte-by-byte request head held the connection for {NEVER:?}"
        );
        if stream
            .write_all(&[*b])
            .and_then(|()| stream.flush())
            .is_err()
        {
            break;
        }
        // Between bytes, see whether the server has closed the connection.
        set_timeout(Duration::from_millis(100));
        let mut buf = [0u8; 1024];
        match stream.read(&mut buf) {
            Ok(0) => return Vec::new(),
            Ok(n) => return buf[..n].to_vec(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Vec::new(),
        }
    }
    Vec::new()
}

/// A plain TCP connection to `addr`.
fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).expect("connect")
}

/// Reads until the server closes `stream` (returns what it sent); panics after [`NEVER`].
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(NEVER)).expect("read timeout");
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the server kept the connection open for {NEVER:?}")
            }
            Err(_) => return all,
        }
    }
}

/// Sends one complete request and reads its response head and body (`Content-Length`).
fn request(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    stream.set_read_timeout(Some(NEVER)).expect("read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("response");
        assert!(n > 0, "closed before a response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("content-length");
            if body.len() >= len {
                return text;
            }
        }
    }
}

fn listener_config(dirs: &Dirs, header: u64, idle: u64, max: usize) -> std::path::PathBuf {
    dirs.config(&format!(
        "listener:\n  headerReadTimeoutSeconds: {header}\n  idleTimeoutSeconds: {idle}\n  maxConnections: {max}\n"
    ))
}

fn plain_slowloris(addr: SocketAddr) -> Vec<u8> {
    let mut s = connect(addr);
    let s2 = s.try_clone().expect("clone");
    slowloris(&mut s, move |t| {
        let _ = s2.set_read_timeout(Some(t));
    })
}

/// Byte-by-byte request heads are cut off on the API and metrics ports; idle keep-alive
/// connections are closed on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_connections_are_closed() {
    let dirs = Dirs::new();
    let config = listener_config(&dirs, 1, 2, 100);
    let server = Server::start(
        &dirs,
        Start {
            config: Some(config),
            ..Default::default()
        },
    );
    let (api, metrics) = (server.addr, server.metrics_addr);
    tokio::task::spawn_blocking(move || {
        for (port, addr, path) in [("API", api, "/healthz"), ("metrics", metrics, "/metrics")] {
            let answered = plain_slowloris(addr);
            assert!(
                answered.is_empty()
                    || String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 408"),
                "{port}: {}",
                String::from_utf8_lossy(&answered)
            );
            // A connection that was served and then left alone is closed too.
            let mut s = connect(addr);
            let first = request(&mut s, path);
            assert!(first.starts_with("HTTP/1.1 200"), "{port}: {first}");
            let rest = read_until_closed(&mut s);
            assert!(
                rest.is_empty(),
                "{port}: {}",
                String::from_utf8_lossy(&rest)
            );
            // A fresh connection is served as usual.
            let mut s = connect(addr);
            assert!(request(&mut s, path).starts_with("HTTP/1.1 200"), "{port}");
        }
    })
    .await
    .expect("raw-socket checks");
}

/// Inside TLS: the handshake completes, then the request head trickles in byte by byte and is
/// cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_are_closed_over_tls() {
    let dirs = Dirs::new();
    let pki = dirs.root.path().join("pki");
    std::fs::create_dir_all(&pki).expect("mkdir");
    let ca = Ca::new(&pki, "ca", KeyKind::P256);
    let (cert, key) = ca.leaf(&pki, "tenantry", &["127.0.0.1", "localhost"], 1);
    let config = listener_config(&dirs, 1, 2, 100);
    let server = Server::start(
        &dirs,
        Start {
            config: Some(config),
            args: vec![
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
            ],
            ..Default::default()
        },
    );
    let addr = server.addr;
    let ca_cert = ca.cert.clone();
    tokio::task::spawn_blocking(move || {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca_cert).expect("CA pem") {
            roots.add(c.expect("CA cert")).expect("add CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let tcp = connect(addr);
        let tcp2 = tcp.try_clone().expect("clone");
        let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Complete the handshake first: the slowness is inside the encrypted stream.
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
        }
        let answered = slowloris(&mut tls, move |t| {
            let _ = tcp2.set_read_timeout(Some(t));
        });
        assert!(
            answered.is_empty() || String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&answered)
        );
    })
    .await
    .expect("TLS raw-socket checks");
}

/// A listener holds at most `maxConnections`: one more is closed without an answer, and once a
/// held connection ends, new ones are served again. The metrics port has its own cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed() {
    let dirs = Dirs::new();
    let config = listener_config(&dirs, 60, 60, 2);
    let server = Server::start(
        &dirs,
        Start {
            config: Some(config),
            ..Default::default()
        },
    );
    let (api, metrics) = (server.addr, server.metrics_addr);
    tokio::task::spawn_blocking(move || {
        for (port, addr, path) in [("API", api, "/healthz"), ("metrics", metrics, "/metrics")] {
            // Two connections that send nothing hold the listener's two slots (a served request
            // on each proves the server has accepted them).
            let mut held: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
            for s in &mut held {
                assert!(request(s, path).starts_with("HTTP/1.1 200"), "{port}");
            }
            let mut third = connect(addr);
            let _ = write!(third, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
            let answered = read_until_closed(&mut third);
            assert!(
                answered.is_empty(),
                "{port}: a third connection was served: {}",
                String::from_utf8_lossy(&answered)
            );
            // One slot frees up: new connections are served again (the server notices the
            // close asynchronously, so a few may still find the listener full).
            drop(held.pop());
            let served = (0..100).any(|_| {
                let mut s = connect(addr);
                let _ = write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                );
                let got = read_until_closed(&mut s);
                if got.is_empty() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200")
            });
            assert!(served, "{port}: never served again after a slot freed");
            drop(held);
        }
    })
    .await
    .expect("raw-socket checks");
}
