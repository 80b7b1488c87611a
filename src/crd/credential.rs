//! The `TenantCredential` custom resource: a token of a tenant, declared like a certificate.
//!
//! The operator mints a token signed with the tenant's current key into the named Secret of the
//! credential's namespace, renews it `renewBefore` its expiry (and at once when the tenant's key
//! rotates or the spec changes), and revokes every token the credential issued when it is
//! deleted. A tenant lets only the namespaces of its `spec.auth.credentialNamespaces` hold its
//! tokens.
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{Condition, DURATION_PATTERN, NON_ZERO_DURATION_CEL};
use crate::domain::parse_duration;

/// Key of the token in the credential's Secret.
pub const TOKEN_KEY: &str = "token";
/// Key of the tenant's in-cluster API URL in the credential's Secret.
pub const ENDPOINT_KEY: &str = "endpoint";
/// Key of the OpenAI-compatible base URL (`<endpoint>/v1`) in the credential's Secret.
pub const BASE_URL_KEY: &str = "baseUrl";
/// Key of the token's expiry (RFC 3339) in the credential's Secret.
pub const EXPIRES_AT_KEY: &str = "expiresAt";
/// Label on a credential's Secret naming the TenantCredential it belongs to.
pub const CREDENTIAL_LABEL: &str = "tenantry.dev/credential";
/// Finalizer that revokes a deleted credential's tokens.
pub const CREDENTIAL_FINALIZER: &str = "tenantry.dev/revoke-tokens";
/// Lifetime of a token when `ttl` is unset.
pub const DEFAULT_CREDENTIAL_TTL: &str = "24h";

/// Why a `renewBefore` not shorter than the `ttl` is refused.
pub const RENEW_BEFORE_RULE: &str = "spec.renewBefore must be shorter than spec.ttl";
/// Why a changed `spec.tenant` is refused.
pub const CREDENTIAL_TENANT_RULE: &str =
    "spec.tenant is immutable: create another TenantCredential for another tenant";
/// Why a bad subject is refused.
pub const SUBJECT_RULE: &str =
    "spec.subject must be 1 to 253 printable characters without spaces (the token's sub)";

/// A token of a tenant, minted and renewed by the operator into a Secret.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "tenantry.dev",
    version = "v1alpha1",
    kind = "TenantCredential",
    plural = "tenantcredentials",
    shortname = "tcred",
    namespaced,
    status = "TenantCredentialStatus",
    doc = "A token of a tenant that the operator mints into a Secret and renews before it expires.",
    category = "tenantry",
    validation = Rule::new("!has(self.spec.renewBefore) || duration(self.spec.renewBefore) < duration(has(self.spec.ttl) ? self.spec.ttl : '24h')").message(RENEW_BEFORE_RULE),
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant", description = "Tenant the token is for"),
    printcolumn(name = "Subject", type_ = "string", json_path = ".spec.subject", description = "The token's sub"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Status of the Ready condition"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName", description = "Secret holding the token"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt", description = "When the current token expires"),
    printcolumn(name = "Renews", type_ = "string", json_path = ".status.renewsAt", priority = 1, description = "When it is renewed"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", description = "Reason of the Ready condition"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].message", priority = 1, description = "Message of the Ready condition"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TenantCredentialSpec {
    /// The Tenant (cluster-scoped) whose key signs the token. It must list this namespace in
    /// `spec.auth.credentialNamespaces`.
    #[schemars(length(min = 1, max = 40))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(CREDENTIAL_TENANT_RULE))]
    pub tenant: String,
    /// The token's subject (`sub`: the user or application the usage is attributed to).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[!-~]+$')").message(SUBJECT_RULE))]
    pub subject: String,
    /// Lifetime of each token (Go-style duration, e.g. `24h`); at most the tenant's
    /// `spec.auth.maxTokenLifetime`. Unset: `24h`, or that maximum if shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_ZERO_DURATION_CEL).message("spec.ttl must be a positive duration like 24h"))]
    pub ttl: Option<String>,
    /// How long before expiry a new token replaces the current one. Unset: a third of the ttl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub renew_before: Option<String>,
    /// The Secret (in this namespace) the token is written to. Unset: the credential's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: Option<String>,
}

impl TenantCredentialSpec {
    /// The token lifetime and how long before expiry it is renewed, in seconds, for a tenant
    /// accepting tokens of at most `max_lifetime_secs`: an unset `ttl` is 24 h or that maximum
    /// if shorter, an unset `renewBefore` a third of the ttl. `None`: unusable durations.
    pub fn lifetime(&self, max_lifetime_secs: u64) -> Option<(u64, u64)> {
        let ttl = match &self.ttl {
            Some(t) => parse_duration(t)?.as_secs(),
            None => parse_duration(DEFAULT_CREDENTIAL_TTL)?
                .as_secs()
                .min(max_lifetime_secs),
        };
        if ttl == 0 {
            return None;
        }
        let renew_before = match &self.renew_before {
            None => ttl / 3,
            Some(r) => parse_duration(r)?.as_secs(),
        };
        (renew_before < ttl).then_some((ttl, renew_before))
    }
}

/// Observed state of a TenantCredential, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TenantCredentialStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the Secret holds a valid token of the current spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The Secret holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// `kid` of the key that signed the current token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// When the current token was issued (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// When the current token expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When it is renewed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renews_at: Option<String>,
    /// Tokens minted since the credential was created.
    #[serde(default)]
    pub renewals: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ttl: Option<&str>, renew: Option<&str>) -> TenantCredentialSpec {
        TenantCredentialSpec {
            tenant: "acme".into(),
            subject: "app".into(),
            ttl: ttl.map(str::to_string),
            renew_before: renew.map(str::to_string),
            secret_name: None,
        }
    }

    #[test]
    fn ttl_and_renewal_defaults() {
        let day = 86_400;
        assert_eq!(spec(None, None).lifetime(day), Some((day, 28_800)));
        assert_eq!(spec(None, None).lifetime(3_600), Some((3_600, 1_200)));
        assert_eq!(
            spec(Some("1h"), Some("10m")).lifetime(day),
            Some((3_600, 600))
        );
        assert_eq!(spec(Some("2h"), None).lifetime(3_600), Some((7_200, 2_400)));
        assert_eq!(spec(Some("1h"), Some("1h")).lifetime(day), None);
        assert_eq!(spec(Some("0s"), None).lifetime(day), None);
    }
}
