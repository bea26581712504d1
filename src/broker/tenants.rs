//! The tenant part of the broker's configuration, built into what the
//! pipeline reads: the directory of SPIFFE IDs, each tenant's mandate keys
//! and rules, its action catalogue and its connectors' compiled routes.
//!
//! - One build path for start and reload ([`TenantSet::build`]): a set is
//!   built whole from a validated configuration and swapped in atomically;
//!   a request reads one set from start to end.
//! - A tenant whose mandate settings did not change keeps its
//!   [`TenantAuth`] across a reload (fetched keys, runtime revocations).
//! - Plain data; the JWKS loops and connections are managed by the state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::poa::claims::ClaimRules;
use crate::poa::jwks::{JwksCache, JwksTimings};
use crate::poa::keys::{self, KeySet};
use crate::routes::Binding;
use crate::tenant::TenantConfig;
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
    pub fn load(
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

/// Tenant → connector → compiled routes.
pub type Bindings = HashMap<String, HashMap<String, Binding>>;
pub type Catalogues = HashMap<String, crate::catalog::TenantCatalogue>;

/// Every tenant's connectors compiled into route bindings (at start and
/// on reload); unbound connectors are warned about and flagged by
/// `atb_connector_unbound`.
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

/// Everything the pipeline reads about tenants, from one configuration.
pub struct TenantSet {
    /// The configuration the set was built from (the policy reads its
    /// tenants' `policy_data`).
    pub config: Arc<Config>,
    pub directory: Arc<TenantDirectory>,
    pub auth: HashMap<String, Arc<TenantAuth>>,
    /// Compiled routes: tenant → connector → binding.
    pub bindings: Bindings,
    /// Each tenant's action catalogue (built-in plus its extensions).
    pub catalogues: Catalogues,
    /// Interned tenant ids handed to shards without allocating per request.
    pub keys: HashMap<String, Arc<str>>,
}

impl TenantSet {
    /// Builds the set for `config` (validated). Tenants whose mandate
    /// settings are unchanged from `previous` keep their `TenantAuth`.
    pub fn build(
        config: Arc<Config>,
        previous: Option<&TenantSet>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let quotas = config.replay_quotas();
        let mut auth = HashMap::with_capacity(config.tenants.len());
        for t in &config.tenants {
            let quota = quotas.get(&t.id).copied().unwrap_or(1);
            let kept = previous.and_then(|p| {
                let old = p.config.tenants.iter().find(|o| o.id == t.id)?;
                let same = serde_json::to_value(&old.poa).ok() == serde_json::to_value(&t.poa).ok()
                    && p.auth.get(&t.id)?.replay_quota == quota;
                same.then(|| p.auth.get(&t.id).cloned()).flatten()
            });
            let a = match kept {
                Some(a) => a,
                None => Arc::new(TenantAuth::load(t, &config, metrics, quota)?),
            };
            auth.insert(t.id.clone(), a);
        }
        let (bindings, catalogues) = compile_bindings(&config, metrics)?;
        let directory = Arc::new(TenantDirectory::new(&config.tenants));
        let keys = directory
            .ids()
            .map(|id| (id.to_owned(), Arc::from(id)))
            .collect();
        Ok(Self {
            config,
            directory,
            auth,
            bindings,
            catalogues,
            keys,
        })
    }

    /// Every JWKS source (for readiness).
    pub fn jwks(&self) -> impl Iterator<Item = &Arc<JwksCache>> {
        self.auth.values().filter_map(|a| a.jwks.as_ref())
    }
}

/// The current set, swapped whole.
pub type CurrentTenants = ArcSwap<TenantSet>;

/// What a reload changed, for connections and loops.
pub struct Changes {
    /// Tenants gone or disabled: their connections are closed.
    pub closed: Vec<String>,
    /// Tenants whose `TenantAuth` is new (their JWKS loop starts) or gone
    /// (their loop stops).
    pub auth_replaced: HashSet<String>,
}

/// Compares two sets.
pub fn changes(old: &TenantSet, new: &TenantSet) -> Changes {
    let closed = old
        .config
        .tenants
        .iter()
        .filter(|t| {
            new.config
                .tenants
                .iter()
                .find(|n| n.id == t.id)
                .is_none_or(|n| !n.enabled)
        })
        .map(|t| t.id.clone())
        .collect();
    let auth_replaced = old
        .auth
        .iter()
        .filter(|(id, a)| new.auth.get(*id).is_none_or(|n| !Arc::ptr_eq(a, n)))
        .map(|(id, _)| id.clone())
        .chain(
            new.auth
                .iter()
                .filter(|(id, a)| old.auth.get(*id).is_none_or(|o| !Arc::ptr_eq(a, o)))
                .map(|(id, _)| id.clone()),
        )
        .collect();
    Changes {
        closed,
        auth_replaced,
    }
}
