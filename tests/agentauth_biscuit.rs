//! AgentAuth minting Biscuit mandates (`"format": "biscuit"`), end to end:
//! a real `atb dev` provides the PKI, approvers, demo upstream and the
//! configuration files; a second `atb agentauth` and `atb broker` run from
//! those files with acme's `[tenants.biscuit]` added (AgentAuth's key and
//! the broker's root key, id 1). A high-risk challenge approved by two
//! distinct approvers is minted as a Biscuit and passes the broker with
//! its evidence, once; the same grant minted without the evidence (`atb
//! biscuit mint`) is refused by the policy.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::Proc;
use common::{curl, eventually, free_port, Answer, ATB};
use serde_json::{json, Value};

const AGENT: &str = "spiffe://acme.example/agent/demo";

fn start_dev(cwd: &Path) -> (Proc, PathBuf) {
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
            .args(["--agentauth-admin", &format!("127.0.0.1:{aa_admin}")]);
        let mut proc = Proc::spawn(cmd, cwd, "dev");
        let ready = [
            format!("http://127.0.0.1:{admin}/ready"),
            format!("http://127.0.0.1:{aa_admin}/ready"),
        ];
        if proc.wait_ready(&["broker started", "agentauth started"], &ready) {
            return (proc, cwd.join("d"));
        }
    }
    panic!("atb dev could not bind its ports three times");
}

/// Starts `atb <service> --config <file>` on fresh ports.
fn start_service(
    cwd: &Path,
    service: &str,
    file: &Path,
    started: &str,
    ports: impl Fn(u16, u16) -> [(&'static str, String); 2],
) -> (Proc, u16) {
    for attempt in 0..3 {
        let (port, admin) = (free_port(), free_port());
        let mut cmd = Command::new(ATB);
        cmd.current_dir(cwd)
            .arg(service)
            .arg("--config")
            .arg(file)
            .envs(ports(port, admin));
        let mut proc = Proc::spawn(cmd, cwd, &format!("{service}-{attempt}"));
        if proc.wait_ready(&[started], &[format!("http://127.0.0.1:{admin}/ready")]) {
            return (proc, port);
        }
    }
    panic!("atb {service} could not bind its ports three times");
}

/// `file` (written by `atb dev`) with acme's `[tenants.biscuit]` set to
/// `biscuit` and every other tenant's removed (whatever `atb dev` wrote),
/// written to `out`.
fn with_biscuit(file: &Path, out: &Path, biscuit: &toml::Value) {
    let mut config: toml::Value = toml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let tenants = config["tenants"].as_array_mut().unwrap();
    for t in tenants.iter_mut() {
        let acme = t["id"].as_str() == Some("acme");
        let t = t.as_table_mut().unwrap();
        t.remove("biscuit");
        if acme {
            t.insert("biscuit".into(), biscuit.clone());
        }
    }
    std::fs::write(out, toml::to_string(&config).unwrap()).unwrap();
}

struct Setup {
    dir: PathBuf,
    aa: u16,
    broker: u16,
}

impl Setup {
    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    /// A request to AgentAuth as the agent `cert` (mTLS).
    fn agent(&self, cert: &str, path: &str, body: &Value) -> Answer {
        let url = format!("https://localhost:{}{path}", self.aa);
        let (ca, crt, key) = (
            self.path("ca.crt"),
            self.path(&format!("{cert}.crt")),
            self.path(&format!("{cert}.key")),
        );
        let text = body.to_string();
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
            &text,
            &url,
        ])
    }

    fn challenge(&self, cert: &str, act: &str, owner: &str) -> String {
        let leg = json!({"jurisdiction": "EU", "accountable_party": {"type": "user", "id": owner}});
        let a = self.agent(
            cert,
            "/v1/challenge",
            &json!({"act": act, "con": {}, "leg": leg}),
        );
        assert_eq!(a.status, 200, "{}", a.body);
        a.json()["challenge_id"].as_str().unwrap().to_owned()
    }

    fn approve(&self, approver: &str, id: &str) -> Answer {
        let token =
            std::fs::read_to_string(self.path(&format!("approver-{approver}.jwt"))).unwrap();
        let url = format!("https://localhost:{}/v1/challenge/{id}/approve", self.aa);
        let auth = format!("Authorization: Bearer {}", token.trim());
        curl(&[
            "--cacert",
            &self.path("ca.crt"),
            "-X",
            "POST",
            "-H",
            &auth,
            &url,
        ])
    }

    /// `method path` at the broker as acme's demo agent with `token`.
    fn broker_call(&self, token: &str, method: &str, path: &str) -> Answer {
        let url = format!("https://localhost:{}{path}", self.broker);
        let auth = format!("Authorization: Bearer {token}");
        curl(&[
            "--cacert",
            &self.path("ca.crt"),
            "--cert",
            &self.path("acme-agent.crt"),
            "--key",
            &self.path("acme-agent.key"),
            "-H",
            &auth,
            "-X",
            method,
            &url,
        ])
    }
}

fn atb(args: &[&str]) -> String {
    let out = Command::new(ATB).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_dual_control_biscuit_from_agentauth_passes_the_broker_with_its_evidence() {
    let work = tempfile::tempdir().unwrap();
    let (_dev, dir) = start_dev(work.path());

    // acme's AgentAuth key, trusted by the broker as root key 1.
    let prefix = dir.join("acme-aa-biscuit");
    atb(&["biscuit", "keygen", "--out", prefix.to_str().unwrap()]);
    let key_file = dir.join("acme-aa-biscuit.key");
    let pub_file = dir.join("acme-aa-biscuit.pub");
    let biscuit: toml::Value = toml::from_str(&format!(
        "root_keys = [{{ id = 1, public_key_file = {:?} }}]\nagentauth_key_file = {:?}\nagentauth_root_key_id = 1\n",
        pub_file.display().to_string(),
        key_file.display().to_string(),
    ))
    .unwrap();
    let (aa_file, broker_file) = (
        work.path().join("agentauth-biscuit.toml"),
        work.path().join("broker-biscuit.toml"),
    );
    with_biscuit(&dir.join("agentauth.toml"), &aa_file, &biscuit);
    with_biscuit(&dir.join("broker.toml"), &broker_file, &biscuit);

    // A key that is not the listed root key is a configuration error.
    let (stranger, _) = {
        let out = atb(&["biscuit", "keygen"]);
        let mut l = out.lines();
        (l.next().unwrap().to_owned(), l.next().unwrap().to_owned())
    };
    let stranger_file = dir.join("stranger-biscuit.key");
    std::fs::write(&stranger_file, &stranger).unwrap();
    let bad: toml::Value = toml::from_str(&format!(
        "root_keys = [{{ id = 1, public_key_file = {:?} }}]\nagentauth_key_file = {:?}\nagentauth_root_key_id = 1\n",
        pub_file.display().to_string(),
        stranger_file.display().to_string(),
    ))
    .unwrap();
    let bad_file = work.path().join("agentauth-bad.toml");
    with_biscuit(&dir.join("agentauth.toml"), &bad_file, &bad);
    let out = Command::new(ATB)
        .arg("agentauth")
        .arg("--config")
        .arg(&bad_file)
        .env_remove("ATB_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tenants[0].biscuit.agentauth_key_file") && err.contains("is not root key 1"),
        "{err}"
    );

    let (aa_proc, aa) = start_service(
        work.path(),
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
    let (_broker_proc, broker) = start_service(
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
    let s = Setup {
        dir: dir.clone(),
        aa,
        broker,
    };

    // High risk: two distinct approvers.
    let id = s.challenge("acme-agent", "sap.vendor.create", "dev-owner");
    assert_eq!(s.approve("alice", &id).json()["status"], "pending");
    assert_eq!(s.approve("bob", &id).json()["status"], "approved");
    // An unknown format is refused before anything is consumed.
    let m = s.agent(
        "acme-agent",
        "/v1/mandate",
        &json!({"challenge_id": id, "format": "paseto"}),
    );
    assert_eq!(
        (m.status, m.error()),
        (400, "bad_request".into()),
        "{}",
        m.body
    );
    assert!(m.body.contains("\\\"biscuit\\\""), "{}", m.body);
    let m = s.agent(
        "acme-agent",
        "/v1/mandate",
        &json!({"challenge_id": id, "format": "biscuit"}),
    );
    assert_eq!(m.status, 200, "{}", m.body);
    let answer = m.json();
    assert_eq!(answer["format"], "biscuit");
    assert_eq!(answer["token_type"], "biscuit");
    assert_eq!(answer["root_key_id"], 1);
    assert_eq!(answer["dual_control_used"], true);
    let token = answer["token"].as_str().unwrap().to_owned();
    assert!(!token.contains('.'), "a Biscuit, not a JWS: {token}");
    let jti = answer["jti"].as_str().unwrap();

    // What it says (inspect): the grant and AgentAuth's evidence.
    let shown: Value = serde_json::from_str(&atb(&["biscuit", "inspect", &token])).unwrap();
    assert_eq!(shown["root_key_id"], 1);
    assert_eq!(shown["revocation_ids"][0], answer["revocation_id"]);
    let authority = shown["blocks"][0].as_str().unwrap();
    for fact in [
        format!("agent(\"{AGENT}\")"),
        "tenant(\"acme\")".to_owned(),
        "right(\"sap.vendor.create\")".to_owned(),
        format!("id(\"{jti}\")"),
    ] {
        assert!(authority.contains(&fact), "{fact} in {authority}");
    }
    assert!(authority.contains("dual_control"), "{authority}");
    assert!(authority.contains("alice@acme.example"), "{authority}");
    assert!(authority.contains("bob@acme.example"), "{authority}");

    // The broker allows it once, with the evidence.
    let a = s.broker_call(&token, "POST", "/api/vendors");
    assert_eq!(a.status, 200, "{}", a.body);
    let again = s.broker_call(&token, "POST", "/api/vendors");
    assert_eq!((again.status, again.error()), (403, "poa_replay".into()));
    // The challenge is spent, whatever the format.
    let m = s.agent("acme-agent", "/v1/mandate", &json!({"challenge_id": id}));
    assert_eq!(
        (m.status, m.error()),
        (409, "already_minted".into()),
        "{}",
        m.body
    );

    // The same grant without AgentAuth's evidence, signed by the same
    // trusted key: the policy refuses a high-risk action without it.
    let leg = r#"{"jurisdiction":"EU","accountable_party":{"type":"user","id":"dev-owner"}}"#;
    let bare = atb(&[
        "biscuit",
        "mint",
        "--tenant",
        "acme",
        "--agent",
        AGENT,
        "--action",
        "sap.vendor.create",
        "--leg",
        leg,
        "--key",
        key_file.to_str().unwrap(),
        "--root-key-id",
        "1",
    ]);
    let a = s.broker_call(&bare, "POST", "/api/vendors");
    assert_eq!(
        (a.status, a.error()),
        (403, "policy_denied".into()),
        "{}",
        a.body
    );

    // A low-risk JWT mandate is unchanged (format jwt, the default).
    let id = s.challenge("acme-agent", "crm.contact.read", "dev-owner");
    let m = s.agent("acme-agent", "/v1/mandate", &json!({"challenge_id": id}));
    assert_eq!(m.status, 200, "{}", m.body);
    assert_eq!(m.json()["format"], "jwt");
    assert_eq!(m.json()["token"].as_str().unwrap().split('.').count(), 3);

    // A tenant without an AgentAuth Biscuit key: 409, and the challenge is
    // not consumed (a JWT can still be minted from it).
    let id = s.challenge("globex-agent", "crm.contact.read", "globex-owner");
    let m = s.agent(
        "globex-agent",
        "/v1/mandate",
        &json!({"challenge_id": id, "format": "biscuit"}),
    );
    assert_eq!(
        (m.status, m.error()),
        (409, "biscuit_not_configured".into()),
        "{}",
        m.body
    );
    let m = s.agent("globex-agent", "/v1/mandate", &json!({"challenge_id": id}));
    assert_eq!(m.status, 200, "{}", m.body);

    // The audit event of each mint names its format.
    assert!(
        eventually(Duration::from_secs(5), || {
            let events = aa_proc.audit();
            let minted = |format: &str, outcome: &str| {
                events.iter().any(|e| {
                    e["event"] == "mandate.minted"
                        && e["format"] == format
                        && e["outcome"] == outcome
                })
            };
            minted("biscuit", "ok") && minted("jwt", "ok") && minted("biscuit", "refused")
        }),
        "{:?}",
        aa_proc.audit()
    );
}
