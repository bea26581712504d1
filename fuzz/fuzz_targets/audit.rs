//! The audit line verifier `atb audit verify` uses:
//! `atb::audit::chain::verify` (and `read_line`, `tail_of`).
//!
//! The first byte holds flags: bit 0 is `--accept-linked-restarts`; with
//! bit 1 every line that ends in `}` has its hash recomputed and appended
//! (as the writer does), so the fuzzer reaches the chain logic behind the
//! SHA-256 check, not only the parser in front of it. With bit 2 the rest
//! (a JSON array of objects) is sealed by `Chain::seal` and must verify.
//!
//! Invariants: no panic; a reported break is on a line that was read;
//! chain line counts never exceed the lines read; a stream written by
//! `Chain::seal` verifies intact.
#![no_main]

use atb::audit::chain::{read_line, tail_of, verify, Chain, ChainHead};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Appends `,"hash":"<sha256 of the line>"}` as `Chain::seal` does.
fn rehash(line: &str) -> String {
    use sha2::{Digest, Sha256};
    let Some(body) = line.strip_suffix('}') else {
        return line.to_owned();
    };
    let digest = Sha256::digest(line.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{body},\"hash\":\"{hex}\"}}")
}

fn check(text: &str, accept: bool) {
    let v = verify(text.as_bytes(), accept).expect("reading from memory");
    let counted: u64 = v.chains.values().map(|(n, _)| n).sum();
    assert!(counted <= v.lines);
    if let Some((n, _)) = &v.broken {
        assert!(*n >= 1 && *n <= v.lines);
    }
    let _ = tail_of(text.as_bytes(), "broker");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let accept = flags & 1 != 0;
    if flags & 4 != 0 {
        let Ok(Value::Array(events)) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let mut chain = Chain::new("broker", ChainHead::default());
        let mut out = String::new();
        for e in events {
            let Value::Object(mut m) = e else { continue };
            // The writer's own fields; a real event never carries them.
            for k in ["chain", "seq", "prev", "restart", "hash"] {
                m.remove(k);
            }
            out.push_str(&chain.seal(&m).expect("a JSON object serialises"));
            out.push('\n');
        }
        let v = verify(out.as_bytes(), accept).expect("reading from memory");
        assert_eq!(v.broken, None, "{out}");
        return;
    }
    let text = if flags & 2 != 0 {
        text.lines().map(rehash).collect::<Vec<_>>().join("\n")
    } else {
        text.to_owned()
    };
    for line in text.lines() {
        if let Ok(link) = read_line(line) {
            assert_eq!(link.hash.len(), 64);
        }
    }
    check(&text, accept);
});
