//! Forwarding to a tenant's connector: connector choice, the egress
//! allowlist (on the canonical path, see `routes::path`), header hygiene, and streaming both ways.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::web::{Bytes, Payload};
use actix_web::HttpResponse;
use futures_util::{Stream, StreamExt};

use crate::broker::multipart_method::MethodPartGuard;
use crate::tenant::ConnectorConfig;
use crate::tenant::Tenant;

/// Why a request may not leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressDenied(pub String);

/// The connector for a request: the mandate's `con.connector`, else the
/// tenant's `default_connector`, else its only connector. A named connector
/// must exist.
pub fn resolve_connector<'t>(
    tenant: &'t Tenant,
    requested: Option<&str>,
) -> Result<(usize, &'t ConnectorConfig), EgressDenied> {
    let named = |id: &str| {
        tenant
            .connectors
            .iter()
            .enumerate()
            .find(|(_, c)| c.id == id)
    };
    match requested {
        Some(id) => named(id).ok_or_else(|| {
            EgressDenied(format!(
                "connector {:?} is not configured for this tenant",
                crate::clip(id, 64)
            ))
        }),
        None => match (&tenant.default_connector, tenant.connectors.as_slice()) {
            (Some(default), _) => named(default)
                .ok_or_else(|| EgressDenied("the default connector is not configured".into())),
            (None, [only]) => Ok((0, only)),
            (None, []) => Err(EgressDenied("the tenant has no connectors".into())),
            (None, _) => Err(EgressDenied(
                "the mandate must name its connector (con.connector)".into(),
            )),
        },
    }
}

/// Whether `path` lies inside one of the allowlisted prefixes (segment
/// boundary: `/api` allows `/api` and `/api/x`, not `/apix`).
pub fn egress_allowed(allowlist: &[String], path: &str) -> bool {
    allowlist.iter().any(|prefix| {
        if let Some(base) = prefix.strip_suffix('/') {
            path == base || path.starts_with(prefix.as_str())
        } else {
            path == prefix
                || path
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        }
    })
}

/// The upstream URL: connector base URL (without trailing slash) + path +
/// query.
pub fn target_url(connector: &ConnectorConfig, path: &str, query: &str) -> String {
    let base = connector.upstream_url.trim_end_matches('/');
    if query.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{query}")
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Client-sent headers an upstream may believe over the request line or
/// the connection: rewritten URLs, overridden methods, forwarding claims.
/// Never forwarded (the broker sets `X-Forwarded-For`/`Forwarded` itself).
const REWRITING: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
];

/// A header name as frameworks that read headers through CGI-style
/// variables see it (PHP, Python's WSGI, Rack): `_` and `-` both become
/// `_` there, so `X_ATB_Tenant` arrives as `HTTP_X_ATB_TENANT` just like
/// `X-ATB-Tenant`. Every list of names the broker strips or refuses is
/// matched against this form.
pub fn cgi_name(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains('_') {
        std::borrow::Cow::Owned(name.replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Whether a request header is passed upstream. Credentials meant for the
/// broker (the PoA) never leave it, nor do client-supplied `X-ATB-*`,
/// `X-Forwarded-*` or URL/method rewrites, whichever of `-` and `_` they
/// are spelled with.
pub fn forward_request_header(name: &HeaderName) -> bool {
    let n = cgi_name(name.as_str());
    let n = n.as_ref();
    !(HOP_BY_HOP.contains(&n)
        || REWRITING.contains(&n)
        || n == "host"
        || n == "content-length"
        || n == "authorization"
        || n == "x-poa-token"
        || n == "x-request-id"
        || n.starts_with("x-atb-")
        || n.starts_with("x-forwarded-"))
}

/// Headers the client's `Connection` header names: hop-by-hop for this
/// hop only (RFC 9110 §7.6.1), so never forwarded.
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// What the broker adds to every forwarded request.
pub struct Stamp<'a> {
    pub agent: &'a str,
    pub tenant: &'a str,
    pub action: &'a str,
    pub request_id: &'a str,
    /// The TCP peer, for `X-Forwarded-For` and `Forwarded`.
    pub peer: Option<std::net::IpAddr>,
}

/// The request body as the pipeline holds it.
pub enum Body {
    Buffered(Bytes),
    /// Not read yet; streamed to the upstream, at most `limit` bytes,
    /// all of it before `deadline`.
    Streaming {
        payload: Payload,
        limit: u64,
        deadline: tokio::time::Instant,
    },
}

/// Why forwarding failed: 504, 502, or 413 for a streamed body that grew
/// past its limit (a chunked body has no Content-Length to check first).
#[derive(Debug)]
pub enum UpstreamError {
    Timeout,
    Failed(String),
    BodyTooLarge(u64),
    /// The client's body did not arrive before its deadline (408).
    BodyTimeout,
    /// A multipart body carried a `_method` part (403
    /// `action_route_mismatch`); the upstream got a cut body.
    MethodPart,
}

/// Why a [`LimitedBody`] cut its stream off.
const CUT_NONE: u8 = 0;
const CUT_TOO_LARGE: u8 = 1;
const CUT_TOO_SLOW: u8 = 2;
/// Set once the client's body has arrived in full.
const CUT_DONE: u8 = 3;
/// A multipart body carried a `_method` part (or a part header too long to
/// check).
const CUT_METHOD_PART: u8 = 4;

/// A streamed request body that ends in an error once more than `left`
/// bytes have passed or its deadline has, which aborts the upstream
/// request; `cut` tells the caller why the send failed.
struct LimitedBody {
    payload: Payload,
    left: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    cut: Arc<AtomicU8>,
    /// For a multipart body: holds back and refuses a `_method` part.
    guard: Option<MethodPartGuard>,
}

impl Stream for LimitedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Ended (cut, or done: a multipart guard may have released its last
        // held bytes after the client's body ended): nothing more, and no
        // deadline to miss.
        if matches!(
            self.cut.load(Ordering::Relaxed),
            CUT_TOO_LARGE | CUT_TOO_SLOW | CUT_METHOD_PART | CUT_DONE
        ) {
            return Poll::Ready(None);
        }
        // The deadline first: a body trickling in small chunks is as late
        // as a stalled one.
        if std::future::Future::poll(self.deadline.as_mut(), cx).is_ready() {
            self.cut.store(CUT_TOO_SLOW, Ordering::Relaxed);
            return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body deadline",
            )))));
        }
        loop {
            let chunk = match self.payload.poll_next_unpin(cx) {
                Poll::Ready(None) => {
                    self.cut.store(CUT_DONE, Ordering::Relaxed);
                    // What the guard still holds goes on once.
                    let rest = self.guard.as_mut().map(MethodPartGuard::finish);
                    return Poll::Ready(rest.filter(|r| !r.is_empty()).map(|r| Ok(Bytes::from(r))));
                }
                Poll::Ready(Some(Ok(chunk))) => chunk,
                other => return other,
            };
            match self.left.checked_sub(chunk.len() as u64) {
                Some(left) => self.left = left,
                None => {
                    self.cut.store(CUT_TOO_LARGE, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(PayloadError::Overflow)));
                }
            }
            let Some(guard) = self.guard.as_mut() else {
                return Poll::Ready(Some(Ok(chunk)));
            };
            match guard.push(&chunk) {
                Ok(out) if out.is_empty() => continue,
                Ok(out) => return Poll::Ready(Some(Ok(Bytes::from(out)))),
                Err(refused) => {
                    self.cut.store(CUT_METHOD_PART, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        refused.to_string(),
                    )))));
                }
            }
        }
    }
}

/// Sends the request and streams the answer back.
pub async fn forward(
    client: &awc::Client,
    url: &str,
    method: Method,
    headers: &HeaderMap,
    stamp: &Stamp<'_>,
    body: Body,
    timeout: Duration,
) -> Result<HttpResponse, UpstreamError> {
    let mut up = client.request(method, url).timeout(timeout);
    let named = connection_named(headers);
    for (name, value) in headers.iter() {
        if forward_request_header(name) && !named.iter().any(|n| n == name.as_str()) {
            up = up.append_header((name.clone(), value.clone()));
        }
    }
    if let Some(ip) = stamp.peer {
        let node = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        up = up
            .insert_header(("x-forwarded-for", ip.to_string()))
            .insert_header(("x-forwarded-proto", "https"))
            .insert_header(("forwarded", format!("for={node};proto=https")));
    }
    for (name, value) in [
        ("x-atb-agent", stamp.agent),
        ("x-atb-tenant", stamp.tenant),
        ("x-atb-action", stamp.action),
        ("x-request-id", stamp.request_id),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            up = up.insert_header((name, v));
        }
    }
    let cut = Arc::new(AtomicU8::new(CUT_NONE));
    let streamed = matches!(body, Body::Streaming { .. });
    let (sent, limit) = match body {
        Body::Buffered(bytes) => (up.send_body(bytes).await, 0),
        Body::Streaming {
            payload,
            limit,
            deadline,
        } => {
            let guard = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(MethodPartGuard::for_content_type);
            let limited = LimitedBody {
                payload,
                left: limit,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                cut: cut.clone(),
                guard,
            };
            (up.send_stream(limited).await, limit)
        }
    };
    let response = sent.map_err(|e| match e {
        _ if cut.load(Ordering::Relaxed) == CUT_TOO_LARGE => UpstreamError::BodyTooLarge(limit),
        _ if cut.load(Ordering::Relaxed) == CUT_TOO_SLOW => UpstreamError::BodyTimeout,
        _ if cut.load(Ordering::Relaxed) == CUT_METHOD_PART => UpstreamError::MethodPart,
        // The connector's time ran out while the client was still sending:
        // the client's body is what is late.
        awc::error::SendRequestError::Timeout
            if streamed && cut.load(Ordering::Relaxed) != CUT_DONE =>
        {
            UpstreamError::BodyTimeout
        }
        awc::error::SendRequestError::Timeout => UpstreamError::Timeout,
        awc::error::SendRequestError::Connect(awc::error::ConnectError::Timeout) => {
            UpstreamError::Timeout
        }
        other => UpstreamError::Failed(other.to_string()),
    })?;
    let mut out = HttpResponse::build(response.status());
    for (name, value) in response.headers().iter() {
        let n = name.as_str();
        if !HOP_BY_HOP.contains(&n) && name != header::CONTENT_LENGTH {
            out.append_header((name.clone(), value.clone()));
        }
    }
    Ok(out.streaming(response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::TenantConfig;
    use std::sync::Arc;

    fn connector(id: &str) -> ConnectorConfig {
        ConnectorConfig {
            id: id.into(),
            upstream_url: "http://127.0.0.1:9/base/".into(),
            egress_allowlist: vec!["/api/".into(), "/v2".into()],
            rate_limit: None,
            timeout_seconds: 10,
            routes: Default::default(),
        }
    }

    fn tenant(connectors: Vec<ConnectorConfig>) -> Tenant {
        Arc::new(TenantConfig {
            connectors,
            ..crate::config::tests_support::tenant("acme")
        })
    }

    #[test]
    fn connector_resolution() {
        let one = tenant(vec![connector("crm")]);
        assert_eq!(resolve_connector(&one, None).unwrap().1.id, "crm");
        assert_eq!(resolve_connector(&one, Some("crm")).unwrap().1.id, "crm");
        assert!(resolve_connector(&one, Some("erp")).is_err());
        let two = tenant(vec![connector("crm"), connector("erp")]);
        assert!(resolve_connector(&two, None).is_err());
        let mut with_default = (*two).clone();
        with_default.default_connector = Some("erp".into());
        let with_default = Arc::new(with_default);
        assert_eq!(resolve_connector(&with_default, None).unwrap().1.id, "erp");
        assert_eq!(resolve_connector(&two, Some("erp")).unwrap().1.id, "erp");
        assert!(resolve_connector(&tenant(vec![]), None).is_err());
    }

    #[test]
    fn egress_prefixes_respect_segments() {
        let list = vec!["/api/".to_string(), "/v2".to_string()];
        for ok in ["/api", "/api/", "/api/contacts", "/v2", "/v2/x"] {
            assert!(egress_allowed(&list, ok), "{ok}");
        }
        for bad in ["/apix", "/admin", "/v20", "/", "/v"] {
            assert!(!egress_allowed(&list, bad), "{bad}");
        }
        assert!(!egress_allowed(&[], "/api"));
    }

    #[test]
    fn urls_and_headers() {
        let c = connector("crm");
        assert_eq!(
            target_url(&c, "/api/x", ""),
            "http://127.0.0.1:9/base/api/x"
        );
        assert_eq!(
            target_url(&c, "/api/x", "a=1"),
            "http://127.0.0.1:9/base/api/x?a=1"
        );
        for stripped in [
            "authorization",
            "x-poa-token",
            "x-atb-platform-token",
            "x-atb-biscuit",
            "x-atb-agent",
            "x-atb-tenant",
            "connection",
            "host",
            "x-request-id",
            "x-forwarded-for",
            "x-forwarded-host",
            "forwarded",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
            "x-real-ip",
        ] {
            assert!(
                !forward_request_header(&HeaderName::from_static(stripped)),
                "{stripped}"
            );
            // CGI-style readers take `_` for `-`: the same header.
            let underscored = stripped.replace('-', "_");
            assert!(
                !forward_request_header(&HeaderName::from_bytes(underscored.as_bytes()).unwrap()),
                "{underscored}"
            );
        }
        assert!(!forward_request_header(&HeaderName::from_static(
            "x-atb_tenant"
        )));
        for kept in ["content-type", "accept", "x-custom", "x_custom"] {
            assert!(
                forward_request_header(&HeaderName::from_static(kept)),
                "{kept}"
            );
        }
    }

    #[test]
    fn headers_the_connection_header_names_are_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Custom-Hop"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        assert_eq!(
            connection_named(&h),
            vec!["keep-alive", "x-custom-hop", "x-other"]
        );
    }
}
