//! The `[poa]` section and each tenant's `[tenants.poa]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Mandate handling common to all tenants.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoaConfig {
    /// Each `jti` is accepted once (per tenant, until `exp + leeway`).
    pub single_use: bool,
    /// Clock leeway for `exp`, `iat` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// Most `jti`s the in-memory replay cache holds; when full, new
    /// mandates get 503 `replay_store_unavailable` (live entries are never
    /// evicted).
    pub replay_capacity: usize,
    /// How often expired replay entries are swept.
    pub replay_sweep_seconds: u64,
    /// Periodic JWKS refresh interval.
    pub jwks_refresh_seconds: u64,
    /// Least time between refreshes triggered by unknown `kid`s (≥ 30).
    pub jwks_cooldown_seconds: u64,
    /// How long an unknown `kid` is remembered as unknown.
    pub jwks_negative_seconds: u64,
    /// How long keys stay usable after the last successful JWKS fetch.
    pub jwks_stale_seconds: u64,
    /// Time limit of one JWKS fetch, in milliseconds.
    pub jwks_timeout_ms: u64,
}

impl Default for PoaConfig {
    fn default() -> Self {
        Self {
            single_use: true,
            leeway_seconds: 10,
            replay_capacity: 1_000_000,
            replay_sweep_seconds: 5,
            jwks_refresh_seconds: 300,
            jwks_cooldown_seconds: 30,
            jwks_negative_seconds: 60,
            jwks_stale_seconds: 3600,
            jwks_timeout_ms: 1500,
        }
    }
}

/// How a tenant's mandates are verified.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPoaConfig {
    /// Ed25519 public keys (SubjectPublicKeyInfo PEM); `kid` is each key's
    /// RFC 7638 thumbprint.
    pub public_key_files: Vec<PathBuf>,
    /// JWKS document with the tenant's keys (e.g. AgentAuth's
    /// `/.well-known/jwks.json`); Ed25519 `OKP` keys are used.
    pub jwks_url: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (string or list member), when set.
    pub audience: Option<String>,
    /// Longest mandate lifetime (`exp - iat`); never above 900.
    pub max_ttl_seconds: u64,
    /// Revoked mandate ids: 401 `poa_revoked`.
    pub revoked_jtis: Vec<String>,
    /// Revoked key ids: 401 `poa_revoked`.
    pub revoked_kids: Vec<String>,
    /// Calls without a mandate go to the policy (with an empty `poa` and the
    /// `X-ATB-Action` header as the action), which allows only its low-risk
    /// catalogue actions with their methods and `GET` on the safe paths;
    /// everything else stays 401 `poa_required`. Off: every call needs a
    /// mandate.
    pub allow_unmandated_low_risk: bool,
    /// Live replay-cache entries (unexpired mandates) this tenant may hold;
    /// past it, its calls get 503 `replay_store_unavailable` while other
    /// tenants keep theirs. Default: an equal share of what
    /// `poa.replay_capacity` leaves after the explicit quotas.
    pub replay_quota: Option<usize>,
}

impl Default for TenantPoaConfig {
    fn default() -> Self {
        Self {
            public_key_files: Vec::new(),
            jwks_url: None,
            issuer: None,
            audience: None,
            max_ttl_seconds: 300,
            revoked_jtis: Vec::new(),
            revoked_kids: Vec::new(),
            allow_unmandated_low_risk: false,
            replay_quota: None,
        }
    }
}
