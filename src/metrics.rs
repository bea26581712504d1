//! The broker's Prometheus registry and series (SPEC §8).

use atb_actors::ActorMetrics;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Label value for requests not attributable to a configured tenant.
pub const NO_TENANT: &str = "none";

/// Every series the broker exports. Label values are bounded: tenants come
/// from configuration, codes and statuses from fixed sets.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `status` is `ok` (2xx/3xx), `denied` (4xx) or `error` (5xx).
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    /// Rejections by their JSON error code.
    pub rejections: IntCounterVec,
    pub tenant_connections: IntGaugeVec,
    pub connections_refused: IntCounterVec,
    /// Requests of a tenant inside the broker now (`max_in_flight` bounds it).
    pub tenant_in_flight: IntGaugeVec,
    /// Requests refused because the tenant had `max_in_flight` inside.
    pub tenant_in_flight_refused: IntCounterVec,
    /// Connections whose certificate claims a tenant's SPIFFE ID but does
    /// not chain to that tenant's client CA bundle.
    pub wrong_issuer: IntCounterVec,
    /// 1 while a tenant is suspended through the admin API.
    pub tenant_suspended: IntGaugeVec,
    /// 1 for a connector that opted out of route binding (`routes = "any"`).
    pub connector_unbound: IntGaugeVec,
    /// Mandate checks by `result` (`valid`, `invalid`, `expired`, …).
    pub poa_validations: IntCounterVec,
    pub policy_seconds: HistogramVec,
    pub policy_decisions: IntCounterVec,
    /// Requests that got no decision, by engine and cause (`unreachable`,
    /// `timeout`, `engine`, `bad_decision`, `overloaded`).
    pub policy_errors: IntCounterVec,
    /// Policy reloads by `result` (`changed`, `unchanged`, `error`).
    pub policy_reloads: IntCounterVec,
    /// Configuration reloads by `result` (`changed`, `unchanged`, `error`).
    pub config_reloads: IntCounterVec,
    pub replay_rejections: IntCounterVec,
    pub replay_entries: IntGauge,
    pub upstream_requests: IntCounterVec,
    pub upstream_seconds: HistogramVec,
    pub audit_events: IntCounterVec,
    pub audit_writer: crate::audit::AuditWriterMetrics,
    pub jwks: crate::poa::jwks::JwksMetrics,
    /// `atb_dependency_up{dependency, tenant}` (registered with the audit
    /// writer's series): `opa` (decisions, failing `/ready` probes),
    /// `audit_sink` (the writer), `jwks` per tenant (fetches),
    /// `upstream:<connector>` per tenant (forwards), `redis` (read from the
    /// store at every scrape and `/ready`).
    pub dependency_up: prometheus::IntGaugeVec,
    pub actors: ActorMetrics,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "atb_requests_total",
                "Agent requests handled, by tenant and status class",
            ),
            &["tenant", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "atb_request_duration_seconds",
                "Time from request arrival to response headers",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["tenant"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "atb_rejections_total",
                "Requests refused, by tenant and error code",
            ),
            &["tenant", "code"],
        )?;
        let tenant_in_flight = IntGaugeVec::new(
            Opts::new(
                "atb_tenant_in_flight",
                "Requests of a tenant inside the broker now (bounded by its max_in_flight)",
            ),
            &["tenant"],
        )?;
        let tenant_in_flight_refused = IntCounterVec::new(
            Opts::new(
                "atb_tenant_in_flight_refused_total",
                "Requests refused with 503 overloaded: the tenant had max_in_flight requests inside",
            ),
            &["tenant"],
        )?;
        let tenant_connections = IntGaugeVec::new(
            Opts::new("atb_tenant_connections", "Live mTLS connections per tenant"),
            &["tenant"],
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "atb_tenant_connections_refused_total",
                "Connections over a tenant's connection limit",
            ),
            &["tenant"],
        )?;
        let wrong_issuer = IntCounterVec::new(
            Opts::new(
                "atb_tenant_wrong_issuer_total",
                "Client certificates with a tenant's SPIFFE ID that do not chain to the tenant's client CA bundle (refused)",
            ),
            &["tenant"],
        )?;
        let tenant_suspended = IntGaugeVec::new(
            Opts::new(
                "atb_tenant_suspended",
                "1 while the tenant is suspended (requests refused, connections closed)",
            ),
            &["tenant"],
        )?;
        let connector_unbound = IntGaugeVec::new(
            Opts::new(
                "atb_connector_unbound",
                "1 for a connector whose routes are \"any\": its mandates are not bound to method and path",
            ),
            &["tenant", "connector"],
        )?;
        registry.register(Box::new(connector_unbound.clone()))?;
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<HistogramVec> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(vec![
                        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5,
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let poa_validations = counter(
            "atb_poa_validations_total",
            "Credential checks (PoA JWT or Biscuit), by tenant, result and format",
            &["tenant", "result", "format"],
        )?;
        let policy_seconds = histogram(
            "atb_policy_evaluation_seconds",
            "Time to obtain a policy decision",
            &["engine"],
        )?;
        let policy_decisions = counter(
            "atb_policy_decisions_total",
            "Policy decisions, by tenant, decision and risk tier",
            &["tenant", "decision", "risk_tier"],
        )?;
        let policy_errors = counter(
            "atb_policy_errors_total",
            "Requests refused with policy_unavailable, by engine and cause",
            &["engine", "cause"],
        )?;
        let policy_reloads = counter(
            "atb_policy_reloads_total",
            "Policy reloads (changed, unchanged, error: the running policy stays)",
            &["result"],
        )?;
        let config_reloads = counter(
            "atb_config_reloads_total",
            "Configuration reloads (changed, unchanged, error: the running tenants stay)",
            &["result"],
        )?;
        let replay_rejections = counter(
            "atb_replay_rejections_total",
            "Mandates refused by the replay check (replay, full, unavailable)",
            &["tenant", "cause"],
        )?;
        let replay_entries = IntGauge::new(
            "atb_replay_cache_entries",
            "Entries held by the in-memory replay cache",
        )?;
        registry.register(Box::new(replay_entries.clone()))?;
        let upstream_requests = counter(
            "atb_upstream_requests_total",
            "Requests forwarded to connectors, by outcome (2xx, 4xx, 5xx, timeout, error, body_too_large)",
            &["tenant", "connector", "status"],
        )?;
        let upstream_seconds = histogram(
            "atb_upstream_duration_seconds",
            "Time until a connector's response headers",
            &["tenant", "connector"],
        )?;
        let audit_events = counter(
            "atb_audit_events_total",
            "Audit events recorded, by decision",
            &["decision"],
        )?;
        let actors = ActorMetrics::register(&registry)?;
        let audit_writer = crate::audit::AuditWriterMetrics::register(&registry, &actors)?;
        let jwks_keys = IntGaugeVec::new(
            Opts::new("atb_jwks_keys", "Ed25519 keys from a tenant's JWKS"),
            &["tenant"],
        )?;
        registry.register(Box::new(jwks_keys.clone()))?;
        let jwks = crate::poa::jwks::JwksMetrics {
            refreshes: counter(
                "atb_jwks_refreshes_total",
                "JWKS fetches, by tenant and result",
                &["tenant", "result"],
            )?,
            keys: jwks_keys,
            up: audit_writer.dependency_up.clone(),
            last_success: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "atb_jwks_last_success_timestamp_seconds",
                        "Unix time of a tenant's last good JWKS fetch (its keys serve until \
                         poa.jwks_stale_seconds after it)",
                    ),
                    &["tenant"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
        };
        let dependency_up = audit_writer.dependency_up.clone();
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(tenant_connections.clone()))?;
        registry.register(Box::new(tenant_in_flight.clone()))?;
        registry.register(Box::new(tenant_in_flight_refused.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(wrong_issuer.clone()))?;
        registry.register(Box::new(tenant_suspended.clone()))?;
        // `atb_allocations_total` & co.: only in a build with the counting
        // allocator (`crate::alloc_count`), and only if it is installed.
        if cfg!(feature = "count-allocations") && crate::alloc_count::active() {
            registry.register(Box::new(crate::alloc_count::Collector::new()?))?;
        }
        Ok(Self {
            registry,
            requests,
            request_duration,
            rejections,
            tenant_connections,
            tenant_in_flight,
            tenant_in_flight_refused,
            connections_refused,
            wrong_issuer,
            tenant_suspended,
            connector_unbound,
            poa_validations,
            policy_seconds,
            policy_decisions,
            policy_errors,
            policy_reloads,
            config_reloads,
            replay_rejections,
            replay_entries,
            upstream_requests,
            upstream_seconds,
            audit_events,
            audit_writer,
            jwks,
            dependency_up,
            actors,
        })
    }

    /// Every `atb_dependency_up` series: `(dependency, tenant, value)`.
    fn dependency_series(&self) -> Vec<(String, String, f64)> {
        use prometheus::core::Collector;
        let mut out = Vec::new();
        for family in self.dependency_up.collect() {
            for m in family.get_metric() {
                let label = |n: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == n)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                out.push((
                    label("dependency"),
                    label("tenant"),
                    m.get_gauge().get_value(),
                ));
            }
        }
        out
    }

    /// Drops the `atb_dependency_up` series of tenant dependencies `keep`
    /// refuses, given `(dependency, tenant)` (a reload removed the tenant
    /// or its connector): a removed dependency must not stay "failing" in
    /// `/ready` and alerts forever. Process-wide series (no tenant) stay.
    pub fn forget_dependencies(&self, keep: impl Fn(&str, &str) -> bool) {
        for (dep, tenant, _) in self.dependency_series() {
            if !tenant.is_empty() && !keep(&dep, &tenant) {
                let _ = self.dependency_up.remove_label_values(&[&dep, &tenant]);
            }
        }
    }

    /// The dependencies whose last call failed, as `dependency` or
    /// `dependency:tenant` (for `/ready`).
    pub fn failing_dependencies(&self) -> Vec<String> {
        let mut down: Vec<String> = self
            .dependency_series()
            .into_iter()
            .filter(|(_, _, up)| *up == 0.0)
            .map(|(dep, tenant, _)| {
                if tenant.is_empty() {
                    dep
                } else {
                    format!("{dep}:{tenant}")
                }
            })
            .collect();
        down.sort();
        down
    }

    /// Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The `status` label for an HTTP status code.
pub fn status_class(code: u16) -> &'static str {
    match code {
        500.. => "error",
        400..=499 => "denied",
        _ => "ok",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_series() {
        let m = Metrics::new().unwrap();
        m.requests.with_label_values(&["acme", "error"]).inc();
        m.actors
            .restarts
            .with_label_values(&["tenant_shard", "0"])
            .inc();
        let text = m.render();
        assert!(text.contains("atb_requests_total{status=\"error\",tenant=\"acme\"} 1"));
        assert!(text.contains("atb_actor_restarts_total{actor=\"tenant_shard\",shard=\"0\"} 1"));
    }

    #[test]
    fn forgotten_dependencies_leave_the_failing_list() {
        let m = Metrics::new().unwrap();
        let down = |dep: &str, tenant: &str| {
            m.dependency_up.with_label_values(&[dep, tenant]).set(0);
        };
        down("jwks", "gone");
        down("upstream:crm", "acme");
        down("upstream:old", "acme");
        down("opa", "");
        m.forget_dependencies(|dep, tenant| tenant == "acme" && dep != "upstream:old");
        assert_eq!(
            m.failing_dependencies(),
            ["opa", "upstream:crm:acme"].map(String::from)
        );
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "ok");
        assert_eq!(status_class(302), "ok");
        assert_eq!(status_class(403), "denied");
        assert_eq!(status_class(429), "denied");
        assert_eq!(status_class(502), "error");
    }
}
