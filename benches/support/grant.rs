//! The one grant the benchmarks and `examples/policy_ab` work on: a
//! high-risk payment mandate with dual control, and the embedded policy's
//! inputs built from it, one per outcome. Included with `#[path]` (benches
//! and examples cannot share a module otherwise); each includer uses a part.
#![allow(dead_code)]

use serde_json::{json, Value};

pub const AGENT: &str = "spiffe://acme.example/agent/demo";
pub const ACTION: &str = "sap.payment.execute";
/// The benchmarks' clock (seconds).
pub const NOW: i64 = 1_800_000_000;
pub const JTI: &str = "0123456789abcdef0123456789abcdef";

/// Dual control by alice and bob at [`NOW`].
pub fn leg() -> Value {
    json!({
        "jurisdiction": "EU",
        "accountable_party": {"type": "user", "id": "owner"},
        "dual_control": {"required": true, "approvers": [
            {"id": "alice", "timestamp": NOW}, {"id": "bob", "timestamp": NOW}]},
    })
}

pub fn con() -> Value {
    json!({"connector": "erp", "max_amount": 5000})
}

/// The mandate's claims: [`ACTION`] for [`AGENT`], 300 s from [`NOW`].
pub fn claims() -> Value {
    json!({
        "sub": AGENT, "act": ACTION, "con": con(), "leg": leg(),
        "iat": NOW, "exp": NOW + 300, "jti": JTI,
    })
}

/// Policy inputs, one per outcome the benchmarks name.
pub struct PolicyInputs {
    pub high_allow: Value,
    pub critical_allow: Value,
    pub critical_deny: Value,
    pub constraint_deny: Value,
    pub low_allow: Value,
}

pub fn policy_inputs() -> PolicyInputs {
    let claims = claims();
    let input = |act: &str| {
        let mut c = claims.clone();
        c["act"] = act.into();
        json!({
            "agent": {"spiffe_id": AGENT}, "poa": c,
            "request": {"method": "POST", "path": "/api/pay", "action": act, "params": {"amount": 100}},
            "policy": {"max_ttl_seconds": 300}, "current_time_ns": NOW as u64 * 1_000_000_000,
            "rate_limit_state": {act: 3}, "tenant": {"id": "acme"},
        })
    };
    let high_allow = input(ACTION);
    let mut constraint_deny = high_allow.clone();
    constraint_deny["request"]["params"]["amount"] = json!(100_001);
    let critical_deny = input("org.company.merge");
    let mut critical_allow = critical_deny.clone();
    critical_allow["poa"]["leg"]["executive_control"] = json!({"required": true, "approvers": [
        {"id": "ceo@acme", "role": "CEO", "timestamp": NOW}, {"id": "cfo@acme", "role": "CFO", "timestamp": NOW}]});
    let mut low_allow = input("crm.contact.read");
    low_allow["poa"]["leg"] =
        json!({"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "owner"}});
    PolicyInputs {
        high_allow,
        critical_allow,
        critical_deny,
        constraint_deny,
        low_allow,
    }
}
