//! Biscuit configuration: a tenant's root keys (`[tenants.biscuit]`) and the
//! authorizer's run limits (`[biscuit]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[biscuit]`: limits on every Biscuit the broker reads.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BiscuitConfig {
    /// Largest token (base64 text) accepted; larger is 401 `poa_invalid`.
    pub max_token_bytes: usize,
    /// Most blocks (authority + attenuations) accepted.
    pub max_blocks: usize,
    /// Authorizer run limits: facts, rule iterations, time.
    pub max_facts: u64,
    pub max_iterations: u64,
    pub max_time_ms: u64,
    /// Most Datalog steps a token's rules and checks may need in the worst
    /// case (facts joined per rule body, times iterations); checked before
    /// running, since the engine checks its limits only between iterations.
    pub max_work: u64,
}

impl Default for BiscuitConfig {
    fn default() -> Self {
        Self {
            max_token_bytes: 8192,
            max_blocks: 8,
            max_facts: 1000,
            max_iterations: 100,
            max_time_ms: 20,
            max_work: 100_000,
        }
    }
}

/// `[tenants.biscuit]`: the keys the tenant signs its capabilities with.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantBiscuitConfig {
    /// Trusted root keys, addressed by the token's `root_key_id`: the
    /// current one and, during a rotation, the previous one(s).
    pub root_keys: Vec<RootKeyConfig>,
    /// AgentAuth's key for this tenant's Biscuit mandates (`POST
    /// /v1/mandate` with `"format": "biscuit"`): a private key file in the
    /// `ed25519-private/<hex>` form `atb biscuit keygen` writes. Its public
    /// key must be the root key `agentauth_root_key_id` of `root_keys`
    /// (checked whenever this configuration lists root keys). Unset: no
    /// Biscuit mandates for this tenant (409 `biscuit_not_configured`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agentauth_key_file: Option<PathBuf>,
    /// The `root_key_id` AgentAuth's Biscuits carry (required with
    /// `agentauth_key_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agentauth_root_key_id: Option<u32>,
}

/// AgentAuth's signing key for one tenant's Biscuits, read and checked.
#[derive(Clone)]
pub struct AgentAuthBiscuitKey {
    /// `ed25519-private/<hex>`.
    pub private_key: String,
    pub root_key_id: u32,
    /// `ed25519/<hex>`: what the broker must list.
    pub public_key: String,
}

impl std::fmt::Debug for AgentAuthBiscuitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentAuthBiscuitKey")
            .field("root_key_id", &self.root_key_id)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl TenantBiscuitConfig {
    /// AgentAuth's key for this tenant, if configured: the file is read and
    /// parsed, and when `root_keys` is not empty (the broker's view is in
    /// the same configuration) its public key must be the root key with id
    /// `agentauth_root_key_id`. The error is the reason; the caller names
    /// the key (`tenants[i].biscuit...`).
    pub fn agentauth_key(&self) -> Result<Option<AgentAuthBiscuitKey>, (&'static str, String)> {
        let (path, id) = match (&self.agentauth_key_file, self.agentauth_root_key_id) {
            (None, None) => return Ok(None),
            (Some(p), Some(id)) => (p, id),
            (Some(_), None) => {
                return Err((
                    "agentauth_root_key_id",
                    "is required with agentauth_key_file (the root_key_id the broker selects the public key by)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "agentauth_key_file",
                    "is required with agentauth_root_key_id".into(),
                ))
            }
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            (
                "agentauth_key_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let private_key = text.trim().to_owned();
        if !private_key.starts_with("ed25519-private/") {
            return Err((
                "agentauth_key_file",
                format!(
                    "{} must hold an ed25519-private/<hex> key (atb biscuit keygen)",
                    path.display()
                ),
            ));
        }
        let public_key = super::tools::public_key_of(&private_key)
            .map_err(|e| ("agentauth_key_file", format!("{}: {e}", path.display())))?;
        if !self.root_keys.is_empty() {
            let listed = self.root_keys.iter().find(|k| k.id == id).ok_or_else(|| {
                (
                    "agentauth_root_key_id",
                    format!("{id} is not the id of one of this tenant's root_keys: the broker could not verify AgentAuth's Biscuits"),
                )
            })?;
            let listed = listed.text().map_err(|e| ("root_keys", e))?;
            if !same_public_key(&listed, &public_key) {
                return Err((
                    "agentauth_key_file",
                    format!(
                        "its public key {public_key} is not root key {id} ({listed}): the broker would refuse AgentAuth's Biscuits"
                    ),
                ));
            }
        }
        Ok(Some(AgentAuthBiscuitKey {
            private_key,
            root_key_id: id,
            public_key,
        }))
    }
}

fn same_public_key(a: &str, b: &str) -> bool {
    match (
        a.parse::<biscuit_auth::PublicKey>(),
        b.parse::<biscuit_auth::PublicKey>(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// One root public key: inline (`ed25519/<hex>`, as the Biscuit tools print
/// it) or from a file holding that text.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RootKeyConfig {
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

impl BiscuitConfig {
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        use crate::config::invalid;
        if !(256..=65_536).contains(&self.max_token_bytes) {
            return Err(invalid("biscuit.max_token_bytes", "must be 256..=65536"));
        }
        if !(1..=64).contains(&self.max_blocks) {
            return Err(invalid("biscuit.max_blocks", "must be 1..=64"));
        }
        if !(1..=100_000).contains(&self.max_facts) {
            return Err(invalid("biscuit.max_facts", "must be 1..=100000"));
        }
        if !(1..=10_000).contains(&self.max_iterations) {
            return Err(invalid("biscuit.max_iterations", "must be 1..=10000"));
        }
        if !(1..=100_000_000).contains(&self.max_work) {
            return Err(invalid("biscuit.max_work", "must be 1..=100000000"));
        }
        if !(1..=1000).contains(&self.max_time_ms) {
            return Err(invalid("biscuit.max_time_ms", "must be 1..=1000"));
        }
        Ok(())
    }

    /// The limits of the static work bound (`super::work`).
    pub fn work_limits(&self) -> super::work::WorkLimits {
        super::work::WorkLimits {
            max_facts: self.max_facts,
            max_iterations: self.max_iterations,
            max_work: self.max_work,
        }
    }

    pub fn limits(&self) -> biscuit_auth::AuthorizerLimits {
        biscuit_auth::AuthorizerLimits {
            max_facts: self.max_facts,
            max_iterations: self.max_iterations,
            max_time: std::time::Duration::from_millis(self.max_time_ms),
        }
    }
}

impl RootKeyConfig {
    /// The key text (inline or read from its file).
    pub fn text(&self) -> Result<String, String> {
        match (&self.public_key, &self.public_key_file) {
            (Some(k), None) => Ok(k.trim().to_owned()),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            _ => Err("set exactly one of public_key or public_key_file".into()),
        }
    }
}
