//! Brokers sharing state on real Redis processes (single, Sentinel,
//! Cluster): exactly-once mandates across replicas, shared revocations and
//! rate limits, fail closed while Redis is away and recovery without a
//! restart.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use actix_web::{web, App, HttpResponse};
use common::redis_procs::{RedisCluster, RedisServer, SentinelSet};
use common::*;

const ACME: &str = "spiffe://acme.example/agent/demo";
const LEG: &str = r#"{"jurisdiction":"EU","accountable_party":{"type":"user","id":"owner"}}"#;

fn start_upstream() -> u16 {
    serve_app!(|| App::new().default_service(web::to(|| async { HttpResponse::Ok().body("ok") })))
}

/// One tenant (acme) with a `crm` connector; `redis` is the `[redis]`
/// section; `connector_extra` is TOML added to the connector (a rate
/// limit) or after it (policy data).
fn config(key: &SigningKey, upstream: u16, redis: &str, connector_extra: &str) -> String {
    format!(
        r#"
{redis}

[[tenants]]
id = "acme"
trust_domain = "acme.example"
requests_per_second = 1000.0
burst = 2000
[tenants.poa]
public_key_files = ["{pubkey}"]
[[tenants.connectors]]
id = "crm"
upstream_url = "http://127.0.0.1:{upstream}"
egress_allowlist = ["/api/"]
{connector_extra}
[[tenants.connectors.routes]]
action = "crm.contact.read"
methods = ["GET"]
path = "/api/{{*rest}}"
"#,
        pubkey = key.public.display(),
    )
}

struct Replicas {
    pki: Pki,
    key: SigningKey,
    brokers: Vec<Broker>,
}

impl Replicas {
    /// `n` brokers on the same configuration (`redis` section).
    fn start(n: usize, redis: &str, connector_rate: &str) -> Self {
        Self::start_env(n, redis, connector_rate, &[])
    }

    fn start_env(n: usize, redis: &str, connector_rate: &str, env: &[(&str, &str)]) -> Self {
        let pki = Pki::new(&[]);
        let key = SigningKey::new(pki.dir.path(), "poa");
        let upstream = start_upstream();
        let toml = config(&key, upstream, redis, connector_rate);
        let brokers = (0..n).map(|_| Broker::start(&pki, &toml, env)).collect();
        Self { pki, key, brokers }
    }

    fn mint(&self) -> String {
        self.key.mint(
            ACME,
            "crm.contact.read",
            &["--leg", LEG, "--con", r#"{"connector":"crm"}"#],
        )
    }

    fn call(&self, broker: usize, token: &str) -> Answer {
        let auth = format!("Authorization: Bearer {token}");
        agent_get(
            &self.brokers[broker],
            &self.pki,
            Some("acme-agent"),
            "/api/x",
            &["-H", &auth],
        )
    }

    /// Sends `token` `n` times at once, spread over every broker; the
    /// status codes.
    fn race(&self, token: &str, n: usize) -> Vec<String> {
        let auth = format!("Authorization: Bearer {token}");
        let children: Vec<_> = (0..n)
            .map(|i| {
                let broker = &self.brokers[i % self.brokers.len()];
                Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                    .args(["--max-time", "20", "--cacert"])
                    .arg(self.pki.ca())
                    .arg("--cert")
                    .arg(self.pki.path("acme-agent.crt"))
                    .arg("--key")
                    .arg(self.pki.path("acme-agent.key"))
                    .args(["-H", &auth, &broker.url("/api/x")])
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        children
            .into_iter()
            .map(|c| String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap())
            .collect()
    }

    fn ready(&self, broker: usize) -> bool {
        admin(&self.brokers[broker], "GET", "/ready", &[], None).status == 200
    }
}

fn single(url: &str) -> String {
    format!("[redis]\nurl = \"{url}\"\ncommand_timeout_ms = 200\nconnect_timeout_ms = 100\n")
}

fn expect(a: &Answer, status: u16, code: &str) {
    assert_eq!((a.status, a.error().as_str()), (status, code), "{a:?}");
}

/// One mandate sent 64 times at once across the brokers: one 200 and 63
/// `poa_replay`.
fn exactly_one_winner(r: &Replicas) {
    let codes = r.race(&r.mint(), 64);
    assert_eq!(codes.iter().filter(|c| *c == "200").count(), 1, "{codes:?}");
    assert_eq!(
        codes.iter().filter(|c| *c == "403").count(),
        63,
        "{codes:?}"
    );
}

#[test]
fn a_mandate_is_accepted_once_across_two_brokers() {
    let redis = RedisServer::start();
    let r = Replicas::start(2, &single(&redis.url()), "");
    assert!(eventually(Duration::from_secs(5), || r.ready(0) && r.ready(1)));
    let t = r.mint();
    assert_eq!(r.call(0, &t).status, 200);
    expect(&r.call(1, &t), 403, "poa_replay");
    expect(&r.call(0, &t), 403, "poa_replay");
    exactly_one_winner(&r);
    // The mark lives in Redis under the tenant's hash tag, with an expiry.
    let key = format!("atb:{{acme}}:jti:{}", jti_of(&t));
    assert_eq!(redis.cli(&["exists", &key]), "1");
    let ttl: i64 = redis.cli(&["pttl", &key]).parse().unwrap();
    assert!(ttl > 0, "the mark expires ({ttl})");
    let m = r.brokers[1].metrics();
    assert!(metric(&m, "atb_redis_up").is_some_and(|v| v == 1.0), "{m}");
    assert!(
        m.contains("atb_redis_command_seconds_bucket{op=\"admit\""),
        "{m}"
    );
}

fn jti_of(token: &str) -> String {
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

#[test]
fn a_revocation_on_one_broker_refuses_the_mandate_on_the_other_within_a_second() {
    let redis = RedisServer::start();
    let token = "revoke-token-0123456789abcdef";
    let r = Replicas::start_env(2, &single(&redis.url()), "", &[("ATB_ADMIN_TOKEN", token)]);
    let t = r.mint();
    let body = format!(r#"{{"jtis": ["{}"]}}"#, jti_of(&t));
    let auth = format!("Authorization: Bearer {token}");
    let added = admin(
        &r.brokers[0],
        "POST",
        "/admin/tenants/acme/revocations",
        &[&auth, "Content-Type: application/json"],
        Some(&body),
    );
    assert_eq!(added.status, 200, "{added:?}");
    let revoked_at = std::time::Instant::now();
    assert!(eventually(Duration::from_secs(2), || {
        let a = r.call(1, &t);
        a.status == 401 && a.error() == "poa_revoked"
    }));
    assert!(
        revoked_at.elapsed() < Duration::from_millis(1000),
        "seen after {:?}",
        revoked_at.elapsed()
    );
    expect(&r.call(0, &t), 401, "poa_revoked");
    // The other replica lists it too.
    let listed = admin(
        &r.brokers[1],
        "GET",
        "/admin/tenants/acme/revocations",
        &[&auth],
        None,
    );
    assert!(listed.body.contains(&jti_of(&t)), "{listed:?}");
    // `atb revoke` writes to the same store: both replicas refuse.
    let u = r.mint();
    let out = Command::new(ATB)
        .args(["revoke", "--config"])
        .arg(&r.brokers[0].config_path)
        .args(["--tenant", "acme", "--jti", &jti_of(&u)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for b in 0..2 {
        assert!(eventually(Duration::from_secs(2), || {
            let a = r.call(b, &u);
            a.status == 401 && a.error() == "poa_revoked"
        }));
    }
    let unknown = Command::new(ATB)
        .args(["revoke", "--config"])
        .arg(&r.brokers[0].config_path)
        .args(["--tenant", "initech", "--jti", "x"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    // With Redis away the revocation cannot reach the others: refused, not
    // silently applied to one replica only.
    drop(redis);
    let refused = admin(
        &r.brokers[0],
        "POST",
        "/admin/tenants/acme/revocations",
        &[&auth, "Content-Type: application/json"],
        Some(r#"{"jtis": ["another"]}"#),
    );
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.error(), "state_unavailable");
}

#[test]
fn redis_down_refuses_with_503_and_recovers_without_a_restart() {
    let mut redis = RedisServer::start();
    let r = Replicas::start(1, &single(&redis.url()), "");
    assert_eq!(r.call(0, &r.mint()).status, 200);
    // Under load: a client keeps sending fresh mandates while Redis dies.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (stop, log) = (stop.clone(), log.clone());
        let (pki, key_dir, port) = (r.pki.path(""), r.key.private.clone(), r.brokers[0].port);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = SigningKey {
                    private: key_dir.clone(),
                    public: key_dir.clone(),
                }
                .mint(
                    ACME,
                    "crm.contact.read",
                    &["--leg", LEG, "--con", r#"{"connector":"crm"}"#],
                );
                let started = std::time::Instant::now();
                let a = curl(&[
                    "--cacert",
                    &pki.join("ca.crt").display().to_string(),
                    "--cert",
                    &pki.join("acme-agent.crt").display().to_string(),
                    "--key",
                    &pki.join("acme-agent.key").display().to_string(),
                    "-H",
                    &format!("Authorization: Bearer {t}"),
                    &format!("https://localhost:{port}/api/x"),
                ]);
                log.lock()
                    .unwrap()
                    .push((started, std::time::Instant::now(), a.status));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    redis.kill();
    let killed = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(700));
    let restarting = std::time::Instant::now();
    // Every request needs the replay mark: none passes without it.
    for _ in 0..5 {
        let a = r.call(0, &r.mint());
        expect(&a, 503, "replay_store_unavailable");
        assert!(a.header("retry-after").is_some());
    }
    assert!(eventually(Duration::from_secs(3), || !r.ready(0)));
    let m = r.brokers[0].metrics();
    assert_eq!(metric(&m, "atb_redis_up"), Some(0.0), "{m}");
    assert!(
        metric(&m, r#"atb_redis_errors_total{op="admit"}"#).is_some_and(|v| v >= 5.0),
        "{m}"
    );
    redis.restart();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    let log = log.lock().unwrap();
    let during: Vec<u16> = log
        .iter()
        .filter(|(start, end, _)| *start > killed && *end < restarting)
        .map(|(_, _, status)| *status)
        .collect();
    assert!(!during.is_empty(), "the load ran while Redis was down");
    assert!(
        during.iter().all(|s| *s == 503),
        "only 503 while Redis is down: {during:?}"
    );
    assert!(
        log.iter().any(|(_, _, s)| *s == 200),
        "the load succeeded before"
    );
    assert!(eventually(Duration::from_secs(5), || {
        r.call(0, &r.mint()).status == 200
    }));
    assert!(eventually(Duration::from_secs(3), || r.ready(0)));
}

#[test]
fn a_connector_rate_limit_is_shared_by_the_replicas() {
    let redis = RedisServer::start();
    // One request per 100 s, burst 2: the two replicas together admit 2.
    let r = Replicas::start(
        2,
        &single(&redis.url()),
        "rate_limit = { requests_per_second = 0.01, burst = 2 }",
    );
    let mut codes = Vec::new();
    for i in 0..6 {
        let a = r.call(i % 2, &r.mint());
        codes.push(a.status);
        if a.status == 429 {
            expect(&a, 429, "rate_limited");
            assert!(a.header("retry-after").is_some());
        }
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 2, "{codes:?}");
    // A limited request did not spend its mandate.
    let t = r.mint();
    assert_eq!(r.call(0, &t).status, 429);
    redis.cli(&["del", "atb:{acme}:rl:crm"]);
    assert_eq!(r.call(1, &t).status, 200, "the mandate was not spent");
}

#[test]
fn the_password_comes_from_its_file_and_a_wrong_one_fails_closed() {
    let redis = RedisServer::start_with_password("pw-0123456789");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let bad = dir.path().join("bad");
    std::fs::write(&good, "pw-0123456789\n").unwrap();
    std::fs::write(&bad, "wrong\n").unwrap();
    let with = |file: &std::path::Path| {
        format!(
            "{}password_file = \"{}\"\n",
            single(&redis.url()),
            file.display()
        )
    };
    let r = Replicas::start(1, &with(&good), "");
    assert_eq!(r.call(0, &r.mint()).status, 200);
    let r = Replicas::start(1, &with(&bad), "");
    expect(&r.call(0, &r.mint()), 503, "replay_store_unavailable");
    assert!(!r.ready(0));
}

#[test]
fn sentinel_failover_resumes_service_without_accepting_a_mandate_twice() {
    let mut set = SentinelSet::start();
    let sentinels = set
        .sentinel_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let redis = format!(
        "[redis]\nsentinels = [{sentinels}]\nmaster_name = \"atb-master\"\ncommand_timeout_ms = 200\nconnect_timeout_ms = 100\n"
    );
    let r = Replicas::start(2, &redis, "");
    let used: Vec<String> = (0..5).map(|_| r.mint()).collect();
    for t in &used {
        assert_eq!(r.call(0, t).status, 200);
    }
    // Let the replica catch up before the master dies (asynchronous
    // replication: marks written in the last instant could be lost — the
    // operator guide says so; the test checks marks older than that).
    std::thread::sleep(Duration::from_millis(300));
    set.kill_master();
    assert!(set.wait_failover(Duration::from_secs(45)), "no failover");
    assert!(eventually(Duration::from_secs(10), || {
        r.call(1, &r.mint()).status == 200
    }));
    for t in &used {
        for b in 0..2 {
            expect(&r.call(b, t), 403, "poa_replay");
        }
    }
    exactly_one_winner(&r);
}

#[test]
fn a_redis_cluster_runs_the_replay_race() {
    let cluster = RedisCluster::start();
    let nodes = cluster
        .node_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let redis = format!("[redis]\ncluster_nodes = [{nodes}]\ncommand_timeout_ms = 500\n");
    let r = Replicas::start(2, &redis, "");
    assert!(eventually(Duration::from_secs(10), || {
        r.call(0, &r.mint()).status == 200
    }));
    exactly_one_winner(&r);
}

#[test]
fn hourly_action_counts_are_shared_and_denials_are_not_counted() {
    let redis = RedisServer::start();
    let limits = "[tenants.policy_data.rate_limits.per_action]\n\"crm.contact.read\" = 3\n";
    let r = Replicas::start(2, &single(&redis.url()), limits);
    for i in 0..3 {
        assert_eq!(r.call(i % 2, &r.mint()).status, 200, "call {i}");
    }
    for b in 0..2 {
        let a = r.call(b, &r.mint());
        expect(&a, 403, "policy_denied");
        assert!(a.body.contains("rate_limit_exceeded:3/3"), "{a:?}");
    }
    // The denied calls were taken back off the request path.
    assert!(eventually(Duration::from_secs(2), || {
        redis.cli(&["get", "atb:{acme}:use:crm.contact.read"]) == "3"
    }));
}

#[test]
fn rediss_is_verified_with_the_outbound_ca() {
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "poa");
    let (crt, server_key) = pki.openssl_cert(
        "redis",
        "ca",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .arg("--tls-cert-file")
        .arg(&crt)
        .arg("--tls-key-file")
        .arg(&server_key)
        .arg("--tls-ca-cert-file")
        .arg(pki.ca())
        .args(["--tls-auth-clients", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let toml = config(
        &key,
        start_upstream(),
        // Generous timeouts: this test is about trust, and a TLS connect
        // on a loaded host can take longer than the 100 ms of `single`.
        &format!(
            "[redis]\nurl = \"rediss://localhost:{port}\"\ncommand_timeout_ms = 2000\nconnect_timeout_ms = 2000\n"
        ),
        "",
    );
    let ca = pki.ca().display().to_string();
    // Trusted through tls.outbound_ca_file: single use works over TLS;
    // without that CA the server is not trusted: refused, never a pass.
    let brokers = vec![
        Broker::start(&pki, &toml, &[("TLS_OUTBOUND_CA_FILE", &ca)]),
        Broker::start(&pki, &toml, &[]),
    ];
    let r = Replicas { pki, key, brokers };
    let t = r.mint();
    assert_eq!(r.call(0, &t).status, 200);
    expect(&r.call(0, &t), 403, "poa_replay");
    expect(&r.call(1, &r.mint()), 503, "replay_store_unavailable");
    let _ = server.kill();
    let _ = server.wait();
}
