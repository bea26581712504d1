//! SPIFFE IDs (`atb::spiffe::SpiffeId::parse`, `validate_trust_domain`,
//! `is_under`). Input: an ID, optionally `\n` and a prefix.
//!
//! Invariants: no panic; an accepted ID is exactly its input, at most
//! `MAX_LEN` bytes, re-parses to itself, its trust domain validates and
//! its path is empty or `/`-led with no empty, `.` or `..` segment; an ID
//! is under itself; being under a prefix implies starting with it.
#![no_main]

use atb::spiffe::{validate_trust_domain, SpiffeId, MAX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (id, prefix) = text.split_once('\n').unwrap_or((text, ""));
    let _ = validate_trust_domain(id);
    let Ok(parsed) = SpiffeId::parse(id) else {
        return;
    };
    assert_eq!(parsed.as_str(), id);
    assert_eq!(parsed.to_string(), id);
    assert!(id.len() <= MAX_LEN);
    assert_eq!(SpiffeId::parse(parsed.as_str()).as_ref(), Ok(&parsed));
    validate_trust_domain(parsed.trust_domain()).expect("an accepted trust domain validates");
    assert_eq!(
        format!("spiffe://{}{}", parsed.trust_domain(), parsed.path()),
        id
    );
    let path = parsed.path();
    if !path.is_empty() {
        assert!(path.starts_with('/'));
        assert!(path[1..]
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".."));
    }
    assert!(parsed.is_under(id));
    if parsed.is_under(prefix) {
        assert!(id.starts_with(prefix));
    }
});
