//! Load-time checks of the policy data (`data.atb.catalog`, the global
//! `time_policy` / `rate_limits` / `platform_binding`, and each tenant's
//! documents under `tenants.<id>`).
//!
//! The policy reads these documents with type guards and falls back to a
//! default on a value of the wrong type, so `"true"` for a boolean or
//! `"3600"` for a number would silently mean something else than the
//! operator wrote. The loader refuses such data instead, naming the key; a
//! refused bundle never replaces the running one. Keys the policy does not
//! read are left alone.

use serde_json::Value;

/// The four risk tiers; any other tier name is refused, globally and per
/// tenant.
pub const TIERS: [&str; 4] = ["low", "medium", "high", "critical"];

/// Platform binding modes the policy knows.
pub const BINDING_MODES: [&str; 4] = ["none", "exact", "prefix", "mapping"];

/// Checks the whole data document (global and every tenant).
pub(crate) fn validate(data: &Value) -> Result<(), String> {
    let Some(root) = data.as_object() else {
        return Err(format!(
            "policy data: expected an object, got {}",
            kind(data)
        ));
    };
    if let Some(atb) = root.get("atb") {
        let atb = object(atb, "atb")?;
        if let Some(catalog) = atb.get("catalog") {
            check_catalog(catalog, "atb.catalog", true)?;
        }
    }
    check_documents(data, "")?;
    if let Some(tenants) = root.get("tenants") {
        for (id, tenant) in object(tenants, "tenants")? {
            validate_tenant(id, tenant)?;
        }
    }
    Ok(())
}

/// Checks one tenant's policy data (what lands under `tenants.<id>`).
pub(crate) fn validate_tenant(id: &str, data: &Value) -> Result<(), String> {
    let path = format!("tenants.{id}");
    let obj = object(data, &path)?;
    if let Some(catalog) = obj.get("catalog") {
        check_catalog(catalog, &format!("{path}.catalog"), false)?;
    }
    check_documents(data, &format!("{path}."))
}

/// `time_policy`, `rate_limits` and `platform_binding` under `prefix`.
fn check_documents(data: &Value, prefix: &str) -> Result<(), String> {
    if let Some(tp) = data.get("time_policy") {
        let path = format!("{prefix}time_policy");
        let tp = object(tp, &path)?;
        if let Some(bh) = tp.get("business_hours") {
            let bpath = format!("{path}.business_hours");
            let bh = object(bh, &bpath)?;
            if let Some(v) = bh.get("required_for_high_risk") {
                boolean(v, &format!("{bpath}.required_for_high_risk"))?;
            }
            for (key, max) in [("start_hour", 23.0), ("end_hour", 24.0)] {
                if let Some(v) = bh.get(key) {
                    let p = format!("{bpath}.{key}");
                    let n = number(v, &p)?;
                    if n.fract() != 0.0 || !(0.0..=max).contains(&n) {
                        return Err(format!(
                            "{p}: expected a whole hour from 0 to {max}, got {n}"
                        ));
                    }
                }
            }
        }
        if let Some(v) = tp.get("approval_window_seconds") {
            let p = format!("{path}.approval_window_seconds");
            if number(v, &p)? <= 0.0 {
                return Err(format!("{p}: expected a positive number of seconds"));
            }
        }
    }
    if let Some(rl) = data.get("rate_limits") {
        let path = format!("{prefix}rate_limits");
        let rl = object(rl, &path)?;
        if let Some(v) = rl.get("default_per_hour") {
            non_negative(v, &format!("{path}.default_per_hour"))?;
        }
        if let Some(per) = rl.get("per_action") {
            let ppath = format!("{path}.per_action");
            for (action, v) in object(per, &ppath)? {
                non_negative(v, &format!("{ppath}.{action:?}"))?;
            }
        }
    }
    if let Some(pb) = data.get("platform_binding") {
        let path = format!("{prefix}platform_binding");
        let pb = object(pb, &path)?;
        if let Some(v) = pb.get("mode") {
            let p = format!("{path}.mode");
            let mode = string(v, &p)?;
            if !BINDING_MODES.contains(&mode) {
                return Err(format!(
                    "{p}: {mode:?} is not one of {}",
                    BINDING_MODES.join(", ")
                ));
            }
        }
        if let Some(m) = pb.get("mappings") {
            let mpath = format!("{path}.mappings");
            for (sub, v) in object(m, &mpath)? {
                string(v, &format!("{mpath}.{sub:?}"))?;
            }
        }
    }
    Ok(())
}

/// A catalogue: `tiers` (action → one of [`TIERS`]), `methods` and
/// `low_risk` (action → list of method names), `safe_paths` (list of
/// paths, global only). Action names must be canonical.
fn check_catalog(catalog: &Value, path: &str, global: bool) -> Result<(), String> {
    let catalog = object(catalog, path)?;
    if let Some(tiers) = catalog.get("tiers") {
        let tpath = format!("{path}.tiers");
        for (action, tier) in object(tiers, &tpath)? {
            let p = format!("{tpath}.{action:?}");
            action_name(action, &p)?;
            let t = string(tier, &p)?;
            if !TIERS.contains(&t) {
                return Err(format!(
                    "{p}: {t:?} is not a risk tier ({})",
                    TIERS.join(", ")
                ));
            }
        }
    }
    for list in ["methods", "low_risk"] {
        if !global && list == "low_risk" {
            continue;
        }
        if let Some(doc) = catalog.get(list) {
            let lpath = format!("{path}.{list}");
            for (action, methods) in object(doc, &lpath)? {
                let p = format!("{lpath}.{action:?}");
                action_name(action, &p)?;
                strings(methods, &p)?;
            }
        }
    }
    if global {
        if let Some(paths) = catalog.get("safe_paths") {
            strings(paths, &format!("{path}.safe_paths"))?;
        }
    }
    Ok(())
}

fn action_name(action: &str, path: &str) -> Result<(), String> {
    if crate::catalog::is_canonical_action(action) {
        Ok(())
    } else {
        Err(format!(
            "{path}: action names are lowercase segments separated by dots"
        ))
    }
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a serde_json::Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{path}: expected an object, got {}", kind(v)))
}

fn boolean(v: &Value, path: &str) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("{path}: expected a boolean, got {}", kind(v)))
}

fn number(v: &Value, path: &str) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("{path}: expected a number, got {}", kind(v)))
}

fn non_negative(v: &Value, path: &str) -> Result<f64, String> {
    let n = number(v, path)?;
    if n < 0.0 {
        return Err(format!("{path}: expected a number of at least 0, got {n}"));
    }
    Ok(n)
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{path}: expected a string, got {}", kind(v)))
}

fn strings(v: &Value, path: &str) -> Result<(), String> {
    let items = v
        .as_array()
        .ok_or_else(|| format!("{path}: expected a list of strings, got {}", kind(v)))?;
    for (i, item) in items.iter().enumerate() {
        string(item, &format!("{path}[{i}]"))?;
    }
    Ok(())
}

/// A value's type, with the value when it is short (so `"true"` shows).
fn kind(v: &Value) -> String {
    let what = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    match v {
        Value::Array(_) | Value::Object(_) | Value::Null => what.to_owned(),
        _ => format!("{what} ({})", crate::clip(&v.to_string(), 40)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(data: Value) -> String {
        validate(&data).expect_err(&data.to_string())
    }

    #[test]
    fn the_shipped_catalogue_and_the_test_data_pass() {
        let catalog: Value = serde_json::from_str(crate::policy::EMBEDDED_CATALOG).unwrap();
        validate(&catalog).unwrap();
        let test_data: Value =
            serde_json::from_str(include_str!("../../tests/policy/data.json")).unwrap();
        validate(&test_data).unwrap();
        validate(&json!({})).unwrap();
        validate(&json!({
            "time_policy": {"business_hours": {"required_for_high_risk": true, "start_hour": 0, "end_hour": 24},
                            "approval_window_seconds": 600},
            "rate_limits": {"default_per_hour": 0, "per_action": {"crm.contact.read": 5.5}},
            "platform_binding": {"mode": "mapping", "mappings": {"app": "^spiffe://x/.*$"}},
            "tenants": {"acme": {"catalog": {"tiers": {"acme.ledger.close": "critical"},
                                             "methods": {"acme.ledger.close": ["POST"]}},
                                 "unrelated": "left alone"}},
        }))
        .unwrap();
    }

    #[test]
    fn tiers_outside_the_four_are_refused_globally_and_per_tenant() {
        let e = err(json!({"atb": {"catalog": {"tiers": {"crm.contact.read": "urgent"}}}}));
        assert!(e.contains("atb.catalog.tiers.\"crm.contact.read\""), "{e}");
        assert!(e.contains("not a risk tier"), "{e}");
        let e = err(json!({"atb": {"catalog": {"tiers": {"crm.contact.read": "LOW"}}}}));
        assert!(e.contains("not a risk tier"), "{e}");
        let e = err(json!({"atb": {"catalog": {"tiers": {"crm.contact.read": 1}}}}));
        assert!(e.contains("expected a string, got a number (1)"), "{e}");
        let e = err(json!({"tenants": {"acme": {"catalog": {"tiers": {"acme.x": "severe"}}}}}));
        assert!(e.contains("tenants.acme.catalog.tiers.\"acme.x\""), "{e}");
        let e = err(json!({"tenants": {"acme": {"catalog": {"tiers": {"Acme.X": "low"}}}}}));
        assert!(e.contains("lowercase segments"), "{e}");
        let e = err(json!({"atb": {"catalog": {"methods": {"CRM.read": ["GET"]}}}}));
        assert!(e.contains("atb.catalog.methods.\"CRM.read\""), "{e}");
        let e = err(json!({"atb": {"catalog": {"tiers": ["crm.contact.read"]}}}));
        assert!(e.contains("atb.catalog.tiers: expected an object"), "{e}");
        let e = err(json!({"atb": {"catalog": {"safe_paths": ["/health", 7]}}}));
        assert!(e.contains("atb.catalog.safe_paths[1]"), "{e}");
        let e = err(json!({"atb": {"catalog": {"low_risk": {"crm.contact.read": "GET"}}}}));
        assert!(
            e.contains("atb.catalog.low_risk.\"crm.contact.read\": expected a list"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_are_refused_with_the_key_named() {
        let cases = [
            (
                json!({"time_policy": {"business_hours": {"required_for_high_risk": "true"}}}),
                "time_policy.business_hours.required_for_high_risk: expected a boolean, got a string (\"true\")",
            ),
            (
                json!({"tenants": {"acme": {"time_policy": {"business_hours": {"required_for_high_risk": 1}}}}}),
                "tenants.acme.time_policy.business_hours.required_for_high_risk: expected a boolean",
            ),
            (
                json!({"time_policy": {"approval_window_seconds": "3600"}}),
                "time_policy.approval_window_seconds: expected a number",
            ),
            (
                json!({"time_policy": {"approval_window_seconds": 0}}),
                "time_policy.approval_window_seconds: expected a positive number",
            ),
            (
                json!({"time_policy": {"business_hours": {"start_hour": "9"}}}),
                "time_policy.business_hours.start_hour: expected a number",
            ),
            (
                json!({"time_policy": {"business_hours": {"end_hour": 25}}}),
                "time_policy.business_hours.end_hour: expected a whole hour",
            ),
            (
                json!({"time_policy": {"business_hours": {"start_hour": 8.5}}}),
                "time_policy.business_hours.start_hour: expected a whole hour",
            ),
            (json!({"time_policy": "strict"}), "time_policy: expected an object"),
            (
                json!({"time_policy": {"business_hours": true}}),
                "time_policy.business_hours: expected an object",
            ),
            (
                json!({"rate_limits": {"default_per_hour": "100"}}),
                "rate_limits.default_per_hour: expected a number",
            ),
            (
                json!({"rate_limits": {"default_per_hour": -1}}),
                "rate_limits.default_per_hour: expected a number of at least 0",
            ),
            (
                json!({"tenants": {"t": {"rate_limits": {"per_action": {"crm.contact.read": true}}}}}),
                "tenants.t.rate_limits.per_action.\"crm.contact.read\": expected a number",
            ),
            (
                json!({"rate_limits": {"per_action": [5]}}),
                "rate_limits.per_action: expected an object",
            ),
            (
                json!({"platform_binding": {"mode": true}}),
                "platform_binding.mode: expected a string",
            ),
            (
                json!({"platform_binding": {"mode": "strict"}}),
                "platform_binding.mode: \"strict\" is not one of",
            ),
            (
                json!({"tenants": {"t": {"platform_binding": {"mappings": {"app": 7}}}}}),
                "tenants.t.platform_binding.mappings.\"app\": expected a string",
            ),
            (json!({"tenants": {"t": "x"}}), "tenants.t: expected an object"),
            (json!({"tenants": []}), "tenants: expected an object"),
            (json!({"atb": {"catalog": []}}), "atb.catalog: expected an object"),
            (json!([]), "policy data: expected an object"),
        ];
        for (data, want) in cases {
            let e = err(data.clone());
            assert!(e.contains(want), "{data}: {e}");
        }
    }
}
