//! One request's context on the agent listener: what the pipeline's steps
//! learn, in order, and the request's record, which emits the metrics, the
//! log line and the audit event exactly once when the request ends —
//! answered, failed by a panic, or dropped unanswered
//! ([`crate::audit::guard`]).
//!
//! - Every step has the signature `async fn(&mut RequestCtx) -> Step`; what
//!   a step needs from an earlier one it reads here, never as a parameter.
//! - A field an earlier step should have set and did not is an internal
//!   error (500), never a panic.
//! - Test-only fault injection (`debug.fault_injection`): a request naming
//!   a step in `X-ATB-Debug-Panic` panics when that step starts.

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::{Map, Value};
use tracing_actix_web::RequestId;

use crate::audit::guard::{Ending, RecordOnDrop, RequestRecord};
use crate::audit::{decision_for, now_rfc3339, AuditEvent, AuditSink, FORWARD_EVENT};
use crate::broker::state::BrokerState;
use crate::broker::tenants::TenantSet;
use crate::credential::Credential;
use crate::error::Rejection;
use crate::metrics::{status_class, NO_TENANT};
use crate::tenant::ConnectorConfig;
use crate::tenant::Tenant;

/// What every step returns.
pub type Step = Result<(), Rejection>;

/// The test-only header naming the step that should panic.
const DEBUG_PANIC: &str = "x-atb-debug-panic";

/// What the route binding decided: the action the call carries out and
/// the route it matched (none on an unbound connector).
#[derive(Debug, Default)]
pub struct Routed {
    pub action: String,
    pub template: Option<Arc<str>>,
    pub params: Map<String, Value>,
}

/// A request on its way through the pipeline.
pub struct RequestCtx<'a> {
    pub state: &'a BrokerState,
    /// The calling worker's HTTP client (connectors, JWKS, OPA).
    pub client: &'a awc::Client,
    pub req: &'a HttpRequest,
    /// The body, until a step reads it or the forward streams it.
    pub payload: Option<web::Payload>,
    /// Metrics, log line and audit event, emitted once when it closes.
    pub log: RecordOnDrop<BrokerLog<'a>>,
    /// The tenants as configured when the request arrived (a reload
    /// meanwhile does not change them under it).
    pub tenants: Arc<TenantSet>,
    // Learnt by the steps, in pipeline order.
    pub tenant: Option<Tenant>,
    pub tenant_key: Option<Arc<str>>,
    /// The verified credential; `None` on the unmandated low-risk path.
    pub credential: Option<Credential>,
    /// Index of the chosen connector in the tenant's `connectors`.
    pub connector: Option<usize>,
    /// The canonical request path (`routes::path`).
    pub path: String,
    pub routed: Routed,
    /// Whether the shared admission script already counted this request.
    pub usage_counted: bool,
    /// Uses of the action this hour (the policy's `rate_limit_state`).
    pub usage: u64,
    /// The verified subject of the platform token (`platform.sub`).
    pub platform_sub: Option<String>,
    /// `request.params`, and a JSON body already read for the policy.
    pub params: Map<String, Value>,
    pub buffered: Option<web::Bytes>,
    pub response: Option<HttpResponse>,
    /// The tenant's in-flight slot, held until the context is dropped.
    pub in_flight: Option<crate::broker::tenant_in_flight::InFlightSlot>,
}

impl<'a> RequestCtx<'a> {
    pub fn new(
        state: &'a BrokerState,
        client: &'a awc::Client,
        req: &'a HttpRequest,
        payload: web::Payload,
    ) -> Self {
        state
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|id| id.to_string())
            .unwrap_or_default();
        Self {
            state,
            client,
            req,
            payload: Some(payload),
            log: RecordOnDrop::new(BrokerLog {
                state,
                started: Instant::now(),
                request_id,
                method: req.method().to_string(),
                path: req.path().to_owned(),
                step: "",
                tenant: None,
                agent: String::new(),
                action: String::new(),
                jti: String::new(),
                format: "",
                risk_tier: String::new(),
                connector: String::new(),
                route: String::new(),
                reason: String::new(),
            }),
            tenants: state.tenants.load_full(),
            tenant: None,
            tenant_key: None,
            credential: None,
            connector: None,
            path: String::new(),
            routed: Routed::default(),
            usage: 0,
            usage_counted: false,
            platform_sub: None,
            params: Map::new(),
            buffered: None,
            response: None,
            in_flight: None,
        }
    }

    /// Marks `step` as running (named by an aborted request's audit line);
    /// with fault injection on, panics where the request asks.
    pub fn enter(&mut self, step: &'static str) {
        self.log.step = step;
        if self.state.config.debug.fault_injection
            && self
                .req
                .headers()
                .get(DEBUG_PANIC)
                .is_some_and(|v| v.as_bytes() == step.as_bytes())
        {
            panic!("fault injected in pipeline step {step}");
        }
    }

    pub fn tenant(&self) -> Result<&Tenant, Rejection> {
        self.tenant.as_ref().ok_or_else(|| out_of_order("tenant"))
    }

    pub fn tenant_key(&self) -> Result<&Arc<str>, Rejection> {
        self.tenant_key
            .as_ref()
            .ok_or_else(|| out_of_order("tenant key"))
    }

    /// The connector `egress` chose, in `tenant` (a clone of
    /// [`Self::tenant`], so the caller may go on mutating the context).
    pub fn connector_in<'t>(&self, tenant: &'t Tenant) -> Result<&'t ConnectorConfig, Rejection> {
        self.connector
            .and_then(|i| tenant.connectors.get(i))
            .ok_or_else(|| out_of_order("connector"))
    }

    /// Counts a mandate check by result.
    pub fn count_validation(&self, result: &str) {
        if let Some(t) = &self.tenant {
            let format = match self.log.format {
                "" => "none",
                f => f,
            };
            self.state
                .metrics
                .poa_validations
                .with_label_values(&[&t.id, result, format])
                .inc();
        }
    }

    /// The request id (also in `X-Request-ID`).
    pub fn request_id(&self) -> &str {
        &self.log.request_id
    }
}

fn out_of_order(what: &str) -> Rejection {
    tracing::error!(missing = what, "pipeline step ran before the step it needs");
    Rejection::internal_error()
}

/// What is recorded about a request: the audit event's fields, filled in
/// by the steps, plus what the metrics and the log line need.
pub struct BrokerLog<'a> {
    state: &'a BrokerState,
    started: Instant,
    pub request_id: String,
    method: String,
    /// As received.
    path: String,
    /// The step running (or the last one that ran).
    pub step: &'static str,
    /// The tenant's id, once resolved (the only tenant metric label).
    pub tenant: Option<Tenant>,
    pub agent: String,
    pub action: String,
    pub jti: String,
    /// The credential's format: `jwt`, `biscuit`, or `""` without one.
    pub format: &'static str,
    pub risk_tier: String,
    pub connector: String,
    pub route: String,
    pub reason: String,
}

impl BrokerLog<'_> {
    /// The durable record of an `audit_required` tenant's request about to
    /// be forwarded (`event` "forward", `status` 0: not answered yet); the
    /// request's `decision` record follows with the same `request_id`.
    pub fn forward_event(&self) -> AuditEvent {
        let tenant = self.tenant.as_ref().map_or(NO_TENANT, |t| t.id.as_str());
        AuditEvent {
            ts: now_rfc3339(),
            event: FORWARD_EVENT,
            request_id: self.request_id.clone(),
            tenant: tenant.to_owned(),
            agent: self.agent.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            action: self.action.clone(),
            jti: self.jti.clone(),
            format: self.format,
            decision: "allow",
            status: 0,
            code: "",
            reason: "forwarding".into(),
            risk_tier: self.risk_tier.clone(),
            connector: self.connector.clone(),
            route: self.route.clone(),
            latency_us: self.started.elapsed().as_micros() as u64,
            outcome: "forwarding",
        }
    }
}

impl RequestRecord for BrokerLog<'_> {
    type Event = AuditEvent;

    fn sink(&self) -> &AuditSink<AuditEvent> {
        &self.state.audit
    }

    fn close(&mut self, ending: Ending) -> AuditEvent {
        let tenant = self.tenant.as_ref().map_or(NO_TENANT, |t| t.id.as_str());
        let status = ending.status();
        let code = match ending {
            Ending::Answered { code, .. } => code,
            Ending::Panicked => "internal_error",
            Ending::Dropped => "aborted",
        };
        let reason = match ending {
            Ending::Answered { .. } if code.is_empty() && self.reason.is_empty() => "allow".into(),
            Ending::Answered { .. } => std::mem::take(&mut self.reason),
            Ending::Panicked => format!("step {} panicked; refused", self.step),
            Ending::Dropped => format!("dropped in step {} before an answer", self.step),
        };
        let elapsed = self.started.elapsed();
        let m = &self.state.metrics;
        if !code.is_empty() {
            m.rejections.with_label_values(&[tenant, code]).inc();
        }
        m.requests
            .with_label_values(&[tenant, status_class(status)])
            .inc();
        m.request_duration
            .with_label_values(&[tenant])
            .observe(elapsed.as_secs_f64());
        // A shed's line is sampled (`broker::shed_log`); its audit line and
        // metrics are not.
        let suppressed = if crate::broker::shed_log::is_shed(code) {
            let second = crate::runtime::clock::unix_now();
            self.state.shed_log.admit(tenant, code, second)
        } else {
            Some(0)
        };
        if let Some(suppressed) = suppressed {
            tracing::info!(
                tenant,
                method = %self.method,
                path = %self.path,
                status,
                error = code,
                outcome = ending.outcome(),
                latency_us = elapsed.as_micros() as u64,
                request_id = %self.request_id,
                suppressed,
                "request"
            );
        }
        AuditEvent {
            ts: now_rfc3339(),
            event: "decision",
            request_id: std::mem::take(&mut self.request_id),
            tenant: tenant.to_owned(),
            agent: std::mem::take(&mut self.agent),
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            action: std::mem::take(&mut self.action),
            jti: std::mem::take(&mut self.jti),
            format: self.format,
            decision: decision_for(status),
            status,
            code,
            reason,
            risk_tier: std::mem::take(&mut self.risk_tier),
            connector: std::mem::take(&mut self.connector),
            route: std::mem::take(&mut self.route),
            latency_us: elapsed.as_micros() as u64,
            outcome: ending.outcome(),
        }
    }
}

impl Drop for BrokerLog<'_> {
    /// Runs after the record was closed and its event queued (the guard's
    /// own `drop` comes first), so a shutdown that waits for no request to
    /// be in flight flushes every request's event.
    fn drop(&mut self) {
        self.state
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}
