//! Two AgentAuth replicas on one Redis: a real `atb dev --redis` (broker +
//! AgentAuth) and a second `atb agentauth` process started from the
//! `agentauth.toml` it wrote (same PKI, signing keys, approver identity
//! provider and `[redis]`), one `redis-server`, curl as the agent and the
//! approvers. A challenge made on one replica is
//! approved, minted and refused on either; racing approvals across the
//! replicas land exactly as many times as the tier needs; Redis down means
//! 503 `state_unavailable`, and its return means service again without a
//! restart of AgentAuth.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{curl, eventually, free_port, Answer, ATB};
use serde_json::{json, Value};

/// One AgentAuth replica: `atb dev --redis` (AgentAuth and a broker) on
/// `dir`, or `atb agentauth` from the `agentauth.toml` that dev wrote.
struct Replica {
    child: Child,
    dir: PathBuf,
    /// The broker of an `atb dev` replica.
    broker: Option<u16>,
    aa: u16,
    aa_admin: u16,
    stderr: PathBuf,
}

enum Kind<'a> {
    /// `atb dev --dir <dir>/d --redis <url>`.
    Dev(&'a str),
    /// `atb agentauth --config <dir>/d/agentauth.toml`.
    AgentAuth,
}

impl Replica {
    fn start(dir: &Path, kind: Kind<'_>) -> Self {
        for _ in 0..3 {
            if let Some(r) = Self::try_start(dir, &kind) {
                return r;
            }
        }
        panic!("the replica could not bind its ports three times");
    }

    fn try_start(dir: &Path, kind: &Kind<'_>) -> Option<Self> {
        let (broker, admin, upstream, aa, aa_admin) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let logs = dir.join(format!("replica-{aa}"));
        std::fs::create_dir_all(&logs).unwrap();
        let stderr = logs.join("stderr.log");
        let mut cmd = Command::new(ATB);
        match kind {
            Kind::Dev(redis) => {
                cmd.arg("dev")
                    .arg("--dir")
                    .arg(dir.join("d"))
                    .args(["--listen", &format!("127.0.0.1:{broker}")])
                    .args(["--admin", &format!("127.0.0.1:{admin}")])
                    .args(["--upstream", &format!("127.0.0.1:{upstream}")])
                    .args(["--agentauth", &format!("127.0.0.1:{aa}")])
                    .args(["--agentauth-admin", &format!("127.0.0.1:{aa_admin}")])
                    .args(["--redis", redis])
                    // Generous for a loaded test machine (production keeps
                    // 100 ms); written to agentauth.toml with the rest.
                    .env("REDIS_COMMAND_TIMEOUT_MS", "1000")
                    .env("REDIS_CONNECT_TIMEOUT_MS", "500");
            }
            Kind::AgentAuth => {
                cmd.arg("agentauth")
                    .arg("--config")
                    .arg(dir.join("d").join("agentauth.toml"))
                    .env("AGENTAUTH_LISTEN_ADDR", format!("127.0.0.1:{aa}"))
                    .env("AGENTAUTH_ADMIN_ADDR", format!("127.0.0.1:{aa_admin}"));
            }
        }
        cmd.env_remove("ATB_CONFIG")
            .env_remove("REDIS_URL")
            .env("LOG_FORMAT", "json")
            .env("ATB_WORKERS", "2")
            .stdout(std::fs::File::create(logs.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let mut r = Self {
            child: cmd.spawn().unwrap(),
            dir: dir.join("d"),
            broker: matches!(kind, Kind::Dev(_)).then_some(broker),
            aa,
            aa_admin,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = r.child.try_wait() {
                let err = r.stderr();
                if err.contains("Address already in use") {
                    return None;
                }
                panic!("the replica exited ({status}): {err}");
            }
            let err = r.stderr();
            let broker_ready = r.broker.is_none()
                || (err.contains("broker started")
                    && curl(&[&format!("http://127.0.0.1:{admin}/ready")]).status == 200);
            if err.contains("agentauth started") && broker_ready && r.ready() == 200 {
                return Some(r);
            }
            assert!(Instant::now() < deadline, "not ready: {}", r.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    fn ready(&self) -> u16 {
        curl(&[&format!("http://127.0.0.1:{}/ready", self.aa_admin)]).status
    }

    fn metrics(&self) -> String {
        curl(&[&format!("http://127.0.0.1:{}/metrics", self.aa_admin)]).body
    }

    fn agent(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let url = format!("https://localhost:{}{path}", self.aa);
        let (ca, crt, key) = (
            self.path("ca.crt"),
            self.path("acme-agent.crt"),
            self.path("acme-agent.key"),
        );
        let text = body.map(Value::to_string);
        let mut args = vec!["--cacert", &ca, "--cert", &crt, "--key", &key, "-X", method];
        if let Some(t) = &text {
            args.extend(["-H", "content-type: application/json", "--data", t]);
        }
        args.push(&url);
        curl(&args)
    }

    fn challenge(&self, act: &str) -> Answer {
        self.agent(
            "POST",
            "/v1/challenge",
            Some(&json!({"act": act, "con": {}, "leg": {"jurisdiction": "EU",
                "accountable_party": {"type": "user", "id": "dev-owner"}}})),
        )
    }

    fn read(&self, id: &str) -> Answer {
        self.agent("GET", &format!("/v1/challenge/{id}"), None)
    }

    fn mandate(&self, id: &str) -> Answer {
        self.agent("POST", "/v1/mandate", Some(&json!({"challenge_id": id})))
    }

    fn token(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("approver-{name}.jwt"))).unwrap()
    }

    fn approve(&self, approver: &str, id: &str) -> Answer {
        self.approve_with(&self.token(approver), id)
    }

    fn approve_with(&self, token: &str, id: &str) -> Answer {
        let url = format!("https://localhost:{}/v1/challenge/{id}/approve", self.aa);
        let (ca, auth) = (
            self.path("ca.crt"),
            format!("Authorization: Bearer {token}"),
        );
        curl(&["--cacert", &ca, "-X", "POST", "-H", &auth, &url])
    }

    /// A token of an acme approver `sub`, signed by the dev IdP.
    fn person(&self, sub: &str) -> String {
        let key = atb::poa::keys::load_signing_pem(Path::new(&self.path("dev-idp.key"))).unwrap();
        let now = atb::runtime::clock::unix_now();
        let claims = json!({"iss": "atb-dev-idp", "aud": "atb-agentauth", "sub": sub,
            "roles": ["manager"], "tenant": "acme", "iat": now, "exp": now + 600});
        atb::poa::token::sign(&claims, &key, "dev-idp")
    }

    /// The mandate at this replica's broker, on the vendor route.
    fn use_mandate(&self, token: &str) -> Answer {
        let url = format!(
            "https://localhost:{}/api/vendors",
            self.broker.expect("a dev replica")
        );
        let (ca, crt, key) = (
            self.path("ca.crt"),
            self.path("acme-agent.crt"),
            self.path("acme-agent.key"),
        );
        let auth = format!("Authorization: Bearer {token}");
        curl(&[
            "--cacert", &ca, "--cert", &crt, "--key", &key, "-H", &auth, "-X", "POST", &url,
        ])
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn id_of(a: &Answer) -> String {
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["challenge_id"].as_str().unwrap().to_owned()
}

fn state_unavailable(a: &Answer) -> bool {
    a.status == 503 && a.error() == "state_unavailable" && a.header("retry-after").is_some()
}

#[test]
fn two_agentauth_replicas_share_challenges_on_redis() {
    let mut redis = common::redis_procs::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // `atb dev --redis` first (it prepares the directory and writes
    // agentauth.toml, [redis] included), then a second AgentAuth process
    // from that file.
    let url = redis.url();
    let one = Replica::start(dir.path(), Kind::Dev(&url));
    let two = Replica::start(dir.path(), Kind::AgentAuth);
    let replicas = [&one, &two];

    // Dual control: created on one, approved once on each by two different
    // approvers, minted once on either; a second mint is 409 on both.
    let c = one.challenge("sap.vendor.create");
    assert_eq!(c.json()["approvals_needed"], 2, "{}", c.body);
    let id = id_of(&c);
    assert!(id.starts_with("chal_acme."), "{id}");
    assert_eq!(two.read(&id).json()["status"], "pending");
    let first = one.approve("alice", &id);
    assert_eq!(
        (first.status, first.json()["approvals"].clone()),
        (200, json!(1)),
        "{}",
        first.body
    );
    // The same person again, on the other replica: still one approval.
    let again = two.approve("alice", &id);
    assert_eq!(
        (again.status, again.error()),
        (409, "duplicate_approver".into())
    );
    let second = two.approve("bob", &id);
    assert_eq!(second.json()["status"], "approved", "{}", second.body);
    assert_eq!(one.read(&id).json()["status"], "approved");
    let minted = two.mandate(&id);
    assert_eq!(minted.status, 200, "{}", minted.body);
    let token = minted.json()["token"].as_str().unwrap().to_owned();
    for r in replicas {
        let m = r.mandate(&id);
        assert_eq!((m.status, m.error()), (409, "already_minted".into()));
        assert_eq!(r.read(&id).json()["status"], "minted");
    }
    // Signed with the shared keys: the first replica's broker takes it.
    assert_eq!(one.use_mandate(&token).status, 200);

    // Racing approvals across the replicas: eight people, each trying
    // three times on alternating replicas, released together — exactly two
    // land, by two different people. Three rounds.
    let people: Vec<String> = (0..8).map(|i| one.person(&format!("racer-{i}"))).collect();
    let mut id = String::new();
    for _ in 0..3 {
        id = id_of(&two.challenge("sap.vendor.create"));
        let start = std::sync::Barrier::new(24);
        let answers: Vec<Answer> = std::thread::scope(|s| {
            let tries: Vec<_> = (0..24)
                .map(|i| {
                    let (r, token, id, start) = (replicas[i % 2], &people[i % 8], &id, &start);
                    s.spawn(move || {
                        start.wait();
                        r.approve_with(token, id)
                    })
                })
                .collect();
            tries.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let outcomes: Vec<(u16, String)> = answers
            .iter()
            .map(|a| (a.status, a.body.chars().take(60).collect()))
            .collect();
        let ok = answers.iter().filter(|a| a.status == 200).count();
        assert_eq!(ok, 2, "{outcomes:?}");
        assert!(
            answers.iter().all(|a| a.status == 200 || a.status == 409),
            "{outcomes:?}"
        );
        for r in replicas {
            let c = r.read(&id).json();
            assert_eq!(c["status"], "approved");
            let approvals = c["approvals"].as_array().unwrap();
            assert_eq!(approvals.len(), 2, "{c}");
            assert_ne!(approvals[0]["approver_id"], approvals[1]["approver_id"]);
        }
    }
    // Racing mints across the replicas: one mandate.
    let start = std::sync::Barrier::new(8);
    let mints: Vec<Answer> = std::thread::scope(|s| {
        let tries: Vec<_> = (0..8)
            .map(|i| {
                let (r, id, start) = (replicas[i % 2], &id, &start);
                s.spawn(move || {
                    start.wait();
                    r.mandate(id)
                })
            })
            .collect();
        tries.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(
        mints.iter().filter(|a| a.status == 200).count(),
        1,
        "{mints:?}"
    );
    assert!(mints
        .iter()
        .all(|a| a.status == 200 || (a.status == 409 && a.error() == "already_minted")));

    // Redis gone: 503 state_unavailable (never 200, never 500), not ready.
    let pending = id_of(&one.challenge("sap.vendor.create"));
    redis.kill();
    for r in replicas {
        let c = r.challenge("crm.contact.read");
        assert!(state_unavailable(&c), "{} {}", c.status, c.body);
        let a = r.approve("carol", &pending);
        assert!(state_unavailable(&a), "{} {}", a.status, a.body);
        let m = r.mandate(&pending);
        assert!(state_unavailable(&m), "{} {}", m.status, m.body);
        assert!(eventually(Duration::from_secs(5), || r.ready() == 503));
        assert!(r.metrics().contains("atb_redis_up 0"));
    }
    // Back on the same address (empty): service again, no restart.
    redis.restart();
    for r in replicas {
        assert!(
            eventually(Duration::from_secs(10), || r.ready() == 200),
            "{}",
            r.stderr()
        );
        let id = id_of(&r.challenge("crm.contact.read"));
        assert_eq!(r.mandate(&id).status, 200);
    }
    // The challenge made before the outage died with that Redis's memory.
    assert_eq!(two.read(&pending).status, 404);
}
