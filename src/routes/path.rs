//! One canonical form of a request path, for everything that reads it: the
//! egress allowlist, the route table, the pinned call, the policy and the
//! upstream (which receives exactly this form).
//!
//! - Refused, never repaired: a relative path, `//`, backslashes, dot
//!   segments, control characters, `;` parameters (servers that strip
//!   them route `/a;x/b` as `/a/b`), malformed `%` escapes, escaped dots,
//!   slashes, backslashes or NULs, double encoding (`%25` before two hex
//!   digits: after one decoding pass nothing may decode further), and
//!   escapes that decode to invalid or overlong UTF-8 — forms an upstream
//!   might resolve to another resource than the one checked.
//! - Normalised (RFC 3986 §6.2.2): escapes of unreserved characters
//!   (`A-Z a-z 0-9 - _ ~`) are decoded, the hex of every other escape is
//!   upper case. So `/api/v%65ndors/%31%37` is `/api/vendors/17`, and two
//!   spellings of one resource cannot be told apart by a rule.
//! - Plain logic on strings.

use std::borrow::Cow;

/// Why a path is refused (403 `egress_denied`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PathError(pub &'static str);

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~')
}

/// The canonical form of `path`, borrowed when it already is canonical.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError("the path must be absolute"));
    }
    if path.contains("//") || path.contains('\\') {
        return Err(PathError("the path is not in canonical form"));
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(PathError("the path carries control characters"));
    }
    if path.contains(';') {
        return Err(PathError("the path carries ';' parameters"));
    }
    let bytes = path.as_bytes();
    let mut out: Option<String> = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            if let Some(o) = out.as_mut() {
                // Copy the run up to the next escape in one go.
                let end = path[i..].find('%').map_or(path.len(), |n| i + n);
                o.push_str(&path[i..end]);
                i = end;
            } else {
                i += 1;
            }
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError("the path has a malformed percent-escape"));
        };
        let decoded = hi << 4 | lo;
        if matches!(decoded, b'.' | b'/' | b'\\' | 0) {
            return Err(PathError(
                "the path carries encoded dots, slashes, backslashes or NULs",
            ));
        }
        let o = out.get_or_insert_with(|| path[..i].to_owned());
        if unreserved(decoded) {
            o.push(char::from(decoded));
        } else {
            o.push('%');
            o.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
            o.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
        }
        i += 3;
    }
    let canonical = match out {
        Some(o) => {
            if decode(&o).is_none() {
                return Err(PathError("the path's escapes do not decode to valid UTF-8"));
            }
            // Checked on the result, not the input: `%25%32%65` is an
            // escaped `%` followed by escapes of `2` and `e`, which decode
            // here to `%252e`, an upstream that decodes twice reads `.`.
            if encodes_an_escape(&o) {
                return Err(PathError("the path is encoded twice"));
            }
            Cow::Owned(o)
        }
        None => Cow::Borrowed(path),
    };
    if canonical.split('/').any(|s| s == "." || s == "..") {
        return Err(PathError("the path has dot segments"));
    }
    Ok(canonical)
}

/// Whether a canonical path holds an escaped `%` followed by two hex
/// digits (an escape of an escape). Its escapes are upper case (`%25`).
fn encodes_an_escape(canonical: &str) -> bool {
    canonical
        .as_bytes()
        .windows(5)
        .any(|w| w[..3] == *b"%25" && hex(w[3]).is_some() && hex(w[4]).is_some())
}

/// A captured path segment (or rest) fully percent-decoded, `None` when
/// the bytes are not UTF-8.
pub fn decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo fuzz run routes`: a kept escape (`%1F`) rebuilds
    /// the path; the canonical form must still be a fixed point.
    #[test]
    fn the_canonical_form_is_a_fixed_point() {
        for p in [
            "/api/conta/cdocs/a/b%1Fcts/7%C3%A9",
            "/api/%7e%41/x",
            "/api/caf%c3%a9",
        ] {
            let once = canonical(p).unwrap();
            assert_eq!(canonical(&once).unwrap(), once, "{p}");
        }
    }

    #[test]
    fn canonical_paths_pass_unchanged_and_borrowed() {
        for ok in ["/api/x", "/api/x.json", "/v2", "/a/b-c_d~e", "/api/", "/"] {
            assert!(
                matches!(canonical(ok), Ok(Cow::Borrowed(p)) if p == ok),
                "{ok}"
            );
        }
    }

    #[test]
    fn unreserved_escapes_decode_and_others_are_upper_cased() {
        for (raw, want) in [
            ("/api/v%65ndors/%31%37", "/api/vendors/17"),
            ("/api/a%2db%5Fc%7e", "/api/a-b_c~"),
            ("/api/a%20b", "/api/a%20b"),
            ("/api/a%3fb%c3%a9", "/api/a%3Fb%C3%A9"),
            ("/api/100%25", "/api/100%25"),
            ("/api/%25zz", "/api/%25zz"),
            ("/%41", "/A"),
        ] {
            assert_eq!(canonical(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for bad in [
            "",
            "api",
            "/api//x",
            "/api/../admin",
            "/api/./x",
            "/api/..",
            "/api/%2e%2e/admin",
            "/api/%2E",
            "/api/%2F",
            "/api/%2f",
            "/api\\x",
            "/api/%5c",
            "/a/%00",
            "/a/%",
            "/a/%4",
            "/a/%zz",
            "/a/%%41",
            "/a/b c",
            "/a/\tb",
            "/api/vendors;x/17",
            "/api/vendors/17;jsessionid=1",
            "/api/%252e%252e/admin",
            "/api/%2541",
            "/api/%252E",
            // Found by `cargo fuzz run routes`: escapes that decode into
            // an escape of an escape (here `%252e%252e`, and `%25B2`).
            "/api/docs/%25%32%65%25%32%65/admin",
            "/api/docs/%25%32e%25%32e/admin",
            "/apI/contacts/%25%42%32",
            "/api/%C0%AE%C0%AE/admin",
            "/api/%E0%80%AF",
            "/api/%FF",
            "/api/%C3",
        ] {
            assert!(canonical(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_literal_percent_stays_allowed() {
        assert_eq!(canonical("/api/100%25off").unwrap(), "/api/100%25off");
        assert_eq!(canonical("/api/100%25").unwrap(), "/api/100%25");
        assert_eq!(canonical("/api/%25%7a").unwrap(), "/api/%25z");
    }

    #[test]
    fn captures_decode_fully() {
        assert_eq!(decode("17").as_deref(), Some("17"));
        assert_eq!(decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(decode("%FF"), None);
        assert_eq!(decode("100%"), Some("100%".into()));
    }
}
