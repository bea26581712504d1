//! The `[redis]` section: where shared state lives when several replicas
//! run. Absent = in-memory state (one replica).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::env::{env_parsed, EnvLookup};
use crate::config::{invalid, ConfigError};

/// How to reach Redis: exactly one of `url`, `sentinels` or
/// `cluster_nodes`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// One Redis (`redis://host:6379` or `rediss://` for TLS).
    pub url: Option<String>,
    /// Sentinel addresses (`redis://host:26379`); the master of
    /// `master_name` is found through them and found again on failover.
    pub sentinels: Vec<String>,
    /// The Sentinel master set.
    pub master_name: String,
    /// Seed nodes of a Redis Cluster (`redis://host:7000`).
    pub cluster_nodes: Vec<String>,
    /// File holding the Redis password (trailing newline ignored); the
    /// environment's `REDIS_PASSWORD` wins. A password in a URL also works.
    pub password_file: Option<PathBuf>,
    /// The password from `REDIS_PASSWORD` (never written to a file).
    #[serde(skip)]
    pub password: Option<String>,
    /// Multiplexed connections kept open (each carries many requests).
    pub pool_size: u32,
    /// Time limit of one connection attempt, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time limit of one operation (getting a connection included), in
    /// milliseconds: past it the request is refused (fail closed).
    pub command_timeout_ms: u64,
    /// How often the connection is probed (`PING`) for `atb_redis_up` and
    /// `/ready`, in milliseconds.
    pub health_interval_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            sentinels: Vec::new(),
            master_name: "atb-master".into(),
            cluster_nodes: Vec::new(),
            password_file: None,
            password: None,
            pool_size: 4,
            connect_timeout_ms: 50,
            command_timeout_ms: 100,
            health_interval_ms: 1000,
        }
    }
}

/// Which topology a configuration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Single,
    Sentinel,
    Cluster,
}

impl RedisConfig {
    pub fn topology(&self) -> Topology {
        if !self.sentinels.is_empty() {
            Topology::Sentinel
        } else if !self.cluster_nodes.is_empty() {
            Topology::Cluster
        } else {
            Topology::Single
        }
    }

    /// Applies `REDIS_*` overrides to `section` (creating it when a
    /// variable names a Redis to use).
    pub fn apply_env(section: &mut Option<Self>, env: EnvLookup<'_>) -> Result<(), ConfigError> {
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        if let Some(v) = env("REDIS_URL") {
            let c = section.get_or_insert_with(Self::default);
            c.url = Some(v.trim().to_owned());
            c.sentinels.clear();
            c.cluster_nodes.clear();
        }
        if let Some(v) = env("REDIS_SENTINELS") {
            let c = section.get_or_insert_with(Self::default);
            c.sentinels = list(v);
            c.url = None;
            c.cluster_nodes.clear();
        }
        if let Some(v) = env("REDIS_CLUSTER_NODES") {
            let c = section.get_or_insert_with(Self::default);
            c.cluster_nodes = list(v);
            c.url = None;
            c.sentinels.clear();
        }
        let Some(c) = section.as_mut() else {
            return Ok(());
        };
        if let Some(v) = env("REDIS_MASTER_NAME") {
            c.master_name = v.trim().to_owned();
        }
        if let Some(v) = env("REDIS_PASSWORD") {
            c.password = Some(v.trim_end_matches(['\r', '\n']).to_owned());
        }
        if let Some(v) = env("REDIS_PASSWORD_FILE") {
            c.password_file = Some(v.into());
        }
        if let Some(v) = env_parsed(env, "REDIS_POOL_SIZE", "a whole number")? {
            c.pool_size = v;
        }
        if let Some(v) = env_parsed(env, "REDIS_CONNECT_TIMEOUT_MS", "milliseconds")? {
            c.connect_timeout_ms = v;
        }
        if let Some(v) = env_parsed(env, "REDIS_COMMAND_TIMEOUT_MS", "milliseconds")? {
            c.command_timeout_ms = v;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let named = [
            self.url.is_some(),
            !self.sentinels.is_empty(),
            !self.cluster_nodes.is_empty(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if named != 1 {
            return Err(invalid(
                "redis",
                "set exactly one of url, sentinels or cluster_nodes",
            ));
        }
        let urls = self
            .url
            .iter()
            .map(|u| ("redis.url", u))
            .chain(self.sentinels.iter().map(|u| ("redis.sentinels", u)))
            .chain(
                self.cluster_nodes
                    .iter()
                    .map(|u| ("redis.cluster_nodes", u)),
            );
        for (key, url) in urls {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    key,
                    format!("{url:?} is not a redis:// or rediss:// URL"),
                ));
            }
            if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                return Err(invalid(key, format!("{url:?}: {e}")));
            }
        }
        if self.topology() == Topology::Sentinel && self.master_name.trim().is_empty() {
            return Err(invalid("redis.master_name", "must not be empty"));
        }
        if !(1..=256).contains(&self.pool_size) {
            return Err(invalid("redis.pool_size", "must be between 1 and 256"));
        }
        for (key, ms) in [
            ("redis.connect_timeout_ms", self.connect_timeout_ms),
            ("redis.command_timeout_ms", self.command_timeout_ms),
        ] {
            if !(1..=60_000).contains(&ms) {
                return Err(invalid(key, "must be between 1 and 60000 milliseconds"));
            }
        }
        if !(50..=60_000).contains(&self.health_interval_ms) {
            return Err(invalid(
                "redis.health_interval_ms",
                "must be between 50 and 60000 milliseconds",
            ));
        }
        Ok(())
    }

    /// Whether any address asks for TLS.
    pub fn uses_tls(&self) -> bool {
        self.url
            .iter()
            .chain(&self.sentinels)
            .chain(&self.cluster_nodes)
            .any(|u| u.starts_with("rediss://"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_documented_example_parses_and_names_every_key() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/atb.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text.find("# [redis]\n").unwrap();
        let end = text.find("# (end of [redis])").unwrap();
        let block: String = text[start..end]
            .lines()
            .skip(1)
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            // One topology at a time: the example lists all three.
            .filter(|l| !l.starts_with("sentinels") && !l.starts_with("cluster_nodes"))
            .map(|l| format!("{l}\n"))
            .collect();
        let c: RedisConfig = toml::from_str(&block).unwrap();
        c.validate().unwrap();
        let names = [
            "url",
            "sentinels",
            "master_name",
            "cluster_nodes",
            "password_file",
            "pool_size",
            "connect_timeout_ms",
            "command_timeout_ms",
            "health_interval_ms",
        ];
        for n in names {
            assert!(
                text[start..end].contains(&format!("# {n} = ")),
                "{n} undocumented"
            );
        }
        let defaults = RedisConfig::default();
        assert_eq!(
            (c.pool_size, c.connect_timeout_ms, c.command_timeout_ms),
            (
                defaults.pool_size,
                defaults.connect_timeout_ms,
                defaults.command_timeout_ms
            ),
            "the example shows the defaults"
        );
    }

    #[test]
    fn exactly_one_topology() {
        let mut c = RedisConfig::default();
        assert!(c.validate().is_err(), "nothing named");
        c.url = Some("redis://127.0.0.1:6379".into());
        c.validate().unwrap();
        c.sentinels = vec!["redis://127.0.0.1:26379".into()];
        assert!(c.validate().is_err(), "two named");
        c.url = None;
        c.validate().unwrap();
        assert_eq!(c.topology(), Topology::Sentinel);
    }

    #[test]
    fn bad_values_name_their_key() {
        let c = RedisConfig {
            url: Some("http://x".into()),
            ..RedisConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("redis.url"));
        let c = RedisConfig {
            url: Some("redis://x".into()),
            command_timeout_ms: 0,
            ..RedisConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("redis.command_timeout_ms"));
    }

    #[test]
    fn env_creates_and_overrides_the_section() {
        let mut s = None;
        RedisConfig::apply_env(&mut s, &env_of(&[])).unwrap();
        assert!(s.is_none(), "no variable, no Redis");
        RedisConfig::apply_env(
            &mut s,
            &env_of(&[
                ("REDIS_SENTINELS", "redis://a:26379, redis://b:26379"),
                ("REDIS_COMMAND_TIMEOUT_MS", "250"),
            ]),
        )
        .unwrap();
        let c = s.clone().unwrap();
        assert_eq!(c.sentinels.len(), 2);
        assert_eq!(c.command_timeout_ms, 250);
        assert_eq!(c.master_name, "atb-master");
        RedisConfig::apply_env(&mut s, &env_of(&[("REDIS_URL", "redis://c:6379")])).unwrap();
        let c = s.unwrap();
        assert!(c.sentinels.is_empty());
        c.validate().unwrap();
        let mut s = None;
        let bad = RedisConfig::apply_env(
            &mut s,
            &env_of(&[("REDIS_URL", "redis://c"), ("REDIS_POOL_SIZE", "many")]),
        );
        assert!(bad.unwrap_err().to_string().contains("REDIS_POOL_SIZE"));
    }
}
