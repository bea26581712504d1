//! Crash durability of the file audit sink (issue 17 item 3), with real
//! processes: a broker under concurrent load killed with SIGKILL, its audit
//! file checked with `atb audit verify`, the broker restarted on the same
//! file; and an `audit_required` tenant whose records cannot be made
//! durable is refused, never forwarded.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse};
use common::*;
use serde_json::Value;

/// The `X-Request-ID` of every request an upstream received, by tenant
/// (the broker's `X-ATB-Tenant` stamp).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, String)>>>);

impl Seen {
    fn ids_of(&self, tenant: &str) -> Vec<String> {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .filter(|(t, _)| t == tenant)
            .map(|(_, id)| id.clone())
            .collect()
    }
}

/// An upstream recording the request id of every request as it arrives
/// (before it answers).
fn start_recording_upstream(seen: Seen) -> u16 {
    async fn record(req: HttpRequest, seen: web::Data<Seen>) -> HttpResponse {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        seen.0
            .lock()
            .unwrap()
            .push((header("x-atb-tenant"), header("x-request-id")));
        HttpResponse::Ok().body("ok")
    }
    serve_app!(move || {
        App::new()
            .app_data(web::Data::new(seen.clone()))
            .default_service(web::to(record))
    })
}

/// acme (`audit_required`) and globex (not), both reaching `upstream`
/// without a mandate on a low-risk route.
fn config(audit_file: &Path, upstream: u16, durable_timeout_ms: u64) -> String {
    let tenant = |id: &str, mapping: &str, required: bool| {
        format!(
            r#"
[[tenants]]
id = "{id}"
{mapping}
audit_required = {required}
requests_per_second = 100000.0
burst = 100000
default_connector = "crm"
[tenants.poa]
allow_unmandated_low_risk = true
[[tenants.connectors]]
id = "crm"
upstream_url = "http://127.0.0.1:{upstream}"
egress_allowlist = ["/api/"]
[[tenants.connectors.routes]]
action = "crm.contact.read"
methods = ["GET"]
path = "/api/{{*rest}}"
"#
        )
    };
    format!(
        r#"
[audit]
sink = "file"
file = "{file}"
durable_timeout_ms = {durable_timeout_ms}
{acme}
{globex}
"#,
        file = audit_file.display(),
        acme = tenant("acme", r#"trust_domain = "acme.example""#, true),
        globex = tenant(
            "globex",
            r#"spiffe_prefix = "spiffe://saas.example/tenants/globex""#,
            false
        ),
    )
}

/// `n` GETs by `agent`, `parallel` at a time, over reused connections: one
/// curl process.
fn load(broker: &Broker, pki: &Pki, agent: &str, n: usize, parallel: usize) -> Child {
    let urls: String = (0..n)
        .map(|i| {
            format!(
                "url = \"{}\"\noutput = \"/dev/null\"\n",
                broker.url(&format!("/api/contacts/{i}"))
            )
        })
        .collect();
    let list = pki.path(&format!("{agent}-{}.curl", broker.port));
    std::fs::write(&list, urls).unwrap();
    Command::new("curl")
        .args(["-s", "-Z", "--parallel-max", &parallel.to_string()])
        .arg("--cacert")
        .arg(pki.ca())
        .arg("--cert")
        .arg(pki.path(&format!("{agent}.crt")))
        .arg("--key")
        .arg(pki.path(&format!("{agent}.key")))
        .arg("--config")
        .arg(&list)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn audit_lines(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_killed_broker_loses_no_required_record_and_its_restart_continues_the_chain() {
    let pki = Pki::new(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let seen = Seen::default();
    let upstream = start_recording_upstream(seen.clone());
    let broker = Broker::start(&pki, &config(&file, upstream, 2_000), &[]);

    // Concurrent load from both tenants; SIGKILL once the upstream has
    // seen a good share of it (well before the load ends).
    let mut loads = vec![
        load(&broker, &pki, "acme-agent", 20_000, 16),
        load(&broker, &pki, "globex-agent", 20_000, 16),
    ];
    assert!(
        eventually(Duration::from_secs(60), || seen.ids_of("acme").len() >= 300
            && seen.ids_of("globex").len() >= 300),
        "the load did not get going: {}",
        broker.stderr()
    );
    drop(broker); // SIGKILL (Child::kill)
    for l in &mut loads {
        let _ = l.kill();
        let _ = l.wait();
    }
    // What the upstream saw by the time the broker died.
    let acme_seen = seen.ids_of("acme");
    let globex_seen = seen.ids_of("globex");

    // (a) The file verifies up to its last complete line: intact (0), or a
    // torn tail after intact lines (3).
    let (code, out) = audit_verify(&file, &[]);
    assert!(code == 0 || code == 3, "{code}: {out}");
    assert!(out.contains("intact"), "{out}");

    // (c) Every request of the audit_required tenant the upstream saw has
    // a record (its durable `forward` record at least).
    let lines = audit_lines(&file);
    let recorded: HashSet<&str> = lines
        .iter()
        .filter(|l| l["tenant"] == "acme")
        .filter_map(|l| l["request_id"].as_str())
        .collect();
    let missing: Vec<&String> = acme_seen
        .iter()
        .filter(|id| !recorded.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} forwarded acme requests have no audit record: {:?}",
        missing.len(),
        acme_seen.len(),
        &missing[..missing.len().min(5)]
    );
    let forwards = lines
        .iter()
        .filter(|l| l["tenant"] == "acme" && l["event"] == "forward")
        .count();
    assert!(forwards >= acme_seen.len(), "{forwards}");
    // globex (not audit_required) is told apart: its records come only
    // when answered, so those in flight at the kill may be missing.
    let globex_recorded: HashSet<&str> = lines
        .iter()
        .filter(|l| l["tenant"] == "globex")
        .filter_map(|l| l["request_id"].as_str())
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["tenant"] != "globex" || l["event"] == "decision"));
    eprintln!(
        "killed under load: acme {} forwarded, all recorded; globex {} forwarded, {} without a record",
        acme_seen.len(),
        globex_seen.len(),
        globex_seen
            .iter()
            .filter(|id| !globex_recorded.contains(id.as_str()))
            .count()
    );

    // (b) A torn last line, as a write cut short by the kill leaves it:
    // verify reports it apart (exit 3), the lines before it intact.
    let last = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let torn = &last[..last.len() / 2];
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut f, torn.as_bytes()).unwrap();
    drop(f);
    let (code, out) = audit_verify(&file, &[]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("torn tail"), "{out}");

    // A restart on the same file cuts the torn line off (kept aside) and
    // continues the chain: more requests, and the whole file verifies as
    // one chain with one start.
    let before = audit_lines(&file).len();
    let broker = Broker::start(&pki, &config(&file, upstream, 2_000), &[]);
    for agent in ["acme-agent", "globex-agent"] {
        let mut more = load(&broker, &pki, agent, 50, 4);
        assert!(more.wait().unwrap().success());
    }
    // Each acme request: a forward and a decision record; globex: one.
    assert!(
        eventually(Duration::from_secs(20), || audit_lines(&file).len()
            >= before + 150),
        "{}",
        broker.stderr()
    );
    let (code, out) = audit_verify(&file, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("chain broker:") && out.contains("1 start(s)"),
        "{out}"
    );
    // (A kill mid-write would have left its own torn bytes before ours.)
    let aside = std::fs::read_to_string(dir.path().join("audit.jsonl.torn")).unwrap();
    assert!(aside.ends_with(&format!("{torn}\n")), "{aside}");
    assert!(broker.stderr().contains("torn line"), "{}", broker.stderr());
}

#[test]
fn a_required_record_that_cannot_be_made_durable_refuses_the_request() {
    let pki = Pki::new(&[]);
    let seen = Seen::default();
    let upstream = start_recording_upstream(seen.clone());
    // Every write to /dev/full fails (ENOSPC).
    let broker = Broker::start(&pki, &config(Path::new("/dev/full"), upstream, 500), &[]);
    for _ in 0..2 {
        let a = agent_get(&broker, &pki, Some("acme-agent"), "/api/contacts/1", &[]);
        assert_eq!(
            (a.status, a.error().as_str()),
            (503, "audit_unavailable"),
            "{a:?}"
        );
        assert_eq!(a.header("retry-after"), Some("1"), "{a:?}");
    }
    assert!(
        seen.ids_of("acme").is_empty(),
        "forwarded without a durable record"
    );
    // A tenant without audit_required is not held by it: forwarded, its
    // record waits for the writer (retried, never dropped).
    let a = agent_get(&broker, &pki, Some("globex-agent"), "/api/contacts/1", &[]);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(seen.ids_of("globex").len(), 1);
    assert!(
        broker.stderr().contains("not durable"),
        "{}",
        broker.stderr()
    );
}
