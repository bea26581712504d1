//! The broker's own sections: `[broker]`, `[shards]`, `[admin]`,
//! `[debug]` and `[upstream]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// mTLS listener for agents.
    pub listen_addr: SocketAddr,
    /// Plain HTTP listener for `/health`, `/ready`, `/metrics`.
    pub admin_addr: SocketAddr,
    /// Start in maintenance mode (new requests get 503 `maintenance`).
    pub maintenance_mode: bool,
    /// `Retry-After` seconds sent with 503 `maintenance` and overload answers.
    pub retry_after_seconds: u32,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// After SIGTERM, seconds to keep serving with readiness false so load
    /// balancers stop routing here, before the listeners close.
    pub drain_delay_seconds: u64,
    /// Seconds in-flight requests get to finish once the listeners close.
    pub shutdown_grace_seconds: u64,
    /// How often the configuration file is checked for changes (its tenants
    /// are reloaded when it changed; also on SIGHUP and
    /// `POST /admin/config/reload`). 0 = no watching.
    pub config_watch_seconds: u64,
    /// Seconds a client has to send a request's headers.
    pub client_request_timeout_seconds: u64,
    /// Seconds an idle keep-alive connection stays open.
    pub keep_alive_seconds: u64,
    /// Most concurrent connections per worker (all tenants).
    pub max_connections_per_worker: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen_addr: ([0, 0, 0, 0], 8443).into(),
            admin_addr: ([0, 0, 0, 0], 8080).into(),
            maintenance_mode: false,
            retry_after_seconds: 5,
            workers: 0,
            drain_delay_seconds: 5,
            config_watch_seconds: 10,
            shutdown_grace_seconds: 30,
            client_request_timeout_seconds: 5,
            keep_alive_seconds: 75,
            max_connections_per_worker: 25_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardsConfig {
    /// Tenant shards that tenants are hashed onto; 0 means one per core.
    pub count: usize,
    /// Requests that may wait for one shard's lock before more are refused
    /// with 503 (the bound a shard's mailbox had; the name is kept so
    /// existing configurations load).
    pub mailbox_capacity: usize,
    /// Tenant ids that get a shard of their own.
    pub dedicated: Vec<String>,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        Self {
            count: 0,
            mailbox_capacity: 1024,
            dedicated: Vec::new(),
        }
    }
}

impl ShardsConfig {
    /// The shard count with 0 resolved to the number of cores.
    pub fn effective_count(&self) -> usize {
        if self.count == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.count
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// File holding the bearer token for the admin API (`POST
    /// /admin/maintenance`). Without a token the admin API is disabled.
    pub token_file: Option<PathBuf>,
    /// The token itself (prefer `token_file` or `ATB_ADMIN_TOKEN`).
    pub token: Option<String>,
    /// Operator identities (SPIFFE IDs in a client certificate's URI SAN).
    /// When set, mutating admin routes (every `POST`) need the admin token
    /// AND a verified operator certificate, presented on
    /// `operator_listen_addr`; on the plain admin listener they get 403
    /// `operator_mtls_required`. Reads (`GET`) work on both.
    pub operator_ids: Vec<String>,
    /// The mTLS listener for operators (required with `operator_ids`): the
    /// admin routes, with the broker's server certificate.
    pub operator_listen_addr: Option<SocketAddr>,
    /// The CA bundle operator certificates must chain to; default
    /// `tls.client_ca_file`.
    pub operator_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Test-only: enables `POST /debug/fault` on the admin listener, which
    /// makes a tenant's shard actor panic. Never enable in production.
    pub fault_injection: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Seconds to establish a connection to a connector.
    pub connect_timeout_seconds: u64,
    /// Largest request body accepted (by Content-Length, or counted while a
    /// chunked body streams); bigger => 413.
    pub max_body_bytes: u64,
    /// JSON bodies up to this size are read to give the policy
    /// `request.params`; bigger JSON bodies get 413.
    pub max_json_body_bytes: usize,
    /// Seconds a request body has to arrive in full, whether read for the
    /// policy or streamed to the connector; later => 408 `body_timeout`
    /// (the connection is closed), so a slow body cannot park a request.
    pub body_timeout_seconds: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout_seconds: 5,
            max_body_bytes: 10 * 1024 * 1024,
            max_json_body_bytes: 1024 * 1024,
            body_timeout_seconds: 30,
        }
    }
}
