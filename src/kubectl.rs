//! `tenantry kubectl` (the kubectl plugin `kubectl tenantry`): tenants in a cluster through
//! the user's kubeconfig. `status` and `rotate` read and annotate Tenants; `token` signs with
//! the tenant's key from its signing-key Secret; `usage` asks the tenant's API for its
//! counters (`GET /v1/usage`, with a short-lived token minted the same way), since neither the
//! Tenant's status nor the operator knows them: the API pods count usage (in Redis or in
//! memory) and the operator only resolves the limits (`status.effectiveQuota`).
//!
//! Output is plain aligned tables, like kubectl's.
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt as _};
use serde_json::{Value, json};

use crate::auth::keys::{Keyring, mint_checked};
use crate::cli::{KubeArgs, KubectlArgs, KubectlCommand};
use crate::crd::{Condition, ROTATE_ANNOTATION, Tenant, condition, reason};
use crate::domain::{EffectiveQuota, TenantId};

/// Key of the keyring in the operator's signing-key Secret.
pub const KEYRING_KEY: &str = crate::controller::build::KEYRING_KEY;
/// Subject of the tokens `usage` mints to read a tenant's usage.
pub const USAGE_SUBJECT: &str = "kubectl-tenantry";
/// Validity of those tokens.
const USAGE_TOKEN_TTL: Duration = Duration::from_secs(60);
/// How long `usage` waits for a tenant's API.
const USAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one `tenantry kubectl` command, printing its result on stdout.
pub async fn run(args: KubectlArgs) -> anyhow::Result<()> {
    let client = client(&args.kube).await?;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let now = Timestamp::now();
    let namespace = args.kube.namespace.as_deref();
    match args.command {
        KubectlCommand::Status { tenant: Some(name) } => {
            let t = get_tenant(&tenants, &name, namespace).await?;
            print!("{}", describe(&t, now));
        }
        KubectlCommand::Status { tenant: None } => {
            let list = list_tenants(&tenants, namespace).await?;
            print!("{}", status_table(&list, now));
        }
        KubectlCommand::Usage { tenant, all, url } => {
            let list = match tenant {
                Some(name) if !all => vec![get_tenant(&tenants, &name, namespace).await?],
                _ => list_tenants(&tenants, namespace).await?,
            };
            let http = reqwest::Client::builder()
                .timeout(USAGE_TIMEOUT)
                .connect_timeout(USAGE_TIMEOUT)
                .build()
                .context("cannot build an HTTP client")?;
            let mut rows = Vec::new();
            for t in &list {
                let read = read_usage(&client, &http, t, url.as_deref()).await;
                if let Err(e) = &read {
                    eprintln!("{}: {}", t.name_any(), usage_hint(t, e));
                }
                rows.push((t, read.ok()));
            }
            print!("{}", usage_table(&rows));
        }
        KubectlCommand::Token {
            tenant,
            subject,
            ttl,
        } => {
            let t = get_tenant(&tenants, &tenant, namespace).await?;
            println!("{}", mint(&client, &t, &subject, ttl).await?);
        }
        KubectlCommand::Rotate { tenant } => {
            let t = get_tenant(&tenants, &tenant, namespace).await?;
            println!("{}", rotate(&tenants, &t, now).await?);
        }
    }
    Ok(())
}

/// A client for the kubeconfig and context of `args`, as kubectl would pick them.
async fn client(args: &KubeArgs) -> anyhow::Result<Client> {
    crate::install_crypto_provider();
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &options).await?
        }
        (None, Some(context)) => Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("cannot use kubeconfig context {context:?}"))?,
        (None, None) => Config::infer()
            .await
            .context("no kubeconfig (KUBECONFIG, ~/.kube/config) and not in a cluster")?,
    };
    Client::try_from(config).context("cannot build a Kubernetes client")
}

/// Tenant `name`; with `--namespace`, only if its API runs in that namespace.
async fn get_tenant(
    api: &Api<Tenant>,
    name: &str,
    namespace: Option<&str>,
) -> anyhow::Result<Tenant> {
    let t = api
        .get_opt(name)
        .await
        .with_context(|| format!("cannot read Tenant {name}"))?
        .ok_or_else(|| anyhow!("Tenant {name} not found"))?;
    if let Some(ns) = namespace
        && tenant_namespace(&t) != Some(ns)
    {
        bail!(
            "Tenant {name} is not the tenant of namespace {ns} (its namespace is {})",
            tenant_namespace(&t).unwrap_or("not known yet")
        );
    }
    Ok(t)
}

/// Every Tenant, by name; with `--namespace`, only the one whose API runs there.
async fn list_tenants(api: &Api<Tenant>, namespace: Option<&str>) -> anyhow::Result<Vec<Tenant>> {
    let mut list = api
        .list(&Default::default())
        .await
        .context("cannot list Tenants")?
        .items;
    if let Some(ns) = namespace {
        list.retain(|t| tenant_namespace(t) == Some(ns));
    }
    list.sort_by_key(|t| t.name_any());
    Ok(list)
}

fn tenant_namespace(t: &Tenant) -> Option<&str> {
    t.status.as_ref()?.namespace.as_deref()
}

/// Where a tenant stands, in the names of the operator's `tenantry_tenants{phase}`:
/// `Ready`, `NotReady`, `Invalid`, `Suspended`, or `Pending` before its first status.
pub fn phase(t: &Tenant) -> &'static str {
    let conditions = t.status.as_ref().map(|s| s.conditions.as_slice());
    let Some(ready) = conditions.and_then(|c| c.iter().find(|c| c.type_ == condition::READY))
    else {
        return "Pending";
    };
    let stalled = conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == condition::STALLED && c.status == "True");
    if t.spec.suspend {
        "Suspended"
    } else if stalled
        || [reason::INVALID_SPEC, reason::TIER_NOT_FOUND].contains(&ready.reason.as_str())
    {
        "Invalid"
    } else if ready.status == "True" {
        "Ready"
    } else {
        "NotReady"
    }
}

/// An RFC 3339 time's age at `now`, the way kubectl prints ages (`45s`, `7m`, `5h`, `3d`);
/// `<unknown>` when unset or unreadable.
pub fn age(at: Option<&str>, now: Timestamp) -> String {
    let Some(t) = at.and_then(|s| s.parse::<Timestamp>().ok()) else {
        return "<unknown>".to_string();
    };
    human_duration(now.as_second().saturating_sub(t.as_second()))
}

/// kubectl's `HumanDuration`, to the second.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match s {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        },
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        },
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => match h % 24 {
            0 => format!("{d}d"),
            r => format!("{d}d{r}h"),
        },
        _ if d < 365 * 2 => format!("{d}d"),
        _ => format!("{}y{}d", d / 365, d % 365),
    }
}

/// Rows as kubectl prints tables: columns left-aligned, three spaces apart, no trailing
/// blanks.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(v: Option<&str>) -> String {
    v.filter(|v| !v.is_empty()).unwrap_or("-").to_string()
}

/// `status` without a tenant: one line per tenant.
pub fn status_table(tenants: &[Tenant], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            let s = t.status.clone().unwrap_or_default();
            let ready = s.conditions.iter().find(|c| c.type_ == condition::READY);
            vec![
                t.name_any(),
                phase(t).to_string(),
                t.spec.tier.clone(),
                or_dash(ready.map(|c| c.reason.as_str())),
                or_dash(s.current_key_id.as_deref()),
                or_dash(s.endpoint.as_deref()),
                age(
                    t.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|c| c.0.to_string())
                        .as_deref(),
                    now,
                ),
            ]
        })
        .collect();
    table(
        &["NAME", "PHASE", "TIER", "REASON", "KEY", "ENDPOINT", "AGE"],
        &rows,
    )
}

/// `status TENANT`: its phase, endpoint, key, and every condition.
pub fn describe(t: &Tenant, now: Timestamp) -> String {
    let s = t.status.clone().unwrap_or_default();
    let key = match (&s.current_key_id, &s.key_created_at) {
        (Some(kid), Some(at)) => format!("{kid} (created {at}, {} ago)", age(Some(at), now)),
        (Some(kid), None) => kid.clone(),
        (None, _) => "-".to_string(),
    };
    let fields = [
        ("Name", t.name_any()),
        ("Phase", phase(t).to_string()),
        ("Tier", t.spec.tier.clone()),
        ("Endpoint", or_dash(s.endpoint.as_deref())),
        ("Namespace", or_dash(s.namespace.as_deref())),
        ("Key ID", key),
        ("Next rotation", or_dash(s.next_rotation_at.as_deref())),
        ("Replicas", or_dash(s.replicas.as_deref())),
    ];
    let mut out = String::new();
    for (name, value) in fields {
        out.push_str(&format!("{:<15}{value}\n", format!("{name}:")));
    }
    out.push_str("\nConditions:\n");
    let rows: Vec<Vec<String>> = s
        .conditions
        .iter()
        .map(|c: &Condition| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                or_dash(Some(&c.reason)),
                age(c.last_transition_time.as_deref(), now),
                or_dash(Some(&c.message)),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("  none yet (has the operator seen this Tenant?)\n");
    } else {
        for line in table(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], &rows).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The tenant's keyring, from the signing-key Secret its status names.
async fn keyring(client: &Client, t: &Tenant) -> anyhow::Result<Keyring> {
    let name = t.name_any();
    let status = t.status.clone().unwrap_or_default();
    let (Some(ns), Some(secret)) = (status.namespace, status.signing_secret) else {
        bail!(
            "Tenant {name} has no signing key yet (status.namespace / status.signingSecret unset): is the operator running?"
        );
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let s = secrets
        .get(&secret)
        .await
        .with_context(|| format!("cannot read Secret {ns}/{secret} (the tenant's signing key)"))?;
    let raw = s
        .data
        .as_ref()
        .and_then(|d| d.get(KEYRING_KEY))
        .ok_or_else(|| anyhow!("Secret {ns}/{secret} holds no {KEYRING_KEY}"))?;
    let ring: Keyring = serde_json::from_slice(&raw.0)
        // serde's message may quote the input: say only where it failed.
        .map_err(|e| {
            anyhow!(
                "Secret {ns}/{secret}: {KEYRING_KEY} is not a keyring (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
    if !ring.can_sign() {
        bail!(
            "Secret {ns}/{secret}: the current key {} cannot sign (no private key)",
            ring.current
        );
    }
    Ok(ring)
}

/// A token for `subject` in tenant `t`, valid `ttl`, signed with its current key.
async fn mint(client: &Client, t: &Tenant, subject: &str, ttl: Duration) -> anyhow::Result<String> {
    let id = TenantId::parse(&t.name_any())?;
    let ring = keyring(client, t).await?;
    mint_checked(&ring, &id, subject, ttl, t.spec.auth.max_token_lifetime()).map_err(|e| anyhow!(e))
}

/// Sets the rotate-key annotation to a new value; returns what happened.
async fn rotate(api: &Api<Tenant>, t: &Tenant, now: Timestamp) -> anyhow::Result<String> {
    let name = t.name_any();
    let previous = t.annotations().get(ROTATE_ANNOTATION).cloned();
    let mut value = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    if previous.as_deref() == Some(value.as_str()) {
        // Twice in one second: still a new value.
        value = format!("{value}-{}", now.subsec_nanosecond());
    }
    let patch = json!({"metadata": {"annotations": {ROTATE_ANNOTATION: value}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("cannot annotate Tenant {name}"))?;
    let kid = t
        .status
        .as_ref()
        .and_then(|s| s.current_key_id.as_deref())
        .unwrap_or("-");
    Ok(format!(
        "tenant/{name} annotated {ROTATE_ANNOTATION}={value} (was {}): the operator makes a new \
         signing key current at its next reconcile (current key: {kid}); tokens of the previous \
         key keep verifying for one rotation period",
        previous.as_deref().unwrap_or("unset")
    ))
}

/// What a tenant's `GET /v1/usage` answered.
#[derive(Debug, Clone)]
pub struct Usage {
    /// The answer (`tokens_today`, `limits`, `storage`, ...).
    pub body: Value,
}

/// Why a tenant's usage could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// No endpoint in the status and no `--url`.
    #[error("no endpoint yet (status.endpoint unset)")]
    NoEndpoint,
    /// The signing key could not be read or used.
    #[error("{0}")]
    Token(anyhow::Error),
    /// The API could not be reached or refused.
    #[error("GET {url}: {reason}")]
    Http {
        /// The usage URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// The usage of tenant `t`, from its API at `url` (else its `status.endpoint`).
async fn read_usage(
    client: &Client,
    http: &reqwest::Client,
    t: &Tenant,
    url: Option<&str>,
) -> Result<Usage, UsageError> {
    let base = url
        .map(str::to_string)
        .or_else(|| t.status.as_ref()?.endpoint.clone())
        .ok_or(UsageError::NoEndpoint)?;
    let url = format!("{}/v1/usage", base.trim_end_matches('/'));
    let token = mint(client, t, USAGE_SUBJECT, USAGE_TOKEN_TTL)
        .await
        .map_err(UsageError::Token)?;
    let http_err = |reason: String| UsageError::Http {
        url: url.clone(),
        reason,
    };
    let resp = http
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| http_err(error_chain(&e)))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| http_err(format!("{status}: not JSON: {e}")))?;
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or_default();
        return Err(http_err(format!("{status}: {message}")));
    }
    Ok(Usage { body })
}

/// An error with its sources (reqwest's own message hides the cause, e.g. DNS).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The message of a usage read that failed, with what to do about an in-cluster endpoint.
fn usage_hint(t: &Tenant, e: &UsageError) -> String {
    let in_cluster = t
        .status
        .as_ref()
        .and_then(|s| s.endpoint.as_deref())
        .is_some_and(|u| u.contains(".svc"));
    match (e, in_cluster, tenant_namespace(t)) {
        (UsageError::Http { .. }, true, Some(ns)) => format!(
            "usage unavailable ({e}); the endpoint is in-cluster: run `kubectl port-forward -n {ns} svc/{}-api 8000:80` and `kubectl tenantry usage {} --url http://127.0.0.1:8000`",
            t.name_any(),
            t.name_any()
        ),
        _ => format!("usage unavailable ({e})"),
    }
}

/// A count, or `-` for no limit.
fn count(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// `used/limit` (limit `-` when unset), or `?/limit` when the usage is unknown.
fn used_of(used: Option<i64>, limit: Option<i64>) -> String {
    format!(
        "{}/{}",
        used.map_or_else(|| "?".to_string(), |n| n.to_string()),
        count(limit)
    )
}

/// The usage table: per tenant, tokens today against the daily limit, and the minute and
/// storage limits. Limits come from the API's answer when there is one (what it enforces),
/// else from the Tenant's `status.effectiveQuota`.
pub fn usage_table(rows: &[(&Tenant, Option<Usage>)]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(t, usage)| {
            let status = t.status.as_ref().and_then(|s| s.effective_quota.as_ref());
            let of = |f: fn(&EffectiveQuota) -> Option<i64>| status.and_then(f);
            let body = usage.as_ref().map(|u| &u.body);
            let num = |v: &Value| v.as_i64();
            let limit = |key: &str, fallback: Option<i64>| match body {
                Some(b) => num(&b["limits"][key]),
                None => fallback,
            };
            let daily = limit("daily_tokens", of(|q| q.daily_tokens));
            let today = body.and_then(|b| num(&b["tokens_today"]));
            let used_pct = match (today, daily) {
                (Some(u), Some(d)) if d > 0 => format!("{}%", u.saturating_mul(100) / d),
                (Some(_), _) => "-".to_string(),
                (None, _) => "?".to_string(),
            };
            let remaining = match (today, daily) {
                (Some(u), Some(d)) => (d - u).max(0).to_string(),
                (None, Some(_)) => "?".to_string(),
                (_, None) => "-".to_string(),
            };
            let storage = body.map(|b| &b["storage"]);
            vec![
                t.name_any(),
                today.map_or_else(|| "?".to_string(), |n| n.to_string()),
                count(daily),
                remaining,
                used_pct,
                used_of(
                    body.and_then(|b| num(&b["requests_this_minute"])),
                    limit("requests_per_minute", of(|q| q.requests_per_minute)),
                ),
                used_of(
                    body.and_then(|b| num(&b["tokens_this_minute"])),
                    limit("tokens_per_minute", of(|q| q.tokens_per_minute)),
                ),
                used_of(
                    storage.and_then(|s| num(&s["documents"])),
                    match storage {
                        Some(s) => num(&s["max_documents"]),
                        None => of(|q| q.max_documents),
                    },
                ),
                used_of(
                    storage.and_then(|s| num(&s["bytes"])),
                    match storage {
                        Some(s) => num(&s["max_stored_bytes"]),
                        None => of(|q| q.max_stored_bytes),
                    },
                ),
            ]
        })
        .collect();
    table(
        &[
            "TENANT",
            "TOKENS-TODAY",
            "DAILY-LIMIT",
            "REMAINING",
            "USED",
            "REQUESTS/MIN",
            "TOKENS/MIN",
            "DOCUMENTS",
            "BYTES",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(v: Value) -> Tenant {
        serde_json::from_value(v).expect("tenant")
    }

    #[test]
    fn ages_read_like_kubectl() {
        for (secs, want) in [
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (900, "15m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (3 * 86400 + 3600, "3d1h"),
            (30 * 86400, "30d"),
            (800 * 86400, "2y70d"),
            (-5, "0s"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
        let now: Timestamp = "2026-12-03T10:00:00Z".parse().expect("ts");
        assert_eq!(age(Some("2026-12-03T09:55:00Z"), now), "5m");
        assert_eq!(age(Some("not a time"), now), "<unknown>");
        assert_eq!(age(None, now), "<unknown>");
    }

    #[test]
    fn tables_align_columns_three_spaces_apart() {
        let t = table(
            &["NAME", "PHASE"],
            &[
                vec!["a".into(), "Ready".into()],
                vec!["longer-name".into(), "NotReady".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME          PHASE\na             Ready\nlonger-name   NotReady\n"
        );
    }

    #[test]
    fn phases_follow_the_operators_names() {
        let with = |suspend: bool, conditions: Value| {
            tenant(json!({
                "apiVersion": "tenantry.dev/v1alpha1", "kind": "Tenant",
                "metadata": {"name": "acme"},
                "spec": {"tier": "pro", "suspend": suspend},
                "status": {"conditions": conditions},
            }))
        };
        let ready = |status: &str, reason: &str| json!([{"type": "Ready", "status": status, "reason": reason}]);
        assert_eq!(phase(&with(false, json!([]))), "Pending");
        assert_eq!(phase(&with(false, ready("True", "Reconciled"))), "Ready");
        assert_eq!(
            phase(&with(false, ready("False", "ApiNotReady"))),
            "NotReady"
        );
        assert_eq!(
            phase(&with(false, ready("False", "TierNotFound"))),
            "Invalid"
        );
        assert_eq!(phase(&with(true, ready("False", "Suspended"))), "Suspended");
        let stalled = json!([{"type": "Ready", "status": "False", "reason": "X"},
                             {"type": "Stalled", "status": "True", "reason": "X"}]);
        assert_eq!(phase(&with(false, stalled)), "Invalid");
    }

    #[test]
    fn the_usage_table_shows_unknown_usage_against_the_status_limits() {
        let t = tenant(json!({
            "apiVersion": "tenantry.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme"},
            "spec": {"tier": "pro"},
            "status": {"effectiveQuota": {"dailyTokens": 1000, "requestsPerMinute": 60}},
        }));
        let known = Usage {
            body: json!({"tokens_today": 250, "requests_this_minute": 2, "tokens_this_minute": 250,
                "limits": {"daily_tokens": 1000, "requests_per_minute": 60, "tokens_per_minute": null},
                "storage": {"documents": 3, "bytes": 120, "max_documents": 10, "max_stored_bytes": null}}),
        };
        let text = usage_table(&[(&t, Some(known)), (&t, None)]);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[1],
            [
                "acme", "250", "1000", "750", "25%", "2/60", "250/-", "3/10", "120/-"
            ]
        );
        assert_eq!(
            lines[2],
            ["acme", "?", "1000", "?", "?", "?/60", "?/-", "?/-", "?/-"]
        );
    }
}
