//! The agent-facing pipeline on the mTLS listener, one step after another
//! (SPEC §3). Each step either passes or ends the request with its own
//! rejection; nothing after a failed step runs, and every request ends in
//! exactly one audit event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use atb_actors::CallError;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tracing_actix_web::RequestId;

use crate::admission::{Admission, ShardRequest};
use crate::audit::{decision_for, now_rfc3339, AuditEvent};
use crate::broker::state::BrokerState;
use crate::connection::{ConnectionSlot, PeerConnection};
use crate::error::Rejection;
use crate::metrics::{status_class, NO_TENANT};
use crate::poa::claims::PoaClaims;
use crate::poa::presented::presented_token;
use crate::poa::{claims, is_action_name, token, PoaError, MAX_ACTION_LEN};
use crate::replay::{unix_now, Verdict};
use crate::routes::pinned::PinnedCall;
use crate::routes::{self, Binding};
use crate::tenant::Tenant;
use crate::upstream::{self, Body, Stamp, UpstreamError};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_ATB_ACTION: &str = "x-atb-action";

/// Headers some frameworks take as the real method: an agent could turn a
/// POST its route allows into a DELETE the upstream performs.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The parameter form frameworks take as the real method (query string or
/// JSON body).
const METHOD_OVERRIDE_PARAM: &str = "_method";

/// The HTTP client of one worker (awc clients are per thread), pooling
/// connections to connectors and OPA.
pub struct Outbound {
    pub client: awc::Client,
}

impl Outbound {
    pub fn new(tls: &openssl::ssl::SslConnector, connect_timeout: Duration) -> Self {
        Self {
            client: crate::tls::http_client(tls, connect_timeout),
        }
    }
}

/// Routes of the mTLS listener.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .default_service(web::to(handle));
}

/// Liveness on the agent port; needs no client certificate.
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// What the pipeline learnt, for metrics and the audit event.
#[derive(Default)]
struct Trail {
    tenant: Option<Tenant>,
    agent: String,
    action: String,
    jti: String,
    risk_tier: String,
    connector: String,
    route: String,
    reason: String,
}

/// Every protected request.
async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<BrokerState>,
    outbound: web::Data<Outbound>,
) -> HttpResponse {
    let started = Instant::now();
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let mut trail = Trail::default();
    let mut payload = Some(payload);
    let outcome = pipeline(
        &req,
        &mut payload,
        &state,
        &outbound.client,
        &request_id,
        &mut trail,
    )
    .await;
    // A refused request whose body was never read: read it (bounded) so
    // the client sees the answer rather than a reset stream.
    if let (Err(_), Some(p)) = (&outcome, payload.as_mut()) {
        crate::drain::drain(p).await;
    }
    let tenant_label = trail.tenant.as_ref().map_or(NO_TENANT, |t| t.id.as_str());
    let (mut response, code) = match outcome {
        Ok(response) => (response, ""),
        Err(rejection) => {
            state
                .metrics
                .rejections
                .with_label_values(&[tenant_label, rejection.code])
                .inc();
            trail.reason = rejection.reason.to_string();
            (rejection.to_response(&request_id), rejection.code)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID, v);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let m = &state.metrics;
    m.requests
        .with_label_values(&[tenant_label, status_class(status)])
        .inc();
    m.request_duration
        .with_label_values(&[tenant_label])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        tenant = tenant_label,
        method = %req.method(),
        path = req.path(),
        status,
        error = code,
        latency_us = elapsed.as_micros() as u64,
        "request"
    );
    state
        .audit
        .record(AuditEvent {
            ts: now_rfc3339(),
            event: "decision",
            request_id,
            tenant: tenant_label.to_owned(),
            agent: trail.agent,
            method: req.method().to_string(),
            path: req.path().to_owned(),
            action: trail.action,
            jti: trail.jti,
            decision: decision_for(status),
            status,
            code,
            reason: if code.is_empty() && trail.reason.is_empty() {
                "allow".into()
            } else {
                trail.reason
            },
            risk_tier: trail.risk_tier,
            connector: trail.connector,
            route: trail.route,
            latency_us: elapsed.as_micros() as u64,
        })
        .await;
    response
}

async fn pipeline(
    req: &HttpRequest,
    payload: &mut Option<web::Payload>,
    state: &BrokerState,
    client: &awc::Client,
    request_id: &str,
    trail: &mut Trail,
) -> Result<HttpResponse, Rejection> {
    let retry_after = u64::from(state.config.broker.retry_after_seconds);

    // 1. Maintenance mode.
    if state.maintenance() {
        return Err(Rejection::maintenance(retry_after));
    }

    // 2. A verified client certificate with exactly one SPIFFE ID.
    let peer = req.conn_data::<PeerConnection>().ok_or_else(|| {
        Rejection::spiffe_id_required("no TLS client identity on this connection".into())
    })?;
    let agent = peer
        .identity
        .as_ref()
        .map_err(|e| Rejection::spiffe_id_required(e.to_string()))?;
    trail.agent = agent.to_string();

    // 3. A known, enabled tenant owns that identity.
    let tenant = peer
        .tenant
        .as_ref()
        .ok_or_else(|| Rejection::unknown_tenant("no tenant owns this SPIFFE ID"))?;
    trail.tenant = Some(tenant.clone());
    if !tenant.enabled {
        return Err(Rejection::unknown_tenant("the tenant is disabled"));
    }
    if state.connections.suspended(&tenant.id) {
        return Err(Rejection::unknown_tenant("the tenant is suspended").closing());
    }
    if matches!(peer.slot, ConnectionSlot::OverLimit) {
        return Err(Rejection::connection_limit(retry_after));
    }
    let tenant_key = state
        .tenant_key(&tenant.id)
        .ok_or_else(|| Rejection::unknown_tenant("the tenant is not configured"))?
        .clone();

    // 4. The tenant's shard admits the request under its rate limit.
    let admitted = shard(
        state,
        &tenant.id,
        ShardRequest::Admit {
            tenant: tenant_key.clone(),
            requests_per_second: tenant.requests_per_second,
            burst: tenant.burst,
            now: Instant::now(),
        },
        retry_after,
    )
    .await?;
    if let Admission::Limited { retry_after } = admitted {
        return Err(Rejection::rate_limited(retry_after));
    }

    // 5–9. A mandate, verified and bound to this caller; or, where the
    // tenant allows it, none (the policy then allows only low-risk calls).
    let claims = match presented_token(req.headers())? {
        Some(token) => {
            Some(verify_mandate(state, client, tenant, token, agent.as_str(), req, trail).await?)
        }
        None if tenant.poa.allow_unmandated_low_risk => {
            count_validation(state, tenant, "absent");
            None
        }
        None => return Err(Rejection::poa_required()),
    };

    // 10. Connector, canonical path and egress allowlist.
    let connector = upstream::resolve_connector(tenant, mandate_connector(claims.as_ref())?)
        .map_err(|e| Rejection::egress_denied(e.0))?;
    trail.connector = connector.id.clone();
    let path =
        routes::path::canonical(req.path()).map_err(|e| Rejection::egress_denied(e.to_string()))?;
    if !upstream::egress_allowed(&connector.egress_allowlist, &path) {
        return Err(Rejection::egress_denied(format!(
            "{path} is outside connector {}'s egress allowlist",
            connector.id
        )));
    }

    // 11. Method + path carry the action through one of the connector's
    // routes (and are the call the mandate pins, if it pins one).
    let binding = state
        .bindings
        .get(&tenant.id)
        .and_then(|c| c.get(&connector.id))
        .ok_or_else(|| Rejection::egress_denied("the connector has no compiled routes".into()))?;
    let routed = route(binding, req, &path, claims.as_ref())?;
    trail.action = routed.action.clone();
    trail.route = routed.template.unwrap_or_default().to_owned();

    // 12. The connector's rate limit; the answer carries this hour's count
    // of the action for the policy.
    let usage = match shard(
        state,
        &tenant.id,
        ShardRequest::Dispatch {
            tenant: tenant_key.clone(),
            connector: Arc::from(connector.id.as_str()),
            rate: connector
                .rate_limit
                .map(|r| (r.requests_per_second, r.burst)),
            action: routed.action.clone(),
            now: Instant::now(),
        },
        retry_after,
    )
    .await?
    {
        Admission::Limited { retry_after } => {
            return Err(Rejection::connector_rate_limited(retry_after))
        }
        Admission::Count(n) => n,
        Admission::Admitted => 0,
    };

    // 13. The request as the policy will see it (read before the jti is
    // spent, so a malformed body does not burn the mandate).
    let (params, buffered) = read_params(req, payload, &state.config.upstream).await?;
    if params.contains_key(METHOD_OVERRIDE_PARAM) {
        return Err(Rejection::action_route_mismatch(format!(
            "a {METHOD_OVERRIDE_PARAM} parameter is refused: the route binds the request's own method"
        )));
    }

    // 14. Single use, marked only now that every check a caller could
    // retry has passed: a refused mandate is not spent.
    if let Some(claims) = &claims {
        spend(state, tenant, &tenant_key, claims)?;
        count_validation(state, tenant, "valid");
    }

    // 15. The policy decides; no decision means no access.
    let input = json!({
        "agent": {"spiffe_id": agent.as_str()},
        "poa": claims.as_ref().map_or_else(|| json!({}), |c| Value::Object(c.raw.clone())),
        "request": {
            "method": req.method().as_str(),
            "path": &*path,
            "action": routed.action,
            "params": Value::Object(params),
            "route": routed.template,
            "route_params": Value::Object(routed.params),
        },
        "policy": {"max_ttl_seconds": tenant.poa.max_ttl_seconds},
        "current_time_ns": now_ns(),
        "rate_limit_state": {routed.action.as_str(): usage},
        "tenant": {"id": tenant.id},
    });
    let decision = decide(state, client, tenant, input, trail).await?;
    if !decision.allow {
        return Err(match claims {
            Some(_) => Rejection::policy_denied(decision.reason, decision.details),
            None => Rejection::poa_required_by_policy(decision.reason),
        });
    }
    if claims.is_none() {
        // The audit names the path taken (allow_low_risk_without_poa).
        trail.reason = decision.reason;
    }

    // 16. Count the action for the policy's hourly limits.
    shard(
        state,
        &tenant.id,
        ShardRequest::Record {
            tenant: tenant_key,
            action: routed.action.clone(),
            now: Instant::now(),
        },
        retry_after,
    )
    .await?;

    // 17. Forward the canonical path and stream the answer back.
    let url = upstream::target_url(connector, &path, req.query_string());
    let stamp = Stamp {
        agent: agent.as_str(),
        tenant: &tenant.id,
        action: &routed.action,
        request_id,
    };
    let body = match (buffered, payload.take()) {
        (Some(bytes), _) => Body::Buffered(bytes),
        (None, Some(p)) => Body::Streaming {
            payload: p,
            limit: state.config.upstream.max_body_bytes,
        },
        (None, None) => Body::Buffered(web::Bytes::new()),
    };
    let started = Instant::now();
    let forwarded = upstream::forward(
        client,
        &url,
        req.method().clone(),
        req.headers(),
        &stamp,
        body,
        Duration::from_secs(connector.timeout_seconds),
    )
    .await;
    let m = &state.metrics;
    m.upstream_seconds
        .with_label_values(&[&tenant.id, &connector.id])
        .observe(started.elapsed().as_secs_f64());
    let outcome = match &forwarded {
        Ok(r) => match r.status().as_u16() {
            500.. => "5xx",
            400..=499 => "4xx",
            _ => "2xx",
        },
        Err(UpstreamError::Timeout) => "timeout",
        Err(UpstreamError::Failed(_)) => "error",
        Err(UpstreamError::BodyTooLarge(_)) => "body_too_large",
    };
    m.upstream_requests
        .with_label_values(&[&tenant.id, &connector.id, outcome])
        .inc();
    match forwarded {
        Ok(response) => Ok(response),
        Err(UpstreamError::Timeout) => Err(Rejection::upstream_timeout()),
        Err(UpstreamError::BodyTooLarge(limit)) => Err(Rejection::body_too_large(limit)),
        Err(UpstreamError::Failed(e)) => {
            tracing::warn!(connector = %connector.id, error = %e, "upstream failed");
            Err(Rejection::upstream_error(
                "the upstream could not be reached".into(),
            ))
        }
    }
}

/// The connector a mandate names in `con.connector`, if any.
fn mandate_connector(claims: Option<&PoaClaims>) -> Result<Option<&str>, Rejection> {
    match claims.and_then(|c| c.raw.get("con")?.get("connector")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Rejection::egress_denied(
            "con.connector must be a string".into(),
        )),
    }
}

/// What the route binding decided: the action the call carries out and
/// the route it matched (none on an unbound connector).
struct Routed<'s> {
    action: String,
    template: Option<&'s str>,
    params: Map<String, Value>,
}

/// Step 11. A mandate's `act` must be carried by the matched route (and a
/// pinned call must be this call); a call without a mandate takes its
/// action from the route, and an `X-ATB-Action` it sends must be one of the
/// route's actions.
fn route<'s>(
    binding: &'s Binding,
    req: &HttpRequest,
    path: &str,
    claims: Option<&PoaClaims>,
) -> Result<Routed<'s>, Rejection> {
    let method = req.method().as_str();
    if let Some(h) = METHOD_OVERRIDES
        .iter()
        .find(|h| req.headers().contains_key(**h))
    {
        return Err(Rejection::action_route_mismatch(format!(
            "{h} is refused: the route binds the request's own method"
        )));
    }
    if let Some(c) = claims {
        PinnedCall::from_con(c.raw.get("con"))
            .and_then(|pin| match pin {
                Some(p) => p.check(method, path, req.query_string()),
                None => Ok(()),
            })
            .map_err(|e| Rejection::action_route_mismatch(e.0))?;
    }
    let named = match (claims, req.headers().get(X_ATB_ACTION)) {
        (Some(c), _) => Some(c.act.clone()),
        (None, None) => None,
        (None, Some(h)) => Some(
            h.to_str()
                .ok()
                .filter(|a| is_action_name(a))
                .ok_or_else(|| {
                    Rejection::bad_request(format!(
                        "X-ATB-Action must be 1 to {MAX_ACTION_LEN} letters, digits, '.', '_', '-' or ':'"
                    ))
                })?
                .to_owned(),
        ),
    };
    let table = match binding {
        Binding::Unbound => {
            return Ok(Routed {
                action: named.unwrap_or_default(),
                template: None,
                params: Map::new(),
            })
        }
        Binding::Bound(table) => table,
    };
    let found = table
        .lookup(method, path)
        .map_err(|miss| Rejection::action_route_mismatch(miss.to_string()))?;
    let action = match named {
        Some(a) if found.allows(&a) => a,
        Some(a) => {
            return Err(Rejection::action_route_mismatch(format!(
                "{method} {} does not carry the action {a}",
                found.template
            )))
        }
        None => match found.actions.as_slice() {
            [only] => (*only).to_owned(),
            _ => {
                return Err(Rejection::action_route_mismatch(format!(
                    "several actions share {method} {}; name one in X-ATB-Action",
                    found.template
                )))
            }
        },
    };
    Ok(Routed {
        action,
        template: Some(found.template),
        params: found
            .params
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect(),
    })
}

/// Step 14: marks the mandate's `jti` used (single use on by default).
fn spend(
    state: &BrokerState,
    tenant: &Tenant,
    key: &Arc<str>,
    claims: &PoaClaims,
) -> Result<(), Rejection> {
    let Some(replay) = &state.replay else {
        return Ok(());
    };
    let keep_until = claims.exp + state.config.poa.leeway_seconds as i64;
    let replay_metric = |cause: &str| {
        state
            .metrics
            .replay_rejections
            .with_label_values(&[tenant.id.as_str(), cause])
            .inc()
    };
    match replay.mark(key, &claims.jti, keep_until, unix_now()) {
        Ok(Verdict::Fresh) => Ok(()),
        Ok(Verdict::Replayed) => {
            replay_metric("replay");
            count_validation(state, tenant, "replay");
            Err(Rejection::poa_replay())
        }
        Err(e) => {
            replay_metric("full");
            Err(Rejection::replay_store_unavailable(e.to_string()))
        }
    }
}

/// One policy decision, timed and counted; an engine failure refuses.
async fn decide(
    state: &BrokerState,
    client: &awc::Client,
    tenant: &Tenant,
    input: Value,
    trail: &mut Trail,
) -> Result<crate::policy::Decision, Rejection> {
    let started = Instant::now();
    let decided = state.policy.decide(client, input).await;
    state
        .metrics
        .policy_seconds
        .with_label_values(&[state.policy.engine_label()])
        .observe(started.elapsed().as_secs_f64());
    let decision = match decided {
        Ok(d) => d,
        Err(e) => {
            state
                .metrics
                .policy_decisions
                .with_label_values(&[&tenant.id, "error", "unknown"])
                .inc();
            tracing::warn!(error = %e, "policy unavailable; refusing");
            return Err(Rejection::policy_unavailable(e.to_string()));
        }
    };
    trail.risk_tier = decision.risk_tier.clone();
    state
        .metrics
        .policy_decisions
        .with_label_values(&[
            tenant.id.as_str(),
            if decision.allow { "allow" } else { "deny" },
            decision.tier_label(),
        ])
        .inc();
    Ok(decision)
}

fn count_validation(state: &BrokerState, tenant: &Tenant, result: &str) {
    state
        .metrics
        .poa_validations
        .with_label_values(&[&tenant.id, result])
        .inc();
}

/// Steps 5–9: signature, claims, subject, action, revocation.
async fn verify_mandate(
    state: &BrokerState,
    client: &awc::Client,
    tenant: &Tenant,
    token: &str,
    agent: &str,
    req: &HttpRequest,
    trail: &mut Trail,
) -> Result<PoaClaims, Rejection> {
    let fail = |result: &str, r: Rejection| {
        count_validation(state, tenant, result);
        r
    };
    let poa_err = |e: PoaError| {
        count_validation(state, tenant, e.result_label());
        match e {
            PoaError::Invalid(r) => Rejection::poa_invalid(r),
            PoaError::Expired(r) => Rejection::poa_expired(r),
        }
    };
    let auth = state.auth.get(&tenant.id).ok_or_else(|| {
        fail(
            "invalid",
            Rejection::poa_invalid("no verification keys for this tenant"),
        )
    })?;
    let unverified = token::parse(token).map_err(poa_err)?;
    if auth.kid_revoked(&unverified.kid) {
        return Err(fail(
            "revoked",
            Rejection::poa_revoked("the signing key has been revoked"),
        ));
    }
    let key = auth.key(client, &unverified.kid).await.ok_or_else(|| {
        fail(
            "invalid",
            Rejection::poa_invalid("unknown kid: no such key for this tenant"),
        )
    })?;
    let payload = unverified.verify(&key).map_err(poa_err)?;
    let claims = claims::validate(&payload, &auth.rules, unix_now()).map_err(poa_err)?;
    trail.jti = claims.jti.clone();
    trail.action = claims.act.clone();
    if claims.sub != agent {
        return Err(fail("subject_mismatch", Rejection::poa_subject_mismatch()));
    }
    if let Some(h) = req.headers().get(X_ATB_ACTION) {
        if h.as_bytes() != claims.act.as_bytes() {
            return Err(fail("action_mismatch", Rejection::action_mismatch()));
        }
    }
    if auth.jti_revoked(&claims.jti) {
        return Err(fail(
            "revoked",
            Rejection::poa_revoked("this mandate has been revoked"),
        ));
    }
    Ok(claims)
}

/// `request.params`: the query string, overlaid with the top level of a
/// JSON object body. JSON bodies are read (bounded) and forwarded as read
/// (`Some(bytes)`); other bodies stay in `payload` and stream through
/// untouched when the request is forwarded.
async fn read_params(
    req: &HttpRequest,
    payload: &mut Option<web::Payload>,
    limits: &crate::config::UpstreamConfig,
) -> Result<(Map<String, Value>, Option<web::Bytes>), Rejection> {
    let mut params = Map::new();
    if !req.query_string().is_empty() {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map_err(|_| Rejection::bad_request("the query string is not valid"))?;
        for (k, v) in pairs.into_inner() {
            params.insert(k, Value::String(v));
        }
    }
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Rejection::bad_request("Content-Length is not a number"))?;
        if len > limits.max_body_bytes {
            return Err(Rejection::body_too_large(limits.max_body_bytes));
        }
    }
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|ct| ct == "application/json" || ct.ends_with("+json"));
    if !is_json {
        return Ok((params, None));
    }
    let Some(mut body) = payload.take() else {
        return Ok((params, None));
    };
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|_| Rejection::bad_request("the request body could not be read"))?;
        if buf.len() + chunk.len() > limits.max_json_body_bytes {
            crate::drain::drain(&mut body).await;
            return Err(Rejection::body_too_large(limits.max_json_body_bytes as u64));
        }
        buf.extend_from_slice(&chunk);
    }
    let bytes = buf.freeze();
    if !bytes.is_empty() {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(body)) => params.extend(body),
            Ok(_) => {}
            Err(_) => return Err(Rejection::bad_request("the JSON body is not valid JSON")),
        }
    }
    Ok((params, Some(bytes)))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

async fn shard(
    state: &BrokerState,
    tenant_id: &str,
    request: ShardRequest,
    retry_after: u64,
) -> Result<Admission, Rejection> {
    state
        .shards
        .call(tenant_id, request)
        .await
        .map_err(|e| call_rejection(e, retry_after))
}

/// A failed shard call is always a refusal (fail closed).
pub fn call_rejection(error: CallError, retry_after: u64) -> Rejection {
    match error {
        CallError::Overloaded { .. } => Rejection::overloaded(retry_after),
        CallError::Unavailable { .. } | CallError::Fault { .. } => Rejection::shard_unavailable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;

    #[test]
    fn shard_failures_refuse_with_retry_after() {
        let r = call_rejection(CallError::Overloaded { shard: 1 }, 7);
        assert_eq!(
            (r.status, r.code, r.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, "overloaded", Some(7))
        );
        for e in [
            CallError::Fault { shard: 0 },
            CallError::Unavailable { shard: 0 },
        ] {
            let r = call_rejection(e, 7);
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.code, "shard_unavailable");
            assert!(r.retry_after.is_some());
        }
    }
}
