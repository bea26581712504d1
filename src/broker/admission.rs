//! Per-tenant admission: the state a tenant shard owns, and the hourly
//! action counts beside it. Plain logic, driven by the shard actor, the
//! request's task and unit tests alike.
//!
//! Design points:
//! * token buckets (the tenant's, each rate-limited connector's) are shard
//!   state, used on the request's task under the shard's lock
//!   (`atb_actors::ShardCells`), and a connector without a rate limit
//!   costs no shard call at all;
//! * the hourly per-action counts the policy reads are a [`UsageLedger`]
//!   per shard index, outside the actor: the request's task reads and bumps
//!   them under a lock held for one map operation (no mailbox hop, no
//!   thread wake-up), and a restarted shard keeps counting where it stood;
//! * a shard restarted after a fault builds its buckets drained, never full
//!   (a fault must not hand out a fresh burst).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// An empty bucket as if drained at `drained`: at `now` it holds what
    /// it earned since (at most `burst`). A restarted shard builds its
    /// buckets this way, so a fault never hands out a fresh burst.
    pub fn drained_at(rate: f64, burst: u32, drained: Instant, now: Instant) -> Self {
        let earned = now.saturating_duration_since(drained).as_secs_f64() * rate;
        Self {
            rate,
            burst: f64::from(burst),
            tokens: earned.min(f64::from(burst)),
            last: now,
        }
    }

    /// Applies a changed configuration, keeping the tokens already earned.
    fn reconfigure(&mut self, rate: f64, burst: u32) {
        self.rate = rate;
        self.burst = f64::from(burst);
        self.tokens = self.tokens.min(self.burst);
    }
}

/// A request to a tenant shard.
#[derive(Debug)]
pub enum ShardRequest {
    /// Admit one request of `tenant` under its rate limit.
    Admit {
        tenant: Arc<str>,
        requests_per_second: f64,
        burst: u32,
        now: Instant,
    },
    /// A request bound for `connector`, which has a rate limit of `rate`
    /// (requests per second, burst): take a token from its bucket.
    Dispatch {
        tenant: Arc<str>,
        connector: Arc<str>,
        rate: (f64, u32),
        now: Instant,
    },
    /// Test-only fault injection: the handler panics.
    InjectFault,
}

/// A tenant shard's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    Admitted,
    /// Over the rate: retry after this long.
    Limited {
        retry_after: Duration,
    },
}

/// The window of per-action counts.
pub const USAGE_WINDOW: Duration = Duration::from_secs(3600);
/// Distinct (tenant, action) counters one shard keeps. Actions are
/// catalogue actions (checked before counting), so the configuration bounds
/// the pairs; this is the backstop. Full of live counters, a new pair reads
/// [`USAGE_UNTRACKED`].
pub const MAX_USAGE_ENTRIES: usize = 100_000;

/// Per-action counts of one shard's tenants, `(tenant, action) → (window
/// start, count)`. Held outside the shard actor's state and used from the
/// request's task, so a restarted shard keeps counting where it stood
/// (counts restarting at zero would fail open against the policy's hourly
/// limits).
#[derive(Debug)]
pub struct UsageLedger {
    counts: std::sync::Mutex<UsageCounts>,
    max_entries: usize,
}

impl Default for UsageLedger {
    fn default() -> Self {
        Self::with_capacity(MAX_USAGE_ENTRIES)
    }
}

/// The count reported for a `(tenant, action)` the full ledger cannot
/// track: over any hourly limit, so the policy denies (fail closed) rather
/// than see 0.
pub const USAGE_UNTRACKED: u64 = u32::MAX as u64;

/// `(tenant, action) → (window start, count)`.
type UsageCounts = HashMap<(Arc<str>, String), (Instant, u64)>;

impl UsageLedger {
    fn counts(&self) -> std::sync::MutexGuard<'_, UsageCounts> {
        // Updates are single assignments: a panic elsewhere while the lock
        // was held leaves consistent numbers, so a poisoned lock is used.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A ledger of at most `max_entries` counters.
    pub fn with_capacity(max_entries: usize) -> Self {
        Self {
            counts: Default::default(),
            max_entries: max_entries.max(1),
        }
    }

    /// Uses of `action` this hour; [`USAGE_UNTRACKED`] for a pair not in
    /// the ledger while it is full of live counters.
    pub fn usage(&self, tenant: &Arc<str>, action: &str, now: Instant) -> u64 {
        let mut usage = self.counts();
        match usage.get(&(tenant.clone(), action.to_owned())) {
            Some((start, n)) if now.saturating_duration_since(*start) < USAGE_WINDOW => *n,
            Some(_) => 0,
            None if usage.len() >= self.max_entries => {
                usage.retain(|_, (start, _)| now.saturating_duration_since(*start) < USAGE_WINDOW);
                if usage.len() >= self.max_entries {
                    USAGE_UNTRACKED
                } else {
                    0
                }
            }
            None => 0,
        }
    }

    /// Counts one allowed use of `action` this hour.
    pub fn record(&self, tenant: Arc<str>, action: String, now: Instant) {
        let mut usage = self.counts();
        if usage.len() >= self.max_entries {
            usage.retain(|_, (start, _)| now.saturating_duration_since(*start) < USAGE_WINDOW);
        }
        let fits = usage.len() < self.max_entries;
        match usage.entry((tenant, action)) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let (start, n) = e.get_mut();
                if now.saturating_duration_since(*start) >= USAGE_WINDOW {
                    *start = now;
                    *n = 0;
                }
                *n += 1;
            }
            std::collections::hash_map::Entry::Vacant(v) if fits => {
                v.insert((now, 1));
            }
            std::collections::hash_map::Entry::Vacant(_) => {}
        }
    }
}

/// The per-tenant state of one shard: its tenants' token buckets.
#[derive(Debug, Default)]
pub struct TenantShardState {
    buckets: HashMap<Arc<str>, TokenBucket>,
    connectors: HashMap<(Arc<str>, Arc<str>), TokenBucket>,
    /// Set when this state replaces one lost to a fault: buckets are built
    /// drained at that instant instead of full.
    restarted_at: Option<Instant>,
}

impl TenantShardState {
    /// The state of a shard starting for the first time (`restarted_at`
    /// `None`: full buckets) or after a fault (drained buckets).
    pub fn new(restarted_at: Option<Instant>) -> Self {
        Self {
            restarted_at,
            ..Self::default()
        }
    }
}

/// Takes a token from `key`'s bucket in `buckets`, creating it full (first
/// start) or drained at `restarted_at` (after a fault).
fn take<K: std::hash::Hash + Eq>(
    buckets: &mut HashMap<K, TokenBucket>,
    key: K,
    (rate, burst): (f64, u32),
    now: Instant,
    restarted_at: Option<Instant>,
) -> Result<(), Duration> {
    let bucket = buckets.entry(key).or_insert_with(|| match restarted_at {
        None => TokenBucket::new(rate, burst, now),
        Some(at) => TokenBucket::drained_at(rate, burst, at, now),
    });
    bucket.reconfigure(rate, burst);
    bucket.try_take(now)
}

/// Each shard index's lasting parts: whether its state was built before
/// (a restart after a fault builds drained buckets) and its usage ledger,
/// which the request's task uses directly.
#[derive(Debug)]
pub struct ShardStates {
    started: std::sync::Mutex<std::collections::HashSet<usize>>,
    ledgers: Vec<UsageLedger>,
}

impl ShardStates {
    /// The lasting parts of `shards` shard indexes.
    pub fn new(shards: usize) -> Self {
        Self {
            started: Default::default(),
            ledgers: (0..shards.max(1)).map(|_| UsageLedger::default()).collect(),
        }
    }

    /// Shard `index`'s state: full buckets at its first start, drained ones
    /// after a fault.
    pub fn build(&self, index: usize) -> TenantShardState {
        let first = self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(index);
        TenantShardState::new((!first).then(Instant::now))
    }

    /// Shard `index`'s usage ledger (indexes past the count share the last).
    pub fn ledger(&self, index: usize) -> &UsageLedger {
        &self.ledgers[index.min(self.ledgers.len() - 1)]
    }
}

impl atb_actors::ShardLogic for TenantShardState {
    type Request = ShardRequest;
    type Response = Admission;

    fn handle(&mut self, request: ShardRequest) -> Admission {
        match request {
            ShardRequest::Admit {
                tenant,
                requests_per_second,
                burst,
                now,
            } => match take(
                &mut self.buckets,
                tenant,
                (requests_per_second, burst),
                now,
                self.restarted_at,
            ) {
                Ok(()) => Admission::Admitted,
                Err(retry_after) => Admission::Limited { retry_after },
            },
            ShardRequest::Dispatch {
                tenant,
                connector,
                rate,
                now,
            } => match take(
                &mut self.connectors,
                (tenant, connector),
                rate,
                now,
                self.restarted_at,
            ) {
                Ok(()) => Admission::Admitted,
                Err(retry_after) => Admission::Limited { retry_after },
            },
            ShardRequest::InjectFault => panic!("fault injected through the debug hook"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atb_actors::ShardLogic;

    #[test]
    fn bucket_allows_burst_then_limits_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_ok());
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_err());
        // A long pause refills to the burst size, not beyond.
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.try_take(later).is_ok());
        }
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn a_full_usage_ledger_fails_closed_for_new_pairs() {
        let ledger = UsageLedger::with_capacity(2);
        let t: Arc<str> = Arc::from("acme");
        let t0 = Instant::now();
        ledger.record(t.clone(), "a.read".into(), t0);
        ledger.record(t.clone(), "b.read".into(), t0);
        // Tracked pairs keep counting; a new one is not tracked and reads
        // over any limit, never 0.
        ledger.record(t.clone(), "a.read".into(), t0);
        assert_eq!(ledger.usage(&t, "a.read", t0), 2);
        ledger.record(t.clone(), "c.read".into(), t0);
        assert_eq!(ledger.usage(&t, "c.read", t0), USAGE_UNTRACKED);
        // Once the hour has passed, stale counters make room.
        let later = t0 + USAGE_WINDOW;
        assert_eq!(ledger.usage(&t, "c.read", later), 0);
        ledger.record(t.clone(), "c.read".into(), later);
        assert_eq!(ledger.usage(&t, "c.read", later), 1);
    }

    #[test]
    fn clock_going_backwards_grants_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1.0, 1, t0);
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0 - Duration::from_secs(5)).is_err());
        assert!(b.try_take(t0).is_err());
    }

    #[test]
    fn tenants_have_separate_buckets() {
        let mut s = TenantShardState::default();
        let now = Instant::now();
        let admit = |s: &mut TenantShardState, t: &str| {
            s.handle(ShardRequest::Admit {
                tenant: t.into(),
                requests_per_second: 0.001,
                burst: 1,
                now,
            })
        };
        assert_eq!(admit(&mut s, "a"), Admission::Admitted);
        assert!(matches!(admit(&mut s, "a"), Admission::Limited { .. }));
        assert_eq!(admit(&mut s, "b"), Admission::Admitted);
    }

    #[test]
    fn dispatch_limits_each_connector_and_the_ledger_counts_actions() {
        let mut s = TenantShardState::default();
        let t0 = Instant::now();
        let t: Arc<str> = Arc::from("acme");
        let dispatch = |s: &mut TenantShardState, connector: &str, now| {
            s.handle(ShardRequest::Dispatch {
                tenant: t.clone(),
                connector: Arc::from(connector),
                rate: (1.0, 2),
                now,
            })
        };
        assert_eq!(dispatch(&mut s, "crm", t0), Admission::Admitted);
        assert_eq!(dispatch(&mut s, "crm", t0), Admission::Admitted);
        assert!(matches!(
            dispatch(&mut s, "crm", t0),
            Admission::Limited { .. }
        ));
        // Another connector has a bucket of its own.
        assert_eq!(dispatch(&mut s, "erp", t0), Admission::Admitted);

        let ledger = UsageLedger::default();
        assert_eq!(ledger.usage(&t, "crm.read", t0), 0);
        ledger.record(t.clone(), "crm.read".into(), t0);
        ledger.record(t.clone(), "crm.read".into(), t0);
        assert_eq!(ledger.usage(&t, "crm.read", t0), 2);
        assert_eq!(ledger.usage(&Arc::from("globex"), "crm.read", t0), 0);
        // A new hour starts a new window.
        assert_eq!(ledger.usage(&t, "crm.read", t0 + USAGE_WINDOW), 0);
        ledger.record(t.clone(), "crm.read".into(), t0 + USAGE_WINDOW);
        assert_eq!(ledger.usage(&t, "crm.read", t0 + USAGE_WINDOW), 1);
    }

    #[test]
    fn a_restarted_shard_starts_drained_and_keeps_its_counts() {
        let states = ShardStates::new(2);
        let t: Arc<str> = Arc::from("acme");
        let admit = |s: &mut TenantShardState, now| {
            s.handle(ShardRequest::Admit {
                tenant: t.clone(),
                requests_per_second: 1.0,
                burst: 5,
                now,
            })
        };
        let dispatch = |s: &mut TenantShardState| {
            s.handle(ShardRequest::Dispatch {
                tenant: t.clone(),
                connector: Arc::from("c"),
                rate: (1.0, 5),
                now: Instant::now(),
            })
        };
        // First start: a full burst.
        let mut first = states.build(0);
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(admit(&mut first, now), Admission::Admitted);
        }
        assert!(matches!(admit(&mut first, now), Admission::Limited { .. }));
        for _ in 0..3 {
            states
                .ledger(0)
                .record(t.clone(), "x".into(), Instant::now());
        }
        // After a fault: no fresh burst, and the counts are still there.
        let mut restarted = states.build(0);
        assert!(matches!(
            admit(&mut restarted, Instant::now()),
            Admission::Limited { .. }
        ));
        assert!(matches!(
            dispatch(&mut restarted),
            Admission::Limited { .. }
        ));
        let later = Instant::now() + Duration::from_secs(2);
        assert_eq!(admit(&mut restarted, later), Admission::Admitted);
        assert_eq!(states.ledger(0).usage(&t, "x", Instant::now()), 3);
        // Another shard index is a first start of its own, with its own
        // ledger.
        let mut other = states.build(1);
        assert_eq!(admit(&mut other, Instant::now()), Admission::Admitted);
        assert_eq!(states.ledger(1).usage(&t, "x", Instant::now()), 0);
    }

    #[test]
    #[should_panic(expected = "fault injected")]
    fn fault_hook_panics() {
        TenantShardState::default().handle(ShardRequest::InjectFault);
    }
}
