//! A bounded set of shard cells: shard state that the caller's task uses
//! directly, under the shard's lock, with the supervision of a shard actor
//! and none of its mailbox hops.
//!
//! Design points (SPEC §2: "a request pays no mailbox hop it does not need
//! — measure and choose"):
//! * for [`ShardLogic`] whose handler is a few map operations (token
//!   buckets): a mailbox round trip costs two thread wake-ups per call at
//!   moderate load, the handler well under a microsecond. Measured on the
//!   broker at 1,000 req/s (voluntary context switches of all its threads
//!   per request, README "Benchmarks"): 6.3 with two shard round trips per
//!   request, 3.9 with cells. [`crate::pool::ShardPool`] remains for logic
//!   too slow to run under a lock on the caller's task;
//! * keys are routed by the same [`ShardRouter`] (hashed shards plus
//!   dedicated ones), so thousands of keys share a bounded set of cells and
//!   one key's contention reaches only its shard;
//! * the lock is held for one handler call and never across an `.await`
//!   (the call is synchronous);
//! * the wait is bounded: at most `mailbox_capacity` callers may be waiting
//!   for one shard's lock; past that a call is refused at once with
//!   [`CallError::Overloaded`] (shed with `Retry-After`, never a queue);
//! * a panic in the handler is caught at the call boundary: the caller gets
//!   [`CallError::Fault`] (fail closed), the shard's state is rebuilt by the
//!   factory and the restart counted, as a supervisor restarts an actor;
//!   the lock is never poisoned, since the panic is caught while it is held
//!   (a poisoned lock would be rebuilt the same way);
//! * the per-actor series (`atb_actor_messages_total{outcome}`,
//!   `atb_actor_handle_seconds`, `atb_actor_restarts_total`,
//!   `atb_actor_mailbox_rejections_total{cause="full"}`) are kept under the
//!   same names and labels; `atb_actor_mailbox_depth` counts callers
//!   waiting for the lock.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use prometheus::{Histogram, IntCounter, IntGauge};

use crate::metrics::ActorMetrics;
use crate::pool::{panic_message, CallError, LogicFactory, PoolConfig, ShardLogic};
use crate::router::ShardRouter;

/// One shard: its state behind a lock, and its series.
struct Cell<L> {
    state: Mutex<L>,
    waiting: AtomicUsize,
    waiting_gauge: IntGauge,
    ok: IntCounter,
    fault: IntCounter,
    handle_seconds: Histogram,
    restarts: IntCounter,
    rejected_full: IntCounter,
}

/// A fixed set of supervised shard cells behind a [`ShardRouter`].
pub struct ShardCells<L: ShardLogic> {
    actor: &'static str,
    router: ShardRouter,
    factory: LogicFactory<L>,
    capacity: usize,
    cells: Vec<Cell<L>>,
}

impl<L: ShardLogic> ShardCells<L> {
    /// Builds every shard's state with `factory` (the same configuration as
    /// a [`crate::ShardPool`]; `mailbox_capacity` bounds the callers
    /// waiting for one shard).
    pub fn start(config: PoolConfig, metrics: &ActorMetrics, factory: LogicFactory<L>) -> Self {
        let router = ShardRouter::new(config.hashed_shards, &config.dedicated);
        let actor = config.actor;
        let cells = (0..router.shard_count())
            .map(|index| {
                let s = index.to_string();
                let l = [actor, s.as_str()];
                Cell {
                    state: Mutex::new(factory(index)),
                    waiting: AtomicUsize::new(0),
                    waiting_gauge: metrics.mailbox_depth.with_label_values(&l),
                    ok: metrics.messages.with_label_values(&[actor, &s, "ok"]),
                    fault: metrics.messages.with_label_values(&[actor, &s, "fault"]),
                    handle_seconds: metrics.handle_seconds.with_label_values(&l),
                    restarts: metrics.restarts.with_label_values(&l),
                    rejected_full: metrics.rejected.with_label_values(&[actor, &s, "full"]),
                }
            })
            .collect();
        Self {
            actor,
            router,
            factory,
            capacity: config.mailbox_capacity.max(1),
            cells,
        }
    }

    /// The routing table in use.
    pub fn router(&self) -> &ShardRouter {
        &self.router
    }

    /// Handles `request` in the shard owning `key`, on this thread.
    pub fn call(&self, key: &str, request: L::Request) -> Result<L::Response, CallError> {
        self.call_shard(self.router.route(key), request)
    }

    /// Handles `request` in shard `index` (clamped into range).
    pub fn call_shard(&self, index: usize, request: L::Request) -> Result<L::Response, CallError> {
        let index = index.min(self.cells.len() - 1);
        let cell = &self.cells[index];
        if cell.waiting.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            cell.waiting.fetch_sub(1, Ordering::AcqRel);
            cell.rejected_full.inc();
            return Err(CallError::Overloaded { shard: index });
        }
        cell.waiting_gauge.inc();
        let mut state = self.lock(index);
        cell.waiting.fetch_sub(1, Ordering::AcqRel);
        cell.waiting_gauge.dec();
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| state.handle(request)));
        cell.handle_seconds.observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(response) => {
                cell.ok.inc();
                Ok(response)
            }
            Err(panic) => {
                cell.fault.inc();
                tracing::error!(
                    actor = self.actor,
                    shard = index,
                    panic = panic_message(panic.as_ref()),
                    "handler panicked; failing the request closed and rebuilding the shard"
                );
                *state = self.restart(index);
                Err(CallError::Fault { shard: index })
            }
        }
    }

    /// Shard `index`'s state; a poisoned lock (a panic that escaped the
    /// call boundary) is a fault: the state is rebuilt.
    fn lock(&self, index: usize) -> MutexGuard<'_, L> {
        match self.cells[index].state.lock() {
            Ok(state) => state,
            Err(poisoned) => {
                let mut state = poisoned.into_inner();
                *state = self.restart(index);
                self.cells[index].state.clear_poison();
                state
            }
        }
    }

    /// Fresh state for shard `index`, counted as a restart.
    fn restart(&self, index: usize) -> L {
        self.cells[index].restarts.inc();
        tracing::warn!(
            actor = self.actor,
            shard = index,
            "shard restarted with fresh state"
        );
        (self.factory)(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Counts per key; `"boom"` panics.
    struct Counter {
        index: usize,
        generation: usize,
        seen: std::collections::HashMap<String, u64>,
    }

    impl ShardLogic for Counter {
        type Request = String;
        type Response = (usize, usize, u64);
        fn handle(&mut self, key: String) -> (usize, usize, u64) {
            assert!(key != "boom", "fault injected");
            let n = self.seen.entry(key).or_default();
            *n += 1;
            (self.index, self.generation, *n)
        }
    }

    fn cells(capacity: usize) -> (ShardCells<Counter>, ActorMetrics) {
        let registry = prometheus::Registry::new();
        let metrics = ActorMetrics::register(&registry).unwrap();
        let generations = Arc::new(Mutex::new(std::collections::HashMap::<usize, usize>::new()));
        let cells = ShardCells::start(
            PoolConfig {
                actor: "test",
                hashed_shards: 2,
                dedicated: vec!["hot".into()],
                mailbox_capacity: capacity,
            },
            &metrics,
            Arc::new(move |index| {
                let mut g = generations.lock().unwrap();
                let generation = g.entry(index).or_insert(0);
                *generation += 1;
                Counter {
                    index,
                    generation: *generation,
                    seen: Default::default(),
                }
            }),
        );
        (cells, metrics)
    }

    #[test]
    fn keys_keep_their_state_in_their_shard() {
        let (cells, metrics) = cells(8);
        assert_eq!(cells.call("acme", "acme".into()).unwrap().2, 1);
        assert_eq!(cells.call("acme", "acme".into()).unwrap().2, 2);
        let (index, _, _) = cells.call("hot", "hot".into()).unwrap();
        assert_eq!(index, 2, "a dedicated key has its own shard");
        let shard = cells.router().route("acme").to_string();
        assert_eq!(
            metrics
                .messages
                .with_label_values(&["test", &shard, "ok"])
                .get(),
            2
        );
    }

    #[test]
    fn a_panic_fails_the_call_and_rebuilds_only_that_shard() {
        let (cells, metrics) = cells(8);
        let shard = cells.router().route("acme");
        cells.call_shard(shard, "acme".into()).unwrap();
        let other = 1 - shard;
        cells.call_shard(other, "globex".into()).unwrap();

        let r = cells.call_shard(shard, "boom".into());
        assert_eq!(r, Err(CallError::Fault { shard }));
        let s = shard.to_string();
        assert_eq!(metrics.restarts.with_label_values(&["test", &s]).get(), 1);
        assert_eq!(
            metrics
                .messages
                .with_label_values(&["test", &s, "fault"])
                .get(),
            1
        );
        // The failed shard starts over (a new generation, counts gone);
        // the other keeps its state.
        assert_eq!(
            cells.call_shard(shard, "acme".into()).unwrap(),
            (shard, 2, 1)
        );
        assert_eq!(
            cells.call_shard(other, "globex".into()).unwrap(),
            (other, 1, 2)
        );
    }

    #[test]
    fn callers_past_the_bound_are_refused_at_once() {
        let (cells, metrics) = cells(1);
        let cells = Arc::new(cells);
        let shard = cells.router().route("acme");
        // Hold the shard's lock: one caller may wait, the next is refused.
        let held = cells.cells[shard].state.lock().unwrap();
        let waiter = {
            let cells = cells.clone();
            std::thread::spawn(move || cells.call_shard(shard, "acme".into()))
        };
        while cells.cells[shard].waiting.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        assert_eq!(
            cells.call_shard(shard, "acme".into()),
            Err(CallError::Overloaded { shard })
        );
        let s = shard.to_string();
        assert_eq!(
            metrics
                .rejected
                .with_label_values(&["test", &s, "full"])
                .get(),
            1
        );
        drop(held);
        assert_eq!(waiter.join().unwrap().unwrap().2, 1);
        // The bound is released: calls go through again.
        assert_eq!(cells.call_shard(shard, "acme".into()).unwrap().2, 2);
    }

    #[test]
    fn a_poisoned_lock_is_a_restart() {
        let (cells, metrics) = cells(8);
        let cells = Arc::new(cells);
        cells.call_shard(0, "acme".into()).unwrap();
        let poisoner = cells.clone();
        let _ = std::thread::spawn(move || {
            let _held = poisoner.cells[0].state.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(cells.cells[0].state.is_poisoned());
        assert_eq!(cells.call_shard(0, "acme".into()).unwrap(), (0, 2, 1));
        assert_eq!(metrics.restarts.with_label_values(&["test", "0"]).get(), 1);
        assert!(!cells.cells[0].state.is_poisoned());
    }
}
