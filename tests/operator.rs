//! The operator against a real kube-apiserver + etcd (`scripts/kube-test-env.sh`), run as a
//! child process under exactly the RBAC rights of `config/rbac/`. There is no kubelet or
//! controller-manager: tests write Deployment status as they would. Each test takes the
//! cluster through one `Cluster` fixture, which also removes what the test created.
mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::cluster::{Cluster, Operator, SYSTEM_NAMESPACE, condition, eventually, tenant, unique};
use common::qdrant::QdrantServer;
use common::server::{Dirs, Server, Start};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::json;
use tenantry::auth::keys::Keyring;
use tenantry::crd::Tenant;

#[tokio::test]
async fn api_server_refuses_invalid_tenants_with_clear_messages() {
    let cluster = Cluster::new().await;
    let api = &cluster.tenants;
    // Raw objects: several of these cannot even be expressed in the typed Tenant.
    let raw: Api<DynamicObject> =
        Api::all_with(cluster.client.clone(), &ApiResource::erase::<Tenant>(&()));
    let cases = [
        ("bad tier name", json!({"tier": "Gold_Tier"}), "spec.tier"),
        (
            "negative quota",
            json!({"tier": "pro", "quota": {"dailyTokens": -5}}),
            "spec.quota.dailyTokens",
        ),
        (
            "unknown enum",
            json!({"tier": "pro", "retrieval": {"isolation": "Shard"}}),
            "spec.retrieval.isolation",
        ),
        (
            "threshold > 1",
            json!({"tier": "pro", "semanticCache": {"threshold": 1.5}}),
            "spec.semanticCache.threshold",
        ),
        (
            "bad duration",
            json!({"tier": "pro", "semanticCache": {"ttl": "1 day"}}),
            "spec.semanticCache.ttl",
        ),
        (
            "min > max",
            json!({"tier": "pro", "api": {"replicas": {"min": 5, "max": 2}}}),
            "replicas.min must not exceed replicas.max",
        ),
        (
            "chat not allowed",
            json!({"tier": "pro", "models": {"chat": "a", "allowed": ["b"]}}),
            "models.chat must be one of models.allowed",
        ),
        (
            "unknown algorithm",
            json!({"tier": "pro", "auth": {"algorithm": "RS256"}}),
            "spec.auth.algorithm",
        ),
        (
            "JWKS over plain HTTP",
            json!({"tier": "pro", "auth": {"issuers": [{"issuer": "https://idp.example.com", "jwksUri": "http://idp.example.com/jwks", "audience": "api"}]}}),
            "spec.auth.issuers[0].jwksUri",
        ),
        (
            "issuer without audience",
            json!({"tier": "pro", "auth": {"issuers": [{"issuer": "https://idp.example.com", "jwksUri": "https://idp.example.com/jwks"}]}}),
            "audience",
        ),
        (
            "claim condition with values and pattern",
            json!({"tier": "pro", "auth": {"issuers": [{"issuer": "https://idp.example.com", "jwksUri": "https://idp.example.com/jwks", "audience": "api", "claims": [{"claim": "sub", "values": ["a"], "pattern": "a"}]}]}}),
            tenantry::domain::CLAIM_CONDITION_RULE,
        ),
        (
            "bad token lifetime",
            json!({"tier": "pro", "auth": {"maxTokenLifetime": "a day"}}),
            "spec.auth.maxTokenLifetime",
        ),
    ];
    for (what, spec, needle) in cases {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tenantry.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": unique("invalid")}, "spec": spec,
        }))
        .expect("object");
        match raw.create(&PostParams::default(), &obj).await {
            Ok(_) => panic!("{what}: accepted"),
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{what}: {e:?}");
                assert!(
                    e.message.contains(needle),
                    "{what}: message {:?} lacks {needle:?}",
                    e.message
                );
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    // A tenant id that is a valid object name but too long for collection/namespace names.
    let long = tenant(&format!("t{}", "x".repeat(45)), json!({"tier": "pro"}));
    let err = api
        .create(&PostParams::default(), &long)
        .await
        .expect_err("too long");
    assert!(err.to_string().contains("at most 40 characters"), "{err}");
    // Defaults are filled in by the API server.
    let name = unique("valid");
    cluster.remove_on_drop("tenant", None, &name);
    let created = api
        .create(
            &PostParams::default(),
            &tenant(&name, json!({"tier": "pro"})),
        )
        .await
        .expect("valid tenant");
    assert_eq!(created.spec.retrieval.top_k, 4);
    assert_eq!(created.spec.semantic_cache.ttl, "24h");
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
}

/// The operator arguments of pods that share their stores: the Qdrant server `qdrant` and a
/// Redis URL (which the operator only passes on).
fn shared_stores(qdrant: &QdrantServer) -> Vec<String> {
    [
        "--qdrant-url",
        &qdrant.grpc_url(),
        "--api-env",
        "TENANTRY_REDIS_URL=redis://redis.example:6379",
    ]
    .map(str::to_string)
    .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn tenant_becomes_its_objects_and_follows_its_tier() {
    let cluster = Cluster::new().await;
    let client = cluster.client.clone();
    let qdrant = QdrantServer::start(None);
    let op = cluster.operator("op-main", &strs(&shared_stores(&qdrant)));

    let tier_name = unique("gold");
    let tiers = cluster
        .create_tier(
            &tier_name,
            json!({"dailyTokens": 1000, "requestsPerMinute": 10, "tokensPerMinute": 500, "maxConcurrentRequests": 2, "replicas": {"min": 2, "max": 4}}),
        )
        .await;

    let name = unique("acme");
    let api = &cluster.tenants;
    cluster.create_tenant(&name, json!({"tier": tier_name, "quota": {"requestsPerMinute": 99}, "api": {"targetCPUUtilizationPercentage": 60}})).await;

    let t = cluster
        .wait_condition(&name, "SigningKeyReady", "True")
        .await;
    let status = t.status.clone().expect("status");
    let ns = format!("tenant-{name}");
    assert_eq!(status.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(status.signing_secret, Some(format!("{name}-signing-key")));
    assert_eq!(
        status.endpoint,
        Some(format!("http://{name}-api.{ns}.svc:80"))
    );
    let q = status.effective_quota.clone().expect("effective quota");
    assert_eq!(
        (q.daily_tokens, q.requests_per_minute),
        (Some(1000), Some(99))
    );
    assert_eq!(status.observed_generation, t.metadata.generation);
    assert!(t.finalizers().iter().any(|f| f == "tenantry.dev/cleanup"));
    assert_eq!(
        condition(&t, "ApiReady"),
        Some(("False".into(), "Progressing".into()))
    );
    assert_eq!(condition(&t, "Ready").map(|c| c.0), Some("False".into()));
    let uid = t.uid().expect("uid");

    // Every object: labelled, owned by the Tenant.
    let check_meta = |m: &kube::api::ObjectMeta, kind: &str| {
        let labels = m.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("tenantry"),
            "{kind}"
        );
        assert_eq!(labels.get("tenantry.dev/tenant"), Some(&name), "{kind}");
        let owner = m.owner_references.clone().unwrap_or_default();
        assert!(
            owner
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true) && o.kind == "Tenant"),
            "{kind} not owned: {owner:?}"
        );
    };
    let nso = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .expect("namespace");
    check_meta(&nso.metadata, "Namespace");
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-signing-key"))
        .await
        .expect("secret");
    check_meta(&secret.metadata, "Secret");
    let data = secret.data.clone().expect("data");
    let ring: Keyring = serde_json::from_slice(&data["keyring.json"].0).expect("keyring");
    assert_eq!(Some(ring.current.clone()), status.current_key_id);
    assert_eq!(String::from_utf8_lossy(&data["kid"].0), ring.current);
    assert!(data.contains_key("public.pem"));
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-api-config"))
        .await
        .expect("configmap");
    check_meta(&cm.metadata, "ConfigMap");
    let dep = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-api"))
        .await
        .expect("deployment");
    check_meta(&dep.metadata, "Deployment");
    let pod = dep.spec.template.spec.clone().expect("pod spec");
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/tenantry:test"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(c.args.as_ref().map(|a| a[0].as_str()), Some("serve"));
    assert!(
        c.env
            .clone()
            .unwrap_or_default()
            .iter()
            .any(|e| e.name == "OPENAI_BASE_URL")
    );
    let sc = c.security_context.clone().expect("security context");
    assert_eq!(
        (
            sc.read_only_root_filesystem,
            sc.run_as_non_root,
            sc.allow_privilege_escalation
        ),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(
        dep.spec.replicas,
        Some(1),
        "replicas left to the HPA (API default 1)"
    );
    let svc = Api::<Service>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-api"))
        .await
        .expect("service");
    check_meta(&svc.metadata, "Service");
    let hpa = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-api"))
        .await
        .expect("hpa");
    check_meta(&hpa.metadata, "HorizontalPodAutoscaler");
    assert_eq!((hpa.spec.min_replicas, hpa.spec.max_replicas), (Some(2), 4));
    let cpu = hpa.spec.metrics.clone().unwrap_or_default()[0]
        .resource
        .clone()
        .expect("cpu")
        .target
        .average_utilization;
    assert_eq!(cpu, Some(60));
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-api"))
        .await
        .expect("pdb");
    check_meta(&pdb.metadata, "PodDisruptionBudget");
    let np = Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-api"))
        .await
        .expect("networkpolicy");
    check_meta(&np.metadata, "NetworkPolicy");
    // Vector collections were provisioned, in the Qdrant server the pods share.
    let docs = format!("tenant_{}_docs", name.replace('-', "_"));
    assert!(qdrant.has_collection(&docs));
    assert_eq!(status.collections.len(), 2);
    assert_eq!(cluster.replicas_column(&name), "2-4");

    // ApiReady follows the Deployment.
    cluster.mark_available(&ns, &format!("{name}-api")).await;
    let t = cluster.wait_condition(&name, "Ready", "True").await;
    assert_eq!(
        condition(&t, "ApiReady"),
        Some(("True".into(), "Available".into()))
    );

    // Events were recorded for the tenant.
    let events: Api<Event> = Api::all(client.clone());
    let evs = eventually(20, "events", || async {
        let l = events.list(&ListParams::default()).await.ok()?;
        let mine: Vec<_> = l
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.clone()) == Some(name.clone()))
            .collect();
        (mine.len() >= 2).then_some(mine)
    })
    .await;
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("SigningKeyUpdated"))
    );

    // Changing the tier changes the effective quota and the HPA.
    tiers
        .patch(
            &tier_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dailyTokens": 777, "replicas": {"min": 3, "max": 6}}})),
        )
        .await
        .expect("patch tier");
    eventually(30, "quota follows tier", || async {
        let t = api.get(&name).await.ok()?;
        (t.status?.effective_quota?.daily_tokens == Some(777)).then_some(())
    })
    .await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    eventually(30, "hpa follows tier", || async {
        let h = hpas.get(&format!("{name}-api")).await.ok()?;
        (h.spec.min_replicas == Some(3) && h.spec.max_replicas == 6).then_some(())
    })
    .await;
    eventually(30, "printer column follows tier", || async {
        (cluster.replicas_column(&name) == "3-6").then_some(())
    })
    .await;

    // A GitOps tool's field on an owned object is not reverted.
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deps.patch(
        &format!("{name}-api"),
        &PatchParams::apply("argocd"),
        &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": format!("{name}-api"), "annotations": {"team.example/owner": "payments"}}})),
    )
    .await
    .expect("foreign apply");
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"retrieval": {"topK": 5}}})),
    )
    .await
    .expect("touch tenant");
    eventually(30, "reconciled generation", || async {
        let t = api.get(&name).await.ok()?;
        (t.status?.observed_generation == t.metadata.generation).then_some(())
    })
    .await;
    let d = deps.get(&format!("{name}-api")).await.expect("deployment");
    assert_eq!(
        d.annotations()
            .get("team.example/owner")
            .map(String::as_str),
        Some("payments")
    );

    // No hot loop: with nothing changing, reconciles stay bounded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = op.reconcile_count().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = op.reconcile_count().await;
    assert!(
        after - before <= 2,
        "hot loop: {before} -> {after} reconciles in 6 s"
    );
    let metrics = op.metrics().await;
    assert!(
        metrics.contains("tenantry_reconcile_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tenantry_tenants{phase="Ready"}"#),
        "{metrics}"
    );

    // Delete with Retain: the finalizer runs, data stays.
    cluster.delete_and_wait_gone(&name).await;
    assert!(qdrant.has_collection(&docs), "Retain keeps data");
    tiers
        .delete(&tier_name, &DeleteParams::default())
        .await
        .expect("delete tier");
    op.stop();
}

#[tokio::test]
async fn delete_policy_invalid_tier_and_suspend() {
    let cluster = Cluster::new().await;
    let client = cluster.client.clone();
    let op = cluster.operator("op-policy", &[]);
    let api = &cluster.tenants;

    // deletionPolicy Delete removes the collections.
    let name = unique("gone");
    cluster
        .create_tenant(&name, json!({"tier": "free", "deletionPolicy": "Delete"}))
        .await;
    cluster
        .wait_condition(&name, "VectorStoreReady", "True")
        .await;
    let docs = op
        .vector_dir()
        .join(format!("tenant_{}_docs", name.replace('-', "_")));
    assert!(docs.exists());
    cluster.delete_and_wait_gone(&name).await;
    assert!(
        !docs.exists(),
        "Delete removes vector data; operator logs:\n{}",
        op.logs()
    );

    // A tier that does not exist: Ready=False/TierNotFound, then fixed by creating the tier.
    let tier_name = unique("platinum");
    let name = unique("waiting");
    cluster
        .create_tenant(&name, json!({"tier": tier_name}))
        .await;
    let t = cluster
        .wait_reason(&name, "Ready", "False", "TierNotFound")
        .await;
    assert_eq!(
        condition(&t, "QuotaReady").map(|c| c.0),
        Some("False".into())
    );
    let tiers = cluster
        .create_tier(
            &tier_name,
            json!({"dailyTokens": 5, "requestsPerMinute": 1, "tokensPerMinute": 5, "maxConcurrentRequests": 1}),
        )
        .await;
    cluster.wait_condition(&name, "QuotaReady", "True").await;

    // Suspend: API scaled to zero, ApiReady=False/Suspended; resume hands replicas back.
    let ns = format!("tenant-{name}");
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .expect("suspend");
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually(30, "scaled to zero", || async {
        (deps.get(&format!("{name}-api")).await.ok()?.spec.replicas == Some(0)).then_some(())
    })
    .await;
    let t = cluster
        .wait_reason(&name, "ApiReady", "False", "Suspended")
        .await;
    assert_eq!(condition(&t, "Ready").map(|c| c.0), Some("False".into()));
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .expect("resume");
    eventually(30, "replicas handed back", || async {
        (deps.get(&format!("{name}-api")).await.ok()?.spec.replicas != Some(0)).then_some(())
    })
    .await;

    cluster.delete_and_wait_gone(&name).await;
    tiers
        .delete(&tier_name, &DeleteParams::default())
        .await
        .expect("delete tier");
    op.stop();
}

/// Rotation by annotation makes a new kid; a `serve` fed the rendered ConfigMap and Secret
/// (as the pod mounts them) keeps accepting the old key during the overlap, without restart.
#[tokio::test]
async fn key_rotation_and_serve_with_rendered_config() {
    let cluster = Cluster::new().await;
    let client = cluster.client.clone();
    let op = cluster.operator("op-keys", &[]);
    let api = &cluster.tenants;
    let name = unique("rot");
    let ns = format!("tenant-{name}");
    cluster
        .create_tenant(&name, json!({"tier": "pro", "auth": {"rotateEvery": "1h"}}))
        .await;
    let t = cluster
        .wait_condition(&name, "SigningKeyReady", "True")
        .await;
    let first_kid = t.status.and_then(|s| s.current_key_id).expect("kid");

    // Lay out what the pod mounts.
    let dirs = Dirs::new();
    let keys = dirs.root.path().join("keys");
    std::fs::create_dir_all(&keys).expect("mkdir");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    // The pods mount the verify-only keyring; the signing keyring stays in its own Secret.
    let render = |secret: Secret, cm: ConfigMap| {
        let ring = secret.data.expect("data")["keyring.json"].0.clone();
        std::fs::write(keys.join(format!("{name}.json")), ring).expect("write keyring");
        let manifest = cm.data.expect("data")["tenant.yaml"].clone();
        std::fs::write(dirs.tenants().join("tenant.yaml"), manifest).expect("write manifest");
    };
    let verify_keys = format!("{name}-verify-keys");
    let mounted = secrets.get(&verify_keys).await.expect("verify-keys Secret");
    let public: Keyring =
        serde_json::from_slice(&mounted.data.clone().expect("data")["keyring.json"].0)
            .expect("ring");
    assert!(
        public.keys.iter().all(|k| k.private_key.is_none()),
        "the pods' keyring holds no private key"
    );
    let pod = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-api"))
        .await
        .expect("deployment")
        .spec
        .template
        .spec
        .expect("pod");
    let mounted_secrets: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref()?.sources.as_ref())
        .flatten()
        .filter_map(|s| Some(s.secret.as_ref()?.name.clone()))
        .collect();
    assert_eq!(mounted_secrets, std::slice::from_ref(&verify_keys));
    render(
        mounted,
        cms.get(&format!("{name}-api-config")).await.expect("cm"),
    );
    let signing = secrets
        .get(&format!("{name}-signing-key"))
        .await
        .expect("secret");
    let old_ring: Keyring =
        serde_json::from_slice(&signing.data.expect("data")["keyring.json"].0).expect("ring");
    let id = tenantry::domain::TenantId::parse(&name).expect("id");
    let old_token = old_ring.mint(&id, "alice", 3600).expect("mint");
    let server = Server::start(
        &dirs,
        Start {
            args: vec!["--keys-dir".into(), keys.display().to_string()],
            ..Default::default()
        },
    );
    let (s, body) = server.get("/v1/documents", &old_token).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // Force a rotation.
    api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"tenantry.dev/rotate-key": "2026-11-26T00:00:00Z"}}})))
        .await
        .expect("annotate");
    let new_kid = eventually(30, "new kid", || async {
        let k = api.get(&name).await.ok()?.status?.current_key_id?;
        (k != first_kid).then_some(k)
    })
    .await;
    let secret = secrets
        .get(&format!("{name}-signing-key"))
        .await
        .expect("secret");
    let ring: Keyring =
        serde_json::from_slice(&secret.data.clone().expect("data")["keyring.json"].0)
            .expect("ring");
    assert_eq!(ring.current, new_kid);
    let old = ring
        .keys
        .iter()
        .find(|k| k.kid == first_kid)
        .expect("previous key kept for the overlap");
    assert!(
        old.expires_at
            .is_some_and(|e| e > tenantry::auth::keys::unix_now() + 3000)
    );
    let mounted = eventually(30, "verify keys rotated", || async {
        let s = secrets.get(&verify_keys).await.ok()?;
        let r: Keyring = serde_json::from_slice(&s.data.clone()?["keyring.json"].0).ok()?;
        (r.current == new_kid).then_some(s)
    })
    .await;
    render(
        mounted,
        cms.get(&format!("{name}-api-config")).await.expect("cm"),
    );

    // serve picks the rotation up without restart: the new key works, the old one still does.
    let new_token = ring.mint(&id, "bob", 3600).expect("mint");
    eventually(20, "serve accepts the new key", || async {
        (server.get("/v1/documents", &new_token).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(
        server.get("/v1/documents", &old_token).await.0,
        StatusCode::OK
    );
    let status = api.get(&name).await.expect("get").status.expect("status");
    assert!(status.key_created_at.is_some() && status.next_rotation_at.is_some());
    assert_eq!(
        status
            .previous_keys
            .iter()
            .map(|k| k.kid.as_str())
            .collect::<Vec<_>>(),
        [first_kid.as_str()]
    );
    assert!(status.previous_keys[0].valid_until.is_some());

    // An emergency: revoke every previous key at once; the old token stops working.
    api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"tenantry.dev/revoke-previous-keys": "incident-1"}}})))
        .await
        .expect("annotate");
    let mounted = eventually(30, "previous keys revoked", || async {
        let s = secrets.get(&verify_keys).await.ok()?;
        let r: Keyring = serde_json::from_slice(&s.data.clone()?["keyring.json"].0).ok()?;
        (r.keys.len() == 1 && r.current == new_kid).then_some(s)
    })
    .await;
    render(
        mounted,
        cms.get(&format!("{name}-api-config")).await.expect("cm"),
    );
    eventually(20, "serve refuses the revoked key", || async {
        (server.get("/v1/documents", &old_token).await.0 == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    assert_eq!(
        server.get("/v1/documents", &new_token).await.0,
        StatusCode::OK
    );
    eventually(30, "status without previous keys", || async {
        let s = api.get(&name).await.ok()?.status?;
        s.previous_keys.is_empty().then_some(())
    })
    .await;

    // The same annotation value again does not rotate again.
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"retrieval": {"topK": 2}}})),
    )
    .await
    .expect("touch");
    eventually(30, "reconciled", || async {
        let t = api.get(&name).await.ok()?;
        (t.status.as_ref()?.observed_generation == t.metadata.generation).then_some(())
    })
    .await;
    assert_eq!(
        api.get(&name)
            .await
            .expect("get")
            .status
            .and_then(|s| s.current_key_id),
        Some(new_kid)
    );

    // Suspended in the manifest: serve refuses with 403.
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .expect("suspend");
    eventually(30, "rendered suspend", || async {
        let cm = cms.get(&format!("{name}-api-config")).await.ok()?;
        cm.data?
            .get("tenant.yaml")?
            .contains("suspend: true")
            .then_some(())
    })
    .await;
    render(
        secrets.get(&verify_keys).await.expect("secret"),
        cms.get(&format!("{name}-api-config")).await.expect("cm"),
    );
    eventually(20, "serve refuses a suspended tenant", || async {
        (server.get("/v1/documents", &new_token).await.0 == StatusCode::FORBIDDEN).then_some(())
    })
    .await;

    cluster.delete_and_wait_gone(&name).await;
    op.stop();
}

/// Two replicas: only the Lease holder reconciles; when it dies, the other takes over and
/// converges what changed meanwhile.
#[tokio::test]
async fn only_the_leader_writes_and_a_standby_takes_over() {
    let cluster = Cluster::new().await;
    let client = cluster.client.clone();
    let a = cluster.operator("replica-a", &[]);
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    eventually(30, "a leads", || async {
        let l = leases.get_opt("tenantry-operator").await.ok()??;
        (l.spec?.holder_identity.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let b = cluster.operator("replica-b", &[]);

    let name = unique("lead");
    cluster.create_tenant(&name, json!({"tier": "pro"})).await;
    cluster
        .wait_condition(&name, "SigningKeyReady", "True")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a.reconcile_count().await > 0, "the leader reconciles");
    assert_eq!(
        b.reconcile_count().await,
        0,
        "the standby must not write:\n{}",
        b.logs()
    );
    let lease = leases.get("tenantry-operator").await.expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("replica-a")
    );

    // The leader crashes (no release); the standby takes over after the lease expires and
    // converges a change made while nobody led.
    a.kill();
    let second = unique("lead2");
    cluster
        .create_tenant(&second, json!({"tier": "free"}))
        .await;
    cluster
        .wait_condition(&second, "SigningKeyReady", "True")
        .await;
    assert!(b.reconcile_count().await > 0);
    let lease = leases.get("tenantry-operator").await.expect("lease");
    let spec = lease.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert!(spec.lease_transitions.unwrap_or(0) >= 1);

    for n in [&name, &second] {
        cluster.delete_and_wait_gone(n).await;
    }
    b.stop();
    // A clean stop releases the Lease.
    let l = leases.get("tenantry-operator").await.expect("lease");
    assert_eq!(l.spec.and_then(|s| s.holder_identity), None);
}

/// Platform credentials named by `--api-env-from-secret` are copied into each tenant
/// namespace and reach the API pods by secretKeyRef, never as plain values.
#[tokio::test]
async fn api_credentials_are_copied_into_tenant_namespaces() {
    let cluster = Cluster::new().await;
    let client = cluster.client.clone();
    let source: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let secret_name = unique("llm-credentials");
    cluster.remove_on_drop("secret", Some(SYSTEM_NAMESPACE), &secret_name);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret_name},
        "stringData": {"api-key": "sk-test-123"},
    }))
    .expect("secret");
    source
        .create(&PostParams::default(), &secret)
        .await
        .expect("create source secret");
    let from = format!("OPENAI_API_KEY={secret_name}:api-key");
    let op = cluster.operator(
        "op-creds",
        &[
            "--api-env-from-secret",
            &from,
            "--api-env",
            "RUST_LOG=debug",
        ],
    );
    let name = unique("creds");
    cluster.create_tenant(&name, json!({"tier": "pro"})).await;
    let ns = format!("tenant-{name}");
    let copies: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let copy = eventually(30, "credentials copy", || async {
        copies
            .get_opt(&format!("{name}-api-credentials"))
            .await
            .ok()?
    })
    .await;
    let data = copy.data.clone().expect("data");
    assert_eq!(data["OPENAI_API_KEY"].0, b"sk-test-123");
    assert!(copy.owner_references().iter().any(|o| o.kind == "Tenant"));
    // The copy is applied before the Deployment: wait for that one too.
    let deps = Api::<Deployment>::namespaced(client.clone(), &ns);
    let dep = eventually(30, "deployment", || async {
        deps.get_opt(&format!("{name}-api")).await.ok()?
    })
    .await;
    let envs = dep.spec.template.spec.expect("pod").containers[0]
        .env
        .clone()
        .expect("env");
    let key = envs
        .iter()
        .find(|e| e.name == "OPENAI_API_KEY")
        .expect("key env");
    assert!(key.value.is_none());
    assert_eq!(
        key.value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .map(|r| r.name.clone()),
        Some(format!("{name}-api-credentials"))
    );
    assert_eq!(
        envs.iter()
            .find(|e| e.name == "RUST_LOG")
            .and_then(|e| e.value.clone())
            .as_deref(),
        Some("debug")
    );
    cluster.delete_and_wait_gone(&name).await;
    source
        .delete(&secret_name, &DeleteParams::default())
        .await
        .expect("delete source");
    op.stop();
}

/// The Events about Tenant `name` with `reason`.
async fn events_of(client: &kube::Client, name: &str, reason: &str) -> Vec<Event> {
    let events: Api<Event> = Api::all(client.clone());
    let all = events.list(&ListParams::default()).await.expect("events");
    all.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// The `ApiReady` message of Tenant `name` once it satisfies `want`.
async fn api_ready_message(cluster: &Cluster, name: &str, want: impl Fn(&str) -> bool) -> String {
    eventually(30, "ApiReady message", || async {
        let t = cluster.tenants.get(name).await.ok()?;
        let status = t.status?;
        let c = status.conditions.iter().find(|c| c.type_ == "ApiReady")?;
        want(&c.message).then(|| c.message.clone())
    })
    .await
}

/// Without a shared vector store or shared quotas, a tenant's API runs one replica: the
/// autoscaler and the Deployment say 1, `ApiReady` says which store is unshared and how to fix
/// it, one Warning Event marks the start and `kubectl get tn` shows it. With both shared, the
/// tier's bounds come back.
#[tokio::test]
async fn replicas_are_pinned_to_one_without_shared_stores() {
    let cluster = Cluster::new().await;
    let client = cluster.client.clone();
    let op = cluster.operator("op-pin", &[]);
    let tier = unique("scaled");
    cluster
        .create_tier(
            &tier,
            json!({"dailyTokens": 1000, "requestsPerMinute": 10, "tokensPerMinute": 500, "maxConcurrentRequests": 2, "replicas": {"min": 2, "max": 5}}),
        )
        .await;
    let name = unique("pin");
    let ns = format!("tenant-{name}");
    cluster.create_tenant(&name, json!({"tier": tier})).await;
    let t = cluster
        .wait_condition(&name, "SigningKeyReady", "True")
        .await;
    assert_eq!(
        t.status.and_then(|s| s.replicas).as_deref(),
        Some("1 (pinned)")
    );
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let hpa = hpas.get(&format!("{name}-api")).await.expect("hpa");
    assert_eq!((hpa.spec.min_replicas, hpa.spec.max_replicas), (Some(1), 1));
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let dep = deps.get(&format!("{name}-api")).await.expect("deployment");
    assert_eq!(dep.spec.replicas, Some(1));
    assert_eq!(cluster.replicas_column(&name), "1 (pinned)");
    let message = api_ready_message(&cluster, &name, |m| m.contains("pinned")).await;
    for needle in [
        "pinned to 1 replica instead of 2-5",
        "vector store is not shared",
        "--qdrant-url",
        "quotas are not shared",
        "TENANTRY_REDIS_URL",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    let pinned = eventually(20, "pin event", || async {
        let evs = events_of(&client, &name, "PinnedToOneReplica").await;
        (!evs.is_empty()).then_some(evs)
    })
    .await;
    assert_eq!(pinned[0].type_.as_deref(), Some("Warning"));

    // More reconciles (available, then a spec change) keep the pin without a second Event.
    cluster.mark_available(&ns, &format!("{name}-api")).await;
    cluster.wait_condition(&name, "Ready", "True").await;
    cluster
        .tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"retrieval": {"topK": 3}}})),
        )
        .await
        .expect("touch");
    eventually(30, "reconciled generation", || async {
        let t = cluster.tenants.get(&name).await.ok()?;
        (t.status?.observed_generation == t.metadata.generation).then_some(())
    })
    .await;
    op.stop();

    // A shared vector store alone: still pinned, now only for the quotas.
    let qdrant = QdrantServer::start(None);
    let op = cluster.operator("op-pin-vectors", &["--qdrant-url", &qdrant.grpc_url()]);
    let message = api_ready_message(&cluster, &name, |m| {
        m.contains("quotas are not shared") && !m.contains("vector store")
    })
    .await;
    assert!(message.contains("--api-config"), "{message}");
    op.stop();
    let pinned = events_of(&client, &name, "PinnedToOneReplica").await;
    assert_eq!(pinned.len(), 1, "the pin started once: {pinned:?}");
    assert!(pinned[0].series.is_none(), "not repeated: {:?}", pinned[0]);

    // Both shared: the tier's bounds.
    let op = cluster.operator("op-pin-shared", &strs(&shared_stores(&qdrant)));
    eventually(30, "hpa gets the tier's bounds", || async {
        let h = hpas.get(&format!("{name}-api")).await.ok()?;
        (h.spec.min_replicas == Some(2) && h.spec.max_replicas == 5).then_some(())
    })
    .await;
    eventually(30, "printer column", || async {
        (cluster.replicas_column(&name) == "2-5").then_some(())
    })
    .await;
    api_ready_message(&cluster, &name, |m| !m.contains("pinned")).await;
    cluster.delete_and_wait_gone(&name).await;
    op.stop();
}

/// The tenant's rendered `serve.yaml` and the hash that rolls its pods.
async fn rendered_serve_config(
    cms: &Api<ConfigMap>,
    deps: &Api<Deployment>,
    name: &str,
) -> (String, String) {
    let cm = cms.get(&format!("{name}-api-config")).await.expect("cm");
    let text = cm.data.expect("data")["serve.yaml"].clone();
    let dep = deps.get(&format!("{name}-api")).await.expect("deployment");
    let hash = dep
        .spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .and_then(|a| a.get("tenantry.dev/config-hash").cloned())
        .expect("config hash");
    (text, hash)
}

/// `serve.yaml` as `serve` loads it.
fn load_serve_config(text: &str) -> tenantry::config::ServeConfig {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("serve.yaml");
    std::fs::write(&path, text).expect("write");
    tenantry::config::ServeConfig::load(&path, true).expect("serve loads it")
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    format!("{:x}", sha2::Sha256::digest(text.as_bytes()))
}

/// `--api-config` reaches each tenant's ConfigMap with the tier's and the tenant's maxTokens
/// (and the pods through `--config` and a hash that changes with it); `--api-pod-defaults`
/// reaches every Deployment.
#[tokio::test]
async fn api_config_and_pod_defaults_reach_the_tenant_pods() {
    let cluster = Cluster::new().await;
    let client = cluster.client.clone();
    let files = tempfile::tempdir().expect("tmp");
    let config = files.path().join("serve.yaml");
    let base = "llm:\n  model: tiny\n  maxTokens: 300\nquota:\n  redisUrl: redis://redis.example:6379\n  failMode: failOpen\n";
    std::fs::write(
        &config,
        format!("{base}limits:\n  maxQuestionChars: 1000\n"),
    )
    .expect("write");
    let pod = files.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "imagePullSecrets: [{name: regcred}]\nnodeSelector: {pool: tenants}\ntolerations: [{key: dedicated, operator: Equal, value: tenants, effect: NoSchedule}]\ntopologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}]\npodLabels: {team: platform}\npodAnnotations: {example.com/scrape: \"true\"}\npriorityClassName: tenant-api\nresources: {requests: {cpu: 100m, memory: 256Mi}}\n",
    )
    .expect("write");
    let (config_arg, pod_arg) = (config.display().to_string(), pod.display().to_string());
    let flags = ["--api-config", &config_arg, "--api-pod-defaults", &pod_arg];
    let op = cluster.operator("op-config", &flags);
    let tier = unique("tokens");
    cluster
        .create_tier(
            &tier,
            json!({"dailyTokens": 1000, "requestsPerMinute": 10, "tokensPerMinute": 500, "maxConcurrentRequests": 2, "maxTokens": 700}),
        )
        .await;
    let name = unique("cfg");
    let ns = format!("tenant-{name}");
    cluster.create_tenant(&name, json!({"tier": tier})).await;
    let t = cluster
        .wait_condition(&name, "SigningKeyReady", "True")
        .await;
    let quota = t.status.and_then(|s| s.effective_quota).expect("quota");
    assert_eq!(quota.max_tokens, Some(700), "the tier's");

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let (text, first_hash) = rendered_serve_config(&cms, &deps, &name).await;
    let serve = load_serve_config(&text);
    assert_eq!(
        (
            serve.llm.model.as_str(),
            serve.llm.max_tokens,
            serve.limits.max_question_chars
        ),
        ("tiny", 700, 1000)
    );
    assert_eq!(serve.quota.fail_mode, tenantry::quota::FailMode::FailOpen);
    assert_eq!(first_hash, sha256_hex(&text));

    // The pods read it, and the platform's defaults shape them.
    let dep = deps.get(&format!("{name}-api")).await.expect("deployment");
    let template = dep.spec.template;
    let meta = template.metadata.expect("meta");
    let labels = meta.labels.expect("labels");
    assert_eq!(labels["team"], "platform");
    assert_eq!(labels["app.kubernetes.io/instance"], format!("{name}-api"));
    assert_eq!(
        meta.annotations.expect("annotations")["example.com/scrape"],
        "true"
    );
    let spec = template.spec.expect("pod");
    let args = spec.containers[0].args.clone().expect("args").join(" ");
    assert!(
        args.contains("--config /etc/tenantry/config/serve.yaml"),
        "{args}"
    );
    assert_eq!(
        spec.image_pull_secrets.expect("pull secrets")[0].name,
        "regcred"
    );
    assert_eq!(spec.node_selector.expect("nodes")["pool"], "tenants");
    assert_eq!(
        spec.tolerations.expect("tolerations")[0].value.as_deref(),
        Some("tenants")
    );
    assert_eq!(spec.priority_class_name.as_deref(), Some("tenant-api"));
    let spread = &spec.topology_spread_constraints.expect("spread")[0];
    assert_eq!(
        spread
            .label_selector
            .clone()
            .and_then(|s| s.match_labels)
            .expect("selector")["app.kubernetes.io/instance"],
        format!("{name}-api")
    );
    let resources = spec.containers[0].resources.clone().expect("resources");
    assert_eq!(resources.requests.expect("requests")["memory"].0, "256Mi");
    // Quotas are shared through quota.redisUrl: only the vector store pins the replicas.
    let message = api_ready_message(&cluster, &name, |m| m.contains("pinned")).await;
    assert!(!message.contains("quotas are not shared"), "{message}");

    // The tenant's own maxTokens wins over the tier's and rolls the pods.
    cluster
        .tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"quota": {"maxTokens": 1200}}})),
        )
        .await
        .expect("override");
    let (text, second_hash) = eventually(30, "override rendered", || async {
        let (text, hash) = rendered_serve_config(&cms, &deps, &name).await;
        (load_serve_config(&text).llm.max_tokens == 1200).then_some((text, hash))
    })
    .await;
    assert_ne!(second_hash, first_hash);
    assert_eq!(second_hash, sha256_hex(&text));
    let t = cluster.tenants.get(&name).await.expect("tenant");
    assert_eq!(
        t.status
            .and_then(|s| s.effective_quota)
            .and_then(|q| q.max_tokens),
        Some(1200)
    );

    // A changed --api-config, once the operator restarts with it, rolls the pods too.
    op.stop();
    std::fs::write(
        &config,
        format!("{base}limits:\n  maxQuestionChars: 2000\n"),
    )
    .expect("write");
    let op = cluster.operator("op-config-2", &flags);
    let third_hash = eventually(30, "new config rendered", || async {
        let (text, hash) = rendered_serve_config(&cms, &deps, &name).await;
        let serve = load_serve_config(&text);
        // The ConfigMap is applied before the Deployment: wait until the hash names this text.
        (serve.limits.max_question_chars == 2000
            && serve.llm.max_tokens == 1200
            && hash == sha256_hex(&text))
        .then_some(hash)
    })
    .await;
    assert_ne!(third_hash, second_hash);
    cluster.delete_and_wait_gone(&name).await;
    op.stop();
}

/// A bad `--api-config` or `--api-pod-defaults` stops the operator at start with the reason;
/// a secret in the config is refused without being repeated.
#[tokio::test]
async fn bad_api_config_or_pod_defaults_are_refused_at_start() {
    let cluster = Cluster::new().await;
    let files = tempfile::tempdir().expect("tmp");
    let cases = [
        (
            "--api-config",
            "quota:\n  redisUrl: rediss://:hunter2@redis:6380\n",
            "quota.redisUrl carries credentials",
        ),
        (
            "--api-config",
            "llm:\n  baseUrl: https://llm.example/v1?api_key=hunter2\n",
            "llm.baseUrl carries credentials",
        ),
        ("--api-config", "llm:\n  modle: x\n", "modle"),
        (
            "--api-config",
            "chunking:\n  size: 10\n",
            "chunking.size must be at least 50",
        ),
        (
            "--api-config",
            "vector:\n  qdrantUrl: http://qdrant:6334\n",
            "vector.qdrantUrl differs from --qdrant-url",
        ),
        (
            "--api-pod-defaults",
            "nodeSelectors: {pool: a}\n",
            "nodeSelectors",
        ),
        (
            "--api-pod-defaults",
            "podLabels: {app.kubernetes.io/name: x}\n",
            "podLabels may not set",
        ),
    ];
    for (i, (flag, content, needle)) in cases.into_iter().enumerate() {
        let path = files.path().join(format!("{i}.yaml"));
        std::fs::write(&path, content).expect("write");
        let stderr = Operator::refused(cluster.env, &[flag, &path.display().to_string()]);
        assert!(
            stderr.contains(flag) && stderr.contains(needle),
            "{flag} {content:?}: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "the secret was repeated: {stderr}"
        );
    }
    let missing = files.path().join("missing.yaml").display().to_string();
    let stderr = Operator::refused(cluster.env, &["--api-config", &missing]);
    assert!(stderr.contains("cannot read config"), "{stderr}");
}

/// The operator takes over nothing it did not create for this Tenant: an existing namespace
/// of the tenant's name (someone else's, or an earlier Tenant's) and a planted signing key are
/// refused with Ready=False and a Warning Event, and left as they are.
#[tokio::test]
async fn the_operator_adopts_nothing_it_did_not_create() {
    let cluster = Cluster::new().await;
    let client = cluster.client.clone();
    let op = cluster.operator("op-adopt", &[]);
    let namespaces: Api<Namespace> = Api::all(client.clone());

    // A namespace that happens to have the tenant's namespace name.
    let name = unique("squat");
    let ns = format!("tenant-{name}");
    let foreign: Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"team": "other"}}}))
            .expect("namespace");
    namespaces
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create namespace");
    cluster.remove_on_drop("namespace", None, &ns);
    cluster.create_tenant(&name, json!({"tier": "pro"})).await;
    let t = cluster
        .wait_reason(&name, "Ready", "False", "NamespaceConflict")
        .await;
    assert_eq!(t.status.and_then(|s| s.namespace), None);
    let after = namespaces.get(&ns).await.expect("namespace");
    assert_eq!(after.metadata.owner_references, None, "not taken over");
    assert_eq!(after.labels().get("app.kubernetes.io/managed-by"), None);
    assert!(
        !events_of(&client, &name, "NamespaceConflict")
            .await
            .is_empty()
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );

    // A signing key planted in place of the tenant's own.
    let name = unique("plant");
    let ns = format!("tenant-{name}");
    cluster.create_tenant(&name, json!({"tier": "pro"})).await;
    let t = cluster
        .wait_condition(&name, "SigningKeyReady", "True")
        .await;
    let kid = t.status.and_then(|s| s.current_key_id).expect("kid");
    // Planted while no operator runs: a reconcile in flight would apply its own keyring over
    // the plant (which is no adoption either, but not what this test looks at).
    op.stop();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let planted = Keyring::generate(tenantry::domain::Algorithm::EdDSA);
    let replace = json!({
        "metadata": {"labels": null, "ownerReferences": null},
        "data": {"keyring.json": k8s_openapi::ByteString(serde_json::to_vec(&planted).expect("json"))},
    });
    secrets
        .patch(
            &format!("{name}-signing-key"),
            &PatchParams::default(),
            &Patch::Merge(replace),
        )
        .await
        .expect("plant");
    let op = cluster.operator("op-adopt-2", &[]);
    let t = cluster
        .wait_reason(&name, "SigningKeyReady", "False", "SecretConflict")
        .await;
    assert_eq!(
        condition(&t, "Ready").map(|c| c.1),
        Some("SecretConflict".into())
    );
    assert_eq!(
        t.status.and_then(|s| s.current_key_id),
        Some(kid),
        "the planted key is not used"
    );
    let still: Keyring = serde_json::from_slice(
        &secrets
            .get(&format!("{name}-signing-key"))
            .await
            .expect("secret")
            .data
            .expect("data")["keyring.json"]
            .0,
    )
    .expect("ring");
    assert_eq!(still, planted, "left as it is");
    let verify: Keyring = serde_json::from_slice(
        &secrets
            .get(&format!("{name}-verify-keys"))
            .await
            .expect("secret")
            .data
            .expect("data")["keyring.json"]
            .0,
    )
    .expect("ring");
    assert!(
        verify
            .keys
            .iter()
            .all(|k| planted.keys.iter().all(|p| p.kid != k.kid)),
        "the pods never get the planted key"
    );
    assert!(!events_of(&client, &name, "SecretConflict").await.is_empty());
    op.stop();

    // Flags that would let a Tenant take over a namespace, or a pod mint tokens.
    let stderr = Operator::refused(cluster.env, &["--namespace-prefix", ""]);
    assert!(stderr.contains("--namespace-prefix"), "{stderr}");
    for flag in ["--api-env", "--api-env-from-secret"] {
        let value = if flag == "--api-env" {
            "TENANTRY_DEV=true"
        } else {
            "TENANTRY_DEV=s:k"
        };
        let stderr = Operator::refused(cluster.env, &[flag, value]);
        assert!(
            stderr.contains("TENANTRY_DEV") && stderr.contains("/dev/token"),
            "{stderr}"
        );
    }
}

/// What the tenant namespace is confined to: the NetworkPolicy from the flags (API port from
/// the gateway's namespace, metrics from monitoring only, egress to DNS and the named stores),
/// a ResourceQuota and LimitRange from the replica bounds and the API's resources, bounded
/// emptyDirs; and the tenant's data is bound to its UID (rendered into the manifest), with an
/// isolation mode that cannot be switched under the data.
#[tokio::test]
async fn tenant_namespaces_are_confined_and_data_is_bound_to_the_uid() {
    let cluster = Cluster::new().await;
    let client = cluster.client.clone();
    let op = cluster.operator(
        "op-confine",
        &[
            "--api-ingress-from",
            "gateway-system",
            "--metrics-from",
            "monitoring",
            "--api-egress",
            "qdrant:6334",
            "--api-egress",
            "*:443",
            "--api-data-size-limit",
            "3Gi",
        ],
    );
    let name = unique("fence");
    let ns = format!("tenant-{name}");
    cluster
        .create_tenant(&name, json!({"tier": "pro", "api": {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}}}))
        .await;
    let t = cluster
        .wait_condition(&name, "SigningKeyReady", "True")
        .await;
    let uid = t.uid().expect("uid");
    assert_eq!(
        t.status.as_ref().and_then(|s| s.data_owner.clone()),
        Some(uid.clone())
    );

    let np = Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-api"))
        .await
        .expect("network policy")
        .spec
        .expect("spec");
    assert_eq!(
        np.policy_types,
        Some(vec!["Ingress".into(), "Egress".into()])
    );
    let from_ns = |port: i32| {
        let rule = np
            .ingress
            .iter()
            .flatten()
            .find(|r| {
                r.ports.iter().flatten().any(|p| {
                    p.port
                        == Some(
                            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port),
                        )
                })
            })
            .unwrap_or_else(|| panic!("no rule for {port}"));
        rule.from.clone().expect("restricted")[0]
            .namespace_selector
            .clone()
            .and_then(|s| s.match_labels)
            .expect("labels")["kubernetes.io/metadata.name"]
            .clone()
    };
    assert_eq!(from_ns(8000), "gateway-system");
    assert_eq!(from_ns(9090), "monitoring");
    let egress_ports: Vec<_> = np
        .egress
        .iter()
        .flatten()
        .flat_map(|r| r.ports.iter().flatten())
        .map(|p| (p.port.clone(), p.protocol.clone().unwrap_or_default()))
        .collect();
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int;
    assert_eq!(
        egress_ports,
        [
            (Some(Int(53)), "UDP".to_string()),
            (Some(Int(53)), "TCP".to_string()),
            (Some(Int(6334)), "TCP".to_string()),
            (Some(Int(443)), "TCP".to_string()),
        ]
    );

    // Pinned to one replica (no shared stores): one pod plus the rolling update's surge.
    let quota = Api::<k8s_openapi::api::core::v1::ResourceQuota>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-api"))
        .await
        .expect("resource quota");
    let hard = quota.spec.and_then(|s| s.hard).expect("hard");
    let q = |k: &str| hard.get(k).map(|q| q.0.clone()).unwrap_or_default();
    assert_eq!(
        (
            q("pods"),
            q("requests.cpu"),
            q("requests.memory"),
            q("limits.memory")
        ),
        ("2".into(), "200m".into(), "512Mi".into(), "2Gi".into())
    );
    let limits = Api::<k8s_openapi::api::core::v1::LimitRange>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-api"))
        .await
        .expect("limit range");
    let item = &limits.spec.expect("spec").limits[0];
    assert_eq!(item.max.as_ref().expect("max")["memory"].0, "1Gi");
    let pod = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-api"))
        .await
        .expect("deployment")
        .spec
        .template
        .spec
        .expect("pod");
    let sizes: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.clone(), v.empty_dir.as_ref()?.size_limit.clone()?.0)))
        .collect();
    assert_eq!(
        sizes,
        [
            ("data".to_string(), "3Gi".to_string()),
            ("tmp".into(), "256Mi".into())
        ]
    );

    // The manifest the pods load names the UID their data is bound to.
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get(&format!("{name}-api-config"))
        .await
        .expect("config");
    let manifest = cm.data.expect("data")["tenant.yaml"].clone();
    assert!(manifest.contains(&format!("uid: {uid}")), "{manifest}");
    assert!(!manifest.contains("adopt-data-from"), "{manifest}");

    // Adopting a deleted Tenant's data is rendered for the pods.
    cluster
        .tenants
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"tenantry.dev/adopt-data-from": "uid-of-the-old-tenant"}}})))
        .await
        .expect("adopt");
    eventually(30, "adoption rendered", || async {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get(&format!("{name}-api-config"))
            .await
            .ok()?;
        cm.data?["tenant.yaml"]
            .contains("tenantry.dev/adopt-data-from: uid-of-the-old-tenant")
            .then_some(())
    })
    .await;

    // The isolation mode cannot be switched under the data.
    let err = cluster
        .tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"retrieval": {"isolation": "Partition"}}})),
        )
        .await
        .expect_err("isolation is immutable");
    assert!(
        err.to_string().contains("retrieval.isolation is immutable"),
        "{err}"
    );
    cluster.delete_and_wait_gone(&name).await;
    op.stop();
}

/// Run from a laptop (no `--lease-namespace`, no `--vector-data-dir`): the operator says which
/// namespace and Lease it uses, says once (not at every retry) that a missing namespace keeps
/// it from leading, and writes nothing into its working directory.
#[tokio::test]
async fn a_missing_lease_namespace_is_said_once_and_nothing_lands_in_the_working_directory() {
    let env = common::cluster::KubeEnv::get();
    let missing = unique("no-such-ns");
    let cwd = tempfile::tempdir().expect("tmp");
    let state = tempfile::tempdir().expect("tmp");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tenantry"));
    cmd.args([
        "operator",
        "--listen",
        "127.0.0.1:0",
        "--identity",
        "op-laptop",
    ])
    .args(["--lease-duration", "3s", "--lease-namespace", &missing])
    .current_dir(cwd.path())
    .env("XDG_STATE_HOME", state.path())
    .env_remove("POD_NAMESPACE")
    .env_remove("TENANTRY_VECTOR_DATA_DIR")
    // A laptop's kubeconfig: an admin's (the ServiceAccount may not even look there).
    .env("KUBECONFIG", &env.kubeconfig)
    .env_remove("RUST_LOG");
    let op = Operator::spawn(&mut cmd);
    let started = op
        .logs()
        .lines()
        .find(|l| l.contains("operator started"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .expect("start line");
    assert_eq!(started["lease_namespace"], missing.as_str(), "{started}");
    assert_eq!(started["lease"], "tenantry-operator", "{started}");
    // A 3 s Lease is tried every second: several attempts fail meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let logs = op.logs();
    let said: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("does not exist"))
        .collect();
    assert_eq!(said.len(), 1, "said once: {logs}");
    let line: serde_json::Value = serde_json::from_str(said[0]).expect("json");
    assert_eq!(line["level"], "ERROR", "{line}");
    let message = line["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("namespace {missing:?}"))
            && message.contains("--lease-namespace"),
        "{message}"
    );
    assert_eq!(op.log_count("lease update failed"), 0, "{logs}");
    assert_eq!(
        std::fs::read_dir(cwd.path()).expect("cwd").count(),
        0,
        "nothing in the working directory"
    );
    assert!(
        state.path().join("tenantry/operator-vectors").is_dir(),
        "the embedded store is in the state folder"
    );
}

/// The default log filter on a real embedded store: creating a tenant's collections logs none
/// of the store's per-collection noise; with `RUST_LOG=info` the same work shows it (so the
/// filter, not a quiet store, is what keeps it out).
#[tokio::test]
async fn the_default_log_filter_keeps_the_embedded_stores_noise_out() {
    let cluster = Cluster::new().await;
    let noise = ["Feature flags not initialized!", ": opened"];
    let mut seen = Vec::new();
    for (identity, rust_log) in [("op-quiet", ""), ("op-loud", "info")] {
        let op = Operator::start_with_env(cluster.env, identity, &[], &[("RUST_LOG", rust_log)]);
        let name = unique("noise");
        cluster.create_tenant(&name, json!({"tier": "pro"})).await;
        cluster
            .wait_condition(&name, "VectorStoreReady", "True")
            .await;
        seen.push(noise.map(|n| op.log_count(n)));
        op.stop();
    }
    assert_eq!(seen[0], [0, 0], "default filter");
    assert!(
        seen[1].iter().all(|&n| n > 0),
        "RUST_LOG=info shows the store's lines: {:?}",
        seen[1]
    );
}

/// The value of the metric line that starts with `series` (its name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The per-tenant gauges of the operator's `/metrics` follow the Tenant: not ready, then ready
/// once its API is available; its signing key's age from `status.keyCreatedAt`; its rotation
/// period from `spec.auth.rotateEvery`; gone with the Tenant.
#[tokio::test]
async fn the_operator_reports_each_tenants_readiness_and_key_age() {
    let cluster = Cluster::new().await;
    let op = cluster.operator("op-gauges", &[]);
    let name = unique("gauge");
    cluster
        .create_tenant(
            &name,
            json!({"tier": "pro", "auth": {"rotateEvery": "720h"}}),
        )
        .await;
    let t = cluster
        .wait_condition(&name, "SigningKeyReady", "True")
        .await;
    let ready = format!(r#"tenantry_tenant_ready{{tenant_id="{name}"}}"#);
    let age = format!(r#"tenantry_tenant_signing_key_age_seconds{{tenant_id="{name}"}}"#);
    let period =
        format!(r#"tenantry_tenant_signing_key_rotation_period_seconds{{tenant_id="{name}"}}"#);
    let text = eventually(30, "the tenant's gauges", || async {
        let text = op.metrics().await;
        metric(&text, &age).is_some().then_some(text)
    })
    .await;
    assert_eq!(metric(&text, &ready), Some(0.0), "{text}");
    assert_eq!(metric(&text, &period), Some(720.0 * 3600.0), "{text}");
    // The age is the scrape's time minus the key's creation (from the status).
    let created: k8s_openapi::jiff::Timestamp = t
        .status
        .as_ref()
        .and_then(|s| s.key_created_at.as_deref())
        .expect("keyCreatedAt")
        .parse()
        .expect("rfc3339");
    let before = k8s_openapi::jiff::Timestamp::now().as_second() - created.as_second();
    let seen = metric(&op.metrics().await, &age).expect("age");
    let after = k8s_openapi::jiff::Timestamp::now().as_second() - created.as_second();
    assert!(
        (before as f64) <= seen && seen <= after as f64,
        "{before} <= {seen} <= {after}"
    );
    // The exposition stays one OpenMetrics document: one EOF, at the end.
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    cluster
        .mark_available(&format!("tenant-{name}"), &format!("{name}-api"))
        .await;
    cluster.wait_condition(&name, "Ready", "True").await;
    eventually(30, "tenantry_tenant_ready 1", || async {
        (metric(&op.metrics().await, &ready) == Some(1.0)).then_some(())
    })
    .await;

    cluster.delete_and_wait_gone(&name).await;
    eventually(30, "the gauges of a deleted tenant gone", || async {
        let text = op.metrics().await;
        (!text.contains(&format!(r#"tenant_id="{name}""#))).then_some(())
    })
    .await;
    op.stop();
}
