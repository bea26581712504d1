//! The moving parts of `atb bench`: child processes, connections,
//! mandate pools and the generator threads of each phase.
//!
//! Design points:
//! - One OS thread per connection, blocking I/O (OpenSSL for mTLS, plain
//!   TCP for the direct path), TCP_NODELAY, keep-alive: a thread's cost per
//!   request is a write and a read, so the generator stays far from being
//!   the bottleneck at the rates measured, and its own CPU is reported.
//! - Connections are opened and warmed (a few requests each) before the
//!   timed phase; a barrier starts every thread at once, and the broker's
//!   /proc readings are taken right after the barrier and after the last
//!   thread ends.
//! - Mandates are minted before the phase into per-agent pools of
//!   ready-to-send request bytes (each connection acts as one agent: its
//!   client certificate); threads take the next request with an atomic
//!   cursor. The direct path may reuse a pool round and round (the
//!   upstream does not check mandates); through the broker each is sent
//!   once, and a thread that finds its pool empty stops (counted as
//!   `starved`).
//! - A transport error is counted, the connection opened again; a phase
//!   fails only if connections cannot be opened at its start.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream};

use super::allocstat;
use super::http1::{Connection, Http1Error};
use super::mix::{self, Class};
use super::procstat;
use super::report::{PathMeasure, ProcessReading};
use super::schedule::OpenLoop;
use super::setup::BenchAgent;
use super::soak;
use super::BenchError;
use crate::alloc_count::Totals;

/// A plain or TLS connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// How to reach one path.
pub enum Dial {
    /// Plain HTTP to the upstream.
    Direct(SocketAddr),
    /// mTLS to the broker, one client identity per agent.
    Broker {
        addr: SocketAddr,
        agents: Vec<SslConnector>,
    },
}

const IO_TIMEOUT: Duration = Duration::from_secs(30);

impl Dial {
    /// An mTLS dialer acting as each of `agents` (certificates in `dir`).
    pub fn broker(addr: SocketAddr, dir: &Path, agents: &[BenchAgent]) -> Result<Self, BenchError> {
        let mut out = Vec::new();
        for a in agents {
            let tls = |what: &str, e: openssl::error::ErrorStack| BenchError::Tls {
                what: format!("{what} for agent {}", a.name),
                source: e,
            };
            let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| tls("TLS", e))?;
            b.set_ca_file(dir.join("ca.crt"))
                .map_err(|e| tls("ca.crt", e))?;
            b.set_certificate_file(dir.join(format!("{}.crt", a.name)), SslFiletype::PEM)
                .map_err(|e| tls("certificate", e))?;
            b.set_private_key_file(dir.join(format!("{}.key", a.name)), SslFiletype::PEM)
                .map_err(|e| tls("key", e))?;
            b.set_alpn_protos(b"\x08http/1.1")
                .map_err(|e| tls("ALPN", e))?;
            out.push(b.build());
        }
        Ok(Dial::Broker { addr, agents: out })
    }

    fn connect(&self, agent: usize) -> Result<Connection<Stream>, String> {
        let addr = match self {
            Dial::Direct(a) | Dial::Broker { addr: a, .. } => *a,
        };
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        match self {
            Dial::Direct(_) => Ok(Connection::new(Stream::Plain(tcp))),
            Dial::Broker { agents, .. } => {
                let tls = agents
                    .get(agent % agents.len().max(1))
                    .ok_or("no agent identity")?;
                let s = tls
                    .connect("localhost", tcp)
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                Ok(Connection::new(Stream::Tls(Box::new(s))))
            }
        }
    }

    fn agents(&self) -> usize {
        match self {
            Dial::Direct(_) => 1,
            Dial::Broker { agents, .. } => agents.len(),
        }
    }
}

/// A request ready to send.
pub struct Prepared {
    pub class: Class,
    pub bytes: Vec<u8>,
}

/// One agent's requests, taken in order.
pub struct Pool {
    requests: Vec<Prepared>,
    cursor: AtomicUsize,
}

impl Pool {
    /// The next request; with `wrap`, past the end starts again.
    fn take(&self, wrap: bool) -> Option<&Prepared> {
        let i = self.cursor.fetch_add(1, Ordering::Relaxed);
        if wrap && !self.requests.is_empty() {
            self.requests.get(i % self.requests.len())
        } else {
            self.requests.get(i)
        }
    }

    fn rewind(&self) {
        self.cursor.store(0, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// The requests taken so far (sent, warm-up included), in order.
    pub fn used(&self) -> &[Prepared] {
        let taken = self.cursor.load(Ordering::Relaxed).min(self.requests.len());
        &self.requests[..taken]
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

/// What signs the mandates.
pub struct Minter {
    pub key: ed25519_dalek::SigningKey,
    pub kid: String,
    /// Unique per run: jtis never collide with an earlier run's against a
    /// long-running broker.
    pub run_id: String,
    pub ttl: i64,
}

impl Minter {
    /// `count` requests for `agent`, following the mix cycle, minted on
    /// every core.
    pub fn pool(&self, agent: &BenchAgent, tag: &str, count: usize) -> Pool {
        let cycle = mix::cycle();
        let now = crate::runtime::clock::unix_now();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(count.max(1));
        let chunk = count.div_ceil(threads).max(1);
        let mut requests = Vec::with_capacity(count);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..count)
                .step_by(chunk)
                .map(|from| {
                    let to = (from + chunk).min(count);
                    s.spawn(move || {
                        (from..to)
                            .map(|k| {
                                let class = cycle[k % mix::CYCLE];
                                let jti = format!("{}-{tag}-{}-{k}", self.run_id, agent.name);
                                let claims =
                                    mix::claims(class, &agent.spiffe_id, &jti, now, self.ttl);
                                let token = crate::poa::token::sign(&claims, &self.key, &self.kid);
                                Prepared {
                                    class,
                                    bytes: mix::request_bytes(class, &token),
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                // A minting thread only panics on a bug; its part is lost.
                if let Ok(part) = h.join() {
                    requests.extend(part);
                }
            }
        });
        Pool {
            requests,
            cursor: AtomicUsize::new(0),
        }
    }
}

/// The processes whose use is read around each phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watched {
    pub broker: Option<u32>,
    pub upstream: Option<u32>,
    /// The broker's admin listener, for its allocation totals
    /// ([`allocstat`]; only a broker built with `count-allocations` has them).
    pub broker_admin: Option<SocketAddr>,
}

/// A process's CPU seconds and thread wake-ups so far.
type Use = (f64, u64);

fn usage(pid: u32) -> Result<Use, BenchError> {
    Ok((
        procstat::cpu_seconds(pid)?,
        procstat::voluntary_switches(pid)?,
    ))
}

struct Snapshot {
    broker: Option<Use>,
    upstream: Option<Use>,
    generator: f64,
    allocations: Option<Totals>,
}

impl Watched {
    fn snapshot(&self) -> Result<Snapshot, BenchError> {
        Ok(Snapshot {
            broker: self.broker.map(usage).transpose()?,
            upstream: self.upstream.map(usage).transpose()?,
            generator: procstat::cpu_seconds(std::process::id())?,
            allocations: match self.broker_admin {
                Some(admin) => allocstat::read(admin).map_err(|e| BenchError::Io {
                    what: "reading the broker's allocation totals".into(),
                    source: std::io::Error::other(e),
                })?,
                None => None,
            },
        })
    }

    fn readings(
        &self,
        before: &Snapshot,
        after: &Snapshot,
    ) -> Result<(Option<ProcessReading>, Option<ProcessReading>, f64), BenchError> {
        let reading = |pid: Option<u32>,
                       a: Option<Use>,
                       b: Option<Use>|
         -> Result<Option<ProcessReading>, BenchError> {
            match (pid, a, b) {
                (Some(pid), Some(a), Some(b)) => Ok(Some(ProcessReading {
                    pid,
                    cpu_seconds: b.0 - a.0,
                    wakeups: b.1.saturating_sub(a.1),
                    memory: procstat::memory(pid)?,
                })),
                _ => Ok(None),
            }
        };
        Ok((
            reading(self.broker, before.broker, after.broker)?,
            reading(self.upstream, before.upstream, after.upstream)?,
            after.generator - before.generator,
        ))
    }
}

/// One path of one phase, measured.
pub struct Measured {
    pub measure: PathMeasure,
    pub broker: Option<ProcessReading>,
    pub upstream: Option<ProcessReading>,
    pub generator_cpu_seconds: f64,
    /// What the broker allocated during the phase (None: not counted).
    pub broker_allocations: Option<Totals>,
}

/// How a phase drives its connections.
#[derive(Debug, Clone, Copy)]
pub enum Drive {
    /// Each connection sends as soon as it has an answer, for this long.
    Closed(Duration),
    /// A fixed rate over all connections.
    Open(OpenLoop),
}

/// Runs one phase on one path: `connections` threads, connection `c`
/// acting as agent `c % agents` and taking its requests from that agent's
/// pool (`wrap`: reuse pools, for the direct path).
pub fn run_phase(
    dial: &Dial,
    pools: &[Pool],
    connections: usize,
    drive: Drive,
    warmup: usize,
    wrap: bool,
    watched: &Watched,
) -> Result<Measured, BenchError> {
    run_phase_observed(
        dial,
        pools,
        connections,
        drive,
        warmup,
        wrap,
        watched,
        || {},
    )
}

/// [`run_phase`], calling `on_start` when the timed phase starts (every
/// connection open and warm): `--soak` starts sampling the broker then.
#[allow(clippy::too_many_arguments)]
pub fn run_phase_observed(
    dial: &Dial,
    pools: &[Pool],
    connections: usize,
    drive: Drive,
    warmup: usize,
    wrap: bool,
    watched: &Watched,
    on_start: impl FnOnce(),
) -> Result<Measured, BenchError> {
    for p in pools {
        p.rewind();
    }
    let agents = dial.agents().min(pools.len()).max(1);
    // Open every connection first: a target that is down fails the phase.
    let mut conns = Vec::with_capacity(connections);
    for c in 0..connections {
        conns.push(
            dial.connect(c % agents)
                .map_err(|reason| BenchError::Connect { reason })?,
        );
    }
    let barrier = Barrier::new(connections + 1);
    let start_at: OnceLock<Instant> = OnceLock::new();
    let next = AtomicU64::new(0);
    let (measure, before, after) = std::thread::scope(|s| -> Result<_, BenchError> {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(c, mut conn)| {
                let pool = &pools[c % agents];
                let (barrier, start_at, next) = (&barrier, &start_at, &next);
                s.spawn(move || {
                    let agent = c % agents;
                    let mut m = PathMeasure::default();
                    let send = |conn: &mut Connection<Stream>,
                                req: &Prepared,
                                from: Instant,
                                m: &mut PathMeasure| {
                        match conn.exchange(&req.bytes) {
                            Ok(e) => {
                                m.record(req.class, e.status, from.elapsed());
                                if !e.keep_alive {
                                    reconnect(dial, agent, conn, m);
                                }
                            }
                            Err(_) => {
                                m.transport_errors += 1;
                                reconnect(dial, agent, conn, m);
                            }
                        }
                    };
                    // Warm-up, not measured.
                    let mut scratch = PathMeasure::default();
                    for _ in 0..warmup {
                        if let Some(req) = pool.take(wrap) {
                            send(&mut conn, req, Instant::now(), &mut scratch);
                        }
                    }
                    barrier.wait();
                    let started = Instant::now();
                    match drive {
                        Drive::Closed(duration) => {
                            let deadline = started + duration;
                            while Instant::now() < deadline {
                                let Some(req) = pool.take(wrap) else {
                                    m.starved += 1;
                                    break;
                                };
                                send(&mut conn, req, Instant::now(), &mut m);
                            }
                            m.elapsed = started.elapsed();
                        }
                        Drive::Open(schedule) => {
                            // Time zero of the schedule: set by the first
                            // thread past the barrier (every connection is
                            // warm by then), shared by all.
                            let start =
                                *start_at.get_or_init(|| Instant::now() + Duration::from_millis(2));
                            loop {
                                let i = next.fetch_add(1, Ordering::Relaxed);
                                let Some(due) = schedule.due(i) else { break };
                                let at = start + due;
                                let now = Instant::now();
                                if at > now {
                                    std::thread::sleep(at - now);
                                }
                                match pool.take(wrap) {
                                    Some(req) => send(&mut conn, req, at, &mut m),
                                    None => m.starved += 1,
                                }
                            }
                            m.elapsed = start.elapsed();
                        }
                    }
                    m
                })
            })
            .collect();
        // The phase starts when every connection is warm.
        barrier.wait();
        on_start();
        let before = watched.snapshot()?;
        let mut total = PathMeasure::default();
        for h in handles {
            match h.join() {
                Ok(m) => total.merge(&m),
                Err(_) => return Err(BenchError::Thread),
            }
        }
        let after = watched.snapshot()?;
        Ok((total, before, after))
    })?;
    let (broker, upstream, generator_cpu_seconds) = watched.readings(&before, &after)?;
    let broker_allocations = match (&before.allocations, &after.allocations) {
        (Some(b), Some(a)) => Some(a.since(b)),
        _ => None,
    };
    Ok(Measured {
        measure,
        broker,
        upstream,
        generator_cpu_seconds,
        broker_allocations,
    })
}

/// Sends again, for each agent's pool, the used requests at `indices(used)`
/// (one connection per agent, one at a time) and judges each answer with
/// [`soak::classify_replay`]. A transport error counts as `transport` and
/// the connection is opened again.
pub fn resend_used(
    dial: &Dial,
    pools: &[Pool],
    indices: impl Fn(usize) -> Vec<usize>,
) -> Result<soak::ReplayCheck, BenchError> {
    let mut check = soak::ReplayCheck::default();
    let mut body = Vec::new();
    for (agent, pool) in pools.iter().enumerate().take(dial.agents()) {
        let used = pool.used();
        let mut conn = dial
            .connect(agent)
            .map_err(|reason| BenchError::Connect { reason })?;
        for i in indices(used.len()) {
            let Some(req) = used.get(i) else { continue };
            match conn.exchange_with_body(&req.bytes, &mut body) {
                Ok(e) => {
                    check.record(soak::classify_replay(e.status, &body));
                    if !e.keep_alive {
                        if let Ok(c) = dial.connect(agent) {
                            conn = c;
                        }
                    }
                }
                Err(_) => {
                    check.record(soak::ReplayOutcome::Other("transport".into()));
                    if let Ok(c) = dial.connect(agent) {
                        conn = c;
                    }
                }
            }
        }
    }
    Ok(check)
}

/// Opens `conn` again after an error or a `Connection: close`; while the
/// target refuses, counts transport errors (bounded wait per attempt).
fn reconnect(dial: &Dial, agent: usize, conn: &mut Connection<Stream>, m: &mut PathMeasure) {
    match dial.connect(agent) {
        Ok(c) => *conn = c,
        Err(_) => {
            m.transport_errors += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A child process `atb bench` started; killed when dropped.
pub struct ChildProcess {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl ChildProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of its log (for an error message).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Stops it with SIGTERM and waits at most `grace` for it to exit
    /// (then kills it); how it ended.
    pub fn terminate(&mut self, grace: Duration) -> Result<String, BenchError> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(format!("had already exited ({status})"));
        }
        let pid = libc::pid_t::try_from(self.pid()).map_err(|_| BenchError::Io {
            what: format!("the {}'s pid", self.name),
            source: std::io::Error::other("out of range"),
        })?;
        // SAFETY: kill(2) with a pid this process started and has not
        // reaped (try_wait above), so it cannot name another process.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(BenchError::Io {
                what: format!("sending SIGTERM to the {}", self.name),
                source: std::io::Error::last_os_error(),
            });
        }
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status.to_string()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Ok(format!(
                        "did not exit within {} s of SIGTERM; killed",
                        grace.as_secs()
                    ));
                }
                Err(e) => {
                    return Err(BenchError::Io {
                        what: format!("waiting for the {}", self.name),
                        source: e,
                    })
                }
            }
        }
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Exited {
                name: self.name,
                status: status.to_string(),
                log: self.log_tail(),
            }),
            Err(e) => Err(BenchError::Io {
                what: format!("waiting for the {}", self.name),
                source: e,
            }),
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `atb <args>` (this executable) with its stdout and stderr in
/// files of `dir`.
pub fn spawn(
    name: &'static str,
    args: &[&str],
    dir: &Path,
    stdout_file: &str,
    stderr_file: &str,
) -> Result<ChildProcess, BenchError> {
    let io = |what: String| move |source| BenchError::Io { what, source };
    let exe = std::env::current_exe().map_err(io("locating the atb executable".into()))?;
    let out_path = dir.join(stdout_file);
    let log = dir.join(stderr_file);
    let stdout =
        std::fs::File::create(&out_path).map_err(io(format!("creating {}", out_path.display())))?;
    let stderr = std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(io(format!("starting the {name}")))?;
    Ok(ChildProcess { name, child, log })
}

/// A plain HTTP GET; the status.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut c = Connection::new(Stream::Plain(tcp));
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    c.exchange(req.as_bytes())
        .map(|e| e.status)
        .map_err(|e: Http1Error| e.to_string())
}

/// Waits (at most `timeout`) until `GET path` on `addr` answers 200 while
/// `child` runs.
pub fn wait_ready(
    child: &mut ChildProcess,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        child.check_alive()?;
        if http_get(addr, path) == Ok(200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::NotReady {
                name: child.name,
                log: child.log_tail(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> Result<SocketAddr, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| BenchError::Io {
        what: "finding a free port".into(),
        source,
    })?;
    l.local_addr().map_err(|source| BenchError::Io {
        what: "finding a free port".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::schedule::OpenLoop;

    /// The demo upstream on a free port, in its own thread.
    fn demo_upstream() -> SocketAddr {
        let addr = free_port().unwrap();
        std::thread::spawn(move || {
            actix_web::rt::System::new()
                .block_on(async move { crate::dev::demo_upstream::start(addr).unwrap().await })
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_get(addr, "/").is_err() {
            assert!(Instant::now() < deadline, "demo upstream not up");
            std::thread::sleep(Duration::from_millis(20));
        }
        addr
    }

    fn minter() -> Minter {
        Minter {
            key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]),
            kid: "k".into(),
            run_id: "test".into(),
            ttl: 60,
        }
    }

    fn agent() -> BenchAgent {
        BenchAgent {
            tenant: "acme".into(),
            name: "acme-agent".into(),
            spiffe_id: "spiffe://acme.example/agent/demo".into(),
        }
    }

    #[test]
    fn pools_follow_the_mix_with_unique_mandates() {
        let pool = minter().pool(&agent(), "x", 45);
        assert_eq!(pool.len(), 45);
        let cycle = mix::cycle();
        let mut tokens = std::collections::HashSet::new();
        for (k, p) in pool.requests.iter().enumerate() {
            assert_eq!(p.class, cycle[k % mix::CYCLE]);
            let text = String::from_utf8(p.bytes.clone()).unwrap();
            assert!(text.starts_with(mix::route(p.class).method));
            let token = text
                .lines()
                .find_map(|l| l.strip_prefix("Authorization: Bearer "))
                .unwrap();
            assert!(tokens.insert(token.to_owned()), "mandate {k} is unique");
        }
        // Through the broker a pool is spent once; the direct path wraps.
        assert!(pool.take(false).is_some());
        pool.cursor.store(45, Ordering::Relaxed);
        assert!(pool.take(false).is_none());
        assert!(pool.take(true).is_some());
    }

    #[test]
    fn phases_send_the_schedule_and_count_starved_connections() {
        let addr = demo_upstream();
        let pools = [minter().pool(&agent(), "t", 140)];
        let dial = Dial::Direct(addr);
        let none = Watched::default();

        // Open loop: exactly the scheduled requests, after the warm-up
        // (4 × 2 requests), so 100 consecutive requests of the pool: 5
        // whole cycles of the mix.
        let open = OpenLoop::new(200.0, Duration::from_millis(500)).unwrap();
        let m = run_phase(&dial, &pools, 4, Drive::Open(open), 2, false, &none).unwrap();
        let r = &m.measure;
        assert_eq!(r.all.count(), 100);
        assert_eq!(r.statuses.get(&200), Some(&100), "{:?}", r.statuses);
        assert_eq!((r.transport_errors, r.starved), (0, 0));
        let count = |c: Class| r.by_class.get(&c).map_or(0, |h| h.count());
        assert_eq!(
            (
                count(Class::Low),
                count(Class::High),
                count(Class::Critical)
            ),
            (70, 25, 5)
        );
        assert!(m.broker.is_none() && m.upstream.is_none());

        // Closed loop without wrapping: every connection stops when the
        // pool is spent, and says so.
        let m = run_phase(
            &dial,
            &pools,
            3,
            Drive::Closed(Duration::from_secs(60)),
            1,
            false,
            &none,
        )
        .unwrap();
        assert_eq!(m.measure.starved, 3);
        assert_eq!(m.measure.all.count(), 140 - 3);
        // With wrapping (the direct path) it runs for its duration.
        let m = run_phase(
            &dial,
            &pools,
            2,
            Drive::Closed(Duration::from_millis(300)),
            1,
            true,
            &none,
        )
        .unwrap();
        assert_eq!(m.measure.starved, 0);
        assert!(m.measure.all.count() > 0);
        assert_eq!(m.measure.statuses.len(), 1, "{:?}", m.measure.statuses);
    }

    #[test]
    fn a_target_that_is_down_fails_the_phase() {
        let addr = free_port().unwrap();
        let pools = [minter().pool(&agent(), "d", 2)];
        let err = run_phase(
            &Dial::Direct(addr),
            &pools,
            1,
            Drive::Closed(Duration::from_millis(10)),
            0,
            true,
            &Watched::default(),
        );
        assert!(matches!(err, Err(BenchError::Connect { .. })));
    }
}
