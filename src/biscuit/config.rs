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
