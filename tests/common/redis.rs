//! A real `redis-server` child process on 127.0.0.1 (`RedisServer`), plain or TLS-only with a
//! password and a test CA; no persistence, its own temp dir, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::certs::{Ca, KeyKind};

/// Subject CN and only SAN of a TLS-only server's certificate (its files are named after it).
const SERVER_CN: &str = "127.0.0.1";

/// A `redis-server` child process on 127.0.0.1 (no persistence, its own temp dir); killed on
/// drop, also when a test panics. Can be killed and restarted on the same port.
pub struct RedisServer {
    child: Option<Child>,
    /// Port it listens on (the TLS port of a TLS-only server).
    pub port: u16,
    dir: tempfile::TempDir,
    /// The password of a TLS-only server; `None`: plain, no password.
    tls_password: Option<String>,
}

impl RedisServer {
    /// Starts a plain one on a free port and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a TLS-only one (RSA server certificate for IP 127.0.0.1 from a test CA, see
    /// [`RedisServer::ca`]) that requires `password`, and waits until it accepts connections.
    pub fn start_tls(password: &str) -> Self {
        Self::start_with(Some(password.to_string()))
    }

    fn start_with(tls_password: Option<String>) -> Self {
        let mut r = Self {
            child: None,
            port: super::free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            tls_password,
        };
        if r.tls_password.is_some() {
            let ca = Ca::new(r.dir.path(), "test-ca", KeyKind::Rsa2048);
            ca.leaf(r.dir.path(), SERVER_CN, &[SERVER_CN], 1);
        }
        r.restart();
        r
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The CA that signed a TLS-only server's certificate (PEM), for `SSL_CERT_FILE`.
    pub fn ca(&self) -> String {
        self.dir.path().join("test-ca.pem").display().to_string()
    }

    /// Kills it (SIGKILL, like a crash) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::kill(&mut c);
        }
    }

    /// Starts it (again) on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let mut cmd = Command::new(which_redis());
        match &self.tls_password {
            None => cmd.args(["--port", &port]),
            Some(password) => cmd
                .args(["--port", "0", "--tls-port", &port])
                .args(["--tls-cert-file", &format!("{SERVER_CN}.pem")])
                .args(["--tls-key-file", &format!("{SERVER_CN}.key")])
                .args([
                    "--tls-ca-cert-file",
                    "test-ca.pem",
                    "--tls-auth-clients",
                    "no",
                ])
                .args(["--requirepass", password]),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server (install it: apt-get install redis-server)");
        self.child = Some(child);
        for _ in 0..200 {
            if self.answers() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// A plain server answers PING; a TLS-only one accepts a TCP connection.
    fn answers(&self) -> bool {
        match self.tls_password {
            None => self.query(&["PING"]).is_some(),
            Some(_) => std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
        }
    }

    /// Runs one command with a fresh blocking connection to a plain server; None if Redis is
    /// unreachable.
    pub fn query(&self, args: &[&str]) -> Option<redis::Value> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query::<redis::Value>(&mut conn).ok()
    }

    /// An integer key (0 when missing).
    pub fn get_int(&self, key: &str) -> i64 {
        match self.query(&["GET", key]) {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).parse().expect("int"),
            Some(redis::Value::Nil) => 0,
            other => panic!("GET {key}: {other:?}"),
        }
    }
}

/// `redis-server` on the PATH, else the Debian package's path.
fn which_redis() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("redis-server"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
