//! What `atb biscuit keygen|mint|attenuate|inspect` does, as plain
//! functions (the CLI only reads files and prints).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use biscuit_auth::builder::{date, fact, int, set, string, Term};
use biscuit_auth::{Algorithm, Biscuit, BlockBuilder, KeyPair, PrivateKey, UnverifiedBiscuit};
use serde_json::{json, Value};

/// Why a tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("biscuit: {0}")]
    Biscuit(#[from] biscuit_auth::error::Token),
    #[error("key: {0}")]
    Key(String),
    #[error("{0}")]
    Input(String),
}

/// A fresh Ed25519 root key pair: (`ed25519-private/<hex>`, `ed25519/<hex>`).
pub fn keygen() -> (String, String) {
    let pair = KeyPair::new_with_algorithm(Algorithm::Ed25519);
    (
        pair.private().to_prefixed_string(),
        pair.public().to_string(),
    )
}

/// The public key (`ed25519/<hex>`) of a private key
/// (`ed25519-private/<hex>`).
pub fn public_key_of(private: &str) -> Result<String, ToolError> {
    Ok(key_pair(private)?.public().to_string())
}

fn key_pair(private: &str) -> Result<KeyPair, ToolError> {
    let key: PrivateKey = private
        .trim()
        .parse()
        .map_err(|e| ToolError::Key(format!("{e}")))?;
    Ok(KeyPair::from(&key))
}

fn at(unix: i64) -> Term {
    date(&(UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64)))
}

/// What the authority block grants.
#[derive(Debug, Clone)]
pub struct Mint<'a> {
    pub tenant: &'a str,
    pub agent: &'a str,
    pub actions: &'a [String],
    pub issued: i64,
    pub ttl: i64,
    pub con: &'a Value,
    pub leg: &'a Value,
    /// Unique id (random when `None`).
    pub id: Option<&'a str>,
    pub root_key_id: u32,
}

fn random_id() -> Result<String, ToolError> {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).map_err(|e| ToolError::Input(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Mints a capability signed by `private` (the tenant's root key).
pub fn mint(private: &str, m: &Mint<'_>) -> Result<String, ToolError> {
    if m.actions.is_empty() {
        return Err(ToolError::Input("give at least one --action".into()));
    }
    if !(1..=900).contains(&m.ttl) {
        return Err(ToolError::Input("--ttl must be 1..=900 seconds".into()));
    }
    for (name, v) in [("con", m.con), ("leg", m.leg)] {
        if !v.is_object() {
            return Err(ToolError::Input(format!("--{name} must be a JSON object")));
        }
    }
    let id = match m.id {
        Some(id) => id.to_owned(),
        None => random_id()?,
    };
    let expires = m.issued + m.ttl;
    let mut builder = Biscuit::builder()
        .fact(fact("agent", &[string(m.agent)]))?
        .fact(fact("tenant", &[string(m.tenant)]))?
        .fact(fact("id", &[string(&id)]))?
        .fact(fact("issued", &[at(m.issued)]))?
        .fact(fact("expires", &[at(expires)]))?
        .fact(fact("con", &[string(&m.con.to_string())]))?
        .fact(fact("leg", &[string(&m.leg.to_string())]))?;
    for a in m.actions {
        builder = builder.fact(fact("right", &[string(a)]))?;
    }
    let builder = builder
        .code_with_params(
            "check if time($t), $t <= {expires}",
            HashMap::from([("expires".to_owned(), at(expires))]),
            HashMap::new(),
        )?
        .root_key_id(m.root_key_id);
    Ok(builder.build(&key_pair(private)?)?.to_base64()?)
}

/// How an attenuation narrows a capability (each adds one check).
#[derive(Debug, Clone, Default)]
pub struct Attenuation {
    /// Only these actions.
    pub actions: Vec<String>,
    /// Expires this many seconds from `now`.
    pub ttl: Option<i64>,
    /// `param("amount")` at most this.
    pub max_amount: Option<i64>,
    /// Only through this connector.
    pub connector: Option<String>,
    /// Only this call: method and path (or route template, if it has `{`).
    pub route: Option<(String, String)>,
    /// Raw Datalog checks.
    pub checks: Vec<String>,
    pub now: i64,
}

/// Appends a block of checks to `token` (no key needed: attenuation is
/// offline). The token is not verified here.
pub fn attenuate(token: &str, a: &Attenuation) -> Result<String, ToolError> {
    let mut block = BlockBuilder::new();
    let mut added = 0;
    if !a.actions.is_empty() {
        let actions: BTreeSet<Term> = a.actions.iter().map(|s| string(s)).collect();
        block = block.code_with_params(
            "check if action($a), {actions}.contains($a)",
            HashMap::from([("actions".to_owned(), set(actions))]),
            HashMap::new(),
        )?;
        added += 1;
    }
    if let Some(ttl) = a.ttl {
        if ttl <= 0 {
            return Err(ToolError::Input("--ttl must be positive".into()));
        }
        block = block.code_with_params(
            "check if time($t), $t <= {until}",
            HashMap::from([("until".to_owned(), at(a.now + ttl))]),
            HashMap::new(),
        )?;
        added += 1;
    }
    if let Some(max) = a.max_amount {
        block = block.code_with_params(
            "check if param(\"amount\", $v), $v <= {max}",
            HashMap::from([("max".to_owned(), int(max))]),
            HashMap::new(),
        )?;
        added += 1;
    }
    if let Some(c) = &a.connector {
        block = block.code_with_params(
            "check if connector({c})",
            HashMap::from([("c".to_owned(), string(c))]),
            HashMap::new(),
        )?;
        added += 1;
    }
    if let Some((method, path)) = &a.route {
        let src = if path.contains('{') {
            "check if method({m}), route({p})"
        } else {
            "check if method({m}), path({p})"
        };
        block = block.code_with_params(
            src,
            HashMap::from([
                ("m".to_owned(), string(&method.to_ascii_uppercase())),
                ("p".to_owned(), string(path)),
            ]),
            HashMap::new(),
        )?;
        added += 1;
    }
    for c in &a.checks {
        block = block.code(c)?;
        added += 1;
    }
    if added == 0 {
        return Err(ToolError::Input(
            "nothing to attenuate: give --action, --ttl, --max-amount, --connector, --route or --check"
                .into(),
        ));
    }
    let unverified = UnverifiedBiscuit::from_base64(token.trim())?;
    Ok(unverified.append(block)?.to_base64()?)
}

/// Everything a token says, without verifying it: blocks as Datalog
/// source, revocation ids, root key id, the authority's expiry.
pub fn inspect(token: &str) -> Result<Value, ToolError> {
    let u = UnverifiedBiscuit::from_base64(token.trim())?;
    let blocks = (0..u.block_count())
        .map(|i| u.print_block_source(i).map(Value::from))
        .collect::<Result<Vec<_>, _>>()?;
    let revocation_ids: Vec<String> = u
        .revocation_identifiers()
        .iter()
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .collect();
    let expires = blocks.first().and_then(Value::as_str).and_then(|src| {
        src.lines().find_map(|l| {
            l.trim()
                .strip_prefix("expires(")?
                .strip_suffix(");")
                .map(str::to_owned)
        })
    });
    Ok(json!({
        "root_key_id": u.root_key_id(),
        "blocks": blocks,
        "revocation_ids": revocation_ids,
        "expires": expires,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::biscuit::config::BiscuitConfig;
    use crate::biscuit::verify::{authorize, verify, BiscuitRefusal, Request, RootKeys};

    const AGENT: &str = "spiffe://acme.example/agent/demo";

    fn minted(actions: &[&str]) -> (String, RootKeys, i64) {
        let (private, public) = keygen();
        let now = 1_800_000_000;
        let actions: Vec<String> = actions.iter().map(|s| s.to_string()).collect();
        let token = mint(
            &private,
            &Mint {
                tenant: "acme",
                agent: AGENT,
                actions: &actions,
                issued: now,
                ttl: 300,
                con: &json!({"connector": "crm"}),
                leg: &json!({"jurisdiction": "EU"}),
                id: None,
                root_key_id: 1,
            },
        )
        .unwrap();
        (token, RootKeys::parse(&[(1, public)]).unwrap(), now)
    }

    fn request<'a>(
        action: &'a str,
        params: &'a serde_json::Map<String, Value>,
        now: i64,
    ) -> Request<'a> {
        Request {
            agent: AGENT,
            tenant: "acme",
            action,
            method: "GET",
            path: "/api/x",
            route: Some("/api/{*rest}"),
            connector: "crm",
            params,
            now,
        }
    }

    #[test]
    fn minted_capabilities_verify_and_attenuation_only_narrows() {
        let (token, keys, now) = minted(&["crm.contact.read", "crm.contact.update"]);
        let limits = BiscuitConfig::default();
        let cap = verify(&token, &keys, &limits, now, 10, 900).unwrap();
        assert_eq!(cap.agent, AGENT);
        assert_eq!(cap.rights.len(), 2);
        assert_eq!(cap.expires - cap.issued, 300);
        let params = serde_json::Map::new();
        authorize(&cap, &request("crm.contact.update", &params, now), &limits).unwrap();
        // Read-only: update is gone, read stays.
        let narrow = attenuate(
            &token,
            &Attenuation {
                actions: vec!["crm.contact.read".into()],
                now,
                ..Attenuation::default()
            },
        )
        .unwrap();
        let cap = verify(&narrow, &keys, &limits, now, 10, 900).unwrap();
        assert_eq!(
            cap.single_use_id(),
            verify(&token, &keys, &limits, now, 10, 900)
                .unwrap()
                .single_use_id()
        );
        authorize(&cap, &request("crm.contact.read", &params, now), &limits).unwrap();
        assert!(matches!(
            authorize(&cap, &request("crm.contact.update", &params, now), &limits),
            Err(BiscuitRefusal::Denied(_))
        ));
        // A later block cannot add a right.
        let widened = attenuate(
            &narrow,
            &Attenuation {
                checks: vec!["right(\"admin.delete\");".into()],
                now,
                ..Attenuation::default()
            },
        );
        if let Ok(widened) = widened {
            let cap = verify(&widened, &keys, &limits, now, 10, 900).unwrap();
            assert!(!cap.rights.contains(&"admin.delete".to_string()));
            assert!(authorize(&cap, &request("admin.delete", &params, now), &limits).is_err());
        }
    }

    #[test]
    fn another_key_and_expiry_and_amount_are_enforced() {
        let (token, _, now) = minted(&["sap.payment.execute"]);
        let (_, other_keys, _) = minted(&["x"]);
        let limits = BiscuitConfig::default();
        assert!(matches!(
            verify(&token, &other_keys, &limits, now, 10, 900),
            Err(BiscuitRefusal::Invalid(_))
        ));
        let (token, keys, now) = minted(&["sap.payment.execute"]);
        assert!(matches!(
            verify(&token, &keys, &limits, now + 400, 10, 900),
            Err(BiscuitRefusal::Expired(_))
        ));
        let capped = attenuate(
            &token,
            &Attenuation {
                max_amount: Some(1000),
                ttl: Some(60),
                now,
                ..Attenuation::default()
            },
        )
        .unwrap();
        let cap = verify(&capped, &keys, &limits, now, 10, 900).unwrap();
        let small: serde_json::Map<String, Value> =
            serde_json::from_value(json!({"amount": 900})).unwrap();
        let big: serde_json::Map<String, Value> =
            serde_json::from_value(json!({"amount": 1500})).unwrap();
        authorize(&cap, &request("sap.payment.execute", &small, now), &limits).unwrap();
        assert!(authorize(&cap, &request("sap.payment.execute", &big, now), &limits).is_err());
        // The attenuated expiry (60 s) holds although the authority says 300.
        assert!(authorize(
            &cap,
            &request("sap.payment.execute", &small, now + 120),
            &limits
        )
        .is_err());
        let shown = inspect(&capped).unwrap();
        assert_eq!(shown["blocks"].as_array().unwrap().len(), 2);
        assert_eq!(shown["revocation_ids"].as_array().unwrap().len(), 2);
    }

    /// Expired is expired within the leeway too (the authority's own check
    /// would refuse it as a failed check otherwise), and a check that
    /// cannot be evaluated on the request (a string amount) denies the
    /// request rather than calling the token invalid.
    #[test]
    fn expiry_has_no_leeway_and_type_errors_deny() {
        let (token, keys, now) = minted(&["sap.payment.execute"]);
        let limits = BiscuitConfig::default();
        assert!(verify(&token, &keys, &limits, now + 300, 10, 900).is_ok());
        assert!(matches!(
            verify(&token, &keys, &limits, now + 305, 10, 900),
            Err(BiscuitRefusal::Expired(_))
        ));
        let capped = attenuate(
            &token,
            &Attenuation {
                max_amount: Some(1000),
                now,
                ..Attenuation::default()
            },
        )
        .unwrap();
        let cap = verify(&capped, &keys, &limits, now, 10, 900).unwrap();
        let text: serde_json::Map<String, Value> =
            serde_json::from_value(json!({"amount": "500"})).unwrap();
        let outcome = authorize(&cap, &request("sap.payment.execute", &text, now), &limits);
        assert!(
            matches!(outcome, Err(BiscuitRefusal::Denied(_))),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_pathological_rule_set_stops_at_the_limits() {
        let (token, keys, now) = minted(&["crm.contact.read"]);
        // A cartesian product: 60^3 facts from 60.
        let facts: String = (0..60).map(|i| format!("n({i}); ")).collect();
        let heavy = attenuate(
            &token,
            &Attenuation {
                checks: vec![format!(
                    "{facts} p($x, $y, $z) <- n($x), n($y), n($z); check if p(1, 2, 3);"
                )],
                now,
                ..Attenuation::default()
            },
        )
        .unwrap();
        let limits = BiscuitConfig::default();
        let started = std::time::Instant::now();
        let verified = verify(&heavy, &keys, &limits, now, 10, 900);
        let outcome = match verified {
            Err(e) => Err(e),
            Ok(cap) => authorize(
                &cap,
                &request("crm.contact.read", &serde_json::Map::new(), now),
                &limits,
            ),
        };
        assert!(
            matches!(outcome, Err(BiscuitRefusal::Invalid(_))),
            "{outcome:?}"
        );
        // A check alone joining three predicates over those facts: refused
        // before it runs.
        let heavy_check = attenuate(
            &token,
            &Attenuation {
                checks: vec![format!(
                    "{facts} check if n($x), n($y), n($z), $x + $y + $z == -1;"
                )],
                now,
                ..Attenuation::default()
            },
        )
        .unwrap();
        let outcome = verify(&heavy_check, &keys, &limits, now, 10, 900);
        assert!(
            matches!(outcome, Err(BiscuitRefusal::Invalid(_))),
            "{outcome:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
