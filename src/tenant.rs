//! Tenants: their configuration (`[[tenants]]`, connectors, rate limits)
//! and which tenant an agent's SPIFFE ID belongs to.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::poa::config::TenantPoaConfig;
use crate::runtime::ca_bundle::{CaBundle, PeerCerts};
use crate::runtime::tls::IdentityError;
use crate::spiffe::SpiffeId;

/// A tenant: who its agents are and what they may reach.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Stable id, used in metrics labels, logs and state keys.
    pub id: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Agents whose SPIFFE ID is in this trust domain belong to the tenant.
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// Agents whose SPIFFE ID is this ID or below it (segment boundary)
    /// belong to the tenant, e.g. `spiffe://saas.example/tenants/acme`.
    #[serde(default)]
    pub spiffe_prefix: Option<String>,
    /// The tenant's own client CA bundle (PEM): its agents' certificates
    /// must chain to it, and no other tenant's CA may vouch for its SPIFFE
    /// IDs. Unset: `tls.client_ca_file` is the tenant's bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<std::path::PathBuf>,
    /// Live mTLS connections the tenant's agents may hold at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests of the tenant inside the broker at once (verifying,
    /// deciding, forwarding); past it 503 `overloaded` + `Retry-After`,
    /// before any costly step (`broker::tenant_in_flight`).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Sustained requests per second for the whole tenant (token bucket).
    #[serde(default = "default_tenant_rps")]
    pub requests_per_second: f64,
    /// Bucket size: requests that may arrive at once.
    #[serde(default = "default_tenant_burst")]
    pub burst: u32,
    #[serde(default)]
    pub poa: TenantPoaConfig,
    /// The tenant's platform identity provider (`[tenants.platform]`):
    /// an `X-ATB-Platform-Token` is verified against it and its subject
    /// fills the policy input `platform.sub`. None: such a token is refused.
    #[serde(default)]
    pub platform: Option<PlatformConfig>,
    /// The tenant's policy data (`data.tenants.<id>` in Rego): `time_policy`,
    /// `rate_limits`, `platform_binding`, `catalog.tiers` overrides.
    #[serde(default)]
    pub policy_data: Option<serde_json::Value>,
    /// The tenant's own Rego modules (embedded engine), each confined to
    /// `package atb.tenants.<id>`: they can only add denials through its
    /// `deny` set (README "Per-tenant policy extensions").
    #[serde(default)]
    pub policy_files: Vec<std::path::PathBuf>,
    /// Connector used when a mandate names none (`con.connector`); with a
    /// single connector that one is the default.
    #[serde(default)]
    pub default_connector: Option<String>,
    #[serde(default)]
    pub connectors: Vec<ConnectorConfig>,
    /// Who is accountable for which agents (`[[tenants.agent_owners]]`):
    /// AgentAuth refuses their approvals of those agents' challenges
    /// (403 `self_approval`), whatever the agent wrote in `leg`.
    #[serde(default)]
    pub agent_owners: Vec<AgentOwners>,
    /// The tenant's Biscuit root keys (`[tenants.biscuit]`); none: its
    /// agents' Biscuits are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biscuit: Option<crate::biscuit::config::TenantBiscuitConfig>,
    /// Every forwarded request first gets a durable `forward` audit record
    /// (written and settled — fsynced for a file sink — before the request
    /// goes upstream); a record that cannot be made durable refuses the
    /// request (503 `audit_unavailable`). README "Crash durability".
    #[serde(default)]
    pub audit_required: bool,
}

/// The people accountable for an agent, as the tenant knows them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentOwners {
    /// A SPIFFE ID: that agent, and every agent below it (segment
    /// boundary).
    pub agent: String,
    /// Approver identities (the IdP's identity claim or email), compared
    /// trimmed and case-insensitively.
    pub owners: Vec<String>,
}

impl TenantConfig {
    /// Everyone accountable for `agent` (a SPIFFE ID) by this tenant's
    /// `agent_owners`.
    pub fn owners_of(&self, agent: &SpiffeId) -> Vec<String> {
        self.agent_owners
            .iter()
            .filter(|o| agent.is_under(o.agent.trim_end_matches('/')))
            .flat_map(|o| o.owners.iter().cloned())
            .collect()
    }
}

/// A tenant's platform OIDC issuer (SPEC §3 `platform.sub`): tokens are
/// JWTs signed with RS256, ES256 or EdDSA (never `none` or HMAC), keys from
/// the issuer's JWKS (fetched on demand, single flight) and/or PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` (string or list member).
    pub audience: String,
    /// The issuer's JWKS (`https://`, or `http://` to loopback).
    pub jwks_url: Option<String>,
    /// Static public keys (SubjectPublicKeyInfo PEM); `kid` is the file stem.
    pub public_key_files: Vec<std::path::PathBuf>,
    /// Accepted `alg` values, among RS256, ES256 and EdDSA.
    pub algorithms: Vec<String>,
    /// Clock leeway for `exp`/`nbf`/`iat`, in seconds (at most 300).
    pub leeway_seconds: u64,
    /// Claim whose string value is `platform.sub`.
    pub subject_claim: String,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: None,
            public_key_files: Vec::new(),
            algorithms: crate::agentauth::config::default_oidc_algorithms(),
            leeway_seconds: 30,
            subject_claim: "sub".into(),
        }
    }
}

/// An upstream enterprise API a tenant's agents may be proxied to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    pub id: String,
    /// Base URL, `http://` or `https://`.
    pub upstream_url: String,
    /// Path prefixes (segment boundary) requests may reach; empty denies all.
    #[serde(default)]
    pub egress_allowlist: Vec<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Seconds to wait for the upstream's response headers (then 504).
    #[serde(default = "default_connector_timeout")]
    pub timeout_seconds: u64,
    /// Which action each method + path carries out
    /// (`[[tenants.connectors.routes]]`); none = no calls. `"any"` opts
    /// out of route binding (warned about, `atb_connector_unbound`).
    #[serde(default)]
    pub routes: crate::routes::ConnectorRoutes,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests_per_second: f64,
    pub burst: u32,
}

fn yes() -> bool {
    true
}
fn default_connector_timeout() -> u64 {
    30
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_in_flight() -> usize {
    256
}
fn default_tenant_rps() -> f64 {
    1000.0
}
fn default_tenant_burst() -> u32 {
    2000
}

/// Each tenant's client CA bundle: its `client_ca_file`, or the global
/// `tls.client_ca_file`. A file is read once per call; a bundle holding
/// the same certificates as the tenant's bundle in `previous` is kept (the
/// same `Arc`), so its live connections stay verified across a reload.
pub fn load_issuers(
    config: &crate::config::Config,
    previous: Option<&TenantDirectory>,
) -> Result<HashMap<String, Arc<CaBundle>>, crate::config::ConfigError> {
    let mut files: HashMap<&Path, Arc<CaBundle>> = HashMap::new();
    let mut issuers = HashMap::with_capacity(config.tenants.len());
    for (i, t) in config.tenants.iter().enumerate() {
        let (key, path) = match &t.client_ca_file {
            Some(p) => (format!("tenants[{i}].client_ca_file"), p.as_path()),
            None => (
                "tls.client_ca_file".to_owned(),
                config.tls.client_ca_file.as_path(),
            ),
        };
        let loaded = match files.get(path) {
            Some(b) => b.clone(),
            None => {
                let b = Arc::new(
                    CaBundle::load(path).map_err(|e| crate::config::invalid(key, e.to_string()))?,
                );
                files.insert(path, b.clone());
                b
            }
        };
        let kept = previous
            .and_then(|p| p.issuer(&t.id))
            .filter(|old| old.same_certs(&loaded))
            .cloned();
        issuers.insert(t.id.clone(), kept.unwrap_or(loaded));
    }
    Ok(issuers)
}

/// A configured tenant, shared by every request of its agents.
pub type Tenant = Arc<TenantConfig>;

/// Resolves SPIFFE IDs to tenants. Built once from a validated config, so
/// ownership is unambiguous: a trust domain belongs to at most one tenant,
/// and path prefixes neither nest nor lie in a tenant-owned trust domain.
#[derive(Debug, Default)]
pub struct TenantDirectory {
    by_id: HashMap<String, Tenant>,
    by_trust_domain: HashMap<String, Tenant>,
    /// Keyed by the prefix without a trailing slash.
    by_prefix: HashMap<String, Tenant>,
    /// Each tenant's client CA bundle (its own or the global one), when the
    /// directory binds identities to issuers (see [`TenantDirectory::with_issuers`]).
    issuers: Option<HashMap<String, Arc<CaBundle>>>,
}

impl TenantDirectory {
    pub fn new(tenants: &[TenantConfig]) -> Self {
        let mut dir = Self::default();
        for t in tenants {
            let tenant: Tenant = Arc::new(t.clone());
            if let Some(td) = &t.trust_domain {
                dir.by_trust_domain.insert(td.clone(), tenant.clone());
            }
            if let Some(p) = &t.spiffe_prefix {
                dir.by_prefix
                    .insert(p.trim_end_matches('/').to_owned(), tenant.clone());
            }
            dir.by_id.insert(t.id.clone(), tenant);
        }
        dir
    }

    /// Binds identities to issuers: a certificate counts for a tenant only
    /// if it chains to `issuers[tenant]`; a tenant missing from `issuers`
    /// accepts no certificate (fail closed).
    pub fn with_issuers(mut self, issuers: HashMap<String, Arc<CaBundle>>) -> Self {
        self.issuers = Some(issuers);
        self
    }

    /// The client CA bundle of `tenant_id`, when issuers are bound.
    pub fn issuer(&self, tenant_id: &str) -> Option<&Arc<CaBundle>> {
        self.issuers.as_ref()?.get(tenant_id)
    }

    /// Whether certificates are checked against their tenant's own bundle.
    pub fn binds_issuers(&self) -> bool {
        self.issuers.is_some()
    }

    /// Checks that `peer` chains to the client CA bundle of `tenant_id`
    /// (after the handshake, which trusts the union of all bundles).
    /// Returns the bundle it was verified against, or `None` when the
    /// directory does not bind issuers (the handshake verdict stands).
    pub fn verify_issuer(
        &self,
        tenant_id: &str,
        peer: Option<&PeerCerts>,
    ) -> Result<Option<Arc<CaBundle>>, IdentityError> {
        let Some(issuers) = &self.issuers else {
            return Ok(None);
        };
        let bundle = issuers.get(tenant_id).ok_or(IdentityError::WrongIssuer)?;
        let peer = peer.ok_or(IdentityError::NoCertificate)?;
        bundle
            .verify_peer(peer)
            .map_err(|_| IdentityError::WrongIssuer)?;
        Ok(Some(bundle.clone()))
    }

    /// Whether a connection verified against `verified` at accept time is
    /// still bound to `tenant_id` as configured now (same bundle object:
    /// a reload that changed the tenant's bundle, or moved the identity to
    /// another tenant, invalidates it).
    pub fn issuer_current(&self, tenant_id: &str, verified: Option<&Arc<CaBundle>>) -> bool {
        if self.issuers.is_none() {
            return true;
        }
        match (self.issuer(tenant_id), verified) {
            (Some(now), Some(then)) => Arc::ptr_eq(now, then),
            _ => false,
        }
    }

    /// The tenant owning `id`, enabled or not.
    pub fn resolve(&self, id: &SpiffeId) -> Option<&Tenant> {
        if let Some(t) = self.by_trust_domain.get(id.trust_domain()) {
            return Some(t);
        }
        if self.by_prefix.is_empty() {
            return None;
        }
        // Try the ID itself, then each ancestor path: one hash lookup per
        // path segment, whatever the number of tenants.
        let root = id.as_str().len() - id.path().len();
        let mut candidate = id.as_str();
        while candidate.len() > root {
            if let Some(t) = self.by_prefix.get(candidate) {
                return Some(t);
            }
            candidate = &candidate[..candidate.rfind('/').unwrap_or(root).max(root)];
        }
        None
    }

    /// The tenant with this id.
    pub fn get(&self, tenant_id: &str) -> Option<&Tenant> {
        self.by_id.get(tenant_id)
    }

    /// Every tenant id.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn dir() -> TenantDirectory {
        let c = Config::from_toml(
            r#"
            [[tenants]]
            id = "acme"
            trust_domain = "acme.example"
            [[tenants]]
            id = "globex"
            spiffe_prefix = "spiffe://saas.example/tenants/globex/"
            [[tenants]]
            id = "initech"
            enabled = false
            spiffe_prefix = "spiffe://saas.example/tenants/initech"
            "#,
        )
        .unwrap();
        TenantDirectory::new(&c.tenants)
    }

    fn resolve(d: &TenantDirectory, id: &str) -> Option<String> {
        d.resolve(&SpiffeId::parse(id).unwrap())
            .map(|t| t.id.clone())
    }

    #[test]
    fn resolves_by_trust_domain_and_prefix() {
        let d = dir();
        assert_eq!(
            resolve(&d, "spiffe://acme.example/agent/a").as_deref(),
            Some("acme")
        );
        assert_eq!(
            resolve(&d, "spiffe://acme.example").as_deref(),
            Some("acme")
        );
        assert_eq!(
            resolve(&d, "spiffe://saas.example/tenants/globex/agent/1").as_deref(),
            Some("globex")
        );
        assert_eq!(
            resolve(&d, "spiffe://saas.example/tenants/initech/x").as_deref(),
            Some("initech")
        );
        assert!(!d.get("initech").unwrap().enabled);
    }

    #[test]
    fn unknown_ids_resolve_to_nothing() {
        let d = dir();
        assert_eq!(resolve(&d, "spiffe://evil.example/agent"), None);
        assert_eq!(resolve(&d, "spiffe://saas.example/tenants/globexx/a"), None);
        assert_eq!(resolve(&d, "spiffe://saas.example/tenants"), None);
        // A look-alike trust domain is not the tenant's.
        assert_eq!(resolve(&d, "spiffe://acme.example.evil/agent"), None);
    }
}
