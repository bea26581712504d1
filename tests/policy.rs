//! The Rego policy's own unit tests (`policies/atb/*_test.rego`), run on the
//! embedded engine (regorus, strict builtin errors) exactly as the broker
//! loads the policy.

use std::path::Path;
use std::time::Duration;

fn policy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// Names of the `test_*` rules in every `*_test.rego` under `dir`, with
/// their package.
pub fn test_rules(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = walk(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("_test.rego"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let package = text
            .lines()
            .find_map(|l| l.strip_prefix("package "))
            .expect("package line")
            .trim()
            .to_owned();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("test_") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.push((package.clone(), format!("test_{name}")));
            }
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn rego_unit_tests_pass_on_regorus() {
    let dir = policy_dir();
    let mut engine = regorus_engine(false);
    let tests = test_rules(&dir);
    assert!(tests.len() >= 120, "only {} Rego tests", tests.len());
    let mut failed = Vec::new();
    for (package, name) in &tests {
        engine.set_input(regorus::Value::new_object());
        let rule = format!("data.{package}.{name}");
        match engine.eval_rule(rule.clone()) {
            Ok(regorus::Value::Bool(true)) => {}
            Ok(v) => failed.push(format!("{rule}: {v}")),
            Err(e) => failed.push(format!("{rule}: error {e}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} Rego tests failed:\n{}",
        failed.len(),
        tests.len(),
        failed.join("\n")
    );
}

/// The regorus engine with the policy, the test modules and the parity data.
fn regorus_engine(with_test_data: bool) -> regorus::Engine {
    let dir = policy_dir();
    let data = with_test_data
        .then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy/data.json"));
    let bundle = atb::policy::embedded::PolicyBundle::load(
        Some(&dir),
        data.as_deref(),
        &[],
        Duration::from_secs(5),
    )
    .unwrap();
    let mut engine = bundle.engine().unwrap();
    for f in walk(&dir) {
        if f.to_string_lossy().ends_with("_test.rego") {
            engine
                .add_policy(
                    f.display().to_string(),
                    std::fs::read_to_string(&f).unwrap(),
                )
                .unwrap();
        }
    }
    engine
}

/// Identical results on regorus and real OPA: every Rego test, and the full
/// decision JSON for every corpus input. Needs the OPA engine from PyPI in
/// the test venv (scripts/test installs it).
#[test]
fn regorus_and_opa_agree_on_tests_and_corpus() {
    let python = std::env::var("ATB_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus_path = root.join("tests/policy/corpus.jsonl");
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/policy/opa_eval.py"))
        .arg(policy_dir())
        .arg(root.join("tests/policy/data.json"))
        .arg(&corpus_path)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (run scripts/test to create the venv)"));
    assert!(
        out.status.success(),
        "OPA side failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let opa: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // Every Rego test passes on OPA too.
    let tests = opa["tests"].as_object().unwrap();
    assert!(tests.len() >= 120, "only {} tests reached OPA", tests.len());
    let failing: Vec<_> = tests
        .iter()
        .filter(|(_, v)| **v != serde_json::json!(true))
        .collect();
    assert!(failing.is_empty(), "Rego tests failing on OPA: {failing:?}");

    // Every corpus decision is identical.
    let mut engine = regorus_engine(true);
    let corpus = std::fs::read_to_string(&corpus_path).unwrap();
    let cases: Vec<serde_json::Value> = corpus
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(cases.len() >= 150, "corpus has only {} inputs", cases.len());
    let opa_decisions = opa["decisions"].as_array().unwrap();
    assert_eq!(opa_decisions.len(), cases.len());
    let mut differences = Vec::new();
    let mut reasons = std::collections::BTreeSet::new();
    for (case, from_opa) in cases.iter().zip(opa_decisions) {
        engine.set_input(atb::policy::embedded::input_value(&case["input"]));
        let ours = match engine.eval_rule("data.atb.poa.decision".into()) {
            Ok(v) => serde_json::to_value(&v).unwrap(),
            Err(e) => serde_json::json!({"engine_error": e.to_string()}),
        };
        if let Some(r) = ours["reason"].as_str() {
            reasons.insert(r.to_owned());
        }
        if &ours != from_opa {
            differences.push(format!("{}: regorus {ours} / OPA {from_opa}", case["name"]));
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
    // The corpus exercises a wide spread of outcomes.
    assert!(reasons.len() >= 10, "corpus reaches only {reasons:?}");
}

/// The corpus decisions are the recorded ones (`corpus_decisions.jsonl`,
/// OPA's answers when it was written), so a change made for speed cannot
/// change a decision unnoticed; unlike the parity test this needs no Python.
/// A deliberate change of the policy's answers re-records it from OPA:
/// `opa_eval.py policies tests/policy/data.json tests/policy/corpus.jsonl`,
/// its `decisions` one per line as `{"decision", "name"}`.
#[test]
fn corpus_decisions_are_the_recorded_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(root.join("tests/policy").join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let cases = read("corpus.jsonl");
    let recorded = read("corpus_decisions.jsonl");
    assert_eq!(
        cases.len(),
        recorded.len(),
        "one recorded decision per input"
    );
    let mut engine = regorus_engine(true);
    let mut differences = Vec::new();
    for (case, want) in cases.iter().zip(&recorded) {
        assert_eq!(case["name"], want["name"]);
        engine.set_input(atb::policy::embedded::input_value(&case["input"]));
        let ours = match engine.eval_rule("data.atb.poa.decision".into()) {
            Ok(v) => serde_json::to_value(&v).unwrap(),
            Err(e) => serde_json::json!({"engine_error": e.to_string()}),
        };
        if ours != want["decision"] {
            differences.push(format!(
                "{}: now {ours} / recorded {}",
                case["name"], want["decision"]
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} decisions changed:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
}

#[test]
fn the_embedded_policy_is_the_one_in_policies() {
    let on_disk = std::fs::read_to_string(policy_dir().join("atb/poa.rego")).unwrap();
    assert_eq!(on_disk, atb::policy::EMBEDDED_POLICY);
}
