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
    let bundle =
        atb::policy::embedded::PolicyBundle::load(Some(&dir), None, &[], Duration::from_secs(5))
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
    let tests = test_rules(&dir);
    assert!(tests.len() >= 120, "only {} Rego tests", tests.len());
    let mut failed = Vec::new();
    for (package, name) in &tests {
        engine.set_input(regorus::Value::new_object());
        let rule = format!("data.{package}.{name}");
        match engine.eval_rule(rule.clone()) {
            Ok(v) if v == regorus::Value::Bool(true) => {}
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

#[test]
fn the_embedded_policy_is_the_one_in_policies() {
    let on_disk = std::fs::read_to_string(policy_dir().join("atb/poa.rego")).unwrap();
    assert_eq!(on_disk, atb::policy::EMBEDDED_POLICY);
}
