//! The validator (design card: Validator): a presented mandate checked
//! against its tenant's keys — static PEM keys and the tenant's JWKS (its
//! own refresh loop, single flight, cooldown, negative-`kid` cache, bounded
//! staleness: `poa::jwks`) — and its revocations. Verification runs on the
//! request's own task against the keys the tenant set publishes; no
//! mailbox hop. The result is a typed [`Refusal`] carrying its metric
//! label; the gateway maps it to an HTTP answer.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::biscuit::config::BiscuitConfig;
use crate::biscuit::verify::{BiscuitRefusal, Capability, RootKeys};
use crate::config::error::{invalid, ConfigError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::poa::claims::{self, ClaimRules, PoaClaims};
use crate::poa::jwks::{JwksCache, JwksTimings};
use crate::poa::keys::{self, KeySet};
use crate::poa::{token, PoaError};
use crate::tenant::TenantConfig;

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
    /// Root keys of the tenant's Biscuit capabilities (empty: none).
    /// Replaced on reload when the tenant keeps its `TenantAuth`.
    pub biscuit_roots: ArcSwap<RootKeys>,
}

/// Most revocations a tenant holds (configured plus added at runtime).
pub const MAX_REVOCATIONS: usize = 100_000;

impl TenantAuth {
    pub fn load(
        t: &TenantConfig,
        config: &Config,
        metrics: &Metrics,
        replay_quota: usize,
    ) -> Result<Self, ConfigError> {
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
            let key = keys::load_public_pem(path).map_err(|e| {
                invalid(
                    format!("tenants.{}.poa.public_key_files[{i}]", t.id),
                    e.to_string(),
                )
            })?;
            set.insert(keys::thumbprint(&key), key);
        }
        let biscuit_roots = ArcSwap::from_pointee(biscuit_roots(t)?);
        Ok(Self {
            biscuit_roots,
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

    /// Whether `kid` is in the revoked set (configuration, admin API or
    /// shared revocations; not the JWKS's own list).
    pub fn kid_listed(&self, kid: &str) -> bool {
        self.revoked_kids.load().contains(kid)
    }

    /// Whether the mandate `jti` is revoked (configuration or admin API).
    pub fn jti_revoked(&self, jti: &str) -> bool {
        self.revoked_jtis.load().contains(jti)
    }

    /// Adds revocations, effective for the next request on this replica.
    /// Refused as a whole if it would pass [`MAX_REVOCATIONS`] in a set.
    pub fn revoke(&self, kids: &[String], jtis: &[String]) -> Result<(), RevokeError> {
        // The guarded data is (), so a poisoned lock holds nothing broken.
        let _writer = self.revoking.lock().unwrap_or_else(|p| p.into_inner());
        let add = |set: &ArcSwap<HashSet<String>>, more: &[String]| {
            let mut next = HashSet::clone(&set.load());
            next.extend(more.iter().cloned());
            next
        };
        let (kids_next, jtis_next) = (add(&self.revoked_kids, kids), add(&self.revoked_jtis, jtis));
        if kids_next.len() > MAX_REVOCATIONS || jtis_next.len() > MAX_REVOCATIONS {
            return Err(RevokeError::TooMany);
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

/// Revocations that could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    #[error("a tenant holds at most {MAX_REVOCATIONS} revoked kids and jtis")]
    TooMany,
}

/// Why a mandate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 401 `poa_invalid`.
    #[error("{0}")]
    Invalid(Cow<'static, str>),
    /// 401 `poa_expired`.
    #[error("{0}")]
    Expired(Cow<'static, str>),
    /// 401 `poa_revoked`.
    #[error("{0}")]
    Revoked(&'static str),
    /// 403 `poa_subject_mismatch`.
    #[error("the mandate's subject is not the calling agent")]
    SubjectMismatch,
    /// 403 `action_mismatch`.
    #[error("X-ATB-Action differs from the mandate's act (or names no right of the capability; a capability with several rights needs it)")]
    ActionMismatch,
}

impl Refusal {
    /// The `result` label of `atb_poa_validations_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Expired(_) => "expired",
            Self::Revoked(_) => "revoked",
            Self::SubjectMismatch => "subject_mismatch",
            Self::ActionMismatch => "action_mismatch",
        }
    }
}

impl From<PoaError> for Refusal {
    fn from(e: PoaError) -> Self {
        match e {
            PoaError::Invalid(r) => Self::Invalid(r),
            PoaError::Expired(r) => Self::Expired(r),
        }
    }
}

/// Verifies a compact JWS mandate for the tenant `auth` belongs to: the
/// signature first, the key's revocation after (a forged token naming a
/// revoked kid is invalid; a revoked key no longer published cannot verify
/// anything, so its tokens are answered as revoked), then the claims.
pub async fn verify_jwt(
    auth: &TenantAuth,
    client: &awc::Client,
    token: &str,
    now: i64,
) -> Result<PoaClaims, Refusal> {
    let unverified = token::parse(token)?;
    let Some(key) = auth.key(client, &unverified.kid).await else {
        if auth.kid_revoked(&unverified.kid) {
            return Err(Refusal::Revoked("the signing key has been revoked"));
        }
        return Err(Refusal::Invalid(
            "unknown kid: no such key for this tenant".into(),
        ));
    };
    let revoked = auth.kid_revoked(&unverified.kid);
    let payload = unverified.verify(&key)?;
    if revoked {
        return Err(Refusal::Revoked("the signing key has been revoked"));
    }
    Ok(claims::validate(&payload, &auth.rules, now)?)
}

/// The tenant's Biscuit root keys as configured now (key files read).
pub fn biscuit_roots(t: &TenantConfig) -> Result<RootKeys, ConfigError> {
    let mut roots = Vec::new();
    for (i, k) in t
        .biscuit
        .iter()
        .flat_map(|b| b.root_keys.iter())
        .enumerate()
    {
        let key = || format!("tenants.{}.biscuit.root_keys[{i}]", t.id);
        roots.push((k.id, k.text().map_err(|e| invalid(key(), e))?));
    }
    RootKeys::parse(&roots).map_err(|e| invalid(format!("tenants.{}.biscuit.root_keys", t.id), e))
}

/// Verifies a Biscuit under the tenant's root keys (chosen by its
/// `root_key_id`) and reads its grant; refused if any of its revocation ids
/// (a parent's included) is revoked.
pub fn verify_biscuit(
    auth: &TenantAuth,
    limits: &BiscuitConfig,
    token: &str,
    now: i64,
) -> Result<Capability, Refusal> {
    let capability = crate::biscuit::verify::verify(
        token,
        &auth.biscuit_roots.load(),
        limits,
        now,
        auth.rules.leeway_seconds,
        auth.rules.max_ttl_seconds,
    )
    .map_err(|e| match e {
        BiscuitRefusal::Expired(m) => Refusal::Expired(m.into()),
        BiscuitRefusal::Invalid(m) | BiscuitRefusal::Denied(m) => Refusal::Invalid(m.into()),
    })?;
    if capability
        .revocation_ids
        .iter()
        .any(|id| auth.jti_revoked(id))
    {
        return Err(Refusal::Revoked(
            "this capability (or one it derives from) has been revoked",
        ));
    }
    Ok(capability)
}

/// A verified Biscuit bound to this call: its agent is the calling agent,
/// its tenant the caller's tenant, and the action of the call is one it
/// grants — named by `X-ATB-Action`, or its only right.
pub fn bind_biscuit(
    capability: &mut Capability,
    tenant: &str,
    agent: &str,
    action_header: Option<&[u8]>,
) -> Result<(), Refusal> {
    if capability.agent != agent {
        return Err(Refusal::SubjectMismatch);
    }
    if capability.tenant != tenant {
        return Err(Refusal::Invalid(
            "the capability names another tenant".into(),
        ));
    }
    let act = match action_header {
        Some(h) => std::str::from_utf8(h)
            .ok()
            .filter(|a| capability.rights.iter().any(|r| r == a))
            .ok_or(Refusal::ActionMismatch)?
            .to_owned(),
        None => match capability.rights.as_slice() {
            [only] => only.clone(),
            _ => return Err(Refusal::ActionMismatch),
        },
    };
    capability.act = act;
    Ok(())
}

/// A verified mandate bound to this call: its subject is the calling agent,
/// an `X-ATB-Action` header (if sent) names its action, and its `jti` is
/// not revoked.
pub fn bind(
    auth: &TenantAuth,
    claims: &PoaClaims,
    agent: &str,
    action_header: Option<&[u8]>,
) -> Result<(), Refusal> {
    if claims.sub != agent {
        return Err(Refusal::SubjectMismatch);
    }
    if action_header.is_some_and(|h| h != claims.act.as_bytes()) {
        return Err(Refusal::ActionMismatch);
    }
    if auth.jti_revoked(&claims.jti) {
        return Err(Refusal::Revoked("this mandate has been revoked"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_revocation_sets_are_bounded_and_a_refused_addition_changes_nothing() {
        let config = Config::from_toml("").unwrap();
        let metrics = Metrics::new().unwrap();
        let tenant = crate::config::tests_support::tenant("acme");
        let auth = TenantAuth::load(&tenant, &config, &metrics, 10).unwrap();
        let jtis: Vec<String> = (0..MAX_REVOCATIONS).map(|i| format!("j{i}")).collect();
        auth.revoke(&[], &jtis).unwrap();
        assert!(auth.jti_revoked("j0"));
        // One more is refused as a whole (kid and jti alike), and nothing
        // of it is taken; every revocation already held stays.
        let one_more = ["k-new".to_owned()];
        assert_eq!(
            auth.revoke(&one_more, &["j-new".to_owned()]),
            Err(RevokeError::TooMany)
        );
        assert!(!auth.kid_listed("k-new"));
        assert!(!auth.jti_revoked("j-new"));
        assert!(auth.jti_revoked(&format!("j{}", MAX_REVOCATIONS - 1)));
        // Re-adding held ones does not grow the set.
        auth.revoke(&[], &jtis[..10]).unwrap();
    }
}
