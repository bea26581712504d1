//! The report of `atb bench`: what one run measured, as JSON (`--json`)
//! and as text.
//!
//! Design points:
//! - One report holds both paths of every phase (direct to the upstream,
//!   through the broker) with the same fields, and the broker's added
//!   latency per percentile: the comparison is within one run, on the same
//!   machine state, never against figures from another day.
//! - Measurements come in as plain numbers ([`PathMeasure`]: histograms,
//!   status counts, durations, /proc readings); this module only derives
//!   and formats. Times in the JSON are milliseconds (floats), sizes bytes.
//! - Every non-200 answer is an error, counted by status; transport
//!   failures (no status) are counted as `transport`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::histogram::Histogram;
use super::mix::Class;
use super::procstat::Memory;
use crate::alloc_count::Totals;

/// What the runner measured on one path of one phase.
#[derive(Debug, Default)]
pub struct PathMeasure {
    /// Latency of every answered request (any status).
    pub all: Histogram,
    pub by_class: BTreeMap<Class, Histogram>,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer (connect, TLS or framing errors).
    pub transport_errors: u64,
    /// From the start of the timed phase to the last answer.
    pub elapsed: Duration,
    /// Open loop: scheduled requests not sent (no mandate left). Closed
    /// loop: connections that stopped early for lack of mandates.
    pub starved: u64,
}

impl PathMeasure {
    /// Adds another thread's measure (elapsed: the longest).
    pub fn merge(&mut self, other: &PathMeasure) {
        self.all.merge(&other.all);
        for (class, h) in &other.by_class {
            self.by_class.entry(*class).or_default().merge(h);
        }
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.starved += other.starved;
    }

    /// Records one answer.
    pub fn record(&mut self, class: Class, status: u16, latency: Duration) {
        self.all.record_duration(latency);
        self.by_class
            .entry(class)
            .or_default()
            .record_duration(latency);
        *self.statuses.entry(status).or_default() += 1;
    }
}

/// CPU and memory of one process over a timed phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessReading {
    pub pid: u32,
    /// CPU seconds (user + system) used during the phase.
    pub cpu_seconds: f64,
    /// Voluntary context switches of its threads during the phase (each is
    /// a thread put to sleep and woken again).
    pub wakeups: u64,
    /// Memory at the end of the phase.
    pub memory: Memory,
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

fn ms(nanos: u64) -> f64 {
    // Microsecond precision is plenty, and keeps the JSON readable.
    (nanos as f64 / 1_000.0).round() / 1_000.0
}

impl Latency {
    pub fn of(h: &Histogram) -> Self {
        Self {
            p50_ms: ms(h.quantile(0.50)),
            p90_ms: ms(h.quantile(0.90)),
            p99_ms: ms(h.quantile(0.99)),
            p99_9_ms: ms(h.quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: ms(h.mean()),
        }
    }

    /// `self - base`, per field (the broker's added latency).
    pub fn minus(&self, base: &Latency) -> Latency {
        let d = |a: f64, b: f64| ((a - b) * 1000.0).round() / 1000.0;
        Latency {
            p50_ms: d(self.p50_ms, base.p50_ms),
            p90_ms: d(self.p90_ms, base.p90_ms),
            p99_ms: d(self.p99_ms, base.p99_ms),
            p99_9_ms: d(self.p99_9_ms, base.p99_9_ms),
            max_ms: d(self.max_ms, base.max_ms),
            mean_ms: d(self.mean_ms, base.mean_ms),
        }
    }
}

/// A process's use over a phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcessUsage {
    pub pid: u32,
    pub cpu_seconds: f64,
    /// CPU seconds per 1,000 answered requests (= ms of CPU per request).
    pub cpu_seconds_per_1000_requests: f64,
    /// Thread wake-ups (voluntary context switches) per answered request.
    pub wakeups_per_request: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

impl ProcessUsage {
    pub fn of(reading: &ProcessReading, answered: u64) -> Self {
        Self {
            pid: reading.pid,
            cpu_seconds: (reading.cpu_seconds * 1000.0).round() / 1000.0,
            cpu_seconds_per_1000_requests: per_answer(reading.cpu_seconds * 1000.0, answered, 4),
            wakeups_per_request: per_answer(reading.wakeups as f64, answered, 2),
            rss_bytes: reading.memory.rss_bytes,
            peak_rss_bytes: reading.memory.peak_rss_bytes,
        }
    }
}

/// `total` per answered request, rounded to `decimals` places (0 when
/// nothing was answered).
fn per_answer(total: f64, answered: u64, decimals: i32) -> f64 {
    if answered == 0 {
        return 0.0;
    }
    let scale = 10f64.powi(decimals);
    (total / answered as f64 * scale).round() / scale
}

/// What the broker allocated over a phase (a broker built with
/// `--features count-allocations`; see [`super::allocstat`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AllocationUsage {
    pub allocations: u64,
    pub reallocations: u64,
    pub allocated_bytes: u64,
    /// Per answered request.
    pub allocations_per_request: f64,
    pub reallocations_per_request: f64,
    pub bytes_per_request: f64,
}

impl AllocationUsage {
    pub fn of(t: &Totals, answered: u64) -> Self {
        let per = |v: u64| per_answer(v as f64, answered, 1);
        Self {
            allocations: t.allocations,
            reallocations: t.reallocations,
            allocated_bytes: t.bytes,
            allocations_per_request: per(t.allocations),
            reallocations_per_request: per(t.reallocations),
            bytes_per_request: per(t.bytes),
        }
    }
}

/// What the text says for a broker whose allocations are not counted.
pub const NOT_COUNTED: &str = "not counted (build with --features count-allocations)";

/// Latency of one class of the mix.
#[derive(Debug, Clone, Serialize)]
pub struct ClassResult {
    pub requests: u64,
    pub latency: Latency,
}

/// One path (direct or broker) of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    /// Requests sent (answered + transport errors).
    pub requests: u64,
    /// Answered 200.
    pub ok: u64,
    /// Every other outcome: by status, and `transport` for no answer.
    pub errors: BTreeMap<String, u64>,
    pub error_count: u64,
    pub seconds: f64,
    /// 200 answers per second.
    pub throughput_rps: f64,
    pub latency: Latency,
    pub by_class: BTreeMap<Class, ClassResult>,
    /// See [`PathMeasure::starved`]; nonzero means the mandate budget was
    /// too small (raise `--max-rps`).
    pub starved: u64,
    /// The broker process (broker path only; absent if its pid is unknown).
    pub broker: Option<ProcessUsage>,
    /// The upstream process, if its pid is known.
    pub upstream: Option<ProcessUsage>,
    /// The load generator's own CPU seconds (this process).
    pub generator_cpu_seconds: f64,
    /// The broker's allocations (broker path of a started broker built
    /// with `--features count-allocations`; else absent: not counted).
    pub broker_allocations: Option<AllocationUsage>,
}

impl PathResult {
    pub fn of(
        m: &PathMeasure,
        broker: Option<&ProcessReading>,
        upstream: Option<&ProcessReading>,
        generator_cpu_seconds: f64,
    ) -> Self {
        let answered: u64 = m.statuses.values().sum();
        let ok = m.statuses.get(&200).copied().unwrap_or(0);
        let mut errors: BTreeMap<String, u64> = m
            .statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(s, n)| (s.to_string(), *n))
            .collect();
        if m.transport_errors > 0 {
            errors.insert("transport".into(), m.transport_errors);
        }
        let seconds = m.elapsed.as_secs_f64();
        Self {
            requests: answered + m.transport_errors,
            ok,
            error_count: errors.values().sum(),
            errors,
            seconds: (seconds * 1000.0).round() / 1000.0,
            throughput_rps: if seconds > 0.0 {
                (ok as f64 / seconds * 10.0).round() / 10.0
            } else {
                0.0
            },
            latency: Latency::of(&m.all),
            by_class: m
                .by_class
                .iter()
                .map(|(c, h)| {
                    (
                        *c,
                        ClassResult {
                            requests: h.count(),
                            latency: Latency::of(h),
                        },
                    )
                })
                .collect(),
            starved: m.starved,
            broker: broker.map(|r| ProcessUsage::of(r, answered)),
            upstream: upstream.map(|r| ProcessUsage::of(r, answered)),
            generator_cpu_seconds: (generator_cpu_seconds * 1000.0).round() / 1000.0,
            broker_allocations: None,
        }
    }

    /// With the broker's allocations over the phase, per answered request.
    pub fn with_allocations(mut self, totals: Option<&Totals>) -> Self {
        let answered = self.requests - self.errors.get("transport").copied().unwrap_or(0);
        self.broker_allocations = totals.map(|t| AllocationUsage::of(t, answered));
        self
    }
}

/// Closed loop (N connections, each sends as soon as it has an answer) or
/// open loop (a fixed rate, latency from the intended send time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    ClosedLoop,
    OpenLoop,
}

/// One phase: the same traffic direct and through the broker.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub kind: PhaseKind,
    pub connections: usize,
    /// Open loop: the intended rate.
    pub rate_rps: Option<f64>,
    pub duration_seconds: f64,
    pub direct: PathResult,
    pub broker: PathResult,
    /// Broker latency minus direct latency, per percentile.
    pub added_latency: Latency,
}

impl Phase {
    pub fn new(
        kind: PhaseKind,
        connections: usize,
        rate_rps: Option<f64>,
        duration: Duration,
        direct: PathResult,
        broker: PathResult,
    ) -> Self {
        Self {
            kind,
            connections,
            rate_rps,
            duration_seconds: duration.as_secs_f64(),
            added_latency: broker.latency.minus(&direct.latency),
            direct,
            broker,
        }
    }
}

/// One class of the mix as run.
#[derive(Debug, Clone, Serialize)]
pub struct MixEntry {
    pub class: Class,
    pub percent: f64,
    pub action: &'static str,
    pub method: &'static str,
    pub path: &'static str,
}

/// The machine the run was taken on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// 1-minute load average when the run started (other work on the host).
    pub load_average_1m: f64,
}

/// The model name from the text of /proc/cpuinfo.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// The 1-minute load average from the text of /proc/loadavg.
pub fn load_average(loadavg: &str) -> Option<f64> {
    loadavg.split_whitespace().next()?.parse().ok()
}

impl Machine {
    pub fn current() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_default(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            load_average_1m: load_average(&read("/proc/loadavg")).unwrap_or(0.0),
        }
    }
}

/// How the run was set up.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The arguments `atb bench` ran with.
    pub command: String,
    pub broker_addr: String,
    pub upstream_addr: String,
    /// Whether `atb bench` started the broker and upstream itself.
    pub spawned: bool,
    pub tenants_configured: usize,
    pub tenants_active: usize,
    /// The started broker's Redis, if any (else state in memory).
    pub redis: Option<String>,
    pub warmup_requests_per_connection: usize,
    pub mandates_minted: usize,
    pub mint_seconds: f64,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: &'static str,
    pub machine: Machine,
    pub settings: Settings,
    pub mix: Vec<MixEntry>,
    pub phases: Vec<Phase>,
    /// Errors over every phase and path (a valid run has 0).
    pub errors_total: u64,
}

impl Report {
    pub fn new(machine: Machine, settings: Settings, phases: Vec<Phase>) -> Self {
        let mix = super::mix::ROUTES
            .iter()
            .map(|r| MixEntry {
                class: r.class,
                percent: r.per_cycle as f64 * 100.0 / super::mix::CYCLE as f64,
                action: r.action,
                method: r.method,
                path: r.path,
            })
            .collect();
        let errors_total = phases
            .iter()
            .map(|p| p.direct.error_count + p.broker.error_count)
            .sum();
        Self {
            version: env!("CARGO_PKG_VERSION"),
            machine,
            settings,
            mix,
            phases,
            errors_total,
        }
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let s = &self.settings;
        out.push_str(&format!(
            "atb bench: {} CPUs ({}), load {:.2} at start; broker {} upstream {}{}\n",
            m.cpus,
            m.cpu_model,
            m.load_average_1m,
            s.broker_addr,
            s.upstream_addr,
            if s.spawned {
                " (started by atb bench)"
            } else {
                ""
            }
        ));
        out.push_str(&format!(
            "tenants: {} configured, traffic on {}; shared state {}; {} mandates minted in {:.1} s before the timed phases\n",
            s.tenants_configured,
            s.tenants_active,
            match (&s.redis, s.spawned) {
                (Some(url), _) => url.as_str(),
                (None, true) => "in memory",
                (None, false) => "as the running broker has it",
            },
            s.mandates_minted,
            s.mint_seconds
        ));
        let mix: Vec<String> = self
            .mix
            .iter()
            .map(|e| format!("{}% {} ({} {})", e.percent, e.action, e.method, e.path))
            .collect();
        out.push_str(&format!("mix: {}\n", mix.join(", ")));
        for p in &self.phases {
            out.push('\n');
            match p.kind {
                PhaseKind::ClosedLoop => out.push_str(&format!(
                    "closed loop: {} keep-alive connections, {:.1} s\n",
                    p.connections, p.duration_seconds
                )),
                PhaseKind::OpenLoop => out.push_str(&format!(
                    "open loop: {} req/s over {} connections, {:.1} s (latency from the intended send time)\n",
                    p.rate_rps.unwrap_or(0.0),
                    p.connections,
                    p.duration_seconds
                )),
            }
            out.push_str(
                "          req/s      p50      p90      p99    p99.9      max  errors  broker CPU ms/req  RSS MB\n",
            );
            for (name, r) in [("direct", &p.direct), ("broker", &p.broker)] {
                let errors = if r.errors.is_empty() {
                    "0".to_owned()
                } else {
                    r.errors
                        .iter()
                        .map(|(k, v)| format!("{k}:{v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let (cpu, rss) = match &r.broker {
                    Some(b) => (
                        format!("{:.3}", b.cpu_seconds_per_1000_requests),
                        format!("{:.0}", b.rss_bytes as f64 / 1_048_576.0),
                    ),
                    None => ("-".to_owned(), "-".to_owned()),
                };
                out.push_str(&format!(
                    "{name:<7} {:>8.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {errors:>7} {cpu:>18} {rss:>7}\n",
                    r.throughput_rps,
                    r.latency.p50_ms,
                    r.latency.p90_ms,
                    r.latency.p99_ms,
                    r.latency.p99_9_ms,
                    r.latency.max_ms,
                ));
                if name == "broker" {
                    if let Some(b) = &r.broker {
                        out.push_str(&format!(
                            "        broker thread wake-ups per request: {:.2}\n",
                            b.wakeups_per_request
                        ));
                    }
                    out.push_str(&match &r.broker_allocations {
                        Some(a) => format!(
                            "        broker allocations per request: {:.1} ({:.1} reallocations), {:.0} bytes\n",
                            a.allocations_per_request,
                            a.reallocations_per_request,
                            a.bytes_per_request
                        ),
                        None => format!("        broker allocations per request: {NOT_COUNTED}\n"),
                    });
                }
                if r.starved > 0 {
                    out.push_str(&format!(
                        "        ({} starved: the mandate budget ran out; raise --max-rps)\n",
                        r.starved
                    ));
                }
            }
            let a = &p.added_latency;
            out.push_str(&format!(
                "added by the broker (ms): p50 {:+.3}  p90 {:+.3}  p99 {:+.3}  p99.9 {:+.3}\n",
                a.p50_ms, a.p90_ms, a.p99_ms, a.p99_9_ms
            ));
        }
        out.push_str(&format!(
            "\n(latencies in ms; broker CPU per request = CPU seconds per 1,000 requests; errors total: {})\n",
            self.errors_total
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(latencies_us: &[u64], statuses: &[(u16, u64)], transport: u64) -> PathMeasure {
        let mut m = PathMeasure::default();
        for (i, us) in latencies_us.iter().enumerate() {
            let class = if i % 2 == 0 { Class::Low } else { Class::High };
            m.all.record(us * 1000);
            m.by_class.entry(class).or_default().record(us * 1000);
        }
        m.statuses = statuses.iter().copied().collect();
        m.transport_errors = transport;
        m.elapsed = Duration::from_secs(2);
        m
    }

    #[test]
    fn path_result_derives_rates_errors_and_cpu() {
        let m = measure(&[100, 200, 300, 400], &[(200, 3000), (403, 2)], 1);
        let broker = ProcessReading {
            pid: 7,
            cpu_seconds: 0.6,
            wakeups: 12_008,
            memory: Memory {
                rss_bytes: 50 << 20,
                peak_rss_bytes: 60 << 20,
            },
        };
        let r = PathResult::of(&m, Some(&broker), None, 0.25);
        assert_eq!(r.requests, 3003);
        assert_eq!(r.ok, 3000);
        assert_eq!(r.throughput_rps, 1500.0);
        assert_eq!(r.errors.get("403"), Some(&2));
        assert_eq!(r.errors.get("transport"), Some(&1));
        assert_eq!(r.error_count, 3);
        let b = r.broker.unwrap();
        // 0.6 s of CPU over 3002 answers: 0.1999 ms per request.
        assert_eq!(b.cpu_seconds_per_1000_requests, 0.1999);
        // 12,008 wake-ups over 3002 answers.
        assert_eq!(b.wakeups_per_request, 4.0);
        assert_eq!(b.rss_bytes, 50 << 20);
        assert!(r.upstream.is_none());
        // Percentiles are bucket edges (< 1% above); the max is exact.
        assert!((r.latency.p50_ms - 0.2).abs() < 0.002, "{:?}", r.latency);
        assert_eq!(r.latency.max_ms, 0.4);
        assert_eq!(r.by_class[&Class::Low].requests, 2);
    }

    #[test]
    fn allocations_are_per_answered_request() {
        // 3002 answered, 1 transport error (no answer: not counted).
        let m = measure(&[100, 200], &[(200, 3000), (403, 2)], 1);
        let totals = Totals {
            allocations: 600_400,
            reallocations: 30_020,
            bytes: 90_060_001,
        };
        let r = PathResult::of(&m, None, None, 0.0).with_allocations(Some(&totals));
        let a = r.broker_allocations.unwrap();
        assert_eq!(a.allocations, 600_400);
        assert_eq!(a.allocations_per_request, 200.0);
        assert_eq!(a.reallocations_per_request, 10.0);
        assert_eq!(a.bytes_per_request, 30_000.0);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["broker_allocations"]["bytes_per_request"], 30_000.0);
        assert!(PathResult::of(&m, None, None, 0.0)
            .with_allocations(None)
            .broker_allocations
            .is_none());
        // Nothing answered: zero per request, not a division by zero.
        let none = PathResult::of(&PathMeasure::default(), None, None, 0.0)
            .with_allocations(Some(&totals));
        assert_eq!(
            none.broker_allocations.unwrap().allocations_per_request,
            0.0
        );
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_longest_elapsed() {
        let mut a = measure(&[100], &[(200, 1)], 0);
        let mut b = measure(&[300], &[(200, 1), (502, 1)], 2);
        b.elapsed = Duration::from_secs(3);
        b.starved = 1;
        a.merge(&b);
        assert_eq!(a.all.count(), 2);
        assert_eq!(a.statuses[&200], 2);
        assert_eq!(a.statuses[&502], 1);
        assert_eq!(a.transport_errors, 2);
        assert_eq!(a.elapsed, Duration::from_secs(3));
        assert_eq!(a.starved, 1);
        a.record(Class::Critical, 200, Duration::from_micros(50));
        assert_eq!(a.by_class[&Class::Critical].count(), 1);
    }

    #[test]
    fn report_json_and_text_hold_both_paths() {
        let direct = PathResult::of(&measure(&[100, 100], &[(200, 2)], 0), None, None, 0.1);
        let broker = PathResult::of(
            &measure(&[300, 500], &[(200, 2)], 0),
            Some(&ProcessReading {
                pid: 1,
                cpu_seconds: 0.002,
                wakeups: 8,
                memory: Memory::default(),
            }),
            None,
            0.1,
        );
        let phase = Phase::new(
            PhaseKind::OpenLoop,
            8,
            Some(1000.0),
            Duration::from_secs(2),
            direct,
            broker,
        );
        let added = phase.added_latency.p50_ms;
        assert!((added - 0.2).abs() < 0.006, "{added}");
        let report = Report::new(
            Machine {
                cpus: 2,
                cpu_model: "Test CPU".into(),
                kernel: "6.1".into(),
                load_average_1m: 0.5,
            },
            Settings {
                command: "atb bench".into(),
                broker_addr: "127.0.0.1:1".into(),
                upstream_addr: "127.0.0.1:2".into(),
                spawned: true,
                tenants_configured: 2,
                tenants_active: 1,
                redis: None,
                warmup_requests_per_connection: 5,
                mandates_minted: 10,
                mint_seconds: 0.1,
            },
            vec![phase],
        );
        let json = serde_json::to_value(&report).unwrap();
        let p = &json["phases"][0];
        assert_eq!(p["kind"], "open_loop");
        assert_eq!(p["broker"]["broker"]["cpu_seconds_per_1000_requests"], 1.0);
        assert!(p["direct"]["broker"].is_null());
        assert_eq!(p["direct"]["by_class"]["low"]["requests"], 1);
        assert_eq!(json["errors_total"], 0);
        assert_eq!(json["mix"].as_array().unwrap().len(), 3);
        assert_eq!(json["mix"][0]["percent"], 70.0);
        assert!(p["broker"]["broker_allocations"].is_null());
        let text = report.text();
        assert!(
            text.contains(&format!("broker allocations per request: {NOT_COUNTED}")),
            "{text}"
        );
        assert!(text.contains("open loop: 1000 req/s"), "{text}");
        assert!(
            text.contains("direct ") && text.contains("broker "),
            "{text}"
        );
        assert!(text.contains(&format!("p50 {added:+.3}")), "{text}");
    }

    #[test]
    fn machine_files_parse() {
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t: x\n").as_deref(),
            Some("AMD EPYC")
        );
        assert_eq!(cpu_model("nothing"), None);
        assert_eq!(load_average("3.47 1.54 0.60 2/345 999\n"), Some(3.47));
        assert_eq!(load_average(""), None);
    }
}
