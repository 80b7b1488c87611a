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
//!
//! The reserve script first drops expired in-flight entries (a replica that crashed mid-request
//! leaks nothing past its lease). Windows come from the caller's clock (`now` is an argument), so
//! replicas must keep their clocks in sync (NTP).
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::{
    Counters, Decision, Limit, Outcome, QuotaError, QuotaStore, ReserveRequest, Ticket, day_of,
    minute_of, redact_url,
};
use crate::domain::TenantId;

/// Seconds the day counter is kept (a request may settle into yesterday's counter).
const DAY_TTL_SECONDS: u64 = 2 * 86_400;
/// Seconds the minute counters are kept.
const MINUTE_TTL_SECONDS: u64 = 120;

/// KEYS: day tokens, minute requests, minute tokens, in-flight set.
/// ARGV: estimate, daily limit, rpm, tpm, max concurrent, now ms, lease expiry ms, id,
/// day ttl s, minute ttl s.
/// Returns {admitted 1/0, index of the limit hit (-1), day tokens, minute requests,
/// minute tokens, in flight} — usage after the reservation when admitted.
const RESERVE: &str = r"
local est = tonumber(ARGV[1])
local now = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local day = tonumber(redis.call('GET', KEYS[1]) or '0')
local req = tonumber(redis.call('GET', KEYS[2]) or '0')
local tok = tonumber(redis.call('GET', KEYS[3]) or '0')
local inflight = redis.call('ZCARD', KEYS[4])
local hit = -1
if day + est > tonumber(ARGV[2]) then hit = 0
elseif req + 1 > tonumber(ARGV[3]) then hit = 1
elseif tok + est > tonumber(ARGV[4]) then hit = 2
elseif inflight + 1 > tonumber(ARGV[5]) then hit = 3
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
const FINISH: &str = r"
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
const USAGE: &str = r"
local day = tonumber(redis.call('GET', KEYS[1]) or '0')
local req = tonumber(redis.call('GET', KEYS[2]) or '0')
local tok = tonumber(redis.call('GET', KEYS[3]) or '0')
local inflight = redis.call('ZCOUNT', KEYS[4], '(' .. ARGV[1], '+inf')
return {day, req, tok, inflight}
";

/// Connection settings.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS).
    pub url: String,
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

    fn all(&self) -> [&str; 4] {
        [
            &self.day_tokens,
            &self.minute_requests,
            &self.minute_tokens,
            &self.in_flight,
        ]
    }
}

/// Quotas in Redis. Connects lazily and reconnects by itself (redis `ConnectionManager`).
pub struct RedisStore {
    conn: ConnectionManager,
    timeout: Duration,
    url: String,
    reserve: Script,
    finish: Script,
    usage: Script,
}

impl RedisStore {
    /// A store for `options.url`; does not connect yet (the first command does).
    pub fn new(options: &RedisOptions) -> Result<Self, QuotaError> {
        let redacted = redact_url(&options.url);
        let invalid = |reason: String| QuotaError::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        // The redis crate's error text can quote the URL; never pass it on.
        let client =
            Client::open(options.url.as_str()).map_err(|e| invalid(format!("{:?}", e.kind())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.command_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            conn,
            timeout: options.command_timeout + options.connect_timeout,
            url: redacted,
            reserve: Script::new(RESERVE),
            finish: Script::new(FINISH),
            usage: Script::new(USAGE),
        })
    }

    /// The URL with its password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &Keys,
        args: &[String],
    ) -> Result<T, QuotaError> {
        let mut inv = script.prepare_invoke();
        for k in keys.all() {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(QuotaError::Unavailable(describe(&e))),
            Err(_) => Err(QuotaError::Unavailable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
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
        let args = [
            req.estimate,
            l.daily_tokens,
            l.requests_per_minute,
            l.tokens_per_minute,
            l.max_concurrent_requests,
            req.now_ms,
            req.now_ms.saturating_add(lease_ms),
        ]
        .iter()
        .map(u64::to_string)
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
                let (ticket, keys, conn, finish) = (
                    ticket.clone(),
                    keys.clone(),
                    self.conn.clone(),
                    self.finish.clone(),
                );
                let timeout = self.timeout;
                tokio::spawn(async move {
                    let mut inv = finish.prepare_invoke();
                    for k in keys.all() {
                        inv.key(k);
                    }
                    inv.arg(&ticket.id).arg(ticket.estimate).arg(0).arg(1);
                    let mut conn = conn;
                    let _ = tokio::time::timeout(timeout, inv.invoke_async::<i64>(&mut conn)).await;
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
            command_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(100),
        })
        .err()
        .expect("http:// refused");
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
    }
}
