//! The cluster path end to end: the operator on the test API server with a real Qdrant server
//! and a real Redis; the test plays kubelet and runs two replicas of a tenant's chat API from
//! the Deployment, ConfigMap and Secrets the operator wrote (see `common::kubelet`).
//!
//! Qdrant: `QDRANT_URL` / `QDRANT_API_KEY` (`scripts/qdrant-test-env.sh`, which
//! `scripts/test.sh` starts).
mod common;

use std::time::Instant;

use axum::http::StatusCode;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use qdrant_client::Qdrant;
use serde_json::{Value, json};
use tenantry::auth::keys::Keyring;
use tenantry::crd::ROTATE_ANNOTATION;
use tenantry::domain::{Isolation, TenantId};
use tenantry::vector::qdrant::{QdrantBackend, QdrantConfig};
use tenantry::vector::{Filter, Kind, Point, TenantVectors};

use common::cluster::{Cluster, Operator, SYSTEM_NAMESPACE, eventually, unique};
use common::kubelet::Pod;
use common::llm::ScriptedLlm;
use common::redis::RedisServer;
use common::server::Server;

/// Daily token budget of the test's tier: a few dozen chats.
const BUDGET: u64 = 30_000;
/// Chats sent at once, split over both replicas.
const CHATS: usize = 200;
/// The Secret in the operator's namespace with the stores' credentials.
const STORES: &str = "e2e-stores";

/// The Qdrant server of the test run (gRPC URL, API key).
fn qdrant() -> (String, String) {
    let var = |name: &str| {
        std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
            panic!("{name} is not set: run scripts/test.sh, or eval \"$(scripts/qdrant-test-env.sh start)\" first")
        })
    };
    (var("QDRANT_URL"), var("QDRANT_API_KEY"))
}

fn qdrant_client(url: &str, key: &str) -> Qdrant {
    Qdrant::from_url(url)
        .api_key(key.to_string())
        .skip_compatibility_check()
        .build()
        .expect("qdrant client")
}

/// The credentials Secret the chart would create: Qdrant API key and Redis URL.
async fn store_secret(cluster: &Cluster, qdrant_key: &str, redis_url: &str) {
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let _ = api.delete(STORES, &Default::default()).await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": STORES},
        "stringData": {"qdrant-api-key": qdrant_key, "redis-url": redis_url},
    }))
    .expect("secret");
    api.create(&PostParams::default(), &secret)
        .await
        .expect("create stores secret");
    cluster.remove_on_drop("secret", Some(SYSTEM_NAMESPACE), STORES);
}

/// The operator as the chart wires it to shared stores.
fn operator(cluster: &Cluster, qdrant: &(String, String), llm: &ScriptedLlm) -> Operator {
    let llm_env = format!("OPENAI_BASE_URL={}", llm.base_url());
    let qdrant_key = format!("TENANTRY_QDRANT_API_KEY={STORES}:qdrant-api-key");
    let redis_url = format!("TENANTRY_REDIS_URL={STORES}:redis-url");
    Operator::start_with_env(
        cluster.env,
        "e2e",
        &[
            "--qdrant-url",
            &qdrant.0,
            "--api-env",
            &llm_env,
            "--api-env-from-secret",
            &qdrant_key,
            "--api-env-from-secret",
            &redis_url,
        ],
        &[("TENANTRY_QDRANT_API_KEY", &qdrant.1)],
    )
}

/// The tenant's current keyring, from its signing-key Secret.
async fn keyring(client: &Client, tenant: &str) -> Keyring {
    let api: Api<Secret> = Api::namespaced(client.clone(), &format!("tenant-{tenant}"));
    let s = api
        .get(&format!("{tenant}-signing-key"))
        .await
        .expect("secret");
    let data = s.data.expect("data");
    let ByteString(bytes) = &data["keyring.json"];
    serde_json::from_slice(bytes).expect("keyring")
}

fn token(ring: &Keyring, tenant: &str) -> String {
    let id = TenantId::parse(tenant).expect("id");
    ring.mint(&id, "e2e", 3600).expect("mint")
}

/// Creates Tenant `name` on tier `tier` with `extra` spec fields and waits until it is Ready
/// (the test writes the Deployment's availability, as the deployment controller would).
async fn ready_tenant(cluster: &Cluster, name: &str, tier: &str, extra: Value) {
    let mut spec = json!({"tier": tier, "semanticCache": {"enabled": false}});
    spec.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    cluster.create_tenant(name, spec).await;
    cluster
        .wait_condition(name, "VectorStoreReady", "True")
        .await;
    cluster
        .wait_condition(name, "SigningKeyReady", "True")
        .await;
    let ns = format!("tenant-{name}");
    eventually(60, "the Deployment", || async {
        let api: Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(cluster.client.clone(), &ns);
        api.get_opt(&format!("{name}-api")).await.ok().flatten()
    })
    .await;
    cluster.mark_available(&ns, &format!("{name}-api")).await;
    cluster.wait_condition(name, "Ready", "True").await;
}

/// Tokens the scripted model served for `[[usage:exact]]` requests `from..`: what it reported.
fn served_tokens(llm: &ScriptedLlm, from: usize) -> u64 {
    let requests = llm.requests.lock().expect("lock");
    requests[from..]
        .iter()
        .map(|body| {
            let model = body["model"].as_str().expect("model");
            let messages: Vec<tenantry::llm::Message> =
                serde_json::from_value(body["messages"].clone()).expect("messages");
            tenantry::quota::tokens::with_margin(tenantry::quota::tokens::prompt_tokens(
                model, &messages,
            )) + body["max_tokens"].as_u64().expect("max_tokens")
        })
        .sum()
}

async fn daily_used(replica: &Server, token: &str) -> u64 {
    let (status, u) = replica.get("/v1/usage", token).await;
    assert_eq!(status, StatusCode::OK, "{u}");
    assert_eq!(u["backend"], "redis", "{u}");
    u["tokens_today"].as_u64().expect("tokens today")
}

/// 200 chats at once, alternating between the replicas: together they never admit more than
/// the tenant's daily budget. Returns the number admitted per replica.
async fn concurrent_chats(replicas: &[Server; 2], token: &str, llm: &ScriptedLlm) -> [usize; 2] {
    let before_calls = llm.calls();
    let before_used = daily_used(&replicas[0], token).await;
    let results = futures::future::join_all((0..CHATS).map(|i| {
        let r = &replicas[i % 2];
        async move {
            let (status, body) = r
                .chat(token, "What is the refund policy? [[usage:exact]]")
                .await;
            (i % 2, status, body)
        }
    }))
    .await;
    let mut admitted = [0, 0];
    for (replica, status, body) in &results {
        match *status {
            StatusCode::OK => admitted[*replica] += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"]["limit"], "daily_tokens", "{body}");
            }
            other => panic!("chat answered {other}: {body}"),
        }
    }
    let served = served_tokens(llm, before_calls);
    assert_eq!(llm.calls() - before_calls, admitted[0] + admitted[1]);
    assert!(
        before_used + served <= BUDGET,
        "the replicas admitted {served} tokens on top of {before_used}: over the budget of {BUDGET}"
    );
    assert!(
        admitted[0] + admitted[1] < CHATS,
        "the budget never ran out"
    );
    // Each admitted chat cost the same; the shared budget is used up to less than one more.
    let each = served / (admitted[0] + admitted[1]) as u64;
    let unused = BUDGET - (before_used + served);
    assert!(
        unused < each,
        "{unused} tokens left unused, more than one chat ({each})"
    );
    assert_eq!(daily_used(&replicas[1], token).await, before_used + served);
    admitted
}

/// A forced rotation reaches both running replicas through their mounted Secret (no
/// restart); the previous key keeps working for the overlap.
async fn rotation_reaches_both(
    cluster: &Cluster,
    pods: &[Pod; 2],
    replicas: &[Server; 2],
    name: &str,
) {
    let old = keyring(&cluster.client, name).await;
    let pids = replicas.each_ref().map(Server::pid);
    let patch = json!({"metadata": {"annotations": {ROTATE_ANNOTATION: "e2e-1"}}});
    cluster
        .tenants
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
    let new = eventually(60, "a new current key", || async {
        let ring = keyring(&cluster.client, name).await;
        (ring.current != old.current).then_some(ring)
    })
    .await;
    for pod in pods {
        pod.sync().await;
    }
    for r in replicas {
        r.wait_for_token(&token(&new, name)).await;
        let (status, body) = r.get("/v1/documents", &token(&old, name)).await;
        assert_eq!(status, StatusCode::OK, "previous key refused: {body}");
    }
    assert_eq!(replicas.each_ref().map(Server::pid), pids, "no restart");
}

async fn collection_exists(q: &Qdrant, name: &str) -> bool {
    q.collection_exists(name).await.expect("collection_exists")
}

/// Deleting with `deletionPolicy: Delete` removes the collections from the server; `Retain`
/// keeps them (removed here afterwards).
async fn deletion_policies(cluster: &Cluster, q: &Qdrant, deleted: &str, tier: &str) {
    let docs = |t: &str| format!("tenant_{}_docs", t.replace('-', "_"));
    assert!(collection_exists(q, &docs(deleted)).await);
    cluster.delete_and_wait_gone(deleted).await;
    assert!(
        !collection_exists(q, &docs(deleted)).await,
        "Delete kept the collection"
    );
    assert!(!collection_exists(q, &format!("tenant_{}_cache", deleted.replace('-', "_"))).await);

    let retained = unique("e2e-keep");
    ready_tenant(
        cluster,
        &retained,
        tier,
        json!({"deletionPolicy": "Retain"}),
    )
    .await;
    assert!(collection_exists(q, &docs(&retained)).await);
    cluster.delete_and_wait_gone(&retained).await;
    assert!(
        collection_exists(q, &docs(&retained)).await,
        "Retain dropped the collection"
    );
    for kind in ["docs", "cache"] {
        let name = format!("tenant_{}_{kind}", retained.replace('-', "_"));
        q.delete_collection(name).await.expect("clean up");
    }
}

/// In Partition mode, `Delete` removes the tenant's points (those bound to its UID, as its
/// pods write them) from the shared collection and nobody else's, not even those of a deleted
/// Tenant of the same name (another UID).
async fn partition_deletion(cluster: &Cluster, qdrant: &(String, String), tier: &str) {
    let mut cfg = QdrantConfig::new(qdrant.0.clone());
    cfg.api_key = Some(qdrant.1.clone());
    let backend = std::sync::Arc::new(QdrantBackend::connect(cfg).expect("backend"));
    let scoped = |t: &str| {
        let id = TenantId::parse(t).expect("id");
        TenantVectors::new(backend.clone(), id, Isolation::Partition, 384)
    };
    let name = unique("e2e-part");
    let other = scoped(&unique("e2e-other"));
    ready_tenant(
        cluster,
        &name,
        tier,
        json!({"deletionPolicy": "Delete", "retrieval": {"isolation": "Partition"}}),
    )
    .await;
    let point = || Point {
        id: uuid::Uuid::new_v4(),
        vector: vec![0.5; 384],
        payload: serde_json::Map::new(),
    };
    let uid = cluster
        .tenants
        .get(&name)
        .await
        .expect("tenant")
        .metadata
        .uid
        .expect("uid");
    let owned = scoped(&name).with_owner(Some(uid));
    let predecessor = scoped(&name).with_owner(Some("uid-of-a-deleted-tenant".into()));
    owned
        .upsert(Kind::Docs, vec![point()])
        .await
        .expect("upsert");
    predecessor
        .upsert(Kind::Docs, vec![point()])
        .await
        .expect("upsert");
    other.ensure().await.expect("ensure");
    other
        .upsert(Kind::Docs, vec![point()])
        .await
        .expect("upsert");
    cluster.delete_and_wait_gone(&name).await;
    let count = |v: TenantVectors| async move {
        v.count(Kind::Docs, Filter::default()).await.expect("count")
    };
    assert_eq!(count(owned).await, 0, "the deleted tenant's points remain");
    assert_eq!(
        count(predecessor.clone()).await,
        1,
        "retained data of another Tenant of the same name was removed"
    );
    predecessor.purge().await.expect("clean up");
    assert_eq!(
        count(other.clone()).await,
        1,
        "another tenant's point was removed"
    );
    other.purge().await.expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_documents_budget_and_keys_and_deletion_reaches_qdrant() {
    let started = Instant::now();
    let phase = |what: &str| {
        eprintln!(
            "cluster e2e: {what} at {:.1}s",
            started.elapsed().as_secs_f64()
        )
    };
    let qdrant = qdrant();
    let q = qdrant_client(&qdrant.0, &qdrant.1);
    let redis = RedisServer::start();
    let llm = ScriptedLlm::start().await;
    let cluster = Cluster::new().await;
    store_secret(&cluster, &qdrant.1, &redis.url()).await;
    let _operator = operator(&cluster, &qdrant, &llm);
    let tier = unique("e2e-tier");
    cluster
        .create_tier(
            &tier,
            json!({"dailyTokens": BUDGET, "requestsPerMinute": 100_000, "tokensPerMinute": 100_000_000,
                   "maxConcurrentRequests": 1_000, "replicas": {"min": 2, "max": 4}}),
        )
        .await;
    let name = unique("e2e");
    ready_tenant(&cluster, &name, &tier, json!({"deletionPolicy": "Delete"})).await;
    phase("tenant Ready");

    let ns = format!("tenant-{name}");
    let deployment = format!("{name}-api");
    let pods = [
        Pod::new(
            &cluster.client,
            &ns,
            &deployment,
            &format!("{deployment}-a"),
        )
        .await,
        Pod::new(
            &cluster.client,
            &ns,
            &deployment,
            &format!("{deployment}-b"),
        )
        .await,
    ];
    let replicas = [pods[0].start().await, pods[1].start().await];
    let token = token(&keyring(&cluster.client, &name).await, &name);
    replicas[0].wait_for_token(&token).await;
    replicas[1].wait_for_token(&token).await;
    phase("both replicas serving");
    // The pods verify with public keys only: the keyring they mount cannot sign.
    let mounted = pods[0]
        .host_path("/etc/tenantry/keys")
        .join(format!("{name}.json"));
    let mounted = Keyring::read(&mounted).expect("mounted keyring");
    assert!(
        !mounted.can_sign() && mounted.keys.iter().all(|k| k.private_key.is_none()),
        "an API pod holds a private key"
    );

    let id = replicas[0]
        .ingest(
            &token,
            "refunds",
            "Customers may return any product within 30 days for a full refund.",
        )
        .await;
    let (status, body) = replicas[1].chat(&token, "What is the refund policy?").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sources"][0]["document_id"], id.as_str(), "{body}");
    assert!(
        body["answer"].as_str().expect("answer").contains("30 days"),
        "{body}"
    );
    phase("a document ingested through one replica answered through the other");

    let admitted = concurrent_chats(&replicas, &token, &llm).await;
    assert!(
        admitted.iter().all(|&n| n > 0),
        "both replicas served: {admitted:?}"
    );
    phase(&format!("{CHATS} concurrent chats, admitted {admitted:?}"));

    rotation_reaches_both(&cluster, &pods, &replicas, &name).await;
    phase("rotation reached both replicas");

    drop(replicas);
    deletion_policies(&cluster, &q, &name, &tier).await;
    partition_deletion(&cluster, &qdrant, &tier).await;
    phase("deletion policies");
}
