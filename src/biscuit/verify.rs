//! Reading a Biscuit presented to the broker: signature under one of the
//! tenant's root keys, the authority block's facts, then (once the request
//! is known) the authorizer with the request's ambient facts.
//!
//! Design points:
//! - **The tenant's keys only.** The key is chosen by the token's
//!   `root_key_id` among the mTLS tenant's root keys; a token under another
//!   tenant's key cannot verify (ids may repeat across tenants, keys do
//!   not).
//! - **Bounded before parsing.** Size and block count are checked first;
//!   every Datalog run (extraction and authorization) has explicit limits
//!   (facts, iterations, time), so a pathological token is refused quickly
//!   as `poa_invalid`.
//! - **Authority facts are the grant.** Only the authority block (and the
//!   authorizer) is trusted by the extraction queries: a later block cannot
//!   add a right, extend an expiry or change the agent.
//! - **Single use per capability.** The authority block's revocation id is
//!   the single-use key, so a capability and all its attenuations are spent
//!   together; any revoked id (a parent's included) refuses the token.
//! - Plain logic: no HTTP types.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::{date, fact, int, string, Term};
use biscuit_auth::{AuthorizerBuilder, Biscuit, PublicKey};
use serde_json::{Map, Value};

use super::config::BiscuitConfig;

/// A tenant's root keys by id.
#[derive(Debug, Clone, Default)]
pub struct RootKeys {
    keys: HashMap<u32, PublicKey>,
}

impl RootKeys {
    /// Parses `ed25519/<hex>` keys; other algorithms are refused.
    pub fn parse(keys: &[(u32, String)]) -> Result<Self, String> {
        let mut out = HashMap::new();
        for (id, text) in keys {
            if !text.starts_with("ed25519/") {
                return Err(format!(
                    "root key {id}: only ed25519/<hex> keys are accepted"
                ));
            }
            let key: PublicKey = text.parse().map_err(|e| format!("root key {id}: {e}"))?;
            if out.insert(*id, key).is_some() {
                return Err(format!("root key id {id} appears twice"));
            }
        }
        Ok(Self { keys: out })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Why a Biscuit is refused. `Invalid` is 401 `poa_invalid`, `Expired` 401
/// `poa_expired`, `Denied` 403 (the capability does not cover this
/// request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BiscuitRefusal {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    Denied(String),
}

/// A verified capability: its authority facts and the token itself.
#[derive(Clone)]
pub struct Capability {
    pub agent: String,
    pub tenant: String,
    /// The actions the authority grants (`right`).
    pub rights: Vec<String>,
    /// The action of this request (chosen by `bind`).
    pub act: String,
    pub issued: i64,
    pub expires: i64,
    pub con: Value,
    pub leg: Value,
    pub id: String,
    /// Revocation ids of every block, hex, authority first.
    pub revocation_ids: Vec<String>,
    pub root_key_id: u32,
    pub blocks: usize,
    token: Arc<Biscuit>,
}

impl std::fmt::Debug for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capability")
            .field("agent", &self.agent)
            .field("tenant", &self.tenant)
            .field("rights", &self.rights)
            .field("act", &self.act)
            .field("expires", &self.expires)
            .field("id", &self.id)
            .field("blocks", &self.blocks)
            .finish()
    }
}

impl Capability {
    /// The document the policy sees as `poa`, in the PoA claims' shape.
    pub fn policy_view(&self) -> Value {
        serde_json::json!({
            "sub": self.agent, "act": self.act, "con": self.con, "leg": self.leg,
            "iat": self.issued, "exp": self.expires, "jti": self.id,
            "format": "biscuit", "root_key_id": self.root_key_id, "blocks": self.blocks,
        })
    }

    /// The single-use key: the authority block's revocation id.
    pub fn single_use_id(&self) -> &str {
        self.revocation_ids.first().map_or("", String::as_str)
    }
}

/// Whether `token` is a Biscuit rather than a compact JWS: a JWS has two
/// dots and starts with `eyJ` (a JSON header); a Biscuit is one base64url
/// string without dots.
pub fn looks_like_biscuit(token: &str) -> bool {
    !token.contains('.') && !token.is_empty()
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Verifies `token` under `keys` and reads its authority facts. `now` is
/// Unix seconds, `leeway` the clock leeway (for `issued`; none for
/// `expires`, which the token's own check enforces), `max_ttl` the tenant's mandate
/// lifetime limit (`expires - issued`).
pub fn verify(
    token: &str,
    keys: &RootKeys,
    limits: &BiscuitConfig,
    now: i64,
    leeway: i64,
    max_ttl: i64,
) -> Result<Capability, BiscuitRefusal> {
    let invalid = |m: String| BiscuitRefusal::Invalid(m);
    if token.len() > limits.max_token_bytes {
        return Err(invalid(format!(
            "the Biscuit is larger than {} bytes",
            limits.max_token_bytes
        )));
    }
    if keys.is_empty() {
        return Err(invalid("the tenant has no Biscuit root keys".into()));
    }
    let asked = std::cell::Cell::new(None);
    let biscuit = Biscuit::from_base64(token, |id: Option<u32>| {
        let id = id.ok_or(biscuit_auth::error::Format::UnknownPublicKey)?;
        asked.set(Some(id));
        keys.keys
            .get(&id)
            .copied()
            .ok_or(biscuit_auth::error::Format::UnknownPublicKey)
    })
    .map_err(|e| match asked.get() {
        None => invalid(format!("not a Biscuit with a root_key_id: {e}")),
        Some(id) if !keys.keys.contains_key(&id) => invalid(format!(
            "root key id {id} is not one of this tenant's Biscuit root keys"
        )),
        Some(_) => invalid(format!("the Biscuit does not verify: {e}")),
    })?;
    let blocks = biscuit.block_count();
    if blocks > limits.max_blocks {
        return Err(invalid(format!(
            "the Biscuit has {blocks} blocks; at most {} are accepted",
            limits.max_blocks
        )));
    }
    let mut authorizer = AuthorizerBuilder::new()
        .set_limits(limits.limits())
        .build(&biscuit)
        .map_err(|e| invalid(format!("the Biscuit cannot be read: {e}")))?;
    check_work(&authorizer, limits)?;
    let run = limits.limits();
    let strings = |authorizer: &mut biscuit_auth::Authorizer, name: &str| {
        let rule = format!("data($x) <- {name}($x)");
        authorizer
            .query_with_limits::<_, (String,), _>(rule.as_str(), run.clone())
            .map(|v| v.into_iter().map(|(s,)| s).collect::<BTreeSet<String>>())
            .map_err(|e| invalid(format!("the Biscuit's {name} facts cannot be read: {e}")))
    };
    let dates = |authorizer: &mut biscuit_auth::Authorizer, name: &str| {
        let rule = format!("data($x) <- {name}($x)");
        authorizer
            .query_with_limits::<_, (SystemTime,), _>(rule.as_str(), run.clone())
            .map(|v| v.into_iter().map(|(t,)| unix(t)).collect::<BTreeSet<i64>>())
            .map_err(|e| invalid(format!("the Biscuit's {name} fact cannot be read: {e}")))
    };
    let one = |set: BTreeSet<String>, name: &str| -> Result<String, BiscuitRefusal> {
        match set.len() {
            1 => Ok(set.into_iter().next().unwrap_or_default()),
            0 => Err(invalid(format!("the authority block has no {name} fact"))),
            _ => Err(invalid(format!(
                "the authority block has several {name} facts"
            ))),
        }
    };
    let one_date = |set: BTreeSet<i64>, name: &str| -> Result<i64, BiscuitRefusal> {
        match set.len() {
            1 => Ok(set.into_iter().next().unwrap_or_default()),
            0 => Err(invalid(format!("the authority block has no {name} fact"))),
            _ => Err(invalid(format!(
                "the authority block has several {name} facts"
            ))),
        }
    };
    let json_fact = |set: BTreeSet<String>, name: &str| -> Result<Value, BiscuitRefusal> {
        match set.len() {
            0 => Ok(Value::Object(Map::new())),
            1 => match serde_json::from_str(set.iter().next().map_or("", String::as_str)) {
                Ok(v @ Value::Object(_)) => Ok(v),
                _ => Err(invalid(format!("the {name} fact must hold a JSON object"))),
            },
            _ => Err(invalid(format!(
                "the authority block has several {name} facts"
            ))),
        }
    };
    let agent = one(strings(&mut authorizer, "agent")?, "agent")?;
    let tenant = one(strings(&mut authorizer, "tenant")?, "tenant")?;
    let id = one(strings(&mut authorizer, "id")?, "id")?;
    let rights: Vec<String> = strings(&mut authorizer, "right")?.into_iter().collect();
    if rights.is_empty() {
        return Err(invalid("the authority block grants no right".into()));
    }
    let issued = one_date(dates(&mut authorizer, "issued")?, "issued")?;
    let expires = one_date(dates(&mut authorizer, "expires")?, "expires")?;
    let con = json_fact(strings(&mut authorizer, "con")?, "con")?;
    let leg = json_fact(strings(&mut authorizer, "leg")?, "leg")?;
    if id.is_empty() || id.len() > 256 {
        return Err(invalid("the id fact must be 1 to 256 characters".into()));
    }
    // No leeway on expiry: the authority block's own check
    // (`time($t), $t <= expires`) refuses the token at `expires` whatever
    // the broker's leeway, and an expired capability must be answered as
    // expired, not as a failed check.
    if expires < now {
        return Err(BiscuitRefusal::Expired("the Biscuit has expired".into()));
    }
    if issued > now + leeway {
        return Err(invalid("the Biscuit is issued in the future".into()));
    }
    let ttl = expires - issued;
    if ttl <= 0 || ttl > max_ttl.min(900) {
        return Err(invalid(format!(
            "expires - issued must be 1 to {} seconds",
            max_ttl.min(900)
        )));
    }
    let revocation_ids = biscuit
        .revocation_identifiers()
        .iter()
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .collect();
    Ok(Capability {
        agent,
        tenant,
        act: String::new(),
        rights,
        issued,
        expires,
        con,
        leg,
        id,
        revocation_ids,
        root_key_id: asked.get().unwrap_or_default(),
        blocks,
        token: Arc::new(biscuit),
    })
}

/// Refuses a token whose Datalog could outrun the limits before any of it
/// runs (see [`super::work`]).
fn check_work(
    authorizer: &biscuit_auth::Authorizer,
    limits: &BiscuitConfig,
) -> Result<(), BiscuitRefusal> {
    super::work::check(authorizer, limits.work_limits())
        .map(|_| ())
        .map_err(|e| BiscuitRefusal::Invalid(e.to_string()))
}

/// The request as the authorizer sees it (ambient facts).
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub agent: &'a str,
    pub tenant: &'a str,
    pub action: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub connector: &'a str,
    pub params: &'a Map<String, Value>,
    pub now: i64,
}

/// Runs the authorizer: every check of every block against the request's
/// ambient facts, and the broker's policy `allow if right($a), action($a)`.
pub fn authorize(
    capability: &Capability,
    request: &Request<'_>,
    config: &BiscuitConfig,
) -> Result<(), BiscuitRefusal> {
    let denied = |m: String| BiscuitRefusal::Denied(m);
    let mut b = AuthorizerBuilder::new().set_limits(config.limits());
    let mut facts = vec![
        fact("agent", &[string(request.agent)]),
        fact("tenant", &[string(request.tenant)]),
        fact("action", &[string(request.action)]),
        fact("method", &[string(request.method)]),
        fact("path", &[string(request.path)]),
        fact("connector", &[string(request.connector)]),
        fact(
            "time",
            &[date(
                &(UNIX_EPOCH + Duration::from_secs(request.now.max(0) as u64)),
            )],
        ),
    ];
    if let Some(route) = request.route {
        facts.push(fact("route", &[string(route)]));
    }
    for (name, value) in request.params {
        let term: Option<Term> = match value {
            Value::String(s) => Some(string(s)),
            Value::Bool(v) => Some(biscuit_auth::builder::boolean(*v)),
            Value::Number(n) => n.as_i64().map(int),
            // Other values have no Datalog form: checks on them fail (closed).
            _ => None,
        };
        if let Some(term) = term {
            facts.push(fact("param", &[string(name), term]));
        }
    }
    for f in facts {
        b = b
            .fact(f)
            .map_err(|e| denied(format!("request facts: {e}")))?;
    }
    let mut authorizer = b
        .policy("allow if right($a), action($a)")
        .map_err(|e| denied(format!("policy: {e}")))?
        .build(&capability.token)
        .map_err(|e| BiscuitRefusal::Invalid(format!("the Biscuit cannot be authorized: {e}")))?;
    check_work(&authorizer, config)?;
    match authorizer.authorize() {
        Ok(_) => Ok(()),
        Err(biscuit_auth::error::Token::FailedLogic(logic)) => Err(denied(format!(
            "the Biscuit does not allow this request: {}",
            crate::clip(&format!("{logic:?}"), 300)
        ))),
        // A check or rule that cannot be evaluated on this request (e.g.
        // `$v <= 1000` where the request's amount is a string): the
        // capability does not allow the request.
        Err(biscuit_auth::error::Token::Execution(e)) => Err(denied(format!(
            "the Biscuit's checks cannot be evaluated on this request: {e}"
        ))),
        Err(biscuit_auth::error::Token::RunLimit(limit)) => Err(BiscuitRefusal::Invalid(format!(
            "the Biscuit exceeds the authorizer's limits: {limit}"
        ))),
        Err(e) => Err(BiscuitRefusal::Invalid(format!(
            "the Biscuit cannot be authorized: {e}"
        ))),
    }
}
