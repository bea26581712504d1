//! `request.params` extraction (`atb::broker::params`): `from_query`,
//! `from_form`, `from_json` and `merge` — the plain functions the gateway
//! calls with the request's query string and body bytes.
//!
//! Input: a query string, `\n`, then the body (read as a form and as JSON).
//!
//! Invariants: no panic; accepted query/form params hold each name once
//! ignoring ASCII case, all values strings, and never come from a raw `;`;
//! accepted JSON params have unique names (ignoring case) at every depth;
//! a merge keeps every name of both sides and refuses a shared one.
#![no_main]

use std::collections::HashSet;

use atb::broker::params::{from_form, from_json, from_query, merge};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fn unique_names(m: &Map<String, Value>) {
    let mut seen = HashSet::new();
    for (k, v) in m {
        assert!(seen.insert(k.to_ascii_lowercase()), "duplicate {k:?}");
        unique_deep(v);
    }
}

fn unique_deep(v: &Value) {
    match v {
        Value::Object(m) => unique_names(m),
        Value::Array(a) => a.iter().for_each(unique_deep),
        _ => {}
    }
}

fn strings_only(m: &Map<String, Value>) {
    unique_names(m);
    assert!(m.values().all(Value::is_string));
}

fuzz_target!(|data: &[u8]| {
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let query = String::from_utf8_lossy(query);
    let q = from_query(&query);
    if let Ok(m) = &q {
        assert!(!query.contains(';'));
        strings_only(m);
    }
    let form = from_form(body);
    if let Ok(m) = &form {
        assert!(!body.contains(&b';'));
        strings_only(m);
    }
    let json = from_json(body).map(Option::unwrap_or_default);
    if let Ok(m) = &json {
        unique_names(m);
    }
    let Ok(q) = q else { return };
    for b in [form, json].into_iter().flatten() {
        let (nq, nb) = (q.len(), b.len());
        let lower: HashSet<String> = q.keys().map(|k| k.to_ascii_lowercase()).collect();
        let shared = b.keys().any(|k| lower.contains(&k.to_ascii_lowercase()));
        match merge(q.clone(), b) {
            Ok(m) => {
                assert!(!shared);
                assert_eq!(m.len(), nq + nb);
                unique_names(&m);
            }
            Err(_) => assert!(shared),
        }
    }
});
