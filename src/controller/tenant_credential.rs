//! The `TenantCredential` controller: a token of a tenant in a Secret, minted with the tenant's
//! current signing key, renewed before it expires, revoked when the credential goes.
//!
//! A reconcile checks that the Tenant exists and lets the credential's namespace hold its
//! tokens (`spec.auth.credentialNamespaces`), that the ttl is within the tenant's
//! `maxTokenLifetime`, and that the target Secret is this credential's (a Secret of someone
//! else is never overwritten: `SecretConflict`). It mints a new token when the Secret holds
//! none, when the spec or the tenant's current key changed, or when the token is within
//! `renewBefore` of its expiry, and requeues itself for the next renewal.
//!
//! Every token's `jti` is `<credential UID>.<serial>`. Deleting the credential (behind the
//! [`CREDENTIAL_FINALIZER`]) adds its UID to the tenant's revoked-tokens ConfigMap — one entry
//! revokes every token it ever issued — which the API pods mount next to their keyring and
//! reload; the entry lapses once no such token can still be valid. The ConfigMap is changed
//! with optimistic concurrency (its resourceVersion), so concurrent revocations are all kept.
//!
//! The operator writes a credential's Secret only where it was granted Secrets in that namespace
//! (a RoleBinding of the `<release>-credentials` ClusterRole); without it the status says so.
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Deserialize;

use super::build::{Names, REVOCATIONS_KEY, revocations_config_map};
use super::status::{ComponentOutcome, apply_status, conditions, rfc3339};
use crate::auth::LEEWAY_SECS;
use crate::auth::keys::{Keyring, Revocations, unix_now};
use crate::crd::{
    BASE_URL_KEY, CREDENTIAL_FINALIZER, CREDENTIAL_LABEL, ENDPOINT_KEY, EXPIRES_AT_KEY,
    FIELD_MANAGER, TENANT_LABEL, TOKEN_KEY, Tenant, TenantCredential, TenantCredentialStatus,
};
use crate::domain::TenantId;

/// Re-read a steady credential this often (repairs a deleted or edited Secret).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Retry a credential waiting for its tenant or its signing key this often.
const WAIT: Duration = Duration::from_secs(10);

/// Reasons of a credential's `Ready` condition.
pub mod reason {
    /// The Secret holds a valid token of the current spec.
    pub const ISSUED: &str = "Issued";
    /// The Tenant named by `spec.tenant` does not exist.
    pub const TENANT_NOT_FOUND: &str = "TenantNotFound";
    /// The Tenant does not list this namespace in `spec.auth.credentialNamespaces`.
    pub const NAMESPACE_NOT_ALLOWED: &str = "NamespaceNotAllowed";
    /// The ttl exceeds the tenant's `maxTokenLifetime`, or the durations are unusable.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The tenant's signing key is not there (yet).
    pub const SIGNING_KEY_NOT_READY: &str = "SigningKeyNotReady";
    /// The target Secret exists but is not this credential's.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// The operator may not write Secrets in this namespace.
    pub const FORBIDDEN: &str = "Forbidden";
}

/// Errors of one credential reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{step}: {source}")]
    Kube {
        /// The call.
        step: &'static str,
        /// The API's error.
        #[source]
        source: kube::Error,
    },
    /// The finalizer machinery failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The signing key could not sign, or a list could not be serialised.
    #[error("{0}")]
    Mint(String),
}

fn kube_err(step: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { step, source }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// What the credential controller needs.
pub struct CredentialContext {
    /// The Kubernetes API client.
    pub client: Client,
    /// Prefix of tenant namespaces.
    pub namespace_prefix: String,
}

/// What the claims of a token held in a Secret say (read without verifying: the operator
/// wrote it, and only decides from it whether to write another).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Held {
    /// `sub`.
    pub sub: String,
    /// `tenant_id`.
    pub tenant_id: String,
    /// `exp`.
    pub exp: i64,
    /// `iat`.
    #[serde(default)]
    pub iat: i64,
    /// `jti`.
    #[serde(default)]
    pub jti: Option<String>,
    /// The header's `kid` (not a claim; filled in by [`Held::read`]).
    #[serde(skip)]
    pub kid: String,
}

impl Held {
    /// The claims and `kid` of a JWT, if it is one.
    pub fn read(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (header, payload) = (parts.next()?, parts.next()?);
        #[derive(Deserialize)]
        struct Header {
            kid: String,
        }
        let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        let mut held: Held = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        held.kid = header.kid;
        Some(held)
    }
}

/// What a token must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The subject.
    pub sub: &'a str,
    /// Lifetime in seconds.
    pub ttl: i64,
    /// Renew this many seconds before expiry.
    pub renew_before: i64,
    /// `kid` of the tenant's current key.
    pub kid: &'a str,
    /// The credential's UID (every `jti` it issues starts with it).
    pub uid: &'a str,
}

/// Why the held token must be replaced now, if it must.
pub fn renewal(held: Option<&Held>, want: &Wanted<'_>, now: i64) -> Option<&'static str> {
    let Some(h) = held else {
        return Some("no token yet");
    };
    let ours = h
        .jti
        .as_deref()
        .and_then(|j| j.split_once('.'))
        .is_some_and(|(uid, _)| uid == want.uid);
    if !ours {
        Some("the Secret holds a token this credential did not issue")
    } else if h.tenant_id != want.tenant || h.sub != want.sub || h.exp - h.iat != want.ttl {
        Some("the spec changed")
    } else if h.kid != want.kid {
        Some("the tenant's signing key rotated")
    } else if now >= h.exp - want.renew_before {
        Some("the token is due for renewal")
    } else {
        None
    }
}

/// When a token expiring at `exp` is renewed.
pub fn renews_at(exp: i64, renew_before: i64) -> i64 {
    exp - renew_before
}

/// Reconciles one TenantCredential.
pub async fn reconcile(
    cred: Arc<TenantCredential>,
    ctx: Arc<CredentialContext>,
) -> Result<Action, Error> {
    let ns = cred.namespace().unwrap_or_default();
    let api: Api<TenantCredential> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, CREDENTIAL_FINALIZER, cred, |event| async {
        match event {
            Finalizer::Apply(c) => issue(&c, &ctx).await,
            Finalizer::Cleanup(c) => revoke(&c, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

/// Requeue policy on errors.
pub fn error_policy(
    cred: Arc<TenantCredential>,
    error: &Error,
    _: Arc<CredentialContext>,
) -> Action {
    tracing::warn!(credential = %cred.name_any(), namespace = ?cred.namespace(), error = %error, "credential reconcile failed");
    Action::requeue(WAIT)
}

/// The Secret a credential writes.
fn secret_name(cred: &TenantCredential) -> String {
    cred.spec
        .secret_name
        .clone()
        .unwrap_or_else(|| cred.name_any())
}

/// Whether a Secret is this credential's: labelled with its name and controlled by its UID.
fn owned(secret: &Secret, cred: &TenantCredential) -> bool {
    let labelled = secret
        .labels()
        .get(CREDENTIAL_LABEL)
        .is_some_and(|v| *v == cred.name_any());
    let uid = cred.uid();
    labelled
        && secret
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// A not-ready status with `reason`, keeping what the last token said.
async fn not_ready(
    ctx: &CredentialContext,
    cred: &TenantCredential,
    reason: &str,
    message: String,
    retry: Duration,
) -> Result<Action, Error> {
    let mut status = cred.status.clone().unwrap_or_default();
    status.conditions = conditions(
        &status.conditions,
        &[("Ready", &ComponentOutcome::fail(reason, message))],
        cred.metadata.generation,
        &super::status::now_rfc3339(),
    );
    status.observed_generation = cred.metadata.generation;
    patch_status(ctx, cred, status).await?;
    Ok(Action::requeue(retry))
}

async fn issue(cred: &TenantCredential, ctx: &CredentialContext) -> Result<Action, Error> {
    let ns = cred.namespace().unwrap_or_default();
    let spec = &cred.spec;
    let Ok(id) = TenantId::parse(&spec.tenant) else {
        let why = format!("no Tenant can be named {:?}", spec.tenant);
        return not_ready(ctx, cred, reason::INVALID_SPEC, why, RESYNC).await;
    };
    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    let Some(tenant) = tenants
        .get_opt(id.as_str())
        .await
        .map_err(kube_err("get Tenant"))?
    else {
        let why = format!("Tenant {id} does not exist");
        return not_ready(ctx, cred, reason::TENANT_NOT_FOUND, why, WAIT).await;
    };
    if !tenant.spec.auth.credential_namespaces.contains(&ns) {
        let why =
            format!("Tenant {id} does not list namespace {ns} in spec.auth.credentialNamespaces");
        return not_ready(ctx, cred, reason::NAMESPACE_NOT_ALLOWED, why, RESYNC).await;
    }
    let max = tenant.spec.auth.max_token_lifetime().as_secs();
    let Some((ttl, renew_before)) = spec.lifetime(max) else {
        let why = "spec.ttl must be a positive duration and spec.renewBefore shorter than it";
        return not_ready(ctx, cred, reason::INVALID_SPEC, why.into(), RESYNC).await;
    };
    if ttl > max {
        let why = format!(
            "spec.ttl is {ttl} s, longer than Tenant {id}'s spec.auth.maxTokenLifetime of {max} s (its API would refuse the token)"
        );
        return not_ready(ctx, cred, reason::INVALID_SPEC, why, RESYNC).await;
    }
    let names = Names::new(&id, &ctx.namespace_prefix);
    let ring = match signing_keyring(ctx, &names).await? {
        Some(ring) if ring.can_sign() => ring,
        _ => {
            let why = format!("Tenant {id}'s signing key is not ready yet");
            return not_ready(ctx, cred, reason::SIGNING_KEY_NOT_READY, why, WAIT).await;
        }
    };
    let target = secret_name(cred);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = match secrets.get_opt(&target).await {
        Ok(s) => s,
        Err(e) if is_code(&e, 403) => return forbidden(ctx, cred, &ns).await,
        Err(e) => return Err(kube_err("get Secret")(e)),
    };
    if let Some(s) = existing.as_ref().filter(|s| !owned(s, cred)) {
        let why = format!(
            "Secret {ns}/{} exists and is not this credential's; it is left alone (delete it or choose another spec.secretName)",
            s.name_any()
        );
        return not_ready(ctx, cred, reason::SECRET_CONFLICT, why, RESYNC).await;
    }
    let held = existing
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get(TOKEN_KEY))
        .and_then(|t| std::str::from_utf8(&t.0).ok())
        .and_then(Held::read);
    let uid = cred.uid().unwrap_or_default();
    let want = Wanted {
        tenant: id.as_str(),
        sub: &spec.subject,
        ttl: ttl as i64,
        renew_before: renew_before as i64,
        kid: &ring.current,
        uid: &uid,
    };
    let now = unix_now();
    let mut status = cred.status.clone().unwrap_or_default();
    let held = match renewal(held.as_ref(), &want, now) {
        None => held.ok_or_else(|| Error::Mint("no token held".to_string()))?,
        Some(why) => {
            let serial = status.renewals + 1;
            let jti = format!("{uid}.{serial}");
            let (token, claims) = ring
                .mint_with_id(&id, &spec.subject, ttl, Some(jti))
                .map_err(|e| Error::Mint(e.to_string()))?;
            let endpoint = tenant
                .status
                .as_ref()
                .and_then(|s| s.endpoint.clone())
                .unwrap_or_else(|| names.endpoint());
            let exp = i64::try_from(claims.exp).unwrap_or(i64::MAX);
            let secret = credential_secret(cred, &target, &id, &token, &endpoint, exp);
            match secrets
                .patch(
                    &target,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if is_code(&e, 403) => return forbidden(ctx, cred, &ns).await,
                Err(e) => return Err(kube_err("apply Secret")(e)),
            }
            tracing::info!(credential = %cred.name_any(), namespace = %ns, tenant_id = %id, serial, why, "token issued");
            status.renewals = serial;
            Held {
                sub: claims.sub,
                tenant_id: claims.tenant_id,
                exp,
                iat: claims
                    .iat
                    .and_then(|i| i64::try_from(i).ok())
                    .unwrap_or(now),
                jti: claims.jti,
                kid: ring.current.clone(),
            }
        }
    };
    let renew = renews_at(held.exp, want.renew_before);
    status.secret_name = Some(target);
    status.key_id = Some(held.kid.clone());
    status.issued_at = rfc3339(held.iat);
    status.expires_at = rfc3339(held.exp);
    status.renews_at = rfc3339(renew);
    status.observed_generation = cred.metadata.generation;
    let message = format!(
        "token for {} valid until {}",
        held.sub,
        status.expires_at.clone().unwrap_or_default()
    );
    status.conditions = conditions(
        &status.conditions,
        &[("Ready", &ComponentOutcome::ok(reason::ISSUED, message))],
        cred.metadata.generation,
        &super::status::now_rfc3339(),
    );
    patch_status(ctx, cred, status).await?;
    let wait = u64::try_from(renew - now).unwrap_or(0).max(1);
    Ok(Action::requeue(Duration::from_secs(wait).min(RESYNC)))
}

async fn forbidden(
    ctx: &CredentialContext,
    cred: &TenantCredential,
    ns: &str,
) -> Result<Action, Error> {
    let why = format!(
        "the operator may not write Secrets in namespace {ns}: bind the ClusterRole tenantry-credentials (<release>-credentials) to the operator's ServiceAccount there with a RoleBinding"
    );
    not_ready(ctx, cred, reason::FORBIDDEN, why, WAIT * 3).await
}

/// The tenant's signing keyring, if its Secret holds a valid one.
async fn signing_keyring(ctx: &CredentialContext, names: &Names) -> Result<Option<Keyring>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let secret = match secrets.get_opt(&names.secret).await {
        Ok(s) => s,
        // The tenant namespace (and the operator's binding in it) is not there yet.
        Err(e) if is_code(&e, 403) => None,
        Err(e) => return Err(kube_err("get signing-key Secret")(e)),
    };
    Ok(secret
        .and_then(|s| s.data?.remove(super::build::KEYRING_KEY))
        .and_then(|b| serde_json::from_slice::<Keyring>(&b.0).ok())
        .filter(|r| r.current_key().is_some()))
}

/// The credential's Secret: the token, where to send it, and until when it is valid.
fn credential_secret(
    cred: &TenantCredential,
    name: &str,
    tenant: &TenantId,
    token: &str,
    endpoint: &str,
    exp: i64,
) -> Secret {
    let endpoint = endpoint.trim_end_matches('/');
    let data = [
        (TOKEN_KEY, token.to_string()),
        (ENDPOINT_KEY, endpoint.to_string()),
        (BASE_URL_KEY, format!("{endpoint}/v1")),
        (EXPIRES_AT_KEY, rfc3339(exp).unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: cred.namespace(),
            labels: Some(
                [
                    ("app.kubernetes.io/managed-by", "tenantry"),
                    (TENANT_LABEL, tenant.as_str()),
                    (CREDENTIAL_LABEL, cred.name_any().as_str()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            owner_references: cred.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// Writes the status (server-side apply of the status subresource) unless it is unchanged.
async fn patch_status(
    ctx: &CredentialContext,
    cred: &TenantCredential,
    status: TenantCredentialStatus,
) -> Result<(), Error> {
    let untimed = |s: &TenantCredentialStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = None;
        }
        s
    };
    if cred.status.as_ref().map(untimed) == Some(untimed(&status)) {
        return Ok(());
    }
    let api: Api<TenantCredential> =
        Api::namespaced(ctx.client.clone(), &cred.namespace().unwrap_or_default());
    apply_status(&api, &cred.name_any(), &status)
        .await
        .map_err(kube_err("patch TenantCredential status"))
}

/// Revokes every token the credential issued (its UID in the tenant's revoked-tokens
/// ConfigMap, until no such token can still be valid) and deletes its Secret.
async fn revoke(cred: &TenantCredential, ctx: &CredentialContext) -> Result<Action, Error> {
    let uid = cred.uid().unwrap_or_default();
    let tenant = match TenantId::parse(&cred.spec.tenant) {
        Ok(id) => Api::<Tenant>::all(ctx.client.clone())
            .get_opt(id.as_str())
            .await
            .map_err(kube_err("get Tenant"))?,
        Err(_) => None,
    };
    // Without the Tenant its keys are gone, and with them every token they signed.
    if let Some(tenant) = tenant.filter(|_| cred.status.as_ref().is_some_and(|s| s.renewals > 0)) {
        let now = unix_now();
        let until =
            now + tenant.spec.auth.max_token_lifetime().as_secs() as i64 + LEEWAY_SECS as i64;
        add_revocation(ctx, &tenant, &uid, until, now).await?;
        tracing::info!(credential = %cred.name_any(), namespace = ?cred.namespace(), tenant_id = %tenant.name_any(), "tokens revoked");
    }
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &cred.namespace().unwrap_or_default());
    let target = secret_name(cred);
    match secrets.get_opt(&target).await {
        Ok(Some(s)) if owned(&s, cred) => {
            match secrets.delete(&target, &DeleteParams::default()).await {
                // Gone already, or not deletable here: garbage collection follows the owner.
                Ok(_) => {}
                Err(e) if is_code(&e, 404) || is_code(&e, 403) => {}
                Err(e) => return Err(kube_err("delete Secret")(e)),
            }
        }
        // Not ours, gone, or not readable: garbage collection removes ours with the credential.
        Ok(_) => {}
        Err(e) if is_code(&e, 403) => {}
        Err(e) => return Err(kube_err("get Secret")(e)),
    }
    Ok(Action::await_change())
}

/// Adds `id` to the tenant's revocation list; a concurrent change of the list (409) is
/// retried on the fresh list.
async fn add_revocation(
    ctx: &CredentialContext,
    tenant: &Tenant,
    id: &str,
    until: i64,
    now: i64,
) -> Result<(), Error> {
    let tid = tenant.tenant_id().map_err(|e| Error::Mint(e.to_string()))?;
    let names = Names::new(&tid, &ctx.namespace_prefix);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &names.namespace);
    for _ in 0..10 {
        let existing = match cms.get_opt(&names.revoked).await {
            Ok(cm) => cm,
            // No tenant namespace: no API pods that could accept the tokens.
            Err(e) if is_code(&e, 404) || is_code(&e, 403) => return Ok(()),
            Err(e) => return Err(kube_err("get revoked-tokens ConfigMap")(e)),
        };
        let mut list: Revocations = existing
            .as_ref()
            .and_then(|cm| cm.data.as_ref()?.get(REVOCATIONS_KEY))
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        if !list.revoke(id, until, now) {
            return Ok(());
        }
        let mut cm = revocations_config_map(tenant, &names, &list)
            .map_err(|e| Error::Mint(e.to_string()))?;
        let result = match existing {
            None => cms.create(&PostParams::default(), &cm).await.map(|_| ()),
            Some(old) => {
                // The resourceVersion makes the patch fail (409) if the list changed since.
                cm.metadata.resource_version = old.metadata.resource_version;
                cms.patch(&names.revoked, &PatchParams::default(), &Patch::Merge(&cm))
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if is_code(&e, 409) => continue,
            Err(e) => return Err(kube_err("write revoked-tokens ConfigMap")(e)),
        }
    }
    Err(Error::Mint(
        "the revoked-tokens ConfigMap kept changing; retrying".to_string(),
    ))
}

/// Runs the credential controller until `stop` resolves. A Tenant's change (its current key,
/// its `credentialNamespaces`) reconciles the credentials naming it.
pub async fn run(
    ctx: Arc<CredentialContext>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let creds: Api<TenantCredential> = Api::all(ctx.client.clone());
    let controller = Controller::new(creds, watcher::Config::default());
    let store = controller.store();
    controller
        .watches(
            Api::<Tenant>::all(ctx.client.clone()),
            watcher::Config::default(),
            move |tenant: Tenant| {
                let name = tenant.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|c| c.spec.tenant == name)
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "credential controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> Wanted<'static> {
        Wanted {
            tenant: "acme",
            sub: "app",
            ttl: 3600,
            renew_before: 600,
            kid: "k2",
            uid: "u1",
        }
    }

    fn held() -> Held {
        Held {
            sub: "app".into(),
            tenant_id: "acme".into(),
            exp: 4600,
            iat: 1000,
            jti: Some("u1.3".into()),
            kid: "k2".into(),
        }
    }

    #[test]
    fn a_token_is_replaced_when_missing_foreign_changed_rotated_or_due() {
        let w = want();
        assert_eq!(renewal(None, &w, 1000), Some("no token yet"));
        assert_eq!(renewal(Some(&held()), &w, 1000), None);
        assert_eq!(renewal(Some(&held()), &w, 3999), None);
        assert!(
            renewal(Some(&held()), &w, 4000).is_some(),
            "renewBefore reached"
        );
        let foreign = Held {
            jti: Some("u9.1".into()),
            ..held()
        };
        assert!(renewal(Some(&foreign), &w, 1000).is_some());
        let no_jti = Held {
            jti: None,
            ..held()
        };
        assert!(renewal(Some(&no_jti), &w, 1000).is_some());
        let other_sub = Held {
            sub: "bob".into(),
            ..held()
        };
        assert_eq!(
            renewal(Some(&other_sub), &w, 1000),
            Some("the spec changed")
        );
        let shorter = Wanted {
            ttl: 600,
            ..w.clone()
        };
        assert_eq!(
            renewal(Some(&held()), &shorter, 1000),
            Some("the spec changed")
        );
        let rotated = Wanted { kid: "k3", ..w };
        assert_eq!(
            renewal(Some(&held()), &rotated, 1000),
            Some("the tenant's signing key rotated")
        );
        assert_eq!(renews_at(4600, 600), 4000);
    }

    #[test]
    fn held_tokens_are_read_back_with_their_kid() {
        let ring = Keyring::generate(crate::domain::Algorithm::EdDSA);
        let id = TenantId::parse("acme").expect("id");
        let (token, claims) = ring
            .mint_with_id(&id, "app", 60, Some("u1.1".into()))
            .expect("mint");
        let h = Held::read(&token).expect("held");
        assert_eq!(h.kid, ring.current);
        assert_eq!((h.sub.as_str(), h.jti.as_deref()), ("app", Some("u1.1")));
        assert_eq!(h.exp as u64, claims.exp);
        assert_eq!(h.exp - h.iat, 60);
        assert!(Held::read("not a token").is_none());
    }
}
