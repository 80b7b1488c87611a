//! The tenants `serve` knows: read from Tenant/QuotaTier manifests in a folder (the same YAML
//! as `kubectl apply`, several documents per file allowed), with their signing keys, and
//! reloaded when the files change.
//!
//! A bad file or an invalid Tenant is reported (logged with the file and field) and never takes
//! the others down; a tenant whose manifest turns invalid keeps its last valid configuration.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::auth::keys::{KeyError, Keyring, Revocations, keyring_path, revocations_path};
use crate::auth::{KeyLookup, TenantKeys};
use crate::crd::{QuotaTier, QuotaTierSpec, Tenant, TenantSpec, builtin_tier};
use crate::domain::{EffectiveQuota, Issuer, TenantId, parse_duration};
use crate::runtime::{FileStamp, watch_files};

/// Everything `serve` needs to know about one tenant.
#[derive(Clone)]
pub struct TenantConfig {
    /// Tenant id.
    pub id: TenantId,
    /// The Tenant's spec (defaults applied).
    pub spec: TenantSpec,
    /// Limits in force.
    pub quota: EffectiveQuota,
    /// Default chat model.
    pub chat_model: String,
    /// Models callers may request.
    pub allowed_models: Vec<String>,
    /// Other names for models (alias → model): the tier's `modelAliases` with the tenant's
    /// `models.aliases` over them.
    pub model_aliases: BTreeMap<String, String>,
    /// Semantic-cache time to live.
    pub cache_ttl: Duration,
    /// Token verification keys.
    pub keys: Arc<TenantKeys>,
    /// The keyring (with private keys when this process may mint tokens).
    pub keyring: Keyring,
    /// The UID the tenant's stored data is bound to (see `Tenant::data_owner`); `None`: the
    /// tenant id alone scopes it (manifests without a UID).
    pub data_owner: Option<String>,
}

impl TenantConfig {
    /// Whether `model` may be requested by this tenant's callers.
    pub fn model_allowed(&self, model: &str) -> bool {
        self.allowed_models.iter().any(|m| m == model)
    }

    /// The model that serves a request naming `model`: its alias target, or `model` itself.
    pub fn resolve_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_aliases.get(model).map_or(model, String::as_str)
    }
}

/// A problem with one manifest file or document, reported and skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProblem {
    /// File the problem is in.
    pub file: PathBuf,
    /// What is wrong.
    pub message: String,
}

/// Where signing keys come from.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// Folder of `<tenant>.json` keyrings.
    pub dir: PathBuf,
    /// Generate a keyring for a tenant that has none (embedded default). Off when keyrings
    /// are mounted read-only from Secrets.
    pub create_missing: bool,
}

#[derive(Default)]
struct State {
    tenants: HashMap<TenantId, Arc<TenantConfig>>,
    stamp: FileStamp,
    problems: Vec<LoadProblem>,
    loaded: bool,
}

/// The live set of tenants. Cheap to read from every request.
pub struct Catalog {
    dir: PathBuf,
    keys: KeySource,
    default_chat_model: String,
    /// Swapped whole on every reload, so readers never wait and never see half a load.
    state: ArcSwap<State>,
}

enum Doc {
    Tenant(Box<Tenant>),
    Tier(String, QuotaTierSpec),
}

impl Catalog {
    /// A catalog reading manifests from `dir`; call [`Catalog::reload`] to load.
    pub fn new(dir: PathBuf, keys: KeySource, default_chat_model: String) -> Self {
        Self {
            dir,
            keys,
            default_chat_model,
            state: ArcSwap::from_pointee(State::default()),
        }
    }

    /// The tenant's configuration, if it exists.
    pub fn get(&self, id: &TenantId) -> Option<Arc<TenantConfig>> {
        self.read().tenants.get(id).cloned()
    }

    /// All tenant ids, sorted.
    pub fn ids(&self) -> Vec<TenantId> {
        let mut ids: Vec<_> = self.read().tenants.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Problems found by the last load.
    pub fn problems(&self) -> Vec<LoadProblem> {
        self.read().problems.clone()
    }

    /// Whether a load has completed.
    pub fn loaded(&self) -> bool {
        self.read().loaded
    }

    fn read(&self) -> arc_swap::Guard<Arc<State>> {
        self.state.load()
    }

    /// The folders whose changes trigger a reload: the manifests and the keyrings.
    fn watched(&self) -> Vec<PathBuf> {
        vec![self.dir.clone(), self.keys.dir.clone()]
    }

    /// Reloads if any manifest or keyring changed since the last load. Returns whether it
    /// reloaded.
    pub fn reload_if_changed(&self) -> bool {
        let state = self.read();
        if state.loaded && state.stamp == FileStamp::of(&self.watched()) {
            return false;
        }
        self.reload();
        true
    }

    /// Reads every manifest and keyring again and swaps in the new tenant set.
    pub fn reload(&self) {
        let stamp = FileStamp::of(&self.watched());
        let mut problems = Vec::new();
        let docs = self.read_manifests(&mut problems);

        let mut tiers: BTreeMap<String, QuotaTierSpec> = ["free", "pro", "enterprise"]
            .iter()
            .filter_map(|n| Some((n.to_string(), builtin_tier(n)?)))
            .collect();
        let mut tenants: Vec<(PathBuf, Tenant)> = Vec::new();
        for (file, doc) in docs {
            match doc {
                Doc::Tier(name, spec) => {
                    tiers.insert(name, spec);
                }
                Doc::Tenant(t) => tenants.push((file, *t)),
            }
        }

        let previous = self.read().tenants.clone();
        let mut next: HashMap<TenantId, Arc<TenantConfig>> = HashMap::new();
        for (file, tenant) in tenants {
            let name = tenant.metadata.name.clone().unwrap_or_default();
            let problem = |message: String| LoadProblem {
                file: file.clone(),
                message: format!("Tenant {name:?}: {message}"),
            };
            let result = self.build(&tenant, &tiers);
            match result {
                Ok(cfg) => {
                    if next.contains_key(&cfg.id) {
                        problems.push(problem("defined more than once; the first wins".into()));
                        continue;
                    }
                    next.insert(cfg.id.clone(), Arc::new(cfg));
                }
                Err(message) => {
                    let kept = TenantId::parse(&name)
                        .ok()
                        .and_then(|id| Some((id.clone(), previous.get(&id)?.clone())));
                    match kept {
                        Some((id, old)) if !next.contains_key(&id) => {
                            problems.push(problem(format!(
                                "{message}; keeping its previous configuration"
                            )));
                            next.insert(id, old);
                        }
                        _ => problems.push(problem(message)),
                    }
                }
            }
        }

        for p in &problems {
            tracing::error!(file = %p.file.display(), "{}", p.message);
        }
        tracing::info!(tenants = next.len(), "tenant configuration loaded");
        self.state.store(Arc::new(State {
            tenants: next,
            stamp,
            problems,
            loaded: true,
        }));
    }

    fn read_manifests(&self, problems: &mut Vec<LoadProblem>) -> Vec<(PathBuf, Doc)> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect(),
            Err(e) => {
                problems.push(LoadProblem {
                    file: self.dir.clone(),
                    message: format!("cannot read the tenants folder: {e}"),
                });
                Vec::new()
            }
        };
        files.sort();
        let mut docs = Vec::new();
        for file in files {
            match parse_manifests(&file) {
                Ok(mut d) => docs.extend(d.drain(..).map(|d| (file.clone(), d))),
                Err(message) => problems.push(LoadProblem { file, message }),
            }
        }
        docs
    }

    fn build(
        &self,
        tenant: &Tenant,
        tiers: &BTreeMap<String, QuotaTierSpec>,
    ) -> Result<TenantConfig, String> {
        tenant.validate().map_err(|errs| {
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let id = tenant.tenant_id().map_err(|e| e.to_string())?;
        let spec = tenant.spec.clone();
        let tier = tiers
            .get(&spec.tier)
            .ok_or_else(|| format!("spec.tier: QuotaTier {:?} not found", spec.tier))?;
        let quota = EffectiveQuota::resolve(tier, spec.quota.as_ref());
        let models = spec.models.clone().unwrap_or_default();
        let chat_model = models
            .chat
            .clone()
            .unwrap_or_else(|| self.default_chat_model.clone());
        let mut allowed_models = if !models.allowed.is_empty() {
            models.allowed.clone()
        } else {
            tier.allowed_models.clone()
        };
        if !allowed_models.contains(&chat_model) {
            allowed_models.insert(0, chat_model.clone());
        }
        let mut model_aliases = tier.model_aliases.clone();
        model_aliases.extend(models.aliases.clone());
        // An alias never shadows a model the tenant may request by its own name.
        model_aliases.retain(|alias, _| !allowed_models.contains(alias));
        if let Some(problem) = crate::crd::alias_problem(&model_aliases, &allowed_models) {
            return Err(format!("model aliases: {problem}"));
        }
        let cache_ttl = parse_duration(&spec.semantic_cache.ttl)
            .ok_or_else(|| "spec.semanticCache.ttl is invalid".to_string())?;
        let keyring = self.keyring(&id, &spec).map_err(|e| e.to_string())?;
        let revoked =
            Revocations::read(&revocations_path(&self.keys.dir, &id)).map_err(|e| e.to_string())?;
        let keys = Arc::new(
            TenantKeys::from_keyring(&keyring, spec.auth.algorithm).with_revocations(revoked),
        );
        Ok(TenantConfig {
            id,
            spec,
            quota,
            chat_model,
            allowed_models,
            model_aliases,
            cache_ttl,
            keys,
            keyring,
            data_owner: tenant.data_owner(),
        })
    }

    fn keyring(&self, id: &TenantId, spec: &TenantSpec) -> Result<Keyring, KeyError> {
        let path = keyring_path(&self.keys.dir, id);
        if self.keys.create_missing {
            let (ring, written) = Keyring::load_or_create(&path, spec.auth.algorithm)?;
            if written {
                tracing::info!(tenant_id = %id, kid = %ring.current, "signing key generated");
            }
            Ok(ring)
        } else {
            Keyring::read(&path)
        }
    }

    /// Reloads whenever files change, checking every `every`, until the task is dropped.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let seen = self.read().stamp.clone();
        let paths = self.watched();
        watch_files(paths, seen, every, move || self.reload()).await;
    }
}

impl KeyLookup for Catalog {
    fn tenant_keys(&self, tenant: &TenantId) -> Option<Arc<TenantKeys>> {
        self.read().tenants.get(tenant).map(|t| t.keys.clone())
    }

    fn tenant_issuers(&self, tenant: &TenantId) -> Vec<Issuer> {
        self.read()
            .tenants
            .get(tenant)
            .map(|t| t.spec.auth.issuers.clone())
            .unwrap_or_default()
    }

    fn max_token_lifetime(&self, tenant: &TenantId) -> std::time::Duration {
        self.read()
            .tenants
            .get(tenant)
            .map(|t| t.spec.auth.max_token_lifetime())
            .unwrap_or(crate::domain::DEFAULT_MAX_TOKEN_LIFETIME)
    }

    fn issuer_tenants(&self, iss: &str) -> Vec<TenantId> {
        self.read()
            .tenants
            .values()
            .filter(|t| t.spec.auth.issuers.iter().any(|i| i.issuer == iss))
            .map(|t| t.id.clone())
            .collect()
    }
}

fn parse_manifests(file: &Path) -> Result<Vec<Doc>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let values: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| format!("invalid YAML: {e}"))?;
    let mut docs = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        if value.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        let at = format!("document {}", i + 1);
        let api_version = value.get("apiVersion").and_then(|v| v.as_str());
        let kind = value.get("kind").and_then(|v| v.as_str());
        let want = <Tenant as kube::Resource>::api_version(&());
        if api_version != Some(&*want) {
            return Err(format!(
                "{at}: apiVersion must be {want}, got {api_version:?}"
            ));
        }
        match kind {
            Some("Tenant") => {
                let t: Tenant = serde_json::from_value(value)
                    .map_err(|e| format!("{at}: invalid Tenant: {e}"))?;
                docs.push(Doc::Tenant(Box::new(t)));
            }
            Some("QuotaTier") => {
                let t: QuotaTier = serde_json::from_value(value)
                    .map_err(|e| format!("{at}: invalid QuotaTier: {e}"))?;
                let name = t.metadata.name.clone().unwrap_or_default();
                TenantId::parse(&name)
                    .map_err(|_| format!("{at}: invalid QuotaTier name {name:?}"))?;
                for (field, v) in [
                    ("dailyTokens", t.spec.daily_tokens),
                    ("requestsPerMinute", t.spec.requests_per_minute),
                    ("tokensPerMinute", t.spec.tokens_per_minute),
                    ("maxConcurrentRequests", t.spec.max_concurrent_requests),
                ] {
                    if v.is_some_and(|v| v < 0) {
                        return Err(format!(
                            "{at}: QuotaTier {name:?}: spec.{field} must be >= 0"
                        ));
                    }
                }
                docs.push(Doc::Tier(name, t.spec));
            }
            other => return Err(format!("{at}: unsupported kind {other:?}")),
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(dir: &Path) -> Catalog {
        Catalog::new(
            dir.join("tenants"),
            KeySource {
                dir: dir.join("keys"),
                create_missing: true,
            },
            "gpt-4o-mini".into(),
        )
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir.join("tenants")).expect("mkdir");
        std::fs::write(dir.join("tenants").join(name), text).expect("write");
    }

    const ACME: &str = "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {tier: gold, models: {chat: m1, allowed: [m1, m2]}}\n---\napiVersion: tenantry.dev/v1alpha1\nkind: QuotaTier\nmetadata: {name: gold}\nspec: {dailyTokens: 9, requestsPerMinute: 1, tokensPerMinute: 2, maxConcurrentRequests: 3}\n";

    /// The tier's aliases, with the tenant's over them; a tier alias naming one of the tenant's
    /// own models gives way to the model; a tenant alias shadowing one is a problem.
    #[test]
    fn model_aliases_merge_tier_and_tenant() {
        let dir = tempfile::tempdir().expect("tmp");
        write(
            dir.path(),
            "a.yaml",
            "apiVersion: tenantry.dev/v1alpha1\nkind: QuotaTier\nmetadata: {name: gold}\nspec: {modelAliases: {gpt-4o-mini: t1, gpt-4o: t2, m2: t3}}\n---\napiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {tier: gold, models: {chat: m1, allowed: [m1, m2], aliases: {gpt-4o-mini: m1}}}\n---\napiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: bad}\nspec: {tier: gold, models: {allowed: [m1], aliases: {m1: m2}}}\n",
        );
        let r = registry(dir.path());
        r.reload();
        let acme = r.get(&TenantId::parse("acme").expect("id")).expect("acme");
        assert_eq!(acme.resolve_model("gpt-4o-mini"), "m1", "the tenant's wins");
        assert_eq!(acme.resolve_model("gpt-4o"), "t2", "the tier's");
        assert_eq!(
            acme.resolve_model("m2"),
            "m2",
            "a model is never aliased away"
        );
        assert_eq!(acme.resolve_model("other"), "other");
        assert!(r.get(&TenantId::parse("bad").expect("id")).is_none());
        let problems = r.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains(crate::crd::ALIAS_SHADOW_RULE)),
            "{problems:?}"
        );
    }

    #[test]
    fn loads_tenants_tiers_and_keys() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "acme.yaml", ACME);
        write(
            dir.path(),
            "beta.yml",
            "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: beta}\nspec: {tier: free, auth: {algorithm: HS256}}\n",
        );
        let r = registry(dir.path());
        r.reload();
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        let acme = r.get(&TenantId::parse("acme").expect("id")).expect("acme");
        assert_eq!(acme.quota.daily_tokens, Some(9));
        assert_eq!(acme.chat_model, "m1");
        assert!(acme.model_allowed("m2") && !acme.model_allowed("m3"));
        let beta = r.get(&TenantId::parse("beta").expect("id")).expect("beta");
        assert_eq!(beta.quota.daily_tokens, Some(50_000));
        assert!(dir.path().join("keys/acme.json").exists());
        assert!(dir.path().join("keys/beta.json").exists());
    }

    #[test]
    fn a_revocation_list_next_to_the_keyring_refuses_its_tokens_after_a_reload() {
        use crate::auth::keys::unix_now;
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "acme.yaml", ACME);
        let r = registry(dir.path());
        r.reload();
        let id = TenantId::parse("acme").expect("id");
        let ring = r.get(&id).expect("acme").keyring.clone();
        let mint = |jti: &str| {
            ring.mint_with_id(&id, "app", 600, Some(jti.to_string()))
                .expect("mint")
                .0
        };
        let (revoked, kept) = (mint("cred-1.a"), mint("cred-2.a"));
        assert!(
            crate::auth::verify(&revoked, &r).is_ok(),
            "verified (and remembered)"
        );
        let mut list = Revocations::default();
        list.revoke("cred-1", unix_now() + 600, unix_now());
        let path = revocations_path(&dir.path().join("keys"), &id);
        std::fs::write(&path, serde_json::to_vec(&list).expect("json")).expect("write");
        assert!(r.reload_if_changed(), "the keys folder changed");
        assert_eq!(
            crate::auth::verify(&revoked, &r),
            Err(crate::auth::AuthError::Revoked),
            "refused although remembered before"
        );
        assert!(crate::auth::verify(&kept, &r).is_ok());
        // A list that cannot be read keeps the last good state and says why.
        std::fs::write(&path, "not json").expect("write");
        assert!(r.reload_if_changed());
        assert!(
            r.problems()
                .iter()
                .any(|p| format!("{p:?}").contains("revocation")),
            "{:?}",
            r.problems()
        );
        assert_eq!(
            crate::auth::verify(&revoked, &r),
            Err(crate::auth::AuthError::Revoked)
        );
    }

    #[test]
    fn a_broken_file_does_not_take_others_down_and_keeps_last_good() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "acme.yaml", ACME);
        write(
            dir.path(),
            "beta.yaml",
            "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: beta}\nspec: {tier: free}\n",
        );
        let r = registry(dir.path());
        r.reload();
        assert_eq!(r.ids().len(), 2);

        // beta becomes invalid (threshold out of range): keeps its previous config.
        write(
            dir.path(),
            "beta.yaml",
            "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: beta}\nspec: {tier: free, semanticCache: {threshold: 2}}\n",
        );
        // A new file with broken YAML and one with an unknown tier.
        write(dir.path(), "junk.yaml", "kind: [unclosed\n");
        write(
            dir.path(),
            "gamma.yaml",
            "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: gamma}\nspec: {tier: platinum}\n",
        );
        assert!(r.reload_if_changed());
        let ids: Vec<_> = r.ids().iter().map(|i| i.to_string()).collect();
        assert_eq!(ids, ["acme", "beta"]);
        let msgs: Vec<_> = r.problems().iter().map(|p| p.message.clone()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("semanticCache.threshold") && m.contains("keeping")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("invalid YAML")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("platinum")), "{msgs:?}");
        assert!(!r.reload_if_changed(), "nothing changed");
    }

    #[test]
    fn removed_file_removes_tenant() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "acme.yaml", ACME);
        let r = registry(dir.path());
        r.reload();
        std::fs::remove_file(dir.path().join("tenants/acme.yaml")).expect("rm");
        assert!(r.reload_if_changed());
        assert!(r.ids().is_empty());
    }
}
