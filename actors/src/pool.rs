//! A bounded set of supervised shard actors, each owning the state of the
//! keys routed to it.
//!
//! Design points (see SPEC §2 and the actix notes it cites):
//! * every shard runs on its own arbiter, so a slow shard never stalls another;
//! * the mailbox bound is enforced here, before `try_send`, with an atomic
//!   depth counter — actix's `do_send` ignores capacity and its per-sender
//!   parking lets every `Addr` clone overshoot once, so neither is relied on;
//! * a panic in [`ShardLogic::handle`] is caught at the handler boundary: the
//!   caller's reply channel is dropped (the caller sees [`CallError::Fault`]
//!   and must fail closed), the actor stops, and its `Supervisor` restarts it
//!   with state rebuilt by the factory;
//! * a closed mailbox (the arbiter itself died) is treated as a restart
//!   signal: the shard is respawned on a fresh arbiter.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::dev::SendError;
use actix::prelude::*;
use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::oneshot;

use crate::metrics::ActorMetrics;
use crate::router::ShardRouter;

/// The plain logic a shard actor wraps. Implementations hold the state of
/// every key routed to one shard and must be drivable without an actor system.
pub trait ShardLogic: Unpin + 'static {
    /// What callers send.
    type Request: Send + 'static;
    /// What callers get back.
    type Response: Send + 'static;
    /// Handles one request. A panic here is contained by the pool.
    fn handle(&mut self, request: Self::Request) -> Self::Response;
}

/// Builds the logic for shard `index`; called at start and after every fault.
pub type LogicFactory<L> = Arc<dyn Fn(usize) -> L + Send + Sync>;

/// Sizing of a pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Actor name used in metric labels and logs.
    pub actor: &'static str,
    /// Number of shards keys are hashed onto.
    pub hashed_shards: usize,
    /// Keys that get a shard of their own.
    pub dedicated: Vec<String>,
    /// Messages a shard's mailbox may hold before callers are refused.
    pub mailbox_capacity: usize,
}

/// Why a call did not produce a response. Every variant must be answered
/// with a refusal, never with an allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// The shard's mailbox is full: shed load (429/503 with `Retry-After`).
    Overloaded { shard: usize },
    /// The shard's mailbox was closed; a restart has been started.
    Unavailable { shard: usize },
    /// The shard failed while handling this very message; it is restarting.
    Fault { shard: usize },
}

impl CallError {
    /// The shard involved.
    pub fn shard(&self) -> usize {
        match *self {
            CallError::Overloaded { shard }
            | CallError::Unavailable { shard }
            | CallError::Fault { shard } => shard,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Overloaded { shard } => write!(f, "shard {shard} mailbox is full"),
            CallError::Unavailable { shard } => write!(f, "shard {shard} is restarting"),
            CallError::Fault { shard } => write!(f, "shard {shard} failed handling the request"),
        }
    }
}

impl std::error::Error for CallError {}

/// Per-shard counters shared by the callers and the actor.
struct ShardCell {
    depth: AtomicUsize,
    depth_gauge: IntGauge,
    ok: IntCounter,
    fault: IntCounter,
    handle_seconds: Histogram,
    restarts: IntCounter,
    rejected_full: IntCounter,
    rejected_closed: IntCounter,
}

impl ShardCell {
    fn new(metrics: &ActorMetrics, actor: &str, shard: usize) -> Self {
        let s = shard.to_string();
        let l = [actor, s.as_str()];
        Self {
            depth: AtomicUsize::new(0),
            depth_gauge: metrics.mailbox_depth.with_label_values(&l),
            ok: metrics.messages.with_label_values(&[actor, &s, "ok"]),
            fault: metrics.messages.with_label_values(&[actor, &s, "fault"]),
            handle_seconds: metrics.handle_seconds.with_label_values(&l),
            restarts: metrics.restarts.with_label_values(&l),
            rejected_full: metrics.rejected.with_label_values(&[actor, &s, "full"]),
            rejected_closed: metrics.rejected.with_label_values(&[actor, &s, "closed"]),
        }
    }
}

/// Holds one mailbox slot; releasing it (on pick-up or on drop of an
/// unhandled message) keeps the depth count exact even when an arbiter dies
/// with messages queued.
struct DepthSlot(Arc<ShardCell>);

impl Drop for DepthSlot {
    fn drop(&mut self) {
        self.0.depth.fetch_sub(1, Ordering::AcqRel);
        self.0.depth_gauge.dec();
    }
}

struct Envelope<L: ShardLogic> {
    request: L::Request,
    reply: oneshot::Sender<L::Response>,
    slot: DepthSlot,
}

impl<L: ShardLogic> Message for Envelope<L> {
    type Result = ();
}

struct ShardActor<L: ShardLogic> {
    logic: L,
    factory: LogicFactory<L>,
    index: usize,
    actor: &'static str,
    capacity: usize,
    cell: Arc<ShardCell>,
}

impl<L: ShardLogic> Actor for ShardActor<L> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Our own bound (in `ShardPool::call`) admits at most `capacity`
        // messages, so actix's parking never triggers; the explicit capacity
        // documents the bound rather than relying on the default of 16.
        ctx.set_mailbox_capacity(self.capacity);
    }
}

impl<L: ShardLogic> Supervised for ShardActor<L> {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.cell.restarts.inc();
        self.logic = (self.factory)(self.index);
        tracing::warn!(
            actor = self.actor,
            shard = self.index,
            "actor restarted with fresh state"
        );
    }
}

impl<L: ShardLogic> Handler<Envelope<L>> for ShardActor<L> {
    type Result = ();

    fn handle(&mut self, envelope: Envelope<L>, ctx: &mut Self::Context) {
        let Envelope {
            request,
            reply,
            slot,
        } = envelope;
        drop(slot);
        if reply.is_closed() {
            // The caller gave up (client went away); nobody reads the answer.
            return;
        }
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| self.logic.handle(request)));
        self.cell
            .handle_seconds
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(response) => {
                self.cell.ok.inc();
                let _ = reply.send(response);
            }
            Err(panic) => {
                self.cell.fault.inc();
                tracing::error!(
                    actor = self.actor,
                    shard = self.index,
                    panic = panic_message(panic.as_ref()),
                    "handler panicked; failing the request closed and restarting the actor"
                );
                // Dropping `reply` tells the caller the message was lost.
                drop(reply);
                ctx.stop();
            }
        }
    }
}

/// The text of a panic payload, for logs.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "non-string panic payload"
    }
}

struct ShardSlot<L: ShardLogic> {
    addr: ArcSwap<Addr<ShardActor<L>>>,
    cell: Arc<ShardCell>,
    arbiter: Mutex<Option<Arbiter>>,
}

/// A fixed set of supervised shard actors behind a [`ShardRouter`].
pub struct ShardPool<L: ShardLogic> {
    config: PoolConfig,
    router: ShardRouter,
    factory: LogicFactory<L>,
    slots: Vec<ShardSlot<L>>,
}

impl<L: ShardLogic> ShardPool<L> {
    /// Starts every shard on its own arbiter. Must run inside an actix
    /// `System`.
    pub fn start(config: PoolConfig, metrics: &ActorMetrics, factory: LogicFactory<L>) -> Self {
        let router = ShardRouter::new(config.hashed_shards, &config.dedicated);
        let capacity = config.mailbox_capacity.max(1);
        let slots = (0..router.shard_count())
            .map(|index| {
                let cell = Arc::new(ShardCell::new(metrics, config.actor, index));
                let (arbiter, addr) =
                    spawn_shard(config.actor, capacity, index, factory.clone(), cell.clone());
                ShardSlot {
                    addr: ArcSwap::from_pointee(addr),
                    cell,
                    arbiter: Mutex::new(Some(arbiter)),
                }
            })
            .collect();
        Self {
            config: PoolConfig {
                mailbox_capacity: capacity,
                ..config
            },
            router,
            factory,
            slots,
        }
    }

    /// The routing table in use.
    pub fn router(&self) -> &ShardRouter {
        &self.router
    }

    /// Messages currently waiting for shard `index`.
    pub fn depth(&self, index: usize) -> usize {
        self.slots
            .get(index)
            .map_or(0, |s| s.cell.depth.load(Ordering::Acquire))
    }

    /// Sends `request` to the shard owning `key` and waits for its answer.
    pub async fn call(&self, key: &str, request: L::Request) -> Result<L::Response, CallError> {
        self.call_shard(self.router.route(key), request).await
    }

    /// Sends `request` to shard `index` (clamped into range).
    pub async fn call_shard(
        &self,
        index: usize,
        request: L::Request,
    ) -> Result<L::Response, CallError> {
        let index = index.min(self.slots.len() - 1);
        let slot = &self.slots[index];
        let cell = &slot.cell;
        if cell.depth.fetch_add(1, Ordering::AcqRel) >= self.config.mailbox_capacity {
            cell.depth.fetch_sub(1, Ordering::AcqRel);
            cell.rejected_full.inc();
            return Err(CallError::Overloaded { shard: index });
        }
        cell.depth_gauge.inc();
        let (tx, rx) = oneshot::channel();
        let envelope = Envelope {
            request,
            reply: tx,
            slot: DepthSlot(cell.clone()),
        };
        match slot.addr.load().try_send(envelope) {
            Ok(()) => {}
            Err(SendError::Full(_)) => {
                cell.rejected_full.inc();
                return Err(CallError::Overloaded { shard: index });
            }
            Err(SendError::Closed(_)) => {
                cell.rejected_closed.inc();
                self.respawn(index);
                return Err(CallError::Unavailable { shard: index });
            }
        }
        rx.await.map_err(|_| CallError::Fault { shard: index })
    }

    /// Replaces a shard whose mailbox closed (its arbiter died) with a fresh
    /// actor on a fresh arbiter. Concurrent callers race for the lock; the
    /// losers just report `Unavailable`.
    fn respawn(&self, index: usize) {
        let slot = &self.slots[index];
        let Ok(mut arbiter) = slot.arbiter.try_lock() else {
            return;
        };
        if slot.addr.load().connected() {
            return; // someone else already respawned it
        }
        if let Some(old) = arbiter.take() {
            old.stop();
        }
        let (new_arbiter, addr) = spawn_shard(
            self.config.actor,
            self.config.mailbox_capacity,
            index,
            self.factory.clone(),
            slot.cell.clone(),
        );
        slot.addr.store(Arc::new(addr));
        *arbiter = Some(new_arbiter);
        slot.cell.restarts.inc();
        tracing::warn!(
            actor = self.config.actor,
            shard = index,
            "mailbox closed; shard respawned on a new arbiter"
        );
    }

    /// Stops every shard's arbiter (used at shutdown and by tests).
    pub fn stop(&self) {
        for slot in &self.slots {
            if let Ok(mut a) = slot.arbiter.lock() {
                if let Some(a) = a.take() {
                    a.stop();
                }
            }
        }
    }

    #[doc(hidden)]
    /// Test hook: stops one shard's arbiter as if its thread had died.
    pub fn kill_arbiter_for_test(&self, index: usize) {
        if let Some(slot) = self.slots.get(index) {
            if let Ok(a) = slot.arbiter.lock() {
                if let Some(a) = a.as_ref() {
                    a.stop();
                }
            }
        }
    }
}

fn spawn_shard<L: ShardLogic>(
    actor: &'static str,
    capacity: usize,
    index: usize,
    factory: LogicFactory<L>,
    cell: Arc<ShardCell>,
) -> (Arbiter, Addr<ShardActor<L>>) {
    let arbiter = Arbiter::new();
    let addr = Supervisor::start_in_arbiter(&arbiter.handle(), move |_ctx| ShardActor {
        logic: factory(index),
        factory,
        index,
        actor,
        capacity,
        cell,
    });
    (arbiter, addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Counts requests per key; panics on request "boom"; blocks while
    /// "slow" holds the shard busy.
    struct Counter {
        counts: std::collections::HashMap<String, u64>,
    }

    enum Req {
        Count(String),
        Boom,
        Sleep(Duration),
    }

    impl ShardLogic for Counter {
        type Request = Req;
        type Response = u64;
        fn handle(&mut self, request: Req) -> u64 {
            match request {
                Req::Count(key) => {
                    let c = self.counts.entry(key).or_default();
                    *c += 1;
                    *c
                }
                Req::Boom => panic!("injected fault"),
                Req::Sleep(d) => {
                    std::thread::sleep(d);
                    0
                }
            }
        }
    }

    fn pool(shards: usize, capacity: usize) -> (ShardPool<Counter>, ActorMetrics) {
        let registry = prometheus::Registry::new();
        let metrics = ActorMetrics::register(&registry).unwrap();
        let pool = ShardPool::start(
            PoolConfig {
                actor: "counter",
                hashed_shards: shards,
                dedicated: vec![],
                mailbox_capacity: capacity,
            },
            &metrics,
            Arc::new(|_| Counter {
                counts: Default::default(),
            }),
        );
        (pool, metrics)
    }

    #[actix_rt::test]
    async fn state_is_kept_per_shard() {
        let (pool, _) = pool(2, 8);
        assert_eq!(pool.call("a", Req::Count("a".into())).await, Ok(1));
        assert_eq!(pool.call("a", Req::Count("a".into())).await, Ok(2));
        assert_eq!(pool.call("b", Req::Count("b".into())).await, Ok(1));
        pool.stop();
    }

    #[actix_rt::test]
    async fn panic_fails_the_caller_and_restarts_with_fresh_state() {
        let (pool, metrics) = pool(2, 8);
        let shard = pool.router().route("a");
        assert_eq!(pool.call("a", Req::Count("a".into())).await, Ok(1));
        assert_eq!(
            pool.call("a", Req::Boom).await,
            Err(CallError::Fault { shard })
        );
        // The shard serves again, with state rebuilt by the factory.
        assert_eq!(pool.call("a", Req::Count("a".into())).await, Ok(1));
        let s = shard.to_string();
        assert_eq!(
            metrics.restarts.with_label_values(&["counter", &s]).get(),
            1
        );
        assert_eq!(
            metrics
                .messages
                .with_label_values(&["counter", &s, "fault"])
                .get(),
            1
        );
        pool.stop();
    }

    #[actix_rt::test]
    async fn full_mailbox_is_refused_immediately() {
        let (pool, metrics) = pool(1, 2);
        let pool = Arc::new(pool);
        // Occupy the actor, then fill the two mailbox slots.
        let busy = {
            let p = pool.clone();
            actix_rt::spawn(async move {
                p.call_shard(0, Req::Sleep(Duration::from_millis(300)))
                    .await
            })
        };
        while pool.depth(0) != 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let p = pool.clone();
                actix_rt::spawn(async move { p.call_shard(0, Req::Count("x".into())).await })
            })
            .collect();
        while pool.depth(0) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.call_shard(0, Req::Count("x".into())).await,
            Err(CallError::Overloaded { shard: 0 })
        );
        assert_eq!(
            metrics
                .rejected
                .with_label_values(&["counter", "0", "full"])
                .get(),
            1
        );
        assert_eq!(busy.await.unwrap(), Ok(0));
        let mut results: Vec<u64> = Vec::new();
        for q in queued {
            results.push(q.await.unwrap().unwrap());
        }
        results.sort();
        assert_eq!(results, vec![1, 2]);
        assert_eq!(pool.depth(0), 0);
        pool.stop();
    }

    #[actix_rt::test]
    async fn closed_mailbox_respawns_the_shard() {
        let (pool, metrics) = pool(1, 4);
        assert_eq!(pool.call_shard(0, Req::Count("k".into())).await, Ok(1));
        pool.kill_arbiter_for_test(0);
        // Wait until the arbiter is really gone.
        let mut closed = false;
        for _ in 0..200 {
            if !pool.slots[0].addr.load().connected() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(closed, "arbiter did not stop");
        assert_eq!(
            pool.call_shard(0, Req::Count("k".into())).await,
            Err(CallError::Unavailable { shard: 0 })
        );
        assert_eq!(pool.call_shard(0, Req::Count("k".into())).await, Ok(1));
        assert_eq!(
            metrics.restarts.with_label_values(&["counter", "0"]).get(),
            1
        );
        assert_eq!(pool.depth(0), 0);
        pool.stop();
    }
}
