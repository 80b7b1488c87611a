//! The Redis quota store, shared by every replica: one Lua script checks and reserves all four
//! limits atomically, another settles or releases a reservation exactly once.
//!
//! Keys (all of one tenant share the hash tag `{<tenant>}`, so a script touches one Redis
//! Cluster slot; they are built only from a validated [`TenantId`], so a tenant cannot name
//! another tenant's keys):
//!
//! | key | type | expiry |
//! |---|---|---|
//! | `tenantry:{t}:tokens:day:<days since epoch>` | integer | 2 days |
//! | `tenantry:{t}:requests:minute:<minutes since epoch>` | integer | 120 s |
//! | `tenantry:{t}:tokens:minute:<minutes since epoch>` | integer | 120 s |
//! | `tenantry:{t}:inflight` | sorted set: reservation id → lease expiry (unix ms) | the lease |
//! | `tenantry:{t}:storage` | hash: `documents`, `bytes` stored | none (stored data stays) |
//!
//! The reserve script first drops expired in-flight entries (a replica that crashed mid-request
//! leaks nothing past its lease). Windows come from the caller's clock (`now` is an argument), so
//! replicas must keep their clocks in sync (NTP).
//!
//! On Redis Cluster ([`RedisOptions::cluster`]) every script runs on the primary of its tenant's
//! slot; the client follows `MOVED`/`ASK` redirections and refreshes the slot map after a
//! failover. Scripts are sent as `EVALSHA` and, where a node does not have them cached yet (a
//! new primary after a failover, a restart), as `EVAL`, which also caches them there. Both
//! scripts are safe to run twice (the cluster client resends a command whose connection dropped):
//! reserving an id already in flight changes nothing, finishing it applies once.
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, RedisFuture, RedisResult, Script, Value};

use super::{
    Counters, Decision, Limit, Outcome, QuotaError, QuotaStore, ReserveRequest, Storage,
    StorageChange, StorageDecision, StorageLimit, StorageLimits, Ticket, day_of, minute_of,
    redact_url,
};
use crate::domain::TenantId;

/// Seconds the day counter is kept (a request may settle into yesterday's counter).
const DAY_TTL_SECONDS: u64 = 2 * 86_400;
/// Seconds the minute counters are kept.
const MINUTE_TTL_SECONDS: u64 = 120;

/// KEYS: day tokens, minute requests, minute tokens, in-flight set.
/// ARGV: estimate, daily limit, rpm, tpm, max concurrent (each limit -1: none), now ms,
/// lease expiry ms, id, day ttl s, minute ttl s.
/// Returns {admitted 1/0, index of the limit hit (-1), day tokens, minute requests,
/// minute tokens, in flight} — usage after the reservation when admitted. An id already in
/// flight (the same call run twice) is answered as admitted without reserving again.
pub const RESERVE: &str = r"
local est = tonumber(ARGV[1])
local now = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local day = tonumber(redis.call('GET', KEYS[1]) or '0')
local req = tonumber(redis.call('GET', KEYS[2]) or '0')
local tok = tonumber(redis.call('GET', KEYS[3]) or '0')
local inflight = redis.call('ZCARD', KEYS[4])
if redis.call('ZSCORE', KEYS[4], ARGV[8]) then return {1, -1, day, req, tok, inflight} end
local function over(n, limit)
  limit = tonumber(limit)
  return limit >= 0 and n > limit
end
local hit = -1
if over(day + est, ARGV[2]) then hit = 0
elseif over(req + 1, ARGV[3]) then hit = 1
elseif over(tok + est, ARGV[4]) then hit = 2
elseif over(inflight + 1, ARGV[5]) then hit = 3
end
if hit >= 0 then return {0, hit, day, req, tok, inflight} end
day = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[9])
req = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[10])
tok = redis.call('INCRBY', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[10])
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[8])
local keep = tonumber(ARGV[7]) - now
if redis.call('PTTL', KEYS[4]) < keep then redis.call('PEXPIRE', KEYS[4], keep) end
return {1, -1, day, req, tok, inflight + 1}
";

/// KEYS: day tokens, minute requests, minute tokens, in-flight set.
/// ARGV: id, tokens to refund (the estimate), tokens to charge (actual), refund the request 1/0.
/// Applies only if the id was still in flight (exactly once); counters of windows that already
/// expired are not re-created.
pub const FINISH: &str = r"
if redis.call('ZREM', KEYS[4], ARGV[1]) == 0 then return 0 end
local delta = tonumber(ARGV[3]) - tonumber(ARGV[2])
if delta ~= 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], delta) end
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('INCRBY', KEYS[3], delta) end
end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then redis.call('DECR', KEYS[2]) end
return 1
";

/// KEYS: day tokens, minute requests, minute tokens, in-flight set. ARGV: now ms.
pub const USAGE: &str = r"
local day = tonumber(redis.call('GET', KEYS[1]) or '0')
local req = tonumber(redis.call('GET', KEYS[2]) or '0')
local tok = tonumber(redis.call('GET', KEYS[3]) or '0')
local inflight = redis.call('ZCOUNT', KEYS[4], '(' .. ARGV[1], '+inf')
return {day, req, tok, inflight}
";

/// KEYS: the tenant's storage hash (fields `documents`, `bytes`; no expiry: stored data does
/// not expire). ARGV: documents delta, bytes delta, max documents (-1: none), max bytes (-1:
/// none). The rule of [`super::apply_storage`]: additions that would pass a limit are refused,
/// removals always apply, totals never go below zero. Returns {applied 1/0, index of the limit
/// hit (-1; 0 documents, 1 bytes), documents, bytes} — the totals after a change, or as they
/// were when refused.
pub const STORAGE: &str = r"
local docs = tonumber(redis.call('HGET', KEYS[1], 'documents') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
local dd = tonumber(ARGV[1])
local db = tonumber(ARGV[2])
local nd = math.max(0, docs + dd)
local nb = math.max(0, bytes + db)
if dd > 0 and tonumber(ARGV[3]) >= 0 and nd > tonumber(ARGV[3]) then return {0, 0, docs, bytes} end
if db > 0 and tonumber(ARGV[4]) >= 0 and nb > tonumber(ARGV[4]) then return {0, 1, docs, bytes} end
if dd ~= 0 or db ~= 0 then redis.call('HSET', KEYS[1], 'documents', nd, 'bytes', nb) end
return {1, -1, nd, nb}
";

/// The key of a tenant's stored documents and bytes (a hash).
pub fn storage_key(tenant: &TenantId) -> String {
    format!("tenantry:{{{tenant}}}:storage")
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS). For a cluster, one or
    /// more seed nodes sharing scheme and credentials:
    /// `redis://[user:password@]host:port[,host:port...]`.
    pub url: String,
    /// The URL names seed nodes of a Redis Cluster (the client discovers the others).
    pub cluster: bool,
    /// Bound on one command (reserve, settle, usage, ping).
    pub command_timeout: Duration,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
}

/// Keys of one tenant's windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Day tokens.
    pub day_tokens: String,
    /// Minute requests.
    pub minute_requests: String,
    /// Minute tokens.
    pub minute_tokens: String,
    /// In-flight set.
    pub in_flight: String,
}

impl Keys {
    /// The keys of `tenant` for `day` and `minute`.
    pub fn new(tenant: &TenantId, day: u64, minute: u64) -> Self {
        let p = format!("tenantry:{{{tenant}}}");
        Self {
            day_tokens: format!("{p}:tokens:day:{day}"),
            minute_requests: format!("{p}:requests:minute:{minute}"),
            minute_tokens: format!("{p}:tokens:minute:{minute}"),
            in_flight: format!("{p}:inflight"),
        }
    }

    /// All four, in the order the scripts take them.
    pub fn all(&self) -> [&str; 4] {
        [
            &self.day_tokens,
            &self.minute_requests,
            &self.minute_tokens,
            &self.in_flight,
        ]
    }
}

/// A script: its source (for `EVAL`) and its hash (for `EVALSHA`).
#[derive(Clone)]
struct Lua {
    source: &'static str,
    hash: String,
}

impl Lua {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            hash: Script::new(source).get_hash().to_string(),
        }
    }

    /// `EVALSHA`, or `EVAL` when the node answers `NOSCRIPT`; routed by the first key.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
        keys: &Keys,
        args: &[String],
    ) -> RedisResult<T> {
        self.eval_keys(conn, &keys.all()[..], args).await
    }

    /// [`Lua::eval`] with any keys.
    async fn eval_keys<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
        keys: &[&str],
        args: &[String],
    ) -> RedisResult<T> {
        let call = |name: &str, body: &str| {
            let mut cmd = redis::cmd(name);
            cmd.arg(body).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        match call("EVALSHA", &self.hash).query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                call("EVAL", self.source).query_async(conn).await
            }
            other => other,
        }
    }
}

/// A single node (`ConnectionManager`) or a cluster (`ClusterConnection`); both reconnect by
/// themselves and are cheap to clone.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Retries of a command (reconnects, redirections) within its time bound.
const RETRIES: u32 = 2;
/// Bounds of the wait between retries, in milliseconds.
const MIN_RETRY_WAIT_MS: u64 = 50;
const MAX_RETRY_WAIT_MS: u64 = 1_000;

/// Quotas in Redis or Redis Cluster. Connects lazily and reconnects by itself.
pub struct RedisStore {
    conn: Conn,
    timeout: Duration,
    url: String,
    reserve: Lua,
    finish: Lua,
    usage: Lua,
    storage: Lua,
}

impl RedisStore {
    /// A store for `options.url`; does not connect yet (the first command does). A cluster
    /// store must be created inside a Tokio runtime.
    pub fn new(options: &RedisOptions) -> Result<Self, QuotaError> {
        let redacted = redact_url(&options.url);
        let invalid = |reason: String| QuotaError::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let conn = if options.cluster {
            cluster_connection(options).map_err(invalid)?
        } else {
            single_connection(options).map_err(invalid)?
        };
        Ok(Self {
            conn,
            timeout: options.command_timeout + options.connect_timeout,
            url: redacted,
            reserve: Lua::new(RESERVE),
            finish: Lua::new(FINISH),
            usage: Lua::new(USAGE),
            storage: Lua::new(STORAGE),
        })
    }

    /// The URL with its password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        lua: &Lua,
        keys: &Keys,
        args: &[String],
    ) -> Result<T, QuotaError> {
        self.run_keys(lua, &keys.all()[..], args).await
    }

    async fn run_keys<T: redis::FromRedisValue>(
        &self,
        lua: &Lua,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, QuotaError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, lua.eval_keys(&mut conn, keys, args)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(QuotaError::Unavailable(describe(&e))),
            Err(_) => Err(QuotaError::Unavailable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

// The redis crate's error text can quote the URL; only its kind is passed on.
fn url_error(e: &redis::RedisError) -> String {
    format!("{:?}", e.kind())
}

fn single_connection(options: &RedisOptions) -> Result<Conn, String> {
    if let Ok(seeds) = seed_urls(&options.url)
        && seeds.len() > 1
    {
        return Err(format!(
            "{} hosts given; a list of cluster nodes needs quota.redisCluster: true",
            seeds.len()
        ));
    }
    let client = Client::open(options.url.as_str()).map_err(|e| url_error(&e))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.command_timeout))
        .set_number_of_retries(RETRIES as usize)
        .set_min_delay(Duration::from_millis(MIN_RETRY_WAIT_MS))
        .set_max_delay(Duration::from_millis(MAX_RETRY_WAIT_MS));
    let conn =
        ConnectionManager::new_lazy_with_config(client, config).map_err(|e| url_error(&e))?;
    Ok(Conn::Single(conn))
}

fn cluster_connection(options: &RedisOptions) -> Result<Conn, String> {
    let seeds = seed_urls(&options.url)?;
    let mut infos = Vec::with_capacity(seeds.len());
    for url in &seeds {
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map_err(|e| url_error(&e))?;
        if info.redis_settings().db() != 0 {
            return Err("Redis Cluster has only database 0".to_string());
        }
        infos.push(info);
    }
    let client = ClusterClient::builder(infos)
        .connection_timeout(options.connect_timeout)
        .response_timeout(options.command_timeout)
        .overall_response_timeout(Some(options.command_timeout + options.connect_timeout))
        .retries(RETRIES)
        .min_retry_wait(MIN_RETRY_WAIT_MS)
        .max_retry_wait(MAX_RETRY_WAIT_MS)
        .build()
        .map_err(|e| format!("{:?}: {}", e.kind(), e.detail().unwrap_or_default()))?;
    let config = redis::cluster::ClusterConfig::new()
        .set_connection_timeout(options.connect_timeout)
        .set_response_timeout(options.command_timeout);
    Ok(Conn::Cluster(
        client.get_pending_async_connection_with_config(config),
    ))
}

/// The node URLs of `scheme://[userinfo@]host:port[,host:port...][/db][?query]`, each with the
/// shared scheme, credentials, database and query.
fn seed_urls(url: &str) -> Result<Vec<String>, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "not a URL (redis://host:port or rediss://host:port)".to_string())?;
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!("scheme {scheme}:// (use redis:// or rediss://)"));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err("empty host in the list of nodes".to_string());
    }
    Ok(hosts
        .iter()
        .map(|h| format!("{scheme}://{userinfo}{h}{tail}"))
        .collect())
}

/// An error's description without anything that could echo the URL.
fn describe(e: &redis::RedisError) -> String {
    match e.kind() {
        redis::ErrorKind::Io => format!("I/O error: {}", e.detail().unwrap_or("connection failed")),
        kind => format!("{kind:?}: {}", e.detail().unwrap_or_default()),
    }
}

fn counters(v: &[i64]) -> Counters {
    let u = |i: usize| v.get(i).and_then(|x| u64::try_from(*x).ok()).unwrap_or(0);
    Counters {
        daily_tokens: u(0),
        minute_requests: u(1),
        minute_tokens: u(2),
        in_flight: u(3),
    }
}

#[async_trait]
impl QuotaStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn reserve(&self, req: &ReserveRequest) -> Result<Decision, QuotaError> {
        let (day, minute) = (day_of(req.now_ms), minute_of(req.now_ms));
        let keys = Keys::new(&req.tenant, day, minute);
        let ticket = Ticket {
            id: uuid::Uuid::new_v4().simple().to_string(),
            tenant: req.tenant.clone(),
            estimate: req.estimate,
            day,
            minute,
        };
        let lease_ms = u64::try_from(req.lease.as_millis()).unwrap_or(u64::MAX / 2);
        let l = &req.limits;
        // No limit of a kind: -1, which the script never compares against.
        let limit = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
        let args = [
            req.estimate.to_string(),
            limit(l.daily_tokens),
            limit(l.requests_per_minute),
            limit(l.tokens_per_minute),
            limit(l.max_concurrent_requests),
            req.now_ms.to_string(),
            req.now_ms.saturating_add(lease_ms).to_string(),
        ]
        .into_iter()
        .chain([
            ticket.id.clone(),
            DAY_TTL_SECONDS.to_string(),
            MINUTE_TTL_SECONDS.to_string(),
        ])
        .collect::<Vec<_>>();
        let reply: Vec<i64> = match self.run(&self.reserve, &keys, &args).await {
            Ok(r) => r,
            Err(e) => {
                // The script may have run although its answer was lost: release the id in the
                // background (a no-op if it never got in), so a timeout reserves nothing.
                let (keys, mut conn, finish) =
                    (keys.clone(), self.conn.clone(), self.finish.clone());
                let args = [
                    ticket.id.clone(),
                    ticket.estimate.to_string(),
                    "0".to_string(),
                    "1".to_string(),
                ];
                let timeout = self.timeout;
                tokio::spawn(async move {
                    let release = finish.eval::<i64>(&mut conn, &keys, &args);
                    let _ = tokio::time::timeout(timeout, release).await;
                });
                return Err(e);
            }
        };
        if reply.len() != 6 {
            return Err(QuotaError::Protocol(format!("reserve returned {reply:?}")));
        }
        let used = counters(&reply[2..]);
        if reply[0] == 1 {
            Ok(Decision::Admitted { ticket, used })
        } else {
            let limit = Limit::from_index(reply[1])
                .ok_or_else(|| QuotaError::Protocol(format!("reserve returned {reply:?}")))?;
            Ok(Decision::Rejected { limit, used })
        }
    }

    async fn finish(&self, ticket: &Ticket, outcome: Outcome) -> Result<bool, QuotaError> {
        let keys = Keys::new(&ticket.tenant, ticket.day, ticket.minute);
        let (charge, refund_request) = match outcome {
            Outcome::Used { tokens } => (tokens, "0"),
            Outcome::Released => (0, "1"),
        };
        let args = [
            ticket.id.clone(),
            ticket.estimate.to_string(),
            charge.to_string(),
            refund_request.to_string(),
        ];
        let applied: i64 = self.run(&self.finish, &keys, &args).await?;
        Ok(applied == 1)
    }

    async fn usage(&self, tenant: &TenantId, now_ms: u64) -> Result<Counters, QuotaError> {
        let keys = Keys::new(tenant, day_of(now_ms), minute_of(now_ms));
        let reply: Vec<i64> = self.run(&self.usage, &keys, &[now_ms.to_string()]).await?;
        Ok(counters(&reply))
    }

    async fn change_storage(
        &self,
        tenant: &TenantId,
        change: StorageChange,
        limits: &StorageLimits,
    ) -> Result<StorageDecision, QuotaError> {
        let limit = |l: Option<u64>| l.map_or("-1".to_string(), |l| l.to_string());
        let args = [
            change.documents.to_string(),
            change.bytes.to_string(),
            limit(limits.max_documents),
            limit(limits.max_stored_bytes),
        ];
        let key = storage_key(tenant);
        let reply: Vec<i64> = self.run_keys(&self.storage, &[&key], &args).await?;
        let [applied, hit, documents, bytes] = reply[..] else {
            return Err(QuotaError::Protocol(format!("storage returned {reply:?}")));
        };
        let totals = Storage {
            documents: u64::try_from(documents).unwrap_or(0),
            bytes: u64::try_from(bytes).unwrap_or(0),
        };
        Ok(match (applied, hit) {
            (1, _) => StorageDecision::Applied(totals),
            (_, 0) => StorageDecision::Refused(StorageLimit::MaxDocuments, totals),
            _ => StorageDecision::Refused(StorageLimit::MaxStoredBytes, totals),
        })
    }

    async fn storage(&self, tenant: &TenantId) -> Result<Storage, QuotaError> {
        self.change_storage(tenant, StorageChange::default(), &StorageLimits::default())
            .await
            .map(|d| match d {
                StorageDecision::Applied(s) | StorageDecision::Refused(_, s) => s,
            })
    }

    async fn ping(&self) -> Result<(), QuotaError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(self.timeout, cmd.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(QuotaError::Unavailable(describe(&e))),
            Err(_) => Err(QuotaError::Unavailable("PING timed out".to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_and_hash_tagged_per_tenant() {
        let k = Keys::new(&TenantId::parse("acme").expect("id"), 20_000, 28_800_000);
        assert_eq!(k.day_tokens, "tenantry:{acme}:tokens:day:20000");
        assert_eq!(
            k.minute_requests,
            "tenantry:{acme}:requests:minute:28800000"
        );
        assert_eq!(k.minute_tokens, "tenantry:{acme}:tokens:minute:28800000");
        assert_eq!(k.in_flight, "tenantry:{acme}:inflight");
        // Ids that could escape the namespace or the hash tag never become a TenantId.
        for bad in ["a}b", "a:b", "a{b", "A", "a b", "a*", ""] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_urls_are_reported_without_the_password() {
        let err = RedisStore::new(&RedisOptions {
            url: "http://user:hunter2@host/".to_string(),
            cluster: false,
            command_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(100),
        })
        .err()
        .expect("http:// refused");
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn seed_lists_share_scheme_credentials_and_database() {
        assert_eq!(
            seed_urls("rediss://u:p%2Cw@a:7000, b:7001,[::1]:7002/0?protocol=resp3")
                .expect("valid"),
            [
                "rediss://u:p%2Cw@a:7000/0?protocol=resp3",
                "rediss://u:p%2Cw@b:7001/0?protocol=resp3",
                "rediss://u:p%2Cw@[::1]:7002/0?protocol=resp3",
            ]
        );
        assert_eq!(
            seed_urls("redis://h:6379").expect("valid"),
            ["redis://h:6379"]
        );
        for bad in ["h:6379", "http://h", "redis://a,,b", "redis://"] {
            assert!(seed_urls(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn bad_cluster_and_seed_list_urls_are_refused_without_the_password() {
        let options = |url: &str, cluster| RedisOptions {
            url: url.to_string(),
            cluster,
            command_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(100),
        };
        for (url, cluster, why) in [
            ("redis://:hunter2@a:1,b:2", false, "redisCluster"),
            ("redis://:hunter2@a:1,b:2/3", true, "database 0"),
            ("redis://:hunter2@a:1,,b:2", true, "empty host"),
            ("redis+unix://:hunter2@/tmp/redis.sock", true, "scheme"),
        ] {
            let err = RedisStore::new(&options(url, cluster))
                .err()
                .unwrap_or_else(|| panic!("{url} refused"));
            let text = err.to_string();
            assert!(text.contains(why) && !text.contains("hunter2"), "{text}");
        }
        let store = RedisStore::new(&options("rediss://:hunter2@a:1,b:2", true)).expect("lazy");
        assert_eq!(store.url(), "rediss://***@a:1,b:2");
    }
}
