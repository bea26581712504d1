//! A fixed set of threads for CPU-bound work (policy evaluation), fed by
//! one bounded queue: the work never runs on an I/O thread.
//!
//! Design points:
//! * the queue bound is enforced before sending: a full queue is an
//!   immediate [`CallError::Overloaded`], never a wait;
//! * the queue is served round robin by key ([`FairQueue`]): a job waits
//!   behind at most one job of each other key with work, so a tenant's
//!   backlog delays another tenant by one evaluation, not by the backlog;
//! * under load no job costs a thread wake-up: a thread that finds the
//!   queue empty looks again a few times (spinning, then yielding) before
//!   it sleeps, and a queued job signals only when a thread sleeps;
//! * each key (a tenant) may hold at most `per_key` jobs queued or running,
//!   so one tenant flooding the pool is refused while the others keep their
//!   room (counted as `atb_actor_mailbox_rejections_total{cause="key_full"}`);
//! * each thread builds its own worker (a `!Send` engine) from the
//!   published logic and keeps it; a replaced logic makes every thread
//!   rebuild before its next job — no lock around the engine;
//! * a panic in a job is caught at the job boundary: the caller gets
//!   [`CallError::Fault`] (fail closed), the thread drops its worker and
//!   builds a fresh one, and `atb_actor_restarts_total` counts it;
//! * a worker that cannot be built answers [`CallError::Unavailable`].

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::oneshot;

use crate::fair_queue::FairQueue;
use crate::metrics::ActorMetrics;
use crate::pool::CallError;

/// The work a pool runs: how a thread builds its worker, and one job.
pub trait BlockingLogic: Send + Sync + 'static {
    /// What each thread builds once and keeps (e.g. a compiled engine).
    type Worker;
    type Job: Send + 'static;
    type Output: Send + 'static;
    /// Why a worker could not be built.
    type BuildError: std::fmt::Display + Send + 'static;
    /// Builds a worker from this logic.
    fn build(&self) -> Result<Self::Worker, Self::BuildError>;
    /// Runs one job. A panic here is contained by the pool.
    fn run(&self, worker: &mut Self::Worker, job: Self::Job) -> Self::Output;
}

/// A pool that could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError<E: std::fmt::Display> {
    #[error("{0}")]
    Build(E),
    #[error("cannot start a {actor} thread: {source}")]
    Thread {
        actor: &'static str,
        source: std::io::Error,
    },
}

/// Sizing of a pool.
#[derive(Debug, Clone)]
pub struct BlockingConfig {
    /// Actor name in metric labels and logs.
    pub actor: &'static str,
    pub threads: usize,
    /// Jobs queued at most (all keys).
    pub queue: usize,
    /// Jobs one key may have queued or running at once.
    pub per_key: usize,
}

struct Job<L: BlockingLogic> {
    job: L::Job,
    reply: oneshot::Sender<Result<L::Output, CallError>>,
    _held: KeySlot,
}

/// The logic the threads run, and a counter that moves when it is replaced.
struct Published<L> {
    logic: ArcSwap<L>,
    generation: AtomicU64,
}

struct Metrics {
    depth: IntGauge,
    ok: IntCounter,
    fault: IntCounter,
    seconds: Histogram,
    restarts: IntCounter,
    full: IntCounter,
    key_full: IntCounter,
}

/// The jobs waiting for a thread, and whether the pool is gone.
struct Waiting<J> {
    jobs: FairQueue<J>,
    closed: bool,
    /// Threads asleep on `ready`: a job queued while none is needs no
    /// wake-up call (a busy thread takes it next).
    asleep: usize,
}

/// Looks at an empty queue before sleeping: spinning 1, 2, 4, … 64 times,
/// then yielding the CPU this many times.
const SPIN_STEPS: u32 = 7;
const YIELD_STEPS: u32 = 10;

/// The queue the threads take jobs from.
struct Queue<J> {
    waiting: Mutex<Waiting<J>>,
    /// Signalled when a job is queued or the pool closes.
    ready: Condvar,
}

impl<J> Queue<J> {
    fn lock(&self) -> MutexGuard<'_, Waiting<J>> {
        // A job never runs under this lock, so a poisoned lock only means
        // a panic between two plain queue operations: the queue is whole.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next job, waiting for one; `None` once the pool is closed.
    /// An empty queue is looked at again a few times (spinning, then
    /// yielding, as crossbeam's channels do) before the thread sleeps:
    /// under load the next job comes within microseconds, and a sleep
    /// costs a wake-up.
    fn next(&self) -> Option<J> {
        let mut waiting = self.lock();
        let mut patience = 0;
        loop {
            if let Some(job) = waiting.jobs.pop() {
                return Some(job);
            }
            if waiting.closed {
                return None;
            }
            if patience < SPIN_STEPS + YIELD_STEPS {
                drop(waiting);
                if patience < SPIN_STEPS {
                    for _ in 0..1u32 << patience {
                        std::hint::spin_loop();
                    }
                } else {
                    std::thread::yield_now();
                }
                patience += 1;
                waiting = self.lock();
                continue;
            }
            waiting.asleep += 1;
            waiting = self.ready.wait(waiting).unwrap_or_else(|p| p.into_inner());
            waiting.asleep -= 1;
        }
    }
}

/// Jobs held per key.
type Held = Arc<Mutex<HashMap<Arc<str>, usize>>>;

/// One job's place in its key's share; released when the job is done
/// (answered, failed, or dropped unrun).
struct KeySlot {
    held: Held,
    key: Arc<str>,
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// A fixed set of threads behind a bounded queue.
pub struct BlockingPool<L: BlockingLogic> {
    queue: Arc<Queue<Job<L>>>,
    current: Arc<Published<L>>,
    metrics: Arc<Metrics>,
    held: Held,
    queued: Arc<AtomicUsize>,
    config: BlockingConfig,
}

impl<L: BlockingLogic> BlockingPool<L> {
    /// Builds a worker once (to fail fast) and starts the threads.
    pub fn start(
        logic: L,
        config: BlockingConfig,
        metrics: &ActorMetrics,
    ) -> Result<Self, StartError<L::BuildError>> {
        logic.build().map_err(StartError::Build)?;
        let queue = Arc::new(Queue {
            waiting: Mutex::new(Waiting {
                jobs: FairQueue::new(config.queue),
                closed: false,
                asleep: 0,
            }),
            ready: Condvar::new(),
        });
        let l = [config.actor, "pool"];
        let m = Arc::new(Metrics {
            depth: metrics.mailbox_depth.with_label_values(&l),
            ok: metrics
                .messages
                .with_label_values(&[config.actor, "pool", "ok"]),
            fault: metrics
                .messages
                .with_label_values(&[config.actor, "pool", "fault"]),
            seconds: metrics.handle_seconds.with_label_values(&l),
            restarts: metrics.restarts.with_label_values(&l),
            full: metrics
                .rejected
                .with_label_values(&[config.actor, "pool", "full"]),
            key_full: metrics
                .rejected
                .with_label_values(&[config.actor, "pool", "key_full"]),
        });
        let current = Arc::new(Published {
            logic: ArcSwap::from_pointee(logic),
            generation: AtomicU64::new(0),
        });
        let queued = Arc::new(AtomicUsize::new(0));
        for i in 0..config.threads.max(1) {
            let (rx, current, m, queued) =
                (queue.clone(), current.clone(), m.clone(), queued.clone());
            std::thread::Builder::new()
                .name(format!("atb-{}-{i}", config.actor))
                .spawn(move || worker(rx, current, m, queued))
                .map_err(|source| StartError::Thread {
                    actor: config.actor,
                    source,
                })?;
        }
        Ok(Self {
            queue,
            current,
            metrics: m,
            held: Arc::default(),
            queued,
            config,
        })
    }

    /// The logic the threads run now.
    pub fn logic(&self) -> Arc<L> {
        self.current.logic.load_full()
    }

    /// Publishes `logic` (after building one worker from it on the calling
    /// thread: a logic that cannot build is refused and the running one
    /// stays). Each thread rebuilds before its next job.
    pub fn replace(&self, logic: L) -> Result<(), L::BuildError> {
        logic.build()?;
        self.current.logic.store(Arc::new(logic));
        self.current.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Queues `job` for `key` and waits for its output.
    pub async fn call(&self, key: &str, job: L::Job) -> Result<L::Output, CallError> {
        let key: Arc<str> = Arc::from(key);
        let slot = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            let n = held.entry(key.clone()).or_insert(0);
            if *n >= self.config.per_key.max(1) {
                self.metrics.key_full.inc();
                return Err(CallError::Overloaded { shard: 0 });
            }
            *n += 1;
            KeySlot {
                held: self.held.clone(),
                key: key.clone(),
            }
        };
        let (reply, rx) = oneshot::channel();
        let (queued, wake) = {
            let mut waiting = self.queue.lock();
            let queued = waiting.jobs.push(
                &key,
                Job {
                    job,
                    reply,
                    _held: slot,
                },
            );
            (queued, waiting.asleep > 0)
        };
        match queued {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::AcqRel);
                self.metrics.depth.inc();
                if wake {
                    self.queue.ready.notify_one();
                }
            }
            Err(_) => {
                self.metrics.full.inc();
                return Err(CallError::Overloaded { shard: 0 });
            }
        }
        rx.await.unwrap_or(Err(CallError::Fault { shard: 0 }))
    }

    /// Jobs waiting for a thread.
    pub fn depth(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

impl<L: BlockingLogic> Drop for BlockingPool<L> {
    /// The threads finish the jobs queued, then end.
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

fn worker<L: BlockingLogic>(
    rx: Arc<Queue<Job<L>>>,
    current: Arc<Published<L>>,
    m: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
) {
    let mut seen = current.generation.load(Ordering::Acquire);
    let mut logic = current.logic.load_full();
    let mut built = logic.build().ok();
    while let Some(Job { job, reply, _held }) = rx.next() {
        queued.fetch_sub(1, Ordering::AcqRel);
        m.depth.dec();
        if reply.is_closed() {
            continue; // the caller gave up; nobody reads the answer
        }
        let generation = current.generation.load(Ordering::Acquire);
        if generation != seen {
            seen = generation;
            logic = current.logic.load_full();
            built = None;
        }
        if built.is_none() {
            built = logic.build().ok();
        }
        let Some(w) = built.as_mut() else {
            let _ = reply.send(Err(CallError::Unavailable { shard: 0 }));
            continue;
        };
        let started = Instant::now();
        let ran = catch_unwind(AssertUnwindSafe(|| logic.run(w, job)));
        m.seconds.observe(started.elapsed().as_secs_f64());
        match ran {
            Ok(out) => {
                m.ok.inc();
                let _ = reply.send(Ok(out));
            }
            Err(panic) => {
                m.fault.inc();
                m.restarts.inc();
                tracing::error!(
                    panic = crate::pool::panic_message(panic.as_ref()),
                    "a blocking job panicked; its worker is rebuilt"
                );
                built = None;
                let _ = reply.send(Err(CallError::Fault { shard: 0 }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Adds its offset; panics on 13; sleeps on 99; fails to build when
    /// `broken`.
    struct Adder {
        offset: u64,
        broken: bool,
    }

    impl BlockingLogic for Adder {
        type Worker = u64;
        type Job = u64;
        type Output = u64;
        type BuildError = String;
        fn build(&self) -> Result<u64, String> {
            if self.broken {
                Err("broken".into())
            } else {
                Ok(self.offset)
            }
        }
        fn run(&self, w: &mut u64, job: u64) -> u64 {
            match job {
                13 => panic!("unlucky"),
                99 => {
                    std::thread::sleep(Duration::from_millis(300));
                    0
                }
                50 => {
                    std::thread::sleep(Duration::from_millis(50));
                    50
                }
                n => n + *w,
            }
        }
    }

    fn pool(per_key: usize, queue: usize, threads: usize) -> (BlockingPool<Adder>, ActorMetrics) {
        let m = ActorMetrics::register(&prometheus::Registry::new()).unwrap();
        let p = BlockingPool::start(
            Adder {
                offset: 100,
                broken: false,
            },
            BlockingConfig {
                actor: "adder",
                threads,
                queue,
                per_key,
            },
            &m,
        )
        .unwrap();
        (p, m)
    }

    #[actix_rt::test]
    async fn jobs_run_and_a_panic_fails_the_caller_and_rebuilds() {
        let (p, m) = pool(4, 8, 1);
        assert_eq!(p.call("a", 1).await, Ok(101));
        assert_eq!(p.call("a", 13).await, Err(CallError::Fault { shard: 0 }));
        assert_eq!(p.call("a", 2).await, Ok(102));
        assert_eq!(m.restarts.with_label_values(&["adder", "pool"]).get(), 1);
    }

    #[actix_rt::test]
    async fn replacing_the_logic_rebuilds_every_worker_and_a_broken_one_is_refused() {
        let (p, _) = pool(4, 8, 2);
        p.replace(Adder {
            offset: 7,
            broken: false,
        })
        .unwrap();
        assert_eq!(p.call("a", 1).await, Ok(8));
        assert!(p
            .replace(Adder {
                offset: 0,
                broken: true
            })
            .is_err());
        assert_eq!(p.call("a", 1).await, Ok(8));
    }

    #[actix_rt::test]
    async fn one_key_cannot_take_the_whole_queue() {
        let (p, m) = pool(2, 8, 1);
        let p = Arc::new(p);
        // Key "a" holds its two slots (one running, one queued).
        let busy: Vec<_> = (0..2)
            .map(|_| {
                let p = p.clone();
                actix_rt::spawn(async move { p.call("a", 99).await })
            })
            .collect();
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            p.call("a", 1).await,
            Err(CallError::Overloaded { shard: 0 })
        );
        assert_eq!(
            m.rejected
                .with_label_values(&["adder", "pool", "key_full"])
                .get(),
            1
        );
        // Another key still gets in.
        assert_eq!(p.call("b", 1).await, Ok(101));
        for b in busy {
            assert_eq!(b.await.unwrap(), Ok(0));
        }
        // The share comes back when the jobs are done.
        assert_eq!(p.call("a", 1).await, Ok(101));
    }

    #[actix_rt::test]
    async fn a_keys_backlog_delays_another_key_by_one_job_not_by_the_backlog() {
        let (p, _) = pool(8, 16, 1);
        let p = Arc::new(p);
        let call = |key: &'static str, job: u64| {
            let p = p.clone();
            actix_rt::spawn(async move {
                let out = p.call(key, job).await;
                (out, Instant::now())
            })
        };
        // "a" occupies the thread, then queues three more jobs; "b" queues
        // one after them.
        let running = call("a", 99);
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        let backlog: Vec<_> = (0..3).map(|_| call("a", 50)).collect();
        actix_rt::time::sleep(Duration::from_millis(20)).await;
        let other = call("b", 1);
        let (out, b_done) = other.await.unwrap();
        assert_eq!(out, Ok(101));
        let mut a_done = Vec::new();
        for t in backlog {
            let (out, at) = t.await.unwrap();
            assert_eq!(out, Ok(50));
            a_done.push(at);
        }
        assert_eq!(running.await.unwrap().0, Ok(0));
        // Round robin: "b" ran after one job of "a"'s backlog, before the
        // other two (first in, first out would run it last).
        a_done.sort();
        assert!(b_done > a_done[0]);
        assert!(b_done < a_done[1], "b waited for a's whole backlog");
    }
}
