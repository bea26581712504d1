//! `atb bench`: a load benchmark built into the product. It measures the
//! same traffic direct to the upstream and through the broker, in one run,
//! and reports both (text and JSON).
//!
//! Design points:
//! - By default it starts its own demo upstream (`atb demo-upstream`) and
//!   broker (`atb broker --config <dir>/broker.toml`, written with `atb
//!   dev`'s machinery, see [`setup`]) as child processes on free loopback
//!   ports, so the broker's CPU time and memory are its own (/proc); or it
//!   targets running ones (`--broker`, `--upstream`, with their pids for
//!   CPU and RSS).
//! - Four timed phases, in order: closed loop direct, closed loop broker,
//!   open loop direct, open loop broker. Closed loop: N keep-alive
//!   connections each sending its next request on the previous answer
//!   (throughput at saturation). Open loop: a fixed rate, latency from
//!   each request's intended send time (no coordinated omission; see
//!   [`schedule`]).
//! - Every request carries its own single-use mandate, minted before the
//!   timed phases ([`runner::Minter`]); the mix is 70% low-risk read, 25%
//!   high-risk with dual control and a constraint, 5% critical with
//!   executive approval, each on its own route ([`mix`]). The direct path
//!   gets the identical bytes.
//! - Bounded: at most 120 s per phase, 512 connections, 50,000 req/s open
//!   loop, a mandate budget (`--max-rps` × duration) for the closed loop,
//!   at most [`MAX_MANDATES`] mandates per run.
//! - A broker it starts that was built with `--features count-allocations`
//!   exports its allocation totals on `/metrics`; they are read around each
//!   phase like its CPU ([`allocstat`]) and reported per request; any
//!   other broker's are "not counted".
//!   Logic is in plain modules with unit tests (histogram, mix, schedule,
//!   procstat, allocstat, report, http1, setup, soak); the runner only
//!   wires them.
//! - `--soak` ([`run_soak`], [`soak`]): instead of the four phases, one
//!   open-loop phase through the started broker for up to
//!   [`soak::MAX_SOAK_SECONDS`], sampling its RSS and open descriptors,
//!   then re-sending used mandates (each must be refused as a replay),
//!   stopping the broker with SIGTERM and verifying its audit chain.

pub mod allocstat;
pub mod histogram;
pub mod http1;
pub mod mix;
pub mod procstat;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod setup;
pub mod soak;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use report::{Machine, Phase, PhaseKind, Report, Settings};
use runner::{ChildProcess, Dial, Drive, Minter, Watched};
use schedule::OpenLoop;
use setup::{Addresses, Tenancy};
use soak::SoakReport;

/// Most mandates one run mints (≈ 0.7 KB of request bytes each, all in
/// memory; and within a demo tenant's default share of the replay cache).
pub const MAX_MANDATES: usize = 400_000;

/// Options of `atb bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The bench directory (dev PKI, keys, broker.toml, logs); with
    /// `--broker`, the directory of the PKI and signing key the running
    /// broker trusts (e.g. `atb-dev`).
    pub dir: PathBuf,
    /// Closed-loop connections.
    pub connections: usize,
    /// Open-loop connections.
    pub open_connections: usize,
    /// Each timed phase.
    pub duration: Duration,
    /// Open-loop rate.
    pub rate: f64,
    /// Generated tenants (None: the dev demo tenants).
    pub tenants: Option<usize>,
    /// Of which carry traffic.
    pub active_tenants: usize,
    /// Closed-loop mandate budget per second of the phase.
    pub max_rps: f64,
    /// Warm-up requests per connection before each timed phase.
    pub warmup: usize,
    /// A running broker's agent listener (instead of starting one).
    pub broker: Option<SocketAddr>,
    pub broker_pid: Option<u32>,
    /// A running upstream (instead of starting the demo upstream).
    pub upstream: Option<SocketAddr>,
    pub upstream_pid: Option<u32>,
    /// Redis for the started broker's shared state (`[redis] url`).
    pub redis: Option<String>,
    /// `--soak`: one long open-loop phase through the started broker, then
    /// the replay, resource and audit checks ([`run_soak`]).
    pub soak: bool,
    /// `--soak`: seconds between samples of the broker's RSS and fds.
    pub sample_interval: Duration,
    /// The command line, for the report.
    pub command_line: String,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            dir: "atb-bench".into(),
            connections: 32,
            open_connections: 32,
            duration: Duration::from_secs(5),
            rate: 1000.0,
            tenants: None,
            active_tenants: 50,
            max_rps: 30_000.0,
            warmup: 20,
            broker: None,
            broker_pid: None,
            upstream: None,
            upstream_pid: None,
            redis: None,
            soak: false,
            sample_interval: Duration::from_secs(60),
            command_line: "atb bench".into(),
        }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Dev(#[from] crate::dev::DevError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Tls {
        what: String,
        source: openssl::error::ErrorStack,
    },
    #[error("the mandate signing key: {0}")]
    Key(#[from] crate::poa::keys::KeyError),
    #[error(transparent)]
    Proc(#[from] procstat::ProcError),
    #[error(transparent)]
    Schedule(#[from] schedule::ScheduleError),
    #[error("cannot open a connection at the start of a phase: {reason}")]
    Connect { reason: String },
    #[error("the {name} did not become ready; the end of its log:\n{log}")]
    NotReady { name: &'static str, log: String },
    #[error("the {name} exited ({status}); the end of its log:\n{log}")]
    Exited {
        name: &'static str,
        status: String,
        log: String,
    },
    #[error("a load generator thread panicked")]
    Thread,
    #[error("the configuration is invalid: {0}")]
    Config(String),
}

impl BenchOptions {
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Options(m.into()));
        if !(1..=512).contains(&self.connections) || !(1..=512).contains(&self.open_connections) {
            return bad("--connections and --open-connections must be 1..=512");
        }
        if self.soak {
            return self.validate_soak();
        }
        if self.duration < Duration::from_secs(1) || self.duration > Duration::from_secs(120) {
            return bad("--duration must be 1..=120 seconds");
        }
        if !(1.0..=50_000.0).contains(&self.rate) {
            return bad("--rate must be 1..=50000 requests per second");
        }
        if !(100.0..=100_000.0).contains(&self.max_rps) {
            return bad("--max-rps must be 100..=100000");
        }
        let mandates = (self.max_rps + 1.5 * self.rate) * self.duration.as_secs_f64();
        if mandates > MAX_MANDATES as f64 {
            return Err(BenchError::Options(format!(
                "(--max-rps + 1.5 × --rate) × --duration must be at most {MAX_MANDATES} mandates (memory, and the broker's replay share), not {mandates:.0}"
            )));
        }
        if self.warmup > 1000 {
            return bad("--warmup must be at most 1000 requests per connection");
        }
        if let Some(n) = self.tenants {
            if !(1..=10_000).contains(&n) {
                return bad("--tenants must be 1..=10000");
            }
            if !(1..=200).contains(&self.active_tenants) {
                return bad("--active-tenants must be 1..=200");
            }
            if self.broker.is_some() {
                return bad("--tenants needs the broker atb bench starts (not --broker)");
            }
        }
        if self.broker.is_some() != self.upstream.is_some() {
            return bad("--broker and --upstream go together: the running broker and the upstream it proxies to (for the direct path)");
        }
        if self.broker.is_some() && self.redis.is_some() {
            return bad("--redis configures the broker atb bench starts (not --broker)");
        }
        if self.broker.is_none() && (self.broker_pid.is_some() || self.upstream_pid.is_some()) {
            return bad(
                "--broker-pid and --upstream-pid are for running processes (--broker, --upstream)",
            );
        }
        Ok(())
    }

    /// `--soak`: its own duration limit and mandate budget (open loop
    /// only), and only against the broker atb bench starts (it stops it).
    fn validate_soak(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Options(m));
        let max = soak::MAX_SOAK_SECONDS;
        if self.duration < Duration::from_secs(1) || self.duration > Duration::from_secs(max) {
            return bad(format!(
                "--soak --duration must be 1..={max} seconds (every mandate is minted first and must outlive the soak and its replay check, within the 900 s maximum lifetime)"
            ));
        }
        if self.broker.is_some() || self.upstream.is_some() {
            return bad("--soak needs the broker atb bench starts (it stops it with SIGTERM to verify its audit), not --broker".into());
        }
        let mandates = BenchOptions {
            soak: false,
            max_rps: 100.0,
            duration: Duration::from_secs(1),
            ..self.clone()
        };
        // Everything else (rate, connections, tenants, warm-up) as usual.
        mandates.validate()?;
        let needed = 1.5 * self.rate * self.duration.as_secs_f64();
        if needed > MAX_MANDATES as f64 {
            return bad(format!(
                "1.5 × --rate × --duration must be at most {MAX_MANDATES} mandates, not {needed:.0}"
            ));
        }
        if self.sample_interval < Duration::from_secs(1) {
            return bad("--sample-interval must be at least 1 second".into());
        }
        Ok(())
    }

    fn tenancy(&self) -> Tenancy {
        match self.tenants {
            None => Tenancy::Demo,
            Some(configured) => Tenancy::Generated {
                configured,
                active: self.active_tenants.min(configured),
            },
        }
    }
}

/// Mandate lifetime: long enough for every phase of the run (minting
/// happens first), within the broker's hard maximum of 900 s.
fn mandate_ttl(duration: Duration, warmup_allowance: Duration) -> i64 {
    let run = 4 * (duration + warmup_allowance) + Duration::from_secs(60);
    (run.as_secs() as i64).min(crate::poa::claims::HARD_MAX_TTL_SECONDS)
}

/// Mandates per agent pool: `total` spread over `agents`, plus warm-up.
fn per_agent(total: f64, agents: usize, connections: usize, warmup: usize) -> usize {
    let agents = agents.max(1);
    let conns_per_agent = connections.div_ceil(agents);
    (total / agents as f64).ceil() as usize + conns_per_agent * warmup + 8
}

/// The bench directory, created if needed, as an absolute path.
fn bench_dir(dir: &std::path::Path) -> Result<PathBuf, BenchError> {
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    Ok(std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()))
}

/// Starts the demo upstream and a broker configured for the run (see
/// [`setup`]) on free loopback ports in `dir`, and waits until both are
/// ready. The broker's audit (stdout) goes to `broker-audit.jsonl`.
fn start_processes(
    dir: &std::path::Path,
    tenancy: Tenancy,
    agents: &[setup::BenchAgent],
    connections: usize,
    mandates_per_tenant: usize,
    redis: Option<&str>,
) -> Result<(Addresses, ChildProcess, ChildProcess), BenchError> {
    eprintln!("atb bench: preparing {} ...", dir.display());
    let pki = setup::prepare_dir(dir, agents)?;
    let addrs = Addresses {
        listen: runner::free_port()?,
        admin: runner::free_port()?,
        upstream: runner::free_port()?,
    };
    let config = setup::config(
        &pki,
        addrs,
        tenancy,
        connections,
        mandates_per_tenant,
        redis,
    );
    config
        .validate()
        .map_err(|e| BenchError::Config(e.to_string()))?;
    let [broker_toml, _] = crate::dev::write_config_files(&config, dir)?;
    let upstream_arg = addrs.upstream.to_string();
    let mut upstream = runner::spawn(
        "demo upstream",
        &["demo-upstream", "--listen", &upstream_arg],
        dir,
        "upstream.out",
        "upstream.log",
    )?;
    runner::wait_ready(
        &mut upstream,
        addrs.upstream,
        "/api/hello",
        Duration::from_secs(20),
    )?;
    let toml = broker_toml.display().to_string();
    let mut broker = runner::spawn(
        "broker",
        &["broker", "--config", &toml],
        dir,
        AUDIT_FILE,
        "broker.log",
    )?;
    eprintln!(
        "atb bench: broker {} (pid {}), demo upstream {} (pid {}), {} tenant(s) configured",
        addrs.listen,
        broker.pid(),
        addrs.upstream,
        upstream.pid(),
        config.tenants.len()
    );
    runner::wait_ready(&mut broker, addrs.admin, "/ready", Duration::from_secs(60))?;
    Ok((addrs, upstream, broker))
}

/// The started broker's audit output (its stdout), in the bench directory.
pub const AUDIT_FILE: &str = "broker-audit.jsonl";

/// Runs the benchmark; progress goes to stderr.
pub fn run(opts: &BenchOptions) -> Result<Report, BenchError> {
    opts.validate()?;
    let machine = Machine::current();
    let tenancy = opts.tenancy();
    let agents = setup::agents(tenancy);
    let open = OpenLoop::new(opts.rate, opts.duration)?;
    // Connections are spread over the agents; each agent gets at least one.
    let connections = opts.connections.max(agents.len());
    let open_connections = opts.open_connections.max(agents.len());
    let closed_per_agent = per_agent(
        opts.max_rps * opts.duration.as_secs_f64(),
        agents.len(),
        connections,
        opts.warmup,
    );
    let open_per_agent = per_agent(
        open.count() as f64 * 1.5,
        agents.len(),
        open_connections,
        opts.warmup,
    );

    let dir = bench_dir(&opts.dir)?;

    // The processes: started here, or running ones.
    let mut children = Vec::new();
    let (broker_addr, upstream_addr, watched) = match (opts.broker, opts.upstream) {
        (Some(b), Some(u)) => (
            b,
            u,
            Watched {
                broker: opts.broker_pid,
                upstream: opts.upstream_pid,
                broker_admin: None,
            },
        ),
        _ => {
            let (addrs, upstream, broker) = start_processes(
                &dir,
                tenancy,
                &agents,
                connections.max(open_connections),
                closed_per_agent + open_per_agent,
                opts.redis.as_deref(),
            )?;
            let watched = Watched {
                broker: Some(broker.pid()),
                upstream: Some(upstream.pid()),
                broker_admin: Some(addrs.admin),
            };
            children.push(upstream);
            children.push(broker);
            (addrs.listen, addrs.upstream, watched)
        }
    };
    let tenants_configured = match tenancy {
        Tenancy::Demo => crate::dev::DEMO_TENANTS.len(),
        Tenancy::Generated { configured, .. } => configured,
    };

    // Mandates, before any timed phase.
    let minter = minter(&dir, mandate_ttl(opts.duration, Duration::from_secs(5)))?;
    eprintln!(
        "atb bench: minting {} mandates ({} agent(s)) ...",
        (closed_per_agent + open_per_agent) * agents.len(),
        agents.len()
    );
    let minting = Instant::now();
    let closed_pools: Vec<_> = agents
        .iter()
        .map(|a| minter.pool(a, "c", closed_per_agent))
        .collect();
    let open_pools: Vec<_> = agents
        .iter()
        .map(|a| minter.pool(a, "o", open_per_agent))
        .collect();
    let mint_seconds = minting.elapsed().as_secs_f64();
    let minted: usize = closed_pools
        .iter()
        .chain(&open_pools)
        .map(|p| p.len())
        .sum();

    let direct = Dial::Direct(upstream_addr);
    let broker = Dial::broker(broker_addr, &dir, &agents)?;
    let mut phases = Vec::new();
    for kind in [PhaseKind::ClosedLoop, PhaseKind::OpenLoop] {
        let (pools, conns, drive) = match kind {
            PhaseKind::ClosedLoop => (&closed_pools, connections, Drive::Closed(opts.duration)),
            PhaseKind::OpenLoop => (&open_pools, open_connections, Drive::Open(open)),
        };
        let mut results = Vec::new();
        for (name, dial, wrap) in [("direct", &direct, true), ("broker", &broker, false)] {
            eprintln!(
                "atb bench: {} {name}, {conns} connections, {:.0} s ...",
                match kind {
                    PhaseKind::ClosedLoop => "closed loop".to_owned(),
                    PhaseKind::OpenLoop => format!("open loop at {} req/s", opts.rate),
                },
                opts.duration.as_secs_f64()
            );
            let m = runner::run_phase(dial, pools, conns, drive, opts.warmup, wrap, &watched)?;
            for c in &mut children {
                c.check_alive()?;
            }
            let through_broker = name == "broker";
            results.push(
                report::PathResult::of(
                    &m.measure,
                    if through_broker {
                        m.broker.as_ref()
                    } else {
                        None
                    },
                    m.upstream.as_ref(),
                    m.generator_cpu_seconds,
                )
                .with_allocations(m.broker_allocations.as_ref().filter(|_| through_broker)),
            );
        }
        let broker_result = results.pop().ok_or(BenchError::Thread)?;
        let direct_result = results.pop().ok_or(BenchError::Thread)?;
        phases.push(Phase::new(
            kind,
            conns,
            matches!(kind, PhaseKind::OpenLoop).then_some(opts.rate),
            opts.duration,
            direct_result,
            broker_result,
        ));
    }
    drop(children);
    Ok(Report::new(
        machine,
        Settings {
            command: opts.command_line.clone(),
            broker_addr: broker_addr.to_string(),
            upstream_addr: upstream_addr.to_string(),
            spawned: opts.broker.is_none(),
            tenants_configured,
            tenants_active: agents.len(),
            redis: opts.redis.clone(),
            warmup_requests_per_connection: opts.warmup,
            mandates_minted: minted,
            mint_seconds: (mint_seconds * 10.0).round() / 10.0,
        },
        phases,
    ))
}

/// The mandate signer of a run: `atb dev`'s signing key in `dir`, a random
/// run id, lifetime `ttl` seconds.
fn minter(dir: &std::path::Path, ttl: i64) -> Result<Minter, BenchError> {
    let key = crate::poa::keys::load_signing_pem(&dir.join(crate::dev::SIGNING_KEY))?;
    let mut run_id = [0u8; 6];
    openssl::rand::rand_bytes(&mut run_id).map_err(|source| BenchError::Tls {
        what: "random run id".into(),
        source,
    })?;
    Ok(Minter {
        kid: crate::poa::keys::thumbprint(&key.verifying_key()),
        key,
        run_id: run_id.iter().map(|b| format!("{b:02x}")).collect(),
        ttl,
    })
}

/// How long the broker may take to drain and exit after SIGTERM (its
/// default shutdown grace is 30 s).
const TERMINATE_GRACE: Duration = Duration::from_secs(45);

/// `atb bench --soak` (see [`soak`]): one open-loop phase through a
/// started broker, its RSS and fds sampled, then the replay check, SIGTERM
/// and the audit chain verified. Progress goes to stderr.
pub fn run_soak(opts: &BenchOptions) -> Result<SoakReport, BenchError> {
    if !opts.soak {
        return Err(BenchError::Options("run_soak needs --soak".into()));
    }
    opts.validate()?;
    let machine = Machine::current();
    let tenancy = opts.tenancy();
    let agents = setup::agents(tenancy);
    let open = OpenLoop::new(opts.rate, opts.duration)?;
    let connections = opts.open_connections.max(agents.len());
    let per_agent = per_agent(
        open.count() as f64 * 1.5,
        agents.len(),
        connections,
        opts.warmup,
    );
    let dir = bench_dir(&opts.dir)?;
    let (addrs, mut upstream, mut broker) = start_processes(
        &dir,
        tenancy,
        &agents,
        connections,
        per_agent,
        opts.redis.as_deref(),
    )?;
    let broker_pid = broker.pid();
    let watched = Watched {
        broker: Some(broker_pid),
        upstream: Some(upstream.pid()),
        broker_admin: None,
    };
    let minter = minter(&dir, soak::mandate_ttl(opts.duration))?;
    eprintln!(
        "atb bench --soak: minting {} mandates ({} agent(s)) ...",
        per_agent * agents.len(),
        agents.len()
    );
    let minting = Instant::now();
    let pools: Vec<_> = agents
        .iter()
        .map(|a| minter.pool(a, "s", per_agent))
        .collect();
    let mint_seconds = minting.elapsed().as_secs_f64();
    let dial = Dial::broker(addrs.listen, &dir, &agents)?;

    eprintln!(
        "atb bench --soak: open loop at {} req/s through the broker, {connections} connections, {:.0} s ...",
        opts.rate,
        opts.duration.as_secs_f64()
    );
    let offsets = soak::sample_offsets(opts.duration, opts.sample_interval);
    let (started_tx, started_rx) = std::sync::mpsc::channel::<Instant>();
    let (measured, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(move || {
            let mut samples = Vec::new();
            // No start: the phase failed before it began.
            let Ok(start) = started_rx.recv() else {
                return samples;
            };
            for at in offsets {
                let due = start + at;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                // A broker gone is reported by the phase; no sample then.
                if let (Ok(m), Ok(fds)) =
                    (procstat::memory(broker_pid), procstat::open_fds(broker_pid))
                {
                    eprintln!(
                        "atb bench --soak: t={} s broker rss {:.1} MiB, {fds} open fds",
                        at.as_secs(),
                        m.rss_bytes as f64 / 1048576.0
                    );
                    samples.push(soak::ResourceSample {
                        at_seconds: at.as_secs(),
                        rss_bytes: m.rss_bytes,
                        open_fds: fds,
                    });
                }
            }
            samples
        });
        let measured = runner::run_phase_observed(
            &dial,
            &pools,
            connections,
            Drive::Open(open),
            opts.warmup,
            false,
            &watched,
            move || {
                let _ = started_tx.send(Instant::now());
            },
        );
        let samples = sampler.join().unwrap_or_default();
        (measured, samples)
    });
    let measured = measured?;
    upstream.check_alive()?;
    broker.check_alive()?;
    let result = report::PathResult::of(
        &measured.measure,
        measured.broker.as_ref(),
        measured.upstream.as_ref(),
        measured.generator_cpu_seconds,
    );

    let per_pool = soak::REPLAY_SAMPLE.div_ceil(agents.len().max(1));
    eprintln!("atb bench --soak: re-sending up to {per_pool} used mandates per agent ...");
    let replay = runner::resend_used(&dial, &pools, |used| soak::spread(used, per_pool))?;

    eprintln!("atb bench --soak: stopping the broker (SIGTERM) and verifying its audit ...");
    let exit = broker.terminate(TERMINATE_GRACE)?;
    let audit_path = dir.join(AUDIT_FILE);
    let file = std::fs::File::open(&audit_path).map_err(|source| BenchError::Io {
        what: format!("opening {}", audit_path.display()),
        source,
    })?;
    let verification =
        crate::audit::chain::verify(std::io::BufReader::new(file), false).map_err(|source| {
            BenchError::Io {
                what: format!("reading {}", audit_path.display()),
                source,
            }
        })?;
    let audit = soak::AuditCheck::of(&verification, audit_path.display().to_string(), exit);
    drop(upstream);

    Ok(SoakReport::new(
        machine,
        Settings {
            command: opts.command_line.clone(),
            broker_addr: addrs.listen.to_string(),
            upstream_addr: addrs.upstream.to_string(),
            spawned: true,
            tenants_configured: match tenancy {
                Tenancy::Demo => crate::dev::DEMO_TENANTS.len(),
                Tenancy::Generated { configured, .. } => configured,
            },
            tenants_active: agents.len(),
            redis: opts.redis.clone(),
            warmup_requests_per_connection: opts.warmup,
            mandates_minted: pools.iter().map(|p| p.len()).sum(),
            mint_seconds: (mint_seconds * 10.0).round() / 10.0,
        },
        opts.duration,
        opts.rate,
        connections,
        result,
        samples,
        replay,
        audit,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounded() {
        let o = BenchOptions::default();
        o.validate().unwrap();
        // The default run (4 phases of 5 s) stays well under a minute.
        assert!(o.duration * 4 <= Duration::from_secs(30));
        for bad in [
            BenchOptions {
                connections: 0,
                ..o.clone()
            },
            BenchOptions {
                duration: Duration::from_secs(121),
                ..o.clone()
            },
            BenchOptions {
                rate: 0.0,
                ..o.clone()
            },
            BenchOptions {
                tenants: Some(10_001),
                ..o.clone()
            },
            BenchOptions {
                broker: Some("127.0.0.1:8443".parse().unwrap()),
                ..o.clone()
            },
            BenchOptions {
                broker: Some("127.0.0.1:8443".parse().unwrap()),
                upstream: Some("127.0.0.1:9000".parse().unwrap()),
                tenants: Some(10),
                ..o.clone()
            },
            BenchOptions {
                broker_pid: Some(1),
                ..o.clone()
            },
            BenchOptions {
                max_rps: 50_000.0,
                duration: Duration::from_secs(10),
                ..o.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        BenchOptions {
            broker: Some("127.0.0.1:8443".parse().unwrap()),
            upstream: Some("127.0.0.1:9000".parse().unwrap()),
            broker_pid: Some(1),
            ..o.clone()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn soak_options_have_their_own_bounds() {
        let soak = BenchOptions {
            soak: true,
            duration: Duration::from_secs(600),
            rate: 300.0,
            ..BenchOptions::default()
        };
        soak.validate().unwrap();
        for bad in [
            BenchOptions {
                duration: Duration::from_secs(soak::MAX_SOAK_SECONDS + 1),
                ..soak.clone()
            },
            BenchOptions {
                duration: Duration::ZERO,
                ..soak.clone()
            },
            BenchOptions {
                rate: 1000.0,
                ..soak.clone()
            },
            BenchOptions {
                broker: Some("127.0.0.1:8443".parse().unwrap()),
                upstream: Some("127.0.0.1:9000".parse().unwrap()),
                ..soak.clone()
            },
            BenchOptions {
                connections: 0,
                ..soak.clone()
            },
            BenchOptions {
                sample_interval: Duration::ZERO,
                ..soak.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        // Without --soak, 600 s is refused as before.
        assert!(BenchOptions {
            soak: false,
            ..soak
        }
        .validate()
        .is_err());
    }

    #[test]
    fn mandate_budget_and_lifetime() {
        // 10,000 over 50 agents with 50 connections and 20 warm-up each.
        assert_eq!(per_agent(10_000.0, 50, 50, 20), 200 + 20 + 8);
        assert_eq!(per_agent(5000.0, 1, 32, 20), 5000 + 640 + 8);
        assert_eq!(
            mandate_ttl(Duration::from_secs(5), Duration::from_secs(5)),
            100
        );
        assert_eq!(mandate_ttl(Duration::from_secs(600), Duration::ZERO), 900);
    }
}
