//! The `serve` configuration of a tenant's API pods (pure): the operator's `--api-config` (or
//! the defaults) with the tenant's overrides, rendered as `serve.yaml` into the tenant's
//! ConfigMap, and its hash, which the pod template carries so that a change rolls the pods
//! (`serve` reads this file once, at start; the tenant manifest next to it is reloaded live).
use sha2::{Digest as _, Sha256};

use super::BuildError;
use crate::config::ServeConfig;
use crate::domain::EffectiveQuota;

/// Key of the rendered serve configuration in the tenant's ConfigMap.
pub const SERVE_CONFIG_KEY: &str = "serve.yaml";
/// Folder the API pods mount the serve configuration in.
pub const CONFIG_MOUNT: &str = "/etc/tenantry/config";
/// Pod-template annotation holding the sha256 of the rendered serve configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "tenantry.dev/config-hash";

/// The configuration of one tenant's pods: `base` with the tenant's per-answer token limit.
pub fn for_tenant(base: &ServeConfig, quota: &EffectiveQuota) -> ServeConfig {
    let mut config = base.clone();
    config.llm.max_tokens = quota.max_tokens_or(base.llm.max_tokens);
    config
}

/// `config` as the `serve.yaml` the pods read.
pub fn render(config: &ServeConfig, tenant: &str) -> Result<String, BuildError> {
    let yaml = serde_saphyr::to_string(config).map_err(BuildError::ServeConfig)?;
    Ok(format!(
        "# Rendered by the tenantry operator for Tenant/{tenant} from its --api-config; do not edit.\n{yaml}"
    ))
}

/// The hex sha256 of a rendered configuration.
pub fn hash(rendered: &str) -> String {
    format!("{:x}", Sha256::digest(rendered.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{QuotaOverrides, builtin_tier};

    fn quota(max_tokens: Option<i64>) -> EffectiveQuota {
        let tier = builtin_tier("pro").expect("pro");
        EffectiveQuota::resolve(
            &tier,
            Some(&QuotaOverrides {
                max_tokens,
                ..Default::default()
            }),
        )
    }

    #[test]
    fn the_tenants_max_tokens_replace_the_configured_ones() {
        let mut base = ServeConfig::default();
        base.llm.max_tokens = 300;
        base.limits.max_question_chars = 123;
        assert_eq!(for_tenant(&base, &quota(None)).llm.max_tokens, 300);
        let mine = for_tenant(&base, &quota(Some(2048)));
        assert_eq!(mine.llm.max_tokens, 2048);
        assert_eq!(mine.limits.max_question_chars, 123, "the rest is the base");
    }

    #[test]
    fn the_rendered_file_loads_in_serve_as_it_was_built() {
        let mut base = ServeConfig::default();
        base.quota.fail_mode = crate::quota::FailMode::FailOpen;
        base.vector.quantization = crate::vector::qdrant::Quantization::Scalar;
        let config = for_tenant(&base, &quota(Some(77)));
        let text = render(&config, "acme").expect("rendered");
        assert!(text.starts_with("# Rendered by the tenantry operator for Tenant/acme"));
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join(SERVE_CONFIG_KEY);
        std::fs::write(&path, &text).expect("write");
        assert_eq!(ServeConfig::load(&path, true).expect("loads"), config);
    }

    #[test]
    fn the_hash_follows_the_content() {
        let a = render(&ServeConfig::default(), "acme").expect("a");
        let b = render(
            &for_tenant(&ServeConfig::default(), &quota(Some(9))),
            "acme",
        )
        .expect("b");
        assert_eq!(hash(&a), hash(&a.clone()));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a).len(), 64);
    }
}
