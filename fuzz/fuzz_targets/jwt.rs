//! The PoA JWT: compact JWS parsing (`atb::poa::token::parse`), signature
//! verification and the claim checks (`atb::poa::claims::validate`).
//!
//! The first byte chooses what the rest is:
//! - even: a token as presented; parsed, verified under a fixed key (never
//!   matching a fuzzed signature) and its payload's claims checked;
//! - odd: a claims document, signed with the fixed key so that parsing and
//!   verification must succeed and the claim checks see every payload.
//!
//! Invariants: no panic; a parsed token's kid is 1..=256 bytes; a signed
//! token parses and verifies to exactly its payload; accepted claims obey
//! the documented bounds (required strings, lifetime, time window).
#![no_main]

use atb::poa::claims::{validate, ClaimRules, HARD_MAX_TTL_SECONDS};
use atb::poa::token::{parse, sign, MAX_TOKEN_LEN};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000;

fn rules(sel: u8) -> ClaimRules {
    ClaimRules {
        max_ttl_seconds: if sel & 2 == 0 { 300 } else { 3600 },
        leeway_seconds: if sel & 4 == 0 { 30 } else { 0 },
        issuer: (sel & 8 != 0).then(|| "https://agentauth.example".to_owned()),
        audience: (sel & 16 != 0).then(|| "atb".to_owned()),
    }
}

fn check_claims(payload: &[u8], r: &ClaimRules) {
    if let Ok(c) = validate(payload, r, NOW) {
        for s in [&c.sub, &c.act, &c.jti] {
            assert!(!s.trim().is_empty());
        }
        assert!(c.act.len() <= 256 && c.jti.len() <= 256);
        let ttl = c.exp - c.iat;
        assert!(ttl > 0 && ttl <= r.max_ttl_seconds.min(HARD_MAX_TTL_SECONDS));
        assert!(c.iat <= NOW + r.leeway_seconds);
        assert!(NOW < c.exp.saturating_add(r.leeway_seconds));
        assert!(c.raw.get("con").is_some_and(|v| v.is_object()));
        assert!(c.raw.get("leg").is_some_and(|v| v.is_object()));
        if let Some(iss) = &r.issuer {
            assert_eq!(c.raw.get("iss").and_then(|v| v.as_str()), Some(iss.as_str()));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let r = rules(sel);
    if sel & 1 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(u) = parse(token) {
            assert!(token.len() <= MAX_TOKEN_LEN);
            assert!(!u.kid.trim().is_empty() && u.kid.len() <= 256);
            if let Ok(payload) = u.verify(&key.verifying_key()) {
                check_claims(&payload, &r);
            }
        }
        // The claim checks on the raw bytes as well (whatever the
        // signature, the checks must not panic).
        check_claims(rest, &r);
    } else {
        let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
            check_claims(rest, &r);
            return;
        };
        let token = sign(&claims, &key, "fuzz-kid");
        if token.len() > MAX_TOKEN_LEN {
            return;
        }
        let u = parse(&token).expect("a token we signed parses");
        assert_eq!(u.kid, "fuzz-kid");
        let payload = u
            .verify(&key.verifying_key())
            .expect("a token we signed verifies");
        assert_eq!(payload, claims.to_string().as_bytes());
        check_claims(&payload, &r);
    }
});
