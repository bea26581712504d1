//! What every request handler shares: configuration snapshot, tenants,
//! connection registry, tenant shards, metrics and the lifecycle flags.

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use atb_actors::{PeriodicHandle, PoolConfig, ShardCells};

use std::time::Duration;

use crate::audit::AuditSink;
use crate::broker::admission::{ShardStates, TenantShardState};
use crate::broker::connection::ConnectionRegistry;
use crate::broker::policy_client::PolicyClient;
use crate::broker::replay::MemoryReplay;
use crate::broker::shared_admission::SharedAdmission;
use crate::broker::shared_revocations::SharedRevocations;
use crate::broker::tenants::{CurrentTenants, TenantSet};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::poa::jwks::JwksCache;
use crate::policy::embedded::PolicyBundle;
use crate::runtime::{StartError, Starting};
use crate::store::redis::RedisStore;

/// Why a policy reload was refused (the running policy stays).
#[derive(Debug, thiserror::Error)]
pub enum PolicyReloadError {
    #[error("the policy engine is opa: OPA loads its own policy")]
    Opa,
    #[error(transparent)]
    Refused(#[from] crate::policy::embedded::BundleError),
}

/// Why a configuration reload was refused (the running tenants stay).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this broker runs an embedded configuration (atb dev): there is no file to reload")]
    NoFile,
    #[error(transparent)]
    Invalid(#[from] crate::config::error::ConfigError),
    #[error("the reload could not run")]
    NotRun,
}

/// What a configuration reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The file's tenants are the running ones.
    Unchanged,
    /// Swapped in: how many tenants now, how many connections were closed.
    Changed { tenants: usize, closed: usize },
}

/// Actor name of the tenant shards in metrics.
pub const TENANT_SHARD: &str = "tenant_shard";

/// The broker's state on Redis.
pub struct SharedState {
    /// Rate limits, single use and action counts (one script per request).
    pub admission: Arc<SharedAdmission>,
    pub revocations: Arc<SharedRevocations>,
}

pub struct BrokerState {
    /// The configuration at start: listeners, TLS, pools and every other
    /// setting a reload does not change.
    pub config: Arc<Config>,
    /// The tenants (directory, keys, catalogues, routes), swapped whole by
    /// a configuration reload.
    pub tenants: CurrentTenants,
    /// The file the configuration came from (reloads re-read it); `None`
    /// for an embedded configuration (`atb dev`).
    config_path: Option<std::path::PathBuf>,
    /// Serialises reloads.
    reloading: std::sync::Mutex<()>,
    pub connections: Arc<ConnectionRegistry>,
    /// Each tenant's requests inside the broker (`max_in_flight`).
    pub tenant_in_flight: crate::broker::tenant_in_flight::TenantInFlight,
    /// Tenant shards: token buckets, used on the request's task under
    /// the shard's lock (`atb_actors::cells`).
    pub shards: ShardCells<TenantShardState>,
    /// What outlives a shard's restart, and the hourly action counts the
    /// request's task reads and bumps directly.
    pub shard_states: Arc<ShardStates>,
    pub metrics: Metrics,
    /// In-memory single use; `None` when single use is off or shared.
    pub replay: Option<Arc<dyn crate::broker::replay::ReplayStore>>,
    /// State shared with the other replicas (`[redis]`); `None` = each
    /// replica keeps its own (in memory).
    pub shared: Option<SharedState>,
    pub policy: PolicyClient,
    /// Outbound TLS for the workers' HTTP clients (JWKS, connectors, OPA).
    pub outbound_tls: openssl::ssl::SslConnector,
    pub audit: AuditSink,
    /// Every timer loop (stopped at shutdown; faults injectable in tests).
    periodic: std::sync::Mutex<Vec<PeriodicHandle>>,
    /// JWKS sources a reload added, waiting for a runtime to start their
    /// loops on.
    pending_jwks: std::sync::Mutex<Vec<Arc<JwksCache>>>,
    /// Which shed requests get a log line (`broker::shed_log`).
    pub shed_log: crate::broker::shed_log::ShedLog,
    /// Requests whose record is not closed yet (see `broker::context`).
    pub in_flight: std::sync::atomic::AtomicUsize,
    maintenance: AtomicBool,
    draining: AtomicBool,
    keys_loaded: AtomicBool,
    admin_token: Option<String>,
}

impl BrokerState {
    /// Builds the state and starts its actors (needs an actix System).
    pub fn start(
        config: Config,
        config_path: Option<std::path::PathBuf>,
        admin_token: Option<String>,
    ) -> Result<Arc<Self>, StartError> {
        let metrics = Metrics::new().starting("metrics")?;
        let outbound_tls = crate::runtime::tls::outbound(&config.tls).starting("tls")?;
        let config = Arc::new(config);
        let tenants = TenantSet::build(config.clone(), None, &metrics).starting("tenants")?;
        let connections = Arc::new(ConnectionRegistry::new(tenants.directory.clone(), &metrics));
        let shard_states = Arc::new(ShardStates::new(
            config.shards.effective_count() + config.shards.dedicated.len(),
        ));
        let shards = ShardCells::start(
            PoolConfig {
                actor: TENANT_SHARD,
                hashed_shards: config.shards.effective_count(),
                dedicated: config.shards.dedicated.clone(),
                mailbox_capacity: config.shards.mailbox_capacity,
            },
            &metrics.actors,
            {
                // Full buckets at first start; drained ones after a fault
                // (never fail open).
                let states = shard_states.clone();
                Arc::new(move |index| states.build(index))
            },
        );
        // Every timer loop is a supervised periodic (atb_actors::periodic).
        let mut periodic: Vec<PeriodicHandle> = tenants
            .jwks()
            .map(|cache| {
                crate::poa::jwks::start_refresh(
                    cache.clone(),
                    outbound_tls.clone(),
                    &metrics.actors,
                )
            })
            .collect();
        let policy = PolicyClient::start(&config, &metrics).starting("policy")?;
        let shared = match &config.redis {
            Some(redis) => {
                let store = RedisStore::start(
                    redis,
                    config.tls.outbound_ca_file.as_deref(),
                    &metrics.registry,
                )
                .starting("redis")?;
                Some(SharedState {
                    admission: Arc::new(SharedAdmission::new(store.clone())),
                    revocations: Arc::new(SharedRevocations::new(store)),
                })
            }
            None => None,
        };
        let replay = (config.poa.single_use && shared.is_none()).then(|| {
            let cache = Arc::new(MemoryReplay::new(config.poa.replay_capacity));
            periodic.push(crate::broker::replay::start_sweep(
                cache.clone(),
                Duration::from_secs(config.poa.replay_sweep_seconds),
                metrics.replay_entries.clone(),
                &metrics.actors,
            ));
            cache as Arc<dyn crate::broker::replay::ReplayStore>
        });
        let audit = AuditSink::start(
            "broker",
            &config.audit,
            &outbound_tls,
            metrics.audit_events.clone(),
            metrics.audit_writer.clone(),
        )
        .starting("audit")?;
        Ok(Arc::new(Self {
            shed_log: Default::default(),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            tenant_in_flight: crate::broker::tenant_in_flight::TenantInFlight::new(
                metrics.tenant_in_flight.clone(),
                metrics.tenant_in_flight_refused.clone(),
            ),
            maintenance: AtomicBool::new(config.broker.maintenance_mode),
            draining: AtomicBool::new(false),
            keys_loaded: AtomicBool::new(false),
            config,
            tenants: ArcSwap::from_pointee(tenants),
            config_path,
            reloading: std::sync::Mutex::new(()),
            connections,
            shards,
            shard_states,
            metrics,
            periodic: std::sync::Mutex::new(periodic),
            pending_jwks: std::sync::Mutex::new(Vec::new()),
            replay,
            shared,
            policy,
            outbound_tls,
            audit,
            admin_token,
        }))
    }

    /// Waits (at most `limit`) until no request is in flight: requests a
    /// stopped worker dropped have queued their `aborted` audit events.
    pub async fn settle_in_flight(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.in_flight.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts a timer loop named `actor` (`atb_actors::periodic`) that the
    /// state owns (stopped at shutdown, faults injectable in tests).
    pub fn start_periodic<F, Fut>(&self, actor: &'static str, first: Duration, tick: F)
    where
        F: FnMut() -> Fut + 'static,
        Fut: std::future::Future<Output = Duration> + 'static,
    {
        let name = atb_actors::PeriodicName::single(actor);
        self.own_periodic(atb_actors::periodic::start(
            name,
            first,
            &self.metrics.actors,
            tick,
        ));
    }

    /// Adds a timer loop to the ones the state owns.
    pub fn own_periodic(&self, handle: PeriodicHandle) {
        if let Ok(mut all) = self.periodic.lock() {
            all.push(handle);
        }
    }

    /// The timer loops named `actor` (every key).
    pub fn periodic(&self, actor: &str) -> Vec<PeriodicHandle> {
        self.periodic.lock().map_or_else(
            |_| Vec::new(),
            |all| {
                all.iter()
                    .filter(|h| h.name().actor == actor)
                    .cloned()
                    .collect()
            },
        )
    }

    /// Stops every timer loop (shutdown).
    pub fn stop_periodic(&self) {
        if let Ok(all) = self.periodic.lock() {
            all.iter().for_each(PeriodicHandle::stop);
        }
    }

    /// Re-reads the configuration file (with the environment's overrides)
    /// and swaps in its tenants — directory, keys, catalogues, routes,
    /// policy data — through the same build as at start. A file that does
    /// not load, validate or build is refused with the key named and the
    /// running tenants keep serving. Connections of tenants removed or
    /// disabled, or whose client CA bundle changed, are closed; JWKS loops follow their tenants. Settings
    /// outside `[[tenants]]` need a restart (a change is logged). Blocking:
    /// call off the I/O threads.
    pub fn reload_config(&self) -> Result<ReloadOutcome, ReloadError> {
        let outcome = self.reload_config_inner();
        let result = match &outcome {
            Ok(ReloadOutcome::Changed { .. }) => "changed",
            Ok(ReloadOutcome::Unchanged) => "unchanged",
            Err(_) => "error",
        };
        self.metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
        match &outcome {
            Ok(ReloadOutcome::Changed { tenants, closed }) => {
                tracing::info!(tenants, closed, "configuration reloaded")
            }
            Err(e) => {
                tracing::warn!(error = %e, "configuration reload refused; the running tenants stay")
            }
            Ok(ReloadOutcome::Unchanged) => {}
        }
        outcome
    }

    fn reload_config_inner(&self) -> Result<ReloadOutcome, ReloadError> {
        // The guarded data is (): a poisoned lock holds nothing broken.
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.config_path.as_deref().ok_or(ReloadError::NoFile)?;
        let next = Config::load(Some(path), &crate::config::env::process_env)?;
        let current = self.tenants.load_full();
        if serde_json::to_value(&next.tenants).ok()
            == serde_json::to_value(&current.config.tenants).ok()
            && !crate::broker::tenants::issuers_stale(&next, &current)
        {
            return Ok(ReloadOutcome::Unchanged);
        }
        let mut statics = serde_json::to_value(&next).unwrap_or_default();
        let mut running = serde_json::to_value(&*self.config).unwrap_or_default();
        statics["tenants"] = serde_json::Value::Null;
        running["tenants"] = serde_json::Value::Null;
        if statics != running {
            tracing::warn!("settings outside [[tenants]] changed; they apply at the next restart");
        }
        // The tenants' policy (their data and modules) must compile before
        // they are swapped in: a refused bundle refuses the whole reload.
        let bundle = match self.policy {
            PolicyClient::Embedded(_) => Some(
                PolicyBundle::from_config(&next)
                    .and_then(|b| b.engine().map(|_| b))
                    .map_err(|e| crate::config::error::invalid("tenants", e.to_string()))?,
            ),
            _ => None,
        };
        let built = TenantSet::build(Arc::new(next), Some(&current), &self.metrics)?;
        let changed = crate::broker::tenants::changes(&current, &built);
        let count = built.config.tenants.len();
        self.connections.update(built.directory.clone());
        let built = Arc::new(built);
        self.tenants.store(built.clone());
        self.metrics.forget_dependencies(|dependency, tenant| {
            let Some(t) = built.config.tenants.iter().find(|t| t.id == tenant) else {
                return false;
            };
            match dependency.strip_prefix("upstream:") {
                Some(connector) => t.connectors.iter().any(|c| c.id == connector),
                None => true,
            }
        });
        // JWKS loops follow their tenants' keys.
        if let Ok(mut loops) = self.periodic.lock() {
            loops.retain(|h| {
                let gone = h.name().actor == "jwks_refresh"
                    && changed.auth_replaced.contains(&h.name().key);
                if gone {
                    h.stop();
                }
                !gone
            });
        }
        let mut closed = 0;
        for id in &changed.closed {
            closed += self.connections.close(id);
        }
        // New JWKS loops must start on an actix runtime.
        let starts: Vec<Arc<JwksCache>> = built
            .auth
            .iter()
            .filter(|(id, _)| changed.auth_replaced.contains(*id))
            .filter_map(|(_, a)| a.jwks.clone())
            .collect();
        if let Ok(mut pending) = self.pending_jwks.lock() {
            pending.extend(starts);
        }
        // The policy sees the new tenants' data.
        // (The bundle checked above: the files are not read twice.)
        if let Some(bundle) = bundle {
            let _ = self.install_policy(Ok(bundle));
        }
        Ok(ReloadOutcome::Changed {
            tenants: count,
            closed,
        })
    }

    /// Starts the JWKS loops a reload asked for (on the calling runtime).
    pub fn start_pending_jwks(&self) {
        let pending: Vec<Arc<JwksCache>> = self
            .pending_jwks
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        for cache in pending {
            let h = crate::poa::jwks::start_refresh(
                cache,
                self.outbound_tls.clone(),
                &self.metrics.actors,
            );
            self.own_periodic(h);
        }
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
        if !self.keys_loaded.load(Ordering::Acquire) {
            let now = std::time::Instant::now();
            if self.tenants.load().jwks().all(|j| j.has_usable_keys(now)) {
                // Once every JWKS has loaded, later outages are handled by
                // the stale window instead of flapping readiness.
                self.keys_loaded.store(true, Ordering::Release);
            } else {
                return Err("verification keys not loaded");
            }
        }
        Ok(())
    }

    /// Re-reads `policy.dir` / `policy.data_file` (tenant policy data is
    /// part of the configuration) and swaps in a changed bundle that
    /// compiles; on any failure the running policy stays. `Ok(true)`: the
    /// policy changed. Blocking: call off the I/O threads.
    pub fn reload_policy(&self) -> Result<bool, PolicyReloadError> {
        let config = self.tenants.load().config.clone();
        self.install_policy(PolicyBundle::from_config(&config))
    }

    /// Swaps in `bundle` if it is one and compiles (counted and logged).
    fn install_policy(
        &self,
        bundle: Result<PolicyBundle, crate::policy::embedded::BundleError>,
    ) -> Result<bool, PolicyReloadError> {
        let PolicyClient::Embedded(pool) = &self.policy else {
            return Err(PolicyReloadError::Opa);
        };
        let outcome = bundle
            .and_then(|b| pool.replace(b))
            .map_err(PolicyReloadError::Refused);
        let result = match &outcome {
            Ok(true) => "changed",
            Ok(false) => "unchanged",
            Err(_) => "error",
        };
        self.metrics
            .policy_reloads
            .with_label_values(&[result])
            .inc();
        match &outcome {
            Ok(true) => tracing::info!("policy reloaded"),
            Err(e) => tracing::warn!(error = %e, "policy reload refused; the running policy stays"),
            Ok(false) => {}
        }
        outcome
    }

    /// [`Self::ready`], and with a remote OPA, whether OPA answers its
    /// health endpoint (a broker whose policy engine is gone takes no
    /// traffic).
    pub async fn ready_for_traffic(&self, client: &awc::Client) -> Result<(), &'static str> {
        self.ready()?;
        if let Some(shared) = &self.shared {
            if !shared.admission.store().up() {
                return Err("redis (shared state) is not reachable");
            }
        }
        if let PolicyClient::Opa {
            health_url,
            timeout,
            ..
        } = &self.policy
        {
            // Below the usual 1 s probe timeout of Kubernetes.
            let healthy = client
                .get(health_url)
                .timeout((*timeout).min(Duration::from_millis(900)))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !healthy {
                // A failing probe is OPA failing; a passing one is left to
                // the next decision (a healthy OPA may still answer junk).
                self.metrics
                    .dependency_up
                    .with_label_values(&["opa", ""])
                    .set(0);
                return Err("policy engine (OPA) is not reachable");
            }
        }
        Ok(())
    }

    /// Sets the gauges of dependencies whose state is read rather than
    /// observed on a call (`atb_dependency_up{dependency="redis"}`).
    pub fn refresh_dependency_gauges(&self) {
        if let Some(shared) = &self.shared {
            self.metrics
                .dependency_up
                .with_label_values(&["redis", ""])
                .set(i64::from(shared.admission.store().up()));
        }
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
