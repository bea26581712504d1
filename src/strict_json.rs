//! JSON read strictly: each name once in every object, at any depth, names
//! compared ignoring ASCII case, and nothing after the value.
//!
//! Design points:
//! - **One meaning per document.** Parsers disagree on a repeated name
//!   (first wins, last wins, error), and case-insensitive binders (ASP.NET,
//!   some JSON mappers) merge `amount` and `Amount`; so a name twice is an
//!   error, never resolved. Used for request bodies the policy judges and
//!   for mandate claims.
//! - Plain logic: bytes in, `serde_json::Value` out.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `bytes` as one JSON value whose objects repeat no name.
pub fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let StrictValue(v) = StrictValue::deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// Parses `bytes` as one JSON object (see [`parse`]); `None` for any other
/// value or an error.
pub fn object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match parse(bytes) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Names seen so far, compared ignoring ASCII case.
#[derive(Default)]
pub struct Names(std::collections::HashSet<String>);

impl Names {
    /// `false` when `name` (in any ASCII case) was seen before.
    pub fn insert(&mut self, name: &str) -> bool {
        self.0.insert(name.to_ascii_lowercase())
    }
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

    #[test]
    fn a_name_twice_at_any_depth_or_in_another_case_is_refused() {
        assert!(parse(br#"{"a": 1, "b": {"c": [1, {"d": 2}]}}"#).is_ok());
        for bad in [
            &br#"{"a": 1, "a": 2}"#[..],
            br#"{"a": 1, "A": 2}"#,
            br#"{"x": [{"d": 1, "d": 1}]}"#,
            br#"{"a": 1} {"a": 2}"#,
            br#"{"a\u0041": 1, "aa": 2}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(object(br#"[1]"#), None);
        assert_eq!(object(br#"{"a": 1, "a": 1}"#), None);
        assert!(object(br#"{"a": 1}"#).is_some());
    }
}
