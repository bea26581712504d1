//! `atb bench` end to end: a short run that starts its own demo upstream
//! and broker (real processes, real mTLS) and writes a complete, consistent
//! JSON report with zero errors on the mix; then the same against running
//! processes (`--broker`/`--upstream`) started from the broker.toml the
//! first run wrote. No timing assertions: only that each figure is there
//! and agrees with the others.

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
    let json2 = tmp.path().join("report2.json");
    let (r2, _) = bench(
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
    assert_eq!(r2["settings"]["spawned"], false);
    for p in r2["phases"].as_array().unwrap() {
        assert_eq!(p["broker"]["broker"]["pid"], broker.pid());
        assert_eq!(p["direct"]["upstream"]["pid"], up.pid());
    }
    drop(up);
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
