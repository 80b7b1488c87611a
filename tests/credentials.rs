//! Per-tenant store credentials against the real stores: Redis ACL users (a single node and a
//! Redis Cluster with replicas) that reach only their tenant's keys while its quota operations
//! work; Qdrant JWTs (a server with `service.jwt_rbac`) that reach only their tenant's
//! collections while readiness and every vector operation work; and the operator on the test
//! API server writing per-tenant values, not the shared ones, into tenant namespaces, rotating
//! them and removing the Redis user with the Tenant.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Cluster, SYSTEM_NAMESPACE, eventually, unique};
use common::qdrant::QdrantServer;
use common::redis::{RedisCluster, RedisServer};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tenantry::controller::credentials::qdrant_token::{self, Claims};
use tenantry::controller::credentials::redis_acl::{self, Admin, UrlParts};
use tenantry::controller::credentials::{
    HASH_ANNOTATION, PREVIOUS_REDIS_PASSWORD_ANNOTATION, QDRANT_ENV, QdrantTokens, REDIS_ENV,
    ROTATE_ANNOTATION, Redacted, tenant_token,
};
use tenantry::domain::Isolation;
use tenantry::domain::TenantId;
use tenantry::quota::redis::{RedisOptions, RedisStore};
use tenantry::quota::{Decision, Limits, Outcome, QuotaStore, ReserveRequest};
use tenantry::vector::qdrant::{QdrantBackend, QdrantConfig};
use tenantry::vector::{Filter, Kind, Point, TenantVectors, VectorBackend, VectorError};

const TIMEOUT: Duration = Duration::from_secs(5);

fn now_secs() -> u64 {
    u64::try_from(tenantry::auth::keys::unix_now()).expect("after 1970")
}

/// Redis refused for lack of permission (`NOPERM`, as the server or the client spells it).
fn noperm(err: &str) -> bool {
    let e = err.to_lowercase();
    e.contains("noperm")
        || e.contains("no permissions")
        || e.contains("can't access")
        || e.contains("can't run")
}

/// The process's rustls provider (reqwest needs one), as `serve` and the operator install it.
fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn id(s: &str) -> TenantId {
    TenantId::parse(s).expect("tenant id")
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A quota store on `url` (a tenant's own URL).
fn store(url: &str, cluster: bool) -> RedisStore {
    RedisStore::new(&RedisOptions {
        url: url.to_string(),
        cluster,
        command_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
    })
    .expect("store")
}

fn request(tenant: &TenantId) -> ReserveRequest {
    ReserveRequest {
        tenant: tenant.clone(),
        limits: Limits::all(1_000, 10, 1_000, 5),
        estimate: 10,
        now_ms: now_secs() * 1_000,
        lease: Duration::from_secs(60),
    }
}

/// Reserves, settles and reads usage as `tenant` through `store`: what its pods do.
async fn quota_round_trip(store: &RedisStore, tenant: &TenantId) {
    store.ping().await.expect("PING");
    let req = request(tenant);
    let ticket = match store.reserve(&req).await.expect("reserve") {
        Decision::Admitted { ticket, .. } => ticket,
        other => panic!("not admitted: {other:?}"),
    };
    assert!(
        store
            .finish(&ticket, Outcome::Used { tokens: 7 })
            .await
            .expect("finish")
    );
    let used = store.usage(tenant, req.now_ms).await.expect("usage");
    assert!(used.daily_tokens >= 7, "{used:?}");
}

/// Runs `args` on a fresh connection to `url`; the server's error text on refusal.
async fn run(url: &str, args: &[&str]) -> Result<redis::Value, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async::<redis::Value>(&mut conn)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_tenant_redis_user_reaches_only_its_own_keys_and_its_quota_works() {
    let redis = RedisServer::start();
    let admin_url = redis.url();
    let (acme, globex) = (id("acme"), id("globex"));
    let mut admin = Admin::connect(&admin_url, false, TIMEOUT)
        .await
        .expect("admin");
    let (pa, pb) = (redis_acl::new_password(), redis_acl::new_password());
    admin
        .ensure_user(&acme, &[redis_acl::password_hash(&pa)])
        .await
        .expect("acme user");
    admin
        .ensure_user(&globex, &[redis_acl::password_hash(&pb)])
        .await
        .expect("globex user");
    let parts = UrlParts::parse(&admin_url).expect("url");
    let acme_url = parts.with_credentials(&redis_acl::user(&acme), &pa);
    let globex_url = parts.with_credentials(&redis_acl::user(&globex), &pb);

    // Its pods' quota operations work; globex's counters are out of reach.
    let acme_store = store(&acme_url, false);
    quota_round_trip(&acme_store, &acme).await;
    quota_round_trip(&store(&globex_url, false), &globex).await;
    let err = acme_store
        .reserve(&request(&globex))
        .await
        .expect_err("globex's keys");
    assert!(noperm(&err.to_string()), "{err}");
    let err = acme_store
        .usage(&globex, now_secs() * 1_000)
        .await
        .expect_err("globex's usage");
    assert!(noperm(&err.to_string()), "{err}");

    // Nothing but its keys and the scripts' commands.
    let globex_key = format!("tenantry:{{globex}}:tokens:day:{}", now_secs() / 86_400);
    let own_key = "tenantry:{acme}:x";
    for args in [
        vec!["GET", globex_key.as_str()],
        vec!["INCRBY", globex_key.as_str(), "1"],
        vec!["SET", own_key, "1"],
        vec!["DEL", own_key],
        vec!["KEYS", "*"],
        vec!["SCAN", "0"],
        vec!["FLUSHALL"],
        vec!["FLUSHDB"],
        vec!["CONFIG", "GET", "requirepass"],
        vec!["ACL", "LIST"],
        vec!["ACL", "SETUSER", "tenantry-acme", "+@all"],
        vec!["SCRIPT", "FLUSH"],
        vec!["PUBLISH", "c", "m"],
        vec![
            "EVAL",
            "return redis.call('GET', KEYS[1])",
            "1",
            globex_key.as_str(),
        ],
        vec![
            "EVAL",
            "return redis.call('GET', 'tenantry:{globex}:inflight')",
            "0",
        ],
        vec!["EVAL", "return redis.call('FLUSHALL')", "0"],
    ] {
        let err = run(&acme_url, &args)
            .await
            .expect_err(&format!("{args:?} refused"));
        assert!(noperm(&err), "{args:?}: {err}");
    }
    assert_eq!(
        run(
            &acme_url,
            &[
                "EVAL",
                "return redis.call('GET', KEYS[1])",
                "1",
                "tenantry:{acme}:none"
            ]
        )
        .await,
        Ok(redis::Value::Nil)
    );

    // Asserting the user again changes nothing (a connection made before keeps working).
    admin
        .ensure_user(&acme, &[redis_acl::password_hash(&pa)])
        .await
        .expect("again");
    quota_round_trip(&acme_store, &acme).await;

    // Rotation: the new password and the previous one, then the new one only.
    let pa2 = redis_acl::new_password();
    let new_url = parts.with_credentials(&redis_acl::user(&acme), &pa2);
    admin
        .ensure_user(
            &acme,
            &[
                redis_acl::password_hash(&pa2),
                redis_acl::password_hash(&pa),
            ],
        )
        .await
        .expect("rotating");
    assert!(run(&acme_url, &["PING"]).await.is_ok());
    assert!(run(&new_url, &["PING"]).await.is_ok());
    admin
        .ensure_user(&acme, &[redis_acl::password_hash(&pa2)])
        .await
        .expect("rotated");
    let err = run(&acme_url, &["PING"]).await.expect_err("old password");
    assert!(
        err.contains("AuthenticationFailed") || err.contains("WRONGPASS"),
        "{err}"
    );
    quota_round_trip(&store(&new_url, false), &acme).await;

    // Deleting the tenant's user locks it out.
    admin.delete_user(&acme).await.expect("delete");
    admin.delete_user(&acme).await.expect("delete twice");
    assert!(run(&new_url, &["PING"]).await.is_err());
    quota_round_trip(&store(&globex_url, false), &globex).await;
}

/// On a Redis Cluster the user is set on every node, replicas included, so the tenant's pods
/// keep working after a failover.
#[tokio::test]
async fn tenant_redis_users_exist_on_every_cluster_node_and_survive_a_failover() {
    let mut cluster = RedisCluster::start(3, 1);
    let seeds = cluster
        .nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect::<Vec<_>>()
        .join(",");
    let admin_url = format!("redis://{seeds}");
    let acme = id("acme");
    let mut admin = Admin::connect(&admin_url, true, TIMEOUT)
        .await
        .expect("admin");
    let pw = redis_acl::new_password();
    admin
        .ensure_user(&acme, &[redis_acl::password_hash(&pw)])
        .await
        .expect("user");
    for node in &cluster.nodes {
        let user = node.query(&["ACL", "GETUSER", "tenantry-acme"]);
        assert!(
            matches!(user, Some(redis::Value::Array(_) | redis::Value::Map(_))),
            "node {}: {user:?}",
            node.port
        );
    }
    let url = UrlParts::parse(&admin_url)
        .expect("url")
        .with_credentials("tenantry-acme", &pw);
    let acme_store = store(&url, true);
    quota_round_trip(&acme_store, &acme).await;
    let err = acme_store
        .reserve(&request(&id("globex")))
        .await
        .expect_err("globex");
    assert!(noperm(&err.to_string()), "{err}");

    let slot = cluster.keyslot("tenantry:{acme}:inflight");
    cluster.failover(slot);
    quota_round_trip(&acme_store, &acme).await;

    admin.delete_user(&acme).await.expect("delete");
    for node in &cluster.nodes {
        assert_eq!(
            node.query(&["ACL", "GETUSER", "tenantry-acme"]),
            Some(redis::Value::Nil),
            "node {}",
            node.port
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Qdrant

const QDRANT_KEY: &str = "qdrant-admin-key-for-tests";
const DIM: usize = 4;

fn backend(server: &QdrantServer, key: &str) -> QdrantBackend {
    let mut cfg = QdrantConfig::new(server.grpc_url());
    cfg.api_key = Some(key.to_string());
    QdrantBackend::connect(cfg).expect("backend")
}

/// The server's admin backend, once its gRPC port answers (it may open after the REST one).
async fn admin_backend(server: &QdrantServer) -> QdrantBackend {
    let admin = backend(server, QDRANT_KEY);
    for _ in 0..300 {
        if admin.ready().await.is_ok() {
            return admin;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("qdrant gRPC not ready: {:?}", admin.ready().await)
}

fn vectors(backend: &QdrantBackend, tenant: &str, isolation: Isolation) -> TenantVectors {
    TenantVectors::new(Arc::new(backend.clone()), id(tenant), isolation, DIM)
}

fn token_for(v: &TenantVectors) -> String {
    let tokens = QdrantTokens {
        key: Redacted(QDRANT_KEY.to_string()),
        ttl: Duration::from_secs(3600),
    };
    let collections = [v.collection(Kind::Docs), v.collection(Kind::Cache)];
    tenant_token(&tokens, v.tenant(), &collections, None, false, now_secs()).expect("token")
}

fn point(n: f32) -> Point {
    Point {
        id: uuid::Uuid::new_v4(),
        vector: vec![1.0, n, 0.0, 0.0],
        payload: serde_json::Map::from_iter([("document_id".to_string(), json!("d1"))]),
    }
}

/// GET on the REST port with `key` as the API key; the status.
async fn rest_status(server: &QdrantServer, path: &str, key: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}{path}", server.http_port))
        .header("api-key", key)
        .send()
        .await
        .expect("REST request")
        .status()
        .as_u16()
}

fn refused(e: &VectorError) -> bool {
    matches!(e, VectorError::Unavailable(m) if m.contains("PermissionDenied") || m.contains("Unauthenticated"))
}

#[tokio::test]
async fn a_tenant_qdrant_token_reaches_only_its_own_collections() {
    crypto();
    let server = QdrantServer::start_jwt_rbac(QDRANT_KEY);
    let admin = admin_backend(&server).await;
    let admin_acme = vectors(&admin, "acme", Isolation::Collection);
    let admin_globex = vectors(&admin, "globex", Isolation::Collection);
    admin_acme.ensure().await.expect("acme collections");
    admin_globex.ensure().await.expect("globex collections");
    admin_globex
        .upsert(Kind::Docs, vec![point(0.5)])
        .await
        .expect("globex point");

    let token = token_for(&admin_acme);
    assert_ne!(token, QDRANT_KEY);
    let scoped = backend(&server, &token);
    // Readiness with a scoped token (it may not ask about collections that are not its own).
    scoped.ready().await.expect("ready with a scoped token");

    // Every operation serve makes on its own collections.
    let acme = vectors(&scoped, "acme", Isolation::Collection);
    acme.ensure().await.expect("ensure (the collections exist)");
    acme.upsert(Kind::Docs, vec![point(0.1), point(0.2)])
        .await
        .expect("upsert");
    acme.upsert_lazy(Kind::Cache, vec![point(0.3)])
        .await
        .expect("cache upsert");
    let found = acme
        .search(Kind::Docs, vec![1.0, 0.1, 0.0, 0.0], Filter::default(), 5)
        .await;
    assert_eq!(found.expect("search").len(), 2);
    assert_eq!(
        acme.count(Kind::Docs, Filter::default())
            .await
            .expect("count"),
        2
    );
    let (page, _) = acme
        .scroll(Kind::Docs, Filter::default(), 10, None)
        .await
        .expect("scroll");
    assert_eq!(page.len(), 2);
    acme.delete(Kind::Docs, Filter::default().keyword("document_id", "d1"))
        .await
        .expect("delete");
    assert_eq!(
        acme.count(Kind::Docs, Filter::default())
            .await
            .expect("count"),
        0
    );

    // Nothing of globex's, no collection management.
    let globex_docs = admin_globex.collection(Kind::Docs);
    let across = vectors(&scoped, "globex", Isolation::Collection);
    for err in [
        across
            .count(Kind::Docs, Filter::default())
            .await
            .expect_err("count"),
        across
            .search(Kind::Docs, vec![1.0; DIM], Filter::default(), 5)
            .await
            .expect_err("search"),
        across
            .upsert(Kind::Docs, vec![point(0.9)])
            .await
            .expect_err("upsert"),
        across
            .delete(Kind::Docs, Filter::default())
            .await
            .expect_err("delete"),
        scoped
            .drop_collection(&globex_docs)
            .await
            .expect_err("drop"),
        scoped
            .drop_collection(&acme.collection(Kind::Docs))
            .await
            .expect_err("drop own"),
        vectors(&scoped, "initech", Isolation::Collection)
            .ensure()
            .await
            .expect_err("create"),
    ] {
        assert!(refused(&err), "{err}");
    }
    assert_eq!(
        rest_status(&server, &format!("/collections/{globex_docs}"), &token).await,
        403
    );
    let own = acme.collection(Kind::Docs);
    assert_eq!(
        rest_status(&server, &format!("/collections/{own}"), &token).await,
        200
    );
    assert_eq!(
        admin_globex
            .count(Kind::Docs, Filter::default())
            .await
            .expect("count"),
        1
    );

    // Expired or foreign-signed tokens are refused, and readiness says so.
    let expired = qdrant_token::mint(
        &qdrant_token::claims("acme", std::slice::from_ref(&own), now_secs() - 120),
        QDRANT_KEY,
    )
    .expect("mint");
    let forged = qdrant_token::mint(
        &qdrant_token::claims(
            "acme",
            std::slice::from_ref(&globex_docs),
            now_secs() + 3600,
        ),
        "not-the-server-key",
    )
    .expect("mint");
    for bad in [expired, forged] {
        let err = backend(&server, &bad).ready().await.expect_err("not ready");
        assert!(refused(&err), "{err}");
        assert_eq!(
            rest_status(&server, &format!("/collections/{own}"), &bad).await,
            403
        );
    }
}

/// `Partition` tenants share collections; Qdrant no longer scopes tokens by payload, so their
/// tokens reach the shared collections (and only those).
#[tokio::test]
async fn a_partition_tenant_token_reaches_the_shared_collections_only() {
    let server = QdrantServer::start_jwt_rbac(QDRANT_KEY);
    let admin = admin_backend(&server).await;
    let admin_acme = vectors(&admin, "acme", Isolation::Partition);
    admin_acme.ensure().await.expect("shared collections");
    vectors(&admin, "globex", Isolation::Collection)
        .ensure()
        .await
        .expect("globex");
    let token = token_for(&admin_acme);
    let claims: Claims = qdrant_token::verify(&token, QDRANT_KEY).expect("claims");
    let names: Vec<&str> = claims
        .access
        .iter()
        .map(|a| a.collection.as_str())
        .collect();
    assert_eq!(
        names,
        [format!("shared_docs_{DIM}"), format!("shared_cache_{DIM}")]
    );
    let scoped = backend(&server, &token);
    scoped.ready().await.expect("ready");
    let acme = vectors(&scoped, "acme", Isolation::Partition);
    acme.upsert(Kind::Docs, vec![point(0.1)])
        .await
        .expect("upsert");
    assert_eq!(
        acme.count(Kind::Docs, Filter::default())
            .await
            .expect("count"),
        1
    );
    let err = vectors(&scoped, "globex", Isolation::Collection)
        .count(Kind::Docs, Filter::default())
        .await
        .expect_err("a Collection tenant's collection");
    assert!(refused(&err), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The operator

fn secret_value(s: &Secret, key: &str) -> String {
    let data = s.data.as_ref().expect("data");
    String::from_utf8(
        data.get(key)
            .unwrap_or_else(|| panic!("no {key}"))
            .0
            .clone(),
    )
    .expect("utf-8")
}

/// The operator writes each tenant its own Redis URL and Qdrant token (never the shared URL or
/// key), the pods read them from the tenant's Secret, a rotation replaces them (the previous
/// Redis password accepted for the grace period, the pods rolled) and deleting the Tenant
/// removes its Redis user.
#[tokio::test]
async fn the_operator_gives_each_tenant_its_own_store_credentials() {
    crypto();
    let redis = RedisServer::start();
    let qdrant = QdrantServer::start_jwt_rbac(QDRANT_KEY);
    let cluster = Cluster::new().await;
    let client = cluster.client.clone();
    let stores = unique("stores");
    cluster.remove_on_drop("secret", Some(SYSTEM_NAMESPACE), &stores);
    let shared_url = redis.url();
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": stores},
        "stringData": {"redis-url": shared_url, "qdrant-api-key": QDRANT_KEY},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create stores secret");
    let redis_from = format!("{REDIS_ENV}={stores}:redis-url");
    let qdrant_from = format!("{QDRANT_ENV}={stores}:qdrant-api-key");
    let qdrant_url = qdrant.grpc_url();
    let op = common::cluster::Operator::start_with_env(
        cluster.env,
        "op-own-creds",
        &[
            "--qdrant-url",
            &qdrant_url,
            "--api-env-from-secret",
            &redis_from,
            "--api-env-from-secret",
            &qdrant_from,
            "--redis-acl-users",
            "--qdrant-tenant-tokens",
        ],
        &[(QDRANT_ENV, QDRANT_KEY)],
    );
    let (a, b) = (unique("owna"), unique("ownb"));
    cluster.create_tenant(&a, json!({"tier": "pro"})).await;
    cluster.create_tenant(&b, json!({"tier": "pro"})).await;
    let read = |name: &str| {
        let api: Api<Secret> = Api::namespaced(client.clone(), &format!("tenant-{name}"));
        let name = format!("{name}-api-credentials");
        async move { api.get_opt(&name).await.ok().flatten() }
    };
    let sa = eventually(60, "a's credentials", || read(&a)).await;
    let sb = eventually(60, "b's credentials", || read(&b)).await;
    cluster.wait_condition(&a, "VectorStoreReady", "True").await;

    // Per-tenant values, not the shared ones.
    let (url_a, url_b) = (secret_value(&sa, REDIS_ENV), secret_value(&sb, REDIS_ENV));
    assert_ne!(url_a, shared_url);
    assert!(
        url_a.starts_with(&format!("redis://tenantry-{a}:")),
        "{}",
        url_a.split(':').next().unwrap_or_default()
    );
    assert_ne!(url_a, url_b);
    let (ta, tb) = (secret_value(&sa, QDRANT_ENV), secret_value(&sb, QDRANT_ENV));
    assert_ne!(ta, QDRANT_KEY);
    assert_ne!(ta, tb);
    let claims = qdrant_token::verify(&ta, QDRANT_KEY).expect("signed with the server key");
    assert_eq!(
        claims
            .access
            .iter()
            .map(|c| c.collection.clone())
            .collect::<Vec<_>>(),
        {
            let c = a.replace('-', "_");
            [format!("tenant_{c}_docs"), format!("tenant_{c}_cache")]
        }
    );
    assert!(claims.exp > now_secs() + 3 * 86_400, "a week's lifetime");

    // They work, each for its own tenant only.
    let (id_a, id_b) = (id(&a), id(&b));
    quota_round_trip(&store(&url_a, false), &id_a).await;
    let err = store(&url_a, false)
        .reserve(&request(&id_b))
        .await
        .expect_err("b's keys");
    assert!(noperm(&err.to_string()), "{err}");
    let scoped = backend(&qdrant, &ta);
    scoped.ready().await.expect("ready");
    let own = vectors(&scoped, &a, Isolation::Collection);
    assert_eq!(
        own.count(Kind::Docs, Filter::default())
            .await
            .expect("count"),
        0
    );
    let err = vectors(&scoped, &b, Isolation::Collection)
        .count(Kind::Docs, Filter::default())
        .await
        .expect_err("b's collection");
    assert!(refused(&err), "{err}");

    // The pods read them from the tenant's Secret, and roll when they change.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &format!("tenant-{a}"));
    let pod_hash = || async {
        let d = deployments.get(&format!("{a}-api")).await.ok()?;
        let template = d.spec.template;
        let env = template.spec?.containers[0].env.clone()?;
        for var in [REDIS_ENV, QDRANT_ENV] {
            let from = env.iter().find(|e| e.name == var)?;
            assert!(from.value.is_none(), "{var} inlined");
            let secret = from.value_from.as_ref()?.secret_key_ref.as_ref()?;
            assert_eq!(
                (secret.name.as_str(), secret.key.as_str()),
                (format!("{a}-api-credentials").as_str(), var)
            );
        }
        template.metadata?.annotations?.remove(HASH_ANNOTATION)
    };
    let hash = eventually(30, "the credentials hash", pod_hash).await;

    // Rotation.
    let patch = json!({"metadata": {"annotations": {ROTATE_ANNOTATION: "1"}}});
    cluster
        .tenants
        .patch(&a, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
    let rotated = eventually(60, "rotated credentials", || async {
        let s = read(&a).await?;
        (secret_value(&s, REDIS_ENV) != url_a).then_some(s)
    })
    .await;
    let new_url = secret_value(&rotated, REDIS_ENV);
    assert_ne!(secret_value(&rotated, QDRANT_ENV), ta, "a new token");
    assert!(
        rotated
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|x| x.contains_key(PREVIOUS_REDIS_PASSWORD_ANNOTATION))
    );
    assert!(
        run(&url_a, &["PING"]).await.is_ok(),
        "previous password within the grace period"
    );
    quota_round_trip(&store(&new_url, false), &id_a).await;
    eventually(30, "the pods roll", || async {
        pod_hash().await.filter(|h| *h != hash)
    })
    .await;

    // Deleting the Tenant removes its Redis user; the other tenant's stays.
    cluster.delete_and_wait_gone(&a).await;
    assert_eq!(
        redis.query(&["ACL", "GETUSER", &format!("tenantry-{a}")]),
        Some(redis::Value::Nil)
    );
    assert!(run(&new_url, &["PING"]).await.is_err());
    quota_round_trip(&store(&url_b, false), &id_b).await;
    op.stop();
}
