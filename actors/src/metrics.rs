//! Per-actor Prometheus series (SPEC §8).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The per-actor series, labelled by `actor` and `shard`.
#[derive(Clone)]
pub struct ActorMetrics {
    /// Messages accepted into a mailbox and not yet picked up by the actor.
    pub mailbox_depth: IntGaugeVec,
    /// Messages handled, by outcome (`ok`, `fault`).
    pub messages: IntCounterVec,
    /// Time spent inside a handler.
    pub handle_seconds: HistogramVec,
    /// Supervised restarts after a fault or a closed mailbox.
    pub restarts: IntCounterVec,
    /// Messages refused because the mailbox was full or closed.
    pub rejected: IntCounterVec,
}

impl ActorMetrics {
    /// Creates the series and registers them with `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            mailbox_depth: IntGaugeVec::new(
                Opts::new(
                    "atb_actor_mailbox_depth",
                    "Messages waiting in an actor's mailbox",
                ),
                &["actor", "shard"],
            )?,
            messages: IntCounterVec::new(
                Opts::new(
                    "atb_actor_messages_total",
                    "Messages handled by an actor, by outcome",
                ),
                &["actor", "shard", "outcome"],
            )?,
            handle_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "atb_actor_handle_seconds",
                    "Time an actor spends handling one message",
                )
                .buckets(vec![
                    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
                    0.002_5, 0.005, 0.01, 0.05,
                ]),
                &["actor", "shard"],
            )?,
            restarts: IntCounterVec::new(
                Opts::new(
                    "atb_actor_restarts_total",
                    "Supervised actor restarts after a fault",
                ),
                &["actor", "shard"],
            )?,
            rejected: IntCounterVec::new(
                Opts::new(
                    "atb_actor_mailbox_rejections_total",
                    "Messages refused because an actor's mailbox was full or closed",
                ),
                &["actor", "shard", "cause"],
            )?,
        };
        registry.register(Box::new(m.mailbox_depth.clone()))?;
        registry.register(Box::new(m.messages.clone()))?;
        registry.register(Box::new(m.handle_seconds.clone()))?;
        registry.register(Box::new(m.restarts.clone()))?;
        registry.register(Box::new(m.rejected.clone()))?;
        Ok(m)
    }
}
