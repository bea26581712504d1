//! PoA claim rules (SPEC §3): required claims with strict JSON types, time
//! window with leeway, TTL bounds, and `iss`/`aud` when configured.

use serde_json::{Map, Value};

use super::PoaError;

/// The hard cap on a mandate's lifetime, whatever a tenant configures.
pub const HARD_MAX_TTL_SECONDS: i64 = 900;

/// What a tenant requires of its mandates.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    /// Tenant max TTL; the effective bound is `min(max_ttl, 900)`.
    pub max_ttl_seconds: i64,
    pub leeway_seconds: i64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Verified claims. `raw` is the whole claim object, handed to the policy
/// as `input.poa`.
#[derive(Debug, Clone)]
pub struct PoaClaims {
    pub sub: String,
    pub act: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    pub raw: Map<String, Value>,
}

fn string<'a>(m: &'a Map<String, Value>, k: &'static str) -> Result<Option<&'a str>, PoaError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(PoaError::invalid(format!("claim {k} must be a string"))),
    }
}

fn required_string<'a>(m: &'a Map<String, Value>, k: &'static str) -> Result<&'a str, PoaError> {
    match string(m, k)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(PoaError::invalid(format!("claim {k} is required"))),
    }
}

fn int(m: &Map<String, Value>, k: &'static str) -> Result<Option<i64>, PoaError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| {
            PoaError::invalid(format!("claim {k} must be a whole number of seconds"))
        }),
        Some(_) => Err(PoaError::invalid(format!("claim {k} must be a number"))),
    }
}

fn object(m: &Map<String, Value>, k: &'static str) -> Result<(), PoaError> {
    match m.get(k) {
        Some(Value::Object(_)) => Ok(()),
        None | Some(Value::Null) => Err(PoaError::invalid(format!("claim {k} is required"))),
        Some(_) => Err(PoaError::invalid(format!(
            "claim {k} must be a JSON object"
        ))),
    }
}

/// Decodes and checks the claims of a verified payload at time `now`
/// (Unix seconds).
pub fn validate(payload: &[u8], rules: &ClaimRules, now: i64) -> Result<PoaClaims, PoaError> {
    let raw = crate::strict_json::object(payload)
        .ok_or_else(|| PoaError::invalid("claims are not a JSON object with each name once"))?;
    let sub = required_string(&raw, "sub")?.to_owned();
    let act = required_string(&raw, "act")?.to_owned();
    let jti = required_string(&raw, "jti")?.to_owned();
    if jti.len() > 256 || jti.trim() != jti {
        return Err(PoaError::invalid(
            "claim jti must be at most 256 characters without surrounding spaces",
        ));
    }
    if act.len() > 256 {
        return Err(PoaError::invalid("claim act is too long"));
    }
    object(&raw, "con")?;
    object(&raw, "leg")?;
    let (Some(iat), Some(exp)) = (int(&raw, "iat")?, int(&raw, "exp")?) else {
        return Err(PoaError::invalid("claims iat and exp are required"));
    };
    let ttl = exp.saturating_sub(iat);
    if ttl <= 0 {
        return Err(PoaError::invalid("exp must be after iat"));
    }
    let max_ttl = rules.max_ttl_seconds.min(HARD_MAX_TTL_SECONDS);
    if ttl > max_ttl {
        return Err(PoaError::invalid(format!(
            "lifetime {ttl}s exceeds the maximum of {max_ttl}s"
        )));
    }
    if iat > now.saturating_add(rules.leeway_seconds) {
        return Err(PoaError::invalid("iat is in the future"));
    }
    if let Some(nbf) = int(&raw, "nbf")? {
        if nbf > now.saturating_add(rules.leeway_seconds) {
            return Err(PoaError::invalid("token is not valid yet (nbf)"));
        }
    }
    if now >= exp.saturating_add(rules.leeway_seconds) {
        return Err(PoaError::Expired("token has expired".into()));
    }
    if let Some(want) = &rules.issuer {
        if string(&raw, "iss")? != Some(want.as_str()) {
            return Err(PoaError::invalid("iss is not the configured issuer"));
        }
    }
    if let Some(want) = &rules.audience {
        let ok = match raw.get("aud") {
            Some(Value::String(a)) => a == want,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
            _ => false,
        };
        if !ok {
            return Err(PoaError::invalid("aud does not name this broker"));
        }
    }
    Ok(PoaClaims {
        sub,
        act,
        jti,
        iat,
        exp,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn rules() -> ClaimRules {
        ClaimRules {
            max_ttl_seconds: 300,
            leeway_seconds: 10,
            issuer: None,
            audience: None,
        }
    }

    fn good() -> Value {
        json!({
            "sub": "spiffe://acme.example/agent/a", "act": "crm.contact.read",
            "con": {}, "leg": {"basis": "contract"}, "jti": "j-1",
            "iat": NOW - 5, "exp": NOW + 60
        })
    }

    fn check(v: &Value, r: &ClaimRules) -> Result<PoaClaims, PoaError> {
        validate(v.to_string().as_bytes(), r, NOW)
    }

    fn with(k: &str, v: Value) -> Value {
        let mut c = good();
        c[k] = v;
        c
    }

    fn without(k: &str) -> Value {
        let mut c = good();
        c.as_object_mut().unwrap().remove(k);
        c
    }

    #[test]
    fn accepts_a_good_mandate() {
        let c = check(&good(), &rules()).unwrap();
        assert_eq!(c.act, "crm.contact.read");
        assert_eq!(c.jti, "j-1");
        assert_eq!(c.raw["leg"]["basis"], "contract");
    }

    #[test]
    fn required_claims_and_types() {
        for k in ["sub", "act", "jti", "con", "leg", "iat", "exp"] {
            assert!(
                matches!(check(&without(k), &rules()), Err(PoaError::Invalid(_))),
                "{k}"
            );
        }
        for (k, v) in [
            ("sub", json!(1)),
            ("act", json!("  ")),
            ("jti", json!(" j ")),
            ("con", json!([])),
            ("leg", json!("x")),
            ("iat", json!("1")),
            ("exp", json!(1.5)),
        ] {
            assert!(
                matches!(
                    check(&with(k, v.clone()), &rules()),
                    Err(PoaError::Invalid(_))
                ),
                "{k}={v}"
            );
        }
        assert!(validate(b"[1]", &rules(), NOW).is_err());
    }

    /// A claim twice (last-wins for one verifier, first-wins for another)
    /// is refused, at any depth, as the JWS header's duplicates are.
    #[test]
    fn a_claim_named_twice_is_refused() {
        let text = good().to_string();
        assert!(validate(text.as_bytes(), &rules(), NOW).is_ok());
        for twice in [
            text.replacen('{', r#"{"act":"crm.contact.delete","#, 1),
            text.replacen('{', r#"{"SUB":"spiffe://acme.example/agent/b","#, 1),
            text.replacen(
                r#""basis":"contract""#,
                r#""basis":"contract","basis":"x""#,
                1,
            ),
        ] {
            assert!(
                matches!(
                    validate(twice.as_bytes(), &rules(), NOW),
                    Err(PoaError::Invalid(_))
                ),
                "{twice}"
            );
        }
    }

    #[test]
    fn lifetime_bounds() {
        let r = rules();
        // exp before or at iat.
        assert!(check(&with("exp", json!(NOW - 5)), &r).is_err());
        // Longer than the tenant's max.
        let long = with("exp", json!(NOW - 5 + 301));
        assert!(check(&long, &r)
            .unwrap_err()
            .reason()
            .contains("maximum of 300s"));
        // A tenant max above 900 is capped at 900.
        let r900 = ClaimRules {
            max_ttl_seconds: 3600,
            ..rules()
        };
        let mut c = good();
        c["iat"] = json!(NOW);
        c["exp"] = json!(NOW + 901);
        assert!(check(&c, &r900).unwrap_err().reason().contains("900s"));
        c["exp"] = json!(NOW + 900);
        assert!(check(&c, &r900).is_ok());
    }

    #[test]
    fn time_window_with_leeway() {
        let r = rules();
        let mut c = good();
        c["iat"] = json!(NOW - 100);
        c["exp"] = json!(NOW - 11);
        assert!(matches!(check(&c, &r), Err(PoaError::Expired(_))));
        c["exp"] = json!(NOW - 9);
        assert!(check(&c, &r).is_ok(), "inside leeway");
        let mut f = good();
        f["iat"] = json!(NOW + 11);
        f["exp"] = json!(NOW + 100);
        assert!(check(&f, &r).unwrap_err().reason().contains("future"));
        assert!(check(&with("nbf", json!(NOW + 60)), &r).is_err());
        assert!(check(&with("nbf", json!(NOW)), &r).is_ok());
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let r = ClaimRules {
            issuer: Some("https://agentauth".into()),
            audience: Some("atb-broker".into()),
            ..rules()
        };
        assert!(check(&good(), &r).is_err());
        let mut c = with("iss", json!("https://agentauth"));
        c["aud"] = json!("atb-broker");
        assert!(check(&c, &r).is_ok());
        c["aud"] = json!(["other", "atb-broker"]);
        assert!(check(&c, &r).is_ok());
        c["aud"] = json!(["other"]);
        assert!(check(&c, &r).is_err());
        c["aud"] = json!("atb-broker");
        c["iss"] = json!("https://evil");
        assert!(check(&c, &r).is_err());
    }
}
