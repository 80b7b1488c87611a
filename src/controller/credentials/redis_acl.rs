//! A tenant's own Redis ACL user: `tenantry-<tenant>`, allowed only the tenant's keys
//! (`tenantry:{<tenant>}:*`, see [`crate::quota::redis`]) and only the commands its API pods
//! send: the quota scripts (`EVALSHA`, `EVAL`), the commands those scripts call, `PING`, and on
//! a cluster `CLUSTER SLOTS` (the client's topology query). Nothing else: no `KEYS`, `SCAN`,
//! `FLUSHALL`, `CONFIG`, `ACL`, `SCRIPT`, no other tenant's keys, no Pub/Sub channels.
//!
//! The operator asserts the whole user (password hashes, keys, commands) with one
//! `ACL SETUSER` on every reconcile: idempotent and cheap, and it puts back users that a Redis
//! restart without an `aclfile` lost (within the operator's resync, 5 minutes). Afterwards it
//! asks for `ACL SAVE`, which persists the users where the server has an `aclfile` and is
//! refused (ignored) where it has none. On Redis Cluster `ACL SETUSER` and `ACL DELUSER` go to
//! every live node `CLUSTER NODES` lists, primaries and replicas (ACLs are per node, not
//! replicated; a replica promoted by a failover must know the users); a node that joins later
//! gets them on the next reconcile.
//!
//! Passwords are sent as SHA-256 hashes (`#<hex>`), so the plaintext never appears in a
//! command Redis could log; during a rotation the user accepts the new and the previous
//! password until the grace period ends.
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::domain::TenantId;

/// Commands a tenant's API pods need: the scripts' entry points, their calls, `PING`.
pub const COMMANDS: &[&str] = &[
    "evalsha",
    "eval",
    "ping",
    // Called by the quota scripts (ACLs apply inside scripts too).
    "get",
    "exists",
    "incr",
    "incrby",
    "decr",
    "expire",
    "pexpire",
    "pttl",
    "zadd",
    "zrem",
    "zscore",
    "zcard",
    "zcount",
    "zremrangebyscore",
];

/// The ACL user name of `tenant`.
pub fn user(tenant: &TenantId) -> String {
    format!("tenantry-{tenant}")
}

/// The key pattern of `tenant` (its quota keys, hash tag included).
pub fn key_pattern(tenant: &TenantId) -> String {
    format!("tenantry:{{{tenant}}}:*")
}

/// SHA-256 of `password`, lowercase hex (what `ACL SETUSER ... #<hash>` takes).
pub fn password_hash(password: &str) -> String {
    hex(&Sha256::digest(password.as_bytes()))
}

/// A new random password: 32 bytes from the OS generator, hex (URL-safe as it is).
pub fn new_password() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a tenant's user is allowed, as `ACL SETUSER` rules: everything reset, then on, the
/// password hashes, the tenant's keys, no channels, no commands but [`COMMANDS`] (plus
/// `CLUSTER SLOTS` on a cluster, `SELECT` when the URL names a database).
pub fn rules(
    tenant: &TenantId,
    password_hashes: &[String],
    cluster: bool,
    select: bool,
) -> Vec<String> {
    let mut rules = vec!["reset".to_string(), "on".to_string()];
    rules.extend(password_hashes.iter().map(|h| format!("#{h}")));
    rules.push(format!("~{}", key_pattern(tenant)));
    rules.push("resetchannels".to_string());
    rules.push("-@all".to_string());
    rules.extend(COMMANDS.iter().map(|c| format!("+{c}")));
    if cluster {
        rules.push("+cluster|slots".to_string());
    }
    if select {
        rules.push("+select".to_string());
    }
    rules
}

/// Why the tenant's user could not be asserted or removed (never with a password).
#[derive(Debug, thiserror::Error)]
#[error("Redis ACL for {user}: {reason}")]
pub struct AclError {
    /// The ACL user.
    pub user: String,
    /// What failed.
    pub reason: String,
}

/// An admin connection to the quota Redis, from its URL; cheap to clone (the clones share the
/// connection). On a cluster every command goes to every node the cluster lists (`CLUSTER
/// NODES`, asked of the first seed that answers), primaries and replicas, each over a
/// connection of its own with the URL's credentials: ACL users are per node.
#[derive(Clone)]
pub struct Admin {
    single: Option<redis::aio::MultiplexedConnection>,
    parts: UrlParts,
    cluster: bool,
    select: bool,
    timeout: Duration,
}

/// The error text of a Redis failure, without anything that could quote the URL.
fn describe(e: &redis::RedisError) -> String {
    match e.kind() {
        redis::ErrorKind::Io => format!("I/O error: {}", e.detail().unwrap_or("connection failed")),
        kind => format!("{kind:?}: {}", e.detail().unwrap_or_default()),
    }
}

/// The addresses (`host:port`) of the live nodes in a `CLUSTER NODES` reply.
pub fn cluster_node_addresses(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = fields.get(1)?.split(['@', ',']).next()?;
            let flags = fields.get(2)?;
            let dead = flags
                .split(',')
                .any(|f| matches!(f, "fail" | "noaddr" | "handshake"));
            (!dead && !addr.starts_with(':')).then(|| addr.to_string())
        })
        .collect()
}

async fn connect_one(
    url: &str,
    timeout: Duration,
) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| describe(&e))?;
    match tokio::time::timeout(timeout, client.get_multiplexed_async_connection()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no connection within {} ms", timeout.as_millis())),
    }
}

async fn query(
    conn: &mut redis::aio::MultiplexedConnection,
    cmd: &redis::Cmd,
    timeout: Duration,
) -> Result<redis::Value, String> {
    match tokio::time::timeout(timeout, cmd.query_async(conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

impl Admin {
    /// Connects with the admin URL (`redis[s]://[user:password@]host:port[,host:port...]`;
    /// several hosts or `cluster` for a Redis Cluster).
    pub async fn connect(url: &str, cluster: bool, timeout: Duration) -> Result<Self, String> {
        let parts = UrlParts::parse(url)?;
        let cluster = cluster || parts.hosts.len() > 1;
        let single = if cluster {
            None
        } else {
            Some(connect_one(url, timeout).await?)
        };
        Ok(Self {
            single,
            select: parts.db.is_some(),
            parts,
            cluster,
            timeout,
        })
    }

    /// The cluster's live nodes, from the first seed that answers.
    async fn nodes(&self) -> Result<Vec<String>, String> {
        let mut last = "no seed node".to_string();
        for seed in &self.parts.hosts {
            let listed = async {
                let mut conn = connect_one(&self.parts.with_host(seed), self.timeout).await?;
                let mut cmd = redis::cmd("CLUSTER");
                cmd.arg("NODES");
                match query(&mut conn, &cmd, self.timeout).await? {
                    redis::Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).to_string()),
                    redis::Value::VerbatimString { text, .. } => Ok(text),
                    other => Err(format!("CLUSTER NODES answered {other:?}")),
                }
            };
            match listed.await {
                Ok(text) => return Ok(cluster_node_addresses(&text)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn run(&mut self, cmd: &redis::Cmd) -> Result<(), String> {
        if let Some(conn) = self.single.as_mut() {
            return query(conn, cmd, self.timeout).await.map(|_| ());
        }
        for node in self.nodes().await? {
            let mut conn = connect_one(&self.parts.with_host(&node), self.timeout)
                .await
                .map_err(|e| format!("node {node}: {e}"))?;
            query(&mut conn, cmd, self.timeout)
                .await
                .map_err(|e| format!("node {node}: {e}"))?;
        }
        Ok(())
    }

    /// Creates or updates `tenant`'s user so that it accepts exactly `passwords` (the current
    /// one first, then the previous one during a rotation) and reaches only its own keys.
    pub async fn ensure_user(
        &mut self,
        tenant: &TenantId,
        password_hashes: &[String],
    ) -> Result<(), AclError> {
        let user = user(tenant);
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(&user);
        for rule in rules(tenant, password_hashes, self.cluster, self.select) {
            cmd.arg(rule);
        }
        self.run(&cmd).await.map_err(|reason| AclError {
            user: user.clone(),
            reason,
        })?;
        self.save().await;
        Ok(())
    }

    /// Removes `tenant`'s user (its connections are closed by Redis); a missing user is fine.
    pub async fn delete_user(&mut self, tenant: &TenantId) -> Result<(), AclError> {
        let user = user(tenant);
        let mut cmd = redis::cmd("ACL");
        cmd.arg("DELUSER").arg(&user);
        self.run(&cmd).await.map_err(|reason| AclError {
            user: user.clone(),
            reason,
        })?;
        self.save().await;
        Ok(())
    }

    /// `ACL SAVE` where the server keeps an `aclfile`; refused (and ignored) where it has none.
    async fn save(&mut self) {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SAVE");
        if let Err(e) = self.run(&cmd).await
            && !e.contains("ACL file")
        {
            tracing::debug!(error = %e, "ACL SAVE failed");
        }
    }
}

/// `scheme://[userinfo@]host[,host...][/db][?query]`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    scheme: String,
    /// `user:password` (percent-encoded as in the URL), without the `@`.
    userinfo: Option<String>,
    hosts: Vec<String>,
    /// `/db?query` as it was (empty: none).
    tail: String,
    /// The database number, when the URL names one.
    db: Option<String>,
}

impl UrlParts {
    /// Splits a `redis://` or `rediss://` URL (errors never quote it: it may hold a password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "not a URL (redis://host:port or rediss://host:port)".to_string())?;
        if scheme != "redis" && scheme != "rediss" {
            return Err(format!("scheme {scheme}:// (use redis:// or rediss://)"));
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (Some(authority[..at].to_string()), &authority[at + 1..]),
            None => (None, authority),
        };
        let hosts: Vec<String> = hosts.split(',').map(|h| h.trim().to_string()).collect();
        if hosts.iter().any(String::is_empty) {
            return Err("empty host in the Redis URL".to_string());
        }
        let db = tail
            .strip_prefix('/')
            .map(|t| t.split('?').next().unwrap_or_default())
            .filter(|d| !d.is_empty() && *d != "0")
            .map(str::to_string);
        Ok(Self {
            scheme: scheme.to_string(),
            userinfo,
            hosts,
            tail: tail.to_string(),
            db,
        })
    }

    fn with_host(&self, host: &str) -> String {
        let userinfo = self
            .userinfo
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        format!("{}://{userinfo}{host}{}", self.scheme, self.tail)
    }

    /// The same servers, database and options with `user:password` as credentials.
    pub fn with_credentials(&self, user: &str, password: &str) -> String {
        format!(
            "{}://{user}:{password}@{}{}",
            self.scheme,
            self.hosts.join(","),
            self.tail
        )
    }

    /// The password of the URL when its user is `user`.
    pub fn password_of(&self, user: &str) -> Option<String> {
        let (u, p) = self.userinfo.as_deref()?.split_once(':')?;
        (u == user && !p.is_empty()).then(|| p.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::redis::{FINISH, RESERVE, USAGE};

    #[test]
    fn every_command_of_the_quota_scripts_is_allowed() {
        for script in [RESERVE, FINISH, USAGE] {
            for call in script.split("redis.call('").skip(1) {
                let command = call.split('\'').next().unwrap_or_default().to_lowercase();
                assert!(
                    COMMANDS.contains(&command.as_str()),
                    "the quota scripts call {command}, which tenant ACL users may not"
                );
            }
        }
    }

    #[test]
    fn rules_reset_then_grant_only_the_tenant_keys_and_commands() {
        let t = TenantId::parse("acme").expect("id");
        let r = rules(&t, &["ab".into(), "cd".into()], true, false);
        assert_eq!(&r[..4], ["reset", "on", "#ab", "#cd"]);
        assert!(r.contains(&"~tenantry:{acme}:*".to_string()));
        assert!(r.contains(&"-@all".to_string()) && r.contains(&"+cluster|slots".to_string()));
        assert!(
            !r.iter()
                .any(|x| x.contains("keys") || x.contains("flush") || x.starts_with('>'))
        );
    }

    #[test]
    fn urls_keep_servers_and_options_and_swap_credentials() {
        let p = UrlParts::parse("rediss://:admin@a:1, b:2/0?protocol=resp3").expect("url");
        assert_eq!(p.db, None);
        assert_eq!(
            p.with_credentials("tenantry-acme", "pw"),
            "rediss://tenantry-acme:pw@a:1,b:2/0?protocol=resp3"
        );
        let tenant = UrlParts::parse("redis://tenantry-acme:pw@h:6379/3").expect("url");
        assert_eq!(tenant.password_of("tenantry-acme").as_deref(), Some("pw"));
        assert_eq!(tenant.password_of("tenantry-other"), None);
        assert_eq!(tenant.db.as_deref(), Some("3"));
        for bad in ["h:6379", "http://h", "redis://a,,b"] {
            assert!(UrlParts::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(new_password().len(), 64);
        assert_ne!(new_password(), new_password());
    }
}
