//! What every request handler shares: configuration snapshot, tenants,
//! connection registry, tenant shards, metrics and the lifecycle flags.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use atb_actors::{PeriodicHandle, PoolConfig, ShardPool};

use std::collections::HashSet;
use std::time::Duration;

use crate::admission::TenantShardState;
use crate::audit::AuditSink;
use crate::config::{Config, PolicyEngine, TenantConfig};
use crate::connection::ConnectionRegistry;
use crate::metrics::Metrics;
use crate::poa::claims::ClaimRules;
use crate::poa::jwks::{JwksCache, JwksTimings};
use crate::poa::keys::{self, KeySet};
use crate::policy::embedded::{EmbeddedPool, PolicyBundle};
use crate::policy::{Decision, PolicyError};
use crate::replay::MemoryReplay;
use crate::routes::Binding;
use crate::tenant::TenantDirectory;

/// What a tenant's mandates are checked against.
pub struct TenantAuth {
    pub keys: KeySet,
    pub rules: ClaimRules,
    /// From the configuration, plus what `POST /admin/tenants/{id}/revocations`
    /// adds at runtime (copy on write: revocations are rare, checks are on
    /// every request).
    revoked_jtis: ArcSwap<HashSet<String>>,
    revoked_kids: ArcSwap<HashSet<String>>,
    /// Serialises [`TenantAuth::revoke`], so concurrent additions are not lost.
    revoking: std::sync::Mutex<()>,
    pub jwks: Option<Arc<JwksCache>>,
    /// Live replay-cache entries this tenant may hold.
    pub replay_quota: usize,
}

/// Most revocations a tenant holds (configured plus added at runtime).
pub const MAX_REVOCATIONS: usize = 100_000;

impl TenantAuth {
    fn load(
        t: &TenantConfig,
        config: &Config,
        metrics: &Metrics,
        replay_quota: usize,
    ) -> Result<Self, String> {
        let p = &config.poa;
        let leeway = p.leeway_seconds;
        let jwks = t.poa.jwks_url.as_ref().map(|url| {
            Arc::new(JwksCache::new(
                t.id.clone(),
                url.clone(),
                JwksTimings {
                    refresh: Duration::from_secs(p.jwks_refresh_seconds),
                    cooldown: Duration::from_secs(p.jwks_cooldown_seconds),
                    negative_ttl: Duration::from_secs(p.jwks_negative_seconds),
                    stale_after: Duration::from_secs(p.jwks_stale_seconds),
                    timeout: Duration::from_millis(p.jwks_timeout_ms),
                },
                Some(metrics.jwks.clone()),
            ))
        });
        let mut set = KeySet::default();
        for (i, path) in t.poa.public_key_files.iter().enumerate() {
            let key = keys::load_public_pem(path)
                .map_err(|e| format!("tenants.{}.poa.public_key_files[{i}]: {e}", t.id))?;
            set.insert(keys::thumbprint(&key), key);
        }
        Ok(Self {
            keys: set,
            rules: ClaimRules {
                max_ttl_seconds: t.poa.max_ttl_seconds as i64,
                leeway_seconds: leeway as i64,
                issuer: t.poa.issuer.clone(),
                audience: t.poa.audience.clone(),
            },
            revoked_jtis: ArcSwap::from_pointee(t.poa.revoked_jtis.iter().cloned().collect()),
            revoked_kids: ArcSwap::from_pointee(t.poa.revoked_kids.iter().cloned().collect()),
            revoking: std::sync::Mutex::new(()),
            jwks,
            replay_quota,
        })
    }

    /// Whether `kid` is revoked by configuration, the admin API or the
    /// issuer's JWKS.
    pub fn kid_revoked(&self, kid: &str) -> bool {
        self.revoked_kids.load().contains(kid)
            || self.jwks.as_ref().is_some_and(|j| j.is_revoked(kid))
    }

    /// Whether the mandate `jti` is revoked (configuration or admin API).
    pub fn jti_revoked(&self, jti: &str) -> bool {
        self.revoked_jtis.load().contains(jti)
    }

    /// Adds revocations, effective for the next request on this replica.
    /// Refused as a whole if it would pass [`MAX_REVOCATIONS`] in a set.
    pub fn revoke(&self, kids: &[String], jtis: &[String]) -> Result<(), String> {
        let _writer = self
            .revoking
            .lock()
            .map_err(|_| "revocation lock poisoned".to_string())?;
        let add = |set: &ArcSwap<HashSet<String>>, more: &[String]| {
            let mut next = HashSet::clone(&set.load());
            next.extend(more.iter().cloned());
            next
        };
        let (kids_next, jtis_next) = (add(&self.revoked_kids, kids), add(&self.revoked_jtis, jtis));
        if kids_next.len() > MAX_REVOCATIONS || jtis_next.len() > MAX_REVOCATIONS {
            return Err(format!(
                "a tenant holds at most {MAX_REVOCATIONS} revoked kids and jtis"
            ));
        }
        self.revoked_kids.store(Arc::new(kids_next));
        self.revoked_jtis.store(Arc::new(jtis_next));
        Ok(())
    }

    /// Both revocation sets, sorted.
    pub fn revocations(&self) -> (Vec<String>, Vec<String>) {
        let sorted = |set: &ArcSwap<HashSet<String>>| {
            let mut v: Vec<String> = set.load().iter().cloned().collect();
            v.sort();
            v
        };
        (sorted(&self.revoked_kids), sorted(&self.revoked_jtis))
    }

    /// The key for `kid`: static keys first, then the JWKS (which may
    /// refresh, single flight, within its cooldown).
    pub async fn key(
        &self,
        client: &awc::Client,
        kid: &str,
    ) -> Option<ed25519_dalek::VerifyingKey> {
        if let Some(k) = self.keys.get(kid) {
            return Some(*k);
        }
        match &self.jwks {
            Some(j) => j.key(client, kid).await,
            None => None,
        }
    }
}

/// Where decisions come from.
pub enum PolicyBackend {
    Embedded(EmbeddedPool),
    Opa {
        url: String,
        /// Probed by `/ready`.
        health_url: String,
        timeout: Duration,
    },
}

impl PolicyBackend {
    pub fn engine_label(&self) -> &'static str {
        match self {
            PolicyBackend::Embedded(_) => "embedded",
            PolicyBackend::Opa { .. } => "opa",
        }
    }

    /// One decision for `tenant`; `client` is the calling worker's HTTP
    /// client.
    pub async fn decide(
        &self,
        client: &awc::Client,
        tenant: &str,
        input: serde_json::Value,
    ) -> Result<Decision, PolicyError> {
        match self {
            PolicyBackend::Embedded(pool) => pool.decide(tenant, input).await,
            PolicyBackend::Opa { url, timeout, .. } => {
                crate::policy::opa::decide(client, url, *timeout, &input).await
            }
        }
    }
}

fn policy_backend(config: &Config, metrics: &Metrics) -> Result<PolicyBackend, String> {
    let p = &config.policy;
    if p.engine == PolicyEngine::Opa {
        return Ok(PolicyBackend::Opa {
            url: p.opa_decision_url.clone(),
            health_url: p.opa_health(),
            timeout: Duration::from_millis(p.opa_timeout_ms),
        });
    }
    let bundle = PolicyBundle::from_config(config)?;
    let threads = if p.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        p.threads
    };
    EmbeddedPool::start(
        bundle,
        crate::policy::DECISION_RULE,
        threads,
        p.queue_capacity,
        p.queue_per_tenant,
        &metrics.actors,
    )
    .map(PolicyBackend::Embedded)
    .map_err(|e| format!("policy: {e}"))
}

/// Every tenant's connectors compiled into route bindings (once, at
/// start); unbound connectors are warned about and flagged by
/// `atb_connector_unbound`.
type Bindings = HashMap<String, HashMap<String, Binding>>;
type Catalogues = HashMap<String, crate::catalog::TenantCatalogue>;

fn compile_bindings(config: &Config, metrics: &Metrics) -> Result<(Bindings, Catalogues), String> {
    let mut all = HashMap::with_capacity(config.tenants.len());
    let mut catalogues = HashMap::with_capacity(config.tenants.len());
    for (i, t) in config.tenants.iter().enumerate() {
        let catalogue = crate::catalog::TenantCatalogue::new(t.policy_data.as_ref())
            .map_err(|e| format!("tenants[{i}].policy_data: {e}"))?;
        let mut connectors = HashMap::with_capacity(t.connectors.len());
        for (j, c) in t.connectors.iter().enumerate() {
            let binding = Binding::compile(
                &c.routes,
                &catalogue,
                &format!("tenants[{i}].connectors[{j}]"),
            )
            .map_err(|e| e.to_string())?;
            let unbound = matches!(binding, Binding::Unbound);
            match &binding {
                Binding::Unbound => tracing::warn!(
                    tenant = %t.id,
                    connector = %c.id,
                    "connector routes = \"any\": its mandates are NOT bound to method and path; any call inside its egress allowlist carries any action"
                ),
                Binding::Bound(table) if table.is_empty() => tracing::warn!(
                    tenant = %t.id,
                    connector = %c.id,
                    "connector declares no routes: every call through it is refused (action_route_mismatch)"
                ),
                Binding::Bound(_) => {}
            }
            metrics
                .connector_unbound
                .with_label_values(&[&t.id, &c.id])
                .set(i64::from(unbound));
            connectors.insert(c.id.clone(), binding);
        }
        all.insert(t.id.clone(), connectors);
        catalogues.insert(t.id.clone(), catalogue);
    }
    Ok((all, catalogues))
}

/// Actor name of the tenant shards in metrics.
pub const TENANT_SHARD: &str = "tenant_shard";

pub struct BrokerState {
    pub config: Arc<Config>,
    pub directory: Arc<TenantDirectory>,
    pub connections: Arc<ConnectionRegistry>,
    pub shards: ShardPool<TenantShardState>,
    pub metrics: Metrics,
    pub auth: HashMap<String, TenantAuth>,
    /// Compiled routes: tenant → connector → binding.
    pub bindings: HashMap<String, HashMap<String, Binding>>,
    /// Each tenant's action catalogue (built-in plus its extensions).
    pub catalogues: HashMap<String, crate::catalog::TenantCatalogue>,
    /// Every JWKS source (for readiness).
    jwks: Vec<Arc<JwksCache>>,
    /// `None` when single use is off.
    pub replay: Option<Arc<dyn crate::replay::ReplayStore>>,
    pub policy: PolicyBackend,
    /// Outbound TLS for the workers' HTTP clients (JWKS, connectors, OPA).
    pub outbound_tls: openssl::ssl::SslConnector,
    pub audit: AuditSink,
    /// Every timer loop (stopped at shutdown; faults injectable in tests).
    periodic: std::sync::Mutex<Vec<PeriodicHandle>>,
    /// Interned tenant ids handed to shards without allocating per request.
    tenant_keys: HashMap<String, Arc<str>>,
    /// Requests whose record is not closed yet (see `broker::context`).
    pub in_flight: std::sync::atomic::AtomicUsize,
    maintenance: AtomicBool,
    draining: AtomicBool,
    keys_loaded: AtomicBool,
    admin_token: Option<String>,
}

impl BrokerState {
    /// Builds the state and starts the shard actors (needs an actix System).
    pub fn start(config: Config, admin_token: Option<String>) -> Result<Arc<Self>, String> {
        let metrics = Metrics::new().map_err(|e| format!("metrics setup failed: {e}"))?;
        let outbound_tls = crate::tls::outbound(&config.tls)?;
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
            {
                // Full buckets at first start; drained ones and the same
                // usage counts after a fault (never fail open).
                let states = Arc::new(crate::admission::ShardStates::default());
                Arc::new(move |index| states.build(index))
            },
        );
        let mut auth = HashMap::new();
        let quotas = config.replay_quotas();
        for t in &config.tenants {
            let quota = quotas.get(&t.id).copied().unwrap_or(1);
            auth.insert(t.id.clone(), TenantAuth::load(t, &config, &metrics, quota)?);
        }
        let (bindings, catalogues) = compile_bindings(&config, &metrics)?;
        let jwks: Vec<Arc<JwksCache>> = auth.values().filter_map(|a| a.jwks.clone()).collect();
        // Every timer loop is a supervised periodic (atb_actors::periodic).
        let mut periodic: Vec<PeriodicHandle> = jwks
            .iter()
            .map(|cache| {
                crate::poa::jwks::start_refresh(
                    cache.clone(),
                    outbound_tls.clone(),
                    &metrics.actors,
                )
            })
            .collect();
        let policy = policy_backend(&config, &metrics)?;
        let replay = config.poa.single_use.then(|| {
            let cache = Arc::new(MemoryReplay::new(config.poa.replay_capacity));
            periodic.push(crate::replay::start_sweep(
                cache.clone(),
                Duration::from_secs(config.poa.replay_sweep_seconds),
                metrics.replay_entries.clone(),
                &metrics.actors,
            ));
            cache as Arc<dyn crate::replay::ReplayStore>
        });
        let audit = AuditSink::start(
            "broker",
            &config.audit,
            &outbound_tls,
            metrics.audit_events.clone(),
            metrics.audit_writer.clone(),
        )?;
        let tenant_keys = directory
            .ids()
            .map(|id| (id.to_owned(), Arc::from(id)))
            .collect();
        Ok(Arc::new(Self {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            maintenance: AtomicBool::new(config.broker.maintenance_mode),
            draining: AtomicBool::new(false),
            keys_loaded: AtomicBool::new(false),
            config: Arc::new(config),
            directory,
            connections,
            shards,
            metrics,
            periodic: std::sync::Mutex::new(periodic),
            auth,
            bindings,
            catalogues,
            jwks,
            replay,
            policy,
            outbound_tls,
            audit,
            tenant_keys,
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
        if !self.keys_loaded.load(Ordering::Acquire) {
            let now = std::time::Instant::now();
            if self.jwks.iter().all(|j| j.has_usable_keys(now)) {
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
    pub fn reload_policy(&self) -> Result<bool, String> {
        let PolicyBackend::Embedded(pool) = &self.policy else {
            return Err("the policy engine is opa: OPA loads its own policy".into());
        };
        let outcome = PolicyBundle::from_config(&self.config).and_then(|b| pool.replace(b));
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
        if let PolicyBackend::Opa {
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
                return Err("policy engine (OPA) is not reachable");
            }
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
