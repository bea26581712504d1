//! Policy variants side by side, for speed work on `poa.rego`.
//!
//! `policy_ab RULE DIR...`: each DIR is a policy directory as `policy.dir`
//! takes it (`*_test.rego` skipped). Design points:
//! - Equivalence first: every variant answers `data.atb.poa.decision` for
//!   every parity-corpus input (with `tests/policy/data.json`) and the
//!   answers are compared with the first variant's; differences are counted
//!   and the first few printed.
//! - Wall-clock figures are interleaved: each round times a batch of 100
//!   evaluations of RULE per variant in turn, on the pipeline bench's inputs,
//!   and the median and best batch are printed (`ROUNDS`, default 60). On a
//!   shared host the load swings more than the differences measured, so the
//!   variants share every load period.
//! - Instruction counts do not depend on the load: `ONLY=<variant>:<input>
//!   N=<evaluations>` runs that variant on that input and nothing else,
//!   under `valgrind --tool=callgrind`; (Ir at N − Ir at N=0) / N is the
//!   count per evaluation (setup cancels out). `COMPILED=1` evaluates
//!   through regorus's `CompiledPolicy` (a fresh engine per call) instead of
//!   one engine; `NO_TIMER=1` builds the engine without the execution timer.
//!
//! ```text
//! ir() { ONLY=$1 N=$2 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!   target/release/examples/policy_ab data.atb.poa.decision DIR 2>&1 | grep -o "Collected : [0-9]*"; }
//! ```

use std::time::{Duration, Instant};

use atb::policy::embedded::{input_value, PolicyBundle};
use serde_json::{json, Value};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../benches/support/grant.rs"]
mod grant;

fn inputs() -> Vec<(&'static str, Value)> {
    let i = grant::policy_inputs();
    vec![
        ("high_allow", i.high_allow),
        ("critical_allow", i.critical_allow),
        ("critical_deny", i.critical_deny),
        ("constraint_deny", i.constraint_deny),
        ("low_allow", i.low_allow),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: policy_ab RULE DIR [DIR ...]");
        std::process::exit(2);
    }
    let rule = args[1].clone();
    let dirs = &args[2..];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundles: Vec<PolicyBundle> = dirs
        .iter()
        .map(|d| {
            PolicyBundle::load(
                Some(std::path::Path::new(d)),
                None,
                &[],
                Duration::from_secs(5),
            )
            .unwrap()
        })
        .collect();
    let mut engines: Vec<regorus::Engine> = bundles.iter().map(|b| b.engine().unwrap()).collect();
    // Instruction-count mode: ONLY=variant:input N=iterations, nothing else
    // (run under `perf stat -e instructions:u`, minus an N=0 run).
    if let Ok(only) = std::env::var("ONLY") {
        let (v, name) = only.split_once(':').unwrap();
        let v: usize = v.parse().unwrap();
        let n: usize = std::env::var("N").unwrap().parse().unwrap();
        let input = inputs().into_iter().find(|(k, _)| *k == name).unwrap().1;
        if std::env::var("COMPILED").is_ok() {
            // regorus's shareable compiled policy: a fresh engine per call.
            let b = &bundles[v];
            let modules: Vec<regorus::PolicyModule> = b
                .modules
                .iter()
                .map(|(id, text)| regorus::PolicyModule {
                    id: id.as_str().into(),
                    content: text.as_str().into(),
                })
                .collect();
            let data = regorus::Value::from_json_str(&b.data.to_string()).unwrap();
            let compiled =
                regorus::compile_policy_with_entrypoint(data, &modules, rule.as_str().into())
                    .unwrap();
            let first = compiled.eval_with_input(input_value(&input)).unwrap();
            assert_eq!(first, {
                engines[v].set_input(input_value(&input));
                engines[v].eval_rule(rule.clone()).unwrap()
            });
            for _ in 0..n {
                std::hint::black_box(
                    compiled
                        .eval_with_input(input_value(std::hint::black_box(&input)))
                        .unwrap(),
                );
            }
            return;
        }
        if std::env::var("NO_TIMER").is_ok() {
            let b = &bundles[v];
            let mut e = regorus::Engine::new();
            e.set_strict_builtin_errors(true);
            for (name, src) in &b.modules {
                e.add_policy(name.clone(), src.clone()).unwrap();
            }
            e.add_data(regorus::Value::from_json_str(&b.data.to_string()).unwrap())
                .unwrap();
            e.set_input(input_value(&input));
            e.eval_rule(rule.clone()).unwrap();
            engines[v] = e;
        }
        for _ in 0..n {
            engines[v].set_input(input_value(std::hint::black_box(&input)));
            std::hint::black_box(engines[v].eval_rule(rule.clone()).unwrap());
        }
        return;
    }
    // Corpus equivalence (parity data) against the first variant.
    let mut corpus_engines: Vec<regorus::Engine> = dirs
        .iter()
        .map(|d| {
            PolicyBundle::load(
                Some(std::path::Path::new(d)),
                Some(&root.join("tests/policy/data.json")),
                &[],
                Duration::from_secs(5),
            )
            .unwrap()
            .engine()
            .unwrap()
        })
        .collect();
    let corpus = std::fs::read_to_string(root.join("tests/policy/corpus.jsonl")).unwrap();
    let mut diffs = vec![0usize; dirs.len()];
    for line in corpus.lines() {
        let case: Value = serde_json::from_str(line).unwrap();
        let mut first = None;
        for (i, e) in corpus_engines.iter_mut().enumerate() {
            e.set_input(input_value(&case["input"]));
            let out = match e.eval_rule("data.atb.poa.decision".into()) {
                Ok(v) => serde_json::to_value(&v).unwrap(),
                Err(err) => json!({"engine_error": err.to_string()}),
            };
            match &first {
                None => first = Some(out),
                Some(f) => {
                    if *f != out {
                        diffs[i] += 1;
                        if diffs[i] <= 3 {
                            eprintln!("{} differs on {}: {f} / {out}", dirs[i], case["name"]);
                        }
                    }
                }
            }
        }
    }
    println!("corpus differences vs {}: {:?}", dirs[0], diffs);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let batch = 100;
    for (name, input) in inputs() {
        let outs: Vec<String> = engines
            .iter_mut()
            .map(|e| {
                e.set_input(input_value(&input));
                e.eval_rule(rule.clone()).unwrap().to_string()
            })
            .collect();
        let mut samples = vec![Vec::new(); dirs.len()];
        for _ in 0..rounds {
            for (i, e) in engines.iter_mut().enumerate() {
                let t = Instant::now();
                for _ in 0..batch {
                    e.set_input(input_value(std::hint::black_box(&input)));
                    std::hint::black_box(e.eval_rule(rule.clone()).unwrap());
                }
                samples[i].push(t.elapsed().as_nanos() as f64 / batch as f64 / 1000.0);
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (v[v.len() / 2], v[0])
        };
        let figures: Vec<String> = samples
            .iter_mut()
            .map(|s| {
                let (m, lo) = med(s);
                format!("{m:7.1} (min {lo:6.1})")
            })
            .collect();
        println!(
            "{name:16} {}   {}",
            figures.join(" | "),
            &outs[0][..outs[0].len().min(90)]
        );
        for (i, o) in outs.iter().enumerate().skip(1) {
            if *o != outs[0] {
                println!("  !! variant {i} answers {o}");
            }
        }
    }
}
