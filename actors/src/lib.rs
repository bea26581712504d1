//! Actor plumbing for ATB.
//!
//! Actors here are thin shells: all decisions live in plain types implementing
//! [`ShardLogic`], which unit tests drive without an actor system. This crate
//! adds what the shells need and nothing else:
//!
//! * [`router::ShardRouter`] — maps a key (a tenant id) onto a bounded set of
//!   shards, with optional dedicated shards for hot keys;
//! * [`pool::ShardPool`] — one supervised actix actor per shard, each on its
//!   own arbiter, with an explicit bounded mailbox: a full mailbox is an
//!   immediate [`pool::CallError::Overloaded`], never an unbounded queue;
//! * [`cells::ShardCells`] — the same shards without actors: the caller's
//!   task handles a request under the shard's lock (no mailbox hop, no
//!   thread wake-up), with a bound on waiting callers and the same panic
//!   containment and restart; for handlers of a few map operations;
//! * panic containment — a panic inside a handler is caught at the handler
//!   boundary, the in-flight caller gets [`pool::CallError::Fault`] (fail
//!   closed), and the actor stops so its supervisor restarts it with fresh
//!   state;
//! * [`blocking::BlockingPool`] — threads for CPU-bound work (policy
//!   evaluation) behind one bounded queue served round robin by key
//!   ([`fair_queue::FairQueue`]), with a per-key share so one tenant
//!   cannot take it all; a panic rebuilds the thread's worker;
//! * [`periodic`] — every timer loop (reloads, sweeps, refreshes): ticks
//!   that never overlap, a panic in a tick caught, counted as a restart and
//!   the loop going on;
//! * [`metrics::ActorMetrics`] — the per-actor series of SPEC §8.

pub mod blocking;
pub mod cells;
pub mod fair_queue;
pub mod metrics;
pub mod periodic;
pub mod pool;
pub mod router;

pub use blocking::{BlockingConfig, BlockingLogic, BlockingPool, StartError};
pub use cells::ShardCells;
pub use metrics::ActorMetrics;
pub use periodic::{PeriodicHandle, PeriodicName};
pub use pool::{CallError, PoolConfig, ShardLogic, ShardPool};
pub use router::ShardRouter;
