//! The Biscuit entry point: `atb::biscuit::verify::verify` under a fixed
//! root key (then `authorize`), and the offline tools
//! `atb::biscuit::tools::inspect` and `attenuate`.
//!
//! Two kinds of input (chosen by the first byte):
//! - a token as presented (base64 text): verified, inspected, attenuated;
//! - a structured case: a capability minted with the fixed root key from
//!   fuzzed facts, narrowed by a fuzzed attenuation (actions, TTL, amount,
//!   connector, route, raw Datalog), then verified and authorized for a
//!   fuzzed request — so the fuzzer drives the verifier with tokens that
//!   really verify.
//!
//! Invariants: no panic; a verified capability carries exactly the minted
//! agent, tenant and id, its rights are a subset of the minted ones and
//! its lifetime is the minted one; a request is authorized only for an
//! action the authority block grants (and, if the attenuation lists
//! actions, one of those) — a later block never adds a right.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use atb::biscuit::config::BiscuitConfig;
use atb::biscuit::tools::{attenuate, inspect, mint, public_key_of, Attenuation, Mint};
use atb::biscuit::verify::{authorize, verify, BiscuitRefusal, Request, RootKeys};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

const PRIVATE: &str =
    "ed25519-private/0707070707070707070707070707070707070707070707070707070707070707";
const NOW: i64 = 1_800_000_000;

fn keys() -> &'static RootKeys {
    static K: OnceLock<RootKeys> = OnceLock::new();
    K.get_or_init(|| {
        let public = public_key_of(PRIVATE).expect("fixed key");
        RootKeys::parse(&[(1, public)]).expect("fixed key parses")
    })
}

#[derive(Debug, Arbitrary)]
struct Case {
    agent: String,
    tenant: String,
    actions: Vec<String>,
    ttl: u16,
    issued_offset: i16,
    id: String,
    attenuate: bool,
    narrow_actions: Vec<String>,
    narrow_ttl: Option<i64>,
    max_amount: Option<i64>,
    connector: Option<String>,
    route: Option<(String, String)>,
    checks: Vec<String>,
    action: String,
    method: String,
    path: String,
    req_connector: String,
    amount: Option<i64>,
    later: i16,
}

fn presented(token: &str) {
    let limits = BiscuitConfig::default();
    let _ = inspect(token);
    let _ = attenuate(
        token,
        &Attenuation {
            actions: vec!["crm.contact.read".into()],
            now: NOW,
            ..Default::default()
        },
    );
    if let Ok(cap) = verify(token, keys(), &limits, NOW, 30, 900) {
        // A fuzzed token verifying under the fixed key is a forgery unless
        // it came from a seed minted with that key; either way its facts
        // must obey the bounds.
        assert!(cap.expires > cap.issued && cap.expires - cap.issued <= 900);
        assert!(!cap.rights.is_empty());
    }
}

fn structured(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let c = Case::arbitrary(u)?;
    let limits = BiscuitConfig::default();
    let issued = NOW + i64::from(c.issued_offset);
    let ttl = i64::from(c.ttl % 1000);
    let (con, leg) = (json!({"connector": "crm"}), json!({"jurisdiction": "EU"}));
    let Ok(token) = mint(
        PRIVATE,
        &Mint {
            tenant: &c.tenant,
            agent: &c.agent,
            actions: &c.actions,
            issued,
            ttl,
            con: &con,
            leg: &leg,
            id: Some(&c.id),
            root_key_id: 1,
        },
    ) else {
        return Ok(());
    };
    let token = if c.attenuate {
        let a = Attenuation {
            actions: c.narrow_actions.clone(),
            ttl: c.narrow_ttl,
            max_amount: c.max_amount,
            connector: c.connector.clone(),
            route: c.route.clone(),
            checks: c.checks.clone(),
            now: NOW,
        };
        match attenuate(&token, &a) {
            Ok(t) => t,
            Err(_) => return Ok(()),
        }
    } else {
        token
    };
    inspect(&token).expect("a minted token inspects");
    let now = NOW + i64::from(c.later);
    let cap = match verify(&token, keys(), &limits, now, 30, 900) {
        Ok(cap) => cap,
        Err(BiscuitRefusal::Denied(m)) => panic!("verify never denies: {m}"),
        Err(_) => return Ok(()),
    };
    assert_eq!(cap.agent, c.agent);
    assert_eq!(cap.tenant, c.tenant);
    assert_eq!(cap.id, c.id);
    assert!(cap.rights.iter().all(|r| c.actions.contains(r)), "{cap:?}");
    assert_eq!(cap.expires - cap.issued, ttl);
    assert_eq!(cap.blocks, if c.attenuate { 2 } else { 1 });
    let mut params = Map::new();
    if let Some(a) = c.amount {
        params.insert("amount".into(), Value::from(a));
    }
    let req = Request {
        agent: &cap.agent,
        tenant: &cap.tenant,
        action: &c.action,
        method: &c.method,
        path: &c.path,
        route: None,
        connector: &c.req_connector,
        params: &params,
        now,
    };
    if authorize(&cap, &req, &limits).is_ok() {
        assert!(cap.rights.contains(&c.action), "authorized beyond the grant");
        assert!(c.actions.contains(&c.action));
        if c.attenuate && !c.narrow_actions.is_empty() {
            assert!(c.narrow_actions.contains(&c.action), "attenuation ignored");
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            presented(token);
        }
    } else {
        let _ = structured(&mut Unstructured::new(rest));
    }
});
