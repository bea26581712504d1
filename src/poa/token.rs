//! Compact JWS parsing and EdDSA signature verification, strict about the
//! algorithm: the header's `alg` must be exactly `EdDSA`; the key is chosen
//! by `kid` from the tenant's key set, never from the token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;

use super::PoaError;

/// Longest token accepted (bytes).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The protected header fields we read.
#[derive(Debug, Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

/// A parsed but not yet verified token.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub kid: String,
    signing_input: &'a str,
    signature: Signature,
    payload: Vec<u8>,
}

fn b64(part: &str, what: &'static str) -> Result<Vec<u8>, PoaError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| PoaError::invalid(format!("{what} is not base64url")))
}

/// Splits and decodes a compact JWS and checks its header.
pub fn parse(token: &str) -> Result<Unverified<'_>, PoaError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(PoaError::invalid("token is too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PoaError::invalid(
            "token is not a compact JWS (three dot-separated parts)",
        ));
    };
    let header: Header = serde_json::from_slice(&b64(h, "header")?)
        .map_err(|_| PoaError::invalid("header is not a JSON object"))?;
    match header.alg.as_deref() {
        Some("EdDSA") => {}
        Some(other) => {
            return Err(PoaError::invalid(format!(
                "alg {:?} is not accepted; only EdDSA",
                truncate(other, 32)
            )))
        }
        None => return Err(PoaError::invalid("header has no alg")),
    }
    if header.crit.is_some() {
        return Err(PoaError::invalid(
            "critical header extensions are not supported",
        ));
    }
    let kid = match header.kid {
        Some(serde_json::Value::String(k)) if !k.trim().is_empty() && k.len() <= 256 => k,
        Some(_) => return Err(PoaError::invalid("kid must be a non-empty string")),
        None => return Err(PoaError::invalid("header has no kid")),
    };
    let sig = b64(s, "signature")?;
    let signature =
        Signature::from_slice(&sig).map_err(|_| PoaError::invalid("signature is not 64 bytes"))?;
    let payload = b64(p, "payload")?;
    Ok(Unverified {
        kid,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
        payload,
    })
}

impl Unverified<'_> {
    /// Verifies the signature with `key` (strict Ed25519: no malleable or
    /// small-order signatures) and hands back the payload.
    pub fn verify(self, key: &VerifyingKey) -> Result<Vec<u8>, PoaError> {
        key.verify_strict(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| PoaError::invalid("signature does not verify"))?;
        Ok(self.payload)
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Signs `claims` as an EdDSA compact JWS with header `kid` (for `atb mint`
/// and tests).
pub fn sign(claims: &serde_json::Value, key: &ed25519_dalek::SigningKey, kid: &str) -> String {
    use ed25519_dalek::Signer;
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn forge(header: serde_json::Value, claims: &serde_json::Value, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    fn err(token: &str) -> String {
        parse(token).unwrap_err().reason().to_owned()
    }

    #[test]
    fn signed_token_round_trips() {
        let k = key(1);
        let claims = serde_json::json!({"sub": "spiffe://a/b", "n": 1});
        let t = sign(&claims, &k, "k1");
        let u = parse(&t).unwrap();
        assert_eq!(u.kid, "k1");
        let payload = u.verify(&k.verifying_key()).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&payload).unwrap(),
            claims
        );
    }

    #[test]
    fn wrong_key_or_tampered_payload_fails() {
        let claims = serde_json::json!({"sub": "x"});
        let t = sign(&claims, &key(1), "k1");
        assert!(parse(&t).unwrap().verify(&key(2).verifying_key()).is_err());
        let mut parts: Vec<&str> = t.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(serde_json::json!({"sub": "y"}).to_string());
        parts[1] = &other;
        let tampered = parts.join(".");
        assert!(parse(&tampered)
            .unwrap()
            .verify(&key(1).verifying_key())
            .is_err());
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        let claims = serde_json::json!({"sub": "x"});
        for alg in [
            "none", "HS256", "RS256", "ES256", "EdDSA ", "eddsa", "Ed25519",
        ] {
            let t = forge(
                serde_json::json!({"alg": alg, "kid": "k1"}),
                &claims,
                &[0u8; 64],
            );
            assert!(err(&t).contains("not accepted"), "{alg}: {}", err(&t));
        }
        let t = forge(serde_json::json!({"kid": "k1"}), &claims, &[0u8; 64]);
        assert!(err(&t).contains("no alg"));
        // alg "none" with an empty signature part.
        let t = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert!(err(&t).contains("not accepted"));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let claims = serde_json::json!({});
        let ok_header = serde_json::json!({"alg": "EdDSA", "kid": "k"});
        assert!(err("abc").contains("three"));
        assert!(err("a.b.c.d").contains("three"));
        assert!(err("!!.e30.AA").contains("base64url"));
        let t = forge(serde_json::json!({"alg": "EdDSA"}), &claims, &[0u8; 64]);
        assert!(err(&t).contains("no kid"));
        let t = forge(
            serde_json::json!({"alg": "EdDSA", "kid": 7}),
            &claims,
            &[0u8; 64],
        );
        assert!(err(&t).contains("kid must be"));
        let t = forge(
            serde_json::json!({"alg": "EdDSA", "kid": "k", "crit": ["b64"]}),
            &claims,
            &[0u8; 64],
        );
        assert!(err(&t).contains("critical"));
        let t = forge(ok_header.clone(), &claims, &[0u8; 63]);
        assert!(err(&t).contains("64 bytes"));
        // Padding characters are not base64url-without-padding.
        let t = forge(ok_header, &claims, &[0u8; 64]) + "==";
        assert!(parse(&t).is_err());
        assert!(err(&"a".repeat(MAX_TOKEN_LEN + 1)).contains("too long"));
    }
}
