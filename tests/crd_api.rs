//! The CRDs on the real test API server: what the API server refuses (schema and CEL rules,
//! each with its message, and the same manifests refused by `Tenant::validate`), what it
//! accepts, and what `kubectl get` shows: the Ready condition's status, reason and message,
//! the `-o wide` columns, the `tenantry` category, and the `Stalled` condition the operator
//! sets for a spec only it can refuse.
mod common;

use std::process::Output;

use common::cluster::{Cluster, KubeEnv, condition, unique};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tenantry::crd::Tenant;

/// `kubectl create --dry-run=server` of `yaml` as admin: admission and validation run, nothing
/// is stored.
fn dry_run(env: &KubeEnv, yaml: &str) -> Output {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("obj.yaml");
    std::fs::write(&path, yaml).expect("write");
    env.kubectl_output(&[
        "create",
        "--dry-run=server",
        "-f",
        path.to_str().expect("utf-8"),
    ])
}

fn tenant_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

const ISSUER_A: &str =
    "{issuer: 'https://a.example', jwksUri: 'https://a.example/jwks', audience: api}";
const ISSUER_B: &str =
    "{issuer: 'https://b.example', jwksUri: 'http://127.0.0.1:8080/jwks', audience: api}";

#[test]
fn the_api_server_refuses_each_invalid_tenant_with_its_message() {
    let env = KubeEnv::get();
    let long = "t".repeat(41);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a zero rotateEvery",
            "  tier: pro\n  auth: {rotateEvery: 0h0m}\n".into(),
            tenantry::crd::ROTATE_EVERY_RULE,
        ),
        (
            "a zero maxTokenLifetime",
            "  tier: pro\n  auth: {maxTokenLifetime: 0s}\n".into(),
            tenantry::crd::MAX_TOKEN_LIFETIME_RULE,
        ),
        (
            "an issuer listed twice",
            format!("  tier: pro\n  auth:\n    issuers: [{ISSUER_A}, {ISSUER_A}]\n"),
            tenantry::crd::UNIQUE_ISSUERS_RULE,
        ),
        (
            "a blank audience",
            "  tier: pro\n  auth:\n    issuers: [{issuer: 'https://a', jwksUri: 'https://a/jwks', audience: '  '}]\n".into(),
            tenantry::domain::ISSUER_AUDIENCE_RULE,
        ),
        (
            "a claim condition with values and a pattern",
            "  tier: pro\n  auth:\n    issuers:\n    - {issuer: 'https://a', jwksUri: 'https://a/jwks', audience: api, claims: [{claim: sub, values: [x], pattern: x}]}\n".into(),
            tenantry::domain::CLAIM_CONDITION_RULE,
        ),
        (
            "a JWKS over plain HTTP off the loopback",
            "  tier: pro\n  auth:\n    issuers: [{issuer: 'https://a', jwksUri: 'http://a.example/jwks', audience: api}]\n".into(),
            "jwksUri",
        ),
        (
            "a resource that is no quantity",
            "  tier: pro\n  api: {resources: {requests: {cpu: lots}}}\n".into(),
            tenantry::crd::QUANTITIES_RULE,
        ),
        (
            "a tier name longer than a tenant id",
            format!("  tier: {long}\n"),
            "may not be more than 40",
        ),
        (
            "replicas.min above replicas.max",
            "  tier: pro\n  api: {replicas: {min: 3, max: 2}}\n".into(),
            "replicas.min must not exceed replicas.max",
        ),
        (
            "a default chat model that is not allowed",
            "  tier: pro\n  models: {chat: a, allowed: [b]}\n".into(),
            "models.chat must be one of models.allowed",
        ),
        (
            "an alias that shadows an allowed model",
            "  tier: pro\n  models: {allowed: [a, b], aliases: {b: a}}\n".into(),
            tenantry::crd::ALIAS_SHADOW_RULE,
        ),
        (
            "an alias naming itself",
            "  tier: pro\n  models: {aliases: {gpt-4o-mini: gpt-4o-mini}}\n".into(),
            tenantry::crd::ALIASES_RULE,
        ),
    ];
    for (what, spec, message) in &cases {
        let yaml = tenant_yaml(&unique("bad"), spec);
        let out = dry_run(env, &yaml);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            err.contains(message),
            "{what}: refused without {message:?}: {err}"
        );
        let parsed: Tenant = serde_saphyr::from_str(&yaml).expect("parses");
        assert!(
            parsed.validate().is_err(),
            "{what}: Tenant::validate accepts it"
        );
    }
    let name = tenant_yaml(&long, "  tier: pro\n");
    let err = String::from_utf8_lossy(&dry_run(env, &name).stderr).to_string();
    assert!(err.contains(tenantry::domain::TENANT_ID_RULE), "{err}");

    let tier = format!(
        "apiVersion: tenantry.dev/v1alpha1\nkind: QuotaTier\nmetadata: {{name: {long}}}\nspec: {{dailyTokens: 1, requestsPerMinute: 1, tokensPerMinute: 1, maxConcurrentRequests: 1}}\n"
    );
    let out = dry_run(env, &tier);
    assert!(
        !out.status.success(),
        "a QuotaTier no Tenant can name: accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(tenantry::crd::TIER_NAME_RULE), "{err}");
}

#[test]
fn the_api_server_accepts_valid_tenants_at_the_edges_of_the_rules() {
    let env = KubeEnv::get();
    let cases = [
        "  tier: pro\n  auth: {rotateEvery: 720h, maxTokenLifetime: 1ms}\n".to_string(),
        format!("  tier: pro\n  auth:\n    issuers: [{ISSUER_A}, {ISSUER_B}]\n"),
        "  tier: pro\n  api: {resources: {requests: {cpu: 250m, memory: 512Mi}, limits: {cpu: '1.5', memory: '1e9'}}}\n".into(),
        format!("  tier: {}\n", "t".repeat(40)),
        "  tier: pro\n  models: {chat: a, allowed: [a, b]}\n  api: {replicas: {min: 1, max: 1}}\n".into(),
        "  tier: pro\n  models: {allowed: [a], aliases: {gpt-4o-mini: a, text-embedding-3-small: all-MiniLM-L6-v2}}\n".into(),
    ];
    for spec in &cases {
        let yaml = tenant_yaml(&unique("good"), spec);
        let out = dry_run(env, &yaml);
        assert!(
            out.status.success(),
            "refused: {spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: Tenant = serde_saphyr::from_str(&yaml).expect("parses");
        assert_eq!(parsed.validate(), Ok(()), "{spec}");
    }
    // A QuotaTier needs none of its limits: one left out is no limit of that kind.
    for spec in [
        "{dailyTokens: 500000, requestsPerMinute: 600}",
        "{}",
        "{modelAliases: {gpt-4o-mini: llama3}}",
    ] {
        let yaml = format!(
            "apiVersion: tenantry.dev/v1alpha1\nkind: QuotaTier\nmetadata: {{name: {}}}\nspec: {spec}\n",
            unique("partial")
        );
        let out = dry_run(env, &yaml);
        assert!(
            out.status.success(),
            "refused: {spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `kubectl get tn` says why a tenant is not Ready; `-o wide` adds where it lives; the
/// `tenantry` category lists both kinds; conditions are a map keyed by type with a
/// True/False/Unknown status; a spec only the operator can refuse is `Stalled` until fixed.
#[tokio::test]
async fn kubectl_shows_why_a_tenant_is_not_ready_and_stalls_are_flagged() {
    let cluster = Cluster::new().await;
    let _op = cluster.operator("op-kubeux", &[]);

    // A missing tier: not Ready, with the reason and message in the table, and not stalled
    // (creating the tier heals it).
    let orphan = unique("orphan");
    let tier = unique("gold");
    cluster
        .create_tenant(&orphan, json!({"tier": tier.clone()}))
        .await;
    let t = cluster
        .wait_reason(&orphan, "Ready", "False", "TierNotFound")
        .await;
    assert_eq!(condition(&t, "Stalled"), None, "a missing tier is no stall");
    assert_eq!(cluster.column(&orphan, "READY", false), "False");
    assert_eq!(cluster.column(&orphan, "REASON", false), "TierNotFound");
    assert_eq!(
        cluster.column(&orphan, "MESSAGE", false),
        format!("QuotaTier {tier:?} does not exist")
    );
    let table = cluster.env.kubectl(&["get", "tn", &orphan], None);
    let header = table.lines().next().unwrap_or_default().to_string();
    let words: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        words,
        ["NAME", "TIER", "READY", "REASON", "MESSAGE", "AGE"],
        "{table}"
    );

    // A ready-ish tenant: -o wide shows its isolation, suspension, key and namespace.
    let live = unique("live");
    cluster
        .create_tenant(
            &live,
            json!({"tier": "pro", "retrieval": {"isolation": "Partition"}}),
        )
        .await;
    let t = cluster
        .wait_condition(&live, "SigningKeyReady", "True")
        .await;
    let status = t.status.expect("status");
    assert_eq!(cluster.column(&live, "ISOLATION", true), "Partition");
    assert_eq!(cluster.column(&live, "SUSPENDED", true), "false");
    assert_eq!(
        Some(cluster.column(&live, "KEY", true)),
        status.current_key_id
    );
    assert_eq!(
        Some(cluster.column(&live, "NAMESPACE", true)),
        status.namespace
    );
    assert_eq!(
        Some(cluster.column(&live, "ENDPOINT", true)),
        status.endpoint
    );

    // Creating the tier heals the orphan; the category lists both kinds under one name.
    let limits = json!({"dailyTokens": 1000, "requestsPerMinute": 10, "tokensPerMinute": 1000, "maxConcurrentRequests": 1});
    cluster.create_tier(&tier, limits).await;
    cluster.wait_condition(&orphan, "QuotaReady", "True").await;
    // A fresh discovery cache: kubectl's own may predate the category.
    let cache = tempfile::tempdir().expect("tmp");
    let cache = cache.path().to_str().expect("utf-8");
    let all = common::cluster::eventually(30, "the tenantry category", || async {
        let out =
            cluster
                .env
                .kubectl_output(&["get", "tenantry", "-o", "name", "--cache-dir", cache]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    })
    .await;
    assert!(
        all.contains(&format!("tenant.tenantry.dev/{live}")),
        "{all}"
    );
    assert!(
        all.contains(&format!("quotatier.tenantry.dev/{tier}")),
        "{all}"
    );

    // Conditions: one per type, status True/False/Unknown only.
    let statuses: kube::Api<Tenant> = cluster.tenants.clone();
    let write = |conditions: serde_json::Value| {
        let statuses = statuses.clone();
        let name = orphan.clone();
        async move {
            statuses
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"conditions": conditions}})),
                )
                .await
        }
    };
    let c = |status: &str| json!({"type": "Ready", "status": status, "reason": "R", "message": ""});
    let twice = write(json!([c("True"), c("False")]))
        .await
        .expect_err("two Ready");
    assert!(twice.to_string().contains("Duplicate value"), "{twice}");
    let maybe = write(json!([c("Maybe")])).await.expect_err("status Maybe");
    assert!(maybe.to_string().contains("Unsupported value"), "{maybe}");

    // A claim pattern that is no regular expression passes the schema (CEL cannot check Rust
    // regex syntax); the operator refuses it and says retrying will not help.
    let stuck = unique("stuck");
    let issuer = |pattern: &str| {
        json!({"tier": "pro", "auth": {"issuers": [{"issuer": "https://ci.example", "jwksUri": "https://ci.example/jwks",
            "audience": "api", "claims": [{"claim": "sub", "pattern": pattern}]}]}})
    };
    cluster.create_tenant(&stuck, issuer("repo:(")).await;
    let t = cluster
        .wait_reason(&stuck, "Stalled", "True", "InvalidSpec")
        .await;
    let stalled = t
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled"))
        .expect("stalled")
        .clone();
    assert!(stalled.message.contains("pattern"), "{}", stalled.message);
    assert_eq!(
        condition(&t, "Ready").map(|c| c.1),
        Some("InvalidSpec".into())
    );
    assert_eq!(cluster.column(&stuck, "REASON", false), "InvalidSpec");
    // Fixed: no longer stalled.
    cluster
        .tenants
        .patch(
            &stuck,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": issuer("repo:.*")})),
        )
        .await
        .expect("fix the pattern");
    common::cluster::eventually(60, "Stalled gone", || async {
        let t = cluster.tenants.get(&stuck).await.ok()?;
        (condition(&t, "Stalled").is_none()
            && condition(&t, "SigningKeyReady").is_some_and(|c| c.0 == "True"))
        .then_some(())
    })
    .await;
}
