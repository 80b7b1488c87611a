//! The vocabulary every part of tenantry shares, free of Kubernetes and HTTP: tenant ids,
//! isolation modes, signing algorithms, external issuers, effective quotas, durations and the
//! limits that several modules check.
//!
//! `crd` builds the custom resources out of these types; `auth`, `quota`, `vector`, `cache`,
//! `llm`, `embed` and `tenants` depend on this module, never on `crd`, `api` or axum.
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest tenant id: leaves room for prefixes and suffixes in namespace, Secret and
/// collection names (all limited to 63 characters).
pub const MAX_TENANT_ID_LEN: usize = 40;
/// What a tenant id may be, in words (the CRD's validation message says the same).
pub const TENANT_ID_RULE: &str = "metadata.name is the tenant id: a DNS-1123 label (lowercase letters, digits, '-'; starts and ends alphanumeric) of at most 40 characters";
/// Most passages one question may retrieve (`top_k`, `retrieval.topK`).
pub const MAX_TOP_K: i32 = 50;
/// Why a `top_k` was refused.
pub const TOP_K_RULE: &str = "top_k must be between 1 and 50";
/// Most completion tokens a tier or tenant may set as its per-answer limit (`maxTokens`).
pub const MAX_MAX_TOKENS: i64 = 1_000_000;

/// Whether `k` passages may be retrieved for one question.
pub fn top_k_ok(k: i32) -> bool {
    (1..=MAX_TOP_K).contains(&k)
}

/// A validated tenant id: a DNS-1123 label of at most [`MAX_TENANT_ID_LEN`] characters.
///
/// Only constructed through [`TenantId::parse`], so a value of this type is always safe to put
/// in collection names, Redis keys, file paths and metric labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TenantId(String);

/// Why a tenant id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid tenant id {0:?}: {TENANT_ID_RULE}")]
pub struct InvalidTenantId(pub String);

impl TenantId {
    /// Validates `s` as a tenant id.
    pub fn parse(s: &str) -> Result<Self, InvalidTenantId> {
        let ok = !s.is_empty()
            && s.len() <= MAX_TENANT_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(InvalidTenantId(s.chars().take(80).collect()))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A duration the way [`parse_duration`] reads it back, in its largest whole unit (`24h`,
/// `90m`, `45s`).
pub fn format_duration(d: Duration) -> String {
    match d.as_secs() {
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parses a Go-style duration made of `<n>ms`, `<n>s`, `<n>m`, `<n>h` parts (e.g. `1h30m`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total = total.checked_add(unit.checked_mul(u32::try_from(n).ok()?)?)?;
    }
    Some(total)
}

/// Vector-store isolation mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Isolation {
    /// One collection per tenant.
    #[default]
    Collection,
    /// One shared collection, tenant id as an indexed payload key.
    Partition,
}

/// JWT signing algorithm.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Algorithm {
    /// Ed25519 signatures (asymmetric; the default).
    #[default]
    EdDSA,
    /// HMAC-SHA256 with a shared secret.
    HS256,
}

/// Whether a JWKS URL is acceptable: HTTPS, or plain HTTP on the loopback interface (the
/// same rule as the CRD's pattern).
pub fn jwks_uri_ok(uri: &str) -> bool {
    if let Some(rest) = uri.strip_prefix("https://") {
        return !rest.is_empty() && !rest.starts_with(['/', '?', '#']);
    }
    let Some(rest) = uri.strip_prefix("http://") else {
        return false;
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..host_end];
    let host = match authority.rsplit_once(':') {
        Some((h, port))
            if !h.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            h
        }
        Some((_, _)) if authority == "[::1]" => authority,
        Some(_) => return false,
        None => authority,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// An external OIDC issuer: its tokens are accepted for the tenant only with the configured
/// audience and when every claim condition holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Issuer {
    /// Expected `iss` claim.
    #[schemars(length(min = 1, max = MAX_ISSUER_FIELD_LEN))]
    pub issuer: String,
    /// URL of the issuer's JWKS: HTTPS (plain HTTP only on the loopback interface).
    #[schemars(
        regex(
            pattern = r"^(https://[^/?#]+|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?(/|$))"
        ),
        length(max = MAX_ISSUER_FIELD_LEN)
    )]
    pub jwks_uri: String,
    /// Expected `aud` claim (required: without it every token the issuer signs for anyone
    /// would be accepted).
    #[schemars(length(min = 1, max = MAX_ISSUER_FIELD_LEN))]
    pub audience: String,
    /// Conditions on the token's claims, all of which must hold (e.g. `sub` or `repository`
    /// of a CI provider's tokens); none: any token of the issuer with the audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub claims: Vec<ClaimCondition>,
}

/// Longest `issuer`, `jwksUri` and `audience` of an external issuer (bounds the cost of the
/// CRD's CEL rules over them).
pub const MAX_ISSUER_FIELD_LEN: usize = 1024;

/// Why an issuer without audience is refused (the CRD's validation message says the same).
pub const ISSUER_AUDIENCE_RULE: &str = "spec.auth.issuers[].audience is required: without it any token of the issuer, minted for any client, would be accepted";

/// What one claim of an external token must be: one of `values`, or a match of `pattern`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimCondition {
    /// Name of a top-level claim, e.g. `sub`, `repository`, `groups`.
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
    /// The claim must equal one of these (for a list claim: one of its items must).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub values: Vec<String>,
    /// The claim must match this regular expression as a whole (Rust `regex` syntax; for a
    /// list claim: one of its items must).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub pattern: Option<String>,
}

/// Why a claim condition was refused (the CRD's validation message says the same).
pub const CLAIM_CONDITION_RULE: &str =
    "a claim condition sets exactly one of values (non-empty) or pattern";

impl ClaimCondition {
    /// The pattern, anchored so it must match the whole claim; `Err` when it does not compile.
    pub fn regex(&self) -> Result<Option<regex::Regex>, regex::Error> {
        self.pattern
            .as_deref()
            .map(|p| regex::Regex::new(&format!("^(?:{p})$")))
            .transpose()
    }

    /// Whether `value` (the claim in the token; `None` when absent) satisfies the condition.
    /// Strings, numbers and booleans are compared as text; a list satisfies it when one of its
    /// items does; objects, `null` and a missing claim never do. A pattern that does not
    /// compile matches nothing.
    pub fn holds(&self, value: Option<&serde_json::Value>) -> bool {
        let regex = match self.regex() {
            Ok(r) => r,
            Err(_) => return false,
        };
        let one = |v: &serde_json::Value| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return false,
            };
            match &regex {
                Some(r) => r.is_match(&text),
                None => self.values.contains(&text),
            }
        };
        match value {
            Some(serde_json::Value::Array(items)) => items.iter().any(one),
            Some(v) => one(v),
            None => false,
        }
    }
}

/// The longest token lifetime (`exp - iat`) accepted when a tenant sets no
/// `spec.auth.maxTokenLifetime`.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Limits in force for a tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveQuota {
    /// Tokens per UTC day (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<i64>,
    /// Requests per minute (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<i64>,
    /// Tokens per minute (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<i64>,
    /// Requests in flight at once (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<i64>,
    /// Completion tokens per answer (unset: `llm.maxTokens` of the serve configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    /// Documents the tenant may store (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_documents: Option<i64>,
    /// Bytes of document text the tenant may store (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stored_bytes: Option<i64>,
}

impl EffectiveQuota {
    /// The per-answer completion-token limit: the tenant's, else `default` (the serve
    /// configuration's `llm.maxTokens`).
    pub fn max_tokens_or(&self, default: u32) -> u32 {
        self.max_tokens
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_conditions() {
        let values = ClaimCondition {
            claim: "groups".into(),
            values: vec!["admins".into(), "7".into()],
            pattern: None,
        };
        let pattern = ClaimCondition {
            claim: "sub".into(),
            values: vec![],
            pattern: Some("repo:acme/[^:]+".into()),
        };
        assert!(values.holds(Some(&serde_json::json!("admins"))));
        assert!(values.holds(Some(&serde_json::json!(["users", "admins"]))));
        assert!(values.holds(Some(&serde_json::json!(7))));
        assert!(!values.holds(Some(&serde_json::json!("admin"))));
        assert!(!values.holds(Some(&serde_json::json!({"admins": true}))));
        assert!(!values.holds(None));
        assert!(pattern.holds(Some(&serde_json::json!("repo:acme/app"))));
        assert!(
            !pattern.holds(Some(&serde_json::json!("repo:acme/app:ref:main"))),
            "whole claim"
        );
        assert!(
            !pattern.holds(Some(&serde_json::json!("xrepo:acme/app"))),
            "whole claim"
        );
        let broken = ClaimCondition {
            pattern: Some("(".into()),
            ..pattern
        };
        assert!(broken.regex().is_err());
        assert!(!broken.holds(Some(&serde_json::json!("("))));
    }

    #[test]
    fn jwks_uris_are_https_or_loopback_http() {
        for ok in [
            "https://idp.example.com/.well-known/jwks.json",
            "https://idp.example.com",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9000/keys",
            "http://[::1]",
        ] {
            assert!(jwks_uri_ok(ok), "{ok}");
        }
        for bad in [
            "http://idp.example.com/jwks",
            "http://127.0.0.1@evil.example.com/",
            "http://evil.example.com:80@127.0.0.1/",
            "http://127.0.0.1.evil.example.com/",
            "https:///jwks",
            "ftp://127.0.0.1/",
            "",
        ] {
            assert!(!jwks_uri_ok(bad), "{bad}");
        }
    }

    #[test]
    fn top_k_bounds_and_their_message_agree() {
        assert!(top_k_ok(1) && top_k_ok(MAX_TOP_K));
        assert!(!top_k_ok(0) && !top_k_ok(MAX_TOP_K + 1) && !top_k_ok(-1));
        assert!(TOP_K_RULE.ends_with(&format!("between 1 and {MAX_TOP_K}")));
    }

    #[test]
    fn tenant_ids() {
        for ok in ["acme", "a", "tenant-1", "0abc"] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a:b",
            "a*",
            "a\nb",
            &"a".repeat(41),
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration(""), None);
    }
}
