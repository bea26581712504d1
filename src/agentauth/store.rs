//! AgentAuth state behind traits: challenges and rate-limit buckets. The
//! in-memory implementations live here; a shared (Redis) implementation
//! plugs in behind the same traits so replicas agree.
//!
//! Every change to a challenge goes through [`ChallengeStore::update`],
//! which applies a transition atomically: two approvals racing never lose
//! one nor count one twice, and a challenge is minted at most once.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use futures_util::future::BoxFuture;

use super::challenge::{Challenge, Refusal, Status};

/// A transition applied under the store's lock for one challenge.
pub type Transition<'a> = Box<dyn FnMut(&mut Challenge) -> Result<(), Refusal> + Send + 'a>;

pub trait ChallengeStore: Send + Sync + 'static {
    /// Stores a new challenge; `Refusal::Full` when at capacity.
    fn insert(&self, challenge: Challenge) -> BoxFuture<'_, Result<(), Refusal>>;
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Challenge, Refusal>>;
    /// Applies `transition` atomically and returns the challenge after it.
    fn update<'a>(
        &'a self,
        id: &'a str,
        transition: Transition<'a>,
    ) -> BoxFuture<'a, Result<Challenge, Refusal>>;
    /// Up to `limit` challenges of `tenant` (all tenants when `None`) in
    /// `status` at `now`, oldest first.
    fn list<'a>(
        &'a self,
        tenant: Option<&'a str>,
        status: Option<Status>,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Challenge>, Refusal>>;
    /// Reports the pending challenges that have expired since the last
    /// sweep (once each, while they stay readable as `expired`) and removes
    /// those that expired more than `grace` seconds before `now`.
    fn sweep(&self, now: i64, grace: i64) -> BoxFuture<'_, Result<Swept, Refusal>>;
}

/// What a sweep found.
#[derive(Debug, Default)]
pub struct Swept {
    /// Pending (neither minted nor rejected) challenges that reached their
    /// expiry since the last sweep.
    pub expired: Vec<Challenge>,
    /// How many challenges were removed.
    pub removed: usize,
    /// How many challenges are held after the sweep, when the store counts
    /// them itself (a shared store: every replica's challenges).
    pub held: Option<usize>,
}

/// Challenges in this process: at most `capacity` in all and `per_tenant`
/// of one tenant (held until they expire and are swept), so one tenant's
/// agents flooding challenges get `Refusal::Full` while other tenants keep
/// their room.
pub struct MemoryChallenges {
    map: DashMap<String, Challenge>,
    capacity: usize,
    per_tenant: usize,
    len: AtomicUsize,
    /// Challenges held per tenant.
    held: DashMap<String, usize>,
}

impl MemoryChallenges {
    pub fn new(capacity: usize, per_tenant: usize) -> Self {
        Self {
            map: DashMap::new(),
            capacity,
            per_tenant: per_tenant.max(1),
            len: AtomicUsize::new(0),
            held: DashMap::new(),
        }
    }

    /// Challenges `tenant` holds.
    pub fn held(&self, tenant: &str) -> usize {
        self.held.get(tenant).map_or(0, |h| *h)
    }
}

impl ChallengeStore for MemoryChallenges {
    fn insert(&self, challenge: Challenge) -> BoxFuture<'_, Result<(), Refusal>> {
        // The tenant's count is locked across the checks and the insert.
        let mut held = self.held.entry(challenge.tenant.clone()).or_insert(0);
        let result = if *held >= self.per_tenant {
            Err(Refusal::Full)
        } else if self.len.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.len.fetch_sub(1, Ordering::AcqRel);
            Err(Refusal::Full)
        } else {
            match self.map.entry(challenge.id.clone()) {
                dashmap::Entry::Occupied(_) => {
                    self.len.fetch_sub(1, Ordering::AcqRel);
                    Err(Refusal::Store("challenge id collision".into()))
                }
                dashmap::Entry::Vacant(v) => {
                    *held += 1;
                    v.insert(challenge);
                    Ok(())
                }
            }
        };
        drop(held);
        Box::pin(async move { result })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Challenge, Refusal>> {
        let result = self.map.get(id).map(|c| c.clone()).ok_or(Refusal::NotFound);
        Box::pin(async move { result })
    }

    fn update<'a>(
        &'a self,
        id: &'a str,
        mut transition: Transition<'a>,
    ) -> BoxFuture<'a, Result<Challenge, Refusal>> {
        // The entry's write lock is held across check and change.
        let result = match self.map.get_mut(id) {
            None => Err(Refusal::NotFound),
            Some(mut entry) => {
                let mut next = entry.clone();
                transition(&mut next).map(|()| {
                    *entry = next.clone();
                    next
                })
            }
        };
        Box::pin(async move { result })
    }

    fn list<'a>(
        &'a self,
        tenant: Option<&'a str>,
        status: Option<Status>,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Challenge>, Refusal>> {
        let mut found: Vec<Challenge> = self
            .map
            .iter()
            .filter(|c| tenant.is_none_or(|t| c.tenant == t))
            .filter(|c| status.is_none_or(|s| c.status(now) == s))
            .map(|c| c.clone())
            .collect();
        found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        found.truncate(limit);
        Box::pin(async move { Ok(found) })
    }

    fn sweep(&self, now: i64, grace: i64) -> BoxFuture<'_, Result<Swept, Refusal>> {
        let mut swept = Swept::default();
        let mut gone = Vec::new();
        self.map.retain(|_, c| {
            if c.expires_at <= now && !c.expiry_reported {
                c.expiry_reported = true;
                if c.minted.is_none() && c.rejected.is_none() {
                    swept.expired.push(c.clone());
                }
            }
            let keep = c.expires_at + grace > now;
            if !keep {
                swept.removed += 1;
                gone.push(c.tenant.clone());
            }
            keep
        });
        // Counted down after the map's locks are released (insert takes
        // the tenant's count first, then the map's).
        for tenant in gone {
            if let Some(mut held) = self.held.get_mut(&tenant) {
                *held = held.saturating_sub(1);
            }
        }
        self.len.fetch_sub(swept.removed, Ordering::AcqRel);
        Box::pin(async move { Ok(swept) })
    }
}

/// Per-key request budgets ("at most N per minute", a token bucket with a
/// burst of N refilled continuously).
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one request from `key`'s budget; `Ok(Some(seconds))` means
    /// refused, retry after that many seconds.
    fn hit<'a>(
        &'a self,
        key: &'a str,
        per_minute: u32,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, Refusal>>;
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// Token buckets in this process, bounded: when full, buckets that have
/// refilled completely (indistinguishable from new ones) are dropped; if
/// the table is still full of live buckets, the tenth of them closest to
/// full is dropped (each such key regains at most the little it had spent,
/// while the drained buckets of busy keys stay: flooding the table with
/// fresh keys, say from many addresses, cannot reset anyone's limit).
pub struct MemoryRateLimiter {
    buckets: DashMap<String, Bucket>,
    max_keys: usize,
}

impl MemoryRateLimiter {
    pub fn new(max_keys: usize) -> Self {
        Self {
            buckets: DashMap::new(),
            max_keys,
        }
    }

    /// Drops the tenth of the buckets holding the most tokens now.
    fn evict_fullest(&self, capacity: f64, rate_per_ms: f64, now_ms: u64) {
        let mut levels: Vec<(f64, String)> = self
            .buckets
            .iter()
            .map(|b| {
                let level =
                    (b.tokens + now_ms.saturating_sub(b.at_ms) as f64 * rate_per_ms).min(capacity);
                (level, b.key().clone())
            })
            .collect();
        let evict = (self.max_keys / 10).clamp(1, levels.len().max(1));
        if levels.len() > evict {
            levels.select_nth_unstable_by(evict - 1, |a, b| b.0.total_cmp(&a.0));
        }
        for (_, key) in levels.iter().take(evict) {
            self.buckets.remove(key);
        }
        tracing::warn!(
            keys = self.max_keys,
            evicted = evict,
            "rate-limit table full of live buckets; dropped the fullest"
        );
    }

    fn take(&self, key: &str, per_minute: u32, now_ms: u64) -> Option<u64> {
        let capacity = f64::from(per_minute);
        let rate_per_ms = capacity / 60_000.0;
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.buckets.retain(|_, b| {
                b.tokens + now_ms.saturating_sub(b.at_ms) as f64 * rate_per_ms < capacity
            });
            if self.buckets.len() >= self.max_keys {
                self.evict_fullest(capacity, rate_per_ms, now_ms);
            }
        }
        let mut b = self.buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            at_ms: now_ms,
        });
        let refilled =
            (b.tokens + now_ms.saturating_sub(b.at_ms) as f64 * rate_per_ms).min(capacity);
        b.at_ms = now_ms.max(b.at_ms);
        if refilled >= 1.0 {
            b.tokens = refilled - 1.0;
            None
        } else {
            b.tokens = refilled;
            let wait_ms = (1.0 - refilled) / rate_per_ms;
            Some(((wait_ms / 1000.0).ceil() as u64).max(1))
        }
    }
}

impl RateLimiter for MemoryRateLimiter {
    fn hit<'a>(
        &'a self,
        key: &'a str,
        per_minute: u32,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, Refusal>> {
        let result = self.take(key, per_minute, now_ms);
        Box::pin(async move { Ok(result) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::challenge::{parse_request, Approver, Tier};
    use super::*;

    fn challenge(id: &str, tier: Tier, now: i64) -> Challenge {
        let req = parse_request(
            &serde_json::json!({"act": "a.b", "con": {}, "leg": {}}),
            "spiffe://t/agent",
        )
        .unwrap();
        Challenge::new(
            id.into(),
            "acme".into(),
            "spiffe://t/agent".into(),
            req,
            tier,
            now,
            60,
        )
    }

    #[actix_web::test]
    async fn capacity_ids_and_sweep() {
        let s = MemoryChallenges::new(2, 10);
        s.insert(challenge("a", Tier::Low, 0)).await.unwrap();
        assert!(matches!(
            s.insert(challenge("a", Tier::Low, 0)).await,
            Err(Refusal::Store(_))
        ));
        s.insert(challenge("b", Tier::High, 30)).await.unwrap();
        assert_eq!(
            s.insert(challenge("c", Tier::Low, 0)).await,
            Err(Refusal::Full)
        );
        assert_eq!(s.get("zz").await, Err(Refusal::NotFound));
        let pending = s.list(Some("acme"), Some(Status::Pending), 10, 10).await;
        assert_eq!(pending.unwrap().len(), 1);
        assert_eq!(s.list(Some("other"), None, 10, 10).await.unwrap().len(), 0);
        // "a" expires at 60, "b" at 90: at 61 "a" is reported, once, and
        // stays readable; after the grace it is removed.
        let swept = s.sweep(61, 5).await.unwrap();
        assert_eq!(swept.expired.len(), 1);
        assert_eq!(swept.expired[0].id, "a");
        assert_eq!(swept.removed, 0);
        assert!(s.get("a").await.is_ok());
        let swept = s.sweep(66, 5).await.unwrap();
        assert!(swept.expired.is_empty());
        assert_eq!(swept.removed, 1);
        s.insert(challenge("c", Tier::Low, 70)).await.unwrap();
        // A minted or rejected challenge is not reported as expired.
        s.update(
            "b",
            Box::new(|c| {
                c.rejected = Some(crate::agentauth::challenge::Decision {
                    by: "x".into(),
                    at: 40,
                    reason: None,
                });
                Ok(())
            }),
        )
        .await
        .unwrap();
        assert!(s.sweep(91, 5).await.unwrap().expired.is_empty());
    }

    #[actix_web::test]
    async fn failed_transitions_change_nothing() {
        let s = MemoryChallenges::new(10, 10);
        s.insert(challenge("a", Tier::High, 0)).await.unwrap();
        let r = s
            .update(
                "a",
                Box::new(|c| {
                    c.act = "changed".into();
                    Err(Refusal::SelfApproval)
                }),
            )
            .await;
        assert_eq!(r, Err(Refusal::SelfApproval));
        assert_eq!(s.get("a").await.unwrap().act, "a.b");
    }

    #[test]
    fn racing_approvals_are_all_counted_once() {
        let store = Arc::new(MemoryChallenges::new(10, 10));
        futures_executor_block_on(store.insert(challenge("a", Tier::High, 0))).unwrap();
        // 8 threads, each approving as 8 people, half of them shared:
        // exactly two approvals land, no more, no fewer.
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut ok = 0;
                    for p in 0..8 {
                        let who = Approver {
                            id: format!("person-{}", (t * 8 + p) % 4),
                            email: None,
                            roles: vec![],
                            tenants: vec!["t".into()],
                            cross_tenant: false,
                        };
                        let r = futures_executor_block_on(
                            store.update("a", Box::new(move |c| c.approve(&who, &[], 1))),
                        );
                        if r.is_ok() {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let total: i32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 2);
        let c = futures_executor_block_on(store.get("a")).unwrap();
        assert_eq!(c.approvals.len(), 2);
        assert_ne!(c.approvals[0].approver_id, c.approvals[1].approver_id);
    }

    fn futures_executor_block_on<T>(f: BoxFuture<'_, T>) -> T {
        actix_web::rt::System::new().block_on(f)
    }

    fn challenge_of(tenant: &str, id: &str) -> Challenge {
        let mut c = challenge(id, Tier::Low, 0);
        c.tenant = tenant.into();
        c
    }

    #[actix_web::test]
    async fn a_tenant_that_fills_its_share_of_challenges_leaves_others_room() {
        let s = MemoryChallenges::new(5, 2);
        for id in ["a1", "a2"] {
            s.insert(challenge_of("acme", id)).await.unwrap();
        }
        // acme is at its share; globex is not.
        assert_eq!(
            s.insert(challenge_of("acme", "a3")).await,
            Err(Refusal::Full)
        );
        for id in ["g1", "g2"] {
            s.insert(challenge_of("globex", id)).await.unwrap();
        }
        assert_eq!((s.held("acme"), s.held("globex")), (2, 2));
        // The total bounds every tenant together.
        s.insert(challenge_of("initech", "i1")).await.unwrap();
        assert_eq!(
            s.insert(challenge_of("initech", "i2")).await,
            Err(Refusal::Full)
        );
        // Swept challenges give the share back.
        assert_eq!(s.sweep(1_000, 0).await.unwrap().removed, 5);
        assert_eq!((s.held("acme"), s.held("globex")), (0, 0));
        s.insert(challenge_of("acme", "a3")).await.unwrap();
    }

    #[test]
    fn buckets_refill_and_say_when() {
        let l = MemoryRateLimiter::new(100);
        for _ in 0..3 {
            assert_eq!(l.take("k", 3, 0), None);
        }
        // Empty: one token takes 20 s at 3/min.
        assert_eq!(l.take("k", 3, 0), Some(20));
        assert_eq!(l.take("k", 3, 10_000), Some(10));
        assert_eq!(l.take("k", 3, 20_000), None);
        assert_eq!(l.take("other", 3, 20_000), None);
    }

    #[test]
    fn bucket_map_is_bounded() {
        let l = MemoryRateLimiter::new(10);
        for i in 0..100 {
            l.take(&format!("k{i}"), 60, 0);
        }
        // Full buckets after a minute are dropped to make room.
        assert!(l.buckets.len() <= 11, "{}", l.buckets.len());
        l.take("late", 60, 120_000);
        assert!(l.buckets.len() <= 11);
    }

    #[test]
    fn a_flood_of_new_keys_cannot_reset_a_drained_bucket() {
        let l = MemoryRateLimiter::new(100);
        // A busy key spends its whole budget.
        for _ in 0..3 {
            assert_eq!(l.take("busy", 3, 0), None);
        }
        assert!(l.take("busy", 3, 0).is_some());
        // Thousands of fresh keys (addresses), one request each, at once.
        for i in 0..5_000 {
            l.take(&format!("addr{i}"), 3, 1);
        }
        assert!(l.buckets.len() <= 100, "{}", l.buckets.len());
        // The busy key is still limited: its drained bucket was kept.
        assert!(l.take("busy", 3, 2).is_some(), "the flood reset the limit");
    }
}
