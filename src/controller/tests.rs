//! Reconciler tests without a cluster: each scenario runs `reconcile` against a scripted API
//! server that checks every request in order.
use super::*;
use k8s_openapi::api::core::v1::Secret;

#[test]
fn owned_namespaced_objects_map_to_the_cluster_scoped_tenant() {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "acme-signing-key", "namespace": "tenant-acme",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"},
                {"apiVersion": "tenantry.dev/v1alpha1", "kind": "Tenant", "name": "acme", "uid": "2", "controller": true},
            ]},
    }))
    .expect("secret");
    let owner = tenant_owner(&secret).expect("owner");
    assert_eq!(owner, ObjectRef::<Tenant>::new("acme"));
    assert_eq!(
        owner.namespace, None,
        "one key per Tenant, whatever the child's namespace"
    );
    let orphan: Secret =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "x", "namespace": "y"}}))
            .expect("secret");
    assert!(tenant_owner(&orphan).is_none());
}

#[test]
fn an_owner_reference_of_another_version_of_the_group_still_names_the_tenant() {
    let owned = |api_version: &str| -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "tenant-acme", "ownerReferences": [
                {"apiVersion": api_version, "kind": "Tenant", "name": "acme", "uid": "2"}]},
        }))
        .expect("secret")
    };
    let this = Tenant::api_version(&()).to_string();
    let group = Tenant::group(&());
    for api_version in [this, format!("{group}/v1"), format!("{group}/v9beta3")] {
        assert_eq!(
            tenant_owner(&owned(&api_version)),
            Some(ObjectRef::new("acme")),
            "{api_version}"
        );
    }
    assert_eq!(tenant_owner(&owned("example.com/v1alpha1")), None);
    assert_eq!(tenant_owner(&owned("v1")), None);
}

#[test]
fn only_what_the_operator_acts_on_triggers_a_tenant_not_its_status() {
    let tenant: Tenant = serde_json::from_value(serde_json::json!({
        "apiVersion": "tenantry.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "acme", "generation": 1, "finalizers": [FINALIZER]},
        "spec": {"tier": "pro"},
    }))
    .expect("tenant");
    let base = acted_on(&tenant);
    let mut status_only = tenant.clone();
    status_only.status = Some(Default::default());
    status_only.metadata.resource_version = Some("9".into());
    assert_eq!(acted_on(&status_only), base, "a status patch");
    let changed = |f: &dyn Fn(&mut Tenant)| {
        let mut t = tenant.clone();
        f(&mut t);
        acted_on(&t)
    };
    assert_ne!(changed(&|t| t.metadata.generation = Some(2)), base, "spec");
    let rotate = |t: &mut Tenant| {
        t.metadata.annotations = Some([(crate::crd::ROTATE_ANNOTATION.into(), "1".into())].into())
    };
    assert_ne!(changed(&rotate), base, "rotation annotation");
    assert_ne!(
        changed(&|t| t.metadata.finalizers = None),
        base,
        "finalizer"
    );
    let deleted = |t: &mut Tenant| {
        t.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
    };
    assert_ne!(changed(&deleted), base, "deletion");
}

mod scenarios {
    use axum::http::{Method, StatusCode};
    use serde_json::{Value, json};

    use super::*;
    use crate::controller::fixtures::{
        ApiServerVerifier, Reply, Seen, test_context, test_context_with,
    };
    use crate::crd::TenantStatus;

    static TIERS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use kube::Resource as _;
        format!(
            "/apis/{}/quotatiers",
            crate::crd::QuotaTier::api_version(&())
        )
    });
    const CORE: &str = "/api/v1/namespaces/tenant-acme";
    const NAMESPACES: &str = "/api/v1/namespaces";
    const BINDING: &str =
        "/apis/rbac.authorization.k8s.io/v1/namespaces/tenant-acme/rolebindings/tenantry-operator";
    const APPS: &str = "/apis/apps/v1/namespaces/tenant-acme";

    /// Runs one reconcile of `tenant` against the script; returns its result and the requests.
    async fn reconcile_with(
        tenant: Tenant,
        ctx: Arc<Context>,
        verifier: ApiServerVerifier,
    ) -> (Result<Action, Error>, Vec<Seen>) {
        let server = verifier.run();
        let result =
            tokio::time::timeout(Duration::from_secs(20), reconcile(Arc::new(tenant), ctx))
                .await
                .expect("reconcile finished");
        let seen = server.await.expect("the expected requests, in order");
        (result, seen)
    }

    fn with_an_available_replica(mut deployment: Value) -> Value {
        deployment["status"] = json!({"availableReplicas": 1});
        deployment
    }

    /// Every owned object's apply after the signing key (in the order they are applied).
    fn then_api_objects(v: ApiServerVerifier) -> ApiServerVerifier {
        let v = v
            .then_apply(&format!("{CORE}/configmaps/acme-api-config"))
            .then(
                Method::PATCH,
                &format!("{APPS}/deployments/acme-api"),
                Reply::EchoWith(with_an_available_replica),
            )
            .then_apply(&format!("{CORE}/services/acme-api"))
            .then_apply(
                "/apis/autoscaling/v2/namespaces/tenant-acme/horizontalpodautoscalers/acme-api",
            )
            .then_apply("/apis/policy/v1/namespaces/tenant-acme/poddisruptionbudgets/acme-api")
            .then_apply(
                "/apis/networking.k8s.io/v1/namespaces/tenant-acme/networkpolicies/acme-api",
            );
        then_no_exposure(v)
    }

    /// The first reconcile of a new `tenant` of the built-in tier `pro` (see
    /// [`then_first_reconcile`]) by an operator whose pods share no store: its API is pinned
    /// to one replica, which a Warning Event reports after the status patch.
    fn then_first_pinned_reconcile(v: ApiServerVerifier, tenant: &Tenant) -> ApiServerVerifier {
        then_first_objects(v)
            .then_status_patch(tenant)
            .then_event()
            .then_event()
    }

    /// The whole first reconcile of a new `tenant` of the built-in tier `pro` by an operator
    /// whose pods share their stores: no QuotaTier object, no Secret yet, every object
    /// applied, status patched, then Ready.
    fn then_first_reconcile(v: ApiServerVerifier, tenant: &Tenant) -> ApiServerVerifier {
        then_first_objects(v).then_status_patch(tenant).then_event()
    }

    /// Up to the status patch: tier and namespace looked up (no namespace: nothing else is),
    /// the namespace created, every object applied.
    fn then_first_objects(v: ApiServerVerifier) -> ApiServerVerifier {
        let v = v
            .then(
                Method::GET,
                &format!("{}/pro", *TIERS),
                Reply::Error(StatusCode::NOT_FOUND),
            )
            .then(Method::GET, CORE, Reply::Error(StatusCode::NOT_FOUND))
            .then(Method::POST, NAMESPACES, Reply::Echo)
            .then_apply(BINDING);
        then_namespace_objects(v)
    }

    /// The namespace's own objects and the keyrings, after the namespace.
    fn then_namespace_objects(v: ApiServerVerifier) -> ApiServerVerifier {
        let v = v
            .then_apply(&format!("{CORE}/resourcequotas/acme-api"))
            .then_apply(&format!("{CORE}/limitranges/acme-api"))
            .then_apply(&format!("{CORE}/secrets/acme-signing-key"))
            .then_event()
            .then_apply(&format!("{CORE}/secrets/acme-verify-keys"));
        then_api_objects(v)
    }

    /// An operator whose pods share the vector store and the quotas.
    fn shared_stores() -> BuildConfig {
        let mut build = BuildConfig::test();
        build.qdrant_url = Some("http://qdrant:6334".into());
        build.serve.quota.redis_url = Some("redis://redis:6379".into());
        build
    }

    fn patched_status(seen: &Seen) -> TenantStatus {
        serde_json::from_value(seen.body["status"].clone()).expect("a TenantStatus")
    }

    fn condition<'a>(status: &'a TenantStatus, type_: &str) -> &'a crate::crd::Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"))
    }

    #[tokio::test]
    async fn a_new_tenant_gets_every_object_and_becomes_ready() {
        let (_dir, ctx, verifier) = test_context_with(shared_stores());
        let tenant = Tenant::test().finalized();
        let verifier = then_first_reconcile(verifier, &tenant);
        let (result, seen) = reconcile_with(tenant, ctx.clone(), verifier).await;
        assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));

        let applies: Vec<_> = seen.iter().filter(|s| s.method == Method::PATCH).collect();
        for s in &applies {
            assert!(
                s.query.contains("fieldManager=tenantry") && s.query.contains("force=true"),
                "server-side apply under one field manager: {}?{}",
                s.path,
                s.query
            );
        }
        let kinds: Vec<_> = applies.iter().map(|s| s.body["kind"].clone()).collect();
        assert_eq!(
            seen[2].body["kind"], "Namespace",
            "created, never applied over"
        );
        assert!(
            seen[2].query.contains("fieldManager=tenantry"),
            "{}",
            seen[2].query
        );
        assert_eq!(
            seen[2].body["metadata"]["ownerReferences"][0]["uid"],
            "uid-1"
        );
        assert_eq!(
            kinds,
            [
                "RoleBinding",
                "ResourceQuota",
                "LimitRange",
                "Secret",
                "Secret",
                "ConfigMap",
                "Deployment",
                "Service",
                "HorizontalPodAutoscaler",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "Tenant",
            ]
            .map(|k| json!(k))
        );
        for s in &applies[..applies.len() - 1] {
            assert_eq!(s.body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        }
        assert_eq!(seen[7].body["reason"], "SigningKeyUpdated");
        // The pods' keyring verifies only: no private key leaves the signing-key Secret.
        let public = base64_decode(seen[8].body["data"]["keyring.json"].as_str().expect("ring"))
            .expect("base64");
        let public: crate::auth::keys::Keyring = serde_json::from_slice(&public).expect("ring");
        assert!(!public.can_sign() && public.keys.iter().all(|k| k.private_key.is_none()));
        let quota = &applied(&seen, "ResourceQuota")["spec"]["hard"];
        assert_eq!(
            (
                &quota["pods"],
                &quota["requests.cpu"],
                &quota["limits.memory"]
            ),
            (&json!("6"), &json!("1500m"), &json!("12Gi")),
            "the tier's 5 replicas plus the surge"
        );
        let manifest = applied(&seen, "ConfigMap")["data"]["tenant.yaml"]
            .as_str()
            .expect("tenant.yaml");
        assert!(manifest.contains("uid: uid-1"), "{manifest}");

        let status = patched_status(applies.last().expect("status patch"));
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Reconciled")
        );
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.namespace.as_deref(), Some("tenant-acme"));
        assert_eq!(
            status.endpoint.as_deref(),
            Some("http://acme-api.tenant-acme.svc:80")
        );
        assert_eq!(
            status.collections,
            ["tenant_acme_docs", "tenant_acme_cache"]
        );
        let stored_kid = seen[6].body["data"]["kid"].as_str().expect("kid");
        let kid =
            String::from_utf8(base64_decode(stored_kid).expect("base64 kid")).expect("utf-8 kid");
        assert_eq!(status.current_key_id.as_deref(), Some(kid.as_str()));
        assert!(status.key_created_at.is_some() && status.next_rotation_at.is_none());
        assert_eq!(status.data_owner.as_deref(), Some("uid-1"));
        assert_eq!(seen.last().expect("event").body["reason"], "Reconciled");
        assert!(
            ctx.metrics
                .encode()
                .contains(r#"tenantry_tenants{phase="Ready"} 1"#)
        );
    }

    #[tokio::test]
    async fn a_steady_tenant_is_applied_but_its_status_is_not_patched() {
        // Pinned: the pin's Event comes once, when it starts.
        let (_dir, ctx, verifier) = test_context();
        let first = Tenant::test().finalized();
        let verifier = then_first_pinned_reconcile(verifier, &first);
        let (result, seen) = reconcile_with(first.clone(), ctx.clone(), verifier).await;
        result.expect("first reconcile");
        let namespace = seen[2].body.clone();
        let secret = seen[6].body.clone();
        let verify = seen[8].body.clone();
        let config = applied(&seen, "ConfigMap").clone();
        let mut steady = first;
        steady.status = Some(patched_status(&seen[seen.len() - 3]));

        let (_dir2, ctx, verifier) = test_context();
        let verifier = then_owned_objects_read(verifier, namespace, secret, verify, config)
            .then_apply(CORE)
            .then_apply(&format!("{CORE}/resourcequotas/acme-api"))
            .then_apply(&format!("{CORE}/limitranges/acme-api"))
            .then_apply(&format!("{CORE}/secrets/acme-signing-key"))
            .then_apply(&format!("{CORE}/secrets/acme-verify-keys"));
        // No key Event, no status patch and no Reconciled Event: nothing changed.
        let (result, _) = reconcile_with(steady, ctx, then_api_objects(verifier)).await;
        assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));
    }

    /// An echo stamped with a resourceVersion, as the API server answers an apply.
    fn versioned(mut v: Value) -> Value {
        v["metadata"]["resourceVersion"] = json!("7");
        v
    }

    #[tokio::test]
    async fn a_reconcile_skips_what_the_watches_and_reads_show_unchanged_since_its_apply() {
        let (_dir, ctx, verifier) = test_context();
        let first = Tenant::test().finalized();
        let verifier = then_first_pinned_reconcile(verifier, &first);
        let (result, seen) = reconcile_with(first.clone(), ctx.clone(), verifier).await;
        result.expect("first reconcile");
        let namespace = versioned(seen[2].body.clone());
        let secret = versioned(seen[6].body.clone());
        let verify = versioned(seen[8].body.clone());
        let config = versioned(applied(&seen, "ConfigMap").clone());
        let mut steady = first;
        steady.status = Some(patched_status(&seen[seen.len() - 3]));

        // A steady reconcile in a fresh operator reads and applies everything; its applies
        // are answered with a version.
        let (_dir2, ctx, verifier) = test_context();
        let ns_objects = [
            format!("{CORE}/resourcequotas/acme-api"),
            format!("{CORE}/limitranges/acme-api"),
        ];
        let mut v = then_owned_objects_read(
            verifier,
            namespace.clone(),
            secret.clone(),
            verify.clone(),
            config.clone(),
        )
        .then(Method::PATCH, CORE, Reply::EchoWith(versioned));
        for path in &ns_objects {
            v = v.then(Method::PATCH, path, Reply::EchoWith(versioned));
        }
        for name in ["acme-signing-key", "acme-verify-keys"] {
            let path = format!("{CORE}/secrets/{name}");
            v = v.then(Method::PATCH, &path, Reply::EchoWith(versioned));
        }
        let v = v
            .then(
                Method::PATCH,
                &format!("{CORE}/configmaps/acme-api-config"),
                Reply::EchoWith(versioned),
            )
            .then(
                Method::PATCH,
                &format!("{APPS}/deployments/acme-api"),
                Reply::EchoWith(|d| versioned(with_an_available_replica(d))),
            );
        let mut v = v;
        for path in [
            format!("{CORE}/services/acme-api"),
            "/apis/autoscaling/v2/namespaces/tenant-acme/horizontalpodautoscalers/acme-api".into(),
            "/apis/policy/v1/namespaces/tenant-acme/poddisruptionbudgets/acme-api".into(),
            "/apis/networking.k8s.io/v1/namespaces/tenant-acme/networkpolicies/acme-api".into(),
        ] {
            v = v.then(Method::PATCH, &path, Reply::EchoWith(versioned));
        }
        let v = then_no_exposure(v);
        let (result, seen) = reconcile_with(steady.clone(), ctx.clone(), v).await;
        result.expect("steady reconcile");

        // The watches report each watched object at the version the apply returned.
        for s in seen.iter().filter(|s| s.method == Method::PATCH) {
            let o = versioned(s.body.clone());
            match s.body["kind"].as_str() {
                Some("Namespace") => ctx.applied.observe(&typed::<Namespace>(o)),
                Some("ResourceQuota") => ctx.applied.observe(&typed::<ResourceQuota>(o)),
                Some("LimitRange") => ctx.applied.observe(&typed::<LimitRange>(o)),
                Some("ConfigMap") => ctx.applied.observe(&typed::<ConfigMap>(o)),
                Some("Service") => ctx.applied.observe(&typed::<Service>(o)),
                Some("HorizontalPodAutoscaler") => {
                    ctx.applied.observe(&typed::<HorizontalPodAutoscaler>(o))
                }
                Some("PodDisruptionBudget") => {
                    ctx.applied.observe(&typed::<PodDisruptionBudget>(o))
                }
                Some("NetworkPolicy") => ctx.applied.observe(&typed::<NetworkPolicy>(o)),
                _ => true,
            };
        }
        // The next reconcile reads only the Secrets (not watched) and applies only what is
        // always applied: the RoleBinding, the Deployment (its status is read), exposure.
        let reads = |v: ApiServerVerifier, verify: Value| {
            v.then_apply(BINDING)
                .then(
                    Method::GET,
                    &format!("{CORE}/secrets/acme-signing-key"),
                    Reply::Json(secret.clone()),
                )
                .then(
                    Method::GET,
                    &format!("{CORE}/secrets/acme-verify-keys"),
                    Reply::Json(verify),
                )
        };
        let deployment = |v: ApiServerVerifier| {
            v.then(
                Method::PATCH,
                &format!("{APPS}/deployments/acme-api"),
                Reply::EchoWith(|d| versioned(with_an_available_replica(d))),
            )
        };
        let (_dir3, next, v) = sharing_caches(&ctx);
        let v = then_no_exposure(deployment(reads(v, verify.clone())));
        let (result, _) = reconcile_with(steady.clone(), next, v).await;
        assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));

        // A Secret read at another version (edited, or deleted and made again) is applied.
        let mut edited = verify;
        edited["metadata"]["resourceVersion"] = json!("8");
        let (_dir4, next, v) = sharing_caches(&ctx);
        let v = reads(v, edited).then(
            Method::PATCH,
            &format!("{CORE}/secrets/acme-verify-keys"),
            Reply::EchoWith(versioned),
        );
        let v = then_no_exposure(deployment(v));
        let (result, _) = reconcile_with(steady, next, v).await;
        assert_eq!(result.expect("reconciled"), Action::requeue(RESYNC));
    }

    /// A new test context (its own scripted API server) sharing `ctx`'s apply and tier caches:
    /// the same operator's next reconcile.
    fn sharing_caches(ctx: &Arc<Context>) -> (tempfile::TempDir, Arc<Context>, ApiServerVerifier) {
        let (dir, mut next, v) = test_context();
        let fresh = Arc::get_mut(&mut next).expect("a fresh context");
        fresh.applied = ctx.applied.clone();
        fresh.tiers = ctx.tiers.clone();
        (dir, next, v)
    }

    fn typed<K: serde::de::DeserializeOwned>(v: Value) -> K {
        serde_json::from_value(v).expect("object")
    }

    /// Not exposed: the operator looks for a route or ingress of its own to remove.
    fn then_no_exposure(v: ApiServerVerifier) -> ApiServerVerifier {
        v.then(
            Method::GET,
            "/apis/gateway.networking.k8s.io/v1/namespaces/tenant-acme/httproutes/acme-api",
            Reply::Error(StatusCode::NOT_FOUND),
        )
        .then(
            Method::GET,
            "/apis/networking.k8s.io/v1/namespaces/tenant-acme/ingresses/acme-api",
            Reply::Error(StatusCode::NOT_FOUND),
        )
    }

    /// A steady reconcile's reads: tier, then the namespace, Secrets and ConfigMap (each the
    /// Tenant's own).
    fn then_owned_objects_read(
        v: ApiServerVerifier,
        namespace: Value,
        secret: Value,
        verify: Value,
        config: Value,
    ) -> ApiServerVerifier {
        v.then(
            Method::GET,
            &format!("{}/pro", *TIERS),
            Reply::Error(StatusCode::NOT_FOUND),
        )
        .then(Method::GET, CORE, Reply::Json(namespace))
        .then_apply(BINDING)
        .then(
            Method::GET,
            &format!("{CORE}/secrets/acme-signing-key"),
            Reply::Json(secret),
        )
        .then(
            Method::GET,
            &format!("{CORE}/secrets/acme-verify-keys"),
            Reply::Json(verify),
        )
        .then(
            Method::GET,
            &format!("{CORE}/configmaps/acme-api-config"),
            Reply::Json(config),
        )
    }

    /// A namespace (or Secret) of the same name that is not this Tenant's.
    fn foreign(kind: &str, name: &str, owner_uid: Option<&str>) -> Value {
        let mut v = json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name}});
        if let Some(uid) = owner_uid {
            v["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "tenantry"});
            v["metadata"]["ownerReferences"] = json!([{"apiVersion": "tenantry.dev/v1alpha1",
                "kind": "Tenant", "name": "acme", "uid": uid, "controller": true}]);
        }
        v
    }

    #[tokio::test]
    async fn a_namespace_the_tenant_does_not_own_is_refused_not_taken_over() {
        // Someone else's namespace, and one an earlier Tenant of the same name owned.
        for existing in [
            foreign("Namespace", "tenant-acme", None),
            foreign("Namespace", "tenant-acme", Some("uid-0")),
        ] {
            let (_dir, ctx, verifier) = test_context();
            let tenant = Tenant::test().finalized();
            let verifier = verifier
                .then(
                    Method::GET,
                    &format!("{}/pro", *TIERS),
                    Reply::Error(StatusCode::NOT_FOUND),
                )
                .then(Method::GET, CORE, Reply::Json(existing))
                .then_event()
                .then_status_patch(&tenant);
            // Nothing is applied: no further request is expected.
            let (result, seen) = reconcile_with(tenant, ctx, verifier).await;
            assert_eq!(result.expect("handled"), Action::requeue(CONFLICT_RETRY));
            assert_eq!(
                (&seen[2].body["type"], &seen[2].body["reason"]),
                (&json!("Warning"), &json!("NamespaceConflict"))
            );
            let ready = condition(&patched_status(&seen[3]), "Ready").clone();
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("False", "NamespaceConflict")
            );
            assert!(ready.message.contains("tenant-acme"), "{}", ready.message);
        }
    }

    #[tokio::test]
    async fn a_planted_signing_key_is_refused_not_adopted() {
        let (_dir, ctx, verifier) = test_context();
        let tenant = Tenant::test().finalized();
        let ring = crate::auth::keys::Keyring::generate(crate::domain::Algorithm::EdDSA);
        let mut planted = foreign("Secret", "acme-signing-key", None);
        use base64::Engine as _;
        planted["data"] = json!({"keyring.json": base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&ring).expect("json"))});
        let verifier = verifier
            .then(
                Method::GET,
                &format!("{}/pro", *TIERS),
                Reply::Error(StatusCode::NOT_FOUND),
            )
            .then(
                Method::GET,
                CORE,
                Reply::Json(foreign("Namespace", "tenant-acme", Some("uid-1"))),
            )
            .then_apply(BINDING)
            .then(
                Method::GET,
                &format!("{CORE}/secrets/acme-signing-key"),
                Reply::Json(planted),
            )
            .then_event()
            .then_status_patch(&tenant);
        let (result, seen) = reconcile_with(tenant, ctx, verifier).await;
        assert_eq!(result.expect("handled"), Action::requeue(CONFLICT_RETRY));
        assert_eq!(seen[4].body["reason"], "SecretConflict");
        let status = patched_status(&seen[5]);
        for type_ in ["Ready", "SigningKeyReady"] {
            let c = condition(&status, type_);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", "SecretConflict")
            );
        }
        assert_eq!(status.current_key_id, None, "the planted key is never used");
    }

    fn applied<'a>(seen: &'a [Seen], kind: &str) -> &'a Value {
        let s = seen
            .iter()
            .find(|s| s.method == Method::PATCH && s.body["kind"] == kind);
        &s.unwrap_or_else(|| panic!("no {kind} applied")).body
    }

    #[tokio::test]
    async fn without_shared_stores_the_api_is_pinned_to_one_replica_and_says_why() {
        let (_dir, ctx, verifier) = test_context();
        let tenant = Tenant::test().finalized();
        let verifier = then_first_pinned_reconcile(verifier, &tenant);
        let (result, seen) = reconcile_with(tenant, ctx, verifier).await;
        result.expect("reconciled");
        let hpa = &applied(&seen, "HorizontalPodAutoscaler")["spec"];
        assert_eq!(
            (&hpa["minReplicas"], &hpa["maxReplicas"]),
            (&json!(1), &json!(1))
        );
        assert_eq!(applied(&seen, "Deployment")["spec"]["replicas"], 1);
        let status = patched_status(&seen[seen.len() - 3]);
        assert_eq!(status.replicas.as_deref(), Some("1 (pinned)"));
        let api = condition(&status, "ApiReady");
        assert_eq!(
            (api.status.as_str(), api.reason.as_str()),
            ("True", "Available")
        );
        assert!(
            api.message.contains("pinned to 1 replica instead of 2-5")
                && api.message.contains("--qdrant-url")
                && api.message.contains("TENANTRY_REDIS_URL"),
            "{}",
            api.message
        );
        let event = &seen[seen.len() - 2].body;
        assert_eq!(
            (&event["type"], &event["reason"]),
            (&json!("Warning"), &json!("PinnedToOneReplica"))
        );
        assert!(
            event["note"]
                .as_str()
                .is_some_and(|n| n.starts_with("pinned to 1 replica")),
            "{event}"
        );
    }

    #[tokio::test]
    async fn with_shared_stores_the_autoscaler_gets_the_tiers_bounds() {
        let (_dir, ctx, verifier) = test_context_with(shared_stores());
        let tenant = Tenant::test().finalized();
        let verifier = then_first_reconcile(verifier, &tenant);
        let (result, seen) = reconcile_with(tenant, ctx, verifier).await;
        result.expect("reconciled");
        let hpa = &applied(&seen, "HorizontalPodAutoscaler")["spec"];
        assert_eq!(
            (&hpa["minReplicas"], &hpa["maxReplicas"]),
            (&json!(2), &json!(5))
        );
        assert_eq!(
            applied(&seen, "Deployment")["spec"].get("replicas"),
            None,
            "left to the autoscaler"
        );
        let status = patched_status(&seen[seen.len() - 2]);
        assert_eq!(status.replicas.as_deref(), Some("2-5"));
        assert!(!condition(&status, "ApiReady").message.contains("pinned"));
    }

    #[tokio::test]
    async fn the_config_map_carries_the_tenants_serve_configuration() {
        let mut build = shared_stores();
        build.serve.llm.max_tokens = 300;
        let (_dir, ctx, verifier) = test_context_with(build);
        let mut tenant = Tenant::test().finalized();
        tenant.spec.quota = Some(crate::crd::QuotaOverrides {
            max_tokens: Some(1500),
            ..Default::default()
        });
        let verifier = then_first_reconcile(verifier, &tenant);
        let (result, seen) = reconcile_with(tenant, ctx, verifier).await;
        result.expect("reconciled");
        let text = applied(&seen, "ConfigMap")["data"]["serve.yaml"]
            .as_str()
            .expect("serve.yaml");
        let serve: crate::config::ServeConfig = serde_saphyr::from_str(text).expect("parses");
        assert_eq!(serve.llm.max_tokens, 1500);
        assert_eq!(serve.quota.redis_url.as_deref(), Some("redis://redis:6379"));
        let hash = &applied(&seen, "Deployment")["spec"]["template"]["metadata"]["annotations"]["tenantry.dev/config-hash"];
        assert_eq!(hash, &json!(build::serve_config::hash(text)));
        let status = patched_status(&seen[seen.len() - 2]);
        assert_eq!(
            status.effective_quota.and_then(|q| q.max_tokens),
            Some(1500)
        );
    }

    #[tokio::test]
    async fn an_invalid_spec_is_reported_and_nothing_is_applied() {
        let (_dir, ctx, verifier) = test_context();
        let tenant = Tenant::test().finalized().with_quota(-1);
        let verifier = verifier.then_event().then_status_patch(&tenant);
        let (result, seen) = reconcile_with(tenant, ctx.clone(), verifier).await;
        assert_eq!(result.expect("handled"), Action::await_change());
        assert_eq!(seen[0].body["reason"], "InvalidSpec");
        let status = patched_status(&seen[1]);
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(
            ready.message.contains("spec.quota.dailyTokens"),
            "{}",
            ready.message
        );
        assert_eq!(condition(&status, "QuotaReady").status, "False");
        assert_eq!(
            condition(&status, "ApiReady").message,
            "not reconciled: the spec is invalid"
        );
        assert_eq!(status.namespace, None, "nothing was applied");
        let stalled = condition(&status, "Stalled");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "InvalidSpec"),
            "retrying cannot help: GitOps tools fail fast on Stalled"
        );
        assert_eq!(stalled.message, ready.message);
        assert!(
            ctx.metrics
                .encode()
                .contains(r#"tenantry_tenants{phase="Invalid"} 1"#)
        );
    }

    #[tokio::test]
    async fn a_missing_tier_is_reported_and_nothing_is_applied() {
        let (_dir, ctx, verifier) = test_context();
        let tenant = Tenant::test().finalized().with_tier("gold");
        let verifier = verifier
            .then(
                Method::GET,
                &format!("{}/gold", *TIERS),
                Reply::Error(StatusCode::NOT_FOUND),
            )
            .then_event()
            .then_status_patch(&tenant);
        let (result, seen) = reconcile_with(tenant, ctx, verifier).await;
        assert_eq!(result.expect("handled"), Action::await_change());
        assert_eq!(seen[1].body["reason"], "TierNotFound");
        let status = patched_status(&seen[2]);
        let ready = condition(&status, "Ready");
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            (
                "False",
                "TierNotFound",
                r#"QuotaTier "gold" does not exist"#
            )
        );
        assert_eq!(condition(&status, "QuotaReady").reason, "TierNotFound");
        assert!(
            status.conditions.iter().all(|c| c.type_ != "Stalled"),
            "creating the tier heals it: not stalled"
        );
    }

    #[tokio::test]
    async fn a_conflict_is_retried_at_once() {
        let (_dir, ctx, verifier) = test_context();
        let tier = json!({
            "apiVersion": "tenantry.dev/v1alpha1", "kind": "QuotaTier", "metadata": {"name": "pro"},
            "spec": {"dailyTokens": 10, "requestsPerMinute": 1, "tokensPerMinute": 10,
                "maxConcurrentRequests": 1},
        });
        let verifier = verifier
            .then(Method::GET, &format!("{}/pro", *TIERS), Reply::Json(tier))
            .then(Method::GET, CORE, Reply::Error(StatusCode::NOT_FOUND))
            // Someone created the namespace meanwhile: refused, and looked at again at once.
            .then(Method::POST, NAMESPACES, Reply::Error(StatusCode::CONFLICT));
        let tenant = Tenant::test().finalized();
        let (result, _) = reconcile_with(tenant.clone(), ctx.clone(), verifier).await;
        let error = result.expect_err("the apply conflicted");
        assert_eq!(error.metric_label(), "Conflict");
        assert!(
            error.to_string().starts_with("create Namespace: "),
            "{error}"
        );
        assert_eq!(
            error_policy(Arc::new(tenant), &error, ctx.clone()),
            Action::requeue(Duration::from_secs(1))
        );
        assert!(
            ctx.metrics
                .encode()
                .contains(r#"tenantry_reconcile_total{result="Conflict"} 1"#)
        );
    }

    fn base64_decode(s: &str) -> Option<Vec<u8>> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(s).ok()
    }
}
