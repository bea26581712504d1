//! The configuration files `atb dev` writes (`broker.toml`,
//! `agentauth.toml`) start identical replicas: a real `atb dev`, then a
//! second `atb broker` and a second `atb agentauth` from those files with
//! only their listen addresses overridden, run from another directory,
//! serving mandates from `atb mint` (the dev key) and from AgentAuth.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::Proc;
use common::{curl, free_port, Answer, ATB};
use serde_json::json;

const AGENT: &str = "spiffe://acme.example/agent/demo";

/// `atb dev` started in `cwd` with the relative directory `d`, on free
/// ports.
struct Dev {
    _proc: Proc,
    dir: PathBuf,
    broker: u16,
    aa: u16,
}

fn start_dev(cwd: &Path, extra: &[&str]) -> Dev {
    for _ in 0..3 {
        let (broker, admin, upstream, aa, aa_admin) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let mut cmd = Command::new(ATB);
        cmd.current_dir(cwd)
            .args(["dev", "--dir", "d"])
            .args(["--listen", &format!("127.0.0.1:{broker}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--upstream", &format!("127.0.0.1:{upstream}")])
            .args(["--agentauth", &format!("127.0.0.1:{aa}")])
            .args(["--agentauth-admin", &format!("127.0.0.1:{aa_admin}")])
            .args(extra);
        let mut proc = Proc::spawn(cmd, cwd, "dev");
        let ready = [
            format!("http://127.0.0.1:{admin}/ready"),
            format!("http://127.0.0.1:{aa_admin}/ready"),
        ];
        if proc.wait_ready(&["broker started", "agentauth started"], &ready) {
            return Dev {
                _proc: proc,
                dir: cwd.join("d"),
                broker,
                aa,
            };
        }
    }
    panic!("atb dev could not bind its ports three times");
}

impl Dev {
    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// `GET /api/hello` as acme's demo agent with `token` on the broker
    /// listening on `port`.
    fn hello(&self, port: u16, token: &str) -> Answer {
        let (ca, crt, key) = (
            self.path("ca.crt"),
            self.path("acme-agent.crt"),
            self.path("acme-agent.key"),
        );
        let auth = format!("Authorization: Bearer {token}");
        let url = format!("https://localhost:{port}/api/hello");
        curl(&[
            "--cacert", &ca, "--cert", &crt, "--key", &key, "-H", &auth, &url,
        ])
    }

    /// `POST path` with a JSON body to the AgentAuth on `port`, as acme's
    /// demo agent (mTLS).
    fn agentauth(&self, port: u16, path: &str, body: &serde_json::Value) -> Answer {
        let (ca, crt, key) = (
            self.path("ca.crt"),
            self.path("acme-agent.crt"),
            self.path("acme-agent.key"),
        );
        let url = format!("https://localhost:{port}{path}");
        let body = body.to_string();
        curl(&[
            "--cacert",
            &ca,
            "--cert",
            &crt,
            "--key",
            &key,
            "-H",
            "content-type: application/json",
            "--data",
            &body,
            &url,
        ])
    }

    /// A low-risk mandate from the AgentAuth on `port` (no approval).
    fn agentauth_mandate(&self, port: u16) -> String {
        let leg =
            json!({"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "dev-owner"}});
        let c = self.agentauth(
            port,
            "/v1/challenge",
            &json!({"act": "crm.contact.read", "con": {}, "leg": leg}),
        );
        assert_eq!(c.status, 200, "{}", c.body);
        let id = c.json()["challenge_id"].as_str().unwrap().to_owned();
        let m = self.agentauth(port, "/v1/mandate", &json!({"challenge_id": id}));
        assert_eq!(m.status, 200, "{}", m.body);
        m.json()["token"].as_str().unwrap().to_owned()
    }

    /// A mandate from `atb mint` with the dev signing key (README).
    fn mint(&self) -> String {
        let out = Command::new(ATB)
            .args(["mint", "--key", &self.path("poa-signing.key")])
            .args(["--sub", AGENT, "--act", "crm.contact.read"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// Starts `atb <service> --config <file>` from `cwd` with `env`, retrying
/// on fresh ports (`ports` makes the environment for two free ports).
fn start_replica(
    cwd: &Path,
    service: &str,
    file: &str,
    started: &str,
    ports: impl Fn(u16, u16) -> [(&'static str, String); 2],
) -> (Proc, u16, u16) {
    for attempt in 0..3 {
        let (port, admin) = (free_port(), free_port());
        let mut cmd = Command::new(ATB);
        cmd.current_dir(cwd)
            .args([service, "--config", file])
            .envs(ports(port, admin));
        let mut proc = Proc::spawn(cmd, cwd, &format!("{service}-{attempt}"));
        if proc.wait_ready(&[started], &[format!("http://127.0.0.1:{admin}/ready")]) {
            return (proc, port, admin);
        }
    }
    panic!("atb {service} could not bind its ports three times");
}

#[test]
fn dev_config_files_start_identical_replicas() {
    let work = tempfile::tempdir().unwrap();
    let dev = start_dev(work.path(), &[]);
    let broker_toml = dev.dir.join("broker.toml");
    let agentauth_toml = dev.dir.join("agentauth.toml");
    for f in [&broker_toml, &agentauth_toml] {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.starts_with("# Generated by `atb dev`"), "{text}");
        assert!(
            !text.contains("\n[redis]\n"),
            "no --redis, no [redis]: {text}"
        );
    }

    // Run from elsewhere: every path in the files is absolute.
    let elsewhere = tempfile::tempdir().unwrap();
    let broker_file = broker_toml.display().to_string();
    let (_replica, port, admin) = start_replica(
        elsewhere.path(),
        "broker",
        &broker_file,
        "broker started",
        |p, a| {
            [
                ("LISTEN_ADDR", format!("127.0.0.1:{p}")),
                ("HTTP_LISTEN_ADDR", format!("127.0.0.1:{a}")),
            ]
        },
    );
    assert_ne!(port, dev.broker);
    let ready = curl(&[&format!("http://127.0.0.1:{admin}/ready")]);
    assert_eq!(ready.json()["ready"], json!(true), "{}", ready.body);

    // The dev key's mandate: same tenants, keys, PKI and routes.
    let t = dev.mint();
    let a = dev.hello(port, &t);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["path"], json!("/api/hello"), "{}", a.body);
    let again = dev.hello(port, &t);
    assert_eq!(again.status, 403, "{}", again.body);
    assert_eq!(again.error(), "poa_replay");
    // Without [redis] each replica has its own replay cache: the first
    // broker has not seen this mandate (README: "Two replicas on one
    // Redis" is what closes this).
    let first = dev.hello(dev.broker, &t);
    assert_eq!(first.status, 200, "{}", first.body);

    // A second AgentAuth from agentauth.toml: same signing keys, so its
    // mandates pass the replica broker (which fetches the first
    // AgentAuth's JWKS).
    let aa_file = agentauth_toml.display().to_string();
    let (_aa2, aa_port, _aa_admin) = start_replica(
        elsewhere.path(),
        "agentauth",
        &aa_file,
        "agentauth started",
        |p, a| {
            [
                ("AGENTAUTH_LISTEN_ADDR", format!("127.0.0.1:{p}")),
                ("AGENTAUTH_ADMIN_ADDR", format!("127.0.0.1:{a}")),
            ]
        },
    );
    assert_ne!(aa_port, dev.aa);
    let t = dev.agentauth_mandate(aa_port);
    let a = dev.hello(port, &t);
    assert_eq!(a.status, 200, "{}", a.body);
}

#[test]
fn dev_on_redis_makes_a_mandate_single_use_across_replicas() {
    let redis = common::redis_procs::RedisServer::start();
    let work = tempfile::tempdir().unwrap();
    let dev = start_dev(work.path(), &["--redis", &redis.url()]);
    for f in ["broker.toml", "agentauth.toml"] {
        let c = atb::config::Config::from_file(&dev.dir.join(f)).unwrap();
        c.validate().unwrap();
        let written = c.redis.expect("[redis]");
        assert_eq!(written.url.as_deref(), Some(redis.url().as_str()), "{f}");
    }
    let broker_file = dev.dir.join("broker.toml").display().to_string();
    let (_replica, port, _admin) = start_replica(
        work.path(),
        "broker",
        &broker_file,
        "broker started",
        |p, a| {
            [
                ("LISTEN_ADDR", format!("127.0.0.1:{p}")),
                ("HTTP_LISTEN_ADDR", format!("127.0.0.1:{a}")),
            ]
        },
    );
    // The README walk-through: 200 on one replica, poa_replay on the other.
    let t = dev.mint();
    let a = dev.hello(dev.broker, &t);
    assert_eq!(a.status, 200, "{}", a.body);
    let again = dev.hello(port, &t);
    assert_eq!(again.status, 403, "{}", again.body);
    assert_eq!(again.error(), "poa_replay");
}

/// The README's Biscuit walk-through on `atb dev`: each demo tenant has a
/// root key (created once, kept), acme mints with it, the agent attenuates
/// offline and calls with `X-ATB-Biscuit`; a capability under globex's
/// root is refused for acme's agent.
#[test]
fn dev_biscuit_walkthrough() {
    let work = tempfile::tempdir().unwrap();
    let dev = start_dev(work.path(), &[]);
    let biscuit = |args: &[&str]| {
        let out = Command::new(ATB)
            .current_dir(work.path())
            .arg("biscuit")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let leg = r#"{"jurisdiction":"EU","accountable_party":{"type":"user","id":"dev-owner"}}"#;
    let mint = |tenant: &str| {
        biscuit(&[
            "mint",
            "--tenant",
            "acme",
            "--key",
            &dev.path(&format!("{tenant}-biscuit-root.key")),
            "--agent",
            AGENT,
            "--action",
            "crm.contact.read",
            "--leg",
            leg,
        ])
    };
    for tenant in ["acme", "globex"] {
        let public = std::fs::read_to_string(dev.path(&format!("{tenant}-biscuit-root.pub")));
        assert!(public.unwrap().starts_with("ed25519/"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dev.path(&format!("{tenant}-biscuit-root.key"));
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
    let b = mint("acme");
    let b2 = biscuit(&[
        "attenuate",
        &b,
        "--ttl",
        "60",
        "--route",
        "GET",
        "/api/hello",
    ]);
    let shown: serde_json::Value = serde_json::from_str(&biscuit(&["inspect", &b2])).unwrap();
    assert_eq!(shown["blocks"].as_array().unwrap().len(), 2, "{shown}");
    let call = |token: &str| {
        let (ca, crt, key) = (
            dev.path("ca.crt"),
            dev.path("acme-agent.crt"),
            dev.path("acme-agent.key"),
        );
        let header = format!("X-ATB-Biscuit: {token}");
        let url = format!("https://localhost:{}/api/hello", dev.broker);
        curl(&[
            "--cacert", &ca, "--cert", &crt, "--key", &key, "-H", &header, &url,
        ])
    };
    let a = call(&b2);
    assert_eq!(a.status, 200, "{}", a.body);
    let again = call(&b2);
    assert_eq!(again.error(), "poa_replay", "{}", again.body);
    let a = call(&mint("globex"));
    assert_eq!(
        (a.status, a.error().as_str()),
        (401, "poa_invalid"),
        "{}",
        a.body
    );
}
