//! Single-use mandates: a `jti` is accepted once per tenant until it can no
//! longer be valid (`exp + leeway`). In memory by default.
//!
//! The store is bounded and never evicts a live entry: when it is full the
//! answer is [`ReplayError::Full`], which the pipeline turns into 503
//! `replay_store_unavailable` (fail closed) — an attacker who floods the
//! cache gets refusals, not replays. Expired entries are swept by the
//! periodic loop ([`start_sweep`]).
//!
//! Compact entries: the key is the first 128 bits of
//! SHA-256(len(tenant) ‖ tenant ‖ jti), not the strings (about 70 bytes an
//! entry instead of 140; README "Memory bounds"). The same `(tenant, jti)`
//! always gives the same key, so a replay is always found; a collision of
//! two different jtis (2^-64 odds at 2^32 live entries) could only make a
//! fresh mandate look used — a refusal, never an accepted replay.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures_util::future::BoxFuture;

/// First use or replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fresh,
    Replayed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("the replay cache is full")]
    Full,
    /// This tenant holds its whole share; other tenants are unaffected.
    #[error("this tenant's share of the replay cache is full")]
    TenantFull,
    #[error("the replay store is unreachable: {0}")]
    Unavailable(String),
}

/// Where single use is recorded: in memory (this module) or shared by
/// every replica (a Redis store plugs in here). Fail closed: any error is a
/// refusal (503 `replay_store_unavailable`), never a pass.
pub trait ReplayStore: Send + Sync + 'static {
    /// Marks `jti` of `tenant` as used until `keep_until`; `Fresh` exactly
    /// once per live `(tenant, jti)`, however many replicas race. A new
    /// entry needs room in the tenant's `quota`.
    fn mark<'a>(
        &'a self,
        tenant: &'a Arc<str>,
        jti: &'a str,
        keep_until: i64,
        now: i64,
        quota: usize,
    ) -> BoxFuture<'a, Result<Verdict, ReplayError>>;
}

impl ReplayStore for MemoryReplay {
    fn mark<'a>(
        &'a self,
        tenant: &'a Arc<str>,
        jti: &'a str,
        keep_until: i64,
        now: i64,
        quota: usize,
    ) -> BoxFuture<'a, Result<Verdict, ReplayError>> {
        Box::pin(std::future::ready(MemoryReplay::mark(
            self, tenant, jti, keep_until, now, quota,
        )))
    }
}

/// A `(tenant, jti)` as 128 bits of SHA-256 (see the module header).
type ReplayKey = [u8; 16];

fn replay_key(tenant: &str, jti: &str) -> ReplayKey {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((tenant.len() as u64).to_be_bytes());
    h.update(tenant.as_bytes());
    h.update(jti.as_bytes());
    let digest = h.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// In-memory replay cache: `(tenant, jti) → keep-until` (Unix seconds).
/// Each tenant holds at most its quota of live entries, so one tenant
/// flooding it gets 503 for itself while others keep their room; the
/// capacity bounds the whole.
pub struct MemoryReplay {
    /// Key of `(tenant, jti)` → (keep-until, tenant).
    entries: DashMap<ReplayKey, (i64, Arc<str>)>,
    /// Live entries per tenant.
    held: DashMap<Arc<str>, usize>,
    len: AtomicUsize,
    capacity: usize,
}

impl MemoryReplay {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: DashMap::new(),
            held: DashMap::new(),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
        }
    }

    /// Marks `jti` of `tenant` as used until `keep_until`; says whether it
    /// was already in use at `now`. A new entry needs room in the tenant's
    /// `quota` and in the whole cache.
    pub fn mark(
        &self,
        tenant: &Arc<str>,
        jti: &str,
        keep_until: i64,
        now: i64,
        quota: usize,
    ) -> Result<Verdict, ReplayError> {
        match self.entries.entry(replay_key(tenant, jti)) {
            Entry::Occupied(mut e) => {
                if e.get().0 > now {
                    Ok(Verdict::Replayed)
                } else {
                    e.get_mut().0 = keep_until;
                    Ok(Verdict::Fresh)
                }
            }
            Entry::Vacant(v) => {
                // The entry's shard lock is held, so this tenant's count
                // and the total move together with the insert.
                let mut held = self.held.entry(tenant.clone()).or_insert(0);
                if *held >= quota.max(1) {
                    return Err(ReplayError::TenantFull);
                }
                if self.len.fetch_add(1, Ordering::AcqRel) >= self.capacity {
                    self.len.fetch_sub(1, Ordering::AcqRel);
                    return Err(ReplayError::Full);
                }
                *held += 1;
                v.insert((keep_until, tenant.clone()));
                Ok(Verdict::Fresh)
            }
        }
    }

    /// Drops entries that can no longer matter at `now`; returns how many.
    pub fn sweep(&self, now: i64) -> usize {
        let mut removed = 0;
        self.entries.retain(|_, (until, tenant)| {
            let keep = *until > now;
            if !keep {
                removed += 1;
                if let Some(mut held) = self.held.get_mut(tenant) {
                    *held = held.saturating_sub(1);
                }
            }
            keep
        });
        self.len.fetch_sub(removed, Ordering::AcqRel);
        removed
    }

    /// Live entries `tenant` holds.
    pub fn held(&self, tenant: &str) -> usize {
        self.held.get(tenant).map_or(0, |h| *h)
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sweeps expired entries out of `cache` every `every`, as a periodic loop
/// (`atb_actors::periodic`, actor `replay_sweep`), and publishes the entry
/// count.
pub fn start_sweep(
    cache: Arc<MemoryReplay>,
    every: Duration,
    entries_gauge: prometheus::IntGauge,
    metrics: &atb_actors::ActorMetrics,
) -> atb_actors::PeriodicHandle {
    let name = atb_actors::PeriodicName::single("replay_sweep");
    atb_actors::periodic::start(name, every, metrics, move || {
        let removed = cache.sweep(crate::runtime::clock::unix_now());
        entries_gauge.set(cache.len() as i64);
        if removed > 0 {
            tracing::debug!(removed, "replay cache swept");
        }
        std::future::ready(every)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_use_is_a_replay_until_expiry() {
        let c = MemoryReplay::new(10);
        let t: Arc<str> = Arc::from("acme");
        assert_eq!(c.mark(&t, "j1", 200, 100, 10), Ok(Verdict::Fresh));
        assert_eq!(c.mark(&t, "j1", 200, 150, 10), Ok(Verdict::Replayed));
        // Another tenant's jti space is separate.
        let u: Arc<str> = Arc::from("globex");
        assert_eq!(c.mark(&u, "j1", 200, 150, 10), Ok(Verdict::Fresh));
        // After keep-until the entry no longer matters.
        assert_eq!(c.mark(&t, "j1", 400, 201, 10), Ok(Verdict::Fresh));
        // The key keeps tenant and jti apart: ("a", "bc") is not ("ab", "c").
        let (a, ab): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("ab"));
        assert_eq!(c.mark(&a, "bc", 200, 100, 10), Ok(Verdict::Fresh));
        assert_eq!(c.mark(&ab, "c", 200, 100, 10), Ok(Verdict::Fresh));
        assert_eq!(c.mark(&a, "bc", 200, 100, 10), Ok(Verdict::Replayed));
    }

    #[test]
    fn full_cache_refuses_instead_of_evicting() {
        let c = MemoryReplay::new(2);
        let t: Arc<str> = Arc::from("acme");
        assert_eq!(c.mark(&t, "a", 200, 100, 10), Ok(Verdict::Fresh));
        assert_eq!(c.mark(&t, "b", 200, 100, 10), Ok(Verdict::Fresh));
        assert_eq!(c.mark(&t, "c", 200, 100, 10), Err(ReplayError::Full));
        // The live entries are still there.
        assert_eq!(c.mark(&t, "a", 200, 100, 10), Ok(Verdict::Replayed));
        // After a sweep past their lifetime there is room again.
        assert_eq!(c.sweep(300), 2);
        assert_eq!(c.len(), 0);
        assert_eq!(c.mark(&t, "c", 400, 300, 10), Ok(Verdict::Fresh));
    }

    #[test]
    fn a_tenant_that_fills_its_share_leaves_others_their_room() {
        let c = MemoryReplay::new(4);
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        assert_eq!(c.mark(&a, "1", 200, 100, 2), Ok(Verdict::Fresh));
        assert_eq!(c.mark(&a, "2", 200, 100, 2), Ok(Verdict::Fresh));
        assert_eq!(c.mark(&a, "3", 200, 100, 2), Err(ReplayError::TenantFull));
        // Replays are still recognised at quota.
        assert_eq!(c.mark(&a, "1", 200, 100, 2), Ok(Verdict::Replayed));
        assert_eq!(c.mark(&b, "1", 200, 100, 2), Ok(Verdict::Fresh));
        assert_eq!(c.mark(&b, "2", 200, 100, 2), Ok(Verdict::Fresh));
        assert_eq!((c.held("a"), c.held("b"), c.len()), (2, 2, 4));
        // Expired entries give the share back.
        assert_eq!(c.sweep(300), 4);
        assert_eq!((c.held("a"), c.held("b"), c.len()), (0, 0, 0));
        assert_eq!(c.mark(&a, "3", 400, 300, 2), Ok(Verdict::Fresh));
        // Oversubscribed quotas still stop at the capacity.
        let small = MemoryReplay::new(1);
        assert_eq!(small.mark(&a, "x", 200, 100, 5), Ok(Verdict::Fresh));
        assert_eq!(small.mark(&b, "x", 200, 100, 5), Err(ReplayError::Full));
    }

    #[test]
    fn concurrent_marks_of_one_jti_have_one_winner() {
        let c = Arc::new(MemoryReplay::new(1000));
        let fresh: usize = (0..16)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.mark(&Arc::from("t"), "same", 200, 100, 1000))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|v| *v == Ok(Verdict::Fresh))
            .count();
        assert_eq!(fresh, 1);
    }
}
