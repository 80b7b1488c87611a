//! Prometheus metrics of the chat API, served on the metrics port, under the names dashboards of
//! the Python LangChain pattern already use: `llm_requests_total`, `llm_request_latency_seconds`,
//! `llm_tokens_total`.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `llm_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The tenant served.
    pub tenant_id: String,
    /// Model that answered (or was asked for).
    pub model: String,
    /// `success` or `error`.
    pub status: String,
}

/// Labels of `llm_request_latency_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The tenant served.
    pub tenant_id: String,
    /// Model that answered (or was asked for).
    pub model: String,
}

/// Labels of `llm_tokens_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The tenant served.
    pub tenant_id: String,
    /// Model that answered (or was asked for).
    pub model: String,
    /// `prompt` or `completion`.
    pub r#type: String,
}

/// Labels of `llm_rate_limited_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    /// The tenant served.
    pub tenant_id: String,
    /// The limit hit: `daily_tokens`, `requests_per_minute`, `tokens_per_minute`,
    /// `concurrent_requests`.
    pub limit: String,
}

/// Labels of per-tenant counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// The tenant served.
    pub tenant_id: String,
}

/// Labels of `tenantry_upstream_circuit_open`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The upstream: `primary`, `fallback-1`, ... (`llm.fallbacks` in order).
    pub upstream: String,
}

/// Every metric family of `serve`, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// `llm_requests_total{tenant_id,model,status}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `llm_request_latency_seconds{tenant_id,model}`.
    pub latency: Family<ModelLabels, Histogram>,
    /// `llm_tokens_total{tenant_id,model,type}`.
    pub tokens: Family<TokenLabels, Counter>,
    /// `llm_rate_limited_total{tenant_id,limit}`: requests refused with 429.
    pub rate_limited: Family<RateLimitLabels, Counter>,
    /// `quota_fail_open_total{tenant_id}`: requests served unmetered because the quota store
    /// was unreachable (`failOpen`).
    pub quota_fail_open: Family<TenantLabels, Counter>,
    /// `quota_unreserved_tokens_total{tenant_id}`: tokens upstreams reported beyond the
    /// reservations of their requests (not charged to the budgets; counted here).
    pub unreserved_tokens: Family<TenantLabels, Counter>,
    /// `llm_gateway_overhead_seconds{tenant_id}`: time a chat request spent in tenantry,
    /// excluding the upstream model call.
    pub gateway_overhead: Family<TenantLabels, Histogram>,
    /// `llm_cache_hits_total{tenant_id}`: chat requests answered from the semantic cache.
    pub cache_hits: Family<TenantLabels, Counter>,
    /// `llm_cache_misses_total{tenant_id}`: chat requests the semantic cache could not answer.
    pub cache_misses: Family<TenantLabels, Counter>,
    /// `llm_time_to_first_token_seconds{tenant_id,model}`: time from a streamed call's start
    /// to its first output.
    pub time_to_first_token: Family<ModelLabels, Histogram>,
    /// `quota_daily_tokens_remaining{tenant_id}`: tokens left of the tenant's daily budget, as
    /// of the last reservation, refusal or usage read (tenants without a daily limit have none).
    pub daily_tokens_remaining: Family<TenantLabels, Gauge>,
    /// `quota_daily_tokens_limit{tenant_id}`: the daily budget those are left of.
    pub daily_tokens_limit: Family<TenantLabels, Gauge>,
    /// `tenantry_upstream_circuit_open{upstream}`: 1 while the upstream's circuit breaker is
    /// open (calls fail fast or wait for the one trial call), else 0. Not per tenant: the
    /// upstreams, and their breakers, are the process's (`tenantry_`, unlike the per-tenant
    /// `llm_` families).
    pub upstream_circuit_open: Family<UpstreamLabels, Gauge>,
}

/// The seed's latency buckets (seconds).
pub const LATENCY_BUCKETS: [f64; 7] = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// Buckets of `llm_time_to_first_token_seconds` (50 ms to 30 s).
pub const FIRST_TOKEN_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0];

/// Buckets of `llm_gateway_overhead_seconds` (0.5 ms to 0.5 s).
pub const OVERHEAD_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("llm_requests", "Total LLM requests", requests.clone());
        let latency = Family::<ModelLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        registry.register(
            "llm_request_latency_seconds",
            "LLM request latency",
            latency.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register("llm_tokens", "Total tokens used", tokens.clone());
        let rate_limited = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "llm_rate_limited",
            "Requests refused by a quota or rate limit",
            rate_limited.clone(),
        );
        let unreserved_tokens = Family::<TenantLabels, Counter>::default();
        registry.register(
            "quota_unreserved_tokens",
            "Tokens upstreams reported beyond the reservations of their requests (not charged)",
            unreserved_tokens.clone(),
        );
        let quota_fail_open = Family::<TenantLabels, Counter>::default();
        registry.register(
            "quota_fail_open",
            "Requests served unmetered because the quota store was unreachable",
            quota_fail_open.clone(),
        );
        let gateway_overhead = Family::<TenantLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(OVERHEAD_BUCKETS)) as fn() -> Histogram,
        );
        registry.register(
            "llm_gateway_overhead_seconds",
            "Time a chat request spent in tenantry, excluding the upstream model call",
            gateway_overhead.clone(),
        );
        let cache_hits = Family::<TenantLabels, Counter>::default();
        registry.register(
            "llm_cache_hits",
            "Chat requests answered from the semantic cache",
            cache_hits.clone(),
        );
        let cache_misses = Family::<TenantLabels, Counter>::default();
        registry.register(
            "llm_cache_misses",
            "Chat requests the semantic cache could not answer",
            cache_misses.clone(),
        );
        let time_to_first_token = Family::<ModelLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(FIRST_TOKEN_BUCKETS)) as fn() -> Histogram,
        );
        registry.register(
            "llm_time_to_first_token_seconds",
            "Time from a streamed model call's start to its first output",
            time_to_first_token.clone(),
        );
        let daily_tokens_remaining = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "quota_daily_tokens_remaining",
            "Tokens left of the tenant's daily budget, as of its last reservation, refusal or usage read",
            daily_tokens_remaining.clone(),
        );
        let daily_tokens_limit = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "quota_daily_tokens_limit",
            "The tenant's daily token budget (with quota_daily_tokens_remaining)",
            daily_tokens_limit.clone(),
        );
        let upstream_circuit_open = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "tenantry_upstream_circuit_open",
            "1 while the upstream's circuit breaker is open, else 0",
            upstream_circuit_open.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            tokens,
            rate_limited,
            quota_fail_open,
            unreserved_tokens,
            gateway_overhead,
            cache_hits,
            cache_misses,
            time_to_first_token,
            daily_tokens_remaining,
            daily_tokens_limit,
            upstream_circuit_open,
        }
    }
}

impl Metrics {
    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a request refused by `limit`.
    pub fn record_rate_limited(&self, tenant: &str, limit: &str) {
        self.rate_limited
            .get_or_create(&RateLimitLabels {
                tenant_id: tenant.to_string(),
                limit: limit.to_string(),
            })
            .inc();
    }

    /// Counts a request served unmetered (quota store down, `failOpen`).
    pub fn record_fail_open(&self, tenant: &str) {
        self.quota_fail_open
            .get_or_create(&TenantLabels {
                tenant_id: tenant.to_string(),
            })
            .inc();
    }

    /// Counts `tokens` an upstream reported beyond a request's reservation.
    pub fn record_unreserved(&self, tenant: &str, tokens: u64) {
        self.unreserved_tokens
            .get_or_create(&TenantLabels {
                tenant_id: tenant.to_string(),
            })
            .inc_by(tokens);
    }

    /// Records the gateway overhead of one chat request.
    pub fn record_overhead(&self, tenant: &str, seconds: f64) {
        self.gateway_overhead
            .get_or_create(&TenantLabels {
                tenant_id: tenant.to_string(),
            })
            .observe(seconds);
    }

    /// Records the time to the first output of a streamed call.
    pub fn record_first_token(&self, tenant: &str, model: &str, seconds: f64) {
        self.time_to_first_token
            .get_or_create(&ModelLabels {
                tenant_id: tenant.to_string(),
                model: model.to_string(),
            })
            .observe(seconds);
    }

    /// Sets what is left of `tenant`'s daily token budget and the budget, from the status of
    /// its limits (without a daily limit among them: no series).
    pub fn record_daily_remaining(&self, tenant: &str, statuses: &[crate::quota::LimitStatus]) {
        let labels = TenantLabels {
            tenant_id: tenant.to_string(),
        };
        match statuses
            .iter()
            .find(|s| s.limit == crate::quota::Limit::DailyTokens)
        {
            Some(s) => {
                let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                self.daily_tokens_remaining
                    .get_or_create(&labels)
                    .set(gauge(s.remaining));
                self.daily_tokens_limit
                    .get_or_create(&labels)
                    .set(gauge(s.max));
            }
            None => {
                self.daily_tokens_remaining.remove(&labels);
                self.daily_tokens_limit.remove(&labels);
            }
        }
    }

    /// Sets the state of `upstream`'s circuit breaker.
    pub fn record_circuit(&self, upstream: &str, open: bool) {
        self.upstream_circuit_open
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_string(),
            })
            .set(i64::from(open));
    }

    /// Counts a semantic-cache hit (`true`) or miss (`false`).
    pub fn record_cache(&self, tenant: &str, hit: bool) {
        let family = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        family
            .get_or_create(&TenantLabels {
                tenant_id: tenant.to_string(),
            })
            .inc();
    }

    /// Records one finished model request: its count by status, its latency and its tokens.
    pub fn record(&self, r: &RequestRecord<'_>) {
        self.requests
            .get_or_create(&RequestLabels {
                tenant_id: r.tenant_id.to_string(),
                model: r.model.to_string(),
                status: r.status.as_str().to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&ModelLabels {
                tenant_id: r.tenant_id.to_string(),
                model: r.model.to_string(),
            })
            .observe(r.seconds);
        for (kind, n) in [
            ("prompt", r.prompt_tokens),
            ("completion", r.completion_tokens),
        ] {
            self.tokens
                .get_or_create(&TokenLabels {
                    tenant_id: r.tenant_id.to_string(),
                    model: r.model.to_string(),
                    r#type: kind.to_string(),
                })
                .inc_by(n);
        }
    }
}

/// How a model request ended, the `status` label of `llm_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    /// Answered (a cache hit included).
    Success,
    /// Failed, or ended before the answer was complete.
    Error,
}

impl RequestStatus {
    /// The label value: `success` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
        }
    }
}

/// One finished model request (chat or embeddings), as [`Metrics::record`] counts it.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord<'a> {
    /// Tenant served.
    pub tenant_id: &'a str,
    /// Model that answered (or was asked for, when none did).
    pub model: &'a str,
    /// Whether it answered.
    pub status: RequestStatus,
    /// Time from the call to its end.
    pub seconds: f64,
    /// Prompt tokens used.
    pub prompt_tokens: u64,
    /// Completion tokens used.
    pub completion_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_seed() {
        let m = Metrics::default();
        m.record(&RequestRecord {
            tenant_id: "acme",
            model: "gpt-4o-mini",
            status: RequestStatus::Success,
            seconds: 0.3,
            prompt_tokens: 10,
            completion_tokens: 5,
        });
        m.record_rate_limited("acme", "daily_tokens");
        m.record_fail_open("acme");
        m.record_overhead("acme", 0.002);
        m.record_cache("acme", true);
        m.record_cache("acme", false);
        m.record_cache("acme", false);
        m.record_first_token("acme", "gpt-4o-mini", 0.3);
        m.record_circuit("primary", true);
        m.record_circuit("fallback-1", false);
        let status = |limit, remaining| crate::quota::LimitStatus {
            limit,
            max: 1000,
            remaining,
            reset_seconds: 1,
        };
        m.record_daily_remaining("acme", &[status(crate::quota::Limit::DailyTokens, 750)]);
        m.record_daily_remaining("solo", &[status(crate::quota::Limit::DailyTokens, 5)]);
        // A tenant whose daily limit went away loses its series.
        m.record_daily_remaining("solo", &[status(crate::quota::Limit::RequestsPerMinute, 5)]);
        let text = m.encode();
        assert!(!text.contains(r#"tenant_id="solo""#), "{text}");
        for needle in [
            r#"llm_requests_total{tenant_id="acme",model="gpt-4o-mini",status="success"} 1"#,
            r#"llm_request_latency_seconds_bucket{le="0.5",tenant_id="acme",model="gpt-4o-mini"} 1"#,
            r#"llm_tokens_total{tenant_id="acme",model="gpt-4o-mini",type="prompt"} 10"#,
            r#"llm_tokens_total{tenant_id="acme",model="gpt-4o-mini",type="completion"} 5"#,
            r#"llm_rate_limited_total{tenant_id="acme",limit="daily_tokens"} 1"#,
            r#"quota_fail_open_total{tenant_id="acme"} 1"#,
            r#"llm_cache_hits_total{tenant_id="acme"} 1"#,
            r#"llm_cache_misses_total{tenant_id="acme"} 2"#,
            r#"llm_gateway_overhead_seconds_bucket{le="0.0025",tenant_id="acme"} 1"#,
            r#"llm_gateway_overhead_seconds_bucket{le="0.001",tenant_id="acme"} 0"#,
            r#"llm_time_to_first_token_seconds_bucket{le="0.25",tenant_id="acme",model="gpt-4o-mini"} 0"#,
            r#"llm_time_to_first_token_seconds_bucket{le="0.5",tenant_id="acme",model="gpt-4o-mini"} 1"#,
            r#"quota_daily_tokens_remaining{tenant_id="acme"} 750"#,
            r#"quota_daily_tokens_limit{tenant_id="acme"} 1000"#,
            r#"tenantry_upstream_circuit_open{upstream="primary"} 1"#,
            r#"tenantry_upstream_circuit_open{upstream="fallback-1"} 0"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
