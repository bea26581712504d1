//! A mandate that pins its exact call: `con.http = {"method": "DELETE",
//! "path": "/api/vendors/17", "query": "…"?}`.
//!
//! - When present the call must be exactly that: the method (upper case,
//!   one a route may name), the canonical path ([`super::path`]) and, when
//!   pinned, the raw query string. So a mandate approved for vendor 17
//!   cannot delete vendor 18.
//! - A malformed pin is refused, never ignored: ignoring it would widen the
//!   mandate to every route of its action.
//! - AgentAuth validates the same shape when the agent asks, so approvers
//!   see the pinned call and the mandate carries it unchanged.

use serde_json::Value;

use crate::catalog::{MethodSet, METHODS};

/// The pinned call of a mandate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedCall {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
}

/// Why a pin is malformed or the call is not the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PinError(pub String);

impl PinnedCall {
    /// The pin in `con` (its `http` member); `None` when there is none.
    pub fn from_con(con: Option<&Value>) -> Result<Option<Self>, PinError> {
        let Some(http) = con.and_then(|c| c.get("http")) else {
            return Ok(None);
        };
        let bad = |why: &str| PinError(format!("con.http {why}"));
        let obj = http
            .as_object()
            .ok_or_else(|| bad("must be an object {method, path, query?}"))?;
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "method" | "path" | "query"))
        {
            return Err(bad(&format!(
                "has an unknown member {:?}",
                crate::clip(k, 128)
            )));
        }
        let method = obj
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_ascii_uppercase)
            .filter(|m| METHODS.contains(&m.as_str()))
            .ok_or_else(|| bad(&format!("method must be one of {}", METHODS.join(", "))))?;
        let path = obj
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("path must be a string"))?;
        let path = super::path::canonical(path)
            .map_err(|e| bad(&format!("path: {e}")))?
            .into_owned();
        let query = match obj.get("query") {
            None => None,
            Some(Value::String(q)) => Some(q.clone()),
            Some(_) => return Err(bad("query must be a string")),
        };
        Ok(Some(Self {
            method,
            path,
            query,
        }))
    }

    /// Whether the catalogue allows the pinned method for the action.
    pub fn method_allowed(&self, methods: MethodSet) -> bool {
        methods.contains(&self.method)
    }

    /// Checks the call (method as sent, canonical path, raw query).
    pub fn check(&self, method: &str, path: &str, query: &str) -> Result<(), PinError> {
        if method != self.method || path != self.path {
            return Err(PinError(format!(
                "the mandate pins {} {}; this call is {} {}",
                self.method,
                self.path,
                crate::clip(method, 128),
                crate::clip(path, 128)
            )));
        }
        if let Some(q) = &self.query {
            if q != query {
                return Err(PinError(
                    "the query string is not the one the mandate pins".into(),
                ));
            }
        }
        Ok(())
    }

    /// `METHOD /path[?query]`, as approvers are shown it.
    pub fn display(&self) -> String {
        match &self.query {
            Some(q) => format!("{} {}?{q}", self.method, self.path),
            None => format!("{} {}", self.method, self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pin(con: Value) -> Result<Option<PinnedCall>, PinError> {
        PinnedCall::from_con(Some(&con))
    }

    #[test]
    fn absent_pins_pin_nothing() {
        assert_eq!(PinnedCall::from_con(None).unwrap(), None);
        assert_eq!(pin(json!({"amount": 5})).unwrap(), None);
    }

    #[test]
    fn a_pin_admits_exactly_its_call() {
        let p = pin(json!({"http": {"method": "delete", "path": "/api/vendors/%31%37"}}))
            .unwrap()
            .unwrap();
        assert_eq!(p.method, "DELETE");
        assert_eq!(p.path, "/api/vendors/17");
        assert_eq!(p.display(), "DELETE /api/vendors/17");
        assert!(p.check("DELETE", "/api/vendors/17", "").is_ok());
        assert!(p.check("DELETE", "/api/vendors/17", "any=thing").is_ok());
        for (m, path) in [
            ("DELETE", "/api/vendors/18"),
            ("DELETE", "/api/vendors/17/"),
            ("DELETE", "/api/vendors/170"),
            ("GET", "/api/vendors/17"),
            ("delete", "/api/vendors/17"),
        ] {
            assert!(p.check(m, path, "").is_err(), "{m} {path}");
        }
        assert!(p.method_allowed(MethodSet::parse(["DELETE"]).unwrap()));
        assert!(!p.method_allowed(MethodSet::parse(["GET"]).unwrap()));
    }

    #[test]
    fn a_pinned_query_must_match_exactly() {
        let p = pin(json!({"http": {"method": "GET", "path": "/r", "query": "id=7"}}))
            .unwrap()
            .unwrap();
        assert!(p.check("GET", "/r", "id=7").is_ok());
        for q in ["", "id=8", "id=7&id=8"] {
            assert!(p.check("GET", "/r", q).is_err(), "{q}");
        }
        assert_eq!(p.display(), "GET /r?id=7");
    }

    #[test]
    fn malformed_pins_are_refused() {
        for bad in [
            json!({"http": "DELETE /api/vendors/17"}),
            json!({"http": null}),
            json!({"http": {"path": "/x"}}),
            json!({"http": {"method": "HEAD", "path": "/x"}}),
            json!({"http": {"method": 1, "path": "/x"}}),
            json!({"http": {"method": "GET"}}),
            json!({"http": {"method": "GET", "path": "/a/../b"}}),
            json!({"http": {"method": "GET", "path": "x"}}),
            json!({"http": {"method": "GET", "path": "/x", "query": 7}}),
            json!({"http": {"method": "GET", "path": "/x", "host": "evil"}}),
        ] {
            assert!(pin(bad.clone()).is_err(), "{bad}");
        }
    }
}
