//! The fault matrix (README "Fault matrix"): each dependency of the broker
//! — OPA (remote mode), a tenant's JWKS endpoint, the audit HTTP collector,
//! an upstream, Redis — taken down, slowed, made to answer junk, under a
//! steady load of fresh single-use mandates (a few a second), then brought
//! back. For each: no allow without the check the dependency provides, the
//! broker process stays up, `/ready` (its `failing` list) and the metrics
//! name the failing dependency, and service recovers by itself; the time
//! from the dependency's return to the first success is measured and
//! bounded (a correctness bound — recovery happens —, not a speed target).
//!
//! Real processes on loopback: `atb broker`, `redis-server`, curl as the
//! agent; the HTTP dependencies are controllable stand-ins
//! (`common::faults::FaultServer`). The OPA stand-in decides with the
//! policy engine the broker embeds (regorus on the shipped policy, the
//! engine the OPA parity test holds equal to OPA), so an allow through it
//! is a real decision. Each figure line starts with `FAULT-MATRIX` (run
//! with `--nocapture` to copy them into the README).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::faults::{tally, FaultServer, Load, Mode, Outcome, Request, Response};
use common::redis_procs::RedisServer;
use common::*;
use serde_json::{json, Value};

const ACME: &str = "spiffe://acme.example/agent/demo";
const LEG: &str = r#"{"jurisdiction":"EU","accountable_party":{"type":"user","id":"owner"}}"#;
/// Requests per second of the steady load in each scenario.
const RATE: f64 = 4.0;
/// How long each fault lasts under load.
const FAULT: Duration = Duration::from_secs(3);
/// The documented bound on recovery once a dependency is back (OPA, audit
/// collector, upstream, Redis).
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// For a JWKS: the next periodic refresh (`poa.jwks_refresh_seconds`, at
/// least 30 s) plus the fetch timeout and one load interval.
const JWKS_RECOVERY_BOUND: Duration = Duration::from_secs(35);

/// The agent side of a scenario: its PKI, mandate key and broker port.
#[derive(Clone)]
struct Agent {
    ca: String,
    cert: String,
    key: String,
    signing_key: std::path::PathBuf,
    port: u16,
}

impl Agent {
    fn new(pki: &Pki, key: &SigningKey, broker: &Broker) -> Self {
        Self {
            ca: path_str(&pki.ca()),
            cert: path_str(&pki.path("acme-agent.crt")),
            key: path_str(&pki.path("acme-agent.key")),
            signing_key: key.private.clone(),
            port: broker.port,
        }
    }

    /// A fresh single-use mandate for `crm.contact.read` (`extra`: more
    /// `atb mint` flags, e.g. `--kid`, `--jti`).
    fn mint(&self, extra: &[&str]) -> String {
        let key = SigningKey {
            private: self.signing_key.clone(),
            public: self.signing_key.clone(),
        };
        let mut args = vec!["--leg", LEG];
        args.extend_from_slice(extra);
        key.mint(ACME, "crm.contact.read", &args)
    }

    /// `GET path` with `token`, the client giving up after `max_time` s.
    fn call(&self, token: &str, path: &str, max_time: u32) -> Answer {
        curl(&[
            "--max-time",
            &max_time.to_string(),
            "--cacert",
            &self.ca,
            "--cert",
            &self.cert,
            "--key",
            &self.key,
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("https://localhost:{}{path}", self.port),
        ])
    }
}

/// An upstream that answers every request 200.
fn upstream() -> FaultServer {
    FaultServer::start(|_| Response::json(&json!({"upstream": "ok"})))
}

/// Tenant acme: its `[tenants.poa]` body, one connector `crm` on
/// `upstream_port` (1 s timeout) routing `GET /api/…` to `crm.contact.read`.
fn tenant(poa: &str, upstream_port: u16) -> String {
    format!(
        r#"
[[tenants]]
id = "acme"
trust_domain = "acme.example"
requests_per_second = 1000.0
burst = 2000
[tenants.poa]
{poa}
[[tenants.connectors]]
id = "crm"
upstream_url = "http://127.0.0.1:{upstream_port}"
egress_allowlist = ["/api/"]
timeout_seconds = 1
[[tenants.connectors.routes]]
action = "crm.contact.read"
methods = ["GET"]
path = "/api/{{*rest}}"
"#
    )
}

fn static_key(key: &SigningKey) -> String {
    format!("public_key_files = [\"{}\"]", key.public.display())
}

/// `/ready`: status and body.
fn ready(broker: &Broker) -> (u16, Value) {
    let a = admin(broker, "GET", "/ready", &[], None);
    (a.status, a.json())
}

fn failing(body: &Value) -> Vec<String> {
    body["failing"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn gauge(broker: &Broker, dependency: &str, tenant: &str) -> Option<f64> {
    metric(
        &broker.metrics(),
        &format!(r#"atb_dependency_up{{dependency="{dependency}",tenant="{tenant}"}}"#),
    )
}

/// One figure line for the README table.
fn figure(
    dependency: &str,
    fault: &str,
    during: &[Outcome],
    ready: &(u16, Value),
    recovery: Duration,
) {
    println!(
        "FAULT-MATRIX | {dependency} | {fault} | during: {:?} | /ready {} failing {:?} | recovery {} ms",
        tally(during),
        ready.0,
        failing(&ready.1),
        recovery.as_millis()
    );
}

/// Waits for the fault to take hold, then runs it for `FAULT` under load;
/// the requests started after the switch and answered before the end.
fn run_fault(
    load: &Load,
    server: &FaultServer,
    mode: Mode,
    lasting: Duration,
) -> (Instant, Vec<Outcome>) {
    let at = Instant::now();
    server.set(mode);
    std::thread::sleep(lasting);
    (at, load.between(at, Instant::now()))
}

fn assert_all(during: &[Outcome], status: u16, code: &str, what: &str) {
    assert!(!during.is_empty(), "{what}: the load ran during the fault");
    assert!(
        during.iter().all(|o| o.status == status && o.code == code),
        "{what}: every request {status} {code}: {:?}",
        tally(during)
    );
}

// ---------------------------------------------------------------- OPA

/// OPA stand-in: `POST` decisions from the embedded engine on the shipped
/// policy (counting the allows it gave), `GET /health` 200.
fn opa_stand_in() -> (FaultServer, Arc<AtomicUsize>) {
    let bundle = atb::policy::embedded::PolicyBundle::load(None, None, &[], Duration::from_secs(1))
        .expect("shipped policy");
    let engine = Mutex::new(bundle.engine().expect("engine"));
    let allows = Arc::new(AtomicUsize::new(0));
    let given = allows.clone();
    let server = FaultServer::start(move |req: &Request| {
        if req.method == "GET" {
            return Response::json(&json!({}));
        }
        let input = serde_json::from_slice::<Value>(&req.body).unwrap_or_default()["input"].clone();
        let mut engine = engine.lock().unwrap();
        engine.set_input(atb::policy::embedded::input_value(&input));
        match engine.eval_rule(atb::policy::DECISION_RULE.to_string()) {
            Ok(out) => {
                let decision = serde_json::to_value(&out).unwrap();
                if decision["allow"] == json!(true) {
                    given.fetch_add(1, Ordering::SeqCst);
                }
                Response::json(&json!({ "result": decision }))
            }
            Err(e) => Response {
                status: 500,
                content_type: "text/plain",
                body: e.to_string().into_bytes(),
            },
        }
    });
    (server, allows)
}

#[test]
fn opa_down_slow_or_answering_junk_never_allows_and_service_recovers() {
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "poa");
    let up = upstream();
    let (opa, allows) = opa_stand_in();
    let config = format!(
        r#"
[policy]
engine = "opa"
opa_decision_url = "{}"
opa_timeout_ms = 500
{}"#,
        opa.url("/v1/data/atb/poa/decision"),
        tenant(&static_key(&key), up.port)
    );
    let mut broker = Broker::start(&pki, &config, &[]);
    let agent = Agent::new(&pki, &key, &broker);
    let a = agent.clone();
    let load = Load::start(RATE, move |seq| {
        a.call(&a.mint(&[]), &format!("/api/opa-{seq}"), 5)
    });
    assert!(load
        .recovery(Instant::now(), RECOVERY_BOUND, |o| o.status == 200)
        .is_some());

    let faults = [
        ("down (connection refused)", Mode::Down, "unreachable", 503),
        (
            "slow (answers after 1.5 s, timeout 0.5 s)",
            Mode::Slow(Duration::from_millis(1500)),
            "timeout",
            503,
        ),
        (
            "garbage (200, not JSON)",
            Mode::Garbage,
            "bad_decision",
            200,
        ),
    ];
    for (name, mode, cause, ready_status) in faults {
        let (_, during) = run_fault(&load, &opa, mode, FAULT);
        // No decision, no access: only 503 policy_unavailable.
        assert_all(&during, 503, "policy_unavailable", name);
        let r = ready(&broker);
        assert_eq!(r.0, ready_status, "{name}: {:?}", r.1);
        if ready_status == 503 {
            assert_eq!(r.1["reason"], "policy engine (OPA) is not reachable");
        }
        assert!(
            failing(&r.1).contains(&"opa".to_string()),
            "{name}: {:?}",
            r.1
        );
        assert_eq!(gauge(&broker, "opa", ""), Some(0.0), "{name}");
        let errors = metric(
            &broker.metrics(),
            &format!(r#"atb_policy_errors_total{{cause="{cause}",engine="opa"}}"#),
        );
        assert!(errors.is_some_and(|v| v >= 1.0), "{name}: {cause} counted");

        let back = Instant::now();
        opa.set(Mode::Up);
        let recovery = load
            .recovery(back, RECOVERY_BOUND, |o| o.status == 200)
            .unwrap_or_else(|| {
                panic!("{name}: no success within {RECOVERY_BOUND:?} of OPA's return")
            });
        figure("OPA", name, &during, &r, recovery);
        assert!(eventually(Duration::from_secs(5), || {
            let r = ready(&broker);
            r.0 == 200 && failing(&r.1).is_empty()
        }));
        assert_eq!(gauge(&broker, "opa", ""), Some(1.0));
    }
    let outcomes = load.stop();
    let ok = outcomes.iter().filter(|o| o.status == 200).count();
    // Every 200 is an allow the engine gave (never one without a decision).
    assert!(
        ok <= allows.load(Ordering::SeqCst),
        "{ok} allowed, {allows:?} decisions"
    );
    assert!(broker.alive(), "the broker survived");
    assert!(metric(
        &broker.metrics(),
        r#"atb_rejections_total{code="policy_unavailable",tenant="acme"}"#
    )
    .is_some_and(|v| v >= 3.0));
}

// ---------------------------------------------------------------- JWKS

/// The JWKS timings of these scenarios: the shortest the configuration
/// allows (cooldown and refresh 30 s), keys stale 40 s after a good fetch.
const JWKS_POA: &str = r#"
[poa]
jwks_refresh_seconds = 30
jwks_cooldown_seconds = 30
jwks_stale_seconds = 40
jwks_negative_seconds = 5
jwks_timeout_ms = 500
"#;
const JWKS_STALE: Duration = Duration::from_secs(40);

fn jwk(key: &SigningKey, kid: &str) -> Value {
    use base64::Engine;
    let pem = std::fs::read(&key.public).unwrap();
    let raw = openssl::pkey::PKey::public_key_from_pem(&pem)
        .unwrap()
        .raw_public_key()
        .unwrap();
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
           "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)})
}

/// A broker whose tenant takes its keys from a JWKS stand-in serving
/// `document` (replaceable).
struct JwksCase {
    pki: Pki,
    k1: SigningKey,
    k2: SigningKey,
    document: Arc<Mutex<Value>>,
    jwks: FaultServer,
    broker: Broker,
    _upstream: FaultServer,
}

impl JwksCase {
    fn start() -> Self {
        let pki = Pki::new(&[]);
        let k1 = SigningKey::new(pki.dir.path(), "k1");
        let k2 = SigningKey::new(pki.dir.path(), "k2");
        let document = Arc::new(Mutex::new(json!({"keys": [jwk(&k1, "k1")]})));
        let served = document.clone();
        let jwks = FaultServer::start(move |_| Response::json(&served.lock().unwrap()));
        let up = upstream();
        let config = format!(
            "{JWKS_POA}{}",
            tenant(
                &format!("jwks_url = \"{}\"", jwks.url("/jwks.json")),
                up.port
            )
        );
        let broker = Broker::start(&pki, &config, &[]);
        assert!(eventually(Duration::from_secs(10), || ready(&broker).0 == 200));
        Self {
            pki,
            k1,
            k2,
            document,
            jwks,
            broker,
            _upstream: up,
        }
    }

    /// Load with mandates of `k1` (even requests) and, if `both`, `k2`
    /// (odd requests).
    fn load(&self, both: bool) -> Load {
        let a1 = Agent::new(&self.pki, &self.k1, &self.broker);
        let a2 = Agent::new(&self.pki, &self.k2, &self.broker);
        Load::start(RATE, move |seq| {
            let (agent, kid) = if both && seq % 2 == 1 {
                (&a2, "k2")
            } else {
                (&a1, "k1")
            };
            agent.call(&agent.mint(&["--kid", kid]), &format!("/api/jwks-{seq}"), 5)
        })
    }
}

/// The JWKS fails (`mode`) right after the keys loaded: keys keep serving
/// within the stale window, then every mandate is refused (401) until the
/// JWKS is back and the next refresh reads it.
fn jwks_outage(mode: Mode, name: &str) {
    let case = JwksCase::start();
    let loaded = Instant::now();
    let last_success = || {
        metric(
            &case.broker.metrics(),
            r#"atb_jwks_last_success_timestamp_seconds{tenant="acme"}"#,
        )
        .expect("the first fetch's time")
    };
    let first_fetch = last_success();
    let load = case.load(false);
    let at = Instant::now();
    let reads = mode != Mode::Down;
    case.jwks.set(mode);
    let seen_before = case.jwks.seen();
    // The next periodic refresh (30 s after the first fetch) fails.
    assert!(
        eventually(Duration::from_secs(40), || gauge(
            &case.broker,
            "jwks",
            "acme"
        ) == Some(0.0)),
        "{name}: the failed refresh shows"
    );
    let r = ready(&case.broker);
    assert_eq!(r.0, 200, "{name}: stale keys still serve: {:?}", r.1);
    assert_eq!(failing(&r.1), vec!["jwks:acme".to_string()], "{name}");
    assert!(metric(
        &case.broker.metrics(),
        r#"atb_jwks_refreshes_total{result="error",tenant="acme"}"#
    )
    .is_some_and(|v| v >= 1.0));
    // Within the stale window the keys of the last good fetch serve.
    let within = load.between(at, Instant::now());
    assert_all(
        &within,
        200,
        "",
        &format!("{name}, within the stale window"),
    );
    // Past it, nothing verifies: 401, never a 200 on keys nobody vouches for.
    assert!(
        eventually(Duration::from_secs(15), || load
            .outcomes()
            .iter()
            .any(|o| o.status == 401)),
        "{name}: mandates are refused once the stale window is over"
    );
    // A few requests certainly past the window (the keys were fetched
    // before `loaded`).
    let stale_end = loaded + JWKS_STALE;
    let settle = (stale_end + Duration::from_secs(3)).max(Instant::now() + Duration::from_secs(2));
    std::thread::sleep(settle.saturating_duration_since(Instant::now()));
    let after: Vec<Outcome> = load.between(stale_end + Duration::from_secs(1), Instant::now());
    assert_all(
        &after,
        401,
        "poa_invalid",
        &format!("{name}, past the stale window"),
    );
    let during = load.between(at, Instant::now());
    let r = ready(&case.broker);
    assert!(failing(&r.1).contains(&"jwks:acme".to_string()));
    assert_eq!(last_success(), first_fetch, "{name}: no good fetch since");
    if reads {
        // The failed refresh (30 s) is retried with backoff (31, 33, 37 s),
        // not only a whole refresh interval later.
        let fetches = case.jwks.seen() - seen_before;
        assert!(fetches >= 3, "{name}: {fetches} fetches during the outage");
    }

    let back = Instant::now();
    case.jwks.set(Mode::Up);
    let recovery = load
        .recovery(back, JWKS_RECOVERY_BOUND, |o| o.status == 200)
        .unwrap_or_else(|| {
            panic!("{name}: no success within {JWKS_RECOVERY_BOUND:?} of the JWKS's return")
        });
    figure("JWKS", name, &during, &r, recovery);
    assert!(eventually(Duration::from_secs(5), || gauge(
        &case.broker,
        "jwks",
        "acme"
    ) == Some(1.0)));
    assert!(
        last_success() > first_fetch,
        "{name}: the good fetch is dated"
    );
    drop(load.stop());
    let mut broker = case.broker;
    assert!(broker.alive());
}

/// The JWKS rotates to a new key set (k1 removed, k2 added): k2 mandates
/// are accepted once the broker has read the new set, and k1 mandates are
/// refused from then on (a good fetch replaces the set; the stale window
/// only keeps keys while fetches fail).
fn jwks_rotation() {
    let case = JwksCase::start();
    let load = case.load(true);
    let rotated = Instant::now();
    *case.document.lock().unwrap() = json!({"keys": [jwk(&case.k2, "k2")]});
    let is_k2 = |o: &Outcome| o.seq % 2 == 1;
    let seen = load
        .recovery(rotated, JWKS_RECOVERY_BOUND, |o| {
            is_k2(o) && o.status == 200
        })
        .expect("k2 accepted within the bound after the rotation");
    let seen_at = rotated + seen;
    std::thread::sleep(Duration::from_secs(2));
    let outcomes = load.stop();
    // Before the broker read the new set: k1 still served, k2 unknown.
    let before: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.ended < seen_at - Duration::from_secs(2))
        .collect();
    assert!(
        before.iter().filter(|o| !is_k2(o)).all(|o| o.status == 200),
        "{before:?}"
    );
    assert!(
        before.iter().filter(|o| is_k2(o)).all(|o| o.status == 401),
        "{before:?}"
    );
    // After: k1 refused at once, k2 accepted.
    let after: Vec<Outcome> = outcomes
        .into_iter()
        .filter(|o| o.started > seen_at)
        .collect();
    let (k1_after, k2_after): (Vec<Outcome>, Vec<Outcome>) =
        after.into_iter().partition(|o| !is_k2(o));
    assert_all(
        &k1_after,
        401,
        "poa_invalid",
        "k1 after the rotation was seen",
    );
    assert_all(&k2_after, 200, "", "k2 after the rotation was seen");
    let r = ready(&case.broker);
    assert_eq!(r.0, 200);
    assert!(failing(&r.1).is_empty(), "{:?}", r.1);
    println!(
        "FAULT-MATRIX | JWKS | rotated key set (k1 -> k2) | k1 after: {:?}, k2 after: {:?} | /ready {} failing {:?} | new key accepted after {} ms",
        tally(&k1_after),
        tally(&k2_after),
        r.0,
        failing(&r.1),
        seen.as_millis()
    );
    let mut broker = case.broker;
    assert!(broker.alive());
}

#[test]
fn jwks_down_slow_garbage_or_rotated_fails_closed_after_the_stale_window_and_recovers() {
    // The four cases run side by side (their timers are 30 s apart at
    // best), each on its own broker and JWKS.
    std::thread::scope(|s| {
        let cases = [
            s.spawn(|| jwks_outage(Mode::Down, "down (connection refused)")),
            s.spawn(|| {
                jwks_outage(
                    Mode::Slow(Duration::from_millis(1500)),
                    "slow (answers after 1.5 s, timeout 0.5 s)",
                )
            }),
            s.spawn(|| jwks_outage(Mode::Garbage, "garbage (200, not JSON)")),
            s.spawn(jwks_rotation),
        ];
        for c in cases {
            if let Err(p) = c.join() {
                std::panic::resume_unwind(p);
            }
        }
    });
}

// ------------------------------------------------------- audit collector

/// The audit collector is down, fails with 500s, is slow: the broker
/// answers while its bounded queue has room, then requests wait for room
/// (their answers held; the agent may give up); nothing is dropped — every
/// request's record arrives once the collector is back, exactly once, in
/// one verifiable chain.
#[test]
fn audit_collector_down_failing_or_slow_loses_no_record_and_recovers() {
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "poa");
    let up = upstream();
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let store = received.clone();
    let collector = FaultServer::start(move |req: &Request| {
        store.lock().unwrap().extend_from_slice(&req.body);
        Response::json(&json!({}))
    });
    let config = format!(
        r#"
[audit]
sink = "http"
http_url = "{}"
queue_capacity = 4
queue_per_tenant = 4
http_batch_lines = 50
{}"#,
        collector.url("/ingest"),
        tenant(&static_key(&key), up.port)
    );
    let mut broker = Broker::start(&pki, &config, &[]);
    let agent = Agent::new(&pki, &key, &broker);
    let a = agent.clone();
    // The agent gives up after 2 s: while the queue is full it will (the
    // broker still finishes the request and writes its record).
    let load = Load::start(RATE, move |seq| {
        a.call(&a.mint(&[]), &format!("/api/audit-{seq}"), 2)
    });
    assert!(load
        .recovery(Instant::now(), RECOVERY_BOUND, |o| o.status == 200)
        .is_some());

    let faults = [
        ("down (connection refused)", Mode::Down),
        ("500s", Mode::Status(500)),
        (
            "slow (answers after 2 s)",
            Mode::Slow(Duration::from_secs(2)),
        ),
    ];
    for (name, mode) in faults {
        let slow = matches!(mode, Mode::Slow(_));
        let (_, during) = run_fault(&load, &collector, mode, 2 * FAULT);
        // Answered (queue room) or held (the agent gave up: status 0);
        // never an error answer and never an answer without its record
        // queued.
        assert!(!during.is_empty());
        assert!(
            during.iter().all(|o| o.status == 200 || o.status == 0),
            "{name}: {:?}",
            tally(&during)
        );
        let r = ready(&broker);
        if slow {
            // Slow but answering: every batch is delivered, nothing fails.
            assert!(during.iter().any(|o| o.status == 200), "{name}");
        } else {
            assert!(
                during.iter().any(|o| o.status == 0),
                "{name}: the bounded queue filled and requests waited: {:?}",
                tally(&during)
            );
            assert_eq!(r.0, 200, "{name}: {:?}", r.1);
            assert_eq!(failing(&r.1), vec!["audit_sink".to_string()], "{name}");
            let m = broker.metrics();
            assert_eq!(gauge(&broker, "audit_sink", ""), Some(0.0), "{name}");
            assert!(metric(&m, "atb_audit_write_failures_total").is_some_and(|v| v >= 1.0));
            assert!(
                metric(&m, "atb_audit_queue_depth").is_some_and(|v| v >= 1.0),
                "{name}: {m}"
            );
        }
        let back = Instant::now();
        collector.set(Mode::Up);
        let recovery = load
            .recovery(back, RECOVERY_BOUND, |o| o.status == 200)
            .unwrap_or_else(|| {
                panic!("{name}: no success within {RECOVERY_BOUND:?} of the collector's return")
            });
        figure("audit collector", name, &during, &r, recovery);
        assert!(eventually(Duration::from_secs(10), || gauge(
            &broker,
            "audit_sink",
            ""
        ) == Some(1.0)));
    }
    let outcomes = load.stop();
    // Every request the broker saw has exactly one record at the collector.
    let want: std::collections::BTreeSet<String> = outcomes
        .iter()
        .map(|o| format!("/api/audit-{}", o.seq))
        .collect();
    let lines = || -> Vec<Value> {
        String::from_utf8(received.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(20), || lines().len() >= want.len()),
        "{} records for {} requests",
        lines().len(),
        want.len()
    );
    let got: Vec<String> = lines()
        .iter()
        .map(|l| l["path"].as_str().unwrap_or_default().to_owned())
        .collect();
    let distinct: std::collections::BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), distinct.len(), "no record twice");
    assert_eq!(distinct, want, "every request's record arrived");
    let held = outcomes.iter().filter(|o| o.status == 0).count();
    println!(
        "FAULT-MATRIX | audit collector | all faults | {} requests ({held} abandoned by the agent while held), {} records delivered, 0 lost, 0 twice",
        outcomes.len(),
        got.len()
    );
    // The collector's bytes are one unbroken chain.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("collected.jsonl");
    std::fs::write(&file, received.lock().unwrap().as_slice()).unwrap();
    run(std::process::Command::new(ATB)
        .args(["audit", "verify"])
        .arg(&file));
    assert!(broker.alive());
}

// ------------------------------------------------------------ upstream

/// The upstream is down, hangs, resets connections: 502/504 within the
/// connector's timeout, never a hang; a mandate refused by an upstream
/// error stays spent (it passed every check and may have reached the
/// upstream: the agent asks for a new one).
#[test]
fn upstream_down_hanging_or_resetting_answers_502_or_504_in_time_and_recovers() {
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "poa");
    let up = upstream();
    let mut broker = Broker::start(&pki, &tenant(&static_key(&key), up.port), &[]);
    let agent = Agent::new(&pki, &key, &broker);
    let a = agent.clone();
    let load = Load::start(RATE, move |seq| {
        a.call(&a.mint(&[]), &format!("/api/up-{seq}"), 10)
    });
    assert!(load
        .recovery(Instant::now(), RECOVERY_BOUND, |o| o.status == 200)
        .is_some());
    // timeout_seconds = 1: an answer within it plus slack for this host.
    let in_time = Duration::from_secs(1) + Duration::from_secs(2);

    let faults = [
        (
            "down (connection refused)",
            Mode::Down,
            502,
            "upstream_error",
            "error",
        ),
        (
            "hanging (never answers)",
            Mode::Hang,
            504,
            "upstream_timeout",
            "timeout",
        ),
        (
            "resetting connections (RST)",
            Mode::Reset,
            502,
            "upstream_error",
            "error",
        ),
    ];
    for (name, mode, status, code, outcome) in faults {
        let lasting = if mode == Mode::Hang { 2 * FAULT } else { FAULT };
        let (_, during) = run_fault(&load, &up, mode.clone(), lasting);
        assert_all(&during, status, code, name);
        let slowest = during.iter().map(Outcome::took).max().unwrap();
        assert!(
            slowest < in_time,
            "{name}: answered within the timeout, took {slowest:?}"
        );
        // The refused mandate is spent.
        let token = agent.mint(&[]);
        assert_eq!(agent.call(&token, "/api/spent", 10).status, status);
        let r = ready(&broker);
        assert_eq!(r.0, 200, "an upstream is one connector's: {:?}", r.1);
        assert_eq!(
            failing(&r.1),
            vec!["upstream:crm:acme".to_string()],
            "{name}"
        );
        assert!(metric(
            &broker.metrics(),
            &format!(
                r#"atb_upstream_requests_total{{connector="crm",status="{outcome}",tenant="acme"}}"#
            )
        )
        .is_some_and(|v| v >= 1.0));

        let back = Instant::now();
        up.set(Mode::Up);
        let recovery = load
            .recovery(back, RECOVERY_BOUND, |o| o.status == 200)
            .unwrap_or_else(|| {
                panic!("{name}: no success within {RECOVERY_BOUND:?} of the upstream's return")
            });
        figure("upstream", name, &during, &r, recovery);
        let again = agent.call(&token, "/api/spent", 10);
        assert_eq!(
            (again.status, again.error()),
            (403, "poa_replay".into()),
            "{name}"
        );
        assert!(eventually(Duration::from_secs(5), || failing(
            &ready(&broker).1
        )
        .is_empty()));
    }
    drop(load.stop());
    assert!(broker.alive());
}

// --------------------------------------------------------------- Redis

/// Redis (shared replay state) is killed: only 503
/// replay_store_unavailable, never a 200 without a replay mark; restarted,
/// 200s again without restarting the broker. Then it hangs (SIGSTOP): 503
/// within the command timeout, and resumes.
#[test]
fn redis_killed_or_hanging_refuses_every_mandate_and_serves_again_without_a_broker_restart() {
    let mut redis = RedisServer::start();
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "poa");
    let up = upstream();
    let config = format!(
        "[redis]\nurl = \"{}\"\ncommand_timeout_ms = 200\nconnect_timeout_ms = 100\n{}",
        redis.url(),
        tenant(&static_key(&key), up.port)
    );
    let mut broker = Broker::start(&pki, &config, &[]);
    let agent = Agent::new(&pki, &key, &broker);
    let a = agent.clone();
    let load = Load::start(RATE, move |seq| {
        let jti = format!("fault-matrix-{seq}");
        a.call(&a.mint(&["--jti", &jti]), "/api/redis", 5)
    });
    assert!(load
        .recovery(Instant::now(), RECOVERY_BOUND, |o| o.status == 200)
        .is_some());
    // Spent before the fault: a Redis restarted empty has forgotten them.
    let spent: Vec<String> = (0..3)
        .map(|i| {
            let t = agent.mint(&["--jti", &format!("spent-before-{i}")]);
            let a = agent.call(&t, "/api/redis", 5);
            assert_eq!(a.status, 200, "{a:?}");
            t
        })
        .collect();

    let killed = Instant::now();
    redis.kill();
    std::thread::sleep(FAULT);
    let during = load.between(killed, Instant::now());
    assert_all(&during, 503, "replay_store_unavailable", "redis killed");
    let r = ready(&broker);
    assert_eq!(r.0, 503);
    assert_eq!(r.1["reason"], "redis (shared state) is not reachable");
    assert_eq!(failing(&r.1), vec!["redis".to_string()]);
    assert_eq!(metric(&broker.metrics(), "atb_redis_up"), Some(0.0));
    assert_eq!(gauge(&broker, "redis", ""), Some(0.0));

    let back = Instant::now();
    redis.restart();
    let recovery = load
        .recovery(back, RECOVERY_BOUND, |o| o.status == 200)
        .expect("200s again within the bound, without restarting the broker");
    figure(
        "Redis",
        "killed (SIGKILL), then restarted empty",
        &during,
        &r,
        recovery,
    );
    // The mandates spent before the restart are not admitted again: the
    // restarted Redis has no marks for them, but they were issued before
    // its memory began.
    for t in &spent {
        let a = agent.call(t, "/api/redis", 5);
        assert_eq!(
            (a.status, a.error().as_str()),
            (503, "replay_store_unavailable"),
            "a mandate spent before Redis lost its data: {a:?}"
        );
        assert!(
            a.json()["reason"].as_str().unwrap().contains("remembers"),
            "{a:?}"
        );
    }

    // Redis hangs (SIGSTOP): each command times out (200 ms): 503 again,
    // answered at once, never a hang; resumed (SIGCONT), 200s again.
    let pid = redis.pid().expect("redis running").to_string();
    let frozen = Instant::now();
    run(std::process::Command::new("kill").args(["-STOP", &pid]));
    std::thread::sleep(FAULT);
    let hung = load.between(frozen, Instant::now());
    assert_all(&hung, 503, "replay_store_unavailable", "redis hanging");
    let slowest = hung.iter().map(Outcome::took).max().unwrap();
    assert!(
        slowest < Duration::from_secs(3),
        "never a hang: {slowest:?}"
    );
    let r = ready(&broker);
    assert_eq!((r.0, failing(&r.1)), (503, vec!["redis".to_string()]));
    let thawed = Instant::now();
    run(std::process::Command::new("kill").args(["-CONT", &pid]));
    let recovery = load
        .recovery(thawed, RECOVERY_BOUND, |o| o.status == 200)
        .expect("200s again within the bound once Redis resumes");
    figure(
        "Redis",
        "hanging (SIGSTOP), then resumed",
        &hung,
        &r,
        recovery,
    );

    std::thread::sleep(Duration::from_secs(1));
    let outcomes = load.stop();
    // Every 200 since the restart left its mark in Redis (the earlier
    // marks died with the process).
    let since: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.started >= back && o.status == 200)
        .collect();
    assert!(!since.is_empty());
    for o in since {
        let k = format!("atb:{{acme}}:jti:fault-matrix-{}", o.seq);
        assert_eq!(
            redis.cli(&["exists", &k]),
            "1",
            "{k}: a 200 without a replay mark"
        );
    }
    assert!(eventually(Duration::from_secs(5), || {
        let r = ready(&broker);
        r.0 == 200 && failing(&r.1).is_empty()
    }));
    assert!(broker.alive());
}
