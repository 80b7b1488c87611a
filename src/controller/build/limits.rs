//! The tenant namespace's ResourceQuota and LimitRange (pure), derived from the tier's replica
//! bounds and the API container's resources: the namespace holds at most the autoscaler's
//! maximum plus the rolling update's surge of API pods, and no more compute than they request
//! and are limited to; a container created without resources gets the API container's.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec,
    ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{Names, Scope, meta};
use crate::crd::{Replicas, Tenant};

/// Pods one more than the autoscaler's maximum: the rolling update surges by one.
const SURGE: i32 = 1;

/// `q` times `n`, for the plain decimal quantities resources are written in (`250m`, `1.5`,
/// `512Mi`, `2Gi`); `None` for a form this does not scale (exponents).
pub fn scale(q: &str, n: i32) -> Option<String> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if number.is_empty() || !SUFFIXES.contains(&suffix) {
        return None;
    }
    let scaled = match number.split_once('.') {
        None => number
            .parse::<u64>()
            .ok()?
            .checked_mul(n as u64)?
            .to_string(),
        Some((int, frac)) => {
            // Exact decimal arithmetic on the digits: 1.25 × 3 = 3.75.
            let digits = format!("{int}{frac}").parse::<u64>().ok()?;
            let product = digits.checked_mul(n as u64)?.to_string();
            let places = frac.len();
            let padded = format!("{product:0>width$}", width = places + 1);
            let (i, f) = padded.split_at(padded.len() - places);
            let f = f.trim_end_matches('0');
            if f.is_empty() {
                i.to_string()
            } else {
                format!("{i}.{f}")
            }
        }
    };
    Some(format!("{scaled}{suffix}"))
}

/// The ResourceQuota: pod count, and requests and limits of each resource the API container
/// sets, for `bounds.max` pods plus the surge.
pub fn resource_quota(
    tenant: &Tenant,
    names: &Names,
    bounds: Replicas,
    container: &ResourceRequirements,
) -> ResourceQuota {
    let pods = bounds.max + SURGE;
    let mut hard = BTreeMap::from([("pods".to_string(), Quantity(pods.to_string()))]);
    for (prefix, values) in [
        ("requests", &container.requests),
        ("limits", &container.limits),
    ] {
        for (resource, q) in values.iter().flatten() {
            if let Some(total) = scale(&q.0, pods) {
                hard.insert(format!("{prefix}.{resource}"), Quantity(total));
            }
        }
    }
    ResourceQuota {
        metadata: meta(tenant, names, &names.api, Scope::Tenant),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The LimitRange: containers without resources get the API container's, and none may exceed
/// its limits.
pub fn limit_range(tenant: &Tenant, names: &Names, container: &ResourceRequirements) -> LimitRange {
    LimitRange {
        metadata: meta(tenant, names, &names.api, Scope::Tenant),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".to_string(),
                default: container.limits.clone(),
                default_request: container.requests.clone(),
                max: container.limits.clone(),
                ..Default::default()
            }],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_scale_exactly() {
        for (q, n, want) in [
            ("250m", 6, Some("1500m")),
            ("512Mi", 6, Some("3072Mi")),
            ("2Gi", 3, Some("6Gi")),
            ("1.5", 6, Some("9")),
            ("1.25", 3, Some("3.75")),
            ("0.5", 3, Some("1.5")),
            ("1", 4, Some("4")),
            ("1e3", 2, None),
            ("lots", 2, None),
        ] {
            assert_eq!(scale(q, n).as_deref(), want, "{q} x {n}");
        }
    }
}
