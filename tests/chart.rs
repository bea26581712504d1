//! The Helm chart `charts/atb` and its monitoring, checked with real tools
//! (tests/chart/*.py under pytest, in the venv scripts/test builds):
//! strict lint and rendering of the default, staging and production values
//! with the Helm v4 engine (helm-python-sdk), every manifest against the
//! Kubernetes OpenAPI schemas (kubernetes-validate), the guide's
//! values-production.yaml honoured value by value, restricted pod security,
//! `promtool check rules` / `promtool test rules` (every alert fires and
//! stays silent as intended), and a live `atb dev` scrape: `promtool check
//! metrics`, and every metric the alerts and dashboards name is exported;
//! then the rendered broker and AgentAuth configuration started as they
//! would run in their pods.

use std::path::Path;
use std::process::Command;

#[test]
fn helm_chart_renders_validates_and_matches_the_binaries() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("ATB_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", root.display()));
    let out = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/chart",
        ])
        .current_dir(root)
        .env("ATB_BIN", env!("CARGO_BIN_EXE_atb"))
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (run scripts/test to create the venv)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "chart tests failed:\n{stdout}\n{stderr}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" passed") && !summary.contains("skipped"),
        "{stdout}"
    );
    println!("tests/chart: {summary}");
}
