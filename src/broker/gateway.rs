//! The agent-facing pipeline on the mTLS listener (SPEC §3): a flat,
//! ordered list of steps over one request context ([`RequestCtx`]), each
//! with the same signature. A step passes or ends the request with its own
//! rejection; nothing after a failed step runs. A panicking step is caught
//! and answered 500 `internal_error` (fail closed). Every request ends in
//! exactly one `decision` audit event, emitted by the context's record
//! when the request ends — answered, panicked or dropped
//! (`broker::context`). A tenant with `audit_required` also gets a durable
//! `forward` event before its request goes upstream (`durable_record`): no
//! durable record, no forward (503 `audit_unavailable`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{web, HttpRequest, HttpResponse};
use atb_actors::CallError;
use futures_util::{FutureExt, StreamExt};
use serde_json::{json, Map, Value};

use crate::audit::guard::Ending;
use crate::biscuit::verify::BiscuitRefusal;
use crate::broker::admission::{Admission, ShardRequest, UsageLedger};
use crate::broker::connection::{ConnectionSlot, PeerConnection};
use crate::broker::context::{RequestCtx, Routed, Step};
use crate::broker::platform::PLATFORM_TOKEN_HEADER;
use crate::broker::policy_client::PolicyClient;
use crate::broker::replay::{ReplayError, Verdict};
use crate::broker::shared_admission::{Admit, SharedAdmission, SharedVerdict, SingleUse};
use crate::broker::state::BrokerState;
use crate::broker::upstream::{self, Body, Stamp, UpstreamError};
use crate::broker::validator::{self, Refusal};
use crate::credential::Credential;
use crate::error::Rejection;
use crate::poa::presented::{presented_credential, Presented};
use crate::poa::{is_action_name, MAX_ACTION_LEN};
use crate::policy::input::DecisionInput;
use crate::routes::pinned::PinnedCall;
use crate::routes::{self, Binding};
use crate::runtime::clock::unix_now;

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
            client: crate::runtime::tls::http_client(tls, connect_timeout),
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

/// Every protected request: the pipeline, then one answer and one record.
async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<BrokerState>,
    outbound: web::Data<Outbound>,
) -> HttpResponse {
    let mut ctx = RequestCtx::new(&state, &outbound.client, &req, payload);
    let ran = AssertUnwindSafe(pipeline(&mut ctx)).catch_unwind().await;
    let (mut response, ending) = match ran {
        Ok(Ok(())) => match ctx.response.take() {
            Some(r) => {
                let status = r.status().as_u16();
                (r, Ending::Answered { status, code: "" })
            }
            None => refused(&mut ctx, Rejection::internal_error()),
        },
        Ok(Err(rejection)) => refused(&mut ctx, rejection),
        Err(_) => {
            tracing::error!(
                step = ctx.log.step,
                request_id = ctx.request_id(),
                "a pipeline step panicked; the request is refused"
            );
            let r = Rejection::internal_error().to_response(ctx.request_id());
            (r, Ending::Panicked)
        }
    };
    // A refused request whose body was never read: read it (bounded) so
    // the client sees the answer rather than a reset stream.
    if response.status().as_u16() >= 400 {
        if let Some(p) = ctx.payload.as_mut() {
            crate::runtime::drain::drain(p).await;
        }
    }
    if let Ok(v) = HeaderValue::from_str(ctx.request_id()) {
        response.headers_mut().insert(X_REQUEST_ID, v);
    }
    // The tenant's in-flight slot stays taken until the answer's last byte
    // is written (or the client goes away): an answer a client does not
    // read holds an upstream connection, and `max_in_flight` bounds how
    // many one tenant can hold.
    let slot = ctx.in_flight.take();
    ctx.log.finish(ending).await;
    match slot {
        Some(slot) => response
            .map_body(|_, body| crate::runtime::held_body::HeldBody::new(body, slot))
            .map_into_boxed_body(),
        None => response,
    }
}

fn refused(ctx: &mut RequestCtx<'_>, rejection: Rejection) -> (HttpResponse, Ending) {
    ctx.log.reason = rejection.reason.to_string();
    let response = rejection.to_response(ctx.request_id());
    let status = response.status().as_u16();
    (
        response,
        Ending::Answered {
            status,
            code: rejection.code,
        },
    )
}

/// Runs the steps in order; the first refusal ends the request.
macro_rules! steps {
    ($ctx:ident: $($step:ident),+ $(,)?) => {{
        $(
            $ctx.enter(stringify!($step));
            $step($ctx).await?;
        )+
        Ok(())
    }};
}

/// The pipeline (README "The request pipeline" has the same table).
async fn pipeline(ctx: &mut RequestCtx<'_>) -> Step {
    steps!(ctx:
        maintenance,     // 503 maintenance
        identify,        // 401 spiffe_id_required, 403 unknown_tenant, 429 connection_limit
        admit,           // 503 overloaded (tenant's max_in_flight), 429 rate_limited (tenant)
        authenticate,    // 401 poa_required / poa_invalid / poa_expired / poa_revoked, 403 poa_subject_mismatch / action_mismatch
        platform,        // 401 platform_token_invalid
        known_action,    // 403 policy_denied (unknown_action)
        egress,          // 403 egress_denied
        bind_route,      // 403 action_route_mismatch
        connector_limit, // 429 rate_limited (connector)
        read_body,       // 413 body_too_large, 400 bad_request
        capability,      // 403 policy_denied (biscuit_check_failed), 401 poa_invalid (Biscuit only)
        spend,           // 403 poa_replay, 503 replay_store_unavailable
        decide,          // 403 policy_denied (401 poa_required without a mandate), 503 policy_unavailable
        count_usage,     // (the action's hourly count)
        durable_record,  // 503 audit_unavailable (audit_required tenants)
        forward,         // 502 upstream_error, 504 upstream_timeout
    )
}

/// Maintenance mode.
async fn maintenance(ctx: &mut RequestCtx<'_>) -> Step {
    if ctx.state.maintenance() {
        return Err(Rejection::maintenance(retry_after(ctx)));
    }
    Ok(())
}

/// A verified client certificate with exactly one SPIFFE ID, owned by a
/// known, enabled, unsuspended tenant, on a connection within its limit.
async fn identify(ctx: &mut RequestCtx<'_>) -> Step {
    let peer = ctx.req.conn_data::<PeerConnection>().ok_or_else(|| {
        Rejection::spiffe_id_required("no TLS client identity on this connection".into())
    })?;
    let agent = peer
        .identity
        .as_ref()
        .map_err(|e| Rejection::spiffe_id_required(e.to_string()))?;
    ctx.log.agent = agent.to_string();
    // Resolved against the tenants as configured now (a reload since the
    // connection was accepted counts); a tenant gone closes the connection.
    let tenant = ctx
        .tenants
        .directory
        .resolve(agent)
        .cloned()
        .ok_or_else(|| match &peer.tenant {
            Some(_) => Rejection::unknown_tenant("the tenant was removed").closing(),
            None => Rejection::unknown_tenant("no tenant owns this SPIFFE ID"),
        })?;
    // The certificate was checked against its tenant's client CA bundle at
    // accept time; a reload that changed the bundle (or the owner) since
    // then needs a fresh connection to check it again.
    if !ctx
        .tenants
        .directory
        .issuer_current(&tenant.id, peer.issuer.as_ref())
    {
        return Err(Rejection::spiffe_id_required(
            "the client CA bundle for this SPIFFE ID changed since the connection was verified; reconnect".into(),
        )
        .closing());
    }
    ctx.tenant = Some(tenant.clone());
    ctx.log.tenant = Some(tenant.clone());
    if !tenant.enabled {
        return Err(Rejection::unknown_tenant("the tenant is disabled"));
    }
    if ctx.state.connections.suspended(&tenant.id) {
        return Err(Rejection::unknown_tenant("the tenant is suspended").closing());
    }
    if matches!(peer.slot, ConnectionSlot::OverLimit) {
        return Err(Rejection::connection_limit(retry_after(ctx)));
    }
    let key = ctx
        .tenants
        .keys
        .get(&tenant.id)
        .ok_or_else(|| Rejection::unknown_tenant("the tenant is not configured"))?;
    ctx.tenant_key = Some(key.clone());
    Ok(())
}

/// The tenant's share of the broker: a slot among its `max_in_flight`
/// (held until the request ends), then its token bucket.
async fn admit(ctx: &mut RequestCtx<'_>) -> Step {
    let tenant = ctx.tenant()?;
    let slot = ctx
        .state
        .tenant_in_flight
        .enter(&tenant.id, tenant.max_in_flight)
        .ok_or_else(|| Rejection::overloaded(1))?;
    ctx.in_flight = Some(slot);
    let tenant = ctx.tenant()?;
    let request = ShardRequest::Admit {
        tenant: ctx.tenant_key()?.clone(),
        requests_per_second: tenant.requests_per_second,
        burst: tenant.burst,
        now: Instant::now(),
    };
    match shard(ctx, request)? {
        Admission::Limited { retry_after } => Err(Rejection::rate_limited(retry_after)),
        _ => Ok(()),
    }
}

/// A mandate, verified and bound to this caller (signature, claims,
/// subject, action header, revocation); or, where the tenant allows it,
/// none (the policy then allows only low-risk calls).
async fn authenticate(ctx: &mut RequestCtx<'_>) -> Step {
    let tenant = ctx.tenant()?.clone();
    let Some(presented) = presented_credential(ctx.req.headers())? else {
        if tenant.poa.allow_unmandated_low_risk {
            ctx.count_validation("absent");
            return Ok(());
        }
        return Err(Rejection::poa_required());
    };
    ctx.log.format = presented.format();
    let tenants = ctx.tenants.clone();
    let Some(auth) = tenants.auth.get(&tenant.id) else {
        return Err(refusal(
            ctx,
            Refusal::Invalid("no verification keys for this tenant".into()),
        ));
    };
    let action_header = ctx.req.headers().get(X_ATB_ACTION).map(|h| h.as_bytes());
    let credential = match presented {
        Presented::Jwt(token) => {
            let claims = match validator::verify_jwt(auth, ctx.client, token, unix_now()).await {
                Ok(claims) => claims,
                Err(r) => return Err(refusal(ctx, r)),
            };
            ctx.log.jti.clone_from(&claims.jti);
            ctx.log.action.clone_from(&claims.act);
            if let Err(r) = validator::bind(auth, &claims, &ctx.log.agent, action_header) {
                return Err(refusal(ctx, r));
            }
            Credential::Jwt(claims)
        }
        Presented::Biscuit(token) => {
            let limits = &ctx.state.config.biscuit;
            let mut capability = match validator::verify_biscuit(auth, limits, token, unix_now()) {
                Ok(c) => c,
                Err(r) => return Err(refusal(ctx, r)),
            };
            ctx.log.jti = capability.single_use_id().to_owned();
            if let Err(r) =
                validator::bind_biscuit(&mut capability, &tenant.id, &ctx.log.agent, action_header)
            {
                return Err(refusal(ctx, r));
            }
            ctx.log.action.clone_from(&capability.act);
            Credential::Biscuit(Box::new(capability))
        }
    };
    ctx.credential = Some(credential);
    Ok(())
}

/// The platform token, if one is sent: verified against the tenant's
/// platform issuer; its subject becomes `platform.sub`. Present but
/// invalid (or sent twice, or for a tenant without a platform issuer) is
/// refused, never ignored.
async fn platform(ctx: &mut RequestCtx<'_>) -> Step {
    let mut values = ctx.req.headers().get_all(PLATFORM_TOKEN_HEADER);
    let Some(value) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(Rejection::platform_token_invalid(
            "more than one X-ATB-Platform-Token",
        ));
    }
    let token = value
        .to_str()
        .map_err(|_| Rejection::platform_token_invalid("the platform token is not ASCII"))?
        .trim();
    let tenant = ctx.tenant()?.clone();
    let tenants = ctx.tenants.clone();
    let Some(verifier) = tenants.platform.get(&tenant.id) else {
        return Err(Rejection::platform_token_invalid(
            "the tenant has no platform issuer configured",
        ));
    };
    let sub = verifier
        .verify(token, unix_now())
        .await
        .map_err(|e| Rejection::platform_token_invalid(format!("platform token: {e}")))?;
    ctx.platform_sub = Some(sub);
    Ok(())
}

/// A refused mandate: counted by its result, answered by its kind.
fn refusal(ctx: &RequestCtx<'_>, r: Refusal) -> Rejection {
    ctx.count_validation(r.result_label());
    match r {
        Refusal::Invalid(reason) => Rejection::poa_invalid(reason),
        Refusal::Expired(reason) => Rejection::poa_expired(reason),
        Refusal::Revoked(reason) => Rejection::poa_revoked(reason),
        Refusal::SubjectMismatch => Rejection::poa_subject_mismatch(),
        Refusal::ActionMismatch => Rejection::action_mismatch(),
    }
}

/// Default deny for actions: a mandate's `act` must be a canonical name in
/// the tenant's catalogue (built-in plus its extensions), whatever the
/// connector's routes or the policy would say.
async fn known_action(ctx: &mut RequestCtx<'_>) -> Step {
    let Some(credential) = &ctx.credential else {
        return Ok(());
    };
    let tenant = ctx.tenant()?;
    let unknown = match ctx.tenants.catalogues.get(&tenant.id) {
        Some(catalogue) => crate::catalog::unknown_action_reason(catalogue, credential.act()),
        None => Some("the tenant has no action catalogue"),
    };
    match unknown {
        None => Ok(()),
        Some(why) => Err(Rejection::policy_denied(
            "unknown_action".into(),
            Some(json!({"action": crate::clip(credential.act(), 64), "why": why})),
        )),
    }
}

/// The connector (the mandate's `con.connector`, the tenant's default or
/// only one), the canonical path, and the connector's egress allowlist.
async fn egress(ctx: &mut RequestCtx<'_>) -> Step {
    let tenant = ctx.tenant()?.clone();
    let named = mandate_connector(ctx.credential.as_ref())?;
    let (index, connector) =
        upstream::resolve_connector(&tenant, named).map_err(|e| Rejection::egress_denied(e.0))?;
    let path = routes::path::canonical(ctx.req.path())
        .map_err(|e| Rejection::egress_denied(e.to_string()))?
        .into_owned();
    ctx.log.connector.clone_from(&connector.id);
    if !upstream::egress_allowed(&connector.egress_allowlist, &path) {
        return Err(Rejection::egress_denied(format!(
            "{path} is outside connector {}'s egress allowlist",
            connector.id
        )));
    }
    ctx.connector = Some(index);
    ctx.path = path;
    Ok(())
}

/// Method + path carry the action through one of the connector's routes,
/// and are the call the mandate pins, if it pins one. A mandate's `act`
/// must be carried by the matched route; a call without a mandate takes
/// its action from the route, and an `X-ATB-Action` it sends must be one of
/// the route's actions.
async fn bind_route(ctx: &mut RequestCtx<'_>) -> Step {
    let tenant = ctx.tenant()?.clone();
    let connector = ctx.connector_in(&tenant)?;
    let tenants = ctx.tenants.clone();
    let binding = tenants
        .bindings
        .get(&tenant.id)
        .and_then(|c| c.get(&connector.id))
        .ok_or_else(|| Rejection::egress_denied("the connector has no compiled routes".into()))?;
    let routed = match_route(binding, ctx.req, &ctx.path, ctx.credential.as_ref())?;
    ctx.log.action.clone_from(&routed.action);
    ctx.log.route = routed.template.as_deref().unwrap_or_default().to_owned();
    ctx.routed = routed;
    Ok(())
}

/// The connector's rate limit (a call to the tenant's shard only for a
/// connector that has one), and this hour's count of the action for the
/// policy, read from the shard's ledger; both on this task. With shared state the limit and
/// the count come from the one admission script (see `spend`).
async fn connector_limit(ctx: &mut RequestCtx<'_>) -> Step {
    if ctx.state.shared.is_some() {
        return Ok(());
    }
    let tenant = ctx.tenant()?.clone();
    let connector = ctx.connector_in(&tenant)?;
    if let Some(limit) = connector.rate_limit {
        let request = ShardRequest::Dispatch {
            tenant: ctx.tenant_key()?.clone(),
            connector: Arc::from(connector.id.as_str()),
            rate: (limit.requests_per_second, limit.burst),
            now: Instant::now(),
        };
        if let Admission::Limited { retry_after } = shard(ctx, request)? {
            return Err(Rejection::connector_rate_limited(retry_after));
        }
    }
    ctx.usage = usage_ledger(ctx)?.usage(ctx.tenant_key()?, &ctx.routed.action, Instant::now());
    Ok(())
}

/// The request as the policy will see it, read before the jti is spent
/// (a malformed body does not burn the mandate).
async fn read_body(ctx: &mut RequestCtx<'_>) -> Step {
    // One meaning for the body: a single declared type, and no encoding
    // the broker would read as raw bytes while the upstream decodes it.
    let headers = ctx.req.headers();
    if headers.get_all(CONTENT_TYPE).count() > 1 {
        return Err(Rejection::bad_request(
            "Content-Type is sent more than once",
        ));
    }
    if declared_body_type(ctx.req).is_some() && (encoded(ctx.req) || !utf8_charset(ctx.req)) {
        return Err(Rejection::unsupported_body(&ctx.routed.action));
    }
    // An action the policy judges on its parameters must not carry a body
    // the policy cannot see: its constraints would read missing values
    // while the upstream acts on the real ones.
    if !parseable_body(ctx.req)
        && constrained(ctx)
        && !body_is_empty(ctx.req, &mut ctx.payload, &ctx.state.config.upstream).await?
    {
        return Err(Rejection::unsupported_body(&ctx.routed.action));
    }
    let (params, buffered, opaque) =
        read_params(ctx.req, &mut ctx.payload, &ctx.state.config.upstream).await?;
    if params
        .keys()
        .any(|k| k.eq_ignore_ascii_case(METHOD_OVERRIDE_PARAM))
    {
        return Err(Rejection::action_route_mismatch(format!(
            "a {METHOD_OVERRIDE_PARAM} parameter is refused: the route binds the request's own method"
        )));
    }
    if constrained(ctx) {
        // A JSON body that is not an object gives the policy no
        // parameters while the upstream acts on what it holds (a JSON
        // Patch array, say).
        if opaque {
            return Err(Rejection::unsupported_body(&ctx.routed.action));
        }
        // `vendor[amount]=9` is `vendor.amount` to Rails, PHP and qs, a
        // parameter the policy does not see under that name.
        if let Some(k) = params.keys().find(|k| k.contains(['[', ']'])) {
            return Err(Rejection::bad_request(format!(
                "{:?}: bracketed names nest parameters for some upstreams; {} is judged on flat ones",
                crate::clip(k, 64),
                ctx.routed.action
            )));
        }
    }
    ctx.params = params;
    ctx.buffered = buffered;
    Ok(())
}

/// A Biscuit's own checks (every block's, against the request's facts) and
/// the broker's rule that the action is one the authority grants; before
/// single use, so a capability refused here is not spent.
async fn capability(ctx: &mut RequestCtx<'_>) -> Step {
    let Some(Credential::Biscuit(cap)) = &ctx.credential else {
        return Ok(());
    };
    let tenant = ctx.tenant()?;
    let connector = ctx.connector_in(tenant)?;
    let request = crate::biscuit::verify::Request {
        agent: &ctx.log.agent,
        tenant: &tenant.id,
        action: &ctx.routed.action,
        method: ctx.req.method().as_str(),
        path: &ctx.path,
        route: ctx.routed.template.as_deref(),
        connector: &connector.id,
        params: &ctx.params,
        now: unix_now(),
    };
    match crate::biscuit::verify::authorize(cap, &request, &ctx.state.config.biscuit) {
        Ok(()) => Ok(()),
        Err(BiscuitRefusal::Denied(why)) => Err(Rejection::policy_denied(
            "biscuit_check_failed".into(),
            Some(json!({"why": why})),
        )),
        Err(BiscuitRefusal::Invalid(m)) | Err(BiscuitRefusal::Expired(m)) => {
            Err(refusal(ctx, Refusal::Invalid(m.into())))
        }
    }
}

/// Single use: the mandate's `jti` is marked only now that every check a
/// caller could retry has passed, so a refused mandate is not spent.
async fn spend(ctx: &mut RequestCtx<'_>) -> Step {
    if let Some(shared) = &ctx.state.shared {
        return spend_shared(ctx, shared.admission.clone()).await;
    }
    let (Some(credential), Some(replay)) = (&ctx.credential, &ctx.state.replay) else {
        if ctx.credential.is_some() {
            ctx.count_validation("valid");
        }
        return Ok(());
    };
    let tenant = ctx.tenant()?;
    let keep_until = credential.expires() + ctx.state.config.poa.leeway_seconds as i64;
    let replay_metric = |cause: &str| {
        ctx.state
            .metrics
            .replay_rejections
            .with_label_values(&[tenant.id.as_str(), cause])
            .inc()
    };
    let quota = ctx
        .tenants
        .auth
        .get(&tenant.id)
        .map_or(1, |a| a.replay_quota);
    let marked = replay
        .mark(
            ctx.tenant_key()?,
            credential.single_use_id(),
            keep_until,
            unix_now(),
            quota,
        )
        .await;
    match marked {
        Ok(Verdict::Fresh) => {
            ctx.count_validation("valid");
            Ok(())
        }
        Ok(Verdict::Replayed) => {
            replay_metric("replay");
            ctx.count_validation("replay");
            Err(Rejection::poa_replay())
        }
        Err(e) => {
            replay_metric(match e {
                ReplayError::TenantFull => "tenant_full",
                ReplayError::Full => "full",
                ReplayError::Unavailable(_) => "unavailable",
            });
            Err(Rejection::replay_store_unavailable(e.to_string()))
        }
    }
}

/// Shared state: the tenant's and the connector's rate limits, single use
/// and the action's hourly count in one Redis round trip (refused in that
/// order; a limited request does not spend its mandate). Redis failing or
/// slow is a refusal, never a pass.
async fn spend_shared(ctx: &mut RequestCtx<'_>, shared: Arc<SharedAdmission>) -> Step {
    let tenant = ctx.tenant()?.clone();
    let connector = ctx.connector_in(&tenant)?;
    let single_use = match &ctx.credential {
        Some(c) if ctx.state.config.poa.single_use => Some(SingleUse {
            id: c.single_use_id(),
            until: c.expires() + ctx.state.config.poa.leeway_seconds as i64,
            issued: c.issued(),
        }),
        _ => None,
    };
    let verdict = shared
        .admit(Admit {
            tenant: &tenant.id,
            tenant_rate: (tenant.requests_per_second, tenant.burst),
            connector: &connector.id,
            connector_rate: connector
                .rate_limit
                .map(|r| (r.requests_per_second, r.burst)),
            single_use,
            action: &ctx.routed.action,
        })
        .await;
    let replay_metric = |cause: &str| {
        ctx.state
            .metrics
            .replay_rejections
            .with_label_values(&[tenant.id.as_str(), cause])
            .inc()
    };
    match verdict {
        Ok(SharedVerdict::Admitted { usage }) => {
            ctx.usage = usage;
            ctx.usage_counted = true;
            if ctx.credential.is_some() {
                ctx.count_validation("valid");
            }
            Ok(())
        }
        Ok(SharedVerdict::TenantLimited(wait)) => Err(Rejection::rate_limited(wait)),
        Ok(SharedVerdict::ConnectorLimited(wait)) => Err(Rejection::connector_rate_limited(wait)),
        Ok(SharedVerdict::Replayed) => {
            replay_metric("replay");
            ctx.count_validation("replay");
            Err(Rejection::poa_replay())
        }
        Ok(SharedVerdict::IssuedBeforeMemory(epoch_ms)) => {
            replay_metric("forgotten");
            tracing::warn!(
                epoch_ms,
                request_id = ctx.request_id(),
                "mandate issued before the replay store's memory began; refusing"
            );
            Err(Rejection::replay_store_unavailable(format!(
                "the replay store remembers single use only since {} (Unix ms; it restarted without its data): a mandate issued before that cannot be proven unused; use a new one",
                epoch_ms
            )))
        }
        Err(e) => {
            replay_metric("unavailable");
            tracing::warn!(error = %e, request_id = ctx.request_id(), "shared state unavailable; refusing");
            Err(Rejection::replay_store_unavailable(e.to_string()))
        }
    }
}

/// The policy decides; no decision means no access.
async fn decide(ctx: &mut RequestCtx<'_>) -> Step {
    let tenant = ctx.tenant()?.clone();
    let state = ctx.state;
    let poa = ctx.credential.as_ref().map(Credential::policy_map);
    let input = DecisionInput {
        agent: &ctx.log.agent,
        poa: poa.as_deref(),
        method: ctx.req.method().as_str(),
        path: &ctx.path,
        action: &ctx.routed.action,
        params: &ctx.params,
        route: ctx.routed.template.as_deref(),
        route_params: &ctx.routed.params,
        max_ttl_seconds: tenant.poa.max_ttl_seconds,
        current_time_ns: now_ns(),
        usage: ctx.usage,
        tenant: &tenant.id,
        platform_sub: ctx.platform_sub.as_deref(),
    };
    let started = Instant::now();
    let decided = state.policy.decide(ctx.client, &tenant.id, &input).await;
    state
        .metrics
        .policy_seconds
        .with_label_values(&[state.policy.engine_label()])
        .observe(started.elapsed().as_secs_f64());
    if let PolicyClient::Opa { .. } = &state.policy {
        // An answer that is no decision counts as OPA failing too.
        state
            .metrics
            .dependency_up
            .with_label_values(&["opa", ""])
            .set(i64::from(decided.is_ok()));
    }
    let decision = match decided {
        Ok(d) => d,
        Err(e) => {
            state
                .metrics
                .policy_decisions
                .with_label_values(&[&tenant.id, "error", "unknown"])
                .inc();
            state
                .metrics
                .policy_errors
                .with_label_values(&[state.policy.engine_label(), e.cause()])
                .inc();
            tracing::warn!(error = %e, request_id = ctx.request_id(), "policy unavailable; refusing");
            return Err(Rejection::policy_unavailable(matches!(
                e,
                crate::policy::PolicyError::Overloaded
            )));
        }
    };
    ctx.log.risk_tier.clone_from(&decision.risk_tier);
    state
        .metrics
        .policy_decisions
        .with_label_values(&[
            tenant.id.as_str(),
            if decision.allow { "allow" } else { "deny" },
            decision.tier_label(),
        ])
        .inc();
    if !decision.allow && ctx.usage_counted {
        if let Some(shared) = &state.shared {
            shared.admission.uncount(&tenant.id, &ctx.routed.action);
        }
    }
    match (decision.allow, &ctx.credential) {
        (false, Some(_)) => Err(Rejection::policy_denied(decision.reason, decision.details)),
        (false, None) => Err(Rejection::poa_required_by_policy(decision.reason)),
        (true, Some(_)) => Ok(()),
        (true, None) => {
            // The audit names the path taken (allow_low_risk_without_poa).
            ctx.log.reason = decision.reason;
            Ok(())
        }
    }
}

/// Counts the allowed action for the policy's hourly limits, in the
/// shard's ledger on this task (already counted by the admission script
/// with shared state).
async fn count_usage(ctx: &mut RequestCtx<'_>) -> Step {
    if ctx.usage_counted {
        return Ok(());
    }
    let tenant = ctx.tenant_key()?.clone();
    usage_ledger(ctx)?.record(tenant, ctx.routed.action.clone(), Instant::now());
    Ok(())
}

/// For a tenant with `audit_required`: a durable `forward` audit record
/// before anything goes upstream; if it cannot be made durable, the
/// request is refused, never forwarded (fail closed).
async fn durable_record(ctx: &mut RequestCtx<'_>) -> Step {
    if !ctx.tenant()?.audit_required {
        return Ok(());
    }
    let event = ctx.log.forward_event();
    if let Err(e) = ctx.state.audit.record_durable(event).await {
        tracing::error!(
            error = %e,
            request_id = ctx.request_id(),
            "the pre-forward audit record is not durable; the request is refused"
        );
        ctx.log.reason = e.to_string();
        return Err(Rejection::audit_unavailable());
    }
    Ok(())
}

/// Forwards the canonical path and streams the answer back.
async fn forward(ctx: &mut RequestCtx<'_>) -> Step {
    let tenant = ctx.tenant()?.clone();
    let connector = ctx.connector_in(&tenant)?;
    let state = ctx.state;
    let url = upstream::target_url(connector, &ctx.path, ctx.req.query_string());
    let stamp = Stamp {
        agent: &ctx.log.agent,
        tenant: &tenant.id,
        action: &ctx.routed.action,
        request_id: &ctx.log.request_id,
        peer: ctx.req.peer_addr().map(|a| a.ip()),
    };
    let body = match (ctx.buffered.take(), ctx.payload.take()) {
        (Some(bytes), _) => Body::Buffered(bytes),
        (None, Some(p)) => Body::Streaming {
            payload: p,
            limit: state.config.upstream.max_body_bytes,
            deadline: tokio::time::Instant::now()
                + Duration::from_secs(state.config.upstream.body_timeout_seconds),
        },
        (None, None) => Body::Buffered(web::Bytes::new()),
    };
    let started = Instant::now();
    let forwarded = upstream::forward(
        ctx.client,
        &url,
        ctx.req.method().clone(),
        ctx.req.headers(),
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
        Err(UpstreamError::BodyTimeout) => "body_timeout",
        Err(UpstreamError::MethodPart) => "method_part",
    };
    m.upstream_requests
        .with_label_values(&[&tenant.id, &connector.id, outcome])
        .inc();
    // Reachable is up (its own 5xx included); no answer in time is down.
    // A body over the limit or late is the agent's doing, not the upstream's.
    let reached = match &forwarded {
        Ok(_) => Some(true),
        Err(UpstreamError::Timeout | UpstreamError::Failed(_)) => Some(false),
        Err(
            UpstreamError::BodyTooLarge(_) | UpstreamError::BodyTimeout | UpstreamError::MethodPart,
        ) => None,
    };
    if let Some(up) = reached {
        m.dependency_up
            .with_label_values(&[&format!("upstream:{}", connector.id), &tenant.id])
            .set(i64::from(up));
    }
    ctx.response = Some(match forwarded {
        Ok(response) => response,
        Err(UpstreamError::Timeout) => return Err(Rejection::upstream_timeout()),
        Err(UpstreamError::BodyTooLarge(limit)) => return Err(Rejection::body_too_large(limit)),
        Err(UpstreamError::MethodPart) => {
            return Err(Rejection::action_route_mismatch(format!(
                "a {METHOD_OVERRIDE_PARAM} part in a multipart body is refused (or a part header too long to check): the route binds the request's own method"
            )))
        }
        Err(UpstreamError::BodyTimeout) => {
            return Err(Rejection::body_timeout(
                state.config.upstream.body_timeout_seconds,
            ))
        }
        Err(UpstreamError::Failed(e)) => {
            tracing::warn!(connector = %connector.id, error = %e, "upstream failed");
            return Err(Rejection::upstream_error(
                "the upstream could not be reached".into(),
            ));
        }
    });
    Ok(())
}

fn retry_after(ctx: &RequestCtx<'_>) -> u64 {
    u64::from(ctx.state.config.broker.retry_after_seconds)
}

/// The connector a credential names in `con.connector`, if any.
fn mandate_connector(credential: Option<&Credential>) -> Result<Option<&str>, Rejection> {
    match credential.and_then(|c| c.con()?.get("connector")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Rejection::egress_denied(
            "con.connector must be a string".into(),
        )),
    }
}

/// The route binding of one call (see [`bind_route`]).
fn match_route(
    binding: &Binding,
    req: &HttpRequest,
    path: &str,
    credential: Option<&Credential>,
) -> Result<Routed, Rejection> {
    let method = req.method().as_str();
    if let Some(h) = req.headers().keys().find(|h| {
        METHOD_OVERRIDES.contains(&crate::broker::upstream::cgi_name(h.as_str()).as_ref())
    }) {
        return Err(Rejection::action_route_mismatch(format!(
            "{h} is refused: the route binds the request's own method"
        )));
    }
    if req.headers().get_all(X_ATB_ACTION).nth(1).is_some() {
        return Err(Rejection::bad_request(
            "X-ATB-Action is sent more than once",
        ));
    }
    if let Some(c) = credential {
        PinnedCall::from_con(c.con())
            .and_then(|pin| match pin {
                Some(p) => p.check(method, path, req.query_string()),
                None => Ok(()),
            })
            .map_err(|e| Rejection::action_route_mismatch(e.0))?;
    }
    let named = match (credential, req.headers().get(X_ATB_ACTION)) {
        (Some(c), _) => Some(c.act().to_owned()),
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
        template: Some(found.shared.clone()),
        params: found
            .params
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect(),
    })
}

/// Whether the policy judges this request's action on its parameters.
fn constrained(ctx: &RequestCtx<'_>) -> bool {
    ctx.state
        .policy
        .constrained_actions()
        .contains(ctx.routed.action.as_str())
}

/// Whether the declared charset, if any, is UTF-8 (or its subset ASCII):
/// the broker reads JSON and forms as UTF-8, an upstream honouring
/// `charset=utf-16` would read other characters.
fn utf8_charset(req: &HttpRequest) -> bool {
    let Some(v) = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    v.split(';').skip(1).all(|param| {
        let Some((name, value)) = param.split_once('=') else {
            return true;
        };
        !name.trim().eq_ignore_ascii_case("charset") || {
            let value = value.trim().trim_matches('"');
            ["utf-8", "utf8", "us-ascii"]
                .iter()
                .any(|ok| value.eq_ignore_ascii_case(ok))
        }
    })
}

/// Whether the body is one the broker reads into `request.params`: JSON
/// or a form, not content-encoded.
fn parseable_body(req: &HttpRequest) -> bool {
    declared_body_type(req).is_some() && !encoded(req)
}

/// A body type the broker parses into `request.params`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
}

/// The declared type when it is one the broker parses (JSON or a form).
fn declared_body_type(req: &HttpRequest) -> Option<BodyKind> {
    let content_type = content_type(req);
    if content_type == "application/json" || content_type.ends_with("+json") {
        Some(BodyKind::Json)
    } else if content_type == "application/x-www-form-urlencoded" {
        Some(BodyKind::Form)
    } else {
        None
    }
}

/// A `Content-Encoding` other than `identity`: the bytes are not what the
/// upstream will read once it decodes them.
fn encoded(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(actix_web::http::header::CONTENT_ENCODING)
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}

/// The declared media type, lower case, without parameters.
fn content_type(req: &HttpRequest) -> String {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Whether the request has no body: `Content-Length: 0`, or (without a
/// length, e.g. HTTP/2) a payload that ends before its first byte. Reads at
/// most up to the first non-empty chunk, within the body deadline.
async fn body_is_empty(
    req: &HttpRequest,
    payload: &mut Option<web::Payload>,
    limits: &crate::broker::config::UpstreamConfig,
) -> Result<bool, Rejection> {
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        return Ok(len.as_bytes() == b"0");
    }
    let Some(body) = payload.as_mut() else {
        return Ok(true);
    };
    let deadline = Duration::from_secs(limits.body_timeout_seconds);
    let first = tokio::time::timeout(deadline, async {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) if c.is_empty() => continue,
                Ok(_) => return Ok(false),
                Err(_) => return Err(Rejection::bad_request("the request body could not be read")),
            }
        }
        Ok(true)
    })
    .await
    .map_err(|_| Rejection::body_timeout(limits.body_timeout_seconds))??;
    Ok(first)
}

/// `request.params` (`crate::broker::params`): the query string and, for a JSON
/// object or form body, its members — no name twice, none in both. Such
/// bodies are read (bounded) and forwarded exactly as read (`Some(bytes)`);
/// other bodies stay in `payload` and stream through untouched. The third
/// value says the body is JSON other than an object (no params in it).
async fn read_params(
    req: &HttpRequest,
    payload: &mut Option<web::Payload>,
    limits: &crate::broker::config::UpstreamConfig,
) -> Result<(Map<String, Value>, Option<web::Bytes>, bool), Rejection> {
    let bad = |e: crate::broker::params::ParamsError| Rejection::bad_request(e.to_string());
    let query = crate::broker::params::from_query(req.query_string()).map_err(bad)?;
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
    let Some(kind) = declared_body_type(req) else {
        return Ok((query, None, false));
    };
    let Some(mut body) = payload.take() else {
        return Ok((query, None, false));
    };
    let mut buf = web::BytesMut::new();
    let deadline = Duration::from_secs(limits.body_timeout_seconds);
    let read = tokio::time::timeout(deadline, async {
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|_| Rejection::bad_request("the request body could not be read"))?;
            if buf.len() + chunk.len() > limits.max_json_body_bytes {
                crate::runtime::drain::drain(&mut body).await;
                return Err(Rejection::body_too_large(limits.max_json_body_bytes as u64));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    })
    .await;
    match read {
        Ok(read) => read?,
        Err(_) => return Err(Rejection::body_timeout(limits.body_timeout_seconds)),
    }
    let bytes = buf.freeze();
    let members = if kind == BodyKind::Json {
        crate::broker::params::from_json(&bytes)
    } else {
        crate::broker::params::from_form(&bytes).map(Some)
    }
    .map_err(bad)?;
    let opaque = members.is_none();
    let params = crate::broker::params::merge(query, members.unwrap_or_default()).map_err(bad)?;
    Ok((params, Some(bytes), opaque))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One call to the tenant's shard, on this task; a failed call refuses
/// (fail closed).
fn shard(ctx: &RequestCtx<'_>, request: ShardRequest) -> Result<Admission, Rejection> {
    let tenant = ctx.tenant()?;
    ctx.state
        .shards
        .call(&tenant.id, request)
        .map_err(|e| call_rejection(e, retry_after(ctx)))
}

/// The usage ledger of the tenant's shard.
fn usage_ledger<'s>(ctx: &RequestCtx<'s>) -> Result<&'s UsageLedger, Rejection> {
    let state = ctx.state;
    let index = state.shards.router().route(&ctx.tenant()?.id);
    Ok(state.shard_states.ledger(index))
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
