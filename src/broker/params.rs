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

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

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

/// A JSON body: its top-level members when it is an object (anything else
/// gives no params). Duplicate keys anywhere are refused.
pub fn from_json(body: &[u8]) -> Result<Map<String, Value>, ParamsError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let StrictValue(v) =
        StrictValue::deserialize(&mut de).map_err(|e| ParamsError::BadJson(e.to_string()))?;
    de.end().map_err(|e| ParamsError::BadJson(e.to_string()))?;
    Ok(match v {
        Value::Object(m) => m,
        _ => Map::new(),
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

/// Names seen so far, compared ignoring ASCII case.
#[derive(Default)]
struct Names(std::collections::HashSet<String>);

impl Names {
    /// `false` when `name` (in any ASCII case) was seen before.
    fn insert(&mut self, name: &str) -> bool {
        self.0.insert(name.to_ascii_lowercase())
    }
}

fn pairs(text: &str) -> Option<Vec<(String, String)>> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(text).ok()
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

/// A JSON value whose objects have no duplicate keys.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut seen = Names::default();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(&key) {
                return Err(de::Error::custom(format!(
                    "the key {:?} appears more than once",
                    crate::clip(&key, 64).to_owned()
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
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
        let b = from_json(br#"{"amount": 999}"#).unwrap();
        assert!(matches!(merge(q, b), Err(ParamsError::Shadowed(_))));
        assert_eq!(from_query("a=1;amount=9"), Err(ParamsError::Semicolon));
        assert_eq!(from_form(b"a=1;amount=9"), Err(ParamsError::Semicolon));
        // Encoded, it is just a character of a value.
        assert_eq!(from_query("a=1%3Bamount%3D9").unwrap()["a"], "1;amount=9");
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
            Value::Object(from_json(br#"{"amount": 5, "to": {"iban": "X"}}"#).unwrap()),
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
        assert_eq!(from_json(b"[1, 2]").unwrap(), Map::new());
        assert_eq!(from_json(b"  ").unwrap(), Map::new());
        assert_eq!(
            Value::Object(
                from_json(br#"{"n": 1.5, "b": true, "z": null, "l": [1, "x"]}"#).unwrap()
            ),
            json!({"n": 1.5, "b": true, "z": null, "l": [1, "x"]})
        );
    }

    #[test]
    fn query_and_body_never_shadow_each_other() {
        let q = from_query("region=eu").unwrap();
        let b = from_json(br#"{"amount": 5}"#).unwrap();
        assert_eq!(
            Value::Object(merge(q.clone(), b).unwrap()),
            json!({"region": "eu", "amount": 5})
        );
        let b = from_json(br#"{"region": "us"}"#).unwrap();
        assert_eq!(merge(q, b), Err(ParamsError::Shadowed("region".into())));
    }
}
