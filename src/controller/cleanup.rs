//! The finalizer path of a deleted Tenant: its vector data is deleted or kept per
//! `spec.deletionPolicy` (owned objects go by garbage collection), and its phase is forgotten.
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::{Context, Error};
use crate::crd::{DeletionPolicy, Tenant};
use crate::vector::TenantVectors;

/// Cleans up after `tenant`; purging tolerates collections that are already gone.
pub async fn cleanup(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = tenant.name_any();
    super::credentials::remove(&ctx, &tenant).await?;
    if let Ok(id) = tenant.tenant_id()
        && tenant.spec.deletion_policy == DeletionPolicy::Delete
    {
        let vectors = TenantVectors::new(
            ctx.vectors.clone(),
            id,
            tenant.spec.retrieval.isolation,
            ctx.dimension,
        )
        .with_owner(super::validate::vector_owner(&tenant));
        vectors.purge().await?;
        ctx.event(
            &tenant,
            EventType::Normal,
            "VectorDataDeleted",
            "deletionPolicy Delete: the tenant's vector data was deleted".to_string(),
        )
        .await;
    } else {
        ctx.event(
            &tenant,
            EventType::Normal,
            "VectorDataRetained",
            format!(
                "deletionPolicy Retain: the tenant's vector data was kept; a Tenant of the same \
                 name adopts it with the annotation tenantry.dev/adopt-data-from: {}",
                super::validate::data_owner(&tenant).unwrap_or_default()
            ),
        )
        .await;
    }
    if let Ok(id) = tenant.tenant_id() {
        // Its objects go with its namespace: nothing to remember about them.
        let names = super::build::Names::new(&id, &ctx.build.namespace_prefix);
        ctx.applied.forget_namespace(&names.namespace);
    }
    ctx.metrics.phase(&name, None);
    Ok(Action::await_change())
}
