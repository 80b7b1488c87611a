//! The operator's own access to a tenant namespace. The operator holds no cluster-wide right to
//! read Secrets: in each namespace it creates it binds one ClusterRole (`--tenant-role`, the
//! Secret rights it needs there) to its own ServiceAccount, and the chart's admission policy
//! lets it bind nothing else, to no one else, and only in namespaces it manages.
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};

use super::{Names, Scope, meta};
use crate::crd::Tenant;

/// Name of the operator's RoleBinding in every tenant namespace.
pub const ROLE_BINDING: &str = "tenantry-operator";

/// Who the operator is and what it binds to itself in tenant namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// ClusterRole bound in each tenant namespace (`--tenant-role`).
    pub tenant_role: String,
    /// The operator's ServiceAccount (`--service-account`), in the operator's namespace.
    pub service_account: String,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            tenant_role: "tenantry-operator-tenant".into(),
            service_account: "tenantry-operator".into(),
        }
    }
}

/// The RoleBinding granting the operator's ServiceAccount `access.tenant_role` in the tenant
/// namespace (owned by the Tenant, so it goes with the namespace).
pub fn role_binding(
    tenant: &Tenant,
    names: &Names,
    access: &Access,
    operator_namespace: &str,
) -> RoleBinding {
    RoleBinding {
        metadata: meta(tenant, names, ROLE_BINDING, Scope::Tenant),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: access.tenant_role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: access.service_account.clone(),
            namespace: Some(operator_namespace.to_string()),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TenantId;

    #[test]
    fn binds_only_the_tenant_role_to_the_operator_in_the_tenant_namespace() {
        let tenant = Tenant::test();
        let names = Names::new(&TenantId::parse("acme").expect("id"), "tenant-");
        let b = role_binding(&tenant, &names, &Access::default(), "tenantry-system");
        assert_eq!(b.metadata.namespace.as_deref(), Some("tenant-acme"));
        assert_eq!(b.role_ref.kind, "ClusterRole");
        assert_eq!(b.role_ref.name, "tenantry-operator-tenant");
        let subjects = b.subjects.expect("subjects");
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].name, "tenantry-operator");
        assert_eq!(subjects[0].namespace.as_deref(), Some("tenantry-system"));
        assert_eq!(
            b.metadata.owner_references.expect("owner")[0].uid,
            tenant.metadata.uid.expect("uid")
        );
    }
}
