//! Memory bounds at the HTTP level (README "Memory bounds"): the broker's
//! total connection bound, filled with held mTLS connections, and the
//! JWKS document bound (what a tenant's key cache may take in). The other
//! tables are filled by unit tests beside their code, and the per-tenant
//! connection and replay bounds by `front_door` and `pipeline`.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use actix_web::{web, App, HttpResponse};
use common::*;

/// A broker with `broker.max_connections_per_worker = 2` and one worker.
fn start(pki: &Pki) -> Broker {
    Broker::start_with(
        pki,
        "max_connections_per_worker = 2",
        r#"
[[tenants]]
id = "acme"
trust_domain = "acme.example"

[[tenants]]
id = "globex"
spiffe_prefix = "spiffe://saas.example/tenants/globex"
"#,
        &[],
    )
}

/// An mTLS connection of `agent` held open by `openssl s_client`, after one
/// request (so it idles in keep-alive rather than being closed as a
/// connection that never sent one).
fn hold(pki: &Pki, port: u16, agent: &str) -> std::process::Child {
    let mut holder = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(pki.path(&format!("{agent}.crt")))
        .arg("-key")
        .arg(pki.path(&format!("{agent}.key")))
        .arg("-CAfile")
        .arg(pki.ca())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    holder
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    // The answer's status line: the connection is established and served.
    let mut out = holder.stdout.take().unwrap();
    let mut first = [0u8; 12];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    holder
}

/// `GET /health` as `agent` within `seconds`: the status, or 0 when no
/// answer came in time.
fn health(pki: &Pki, port: u16, agent: &str, seconds: &str) -> u16 {
    let url = format!("https://localhost:{port}/health");
    let cert = pki.path(&format!("{agent}.crt"));
    let key = pki.path(&format!("{agent}.key"));
    let ca = pki.ca();
    curl(&[
        "--max-time",
        seconds,
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        &url,
    ])
    .status
}

#[test]
fn the_total_connection_bound_holds_new_connections_until_one_closes() {
    let pki = Pki::new(&[]);
    let broker = start(&pki);
    let port = broker.port;
    assert_eq!(health(&pki, port, "globex-agent", "10"), 200);
    // Two live connections (two tenants, each under its own limit) fill
    // the worker's bound: a third connection is not served…
    let mut first = hold(&pki, port, "acme-agent");
    let mut second = hold(&pki, port, "globex-agent");
    assert_eq!(health(&pki, port, "acme-agent", "2"), 0);
    // …until one of the held ones closes.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(eventually(Duration::from_secs(10), || health(
        &pki,
        port,
        "acme-agent",
        "5"
    ) == 200));
    second.kill().unwrap();
    second.wait().unwrap();
}

/// Serves the file `jwks` (re-read on every request) at `/jwks.json`.
fn serve_file(jwks: std::path::PathBuf) -> u16 {
    serve_app!(move || {
        let jwks = jwks.clone();
        App::new().route(
            "/jwks.json",
            web::get().to(move || {
                let body = std::fs::read(&jwks).unwrap_or_default();
                async move {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(body)
                }
            }),
        )
    })
}

#[test]
fn a_jwks_document_over_256_kib_is_not_taken_in() {
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "jwks-key");
    let raw = {
        let pem = std::fs::read(&key.public).unwrap();
        let der = openssl::pkey::PKey::public_key_from_pem(&pem)
            .unwrap()
            .raw_public_key()
            .unwrap();
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, der)
    };
    let jwk =
        |kid: String| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": raw});
    // 3,000 keys: about 330 KiB, over the 256 KiB a fetch reads.
    let big: Vec<_> = (0..3_000).map(|i| jwk(format!("key-{i:05}"))).collect();
    let file = pki.path("jwks.json");
    let doc = serde_json::json!({ "keys": big }).to_string();
    assert!(doc.len() > 256 * 1024, "{}", doc.len());
    std::fs::write(&file, doc).unwrap();
    let jwks = serve_file(file.clone());
    let config = format!(
        r#"
[[tenants]]
id = "acme"
trust_domain = "acme.example"
[tenants.poa]
jwks_url = "http://127.0.0.1:{jwks}/jwks.json"
"#
    );
    let broker = Broker::start(&pki, &config, &[]);
    let errors = r#"atb_jwks_refreshes_total{result="error",tenant="acme"}"#;
    assert!(
        eventually(Duration::from_secs(20), || metric(
            &broker.metrics(),
            errors
        )
        .is_some_and(|n| n >= 1.0)),
        "{}",
        broker.metrics()
    );
    // Not taken in: no keys, not ready.
    let r = admin(&broker, "GET", "/ready", &[], None);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["reason"], "verification keys not loaded");
    assert!(broker.stderr().contains("JWKS refresh failed"));
    // The same keys within the bound are (the broker's retries pick them up).
    let small: Vec<_> = (0..100).map(|i| jwk(format!("key-{i:05}"))).collect();
    std::fs::write(&file, serde_json::json!({ "keys": small }).to_string()).unwrap();
    assert!(eventually(Duration::from_secs(30), || admin(
        &broker,
        "GET",
        "/ready",
        &[],
        None
    )
    .status
        == 200));
    assert_eq!(
        metric(&broker.metrics(), r#"atb_jwks_keys{tenant="acme"}"#),
        Some(100.0)
    );
}
