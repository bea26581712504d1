//! Per-tenant concurrency: how many of a tenant's requests are inside the
//! broker at once (verifying, deciding, forwarding), bounded by the
//! tenant's `max_in_flight`.
//!
//! - Why: the token bucket bounds a tenant's rate, not its share of the
//!   machine. A tenant allowed more than the machine serves, or one whose
//!   upstream is slow, could otherwise fill every worker's queue and make
//!   every other tenant wait behind it. With a cap, a flood past it is
//!   refused at once — 503 `overloaded` with `Retry-After`, before the
//!   mandate is verified — and the machine's capacity is left to the rest.
//! - Checked once per request, right after the tenant is known and before
//!   any costly step; the slot is released when the request's context is
//!   dropped (answered, refused, panicked or abandoned by the client), so
//!   no path leaks a slot.
//! - Bounded: one counter per configured tenant, created on its first
//!   request and kept across reloads (ids only; at most the tenants ever
//!   configured). Lock-free on the hot path (a map read and one atomic).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use prometheus::{IntCounterVec, IntGaugeVec};

/// The counters of every tenant that has sent a request.
pub struct TenantInFlight {
    tenants: DashMap<String, Arc<Slots>>,
    gauge: IntGaugeVec,
    refused: IntCounterVec,
}

struct Slots {
    taken: AtomicUsize,
    gauge: prometheus::IntGauge,
    refused: prometheus::IntCounter,
}

/// A request's slot; released on drop.
pub struct InFlightSlot(Arc<Slots>);

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

impl TenantInFlight {
    /// `gauge`: `atb_tenant_in_flight{tenant}`; `refused`:
    /// `atb_tenant_in_flight_refused_total{tenant}`.
    pub fn new(gauge: IntGaugeVec, refused: IntCounterVec) -> Self {
        Self {
            tenants: DashMap::new(),
            gauge,
            refused,
        }
    }

    /// Takes one of `tenant`'s `limit` slots, or `None` when all are taken.
    pub fn enter(&self, tenant: &str, limit: usize) -> Option<InFlightSlot> {
        let slots = match self.tenants.get(tenant) {
            Some(s) => s.clone(),
            None => self
                .tenants
                .entry(tenant.to_owned())
                .or_insert_with(|| {
                    Arc::new(Slots {
                        taken: AtomicUsize::new(0),
                        gauge: self.gauge.with_label_values(&[tenant]),
                        refused: self.refused.with_label_values(&[tenant]),
                    })
                })
                .clone(),
        };
        if slots.taken.fetch_add(1, Ordering::AcqRel) >= limit {
            slots.taken.fetch_sub(1, Ordering::AcqRel);
            slots.refused.inc();
            return None;
        }
        slots.gauge.inc();
        Some(InFlightSlot(slots))
    }

    /// Requests of `tenant` inside the broker now.
    pub fn taken(&self, tenant: &str) -> usize {
        self.tenants
            .get(tenant)
            .map_or(0, |s| s.taken.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn counters() -> TenantInFlight {
        TenantInFlight::new(
            IntGaugeVec::new(Opts::new("g", "g"), &["tenant"]).unwrap(),
            IntCounterVec::new(Opts::new("r", "r"), &["tenant"]).unwrap(),
        )
    }

    #[test]
    fn a_tenant_gets_its_limit_and_not_one_more() {
        let c = counters();
        let held: Vec<_> = (0..3).map(|_| c.enter("acme", 3).unwrap()).collect();
        assert!(c.enter("acme", 3).is_none());
        assert_eq!(c.taken("acme"), 3);
        assert_eq!(c.refused.with_label_values(&["acme"]).get(), 1);
        assert_eq!(c.gauge.with_label_values(&["acme"]).get(), 3);
        drop(held);
        assert_eq!(c.taken("acme"), 0);
        assert_eq!(c.gauge.with_label_values(&["acme"]).get(), 0);
        assert!(c.enter("acme", 3).is_some());
    }

    #[test]
    fn tenants_are_counted_apart() {
        let c = counters();
        let _a = c.enter("acme", 1).unwrap();
        assert!(c.enter("acme", 1).is_none());
        assert!(c.enter("globex", 1).is_some());
    }

    #[test]
    fn concurrent_entries_never_exceed_the_limit() {
        let c = Arc::new(counters());
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, peak) = (c.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if let Some(slot) = c.enter("acme", 5) {
                            peak.fetch_max(c.taken("acme"), Ordering::AcqRel);
                            drop(slot);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Acquire) <= 5);
        assert_eq!(c.taken("acme"), 0);
    }
}
