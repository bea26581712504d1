//! `request.params`: what the policy judges of a request's query string and
//! body, read so that it is exactly what the upstream receives.
//!
//! - One meaning per name: a name twice in the query string, in a form
//!   body or in any JSON object (at any depth) is refused, never resolved
//!   first- or last-wins (upstreams disagree on which one counts). Names
//!   are compared ignoring ASCII case, since case-insensitive binders
//!   (ASP.NET, some JSON mappers) merge `amount` and `Amount`.
//! - Query and body never shadow each other silently: a name in both is
//!   refused.
//! - A raw `;` in a query string or form is refused: some frameworks split
//!   pairs on it, so `a=1;amount=9` would mean one thing here and another
//!   upstream.
//! - JSON object bodies and `application/x-www-form-urlencoded` bodies both
//!   become params; query and form values stay strings.
//! - Plain logic on bytes and strings; no HTTP types.

use serde_json::{Map, Value};

use crate::strict_json::Names;

/// Why params cannot be read (400 `bad_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("the query string is not valid")]
    BadQuery,
    #[error("the form body is not valid")]
    BadForm,
    #[error("the JSON body is not valid JSON: {0}")]
    BadJson(String),
    #[error("{0:?} appears more than once")]
    Duplicate(String),
    #[error("{0:?} is in both the query string and the body")]
    Shadowed(String),
    #[error("a raw ';' separates pairs for some upstreams and not for others; encode it as %3B")]
    Semicolon,
}

/// `a=1&b=2` pairs, each name once, values as strings.
pub fn from_query(query: &str) -> Result<Map<String, Value>, ParamsError> {
    if query.contains(';') {
        return Err(ParamsError::Semicolon);
    }
    pairs(query).ok_or(ParamsError::BadQuery).and_then(unique)
}

/// A form body, each name once, values as strings.
pub fn from_form(body: &[u8]) -> Result<Map<String, Value>, ParamsError> {
    let text = std::str::from_utf8(body).map_err(|_| ParamsError::BadForm)?;
    if text.contains(';') {
        return Err(ParamsError::Semicolon);
    }
    pairs(text).ok_or(ParamsError::BadForm).and_then(unique)
}

/// A JSON body: its top-level members when it is an object, `None` when it
/// is another value (an array, a string: the policy would see no
/// parameters in it). Empty gives no params. Duplicate keys anywhere are
/// refused.
pub fn from_json(body: &[u8]) -> Result<Option<Map<String, Value>>, ParamsError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Map::new()));
    }
    let v = crate::strict_json::parse(body).map_err(|e| ParamsError::BadJson(e.to_string()))?;
    Ok(match v {
        Value::Object(m) => Some(m),
        _ => None,
    })
}

/// The query's params and the body's, which may not share a name.
pub fn merge(
    mut query: Map<String, Value>,
    body: Map<String, Value>,
) -> Result<Map<String, Value>, ParamsError> {
    let mut seen = Names::default();
    for k in query.keys() {
        seen.insert(k);
    }
    for (k, v) in body {
        if !seen.insert(&k) {
            return Err(ParamsError::Shadowed(crate::clip(&k, 64).to_owned()));
        }
        query.insert(k, v);
    }
    Ok(query)
}

/// The pairs of `a=1&b=2`, or `None` when a `%` is not followed by two hex
/// digits or a name or value is not UTF-8 once decoded: a lenient decoder
/// would read `%` or `\u{FFFD}` where the upstream reads something else.
fn pairs(text: &str) -> Option<Vec<(String, String)>> {
    if !strictly_escaped(text) {
        return None;
    }
    serde_urlencoded::from_str::<Vec<(String, String)>>(text).ok()
}

fn strictly_escaped(text: &str) -> bool {
    text.split('&')
        .flat_map(|pair| pair.split('='))
        .all(|part| {
            // Every `%` starts an escape of two hex digits, and the decoded
            // bytes are UTF-8 (`routes::path::decode` checks the latter).
            part.split('%').skip(1).all(|rest| {
                rest.get(..2)
                    .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            }) && crate::routes::path::decode(part).is_some()
        })
}

fn unique(pairs: Vec<(String, String)>) -> Result<Map<String, Value>, ParamsError> {
    let mut out = Map::new();
    let mut seen = Names::default();
    for (k, v) in pairs {
        if !seen.insert(&k) {
            return Err(ParamsError::Duplicate(crate::clip(&k, 64).to_owned()));
        }
        out.insert(k, Value::String(v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_differing_in_case_and_raw_semicolons_are_refused() {
        assert!(matches!(
            from_query("amount=1&Amount=999"),
            Err(ParamsError::Duplicate(_))
        ));
        assert!(matches!(
            from_form(b"amount=1&AMOUNT=999"),
            Err(ParamsError::Duplicate(_))
        ));
        assert!(matches!(
            from_json(br#"{"amount": 1, "Amount": 999}"#),
            Err(ParamsError::BadJson(_))
        ));
        assert!(matches!(
            from_json(br#"{"x": {"k": 1, "K": 2}}"#),
            Err(ParamsError::BadJson(_))
        ));
        let q = from_query("Amount=1").unwrap();
        let b = from_json(br#"{"amount": 999}"#).unwrap().unwrap();
        assert!(matches!(merge(q, b), Err(ParamsError::Shadowed(_))));
        assert_eq!(from_query("a=1;amount=9"), Err(ParamsError::Semicolon));
        assert_eq!(from_form(b"a=1;amount=9"), Err(ParamsError::Semicolon));
        // Encoded, it is just a character of a value.
        assert_eq!(from_query("a=1%3Bamount%3D9").unwrap()["a"], "1;amount=9");
    }

    /// A lenient decoder keeps `%` of a bad escape and replaces bytes that
    /// are not UTF-8 with U+FFFD, so the policy would read another value
    /// than the upstream: both are refused, in names and values.
    #[test]
    fn bad_escapes_and_bytes_that_are_not_utf8_are_refused() {
        for bad in [
            "a=%",
            "a=%4",
            "a=%zz",
            "a=%+1",
            "%=1",
            "a%G0=1",
            "a=%FF",
            "a=%C0%AE",
            "a=b&c=%E2%82",
        ] {
            assert_eq!(from_query(bad), Err(ParamsError::BadQuery), "{bad}");
            assert_eq!(
                from_form(bad.as_bytes()),
                Err(ParamsError::BadForm),
                "{bad}"
            );
        }
        assert_eq!(from_query("a=%E2%82%AC+%41").unwrap()["a"], "€ A");
        assert_eq!(from_query("a=&b").unwrap()["b"], "");
    }

    #[test]
    fn queries_and_forms_give_each_name_once() {
        assert_eq!(
            Value::Object(from_query("a=1&b=x%20y").unwrap()),
            json!({"a": "1", "b": "x y"})
        );
        assert_eq!(from_query("").unwrap(), Map::new());
        assert_eq!(
            from_query("amount=1&amount=999999"),
            Err(ParamsError::Duplicate("amount".into()))
        );
        assert_eq!(
            Value::Object(from_form(b"amount=5&vendor=17").unwrap()),
            json!({"amount": "5", "vendor": "17"})
        );
        assert!(matches!(
            from_form(b"amount=5&amount=6"),
            Err(ParamsError::Duplicate(_))
        ));
        assert_eq!(from_form(b"\xff=1"), Err(ParamsError::BadForm));
    }

    #[test]
    fn json_objects_may_not_repeat_a_key_at_any_depth() {
        assert_eq!(
            Value::Object(
                from_json(br#"{"amount": 5, "to": {"iban": "X"}}"#)
                    .unwrap()
                    .unwrap()
            ),
            json!({"amount": 5, "to": {"iban": "X"}})
        );
        for bad in [
            &br#"{"amount": 5, "amount": 999999}"#[..],
            br#"{"to": {"iban": "A", "iban": "B"}}"#,
            br#"[{"a": 1, "a": 2}]"#,
            br#"{"a": 1} {"b": 2}"#,
            br#"{"a": "#,
        ] {
            assert!(from_json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // Non-objects and empty bodies give no params.
        // Another value than an object: no params, and said so.
        assert_eq!(from_json(b"[1, 2]").unwrap(), None);
        assert_eq!(from_json(br#""amount""#).unwrap(), None);
        assert_eq!(from_json(b"  ").unwrap(), Some(Map::new()));
        assert_eq!(
            Value::Object(
                from_json(br#"{"n": 1.5, "b": true, "z": null, "l": [1, "x"]}"#)
                    .unwrap()
                    .unwrap()
            ),
            json!({"n": 1.5, "b": true, "z": null, "l": [1, "x"]})
        );
    }

    #[test]
    fn query_and_body_never_shadow_each_other() {
        let q = from_query("region=eu").unwrap();
        let b = from_json(br#"{"amount": 5}"#).unwrap().unwrap();
        assert_eq!(
            Value::Object(merge(q.clone(), b).unwrap()),
            json!({"region": "eu", "amount": 5})
        );
        let b = from_json(br#"{"region": "us"}"#).unwrap().unwrap();
        assert_eq!(merge(q, b), Err(ParamsError::Shadowed("region".into())));
    }
}
