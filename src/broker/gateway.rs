//! The agent-facing pipeline on the mTLS listener, one step after another
//! (SPEC §3). Each step either passes or ends the request with its own
//! rejection; nothing after a failed step runs.

use std::time::Instant;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use atb_actors::CallError;
use tracing_actix_web::RequestId;

use crate::admission::{Admission, ShardRequest};
use crate::poa::presented::presented_token;
use crate::broker::state::BrokerState;
use crate::connection::{ConnectionSlot, PeerConnection};
use crate::error::Rejection;
use crate::metrics::{status_class, NO_TENANT};
use crate::tenant::Tenant;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Routes of the mTLS listener.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .default_service(web::to(handle));
}

/// Liveness on the agent port; needs no client certificate.
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Every protected request.
async fn handle(req: HttpRequest, state: web::Data<BrokerState>) -> HttpResponse {
    let started = Instant::now();
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let mut tenant: Option<Tenant> = None;
    let outcome = pipeline(&req, &state, &mut tenant).await;
    let tenant_label = tenant.as_ref().map_or(NO_TENANT, |t| t.id.as_str());
    let (mut response, code) = match outcome {
        Ok(response) => (response, None),
        Err(rejection) => {
            state
                .metrics
                .rejections
                .with_label_values(&[tenant_label, rejection.code])
                .inc();
            (rejection.to_response(&request_id), Some(rejection.code))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID, v);
    }
    let status = response.status().as_u16();
    state
        .metrics
        .requests
        .with_label_values(&[tenant_label, status_class(status)])
        .inc();
    let elapsed = started.elapsed();
    state
        .metrics
        .request_duration
        .with_label_values(&[tenant_label])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        tenant = tenant_label,
        method = %req.method(),
        path = req.path(),
        status,
        error = code.unwrap_or(""),
        latency_us = elapsed.as_micros() as u64,
        "request"
    );
    response
}

async fn pipeline(
    req: &HttpRequest,
    state: &BrokerState,
    tenant_out: &mut Option<Tenant>,
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

    // 3. A known, enabled tenant owns that identity.
    let tenant = peer
        .tenant
        .as_ref()
        .ok_or_else(|| Rejection::unknown_tenant("no tenant owns this SPIFFE ID"))?;
    *tenant_out = Some(tenant.clone());
    if !tenant.enabled {
        return Err(Rejection::unknown_tenant("the tenant is disabled"));
    }
    if matches!(peer.slot, ConnectionSlot::OverLimit) {
        return Err(Rejection::connection_limit(retry_after));
    }

    // 4. The tenant's shard admits the request under its rate limit.
    admit(state, tenant, retry_after).await?;

    // 5. A PoA mandate is presented.
    let Some(_token) = presented_token(req.headers())? else {
        return Err(Rejection::poa_required());
    };
    tracing::debug!(agent = %agent, "PoA presented");
    // No verification keys exist for any tenant yet, so no mandate can be
    // verified: fail closed.
    Err(Rejection::poa_invalid(
        "no PoA verification keys are configured for this tenant",
    ))
}

async fn admit(state: &BrokerState, tenant: &Tenant, retry_after: u64) -> Result<(), Rejection> {
    let key = state
        .tenant_key(&tenant.id)
        .ok_or_else(|| Rejection::unknown_tenant("the tenant is not configured"))?;
    let request = ShardRequest::Admit {
        tenant: key.clone(),
        requests_per_second: tenant.requests_per_second,
        burst: tenant.burst,
        now: Instant::now(),
    };
    match state.shards.call(&tenant.id, request).await {
        Ok(Admission::Admitted) => Ok(()),
        Ok(Admission::Limited { retry_after }) => Err(Rejection::rate_limited(retry_after)),
        Err(e) => Err(call_rejection(e, retry_after)),
    }
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
