//! What the AgentAuth handlers share: configuration, tenants, state
//! stores, keys, approver authentication, the risk-tier policy, metrics
//! and audit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::approver::ApproverAuth;
use super::biscuits::BiscuitSigners;
use super::challenge::Tier;
use super::client_addr::TrustedProxies;
use super::config::AgentAuthConfig;
use super::keyring::{KeyRing, KeyringError};
use super::observe::{AgentAuthEvent, AgentAuthMetrics};
use super::redis_store::{RedisChallenges, RedisRateLimiter};
use super::store::{ChallengeStore, MemoryChallenges, MemoryRateLimiter, RateLimiter};
use crate::audit::AuditSink;
use crate::config::Config;
use crate::policy::embedded::{BundleError, EmbeddedPool, PolicyBundle};
use crate::policy::PolicyError;
use crate::runtime::{StartError, Starting};
use crate::tenant::TenantDirectory;

/// The rule giving an action's risk tier (the broker's policy decides with
/// the same rule, so issuer and broker never disagree).
pub const RISK_TIER_RULE: &str = "data.atb.poa.risk_tier";

/// Risk tiers from the embedded policy, on the same pool the broker's
/// decisions use (`EmbeddedPool`: its own threads, no lock around an
/// engine, a panic rebuilds the engine, each tenant within its share).
pub struct TierPolicy {
    pool: EmbeddedPool,
}

impl TierPolicy {
    pub fn new(
        bundle: PolicyBundle,
        policy: &crate::policy::config::PolicyConfig,
        metrics: &atb_actors::ActorMetrics,
    ) -> Result<Self, BundleError> {
        let threads = if policy.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            policy.threads
        };
        let pool = EmbeddedPool::start(
            bundle,
            RISK_TIER_RULE,
            threads,
            policy.queue_capacity,
            policy.queue_per_tenant,
            metrics,
        )?;
        Ok(Self { pool })
    }

    /// Swaps in `bundle` if it differs and compiles; otherwise the running
    /// policy stays. `Ok(true)`: the policy changed. Blocking.
    pub fn replace(&self, bundle: PolicyBundle) -> Result<bool, BundleError> {
        self.pool.replace(bundle)
    }

    /// The tier of `act` for `tenant`.
    pub async fn tier(&self, tenant: &str, act: &str) -> Result<Tier, PolicyError> {
        let input = serde_json::json!({"tenant": {"id": tenant}, "poa": {"act": act}});
        match self.pool.value(tenant, RISK_TIER_RULE, input).await? {
            serde_json::Value::String(s) => Ok(Tier::from_policy(&s)),
            _ => Err(PolicyError::BadDecision(format!(
                "{RISK_TIER_RULE} is not a string"
            ))),
        }
    }
}

pub struct AgentAuthState {
    pub config: AgentAuthConfig,
    pub tenants: TenantDirectory,
    /// Each tenant's action catalogue (built-in plus its extensions),
    /// built once at start.
    pub catalogues: HashMap<String, crate::catalog::TenantCatalogue>,
    pub challenges: Arc<dyn ChallengeStore>,
    pub limiter: Arc<dyn RateLimiter>,
    /// The shared-state Redis, when `[redis]` is configured (`/ready` is
    /// false while it does not answer).
    pub redis: Option<Arc<crate::store::redis::RedisStore>>,
    pub keys: ArcSwapOption<KeyRing>,
    /// Each tenant's key for Biscuit mandates (`[tenants.biscuit]
    /// agentauth_key_file`), read once at start.
    pub biscuit_keys: BiscuitSigners,
    pub approvers: ApproverAuth,
    pub tiers: Arc<TierPolicy>,
    pub proxies: TrustedProxies,
    pub metrics: AgentAuthMetrics,
    pub audit: AuditSink<AgentAuthEvent>,
    /// The timer loops (for the test-only fault hook).
    pub periodic: std::sync::Mutex<Vec<atb_actors::PeriodicHandle>>,
    /// `admin.token`: what the test-only `/debug/fault` hook needs, and
    /// what brokers' `/admin/jwks/refresh` takes.
    pub admin_token: Option<String>,
    /// Outbound TLS (system trust store + `tls.outbound_ca_file`).
    pub outbound_tls: openssl::ssl::SslConnector,
    draining: AtomicBool,
}

impl AgentAuthState {
    /// Builds the state from a validated configuration. The key directory
    /// is read once here; a missing or bad key fails the start.
    pub fn start(config: &Config) -> Result<Arc<Self>, StartError> {
        let a = &config.agentauth;
        let metrics = AgentAuthMetrics::new().starting("metrics")?;
        let keys = KeyRing::load(&a.keys_dir).starting("agentauth.keys_dir")?;
        let biscuit_keys = BiscuitSigners::load(&config.tenants).starting("tenants.biscuit")?;
        let bundle = PolicyBundle::from_config(config).starting("policy")?;
        let outbound_tls = crate::runtime::tls::outbound(&config.tls).starting("tls")?;
        let audit = AuditSink::start(
            "agentauth",
            &config.audit,
            &outbound_tls,
            metrics.audit_events.clone(),
            metrics.audit_writer.clone(),
        )
        .starting("audit")?;
        let catalogues = config
            .tenants
            .iter()
            .map(|t| {
                crate::catalog::TenantCatalogue::new(t.policy_data.as_ref())
                    .map(|c| (t.id.clone(), c))
                    .map_err(|e| format!("tenants.{}.policy_data: {e}", t.id))
            })
            .collect::<Result<HashMap<_, _>, String>>()
            .starting("tenants")?;
        // Shared state when `[redis]` is set (replicas agree on challenges
        // and budgets); in this process otherwise.
        let redis = match &config.redis {
            Some(r) => Some(
                crate::store::redis::RedisStore::start(
                    r,
                    config.tls.outbound_ca_file.as_deref(),
                    metrics.registry(),
                )
                .starting("redis")?,
            ),
            None => None,
        };
        let (challenges, limiter): (Arc<dyn ChallengeStore>, Arc<dyn RateLimiter>) = match &redis {
            Some(store) => (
                Arc::new(RedisChallenges::new(
                    store.clone(),
                    config.tenants.iter().map(|t| t.id.clone()).collect(),
                    a.max_challenges_per_tenant,
                    super::EXPIRED_GRACE_SECONDS,
                )),
                Arc::new(RedisRateLimiter::new(store.clone())),
            ),
            None => (
                Arc::new(MemoryChallenges::new(
                    a.max_challenges,
                    a.max_challenges_per_tenant,
                )),
                Arc::new(MemoryRateLimiter::new(100_000)),
            ),
        };
        let state = Arc::new(Self {
            tenants: TenantDirectory::new(&config.tenants)
                .with_issuers(crate::tenant::load_issuers(config, None).starting("tenants")?),
            catalogues,
            challenges,
            limiter,
            redis,
            keys: ArcSwapOption::from_pointee(None),
            biscuit_keys,
            approvers: ApproverAuth::new(a.approvers.clone(), outbound_tls.clone())
                .starting("agentauth.approvers")?,
            tiers: Arc::new(
                TierPolicy::new(bundle, &config.policy, &metrics.actors).starting("policy")?,
            ),
            proxies: TrustedProxies::parse(&a.trusted_proxies)
                .starting("agentauth.trusted_proxies")?,
            metrics,
            audit,
            periodic: std::sync::Mutex::default(),
            admin_token: crate::admin_token(config).starting("admin")?,
            outbound_tls: outbound_tls.clone(),
            draining: AtomicBool::new(false),
            config: a.clone(),
        });
        state.install_keys(keys);
        Ok(state)
    }

    /// Publishes a key ring (and its gauges).
    pub fn install_keys(&self, ring: KeyRing) {
        let g = &self.metrics.signing_keys;
        g.with_label_values(&["active"]).set(1);
        g.with_label_values(&["next"])
            .set(i64::from(ring.next.is_some()));
        g.with_label_values(&["previous"])
            .set(i64::from(ring.previous.is_some()));
        g.with_label_values(&["revoked"])
            .set(ring.revoked.len() as i64);
        self.keys.store(Some(Arc::new(ring)));
    }

    /// Re-reads the key directory; keeps the current keys on failure.
    pub fn reload_keys(&self) -> Result<Option<String>, KeyringError> {
        match KeyRing::load(&self.config.keys_dir) {
            Ok(ring) => {
                let changed = self.keys.load().as_ref().is_none_or(|old| {
                    old.active.kid != ring.active.kid
                        || old.next.as_ref().map(|k| &k.kid) != ring.next.as_ref().map(|k| &k.kid)
                        || old.previous.as_ref().map(|k| &k.kid)
                            != ring.previous.as_ref().map(|k| &k.kid)
                        || old.revoked != ring.revoked
                });
                let kid = ring.active.kid.clone();
                self.metrics.key_reloads.with_label_values(&["ok"]).inc();
                if changed {
                    self.install_keys(ring);
                    Ok(Some(kid))
                } else {
                    Ok(None)
                }
            }
            Err(e) => {
                self.metrics.key_reloads.with_label_values(&["error"]).inc();
                Err(e)
            }
        }
    }

    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
            && self.keys.load().is_some()
            && self.redis.as_ref().is_none_or(|r| r.up())
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Records an audit event (waits for queue room; never drops) and
    /// counts it.
    pub async fn audit(&self, mut event: AgentAuthEvent) {
        event.ts = crate::audit::now_rfc3339();
        self.metrics
            .events
            .with_label_values(&[event.event, event.outcome])
            .inc();
        self.audit.record(event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn shipped() -> PolicyBundle {
        PolicyBundle::load(None, None, &[], Duration::from_millis(500)).unwrap()
    }

    #[actix_web::test]
    async fn tiers_follow_a_replaced_policy_and_survive_a_bad_one() {
        let metrics = atb_actors::ActorMetrics::register(&prometheus::Registry::new()).unwrap();
        let policy = crate::policy::config::PolicyConfig {
            threads: 1,
            ..Default::default()
        };
        let tiers = TierPolicy::new(shipped(), &policy, &metrics).unwrap();
        assert_eq!(
            tiers.tier("acme", "crm.contact.read").await.unwrap(),
            Tier::Low
        );
        assert_eq!(tiers.replace(shipped()), Ok(false));
        let mut changed = shipped();
        changed.data["atb"]["catalog"]["tiers"]["crm.contact.read"] = "critical".into();
        assert_eq!(tiers.replace(changed), Ok(true));
        assert_eq!(
            tiers.tier("acme", "crm.contact.read").await.unwrap(),
            Tier::Critical
        );
        let mut broken = shipped();
        broken
            .modules
            .push(("bad.rego".into(), "package atb.poa\nnot rego".into()));
        assert!(tiers.replace(broken).is_err());
        assert_eq!(
            tiers.tier("acme", "crm.contact.read").await.unwrap(),
            Tier::Critical
        );
    }
}
