//! AgentAuth's HTTP API. Each handler reads top to bottom: source-address
//! budget, caller identity (agent mTLS or approver JWT), identity budget,
//! input, one atomic state transition, answer — and every outcome is
//! counted and audited by [`finish`].

use std::any::Any;
use std::net::IpAddr;
use std::time::Instant;

use actix_tls::accept::openssl::TlsStream;
use actix_web::dev::Extensions;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::rt::net::TcpStream;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use tracing_actix_web::RequestId;

use super::challenge::{self, Approver, Challenge, Refusal, Status};
use super::observe::AgentAuthEvent;
use super::state::AgentAuthState;
use crate::audit::guard::{Ending, RecordOnDrop, RequestRecord};
use crate::audit::AuditSink;
use crate::error::Rejection;
use crate::routes::pinned::PinnedCall;
use crate::runtime::ca_bundle::PeerCerts;
use crate::runtime::clock::unix_now;
use crate::runtime::tls::{peer_identity, IdentityError};
use crate::spiffe::SpiffeId;
use crate::tenant::{Tenant, TenantDirectory};

/// The connection's client-certificate identity (set at accept time).
pub struct PeerIdentity(pub Result<SpiffeId, IdentityError>);

/// `on_connect` hook: read the peer identity once per connection. As on
/// the broker, an identity counts only if the certificate chains to the
/// client CA bundle of the tenant owning it (else `WrongIssuer`: 401
/// `spiffe_id_required`).
pub fn on_connect(tenants: &TenantDirectory, connection: &dyn Any, extensions: &mut Extensions) {
    if let Some(tls) = connection.downcast_ref::<TlsStream<TcpStream>>() {
        let peer = PeerCerts::from_ssl(tls.ssl());
        extensions.insert(PeerIdentity(bind_issuer(
            tenants,
            peer_identity(tls.ssl()),
            peer.as_ref(),
        )));
    }
}

/// `identity`, if the tenant owning it (if any) accepts `peer`'s issuer.
fn bind_issuer(
    tenants: &TenantDirectory,
    identity: Result<SpiffeId, IdentityError>,
    peer: Option<&PeerCerts>,
) -> Result<SpiffeId, IdentityError> {
    let id = identity?;
    match tenants.resolve(&id) {
        Some(t) => tenants.verify_issuer(&t.id, peer).map(|_| id),
        None => Ok(id),
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/.well-known/jwks.json", web::get().to(jwks))
        .route("/v1/challenge", web::post().to(create_challenge))
        .route("/v1/challenge/{id}", web::get().to(read_challenge))
        .route("/v1/challenge/{id}/approve", web::post().to(approve))
        .route("/v1/challenge/{id}/reject", web::post().to(reject))
        .route("/v1/approvals", web::get().to(list_approvals))
        .route("/v1/mandate", web::post().to(mint));
}

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn ready(state: web::Data<AgentAuthState>) -> HttpResponse {
    if state.ready() {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "not_ready"}))
    }
}

pub async fn jwks(state: web::Data<AgentAuthState>) -> HttpResponse {
    match state.keys.load_full() {
        Some(ring) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "public, max-age=30"))
            .json(ring.jwks()),
        None => Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "keys_unavailable",
            "no signing keys are loaded",
        )
        .to_response(""),
    }
}

/// Per-request bookkeeping: the audit event the handler fills in, closed
/// exactly once — by [`finish`], or when the request is dropped unanswered
/// (`crate::audit::guard`).
struct Call<'a> {
    state: &'a AgentAuthState,
    route: &'static str,
    event: AgentAuthEvent,
    started: Instant,
}

impl<'a> Call<'a> {
    fn new(
        req: &HttpRequest,
        state: &'a AgentAuthState,
        route: &'static str,
        event: &'static str,
    ) -> RecordOnDrop<Self> {
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let source = source_addr(req, state)
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        RecordOnDrop::new(Self {
            state,
            route,
            started: Instant::now(),
            event: AgentAuthEvent {
                event,
                request_id,
                source,
                ..AgentAuthEvent::default()
            },
        })
    }

    fn describe(&mut self, c: &Challenge, now: i64) {
        let e = &mut self.event;
        e.challenge_id.clone_from(&c.id);
        e.tenant.clone_from(&c.tenant);
        e.agent.clone_from(&c.agent);
        e.action.clone_from(&c.act);
        e.risk_tier = c.tier.as_str().to_owned();
        e.approvals = Some(c.approvals.len());
        e.approvals_needed = Some(c.approvals_needed);
        if e.reason.is_empty() {
            e.reason = format!("status {}", c.status(now).as_str());
        }
    }
}

fn source_addr(req: &HttpRequest, state: &AgentAuthState) -> Option<IpAddr> {
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    state
        .proxies
        .source(req.peer_addr().map(|a| a.ip()), &forwarded)
}

impl RequestRecord for Call<'_> {
    type Event = AgentAuthEvent;

    fn sink(&self) -> &AuditSink<AgentAuthEvent> {
        &self.state.audit
    }

    /// Counts and logs the request; the event is counted by the sink.
    fn close(&mut self, ending: Ending) -> AgentAuthEvent {
        let m = &self.state.metrics;
        let status = ending.status();
        let e = &mut self.event;
        e.ts = crate::audit::now_rfc3339();
        e.status = status;
        e.outcome = match ending {
            Ending::Panicked | Ending::Dropped => "aborted",
            _ if status >= 500 => "error",
            _ if status >= 400 => "refused",
            _ => "ok",
        };
        match ending {
            Ending::Answered { code, .. } if !code.is_empty() => {
                m.refusals.with_label_values(&[self.route, code]).inc();
            }
            Ending::Panicked | Ending::Dropped => {
                e.code = "aborted".into();
                e.reason = "the request ended before an answer".into();
            }
            Ending::Answered { .. } => {}
        }
        m.events.with_label_values(&[e.event, e.outcome]).inc();
        m.requests
            .with_label_values(&[self.route, crate::metrics::status_class(status)])
            .inc();
        m.duration
            .with_label_values(&[self.route])
            .observe(self.started.elapsed().as_secs_f64());
        tracing::info!(
            route = self.route,
            status,
            error = %e.code,
            outcome = e.outcome,
            challenge = %e.challenge_id,
            "agentauth request"
        );
        std::mem::take(e)
    }
}

/// Answers and closes the request's record; adds `X-Request-ID`.
async fn finish(
    mut call: RecordOnDrop<Call<'_>>,
    result: Result<HttpResponse, Rejection>,
) -> HttpResponse {
    let (mut response, code) = match result {
        Ok(r) => (r, ""),
        Err(rejection) => {
            call.event.code = rejection.code.to_owned();
            call.event.reason = rejection.reason.to_string();
            (
                rejection.to_response(&call.event.request_id),
                rejection.code,
            )
        }
    };
    let status = response.status().as_u16();
    if let Ok(v) = HeaderValue::from_str(&call.event.request_id) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static("x-request-id"), v);
    }
    call.finish(Ending::Answered { status, code }).await;
    response
}

/// Takes one request from `key`'s budget.
async fn budget(state: &AgentAuthState, key: &str, per_minute: u32) -> Result<(), Rejection> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match state.limiter.hit(key, per_minute, now_ms).await {
        Ok(None) => Ok(()),
        Ok(Some(wait)) => Err(Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry in {wait} s"),
        )
        .retry_after(wait)),
        Err(r) => Err(r.to_rejection()),
    }
}

async fn address_budget(state: &AgentAuthState, call: &Call<'_>) -> Result<(), Rejection> {
    if call.event.source.is_empty() {
        return Ok(());
    }
    let key = format!("addr:{}", call.event.source);
    budget(state, &key, state.config.address_requests_per_minute).await
}

/// The calling agent: a verified client certificate with one SPIFFE ID,
/// owned by an enabled tenant.
fn agent(req: &HttpRequest, state: &AgentAuthState) -> Result<(SpiffeId, Tenant), Rejection> {
    let ext = req.conn_data::<PeerIdentity>();
    let id = match ext.map(|p| &p.0) {
        Some(Ok(id)) => id.clone(),
        Some(Err(e)) => return Err(Rejection::spiffe_id_required(e.to_string())),
        None => {
            return Err(Rejection::spiffe_id_required(
                "no client certificate was presented".into(),
            ))
        }
    };
    match state.tenants.resolve(&id) {
        Some(t) if t.enabled => Ok((id, t.clone())),
        _ => Err(Rejection::unknown_tenant(
            "the SPIFFE ID belongs to no enabled tenant",
        )),
    }
}

/// Default deny for actions: `act` must be a canonical name in the
/// tenant's catalogue (built-in plus its extensions), never mapped to a
/// tier otherwise (400 `unknown_action`); and a pinned call's method must be
/// one the catalogue allows for it (400 `invalid_challenge`).
fn check_action(
    state: &AgentAuthState,
    tenant: &Tenant,
    request: &challenge::ChallengeRequest,
) -> Result<(), Rejection> {
    let catalogue = state.catalogues.get(&tenant.id).ok_or_else(|| {
        Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy_unavailable",
            "the tenant has no action catalogue",
        )
    })?;
    if let Some(why) = crate::catalog::unknown_action_reason(catalogue, &request.act) {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "unknown_action",
            why,
        ));
    }
    let Ok(Some(pin)) = PinnedCall::from_con(Some(&request.con)) else {
        return Ok(());
    };
    match catalogue.methods(&request.act) {
        Some(m) if !pin.method_allowed(m) => Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "invalid_challenge",
            format!(
                "con.http pins {} but the catalogue allows {} for {}",
                pin.method,
                m.names().join(", "),
                request.act
            ),
        )),
        _ => Ok(()),
    }
}

async fn agent_with_budget(
    req: &HttpRequest,
    state: &AgentAuthState,
    call: &mut Call<'_>,
) -> Result<(SpiffeId, Tenant), Rejection> {
    address_budget(state, call).await?;
    let (id, tenant) = agent(req, state)?;
    call.event.agent = id.as_str().to_owned();
    call.event.tenant.clone_from(&tenant.id);
    budget(
        state,
        &format!("agent:{}", id.as_str()),
        state.config.agent_requests_per_minute,
    )
    .await?;
    Ok((id, tenant))
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The calling approver, from an OIDC bearer token.
async fn approver(
    req: &HttpRequest,
    state: &AgentAuthState,
    call: &mut Call<'_>,
) -> Result<Approver, Rejection> {
    let unauthenticated = |reason: String| {
        Rejection::new(StatusCode::UNAUTHORIZED, "approver_unauthenticated", reason)
    };
    let token = bearer(req).ok_or_else(|| {
        unauthenticated("an approver token is required: Authorization: Bearer <OIDC JWT>".into())
    })?;
    let who = state
        .approvers
        .authenticate(token, unix_now())
        .await
        .map_err(|e| unauthenticated(format!("approver token refused: {e}")))?;
    call.event.approver.clone_from(&who.id);
    budget(
        state,
        &format!("approver:{}", who.id.to_ascii_lowercase()),
        state.config.approver_requests_per_minute,
    )
    .await?;
    Ok(who)
}

/// Reads a JSON object body (empty = `{}` when `empty_ok`).
fn json_body(body: &[u8], empty_ok: bool) -> Result<Value, Rejection> {
    if body.iter().all(u8::is_ascii_whitespace) && empty_ok {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Rejection::bad_request("the body must be a JSON object")),
        Err(e) => Err(Rejection::bad_request(format!("the body is not JSON: {e}"))),
    }
}

async fn read_body(payload: web::Payload, state: &AgentAuthState) -> Result<web::Bytes, Rejection> {
    let limit = state.config.max_body_bytes;
    payload
        .to_bytes_limited(limit)
        .await
        .map_err(|_| Rejection::body_too_large(limit as u64))?
        .map_err(|e| Rejection::bad_request(format!("cannot read the body: {e}")))
}

async fn create_challenge(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AgentAuthState>,
) -> HttpResponse {
    let mut call = Call::new(&req, &state, "challenge_create", "challenge.created");
    let result = create_challenge_inner(&req, payload, &state, &mut call).await;
    finish(call, result).await
}

async fn create_challenge_inner(
    req: &HttpRequest,
    payload: web::Payload,
    state: &web::Data<AgentAuthState>,
    call: &mut Call<'_>,
) -> Result<HttpResponse, Rejection> {
    // The body is read first (bounded): answering an HTTP/2 request before
    // its body has arrived resets the stream instead of delivering the answer.
    let body = read_body(payload, state).await;
    let (agent, tenant) = agent_with_budget(req, state, call).await?;
    let body = json_body(&body?, false)?;
    let request = challenge::parse_request(&body, agent.as_str()).map_err(|e| e.to_rejection())?;
    call.event.action.clone_from(&request.act);
    check_action(state, &tenant, &request)?;
    let tier = state
        .tiers
        .tier(&tenant.id, &request.act)
        .await
        .map_err(|e| {
            // The engine's text stays in the log, with the request id.
            tracing::error!(error = %e, "the risk tier could not be decided");
            Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "policy_unavailable",
                "the risk tier could not be decided",
            )
            .retry_after(5)
        })?;
    // Escape switches need an approval to vouch for them.
    challenge::check_escapes(&request.con, tier).map_err(|e| e.to_rejection())?;
    let id = challenge::challenge_id(&tenant.id).map_err(internal)?;
    let now = unix_now();
    let c = Challenge::new(
        id,
        tenant.id.clone(),
        agent.as_str().to_owned(),
        request,
        tier,
        now,
        state.config.challenge_ttl_seconds as i64,
    )
    .owned_by(tenant.owners_of(&agent));
    call.describe(&c, now);
    state
        .challenges
        .insert(c.clone())
        .await
        .map_err(|r| r.to_rejection())?;
    state.metrics.challenges_open.inc();
    Ok(HttpResponse::Ok().json(json!({
        "challenge_id": c.id,
        "expires_at": crate::audit::rfc3339(c.expires_at),
        "risk_tier": c.tier.as_str(),
        "approvals_needed": c.approvals_needed,
        "requires_dual_control": c.approvals_needed >= 2,
        "pinned_call": c.pinned_call(),
        "status": c.status(now).as_str(),
        "approval_hint": "approvers: POST /v1/challenge/{id}/approve with an OIDC bearer token; agent: POST /v1/mandate once approved",
    })))
}

async fn read_challenge(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AgentAuthState>,
) -> HttpResponse {
    let mut call = Call::new(&req, &state, "challenge_read", "challenge.read");
    let result = read_challenge_inner(&req, &path, &state, &mut call).await;
    finish(call, result).await
}

async fn read_challenge_inner(
    req: &HttpRequest,
    id: &str,
    state: &AgentAuthState,
    call: &mut Call<'_>,
) -> Result<HttpResponse, Rejection> {
    // The requesting agent (client certificate) or an approver (bearer).
    let (as_agent, approver) = if bearer(req).is_none() {
        (Some(agent_with_budget(req, state, call).await?.0), None)
    } else {
        address_budget(state, call).await?;
        (None, Some(approver(req, state, call).await?))
    };
    let c = state
        .challenges
        .get(id)
        .await
        .map_err(|r| r.to_rejection())?;
    let now = unix_now();
    call.describe(&c, now);
    let allowed = match (&as_agent, &approver) {
        (Some(agent), _) => agent.as_str() == c.agent,
        (None, Some(a)) => a.may_act_for(&c.tenant),
        (None, None) => false,
    };
    if !allowed {
        // Indistinguishable from an unknown id: ids are not an oracle.
        return Err(Refusal::NotFound.to_rejection());
    }
    Ok(HttpResponse::Ok().json(c.view(now)))
}

async fn list_approvals(
    req: HttpRequest,
    query: web::Query<std::collections::HashMap<String, String>>,
    state: web::Data<AgentAuthState>,
) -> HttpResponse {
    let mut call = Call::new(&req, &state, "approvals_list", "approvals.listed");
    let result = list_inner(&req, &query, &state, &mut call).await;
    finish(call, result).await
}

async fn list_inner(
    req: &HttpRequest,
    query: &std::collections::HashMap<String, String>,
    state: &AgentAuthState,
    call: &mut Call<'_>,
) -> Result<HttpResponse, Rejection> {
    address_budget(state, call).await?;
    let who = approver(req, state, call).await?;
    let status = match query.get("status").map(String::as_str) {
        None | Some("pending") => Some(Status::Pending),
        Some("all") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            Rejection::bad_request(
                "status must be pending, approved, rejected, expired, minted or all",
            )
        })?),
    };
    let limit = match query.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=500).contains(l))
            .ok_or_else(|| Rejection::bad_request("limit must be between 1 and 500"))?,
    };
    let now = unix_now();
    // Only the approver's own tenants (every tenant for a cross-tenant
    // role; none for a token bound to no tenant).
    let mut found = Vec::new();
    if who.cross_tenant {
        found = state
            .challenges
            .list(None, status, now, limit)
            .await
            .map_err(|r| r.to_rejection())?;
    } else {
        for tenant in &who.tenants {
            let mut some = state
                .challenges
                .list(Some(tenant), status, now, limit)
                .await
                .map_err(|r| r.to_rejection())?;
            found.append(&mut some);
        }
        found.sort_by_key(|c| c.created_at);
        found.truncate(limit);
    }
    call.event.reason = format!("{} challenges", found.len());
    Ok(HttpResponse::Ok().json(json!({
        "challenges": found.iter().map(|c| c.view(now)).collect::<Vec<_>>(),
    })))
}

async fn approve(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AgentAuthState>,
) -> HttpResponse {
    let mut call = Call::new(&req, &state, "challenge_approve", "challenge.approved");
    // No body is needed; one that is sent must be empty or a JSON object.
    let result = match read_body(payload, &state)
        .await
        .and_then(|b| json_body(&b, true))
    {
        Ok(_) => decide_inner(&req, &path, None, &state, &mut call).await,
        Err(r) => Err(r),
    };
    finish(call, result).await
}

async fn reject(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AgentAuthState>,
) -> HttpResponse {
    let mut call = Call::new(&req, &state, "challenge_reject", "challenge.rejected");
    let result = match read_body(payload, &state)
        .await
        .and_then(|b| json_body(&b, true))
    {
        Ok(body) => {
            let reason = match body.get("reason") {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.len() <= 1024 => Ok(Some(s.clone())),
                Some(_) => Err(Rejection::bad_request(
                    "reason must be a string of at most 1024 bytes",
                )),
            };
            match reason {
                Ok(reason) => decide_inner(&req, &path, Some(reason), &state, &mut call).await,
                Err(r) => Err(r),
            }
        }
        Err(r) => Err(r),
    };
    finish(call, result).await
}

/// Approve (`rejection == None`) or reject, atomically.
async fn decide_inner(
    req: &HttpRequest,
    id: &str,
    rejection: Option<Option<String>>,
    state: &AgentAuthState,
    call: &mut Call<'_>,
) -> Result<HttpResponse, Rejection> {
    address_budget(state, call).await?;
    let who = approver(req, state, call).await?;
    let now = unix_now();
    let executives = &state.config.approvers.executive_roles;
    let who_ref = &who;
    let result = state
        .challenges
        .update(
            id,
            Box::new(move |c| {
                if !who_ref.may_act_for(&c.tenant) {
                    return Err(Refusal::WrongTenant);
                }
                match &rejection {
                    None => c.approve(who_ref, executives, now),
                    Some(reason) => c.reject(who_ref, reason.clone(), now),
                }
            }),
        )
        .await;
    let c = match result {
        Ok(c) => c,
        Err(refusal) => {
            // Describe the challenge in the audit event when it exists.
            if let Ok(c) = state.challenges.get(id).await {
                call.describe(&c, now);
            }
            return Err(refusal.to_rejection());
        }
    };
    call.describe(&c, now);
    Ok(HttpResponse::Ok().json(json!({
        "challenge_id": c.id,
        "status": c.status(now).as_str(),
        "risk_tier": c.tier.as_str(),
        "approvals": c.approvals.len(),
        "approvals_needed": c.approvals_needed,
        "fully_approved": c.status(now) == Status::Approved,
    })))
}

async fn mint(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AgentAuthState>,
) -> HttpResponse {
    let mut call = Call::new(&req, &state, "mandate", "mandate.minted");
    let result = mint_inner(&req, payload, &state, &mut call).await;
    finish(call, result).await
}

async fn mint_inner(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AgentAuthState,
    call: &mut Call<'_>,
) -> Result<HttpResponse, Rejection> {
    let body = read_body(payload, state).await;
    let (agent, tenant) = agent_with_budget(req, state, call).await?;
    let body = json_body(&body?, false)?;
    if let Some(k) = body.as_object().and_then(|o| {
        o.keys()
            .find(|k| !matches!(k.as_str(), "challenge_id" | "ttl_seconds" | "format"))
    }) {
        return Err(Rejection::bad_request(format!("unknown field {k:?}")));
    }
    let id = body
        .get("challenge_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= challenge::MAX_CHALLENGE_ID_LEN)
        .ok_or_else(|| Rejection::bad_request("challenge_id is required"))?
        .to_owned();
    let format = match body.get("format") {
        None | Some(Value::Null) => MandateFormat::Jwt,
        Some(Value::String(f)) if f == "jwt" => MandateFormat::Jwt,
        Some(Value::String(f)) if f == "biscuit" => MandateFormat::Biscuit,
        Some(_) => {
            return Err(Rejection::bad_request(
                "format must be \"jwt\" (the default) or \"biscuit\"",
            ))
        }
    };
    call.event.format = format.as_str().to_owned();
    let cfg = &state.config;
    // Never longer than the tenant's brokers accept (`poa.max_ttl_seconds`):
    // a longer mandate would spend the approvals on a token every broker
    // refuses.
    let longest = cfg.max_mandate_ttl_seconds.min(tenant.poa.max_ttl_seconds);
    let ttl = match body.get("ttl_seconds") {
        None => cfg.mandate_ttl_seconds.min(longest),
        Some(v) => v
            .as_u64()
            .filter(|t| (1..=longest).contains(t))
            .ok_or_else(|| {
                Rejection::bad_request(format!(
                    "ttl_seconds must be between 1 and {longest} (agentauth.max_mandate_ttl_seconds, and the tenant's poa.max_ttl_seconds)"
                ))
            })?,
    };
    // The signing key, before the challenge is consumed: a mandate that
    // cannot be signed must not spend the approvals.
    let signer = match format {
        MandateFormat::Jwt => Signer::Jwt(state.keys.load_full().ok_or_else(|| {
            Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "keys_unavailable",
                "no signing keys are loaded",
            )
            .retry_after(5)
        })?),
        MandateFormat::Biscuit => Signer::Biscuit(
            state.biscuit_keys.get(&tenant.id).ok_or_else(|| {
                Rejection::new(
                    StatusCode::CONFLICT,
                    "biscuit_not_configured",
                    format!(
                        "tenant {:?} has no AgentAuth Biscuit key ([tenants.biscuit] agentauth_key_file); ask for \"format\": \"jwt\"",
                        tenant.id
                    ),
                )
            })?,
        ),
    };
    let jti = challenge::random_id("poa_").map_err(internal)?;
    let now = unix_now();
    let exp = now + ttl as i64;
    let (agent_id, jti_ref) = (agent.as_str(), jti.as_str());
    let result = state
        .challenges
        .update(&id, Box::new(move |c| c.mint(agent_id, jti_ref, exp, now)))
        .await;
    let c = match result {
        Ok(c) => c,
        Err(refusal) => {
            if let Ok(c) = state.challenges.get(&id).await {
                // Only the requesting agent learns about the challenge.
                if c.agent == agent.as_str() {
                    call.describe(&c, now);
                } else {
                    call.event.challenge_id.clone_from(&c.id);
                }
            }
            return Err(refusal.to_rejection());
        }
    };
    call.describe(&c, now);
    call.event.jti.clone_from(&jti);
    let mut answer = json!({
        "format": format.as_str(),
        "token_type": format.as_str(),
        "jti": jti,
        "expires_at": crate::audit::rfc3339(exp),
        "risk_tier": c.tier.as_str(),
        "approvals": c.approvals.len(),
        "dual_control_used": c.approvals_needed >= 2,
    });
    match signer {
        Signer::Jwt(ring) => {
            let claims = c.claims(&cfg.issuer, &cfg.audience, &jti, now, exp);
            answer["token"] = ring.sign(&claims).into();
            answer["kid"] = ring.active.kid.clone().into();
            call.event.kid.clone_from(&ring.active.kid);
        }
        Signer::Biscuit(key) => {
            // Same content as the JWT: agent, tenant, the action, iat/exp,
            // con, leg with the evidence, the recorded jti as its id.
            let token = super::biscuits::mint(&c, key, &jti, now, exp).map_err(internal)?;
            answer["revocation_id"] = super::biscuits::authority_revocation_id(&token).into();
            answer["root_key_id"] = key.root_key_id.into();
            answer["token"] = token.into();
        }
    }
    Ok(HttpResponse::Ok().json(answer))
}

/// What `POST /v1/mandate` signs: a PoA JWT (default) or a Biscuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MandateFormat {
    Jwt,
    Biscuit,
}

impl MandateFormat {
    fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::Biscuit => "biscuit",
        }
    }
}

/// The key a mandate is signed with, chosen before the challenge is
/// consumed.
enum Signer<'a> {
    Jwt(std::sync::Arc<super::keyring::KeyRing>),
    Biscuit(&'a crate::biscuit::config::AgentAuthBiscuitKey),
}

fn internal(e: impl std::fmt::Display) -> Rejection {
    tracing::error!(error = %e, "internal error");
    Rejection::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "an internal error occurred",
    )
}

#[derive(serde::Deserialize)]
pub struct FaultTarget {
    periodic: String,
}

/// Test-only (`debug.fault_injection`): the named timer loop's next tick
/// panics, now. Needs the admin token even when enabled.
pub async fn inject_fault(
    req: HttpRequest,
    state: web::Data<AgentAuthState>,
    target: web::Query<FaultTarget>,
) -> HttpResponse {
    use subtle::ConstantTimeEq;
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let authorized = state.admin_token.as_deref().is_some_and(|t| {
        t.len() == presented.len() && bool::from(t.as_bytes().ct_eq(presented.as_bytes()))
    });
    if !authorized {
        return Rejection::new(
            StatusCode::UNAUTHORIZED,
            "admin_unauthorized",
            "a valid admin bearer token is required",
        )
        .to_response("");
    }
    let loops: Vec<_> = state
        .periodic
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|h| h.name().actor == target.periodic)
        .cloned()
        .collect();
    loops.iter().for_each(|h| h.inject_fault());
    tracing::warn!(periodic = %target.periodic, loops = loops.len(), "fault injected through the debug hook");
    if loops.is_empty() {
        return Rejection::new(
            StatusCode::NOT_FOUND,
            "unknown_periodic",
            "no timer loop has this name",
        )
        .to_response("");
    }
    HttpResponse::Ok().json(serde_json::json!({"loops": loops.len()}))
}

/// The one mapping of AgentAuth's typed refusals to HTTP answers.
trait ToRejection {
    fn to_rejection(&self) -> Rejection;
}

impl ToRejection for challenge::Refusal {
    fn to_rejection(&self) -> Rejection {
        use challenge::Refusal::*;
        let status = match self {
            NotFound => StatusCode::NOT_FOUND,
            Expired => StatusCode::GONE,
            Rejected | AlreadyMinted | NotPending(_) | DuplicateApprover => StatusCode::CONFLICT,
            NotApproved { .. }
            | NotRequestingAgent
            | SelfApproval
            | ExecutiveRequired
            | WrongTenant => StatusCode::FORBIDDEN,
            Full | Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut r = Rejection::new(status, self.code(), self.to_string());
        match self {
            Full | Store(_) => r = r.retry_after(5),
            NotApproved { have, need } => {
                r.details = Some(serde_json::json!({"approvals": have, "approvals_needed": need}));
            }
            _ => {}
        }
        r
    }
}

impl ToRejection for challenge::RequestError {
    fn to_rejection(&self) -> Rejection {
        Rejection::new(StatusCode::BAD_REQUEST, self.code(), self.to_string())
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;
    use challenge::{Refusal, RequestError};

    #[test]
    fn refusals_map_to_statuses() {
        assert_eq!(
            Refusal::NotFound.to_rejection().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(Refusal::Expired.to_rejection().status, StatusCode::GONE);
        assert_eq!(
            Refusal::AlreadyMinted.to_rejection().status,
            StatusCode::CONFLICT
        );
        let r = Refusal::NotApproved { have: 1, need: 2 }.to_rejection();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.details.unwrap()["approvals_needed"], 2);
        assert_eq!(Refusal::Full.to_rejection().retry_after, Some(5));
        let r = RequestError::EscapeNotAllowed {
            names: vec!["bypass_rate_limit".into()],
            tier: "low",
        }
        .to_rejection();
        assert_eq!(
            (r.status, r.code),
            (StatusCode::BAD_REQUEST, "escape_not_allowed")
        );
        assert!(r.reason.contains("bypass_rate_limit"), "{}", r.reason);
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;
    use crate::runtime::ca_bundle::test_pki::{ca, leaf, pem};
    use crate::runtime::ca_bundle::CaBundle;
    use std::collections::HashMap;
    use std::sync::Arc;

    #[test]
    fn a_tenant_ca_vouches_only_for_its_own_tenant() {
        let c = crate::config::Config::from_toml(
            "[[tenants]]\nid = \"a\"\ntrust_domain = \"a.example\"\n[[tenants]]\nid = \"b\"\ntrust_domain = \"b.example\"\n",
        )
        .unwrap();
        let (ca_a, ca_b) = (ca("a", None), ca("b", None));
        let bundle = |c: &crate::runtime::ca_bundle::test_pki::Ca| {
            Arc::new(CaBundle::from_pem(&pem(&[c]), std::path::Path::new("t")).unwrap())
        };
        let dir = TenantDirectory::new(&c.tenants).with_issuers(HashMap::from([
            ("a".to_owned(), bundle(&ca_a)),
            ("b".to_owned(), bundle(&ca_b)),
        ]));
        let bind = |uri: &str, issuer| {
            let peer = PeerCerts {
                leaf: leaf(uri, issuer),
                chain: Vec::new(),
            };
            bind_issuer(&dir, Ok(SpiffeId::parse(uri).unwrap()), Some(&peer))
        };
        assert!(bind("spiffe://a.example/agent", &ca_a).is_ok());
        assert!(bind("spiffe://b.example/agent", &ca_b).is_ok());
        assert_eq!(
            bind("spiffe://b.example/agent", &ca_a),
            Err(IdentityError::WrongIssuer)
        );
        // No tenant owns it: left to the tenant lookup (unknown_tenant).
        assert!(bind("spiffe://c.example/agent", &ca_a).is_ok());
        assert_eq!(
            bind_issuer(&dir, Err(IdentityError::NoCertificate), None),
            Err(IdentityError::NoCertificate)
        );
    }
}
