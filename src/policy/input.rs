//! The broker's policy input: the `input` document `data.atb.poa.decision`
//! reads, built once per request in the form the engine takes.
//!
//! - **Borrowed parts.** [`DecisionInput`] holds references into the
//!   request's context (agent, claims, route, parameters); nothing is
//!   copied until the engine's value is built.
//! - **One build for the embedded engine.** [`DecisionInput::to_rego`]
//!   builds the `regorus::Value` directly. Building a `serde_json` document
//!   first and converting it (what the broker did) allocated the input
//!   twice: ≈ 170 of a request's allocations.
//! - **The same document for OPA.** [`DecisionInput::to_json`] is the JSON
//!   that remote OPA receives; a unit test holds the two forms equal (the
//!   regorus value of the JSON document is the value `to_rego` builds), so
//!   both engines decide on the same input.
//! - Plain data; no HTTP types.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::embedded::map_value;

/// What the policy decides on for one request.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    /// The caller's SPIFFE ID (`agent.spiffe_id`).
    pub agent: &'a str,
    /// The credential as the policy sees it (`poa`); none: `{}`.
    pub poa: Option<&'a Map<String, Value>>,
    pub method: &'a str,
    /// The request's canonical path.
    pub path: &'a str,
    /// The action the route binds the call to.
    pub action: &'a str,
    /// Query and body parameters.
    pub params: &'a Map<String, Value>,
    /// The route's template, if a route matched (else `null`).
    pub route: Option<&'a str>,
    /// The template's captures.
    pub route_params: &'a Map<String, Value>,
    /// The tenant's mandate lifetime limit (`policy.max_ttl_seconds`).
    pub max_ttl_seconds: u64,
    /// Now, in Unix nanoseconds (`current_time_ns`).
    pub current_time_ns: u64,
    /// The action's calls this hour, this one included (`rate_limit_state`).
    pub usage: u64,
    pub tenant: &'a str,
    /// The platform caller's subject (`platform.sub`), if any.
    pub platform_sub: Option<&'a str>,
}

impl DecisionInput<'_> {
    /// The JSON document (remote OPA's `input`).
    pub fn to_json(&self) -> Value {
        json!({
            "agent": {"spiffe_id": self.agent},
            "poa": self.poa.map_or_else(|| json!({}), |m| Value::Object(m.clone())),
            "request": {
                "method": self.method,
                "path": self.path,
                "action": self.action,
                "params": Value::Object(self.params.clone()),
                "route": self.route,
                "route_params": Value::Object(self.route_params.clone()),
            },
            "policy": {"max_ttl_seconds": self.max_ttl_seconds},
            "current_time_ns": self.current_time_ns,
            "rate_limit_state": {self.action: self.usage},
            "tenant": {"id": self.tenant},
            "platform": self.platform_sub.map_or_else(|| json!({}), |sub| json!({"sub": sub})),
        })
    }

    /// The same document as the embedded engine's value, built directly.
    pub fn to_rego(&self) -> regorus::Value {
        let route = self
            .route
            .map_or(regorus::Value::Null, regorus::Value::from);
        let platform = match self.platform_sub {
            Some(sub) => object([("sub", regorus::Value::from(sub))]),
            None => regorus::Value::new_object(),
        };
        object([
            ("agent", object([("spiffe_id", self.agent.into())])),
            (
                "poa",
                self.poa.map_or_else(regorus::Value::new_object, map_value),
            ),
            (
                "request",
                object([
                    ("method", self.method.into()),
                    ("path", self.path.into()),
                    ("action", self.action.into()),
                    ("params", map_value(self.params)),
                    ("route", route),
                    ("route_params", map_value(self.route_params)),
                ]),
            ),
            (
                "policy",
                object([("max_ttl_seconds", self.max_ttl_seconds.into())]),
            ),
            ("current_time_ns", self.current_time_ns.into()),
            (
                "rate_limit_state",
                object([(self.action, self.usage.into())]),
            ),
            ("tenant", object([("id", self.tenant.into())])),
            ("platform", platform),
        ])
    }
}

/// An object of string keys.
fn object<const N: usize>(members: [(&str, regorus::Value); N]) -> regorus::Value {
    let map: BTreeMap<regorus::Value, regorus::Value> = members
        .into_iter()
        .map(|(k, v)| (regorus::Value::from(k), v))
        .collect();
    regorus::Value::from(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// The two forms agree, for every optional part present and absent, and
    /// for numbers of each kind (regorus's own conversion is the reference).
    #[test]
    fn the_engine_value_is_the_json_documents_value() {
        let poa = map(
            json!({"sub": "spiffe://acme.example/agent/a", "act": "sap.payment.execute",
            "con": {"payment_limit": 1000, "ratio": 0.5, "neg": -3}, "leg": {"approvers": [
            {"id": "alice", "at": 1_700_000_000}]}, "iat": 1, "exp": 61, "jti": "j"}),
        );
        let params = map(
            json!({"amount": 999.99, "count": 7, "big": u64::MAX, "to": "x",
            "nested": {"a": [1, null, true]}}),
        );
        let route_params = map(json!({"id": "42"}));
        let full = DecisionInput {
            agent: "spiffe://acme.example/agent/a",
            poa: Some(&poa),
            method: "POST",
            path: "/api/pay",
            action: "sap.payment.execute",
            params: &params,
            route: Some("/api/pay"),
            route_params: &route_params,
            max_ttl_seconds: 900,
            current_time_ns: 1_764_800_000_123_456_789,
            usage: 3,
            tenant: "acme",
            platform_sub: Some("ops@example.com"),
        };
        let empty = Map::new();
        let bare = DecisionInput {
            poa: None,
            params: &empty,
            route: None,
            route_params: &empty,
            platform_sub: None,
            ..full
        };
        let odd_params = map(json!({"$serde_json::private::Number": "12"}));
        let odd = DecisionInput {
            params: &odd_params,
            poa: Some(&odd_params),
            ..full
        };
        for input in [full, bare, odd] {
            let doc = input.to_json();
            assert_eq!(input.to_rego(), regorus::Value::from(doc.clone()), "{doc}");
        }
        assert_eq!(bare.to_json()["poa"], json!({}));
        assert_eq!(bare.to_json()["request"]["route"], Value::Null);
        assert_eq!(full.to_json()["rate_limit_state"]["sap.payment.execute"], 3);
    }
}
