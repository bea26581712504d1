//! The request mix of `atb bench`: what each request is (route, body,
//! mandate claims), in which order, and its bytes on the wire.
//!
//! Design points:
//! - Three classes, each on its own route of the demo connector and each
//!   allowed by the real embedded policy (every request must get 200; any
//!   other status is an error of the run):
//!   70% low-risk read (`crm.contact.read`, GET), 25% high-risk payment
//!   (`sap.payment.execute`, POST with an amount, under a `payment_limit`
//!   constraint, dual-control evidence of two approvers), 5% critical
//!   (`org.company.merge`, POST, executive evidence of two executives).
//!   The evidence is what AgentAuth writes into the signed `leg`: each
//!   approval timestamped.
//! - The order is a fixed cycle of 20 (14/5/1) spread by smooth weighted
//!   round robin, so any window of 20 requests has the exact mix and the
//!   rare class is never bunched.
//! - A request is rendered once, before the timed phase, into the exact
//!   HTTP/1.1 bytes sent; the direct path and the broker get the same bytes
//!   (the upstream ignores the mandate). Host is `localhost` for both.

use serde_json::{json, Value};

/// A class of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Low-risk read.
    Low,
    /// High risk: dual control and a constraint.
    High,
    /// Critical: executive approval.
    Critical,
}

/// A class's route, action and share of the mix.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Route {
    pub class: Class,
    pub action: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    /// JSON body (POST), if any.
    pub body: Option<&'static str>,
    /// Requests of this class per cycle of [`CYCLE`].
    pub per_cycle: usize,
}

/// The requests of one cycle.
pub const CYCLE: usize = 20;

/// The mix: the demo connector's routes (see `dev::demo_routes`).
pub const ROUTES: [Route; 3] = [
    Route {
        class: Class::Low,
        action: "crm.contact.read",
        method: "GET",
        path: "/api/contacts/42",
        body: None,
        per_cycle: 14,
    },
    Route {
        class: Class::High,
        action: "sap.payment.execute",
        method: "POST",
        path: "/api/pay",
        body: Some(r#"{"amount":500,"currency":"EUR","vendor":"V-1001"}"#),
        per_cycle: 5,
    },
    Route {
        class: Class::Critical,
        action: "org.company.merge",
        method: "POST",
        path: "/api/merge",
        body: Some(r#"{"target":"initech","structure":"asset_purchase"}"#),
        per_cycle: 1,
    },
];

/// The route of `class`.
pub fn route(class: Class) -> &'static Route {
    match class {
        Class::Low => &ROUTES[0],
        Class::High => &ROUTES[1],
        Class::Critical => &ROUTES[2],
    }
}

/// One cycle of the mix, by smooth weighted round robin: at each step every
/// class gains its weight, the one with most credit goes and pays the
/// cycle length.
pub fn cycle() -> [Class; CYCLE] {
    let mut credit = [0i64; ROUTES.len()];
    let mut out = [Class::Low; CYCLE];
    for slot in out.iter_mut() {
        for (c, r) in credit.iter_mut().zip(&ROUTES) {
            *c += r.per_cycle as i64;
        }
        let mut best = 0;
        for i in 1..ROUTES.len() {
            if credit[i] > credit[best] {
                best = i;
            }
        }
        credit[best] -= CYCLE as i64;
        *slot = ROUTES[best].class;
    }
    out
}

/// The mandate claims for one request of `class` by `agent`, issued at
/// `now` (Unix seconds) for `ttl` seconds, with id `jti`.
pub fn claims(class: Class, agent: &str, jti: &str, now: i64, ttl: i64) -> Value {
    let owner = json!({"type": "user", "id": "bench-owner@acme.example"});
    let (con, leg) = match class {
        Class::Low => (
            json!({}),
            json!({"jurisdiction": "EU", "accountable_party": owner}),
        ),
        Class::High => (
            json!({"connector": "crm", "payment_limit": 1000}),
            json!({
                "jurisdiction": "EU", "accountable_party": owner,
                "dual_control": {"required": true, "approvers": [
                    {"id": "alice@acme.example", "timestamp": now},
                    {"id": "bob@acme.example", "timestamp": now},
                ]},
            }),
        ),
        Class::Critical => (
            json!({}),
            json!({
                "jurisdiction": "EU", "accountable_party": owner,
                "executive_control": {"required": true, "approvers": [
                    {"id": "carol@acme.example", "role": "ceo", "timestamp": now},
                    {"id": "dave@acme.example", "role": "cfo", "timestamp": now},
                ]},
            }),
        ),
    };
    json!({
        "sub": agent, "act": route(class).action, "con": con, "leg": leg,
        "iat": now, "exp": now + ttl, "jti": jti,
    })
}

/// The HTTP/1.1 request for `class` carrying mandate `token`.
pub fn request_bytes(class: Class, token: &str) -> Vec<u8> {
    let r = route(class);
    let mut s = format!(
        "{} {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n",
        r.method, r.path
    );
    if let Some(body) = r.body {
        s.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        s.push_str("\r\n");
    }
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_has_the_exact_mix_and_spreads_it() {
        let c = cycle();
        let count = |k: Class| c.iter().filter(|x| **x == k).count();
        assert_eq!(
            (
                count(Class::Low),
                count(Class::High),
                count(Class::Critical)
            ),
            (14, 5, 1)
        );
        assert_eq!(ROUTES.iter().map(|r| r.per_cycle).sum::<usize>(), CYCLE);
        // High-risk requests are spread: never two in a row, and every
        // window of 4 has at most one... of 8 at most two.
        for w in c.windows(2) {
            assert!(!(w[0] == Class::High && w[1] == Class::High), "{c:?}");
        }
        for w in c.windows(8) {
            assert!(
                w.iter().filter(|x| **x == Class::High).count() <= 2,
                "{c:?}"
            );
        }
    }

    #[test]
    fn every_class_has_its_own_route_and_action() {
        let mut seen = std::collections::HashSet::new();
        for r in &ROUTES {
            assert!(seen.insert((r.method, r.path)), "{r:?}");
            assert_eq!(route(r.class).action, r.action);
            // The route is one of the demo connector's, bound to this action.
            let catalogue = crate::catalog::TenantCatalogue::new(None).unwrap();
            let routes =
                crate::routes::RouteTable::compile(&crate::dev::demo_routes(), &catalogue, "demo")
                    .unwrap();
            let found = routes.lookup(r.method, r.path).unwrap();
            assert_eq!(found.actions, [r.action], "{r:?}");
        }
    }

    #[test]
    fn claims_carry_the_evidence_of_their_tier() {
        let c = claims(Class::High, "spiffe://a.example/agent/x", "j1", 1000, 60);
        assert_eq!(c["act"], "sap.payment.execute");
        assert_eq!(c["exp"], 1060);
        assert_eq!(c["jti"], "j1");
        assert_eq!(c["sub"], "spiffe://a.example/agent/x");
        assert_eq!(
            c["leg"]["dual_control"]["approvers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(c["con"]["payment_limit"], 1000);
        let c = claims(
            Class::Critical,
            "spiffe://a.example/agent/x",
            "j2",
            1000,
            60,
        );
        let approvers = c["leg"]["executive_control"]["approvers"]
            .as_array()
            .unwrap();
        assert!(approvers
            .iter()
            .all(|a| a["role"].is_string() && a["timestamp"] == 1000));
        let c = claims(Class::Low, "spiffe://a.example/agent/x", "j3", 1000, 60);
        assert!(c["leg"].get("dual_control").is_none());
    }

    #[test]
    fn request_bytes_are_well_formed_http() {
        for r in &ROUTES {
            let bytes = request_bytes(r.class, "tok");
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut headers);
            let head = match req.parse(&bytes).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("partial"),
            };
            assert_eq!(req.method, Some(r.method));
            assert_eq!(req.path, Some(r.path));
            let auth = req
                .headers
                .iter()
                .find(|h| h.name == "Authorization")
                .unwrap();
            assert_eq!(auth.value, b"Bearer tok");
            let body = &bytes[head..];
            assert_eq!(body, r.body.unwrap_or("").as_bytes());
            if let Some(b) = r.body {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name == "Content-Length")
                    .unwrap();
                assert_eq!(len.value, b.len().to_string().as_bytes());
                serde_json::from_str::<Value>(b).unwrap();
            }
        }
    }
}
