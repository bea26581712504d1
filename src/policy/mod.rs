//! Policy decisions: `data.atb.poa.decision` evaluated in-process by
//! regorus (default) or by a remote OPA. Every failure is a refusal.

pub mod config;
pub mod data;
pub mod embedded;
pub mod input;
pub mod opa;

use serde_json::Value;

/// The decision entry point.
pub const DECISION_RULE: &str = "data.atb.poa.decision";

/// The policy shipped inside the binary.
pub const EMBEDDED_POLICY: &str = include_str!("../../policies/atb/poa.rego");

/// The action catalogue shipped inside the binary (`data.atb.catalog`).
pub const EMBEDDED_CATALOG: &str = include_str!("../../policies/atb/catalog.json");

/// The actions the policy constrains by request parameters: the names
/// in its `constraint_check("<action>", …)` rules. A body the broker cannot
/// parse would leave those parameters missing, so such actions get 415
/// `unsupported_body` for it instead.
pub fn constrained_actions<'a>(
    modules: impl IntoIterator<Item = &'a str>,
) -> std::collections::HashSet<String> {
    const RULE: &str = "constraint_check(\"";
    let mut found = std::collections::HashSet::new();
    for text in modules {
        for (at, _) in text.match_indices(RULE) {
            let rest = &text[at + RULE.len()..];
            if let Some(end) = rest.find('"') {
                found.insert(rest[..end].to_owned());
            }
        }
    }
    found
}

/// [`constrained_actions`] of the policy built into the binary (what a
/// broker on a remote OPA assumes OPA runs).
pub fn embedded_constrained_actions() -> &'static std::collections::HashSet<String> {
    static SET: std::sync::OnceLock<std::collections::HashSet<String>> = std::sync::OnceLock::new();
    SET.get_or_init(|| constrained_actions([EMBEDDED_POLICY]))
}

/// Deep-merges `extra` into `base` (objects merge key by key; anything else
/// in `extra` replaces).
pub fn merge_data(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge_data(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// A parsed decision document.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allow: bool,
    pub reason: String,
    pub details: Option<Value>,
    pub risk_tier: String,
}

/// Why no decision was reached (⇒ 503 `policy_unavailable`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy engine error: {0}")]
    Engine(String),
    #[error("policy evaluation queue is full")]
    Overloaded,
    #[error("policy service unreachable: {0}")]
    Unreachable(String),
    /// The remote engine did not answer within its time limit.
    #[error("policy service did not answer within {0} ms")]
    Timeout(u128),
    #[error("policy returned an unusable decision: {0}")]
    BadDecision(String),
}

impl PolicyError {
    /// A bounded label for `atb_policy_errors_total{cause}`.
    pub fn cause(&self) -> &'static str {
        match self {
            PolicyError::Engine(_) => "engine",
            PolicyError::Overloaded => "overloaded",
            PolicyError::Unreachable(_) => "unreachable",
            PolicyError::Timeout(_) => "timeout",
            PolicyError::BadDecision(_) => "bad_decision",
        }
    }
}

impl Decision {
    /// Reads a decision object. Anything but an object with a boolean
    /// `allow` is an error; an absent `allow` never means allow.
    pub fn from_value(v: &Value) -> Result<Self, PolicyError> {
        let obj = v.as_object().ok_or_else(|| {
            PolicyError::BadDecision(format!("expected an object, got {}", kind(v)))
        })?;
        let allow = obj
            .get("allow")
            .and_then(Value::as_bool)
            .ok_or_else(|| PolicyError::BadDecision("allow is missing or not a boolean".into()))?;
        let reason = obj
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or(if allow { "allow" } else { "deny" })
            .to_owned();
        let risk_tier = obj
            .get("risk_tier")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let details = obj.get("details").filter(|d| !d.is_null()).cloned();
        Ok(Self {
            allow,
            reason,
            details,
            risk_tier,
        })
    }

    /// The tier as a bounded metric label.
    pub fn tier_label(&self) -> &'static str {
        match self.risk_tier.as_str() {
            "low" => "low",
            "medium" => "medium",
            "high" => "high",
            "critical" => "critical",
            _ => "unknown",
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null (undefined)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn constrained_actions_are_read_from_the_rules() {
        let set = embedded_constrained_actions();
        for a in [
            "sap.payment.execute",
            "sap.vendor.change",
            "sap.vendor.bank_change",
        ] {
            assert!(set.contains(a), "{a}");
        }
        assert!(!set.contains("crm.contact.read"));
        let custom = constrained_actions([
            "constraint_check(\"x.y.z\", p, _, _) := true if { p.a }",
            "no rule here; constraint_check(act, p, c, env)",
        ]);
        assert_eq!(
            custom.into_iter().collect::<Vec<_>>(),
            vec!["x.y.z".to_string()]
        );
    }

    #[test]
    fn parses_decisions_and_fails_closed_on_odd_shapes() {
        let d =
            Decision::from_value(&json!({"allow": true, "reason": "allow", "risk_tier": "high"}))
                .unwrap();
        assert!(d.allow);
        assert_eq!(d.tier_label(), "high");
        let d = Decision::from_value(&json!({"allow": false, "reason": "x", "details": {"a": 1}}))
            .unwrap();
        assert!(!d.allow);
        assert_eq!(d.details, Some(json!({"a": 1})));
        assert_eq!(d.tier_label(), "unknown");
        for bad in [
            json!(null),
            json!(true),
            json!("allow"),
            json!({"reason": "allow"}),
            json!({"allow": "true"}),
        ] {
            assert!(Decision::from_value(&bad).is_err(), "{bad}");
        }
    }
}
