//! Real Redis processes for integration tests: a single server, a Sentinel
//! set (master, replica, three sentinels) and a three-master Cluster.
//!
//! Every process runs `redis-server` (from the Debian `redis-server`
//! package; `redis-cli` comes from `redis-tools`, both installed by
//! `scripts/test`) on its own free loopback port, in its own tempdir, with
//! persistence off, in the foreground, and is killed (SIGKILL + wait) on
//! drop. Readiness and inspection go through `redis-cli`, an independent
//! client, so the harness does not depend on the Redis client under test.

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{eventually, free_port};

/// How long a process gets to answer PING after being spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `redis-cli` invocation may take before it is killed.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// The master name the sentinels monitor.
pub const SENTINEL_MASTER: &str = "atb-master";

/// Panics with a clear message if `redis-server` or `redis-cli` is missing:
/// Redis tests must fail, never skip silently.
fn require_redis() {
    // Checked once per test binary; the answer (not a poisoned Once) is
    // shared, so every Redis test fails with the same clear message.
    static MISSING: OnceLock<Option<&'static str>> = OnceLock::new();
    let missing = MISSING.get_or_init(|| {
        ["redis-server", "redis-cli"].into_iter().find(|bin| {
            !Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    });
    if let Some(bin) = missing {
        panic!(
            "`{bin}` not found on PATH: the Redis integration tests need real Redis \
             processes; run scripts/test (it installs the redis-server and redis-tools \
             Debian packages) or `apt-get install redis-server redis-tools`"
        );
    }
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT [-a PW] ARGS…` and returns its
/// trimmed stdout. Redis errors are printed to stdout by redis-cli (e.g.
/// `ERR unknown command …`), so they show up in the result; a refused
/// connection gives an empty string (the message goes to stderr). Panics if
/// redis-cli cannot be run or takes longer than 10 s.
pub fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    require_redis();
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(pw) = password {
        cmd.args(["-a", pw, "--no-auth-warning"]);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); run scripts/test"));
    // Read stdout on a thread so a hung server cannot hang the test: the
    // redis-cli shipped with Redis 7.0 has no connect/read timeout option.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + CLI_TIMEOUT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-cli -p {port} {args:?} took longer than {CLI_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    reader.join().unwrap().trim().to_string()
}

/// `field:value` from `INFO` output.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// What a process is: decides its command line.
#[derive(Clone)]
enum Kind {
    Plain,
    Cluster { bus_port: u16 },
    Replica { master_port: u16 },
    Sentinel,
}

/// One `redis-server` process (a data node or a sentinel). Killed on drop.
pub struct RedisServer {
    port: u16,
    password: Option<String>,
    kind: Kind,
    child: Option<Child>,
    log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A standalone server on a free port, ready (answers PING).
    pub fn start() -> Self {
        Self::launch(Kind::Plain, None, None)
    }

    /// A standalone server with `requirepass pw`; `cli` authenticates.
    pub fn start_with_password(pw: &str) -> Self {
        Self::launch(Kind::Plain, Some(pw.to_string()), None)
    }

    fn launch(kind: Kind, password: Option<String>, sentinel_conf: Option<String>) -> Self {
        require_redis();
        let dir = tempfile::tempdir().unwrap();
        if let Some(conf) = sentinel_conf {
            fs::write(dir.path().join("sentinel.conf"), conf).unwrap();
        }
        let mut server = Self {
            port: free_port(),
            password,
            kind,
            child: None,
            log_path: dir.path().join("redis.log"),
            dir,
        };
        server.spawn();
        server
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("redis-server");
        if matches!(self.kind, Kind::Sentinel) {
            // The config file must come first; Sentinel rewrites it, so it
            // lives in the tempdir.
            cmd.arg(self.dir.path().join("sentinel.conf"))
                .arg("--sentinel");
        }
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no"]);
        if !matches!(self.kind, Kind::Sentinel) {
            cmd.args(["--save", "", "--appendonly", "no"]);
        }
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        match &self.kind {
            Kind::Plain | Kind::Sentinel => {}
            Kind::Cluster { bus_port } => {
                cmd.args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", "nodes.conf"])
                    .args(["--cluster-node-timeout", "2000"])
                    // An explicit bus port: the default PORT+10000 overflows
                    // for ephemeral ports above 55535.
                    .args(["--cluster-port", &bus_port.to_string()]);
            }
            Kind::Replica { master_port } => {
                cmd.args(["--replicaof", "127.0.0.1", &master_port.to_string()]);
            }
        }
        cmd
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "redis on port {} already running",
            self.port
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}); run scripts/test"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!(
                    "redis-server on port {} exited early ({status}):\n{}",
                    self.port,
                    self.log()
                );
            }
            if self.cli(&["ping"]) == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}:\n{}",
            self.port,
            self.log()
        );
    }

    /// `redis://127.0.0.1:PORT` (no password in it; see `password`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the process wrote (all runs, including restarts).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL (a crash: no shutdown, no save) and reap. No-op if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and tempdir (killing it
    /// first if it is still running) and waits until it answers PING. The
    /// data set is empty again (persistence is off), except for cluster and
    /// sentinel state files, which are kept.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `redis-cli` against this server (authenticated if it has a
    /// password) and returns trimmed stdout; see [`redis_cli`].
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, self.password.as_deref(), args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master, one replica and three sentinels monitoring `atb-master` with
/// quorum 2, `down-after-milliseconds 1000`, `failover-timeout 3000`.
pub struct SentinelSet {
    /// Data nodes: index 0 started as master, 1 as its replica.
    nodes: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
    /// The master port the last `kill_master` killed (or the first master).
    old_master: u16,
}

impl SentinelSet {
    /// Starts everything and waits until the replica is in sync and every
    /// sentinel knows the master, the replica and the two other sentinels
    /// (so a failover can happen as soon as the master dies).
    pub fn start() -> Self {
        let master = RedisServer::start();
        let master_port = master.port();
        let replica = RedisServer::launch(Kind::Replica { master_port }, None, None);
        let conf = format!(
            "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
             sentinel failover-timeout {SENTINEL_MASTER} 3000\n\
             sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
        );
        let sentinels: Vec<_> = (0..3)
            .map(|_| RedisServer::launch(Kind::Sentinel, None, Some(conf.clone())))
            .collect();
        let set = Self {
            nodes: vec![master, replica],
            sentinels,
            old_master: master_port,
        };
        set.wait_settled(master_port);
        set
    }

    fn wait_settled(&self, master_port: u16) {
        let replica = &self.nodes[1];
        let in_sync = eventually(READY_TIMEOUT, || {
            info_field(&replica.cli(&["info", "replication"]), "master_link_status") == Some("up")
        });
        assert!(
            in_sync,
            "replica {} never synced with master {master_port}:\n{}",
            replica.port(),
            replica.log()
        );
        for s in &self.sentinels {
            // Sentinels learn replicas from the master's INFO and each
            // other from hello messages (every 2 s).
            let known = eventually(READY_TIMEOUT, || {
                let master = Self::sentinel_master_fields(s);
                Self::ask_master(s) == Some(master_port)
                    && master.get("num-slaves").map(String::as_str) == Some("1")
                    && master.get("num-other-sentinels").map(String::as_str) == Some("2")
            });
            assert!(
                known,
                "sentinel {} did not learn the topology: {:?}\n{}",
                s.port(),
                Self::sentinel_master_fields(s),
                s.log()
            );
        }
    }

    /// `SENTINEL MASTER atb-master` as key/value pairs.
    fn sentinel_master_fields(s: &RedisServer) -> std::collections::HashMap<String, String> {
        let out = s.cli(&["sentinel", "master", SENTINEL_MASTER]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    fn ask_master(s: &RedisServer) -> Option<u16> {
        let out = s.cli(&["sentinel", "get-master-addr-by-name", SENTINEL_MASTER]);
        let mut lines = out.lines();
        match (lines.next(), lines.next()) {
            (Some(_host), Some(port)) => port.trim().parse().ok(),
            _ => None,
        }
    }

    /// `redis://127.0.0.1:P` for each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// Both data nodes (whatever their current role).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The current master port, as the first sentinel that answers says.
    pub fn master_port(&self) -> u16 {
        self.sentinels
            .iter()
            .find_map(Self::ask_master)
            .expect("no sentinel knows the master")
    }

    /// The data node that is the current master according to the sentinels.
    pub fn master(&self) -> &RedisServer {
        let port = self.master_port();
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("sentinels name unknown master port {port}"))
    }

    /// SIGKILLs the current master process; returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port();
        self.old_master = port;
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("sentinels name unknown master port {port}"))
            .kill();
        port
    }

    /// True once every sentinel names a master other than the one the last
    /// `kill_master` killed, and that node answers `ROLE` as master.
    pub fn wait_failover(&self, timeout: Duration) -> bool {
        eventually(timeout, || {
            let ports: Vec<Option<u16>> = self.sentinels.iter().map(Self::ask_master).collect();
            let Some(Some(new)) = ports.first().copied() else {
                return false;
            };
            new != self.old_master
                && ports.iter().all(|p| *p == Some(new))
                && self
                    .nodes
                    .iter()
                    .find(|n| n.port() == new)
                    .is_some_and(|n| n.cli(&["role"]).lines().next() == Some("master"))
        })
    }
}

/// Three cluster masters owning all 16384 slots, no replicas.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes, joins them with `redis-cli --cluster create` and
    /// waits until every node reports `cluster_state:ok`.
    pub fn start() -> Self {
        let nodes: Vec<_> = (0..3)
            .map(|_| {
                let bus_port = free_port();
                RedisServer::launch(Kind::Cluster { bus_port }, None, None)
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        for n in &cluster.nodes {
            let ok = eventually(READY_TIMEOUT, || {
                info_field(&n.cli(&["cluster", "info"]), "cluster_state") == Some("ok")
            });
            assert!(
                ok,
                "cluster node {} not ok: {}\n{}",
                n.port(),
                n.cli(&["cluster", "info"]),
                n.log()
            );
        }
        cluster
    }

    /// `redis://127.0.0.1:P` for each node.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// `redis-cli -c` (follows MOVED/ASK) against the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        self.nodes[0].cli(&all)
    }
}
