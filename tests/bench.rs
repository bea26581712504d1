//! `atb bench` end to end: a short run that starts its own demo upstream
//! and broker (real processes, real mTLS) and writes a complete, consistent
//! JSON report with zero errors on the mix; then the same against running
//! processes (`--broker`/`--upstream`) started from the broker.toml the
//! first run wrote. No timing assertions: only that each figure is there
//! and agrees with the others. And a short `--soak`: zero errors, every
//! re-sent mandate refused as a replay, the broker's RSS and fds sampled,
//! its audit chain verified after SIGTERM. Built with `--features
//! count-allocations` (`cargo test --features count-allocations --test
//! bench`), the report also has the broker's allocations per request and
//! the running broker's `atb_allocations_total` grows across the requests;
//! without it, both are absent and the report says "not counted".

mod common;

use std::path::Path;
use std::process::Command;

use common::process::Proc;
use common::{free_port, ATB};
use serde_json::Value;

fn bench(dir: &Path, json: &Path, extra: &[&str]) -> (Value, String) {
    let out = Command::new(ATB)
        .env_remove("ATB_CONFIG")
        .args(["bench", "--dir"])
        .arg(dir)
        .args([
            "--duration",
            "1",
            "--connections",
            "2",
            "--open-connections",
            "3",
            "--rate",
            "60",
            "--max-rps",
            "400",
            "--warmup",
            "2",
            "--json",
        ])
        .arg(json)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "atb bench failed: {stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (report, stdout)
}

/// Every phase has both paths, answers on every class of the mix, no
/// errors, and the broker's CPU and memory.
fn check_report(r: &Value) {
    assert_eq!(r["errors_total"], 0, "{r:#}");
    let phases = r["phases"].as_array().unwrap();
    let kinds: Vec<&str> = phases.iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["closed_loop", "open_loop"]);
    for p in phases {
        for path in ["direct", "broker"] {
            let x = &p[path];
            let requests = x["requests"].as_u64().unwrap();
            assert!(requests > 0, "{path}: {x:#}");
            assert_eq!(x["ok"].as_u64().unwrap(), requests, "{path}: all 200");
            assert_eq!(x["error_count"], 0);
            assert!(x["errors"].as_object().unwrap().is_empty());
            // Open loop: every scheduled request had its mandate. (A closed
            // loop may spend its budget before the end: that depends on
            // speed, and the report says so.)
            if p["kind"] == "open_loop" || path == "direct" {
                assert_eq!(x["starved"], 0, "{path}: {x:#}");
            }
            assert!(x["throughput_rps"].as_f64().unwrap() > 0.0);
            let l = &x["latency"];
            let q = |k: &str| l[k].as_f64().unwrap();
            assert!(q("p50_ms") > 0.0);
            assert!(q("p50_ms") <= q("p90_ms") && q("p90_ms") <= q("p99_ms"));
            assert!(q("p99_ms") <= q("p99_9_ms") && q("p99_9_ms") <= q("max_ms"));
            let by_class = x["by_class"].as_object().unwrap();
            let per_class: u64 = by_class
                .values()
                .map(|c| c["requests"].as_u64().unwrap())
                .sum();
            assert_eq!(per_class, requests);
            for class in ["low", "high", "critical"] {
                assert!(by_class.contains_key(class), "{path} {class}: {x:#}");
            }
            assert!(x["generator_cpu_seconds"].as_f64().is_some());
        }
        assert!(
            p["direct"]["broker"].is_null(),
            "no broker on the direct path"
        );
        let b = &p["broker"]["broker"];
        assert!(b["cpu_seconds"].as_f64().unwrap() >= 0.0, "{b}");
        assert!(b["cpu_seconds_per_1000_requests"].as_f64().is_some());
        assert!(b["rss_bytes"].as_u64().unwrap() > 1 << 20);
        assert!(b["peak_rss_bytes"].as_u64().unwrap() >= b["rss_bytes"].as_u64().unwrap());
        assert!(p["added_latency"]["p50_ms"].as_f64().is_some());
    }
    assert_eq!(phases[1]["rate_rps"], 60.0);
    assert_eq!(r["mix"].as_array().unwrap().len(), 3);
    assert!(r["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert!(r["settings"]["mandates_minted"].as_u64().unwrap() > 0);
}

#[test]
fn bench_reports_direct_and_broker_paths_with_zero_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bench");
    let json = tmp.path().join("report.json");
    let (r, text) = bench(&dir, &json, &[]);
    check_report(&r);
    assert_eq!(r["settings"]["spawned"], true);
    assert_eq!(r["settings"]["tenants_configured"], 2);
    assert!(r["phases"][0]["broker"]["upstream"]["pid"].is_u64());
    assert!(
        text.contains("closed loop") && text.contains("open loop"),
        "{text}"
    );
    assert!(text.contains("added by the broker"), "{text}");
    check_allocations(&r, &text);

    // Its log file (text format, stderr to a file) is plain text: no
    // terminal colour codes in it.
    let log = std::fs::read_to_string(dir.join("broker.log")).unwrap();
    assert!(log.contains(" INFO "), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file");

    // The broker judged every class with the real policy: its audit log
    // has allowed calls of all three actions and no denial.
    let audit: Vec<Value> = std::fs::read_to_string(dir.join("broker-audit.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for action in [
        "crm.contact.read",
        "sap.payment.execute",
        "org.company.merge",
    ] {
        assert!(
            audit
                .iter()
                .any(|e| e["action"] == action && e["decision"] == "allow" && e["status"] == 200),
            "{action} allowed"
        );
    }
    assert!(
        audit.iter().all(|e| e["decision"] != "deny"),
        "no denials in the mix"
    );
    let tiers: std::collections::HashSet<&str> = audit
        .iter()
        .filter_map(|e| e["risk_tier"].as_str())
        .collect();
    assert!(
        tiers.contains("high") && tiers.contains("critical"),
        "{tiers:?}"
    );

    // Against running processes: a broker from the broker.toml just
    // written (fresh listen ports) and a demo upstream where it points.
    let upstream: std::net::SocketAddr = r["settings"]["upstream_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut cmd = Command::new(ATB);
    cmd.args(["demo-upstream", "--listen", &upstream.to_string()]);
    let up = Proc::spawn(cmd, tmp.path(), "upstream");
    let (listen, admin) = (free_port(), free_port());
    let mut cmd = Command::new(ATB);
    cmd.args(["broker", "--config"])
        .arg(dir.join("broker.toml"))
        .env("LISTEN_ADDR", format!("127.0.0.1:{listen}"))
        .env("HTTP_LISTEN_ADDR", format!("127.0.0.1:{admin}"));
    let mut broker = Proc::spawn(cmd, tmp.path(), "broker");
    assert!(broker.wait_ready(&[], &[format!("http://127.0.0.1:{admin}/ready")]));
    // The running broker's allocation totals grow with its requests (a
    // build with count-allocations); without the feature it has none.
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let before = atb::bench::allocstat::read(admin_addr).unwrap();
    let json2 = tmp.path().join("report2.json");
    let (r2, text2) = bench(
        &dir,
        &json2,
        &[
            "--broker",
            &format!("127.0.0.1:{listen}"),
            "--upstream",
            &upstream.to_string(),
            "--broker-pid",
            &broker.pid().to_string(),
            "--upstream-pid",
            &up.pid().to_string(),
        ],
    );
    check_report(&r2);
    let after = atb::bench::allocstat::read(admin_addr).unwrap();
    let sent: u64 = r2["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["broker"]["requests"].as_u64().unwrap())
        .sum();
    if cfg!(feature = "count-allocations") {
        let (b, a) = (before.unwrap(), after.unwrap());
        assert!(
            a.allocations > b.allocations + sent,
            "{b:?} -> {a:?} over {sent} requests"
        );
        assert!(a.bytes > b.bytes + 100 * sent, "{b:?} -> {a:?}");
    } else {
        assert_eq!((before, after), (None, None));
    }
    // atb bench reads them only from a broker it started.
    assert!(text2.contains(
        "broker allocations per request: not counted (build with --features count-allocations)"
    ));
    assert_eq!(r2["settings"]["spawned"], false);
    for p in r2["phases"].as_array().unwrap() {
        assert_eq!(p["broker"]["broker"]["pid"], broker.pid());
        assert_eq!(p["direct"]["upstream"]["pid"], up.pid());
    }
    drop(up);
}

/// The broker's allocations per request: reported for every phase when
/// the binary is built with `--features count-allocations`, else said to
/// be not counted.
fn check_allocations(r: &Value, text: &str) {
    for p in r["phases"].as_array().unwrap() {
        assert!(p["direct"]["broker_allocations"].is_null());
        let a = &p["broker"]["broker_allocations"];
        if cfg!(feature = "count-allocations") {
            let per = |k: &str| a[k].as_f64().unwrap();
            // A request through the broker allocates (a mandate parsed, a
            // policy input built, an audit line): never zero.
            assert!(per("allocations_per_request") >= 10.0, "{a:#}");
            assert!(per("bytes_per_request") >= 1000.0, "{a:#}");
            assert!(per("reallocations_per_request") >= 0.0, "{a:#}");
            let requests = p["broker"]["requests"].as_u64().unwrap();
            assert!(a["allocations"].as_u64().unwrap() >= 10 * requests);
            assert!(!text.contains("not counted"), "{text}");
        } else {
            assert!(a.is_null(), "{a:#}");
        }
    }
    if cfg!(feature = "count-allocations") {
        assert!(text.contains("broker allocations per request: "), "{text}");
    } else {
        assert!(
            text.contains(
                "broker allocations per request: not counted (build with --features count-allocations)"
            ),
            "{text}"
        );
    }
}

#[test]
fn bench_spreads_traffic_over_generated_tenants() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bench");
    let json = tmp.path().join("report.json");
    let (r, _) = bench(&dir, &json, &["--tenants", "40", "--active-tenants", "4"]);
    check_report(&r);
    assert_eq!(r["settings"]["tenants_configured"], 40);
    assert_eq!(r["settings"]["tenants_active"], 4);
    // Each active tenant's agent was served as that tenant.
    let audit: Vec<Value> = std::fs::read_to_string(dir.join("broker-audit.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let tenants: std::collections::BTreeSet<&str> = audit
        .iter()
        .filter(|e| e["status"] == 200)
        .filter_map(|e| e["tenant"].as_str())
        .collect();
    assert_eq!(
        tenants.into_iter().collect::<Vec<_>>(),
        ["bench-0000", "bench-0010", "bench-0020", "bench-0030"]
    );
}

#[test]
fn soak_refuses_every_replay_and_verifies_the_audit_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("soak");
    let json = tmp.path().join("soak.json");
    let out = Command::new(ATB)
        .env_remove("ATB_CONFIG")
        .args(["bench", "--soak", "--dir"])
        .arg(&dir)
        .args([
            "--duration",
            "3",
            "--rate",
            "40",
            "--open-connections",
            "2",
            "--warmup",
            "2",
            "--sample-interval",
            "1",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "soak failed: {stdout}\n{stderr}");
    assert!(stdout.contains("soak passed"), "{stdout}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["passed"], true, "{r:#}");
    assert!(r["failures"].as_array().unwrap().is_empty());

    // The traffic: 3 s at 40 req/s, all 200, none without a mandate.
    let b = &r["broker"];
    assert_eq!(b["requests"], 120, "{b:#}");
    assert_eq!(b["ok"], 120);
    assert_eq!(
        (b["error_count"].as_u64(), b["starved"].as_u64()),
        (Some(0), Some(0))
    );

    // The replay check: every used mandate (120 + 2 × 2 warm-up) re-sent
    // and refused as a replay.
    let replay = &r["replay"];
    assert_eq!(replay["sent"], 124, "{replay:#}");
    assert_eq!(replay["refused_replay"], 124);
    assert_eq!(replay["accepted"], 0);
    assert!(replay["other"].as_object().unwrap().is_empty());

    // Resources: start, every second, and the end, each with RSS and fds.
    let samples = r["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "{samples:?}");
    for s in samples {
        assert!(s["rss_bytes"].as_u64().unwrap() > 1 << 20, "{s}");
        assert!(s["open_fds"].as_u64().unwrap() >= 3, "{s}");
    }
    assert_eq!(r["rss_start_bytes"], samples[0]["rss_bytes"]);
    assert_eq!(r["fds_end"], samples[samples.len() - 1]["open_fds"]);

    // The audit: verified whole after a graceful stop, one line per
    // answered request at least, and the replays in it as refusals.
    let audit = &r["audit"];
    assert_eq!(audit["verified"], true, "{audit:#}");
    assert!(audit["problem"].is_null());
    assert_eq!(audit["broker_exit"], "exit status: 0", "{audit:#}");
    let lines = audit["lines"].as_u64().unwrap();
    assert!(lines >= 120 + 124, "{audit:#}");
    let text = std::fs::read_to_string(dir.join("broker-audit.jsonl")).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len() as u64, lines);
    let refused = records.iter().filter(|e| e["status"] == 403).count();
    assert_eq!(refused, 124, "each replay audited as a refusal");
    // The verifier agrees from the command line too.
    let verify = Command::new(ATB)
        .args(["audit", "verify"])
        .arg(dir.join("broker-audit.jsonl"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
}
