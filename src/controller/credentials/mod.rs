//! Per-tenant store credentials. Without them every tenant namespace holds copies of the same
//! Redis URL and Qdrant key, so whoever reads Secrets in one tenant namespace reaches every
//! tenant's counters and vectors. With `--redis-acl-users` each tenant gets its own Redis ACL
//! user limited to its own keys ([`redis_acl`]); with `--qdrant-tenant-tokens` its own Qdrant
//! JWT limited to its own collections ([`qdrant_token`]). Both are written into the tenant's
//! `<tenant>-api-credentials` Secret in place of the shared values, under the variables the
//! pods read (`TENANTRY_REDIS_URL`, `TENANTRY_QDRANT_API_KEY`); the shared admin credentials
//! stay in the operator's namespace.
//!
//! Rotation: the annotation `tenantry.dev/rotate-credentials` with a new value gives the
//! tenant a new Redis password and a new Qdrant token. The previous Redis password keeps
//! working for `--redis-password-grace` (the Deployment rolls meanwhile: its pod template
//! carries a hash of the credentials); Qdrant tokens are also re-minted once half their
//! lifetime (`--qdrant-token-ttl`) has passed, the previous one valid until its `exp`.
//! Deleting the Tenant deletes its Redis user.
pub mod qdrant_token;
pub mod redis_acl;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, Secret, SecretKeySelector};
use kube::api::Api;
use sha2::{Digest, Sha256};

use super::build::{BuildConfig, Names};
use super::validate::ValidTenant;
use super::{Context, Error, kube_err};
use crate::auth::keys::unix_now;
use crate::crd::Tenant;
use crate::domain::{TenantId, parse_duration};
use crate::vector::{Kind, TenantVectors};

/// Annotation on a Tenant: a new value rotates its store credentials at once.
pub const ROTATE_ANNOTATION: &str = "tenantry.dev/rotate-credentials";
/// Annotation on the credentials Secret: the rotate value last acted on.
pub const ROTATED_FOR_ANNOTATION: &str = "tenantry.dev/credentials-rotated-for";
/// Annotation on the credentials Secret during a Redis rotation: `<sha256 of the previous
/// password>/<unix seconds until which it is accepted>`.
pub const PREVIOUS_REDIS_PASSWORD_ANNOTATION: &str = "tenantry.dev/redis-previous-password";
/// Annotation on the API pod template: sha256 of the credentials Secret's data, so pods roll
/// (and read the new values) when credentials change.
pub const HASH_ANNOTATION: &str = "tenantry.dev/credentials-hash";
/// The pods' variable (and the credentials Secret's key) of the Redis URL.
pub const REDIS_ENV: &str = "TENANTRY_REDIS_URL";
/// The pods' variable (and the credentials Secret's key) of the Qdrant API key or token.
pub const QDRANT_ENV: &str = "TENANTRY_QDRANT_API_KEY";
/// Shortest `--qdrant-token-ttl`: tokens are renewed at half-life, which must be well above
/// the operator's resync (5 minutes).
const MIN_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Bound on one admin command to Redis.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of `tenantry operator` for per-tenant store credentials.
#[derive(Debug, Clone, clap::Args)]
pub struct CredentialArgs {
    /// Give each tenant its own Redis ACL user (`tenantry-<tenant>`), limited to its own quota
    /// keys and the commands its pods send, instead of copying the shared Redis URL into
    /// tenant namespaces. The operator manages the users with the shared URL (TENANTRY_REDIS_URL
    /// of --api-env-from-secret, --api-env or quota.redisUrl), which needs ACL rights.
    #[arg(long, env = "TENANTRY_REDIS_ACL_USERS", default_value_t = false)]
    pub redis_acl_users: bool,
    /// How long a tenant's previous Redis password keeps working after a rotation (its pods
    /// roll meanwhile).
    #[arg(long, env = "TENANTRY_REDIS_PASSWORD_GRACE", default_value = "1h", value_parser = duration)]
    pub redis_password_grace: Duration,
    /// Give each tenant its own Qdrant token (a JWT scoped to its collections, signed with the
    /// operator's TENANTRY_QDRANT_API_KEY) instead of the shared key. The Qdrant server must
    /// run with `service.jwt_rbac: true`.
    #[arg(long, env = "TENANTRY_QDRANT_TENANT_TOKENS", default_value_t = false)]
    pub qdrant_tenant_tokens: bool,
    /// Lifetime of a tenant's Qdrant token (at least 1h); a new one is minted at half-life.
    #[arg(long, env = "TENANTRY_QDRANT_TOKEN_TTL", default_value = "168h", value_parser = duration)]
    pub qdrant_token_ttl: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("invalid duration {s:?} (e.g. 1h, 30m, 168h)"))
}

/// A secret value whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Per-tenant Redis users.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisUsers {
    /// How long the previous password keeps working after a rotation.
    pub grace: Duration,
    /// The quota Redis is a cluster (`quota.redisCluster`).
    pub cluster: bool,
}

/// Per-tenant Qdrant tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct QdrantTokens {
    /// The server's API key (the tokens' HS256 secret).
    pub key: Redacted,
    /// Lifetime of a token.
    pub ttl: Duration,
}

/// Which stores get per-tenant credentials (default: none, the shared values are copied).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoreCredentials {
    /// Per-tenant Redis ACL users.
    pub redis: Option<RedisUsers>,
    /// Per-tenant Qdrant tokens.
    pub qdrant: Option<QdrantTokens>,
}

impl StoreCredentials {
    /// From the flags, checked against what the operator was given: the Redis admin URL
    /// must come from somewhere, tokens need a Qdrant server and the operator's key.
    pub fn from_args(
        args: &CredentialArgs,
        build: &BuildConfig,
        qdrant_key: Option<String>,
    ) -> Result<Self, String> {
        let redis = if args.redis_acl_users {
            let has_url = build.api_secret_env.iter().any(|(e, _, _)| e == REDIS_ENV)
                || build
                    .api_env
                    .iter()
                    .any(|(k, v)| k == REDIS_ENV && !v.is_empty())
                || build.serve.quota.redis_url.is_some();
            if !has_url {
                return Err(format!(
                    "--redis-acl-users needs the quota Redis: {REDIS_ENV} in --api-env-from-secret (a URL with admin credentials), --api-env, or quota.redisUrl in --api-config"
                ));
            }
            Some(RedisUsers {
                grace: args.redis_password_grace,
                cluster: build.serve.quota.redis_cluster,
            })
        } else {
            None
        };
        let qdrant = if args.qdrant_tenant_tokens {
            if build.qdrant_url.is_none() {
                return Err("--qdrant-tenant-tokens needs --qdrant-url".to_string());
            }
            let Some(key) = qdrant_key.filter(|k| !k.is_empty()) else {
                return Err(format!(
                    "--qdrant-tenant-tokens needs the operator's Qdrant API key in {QDRANT_ENV} (the tokens are signed with it)"
                ));
            };
            if args.qdrant_token_ttl < MIN_TOKEN_TTL {
                return Err("--qdrant-token-ttl must be at least 1h".to_string());
            }
            Some(QdrantTokens {
                key: Redacted(key),
                ttl: args.qdrant_token_ttl,
            })
        } else {
            None
        };
        Ok(Self { redis, qdrant })
    }

    /// Whether any store gets per-tenant credentials.
    pub fn enabled(&self) -> bool {
        self.redis.is_some() || self.qdrant.is_some()
    }
}

/// The pods' variables read from the tenant's own credentials (they replace shared ones of the
/// same name, so they come last).
pub fn pod_env(names: &Names, cfg: &BuildConfig) -> Vec<EnvVar> {
    let own = &cfg.store_credentials;
    let mut vars = Vec::new();
    if own.redis.is_some() {
        vars.push(REDIS_ENV);
    }
    if own.qdrant.is_some() && cfg.qdrant_url.is_some() {
        vars.push(QDRANT_ENV);
    }
    vars.into_iter()
        .map(|name| EnvVar {
            name: name.to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: names.credentials.clone(),
                    key: name.to_string(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// Stamps the hash of `credentials`' data on the pod template, so the pods roll when it
/// changes (they read it as environment variables, once).
pub fn stamp(mut deployment: Deployment, credentials: Option<&Secret>) -> Deployment {
    let Some(data) = credentials.and_then(|s| s.data.as_ref()) else {
        return deployment;
    };
    let mut sha = Sha256::new();
    for (k, v) in data {
        sha.update((k.len() as u64).to_be_bytes());
        sha.update(k.as_bytes());
        sha.update((v.0.len() as u64).to_be_bytes());
        sha.update(&v.0);
    }
    let hash: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    deployment
        .spec
        .template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(Default::default)
        .insert(HASH_ANNOTATION.to_string(), hash);
    deployment
}

/// Replaces the shared values in `data` by `valid`'s own credentials (provisioning them in
/// the stores) and returns the annotations of the credentials Secret.
pub async fn provision(
    ctx: &Context,
    valid: &ValidTenant<'_>,
    names: &Names,
    data: &mut BTreeMap<String, ByteString>,
) -> Result<BTreeMap<String, String>, Error> {
    let own = &ctx.build.store_credentials;
    let mut annotations = BTreeMap::new();
    if !own.enabled() {
        return Ok(annotations);
    }
    let stored = read_stored(ctx, names).await?;
    let stored_data = stored
        .as_ref()
        .and_then(|s| s.data.clone())
        .unwrap_or_default();
    let stored_annotations = stored
        .as_ref()
        .and_then(|s| s.metadata.annotations.clone())
        .unwrap_or_default();
    let requested = valid
        .tenant
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_ANNOTATION))
        .cloned();
    let rotate = requested.is_some()
        && requested.as_ref() != stored_annotations.get(ROTATED_FOR_ANNOTATION)
        && stored.is_some();
    if let Some(r) = &requested {
        annotations.insert(ROTATED_FOR_ANNOTATION.to_string(), r.clone());
    }
    let now = u64::try_from(unix_now()).unwrap_or(0);
    if let Some(redis) = &own.redis {
        let stored_url = stored_string(&stored_data, REDIS_ENV);
        let previous = stored_annotations
            .get(PREVIOUS_REDIS_PASSWORD_ANNOTATION)
            .and_then(|v| parse_previous(v));
        let (url, previous) = provision_redis(
            ctx,
            redis,
            &valid.id,
            stored_url.as_deref(),
            previous,
            rotate,
            now,
        )
        .await?;
        data.insert(REDIS_ENV.to_string(), ByteString(url.into_bytes()));
        if let Some((hash, until)) = previous {
            annotations.insert(
                PREVIOUS_REDIS_PASSWORD_ANNOTATION.to_string(),
                format!("{hash}/{until}"),
            );
        }
    }
    if let Some(qdrant) = &own.qdrant {
        let vectors = TenantVectors::new(
            ctx.vectors.clone(),
            valid.id.clone(),
            valid.tenant.spec.retrieval.isolation,
            ctx.dimension,
        );
        let collections = [
            vectors.collection(Kind::Docs),
            vectors.collection(Kind::Cache),
        ];
        let stored_token = stored_string(&stored_data, QDRANT_ENV);
        let token = tenant_token(qdrant, &valid.id, &collections, stored_token, rotate, now)?;
        data.insert(QDRANT_ENV.to_string(), ByteString(token.into_bytes()));
    }
    Ok(annotations)
}

/// The token to give the tenant: the stored one while it is valid for the same collections
/// and not past half-life (and no rotation is asked for), else a new one.
pub fn tenant_token(
    qdrant: &QdrantTokens,
    tenant: &TenantId,
    collections: &[String],
    stored: Option<String>,
    rotate: bool,
    now: u64,
) -> Result<String, Error> {
    let ttl = qdrant.ttl.as_secs();
    let want = qdrant_token::claims(tenant.as_str(), collections, now.saturating_add(ttl));
    if !rotate
        && let Some(token) = stored
        && qdrant_token::keep(
            qdrant_token::verify(&token, &qdrant.key.0).as_ref(),
            &want,
            now,
            ttl,
        )
    {
        return Ok(token);
    }
    tracing::info!(tenant = %tenant, "minting the tenant's Qdrant token");
    qdrant_token::mint(&want, &qdrant.key.0).map_err(Error::Credentials)
}

/// Asserts the tenant's Redis user and returns its URL and the previous password still
/// accepted (`(sha256, until)`).
async fn provision_redis(
    ctx: &Context,
    redis: &RedisUsers,
    tenant: &TenantId,
    stored_url: Option<&str>,
    previous: Option<(String, u64)>,
    rotate: bool,
    now: u64,
) -> Result<(String, Option<(String, u64)>), Error> {
    let admin_url = admin_url(ctx).await?;
    let parts = redis_acl::UrlParts::parse(&admin_url)
        .map_err(|e| Error::Credentials(format!("{REDIS_ENV}: {e}")))?;
    let user = redis_acl::user(tenant);
    let stored_password = stored_url
        .and_then(|u| redis_acl::UrlParts::parse(u).ok())
        .and_then(|p| p.password_of(&user));
    let previous = previous.filter(|(_, until)| *until > now);
    let (password, previous) = match stored_password {
        Some(p) if !rotate => (p, previous),
        Some(old) => {
            tracing::info!(tenant = %tenant, "rotating the tenant's Redis password");
            let until = now.saturating_add(redis.grace.as_secs());
            (
                redis_acl::new_password(),
                Some((redis_acl::password_hash(&old), until)),
            )
        }
        None => (redis_acl::new_password(), previous),
    };
    let mut hashes = vec![redis_acl::password_hash(&password)];
    hashes.extend(previous.iter().map(|(h, _)| h.clone()));
    let mut admin = admin(&admin_url, redis.cluster).await?;
    if let Err(e) = admin.ensure_user(tenant, &hashes).await {
        forget_admin(&admin_url);
        return Err(Error::Credentials(e.to_string()));
    }
    Ok((parts.with_credentials(&user, &password), previous))
}

/// Removes the deleted `tenant`'s Redis user (a no-op without `--redis-acl-users`).
pub async fn remove(ctx: &Context, tenant: &Tenant) -> Result<(), Error> {
    let Some(redis) = &ctx.build.store_credentials.redis else {
        return Ok(());
    };
    let Ok(id) = tenant.tenant_id() else {
        return Ok(());
    };
    let admin_url = admin_url(ctx).await?;
    let mut admin = admin(&admin_url, redis.cluster).await?;
    if let Err(e) = admin.delete_user(&id).await {
        forget_admin(&admin_url);
        return Err(Error::Credentials(e.to_string()));
    }
    tracing::info!(tenant = %id, "Redis user deleted");
    Ok(())
}

/// The shared (admin) Redis URL: TENANTRY_REDIS_URL from its Secret in the operator's
/// namespace, else from `--api-env`, else `quota.redisUrl`.
async fn admin_url(ctx: &Context) -> Result<String, Error> {
    let cfg = &ctx.build;
    if let Some((_, secret, key)) = cfg.api_secret_env.iter().find(|(e, _, _)| e == REDIS_ENV) {
        let source: Api<Secret> = Api::namespaced(ctx.client.clone(), &cfg.operator_namespace);
        let s = source
            .get_opt(secret)
            .await
            .map_err(kube_err("get credentials Secret"))?;
        return s
            .and_then(|s| s.data?.remove(key))
            .and_then(|v| String::from_utf8(v.0).ok())
            .ok_or_else(|| {
                Error::Credentials(format!(
                    "Secret {}/{secret} has no key {key:?} (for {REDIS_ENV})",
                    cfg.operator_namespace
                ))
            });
    }
    cfg.api_env
        .iter()
        .rev()
        .find(|(k, v)| k == REDIS_ENV && !v.is_empty())
        .map(|(_, v)| v.clone())
        .or_else(|| cfg.serve.quota.redis_url.clone())
        .ok_or_else(|| Error::Credentials(format!("no {REDIS_ENV} to manage Redis users with")))
}

/// Admin connections by the sha256 of their URL (reused across reconciles; dropped after a
/// failure, so the next reconcile reconnects).
static ADMINS: std::sync::LazyLock<parking_lot::Mutex<HashMap<String, redis_acl::Admin>>> =
    std::sync::LazyLock::new(Default::default);

fn url_key(url: &str) -> String {
    redis_acl::password_hash(url)
}

async fn admin(url: &str, cluster: bool) -> Result<redis_acl::Admin, Error> {
    if let Some(a) = ADMINS.lock().get(&url_key(url)) {
        return Ok(a.clone());
    }
    let a = redis_acl::Admin::connect(url, cluster, REDIS_TIMEOUT)
        .await
        .map_err(|e| Error::Credentials(format!("cannot reach the quota Redis: {e}")))?;
    ADMINS.lock().insert(url_key(url), a.clone());
    Ok(a)
}

fn forget_admin(url: &str) {
    ADMINS.lock().remove(&url_key(url));
}

async fn read_stored(ctx: &Context, names: &Names) -> Result<Option<Secret>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    api.get_opt(&names.credentials)
        .await
        .map_err(kube_err("get credentials Secret"))
}

fn stored_string(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .filter(|s| !s.is_empty())
}

fn parse_previous(v: &str) -> Option<(String, u64)> {
    let (hash, until) = v.split_once('/')?;
    let ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
    Some((hash.to_string(), until.parse().ok()?)).filter(|_| ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_passwords_parse_only_when_well_formed() {
        let h = "a".repeat(64);
        assert_eq!(parse_previous(&format!("{h}/12")), Some((h.clone(), 12)));
        for bad in ["", "x/1", &format!("{h}/x"), &format!("{h}1")] {
            assert_eq!(parse_previous(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_credentials_hash_changes_with_the_data() {
        let dep = Deployment::default;
        let secret = |v: &str| Secret {
            data: Some(BTreeMap::from([(
                REDIS_ENV.to_string(),
                ByteString(v.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        let hash = |d: Deployment| {
            d.spec
                .template
                .metadata?
                .annotations?
                .remove(HASH_ANNOTATION)
        };
        let a = hash(stamp(dep(), Some(&secret("redis://u:1@h"))));
        assert!(a.is_some());
        assert_eq!(a, hash(stamp(dep(), Some(&secret("redis://u:1@h")))));
        assert_ne!(a, hash(stamp(dep(), Some(&secret("redis://u:2@h")))));
        assert_eq!(hash(stamp(dep(), None)), None);
    }
}
