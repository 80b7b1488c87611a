//! What the operator remembers between reconciles so that a steady tenant costs few API calls:
//! which objects it applied (a hash of the desired object and the resourceVersion the API
//! server returned), what its watches last saw of them, and the QuotaTiers it looked up.
//!
//! An apply is skipped only when the desired object hashes the same as at the last apply
//! *and* the watch has since reported exactly the resourceVersion that apply returned: any
//! change by someone else (an edit, a delete — a watch's DELETED event carries a new
//! resourceVersion) reports another version, so the object is applied again and repaired.
//! Kinds the operator does not watch (Secrets, RoleBindings) are never skipped.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Resource;
use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crd::QuotaTierSpec;

/// `(kind, namespace, name)` of an object.
type Key = (String, String, String);

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> Option<Key> {
    let meta = obj.meta();
    Some((
        K::kind(&()).into_owned(),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone()?,
    ))
}

/// Digest of the desired form of an object (its JSON serialisation).
pub fn digest<K: Serialize>(obj: &K) -> [u8; 32] {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    Sha256::digest(bytes).into()
}

/// The applied objects and what the watches saw of them.
#[derive(Default)]
pub struct ApplyCache {
    /// Digest of the desired object and the resourceVersion of the last apply.
    applied: Mutex<HashMap<Key, ([u8; 32], String)>>,
    /// resourceVersion of each object in its latest watch event.
    observed: Mutex<HashMap<Key, String>>,
}

impl ApplyCache {
    /// Records a watch event of `obj` (called by the watch mappers). Returns whether it is
    /// news: `false` when it is the echo of the operator's own last apply of the object (the
    /// version that apply returned), which needs no reconcile.
    pub fn observe<K: Resource<DynamicType = ()>>(&self, obj: &K) -> bool {
        let (Some(key), Some(rv)) = (key(obj), obj.meta().resource_version.clone()) else {
            return true;
        };
        let echo = self
            .applied
            .lock()
            .get(&key)
            .is_some_and(|(_, applied)| *applied == rv);
        self.observed.lock().insert(key, rv);
        !echo
    }

    /// Records that a read found no `K` named `name` in `namespace` (for kinds that are read,
    /// not watched): the next apply of it is not skipped.
    pub fn absent<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) {
        let key = (
            K::kind(&()).into_owned(),
            namespace.to_string(),
            name.to_string(),
        );
        self.observed.lock().remove(&key);
    }

    /// Whether the `K` named `name` in `namespace` is, as far as the watch (or the last read)
    /// reports, the version the operator's last apply returned: it exists, and nobody changed
    /// it since (its owner included), so reading it again tells nothing new.
    pub fn current<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) -> bool {
        let key = (
            K::kind(&()).into_owned(),
            namespace.to_string(),
            name.to_string(),
        );
        let applied = self.applied.lock();
        applied
            .get(&key)
            .is_some_and(|(_, rv)| self.observed.lock().get(&key) == Some(rv))
    }

    /// Whether `desired` (digest `digest`) is what was last applied and the object has not
    /// changed since, as far as the watch reports.
    pub fn unchanged<K: Resource<DynamicType = ()>>(&self, desired: &K, digest: &[u8; 32]) -> bool {
        let Some(key) = key(desired) else {
            return false;
        };
        let applied = self.applied.lock();
        let Some((d, rv)) = applied.get(&key) else {
            return false;
        };
        d == digest && self.observed.lock().get(&key) == Some(rv)
    }

    /// Records that `desired` (digest `digest`) was applied and the server answered `stored`.
    pub fn applied<K: Resource<DynamicType = ()>>(&self, stored: &K, digest: [u8; 32]) {
        let (Some(key), Some(rv)) = (key(stored), stored.meta().resource_version.clone()) else {
            return;
        };
        self.applied.lock().insert(key, (digest, rv));
    }

    /// Forgets the objects in `namespace` (the tenant is gone).
    pub fn forget_namespace(&self, namespace: &str) {
        let keep = |k: &Key| k.1 != namespace && !(k.0 == "Namespace" && k.2 == namespace);
        self.applied.lock().retain(|k, _| keep(k));
        self.observed.lock().retain(|k, _| keep(k));
    }
}

/// How long a looked-up QuotaTier is used without a watch event before it is read again (a
/// tier deleted while the watch was down sends no event).
const TIER_TTL: Duration = Duration::from_secs(60);

type TierCell = Arc<tokio::sync::OnceCell<(Instant, Option<QuotaTierSpec>)>>;

/// QuotaTiers by name, read once for all the tenants that use them (instead of a GET per
/// reconcile) and dropped on every watch event of the tier, so the reconciles that event
/// triggers read the new spec.
#[derive(Default)]
pub struct TierCache {
    tiers: Mutex<HashMap<String, TierCell>>,
}

impl TierCache {
    /// Drops what is known of tier `name` (a watch event: it changed, appeared or went).
    pub fn invalidate(&self, name: &str) {
        self.tiers.lock().remove(name);
    }

    /// The spec of tier `name` (`None`: no such object), read by `fetch` once per change; one
    /// read serves all concurrent callers.
    pub async fn get<E, F, Fut>(&self, name: &str, fetch: F) -> Result<Option<QuotaTierSpec>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<QuotaTierSpec>, E>>,
    {
        let cell = {
            let mut tiers = self.tiers.lock();
            let cell = tiers.entry(name.to_string()).or_default();
            if cell.get().is_some_and(|(at, _)| at.elapsed() > TIER_TTL) {
                *cell = TierCell::default();
            }
            cell.clone()
        };
        let (_, spec) = cell
            .get_or_try_init(|| async { Ok((Instant::now(), fetch().await?)) })
            .await?;
        Ok(spec.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn map(rv: &str, data: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("c".into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()).filter(|r: &String| !r.is_empty()),
                ..Default::default()
            },
            data: Some([("k".to_string(), data.to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn skips_only_what_the_watch_shows_untouched_since_the_apply() {
        let cache = ApplyCache::default();
        let desired = map("", "a");
        let d = digest(&desired);
        assert!(!cache.unchanged(&desired, &d), "never applied");
        cache.applied(&map("5", "a"), d);
        assert!(
            !cache.unchanged(&desired, &d),
            "the watch has not confirmed it"
        );
        cache.observe(&map("5", "a"));
        assert!(cache.unchanged(&desired, &d));
        let other = map("", "b");
        assert!(!cache.unchanged(&other, &digest(&other)), "desired changed");
        cache.observe(&map("6", "edited"));
        assert!(!cache.unchanged(&desired, &d), "changed by someone else");
        cache.forget_namespace("ns");
        assert!(!cache.unchanged(&desired, &d));
    }

    #[test]
    fn an_object_is_current_while_the_watch_shows_the_applied_version() {
        let cache = ApplyCache::default();
        assert!(!cache.current::<ConfigMap>("ns", "c"), "never applied");
        let desired = map("", "a");
        cache.applied(&map("5", "a"), digest(&desired));
        assert!(!cache.current::<ConfigMap>("ns", "c"), "not yet confirmed");
        cache.observe(&map("5", "a"));
        assert!(cache.current::<ConfigMap>("ns", "c"));
        assert!(!cache.current::<ConfigMap>("ns", "other"));
        cache.absent::<ConfigMap>("ns", "c");
        assert!(!cache.current::<ConfigMap>("ns", "c"), "read as missing");
        assert!(
            !cache.unchanged(&desired, &digest(&desired)),
            "re-applied once missing"
        );
        cache.observe(&map("5", "a"));
        cache.observe(&map("7", "edited"));
        assert!(!cache.current::<ConfigMap>("ns", "c"), "edited");
    }

    #[test]
    fn the_echo_of_the_operators_own_apply_is_no_news() {
        let cache = ApplyCache::default();
        assert!(cache.observe(&map("4", "a")), "never applied: news");
        let desired = map("", "a");
        cache.applied(&map("5", "a"), digest(&desired));
        assert!(!cache.observe(&map("5", "a")), "the apply's own version");
        assert!(
            cache.observe(&map("6", "a")),
            "a later version (status, an edit)"
        );
        assert!(cache.observe(&map("", "a")), "no version: news");
    }

    #[tokio::test]
    async fn a_tier_is_read_once_until_its_watch_event() {
        let cache = TierCache::default();
        let reads = std::sync::atomic::AtomicUsize::new(0);
        let fetch = || async {
            reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(None)
        };
        for _ in 0..3 {
            assert_eq!(cache.get("pro", fetch).await, Ok(None));
        }
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 1);
        cache.invalidate("pro");
        assert_eq!(cache.get("pro", fetch).await, Ok(None));
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
