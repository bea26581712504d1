//! One typed configuration: a TOML file, then environment overrides, then
//! validation with messages that name the offending key.
//!
//! Every key is documented in `config/atb.example.toml`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod env;
pub mod error;

use crate::audit::config::{AuditConfig, AuditSinkKind};
use crate::broker::config::{AdminConfig, BrokerConfig, DebugConfig, ShardsConfig, UpstreamConfig};
use crate::poa::config::PoaConfig;
use crate::policy::config::{PolicyConfig, PolicyEngine};
use crate::runtime::logging::{LogFormat, LoggingConfig};
use crate::runtime::tls::TlsConfig;
use crate::spiffe::{self, SpiffeId};
use crate::tenant::TenantConfig;
use env::{env_choice, env_flag, env_parsed, EnvLookup};
pub use error::{invalid, ConfigError};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: BrokerConfig,
    pub tls: TlsConfig,
    pub logging: LoggingConfig,
    pub shards: ShardsConfig,
    pub admin: AdminConfig,
    pub debug: DebugConfig,
    pub poa: PoaConfig,
    pub policy: PolicyConfig,
    pub upstream: UpstreamConfig,
    pub audit: AuditConfig,
    pub tenants: Vec<TenantConfig>,
    pub agentauth: crate::agentauth::config::AgentAuthConfig,
    /// Shared state for several replicas; absent = in memory.
    pub redis: Option<crate::store::config::RedisConfig>,
    /// Limits on every Biscuit the broker reads.
    pub biscuit: crate::biscuit::config::BiscuitConfig,
}

impl Config {
    /// Reads `path` (if given), applies environment overrides and validates.
    pub fn load(path: Option<&Path>, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(p) => Self::from_file(p)?,
            None => Self::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML file without validating it.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Parses TOML text without validating it.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Applies the documented environment overrides (names follow the
    /// operator guide where it has one).
    pub fn apply_env(&mut self, env: EnvLookup<'_>) -> Result<(), ConfigError> {
        let addr = "a socket address like 0.0.0.0:8443";
        if let Some(v) = env_parsed(env, "LISTEN_ADDR", addr)? {
            self.broker.listen_addr = v;
        }
        if let Some(v) = env_parsed(env, "HTTP_LISTEN_ADDR", addr)? {
            self.broker.admin_addr = v;
        }
        if let Some(v) = env_flag(env, "MAINTENANCE_MODE")? {
            self.broker.maintenance_mode = v;
        }
        if let Some(v) = env_parsed(env, "ATB_WORKERS", "a whole number")? {
            self.broker.workers = v;
        }
        if let Some(v) = env_parsed(env, "ATB_DRAIN_DELAY_SECONDS", "a whole number of seconds")? {
            self.broker.drain_delay_seconds = v;
        }
        if let Some(v) = env_parsed(env, "ATB_CONFIG_WATCH_SECONDS", "a whole number of seconds")? {
            self.broker.config_watch_seconds = v;
        }
        if let Some(v) = env_parsed(
            env,
            "ATB_SHUTDOWN_GRACE_SECONDS",
            "a whole number of seconds",
        )? {
            self.broker.shutdown_grace_seconds = v;
        }
        if let Some(v) = env("TLS_CERT_FILE") {
            self.tls.cert_file = v.into();
        }
        if let Some(v) = env("TLS_KEY_FILE") {
            self.tls.key_file = v.into();
        }
        if let Some(v) = env("TLS_CLIENT_CA_FILE") {
            self.tls.client_ca_file = v.into();
        }
        if let Some(v) = env("TLS_OUTBOUND_CA_FILE") {
            self.tls.outbound_ca_file = Some(v.into());
        }
        if let Some(v) = env_choice(
            env,
            "AUDIT_SINK",
            &[
                ("stdout", AuditSinkKind::Stdout),
                ("file", AuditSinkKind::File),
                ("http", AuditSinkKind::Http),
            ],
        )? {
            self.audit.sink = v;
        }
        if let Some(v) = env("AUDIT_FILE") {
            self.audit.file = v.into();
        }
        if let Some(v) = env("AUDIT_SINK_URL") {
            self.audit.http_url = v.trim().to_owned();
        }
        if let Some(v) = env("AUDIT_SINK_AUTH") {
            self.audit.http_authorization = Some(v);
        }
        if let Some(v) = env_choice(
            env,
            "LOG_FORMAT",
            &[("json", LogFormat::Json), ("text", LogFormat::Text)],
        )? {
            self.logging.format = v;
        }
        if let Some(v) = env("LOG_LEVEL") {
            self.logging.level = v;
        }
        if let Some(v) = env_parsed(env, "ATB_SHARDS", "a whole number")? {
            self.shards.count = v;
        }
        if let Some(v) = env("ATB_ADMIN_TOKEN") {
            self.admin.token = Some(v);
        }
        if let Some(v) = env_parsed(env, "POA_JWKS_CACHE_SECONDS", "a whole number of seconds")? {
            self.poa.jwks_refresh_seconds = v;
        }
        if let Some(v) = env_flag(env, "POA_SINGLE_USE")? {
            self.poa.single_use = v;
        }
        if let Some(v) = env_choice(
            env,
            "POLICY_ENGINE",
            &[
                ("embedded", PolicyEngine::Embedded),
                ("opa", PolicyEngine::Opa),
            ],
        )? {
            self.policy.engine = v;
        }
        if let Some(v) = env("OPA_DECISION_URL") {
            self.policy.opa_decision_url = v.trim().to_owned();
        }
        if let Some(v) = env("POLICY_DIR") {
            self.policy.dir = Some(v.into());
        }
        if let Some(v) = env_parsed(env, "POLICY_RELOAD_SECONDS", "a whole number of seconds")? {
            self.policy.reload_seconds = v;
        }
        if let Some(v) = env_parsed(env, "ATB_BODY_TIMEOUT_SECONDS", "a whole number of seconds")? {
            self.upstream.body_timeout_seconds = v;
        }
        if let Some(v) = env_flag(env, "ATB_DEBUG_FAULT_INJECTION")? {
            self.debug.fault_injection = v;
        }
        self.agentauth.apply_env(env)?;
        crate::store::config::RedisConfig::apply_env(&mut self.redis, env)?;
        Ok(())
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let b = &self.broker;
        if b.listen_addr == b.admin_addr && b.listen_addr.port() != 0 {
            return Err(invalid(
                "broker.admin_addr",
                "must differ from broker.listen_addr",
            ));
        }
        if b.retry_after_seconds == 0 || b.retry_after_seconds > 3600 {
            return Err(invalid(
                "broker.retry_after_seconds",
                "must be between 1 and 3600",
            ));
        }
        if b.workers > 1024 {
            return Err(invalid("broker.workers", "must be at most 1024"));
        }
        if b.client_request_timeout_seconds == 0 {
            return Err(invalid(
                "broker.client_request_timeout_seconds",
                "must be at least 1",
            ));
        }
        if b.max_connections_per_worker == 0 {
            return Err(invalid(
                "broker.max_connections_per_worker",
                "must be at least 1",
            ));
        }
        for (key, path) in [
            ("tls.cert_file", &self.tls.cert_file),
            ("tls.key_file", &self.tls.key_file),
            ("tls.client_ca_file", &self.tls.client_ca_file),
        ] {
            if path.as_os_str().is_empty() {
                return Err(invalid(
                    key,
                    "is required (client certificates are always verified)",
                ));
            }
        }
        if self.audit.sink == AuditSinkKind::File && self.audit.file.as_os_str().is_empty() {
            return Err(invalid(
                "audit.file",
                "is required when audit.sink = \"file\"",
            ));
        }
        if self.audit.sink == AuditSinkKind::Http
            && !(self.audit.http_url.starts_with("http://")
                || self.audit.http_url.starts_with("https://"))
        {
            return Err(invalid(
                "audit.http_url",
                "must be an http:// or https:// URL when audit.sink = \"http\"",
            ));
        }
        if self.audit.queue_capacity == 0 {
            return Err(invalid("audit.queue_capacity", "must be at least 1"));
        }
        if self.audit.batch_linger_ms > 1_000 {
            return Err(invalid(
                "audit.batch_linger_ms",
                "must be at most 1000 (it is how late an audit line may be)",
            ));
        }
        if self.audit.queue_per_tenant == 0 {
            return Err(invalid("audit.queue_per_tenant", "must be at least 1"));
        }
        if self.logging.level.trim().is_empty() {
            return Err(invalid("logging.level", "must not be empty"));
        }
        if self.shards.count > 256 {
            return Err(invalid("shards.count", "must be at most 256"));
        }
        if self.shards.mailbox_capacity == 0 || self.shards.mailbox_capacity > 1_000_000 {
            return Err(invalid(
                "shards.mailbox_capacity",
                "must be between 1 and 1000000",
            ));
        }
        if self.shards.dedicated.len() > 64 {
            return Err(invalid("shards.dedicated", "at most 64 dedicated shards"));
        }
        if let Some(t) = &self.admin.token {
            if t.trim().len() < 16 {
                return Err(invalid(
                    "admin.token",
                    "must be at least 16 characters (or leave it unset to disable the admin API)",
                ));
            }
        }
        let p = &self.poa;
        if p.leeway_seconds > 300 {
            return Err(invalid("poa.leeway_seconds", "must be at most 300"));
        }
        if p.replay_capacity == 0 {
            return Err(invalid("poa.replay_capacity", "must be at least 1"));
        }
        if p.replay_sweep_seconds == 0 {
            return Err(invalid("poa.replay_sweep_seconds", "must be at least 1"));
        }
        if p.jwks_cooldown_seconds < 30 {
            return Err(invalid("poa.jwks_cooldown_seconds", "must be at least 30"));
        }
        if p.jwks_refresh_seconds < p.jwks_cooldown_seconds {
            return Err(invalid(
                "poa.jwks_refresh_seconds",
                "must be at least poa.jwks_cooldown_seconds",
            ));
        }
        if p.jwks_stale_seconds < p.jwks_refresh_seconds {
            return Err(invalid(
                "poa.jwks_stale_seconds",
                "must be at least poa.jwks_refresh_seconds",
            ));
        }
        if p.jwks_timeout_ms == 0 || p.jwks_negative_seconds == 0 {
            return Err(invalid(
                "poa.jwks_timeout_ms",
                "JWKS timings must be above 0",
            ));
        }
        let pol = &self.policy;
        if pol.queue_capacity == 0 {
            return Err(invalid("policy.queue_capacity", "must be at least 1"));
        }
        if pol.queue_per_tenant == 0 {
            return Err(invalid("policy.queue_per_tenant", "must be at least 1"));
        }
        if pol.threads > 256 {
            return Err(invalid("policy.threads", "must be at most 256"));
        }
        if pol.eval_timeout_ms == 0 || pol.opa_timeout_ms == 0 {
            return Err(invalid(
                "policy.eval_timeout_ms",
                "timeouts must be at least 1 ms",
            ));
        }
        if pol.engine == PolicyEngine::Opa {
            validate_upstream_url(&pol.opa_decision_url)
                .map_err(|m| invalid("policy.opa_decision_url", m))?;
            if let Some(u) = &pol.opa_health_url {
                validate_upstream_url(u).map_err(|m| invalid("policy.opa_health_url", m))?;
            }
        }
        if self.upstream.body_timeout_seconds == 0 || self.upstream.body_timeout_seconds > 3600 {
            return Err(invalid(
                "upstream.body_timeout_seconds",
                "must be between 1 and 3600",
            ));
        }
        if self.upstream.connect_timeout_seconds == 0 {
            return Err(invalid(
                "upstream.connect_timeout_seconds",
                "must be at least 1",
            ));
        }
        self.agentauth.validate()?;
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        self.biscuit.validate()?;
        self.validate_tenants()?;
        self.validate_operators()
    }

    /// The tenants' own client CA bundles, each with its config key: the
    /// agent listener's handshake trusts them next to `tls.client_ca_file`.
    pub fn tenant_client_cas(&self) -> Vec<(String, std::path::PathBuf)> {
        self.tenants
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let path = t.client_ca_file.clone()?;
                Some((format!("tenants[{i}].client_ca_file"), path))
            })
            .collect()
    }

    /// Each tenant's share of the replay cache: its `poa.replay_quota`, or
    /// an equal share (at least 1) of what the explicit quotas leave of
    /// `poa.replay_capacity`.
    pub fn replay_quotas(&self) -> HashMap<String, usize> {
        let explicit: usize = self.tenants.iter().filter_map(|t| t.poa.replay_quota).sum();
        let others = self
            .tenants
            .iter()
            .filter(|t| t.poa.replay_quota.is_none())
            .count();
        let share = (self.poa.replay_capacity.saturating_sub(explicit) / others.max(1)).max(1);
        self.tenants
            .iter()
            .map(|t| (t.id.clone(), t.poa.replay_quota.unwrap_or(share)))
            .collect()
    }

    /// Operator identities are SPIFFE IDs that no tenant owns (an agent
    /// can never act as an operator), served on their own listener.
    fn validate_operators(&self) -> Result<(), ConfigError> {
        let a = &self.admin;
        if a.operator_ids.is_empty() {
            return Ok(());
        }
        let Some(addr) = a.operator_listen_addr else {
            return Err(invalid(
                "admin.operator_listen_addr",
                "is required when admin.operator_ids is set",
            ));
        };
        if addr == self.broker.listen_addr || addr == self.broker.admin_addr {
            return Err(invalid(
                "admin.operator_listen_addr",
                "must differ from broker.listen_addr and broker.admin_addr",
            ));
        }
        let directory = crate::tenant::TenantDirectory::new(&self.tenants);
        for (i, id) in a.operator_ids.iter().enumerate() {
            let key = format!("admin.operator_ids[{i}]");
            let parsed = SpiffeId::parse(id).map_err(|e| invalid(&key, e.to_string()))?;
            if let Some(t) = directory.resolve(&parsed) {
                return Err(invalid(
                    key,
                    format!(
                        "{id:?} belongs to tenant {:?}: an agent cannot be an operator",
                        t.id
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_tenants(&self) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        let mut domains: HashMap<&str, &str> = HashMap::new();
        let mut prefixes: Vec<(SpiffeId, &str)> = Vec::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let key = |field: &str| format!("tenants[{i}].{field}");
            if !valid_id(&t.id) {
                return Err(invalid(
                    key("id"),
                    format!("{:?} must be 1-63 characters of a-z, 0-9, '-', '_', '.', starting with a letter or digit", t.id),
                ));
            }
            if !ids.insert(t.id.as_str()) {
                return Err(invalid(
                    key("id"),
                    format!("duplicate tenant id {:?}", t.id),
                ));
            }
            match (&t.trust_domain, &t.spiffe_prefix) {
                (Some(td), None) => {
                    spiffe::validate_trust_domain(td)
                        .map_err(|e| invalid(key("trust_domain"), e.to_string()))?;
                    if let Some(other) = domains.insert(td, &t.id) {
                        return Err(invalid(
                            key("trust_domain"),
                            format!("{td:?} is already the trust domain of tenant {other:?}"),
                        ));
                    }
                }
                (None, Some(prefix)) => {
                    let id = SpiffeId::parse(prefix.trim_end_matches('/'))
                        .map_err(|e| invalid(key("spiffe_prefix"), e.to_string()))?;
                    if id.path().is_empty() {
                        return Err(invalid(
                            key("spiffe_prefix"),
                            "must have a path; use trust_domain to map a whole trust domain",
                        ));
                    }
                    prefixes.push((id, &t.id));
                }
                _ => {
                    return Err(invalid(
                        format!("tenants[{i}]"),
                        "set exactly one of trust_domain or spiffe_prefix",
                    ))
                }
            }
            if let Some(path) = &t.client_ca_file {
                crate::runtime::ca_bundle::CaBundle::load(path)
                    .map_err(|e| invalid(key("client_ca_file"), e.to_string()))?;
            }
            if t.max_connections == 0 {
                return Err(invalid(key("max_connections"), "must be at least 1"));
            }
            if t.max_in_flight == 0 {
                return Err(invalid(key("max_in_flight"), "must be at least 1"));
            }
            check_rate(&key("requests_per_second"), t.requests_per_second)?;
            if t.burst == 0 {
                return Err(invalid(key("burst"), "must be at least 1"));
            }
            if t.poa.max_ttl_seconds == 0 || t.poa.max_ttl_seconds > 900 {
                return Err(invalid(
                    key("poa.max_ttl_seconds"),
                    "must be between 1 and 900",
                ));
            }
            for (k, o) in t.agent_owners.iter().enumerate() {
                let okey = |f: &str| format!("tenants[{i}].agent_owners[{k}].{f}");
                SpiffeId::parse(o.agent.trim_end_matches('/'))
                    .map_err(|e| invalid(okey("agent"), e.to_string()))?;
                if o.owners.is_empty() || o.owners.iter().any(|p| p.trim().is_empty()) {
                    return Err(invalid(
                        okey("owners"),
                        "must list at least one owner, none of them empty",
                    ));
                }
            }
            if t.poa.replay_quota == Some(0) {
                return Err(invalid(key("poa.replay_quota"), "must be at least 1"));
            }
            if let Some(d) = &t.policy_data {
                if !d.is_object() {
                    return Err(invalid(key("policy_data"), "must be a table"));
                }
                crate::policy::data::validate_tenant(&t.id, d)
                    .map_err(|e| invalid(key("policy_data"), e))?;
            }
            if let Some(url) = &t.poa.jwks_url {
                validate_upstream_url(url).map_err(|m| invalid(key("poa.jwks_url"), m))?;
            }
            if let Some(p) = &t.platform {
                validate_platform(p, &key)?;
            }
            if let Some(b) = &t.biscuit {
                // AgentAuth's Biscuit key comes as a pair. The file itself is
                // read (and matched against root_keys) by AgentAuth at start
                // and by `atb agentauth --check`: a broker sharing this file
                // needs no access to AgentAuth's private key.
                match (&b.agentauth_key_file, b.agentauth_root_key_id) {
                    (Some(_), None) => {
                        return Err(invalid(
                            key("biscuit.agentauth_root_key_id"),
                            "is required with agentauth_key_file",
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(invalid(
                            key("biscuit.agentauth_key_file"),
                            "is required with agentauth_root_key_id",
                        ))
                    }
                    _ => {}
                }
            }
            if !t.policy_files.is_empty() {
                if self.policy.engine != crate::policy::config::PolicyEngine::Embedded {
                    return Err(invalid(
                        key("policy_files"),
                        "needs policy.engine = \"embedded\" (a remote OPA loads its own modules)",
                    ));
                }
                if !crate::policy::embedded::is_rego_identifier(&t.id) {
                    return Err(invalid(
                        key("policy_files"),
                        format!(
                            "the tenant id {:?} must be a Rego identifier (a-z, 0-9, _; not starting with a digit) to name its package atb.tenants.<id>",
                            t.id
                        ),
                    ));
                }
            }
            let catalogue = crate::catalog::TenantCatalogue::new(t.policy_data.as_ref())
                .map_err(|e| invalid(key("policy_data"), e.to_string()))?;
            let mut connector_ids = HashSet::new();
            for (j, c) in t.connectors.iter().enumerate() {
                let ckey = |field: &str| format!("tenants[{i}].connectors[{j}].{field}");
                if !valid_id(&c.id) {
                    return Err(invalid(ckey("id"), format!("{:?} is not a valid id", c.id)));
                }
                if !connector_ids.insert(c.id.as_str()) {
                    return Err(invalid(
                        ckey("id"),
                        format!("duplicate connector id {:?}", c.id),
                    ));
                }
                validate_upstream_url(&c.upstream_url)
                    .map_err(|m| invalid(ckey("upstream_url"), m))?;
                for (k, p) in c.egress_allowlist.iter().enumerate() {
                    if !p.starts_with('/') || p.contains("..") || p.contains("//") {
                        return Err(invalid(
                            format!("tenants[{i}].connectors[{j}].egress_allowlist[{k}]"),
                            format!("{p:?} must be an absolute path prefix without '..' or '//'"),
                        ));
                    }
                }
                if c.timeout_seconds == 0 || c.timeout_seconds > 3600 {
                    return Err(invalid(
                        ckey("timeout_seconds"),
                        "must be between 1 and 3600",
                    ));
                }
                if let Some(rl) = &c.rate_limit {
                    check_rate(
                        &ckey("rate_limit.requests_per_second"),
                        rl.requests_per_second,
                    )?;
                    if rl.burst == 0 {
                        return Err(invalid(ckey("rate_limit.burst"), "must be at least 1"));
                    }
                }
                crate::routes::Binding::compile(
                    &c.routes,
                    &catalogue,
                    &format!("tenants[{i}].connectors[{j}]"),
                )
                .map_err(|e| invalid(e.key, e.reason))?;
            }
        }
        for (i, t) in self.tenants.iter().enumerate() {
            if let Some(d) = &t.default_connector {
                if !t.connectors.iter().any(|c| &c.id == d) {
                    return Err(invalid(
                        format!("tenants[{i}].default_connector"),
                        format!("{d:?} is not one of the tenant's connectors"),
                    ));
                }
            }
        }
        // A prefix tenant inside another tenant's trust domain, or nested
        // prefixes, would make ownership of an agent ambiguous.
        for (a, (pa, ta)) in prefixes.iter().enumerate() {
            if let Some(owner) = domains.get(pa.trust_domain()) {
                return Err(invalid(
                    format!("tenant {ta:?} spiffe_prefix"),
                    format!(
                        "lies in trust domain {:?}, which belongs to tenant {owner:?}",
                        pa.trust_domain()
                    ),
                ));
            }
            for (pb, tb) in prefixes.iter().skip(a + 1) {
                if pa.is_under(pb.as_str()) || pb.is_under(pa.as_str()) {
                    return Err(invalid(
                        format!("tenant {tb:?} spiffe_prefix"),
                        format!("overlaps the spiffe_prefix of tenant {ta:?}"),
                    ));
                }
            }
        }
        let explicit: usize = self
            .tenants
            .iter()
            .filter_map(|t| t.poa.replay_quota)
            .fold(0usize, usize::saturating_add);
        if explicit > self.poa.replay_capacity {
            return Err(invalid(
                "tenants[].poa.replay_quota",
                format!(
                    "the quotas add up to {explicit}, more than poa.replay_capacity {}: one tenant could take another's room",
                    self.poa.replay_capacity
                ),
            ));
        }
        for (k, d) in self.shards.dedicated.iter().enumerate() {
            if !ids.contains(d.as_str()) {
                return Err(invalid(
                    format!("shards.dedicated[{k}]"),
                    format!("{d:?} is not a configured tenant id"),
                ));
            }
        }
        Ok(())
    }
}

fn check_rate(key: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 && v <= 1_000_000.0 {
        Ok(())
    } else {
        Err(invalid(key, "must be a number above 0 and at most 1000000"))
    }
}

fn validate_upstream_url(url: &str) -> Result<(), String> {
    let uri: actix_web::http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{url:?} must use http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?} must not carry a query"));
    }
    Ok(())
}

/// Tenant and connector ids: lower-case, short, safe in labels and keys.
pub fn valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// A tenant's `[tenants.platform]`: issuer, audience, a key source and
/// only asymmetric algorithms.
fn validate_platform(
    p: &crate::tenant::PlatformConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if p.issuer.trim().is_empty() {
        return Err(invalid(key("platform.issuer"), "is required"));
    }
    if p.audience.trim().is_empty() {
        return Err(invalid(key("platform.audience"), "is required"));
    }
    if p.jwks_url.is_none() && p.public_key_files.is_empty() {
        return Err(invalid(
            key("platform"),
            "set jwks_url and/or public_key_files",
        ));
    }
    if let Some(url) = &p.jwks_url {
        validate_upstream_url(url).map_err(|m| invalid(key("platform.jwks_url"), m))?;
    }
    if p.algorithms.is_empty() {
        return Err(invalid(
            key("platform.algorithms"),
            "must name at least one",
        ));
    }
    for a in &p.algorithms {
        if !crate::agentauth::config::APPROVER_ALGORITHMS.contains(&a.as_str()) {
            return Err(invalid(
                key("platform.algorithms"),
                format!("{a:?} is not accepted (RS256, ES256 or EdDSA; never none or HMAC)"),
            ));
        }
    }
    if p.leeway_seconds > 300 {
        return Err(invalid(
            key("platform.leeway_seconds"),
            "must be at most 300",
        ));
    }
    if p.subject_claim.trim().is_empty() {
        return Err(invalid(key("platform.subject_claim"), "is required"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A tenant with defaults, mapped by trust domain `{id}.example`.
    pub fn tenant(id: &str) -> TenantConfig {
        Config::from_toml(&format!(
            "[[tenants]]\nid = \"{id}\"\ntrust_domain = \"{id}.example\"\n"
        ))
        .map(|mut c| c.tenants.remove(0))
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env::parse_bool;
    use std::path::PathBuf;

    const MINIMAL: &str = r#"
        [tls]
        cert_file = "s.crt"
        key_file = "s.key"
        client_ca_file = "ca.crt"

        [[tenants]]
        id = "acme"
        trust_domain = "acme.example"

        [[tenants]]
        id = "globex"
        spiffe_prefix = "spiffe://saas.example/tenants/globex"
        max_connections = 4
        [[tenants.connectors]]
        id = "crm"
        upstream_url = "http://127.0.0.1:9000/base"
        egress_allowlist = ["/api/"]
        rate_limit = { requests_per_second = 5, burst = 10 }
    "#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Config {
        Config::from_toml(text).unwrap()
    }

    fn err(config: &Config) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn minimal_file_is_valid_and_defaults_apply() {
        let c = parse(MINIMAL);
        c.validate().unwrap();
        assert_eq!(c.broker.listen_addr.port(), 8443);
        assert_eq!(c.broker.admin_addr.port(), 8080);
        assert!(!c.broker.maintenance_mode);
        assert_eq!(c.logging.format, LogFormat::Json);
        assert!(c.tenants[0].enabled);
        assert_eq!(c.tenants[1].max_connections, 4);
        assert_eq!(c.tenants[1].connectors[0].egress_allowlist, vec!["/api/"]);
    }

    #[test]
    fn operator_identities_are_checked() {
        let mut c = parse(MINIMAL);
        c.admin.operator_ids = vec!["spiffe://ops.example/admin".into()];
        assert!(
            err(&c).contains("admin.operator_listen_addr"),
            "{}",
            err(&c)
        );
        c.admin.operator_listen_addr = Some(c.broker.admin_addr);
        assert!(err(&c).contains("must differ"), "{}", err(&c));
        c.admin.operator_listen_addr = Some(([127, 0, 0, 1], 9443).into());
        c.validate().unwrap();
        c.admin.operator_ids.push("not a spiffe id".into());
        assert!(err(&c).contains("admin.operator_ids[1]"), "{}", err(&c));
        // An identity a tenant owns would let that tenant's agent operate.
        let td = c.tenants[0].trust_domain.clone().unwrap();
        c.admin.operator_ids[1] = format!("spiffe://{td}/ops");
        assert!(
            err(&c).contains("an agent cannot be an operator"),
            "{}",
            err(&c)
        );
    }

    #[test]
    fn replay_quotas_share_the_capacity() {
        let mut c = Config::from_toml(
            "[tls]\ncert_file = \"s.crt\"\nkey_file = \"s.key\"\nclient_ca_file = \"ca.crt\"\n[poa]\nreplay_capacity = 100\n[[tenants]]\nid = \"a\"\ntrust_domain = \"a.example\"\n[tenants.poa]\nreplay_quota = 40\n[[tenants]]\nid = \"b\"\ntrust_domain = \"b.example\"\n[[tenants]]\nid = \"c\"\ntrust_domain = \"c.example\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let q = c.replay_quotas();
        assert_eq!((q["a"], q["b"], q["c"]), (40, 30, 30));
        c.tenants[1].poa.replay_quota = Some(61);
        assert!(err(&c).contains("replay_quota"), "{}", err(&c));
        c.tenants[1].poa.replay_quota = Some(0);
        assert!(err(&c).contains("tenants[1].poa.replay_quota"));
    }

    #[test]
    fn example_file_in_repo_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/atb.example.toml");
        let c = Config::from_file(&path).unwrap();
        c.validate().unwrap();
        c.agentauth.validate_for_service().unwrap();
        assert!(!c.tenants.is_empty());
    }

    #[test]
    fn audit_sink_settings_are_checked() {
        let file_without_path = parse(&format!("{MINIMAL}\n[audit]\nsink = \"file\"\n"));
        assert!(err(&file_without_path).contains("audit.file"));
        let http_without_url = parse(&format!("{MINIMAL}\n[audit]\nsink = \"http\"\n"));
        assert!(err(&http_without_url).contains("audit.http_url"));
        let http = parse(&format!(
            "{MINIMAL}\n[audit]\nsink = \"http\"\nhttp_url = \"https://collector.example/ingest\"\n"
        ));
        http.validate().unwrap();
        let mut c = parse(MINIMAL);
        let env = |k: &str| match k {
            "AUDIT_SINK" => Some("file".to_string()),
            "AUDIT_FILE" => Some("/var/log/atb/audit.jsonl".to_string()),
            _ => None,
        };
        c.apply_env(&env).unwrap();
        assert_eq!(c.audit.sink, AuditSinkKind::File);
        c.validate().unwrap();
        let bad = |k: &str| (k == "AUDIT_SINK").then(|| "syslog".to_string());
        assert!(c
            .apply_env(&bad)
            .unwrap_err()
            .to_string()
            .contains("AUDIT_SINK"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("[broker]\nlisten_adr = \"0.0.0.0:1\"\n").unwrap_err();
        assert!(e.to_string().contains("listen_adr"), "{e}");
    }

    #[test]
    fn env_overrides_use_operator_names() {
        let mut c = parse(MINIMAL);
        let env = |k: &str| match k {
            "MAINTENANCE_MODE" => Some("true".to_string()),
            "LISTEN_ADDR" => Some("127.0.0.1:9443".to_string()),
            "LOG_FORMAT" => Some("text".to_string()),
            "TLS_CLIENT_CA_FILE" => Some("/etc/ca.pem".to_string()),
            _ => None,
        };
        c.apply_env(&env).unwrap();
        assert!(c.broker.maintenance_mode);
        assert_eq!(c.broker.listen_addr.port(), 9443);
        assert_eq!(c.logging.format, LogFormat::Text);
        assert_eq!(c.tls.client_ca_file, PathBuf::from("/etc/ca.pem"));
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let mut c = parse(MINIMAL);
        let env = |k: &str| (k == "MAINTENANCE_MODE").then(|| "maybe".to_string());
        let e = c.apply_env(&env).unwrap_err().to_string();
        assert!(e.contains("MAINTENANCE_MODE") && e.contains("maybe"), "{e}");
        let env = |k: &str| (k == "LISTEN_ADDR").then(|| ":8443".to_string());
        let e = c.apply_env(&env).unwrap_err().to_string();
        assert!(e.contains("LISTEN_ADDR"), "{e}");
        let env = |k: &str| (k == "POLICY_ENGINE").then(|| "wasm".to_string());
        let e = c.apply_env(&env).unwrap_err().to_string();
        assert!(
            e.contains("POLICY_ENGINE") && e.contains("embedded, opa"),
            "{e}"
        );
        let env = |k: &str| (k == "POLICY_ENGINE").then(|| " OPA ".to_string());
        c.apply_env(&env).unwrap();
        assert_eq!(c.policy.engine, PolicyEngine::Opa);
    }

    #[test]
    fn tls_files_are_required() {
        let c = Config::load(None, &no_env).unwrap_err().to_string();
        assert!(c.contains("tls.cert_file"), "{c}");
    }

    #[test]
    fn tenant_errors_name_the_key() {
        let mut c = parse(MINIMAL);
        c.tenants[0].id = "Acme!".into();
        assert!(err(&c).contains("tenants[0].id"));

        let mut c = parse(MINIMAL);
        c.tenants[1].id = "acme".into();
        assert!(err(&c).contains("duplicate tenant id"));

        let mut c = parse(MINIMAL);
        c.tenants[0].spiffe_prefix = Some("spiffe://x/y".into());
        assert!(err(&c).contains("exactly one of trust_domain or spiffe_prefix"));

        let mut c = parse(MINIMAL);
        c.tenants[0].trust_domain = Some("Bad_Domain".into());
        assert!(err(&c).contains("tenants[0].trust_domain"));

        let mut c = parse(MINIMAL);
        c.tenants[1].spiffe_prefix = Some("spiffe://saas.example/tenants/../x".into());
        assert!(err(&c).contains("tenants[1].spiffe_prefix"));

        let mut c = parse(MINIMAL);
        c.tenants[1].connectors[0].upstream_url = "ftp://x".into();
        assert!(err(&c).contains("tenants[1].connectors[0].upstream_url"));

        let mut c = parse(MINIMAL);
        c.tenants[1].connectors[0].egress_allowlist = vec!["api/../admin".into()];
        assert!(err(&c).contains("egress_allowlist[0]"));

        let mut c = parse(MINIMAL);
        c.tenants[1].requests_per_second = f64::NAN;
        assert!(err(&c).contains("tenants[1].requests_per_second"));

        let mut c = parse(MINIMAL);
        c.shards.dedicated = vec!["nobody".into()];
        assert!(err(&c).contains("shards.dedicated[0]"));
    }

    #[test]
    fn ambiguous_tenant_ownership_is_rejected() {
        let mut c = parse(MINIMAL);
        c.tenants[1].spiffe_prefix = Some("spiffe://acme.example/team".into());
        assert!(
            err(&c).contains("belongs to tenant \"acme\""),
            "{}",
            err(&c)
        );

        let mut c = parse(MINIMAL);
        let mut nested = c.tenants[1].clone();
        nested.id = "nested".into();
        nested.spiffe_prefix = Some("spiffe://saas.example/tenants/globex/sub".into());
        c.tenants.push(nested);
        assert!(err(&c).contains("overlaps"), "{}", err(&c));

        let mut c = parse(MINIMAL);
        let mut dup = c.tenants[0].clone();
        dup.id = "acme2".into();
        c.tenants.push(dup);
        assert!(err(&c).contains("already the trust domain"));
    }

    #[test]
    fn admin_token_must_be_long_enough() {
        let mut c = parse(MINIMAL);
        c.admin.token = Some("short".into());
        assert!(err(&c).contains("admin.token"));
    }

    #[test]
    fn bools_and_ids() {
        assert_eq!(parse_bool(" Yes "), Some(true));
        assert_eq!(parse_bool("off"), Some(false));
        assert_eq!(parse_bool("2"), None);
        assert!(valid_id("acme-1.prod_x"));
        assert!(!valid_id("-acme"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"a".repeat(64)));
    }
}

#[cfg(test)]
mod platform_and_tenant_policy_tests {
    use super::*;

    const TENANT: &str = "[[tenants]]\nid = \"acme\"\ntrust_domain = \"acme.example\"\n";

    fn check(toml: &str) -> String {
        let tls =
            "[tls]\ncert_file = \"s.crt\"\nkey_file = \"s.key\"\nclient_ca_file = \"ca.crt\"\n";
        match Config::from_toml(&format!("{tls}{toml}")) {
            Err(e) => e.to_string(),
            Ok(c) => c
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        }
    }

    fn error(extra: &str) -> String {
        check(&format!("{TENANT}{extra}"))
    }

    #[test]
    fn platform_issuers_are_validated_with_their_keys_named() {
        let ok = "[tenants.platform]\nissuer = \"https://idp\"\naudience = \"atb\"\njwks_url = \"https://idp/keys\"\n";
        assert_eq!(error(ok), "");
        for (toml, key) in [
            ("[tenants.platform]\naudience = \"a\"\njwks_url = \"https://idp/k\"\n", "tenants[0].platform.issuer"),
            ("[tenants.platform]\nissuer = \"i\"\njwks_url = \"https://idp/k\"\n", "tenants[0].platform.audience"),
            ("[tenants.platform]\nissuer = \"i\"\naudience = \"a\"\n", "tenants[0].platform"),
            ("[tenants.platform]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"ftp://x\"\n", "tenants[0].platform.jwks_url"),
            ("[tenants.platform]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"https://idp/k\"\nalgorithms = [\"none\"]\n", "tenants[0].platform.algorithms"),
            ("[tenants.platform]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"https://idp/k\"\nalgorithms = [\"HS256\"]\n", "tenants[0].platform.algorithms"),
            ("[tenants.platform]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"https://idp/k\"\nalgorithms = []\n", "tenants[0].platform.algorithms"),
            ("[tenants.platform]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"https://idp/k\"\nleeway_seconds = 301\n", "tenants[0].platform.leeway_seconds"),
            ("[tenants.platform]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"https://idp/k\"\nsubject_claim = \"\"\n", "tenants[0].platform.subject_claim"),
        ] {
            let e = error(toml);
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn tenant_modules_need_the_embedded_engine_and_an_identifier_id() {
        assert_eq!(error("policy_files = [\"/x.rego\"]\n"), "");
        let e = error("policy_files = [\"/x.rego\"]\n[policy]\nengine = \"opa\"\n");
        assert!(e.contains("tenants[0].policy_files"), "{e}");
        let e = check(
            "[[tenants]]\nid = \"acme-eu\"\ntrust_domain = \"acme.example\"\npolicy_files = [\"/x.rego\"]\n",
        );
        assert!(
            e.contains("tenants[0].policy_files") && e.contains("Rego identifier"),
            "{e}"
        );
    }
}
