//! Rejections: one distinct status and JSON error code per pipeline step
//! (SPEC §3). Bodies never carry internals.

use std::borrow::Cow;
use std::time::Duration;

use actix_web::http::header::{HeaderValue, CONNECTION, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde::Serialize;

/// A refused request.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `spiffe_id_required`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub reason: Cow<'static, str>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// Ask the client to close the connection after this answer.
    pub close: bool,
    /// Structured detail (the policy's `details` on `policy_denied`).
    pub details: Option<serde_json::Value>,
}

impl Rejection {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            reason: reason.into(),
            retry_after: None,
            close: false,
            details: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    pub fn maintenance(retry_after: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "maintenance",
            "the broker is in maintenance mode",
        )
        .retry_after(retry_after)
    }

    pub fn spiffe_id_required(reason: String) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "spiffe_id_required", reason)
    }

    pub fn unknown_tenant(reason: &'static str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "unknown_tenant", reason)
    }

    pub fn connection_limit(retry_after: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "connection_limit",
            "the tenant has reached its limit of live connections",
        )
        .retry_after(retry_after)
        .closing()
    }

    pub fn rate_limited(wait: Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "the tenant's request rate limit is exceeded",
        )
        .retry_after(wait.as_secs_f64().ceil() as u64)
    }

    pub fn overloaded(retry_after: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the broker is at capacity for this tenant",
        )
        .retry_after(retry_after)
    }

    pub fn shard_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shard_unavailable",
            "the tenant's shard is restarting",
        )
        .retry_after(1)
    }

    pub fn poa_required() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "poa_required",
            "a PoA mandate is required (Authorization: Bearer or X-PoA-Token)",
        )
    }

    /// No mandate, on the unmandated low-risk path, and the policy did not
    /// allow the call without one.
    pub fn poa_required_by_policy(policy_reason: String) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "poa_required",
            format!("a PoA mandate is required for this call (policy: {policy_reason})"),
        )
    }

    pub fn poa_invalid(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "poa_invalid", reason)
    }

    /// An `X-ATB-Platform-Token` that does not verify against the tenant's
    /// platform issuer, or one sent for a tenant without one.
    pub fn platform_token_invalid(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "platform_token_invalid", reason)
    }

    pub fn poa_expired(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "poa_expired", reason)
    }

    pub fn poa_revoked(reason: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "poa_revoked", reason)
    }

    pub fn poa_subject_mismatch() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "poa_subject_mismatch",
            "the mandate's sub is not the client certificate's SPIFFE ID",
        )
    }

    pub fn action_mismatch() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "action_mismatch",
            "X-ATB-Action does not equal the mandate's act",
        )
    }

    pub fn poa_replay() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "poa_replay",
            "this mandate has already been used",
        )
    }

    pub fn replay_store_unavailable(reason: String) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "replay_store_unavailable",
            reason,
        )
        .retry_after(1)
    }

    /// An `audit_required` tenant's pre-forward record could not be made
    /// durable: the request is not forwarded (the cause is logged).
    pub fn audit_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit record could not be made durable; the request was not forwarded",
        )
        .retry_after(1)
    }

    pub fn policy_denied(reason: String, details: Option<serde_json::Value>) -> Self {
        let mut r = Self::new(StatusCode::FORBIDDEN, "policy_denied", reason);
        r.details = details;
        r
    }

    /// No decision could be reached. The cause (engine text, OPA's
    /// answer) is logged with the request id, never told to the agent; the
    /// reason only says whether waiting may help.
    pub fn policy_unavailable(overloaded: bool) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy_unavailable",
            if overloaded {
                "the policy engine is busy; retry later"
            } else {
                "no policy decision could be reached; the request is refused"
            },
        )
        .retry_after(1)
    }

    pub fn egress_denied(reason: String) -> Self {
        Self::new(StatusCode::FORBIDDEN, "egress_denied", reason)
    }

    /// No route of the connector carries the mandate's action with this
    /// method and path (or the call is not the one `con.http` pins).
    pub fn action_route_mismatch(reason: String) -> Self {
        Self::new(StatusCode::FORBIDDEN, "action_route_mismatch", reason)
    }

    /// A step failed in a way the agent cannot fix (a panic, a bug);
    /// never an allow.
    pub fn internal_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the request could not be completed; it was refused",
        )
    }

    pub fn connector_rate_limited(wait: Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "the connector's rate limit is exceeded",
        )
        .retry_after(wait.as_secs_f64().ceil() as u64)
    }

    pub fn upstream_error(reason: String) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", reason)
    }

    pub fn upstream_timeout() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the upstream did not answer in time",
        )
    }

    pub fn body_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are limited to {limit} bytes"),
        )
    }

    /// The body did not arrive in time; the connection is closed (its
    /// stream may be mid-body).
    pub fn body_timeout(seconds: u64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {seconds} s"),
        )
        .closing()
    }

    /// A body the policy must judge (its action has parameter
    /// constraints) in a form the broker cannot read.
    pub fn unsupported_body(action: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_body",
            format!(
                "{action} is judged on its parameters: send its body as application/json or application/x-www-form-urlencoded"
            ),
        )
    }

    pub fn bad_request(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// The JSON response, with `request_id` filled in.
    pub fn to_response(&self, request_id: &str) -> HttpResponse {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            reason: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<&'a serde_json::Value>,
            request_id: &'a str,
        }
        let mut response = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after {
            response.insert_header((RETRY_AFTER, HeaderValue::from(s)));
        }
        if self.close {
            response.insert_header((CONNECTION, HeaderValue::from_static("close")));
        }
        response.json(Body {
            error: self.code,
            reason: &self.reason,
            details: self.details.as_ref(),
            request_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_web::test]
    async fn body_and_headers() {
        let r = Rejection::rate_limited(Duration::from_millis(1500)).to_response("req-1");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(RETRY_AFTER).unwrap(), "2");
        let body = to_bytes(r.into_body()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "rate_limited");
        assert_eq!(v["request_id"], "req-1");
        assert!(v["reason"].as_str().unwrap().contains("rate limit"));
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        assert_eq!(
            Rejection::rate_limited(Duration::from_millis(1)).retry_after,
            Some(1)
        );
        assert_eq!(Rejection::maintenance(0).retry_after, Some(1));
    }

    #[test]
    fn connection_limit_closes() {
        let r = Rejection::connection_limit(5);
        assert!(r.close);
        assert_eq!(
            r.to_response("x").headers().get(CONNECTION).unwrap(),
            "close"
        );
    }
}
