//! The first step of a reconcile (pure): a Tenant and the QuotaTier it names become a
//! [`ValidTenant`], or an [`InvalidSpec`] that the reconciler reports in the status and waits
//! on (nothing is applied for an invalid Tenant).
use std::time::Duration;

use crate::crd::{LEGACY_DATA, QuotaTierSpec, Tenant, reason};
use crate::domain::{TenantId, parse_duration};

/// Why a Tenant cannot be reconciled until it (or its tier) changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSpec {
    /// The spec breaks a rule the CRD schema cannot express; every problem, `; `-joined.
    #[error("{0}")]
    Spec(String),
    /// `spec.tier` names neither a QuotaTier object nor a built-in tier.
    #[error("QuotaTier {0:?} does not exist")]
    TierNotFound(String),
}

impl InvalidSpec {
    /// The `Ready` condition's reason (and the Warning Event's) for this problem.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidSpec::Spec(_) => reason::INVALID_SPEC,
            InvalidSpec::TierNotFound(_) => reason::TIER_NOT_FOUND,
        }
    }

    /// Whether only a change of the Tenant's spec can solve it (the `Stalled` condition): a
    /// rule the schema does not check is broken. A missing tier is not a stall: the Tenant
    /// reconciles as soon as the QuotaTier is created.
    pub fn stalled(&self) -> bool {
        matches!(self, InvalidSpec::Spec(_))
    }
}

/// A Tenant whose spec passed validation, with what the later steps derive from it.
#[derive(Debug, Clone)]
pub struct ValidTenant<'a> {
    /// The Tenant as read.
    pub tenant: &'a Tenant,
    /// Its id (the object's name, checked).
    pub id: TenantId,
    /// The tier its quota and replica defaults come from.
    pub tier: QuotaTierSpec,
    /// `spec.auth.rotateEvery`, parsed (`None`: no scheduled rotation).
    pub rotate_every: Option<Duration>,
}

/// Checks the spec on its own (before its tier is looked up); returns the tenant id.
pub fn spec(tenant: &Tenant) -> Result<TenantId, InvalidSpec> {
    tenant.validate().map_err(|errs| {
        InvalidSpec::Spec(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    tenant
        .tenant_id()
        .map_err(|e| InvalidSpec::Spec(format!("metadata.name: {e}")))
}

/// Completes validation with the tier `spec.tier` resolved to (`None`: it does not exist).
pub fn with_tier(
    tenant: &Tenant,
    id: TenantId,
    tier: Option<QuotaTierSpec>,
) -> Result<ValidTenant<'_>, InvalidSpec> {
    let tier = tier.ok_or_else(|| InvalidSpec::TierNotFound(tenant.spec.tier.clone()))?;
    Ok(ValidTenant {
        tenant,
        id,
        tier,
        rotate_every: tenant
            .spec
            .auth
            .rotate_every
            .as_deref()
            .and_then(parse_duration),
    })
}

/// The data owner of the Tenant's stored data: the UID named by `tenantry.dev/adopt-data-from`;
/// else, for a Tenant an operator reconciled before data was bound to UIDs (a status with
/// collections but no `dataOwner`), [`LEGACY_DATA`], so its existing data stays its own;
/// else the Tenant's UID (a new Tenant starts empty).
pub fn data_owner(tenant: &Tenant) -> Option<String> {
    let adopted = tenant.adopted_data_owner();
    let legacy = tenant
        .status
        .as_ref()
        .is_some_and(|s| s.data_owner.is_none() && !s.collections.is_empty());
    adopted
        .or_else(|| legacy.then(|| LEGACY_DATA.to_string()))
        .or_else(|| tenant.metadata.uid.clone())
}

/// The owner the Tenant's vector handle is bound to ([`data_owner`]; legacy data: none).
pub fn vector_owner(tenant: &Tenant) -> Option<String> {
    data_owner(tenant).filter(|o| o != LEGACY_DATA)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ADOPT_DATA_ANNOTATION;
    use crate::crd::builtin_tier;

    #[test]
    fn every_problem_is_reported_at_once() {
        let t = Tenant::test().with_quota(-1).with_top_k(0);
        let err = spec(&t).expect_err("invalid");
        assert_eq!(err.reason(), reason::INVALID_SPEC);
        assert!(err.stalled(), "a spec problem needs a spec change");
        let message = err.to_string();
        assert!(
            message.contains("spec.quota.dailyTokens: must be >= 0"),
            "{message}"
        );
        assert!(message.contains("; spec.retrieval.topK"), "{message}");
    }

    #[test]
    fn a_missing_tier_is_its_own_reason() {
        let t = Tenant::test().with_tier("gold");
        let id = spec(&t).expect("valid spec");
        let err = with_tier(&t, id, builtin_tier("gold")).expect_err("no such tier");
        assert_eq!(err.reason(), reason::TIER_NOT_FOUND);
        assert!(!err.stalled(), "creating the tier heals it");
        assert_eq!(err.to_string(), r#"QuotaTier "gold" does not exist"#);
    }

    #[test]
    fn data_is_the_tenants_own_unless_adopted_or_older_than_uids() {
        let mut t = Tenant::test();
        assert_eq!(data_owner(&t).as_deref(), Some("uid-1"));
        t.status = Some(crate::crd::TenantStatus {
            collections: vec!["tenant_acme_docs".into()],
            ..Default::default()
        });
        assert_eq!(data_owner(&t).as_deref(), Some(LEGACY_DATA));
        assert_eq!(vector_owner(&t), None);
        t.status.as_mut().expect("status").data_owner = Some("uid-1".into());
        assert_eq!(data_owner(&t).as_deref(), Some("uid-1"));
        t.metadata.annotations =
            Some([(ADOPT_DATA_ANNOTATION.to_string(), "uid-0".to_string())].into());
        assert_eq!(vector_owner(&t).as_deref(), Some("uid-0"));
    }

    #[test]
    fn a_valid_tenant_carries_its_tier_and_rotation() {
        let t = Tenant::test().with_rotation("720h");
        let id = spec(&t).expect("valid");
        let v = with_tier(&t, id, builtin_tier("pro")).expect("valid");
        assert_eq!(v.id.as_str(), "acme");
        assert_eq!(v.tier, builtin_tier("pro").expect("pro"));
        assert_eq!(v.rotate_every, Some(Duration::from_secs(720 * 3600)));
    }
}
