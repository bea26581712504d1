//! AgentAuth metrics and audit events.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use serde::Serialize;

use crate::audit::AuditRecord;

pub struct AgentAuthMetrics {
    registry: Registry,
    /// `atb_agentauth_requests_total{route,status}`.
    pub requests: IntCounterVec,
    /// `atb_agentauth_request_duration_seconds{route}`.
    pub duration: HistogramVec,
    /// `atb_agentauth_events_total{event,outcome}`: every audited outcome.
    pub events: IntCounterVec,
    /// `atb_agentauth_refusals_total{route,code}`.
    pub refusals: IntCounterVec,
    /// `atb_agentauth_challenges_open`: challenges held.
    pub challenges_open: IntGauge,
    /// `atb_agentauth_signing_keys{state}`: 1 per key loaded.
    pub signing_keys: IntGaugeVec,
    /// `atb_agentauth_key_reloads_total{result}`.
    pub key_reloads: IntCounterVec,
    /// `atb_agentauth_broker_notifications_total{result}`: brokers told
    /// of a key change (ok, error).
    pub broker_notifications: IntCounterVec,
    /// `atb_audit_events_total{outcome}`.
    pub audit_events: IntCounterVec,
    pub audit_writer: crate::audit::AuditWriterMetrics,
    /// `atb_actor_*{actor,shard}`: AgentAuth's timer loops.
    pub actors: atb_actors::ActorMetrics,
}

impl AgentAuthMetrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "atb_agentauth_requests_total",
                "AgentAuth requests by route and status class",
            ),
            &["route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "atb_agentauth_request_duration_seconds",
                "AgentAuth request handling time",
            )
            .buckets(vec![
                0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["route"],
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "atb_agentauth_events_total",
                "Challenge lifecycle events by outcome (ok, refused, error)",
            ),
            &["event", "outcome"],
        )?;
        let refusals = IntCounterVec::new(
            Opts::new(
                "atb_agentauth_refusals_total",
                "Refused AgentAuth requests by route and error code",
            ),
            &["route", "code"],
        )?;
        let challenges_open = IntGauge::new(
            "atb_agentauth_challenges_open",
            "Challenges held (pending or finished, until swept)",
        )?;
        let signing_keys = IntGaugeVec::new(
            Opts::new(
                "atb_agentauth_signing_keys",
                "Signing keys loaded, by state (active, next, previous, revoked)",
            ),
            &["state"],
        )?;
        let key_reloads = IntCounterVec::new(
            Opts::new(
                "atb_agentauth_key_reloads_total",
                "Key directory reloads by result (ok, error)",
            ),
            &["result"],
        )?;
        let audit_events = IntCounterVec::new(
            Opts::new("atb_audit_events_total", "Audit events written, by outcome"),
            &["outcome"],
        )?;
        let broker_notifications = IntCounterVec::new(
            Opts::new(
                "atb_agentauth_broker_notifications_total",
                "Brokers told of a signing key change, by result (ok, error)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(broker_notifications.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(refusals.clone()))?;
        registry.register(Box::new(challenges_open.clone()))?;
        registry.register(Box::new(signing_keys.clone()))?;
        registry.register(Box::new(key_reloads.clone()))?;
        registry.register(Box::new(audit_events.clone()))?;
        let actors = atb_actors::ActorMetrics::register(&registry)?;
        let audit_writer = crate::audit::AuditWriterMetrics::register(&registry, &actors)?;
        Ok(Self {
            registry,
            requests,
            duration,
            events,
            refusals,
            challenges_open,
            signing_keys,
            key_reloads,
            broker_notifications,
            audit_events,
            audit_writer,
            actors,
        })
    }

    /// The registry AgentAuth's `/metrics` renders (the shared-state
    /// store registers its `atb_redis_*` series here).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// One audited AgentAuth event (every success and every failure).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentAuthEvent {
    pub ts: String,
    /// `challenge.created`, `challenge.approved`, `challenge.rejected`,
    /// `challenge.read`, `approvals.listed`, `mandate.minted`,
    /// `challenge.expired`, `keys.reloaded`.
    pub event: &'static str,
    /// `ok`, `refused` or `error`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub challenge_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub agent: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub approver: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub action: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub risk_tier: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals_needed: Option<usize>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub jti: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kid: String,
    /// The mandate's format (`jwt`, `biscuit`) on `mandate.minted`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub format: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub code: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// The answer's HTTP status (0 for background events).
    pub status: u16,
}

impl AuditRecord for AgentAuthEvent {
    fn metric_label(&self) -> &'static str {
        self.outcome
    }
    fn share_key(&self) -> &str {
        &self.tenant
    }
}
