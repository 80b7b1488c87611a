//! The `Tenant` and `QuotaTier` custom resources (group `tenantry.dev`, version `v1alpha1`; `TenantCredential` in [`credential`]),
//! their defaults and validation, and the resolution of a tenant's effective quota.
//!
//! Static rules (ranges, enums, patterns, cross-field CEL rules) live in the generated schema so
//! the API server refuses a bad manifest with a message; [`Tenant::validate`] re-checks the same
//! rules in Rust for the embedded default, where no API server reads the manifests.
use std::collections::BTreeMap;
use std::fmt;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod credential;
pub use credential::*;

use crate::domain::{
    Algorithm, EffectiveQuota, InvalidTenantId, Isolation, Issuer, MAX_MAX_TOKENS, MAX_TOP_K,
    TENANT_ID_RULE, TenantId, jwks_uri_ok, parse_duration, top_k_ok,
};

/// API group of the custom resources.
pub const GROUP: &str = "tenantry.dev";
/// Finalizer the operator puts on every Tenant to clean up vector data.
pub const FINALIZER: &str = "tenantry.dev/cleanup";
/// The single server-side-apply field manager used for every write.
pub const FIELD_MANAGER: &str = "tenantry";
/// Label naming the owning tenant on every object tenantry creates.
pub const TENANT_LABEL: &str = "tenantry.dev/tenant";
/// Annotation that forces a signing-key rotation when its value changes.
pub const ROTATE_ANNOTATION: &str = "tenantry.dev/rotate-key";
/// Annotation that, when its value changes, revokes every previous signing key at once (only
/// the current key verifies from then on; with a new `rotate-key` value, only the new key).
pub const REVOKE_ANNOTATION: &str = "tenantry.dev/revoke-previous-keys";
/// Annotation naming the UID of a deleted Tenant of the same name whose retained data this
/// Tenant takes over (`status.dataOwner` of the old Tenant). Unset: the Tenant starts empty.
/// [`LEGACY_DATA`] adopts the data written before data was bound to a Tenant's UID.
pub const ADOPT_DATA_ANNOTATION: &str = "tenantry.dev/adopt-data-from";
/// The data owner of data written before data was bound to UIDs (scoped by tenant id only).
pub const LEGACY_DATA: &str = "legacy";
/// Condition types written to `Tenant.status.conditions`.
pub mod condition {
    /// Everything below is ready.
    pub const READY: &str = "Ready";
    /// The signing key Secret exists and is current.
    pub const SIGNING_KEY_READY: &str = "SigningKeyReady";
    /// The tenant's vector collections exist.
    pub const VECTOR_STORE_READY: &str = "VectorStoreReady";
    /// The effective quota is resolved and published.
    pub const QUOTA_READY: &str = "QuotaReady";
    /// The chat API Deployment is available.
    pub const API_READY: &str = "ApiReady";
    /// Present (`True`) only while the Tenant cannot progress until its spec changes: the spec
    /// breaks a rule only the operator checks. Problems that heal without a spec change (a
    /// missing QuotaTier, an object in the way, a store down) are not stalls.
    pub const STALLED: &str = "Stalled";
}

/// Reasons used in conditions and Events (PascalCase).
pub mod reason {
    /// The spec failed validation.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The referenced QuotaTier does not exist.
    pub const TIER_NOT_FOUND: &str = "TierNotFound";
    /// All steps succeeded.
    pub const RECONCILED: &str = "Reconciled";
    /// The tenant is suspended.
    pub const SUSPENDED: &str = "Suspended";
    /// The tenant's API runs one replica: a store its replicas would need is not shared.
    pub const PINNED: &str = "PinnedToOneReplica";
    /// The operator exposes tenants through HTTPRoutes but the API server serves no Gateway API.
    pub const GATEWAY_API_MISSING: &str = "GatewayApiMissing";
    /// The parent Gateway refuses the tenant's HTTPRoute (its status says `Accepted=False`).
    pub const ROUTE_NOT_ACCEPTED: &str = "RouteNotAccepted";
    /// The tenant namespace exists but is not this Tenant's: it is not taken over.
    pub const NAMESPACE_CONFLICT: &str = "NamespaceConflict";
    /// A Secret the tenant would use exists but is not this Tenant's: it is not adopted.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// The tenant's ConfigMap exists but is not this Tenant's: it is not adopted.
    pub const CONFIG_MAP_CONFLICT: &str = "ConfigMapConflict";
}

/// Why a QuotaTier name is refused (a Tenant's `spec.tier` must be able to name it).
pub const TIER_NAME_RULE: &str = "metadata.name of a QuotaTier is what Tenants put in spec.tier: a DNS-1123 label of at most 40 characters";
const NAME_RULE: &str = "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 40";
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";
const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A tenant of the chat API: its quota tier, models, retrieval, cache and auth settings.
/// The object's name is the tenant id used in tokens, collections, Redis keys and metrics.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tenantry.dev",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    shortname = "tn",
    status = "TenantStatus",
    doc = "A tenant of the tenantry chat API. The object's name is the tenant id.",
    validation = Rule::new(NAME_RULE).message(TENANT_ID_RULE),
    category = "tenantry",
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier", description = "QuotaTier of the tenant"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Status of the Ready condition"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", description = "Reason of the Ready condition"),
    printcolumn(name = "Replicas", type_ = "string", json_path = ".status.replicas", priority = 1, description = "API replica bounds; (pinned): one replica, as a store is not shared"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint", priority = 1, description = "In-cluster URL of the tenant's chat API"),
    printcolumn(name = "Isolation", type_ = "string", json_path = ".spec.retrieval.isolation", priority = 1, description = "Collection (own collections) or Partition (shared collection)"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspend", priority = 1, description = "Whether the tenant is suspended"),
    printcolumn(name = "Key", type_ = "string", json_path = ".status.currentKeyId", priority = 1, description = "kid of the current signing key"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".status.namespace", priority = 1, description = "Namespace of the tenant's API and Secrets"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].message", description = "Message of the Ready condition"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Name of the QuotaTier that sets this tenant's default limits (`free`, `pro`,
    /// `enterprise` are always known).
    #[schemars(regex(pattern = NAME_PATTERN), length(min = 1, max = 40))]
    pub tier: String,
    /// Per-tenant overrides of the tier's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaOverrides>,
    /// Chat and embedding models, and the allow-list of models callers may request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Models>,
    /// Retrieval settings.
    #[serde(default)]
    pub retrieval: Retrieval,
    /// Tenant-scoped semantic cache of final answers.
    #[serde(default)]
    pub semantic_cache: SemanticCache,
    /// Token verification settings.
    #[serde(default)]
    pub auth: Auth,
    /// The tenant's chat API Deployment and autoscaling.
    #[serde(default)]
    pub api: ApiSpec,
    /// What happens to the tenant's vector data when the Tenant is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Keep the data but refuse all traffic (the API is scaled to zero; requests get 403).
    #[serde(default)]
    pub suspend: bool,
}

/// Limits a tenant overrides; unset fields come from the tier.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaOverrides {
    /// Tokens (prompt + completion) per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub daily_tokens: Option<i64>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub requests_per_minute: Option<i64>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub tokens_per_minute: Option<i64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_concurrent_requests: Option<i64>,
    /// Completion tokens per answer (the `llm.maxTokens` of this tenant's API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_MAX_TOKENS))]
    pub max_tokens: Option<i64>,
    /// Documents the tenant may store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_documents: Option<i64>,
    /// Bytes of document text the tenant may store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_stored_bytes: Option<i64>,
}

/// Models a tenant uses and may request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.chat) || !has(self.allowed) || size(self.allowed) == 0 || self.chat in self.allowed").message("models.chat must be one of models.allowed"))]
#[x_kube(validation = Rule::new("!has(self.aliases) || !has(self.allowed) || self.allowed.all(m, !(m in self.aliases))").message(ALIAS_SHADOW_RULE))]
pub struct Models {
    /// Default chat model (used when a request names none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub chat: Option<String>,
    /// Embedding model for documents and questions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub embedding: Option<String>,
    /// Models callers may request; others are refused with 403. Empty: the tier's list, or only
    /// the default chat model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed: Vec<String>,
    /// Other names callers may use for a model, e.g. `{text-embedding-3-small:
    /// all-MiniLM-L6-v2, gpt-4o-mini: llama3}`: a request naming an alias is served by the model
    /// it maps to (which must itself be allowed, or be the embedding model). Listed in
    /// `/v1/models`; answers name the model that served them. Merged over the tier's
    /// `modelAliases` (the tenant's entry wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "alias_map")]
    #[x_kube(validation = Rule::new(ALIASES_CEL).message(ALIASES_RULE))]
    pub aliases: BTreeMap<String, String>,
}

/// Why an alias that is also an allowed model was refused.
pub const ALIAS_SHADOW_RULE: &str = "an alias must not shadow a model of models.allowed";
/// Most model aliases a Tenant or QuotaTier may declare.
pub const MAX_ALIASES: usize = 64;
const MAX_MODEL_NAME_LEN: usize = 256;
const ALIASES_CEL: &str = "self.all(k, size(k) >= 1 && size(k) <= 256 && self[k] != k)";
/// Why an alias map was refused (API server and [`Tenant::validate`]).
pub const ALIASES_RULE: &str =
    "model alias names must be 1 to 256 characters and must not map a name to itself";

fn alias_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": MAX_ALIASES,
        "additionalProperties": {"type": "string", "minLength": 1, "maxLength": MAX_MODEL_NAME_LEN},
    })
}

/// The problem with an alias map, if any (the Rust twin of [`ALIASES_CEL`], for manifests
/// read from files).
pub fn alias_problem(aliases: &BTreeMap<String, String>, allowed: &[String]) -> Option<String> {
    if aliases.len() > MAX_ALIASES {
        return Some(format!("at most {MAX_ALIASES} aliases"));
    }
    for (alias, target) in aliases {
        if alias.is_empty()
            || alias.len() > MAX_MODEL_NAME_LEN
            || target.is_empty()
            || target.len() > MAX_MODEL_NAME_LEN
            || alias == target
        {
            return Some(ALIASES_RULE.to_string());
        }
        if allowed.contains(alias) {
            return Some(format!("{ALIAS_SHADOW_RULE} ({alias:?})"));
        }
    }
    None
}

/// How a tenant's documents are stored and retrieved.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Retrieval {
    /// Passages retrieved per question.
    #[serde(default = "default_top_k")]
    #[schemars(range(min = 1, max = MAX_TOP_K))]
    pub top_k: i32,
    /// `Collection`: a collection per tenant. `Partition`: one shared collection, every query
    /// filtered by the tenant id (for thousands of small tenants). Immutable: the data stays
    /// where it was written (create a new Tenant to change it).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("retrieval.isolation is immutable: the tenant's data stays where it was written"))]
    pub isolation: Isolation,
    /// Whether `POST /v1/chat/completions` adds the passages retrieved for the last user
    /// message to the conversation (a request can decide with `tenantry.rag`). `/v1/chat`
    /// always retrieves.
    #[serde(default)]
    pub augment_completions: bool,
}

impl Default for Retrieval {
    fn default() -> Self {
        Self {
            top_k: default_top_k(),
            isolation: Isolation::default(),
            augment_completions: false,
        }
    }
}

fn default_top_k() -> i32 {
    4
}

/// Semantic cache settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SemanticCache {
    /// Whether answers are cached.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Minimum cosine similarity between questions for a hit.
    #[serde(default = "default_threshold")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: f64,
    /// How long an answer stays valid (Go-style duration, e.g. `24h`, `90m`).
    #[serde(default = "default_ttl")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ttl: String,
}

impl Default for SemanticCache {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: default_threshold(),
            ttl: default_ttl(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_threshold() -> f64 {
    0.95
}
fn default_ttl() -> String {
    "24h".to_string()
}

/// Token verification settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// Signing algorithm of the tenant's key; tokens with any other `alg` are refused.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Rotate the signing key this often (Go-style duration, e.g. `720h`); unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_ZERO_DURATION_CEL).message(ROTATE_EVERY_RULE))]
    pub rotate_every: Option<String>,
    /// Longest accepted token lifetime, `exp - iat` (Go-style duration, e.g. `1h`); tokens
    /// that live longer, or carry no `iat`, are refused. Unset: `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_ZERO_DURATION_CEL).message(MAX_TOKEN_LIFETIME_RULE))]
    pub max_token_lifetime: Option<String>,
    /// Extra external OIDC issuers whose tokens are accepted for this tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ISSUERS))]
    #[x_kube(
        validation = Rule::new(ISSUER_AUDIENCE_CEL).message(crate::domain::ISSUER_AUDIENCE_RULE),
        validation = Rule::new(CLAIM_CONDITION_CEL).message(crate::domain::CLAIM_CONDITION_RULE),
        validation = Rule::new(UNIQUE_ISSUERS_CEL).message(UNIQUE_ISSUERS_RULE)
    )]
    pub issuers: Vec<Issuer>,
    /// Namespaces whose `TenantCredential`s may hold tokens of this tenant (the operator mints
    /// into no other namespace). Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_CREDENTIAL_NAMESPACES),
        inner(length(min = 1, max = 63), regex(pattern = NAMESPACE_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub credential_namespaces: Vec<String>,
}

/// Most namespaces one Tenant lets hold its credentials.
pub const MAX_CREDENTIAL_NAMESPACES: usize = 64;
/// A namespace name (DNS-1123 label); the schema's pattern of `spec.auth.credentialNamespaces`.
const NAMESPACE_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Why a bad `credentialNamespaces` list is refused.
pub const CREDENTIAL_NAMESPACES_RULE: &str = "spec.auth.credentialNamespaces: each entry must be a namespace name (DNS-1123 label), listed once";

/// Most external issuers of one Tenant (bounds the cost of the CEL rules over them).
pub const MAX_ISSUERS: usize = 16;

/// Every issuer names its audience (CEL of `spec.auth.issuers`).
const ISSUER_AUDIENCE_CEL: &str = "self.all(i, has(i.audience) && size(i.audience.trim()) > 0)";
/// No issuer is listed twice (CEL of `spec.auth.issuers`).
const UNIQUE_ISSUERS_CEL: &str = "self.all(i, self.exists_one(j, j.issuer == i.issuer))";
/// Why a list of issuers with a repeated `issuer` is refused.
pub const UNIQUE_ISSUERS_RULE: &str = "spec.auth.issuers: each issuer may be listed only once";
/// A duration (already matching [`DURATION_PATTERN`]) that is not zero.
pub(crate) const NON_ZERO_DURATION_CEL: &str = "!self.matches('^(0+(ms|s|m|h))+$')";
/// Why a zero `rotateEvery` is refused.
pub const ROTATE_EVERY_RULE: &str =
    "spec.auth.rotateEvery must be a positive duration like 720h (unset: never rotate)";
/// Why a zero `maxTokenLifetime` is refused.
pub const MAX_TOKEN_LIFETIME_RULE: &str =
    "spec.auth.maxTokenLifetime must be a positive duration like 24h";
/// Every value of `requests`/`limits` is a Kubernetes quantity (CEL of those maps).
const QUANTITIES_CEL: &str = "self.all(k, isQuantity(self[k]))";
/// Why a resource value that is no quantity is refused.
pub const QUANTITIES_RULE: &str =
    "spec.api.resources: every value must be a Kubernetes quantity such as 250m or 512Mi";
/// Every claim condition sets exactly one of `values` and `pattern`.
const CLAIM_CONDITION_CEL: &str = "self.all(i, !has(i.claims) || i.claims.all(c, (has(c.values) && size(c.values) > 0) != has(c.pattern)))";

impl Auth {
    /// The longest accepted token lifetime: `maxTokenLifetime`, else
    /// [`crate::domain::DEFAULT_MAX_TOKEN_LIFETIME`] (also when the value is unusable; [`Tenant::validate`]
    /// refuses such a spec).
    pub fn max_token_lifetime(&self) -> std::time::Duration {
        self.max_token_lifetime
            .as_deref()
            .and_then(parse_duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(crate::domain::DEFAULT_MAX_TOKEN_LIFETIME)
    }
}

/// The tenant's chat API Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiSpec {
    /// Replica bounds for the HorizontalPodAutoscaler; unset: the tier's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
    /// CPU utilisation the autoscaler aims for, in percent.
    #[serde(default = "default_cpu", rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
    /// Compute resources of the API container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Reachable from outside the cluster when the operator exposes tenants (`--expose`);
    /// `false` keeps this tenant in-cluster only. Unset: exposed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<bool>,
}

impl Default for ApiSpec {
    fn default() -> Self {
        Self {
            replicas: None,
            target_cpu_utilization_percentage: default_cpu(),
            resources: None,
            expose: None,
        }
    }
}

fn default_cpu() -> i32 {
    70
}

/// Replica bounds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("replicas.min must not exceed replicas.max"))]
pub struct Replicas {
    /// Minimum replicas.
    #[schemars(range(min = 1, max = 1000))]
    pub min: i32,
    /// Maximum replicas.
    #[schemars(range(min = 1, max = 1000))]
    pub max: i32,
}

/// Container resources (Kubernetes quantities, e.g. `250m`, `512Mi`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Requested resources (`cpu`, `memory`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(schema_with = "quantity_map")]
    #[x_kube(validation = Rule::new(QUANTITIES_CEL).message(QUANTITIES_RULE))]
    pub requests: std::collections::BTreeMap<String, String>,
    /// Resource limits (`cpu`, `memory`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(schema_with = "quantity_map")]
    #[x_kube(validation = Rule::new(QUANTITIES_CEL).message(QUANTITIES_RULE))]
    pub limits: std::collections::BTreeMap<String, String>,
}

/// Most entries of `requests` or `limits`, and the longest name and value (bounds the cost of
/// the CEL rule over them).
pub const MAX_RESOURCES: usize = 16;
const MAX_QUANTITY_LEN: usize = 64;

/// The schema of `requests` and `limits`: a bounded map of short strings.
fn quantity_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": MAX_RESOURCES,
        "additionalProperties": {"type": "string", "maxLength": MAX_QUANTITY_LEN},
    })
}

/// What happens to vector data when a Tenant is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the collections (or partition points).
    #[default]
    Retain,
    /// Delete them.
    Delete,
}

/// Observed state of a Tenant, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `SigningKeyReady`, `VectorStoreReady`, `QuotaReady`, `ApiReady`, and `Stalled`
    /// while the spec has a problem retrying cannot solve. One entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Namespace holding the tenant's API and Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the signing-key Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    /// `kid` of the key new tokens are signed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_key_id: Option<String>,
    /// When the current key was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_created_at: Option<String>,
    /// When the current key is rotated on schedule (RFC 3339); unset: no `rotateEvery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<String>,
    /// Previous keys that still verify tokens, with the end of their validity (RFC 3339).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_keys: Vec<PreviousKey>,
    /// UID the tenant's stored data (documents, cached answers) is bound to: this Tenant's,
    /// or the one it adopted with `tenantry.dev/adopt-data-from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_owner: Option<String>,
    /// Vector collections holding the tenant's data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<String>,
    /// In-cluster URL of the tenant's chat API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Limits in force: the tier's, with the tenant's overrides applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_quota: Option<EffectiveQuota>,
    /// API replica bounds: `2-5`, `1 (pinned)` (one replica: a store the replicas would need
    /// is not shared; `ApiReady` says which), `0 (suspended)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<String>,
}

/// A previous signing key that still verifies tokens.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousKey {
    /// Its `kid`.
    pub kid: String,
    /// When its tokens stop verifying (RFC 3339); unset: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
}

/// A standard Kubernetes condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// PascalCase reason.
    #[serde(default)]
    pub reason: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// Generation the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A named set of default limits tenants refer to by `spec.tier`.
// Two printer columns share `type_ = "integer"`; clippy mistakes that for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "tenantry.dev",
    version = "v1alpha1",
    kind = "QuotaTier",
    validation = Rule::new(NAME_RULE).message(TIER_NAME_RULE),
    plural = "quotatiers",
    shortname = "qt",
    category = "tenantry",
    doc = "Default limits and models for the tenants that name it in spec.tier.",
    printcolumn(
        name = "DailyTokens",
        type_ = "integer",
        json_path = ".spec.dailyTokens"
    ),
    printcolumn(name = "RPM", type_ = "integer", json_path = ".spec.requestsPerMinute"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct QuotaTierSpec {
    /// Tokens (prompt + completion) per UTC day (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub daily_tokens: Option<i64>,
    /// Requests per minute (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub requests_per_minute: Option<i64>,
    /// Tokens per minute (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub tokens_per_minute: Option<i64>,
    /// Requests in flight at once (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_concurrent_requests: Option<i64>,
    /// Completion tokens per answer (unset: `llm.maxTokens` of the operator's `--api-config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_MAX_TOKENS))]
    pub max_tokens: Option<i64>,
    /// Documents a tenant may store (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_documents: Option<i64>,
    /// Bytes of document text a tenant may store (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_stored_bytes: Option<i64>,
    /// Models tenants of this tier may request (when the tenant lists none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_models: Vec<String>,
    /// Model aliases for the tenants of this tier (see a Tenant's `models.aliases`, which
    /// override entries of the same name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "alias_map")]
    #[x_kube(validation = Rule::new(ALIASES_CEL).message(ALIASES_RULE))]
    pub model_aliases: BTreeMap<String, String>,
    /// Default replica bounds of a tenant's API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
}

/// The tiers known without any QuotaTier object: `free`, `pro` and `enterprise`.
pub fn builtin_tier(name: &str) -> Option<QuotaTierSpec> {
    const MIB: i64 = 1 << 20;
    let (daily, rpm, tpm, conc, min, max, docs, bytes) = match name {
        "free" => (50_000, 20, 10_000, 2, 1, 2, 100, 10 * MIB),
        "pro" => (500_000, 100, 100_000, 10, 2, 5, 10_000, 1_024 * MIB),
        "enterprise" => (
            5_000_000,
            1_000,
            1_000_000,
            50,
            3,
            10,
            100_000,
            10_240 * MIB,
        ),
        _ => return None,
    };
    Some(QuotaTierSpec {
        daily_tokens: Some(daily),
        requests_per_minute: Some(rpm),
        tokens_per_minute: Some(tpm),
        max_concurrent_requests: Some(conc),
        max_tokens: None,
        max_documents: Some(docs),
        max_stored_bytes: Some(bytes),
        allowed_models: Vec::new(),
        model_aliases: BTreeMap::new(),
        replicas: Some(Replicas { min, max }),
    })
}

impl EffectiveQuota {
    /// The tier's limits with the tenant's overrides applied.
    pub fn resolve(tier: &QuotaTierSpec, overrides: Option<&QuotaOverrides>) -> Self {
        let o = overrides.cloned().unwrap_or_default();
        Self {
            daily_tokens: o.daily_tokens.or(tier.daily_tokens),
            requests_per_minute: o.requests_per_minute.or(tier.requests_per_minute),
            tokens_per_minute: o.tokens_per_minute.or(tier.tokens_per_minute),
            max_concurrent_requests: o.max_concurrent_requests.or(tier.max_concurrent_requests),
            max_tokens: o.max_tokens.or(tier.max_tokens),
            max_documents: o.max_documents.or(tier.max_documents),
            max_stored_bytes: o.max_stored_bytes.or(tier.max_stored_bytes),
        }
    }
}

/// One problem found in a manifest, with the field path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Field path, e.g. `spec.semanticCache.threshold`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl Tenant {
    /// The UID the Tenant's stored data is bound to: the one named by
    /// [`ADOPT_DATA_ANNOTATION`], else the Tenant's own; `None` for a manifest without a UID
    /// (the embedded default, where the tenant id alone scopes the data) or one that adopts
    /// [`LEGACY_DATA`].
    pub fn data_owner(&self) -> Option<String> {
        self.adopted_data_owner()
            .or_else(|| self.metadata.uid.clone().filter(|u| !u.is_empty()))
            .filter(|o| o != LEGACY_DATA)
    }

    /// The UID named by [`ADOPT_DATA_ANNOTATION`], if set and not blank.
    pub fn adopted_data_owner(&self) -> Option<String> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ADOPT_DATA_ANNOTATION))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The tenant id (the object's name), validated.
    pub fn tenant_id(&self) -> Result<TenantId, InvalidTenantId> {
        TenantId::parse(self.metadata.name.as_deref().unwrap_or_default())
    }

    /// Checks the same rules the CRD schema enforces, for manifests no API server has seen.
    /// Returns every problem found, in the order of the manifest's fields.
    pub fn validate(&self) -> Result<(), Vec<Invalid>> {
        let mut found = Problems::default();
        if let Err(e) = self.tenant_id() {
            found.add("metadata.name", e.to_string());
        }
        let s = &self.spec;
        check_tier_and_models(s, &mut found);
        check_cache(&s.semantic_cache, &mut found);
        check_auth(&s.auth, &mut found);
        check_api(&s.api, &mut found);
        if found.0.is_empty() {
            Ok(())
        } else {
            Err(found.0)
        }
    }
}

/// The problems [`Tenant::validate`] collects.
#[derive(Default)]
struct Problems(Vec<Invalid>);

impl Problems {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(Invalid {
            field: field.to_string(),
            message: message.into(),
        });
    }
}

fn check_tier_and_models(s: &TenantSpec, found: &mut Problems) {
    if TenantId::parse(&s.tier).is_err() {
        found.add(
            "spec.tier",
            format!("{:?} is not a valid QuotaTier name", s.tier),
        );
    }
    if let Some(q) = &s.quota {
        for (name, v) in [
            ("dailyTokens", q.daily_tokens),
            ("requestsPerMinute", q.requests_per_minute),
            ("tokensPerMinute", q.tokens_per_minute),
            ("maxConcurrentRequests", q.max_concurrent_requests),
        ] {
            if v.is_some_and(|v| v < 0) {
                found.add(&format!("spec.quota.{name}"), "must be >= 0");
            }
        }
        if q.max_tokens
            .is_some_and(|v| !(1..=MAX_MAX_TOKENS).contains(&v))
        {
            found.add(
                "spec.quota.maxTokens",
                format!("must be between 1 and {MAX_MAX_TOKENS}"),
            );
        }
    }
    if let Some(m) = &s.models
        && let Some(chat) = &m.chat
        && !m.allowed.is_empty()
        && !m.allowed.contains(chat)
    {
        found.add(
            "spec.models.chat",
            "models.chat must be one of models.allowed",
        );
    }
    if let Some(m) = &s.models
        && let Some(problem) = alias_problem(&m.aliases, &m.allowed)
    {
        found.add("spec.models.aliases", problem);
    }
    if !top_k_ok(s.retrieval.top_k) {
        found.add(
            "spec.retrieval.topK",
            format!("must be between 1 and {MAX_TOP_K}"),
        );
    }
}

fn check_cache(c: &SemanticCache, found: &mut Problems) {
    if !(0.0..=1.0).contains(&c.threshold) {
        found.add("spec.semanticCache.threshold", "must be between 0 and 1");
    }
    if parse_duration(&c.ttl).is_none() {
        found.add(
            "spec.semanticCache.ttl",
            format!("{:?} is not a duration like 24h or 90m", c.ttl),
        );
    }
}

fn check_auth(auth: &Auth, found: &mut Problems) {
    if let Some(r) = &auth.rotate_every
        && parse_duration(r).is_none_or(|d| d.is_zero())
    {
        found.add(
            "spec.auth.rotateEvery",
            format!("{r:?} is not a duration like 720h"),
        );
    }
    if let Some(m) = &auth.max_token_lifetime
        && parse_duration(m).is_none_or(|d| d.is_zero())
    {
        found.add(
            "spec.auth.maxTokenLifetime",
            format!("{m:?} is not a duration like 24h"),
        );
    }
    if auth.issuers.len() > MAX_ISSUERS {
        found.add(
            "spec.auth.issuers",
            format!("at most {MAX_ISSUERS} issuers (the schema's maxItems)"),
        );
    }
    for (i, issuer) in auth.issuers.iter().enumerate() {
        let field = |name: &str| format!("spec.auth.issuers[{i}].{name}");
        if issuer.issuer.is_empty() {
            found.add(&field("issuer"), "must not be empty");
        }
        let max = crate::domain::MAX_ISSUER_FIELD_LEN;
        for (name, value) in [
            ("issuer", &issuer.issuer),
            ("jwksUri", &issuer.jwks_uri),
            ("audience", &issuer.audience),
        ] {
            if value.len() > max {
                found.add(&field(name), format!("at most {max} characters"));
            }
        }
        if issuer.audience.trim().is_empty() {
            found.add(&field("audience"), crate::domain::ISSUER_AUDIENCE_RULE);
        }
        for (j, c) in issuer.claims.iter().enumerate() {
            let at = field(&format!("claims[{j}]"));
            if c.claim.is_empty() {
                found.add(&format!("{at}.claim"), "must not be empty");
            }
            if c.values.is_empty() == c.pattern.is_none() {
                found.add(&at, crate::domain::CLAIM_CONDITION_RULE);
            }
            if let Err(e) = c.regex() {
                found.add(
                    &format!("{at}.pattern"),
                    format!("is not a regular expression: {e}"),
                );
            }
        }
        if auth.issuers[..i].iter().any(|o| o.issuer == issuer.issuer) {
            found.add(
                &field("issuer"),
                format!("{:?} is listed twice", issuer.issuer),
            );
        }
        if !jwks_uri_ok(&issuer.jwks_uri) {
            found.add(
                &field("jwksUri"),
                "must be an https:// URL (http:// only on 127.0.0.1, localhost or [::1])",
            );
        }
    }
    let namespaces = &auth.credential_namespaces;
    let bad = namespaces.len() > MAX_CREDENTIAL_NAMESPACES
        || namespaces
            .iter()
            .enumerate()
            .any(|(i, n)| !namespace_ok(n) || namespaces[..i].contains(n));
    if bad {
        found.add("spec.auth.credentialNamespaces", CREDENTIAL_NAMESPACES_RULE);
    }
}

/// A namespace name: a DNS-1123 label of at most 63 characters.
pub fn namespace_ok(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes quantity (`250m`, `1.5`, `512Mi`, `1e3`), as `isQuantity` of the CRD's CEL.
pub fn quantity_ok(s: &str) -> bool {
    static QUANTITY: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$",
        )
        .expect("valid regex")
    });
    QUANTITY.is_match(s)
}

fn check_api(api: &ApiSpec, found: &mut Problems) {
    if let Some(r) = &api.resources {
        for (kind, values) in [("requests", &r.requests), ("limits", &r.limits)] {
            if values.len() > MAX_RESOURCES {
                found.add(
                    &format!("spec.api.resources.{kind}"),
                    format!("at most {MAX_RESOURCES} entries"),
                );
            }
            for (name, value) in values {
                if value.len() > MAX_QUANTITY_LEN || !quantity_ok(value) {
                    found.add(
                        &format!("spec.api.resources.{kind}.{name}"),
                        format!("{value:?}: {QUANTITIES_RULE}"),
                    );
                }
            }
        }
    }
    if let Some(r) = &api.replicas
        && (r.min < 1 || r.max < 1 || r.min > r.max)
    {
        found.add("spec.api.replicas", "need 1 <= min <= max");
    }
    if !(1..=100).contains(&api.target_cpu_utilization_percentage) {
        found.add(
            "spec.api.targetCPUUtilizationPercentage",
            "must be between 1 and 100",
        );
    }
}

/// The CRD YAML checked in under `crds/`, as printed by `tenantry crd`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let mut out = String::from(
        "# Generated by `tenantry crd`; do not edit. CustomResourceDefinitions of tenantry.dev.\n",
    );
    for crd in [Tenant::crd(), QuotaTier::crd(), TenantCredential::crd()] {
        out.push_str("---\n");
        // Serialising a CRD cannot fail: it is plain data.
        out.push_str(&serde_saphyr::to_string(&crd).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(yaml: &str) -> Tenant {
        serde_saphyr::from_str(yaml).expect("valid yaml")
    }

    #[test]
    fn defaults_fill_in() {
        let t = tenant(
            "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {tier: pro}\n",
        );
        assert_eq!(t.spec.retrieval.top_k, 4);
        assert_eq!(t.spec.retrieval.isolation, Isolation::Collection);
        assert!(t.spec.semantic_cache.enabled);
        assert_eq!(t.spec.semantic_cache.threshold, 0.95);
        assert_eq!(t.spec.auth.algorithm, Algorithm::EdDSA);
        assert_eq!(t.spec.deletion_policy, DeletionPolicy::Retain);
        assert!(t.validate().is_ok());
    }

    #[test]
    fn invalid_specs_are_reported_per_field() {
        let t = tenant(
            "metadata: {name: Acme_Corp}\nspec:\n  tier: pro\n  quota: {dailyTokens: -1}\n  semanticCache: {threshold: 1.5, ttl: soon}\n  api: {replicas: {min: 3, max: 2}}\n",
        );
        let errs = t.validate().expect_err("invalid");
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.quota.dailyTokens",
                "spec.semanticCache.threshold",
                "spec.semanticCache.ttl",
                "spec.api.replicas"
            ]
        );
    }

    #[test]
    fn issuers_need_an_audience_and_sound_claim_conditions() {
        let t = tenant(
            "metadata: {name: acme}\nspec:\n  tier: pro\n  auth:\n    maxTokenLifetime: soon\n    issuers:\n    - {issuer: 'https://a', jwksUri: 'https://a/jwks', audience: ''}\n    - issuer: 'https://b'\n      jwksUri: 'https://b/jwks'\n      audience: api\n      claims:\n      - {claim: sub, values: [x], pattern: x}\n      - {claim: sub}\n      - {claim: sub, pattern: '('}\n",
        );
        let errs = t.validate().expect_err("invalid");
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.auth.maxTokenLifetime",
                "spec.auth.issuers[0].audience",
                "spec.auth.issuers[1].claims[0]",
                "spec.auth.issuers[1].claims[1]",
                "spec.auth.issuers[1].claims[2].pattern",
            ]
        );
        // Without the field at all, the manifest does not even parse.
        let missing: Result<Tenant, _> = serde_saphyr::from_str(
            "metadata: {name: acme}\nspec:\n  tier: pro\n  auth:\n    issuers:\n    - {issuer: 'https://a', jwksUri: 'https://a/jwks'}\n",
        );
        assert!(
            missing
                .expect_err("no audience")
                .to_string()
                .contains("audience"),
            "names the field"
        );
        let yaml = crd_yaml();
        assert!(yaml.contains(crate::domain::ISSUER_AUDIENCE_RULE));
        assert!(yaml.contains(crate::domain::CLAIM_CONDITION_RULE));
    }

    #[test]
    fn rules_of_the_schema_cel_are_checked_in_rust_too() {
        let t = tenant(
            "metadata: {name: acme}\nspec:\n  tier: pro\n  auth:\n    rotateEvery: 0h0m\n    maxTokenLifetime: 0s\n    issuers:\n    - {issuer: 'https://a', jwksUri: 'https://a/jwks', audience: '  '}\n    - {issuer: 'https://a', jwksUri: 'https://a/jwks', audience: api}\n  api: {resources: {requests: {cpu: lots, memory: 512Mi}, limits: {cpu: '1.5'}}}\n",
        );
        let errs = t.validate().expect_err("invalid");
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.auth.rotateEvery",
                "spec.auth.maxTokenLifetime",
                "spec.auth.issuers[0].audience",
                "spec.auth.issuers[1].issuer",
                "spec.api.resources.requests.cpu",
            ]
        );
        for ok in [
            "250m", "1", "1.5", ".5", "512Mi", "2Gi", "1e3", "100k", "+1",
        ] {
            assert!(quantity_ok(ok), "{ok}");
        }
        for bad in ["", "lots", "1 Gi", "1GB", "Mi", "1.2.3", "-"] {
            assert!(!quantity_ok(bad), "{bad}");
        }
        let yaml = crd_yaml();
        for rule in [
            ROTATE_EVERY_RULE,
            MAX_TOKEN_LIFETIME_RULE,
            UNIQUE_ISSUERS_RULE,
            QUANTITIES_RULE,
            TIER_NAME_RULE,
        ] {
            assert!(yaml.contains(rule), "CRD lacks {rule}");
        }
    }

    #[test]
    fn token_lifetime_defaults_to_a_day() {
        let mut auth = Auth::default();
        assert_eq!(
            auth.max_token_lifetime(),
            std::time::Duration::from_secs(86_400)
        );
        auth.max_token_lifetime = Some("90m".into());
        assert_eq!(
            auth.max_token_lifetime(),
            std::time::Duration::from_secs(5_400)
        );
    }

    #[test]
    fn effective_quota_applies_overrides() {
        let tier = builtin_tier("free").expect("builtin");
        let q = EffectiveQuota::resolve(
            &tier,
            Some(&QuotaOverrides {
                daily_tokens: Some(7),
                ..Default::default()
            }),
        );
        assert_eq!(q.daily_tokens, Some(7));
        assert_eq!(q.requests_per_minute, tier.requests_per_minute);
        let partial = QuotaTierSpec {
            daily_tokens: Some(500_000),
            requests_per_minute: Some(600),
            tokens_per_minute: None,
            max_concurrent_requests: None,
            ..tier
        };
        let q = EffectiveQuota::resolve(&partial, None);
        assert_eq!(
            (
                q.daily_tokens,
                q.requests_per_minute,
                q.tokens_per_minute,
                q.max_concurrent_requests
            ),
            (Some(500_000), Some(600), None, None),
            "absent in the tier: no limit of that kind"
        );
        let q = EffectiveQuota::resolve(
            &partial,
            Some(&QuotaOverrides {
                tokens_per_minute: Some(9),
                ..Default::default()
            }),
        );
        assert_eq!(q.tokens_per_minute, Some(9), "a tenant may add a limit");
    }

    #[test]
    fn crd_carries_validation_rules() {
        let yaml = crd_yaml();
        for needle in [
            "x-kubernetes-validations",
            "self.min <= self.max",
            "self.metadata.name.matches",
            "shortNames",
            "- tn",
            "- qt",
            "maximum: 1.0",
            "Collection",
            "Partition",
            "retrieval.isolation is immutable",
        ] {
            assert!(yaml.contains(needle), "CRD lacks {needle}");
        }
    }
}
