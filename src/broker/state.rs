//! What every request handler shares: configuration snapshot, tenants,
//! connection registry, tenant shards, metrics and the lifecycle flags.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use atb_actors::{PoolConfig, ShardPool};

use crate::admission::TenantShardState;
use crate::config::Config;
use crate::connection::ConnectionRegistry;
use crate::metrics::Metrics;
use crate::tenant::TenantDirectory;

/// Actor name of the tenant shards in metrics.
pub const TENANT_SHARD: &str = "tenant_shard";

pub struct BrokerState {
    pub config: Arc<Config>,
    pub directory: Arc<TenantDirectory>,
    pub connections: Arc<ConnectionRegistry>,
    pub shards: ShardPool<TenantShardState>,
    pub metrics: Metrics,
    /// Interned tenant ids handed to shards without allocating per request.
    tenant_keys: HashMap<String, Arc<str>>,
    maintenance: AtomicBool,
    draining: AtomicBool,
    admin_token: Option<String>,
}

impl BrokerState {
    /// Builds the state and starts the shard actors (needs an actix System).
    pub fn start(config: Config, admin_token: Option<String>) -> Result<Arc<Self>, String> {
        let metrics = Metrics::new().map_err(|e| format!("metrics setup failed: {e}"))?;
        let directory = Arc::new(TenantDirectory::new(&config.tenants));
        let connections = Arc::new(ConnectionRegistry::new(directory.clone(), &metrics));
        let shards = ShardPool::start(
            PoolConfig {
                actor: TENANT_SHARD,
                hashed_shards: config.shards.effective_count(),
                dedicated: config.shards.dedicated.clone(),
                mailbox_capacity: config.shards.mailbox_capacity,
            },
            &metrics.actors,
            Arc::new(|_| TenantShardState::default()),
        );
        let tenant_keys = directory
            .ids()
            .map(|id| (id.to_owned(), Arc::from(id)))
            .collect();
        Ok(Arc::new(Self {
            maintenance: AtomicBool::new(config.broker.maintenance_mode),
            draining: AtomicBool::new(false),
            config: Arc::new(config),
            directory,
            connections,
            shards,
            metrics,
            tenant_keys,
            admin_token,
        }))
    }

    pub fn tenant_key(&self, tenant_id: &str) -> Option<&Arc<str>> {
        self.tenant_keys.get(tenant_id)
    }

    pub fn maintenance(&self) -> bool {
        self.maintenance.load(Ordering::Acquire)
    }

    pub fn set_maintenance(&self, on: bool) {
        self.maintenance.store(on, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether this replica should receive traffic.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.draining() {
            return Err("draining");
        }
        Ok(())
    }

    /// Constant-time check of an admin bearer token; `None` when the admin
    /// API is disabled.
    pub fn admin_token_matches(&self, presented: &str) -> Option<bool> {
        use subtle::ConstantTimeEq;
        self.admin_token.as_deref().map(|t| {
            t.len() == presented.len() && bool::from(t.as_bytes().ct_eq(presented.as_bytes()))
        })
    }
}
