//! Every timer loop of the process (key reloads, sweeps, JWKS refreshes,
//! policy reloads) under one supervision mechanism.
//!
//! Design points:
//! * one local task per loop, on the runtime it is started from; each tick
//!   runs a fresh future made by the loop's tick function, and the tick
//!   says how long until the next one (a fixed interval, or a backoff);
//! * ticks never overlap: the next one is scheduled after the previous one
//!   ended, so a slow tick delays its own loop and nothing else;
//! * a panic inside a tick (while making or polling its future) is caught
//!   at the tick boundary: it is counted as a restart
//!   (`atb_actor_restarts_total{actor,shard}` with the loop's key as
//!   `shard`), logged, and the loop goes on after its last delay — a
//!   failed tick never ends the loop;
//! * a test can arm a panic for the next tick, which then runs at once
//!   ([`PeriodicHandle::inject_fault`]);
//! * [`PeriodicHandle::stop`] ends the loop; dropping the handle does not.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use crate::metrics::ActorMetrics;

/// What a loop is called in metrics and logs.
#[derive(Debug, Clone)]
pub struct PeriodicName {
    /// The `actor` label, e.g. `jwks_refresh`.
    pub actor: &'static str,
    /// The `shard` label: the loop's key (a tenant id), or `"-"`.
    pub key: String,
}

impl PeriodicName {
    /// A loop that is one of its kind (no key: `shard="-"`).
    pub fn single(actor: &'static str) -> Self {
        Self {
            actor,
            key: "-".into(),
        }
    }
}

/// Controls a running loop.
#[derive(Debug, Clone)]
pub struct PeriodicHandle {
    stop: Arc<AtomicBool>,
    fault: Arc<AtomicBool>,
    /// Cuts the current wait short (for an injected fault).
    wake: Arc<tokio::sync::Notify>,
    name: PeriodicName,
}

impl PeriodicHandle {
    /// Ends the loop before its next tick.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Test hook: the next tick panics (inside the tick boundary), and it
    /// runs now rather than after the current wait.
    pub fn inject_fault(&self) {
        self.fault.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub fn name(&self) -> &PeriodicName {
        &self.name
    }
}

/// Starts a loop: after `first`, runs `tick()` and waits the delay it
/// returns, forever (until stopped). Must run inside an actix/tokio local
/// runtime.
pub fn start<F, Fut>(
    name: PeriodicName,
    first: Duration,
    metrics: &ActorMetrics,
    mut tick: F,
) -> PeriodicHandle
where
    F: FnMut() -> Fut + 'static,
    Fut: Future<Output = Duration> + 'static,
{
    let labels = [name.actor, name.key.as_str()];
    let ok = metrics
        .messages
        .with_label_values(&[name.actor, &name.key, "ok"]);
    let fault = metrics
        .messages
        .with_label_values(&[name.actor, &name.key, "fault"]);
    let restarts = metrics.restarts.with_label_values(&labels);
    let seconds = metrics.handle_seconds.with_label_values(&labels);
    let handle = PeriodicHandle {
        stop: Arc::new(AtomicBool::new(false)),
        fault: Arc::new(AtomicBool::new(false)),
        wake: Arc::new(tokio::sync::Notify::new()),
        name,
    };
    let h = handle.clone();
    actix_rt::spawn(async move {
        let mut delay = first;
        loop {
            tokio::select! {
                _ = actix_rt::time::sleep(delay) => {}
                _ = h.wake.notified() => {}
            }
            if h.stop.load(Ordering::Acquire) {
                return;
            }
            let started = Instant::now();
            let injected = h.fault.swap(false, Ordering::AcqRel);
            let ran = AssertUnwindSafe(async {
                if injected {
                    panic!("fault injected into periodic {}", h.name.actor);
                }
                tick().await
            })
            .catch_unwind()
            .await;
            seconds.observe(started.elapsed().as_secs_f64());
            match ran {
                Ok(next) => {
                    ok.inc();
                    delay = next;
                }
                Err(panic) => {
                    fault.inc();
                    restarts.inc();
                    tracing::error!(
                        actor = h.name.actor,
                        key = %h.name.key,
                        panic = crate::pool::panic_message(panic.as_ref()),
                        "periodic tick panicked; the loop goes on at its next tick"
                    );
                }
            }
        }
    });
    handle
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn metrics() -> ActorMetrics {
        ActorMetrics::register(&prometheus::Registry::new()).unwrap()
    }

    fn name(actor: &'static str) -> PeriodicName {
        PeriodicName::single(actor)
    }

    #[actix_rt::test]
    async fn a_panicking_tick_is_counted_and_the_loop_goes_on() {
        let m = metrics();
        let runs = Rc::new(Cell::new(0u32));
        let r = runs.clone();
        let h = start(name("flaky"), Duration::ZERO, &m, move || {
            let r = r.clone();
            async move {
                r.set(r.get() + 1);
                if r.get() == 2 {
                    panic!("second tick fails");
                }
                Duration::from_millis(5)
            }
        });
        for _ in 0..200 {
            if runs.get() >= 5 {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(runs.get() >= 5, "the loop stopped after the panic");
        assert_eq!(m.restarts.with_label_values(&["flaky", "-"]).get(), 1);
        assert_eq!(
            m.messages.with_label_values(&["flaky", "-", "fault"]).get(),
            1
        );
        // An injected fault is one more restart; the loop still goes on.
        h.inject_fault();
        let before = runs.get();
        for _ in 0..200 {
            if runs.get() >= before + 2 {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(m.restarts.with_label_values(&["flaky", "-"]).get(), 2);
        assert!(runs.get() >= before + 2);
        h.stop();
    }

    #[actix_rt::test]
    async fn the_tick_sets_the_next_delay_and_stop_ends_the_loop() {
        let m = metrics();
        let runs = Rc::new(Cell::new(0u32));
        let r = runs.clone();
        let h = start(name("slow"), Duration::ZERO, &m, move || {
            let r = r.clone();
            async move {
                r.set(r.get() + 1);
                Duration::from_secs(3600)
            }
        });
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            runs.get(),
            1,
            "the next tick waits the delay the tick chose"
        );
        h.stop();
        let stopped = start(name("stopped"), Duration::from_millis(20), &m, || async {
            panic!("never runs")
        });
        stopped.stop();
        actix_rt::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(m.restarts.with_label_values(&["stopped", "-"]).get(), 0);
    }
}
