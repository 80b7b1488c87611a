//! `TenantCredential` against a real kube-apiserver + etcd, with the operator as a child process
//! under the RBAC of `config/rbac/`: a token minted into a Secret of an allowed namespace,
//! verified with the keys the tenant's pods mount, renewed before expiry and after a key
//! rotation, refused where the tenant does not allow it or a foreign Secret is in the way, and
//! revoked (every token the credential issued) when the credential is deleted.
mod common;

use std::sync::Arc;

use common::cluster::{Cluster, SYSTEM_NAMESPACE, eventually, unique};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tenantry::auth::keys::{Keyring, Revocations};
use tenantry::auth::{AuthError, KeyLookup, Principal, TenantKeys};
use tenantry::crd::TenantCredential;
use tenantry::domain::{Algorithm, TenantId};

/// Verifies tokens of one tenant with the keys (and revocations) its pods would mount.
struct Mounted(TenantId, Arc<TenantKeys>);

impl KeyLookup for Mounted {
    fn tenant_keys(&self, tenant: &TenantId) -> Option<Arc<TenantKeys>> {
        (tenant == &self.0).then(|| self.1.clone())
    }
}

/// What the tenant's API pods mount: the verify-only keyring and the revocation list.
async fn mounted(client: &kube::Client, tenant: &str) -> Mounted {
    let ns = format!("tenant-{tenant}");
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get(&format!("{tenant}-verify-keys"))
        .await
        .expect("verify-keys Secret");
    let ring: Keyring =
        serde_json::from_slice(&secret.data.expect("data")["keyring.json"].0).expect("keyring");
    let revoked = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get_opt(&format!("{tenant}-revoked-tokens"))
        .await
        .expect("get revocations")
        .and_then(|cm| cm.data?.remove("revoked.json"))
        .map(|j| serde_json::from_str::<Revocations>(&j).expect("revocation list"))
        .unwrap_or_default();
    let keys = TenantKeys::from_keyring(&ring, Algorithm::EdDSA).with_revocations(revoked);
    Mounted(TenantId::parse(tenant).expect("id"), Arc::new(keys))
}

fn verify(token: &str, keys: &Mounted) -> Result<Principal, AuthError> {
    tenantry::auth::verify(token, keys)
}

fn credential(name: &str, spec: serde_json::Value) -> TenantCredential {
    serde_json::from_value(json!({
        "apiVersion": "tenantry.dev/v1alpha1", "kind": "TenantCredential",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("credential")
}

fn ready(c: &TenantCredential) -> Option<(String, String, String)> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_ready(
    api: &Api<TenantCredential>,
    name: &str,
    status: &str,
    reason: &str,
) -> TenantCredential {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let c = api.get(name).await.ok();
        let r = c.as_ref().and_then(ready);
        if let (Some(c), Some(r)) = (&c, &r)
            && r.0 == status
            && r.1 == reason
        {
            return c.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: no Ready={status}/{reason} within 60 s; last: {r:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn string(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().expect("data")[key].0.clone()).expect("utf-8")
}

/// A namespace where the operator was granted credential Secrets.
fn granted_namespace(cluster: &Cluster, ns: &str) {
    cluster.remove_on_drop("namespace", None, ns);
    cluster.env.apply_yaml(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: tenantry-credentials, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: tenantry-operator-credentials}}\nsubjects: [{{kind: ServiceAccount, name: tenantry-operator, namespace: {SYSTEM_NAMESPACE}}}]\n"
    ));
}

#[tokio::test]
async fn a_credential_is_minted_renewed_rotated_refused_and_revoked() {
    let cluster = Cluster::new().await;
    let client = cluster.client.clone();
    let op = cluster.operator("op-cred", &[]);
    let apps = unique("apps");
    let elsewhere = unique("other");
    granted_namespace(&cluster, &apps);
    granted_namespace(&cluster, &elsewhere);
    let name = unique("cred");
    cluster
        .create_tenant(
            &name,
            json!({"tier": "pro", "auth": {"credentialNamespaces": [apps.clone()], "maxTokenLifetime": "1h"}}),
        )
        .await;
    cluster
        .wait_condition(&name, "SigningKeyReady", "True")
        .await;
    let creds: Api<TenantCredential> = Api::namespaced(client.clone(), &apps);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &apps);

    // The API server refuses what can never work, with the rule.
    for (spec, rule) in [
        (
            json!({"tenant": name, "subject": "app", "ttl": "10m", "renewBefore": "10m"}),
            "spec.renewBefore must be shorter than spec.ttl",
        ),
        (
            json!({"tenant": name, "subject": "two words"}),
            "spec.subject must be",
        ),
        (
            json!({"tenant": name, "subject": "app", "ttl": "0s"}),
            "spec.ttl must be a positive",
        ),
    ] {
        let err = creds
            .create(&PostParams::default(), &credential("bad", spec))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains(rule), "{err}");
    }

    // Minted: the Secret holds a token the tenant's pods accept, for the subject.
    cluster.remove_on_drop("tenantcredential", Some(&apps), "billing");
    creds
        .create(
            &PostParams::default(),
            &credential(
                "billing",
                json!({"tenant": name, "subject": "billing-app", "ttl": "1m", "renewBefore": "45s", "secretName": "billing-token"}),
            ),
        )
        .await
        .expect("create credential");
    let c = wait_ready(&creds, "billing", "True", "Issued").await;
    let status = c.status.clone().expect("status");
    assert_eq!(status.secret_name.as_deref(), Some("billing-token"));
    assert_eq!(status.renewals, 1);
    let tenant = cluster.tenants.get(&name).await.expect("tenant");
    let kid = tenant
        .status
        .as_ref()
        .and_then(|s| s.current_key_id.clone());
    assert_eq!(status.key_id, kid);
    assert!(
        status.expires_at.is_some() && status.renews_at.is_some(),
        "{status:?}"
    );
    let secret = secrets.get("billing-token").await.expect("Secret");
    let first = string(&secret, "token");
    let endpoint = string(&secret, "endpoint");
    assert_eq!(endpoint, format!("http://{name}-api.tenant-{name}.svc:80"));
    assert_eq!(string(&secret, "baseUrl"), format!("{endpoint}/v1"));
    assert_eq!(Some(string(&secret, "expiresAt")), status.expires_at);
    let p = verify(&first, &mounted(&client, &name).await).expect("the pods accept it");
    assert_eq!(
        (p.tenant.as_str(), p.sub.as_str()),
        (name.as_str(), "billing-app")
    );
    assert!(
        secret
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == c.uid().as_ref()),
        "the Secret goes with its credential"
    );

    // Renewed 45 s before its 1 m expiry: a new token in the same Secret, the old one still valid.
    let renewed = eventually(40, "the token renewed", || async {
        let s = secrets.get("billing-token").await.ok()?;
        let t = string(&s, "token");
        (t != first).then_some(t)
    })
    .await;
    let c = wait_ready(&creds, "billing", "True", "Issued").await;
    assert!(c.status.expect("status").renewals >= 2);
    let keys = mounted(&client, &name).await;
    verify(&renewed, &keys).expect("the renewed token verifies");
    verify(&first, &keys).expect("the replaced one stays valid until it expires");

    // The tenant's key rotates: the credential re-mints with the new key at once.
    cluster
        .tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"tenantry.dev/rotate-key": "now"}}})),
        )
        .await
        .expect("annotate");
    let new_kid = eventually(30, "the key rotated", || async {
        let t = cluster.tenants.get(&name).await.ok()?;
        let k = t.status?.current_key_id;
        (k != kid).then_some(k)
    })
    .await;
    eventually(30, "the credential follows the rotation", || async {
        let c = creds.get("billing").await.ok()?;
        (c.status?.key_id == new_kid).then_some(())
    })
    .await;
    let rotated = string(
        &secrets.get("billing-token").await.expect("Secret"),
        "token",
    );
    verify(&rotated, &mounted(&client, &name).await).expect("signed with the new key");

    // Refused: a namespace the tenant does not list, a foreign Secret in the way, a ttl over
    // the tenant's maximum token lifetime. None of them writes a Secret.
    let other: Api<TenantCredential> = Api::namespaced(client.clone(), &elsewhere);
    cluster.remove_on_drop("tenantcredential", Some(&elsewhere), "sneaky");
    other
        .create(
            &PostParams::default(),
            &credential("sneaky", json!({"tenant": name, "subject": "x"})),
        )
        .await
        .expect("create");
    let c = wait_ready(&other, "sneaky", "False", "NamespaceNotAllowed").await;
    assert!(ready(&c).expect("ready").2.contains("credentialNamespaces"));
    let other_secrets: Api<Secret> = Api::namespaced(client.clone(), &elsewhere);
    assert!(
        other_secrets
            .get_opt("sneaky")
            .await
            .expect("get")
            .is_none()
    );

    cluster.env.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: db, namespace: {apps}}}\nstringData: {{password: hunter2}}\n"
    ));
    for (cred, spec, reason) in [
        (
            "db",
            json!({"tenant": name, "subject": "x"}),
            "SecretConflict",
        ),
        (
            "long",
            json!({"tenant": name, "subject": "x", "ttl": "2h"}),
            "InvalidSpec",
        ),
    ] {
        cluster.remove_on_drop("tenantcredential", Some(&apps), cred);
        creds
            .create(&PostParams::default(), &credential(cred, spec))
            .await
            .expect("create");
        wait_ready(&creds, cred, "False", reason).await;
    }
    let db = secrets.get("db").await.expect("db");
    assert_eq!(
        string(&db, "password"),
        "hunter2",
        "a foreign Secret is left alone"
    );
    assert!(secrets.get_opt("long").await.expect("get").is_none());

    // The tenant is immutable.
    let err = creds
        .patch(
            "billing",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tenant": "another"}})),
        )
        .await
        .expect_err("immutable");
    assert!(
        err.to_string().contains("spec.tenant is immutable"),
        "{err}"
    );

    // Deleted: every token it issued is refused by the pods, its Secret is gone.
    creds
        .delete("billing", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(30, "the credential gone", || async {
        creds.get_opt("billing").await.ok()?.is_none().then_some(())
    })
    .await;
    let keys = mounted(&client, &name).await;
    for token in [&first, &renewed, &rotated] {
        assert_eq!(verify(token, &keys), Err(AuthError::Revoked));
    }
    assert!(
        secrets
            .get_opt("billing-token")
            .await
            .expect("get")
            .is_none()
    );
    // Another credential of the same tenant is not affected by the revocation.
    cluster.remove_on_drop("tenantcredential", Some(&apps), "reports");
    creds
        .create(
            &PostParams::default(),
            &credential("reports", json!({"tenant": name, "subject": "reports"})),
        )
        .await
        .expect("create");
    wait_ready(&creds, "reports", "True", "Issued").await;
    let token = string(&secrets.get("reports").await.expect("Secret"), "token");
    verify(&token, &mounted(&client, &name).await).expect("a live credential's token verifies");
    assert!(
        !op.logs().contains(&token) && !op.logs().contains(&first),
        "tokens never reach the log"
    );
}
