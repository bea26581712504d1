//! `atb bench --soak`: the benchmark mix through the broker for minutes,
//! then the evidence that nothing leaked, nothing was accepted twice and
//! nothing went unaudited. This module is the plain part: when to sample,
//! how to judge a re-sent mandate's answer, the audit verdict and the
//! report; the runner wiring is `bench::run_soak`.
//!
//! Design points:
//! - One open-loop phase through the broker atb bench starts (no direct
//!   path, no closed loop): a steady rate, every request with its own
//!   single-use mandate, minted before the phase. The phase may last up to
//!   [`MAX_SOAK_SECONDS`], so that every mandate is still unexpired (the
//!   broker's hard maximum lifetime is 900 s) when the replay check re-sends
//!   it after the phase.
//! - The broker's RSS and open file descriptors are sampled when the phase
//!   starts (every connection open and warm), every `interval`, and one
//!   second before the scheduled end ([`sample_offsets`]): start and end
//!   are both under the same load, so they compare like with like.
//! - Replay check: after the phase, up to [`REPLAY_SAMPLE`] mandates the
//!   broker already accepted, spread evenly over each agent's used pool,
//!   are sent again, each with its own request bytes (its own route).
//!   Each must be refused 403 with `"error":"poa_replay"`; a 2xx is a
//!   replay accepted, anything else is counted apart ([`classify_replay`]).
//! - Audit: the broker is stopped with SIGTERM (it drains and flushes), and
//!   its audit output (stdout, captured to `broker-audit.jsonl`) is checked
//!   with the crate's own verifier (`audit::chain::verify`, restarts not
//!   accepted: one process, one chain). It must verify whole, without a
//!   torn tail, and hold at least one line per answered request.
//! - The run fails ([`SoakReport::failures`]) on any error status or
//!   transport error, any scheduled request without a mandate, any replay
//!   accepted or not refused as a replay, a missing resource sample, or an
//!   audit that does not verify. RSS and descriptors are reported, not
//!   judged: the replay cache grows by design until mandates expire.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::report::{Machine, PathResult, Settings};
use crate::audit::chain::Verification;

/// Longest soak phase: its mandates (minted before it) must outlive it and
/// the replay check within the broker's 900 s maximum lifetime.
pub const MAX_SOAK_SECONDS: u64 = 780;

/// Most already-used mandates the replay check sends again.
pub const REPLAY_SAMPLE: usize = 1000;

/// Mandate lifetime of a soak of `duration`: the phase plus room for
/// minting, warm-up and the replay check, within the hard maximum.
pub fn mandate_ttl(duration: Duration) -> i64 {
    let ttl = duration.as_secs() as i64 + 120;
    ttl.min(crate::poa::claims::HARD_MAX_TTL_SECONDS)
}

/// When to sample the broker, from the start of a phase of `duration`:
/// 0, `interval`, 2 × `interval`, … and one second before the end (the
/// last sample; for phases under 2 s, halfway).
pub fn sample_offsets(duration: Duration, interval: Duration) -> Vec<Duration> {
    let end = if duration >= Duration::from_secs(2) {
        duration - Duration::from_secs(1)
    } else {
        duration / 2
    };
    let mut out = vec![Duration::ZERO];
    if !interval.is_zero() {
        let mut at = interval;
        while at < end {
            out.push(at);
            at += interval;
        }
    }
    if end > Duration::ZERO {
        out.push(end);
    }
    out
}

/// `n` indices spread evenly over `0..used` (all of them if fewer).
pub fn spread(used: usize, n: usize) -> Vec<usize> {
    if used <= n {
        return (0..used).collect();
    }
    (0..n).map(|k| k * used / n).collect()
}

/// The broker's resources at one moment of the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResourceSample {
    /// Seconds from the start of the phase.
    pub at_seconds: u64,
    pub rss_bytes: u64,
    pub open_fds: u64,
}

/// How the broker answered a mandate sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// 403 `poa_replay`: what single use requires.
    Refused,
    /// A 2xx: the mandate was accepted twice.
    Accepted,
    /// Any other answer (status, or `403 <code>` for another refusal), or
    /// `transport` for none.
    Other(String),
}

/// Judges the answer to a re-sent mandate: its status and body.
pub fn classify_replay(status: u16, body: &[u8]) -> ReplayOutcome {
    if (200..300).contains(&status) {
        return ReplayOutcome::Accepted;
    }
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
    match (status, code.as_deref()) {
        (403, Some("poa_replay")) => ReplayOutcome::Refused,
        (s, Some(code)) => ReplayOutcome::Other(format!("{s} {code}")),
        (s, None) => ReplayOutcome::Other(s.to_string()),
    }
}

/// The replay check's tally.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayCheck {
    pub sent: u64,
    /// Refused 403 `poa_replay`.
    pub refused_replay: u64,
    /// Accepted a second time (2xx).
    pub accepted: u64,
    /// Every other answer, by status (and code).
    pub other: BTreeMap<String, u64>,
}

impl ReplayCheck {
    pub fn record(&mut self, outcome: ReplayOutcome) {
        self.sent += 1;
        match outcome {
            ReplayOutcome::Refused => self.refused_replay += 1,
            ReplayOutcome::Accepted => self.accepted += 1,
            ReplayOutcome::Other(what) => *self.other.entry(what).or_default() += 1,
        }
    }
}

/// The verdict on the broker's audit output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditCheck {
    pub file: String,
    /// How the broker ended after SIGTERM.
    pub broker_exit: String,
    /// Intact lines.
    pub lines: u64,
    /// Lines per chain.
    pub chains: BTreeMap<String, u64>,
    /// Whole, unbroken, no torn tail.
    pub verified: bool,
    /// The first problem, if any.
    pub problem: Option<String>,
}

impl AuditCheck {
    pub fn of(v: &Verification, file: String, broker_exit: String) -> Self {
        let problem = match (&v.broken, v.torn_tail) {
            (Some((line, why)), _) => Some(format!("line {line}: {why}")),
            (None, Some((line, bytes))) => Some(format!("line {line}: torn tail ({bytes} bytes)")),
            (None, None) if v.lines == 0 => Some("no audit lines".to_owned()),
            (None, None) => None,
        };
        Self {
            file,
            broker_exit,
            lines: v.lines,
            chains: v.chains.iter().map(|(c, (n, _))| (c.clone(), *n)).collect(),
            verified: problem.is_none(),
            problem,
        }
    }
}

/// A whole soak run.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub version: &'static str,
    pub machine: Machine,
    pub settings: Settings,
    pub duration_seconds: f64,
    pub rate_rps: f64,
    pub connections: usize,
    /// The open-loop phase through the broker.
    pub broker: PathResult,
    /// The broker's RSS and descriptors over the phase (see
    /// [`sample_offsets`]).
    pub samples: Vec<ResourceSample>,
    pub rss_start_bytes: Option<u64>,
    pub rss_end_bytes: Option<u64>,
    pub fds_start: Option<u64>,
    pub fds_end: Option<u64>,
    pub replay: ReplayCheck,
    pub audit: AuditCheck,
    /// Why the soak failed; empty when it passed.
    pub failures: Vec<String>,
    pub passed: bool,
}

impl SoakReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        machine: Machine,
        settings: Settings,
        duration: Duration,
        rate_rps: f64,
        connections: usize,
        broker: PathResult,
        samples: Vec<ResourceSample>,
        replay: ReplayCheck,
        audit: AuditCheck,
    ) -> Self {
        let (first, last) = (samples.first().copied(), samples.last().copied());
        let failures = Self::failures(&broker, &samples, &replay, &audit);
        Self {
            version: env!("CARGO_PKG_VERSION"),
            machine,
            settings,
            duration_seconds: duration.as_secs_f64(),
            rate_rps,
            connections,
            broker,
            rss_start_bytes: first.map(|s| s.rss_bytes),
            rss_end_bytes: last.map(|s| s.rss_bytes),
            fds_start: first.map(|s| s.open_fds),
            fds_end: last.map(|s| s.open_fds),
            samples,
            replay,
            passed: failures.is_empty(),
            failures,
            audit,
        }
    }

    /// What makes the soak fail (see the module header).
    pub fn failures(
        broker: &PathResult,
        samples: &[ResourceSample],
        replay: &ReplayCheck,
        audit: &AuditCheck,
    ) -> Vec<String> {
        let mut out = Vec::new();
        if broker.error_count > 0 {
            out.push(format!(
                "{} requests failed: {:?}",
                broker.error_count, broker.errors
            ));
        }
        if broker.requests == 0 {
            out.push("no request was answered".into());
        }
        if broker.starved > 0 {
            out.push(format!(
                "{} scheduled requests had no mandate",
                broker.starved
            ));
        }
        if replay.sent == 0 {
            out.push("the replay check sent nothing".into());
        }
        if replay.accepted > 0 {
            out.push(format!("{} replays accepted", replay.accepted));
        }
        if !replay.other.is_empty() {
            out.push(format!(
                "re-sent mandates not refused as replays: {:?}",
                replay.other
            ));
        }
        if samples.len() < 2 {
            out.push(format!(
                "{} resource sample(s) of the broker, want start and end",
                samples.len()
            ));
        }
        if let Some(p) = &audit.problem {
            out.push(format!("the audit does not verify: {p}"));
        }
        let answered = broker.requests + replay.sent;
        if audit.verified && audit.lines < answered {
            out.push(format!(
                "{} audit lines for {answered} answered requests",
                audit.lines
            ));
        }
        out
    }

    /// The summary for people.
    pub fn text(&self) -> String {
        let mib = |b: Option<u64>| {
            b.map_or("?".to_owned(), |b| {
                format!("{:.1} MiB", b as f64 / 1048576.0)
            })
        };
        let n = |x: Option<u64>| x.map_or("?".to_owned(), |x| x.to_string());
        let b = &self.broker;
        let errors = if b.errors.is_empty() {
            "none".to_owned()
        } else {
            b.errors
                .iter()
                .map(|(s, c)| format!("{s}: {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::new();
        out.push_str(&format!(
            "atb bench --soak: {} CPUs ({}), load {:.2} at start; broker {} (started by atb bench)\n",
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.load_average_1m,
            self.settings.broker_addr
        ));
        out.push_str(&format!(
            "soak: {:.0} s open loop at {} req/s over {} connections, single-use mandates ({} minted in {:.1} s)\n",
            self.duration_seconds,
            self.rate_rps,
            self.connections,
            self.settings.mandates_minted,
            self.settings.mint_seconds
        ));
        out.push_str(&format!(
            "requests: {} ({} ok, {:.1} req/s), errors: {}, starved: {}\n",
            b.requests, b.ok, b.throughput_rps, errors, b.starved
        ));
        out.push_str(&format!(
            "latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n",
            b.latency.p50_ms, b.latency.p99_ms, b.latency.p99_9_ms, b.latency.max_ms
        ));
        out.push_str(&format!(
            "broker RSS: {} at start, {} at end; open fds: {} at start, {} at end ({} samples)\n",
            mib(self.rss_start_bytes),
            mib(self.rss_end_bytes),
            n(self.fds_start),
            n(self.fds_end),
            self.samples.len()
        ));
        for s in &self.samples {
            out.push_str(&format!(
                "  t={:>4} s  rss {}  fds {}\n",
                s.at_seconds,
                mib(Some(s.rss_bytes)),
                s.open_fds
            ));
        }
        let r = &self.replay;
        out.push_str(&format!(
            "replay check: {} used mandates re-sent, {} refused poa_replay, {} replays accepted{}\n",
            r.sent,
            r.refused_replay,
            r.accepted,
            if r.other.is_empty() {
                String::new()
            } else {
                format!(", other: {:?}", r.other)
            }
        ));
        let a = &self.audit;
        out.push_str(&format!(
            "audit: {} lines in {}, chain {} (broker after SIGTERM: {})\n",
            a.lines,
            a.file,
            match &a.problem {
                None => "verified".to_owned(),
                Some(p) => format!("BROKEN: {p}"),
            },
            a.broker_exit
        ));
        if self.passed {
            out.push_str("soak passed\n");
        } else {
            out.push_str(&format!("soak FAILED: {}\n", self.failures.join("; ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::mix::Class;
    use crate::bench::report::PathMeasure;

    #[test]
    fn samples_at_start_every_interval_and_just_before_the_end() {
        let s = |d: u64, i: u64| -> Vec<u64> {
            sample_offsets(Duration::from_secs(d), Duration::from_secs(i))
                .iter()
                .map(|d| d.as_secs())
                .collect()
        };
        assert_eq!(
            s(600, 60),
            [0, 60, 120, 180, 240, 300, 360, 420, 480, 540, 599]
        );
        assert_eq!(s(120, 60), [0, 60, 119]);
        assert_eq!(s(3, 60), [0, 2]);
        assert_eq!(s(61, 60), [0, 60]);
        assert_eq!(
            sample_offsets(Duration::from_secs(1), Duration::from_secs(60)),
            [Duration::ZERO, Duration::from_millis(500)]
        );
        // A zero interval does not loop.
        assert_eq!(s(10, 0), [0, 9]);
    }

    #[test]
    fn lifetime_covers_the_longest_soak_within_the_hard_maximum() {
        assert_eq!(mandate_ttl(Duration::from_secs(600)), 720);
        assert_eq!(
            mandate_ttl(Duration::from_secs(MAX_SOAK_SECONDS)),
            crate::poa::claims::HARD_MAX_TTL_SECONDS
        );
    }

    #[test]
    fn spread_picks_evenly_and_never_past_the_used_part() {
        assert_eq!(spread(3, 10), [0, 1, 2]);
        assert_eq!(spread(100, 4), [0, 25, 50, 75]);
        assert!(spread(0, 5).is_empty());
        let s = spread(180_000, REPLAY_SAMPLE);
        assert_eq!(s.len(), REPLAY_SAMPLE);
        assert!(s.windows(2).all(|w| w[0] < w[1]) && *s.last().unwrap() < 180_000);
    }

    #[test]
    fn only_403_poa_replay_counts_as_refused() {
        let body = br#"{"error":"poa_replay","reason":"this mandate has already been used","request_id":"r"}"#;
        assert_eq!(classify_replay(403, body), ReplayOutcome::Refused);
        assert_eq!(classify_replay(200, b"{}"), ReplayOutcome::Accepted);
        assert_eq!(classify_replay(204, b""), ReplayOutcome::Accepted);
        // Refused for another reason is not evidence of single use.
        assert_eq!(
            classify_replay(403, br#"{"error":"policy_denied"}"#),
            ReplayOutcome::Other("403 policy_denied".into())
        );
        assert_eq!(
            classify_replay(401, br#"{"error":"poa_replay"}"#),
            ReplayOutcome::Other("401 poa_replay".into())
        );
        assert_eq!(
            classify_replay(403, b"poa_replay"),
            ReplayOutcome::Other("403".into())
        );
        let mut t = ReplayCheck::default();
        for o in [
            ReplayOutcome::Refused,
            ReplayOutcome::Refused,
            ReplayOutcome::Accepted,
            ReplayOutcome::Other("503 replay_store_unavailable".into()),
        ] {
            t.record(o);
        }
        assert_eq!((t.sent, t.refused_replay, t.accepted), (4, 2, 1));
        assert_eq!(t.other.get("503 replay_store_unavailable"), Some(&1));
    }

    #[test]
    fn audit_verdict_from_the_verifier() {
        let good = b"";
        let v = crate::audit::chain::verify(&good[..], false).unwrap();
        let a = AuditCheck::of(&v, "f".into(), "exit 0".into());
        assert!(!a.verified, "an empty audit proves nothing");
        let mut chain = crate::audit::chain::Chain::new("broker", Default::default());
        let mut text = String::new();
        for i in 0..3 {
            text.push_str(&chain.seal(&serde_json::json!({ "i": i })).unwrap());
            text.push('\n');
        }
        let v = crate::audit::chain::verify(text.as_bytes(), false).unwrap();
        let a = AuditCheck::of(&v, "f".into(), "exit 0".into());
        assert!(a.verified, "{a:?}");
        assert_eq!((a.lines, a.chains.get("broker")), (3, Some(&3)));
        // A line cut out of the middle breaks it.
        let cut: Vec<&str> = text.lines().collect();
        let cut = format!("{}\n{}\n", cut[0], cut[2]);
        let v = crate::audit::chain::verify(cut.as_bytes(), false).unwrap();
        let a = AuditCheck::of(&v, "f".into(), "exit 0".into());
        assert!(!a.verified && a.problem.as_deref().unwrap().starts_with("line 2"));
        // A torn tail is not a whole audit.
        let torn = format!("{text}{{\"chain\":\"broker\",\"seq\":3");
        let v = crate::audit::chain::verify(torn.as_bytes(), false).unwrap();
        assert!(!AuditCheck::of(&v, "f".into(), "x".into()).verified);
    }

    fn path(statuses: &[(u16, u64)], transport: u64, starved: u64) -> PathResult {
        let mut m = PathMeasure::default();
        for (s, n) in statuses {
            for _ in 0..*n {
                m.record(Class::Low, *s, Duration::from_millis(1));
            }
        }
        m.transport_errors = transport;
        m.starved = starved;
        m.elapsed = Duration::from_secs(1);
        PathResult::of(&m, None, None, 0.0)
    }

    #[test]
    fn a_soak_passes_only_with_clean_traffic_replays_audit_and_samples() {
        let samples = vec![
            ResourceSample {
                at_seconds: 0,
                rss_bytes: 10 << 20,
                open_fds: 40,
            },
            ResourceSample {
                at_seconds: 2,
                rss_bytes: 12 << 20,
                open_fds: 41,
            },
        ];
        let mut replay = ReplayCheck::default();
        replay.record(ReplayOutcome::Refused);
        let audit = AuditCheck {
            lines: 101,
            verified: true,
            ..Default::default()
        };
        let report = |b: PathResult, s: &[ResourceSample], r: &ReplayCheck, a: &AuditCheck| {
            SoakReport::new(
                Machine::default(),
                Settings {
                    command: "atb bench --soak".into(),
                    broker_addr: "127.0.0.1:1".into(),
                    upstream_addr: "127.0.0.1:2".into(),
                    spawned: true,
                    tenants_configured: 2,
                    tenants_active: 1,
                    redis: None,
                    warmup_requests_per_connection: 1,
                    mandates_minted: 200,
                    mint_seconds: 0.1,
                },
                Duration::from_secs(3),
                100.0,
                2,
                b,
                s.to_vec(),
                r.clone(),
                a.clone(),
            )
        };
        let ok = report(path(&[(200, 100)], 0, 0), &samples, &replay, &audit);
        assert!(ok.passed, "{:?}", ok.failures);
        assert_eq!(
            (ok.rss_start_bytes, ok.rss_end_bytes),
            (Some(10 << 20), Some(12 << 20))
        );
        assert_eq!((ok.fds_start, ok.fds_end), (Some(40), Some(41)));
        assert!(ok.text().contains("soak passed"), "{}", ok.text());
        let json = serde_json::to_value(&ok).unwrap();
        assert_eq!(json["replay"]["accepted"], 0);
        assert_eq!(json["audit"]["verified"], true);

        let mut accepted = replay.clone();
        accepted.record(ReplayOutcome::Accepted);
        let mut other = replay.clone();
        other.record(ReplayOutcome::Other("transport".into()));
        let broken = AuditCheck {
            problem: Some("line 7: prev does not match".into()),
            ..audit.clone()
        };
        let short = AuditCheck {
            lines: 100,
            ..audit.clone()
        };
        for (bad, why) in [
            (
                report(
                    path(&[(200, 99), (503, 1)], 0, 0),
                    &samples,
                    &replay,
                    &audit,
                ),
                "failed",
            ),
            (
                report(path(&[(200, 99)], 1, 0), &samples, &replay, &audit),
                "failed",
            ),
            (
                report(path(&[(200, 100)], 0, 3), &samples, &replay, &audit),
                "no mandate",
            ),
            (
                report(path(&[(200, 100)], 0, 0), &samples, &accepted, &audit),
                "replays accepted",
            ),
            (
                report(path(&[(200, 100)], 0, 0), &samples, &other, &audit),
                "not refused",
            ),
            (
                report(
                    path(&[(200, 100)], 0, 0),
                    &samples,
                    &ReplayCheck::default(),
                    &audit,
                ),
                "sent nothing",
            ),
            (
                report(path(&[(200, 100)], 0, 0), &samples[..1], &replay, &audit),
                "sample",
            ),
            (
                report(path(&[(200, 100)], 0, 0), &samples, &replay, &broken),
                "does not verify",
            ),
            (
                report(path(&[(200, 100)], 0, 0), &samples, &replay, &short),
                "audit lines for 101",
            ),
        ] {
            assert!(!bad.passed);
            assert!(
                bad.failures.iter().any(|f| f.contains(why)),
                "{why}: {:?}",
                bad.failures
            );
            assert!(bad.text().contains("soak FAILED"));
        }
    }
}
