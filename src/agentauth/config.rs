//! The `[agentauth]` section of the one typed configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::env::{env_parsed, EnvLookup};
use crate::config::error::{invalid, ConfigError};

/// Longest mandate lifetime AgentAuth will sign (the broker's hard cap).
pub const MAX_MANDATE_TTL: u64 = 900;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentAuthConfig {
    /// HTTPS listener (agents with mTLS; approvers with a bearer JWT).
    pub listen_addr: SocketAddr,
    /// Plain HTTP listener for `/health`, `/ready`, `/metrics`.
    pub admin_addr: SocketAddr,
    /// `iss` of every mandate.
    pub issuer: String,
    /// `aud` of every mandate (the brokers' configured audience).
    pub audience: String,
    /// Default mandate lifetime (`exp - iat`).
    pub mandate_ttl_seconds: u64,
    /// Longest lifetime an agent may ask for (at most 900).
    pub max_mandate_ttl_seconds: u64,
    /// How long a challenge waits for approvals and minting.
    pub challenge_ttl_seconds: u64,
    /// Most challenges held (pending or finished, until they expire), in
    /// all (in memory; with Redis the bound is per tenant only).
    pub max_challenges: usize,
    /// Most challenges one tenant holds: past it that tenant's new
    /// challenges get 503 `too_many_challenges`, other tenants' go on.
    pub max_challenges_per_tenant: usize,
    /// Directory holding the signing keys (see `atb keys rotate`):
    /// `ed25519_privkey_pem` (active), optionally `ed25519_privkey_pem.next`,
    /// `ed25519_privkey_pem.previous` and `revoked_kids`.
    pub keys_dir: PathBuf,
    /// How often the key directory is re-read (rotation without restart).
    pub key_reload_seconds: u64,
    /// Requests per minute per agent identity (challenge, mandate, reads).
    pub agent_requests_per_minute: u32,
    /// Requests per minute per source address (every `/v1` route).
    pub address_requests_per_minute: u32,
    /// Requests per minute per approver identity.
    pub approver_requests_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed (IPs or CIDRs). Empty:
    /// the TCP peer address is the source address.
    pub trusted_proxies: Vec<String>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// At a stop, how long in-flight requests get to finish (idle
    /// connections are closed at once), and then queued audit events to be
    /// written. [AGENTAUTH_SHUTDOWN_GRACE_SECONDS]
    pub shutdown_grace_seconds: u64,
    /// Brokers' admin listeners (`http://host:8080`), told at once when the
    /// signing keys change (a rotation, an emergency revocation): each gets
    /// `POST /admin/jwks/refresh` with the admin token and re-reads
    /// AgentAuth's JWKS (and its `revoked_kids`) instead of waiting for its
    /// next refresh. [AGENTAUTH_BROKER_ADMIN_URLS, comma-separated]
    pub broker_admin_urls: Vec<String>,
    pub approvers: ApproverAuthConfig,
}

impl Default for AgentAuthConfig {
    fn default() -> Self {
        Self {
            listen_addr: ([0, 0, 0, 0], 8444).into(),
            admin_addr: ([0, 0, 0, 0], 8081).into(),
            issuer: "atb-agentauth".into(),
            audience: "atb-broker".into(),
            mandate_ttl_seconds: 300,
            max_mandate_ttl_seconds: MAX_MANDATE_TTL,
            challenge_ttl_seconds: 300,
            max_challenges: 100_000,
            max_challenges_per_tenant: 10_000,
            keys_dir: PathBuf::new(),
            key_reload_seconds: 10,
            agent_requests_per_minute: 120,
            address_requests_per_minute: 600,
            approver_requests_per_minute: 120,
            trusted_proxies: Vec::new(),
            max_body_bytes: 64 * 1024,
            workers: 0,
            shutdown_grace_seconds: 10,
            broker_admin_urls: Vec::new(),
            approvers: ApproverAuthConfig::default(),
        }
    }
}

/// How approvers authenticate: an OIDC ID/access token (JWT) from the
/// organisation's identity provider. Issuer, audience and expiry are always
/// checked; keys come from the IdP's JWKS and/or static PEM files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApproverAuthConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` (string or list member).
    pub audience: String,
    /// The IdP's JWKS (RSA, EC P-256 and Ed25519 keys are used).
    pub jwks_url: Option<String>,
    /// Static public keys (SubjectPublicKeyInfo PEM: RSA, EC P-256 or
    /// Ed25519); `kid` is the key's file stem.
    pub public_key_files: Vec<PathBuf>,
    /// Accepted `alg` values (never `none` or HMAC).
    pub algorithms: Vec<String>,
    /// Claim naming the approver (falls back to `email` when absent).
    pub identity_claim: String,
    /// Claim holding the approver's role(s): a string or a list of strings.
    pub role_claim: String,
    /// Claim naming the tenant(s) an approver is bound to (a string or a
    /// list). Approvers see and act on their own tenants' challenges only;
    /// a token without it approves nothing (unless `cross_tenant_roles`).
    pub tenant_claim: String,
    /// Roles that may act for every tenant (an operator's explicit choice;
    /// none by default).
    pub cross_tenant_roles: Vec<String>,
    /// Roles that count as executive for critical-risk approvals
    /// (compared case-insensitively).
    pub executive_roles: Vec<String>,
    /// Clock leeway for `exp`/`nbf`/`iat`, in seconds.
    pub leeway_seconds: u64,
    /// JWKS refresh interval, and the least time between refreshes caused
    /// by unknown `kid`s.
    pub jwks_refresh_seconds: u64,
    pub jwks_cooldown_seconds: u64,
}

/// The signature algorithms accepted by default for OIDC tokens (approver
/// and platform tokens alike): never `none` or HMAC.
pub fn default_oidc_algorithms() -> Vec<String> {
    ["RS256", "ES256", "EdDSA"].map(String::from).to_vec()
}

impl Default for ApproverAuthConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: None,
            public_key_files: Vec::new(),
            algorithms: default_oidc_algorithms(),
            identity_claim: "sub".into(),
            role_claim: "roles".into(),
            tenant_claim: "tenant".into(),
            cross_tenant_roles: Vec::new(),
            executive_roles: [
                "ceo",
                "cfo",
                "coo",
                "cto",
                "ciso",
                "board_member",
                "general_counsel",
                "chief_risk_officer",
            ]
            .map(String::from)
            .to_vec(),
            leeway_seconds: 30,
            jwks_refresh_seconds: 300,
            jwks_cooldown_seconds: 30,
        }
    }
}

/// The algorithms an approver token may use.
pub const APPROVER_ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

impl AgentAuthConfig {
    /// Environment overrides (documented in `config/atb.example.toml`).
    pub fn apply_env(&mut self, env: EnvLookup<'_>) -> Result<(), ConfigError> {
        let addr = "a socket address like 0.0.0.0:8444";
        if let Some(v) = env_parsed(env, "AGENTAUTH_LISTEN_ADDR", addr)? {
            self.listen_addr = v;
        }
        if let Some(v) = env_parsed(env, "AGENTAUTH_ADMIN_ADDR", addr)? {
            self.admin_addr = v;
        }
        if let Some(v) = env("POA_ISSUER") {
            self.issuer = v.trim().to_owned();
        }
        if let Some(v) = env("POA_AUDIENCE") {
            self.audience = v.trim().to_owned();
        }
        let secs = "a whole number of seconds";
        if let Some(v) = env_parsed(env, "POA_TTL_SECONDS", secs)? {
            self.mandate_ttl_seconds = v;
        }
        if let Some(v) = env_parsed(env, "CHALLENGE_TTL_SECONDS", secs)? {
            self.challenge_ttl_seconds = v;
        }
        if let Some(v) = env("AGENTAUTH_KEYS_DIR") {
            self.keys_dir = v.into();
        }
        if let Some(v) = env_parsed(env, "AGENTAUTH_KEY_RELOAD_SECONDS", secs)? {
            self.key_reload_seconds = v;
        }
        if let Some(v) = env_parsed(env, "AGENTAUTH_SHUTDOWN_GRACE_SECONDS", secs)? {
            self.shutdown_grace_seconds = v;
        }
        let n = "a whole number";
        if let Some(v) = env_parsed(env, "RATE_LIMIT_PER_AGENT", n)? {
            self.agent_requests_per_minute = v;
        }
        if let Some(v) = env_parsed(env, "RATE_LIMIT_PER_IP", n)? {
            self.address_requests_per_minute = v;
        }
        if let Some(v) = env("AGENTAUTH_BROKER_ADMIN_URLS") {
            self.broker_admin_urls = v
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = env("AGENTAUTH_TRUSTED_PROXIES") {
            self.trusted_proxies = split_list(&v);
        }
        let a = &mut self.approvers;
        if let Some(v) = env("APPROVER_JWT_ISSUER") {
            a.issuer = v.trim().to_owned();
        }
        if let Some(v) = env("APPROVER_JWT_AUDIENCE") {
            a.audience = v.trim().to_owned();
        }
        if let Some(v) = env("APPROVER_JWKS_URL") {
            a.jwks_url = Some(v.trim().to_owned()).filter(|u| !u.is_empty());
        }
        if let Some(v) = env("APPROVER_PUBLIC_KEY_FILES") {
            a.public_key_files = split_list(&v).into_iter().map(Into::into).collect();
        }
        if let Some(v) = env("APPROVER_ROLE_CLAIM") {
            a.role_claim = v.trim().to_owned();
        }
        if let Some(v) = env("APPROVER_EXECUTIVE_ROLES") {
            a.executive_roles = split_list(&v);
        }
        Ok(())
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = |name: &str| format!("agentauth.{name}");
        if self.listen_addr == self.admin_addr && self.listen_addr.port() != 0 {
            return Err(invalid(k("admin_addr"), "must differ from listen_addr"));
        }
        if self.issuer.trim().is_empty() {
            return Err(invalid(k("issuer"), "must not be empty"));
        }
        if self.audience.trim().is_empty() {
            return Err(invalid(k("audience"), "must not be empty"));
        }
        for (i, u) in self.broker_admin_urls.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://"))
                || u.parse::<actix_web::http::Uri>().is_err()
            {
                return Err(invalid(
                    k(&format!("broker_admin_urls[{i}]")),
                    format!("{u:?} must be an http:// or https:// URL"),
                ));
            }
        }
        if !(1..=MAX_MANDATE_TTL).contains(&self.max_mandate_ttl_seconds) {
            return Err(invalid(
                k("max_mandate_ttl_seconds"),
                format!("must be between 1 and {MAX_MANDATE_TTL}"),
            ));
        }
        if !(1..=self.max_mandate_ttl_seconds).contains(&self.mandate_ttl_seconds) {
            return Err(invalid(
                k("mandate_ttl_seconds"),
                "must be between 1 and max_mandate_ttl_seconds",
            ));
        }
        if !(10..=86_400).contains(&self.challenge_ttl_seconds) {
            return Err(invalid(
                k("challenge_ttl_seconds"),
                "must be between 10 and 86400",
            ));
        }
        if !(1..=10_000_000).contains(&self.max_challenges) {
            return Err(invalid(
                k("max_challenges"),
                "must be between 1 and 10000000",
            ));
        }
        if !(1..=10_000_000).contains(&self.max_challenges_per_tenant) {
            return Err(invalid(
                k("max_challenges_per_tenant"),
                "must be between 1 and 10000000",
            ));
        }
        if !(1..=3600).contains(&self.key_reload_seconds) {
            return Err(invalid(
                k("key_reload_seconds"),
                "must be between 1 and 3600",
            ));
        }
        for (name, v) in [
            ("agent_requests_per_minute", self.agent_requests_per_minute),
            (
                "address_requests_per_minute",
                self.address_requests_per_minute,
            ),
            (
                "approver_requests_per_minute",
                self.approver_requests_per_minute,
            ),
        ] {
            if v == 0 {
                return Err(invalid(k(name), "must be at least 1"));
            }
        }
        for p in &self.trusted_proxies {
            super::client_addr::parse_cidr(p)
                .map_err(|e| invalid(k("trusted_proxies"), e.to_string()))?;
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(invalid(
                k("max_body_bytes"),
                "must be between 1024 and 16777216",
            ));
        }
        if self.workers > 1024 {
            return Err(invalid(k("workers"), "must be at most 1024"));
        }
        let a = &self.approvers;
        let ak = |name: &str| format!("agentauth.approvers.{name}");
        for alg in &a.algorithms {
            if !APPROVER_ALGORITHMS.contains(&alg.as_str()) {
                return Err(invalid(
                    ak("algorithms"),
                    format!("{alg:?} is not one of {}", APPROVER_ALGORITHMS.join(", ")),
                ));
            }
        }
        if a.algorithms.is_empty() {
            return Err(invalid(ak("algorithms"), "must name at least one"));
        }
        if a.identity_claim.trim().is_empty() || a.role_claim.trim().is_empty() {
            return Err(invalid(
                ak("identity_claim"),
                "identity_claim and role_claim must not be empty",
            ));
        }
        if a.leeway_seconds > 300 {
            return Err(invalid(ak("leeway_seconds"), "must be at most 300"));
        }
        if a.jwks_cooldown_seconds < 5 || a.jwks_refresh_seconds < a.jwks_cooldown_seconds {
            return Err(invalid(
                ak("jwks_refresh_seconds"),
                "jwks_cooldown_seconds must be at least 5 and jwks_refresh_seconds at least the cooldown",
            ));
        }
        if let Some(url) = &a.jwks_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(ak("jwks_url"), "must be an http(s) URL"));
            }
        }
        Ok(())
    }

    /// Settings only `atb agentauth` needs (the broker ignores the section).
    pub fn validate_for_service(&self) -> Result<(), ConfigError> {
        self.validate()?;
        if self.keys_dir.as_os_str().is_empty() {
            return Err(invalid(
                "agentauth.keys_dir",
                "is required (the directory holding ed25519_privkey_pem)",
            ));
        }
        let a = &self.approvers;
        if a.issuer.trim().is_empty() {
            return Err(invalid(
                "agentauth.approvers.issuer",
                "is required: approvals are always authenticated",
            ));
        }
        if a.audience.trim().is_empty() {
            return Err(invalid(
                "agentauth.approvers.audience",
                "is required: approver tokens must be meant for AgentAuth",
            ));
        }
        if a.jwks_url.is_none() && a.public_key_files.is_empty() {
            return Err(invalid(
                "agentauth.approvers",
                "set jwks_url or public_key_files: approver tokens must be verifiable",
            ));
        }
        Ok(())
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_but_the_service_needs_keys_and_an_idp() {
        let c = AgentAuthConfig::default();
        c.validate().unwrap();
        let e = c.validate_for_service().unwrap_err().to_string();
        assert!(e.contains("agentauth.keys_dir"), "{e}");
        let mut c = c;
        c.keys_dir = "/keys".into();
        let e = c.validate_for_service().unwrap_err().to_string();
        assert!(e.contains("approvers.issuer"), "{e}");
        c.approvers.issuer = "https://idp".into();
        c.approvers.audience = "atb-agentauth".into();
        let e = c.validate_for_service().unwrap_err().to_string();
        assert!(e.contains("jwks_url or public_key_files"), "{e}");
        c.approvers.jwks_url = Some("https://idp/jwks".into());
        c.validate_for_service().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        type Mutation = fn(&mut AgentAuthConfig);
        let cases: Vec<(Mutation, &str)> = vec![
            (|c| c.mandate_ttl_seconds = 901, "mandate_ttl_seconds"),
            (
                |c| c.max_mandate_ttl_seconds = 1000,
                "max_mandate_ttl_seconds",
            ),
            (|c| c.challenge_ttl_seconds = 0, "challenge_ttl_seconds"),
            (
                |c| c.agent_requests_per_minute = 0,
                "agent_requests_per_minute",
            ),
            (
                |c| c.trusted_proxies = vec!["nope".into()],
                "trusted_proxies",
            ),
            (
                |c| c.approvers.algorithms = vec!["HS256".into()],
                "algorithms",
            ),
            (
                |c| c.approvers.algorithms = vec!["none".into()],
                "algorithms",
            ),
            (|c| c.issuer = " ".into(), "agentauth.issuer"),
        ];
        for (mutate, key) in cases {
            let mut c = AgentAuthConfig::default();
            mutate(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn env_overrides() {
        let mut c = AgentAuthConfig::default();
        let env = |k: &str| -> Option<String> {
            match k {
                "POA_TTL_SECONDS" => Some("120".into()),
                "AGENTAUTH_KEYS_DIR" => Some("/run/keys".into()),
                "APPROVER_JWT_ISSUER" => Some("https://idp.example".into()),
                "APPROVER_EXECUTIVE_ROLES" => Some("ceo, cfo".into()),
                "AGENTAUTH_TRUSTED_PROXIES" => Some("10.0.0.0/8,127.0.0.1".into()),
                "AGENTAUTH_SHUTDOWN_GRACE_SECONDS" => Some("25".into()),
                _ => None,
            }
        };
        assert_eq!(c.shutdown_grace_seconds, 10);
        c.apply_env(&env).unwrap();
        assert_eq!(c.shutdown_grace_seconds, 25);
        assert_eq!(c.mandate_ttl_seconds, 120);
        assert_eq!(c.keys_dir, PathBuf::from("/run/keys"));
        assert_eq!(c.approvers.issuer, "https://idp.example");
        assert_eq!(c.approvers.executive_roles, vec!["ceo", "cfo"]);
        assert_eq!(c.trusted_proxies.len(), 2);
        c.validate().unwrap();
        let bad = |k: &str| (k == "POA_TTL_SECONDS").then(|| "five".to_string());
        assert!(c.apply_env(&bad).is_err());
    }
}
