//! HTTPS on a real `tenantry serve`: certificates from test CAs (P-256, made with rcgen),
//! checked by reqwest (rustls, ring) and by `curl`; reload of rotated files (a Secret-style
//! `..data` symlink swap) without dropping connections; a bad rotation keeps the old
//! certificate; graceful shutdown over TLS; start-up errors; `tenantry healthcheck`.
mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::{Ca, KeyKind};
use common::llm::ScriptedLlm;
use common::server::{Dirs, Server, Start};
use serde_json::json;

/// What every server certificate of these tests is for.
const SANS: [&str; 2] = ["127.0.0.1", "localhost"];

/// A new folder for certificates in `dirs`.
fn pki(dirs: &Dirs) -> PathBuf {
    let pki = dirs.root.path().join("pki");
    std::fs::create_dir_all(&pki).expect("mkdir");
    pki
}

/// A folder laid out like a mounted Kubernetes Secret: `tls.crt` and `tls.key` are symlinks
/// through `..data`, which points at a timestamped folder and is swapped on update.
struct SecretMount {
    dir: PathBuf,
    version: u32,
}

impl SecretMount {
    fn new(dir: PathBuf, cert: &Path, key: &Path) -> Self {
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut m = Self { dir, version: 0 };
        m.update(cert, key);
        symlink("..data/tls.crt", m.cert()).expect("symlink");
        symlink("..data/tls.key", m.key()).expect("symlink");
        m
    }
    fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
    /// Writes a new version and swaps `..data` to it atomically (as the kubelet does).
    fn update(&mut self, cert: &Path, key: &Path) {
        self.version += 1;
        let name = format!("..v{}", self.version);
        let v = self.dir.join(&name);
        std::fs::create_dir(&v).expect("mkdir version");
        std::fs::copy(cert, v.join("tls.crt")).expect("copy cert");
        std::fs::copy(key, v.join("tls.key")).expect("copy key");
        let tmp = self.dir.join("..data_tmp");
        symlink(&name, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
    }
}

/// Runs curl; returns (success, stdout, stderr).
fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The subject CN of the certificate the server presents to a new curl connection trusting
/// `ca` (None when the handshake or verification fails).
fn served_cn(url: &str, ca: &Path) -> Option<String> {
    let (ok, _, err) = curl(&["-v", "-o", "/dev/null", "--cacert", ca.to_str()?, url]);
    if !ok {
        return None;
    }
    err.lines()
        .find_map(|l| l.trim().strip_prefix("*  subject: CN="))
        .map(str::to_string)
}

fn client_trusting(ca: &Path) -> reqwest::Client {
    tenantry::install_crypto_provider();
    let pem = std::fs::read(ca).expect("read CA");
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("CA pem")])
        .build()
        .expect("client")
}

fn tls_args(m: &SecretMount) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        m.cert().display().to_string(),
        "--tls-key".into(),
        m.key().display().to_string(),
    ]
}

/// `tenantry healthcheck ARGS`: (exit success, stderr).
fn healthcheck(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .arg("healthcheck")
        .args(args)
        .env_remove("TENANTRY_HEALTHCHECK_URL")
        .env_remove("TENANTRY_HEALTHCHECK_CACERT")
        .env_remove("TENANTRY_HEALTHCHECK_INSECURE")
        .output()
        .expect("run healthcheck");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// HTTPS with a verified chain (reqwest and curl), ALPN h2 and http/1.1, TLS 1.2 and 1.3 only,
/// no plain HTTP on the TLS port, metrics still plain HTTP, and `healthcheck` over https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_a_verified_chain() {
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let pki = pki(&dirs);
    let ca = Ca::new(&pki, "ca-one", KeyKind::P256);
    let (cert, key) = ca.leaf(&pki, "tenantry-one", &SANS, 1);
    let mount = SecretMount::new(dirs.root.path().join("tls"), &cert, &key);
    let server = Server::start(
        &dirs,
        Start {
            args: tls_args(&mount),
            ..Default::default()
        },
    );
    let base = format!("https://{}", server.addr);
    let healthz = format!("{base}/healthz");
    let ca_path = ca.cert.to_str().expect("utf-8");

    // reqwest (rustls + ring) verifying the chain against the test CA.
    let client = client_trusting(&ca.cert);
    let r = client.get(&healthz).send().await.expect("https request");
    assert_eq!(r.status(), 200);
    let t = dirs.token("acme", "alice");
    let r = client
        .post(format!("{base}/v1/documents"))
        .bearer_auth(&t)
        .json(&json!({"title": "refunds", "text": "Refunds within 30 days."}))
        .send()
        .await
        .expect("ingest over https");
    assert_eq!(r.status(), 201);
    // Without the CA the chain is not trusted.
    let untrusted = reqwest::Client::new().get(&healthz).send().await;
    assert!(untrusted.is_err(), "untrusted chain accepted");

    // curl: h2 and http/1.1 through ALPN, TLS 1.2 and 1.3.
    let fmt = "%{http_code} %{http_version}";
    let (ok, out, err) = curl(&[
        "--cacert",
        ca_path,
        "--http2",
        "-o",
        "/dev/null",
        "-w",
        fmt,
        &healthz,
    ]);
    assert!(ok && out == "200 2", "h2: {out} {err}");
    let (ok, out, err) = curl(&[
        "--cacert",
        ca_path,
        "--http1.1",
        "-o",
        "/dev/null",
        "-w",
        fmt,
        &healthz,
    ]);
    assert!(ok && out == "200 1.1", "http/1.1: {out} {err}");
    let (ok, _, err) = curl(&[
        "--cacert",
        ca_path,
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        &healthz,
    ]);
    assert!(ok, "TLS 1.2 refused: {err}");
    let (ok, _, err) = curl(&["--cacert", ca_path, "--tlsv1.3", &healthz]);
    assert!(ok, "TLS 1.3 refused: {err}");
    assert_eq!(
        served_cn(&healthz, &ca.cert).as_deref(),
        Some("tenantry-one")
    );
    // TLS 1.1: curl is allowed to offer it (security level 0), the server refuses it.
    let (ok, _, err) = curl(&[
        "--cacert",
        ca_path,
        "--tlsv1.1",
        "--tls-max",
        "1.1",
        "--ciphers",
        "DEFAULT@SECLEVEL=0",
        &healthz,
    ]);
    assert!(!ok, "TLS 1.1 accepted");
    // The ClientHello went out and the server answered with an alert (rustls sends
    // handshake_failure when no offered version is acceptable).
    assert!(
        err.contains("alert"),
        "TLS 1.1 not refused by the server: {err}"
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    let (ok, out, err) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/healthz", server.addr),
    ]);
    assert!(!ok && out != "200", "plain HTTP answered: {out} {err}");

    // The metrics port stays plain HTTP.
    let r = reqwest::get(format!("http://{}/metrics", server.metrics_addr))
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);

    // healthcheck over https: with the CA, insecure, and refused without either.
    assert!(healthcheck(&["--url", &healthz, "--cacert", ca_path]).0);
    assert!(healthcheck(&["--url", &healthz, "--insecure"]).0);
    let (ok, err) = healthcheck(&["--url", &healthz]);
    assert!(!ok, "untrusted certificate accepted");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("unhealthy: "), "{err}");
    server.stop();
}

/// Rotated files (a `..data` swap) are picked up: new connections see the new certificate
/// while an open connection keeps working; a mismatched pair is refused, logged, and the
/// previous certificate stays in service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_rotated_certificates_and_keeps_the_old_one_on_a_bad_pair() {
    let dirs = Dirs::new();
    let pki = pki(&dirs);
    let ca1 = Ca::new(&pki, "ca-one", KeyKind::P256);
    let ca2 = Ca::new(&pki, "ca-two", KeyKind::P256);
    let (cert1, key1) = ca1.leaf(&pki, "tenantry-one", &SANS, 1);
    let (cert2, key2) = ca2.leaf(&pki, "tenantry-two", &SANS, 2);
    let (cert3, _key3) = ca2.leaf(&pki, "tenantry-three", &SANS, 3);
    let mut mount = SecretMount::new(dirs.root.path().join("tls"), &cert1, &key1);
    let server = Server::start(
        &dirs,
        Start {
            args: tls_args(&mount),
            ..Default::default()
        },
    );
    let healthz = format!("https://{}/healthz", server.addr);
    let old_client = client_trusting(&ca1.cert);
    let r = old_client.get(&healthz).send().await.expect("before");
    assert_eq!(r.status(), 200);
    assert_eq!(
        served_cn(&healthz, &ca1.cert).as_deref(),
        Some("tenantry-one")
    );

    // Rotation to a certificate of another CA.
    mount.update(&cert2, &key2);
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_cn(&healthz, &ca2.cert).as_deref() != Some("tenantry-two") {
        assert!(Instant::now() < deadline, "new certificate never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served_cn(&healthz, &ca1.cert), None, "old CA still served");
    // The connection opened before the rotation was kept: a new one would fail verification
    // against the old CA, so this request can only succeed on the old connection.
    let r = old_client
        .get(&healthz)
        .send()
        .await
        .expect("old connection");
    assert_eq!(r.status(), 200);
    assert!(
        server
            .logs
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains("TLS certificate reloaded")),
        "no reload logged"
    );

    // A bad rotation: certificate three with key two.
    mount.update(&cert3, &key2);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let failed = server
            .logs
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains("TLS certificate reload failed"));
        if failed {
            break;
        }
        assert!(Instant::now() < deadline, "bad pair not reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        served_cn(&healthz, &ca2.cert).as_deref(),
        Some("tenantry-two"),
        "the previous certificate must stay in service"
    );
    server.stop();
}

/// SIGTERM during a request over TLS: the request finishes, then serve exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_over_tls() {
    let llm = ScriptedLlm::start().await;
    let dirs = Dirs::new();
    dirs.add_tenant("acme", "");
    let pki = pki(&dirs);
    let ca = Ca::new(&pki, "ca-one", KeyKind::P256);
    let (cert, key) = ca.leaf(&pki, "tenantry-one", &SANS, 1);
    let server = Server::start(
        &dirs,
        Start {
            llm: Some(&llm),
            args: vec![
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
            ],
            ..Default::default()
        },
    );
    let base = format!("https://{}", server.addr);
    let client = client_trusting(&ca.cert);
    let t = dirs.token("acme", "alice");
    let r = client
        .post(format!("{base}/v1/documents"))
        .bearer_auth(&t)
        .json(&json!({"title": "refunds", "text": "Refunds within 30 days."}))
        .send()
        .await
        .expect("ingest");
    assert_eq!(r.status(), 201);

    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/v1/chat");
        async move {
            client
                .post(url)
                .bearer_auth(&t)
                .json(&json!({"question": "Refunds? [[delay:2000]]"}))
                .send()
                .await
        }
    });
    // Let the request reach the model, then ask serve to stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while llm.user_messages().is_empty() {
        assert!(Instant::now() < deadline, "chat never reached the model");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = tokio::task::spawn_blocking(move || server.stop());
    let r = in_flight.await.expect("join").expect("in-flight request");
    assert_eq!(r.status(), 200);
    stopped.await.expect("serve exits 0 after SIGTERM");
}

/// `serve` with unusable TLS settings stops at once with a clear error.
#[test]
fn bad_tls_settings_fail_the_start() {
    let dirs = Dirs::new();
    let pki = pki(&dirs);
    let ca = Ca::new(&pki, "ca-one", KeyKind::P256);
    let (cert, _key) = ca.leaf(&pki, "tenantry-one", &SANS, 1);
    let (_, other_key) = ca.leaf(&pki, "tenantry-two", &SANS, 2);
    let missing = pki.join("missing.key");
    let garbage = pki.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let cert_s = cert.display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--tls-cert".into(), cert_s.clone()],
            "--tls-cert and --tls-key must be given together",
        ),
        (
            vec![
                "--tls-cert".into(),
                cert_s.clone(),
                "--tls-key".into(),
                missing.display().to_string(),
            ],
            "cannot read private key",
        ),
        (
            vec![
                "--tls-cert".into(),
                garbage.display().to_string(),
                "--tls-key".into(),
                other_key.display().to_string(),
            ],
            "no CERTIFICATE",
        ),
        (
            vec![
                "--tls-cert".into(),
                cert_s,
                "--tls-key".into(),
                other_key.display().to_string(),
            ],
            "cannot be used together",
        ),
    ];
    for (args, expected) in cases {
        let mut child = dirs
            .serve_command()
            .args(&args)
            .env_remove("TENANTRY_TLS_CERT")
            .env_remove("TENANTRY_TLS_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve {args:?} did not fail");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
            .expect("read stderr");
        assert!(!status.success(), "{args:?}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

/// `healthcheck` against a plain-HTTP serve (0), a closed port, a 404 and a bad URL (1, with
/// a one-line reason).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exit_codes() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs, Start::default());
    let (ok, err) = healthcheck(&["--url", &server.url("/healthz")]);
    assert!(ok, "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    for (url, reason) in [
        (format!("http://{closed}/healthz"), "http://"),
        (server.url("/nothing"), "answered 404"),
        ("ftp://example/healthz".to_string(), "is not an http"),
    ] {
        let started = Instant::now();
        let (ok, err) = healthcheck(&["--url", &url]);
        assert!(!ok, "{url}");
        assert!(started.elapsed() < Duration::from_secs(5), "{url}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.starts_with("unhealthy: ") && err.contains(reason),
            "{url}: {err}"
        );
    }
    server.stop();
}
