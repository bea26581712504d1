//! Memory bounds at the HTTP level (README "Memory bounds"): the broker's
//! total connection bound, filled with held mTLS connections. The other
//! tables are filled by unit tests beside their code, and the per-tenant
//! connection and replay bounds by `front_door` and `pipeline`.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::process::Proc;
use common::*;

/// A broker with `broker.max_connections_per_worker = 2` and one worker.
fn start(pki: &Pki, dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let admin = free_port();
    let config = format!(
        r#"
[broker]
listen_addr = "127.0.0.1:{port}"
admin_addr = "127.0.0.1:{admin}"
workers = 1
max_connections_per_worker = 2
drain_delay_seconds = 0

[tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"

[[tenants]]
id = "acme"
trust_domain = "acme.example"

[[tenants]]
id = "globex"
spiffe_prefix = "spiffe://saas.example/tenants/globex"
"#,
        cert = pki.path("server.crt").display(),
        key = pki.path("server.key").display(),
        ca = pki.ca().display(),
    );
    let path = dir.join("atb.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(ATB);
    cmd.arg("broker").arg("--config").arg(&path);
    let mut proc = Proc::spawn(cmd, dir, "broker");
    assert!(proc.wait_ready(
        &["broker started"],
        &[format!("http://127.0.0.1:{admin}/ready")]
    ));
    (proc, port)
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
    let dir = tempfile::tempdir().unwrap();
    let (_broker, port) = start(&pki, dir.path());
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
