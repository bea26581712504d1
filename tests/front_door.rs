//! The broker's front door over real mTLS: identity, tenants, limits,
//! maintenance, supervision, metrics, logs and shutdown.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// The admin token of brokers started with fault injection (the debug hook
/// needs it too).
const ADMIN_TOKEN: &str = "fault-hook-admin-token-0123";
const ADMIN_AUTH: &str = "Authorization: Bearer fault-hook-admin-token-0123";

/// Asks the debug hook to panic acme's tenant shard.
fn fault_acme(broker: &Broker) -> Answer {
    admin(
        broker,
        "POST",
        "/debug/fault?tenant=acme",
        &[ADMIN_AUTH],
        None,
    )
}

const TENANTS: &str = r#"
[shards]
count = 1
dedicated = ["globex"]

[[tenants]]
id = "acme"
trust_domain = "acme.example"

[[tenants]]
id = "globex"
spiffe_prefix = "spiffe://saas.example/tenants/globex"

[[tenants]]
id = "initech"
enabled = false
trust_domain = "initech.example"
"#;

fn pki() -> Pki {
    Pki::new(&[("initech-agent", "spiffe://initech.example/agent/a")])
}

#[test]
fn health_answers_on_the_agent_port_without_a_client_certificate() {
    let pki = pki();
    let broker = Broker::start(&pki, TENANTS, &[]);
    let a = curl(&["-k", &broker.url("/health")]);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["status"], "ok");
    // The same without -k, verifying the server against the dev CA.
    let a = agent_get(&broker, &pki, None, "/health", &[]);
    assert_eq!(a.status, 200);
}

/// The agent listener speaks HTTP/1.1 only: actix-http's HTTP/2 server has
/// no stream or header-list bounds, so a client without a certificate
/// could queue unbounded answered streams or park megabytes of headers.
/// A client that offers h2 gets http/1.1 by ALPN and is served.
#[test]
fn the_agent_listener_negotiates_http_1_1_only() {
    let pki = pki();
    let broker = Broker::start(&pki, TENANTS, &[]);
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg(broker.url("/health"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.1 200");
    // Offered h2 alone, the handshake names no protocol: no HTTP/2.
    let out = Command::new("openssl")
        .args(["s_client", "-alpn", "h2", "-connect"])
        .arg(format!("127.0.0.1:{}", broker.port))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No ALPN negotiated"), "{text}");
}

/// A client resuming its TLS session on a new connection (curl does, as
/// soon as it opens a second one) is served with the identity of the
/// certificate it first presented; without a session id context OpenSSL
/// ended such handshakes with an `internal_error` alert.
#[test]
fn a_resumed_tls_session_keeps_its_identity() {
    let pki = Pki::new(&[("acme-agent", "spiffe://acme.example/agent/a")]);
    let broker = Broker::start(&pki, TENANTS, &[]);
    let session = pki.dir.path().join("session.pem");
    let connect = |resume: bool| {
        let mut c = Command::new("openssl");
        c.args(["s_client", "-tls1_2", "-ign_eof", "-connect"])
            .arg(format!("127.0.0.1:{}", broker.port))
            .arg("-CAfile")
            .arg(pki.ca())
            .arg("-cert")
            .arg(pki.path("acme-agent.crt"))
            .arg("-key")
            .arg(pki.path("acme-agent.key"))
            .arg(if resume { "-sess_in" } else { "-sess_out" })
            .arg(&session)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
    };
    let first = connect(false);
    assert!(first.contains("\"poa_required\""), "{first}");
    let resumed = connect(true);
    assert!(resumed.contains("Reused, TLSv1.2"), "{resumed}");
    // The identity came with the session: the request passed the SPIFFE
    // step and stopped at the mandate.
    assert!(resumed.contains("\"poa_required\""), "{resumed}");
}

#[test]
fn requests_without_a_valid_spiffe_identity_get_401() {
    let pki = pki();
    let spiffe = "subjectAltName=URI:spiffe://acme.example/agent/x\nextendedKeyUsage=clientAuth\nbasicConstraints=critical,CA:FALSE\n";
    pki.openssl_ca("foreign-ca");
    pki.openssl_cert("foreign", "foreign-ca", spiffe);
    pki.openssl_cert(
        "two-uris",
        "ca",
        "subjectAltName=URI:spiffe://acme.example/a,URI:spiffe://acme.example/b\nextendedKeyUsage=clientAuth\n",
    );
    pki.openssl_cert(
        "no-uri",
        "ca",
        "subjectAltName=DNS:agent.acme.example\nextendedKeyUsage=clientAuth\n",
    );
    pki.openssl_cert(
        "dotdot",
        "ca",
        "subjectAltName=URI:spiffe://acme.example/agent/../admin\nextendedKeyUsage=clientAuth\n",
    );
    pki.openssl_cert(
        "https-uri",
        "ca",
        "subjectAltName=URI:https://acme.example/agent\nextendedKeyUsage=clientAuth\n",
    );
    pki.openssl_cert(
        "server-only",
        "ca",
        "subjectAltName=URI:spiffe://acme.example/agent/x\nextendedKeyUsage=serverAuth\n",
    );
    // Control: the same openssl recipe with a good SAN and our CA passes
    // identity and reaches the PoA step.
    pki.openssl_cert("control", "ca", spiffe);

    let broker = Broker::start(&pki, TENANTS, &[]);
    let cases: &[(Option<&str>, &str)] = &[
        (None, "no client certificate"),
        (Some("foreign"), "not trusted"),
        (Some("two-uris"), "2 URI SANs"),
        (Some("no-uri"), "no URI SAN"),
        (Some("dotdot"), "malformed"),
        (Some("https-uri"), "malformed"),
        (Some("server-only"), "not trusted"),
    ];
    for (agent, why) in cases {
        let a = agent_get(&broker, &pki, *agent, "/api/x", &[]);
        assert_eq!(a.status, 401, "{agent:?}: {a:?}");
        let body = a.json();
        assert_eq!(body["error"], "spiffe_id_required", "{agent:?}");
        assert!(
            body["reason"].as_str().unwrap().contains(why),
            "{agent:?}: {body}"
        );
        assert_eq!(
            body["request_id"].as_str().unwrap(),
            a.header("x-request-id").unwrap(),
            "request id in body and header"
        );
    }
    let a = agent_get(&broker, &pki, Some("control"), "/api/x", &[]);
    assert_eq!(
        (a.status, a.error().as_str()),
        (401, "poa_required"),
        "{a:?}"
    );
    // A refused request with a body still gets its JSON answer (asked for
    // over HTTP/2, served over HTTP/1.1)
    // (the broker reads the unread body before answering instead of
    // resetting the stream).
    let body = pki.dir.path().join("body.bin");
    std::fs::write(&body, vec![b'a'; 20_000]).unwrap();
    let data = format!("@{}", body.display());
    let ca = path_str(&pki.ca());
    for _ in 0..40 {
        let a = curl(&[
            "--http2",
            "--cacert",
            &ca,
            "--data-binary",
            &data,
            &broker.url("/api/x"),
        ]);
        assert_eq!(
            (a.status, a.error().as_str()),
            (401, "spiffe_id_required"),
            "{a:?}"
        );
    }
}

#[test]
fn tenants_are_resolved_from_the_spiffe_id() {
    let pki = pki();
    let broker = Broker::start(&pki, TENANTS, &[]);
    // No tenant owns the trust domain.
    let a = agent_get(&broker, &pki, Some("stranger-agent"), "/api/x", &[]);
    assert_eq!(
        (a.status, a.error().as_str()),
        (403, "unknown_tenant"),
        "{a:?}"
    );
    // A disabled tenant.
    let a = agent_get(&broker, &pki, Some("initech-agent"), "/api/x", &[]);
    assert_eq!(
        (a.status, a.error().as_str()),
        (403, "unknown_tenant"),
        "{a:?}"
    );
    assert!(a.json()["reason"].as_str().unwrap().contains("disabled"));
    // Tenant by trust domain, no PoA.
    let a = agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]);
    assert_eq!(
        (a.status, a.error().as_str()),
        (401, "poa_required"),
        "{a:?}"
    );
    // Tenant by path prefix, with a token no key can verify: fail closed.
    let a = agent_get(
        &broker,
        &pki,
        Some("globex-agent"),
        "/api/x",
        &["-H", "Authorization: Bearer abc.def.ghi"],
    );
    assert_eq!(
        (a.status, a.error().as_str()),
        (401, "poa_invalid"),
        "{a:?}"
    );
    // A non-Bearer Authorization scheme carries no mandate (SPEC §3).
    let a = agent_get(
        &broker,
        &pki,
        Some("acme-agent"),
        "/api/x",
        &["-H", "Authorization: Basic Zm9v"],
    );
    assert_eq!(
        (a.status, a.error().as_str()),
        (401, "poa_required"),
        "{a:?}"
    );

    let m = broker.metrics();
    assert_eq!(
        metric(&m, r#"atb_requests_total{status="denied",tenant="acme"}"#),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"atb_requests_total{status="denied",tenant="globex"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, r#"atb_requests_total{status="denied",tenant="none"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"atb_rejections_total{code="unknown_tenant",tenant="initech"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn metrics_expose_per_actor_series() {
    let pki = pki();
    let broker = Broker::start(&pki, TENANTS, &[]);
    for agent in ["acme-agent", "globex-agent"] {
        agent_get(&broker, &pki, Some(agent), "/api/x", &[]);
    }
    let m = broker.metrics();
    // acme hashes onto shard 0 (the only hashed shard), globex has shard 1.
    for shard in ["0", "1"] {
        let labels = format!(r#"{{actor="tenant_shard",outcome="ok",shard="{shard}"}}"#);
        assert_eq!(
            metric(&m, &format!("atb_actor_messages_total{labels}")),
            Some(1.0),
            "{m}"
        );
        let labels = format!(r#"{{actor="tenant_shard",shard="{shard}"}}"#);
        assert_eq!(
            metric(&m, &format!("atb_actor_mailbox_depth{labels}")),
            Some(0.0)
        );
        assert_eq!(
            metric(&m, &format!("atb_actor_handle_seconds_count{labels}")),
            Some(1.0)
        );
        assert_eq!(
            metric(&m, &format!("atb_actor_restarts_total{labels}")),
            Some(0.0)
        );
    }
    assert!(m.contains("atb_request_duration_seconds_bucket"), "{m}");
    assert!(m.contains(r#"atb_tenant_connections{tenant="acme"}"#));
}

#[test]
fn logs_are_json_lines_with_request_ids() {
    let pki = pki();
    let broker = Broker::start(&pki, TENANTS, &[]);
    let a = agent_get(&broker, &pki, Some("acme-agent"), "/api/logged", &[]);
    let id = a.header("x-request-id").unwrap().to_owned();
    assert!(eventually(Duration::from_secs(5), || broker
        .stderr()
        .contains(&id)));
    let log = broker.stderr();
    let mut found = false;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["span"]["request_id"] == id.as_str() && v["message"] == "request" {
            assert_eq!(v["tenant"], "acme");
            assert_eq!(v["status"], 401);
            assert_eq!(v["error"], "poa_required");
            assert_eq!(v["level"], "INFO");
            found = true;
        }
    }
    assert!(found, "no request event for {id} in:\n{log}");
}

#[test]
fn tenant_connection_limit_is_enforced_and_released() {
    let pki = pki();
    let tenants = TENANTS.replace(
        "id = \"acme\"\ntrust_domain = \"acme.example\"",
        "id = \"acme\"\ntrust_domain = \"acme.example\"\nmax_connections = 1",
    );
    assert_ne!(tenants, TENANTS);
    let broker = Broker::start(&pki, &tenants, &[]);
    let mut holder = hold_connection(&broker, &pki, "acme-agent", "acme");
    let a = agent_get(&broker, &pki, Some("acme-agent-2"), "/api/x", &[]);
    assert_eq!(
        (a.status, a.error().as_str()),
        (429, "connection_limit"),
        "{a:?}"
    );
    assert!(a.header("retry-after").is_some());
    // Another tenant is not affected.
    let a = agent_get(&broker, &pki, Some("globex-agent"), "/api/x", &[]);
    assert_eq!(a.error(), "poa_required");
    // Closing the held connection frees the slot.
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        agent_get(&broker, &pki, Some("acme-agent-2"), "/api/x", &[]).error() == "poa_required"
    }));
    let m = broker.metrics();
    assert_eq!(
        metric(&m, r#"atb_tenant_connections_refused_total{tenant="acme"}"#),
        Some(1.0)
    );
}

#[test]
fn suspending_a_tenant_closes_its_connections_and_refuses_it_until_resumed() {
    let pki = pki();
    let token = "suspend-token-0123456789abcdef";
    let broker = Broker::start(&pki, TENANTS, &[("ATB_ADMIN_TOKEN", token)]);
    let auth = format!("Authorization: Bearer {token}");
    let mut holder = hold_connection(&broker, &pki, "acme-agent", "acme");
    // One request, so the connection is in keep-alive (idle for up to 75 s)
    // rather than waiting for its first request (closed after 5 s).
    holder
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        holder.try_wait().unwrap(),
        None,
        "the connection must be idle, not closed"
    );

    let set = |id: &str, body: &str, headers: &[&str]| {
        admin(
            &broker,
            "POST",
            &format!("/admin/tenants/{id}"),
            headers,
            Some(body),
        )
    };
    let on = r#"{"suspended": true}"#;
    assert_eq!(set("acme", on, &[]).status, 401);
    assert_eq!(set("acme", r#"{"suspended": "yes"}"#, &[&auth]).status, 400);
    assert_eq!(set("nobody", on, &[&auth]).status, 404);
    let r = set("acme", on, &[&auth]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["suspended"], true);
    assert_eq!(r.json()["closed_connections"], 1);

    // The held connection is closed by the broker, not by its client.
    assert!(eventually(Duration::from_secs(10), || holder
        .try_wait()
        .unwrap()
        .is_some()));
    assert!(eventually(Duration::from_secs(10), || {
        metric(
            &broker.metrics(),
            r#"atb_tenant_connections{tenant="acme"}"#,
        ) == Some(0.0)
    }));
    // New requests are refused; another tenant is not affected.
    let a = agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]);
    assert_eq!(
        (a.status, a.error().as_str()),
        (403, "unknown_tenant"),
        "{a:?}"
    );
    assert!(a.json()["reason"].as_str().unwrap().contains("suspended"));
    assert_eq!(
        agent_get(&broker, &pki, Some("globex-agent"), "/api/x", &[]).error(),
        "poa_required"
    );
    let view = admin(&broker, "GET", "/admin/tenants/acme", &[&auth], None).json();
    assert_eq!(view["suspended"], true);
    assert_eq!(view["enabled"], true);
    let m = broker.metrics();
    assert_eq!(
        metric(&m, r#"atb_tenant_suspended{tenant="acme"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, r#"atb_tenant_suspended{tenant="globex"}"#),
        Some(0.0)
    );

    // Resumed: served again.
    let r = set("acme", r#"{"suspended": false}"#, &[&auth]);
    assert_eq!(r.json()["suspended"], false);
    assert_eq!(
        agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]).error(),
        "poa_required"
    );
}

#[test]
fn tenant_rate_limit_answers_429_with_retry_after() {
    let pki = pki();
    let tenants = TENANTS.replace(
        "id = \"acme\"\ntrust_domain = \"acme.example\"",
        "id = \"acme\"\ntrust_domain = \"acme.example\"\nrequests_per_second = 0.01\nburst = 2",
    );
    let broker = Broker::start(&pki, &tenants, &[]);
    for _ in 0..2 {
        let a = agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]);
        assert_eq!(a.error(), "poa_required");
    }
    let a = agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]);
    assert_eq!(
        (a.status, a.error().as_str()),
        (429, "rate_limited"),
        "{a:?}"
    );
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=100).contains(&retry), "retry-after {retry}");
    // Another tenant keeps its own budget.
    assert_eq!(
        agent_get(&broker, &pki, Some("globex-agent"), "/api/x", &[]).error(),
        "poa_required"
    );
}

#[test]
fn maintenance_mode_from_env_and_admin_toggle() {
    let pki = pki();
    let token = "test-admin-token-0123456789";
    let broker = Broker::start(
        &pki,
        TENANTS,
        &[("MAINTENANCE_MODE", "true"), ("ATB_ADMIN_TOKEN", token)],
    );
    let a = agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]);
    assert_eq!(
        (a.status, a.error().as_str()),
        (503, "maintenance"),
        "{a:?}"
    );
    assert_eq!(a.header("retry-after"), Some("5"));
    // Health stays green; readiness reports maintenance but stays ready.
    assert_eq!(curl(&["-k", &broker.url("/health")]).status, 200);
    let r = admin(&broker, "GET", "/ready", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["maintenance"], true);

    // The toggle needs the token.
    let body = Some(r#"{"enabled": false}"#);
    let no = admin(&broker, "POST", "/admin/maintenance", &[], body);
    assert_eq!(
        (no.status, no.error().as_str()),
        (401, "admin_unauthorized")
    );
    let wrong = admin(
        &broker,
        "POST",
        "/admin/maintenance",
        &["Authorization: Bearer wrong-token-0123456789"],
        body,
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(
        agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]).error(),
        "maintenance"
    );

    let auth = format!("Authorization: Bearer {token}");
    let bad = admin(
        &broker,
        "POST",
        "/admin/maintenance",
        &[&auth],
        Some("{\"enabled\":\"no\"}"),
    );
    assert_eq!((bad.status, bad.error().as_str()), (400, "bad_request"));
    let ok = admin(
        &broker,
        "POST",
        "/admin/maintenance",
        &[&auth, "Content-Type: application/json"],
        body,
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["maintenance"], false);
    assert_eq!(
        agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]).error(),
        "poa_required"
    );
    let on = admin(
        &broker,
        "POST",
        "/admin/maintenance",
        &[&auth],
        Some(r#"{"enabled": true}"#),
    );
    assert_eq!(on.status, 200);
    assert_eq!(
        agent_get(&broker, &pki, Some("globex-agent"), "/api/x", &[]).error(),
        "maintenance"
    );
}

#[test]
fn admin_api_is_disabled_without_a_token() {
    let pki = pki();
    let broker = Broker::start(&pki, TENANTS, &[]);
    let a = admin(
        &broker,
        "POST",
        "/admin/maintenance",
        &["Authorization: Bearer anything-at-all-0123"],
        Some(r#"{"enabled": true}"#),
    );
    assert_eq!((a.status, a.error().as_str()), (404, "admin_disabled"));
    // The fault hook does not exist unless explicitly enabled.
    assert_eq!(fault_acme(&broker).status, 404);
    assert_eq!(
        agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]).error(),
        "poa_required"
    );
}

#[test]
fn a_faulting_shard_restarts_and_other_tenants_are_unaffected() {
    let pki = pki();
    let broker = Broker::start(
        &pki,
        TENANTS,
        &[
            ("ATB_DEBUG_FAULT_INJECTION", "true"),
            ("ATB_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    // Warm both tenants' shards.
    for agent in ["acme-agent", "globex-agent"] {
        assert_eq!(
            agent_get(&broker, &pki, Some(agent), "/api/x", &[]).error(),
            "poa_required"
        );
    }
    // Crash acme's shard (shard 0) while globex (dedicated shard 1) is in use.
    let f = fault_acme(&broker);
    assert_eq!(f.status, 200, "{f:?}");
    assert_eq!(f.json()["shard"], 0);
    assert!(
        f.json()["result"].as_str().unwrap().contains("failed"),
        "{f:?}"
    );

    let mut broker = broker;
    assert!(broker.alive(), "the process must survive a shard fault");
    assert_eq!(
        agent_get(&broker, &pki, Some("globex-agent"), "/api/x", &[]).error(),
        "poa_required"
    );
    // The crashed shard serves again after its supervised restart.
    assert!(eventually(Duration::from_secs(5), || {
        agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]).error() == "poa_required"
    }));
    let m = broker.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_actor_restarts_total{actor="tenant_shard",shard="0"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"atb_actor_restarts_total{actor="tenant_shard",shard="1"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"atb_actor_messages_total{actor="tenant_shard",outcome="fault",shard="0"}"#
        ),
        Some(1.0)
    );
    // Repeated faults keep being contained.
    for _ in 0..3 {
        assert_eq!(fault_acme(&broker).status, 200);
    }
    assert!(broker.alive());
    assert_eq!(
        agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]).error(),
        "poa_required"
    );
    assert_eq!(
        metric(
            &broker.metrics(),
            r#"atb_actor_restarts_total{actor="tenant_shard",shard="0"}"#
        ),
        Some(4.0)
    );
}

#[test]
fn sigterm_turns_readiness_off_drains_and_exits_zero() {
    let pki = pki();
    let mut broker = Broker::start(&pki, TENANTS, &[("ATB_DRAIN_DELAY_SECONDS", "2")]);
    assert_eq!(admin(&broker, "GET", "/ready", &[], None).status, 200);
    sigterm(&broker);
    // During the drain delay: not ready, but still serving.
    assert!(eventually(Duration::from_secs(2), || {
        let r = admin(&broker, "GET", "/ready", &[], None);
        r.status == 503 && r.json()["reason"] == "draining"
    }));
    assert_eq!(
        agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]).error(),
        "poa_required"
    );
    assert_eq!(
        broker.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        broker.stderr()
    );
    assert!(broker.stderr().contains("broker stopped"));
}

fn sigterm(broker: &Broker) {
    let sent = Command::new("kill")
        .args(["-TERM", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// `atb audit verify FILE`: (success, stdout + stderr).
fn audit_verify(file: &std::path::Path) -> (bool, String) {
    audit_verify_with(file, &[])
}

fn audit_verify_with(file: &std::path::Path, flags: &[&str]) -> (bool, String) {
    let (code, text) = common::audit_verify(file, flags);
    (code == 0, text)
}

#[test]
fn audit_lines_form_a_hash_chain_that_atb_audit_verify_checks() {
    let pki = pki();
    let mut broker = Broker::start(&pki, TENANTS, &[]);
    for agent in ["acme-agent", "globex-agent", "acme-agent"] {
        agent_get(&broker, &pki, Some(agent), "/api/x", &[]);
    }
    sigterm(&broker);
    assert_eq!(broker.wait_exit(Duration::from_secs(20)), Some(0));
    let events = broker.audit();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2]["chain"], "broker");
    assert_eq!(events[2]["seq"], 2);
    assert_eq!(events[2]["prev"], events[1]["hash"]);
    let (ok, out) = audit_verify(&broker.stdout_path);
    assert!(ok, "{out}");
    assert!(out.contains("chain broker: 3 lines"), "{out}");

    // Any edit is found, with its line.
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::read_to_string(&broker.stdout_path).unwrap();
    let tampered = dir.path().join("tampered.jsonl");
    std::fs::write(&tampered, log.replacen("\"deny\"", "\"allow\"", 2)).unwrap();
    let (ok, out) = audit_verify(&tampered);
    assert!(!ok);
    assert!(out.contains("broken at line 1"), "{out}");
    let mut lines: Vec<&str> = log.lines().collect();
    lines.remove(1);
    std::fs::write(&tampered, lines.join("\n")).unwrap();
    let (ok, out) = audit_verify(&tampered);
    assert!(!ok && out.contains("broken at line 2"), "{out}");
}

#[test]
fn a_file_audit_sink_continues_its_chain_across_restarts() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let env = [
        ("AUDIT_SINK", "file"),
        ("AUDIT_FILE", file.to_str().unwrap()),
    ];
    for round in 0..2 {
        let mut broker = Broker::start(&pki, TENANTS, &env);
        agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]);
        agent_get(&broker, &pki, Some("globex-agent"), "/api/x", &[]);
        sigterm(&broker);
        assert_eq!(broker.wait_exit(Duration::from_secs(20)), Some(0));
        assert!(
            broker.audit().is_empty(),
            "round {round}: nothing on stdout"
        );
    }
    let (ok, out) = audit_verify(&file);
    assert!(ok, "{out}");
    assert!(out.contains("chain broker: 4 lines, 1 start"), "{out}");
    let text = std::fs::read_to_string(&file).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["seq"], 3);

    // A writer that died mid-line: verify reports the torn tail apart
    // (exit 3); the next run cuts it off into FILE.torn and continues the
    // chain from the last complete line.
    let fragment = "{\"chain\":\"broker\",\"seq\":4,\"pre";
    std::fs::write(&file, format!("{text}{fragment}")).unwrap();
    let out = Command::new(ATB)
        .args(["audit", "verify"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("torn tail: line 5"));
    let mut broker = Broker::start(&pki, TENANTS, &env);
    agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]);
    sigterm(&broker);
    assert_eq!(broker.wait_exit(Duration::from_secs(20)), Some(0));
    let text = std::fs::read_to_string(&file).unwrap();
    let next: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(next["seq"], 4);
    assert_eq!(next["prev"], last["hash"]);
    assert!(next.get("restart").is_none());
    let (ok, out) = audit_verify(&file);
    assert!(ok, "{out}");
    assert!(out.contains("chain broker: 5 lines, 1 start"), "{out}");
    let torn = dir.path().join("audit.jsonl.torn");
    assert_eq!(
        std::fs::read_to_string(torn).unwrap(),
        format!("{fragment}\n")
    );
    // Lines cut out are still found.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(2);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let (ok, _) = audit_verify_with(&file, &["--accept-linked-restarts"]);
    assert!(!ok);
}

/// What a collector kept: (Authorization header, body) per accepted post.
type Posts = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// An audit collector that refuses its first `refuse` posts with 503 and
/// keeps the bodies (and Authorization headers) of the rest.
fn start_collector(refuse: usize) -> (u16, Posts) {
    use actix_web::{web, App, HttpRequest, HttpResponse};
    use std::sync::Arc;
    let kept: Posts = Arc::default();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let store = kept.clone();
    let port = serve_app!(move || {
        let (store, seen) = (store.clone(), seen.clone());
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let (store, seen) = (store.clone(), seen.clone());
            async move {
                if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < refuse {
                    return HttpResponse::ServiceUnavailable().finish();
                }
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                store
                    .lock()
                    .unwrap()
                    .push((auth, String::from_utf8_lossy(&body).into_owned()));
                HttpResponse::NoContent().finish()
            }
        }))
    });
    (port, kept)
}

#[test]
fn an_http_audit_sink_retries_until_the_collector_takes_every_line() {
    let pki = pki();
    let (port, kept) = start_collector(2);
    let url = format!("http://127.0.0.1:{port}/ingest");
    let env = [
        ("AUDIT_SINK", "http"),
        ("AUDIT_SINK_URL", url.as_str()),
        ("AUDIT_SINK_AUTH", "Bearer collector-token"),
    ];
    let mut broker = Broker::start(&pki, TENANTS, &env);
    for agent in ["acme-agent", "globex-agent", "acme-agent"] {
        agent_get(&broker, &pki, Some(agent), "/api/x", &[]);
    }
    // The collector refused twice; the lines arrive anyway, in order.
    let lines = || -> String {
        kept.lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    };
    assert!(eventually(Duration::from_secs(15), || lines()
        .lines()
        .count()
        == 3));
    assert!(kept
        .lock()
        .unwrap()
        .iter()
        .all(|(auth, _)| auth == "Bearer collector-token"));
    let dir = tempfile::tempdir().unwrap();
    let received = dir.path().join("received.jsonl");
    std::fs::write(&received, lines()).unwrap();
    let (ok, out) = audit_verify(&received);
    assert!(ok && out.contains("chain broker: 3 lines"), "{out}");
    let m = broker.metrics();
    assert!(
        metric(&m, "atb_audit_write_failures_total").unwrap() >= 2.0,
        "{m}"
    );
    assert_eq!(metric(&m, "atb_audit_queue_depth"), Some(0.0), "{m}");
    sigterm(&broker);
    assert_eq!(broker.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(broker.audit().is_empty(), "nothing on stdout");
    assert!(
        broker.stderr().contains("audit flush failed"),
        "{}",
        broker.stderr()
    );
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let check = |text: &str, env: &[(&str, &str)], want: &str| {
        std::fs::write(&path, text).unwrap();
        let mut cmd = Command::new(ATB);
        cmd.args(["broker", "--check", "--config"])
            .arg(&path)
            .env_remove("ATB_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {text}");
        assert!(err.contains(want), "wanted {want:?} in {err:?}");
    };
    let tls = "[tls]\ncert_file = \"a\"\nkey_file = \"b\"\nclient_ca_file = \"c\"\n";
    check("[broker]\nlisten_adr = \"x\"\n", &[], "listen_adr");
    check("", &[], "tls.cert_file");
    check(
        &format!("{tls}[[tenants]]\nid = \"Bad Id\"\ntrust_domain = \"a.example\"\n"),
        &[],
        "tenants[0].id",
    );
    check(tls, &[("MAINTENANCE_MODE", "perhaps")], "MAINTENANCE_MODE");
    check(tls, &[], "tls.cert_file a");
    // A tenant's client CA bundle must be readable and hold a certificate.
    let not_pem = dir.path().join("not-pem.crt");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    for bundle in [not_pem, dir.path().join("missing.crt")] {
        check(
            &format!(
                "{tls}[[tenants]]\nid = \"a\"\ntrust_domain = \"a.example\"\n[[tenants]]\nid = \"b\"\ntrust_domain = \"b.example\"\nclient_ca_file = \"{}\"\n",
                bundle.display()
            ),
            &[],
            "tenants[1].client_ca_file",
        );
    }
}

#[test]
fn a_restarted_shard_does_not_hand_out_a_fresh_burst() {
    let pki = pki();
    let tenants = r#"
[shards]
count = 1

[[tenants]]
id = "acme"
trust_domain = "acme.example"
requests_per_second = 0.05
burst = 3
"#;
    let broker = Broker::start(
        &pki,
        tenants,
        &[
            ("ATB_DEBUG_FAULT_INJECTION", "true"),
            ("ATB_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    let call = || agent_get(&broker, &pki, Some("acme-agent"), "/api/x", &[]);
    for _ in 0..3 {
        assert_eq!(call().error(), "poa_required");
    }
    assert_eq!(call().error(), "rate_limited");
    let f = fault_acme(&broker);
    assert!(
        f.json()["result"].as_str().unwrap().contains("failed"),
        "{f:?}"
    );
    // The shard is back (a restart was counted) and the tenant is still
    // out of credit: the fault did not refill its bucket.
    assert!(eventually(Duration::from_secs(5), || {
        metric(
            &broker.metrics(),
            r#"atb_actor_restarts_total{actor="tenant_shard",shard="0"}"#,
        ) == Some(1.0)
    }));
    for _ in 0..3 {
        assert_eq!(call().error(), "rate_limited");
    }
}

#[test]
fn mutating_admin_routes_need_an_operator_certificate_when_operators_are_configured() {
    let pki = Pki::new(&[("operator", "spiffe://ops.example/admin")]);
    let token = "operator-token-0123456789abcdef";
    let port = free_port();
    let broker = Broker::start(
        &pki,
        &format!(
            "[admin]\noperator_ids = [\"spiffe://ops.example/admin\"]\noperator_listen_addr = \"127.0.0.1:{port}\"\n{TENANTS}"
        ),
        &[("ATB_ADMIN_TOKEN", token)],
    );
    let auth = format!("Authorization: Bearer {token}");
    let on = r#"{"enabled": true}"#;
    // The plain admin listener: reads work, writes are refused even with
    // the token.
    let r = admin(&broker, "GET", "/admin/maintenance", &[&auth], None);
    assert_eq!(r.status, 200, "{r:?}");
    let r = admin(&broker, "POST", "/admin/maintenance", &[&auth], Some(on));
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "operator_mtls_required"),
        "{r:?}"
    );
    // The operator listener, with curl as the operator.
    let operator = |cert: Option<&str>, headers: &[&str]| {
        let url = format!("https://localhost:{port}/admin/maintenance");
        let ca = pki.ca().display().to_string();
        let mut args = vec!["--cacert".to_string(), ca, "-X".into(), "POST".into()];
        if let Some(c) = cert {
            args.push("--cert".into());
            args.push(pki.path(&format!("{c}.crt")).display().to_string());
            args.push("--key".into());
            args.push(pki.path(&format!("{c}.key")).display().to_string());
        }
        for h in headers {
            args.push("-H".into());
            args.push(h.to_string());
        }
        args.extend(["--data".to_string(), on.to_string(), url]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs)
    };
    let ct = "Content-Type: application/json";
    let r = operator(Some("operator"), &[&auth, ct]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["maintenance"], true, "{r:?}");
    // An agent's certificate, no certificate, or no token: refused.
    let r = operator(Some("acme-agent"), &[&auth, ct]);
    assert_eq!(r.error(), "operator_mtls_required", "{r:?}");
    let r = operator(None, &[&auth, ct]);
    assert_eq!(r.error(), "operator_mtls_required", "{r:?}");
    let r = operator(Some("operator"), &[ct]);
    assert_eq!(r.status, 401, "{r:?}");
}

/// Issue 12.6: a tenant naming its own client CA bundle accepts only
/// certificates that chain to it; another tenant's CA cannot mint its
/// SPIFFE IDs, although the handshake trusts every configured CA.
#[test]
fn a_tenant_ca_vouches_only_for_its_own_tenant() {
    const TOKEN: &str = "tenant-ca-admin-token-0123456789";
    let auth = format!("Authorization: Bearer {TOKEN}");
    let pki = Pki::new(&[]);
    let san = |id: &str| {
        format!("subjectAltName=URI:{id}\nextendedKeyUsage=clientAuth\nbasicConstraints=critical,CA:FALSE\n")
    };
    pki.openssl_ca("ca-a");
    pki.openssl_ca("ca-b");
    pki.openssl_ca("ca-stranger");
    pki.openssl_cert("a-agent", "ca-a", &san("spiffe://tenant-a.example/agent"));
    pki.openssl_cert("b-agent", "ca-b", &san("spiffe://tenant-b.example/agent"));
    pki.openssl_cert("g-agent", "ca", &san("spiffe://tenant-g.example/agent"));
    // Trusted by the handshake, but issued by the wrong tenant's CA (or by
    // the global CA for a tenant with a bundle of its own).
    pki.openssl_cert("a-as-b", "ca-a", &san("spiffe://tenant-b.example/agent"));
    pki.openssl_cert("a-as-g", "ca-a", &san("spiffe://tenant-g.example/agent"));
    pki.openssl_cert("global-as-a", "ca", &san("spiffe://tenant-a.example/agent"));
    pki.openssl_cert(
        "stranger",
        "ca-stranger",
        &san("spiffe://tenant-a.example/x"),
    );
    // b's bundle is a copy, so the test can rewrite it.
    let b_bundle = pki.path("b-bundle.pem");
    std::fs::copy(pki.path("ca-b.crt"), &b_bundle).unwrap();
    let tenants = format!(
        r#"
[[tenants]]
id = "a"
trust_domain = "tenant-a.example"
client_ca_file = "{a}"

[[tenants]]
id = "b"
trust_domain = "tenant-b.example"
client_ca_file = "{b}"

[[tenants]]
id = "g"
trust_domain = "tenant-g.example"
"#,
        a = pki.path("ca-a.crt").display(),
        b = b_bundle.display(),
    );
    let broker = Broker::start(
        &pki,
        &tenants,
        &[
            ("ATB_ADMIN_TOKEN", TOKEN),
            ("ATB_CONFIG_WATCH_SECONDS", "0"),
        ],
    );
    let call = |agent: &str| agent_get(&broker, &pki, Some(agent), "/api/x", &[]);
    let served = |agent: &str| {
        let a = call(agent);
        assert_eq!(
            (a.status, a.error().as_str()),
            (401, "poa_required"),
            "{agent}: {a:?}"
        );
    };
    let refused = |agent: &str, why: &str| {
        let a = call(agent);
        assert_eq!(
            (a.status, a.error().as_str()),
            (401, "spiffe_id_required"),
            "{agent}: {a:?}"
        );
        let reason = a.json()["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains(why), "{agent}: {reason}");
        a.header("x-request-id").unwrap().to_owned()
    };
    served("a-agent");
    served("b-agent");
    // A tenant without client_ca_file keeps tls.client_ca_file.
    served("g-agent");
    let wrong = "not trusted for its SPIFFE ID";
    let forged = refused("a-as-b", wrong);
    refused("a-as-g", wrong);
    refused("global-as-a", wrong);
    // A CA nobody configured fails the handshake's verification as before.
    refused("stranger", "not trusted");
    let m = broker.metrics();
    assert_eq!(
        metric(&m, r#"atb_tenant_wrong_issuer_total{tenant="b"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, r#"atb_tenant_connections{tenant="b"}"#),
        Some(0.0)
    );
    // The forged request never reached b: logged without a tenant.
    assert!(eventually(Duration::from_secs(5), || broker
        .stderr()
        .contains(&forged)));
    let logged = broker
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["span"]["request_id"] == forged.as_str() && v["message"] == "request")
        .expect("request event");
    assert_eq!(logged["tenant"], "none", "{logged}");

    // Reload with b's bundle rewritten to a's CA (a shared bundle): b's
    // live connections are closed, then a's CA vouches for b and b's old
    // CA no longer does.
    let mut holder = hold_connection(&broker, &pki, "b-agent", "b");
    std::fs::copy(pki.path("ca-a.crt"), &b_bundle).unwrap();
    let r = admin(&broker, "POST", "/admin/config/reload", &[&auth], None);
    assert_eq!(
        (r.status, r.json()["changed"].clone()),
        (200, serde_json::json!(true)),
        "{r:?}"
    );
    assert!(eventually(Duration::from_secs(10), || matches!(
        holder.try_wait(),
        Ok(Some(_))
    )));
    served("a-as-b");
    refused("b-agent", wrong);
    served("a-agent");

    // A bad bundle is refused with its key named; the last good one stays.
    std::fs::write(&b_bundle, "no certificate here").unwrap();
    let r = admin(&broker, "POST", "/admin/config/reload", &[&auth], None);
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("tenants[1].client_ca_file"),
        "{r:?}"
    );
    served("a-as-b");
    refused("b-agent", wrong);
}

/// The file watch notices a tenant's client CA bundle rewritten in place
/// (e.g. a rotated Kubernetes Secret) without any change to the config file.
#[test]
fn the_config_watch_picks_up_a_rewritten_tenant_bundle() {
    let pki = Pki::new(&[]);
    let san = |id: &str| format!("subjectAltName=URI:{id}\nextendedKeyUsage=clientAuth\n");
    pki.openssl_ca("ca-old");
    pki.openssl_ca("ca-new");
    pki.openssl_cert(
        "old-agent",
        "ca-old",
        &san("spiffe://tenant-b.example/agent"),
    );
    pki.openssl_cert(
        "new-agent",
        "ca-new",
        &san("spiffe://tenant-b.example/agent"),
    );
    // Both CAs are known to the handshake (from the start); b's own
    // bundle names the old one.
    let known = pki.path("known.pem");
    let mut both = std::fs::read(pki.path("ca-old.crt")).unwrap();
    both.extend(std::fs::read(pki.path("ca-new.crt")).unwrap());
    std::fs::write(&known, both).unwrap();
    let b_bundle = pki.path("b-bundle.pem");
    std::fs::copy(pki.path("ca-old.crt"), &b_bundle).unwrap();
    let tenants = format!(
        "[[tenants]]\nid = \"known\"\ntrust_domain = \"known.example\"\nclient_ca_file = \"{}\"\n\n[[tenants]]\nid = \"b\"\ntrust_domain = \"tenant-b.example\"\nclient_ca_file = \"{}\"\n",
        known.display(),
        b_bundle.display()
    );
    let broker = Broker::start(&pki, &tenants, &[("ATB_CONFIG_WATCH_SECONDS", "1")]);
    let code = |agent: &str| {
        agent_get(&broker, &pki, Some(agent), "/api/x", &[])
            .error()
            .to_owned()
    };
    assert_eq!(code("old-agent"), "poa_required");
    assert_eq!(code("new-agent"), "spiffe_id_required");
    // Rotated in place; the config file itself is untouched.
    std::fs::copy(pki.path("ca-new.crt"), &b_bundle).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || code("new-agent")
            == "poa_required"),
        "{}",
        broker.stderr()
    );
    assert_eq!(code("old-agent"), "spiffe_id_required");
}
