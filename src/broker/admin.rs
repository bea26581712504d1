//! The plain-HTTP admin listener: liveness, readiness, metrics, and the
//! token-protected maintenance toggle, policy reload, tenant suspension and
//! revocations.

use actix_web::http::header::{ContentType, AUTHORIZATION};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::broker::admission::ShardRequest;
use crate::broker::policy_client::PolicyClient;
use crate::broker::state::BrokerState;
use crate::error::Rejection;

pub fn routes(cfg: &mut web::ServiceConfig, fault_injection: bool) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics))
        .route("/admin/maintenance", web::get().to(get_maintenance))
        .route("/admin/maintenance", web::post().to(set_maintenance))
        .route("/admin/policy/reload", web::post().to(reload_policy))
        .route("/admin/config/reload", web::post().to(reload_config))
        .route("/admin/jwks/refresh", web::post().to(refresh_jwks))
        .route("/admin/tenants/{id}", web::get().to(get_tenant))
        .route("/admin/tenants/{id}", web::post().to(set_tenant))
        .route(
            "/admin/tenants/{id}/revocations",
            web::get().to(get_revocations),
        )
        .route(
            "/admin/tenants/{id}/revocations",
            web::post().to(add_revocations),
        );
    if fault_injection {
        cfg.route("/debug/fault", web::post().to(inject_fault));
    }
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn ready(
    state: web::Data<BrokerState>,
    outbound: web::Data<crate::broker::gateway::Outbound>,
) -> HttpResponse {
    let maintenance = state.maintenance();
    let ready = state.ready_for_traffic(&outbound.client).await;
    state.refresh_dependency_gauges();
    // Which dependencies failed their last call, ready or not (a JWKS
    // serving stale keys, a collector the audit writer retries, OPA
    // answering junk leave the replica ready but are named here).
    let failing = state.metrics.failing_dependencies();
    match ready {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({
            "ready": true, "maintenance": maintenance, "failing": failing,
        })),
        Err(reason) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "ready": false, "reason": reason, "maintenance": maintenance, "failing": failing,
        })),
    }
}

async fn metrics(state: web::Data<BrokerState>) -> HttpResponse {
    state.refresh_dependency_gauges();
    HttpResponse::Ok()
        .content_type(ContentType(
            "text/plain; version=0.0.4; charset=utf-8"
                .parse()
                .unwrap_or(mime_text()),
        ))
        .body(state.metrics.render())
}

fn mime_text() -> actix_web::mime::Mime {
    actix_web::mime::TEXT_PLAIN_UTF_8
}

/// Checks the admin bearer token.
/// The verified client identity of a connection on the operator listener.
#[derive(Clone)]
pub struct OperatorPeer(pub Option<crate::spiffe::SpiffeId>);

/// Reads the operator certificate's identity once, at accept.
pub fn operator_on_connect(
    connection: &dyn std::any::Any,
    extensions: &mut actix_web::dev::Extensions,
) {
    use actix_tls::accept::openssl::TlsStream;
    if let Some(tls) = connection.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>() {
        let id = crate::runtime::tls::peer_identity(tls.ssl()).ok();
        extensions.insert(OperatorPeer(id));
    }
}

/// The admin token, and for a mutating route with `admin.operator_ids`
/// set, a verified operator certificate (only the operator listener has
/// one to present).
fn authorize(req: &HttpRequest, state: &BrokerState) -> Result<(), Rejection> {
    check_token(req, state)?;
    let operators = &state.config.admin.operator_ids;
    if req.method() == actix_web::http::Method::GET || operators.is_empty() {
        return Ok(());
    }
    let peer = req.conn_data::<OperatorPeer>().and_then(|p| p.0.as_ref());
    match peer {
        Some(id) if operators.iter().any(|o| o == id.as_str()) => Ok(()),
        _ => Err(Rejection::new(
            StatusCode::FORBIDDEN,
            "operator_mtls_required",
            "this admin route needs an operator certificate on the operator listener (admin.operator_listen_addr)",
        )),
    }
}

fn check_token(req: &HttpRequest, state: &BrokerState) -> Result<(), Rejection> {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match state.admin_token_matches(presented) {
        None => Err(Rejection::new(
            StatusCode::NOT_FOUND,
            "admin_disabled",
            "the admin API is disabled: no admin token is configured",
        )),
        Some(false) => Err(Rejection::new(
            StatusCode::UNAUTHORIZED,
            "admin_unauthorized",
            "a valid admin bearer token is required",
        )),
        Some(true) => Ok(()),
    }
}

async fn get_maintenance(req: HttpRequest, state: web::Data<BrokerState>) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return r.to_response(&request_id(&req));
    }
    HttpResponse::Ok().json(serde_json::json!({"maintenance": state.maintenance()}))
}

/// Largest admin request body: the biggest is a revocation list.
const ADMIN_BODY_LIMIT: usize = 64 * 1024;

/// An authorized admin request's JSON body (401/404 from [`authorize`], or
/// a 400 naming the `expected` shape). The token is checked before a byte
/// of the body is read, so an unauthenticated caller only ever gets 401; a
/// body over [`ADMIN_BODY_LIMIT`] is 413 `body_too_large`.
async fn admin_json<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    state: &BrokerState,
    payload: web::Payload,
    expected: &str,
) -> Result<T, Rejection> {
    authorize(req, state)?;
    let body = payload
        .to_bytes_limited(ADMIN_BODY_LIMIT)
        .await
        .map_err(|_| Rejection::body_too_large(ADMIN_BODY_LIMIT as u64))?
        .map_err(|_| Rejection::bad_request("the request body could not be read"))?;
    json_body(&body, expected)
}

/// The request id `TracingLogger` gave this admin request (also sent as
/// `X-Request-ID` by [`stamp_request_id`]).
fn request_id(req: &HttpRequest) -> String {
    use actix_web::HttpMessage;
    req.extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// Middleware (`App::wrap_fn`): sends every admin answer's request id as
/// `X-Request-ID`, as the agent listener does.
pub fn stamp_request_id<S, B>(
    req: actix_web::dev::ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>>
       + 'static
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    S::Future: 'static,
    B: 'static,
{
    let id = request_id(req.request());
    let response = service.call(req);
    async move {
        let mut res = response.await?;
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&id) {
            res.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static("x-request-id"),
                v,
            );
        }
        Ok(res)
    }
}

/// An admin request's JSON body, or a 400 naming the `expected` shape.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|e| {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected {expected}: {e}"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceToggle {
    enabled: bool,
}

async fn set_maintenance(
    req: HttpRequest,
    state: web::Data<BrokerState>,
    payload: web::Payload,
) -> HttpResponse {
    let toggle: MaintenanceToggle =
        match admin_json(&req, &state, payload, r#"{"enabled": true|false}"#).await {
            Ok(t) => t,
            Err(r) => return r.to_response(&request_id(&req)),
        };
    state.set_maintenance(toggle.enabled);
    tracing::warn!(
        maintenance = toggle.enabled,
        "maintenance mode changed through the admin API"
    );
    HttpResponse::Ok().json(serde_json::json!({"maintenance": toggle.enabled}))
}

fn tenant_view(state: &BrokerState, id: &str) -> Option<serde_json::Value> {
    let tenants = state.tenants.load();
    let tenant = tenants.directory.get(id)?;
    Some(serde_json::json!({
        "id": tenant.id,
        "enabled": tenant.enabled,
        "suspended": state.connections.suspended(id),
        "live_connections": state.connections.live(id),
    }))
}

fn no_such_tenant(req: &HttpRequest) -> HttpResponse {
    Rejection::new(
        StatusCode::NOT_FOUND,
        "unknown_tenant",
        "no tenant with this id is configured",
    )
    .to_response(&request_id(req))
}

async fn get_tenant(
    req: HttpRequest,
    state: web::Data<BrokerState>,
    id: web::Path<String>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return r.to_response(&request_id(&req));
    }
    match tenant_view(&state, &id) {
        Some(v) => HttpResponse::Ok().json(v),
        None => no_such_tenant(&req),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantToggle {
    suspended: bool,
}

/// Suspends or resumes a tenant: `{"suspended": true}` refuses its
/// requests (403 `unknown_tenant`) and closes its live connections at once;
/// `false` lets them back. Not persisted: a restart uses the configuration.
async fn set_tenant(
    req: HttpRequest,
    state: web::Data<BrokerState>,
    id: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let toggle: TenantToggle =
        match admin_json(&req, &state, payload, r#"{"suspended": true|false}"#).await {
            Ok(t) => t,
            Err(r) => return r.to_response(&request_id(&req)),
        };
    let Some(closed) = state.connections.suspend(&id, toggle.suspended) else {
        return no_such_tenant(&req);
    };
    tracing::warn!(
        tenant = %id,
        suspended = toggle.suspended,
        closed_connections = closed,
        "tenant suspension changed through the admin API"
    );
    match tenant_view(&state, &id) {
        Some(mut v) => {
            v["closed_connections"] = closed.into();
            HttpResponse::Ok().json(v)
        }
        None => no_such_tenant(&req),
    }
}

fn revocations_view(kids: Vec<String>, jtis: Vec<String>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"kids": kids, "jtis": jtis}))
}

async fn get_revocations(
    req: HttpRequest,
    state: web::Data<BrokerState>,
    id: web::Path<String>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return r.to_response(&request_id(&req));
    }
    match state.tenants.load().auth.get(id.as_str()) {
        Some(auth) => {
            let (kids, jtis) = auth.revocations();
            revocations_view(kids, jtis)
        }
        None => no_such_tenant(&req),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revocations {
    #[serde(default)]
    kids: Vec<String>,
    #[serde(default)]
    jtis: Vec<String>,
}

/// Revokes signing keys (`kids`) and mandates (`jtis`) of a tenant at once:
/// the next request presenting them gets 401 `poa_revoked`. With `[redis]`
/// the revocation is stored there and every replica applies it within a
/// second (503 `state_unavailable` if Redis cannot take it); without, it is
/// per replica and not persisted: for a lasting revocation also set
/// `poa.revoked_kids` / `revoked_jtis`, or publish the kid in the issuer's
/// JWKS `revoked_kids` (`atb keys rotate --emergency`).
async fn add_revocations(
    req: HttpRequest,
    state: web::Data<BrokerState>,
    id: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let add: Revocations =
        match admin_json(&req, &state, payload, r#"{"kids": [..], "jtis": [..]}"#).await {
            Ok(r) => r,
            Err(r) => return r.to_response(&request_id(&req)),
        };
    let tenants = state.tenants.load();
    let Some(auth) = tenants.auth.get(id.as_str()) else {
        return no_such_tenant(&req);
    };
    let bad = add
        .kids
        .iter()
        .chain(&add.jtis)
        .any(|v| v.is_empty() || v.len() > 256);
    if bad {
        return Rejection::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "each kid and jti must be 1 to 256 characters",
        )
        .to_response(&request_id(&req));
    }
    // With shared state the revocation goes to Redis first: every replica
    // (this one included) merges it within a second; it is applied here at
    // once as well.
    if let Some(shared) = &state.shared {
        use crate::broker::shared_revocations::AddError;
        match shared
            .revocations
            .add(id.as_str(), &add.kids, &add.jtis)
            .await
        {
            Ok(()) => {}
            Err(AddError::TooMany) => {
                return Rejection::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "too_many_revocations",
                    AddError::TooMany.to_string(),
                )
                .to_response(&request_id(&req))
            }
            Err(AddError::Store(e)) => {
                return Rejection::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "state_unavailable",
                    format!("the revocation was not stored for the other replicas: {e}"),
                )
                .retry_after(1)
                .to_response(&request_id(&req))
            }
        }
    }
    if let Err(e) = auth.revoke(&add.kids, &add.jtis) {
        return Rejection::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_revocations",
            e.to_string(),
        )
        .to_response(&request_id(&req));
    }
    tracing::warn!(tenant = %id, kids = ?add.kids, jtis = add.jtis.len(), "revocations added through the admin API");
    let (kids, jtis) = auth.revocations();
    revocations_view(kids, jtis)
}

/// Re-reads the policy now: 200 `{"changed": bool}`, 422 with the reason
/// when the new policy is refused (the running one stays), 409 on OPA.
/// Re-reads the configuration file and swaps in its tenants (422 naming the
/// key of a bad file; the running tenants stay).
async fn reload_config(req: HttpRequest, state: web::Data<BrokerState>) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return r.to_response(&request_id(&req));
    }
    match crate::broker::reload_config(state.into_inner()).await {
        Ok(crate::broker::state::ReloadOutcome::Unchanged) => {
            HttpResponse::Ok().json(serde_json::json!({"changed": false}))
        }
        Ok(crate::broker::state::ReloadOutcome::Changed { tenants, closed }) => HttpResponse::Ok()
            .json(serde_json::json!({"changed": true, "tenants": tenants, "connections_closed": closed})),
        Err(e) => {
            Rejection::new(StatusCode::UNPROCESSABLE_ENTITY, "config_invalid", e.to_string())
                .to_response(&request_id(&req))
        }
    }
}

/// Fetches every tenant's JWKS now (single flight per tenant, no
/// cooldown): how an issuer (AgentAuth after a rotation or an emergency
/// revocation) makes brokers see its keys and revoked kids at once instead
/// of at their next refresh. Needs the admin token; it changes nothing but
/// when keys are fetched from their configured URLs, so an operator
/// certificate is not required.
async fn refresh_jwks(
    req: HttpRequest,
    state: web::Data<BrokerState>,
    outbound: web::Data<crate::broker::gateway::Outbound>,
) -> HttpResponse {
    if let Err(r) = check_token(&req, &state) {
        return r.to_response(&request_id(&req));
    }
    let tenants = state.tenants.load_full();
    let (mut refreshed, mut failed) = (0, 0);
    for cache in tenants.jwks() {
        match cache.refresh_now(&outbound.client).await {
            Ok(_) => refreshed += 1,
            Err(_) => failed += 1, // logged and counted by the cache
        }
    }
    tracing::info!(refreshed, failed, "JWKS refreshed on request");
    HttpResponse::Ok().json(serde_json::json!({"refreshed": refreshed, "failed": failed}))
}

async fn reload_policy(req: HttpRequest, state: web::Data<BrokerState>) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return r.to_response(&request_id(&req));
    }
    if matches!(state.policy, PolicyClient::Opa { .. }) {
        return Rejection::new(
            StatusCode::CONFLICT,
            "policy_engine_opa",
            "the policy engine is opa: OPA loads its own policy",
        )
        .to_response(&request_id(&req));
    }
    let reloading = state.clone();
    match web::block(move || reloading.reload_policy()).await {
        Ok(Ok(changed)) => HttpResponse::Ok().json(serde_json::json!({"changed": changed})),
        Ok(Err(reason)) => Rejection::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy_invalid",
            reason.to_string(),
        )
        .to_response(&request_id(&req)),
        Err(_) => Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy_reload_failed",
            "the reload could not run",
        )
        .to_response(&request_id(&req)),
    }
}

#[derive(Deserialize)]
struct FaultTarget {
    tenant: Option<String>,
    periodic: Option<String>,
}

/// Test-only (`debug.fault_injection`, and the admin token): `?tenant=ID`
/// makes the shard owning
/// that tenant panic; `?periodic=NAME` makes the next tick of every timer
/// loop named NAME (e.g. `jwks_refresh`, `replay_sweep`, `policy_reload`)
/// panic.
async fn inject_fault(
    req: HttpRequest,
    state: web::Data<BrokerState>,
    target: web::Query<FaultTarget>,
) -> HttpResponse {
    // Even when enabled, the hook needs the admin token.
    if let Err(r) = authorize(&req, &state) {
        return r.to_response(&request_id(&req));
    }
    if let Some(name) = &target.periodic {
        let loops = state.periodic(name);
        loops.iter().for_each(|h| h.inject_fault());
        tracing::warn!(periodic = %name, loops = loops.len(), "fault injected through the debug hook");
        if loops.is_empty() {
            return HttpResponse::NotFound().json(serde_json::json!({
                "error": "unknown_periodic", "reason": "no timer loop has this name",
            }));
        }
        return HttpResponse::Ok().json(serde_json::json!({"loops": loops.len()}));
    }
    let Some(tenant) = &target.tenant else {
        return HttpResponse::BadRequest().json(serde_json::json!({
            "error": "bad_request", "reason": "name ?tenant= or ?periodic=",
        }));
    };
    let shard = state.shards.router().route(tenant);
    let result = state.shards.call(tenant, ShardRequest::InjectFault);
    tracing::warn!(tenant = %tenant, shard, ?result, "fault injected through the debug hook");
    HttpResponse::Ok().json(serde_json::json!({
        "shard": shard,
        "result": match result {
            Ok(_) => "handled".to_string(),
            Err(e) => e.to_string(),
        },
    }))
}
