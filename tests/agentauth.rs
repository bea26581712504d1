//! AgentAuth end to end: a real `atb dev` process (broker + AgentAuth +
//! demo upstream, generated PKI), curl as the agent (real mTLS) and as the
//! approvers' client, approver tokens signed by the dev identity provider's
//! key, and the broker as the mandate's consumer.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{curl, eventually, free_port, metric, Answer, ATB};
use serde_json::{json, Value};

const AGENT: &str = "spiffe://acme.example/agent/demo";

struct Dev {
    child: Child,
    dir: tempfile::TempDir,
    broker: u16,
    admin: u16,
    aa: u16,
    aa_admin: u16,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Dev {
    /// Starts `atb dev` on free ports (retrying if a port was taken between
    /// picking and binding it).
    fn start(env: &[(&str, &str)]) -> Self {
        for _ in 0..3 {
            if let Some(dev) = Self::try_start(env) {
                return dev;
            }
        }
        panic!("atb dev could not bind its ports three times");
    }

    fn try_start(env: &[(&str, &str)]) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let (broker, admin, upstream, aa, aa_admin) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let mut cmd = Command::new(ATB);
        cmd.arg("dev")
            .arg("--dir")
            .arg(dir.path().join("d"))
            .args(["--listen", &format!("127.0.0.1:{broker}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--upstream", &format!("127.0.0.1:{upstream}")])
            .args(["--agentauth", &format!("127.0.0.1:{aa}")])
            .args(["--agentauth-admin", &format!("127.0.0.1:{aa_admin}")])
            .env_remove("ATB_CONFIG")
            .env("LOG_FORMAT", "json")
            .env("ATB_WORKERS", "1")
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut dev = Self {
            child: cmd.spawn().unwrap(),
            dir,
            broker,
            admin,
            aa,
            aa_admin,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = dev.child.try_wait() {
                let err = dev.stderr();
                if err.contains("Address already in use") {
                    return None;
                }
                panic!("atb dev exited ({status}): {err}");
            }
            // Both services said they are up (so the ports are ours, not
            // another process's that happened to answer), and are ready.
            let err = dev.stderr();
            let ready = err.contains("agentauth started")
                && err.contains("broker started")
                && curl(&[&format!("http://127.0.0.1:{aa_admin}/ready")]).status == 200
                && curl(&[&format!("http://127.0.0.1:{admin}/ready")]).status == 200;
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "not ready: {}", dev.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(dev)
    }

    fn path(&self, f: &str) -> String {
        self.dir.path().join("d").join(f).display().to_string()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A request to AgentAuth as the agent `cert` (mTLS).
    fn agent(&self, cert: &str, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let url = format!("https://localhost:{}{path}", self.aa);
        let (crt, key) = (
            self.path(&format!("{cert}.crt")),
            self.path(&format!("{cert}.key")),
        );
        let ca = self.path("ca.crt");
        let text = body.map(Value::to_string);
        let mut args = vec!["--cacert", &ca, "--cert", &crt, "--key", &key, "-X", method];
        if let Some(t) = &text {
            args.extend(["-H", "content-type: application/json", "--data", t]);
        }
        args.push(&url);
        curl(&args)
    }

    /// A request to AgentAuth as an approver (bearer token, no client cert).
    fn approver(&self, token: &str, method: &str, path: &str) -> Answer {
        let url = format!("https://localhost:{}{path}", self.aa);
        let ca = self.path("ca.crt");
        let auth = format!("Authorization: Bearer {token}");
        curl(&["--cacert", &ca, "-X", method, "-H", &auth, &url])
    }

    /// A dev approver's token, or one signed by the dev IdP with `claims`.
    fn token(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("approver-{name}.jwt"))).unwrap()
    }

    fn idp_token(&self, claims: &Value) -> String {
        let key = atb::poa::keys::load_signing_pem(Path::new(&self.path("dev-idp.key"))).unwrap();
        atb::poa::token::sign(claims, &key, "dev-idp")
    }

    fn person(&self, sub: &str, roles: &[&str]) -> String {
        let now = atb::runtime::clock::unix_now();
        self.idp_token(
            &json!({"iss": "atb-dev-idp", "aud": "atb-agentauth", "sub": sub,
            "roles": roles, "tenant": "acme", "iat": now, "exp": now + 600}),
        )
    }

    fn challenge(&self, act: &str, con: Value) -> Answer {
        self.challenge_as("acme-agent", act, con, leg("dev-owner"))
    }

    fn challenge_as(&self, cert: &str, act: &str, con: Value, leg: Value) -> Answer {
        self.agent(
            cert,
            "POST",
            "/v1/challenge",
            Some(&json!({"act": act, "con": con, "leg": leg})),
        )
    }

    fn approve(&self, token: &str, id: &str) -> Answer {
        self.approver(token, "POST", &format!("/v1/challenge/{id}/approve"))
    }

    fn mandate(&self, id: &str) -> Answer {
        self.agent(
            "acme-agent",
            "POST",
            "/v1/mandate",
            Some(&json!({"challenge_id": id})),
        )
    }

    /// Uses a mandate at the broker, on the demo route of its action.
    fn broker_call(&self, token: &str) -> Answer {
        let (method, path) = match claims_of(token)["act"].as_str().unwrap() {
            "crm.contact.update" => ("PUT", "/api/contacts/7"),
            "sap.vendor.create" => ("POST", "/api/vendors"),
            "org.company.merge" => ("POST", "/api/merge"),
            _ => ("GET", "/api/hello"),
        };
        self.broker_call_to(token, method, path, &[])
    }

    /// `method path` at the broker as acme's agent with `token`.
    fn broker_call_to(&self, token: &str, method: &str, path: &str, extra: &[&str]) -> Answer {
        let url = format!("https://localhost:{}{path}", self.broker);
        let (ca, crt, key) = (
            self.path("ca.crt"),
            self.path("acme-agent.crt"),
            self.path("acme-agent.key"),
        );
        let auth = format!("Authorization: Bearer {token}");
        let mut args = vec![
            "--cacert",
            &ca,
            "--cert",
            &crt,
            "--key",
            &key,
            "-H",
            &auth,
            "-X",
            method,
            "--path-as-is",
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }

    fn metrics(&self) -> String {
        curl(&[&format!("http://127.0.0.1:{}/metrics", self.aa_admin)]).body
    }

    fn jwks(&self) -> Value {
        curl(&[&format!(
            "http://127.0.0.1:{}/.well-known/jwks.json",
            self.aa_admin
        )])
        .json()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM stops `atb dev` at once, with everything started: nothing holds
/// a graceful stop for a shutdown timeout. (The broker's JWKS refresh loops
/// kept an idle HTTP/2 connection open to AgentAuth, one per tenant, and
/// AgentAuth's graceful stop waited its whole 10 s timeout for them; an
/// agent's idle HTTP/2 connection held the broker's for 30 s and
/// AgentAuth's for 10 s.)
#[test]
fn atb_dev_stops_promptly_on_sigterm() {
    let mut dev = Dev::start(&[]);
    // An agent's idle keep-alive connections (independent client) to the
    // broker and to AgentAuth: one request answered, then nothing.
    let idle: Vec<Child> = [dev.broker, dev.aa]
        .into_iter()
        .map(|port| {
            let mut c = Command::new("openssl")
                .args(["s_client", "-quiet", "-connect"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["-cert", &dev.path("acme-agent.crt")])
                .args(["-key", &dev.path("acme-agent.key")])
                .args(["-CAfile", &dev.path("ca.crt")])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let request = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
            let stdin = c.stdin.as_mut().unwrap();
            stdin.write_all(request).unwrap();
            stdin.flush().unwrap();
            c
        })
        .collect();
    // Both tenants' refresh loops have fetched AgentAuth's JWKS.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = curl(&[&format!("http://127.0.0.1:{}/metrics", dev.admin)]).body;
        let fetched = metrics
            .lines()
            .filter(|l| l.starts_with("atb_jwks_refreshes_total{") && l.contains("\"ok\""))
            .count();
        if fetched == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no JWKS fetches: {metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The idle connections are up (the broker counts its own).
    let broker_admin = format!("http://127.0.0.1:{}/metrics", dev.admin);
    assert!(
        eventually(Duration::from_secs(10), || {
            curl(&[&broker_admin])
                .body
                .contains("atb_tenant_connections{tenant=\"acme\"} 1")
        }),
        "the idle connection to the broker is not counted"
    );
    let pid = i32::try_from(dev.child.id()).unwrap();
    let asked = Instant::now();
    // SAFETY: a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            break status;
        }
        // Well under the 10 s AgentAuth waits for open connections.
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "atb dev still running 5 s after SIGTERM: {}",
            dev.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", dev.stderr());
    let err = dev.stderr();
    assert!(
        err.contains("broker stopped") && err.contains("agentauth stopped"),
        "{err}"
    );
    for mut c in idle {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn leg(accountable: &str) -> Value {
    json!({"jurisdiction": "EU", "accountable_party": {"type": "user", "id": accountable}})
}

fn id_of(a: &Answer) -> String {
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["challenge_id"].as_str().unwrap().to_owned()
}

fn token_of(a: &Answer) -> String {
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["token"].as_str().unwrap().to_owned()
}

fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn every_tier_end_to_end_through_the_broker() {
    let dev = Dev::start(&[]);
    // Low: no approval, minted at once; single use at the broker.
    let c = dev.challenge("crm.contact.read", json!({}));
    assert_eq!(c.json()["risk_tier"], "low");
    assert_eq!(c.json()["approvals_needed"], 0);
    assert_eq!(c.json()["status"], "approved");
    let t = token_of(&dev.mandate(&id_of(&c)));
    let claims = claims_of(&t);
    assert_eq!(claims["sub"], AGENT);
    assert_eq!(claims["iss"], "atb-agentauth");
    assert_eq!(claims["aud"], "atb-broker");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    assert!(claims["jti"].as_str().unwrap().starts_with("poa_"));
    assert_eq!(dev.broker_call(&t).status, 200);
    let again = dev.broker_call(&t);
    assert_eq!((again.status, again.error()), (403, "poa_replay".into()));

    // Medium: one approver; the evidence is leg.approval.
    let id = id_of(&dev.challenge("crm.contact.update", json!({})));
    assert_eq!(
        dev.approve(&dev.token("alice"), &id).json()["status"],
        "approved"
    );
    let t = token_of(&dev.mandate(&id));
    assert_eq!(
        claims_of(&t)["leg"]["approval"]["approver_id"],
        "alice@acme.example"
    );
    assert_eq!(dev.broker_call(&t).status, 200);

    // High: two distinct approvers; leg.dual_control.
    let c = dev.challenge("sap.vendor.create", json!({}));
    assert_eq!(c.json()["approvals_needed"], 2);
    let id = id_of(&c);
    let first = dev.approve(&dev.token("alice"), &id);
    assert_eq!(first.json()["status"], "pending");
    assert_eq!(first.json()["approvals"], 1);
    assert_eq!(
        dev.approve(&dev.token("bob"), &id).json()["status"],
        "approved"
    );
    let t = token_of(&dev.mandate(&id));
    let dual = &claims_of(&t)["leg"]["dual_control"];
    assert_eq!(dual["required"], true);
    assert_eq!(dual["approvers"].as_array().unwrap().len(), 2);
    assert_eq!(dev.broker_call(&t).status, 200);

    // Critical: two executives; leg.executive_control with roles.
    let c = dev.challenge("org.company.merge", json!({}));
    assert_eq!(c.json()["risk_tier"], "critical");
    let id = id_of(&c);
    assert_eq!(dev.approve(&dev.token("carol"), &id).status, 200);
    assert_eq!(dev.approve(&dev.token("dave"), &id).status, 200);
    let t = token_of(&dev.mandate(&id));
    let exec = &claims_of(&t)["leg"]["executive_control"];
    assert_eq!(exec["approvers"][0]["role"], "ceo");
    assert_eq!(exec["approvers"][1]["role"], "cfo");
    assert_eq!(dev.broker_call(&t).status, 200);

    // A mandate for one tier presented for nothing more: the broker's
    // policy agrees with what AgentAuth counted (a high-risk challenge
    // approved once cannot be minted at all).
    let id = id_of(&dev.challenge("sap.vendor.create", json!({})));
    dev.approve(&dev.token("alice"), &id);
    let early = dev.mandate(&id);
    assert_eq!((early.status, early.error()), (403, "not_approved".into()));
    assert_eq!(early.json()["details"]["approvals"], 1);

    // Audit and metrics saw it all.
    let m = dev.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_agentauth_events_total{event="mandate.minted",outcome="ok"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"atb_agentauth_events_total{event="mandate.minted",outcome="refused"}"#
        ),
        Some(1.0)
    );
    assert!(eventually(Duration::from_secs(5), || {
        dev.audit().iter().any(|e| {
            e["event"] == "mandate.minted"
                && e["outcome"] == "refused"
                && e["code"] == "not_approved"
        })
    }));
}

#[test]
fn challenges_are_bound_to_the_mtls_agent() {
    let dev = Dev::start(&[]);
    let body = json!({"act": "crm.contact.read", "con": {}, "leg": leg("x")});
    // No client certificate.
    let url = format!("https://localhost:{}/v1/challenge", dev.aa);
    let ca = dev.path("ca.crt");
    let text = body.to_string();
    // Repeated: an answer sent before the body is read would reset the
    // HTTP/2 stream now and then (curl: status 0) instead of answering.
    for _ in 0..30 {
        let r = curl(&["--cacert", &ca, "--data", &text, &url]);
        assert_eq!(
            (r.status, r.error()),
            (401, "spiffe_id_required".into()),
            "{r:?}"
        );
    }
    // A certificate from no tenant.
    let r = dev.challenge_as("stranger-agent", "crm.contact.read", json!({}), leg("x"));
    assert_eq!((r.status, r.error()), (403, "unknown_tenant".into()));
    // A body identity that is not the certificate's.
    let r = dev.agent(
        "acme-agent",
        "POST",
        "/v1/challenge",
        Some(
            &json!({"agent_spiffe_id": "spiffe://acme.example/agent/other",
            "act": "crm.contact.read", "con": {}, "leg": {}}),
        ),
    );
    assert_eq!((r.status, r.error()), (400, "invalid_challenge".into()));
    // Agent-supplied approval evidence.
    for block in ["approval", "dual_control", "executive_control"] {
        let mut l = leg("x");
        l[block] = json!({"required": true, "approver_id": "me"});
        let r = dev.challenge_as("acme-agent", "sap.vendor.create", json!({}), l);
        assert_eq!(
            (r.status, r.error()),
            (400, "invalid_challenge".into()),
            "{block}"
        );
        assert!(r.json()["reason"].as_str().unwrap().contains(block));
    }
    // Another agent of the same tenant can neither read nor mint it.
    let id = id_of(&dev.challenge("crm.contact.read", json!({})));
    let r = dev.agent("acme-agent-2", "GET", &format!("/v1/challenge/{id}"), None);
    assert_eq!(r.status, 404);
    let r = dev.agent(
        "acme-agent-2",
        "POST",
        "/v1/mandate",
        Some(&json!({"challenge_id": id})),
    );
    assert_eq!((r.status, r.error()), (403, "not_requesting_agent".into()));
    // The requesting agent sees everything, including con and leg.
    let r = dev.agent("acme-agent", "GET", &format!("/v1/challenge/{id}"), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["leg"]["accountable_party"]["id"], "dev-owner");
    // Mandate twice: the challenge is consumed.
    assert_eq!(dev.mandate(&id).status, 200);
    let r = dev.mandate(&id);
    assert_eq!((r.status, r.error()), (409, "already_minted".into()));
    assert_eq!(dev.mandate("chal_nope").status, 404);
}

#[test]
fn approvers_must_be_authenticated_distinct_and_not_the_requester() {
    let dev = Dev::start(&[]);
    let now = atb::runtime::clock::unix_now();
    let id = id_of(&dev.challenge_as(
        "acme-agent",
        "sap.vendor.create",
        json!({}),
        leg("alice@acme.example"),
    ));
    // Bad approver tokens.
    let base = json!({"iss": "atb-dev-idp", "aud": "atb-agentauth", "sub": "eve@acme.example",
        "iat": now, "exp": now + 600});
    let mut wrong_aud = base.clone();
    wrong_aud["aud"] = "someone-else".into();
    let mut wrong_iss = base.clone();
    wrong_iss["iss"] = "https://evil.example".into();
    let mut expired = base.clone();
    expired["exp"] = (now - 3600).into();
    let mut no_exp = base.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    for (what, claims) in [
        ("wrong audience", wrong_aud),
        ("wrong issuer", wrong_iss),
        ("expired", expired),
        ("no exp", no_exp),
    ] {
        let r = dev.approve(&dev.idp_token(&claims), &id);
        assert_eq!(
            (r.status, r.error()),
            (401, "approver_unauthenticated".into()),
            "{what}"
        );
    }
    // A token signed by another key, and none at all.
    let other = tempfile::tempdir().unwrap();
    let k = common::SigningKey::new(other.path(), "rogue");
    let rogue = atb::poa::keys::load_signing_pem(&k.private).unwrap();
    let r = dev.approve(&atb::poa::token::sign(&base, &rogue, "dev-idp"), &id);
    assert_eq!(r.status, 401);
    let url = format!("https://localhost:{}/v1/challenge/{id}/approve", dev.aa);
    let ca = dev.path("ca.crt");
    assert_eq!(curl(&["--cacert", &ca, "-X", "POST", &url]).status, 401);
    // The accountable party may not approve; nor may the agent's identity.
    let r = dev.approve(&dev.token("alice"), &id);
    assert_eq!((r.status, r.error()), (403, "self_approval".into()));
    let r = dev.approve(&dev.person(AGENT, &[]), &id);
    assert_eq!((r.status, r.error()), (403, "self_approval".into()));
    // Duplicate approver (case-insensitive).
    assert_eq!(dev.approve(&dev.token("bob"), &id).status, 200);
    let r = dev.approve(&dev.person("BOB@acme.example", &[]), &id);
    assert_eq!((r.status, r.error()), (409, "duplicate_approver".into()));
    // The same mailbox under an opaque subject (a linked or guest account)
    // is the same approver: one person is not dual control.
    let now = atb::runtime::clock::unix_now();
    let linked = dev.idp_token(&json!({"iss": "atb-dev-idp", "aud": "atb-agentauth",
        "sub": "00u-bob-guest", "email": "bob@acme.example", "roles": [], "tenant": "acme",
        "iat": now, "exp": now + 600}));
    let r = dev.approve(&linked, &id);
    assert_eq!((r.status, r.error()), (409, "duplicate_approver".into()));
    // Approvers may read and list it (with con and leg).
    let r = dev.approver(&dev.token("carol"), "GET", &format!("/v1/challenge/{id}"));
    assert_eq!(r.json()["approvals"][0]["approver_id"], "bob@acme.example");
    let list = dev.approver(&dev.token("carol"), "GET", "/v1/approvals?status=pending");
    let found = list.json()["challenges"].as_array().unwrap().clone();
    assert!(found.iter().any(|c| c["challenge_id"] == id.as_str()));
    assert_eq!(dev.approver("garbage", "GET", "/v1/approvals").status, 401);

    // Critical: a non-executive cannot approve; one executive twice counts once.
    let id = id_of(&dev.challenge("org.company.merge", json!({})));
    let r = dev.approve(&dev.token("bob"), &id);
    assert_eq!(
        (r.status, r.error()),
        (403, "executive_role_required".into())
    );
    assert_eq!(
        dev.approve(&dev.person("zed@acme.example", &["CEO", "CFO"]), &id)
            .status,
        200
    );
    let r = dev.approve(&dev.person("zed@acme.example", &["cto"]), &id);
    assert_eq!(r.status, 409);
    let r = dev.mandate(&id);
    assert_eq!((r.status, r.error()), (403, "not_approved".into()));

    // Reject is terminal.
    let id = id_of(&dev.challenge("sap.vendor.create", json!({})));
    let r = dev.approver(
        &dev.token("bob"),
        "POST",
        &format!("/v1/challenge/{id}/reject"),
    );
    assert_eq!(r.json()["status"], "rejected");
    let r = dev.approve(&dev.token("carol"), &id);
    assert_eq!((r.status, r.error()), (409, "challenge_rejected".into()));
    assert_eq!(dev.mandate(&id).status, 409);

    // Every refusal was audited.
    assert!(eventually(Duration::from_secs(5), || {
        let codes: Vec<String> = dev
            .audit()
            .iter()
            .filter(|e| e["outcome"] == "refused")
            .map(|e| e["code"].as_str().unwrap_or_default().to_owned())
            .collect();
        [
            "approver_unauthenticated",
            "self_approval",
            "duplicate_approver",
            "executive_role_required",
        ]
        .iter()
        .all(|c| codes.iter().any(|x| x == c))
    }));
}

#[test]
fn concurrent_approvals_neither_lose_nor_double_count() {
    let dev = Dev::start(&[]);
    // Eight different approvers race for a two-approval challenge.
    let id = id_of(&dev.challenge("sap.vendor.create", json!({})));
    let tokens: Vec<String> = (0..8)
        .map(|i| dev.person(&format!("p{i}@acme.example"), &[]))
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .iter()
            .map(|t| s.spawn(|| dev.approve(t, &id).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    let view = dev
        .agent("acme-agent", "GET", &format!("/v1/challenge/{id}"), None)
        .json();
    assert_eq!(view["approvals"].as_array().unwrap().len(), 2);
    assert_eq!(view["status"], "approved");

    // One approver racing with itself counts once.
    let id = id_of(&dev.challenge("sap.vendor.create", json!({})));
    let same = dev.person("solo@acme.example", &[]);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| dev.approve(&same, &id).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );

    // Two mandate calls racing: exactly one token.
    let id = id_of(&dev.challenge("crm.contact.read", json!({})));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| dev.mandate(&id).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
}

#[test]
fn expired_challenges_and_rate_limits() {
    let dev = Dev::start(&[
        ("CHALLENGE_TTL_SECONDS", "10"),
        ("RATE_LIMIT_PER_AGENT", "5"),
    ]);
    let id = id_of(&dev.challenge("sap.vendor.create", json!({})));
    std::thread::sleep(Duration::from_secs(11));
    let r = dev.approve(&dev.token("alice"), &id);
    assert_eq!((r.status, r.error()), (410, "challenge_expired".into()));
    let r = dev.mandate(&id);
    assert_eq!((r.status, r.error()), (410, "challenge_expired".into()));
    let view = dev.approver(&dev.token("alice"), "GET", &format!("/v1/challenge/{id}"));
    assert_eq!(view.json()["status"], "expired");
    // Two calls so far by this agent (challenge, mandate); 5 per minute.
    let mut last = None;
    for _ in 0..4 {
        last = Some(dev.challenge("crm.contact.read", json!({})));
    }
    let r = last.unwrap();
    assert_eq!((r.status, r.error()), (429, "rate_limited".into()));
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another agent has its own budget.
    let r = dev.challenge_as("acme-agent-2", "crm.contact.read", json!({}), leg("x"));
    assert_eq!(r.status, 200);
    // Its expiry is audited by the next sweep (every 15 s), not minutes later
    // when it is removed.
    assert!(eventually(Duration::from_secs(20), || dev
        .audit()
        .iter()
        .any(
            |e| e["event"] == "challenge.expired" && e["challenge_id"] == id.as_str()
        )));
}

#[test]
fn jwks_and_key_rotation_without_restart() {
    // The broker's own JWKS refresh is the default 5 minutes: it learns of
    // key changes from AgentAuth at once.
    let dev = Dev::start(&[("AGENTAUTH_KEY_RELOAD_SECONDS", "1")]);
    let keys_dir = dev.path("agentauth-keys");
    let jwks = dev.jwks();
    let keys = jwks["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "active and next: {jwks}");
    // kid is the RFC 7638 thumbprint of the published key.
    for k in &keys {
        use base64::Engine;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(k["x"].as_str().unwrap())
            .unwrap();
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap();
        assert_eq!(k["kid"], atb::poa::keys::thumbprint(&vk));
    }
    let low =
        |dev: &Dev| token_of(&dev.mandate(&id_of(&dev.challenge("crm.contact.read", json!({})))));
    let before = low(&dev);
    let old_kid = claims_kid(&before);

    // Normal rotation: next becomes active (already published, so brokers
    // know it), the old key stays published as previous.
    let out = Command::new(ATB)
        .args(["keys", "rotate", "--dir", &keys_dir])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(eventually(Duration::from_secs(10), || claims_kid(&low(
        &dev
    )) != old_kid));
    let after = low(&dev);
    assert_eq!(dev.broker_call(&after).status, 200, "new key at the broker");
    assert_eq!(
        dev.broker_call(&before).status,
        200,
        "previous key still verifies"
    );
    assert_eq!(dev.jwks()["keys"].as_array().unwrap().len(), 3);

    // Emergency: every key revoked; AgentAuth tells the broker at once, so
    // old mandates are refused within seconds, not at its next refresh.
    let stale: Vec<String> = (0..12).map(|_| low(&dev)).collect();
    let compromised = claims_kid(&stale[0]);
    let out = Command::new(ATB)
        .args(["keys", "rotate", "--emergency", "--dir", &keys_dir])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&compromised));
    assert!(eventually(Duration::from_secs(10), || {
        dev.jwks()["revoked_kids"]
            .as_array()
            .is_some_and(|r| r.iter().any(|k| k == compromised.as_str()))
    }));
    assert!(!dev.jwks()["keys"].to_string().contains(&compromised));
    let mut stale = stale.into_iter();
    let started = Instant::now();
    let refused = loop {
        let t = stale
            .next()
            .expect("ran out of old mandates before the broker refused them");
        let r = dev.broker_call(&t);
        if r.status == 401 {
            break r;
        }
        assert_eq!(r.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the broker was not told of the revocation"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(refused.error(), "poa_revoked");
    assert!(
        metric(
            &dev.metrics(),
            r#"atb_agentauth_broker_notifications_total{result="ok"}"#
        )
        .unwrap_or(0.0)
            >= 2.0,
        "both rotations were pushed to the broker"
    );
    // New mandates (fresh key) work once the broker has the new JWKS.
    let fresh = low(&dev);
    assert_ne!(claims_kid(&fresh), compromised);
    assert_eq!(dev.broker_call(&fresh).status, 200, "{}", dev.stderr());
    let m = dev.metrics();
    assert!(metric(&m, r#"atb_agentauth_key_reloads_total{result="ok"}"#).unwrap() >= 2.0);
    assert_eq!(
        metric(&m, r#"atb_agentauth_signing_keys{state="previous"}"#),
        Some(0.0)
    );
}

fn claims_kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

#[test]
fn source_address_budget_ignores_untrusted_forwarded_for() {
    let dev = Dev::start(&[("RATE_LIMIT_PER_IP", "3")]);
    let url = format!("https://localhost:{}/v1/approvals", dev.aa);
    let ca = dev.path("ca.crt");
    let auth = format!("Authorization: Bearer {}", dev.token("alice"));
    let statuses: Vec<u16> = (0..4)
        .map(|i| {
            // Each request claims another client address; no proxy is
            // trusted, so all of them spend the peer's budget.
            let xff = format!("X-Forwarded-For: 198.51.100.{i}");
            curl(&["--cacert", &ca, "-H", &auth, "-H", &xff, &url]).status
        })
        .collect();
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let m = dev.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_agentauth_refusals_total{code="rate_limited",route="approvals_list"}"#
        ),
        Some(1.0)
    );
}

/// The hole as a new user found it, on `atb dev` with the README's own
/// material: a low-risk mandate minted without approval reached a payment
/// and a vendor deletion. Now it reaches only its own routes, and the
/// refusals leave it usable.
#[test]
fn a_low_risk_mandate_reaches_only_its_routes_on_atb_dev() {
    let dev = Dev::start(&[]);
    let t = token_of(&dev.mandate(&id_of(&dev.challenge("crm.contact.read", json!({})))));
    let json = ["-H", "Content-Type: application/json", "--data"];
    let pay = dev.broker_call_to(
        &t,
        "POST",
        "/api/pay",
        &[json[0], json[1], json[2], r#"{"amount":999999999}"#],
    );
    assert_eq!(
        (pay.status, pay.error()),
        (403, "action_route_mismatch".into()),
        "{pay:?}"
    );
    let del = dev.broker_call_to(&t, "DELETE", "/api/vendors/1", &[]);
    assert_eq!(
        (del.status, del.error()),
        (403, "action_route_mismatch".into()),
        "{del:?}"
    );
    let ok = dev.broker_call_to(&t, "GET", "/api/contacts/7", &[]);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["headers"]["x-atb-action"], "crm.contact.read");
    let again = dev.broker_call_to(&t, "GET", "/api/contacts/7", &[]);
    assert_eq!((again.status, again.error()), (403, "poa_replay".into()));
}

/// A pinned call: approvers see it, the mandate carries it, and the broker
/// admits exactly that call.
#[test]
fn a_pinned_call_is_shown_to_approvers_and_enforced_by_the_broker() {
    let dev = Dev::start(&[]);
    let pin = json!({"http": {"method": "DELETE", "path": "/api/contacts/17"}});
    let c = dev.challenge("crm.contact.delete", pin.clone());
    let id = id_of(&c);
    assert_eq!(c.json()["pinned_call"], "DELETE /api/contacts/17");
    let pending = dev.approver(&dev.token("alice"), "GET", "/v1/approvals?status=pending");
    let listed = pending.json()["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["challenge_id"] == id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{pending:?}"));
    assert_eq!(listed["pinned_call"], "DELETE /api/contacts/17");
    assert_eq!(dev.approve(&dev.token("alice"), &id).status, 200);
    let t = token_of(&dev.mandate(&id));
    assert_eq!(claims_of(&t)["con"], pin);
    let other = dev.broker_call_to(&t, "DELETE", "/api/contacts/18", &[]);
    assert_eq!(
        (other.status, other.error()),
        (403, "action_route_mismatch".into()),
        "{other:?}"
    );
    let ok = dev.broker_call_to(&t, "DELETE", "/api/contacts/17", &[]);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["path"], "/api/contacts/17");
    // Pins AgentAuth refuses: malformed, or a method the action never uses.
    for con in [
        json!({"http": {"method": "DELETE"}}),
        json!({"http": {"method": "DELETE", "path": "/api/../admin"}}),
        json!({"http": {"method": "GET", "path": "/api/contacts/17"}}),
        json!({"http": "DELETE /api/contacts/17"}),
    ] {
        let r = dev.challenge("crm.contact.delete", con.clone());
        assert_eq!(
            (r.status, r.error()),
            (400, "invalid_challenge".into()),
            "{con}: {r:?}"
        );
    }
}

/// A mandate is never minted longer than the tenant's brokers accept: the
/// approvals are not spent on a token every broker refuses.
#[test]
fn mandates_are_not_minted_longer_than_the_tenant_accepts() {
    let dev = Dev::start(&[]);
    let id = id_of(&dev.challenge("crm.contact.read", json!({})));
    let ask = |ttl: u64| {
        dev.agent(
            "acme-agent",
            "POST",
            "/v1/mandate",
            Some(&json!({"challenge_id": id, "ttl_seconds": ttl})),
        )
    };
    // atb dev's tenants accept 300 s; AgentAuth alone would allow 900.
    let r = ask(301);
    assert_eq!((r.status, r.error()), (400, "bad_request".into()), "{r:?}");
    assert!(
        r.json()["reason"].as_str().unwrap().contains("300"),
        "{r:?}"
    );
    let t = token_of(&ask(300));
    let c = claims_of(&t);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);
    assert_eq!(dev.broker_call(&t).status, 200);
}

/// The vendor an approver sees in `con.vendor_id` is the only one the
/// mandate reaches on `atb dev`'s routes (their capture is `{vendor_id}`).
#[test]
fn a_vendor_named_in_con_is_the_only_vendor_the_mandate_reaches() {
    let dev = Dev::start(&[]);
    let mint = || {
        let id = id_of(&dev.challenge("erp.vendor.read", json!({"vendor_id": "17"})));
        token_of(&dev.mandate(&id))
    };
    let other = dev.broker_call_to(&mint(), "GET", "/api/vendors/18", &[]);
    assert_eq!(
        (other.status, other.json()["reason"].as_str()),
        (403, Some("route_param_mismatch")),
        "{other:?}"
    );
    let ok = dev.broker_call_to(&mint(), "GET", "/api/vendors/17", &[]);
    assert_eq!(ok.status, 200, "{ok:?}");
}

#[test]
fn agentauth_refuses_actions_outside_the_catalogue() {
    let dev = Dev::start(&[]);
    for act in [
        "made.up.action",
        "CRM.CONTACT.READ",
        "crm.contact.read ",
        "crm.contact.reаd",
    ] {
        let r = dev.challenge(act, json!({}));
        assert_eq!(
            (r.status, r.error()),
            (400, "unknown_action".into()),
            "{act:?}: {r:?}"
        );
    }
    assert_eq!(dev.challenge("crm.contact.read", json!({})).status, 200);
}

/// Escape switches (flags in con that relax a policy rule) need an
/// approval to vouch for them: refused on a low-risk action, shown to the
/// approvers and written into the approval evidence otherwise, where the
/// broker's policy honours them.
#[test]
fn escape_switches_are_refused_without_approval_and_carried_in_evidence() {
    let dev = Dev::start(&[]);
    for con in [
        json!({"bypass_rate_limit": true}),
        json!({"bypass_rate_limit": false}),
        json!({"allow_outside_business_hours": true}),
        json!({"allow_admin_policy": true, "connector": "crm"}),
    ] {
        let r = dev.challenge("crm.contact.read", con.clone());
        assert_eq!(
            (r.status, r.error()),
            (400, "escape_not_allowed".into()),
            "{con}: {r:?}"
        );
    }
    let r = dev.challenge("crm.contact.update", json!({"bypass_rate_limit": "yes"}));
    assert_eq!(
        (r.status, r.error()),
        (400, "invalid_challenge".into()),
        "{r:?}"
    );

    let c = dev.challenge("crm.contact.update", json!({"bypass_rate_limit": true}));
    assert_eq!(c.status, 200, "{c:?}");
    let id = id_of(&c);
    let alice = dev.token("alice");
    let view = dev.approver(&alice, "GET", &format!("/v1/challenge/{id}"));
    assert_eq!(view.json()["escapes"], json!({"bypass_rate_limit": true}));
    assert_eq!(dev.approve(&alice, &id).json()["status"], "approved");
    let t = token_of(&dev.mandate(&id));
    let leg = &claims_of(&t)["leg"];
    assert_eq!(
        leg["approval"]["escapes"],
        json!({"bypass_rate_limit": true})
    );
    assert!(leg["approval"]["timestamp"].is_i64());
    assert_eq!(dev.broker_call(&t).status, 200);
}

/// Approvers act only for the tenants their token binds them to.
#[test]
fn approvers_are_scoped_to_their_tenants() {
    let dev = Dev::start(&[]);
    let globex = dev.challenge_as(
        "globex-agent",
        "crm.contact.update",
        json!({}),
        leg("globex-owner"),
    );
    let id = id_of(&globex);
    // acme's approver can neither see nor decide globex's challenge.
    let alice = dev.token("alice");
    let r = dev.approve(&alice, &id);
    assert_eq!((r.status, r.error()), (403, "wrong_tenant".into()), "{r:?}");
    let r = dev.approver(&alice, "GET", &format!("/v1/challenge/{id}"));
    assert_eq!(r.status, 404);
    let listed = dev.approver(&alice, "GET", "/v1/approvals?status=all");
    assert!(!listed.body.contains(&id), "{listed:?}");
    // A token bound to no tenant approves nothing.
    let now = atb::runtime::clock::unix_now();
    let unbound = dev.idp_token(&json!({"iss": "atb-dev-idp", "aud": "atb-agentauth",
        "sub": "nobody@example.com", "roles": ["manager"], "iat": now, "exp": now + 600}));
    let r = dev.approve(&unbound, &id);
    assert_eq!((r.status, r.error()), (403, "wrong_tenant".into()), "{r:?}");
    let acme = id_of(&dev.challenge("crm.contact.update", json!({})));
    let r = dev.approve(&unbound, &acme);
    assert_eq!((r.status, r.error()), (403, "wrong_tenant".into()), "{r:?}");
    // globex's own approver can, and sees it.
    let erin = dev.token("erin");
    let listed = dev.approver(&erin, "GET", "/v1/approvals?status=pending");
    assert!(listed.body.contains(&id), "{listed:?}");
    assert!(!listed.body.contains(&acme), "{listed:?}");
    let r = dev.approve(&erin, &id);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "approved");
    // And the other way round: globex's approver can neither see nor
    // decide acme's challenge, which acme's own approver then can.
    let r = dev.approve(&erin, &acme);
    assert_eq!((r.status, r.error()), (403, "wrong_tenant".into()), "{r:?}");
    let r = dev.approver(&erin, "GET", &format!("/v1/challenge/{acme}"));
    assert_eq!(r.status, 404, "{r:?}");
    let r = dev.approve(&dev.token("bob"), &acme);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn every_agentauth_timer_loop_survives_a_panicking_tick() {
    // A dead approver JWKS adds the approver_keys loop (PEM keys still work).
    let dead_jwks = format!("http://127.0.0.1:{}/jwks.json", free_port());
    let dev = Dev::start(&[
        ("ATB_DEBUG_FAULT_INJECTION", "true"),
        ("APPROVER_JWKS_URL", dead_jwks.as_str()),
    ]);
    let token = std::fs::read_to_string(dev.path("admin.token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let hook = |name: &str, headers: &[&str]| {
        let url = format!(
            "http://127.0.0.1:{}/debug/fault?periodic={name}",
            dev.aa_admin
        );
        let mut args = vec!["-X", "POST"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        curl(&args)
    };
    let restarts = |actor: &str| {
        metric(
            &dev.metrics(),
            &format!(r#"atb_actor_restarts_total{{actor="{actor}",shard="-"}}"#),
        )
        .unwrap_or(0.0)
    };
    for actor in [
        "key_reload",
        "challenge_sweep",
        "policy_reload",
        "approver_keys",
    ] {
        // The hook needs the admin token even when enabled.
        assert_eq!(hook(actor, &[]).status, 401, "{actor}");
        // Twice: the loop is still alive after its first panic.
        for n in [1.0, 2.0] {
            let a = hook(actor, &[&auth]);
            assert_eq!(a.status, 200, "{actor}: {a:?}");
            assert!(
                eventually(Duration::from_secs(10), || restarts(actor) == n),
                "{actor}: restart {n} not counted"
            );
        }
    }
    assert_eq!(hook("nothing", &[&auth]).error(), "unknown_periodic");
    // AgentAuth serves throughout.
    let jwks = dev.jwks();
    assert!(!jwks["keys"].as_array().unwrap().is_empty());
}

#[test]
fn self_approval_is_judged_on_the_owners_the_tenant_configured_not_on_leg() {
    let dev = Dev::start(&[]);
    // acme-agent-2 (spiffe://acme.example/agent/reporter) answers to alice
    // in atb dev's tenant config. It names someone else as accountable:
    // alice still may not approve its request.
    let id = id_of(&dev.challenge_as(
        "acme-agent-2",
        "sap.vendor.create",
        json!({}),
        leg("someone-else@acme.example"),
    ));
    let r = dev.approve(&dev.token("alice"), &id);
    assert_eq!(
        (r.status, r.error()),
        (403, "self_approval".into()),
        "{r:?}"
    );
    // The same spelling games are refused too.
    let r = dev.approve(&dev.person(" ALICE@acme.example ", &["manager"]), &id);
    assert_eq!(
        (r.status, r.error()),
        (403, "self_approval".into()),
        "{r:?}"
    );
    assert_eq!(dev.approve(&dev.token("bob"), &id).status, 200);
    // alice approves for an agent she does not own.
    let id = id_of(&dev.challenge_as(
        "acme-agent",
        "sap.vendor.create",
        json!({}),
        leg("bob@acme.example"),
    ));
    assert_eq!(dev.approve(&dev.token("alice"), &id).status, 200);
}
