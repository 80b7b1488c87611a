//! A real `redis-server` child process on 127.0.0.1 (`RedisServer`), plain or TLS-only with a
//! password and a test CA; no persistence, its own temp dir, killed on drop. A real Redis
//! Cluster of such processes (`RedisCluster`), joined with `redis-cli --cluster create`.
//! [`SharedRedis`] is what the quota tests need of either.

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
    /// A Redis Cluster node (`--cluster-enabled yes`; its `nodes.conf` survives restarts).
    cluster_node: bool,
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

    /// Starts a plain Redis Cluster node that belongs to no cluster yet.
    fn start_cluster_node() -> Self {
        Self::start_as(None, true)
    }

    fn start_with(tls_password: Option<String>) -> Self {
        Self::start_as(tls_password, false)
    }

    fn start_as(tls_password: Option<String>, cluster_node: bool) -> Self {
        let mut r = Self {
            child: None,
            port: super::free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            tls_password,
            cluster_node,
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

    /// Starts it (again) on the same port, empty (a cluster node rejoins its cluster).
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let mut cmd = Command::new(which("redis-server"));
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
        if self.cluster_node {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args([
                "--cluster-node-timeout",
                &CLUSTER_NODE_TIMEOUT_MS.to_string(),
            ]);
        }
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
}

/// `program` (`redis-server`, `redis-cli`) on the PATH, else the Debian package's path.
fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/bin").join(program))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the quota tests need of a Redis, single node or cluster.
pub trait SharedRedis: Sync {
    /// The URL to give `--redis-url` (a cluster: its seed nodes).
    fn url(&self) -> String;

    /// Whether it is a Redis Cluster (`quota.redisCluster: true`).
    fn is_cluster(&self) -> bool;

    /// Runs one command (on a cluster: routed by its key); None if Redis is unreachable or
    /// answers an error.
    fn query(&self, args: &[&str]) -> Option<redis::Value>;

    /// An integer key (0 when missing).
    fn get_int(&self, key: &str) -> i64 {
        match self.query(&["GET", key]) {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).parse().expect("int"),
            Some(redis::Value::Nil) => 0,
            other => panic!("GET {key}: {other:?}"),
        }
    }
}

impl SharedRedis for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }

    fn is_cluster(&self) -> bool {
        false
    }

    fn query(&self, args: &[&str]) -> Option<redis::Value> {
        RedisServer::query(self, args)
    }
}

/// `--cluster-node-timeout` of cluster nodes: how long a primary may be unreachable before its
/// replica takes over. Generous, so a loaded machine does not fail nodes over by itself.
const CLUSTER_NODE_TIMEOUT_MS: u64 = 3_000;

/// A Redis Cluster on 127.0.0.1: `masters` primaries with `replicas` replicas each, every node a
/// [`RedisServer`] (no persistence, its own temp dir), joined by `redis-cli --cluster create`
/// and ready (`cluster_state:ok` on every node, replicas in sync) when `start` returns.
pub struct RedisCluster {
    /// The nodes, primaries first (as `redis-cli --cluster create` assigns them).
    pub nodes: Vec<RedisServer>,
    /// How many of them are replicas.
    replicas: usize,
}

/// How long the cluster may take to form or to fail over.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);

impl RedisCluster {
    /// Starts and joins the nodes; waits until the cluster serves every slot.
    pub fn start(masters: usize, replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| RedisServer::start_cluster_node())
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(which("redis-cli"))
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self {
            nodes,
            replicas: masters * replicas,
        };
        cluster.wait_ready();
        cluster
    }

    /// Waits until every node sees the whole cluster serving all slots and every replica is in
    /// sync with its primary.
    pub fn wait_ready(&self) {
        self.wait_until(
            "every node serves all slots and replicas are in sync",
            |c| {
                let synced = c.nodes.iter().filter(|n| replica_in_sync(n)).count();
                synced == c.replicas && c.nodes.iter().all(|n| node_ready(n, c.nodes.len()))
            },
        );
    }

    /// `redis://127.0.0.1:<port>,...` over every node.
    pub fn seed_url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis://{}", hosts.join(","))
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn keyslot(&self, key: &str) -> i64 {
        match self.query(&["CLUSTER", "KEYSLOT", key]) {
            Some(redis::Value::Int(slot)) => slot,
            other => panic!("CLUSTER KEYSLOT {key}: {other:?}"),
        }
    }

    /// The ports of the primary serving `slot` and of its replicas, as the first live node
    /// sees them (`CLUSTER NODES`: `CLUSTER SLOTS` leaves out replicas that have not
    /// replicated anything yet).
    pub fn shard_of(&self, slot: i64) -> (u16, Vec<u16>) {
        self.try_shard_of(slot)
            .expect("a live node knows the slot's shard")
    }

    /// [`Self::shard_of`], or None while no live node knows a primary for the slot (its
    /// primary was flagged failed and no replica has taken over yet).
    fn try_shard_of(&self, slot: i64) -> Option<(u16, Vec<u16>)> {
        self.nodes
            .iter()
            .find_map(|n| shard_from(&n.query(&["CLUSTER", "NODES"])?, slot))
    }

    /// The node listening on `port`.
    pub fn node(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("node")
    }

    /// Promotes a replica of `slot`'s primary with `CLUSTER FAILOVER` (the graceful, manual
    /// failover: the primary stops writes, the replica catches up, then takes over) and waits
    /// until every live node routes the slot to it. Returns (old primary, new primary).
    pub fn failover(&mut self, slot: i64) -> (u16, u16) {
        self.wait_ready();
        let (primary, replicas) = self.shard_of(slot);
        let replica = *replicas.first().expect("the shard has a replica");
        let answer = self.node(replica).query(&["CLUSTER", "FAILOVER"]);
        assert_eq!(answer, Some(redis::Value::Okay), "CLUSTER FAILOVER");
        self.wait_until("the replica serves the slot", |c| {
            c.routed_to(slot, replica)
        });
        (primary, replica)
    }

    /// Kills `slot`'s primary (SIGKILL, a crash) and waits until its replica has taken over
    /// (after [`CLUSTER_NODE_TIMEOUT_MS`]). Returns (killed primary, new primary).
    pub fn kill_primary(&mut self, slot: i64) -> (u16, u16) {
        self.wait_ready();
        let (primary, replicas) = self.shard_of(slot);
        self.node(primary).kill();
        self.wait_until("a replica took over the slot", |c| {
            c.try_shard_of(slot).is_some_and(|(now, _)| {
                now != primary && replicas.contains(&now) && c.routed_to(slot, now)
            })
        });
        let (now, _) = self.shard_of(slot);
        self.wait_until("the cluster is ok again", |c| {
            c.nodes
                .iter()
                .filter(|n| n.child.is_some())
                .all(|n| info_field(n, "cluster info", "cluster_state").as_deref() == Some("ok"))
        });
        (primary, now)
    }

    /// Whether every live node routes `slot` to `port`.
    fn routed_to(&self, slot: i64, port: u16) -> bool {
        self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
            n.query(&["CLUSTER", "NODES"])
                .and_then(|v| shard_from(&v, slot))
                .is_some_and(|(p, _)| p == port)
        })
    }

    fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let start = std::time::Instant::now();
        while start.elapsed() < CLUSTER_WAIT {
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("Redis Cluster: not ready within {CLUSTER_WAIT:?}: {what}");
    }
}

impl SharedRedis for RedisCluster {
    fn url(&self) -> String {
        self.seed_url()
    }

    fn is_cluster(&self) -> bool {
        true
    }

    fn query(&self, args: &[&str]) -> Option<redis::Value> {
        let live: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(RedisServer::url)
            .collect();
        let client = redis::cluster::ClusterClient::builder(live)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        let mut conn = client.get_connection().ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query::<redis::Value>(&mut conn).ok()
    }
}

/// Whether a node sees the cluster whole: state ok, every node known, all slots served.
fn node_ready(node: &RedisServer, nodes: usize) -> bool {
    let cluster = |f| info_field(node, "cluster info", f);
    cluster("cluster_state").as_deref() == Some("ok")
        && cluster("cluster_known_nodes") == Some(nodes.to_string())
        && cluster("cluster_slots_ok").as_deref() == Some("16384")
}

/// Whether a node is a replica with its link to the primary up.
fn replica_in_sync(node: &RedisServer) -> bool {
    let replication = |f| info_field(node, "info replication", f);
    replication("role").as_deref() == Some("slave")
        && replication("master_link_status").as_deref() == Some("up")
}

/// One `field:value` line of `CLUSTER INFO` or `INFO <section>` (`command` as words).
fn info_field(node: &RedisServer, command: &str, field: &str) -> Option<String> {
    let words: Vec<&str> = command.split(' ').collect();
    let text = match node.query(&words)? {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        _ => return None,
    };
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// The primary's and replicas' ports of the shard holding `slot`, from `CLUSTER NODES`
/// (`<id> <ip:port@bus> <flags> <primary id or -> <ping> <pong> <epoch> <link> <slots...>`);
/// nodes flagged as failed are left out.
fn shard_from(nodes: &redis::Value, slot: i64) -> Option<(u16, Vec<u16>)> {
    let text = match nodes {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text.clone(),
        _ => return None,
    };
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() >= 8 && !f[2].contains("fail"))
        .collect();
    let port = |f: &[&str]| {
        f[1].split(['@', ','])
            .next()?
            .rsplit(':')
            .next()?
            .parse()
            .ok()
    };
    let serves = |range: &&str| {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        matches!((lo.parse::<i64>(), hi.parse::<i64>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
    };
    let primary = lines
        .iter()
        .find(|f| f[2].contains("master") && f[8..].iter().any(serves))?;
    let replicas = lines
        .iter()
        .filter(|f| f[3] == primary[0])
        .filter_map(|f| port(f))
        .collect();
    Some((port(primary)?, replicas))
}
