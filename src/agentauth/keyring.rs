//! Mandate signing keys: active, next and previous Ed25519 keys plus the
//! revoked key ids, read from one directory (a mounted Kubernetes Secret)
//! and re-read periodically, so rotation needs no restart.
//!
//! Directory layout (file names follow the Secret's `ed25519_privkey_pem`):
//!
//! | file | meaning |
//! |---|---|
//! | `ed25519_privkey_pem` | the active key: signs every mandate |
//! | `ed25519_privkey_pem.next` | pre-published: brokers learn it before it signs |
//! | `ed25519_privkey_pem.previous` | still verifies mandates it signed |
//! | `revoked_kids` | one `kid` per line: published so brokers refuse them |
//!
//! `atb keys rotate` moves next → active → previous and creates a new next;
//! `atb keys rotate --emergency` revokes every key in the directory and
//! starts over with fresh ones.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde_json::{json, Value};

use crate::poa::keys::{public_jwk, thumbprint, KeyError};

pub const ACTIVE: &str = "ed25519_privkey_pem";
pub const NEXT: &str = "ed25519_privkey_pem.next";
pub const PREVIOUS: &str = "ed25519_privkey_pem.previous";
pub const REVOKED: &str = "revoked_kids";

/// One key and its RFC 7638 `kid`.
#[derive(Clone)]
pub struct NamedKey {
    pub kid: String,
    pub key: SigningKey,
}

impl std::fmt::Debug for NamedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedKey").field("kid", &self.kid).finish()
    }
}

impl NamedKey {
    pub fn new(key: SigningKey) -> Self {
        Self {
            kid: thumbprint(&key.verifying_key()),
            key,
        }
    }
}

/// The keys in force.
#[derive(Debug, Clone)]
pub struct KeyRing {
    pub active: NamedKey,
    pub next: Option<NamedKey>,
    pub previous: Option<NamedKey>,
    pub revoked: BTreeSet<String>,
}

/// Why the key directory could not be read or rotated.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{}: no active signing key (create one with `atb keys rotate --dir {}`)", .0.join(ACTIVE).display(), .0.display())]
    NoActive(PathBuf),
    #[error("the active key {0} is listed in {REVOKED}; refusing to sign with a revoked key")]
    ActiveRevoked(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::runtime::files::WriteError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyringError + '_ {
    move |source| KeyringError::Io {
        path: path.to_owned(),
        source,
    }
}

impl KeyRing {
    /// Reads the directory. The active key is required; a revoked kid is
    /// never published or used, and an active key that is revoked is an
    /// error (fail closed rather than sign with it).
    pub fn load(dir: &Path) -> Result<Self, KeyringError> {
        let read = |name: &str| read_key(dir, name);
        let active = read(ACTIVE)?.ok_or_else(|| KeyringError::NoActive(dir.to_owned()))?;
        let revoked = read_revoked(&dir.join(REVOKED))?;
        if revoked.contains(&active.kid) {
            return Err(KeyringError::ActiveRevoked(active.kid));
        }
        let keep = |k: Option<NamedKey>| k.filter(|k| !revoked.contains(&k.kid));
        Ok(Self {
            next: keep(read(NEXT)?),
            previous: keep(read(PREVIOUS)?),
            active,
            revoked,
        })
    }

    /// The published document: active, next and previous public keys, plus
    /// the revoked key ids (an extension member brokers honour).
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = [
            Some(&self.active),
            self.next.as_ref(),
            self.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|k| public_jwk(&k.key.verifying_key(), &k.kid))
        .collect();
        json!({"keys": keys, "revoked_kids": self.revoked})
    }

    /// Signs `claims` with the active key.
    pub fn sign(&self, claims: &Value) -> String {
        crate::poa::token::sign(claims, &self.active.key, &self.active.kid)
    }
}

/// The key in `dir/name`, if that file exists.
fn read_key(dir: &Path, name: &str) -> Result<Option<NamedKey>, KeyringError> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(NamedKey::new(crate::poa::keys::load_signing_pem(
        &path,
    )?)))
}

fn read_revoked(path: &Path) -> Result<BTreeSet<String>, KeyringError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// What a rotation did.
#[derive(Debug)]
pub struct Rotation {
    pub active: String,
    pub next: String,
    pub previous: Option<String>,
    pub revoked: Vec<String>,
}

/// Rotates the key directory in place (each file replaced atomically, the
/// active key last so a reader never sees a half-rotated set it cannot
/// sign with).
///
/// * normal: previous ← active, active ← next (or a new key), next ← new;
/// * emergency: every key in the directory is revoked (its `kid` appended
///   to `revoked_kids`), and fresh active and next keys are created; no
///   previous key remains.
pub fn rotate(dir: &Path, emergency: bool) -> Result<Rotation, KeyringError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let load = |name: &str| read_key(dir, name);
    let (active, next, previous) = (load(ACTIVE)?, load(NEXT)?, load(PREVIOUS)?);
    let mut revoked = read_revoked(&dir.join(REVOKED))?;
    let fresh = || -> Result<NamedKey, KeyringError> {
        let mut seed = [0u8; 32];
        openssl::rand::rand_bytes(&mut seed).map_err(KeyError::Openssl)?;
        Ok(NamedKey::new(SigningKey::from_bytes(&seed)))
    };
    let mut newly_revoked = Vec::new();
    let (new_active, new_previous) = if emergency {
        for k in [&active, &next, &previous].into_iter().flatten() {
            if revoked.insert(k.kid.clone()) {
                newly_revoked.push(k.kid.clone());
            }
        }
        (fresh()?, None)
    } else {
        let promoted = match next {
            Some(n) if !revoked.contains(&n.kid) => n,
            _ => fresh()?,
        };
        (promoted, active)
    };
    let new_next = fresh()?;
    // The new keys first, the revocation after: a reader (AgentAuth's key
    // reload) never finds its active key revoked — which it would refuse,
    // keeping the compromised key it holds — and signs with the new key
    // from the moment it exists.
    if let Some(p) = &new_previous {
        write_key(&dir.join(PREVIOUS), p)?;
    }
    write_key(&dir.join(NEXT), &new_next)?;
    write_key(&dir.join(ACTIVE), &new_active)?;
    if emergency || !newly_revoked.is_empty() {
        let text: String = revoked.iter().map(|k| format!("{k}\n")).collect();
        write_atomic(&dir.join(REVOKED), text.as_bytes())?;
    }
    if new_previous.is_none() {
        remove(&dir.join(PREVIOUS))?;
    }
    Ok(Rotation {
        active: new_active.kid,
        next: new_next.kid,
        previous: new_previous.map(|p| p.kid),
        revoked: newly_revoked,
    })
}

fn write_key(path: &Path, key: &NamedKey) -> Result<(), KeyringError> {
    let pem = crate::poa::keys::signing_key_pem(&key.key)?;
    write_atomic(path, pem.as_bytes())
}

/// Writes `bytes` to a temporary file (mode 0600) and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeyringError> {
    let tmp: PathBuf = path.with_extension("tmp-rotate");
    crate::runtime::files::write_file(&tmp, bytes, true)?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

fn remove(path: &Path) -> Result<(), KeyringError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// A fingerprint of the directory's files, to notice changes cheaply.
pub fn fingerprint(dir: &Path) -> Vec<(String, Option<std::time::SystemTime>, u64)> {
    [ACTIVE, NEXT, PREVIOUS, REVOKED]
        .iter()
        .map(|name| {
            let meta = std::fs::metadata(dir.join(name)).ok();
            (
                (*name).to_owned(),
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map_or(0, |m| m.len()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emergency_rotation_writes_the_new_key_before_the_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let first = rotate(dir.path(), false).unwrap();
        // The revocation cannot be written (its path is a directory): the
        // rotation fails there, but the new active key is already in place,
        // so nobody signs with the compromised one meanwhile.
        let blocked = dir.path().join(REVOKED).with_extension("tmp-rotate");
        std::fs::create_dir(&blocked).unwrap();
        assert!(rotate(dir.path(), true).is_err());
        assert!(!dir.path().join(REVOKED).exists());
        let active = read_key(dir.path(), ACTIVE).unwrap().unwrap();
        assert_ne!(active.kid, first.active);
        assert_ne!(active.kid, first.next);
    }

    #[test]
    fn rotation_moves_keys_along() {
        let dir = tempfile::tempdir().unwrap();
        assert!(KeyRing::load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("no active signing key"));
        let first = rotate(dir.path(), false).unwrap();
        let ring = KeyRing::load(dir.path()).unwrap();
        assert_eq!(ring.active.kid, first.active);
        assert_eq!(ring.next.as_ref().unwrap().kid, first.next);
        assert!(ring.previous.is_none());
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);

        let second = rotate(dir.path(), false).unwrap();
        assert_eq!(second.active, first.next, "next is promoted");
        assert_eq!(second.previous.as_deref(), Some(first.active.as_str()));
        let ring = KeyRing::load(dir.path()).unwrap();
        let kids: Vec<String> = ring.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, vec![second.active, second.next, first.active]);
    }

    #[test]
    fn emergency_rotation_revokes_everything_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let a = rotate(dir.path(), false).unwrap();
        let b = rotate(dir.path(), false).unwrap();
        let e = rotate(dir.path(), true).unwrap();
        let mut revoked = e.revoked.clone();
        revoked.sort();
        let mut want = vec![b.active.clone(), b.next.clone(), a.active.clone()];
        want.sort();
        assert_eq!(revoked, want);
        let ring = KeyRing::load(dir.path()).unwrap();
        assert!(ring.previous.is_none());
        assert_eq!(ring.active.kid, e.active);
        let jwks = ring.jwks();
        let published: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert!(!published.contains(&b.active.as_str()));
        assert!(jwks["revoked_kids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == b.active.as_str()));
    }

    #[test]
    fn a_revoked_active_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = rotate(dir.path(), false).unwrap();
        std::fs::write(
            dir.path().join(REVOKED),
            format!("# compromised\n{}\n", a.active),
        )
        .unwrap();
        assert!(KeyRing::load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("refusing to sign"));
        std::fs::write(dir.path().join(ACTIVE), "garbage").unwrap();
        assert!(KeyRing::load(dir.path()).is_err());
    }

    #[test]
    fn signatures_verify_with_the_published_key() {
        let dir = tempfile::tempdir().unwrap();
        rotate(dir.path(), false).unwrap();
        let ring = KeyRing::load(dir.path()).unwrap();
        let token = ring.sign(&json!({"sub": "x"}));
        let keys = crate::poa::keys::parse_jwks(ring.jwks().to_string().as_bytes()).unwrap();
        let unverified = crate::poa::token::parse(&token).unwrap();
        let key = keys.get(&unverified.kid).unwrap();
        assert!(unverified.verify(key).is_ok());
    }
}
