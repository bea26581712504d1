//! Verification keys: Ed25519 public keys addressed by `kid` (RFC 7638
//! thumbprint unless configured), from PEM files or a JWKS document.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

/// RFC 7638 JWK thumbprint of an Ed25519 key: SHA-256 over the canonical
/// `{"crv":"Ed25519","kty":"OKP","x":"…"}`, base64url.
pub fn thumbprint(key: &VerifyingKey) -> String {
    let x = URL_SAFE_NO_PAD.encode(key.as_bytes());
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// The public JWK of an Ed25519 key.
pub fn public_jwk(key: &VerifyingKey, kid: &str) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
        "kid": kid, "x": URL_SAFE_NO_PAD.encode(key.as_bytes()),
    })
}

/// A tenant's keys by `kid`, and the key ids its issuer has revoked.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
    revoked: HashSet<String>,
}

impl KeySet {
    pub fn insert(&mut self, kid: String, key: VerifyingKey) {
        self.keys.insert(kid, key);
    }

    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the issuer published `kid` as revoked.
    pub fn is_revoked(&self, kid: &str) -> bool {
        self.revoked.contains(kid)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds every key of `other` (later sources do not replace earlier kids).
    pub fn merge(&mut self, other: &KeySet) {
        for (k, v) in &other.keys {
            self.keys.entry(k.clone()).or_insert(*v);
        }
    }
}

/// A key file that could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not an Ed25519 {kind} key PEM: {reason}", path.display())]
    NotEd25519 {
        path: PathBuf,
        kind: &'static str,
        reason: String,
    },
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
    #[error("cannot encode key: {0}")]
    Encode(String),
    #[error(transparent)]
    Write(#[from] crate::runtime::files::WriteError),
}

fn read_pem(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads an Ed25519 public key (SubjectPublicKeyInfo PEM) from `path`.
pub fn load_public_pem(path: &Path) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_public_key_pem(read_pem(path)?.trim()).map_err(|e| KeyError::NotEd25519 {
        path: path.to_owned(),
        kind: "public",
        reason: e.to_string(),
    })
}

/// Reads an Ed25519 private key (PKCS#8 PEM, as `openssl genpkey
/// -algorithm ed25519` writes it).
pub fn load_signing_pem(path: &Path) -> Result<ed25519_dalek::SigningKey, KeyError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    ed25519_dalek::SigningKey::from_pkcs8_pem(read_pem(path)?.trim()).map_err(|e| {
        KeyError::NotEd25519 {
            path: path.to_owned(),
            kind: "private",
            reason: e.to_string(),
        }
    })
}

/// An Ed25519 private key as PKCS#8 v1 PEM, exactly as `openssl genpkey
/// -algorithm ed25519` writes it. (PKCS#8 v2, with the public key inside,
/// is what ed25519-dalek writes; OpenSSL 3.0 and Python `cryptography`
/// refuse it.) Both forms are read.
pub fn signing_key_pem(key: &ed25519_dalek::SigningKey) -> Result<String, KeyError> {
    let pkey = openssl::pkey::PKey::private_key_from_raw_bytes(
        key.as_bytes(),
        openssl::pkey::Id::ED25519,
    )?;
    String::from_utf8(pkey.private_key_to_pem_pkcs8()?).map_err(|e| KeyError::Encode(e.to_string()))
}

/// Creates a new Ed25519 key pair: private PKCS#8 PEM (mode 0600) and
/// public SubjectPublicKeyInfo PEM.
pub fn generate_signing_key(private: &Path, public: &Path) -> Result<(), KeyError> {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let mut seed = [0u8; 32];
    openssl::rand::rand_bytes(&mut seed)?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let private_pem = signing_key_pem(&key)?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| KeyError::Encode(e.to_string()))?;
    crate::runtime::files::write_file(private, private_pem.as_bytes(), true)?;
    crate::runtime::files::write_file(public, public_pem.as_bytes(), false)?;
    Ok(())
}

/// Why a JWKS document is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("JWKS is not JSON: {0}")]
    NotJson(String),
    #[error("JWKS has no \"keys\" array")]
    NoKeysArray,
    #[error("JWKS revoked_kids must be an array of strings")]
    BadRevokedKids,
    #[error("JWKS lists too many revoked_kids")]
    TooManyRevokedKids,
    #[error("JWKS contains private key material")]
    PrivateKey,
    #[error("JWKS contains no usable {0} keys")]
    NoUsableKeys(&'static str),
}

/// Largest number of revoked key ids read from a JWKS document.
const MAX_REVOKED_KIDS: usize = 10_000;

/// Parses a JWKS document. Only Ed25519 `OKP` signing keys are taken;
/// other keys are skipped (one odd key does not poison the set), keys
/// carrying private material are refused outright. The extension member
/// `revoked_kids` (AgentAuth publishes it after an emergency rotation)
/// lists key ids whose mandates must be refused; a listed key is never
/// used even if the document also carries it.
pub fn parse_jwks(body: &[u8]) -> Result<KeySet, DocumentError> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| DocumentError::NotJson(e.to_string()))?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or(DocumentError::NoKeysArray)?;
    let mut set = KeySet::default();
    if let Some(list) = doc.get("revoked_kids") {
        let list = list.as_array().ok_or(DocumentError::BadRevokedKids)?;
        if list.len() > MAX_REVOKED_KIDS {
            return Err(DocumentError::TooManyRevokedKids);
        }
        for kid in list {
            let kid = kid.as_str().ok_or(DocumentError::BadRevokedKids)?;
            set.revoked.insert(kid.to_owned());
        }
    }
    for jwk in keys {
        if jwk.get("d").is_some() {
            return Err(DocumentError::PrivateKey);
        }
        let s = |k: &str| jwk.get(k).and_then(|v| v.as_str());
        if s("kty") != Some("OKP") || s("crv") != Some("Ed25519") {
            continue;
        }
        if matches!(s("use"), Some(u) if u != "sig") || matches!(s("alg"), Some(a) if a != "EdDSA")
        {
            continue;
        }
        let Some(x) = s("x").and_then(|x| URL_SAFE_NO_PAD.decode(x).ok()) else {
            continue;
        };
        let Ok(bytes) = <[u8; 32]>::try_from(x.as_slice()) else {
            continue;
        };
        let Ok(key) = VerifyingKey::from_bytes(&bytes) else {
            continue;
        };
        let kid = s("kid")
            .filter(|k| !k.trim().is_empty())
            .map_or_else(|| thumbprint(&key), str::to_owned);
        if !set.revoked.contains(&kid) {
            set.insert(kid, key);
        }
    }
    if set.is_empty() {
        return Err(DocumentError::NoUsableKeys("Ed25519"));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn a_jwks_with_too_many_revoked_kids_is_refused() {
        let kids = |n: usize| (0..n).map(|i| format!("k{i}")).collect::<Vec<_>>();
        let doc = |n: usize| serde_json::json!({"keys": [], "revoked_kids": kids(n)}).to_string();
        assert!(matches!(
            parse_jwks(doc(MAX_REVOKED_KIDS + 1).as_bytes()),
            Err(DocumentError::TooManyRevokedKids)
        ));
        assert!(!matches!(
            parse_jwks(doc(MAX_REVOKED_KIDS).as_bytes()),
            Err(DocumentError::TooManyRevokedKids)
        ));
    }

    #[test]
    fn rfc8037_thumbprint_example() {
        // RFC 8037 Appendix A.3.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let key = VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap();
        assert_eq!(
            thumbprint(&key),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn jwks_takes_ed25519_keys_and_skips_others() {
        let k = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "n": "x", "e": "AQAB", "kid": "rsa"},
            {"kty": "OKP", "crv": "X25519", "x": "AAAA", "kid": "ecdh"},
            public_jwk(&k, "main"),
            {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(k.as_bytes())},
        ]});
        let set = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.get("main").is_some());
        assert!(set.get(&thumbprint(&k)).is_some());
        assert!(set.get("rsa").is_none());
    }

    #[test]
    fn jwks_revoked_kids_are_kept_and_never_used() {
        let a = SigningKey::from_bytes(&[1; 32]).verifying_key();
        let b = SigningKey::from_bytes(&[2; 32]).verifying_key();
        let doc = serde_json::json!({"keys": [public_jwk(&a, "a"), public_jwk(&b, "b")],
            "revoked_kids": ["b", "gone"]});
        let set = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert!(set.get("a").is_some());
        assert!(set.get("b").is_none());
        assert!(set.is_revoked("b") && set.is_revoked("gone") && !set.is_revoked("a"));
        let bad = serde_json::json!({"keys": [public_jwk(&a, "a")], "revoked_kids": [1]});
        assert!(parse_jwks(bad.to_string().as_bytes()).is_err());
    }

    #[test]
    fn jwks_errors() {
        assert!(matches!(
            parse_jwks(b"nope"),
            Err(DocumentError::NotJson(_))
        ));
        assert_eq!(parse_jwks(b"{}").unwrap_err(), DocumentError::NoKeysArray);
        assert_eq!(
            parse_jwks(br#"{"keys": []}"#).unwrap_err(),
            DocumentError::NoUsableKeys("Ed25519")
        );
        let private = br#"{"keys": [{"kty":"OKP","crv":"Ed25519","x":"AA","d":"AA"}]}"#;
        assert_eq!(parse_jwks(private).unwrap_err(), DocumentError::PrivateKey);
        let revoked = br#"{"keys": [], "revoked_kids": "k1"}"#;
        assert_eq!(
            parse_jwks(revoked).unwrap_err(),
            DocumentError::BadRevokedKids
        );
    }
}
