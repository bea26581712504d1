//! Shared harness for integration tests: a real `atb` process, a PKI made
//! by `atb pki dev` plus odd certificates made by the `openssl` CLI, and
//! `curl` as the independent client.
#![allow(dead_code)]

pub mod faults;
pub mod load;
pub mod process;
pub mod redis_procs;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ATB: &str = env!("CARGO_BIN_EXE_atb");

/// Runs the actix-web app made by `$factory` (an `HttpServer::new`
/// factory) on a loopback port (free, or the one given) in its own thread,
/// one worker, and returns the port once it accepts connections.
#[allow(unused_macros)]
macro_rules! serve_app {
    ($factory:expr) => {
        serve_app!($crate::common::free_port(), $factory)
    };
    ($port:expr, $factory:expr) => {{
        let port: u16 = $port;
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                actix_web::HttpServer::new($factory)
                    .workers(1)
                    .disable_signals()
                    .bind(("127.0.0.1", port))
                    .unwrap()
                    .run()
                    .await
            })
        });
        assert!($crate::common::eventually(
            std::time::Duration::from_secs(5),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        ));
        port
    }};
}
#[allow(unused_imports)]
pub(crate) use serve_app;

/// A loopback port free now, and never handed out before in this test
/// process: the kernel may give the same ephemeral port to two calls in a
/// row once the first probe is closed (a broker once got its listen port
/// as its admin port too and refused to start).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A dev PKI with extra agents, in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new(extra_agents: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(ATB);
        cmd.args(["pki", "dev", "--days", "2", "--out"])
            .arg(dir.path());
        for (name, id) in extra_agents {
            cmd.arg("--agent").arg(format!("{name}={id}"));
        }
        run(&mut cmd);
        Self { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// Issues `name.crt`/`name.key` with the openssl CLI, signed by `ca`
    /// (`"ca"` for the dev CA or the stem of another CA made by
    /// [`Pki::openssl_ca`]), with the given v3 extension lines.
    pub fn openssl_cert(&self, name: &str, ca: &str, extensions: &str) -> (PathBuf, PathBuf) {
        let key = self.path(&format!("{name}.key"));
        let csr = self.path(&format!("{name}.csr"));
        let crt = self.path(&format!("{name}.crt"));
        let ext = self.path(&format!("{name}.ext"));
        fs::write(&ext, extensions).unwrap();
        run(Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-subj", &format!("/CN={name}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(self.path(&format!("{ca}.crt")))
            .arg("-CAkey")
            .arg(self.path(&format!("{ca}.key")))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&crt));
        (crt, key)
    }

    /// A self-signed CA that the broker does not trust.
    pub fn openssl_ca(&self, name: &str) {
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-days", "2", "-subj", &format!("/CN={name}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args([
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
            ])
            .arg(self.path(&format!("{name}.key")))
            .arg("-out")
            .arg(self.path(&format!("{name}.crt"))));
    }
}

/// A running broker process.
pub struct Broker {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub stderr_path: PathBuf,
    pub stdout_path: PathBuf,
    /// The configuration file the broker was started with.
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts `atb broker` with `extra_toml` (tenants, shards, …) appended
    /// to a config that points at `pki`, and `env` set.
    pub fn start(pki: &Pki, extra_toml: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with(pki, "", extra_toml, env)
    }

    /// As [`Broker::start`], with `broker_keys` added to its `[broker]`
    /// table (e.g. `client_request_timeout_seconds = 1`).
    pub fn start_with(
        pki: &Pki,
        broker_keys: &str,
        extra_toml: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        let config = format!(
            r#"
[broker]
listen_addr = "127.0.0.1:{port}"
admin_addr = "127.0.0.1:{admin_port}"
workers = 1
drain_delay_seconds = 0
{broker_keys}

[tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"

[logging]
format = "json"
level = "info"

{extra_toml}
"#,
            cert = pki.path("server.crt").display(),
            key = pki.path("server.key").display(),
            ca = pki.ca().display(),
        );
        let config_path = dir.path().join("atb.toml");
        fs::write(&config_path, config).unwrap();
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        // ATB_TEST_BROKER_CPUS=0 runs the broker on those CPUs only
        // (taskset), e.g. apart from a load generator pinned elsewhere.
        let mut cmd = match std::env::var("ATB_TEST_BROKER_CPUS") {
            Ok(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpus, ATB]);
                c
            }
            Err(_) => Command::new(ATB),
        };
        cmd.arg("broker")
            .arg("--config")
            .arg(&config_path)
            .env_remove("ATB_CONFIG")
            .stdout(fs::File::create(&stdout_path).unwrap())
            .stderr(fs::File::create(&stderr_path).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut broker = Self {
            child,
            port,
            admin_port,
            stderr_path,
            stdout_path,
            config_path: config_path.clone(),
            _dir: dir,
        };
        broker.wait_healthy();
        broker
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("broker exited early ({status}): {}", self.stderr());
            }
            if admin(self, "GET", "/health", &[], None).status == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("broker did not become healthy: {}", self.stderr());
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    pub fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.stderr_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Audit events written so far (stdout JSON lines).
    pub fn audit(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.stdout_path)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l}"))
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn metrics(&self) -> String {
        admin(self, "GET", "/metrics", &[], None).body
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `error` code of a JSON rejection.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// Runs curl with `args` and parses `-i` output.
pub fn curl(args: &[&str]) -> Answer {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    parse_http(&String::from_utf8_lossy(&out.stdout))
}

fn parse_http(raw: &str) -> Answer {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A request on the mTLS listener as agent `agent` (file stem in `pki`), or
/// without a client certificate when `agent` is `None`.
pub fn agent_get(
    broker: &Broker,
    pki: &Pki,
    agent: Option<&str>,
    path: &str,
    extra: &[&str],
) -> Answer {
    let ca = pki.ca().display().to_string();
    let url = broker.url(path);
    let mut args: Vec<String> = vec!["--cacert".into(), ca];
    if let Some(a) = agent {
        args.push("--cert".into());
        args.push(pki.path(&format!("{a}.crt")).display().to_string());
        args.push("--key".into());
        args.push(pki.path(&format!("{a}.key")).display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&refs)
}

/// A request on the admin listener.
pub fn admin(
    broker: &Broker,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> Answer {
    let url = format!("http://127.0.0.1:{}{path}", broker.admin_port);
    let mut args = vec!["-X", method];
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    if let Some(b) = body {
        args.push("--data");
        args.push(b);
    }
    args.push(&url);
    curl(&args)
}

/// Polls `f` until it returns true or `timeout` passes.
/// An mTLS connection of `agent` held open by openssl s_client (stdin
/// kept open, so only the broker can close it), once the broker counts it
/// for `tenant`.
pub fn hold_connection(broker: &Broker, pki: &Pki, agent: &str, tenant: &str) -> Child {
    let holder = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{}", broker.port),
        ])
        .arg("-cert")
        .arg(pki.path(&format!("{agent}.crt")))
        .arg("-key")
        .arg(pki.path(&format!("{agent}.key")))
        .arg("-CAfile")
        .arg(pki.ca())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let gauge = format!(r#"atb_tenant_connections{{tenant="{tenant}"}}"#);
    assert!(eventually(Duration::from_secs(10), || {
        metric(&broker.metrics(), &gauge) == Some(1.0)
    }));
    holder
}

pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The value of a metric sample line `name{labels}` in Prometheus text.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// An Ed25519 signing key made with the openssl CLI.
pub struct SigningKey {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl SigningKey {
    pub fn new(dir: &Path, name: &str) -> Self {
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub.pem"));
        run(Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&private));
        run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public));
        Self { private, public }
    }

    /// Mints a mandate with `atb mint` and extra flags.
    pub fn mint(&self, sub: &str, act: &str, extra: &[&str]) -> String {
        let mut cmd = Command::new(ATB);
        cmd.args(["mint", "--key"])
            .arg(&self.private)
            .args(["--sub", sub, "--act", act])
            .args(extra);
        run(&mut cmd).trim().to_owned()
    }
}

/// `atb audit verify [FLAGS] FILE`: its exit code (-1 if killed by a
/// signal) and stdout + stderr.
pub fn audit_verify(file: &Path, flags: &[&str]) -> (i32, String) {
    let out = Command::new(ATB)
        .args(["audit", "verify"])
        .args(flags)
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
