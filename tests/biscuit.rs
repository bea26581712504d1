//! Biscuit capabilities end to end (SPEC §6, issue "Biscuit capabilities"):
//! a tenant mints with `atb biscuit mint`, the agent attenuates offline —
//! with our CLI and with an independent client (PyPI biscuit-python,
//! tests/biscuit_client.py) — and a real broker over mTLS enforces the
//! narrower rights. Every refusal is paired with the same request passing
//! without the narrowing (or before the condition), so each fails if its
//! check is removed.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse};
use common::*;
use serde_json::{json, Value};

const ACME: &str = "spiffe://acme.example/agent/demo";
const GLOBEX: &str = "spiffe://saas.example/tenants/globex/agent/demo";
const LEG: &str = r#"{"jurisdiction":"EU","accountable_party":{"type":"user","id":"owner"}}"#;
const ADMIN_TOKEN: &str = "biscuit-admin-token-0123456789";

/// An upstream that echoes what it received.
fn start_upstream() -> u16 {
    async fn echo(req: HttpRequest, body: web::Bytes) -> HttpResponse {
        HttpResponse::Ok().json(json!({
            "method": req.method().as_str(), "path": req.path(),
            "query": req.query_string(), "body": String::from_utf8_lossy(&body),
        }))
    }
    serve_app!(|| App::new().default_service(web::to(echo)))
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A root key pair made by `atb biscuit keygen --out`.
struct RootKey {
    private: PathBuf,
    public: PathBuf,
}

impl RootKey {
    fn new(dir: &std::path::Path, name: &str) -> Self {
        let prefix = dir.join(name);
        let printed = run(
            Command::new(ATB)
                .args(["biscuit", "keygen", "--out"])
                .arg(&prefix),
            None,
        );
        let key = Self {
            private: dir.join(format!("{name}.key")),
            public: dir.join(format!("{name}.pub")),
        };
        assert_eq!(printed, key.public_text());
        assert!(printed.starts_with("ed25519/"), "{printed}");
        key
    }

    fn public_text(&self) -> String {
        std::fs::read_to_string(&self.public)
            .unwrap()
            .trim()
            .to_owned()
    }

    /// `atb biscuit mint` with `--leg LEG` unless `extra` gives one.
    fn mint(&self, tenant: &str, agent: &str, actions: &[&str], extra: &[&str]) -> String {
        let mut cmd = Command::new(ATB);
        cmd.args(["biscuit", "mint", "--tenant", tenant, "--agent", agent])
            .arg("--key")
            .arg(&self.private);
        for a in actions {
            cmd.args(["--action", a]);
        }
        if !extra.contains(&"--leg") {
            cmd.args(["--leg", LEG]);
        }
        run(cmd.args(extra), None)
    }
}

/// `atb biscuit attenuate - ARGS` with the token on stdin (a pipeline).
fn attenuate(token: &str, args: &[&str]) -> String {
    run(
        Command::new(ATB)
            .args(["biscuit", "attenuate", "-"])
            .args(args),
        Some(token),
    )
}

/// `atb biscuit inspect`.
fn inspect(token: &str) -> Value {
    serde_json::from_str(&run(
        Command::new(ATB).args(["biscuit", "inspect", token]),
        None,
    ))
    .unwrap()
}

fn python() -> String {
    let python = std::env::var("ATB_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} not found: run scripts/test (it creates .venv with biscuit-python)"
    );
    python
}

/// The independent client: biscuit-python appends a block with `datalog`
/// (no private key; see tests/biscuit_client.py).
fn py_attenuate(token: &str, root: &RootKey, datalog: &str, params: &Value) -> String {
    run(
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/biscuit_client.py"
            ))
            .args([
                "attenuate",
                &root.public_text(),
                datalog,
                &params.to_string(),
            ]),
        Some(token),
    )
}

fn py_inspect(token: &str, root: &RootKey) -> Value {
    serde_json::from_str(&run(
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/biscuit_client.py"
            ))
            .args(["inspect", &root.public_text()]),
        Some(token),
    ))
    .unwrap()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Setup {
    pki: Pki,
    acme: RootKey,
    /// acme's second root key (id 2), as during a rotation.
    acme_next: RootKey,
    globex: RootKey,
    broker: Broker,
}

fn expect(a: &Answer, status: u16, code: &str) {
    assert_eq!((a.status, a.error().as_str()), (status, code), "{a:?}");
}

fn expect_ok(a: &Answer) {
    assert_eq!(a.status, 200, "{a:?}");
}

/// Routes of every test connector.
const ROUTES: &str = r#"
[[tenants.connectors.routes]]
action = "crm.contact.read"
methods = ["GET"]
path = "/api/contacts/{id}"
[[tenants.connectors.routes]]
action = "crm.contact.update"
methods = ["PUT", "PATCH"]
path = "/api/contacts/{id}"
[[tenants.connectors.routes]]
action = "erp.vendor.read"
methods = ["GET"]
path = "/api/vendors"
[[tenants.connectors.routes]]
action = "sap.payment.execute"
methods = ["POST"]
path = "/api/pay"
"#;

/// Two tenants, each with its own Biscuit root key (acme: ids 1 and 2);
/// acme has two connectors, `crm` its default. `extra` goes before the
/// tenants.
fn setup(extra: &str) -> Setup {
    let pki = Pki::new(&[]);
    let dir = pki.dir.path();
    let acme = RootKey::new(dir, "acme-root");
    let acme_next = RootKey::new(dir, "acme-root-2");
    let globex = RootKey::new(dir, "globex-root");
    let upstream = start_upstream();
    // The authorizer's time limit is wall-clock: 5 ms (the default) is
    // ample for a release build, not for a debug build sharing two cores
    // with parallel tests. Runaway tokens are stopped by the work bound,
    // the fact and the iteration limits, which do not depend on the clock.
    let toml = format!(
        r#"
[biscuit]
max_time_ms = 200
{extra}
[[tenants]]
id = "acme"
trust_domain = "acme.example"
default_connector = "crm"
[tenants.biscuit]
root_keys = [{{ id = 1, public_key_file = "{acme_pub}" }}, {{ id = 2, public_key = "{acme_next_pub}" }}]
[[tenants.connectors]]
id = "crm"
upstream_url = "http://127.0.0.1:{upstream}"
egress_allowlist = ["/api/"]
{ROUTES}
[[tenants.connectors]]
id = "erp"
upstream_url = "http://127.0.0.1:{upstream}"
egress_allowlist = ["/api/"]
{ROUTES}

[[tenants]]
id = "globex"
spiffe_prefix = "spiffe://saas.example/tenants/globex"
[tenants.biscuit]
root_keys = [{{ id = 1, public_key_file = "{globex_pub}" }}]
[[tenants.connectors]]
id = "crm"
upstream_url = "http://127.0.0.1:{upstream}"
egress_allowlist = ["/api/"]
{ROUTES}
"#,
        acme_pub = acme.public.display(),
        acme_next_pub = acme_next.public_text(),
        globex_pub = globex.public.display(),
    );
    let broker = Broker::start(&pki, &toml, &[("ATB_ADMIN_TOKEN", ADMIN_TOKEN)]);
    Setup {
        pki,
        acme,
        acme_next,
        globex,
        broker,
    }
}

impl Setup {
    /// `method path` as `agent` (file stem) with the capability in
    /// `X-ATB-Biscuit`, plus curl `extra` arguments.
    fn call(&self, agent: &str, method: &str, path: &str, token: &str, extra: &[&str]) -> Answer {
        let header = format!("X-ATB-Biscuit: {token}");
        let mut args = vec!["-X", method, "-H", &header];
        args.extend_from_slice(extra);
        agent_get(&self.broker, &self.pki, Some(agent), path, &args)
    }

    fn acme(&self, method: &str, path: &str, token: &str) -> Answer {
        self.call("acme-agent", method, path, token, &[])
    }

    /// A payment of `amount` (a JSON number as written).
    fn pay(&self, token: &str, amount: &str) -> Answer {
        let body = format!(r#"{{"amount": {amount}}}"#);
        self.call(
            "acme-agent",
            "POST",
            "/api/pay",
            token,
            &["-H", "Content-Type: application/json", "--data", &body],
        )
    }

    fn revoke(&self, ids: &[&str]) {
        let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
        let r = admin(
            &self.broker,
            "POST",
            "/admin/tenants/acme/revocations",
            &[&auth],
            Some(&json!({ "jtis": ids }).to_string()),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
}

/// Approval evidence for a dual-control action, as AgentAuth writes it.
fn dual_leg() -> String {
    let at = unix_now();
    json!({"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "owner"},
        "dual_control": {"required": true, "approvers": [
            {"id": "alice", "timestamp": at}, {"id": "bob", "timestamp": at}]}})
    .to_string()
}

/// Approval evidence for a medium-risk action (one approver).
fn medium_leg() -> String {
    json!({"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "owner"},
        "approval": {"approver_id": "alice", "timestamp": unix_now()}})
    .to_string()
}

fn biscuit_check_failed(a: &Answer) {
    expect(a, 403, "policy_denied");
    assert_eq!(a.json()["reason"], "biscuit_check_failed", "{a:?}");
}

/// Our CLI narrows actions, routes and connectors; a refused child is not
/// spent, and the parent then does what the child could not.
#[test]
fn cli_attenuation_only_narrows_actions_routes_and_connectors() {
    let s = setup("");
    let leg = medium_leg();
    let parent = s.acme.mint(
        "acme",
        ACME,
        &["crm.contact.read", "crm.contact.update"],
        &["--con", r#"{"connector":"crm"}"#, "--leg", &leg],
    );
    // Two rights: the call names its action, and only a granted one.
    expect(
        &s.acme("PUT", "/api/contacts/7", &parent),
        403,
        "action_mismatch",
    );
    expect(
        &s.call(
            "acme-agent",
            "DELETE",
            "/api/contacts/7",
            &parent,
            &["-H", "X-ATB-Action: crm.contact.delete"],
        ),
        403,
        "action_mismatch",
    );

    // Read-only: the update the parent grants is refused.
    let read_only = attenuate(&parent, &["--action", "crm.contact.read"]);
    let update = ["-H", "X-ATB-Action: crm.contact.update"];
    biscuit_check_failed(&s.call("acme-agent", "PUT", "/api/contacts/7", &read_only, &update));
    // A further block cannot widen it again: it may only add checks.
    let widened = attenuate(
        &read_only,
        &[
            "--action",
            "crm.contact.read",
            "--action",
            "crm.contact.update",
        ],
    );
    biscuit_check_failed(&s.call("acme-agent", "PUT", "/api/contacts/7", &widened, &update));
    // One call: another contact is refused.
    let one = attenuate(&parent, &["--route", "GET", "/api/contacts/7"]);
    let read = ["-H", "X-ATB-Action: crm.contact.read"];
    biscuit_check_failed(&s.call("acme-agent", "GET", "/api/contacts/8", &one, &read));
    // `--route` twice is refused, not dropped (the token would otherwise
    // carry only the other checks).
    let twice = Command::new(ATB)
        .args(["biscuit", "attenuate", &parent, "--ttl", "60"])
        .args(["--route", "GET", "/api/contacts/7"])
        .args(["--route", "GET", "/api/contacts/8"])
        .output()
        .unwrap();
    assert!(!twice.status.success(), "{twice:?}");
    assert!(twice.stdout.is_empty(), "{twice:?}");
    // Another connector than the call's.
    let erp_only = attenuate(&parent, &["--connector", "erp"]);
    biscuit_check_failed(&s.call("acme-agent", "GET", "/api/contacts/7", &erp_only, &read));
    // A raw Datalog check: only PATCH.
    let patch_only = attenuate(&parent, &["--check", r#"check if method("PATCH")"#]);
    biscuit_check_failed(&s.call("acme-agent", "PUT", "/api/contacts/7", &patch_only, &update));

    // None of those refusals spent the capability: the parent does what
    // its children could not (once).
    expect_ok(&s.call("acme-agent", "PUT", "/api/contacts/7", &parent, &update));
    expect(
        &s.call("acme-agent", "GET", "/api/contacts/7", &one, &read),
        403,
        "poa_replay",
    );

    // And each narrowed capability does what it still allows (fresh ones).
    let fresh = || {
        s.acme.mint(
            "acme",
            ACME,
            &["crm.contact.read", "crm.contact.update"],
            &["--con", r#"{"connector":"crm"}"#, "--leg", &leg],
        )
    };
    let ok = |t: &str, method: &str, path: &str, h: &[&str]| {
        let a = s.call("acme-agent", method, path, t, h);
        expect_ok(&a);
        assert_eq!(a.json()["path"], path);
    };
    ok(
        &attenuate(&fresh(), &["--action", "crm.contact.read"]),
        "GET",
        "/api/contacts/7",
        &read,
    );
    ok(
        &attenuate(&fresh(), &["--route", "GET", "/api/contacts/7"]),
        "GET",
        "/api/contacts/7",
        &read,
    );
    ok(
        &attenuate(&fresh(), &["--route", "PUT", "/api/contacts/{id}"]),
        "PUT",
        "/api/contacts/9",
        &update,
    );
    ok(
        &attenuate(&fresh(), &["--connector", "crm"]),
        "GET",
        "/api/contacts/7",
        &read,
    );
    ok(
        &attenuate(&fresh(), &["--check", r#"check if method("PATCH")"#]),
        "PATCH",
        "/api/contacts/7",
        &update,
    );

    // The tenant's default connector, when the grant names none; the
    // vendor a parameter (query string), pinned by a raw check.
    let vendor = |check: &str| {
        let t = s.acme.mint("acme", ACME, &["erp.vendor.read"], &[]);
        attenuate(&t, &["--check", check])
    };
    let one_vendor = vendor(r#"check if param("vendor_id", "17")"#);
    biscuit_check_failed(&s.acme("GET", "/api/vendors?vendor_id=18", &one_vendor));
    expect_ok(&s.acme("GET", "/api/vendors?vendor_id=17", &one_vendor));
    let crm_only = vendor(r#"check if connector("crm")"#);
    let a = s.acme("GET", "/api/vendors", &crm_only);
    expect_ok(&a);
}

/// The amount a child allows cannot be raised, not even by a later block
/// with a looser check; non-integer amounts fail closed.
#[test]
fn a_capped_amount_cannot_be_raised() {
    let s = setup("");
    let mint = || {
        s.acme.mint(
            "acme",
            ACME,
            &["sap.payment.execute"],
            &["--leg", &dual_leg(), "--con", r#"{"connector":"crm"}"#],
        )
    };
    let parent = mint();
    let capped = attenuate(&parent, &["--max-amount", "1000"]);
    biscuit_check_failed(&s.pay(&capped, "5000"));
    // A later block (the independent client) allowing more changes nothing.
    let loosened = py_attenuate(
        &capped,
        &s.acme,
        "check if param(\"amount\", $v), $v <= {max}",
        &json!({"max": 1_000_000}),
    );
    biscuit_check_failed(&s.pay(&loosened, "5000"));
    // Not an integer: no param fact, so the check fails (closed).
    biscuit_check_failed(&s.pay(&capped, "999.5"));
    biscuit_check_failed(&s.pay(&capped, r#""500""#));
    // The parent pays 5000 (the policy allows it with dual control).
    expect_ok(&s.pay(&parent, "5000"));
    expect(&s.pay(&capped, "500"), 403, "poa_replay");
    // A fresh child pays within its cap.
    let a = s.pay(&attenuate(&mint(), &["--max-amount", "1000"]), "1000");
    expect_ok(&a);
    assert_eq!(a.json()["body"], r#"{"amount": 1000}"#);
}

/// An attenuated expiry holds (the parent lives on), and a child cannot
/// outlive its parent whatever expiry it states.
#[test]
fn expiry_can_only_be_shortened() {
    let s = setup("[poa]\nleeway_seconds = 0\n");
    let read = ["-H", "X-ATB-Action: crm.contact.read"];
    let parent = s
        .acme
        .mint("acme", ACME, &["crm.contact.read"], &["--ttl", "300"]);
    let short = attenuate(&parent, &["--ttl", "1"]);
    let py_short = py_attenuate(
        &parent,
        &s.acme,
        "check if time($t), $t <= {until}",
        &json!({"until": {"unix": unix_now() + 1}}),
    );
    // Short-lived parents whose children claim an hour.
    let brief = || {
        s.acme
            .mint("acme", ACME, &["crm.contact.read"], &["--ttl", "2"])
    };
    let long_child = attenuate(&brief(), &["--ttl", "3600"]);
    let py_long_child = py_attenuate(
        &brief(),
        &s.acme,
        "check if time($t), $t <= {until}",
        &json!({"until": {"unix": unix_now() + 3600}}),
    );
    // Within their lifetimes the long children work (control).
    expect_ok(&s.call(
        "acme-agent",
        "GET",
        "/api/contacts/1",
        &attenuate(&brief(), &["--ttl", "3600"]),
        &read,
    ));
    std::thread::sleep(Duration::from_millis(3500));
    biscuit_check_failed(&s.acme("GET", "/api/contacts/1", &short));
    biscuit_check_failed(&s.acme("GET", "/api/contacts/1", &py_short));
    expect(
        &s.acme("GET", "/api/contacts/1", &long_child),
        401,
        "poa_expired",
    );
    expect(
        &s.acme("GET", "/api/contacts/1", &py_long_child),
        401,
        "poa_expired",
    );
    // The parent itself is still valid.
    expect_ok(&s.acme("GET", "/api/contacts/1", &parent));
}

/// An expired capability is `poa_expired` whatever the clock leeway: the
/// authority block's own check refuses it at its expiry.
#[test]
fn an_expired_capability_is_poa_expired_with_the_default_leeway() {
    let s = setup("");
    let t = s
        .acme
        .mint("acme", ACME, &["crm.contact.read"], &["--ttl", "1"]);
    let u = s
        .acme
        .mint("acme", ACME, &["crm.contact.read"], &["--ttl", "1"]);
    expect_ok(&s.acme("GET", "/api/contacts/1", &u));
    std::thread::sleep(Duration::from_millis(2500));
    expect(&s.acme("GET", "/api/contacts/1", &t), 401, "poa_expired");
}

/// The independent client (biscuit-python) attenuates our tokens offline:
/// its checks are enforced, a fact it adds grants nothing, and it reads
/// the same revocation ids as our CLI.
#[test]
fn biscuit_python_attenuates_offline_and_the_broker_enforces_it() {
    let s = setup("");
    let mint = || {
        s.acme.mint(
            "acme",
            ACME,
            &["crm.contact.read", "crm.contact.update"],
            &["--con", r#"{"connector":"crm"}"#],
        )
    };
    let update = ["-H", "X-ATB-Action: crm.contact.update"];
    let read = ["-H", "X-ATB-Action: crm.contact.read"];
    let parent = mint();
    let read_only = py_attenuate(
        &parent,
        &s.acme,
        "check if action({a})",
        &json!({"a": "crm.contact.read"}),
    );
    // The same token as both tools read it.
    let ours = inspect(&read_only);
    let theirs = py_inspect(&read_only, &s.acme);
    assert_eq!(ours["revocation_ids"], theirs["revocation_ids"]);
    assert_eq!(ours["root_key_id"], 1);
    assert_eq!(theirs["root_key_id"], 1);
    assert_eq!(theirs["blocks"].as_array().unwrap().len(), 2, "{theirs}");
    biscuit_check_failed(&s.call("acme-agent", "PUT", "/api/contacts/7", &read_only, &update));
    // Regaining the right by stating it in a later block: the grant is the
    // authority block's alone.
    let regained = py_attenuate(
        &read_only,
        &s.acme,
        "right(\"crm.contact.update\");",
        &json!({}),
    );
    biscuit_check_failed(&s.call("acme-agent", "PUT", "/api/contacts/7", &regained, &update));
    let forged_right = py_attenuate(
        &s.acme.mint("acme", ACME, &["crm.contact.read"], &[]),
        &s.acme,
        "right(\"crm.contact.update\"); agent(\"spiffe://acme.example/agent/reporter\");",
        &json!({}),
    );
    expect(
        &s.call(
            "acme-agent",
            "PUT",
            "/api/contacts/7",
            &forged_right,
            &update,
        ),
        403,
        "action_mismatch",
    );
    // Another route.
    let one = py_attenuate(
        &parent,
        &s.acme,
        "check if method(\"GET\"), path({p})",
        &json!({"p": "/api/contacts/7"}),
    );
    biscuit_check_failed(&s.call("acme-agent", "GET", "/api/contacts/8", &one, &read));
    // Our CLI attenuates a Python-attenuated token further, and the reverse.
    let mixed = attenuate(&one, &["--ttl", "60"]);
    let mixed = py_attenuate(&mixed, &s.acme, "check if connector(\"crm\")", &json!({}));
    assert_eq!(inspect(&mixed)["blocks"].as_array().unwrap().len(), 4);
    expect_ok(&s.call("acme-agent", "GET", "/api/contacts/7", &mixed, &read));
    // …and spent the capability its siblings share.
    expect(
        &s.call("acme-agent", "GET", "/api/contacts/7", &read_only, &read),
        403,
        "poa_replay",
    );
    let fresh = py_attenuate(
        &mint(),
        &s.acme,
        "check if action({a})",
        &json!({"a": "crm.contact.read"}),
    );
    expect_ok(&s.call("acme-agent", "GET", "/api/contacts/7", &fresh, &read));
}

/// Tenant keys never cross: a capability under globex's root (even with
/// acme's key id and tenant) is refused for acme's agent, as is one under
/// an unknown key id or naming another tenant; each passes where it
/// belongs. Rotation: id 2 works beside id 1.
#[test]
fn another_tenants_root_key_is_refused() {
    let s = setup("");
    let read = "/api/contacts/1";
    let under_globex = s.globex.mint("acme", ACME, &["crm.contact.read"], &[]);
    let a = s.acme("GET", read, &under_globex);
    expect(&a, 401, "poa_invalid");
    // Globex's capability for its own agent passes (control).
    let globex_own = s.globex.mint("globex", GLOBEX, &["crm.contact.read"], &[]);
    expect_ok(&s.call("globex-agent", "GET", read, &globex_own, &[]));
    // …and the same token presented by acme's agent: acme's key refuses.
    let globex_again = s.globex.mint("globex", GLOBEX, &["crm.contact.read"], &[]);
    expect(&s.acme("GET", read, &globex_again), 401, "poa_invalid");
    // Acme's key signing for globex: refused by globex.
    let acme_for_globex = s.acme.mint("globex", GLOBEX, &["crm.contact.read"], &[]);
    expect(
        &s.call("globex-agent", "GET", read, &acme_for_globex, &[]),
        401,
        "poa_invalid",
    );
    // Acme's key, but the token names globex as its tenant.
    let wrong_tenant = s.acme.mint("globex", ACME, &["crm.contact.read"], &[]);
    expect(&s.acme("GET", read, &wrong_tenant), 401, "poa_invalid");
    // Root key ids: id 2 is the second key; id 2 claimed by the first key,
    // or an id the tenant does not have, is refused.
    let next = s
        .acme_next
        .mint("acme", ACME, &["crm.contact.read"], &["--root-key-id", "2"]);
    let mislabelled = s
        .acme
        .mint("acme", ACME, &["crm.contact.read"], &["--root-key-id", "2"]);
    let unknown = s
        .acme
        .mint("acme", ACME, &["crm.contact.read"], &["--root-key-id", "7"]);
    expect(&s.acme("GET", read, &mislabelled), 401, "poa_invalid");
    expect(&s.acme("GET", read, &unknown), 401, "poa_invalid");
    expect_ok(&s.acme("GET", read, &next));
    expect_ok(&s.acme(
        "GET",
        read,
        &s.acme.mint("acme", ACME, &["crm.contact.read"], &[]),
    ));
}

/// Revocation by revocation id: a parent's id kills every attenuation of
/// it (ours and biscuit-python's); a child's own id kills only that child.
#[test]
fn a_revoked_parent_kills_its_attenuated_children() {
    let s = setup("");
    let read = "/api/contacts/1";
    let parent = s.acme.mint("acme", ACME, &["crm.contact.read"], &[]);
    let child = attenuate(&parent, &["--ttl", "120"]);
    let grandchild = py_attenuate(&child, &s.acme, "check if method(\"GET\")", &json!({}));
    let ids = inspect(&grandchild)["revocation_ids"].clone();
    assert_eq!(ids.as_array().unwrap().len(), 3);
    assert_eq!(inspect(&parent)["revocation_ids"][0], ids[0]);
    // The child's own block id: that child and its descendants are refused…
    s.revoke(&[ids[1].as_str().unwrap()]);
    expect(&s.acme("GET", read, &child), 401, "poa_revoked");
    expect(&s.acme("GET", read, &grandchild), 401, "poa_revoked");
    // …a sibling is not (this spends the capability).
    let sibling = attenuate(&parent, &["--ttl", "120"]);
    expect_ok(&s.acme("GET", read, &sibling));

    // The parent's id: every child is refused, before replay is consulted.
    let parent = s.acme.mint("acme", ACME, &["crm.contact.read"], &[]);
    let child = attenuate(&parent, &["--action", "crm.contact.read"]);
    let py_child = py_attenuate(&parent, &s.acme, "check if method(\"GET\")", &json!({}));
    let root_id = inspect(&parent)["revocation_ids"][0].clone();
    s.revoke(&[root_id.as_str().unwrap()]);
    expect(&s.acme("GET", read, &parent), 401, "poa_revoked");
    expect(&s.acme("GET", read, &child), 401, "poa_revoked");
    expect(&s.acme("GET", read, &py_child), 401, "poa_revoked");
    // An unrevoked capability still passes (control).
    expect_ok(&s.acme(
        "GET",
        read,
        &s.acme.mint("acme", ACME, &["crm.contact.read"], &[]),
    ));
}

/// Single use per authority revocation id: a child after its parent was
/// used, a parent after its child, and the bearer form, are replays.
#[test]
fn attenuations_share_their_parents_single_use() {
    let s = setup("");
    let read = "/api/contacts/1";
    let parent = s.acme.mint("acme", ACME, &["crm.contact.read"], &[]);
    let child = attenuate(&parent, &["--ttl", "60"]);
    let py_child = py_attenuate(&parent, &s.acme, "check if method(\"GET\")", &json!({}));
    // As a bearer token (no dot: a Biscuit, not a JWS).
    let bearer = format!("Authorization: Bearer {parent}");
    let a = agent_get(
        &s.broker,
        &s.pki,
        Some("acme-agent"),
        read,
        &["-H", &bearer],
    );
    expect_ok(&a);
    expect(&s.acme("GET", read, &parent), 403, "poa_replay");
    expect(&s.acme("GET", read, &child), 403, "poa_replay");
    expect(&s.acme("GET", read, &py_child), 403, "poa_replay");
    // The other way round: the child first.
    let parent = s.acme.mint("acme", ACME, &["crm.contact.read"], &[]);
    let child = attenuate(&parent, &["--ttl", "60"]);
    expect_ok(&s.acme("GET", read, &child));
    expect(&s.acme("GET", read, &parent), 403, "poa_replay");
}

/// The capability's agent must be the mTLS agent, even within one tenant;
/// a refused presentation does not spend it.
#[test]
fn another_agents_capability_is_a_subject_mismatch() {
    let s = setup("");
    let read = "/api/contacts/1";
    let t = s.acme.mint("acme", ACME, &["crm.contact.read"], &[]);
    let child = attenuate(&t, &["--ttl", "60"]);
    let a = s.call("acme-agent-2", "GET", read, &child, &[]);
    expect(&a, 403, "poa_subject_mismatch");
    expect_ok(&s.acme("GET", read, &child));
}

/// A token whose Datalog could run away is refused quickly as
/// `poa_invalid` (the static work bound and the run limits), and does not
/// spend the capability it extends.
#[test]
fn a_pathological_rule_set_is_refused_quickly() {
    let s = setup("");
    let read = "/api/contacts/1";
    let parent = s.acme.mint("acme", ACME, &["crm.contact.read"], &[]);
    let facts: String = (0..60).map(|i| format!("n({i}); ")).collect();
    // A check joining three predicates over 60 facts (216 000 rows in one
    // iteration, where the engine does not check its limits).
    let join = attenuate(
        &parent,
        &[
            "--check",
            &format!("{facts} check if n($x), n($y), n($z), $x + $y + $z == -1"),
        ],
    );
    // Four predicates: 13 million rows, seconds of work inside one
    // iteration; only the static bound stops it before it runs.
    let join4 = attenuate(
        &parent,
        &[
            "--check",
            &format!("{facts} check if n($a), n($b), n($c), n($d), $a + $b + $c + $d == -1"),
        ],
    );
    // A rule deriving their product.
    let product = py_attenuate(
        &parent,
        &s.acme,
        &format!("{facts} p($x, $y, $z) <- n($x), n($y), n($z); check if p(1, 2, 3);"),
        &json!({}),
    );
    // A recursive rule: the transitive closure of a 60-edge chain (1830
    // facts, more than max_facts).
    let edges: String = (0..60).map(|i| format!("e({i}, {}); ", i + 1)).collect();
    let counting = attenuate(
        &parent,
        &[
            "--check",
            &format!(
                "{edges} r($x, $y) <- e($x, $y); r($x, $z) <- e($x, $y), r($y, $z); check if r(0, -1)"
            ),
        ],
    );
    // Joins visited before a predicate with no facts: 13 million rows
    // that match nothing (the bound once multiplied them out to zero).
    let hidden = attenuate(
        &parent,
        &[
            "--check",
            &format!("{facts} check if n($a), n($b), n($c), n($d), none($e)"),
        ],
    );
    // Closures run inside one expression, where no run limit is checked:
    // four nested `.all` over 100 elements are 10^8 evaluations (16 s of
    // CPU before the bound), in a check and in a rule (which runs while
    // the authority facts are read, before expiry and subject checks).
    let set: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let set = format!("s([{}]);", set.join(", "));
    let nested = "$s.all($a -> $s.all($b -> $s.all($c -> $s.all($d -> true))))";
    let closure = attenuate(
        &parent,
        &["--check", &format!("{set} check if s($s), {nested}")],
    );
    let closure_rule = py_attenuate(
        &parent,
        &s.acme,
        &format!("{set} r(1) <- s($s), {nested}; check if r(1);"),
        &json!({}),
    );
    // A pattern the engine would compile on every evaluation for ≈ 100 ms,
    // and a pattern that is not a literal (it could come from the request).
    let regex = attenuate(
        &parent,
        &[
            "--check",
            "check if path($p), $p.matches(\"(a|b){1000}{10}\")",
        ],
    );
    let regex_variable = attenuate(
        &parent,
        &[
            "--check",
            "p(\"a+\"); check if path($x), p($p), $x.matches($p)",
        ],
    );
    for t in [
        &join,
        &join4,
        &product,
        &counting,
        &hidden,
        &closure,
        &closure_rule,
        &regex,
        &regex_variable,
    ] {
        let started = Instant::now();
        let a = s.acme("GET", read, t);
        expect(&a, 401, "poa_invalid");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    // A harmless extra block passes (control), so none of that spent it.
    let fine = attenuate(&parent, &["--check", "n(1); check if n(1)"]);
    expect_ok(&s.acme("GET", read, &fine));
    // Closures and literal patterns within bounds work (control).
    let fine = attenuate(
        &s.acme.mint("acme", ACME, &["crm.contact.read"], &[]),
        &[
            "--check",
            "check if path($p), $p.matches(\"^/api/contacts/[0-9]+$\"), [1, 2].all($x -> $x > 0)",
        ],
    );
    expect_ok(&s.acme("GET", read, &fine));
    // Too many blocks, too large: refused before any Datalog runs.
    let mut deep = s.acme.mint("acme", ACME, &["crm.contact.read"], &[]);
    for _ in 0..8 {
        deep = attenuate(&deep, &["--check", "check if method(\"GET\")"]);
    }
    expect(&s.acme("GET", read, &deep), 401, "poa_invalid");
    let big_facts: String = (0..400).map(|i| format!("f(\"{i:0>20}\"); ")).collect();
    let big = attenuate(
        &s.acme.mint("acme", ACME, &["crm.contact.read"], &[]),
        &["--check", &big_facts],
    );
    assert!(big.len() > 8192, "{}", big.len());
    let a = s.acme("GET", read, &big);
    expect(&a, 401, "poa_invalid");
}

/// Metrics count Biscuit checks under `format="biscuit"` and the audit
/// event says so; the policy sees the Biscuit's facts (`poa.format`).
#[test]
fn metrics_and_audit_name_the_biscuit_format() {
    let s = setup("");
    let read = "/api/contacts/1";
    let t = s.acme.mint("acme", ACME, &["crm.contact.read"], &[]);
    expect_ok(&s.acme("GET", read, &t));
    expect(&s.acme("GET", read, &t), 403, "poa_replay");
    let m = s.broker.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_poa_validations_total{format="biscuit",result="valid",tenant="acme"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"atb_poa_validations_total{format="biscuit",result="replay",tenant="acme"}"#
        ),
        Some(1.0),
        "{m}"
    );
    let id = inspect(&t)["revocation_ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(eventually(Duration::from_secs(5), || s
        .broker
        .audit()
        .len()
        >= 2));
    let events = s.broker.audit();
    let ok = events
        .iter()
        .find(|e| e["status"] == 200)
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(ok["format"], "biscuit", "{ok}");
    assert_eq!(ok["action"], "crm.contact.read", "{ok}");
    assert_eq!(ok["jti"], id, "{ok}");
    assert!(events
        .iter()
        .any(|e| e["format"] == "biscuit" && e["code"] == "poa_replay"));
}

/// Rotation through a configuration reload: id 1 removed from acme's root
/// keys refuses its tokens while id 2 goes on; a root key file rewritten
/// with a new key (globex) replaces the old key.
#[test]
fn root_keys_rotate_on_reload() {
    let s = setup("");
    let read = "/api/contacts/1";
    let reload = || {
        let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
        let r = admin(&s.broker, "POST", "/admin/config/reload", &[&auth], None);
        assert_eq!(r.status, 200, "{r:?}");
    };
    let old = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| s.acme.mint("acme", ACME, &["crm.contact.read"], &[]))
            .collect()
    };
    let old_tokens = old(2);
    let next = || {
        s.acme_next
            .mint("acme", ACME, &["crm.contact.read"], &["--root-key-id", "2"])
    };
    expect_ok(&s.acme("GET", read, &old_tokens[0]));
    expect_ok(&s.acme("GET", read, &next()));
    let globex_old = s.globex.mint("globex", GLOBEX, &["crm.contact.read"], &[]);
    let globex_old2 = s.globex.mint("globex", GLOBEX, &["crm.contact.read"], &[]);
    expect_ok(&s.call("globex-agent", "GET", read, &globex_old, &[]));
    // A revocation made through the admin API before the rotation.
    let revoked = next();
    s.revoke(&[inspect(&revoked)["revocation_ids"][0].as_str().unwrap()]);

    // Remove acme's id 1 (only [tenants.biscuit] changes).
    let config = std::fs::read_to_string(&s.broker.config_path).unwrap();
    let id1 = format!(
        r#"{{ id = 1, public_key_file = "{}" }}, "#,
        s.acme.public.display()
    );
    assert!(config.contains(&id1));
    std::fs::write(&s.broker.config_path, config.replace(&id1, "")).unwrap();
    // Globex's key file now holds a new key.
    let globex_new = RootKey::new(s.pki.dir.path(), "globex-root-new");
    std::fs::copy(&globex_new.public, &s.globex.public).unwrap();
    reload();

    expect(&s.acme("GET", read, &old_tokens[1]), 401, "poa_invalid");
    expect_ok(&s.acme("GET", read, &next()));
    // The rotation keeps the tenant's runtime revocations.
    expect(&s.acme("GET", read, &revoked), 401, "poa_revoked");
    expect(
        &s.call("globex-agent", "GET", read, &globex_old2, &[]),
        401,
        "poa_invalid",
    );
    let globex_fresh = globex_new.mint("globex", GLOBEX, &["crm.contact.read"], &[]);
    expect_ok(&s.call("globex-agent", "GET", read, &globex_fresh, &[]));
}

/// With shared state on Redis, two brokers spend a capability once between
/// them: the parent on one replica, its attenuated child on the other.
#[test]
fn single_use_is_shared_between_replicas_on_redis() {
    let redis = common::redis_procs::RedisServer::start();
    let redis_toml = format!(
        "[redis]\nurl = \"{}\"\ncommand_timeout_ms = 500\n",
        redis.url()
    );
    let s = setup(&redis_toml);
    let config = std::fs::read_to_string(&s.broker.config_path).unwrap();
    let tenants = &config[config.find("[biscuit]").unwrap()..];
    let second = Broker::start(&s.pki, tenants, &[]);
    let read = "/api/contacts/1";
    let on = |broker: &Broker, token: &str| {
        let header = format!("X-ATB-Biscuit: {token}");
        agent_get(broker, &s.pki, Some("acme-agent"), read, &["-H", &header])
    };
    let parent = s.acme.mint("acme", ACME, &["crm.contact.read"], &[]);
    let child = attenuate(&parent, &["--ttl", "60"]);
    let py_child = py_attenuate(&parent, &s.acme, "check if method(\"GET\")", &json!({}));
    expect_ok(&on(&s.broker, &parent));
    expect(&on(&second, &child), 403, "poa_replay");
    expect(&on(&second, &py_child), 403, "poa_replay");
    // A fresh one passes on the second replica (control).
    let other = attenuate(
        &s.acme.mint("acme", ACME, &["crm.contact.read"], &[]),
        &["--ttl", "60"],
    );
    expect_ok(&on(&second, &other));
    expect(&on(&s.broker, &other), 403, "poa_replay");
}
