//! Biscuit mandates (`POST /v1/mandate` with `"format": "biscuit"`): the
//! approved challenge minted as a Biscuit with the same content as the JWT
//! mandate, signed by the tenant's AgentAuth key
//! (`[tenants.biscuit] agentauth_key_file`, `agentauth_root_key_id`),
//! which the broker trusts as one of the tenant's root keys.
//!
//! The authority block carries the vocabulary of `crate::biscuit`:
//! `agent` (the requesting agent), `tenant`, `right` (the one action),
//! `issued`/`expires` (the mandate's `iat`/`exp`), `con`, `leg` **with the
//! approval evidence AgentAuth writes from its records**
//! ([`Challenge::leg_with_evidence`]) and `id` (the `jti` recorded for the
//! single mint). The broker builds the same policy input from these facts
//! as from a JWT's claims, so approvals apply identically.

use std::collections::HashMap;

use super::challenge::Challenge;
use crate::biscuit::config::AgentAuthBiscuitKey;
use crate::biscuit::tools::{self, Mint, ToolError};
use crate::tenant::TenantConfig;

/// A tenant's AgentAuth Biscuit key that cannot be used, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SignerError {
    pub key: String,
    pub message: String,
}

/// AgentAuth's Biscuit keys by tenant (only tenants that configure one).
#[derive(Debug, Default)]
pub struct BiscuitSigners {
    keys: HashMap<String, AgentAuthBiscuitKey>,
}

impl BiscuitSigners {
    /// Reads every tenant's `agentauth_key_file` (checked against its
    /// `root_keys` when listed). The error names the config key.
    pub fn load(tenants: &[TenantConfig]) -> Result<Self, SignerError> {
        let mut keys = HashMap::new();
        for (i, t) in tenants.iter().enumerate() {
            let Some(b) = &t.biscuit else { continue };
            match b.agentauth_key() {
                Ok(Some(k)) => {
                    keys.insert(t.id.clone(), k);
                }
                Ok(None) => {}
                Err((field, message)) => {
                    return Err(SignerError {
                        key: format!("tenants[{i}].biscuit.{field}"),
                        message,
                    })
                }
            }
        }
        Ok(Self { keys })
    }

    /// The key for `tenant`, if it has one.
    pub fn get(&self, tenant: &str) -> Option<&AgentAuthBiscuitKey> {
        self.keys.get(tenant)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The approved challenge `c` as a Biscuit: issued `iat`, expiring `exp`,
/// with `id` = `jti`.
pub fn mint(
    c: &Challenge,
    key: &AgentAuthBiscuitKey,
    jti: &str,
    iat: i64,
    exp: i64,
) -> Result<String, ToolError> {
    let actions = [c.act.clone()];
    let leg = c.leg_with_evidence();
    tools::mint(
        &key.private_key,
        &Mint {
            tenant: &c.tenant,
            agent: &c.agent,
            actions: &actions,
            issued: iat,
            ttl: exp - iat,
            con: &c.con,
            leg: &leg,
            id: Some(jti),
            root_key_id: key.root_key_id,
        },
    )
}

/// The revocation id of a Biscuit's authority block (the broker's single
/// use key, and what `POST /admin/revoke` takes), hex.
pub fn authority_revocation_id(token: &str) -> Option<String> {
    let u = biscuit_auth::UnverifiedBiscuit::from_base64(token).ok()?;
    let ids = u.revocation_identifiers();
    ids.first()
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agentauth::challenge::{parse_request, Approver, Tier};
    use crate::biscuit::config::{BiscuitConfig, RootKeyConfig, TenantBiscuitConfig};
    use crate::biscuit::verify::{authorize, verify, Request, RootKeys};
    use serde_json::json;

    const AGENT: &str = "spiffe://acme.example/agent/a";

    fn approver(id: &str) -> Approver {
        Approver {
            id: id.into(),
            email: None,
            roles: vec![],
            tenants: vec!["acme".into()],
            cross_tenant: false,
        }
    }

    /// A high-risk challenge approved by two distinct approvers.
    fn dual_control_challenge(now: i64) -> Challenge {
        let request = parse_request(
            &json!({"act": "sap.vendor.create", "con": {"amount": 5},
                "leg": {"jurisdiction": "EU",
                    "accountable_party": {"type": "user", "id": "owner@acme.example"}}}),
            AGENT,
        )
        .unwrap();
        let mut c = Challenge::new(
            "chal_x".into(),
            "acme".into(),
            AGENT.into(),
            request,
            Tier::High,
            now,
            300,
        );
        c.approve(&approver("alice@acme.example"), &[], now + 1)
            .unwrap();
        c.approve(&approver("bob@acme.example"), &[], now + 2)
            .unwrap();
        c
    }

    fn key_files(dir: &std::path::Path) -> (std::path::PathBuf, String) {
        let (private, public) = tools::keygen();
        let path = dir.join("acme-biscuit-root.key");
        std::fs::write(&path, format!("{private}\n")).unwrap();
        (path, public)
    }

    fn config(path: &std::path::Path, id: u32, roots: &[(u32, &str)]) -> TenantBiscuitConfig {
        TenantBiscuitConfig {
            root_keys: roots
                .iter()
                .map(|(id, k)| RootKeyConfig {
                    id: *id,
                    public_key: Some((*k).to_owned()),
                    public_key_file: None,
                })
                .collect(),
            agentauth_key_file: Some(path.to_owned()),
            agentauth_root_key_id: Some(id),
        }
    }

    #[test]
    fn a_dual_control_mandate_as_a_biscuit_carries_the_evidence_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (path, public) = key_files(dir.path());
        let key = config(&path, 1, &[(1, &public)])
            .agentauth_key()
            .unwrap()
            .unwrap();
        assert_eq!(key.public_key, public);
        let now = 1_800_000_000;
        let mut c = dual_control_challenge(now);
        c.mint(AGENT, "poa_abc", now + 310, now + 10).unwrap();
        let token = mint(&c, &key, "poa_abc", now + 10, now + 310).unwrap();

        let keys = RootKeys::parse(&[(1, public)]).unwrap();
        let limits = BiscuitConfig::default();
        let cap = verify(&token, &keys, &limits, now + 10, 10, 900).unwrap();
        assert_eq!(cap.agent, AGENT);
        assert_eq!(cap.tenant, "acme");
        assert_eq!(cap.rights, vec!["sap.vendor.create".to_string()]);
        assert_eq!(cap.id, "poa_abc");
        assert_eq!((cap.issued, cap.expires), (now + 10, now + 310));
        assert_eq!(cap.root_key_id, 1);
        assert_eq!(cap.con, json!({"amount": 5}));
        // The evidence AgentAuth wrote, exactly as in the JWT's leg.
        assert_eq!(cap.leg, c.leg_with_evidence());
        let dual = &cap.leg["dual_control"];
        assert_eq!(dual["required"], true);
        let ids: Vec<&str> = dual["approvers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["alice@acme.example", "bob@acme.example"]);
        assert_eq!(cap.leg["jurisdiction"], "EU");
        // The JWT path's claims carry the same content.
        let claims = c.claims("iss", "aud", "poa_abc", now + 10, now + 310);
        let view = cap.policy_view();
        for k in ["sub", "con", "leg", "iat", "exp", "jti"] {
            assert_eq!(view[k], claims[k], "{k}");
        }
        assert_eq!(
            authority_revocation_id(&token).as_deref(),
            Some(cap.single_use_id())
        );
        // The authorizer allows the granted action only.
        let mut cap = cap;
        cap.act = "sap.vendor.create".into();
        let params = serde_json::Map::new();
        let request = |action| Request {
            agent: AGENT,
            tenant: "acme",
            action,
            method: "POST",
            path: "/api/vendors",
            route: None,
            connector: "sap",
            params: &params,
            now: now + 20,
        };
        authorize(&cap, &request("sap.vendor.create"), &limits).unwrap();
        assert!(authorize(&cap, &request("sap.payment.execute"), &limits).is_err());
        // Under another key it does not verify.
        let (_, other) = tools::keygen();
        let other = RootKeys::parse(&[(1, other)]).unwrap();
        assert!(verify(&token, &other, &limits, now + 10, 10, 900).is_err());
    }

    #[test]
    fn the_key_must_be_the_brokers_root_key_with_that_id() {
        let dir = tempfile::tempdir().unwrap();
        let (path, public) = key_files(dir.path());
        let (_, stranger) = tools::keygen();
        // Right key, right id; no root keys listed (an AgentAuth-only
        // configuration): accepted.
        assert!(config(&path, 1, &[(1, &public)]).agentauth_key().is_ok());
        assert!(config(&path, 7, &[]).agentauth_key().is_ok());
        // Listed under another id, or another key under that id.
        let (field, e) = config(&path, 2, &[(1, &public)])
            .agentauth_key()
            .unwrap_err();
        assert_eq!(field, "agentauth_root_key_id");
        assert!(e.contains("not the id"), "{e}");
        let (field, e) = config(&path, 1, &[(1, &stranger), (2, &public)])
            .agentauth_key()
            .unwrap_err();
        assert_eq!(field, "agentauth_key_file");
        assert!(e.contains("is not root key 1"), "{e}");
        // Half configured, unreadable, not a private key.
        let mut half = config(&path, 1, &[]);
        half.agentauth_root_key_id = None;
        assert_eq!(half.agentauth_key().unwrap_err().0, "agentauth_root_key_id");
        let missing = config(&dir.path().join("nope.key"), 1, &[]);
        assert!(missing
            .agentauth_key()
            .unwrap_err()
            .1
            .contains("cannot read"));
        let pub_file = dir.path().join("acme.pub");
        std::fs::write(&pub_file, &public).unwrap();
        let e = config(&pub_file, 1, &[]).agentauth_key().unwrap_err().1;
        assert!(e.contains("ed25519-private/<hex>"), "{e}");
        // Through the whole configuration: the configuration is valid for a
        // broker (it never reads AgentAuth's private key); AgentAuth's start
        // (and `atb agentauth --check`) refuses it, naming the key.
        let toml = format!(
            "[tls]\ncert_file = \"s.crt\"\nkey_file = \"s.key\"\nclient_ca_file = \"ca.crt\"\n[[tenants]]\nid = \"acme\"\ntrust_domain = \"acme.example\"\n[tenants.biscuit]\nroot_keys = [{{ id = 1, public_key = \"{stranger}\" }}]\nagentauth_key_file = \"{}\"\nagentauth_root_key_id = 1\n",
            path.display()
        );
        let mismatched = crate::config::Config::from_toml(&toml).unwrap();
        mismatched.validate().unwrap();
        let e = BiscuitSigners::load(&mismatched.tenants)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tenants[0].biscuit.agentauth_key_file"), "{e}");
        let ok = toml.replace(&stranger, &public);
        let c = crate::config::Config::from_toml(&ok).unwrap();
        c.validate().unwrap();
        let signers = BiscuitSigners::load(&c.tenants).unwrap();
        assert_eq!(signers.get("acme").unwrap().root_key_id, 1);
        assert!(signers.get("globex").is_none());
    }
}
