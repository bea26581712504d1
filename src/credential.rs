//! What a request presents as its authority, once verified: the seam where
//! the pipeline stops caring which format carried it.
//!
//! - A PoA JWT ([`Credential::Jwt`]) or a Biscuit capability
//!   ([`Credential::Biscuit`], verified by `crate::biscuit`), read through
//!   the same accessors.
//! - The pipeline reads only what every format has: the action, the id that
//!   makes it single use, its expiry, its constraints (`con`) and the
//!   document the policy sees as `poa`.
//! - Plain data; no HTTP types.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::biscuit::verify::Capability;
use crate::poa::claims::PoaClaims;

/// A verified credential.
#[derive(Debug, Clone)]
pub enum Credential {
    /// An EdDSA PoA mandate (`sub act con leg iat exp jti`).
    Jwt(PoaClaims),
    /// A Biscuit capability, verified under the tenant's root key.
    Biscuit(Box<Capability>),
}

impl Credential {
    /// The one action it authorizes.
    pub fn act(&self) -> &str {
        match self {
            Credential::Jwt(c) => &c.act,
            Credential::Biscuit(c) => &c.act,
        }
    }

    /// What single use is keyed on (a JWT's `jti`).
    pub fn single_use_id(&self) -> &str {
        match self {
            Credential::Jwt(c) => &c.jti,
            Credential::Biscuit(c) => c.single_use_id(),
        }
    }

    /// Unix seconds at which it was issued (`iat`, a Biscuit's `issued`).
    pub fn issued(&self) -> i64 {
        match self {
            Credential::Jwt(c) => c.iat,
            Credential::Biscuit(c) => c.issued,
        }
    }

    /// Unix seconds after which it is no longer valid.
    pub fn expires(&self) -> i64 {
        match self {
            Credential::Jwt(c) => c.exp,
            Credential::Biscuit(c) => c.expires,
        }
    }

    /// Its constraints (`con`), if any.
    pub fn con(&self) -> Option<&Value> {
        match self {
            Credential::Jwt(c) => c.raw.get("con"),
            Credential::Biscuit(c) => Some(&c.con),
        }
    }

    /// `jwt` or `biscuit` (metrics and audit).
    pub fn format(&self) -> &'static str {
        match self {
            Credential::Jwt(_) => "jwt",
            Credential::Biscuit(_) => "biscuit",
        }
    }

    /// The document the policy sees as `poa`, as its members: a JWT's
    /// claims by reference, a Biscuit's built.
    pub fn policy_map(&self) -> Cow<'_, Map<String, Value>> {
        match self {
            Credential::Jwt(c) => Cow::Borrowed(&c.raw),
            Credential::Biscuit(c) => match c.policy_view() {
                Value::Object(m) => Cow::Owned(m),
                _ => Cow::Owned(Map::new()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_jwt_reads_through_the_accessors() {
        let raw = json!({"sub": "s", "act": "crm.contact.read", "jti": "j1", "iat": 1, "exp": 61,
                         "con": {"connector": "crm"}});
        let c = Credential::Jwt(PoaClaims {
            sub: "s".into(),
            act: "crm.contact.read".into(),
            jti: "j1".into(),
            iat: 1,
            exp: 61,
            raw: raw.as_object().unwrap().clone(),
        });
        assert_eq!(
            (c.act(), c.single_use_id(), c.expires()),
            ("crm.contact.read", "j1", 61)
        );
        assert_eq!(c.con().unwrap()["connector"], "crm");
        assert_eq!(Value::Object(c.policy_map().into_owned()), raw);
    }
}
