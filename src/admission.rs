//! Per-tenant admission: the state a tenant shard owns. Plain logic, driven
//! by the shard actor and by unit tests alike.

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
    /// A request bound for `connector`: take a token from the connector's
    /// bucket (if it has a rate limit); answers `Count` with this hour's
    /// uses of `action` (for the policy) or `Limited`.
    Dispatch {
        tenant: Arc<str>,
        connector: Arc<str>,
        rate: Option<(f64, u32)>,
        action: String,
        now: Instant,
    },
    /// The policy allowed `action`: count it for the hour.
    Record {
        tenant: Arc<str>,
        action: String,
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
    /// Uses of an action in the current hour.
    Count(u64),
}

/// The window of per-action counts.
pub const USAGE_WINDOW: Duration = Duration::from_secs(3600);
/// Distinct (tenant, action) counters one shard keeps.
pub const MAX_USAGE_ENTRIES: usize = 100_000;

/// The per-tenant state of one shard.
#[derive(Debug, Default)]
pub struct TenantShardState {
    buckets: HashMap<Arc<str>, TokenBucket>,
    connectors: HashMap<(Arc<str>, Arc<str>), TokenBucket>,
    /// `(tenant, action) → (window start, count)`.
    usage: HashMap<(Arc<str>, String), (Instant, u64)>,
}

impl TenantShardState {
    fn usage(&self, tenant: &Arc<str>, action: &str, now: Instant) -> u64 {
        match self.usage.get(&(tenant.clone(), action.to_owned())) {
            Some((start, n)) if now.saturating_duration_since(*start) < USAGE_WINDOW => *n,
            _ => 0,
        }
    }

    fn record(&mut self, tenant: Arc<str>, action: String, now: Instant) {
        if self.usage.len() >= MAX_USAGE_ENTRIES {
            self.usage
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < USAGE_WINDOW);
        }
        let fits = self.usage.len() < MAX_USAGE_ENTRIES;
        match self.usage.entry((tenant, action)) {
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
            } => {
                let bucket = self
                    .buckets
                    .entry(tenant)
                    .or_insert_with(|| TokenBucket::new(requests_per_second, burst, now));
                bucket.reconfigure(requests_per_second, burst);
                match bucket.try_take(now) {
                    Ok(()) => Admission::Admitted,
                    Err(retry_after) => Admission::Limited { retry_after },
                }
            }
            ShardRequest::Dispatch {
                tenant,
                connector,
                rate,
                action,
                now,
            } => {
                if let Some((rps, burst)) = rate {
                    let bucket = self
                        .connectors
                        .entry((tenant.clone(), connector))
                        .or_insert_with(|| TokenBucket::new(rps, burst, now));
                    bucket.reconfigure(rps, burst);
                    if let Err(retry_after) = bucket.try_take(now) {
                        return Admission::Limited { retry_after };
                    }
                }
                Admission::Count(self.usage(&tenant, &action, now))
            }
            ShardRequest::Record {
                tenant,
                action,
                now,
            } => {
                self.record(tenant, action, now);
                Admission::Admitted
            }
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
    fn dispatch_limits_connectors_and_record_counts_actions() {
        let mut s = TenantShardState::default();
        let t0 = Instant::now();
        let t: Arc<str> = Arc::from("acme");
        let dispatch = |s: &mut TenantShardState, now| {
            s.handle(ShardRequest::Dispatch {
                tenant: t.clone(),
                connector: Arc::from("crm"),
                rate: Some((1.0, 2)),
                action: "crm.read".into(),
                now,
            })
        };
        let record = |s: &mut TenantShardState, now| {
            s.handle(ShardRequest::Record {
                tenant: t.clone(),
                action: "crm.read".into(),
                now,
            })
        };
        let usage = |s: &mut TenantShardState, now| {
            s.handle(ShardRequest::Dispatch {
                tenant: t.clone(),
                connector: Arc::from("unlimited"),
                rate: None,
                action: "crm.read".into(),
                now,
            })
        };
        assert_eq!(dispatch(&mut s, t0), Admission::Count(0));
        assert_eq!(record(&mut s, t0), Admission::Admitted);
        // Dispatch answers the count so far; only Record counts.
        assert_eq!(dispatch(&mut s, t0), Admission::Count(1));
        assert!(matches!(dispatch(&mut s, t0), Admission::Limited { .. }));
        assert_eq!(usage(&mut s, t0), Admission::Count(1));
        record(&mut s, t0);
        assert_eq!(usage(&mut s, t0), Admission::Count(2));
        // A new hour starts a new window.
        assert_eq!(usage(&mut s, t0 + USAGE_WINDOW), Admission::Count(0));
        assert_eq!(record(&mut s, t0 + USAGE_WINDOW), Admission::Admitted);
        assert_eq!(usage(&mut s, t0 + USAGE_WINDOW), Admission::Count(1));
    }

    #[test]
    #[should_panic(expected = "fault injected")]
    fn fault_hook_panics() {
        TenantShardState::default().handle(ShardRequest::InjectFault);
    }
}
