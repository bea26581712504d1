//! The embedded regorus engine on its own threads.
//!
//! regorus engines are `!Send`, so each policy thread compiles its own
//! engine once and keeps it (one engine per thread, no per-request clone).
//! Requests reach the threads through a bounded queue: a full queue is an
//! immediate [`PolicyError::Overloaded`], and evaluation never runs on the
//! HTTP I/O threads. A panic inside the engine is caught, answered with an
//! error, and the thread rebuilds its engine.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use prometheus::{Histogram, IntCounter, IntGauge};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{Decision, PolicyError, DECISION_RULE};
use atb_actors::ActorMetrics;

/// Rego modules and data an engine is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyBundle {
    /// `(file name, source)`.
    pub modules: Vec<(String, String)>,
    pub data: Value,
    /// Per-evaluation time limit.
    pub eval_timeout: Duration,
}

impl PolicyBundle {
    /// The policy to run: the `.rego` files under `dir` (recursively,
    /// sorted, `*_test.rego` skipped) or the embedded policy; `data` is the
    /// embedded catalogue (or the `.json` files under `dir`), then
    /// `data_file`, then each tenant's `policy_data` under `tenants.<id>`.
    pub fn load(
        dir: Option<&std::path::Path>,
        data_file: Option<&std::path::Path>,
        tenants: &[crate::config::TenantConfig],
        eval_timeout: Duration,
    ) -> Result<Self, String> {
        let mut data = serde_json::json!({});
        let mut modules = Vec::new();
        match dir {
            None => {
                modules.push((
                    "policies/atb/poa.rego".to_string(),
                    super::EMBEDDED_POLICY.to_string(),
                ));
                let catalog: Value = serde_json::from_str(super::EMBEDDED_CATALOG)
                    .map_err(|e| format!("embedded catalog: {e}"))?;
                super::merge_data(&mut data, catalog);
            }
            Some(dir) => {
                let mut files = Vec::new();
                collect(dir, &mut files)
                    .map_err(|e| format!("policy.dir {}: {e}", dir.display()))?;
                files.sort();
                for f in files {
                    let name = f.display().to_string();
                    let text = std::fs::read_to_string(&f).map_err(|e| format!("{name}: {e}"))?;
                    if name.ends_with("_test.rego") {
                        continue;
                    } else if name.ends_with(".rego") {
                        modules.push((name, text));
                    } else {
                        let doc: Value =
                            serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
                        super::merge_data(&mut data, doc);
                    }
                }
                if modules.is_empty() {
                    return Err(format!("policy.dir {}: no .rego files", dir.display()));
                }
            }
        }
        if let Some(path) = data_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("policy.data_file {}: {e}", path.display()))?;
            let doc: Value = serde_json::from_str(&text)
                .map_err(|e| format!("policy.data_file {}: {e}", path.display()))?;
            super::merge_data(&mut data, doc);
        }
        for t in tenants {
            if let Some(d) = &t.policy_data {
                super::merge_data(
                    &mut data,
                    serde_json::json!({"tenants": {t.id.clone(): d.clone()}}),
                );
            }
        }
        Ok(Self {
            modules,
            data,
            eval_timeout,
        })
    }

    /// The bundle `config.policy` names, with every tenant's policy data.
    pub fn from_config(config: &crate::config::Config) -> Result<Self, String> {
        let p = &config.policy;
        Self::load(
            p.dir.as_deref(),
            p.data_file.as_deref(),
            &config.tenants,
            Duration::from_millis(p.eval_timeout_ms),
        )
    }

    /// Compiles an engine (strict builtin errors, time limit).
    pub fn engine(&self) -> Result<regorus::Engine, String> {
        let mut engine = regorus::Engine::new();
        engine.set_strict_builtin_errors(true);
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit: self.eval_timeout,
            check_interval: std::num::NonZeroU32::new(1024).unwrap_or(std::num::NonZeroU32::MIN),
        });
        for (name, src) in &self.modules {
            engine
                .add_policy(name.clone(), src.clone())
                .map_err(|e| format!("{name}: {e}"))?;
        }
        let data =
            regorus::Value::from_json_str(&self.data.to_string()).map_err(|e| e.to_string())?;
        engine.add_data(data).map_err(|e| e.to_string())?;
        // Evaluate once so compile-time problems surface at start.
        engine.set_input(regorus::Value::new_object());
        engine
            .eval_rule(DECISION_RULE.to_string())
            .map_err(|e| format!("{DECISION_RULE}: {e}"))?;
        Ok(engine)
    }
}

fn collect(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rego" || e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// `input` as a regorus value: the value `regorus::Value::from(input.clone())`
/// gives, built by reference instead of cloning the document and running it
/// through serde (that round trip was a third of a trivial policy's cost).
/// Numbers still go through regorus's own conversion. regorus reads an object
/// keyed `$serde_json::private::Number` as a number; such an input takes the
/// serde path, so the value is the same in every case.
pub fn input_value(input: &Value) -> regorus::Value {
    direct(input).unwrap_or_else(|| regorus::Value::from(input.clone()))
}

fn direct(v: &Value) -> Option<regorus::Value> {
    Some(match v {
        Value::Null => regorus::Value::Null,
        Value::Bool(b) => regorus::Value::from(*b),
        Value::Number(_) => regorus::Value::from(v.clone()),
        Value::String(s) => regorus::Value::from(s.as_str()),
        Value::Array(items) => {
            regorus::Value::from(items.iter().map(direct).collect::<Option<Vec<_>>>()?)
        }
        Value::Object(map) => {
            let mut out = std::collections::BTreeMap::new();
            for (k, v) in map {
                if k == "$serde_json::private::Number" {
                    return None;
                }
                out.insert(regorus::Value::from(k.as_str()), direct(v)?);
            }
            regorus::Value::from(out)
        }
    })
}

/// Evaluates one input with `engine`.
pub fn evaluate(engine: &mut regorus::Engine, input: &Value) -> Result<Decision, PolicyError> {
    engine.set_input(input_value(input));
    let out = engine
        .eval_rule(DECISION_RULE.to_string())
        .map_err(|e| PolicyError::Engine(e.to_string()))?;
    let value = serde_json::to_value(&out).map_err(|e| PolicyError::Engine(e.to_string()))?;
    Decision::from_value(&value)
}

struct Job {
    input: Value,
    reply: oneshot::Sender<Result<Decision, PolicyError>>,
}

struct PoolMetrics {
    depth: IntGauge,
    ok: IntCounter,
    fault: IntCounter,
    seconds: Histogram,
    restarts: IntCounter,
    rejected: IntCounter,
}

/// A fixed set of policy threads behind a bounded queue.
pub struct EmbeddedPool {
    tx: Sender<Job>,
    metrics: Arc<PoolMetrics>,
    current: Arc<Published>,
}

/// The bundle the threads run, and a counter that moves when it is replaced
/// (each thread compares it before a job and rebuilds its engine once).
struct Published {
    bundle: ArcSwap<PolicyBundle>,
    generation: AtomicU64,
}

impl EmbeddedPool {
    /// Compiles the bundle once (to fail fast) and starts `threads` workers.
    pub fn start(
        bundle: PolicyBundle,
        threads: usize,
        queue: usize,
        metrics: &ActorMetrics,
    ) -> Result<Self, String> {
        bundle.engine()?;
        let (tx, rx) = bounded::<Job>(queue.max(1));
        let l = ["policy", "pool"];
        let m = Arc::new(PoolMetrics {
            depth: metrics.mailbox_depth.with_label_values(&l),
            ok: metrics
                .messages
                .with_label_values(&["policy", "pool", "ok"]),
            fault: metrics
                .messages
                .with_label_values(&["policy", "pool", "fault"]),
            seconds: metrics.handle_seconds.with_label_values(&l),
            restarts: metrics.restarts.with_label_values(&l),
            rejected: metrics
                .rejected
                .with_label_values(&["policy", "pool", "full"]),
        });
        let current = Arc::new(Published {
            bundle: ArcSwap::from_pointee(bundle),
            generation: AtomicU64::new(0),
        });
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let current = current.clone();
            let m = m.clone();
            std::thread::Builder::new()
                .name(format!("atb-policy-{i}"))
                .spawn(move || worker(rx, current, m))
                .map_err(|e| format!("cannot start policy thread: {e}"))?;
        }
        Ok(Self {
            tx,
            metrics: m,
            current,
        })
    }

    /// Swaps in `bundle` if it differs from the running one and compiles
    /// (and answers an empty input); otherwise the running policy stays.
    /// `Ok(false)`: nothing changed. Compiles on the calling thread, so
    /// call it off the I/O threads.
    pub fn replace(&self, bundle: PolicyBundle) -> Result<bool, String> {
        if **self.current.bundle.load() == bundle {
            return Ok(false);
        }
        bundle.engine()?;
        self.current.bundle.store(Arc::new(bundle));
        self.current.generation.fetch_add(1, Ordering::Release);
        Ok(true)
    }

    /// Queues `input` for evaluation and waits for the decision.
    pub async fn decide(&self, input: Value) -> Result<Decision, PolicyError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { input, reply }) {
            Ok(()) => self.metrics.depth.inc(),
            Err(TrySendError::Full(_)) => {
                self.metrics.rejected.inc();
                return Err(PolicyError::Overloaded);
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(PolicyError::Engine("policy threads are gone".into()))
            }
        }
        rx.await
            .unwrap_or_else(|_| Err(PolicyError::Engine("evaluation was lost".into())))
    }
}

fn worker(rx: Receiver<Job>, current: Arc<Published>, m: Arc<PoolMetrics>) {
    let mut seen = current.generation.load(Ordering::Acquire);
    let mut engine = current.bundle.load().engine().ok();
    while let Ok(job) = rx.recv() {
        m.depth.dec();
        if job.reply.is_closed() {
            continue;
        }
        let generation = current.generation.load(Ordering::Acquire);
        if generation != seen {
            seen = generation;
            engine = None;
        }
        if engine.is_none() {
            engine = current.bundle.load().engine().ok();
        }
        let Some(e) = engine.as_mut() else {
            let _ = job
                .reply
                .send(Err(PolicyError::Engine("policy failed to compile".into())));
            continue;
        };
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| evaluate(e, &job.input)));
        m.seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(decision) => {
                m.ok.inc();
                let _ = job.reply.send(decision);
            }
            Err(_) => {
                m.fault.inc();
                m.restarts.inc();
                tracing::error!("policy engine panicked; rebuilding it");
                engine = None;
                let _ = job
                    .reply
                    .send(Err(PolicyError::Engine("policy engine panicked".into())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle(src: &str) -> PolicyBundle {
        PolicyBundle {
            modules: vec![("p.rego".into(), src.into())],
            data: json!({}),
            eval_timeout: Duration::from_millis(500),
        }
    }

    #[test]
    fn embedded_policy_compiles_and_decides() {
        let mut e = PolicyBundle::load(None, None, &[], Duration::from_millis(500))
            .unwrap()
            .engine()
            .unwrap();
        let agent = "spiffe://acme.example/agent/a";
        let leg =
            json!({"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "alice"}});
        let input = |act: &str, leg: &Value| {
            json!({
                "agent": {"spiffe_id": agent},
                "poa": {"sub": agent, "act": act, "con": {}, "leg": leg, "iat": 100, "exp": 160, "jti": "j"},
                "request": {"method": "GET", "path": "/x", "action": act, "params": {}},
                "policy": {"max_ttl_seconds": 300},
            })
        };
        let d = evaluate(&mut e, &input("crm.contact.read", &leg)).unwrap();
        assert!(d.allow, "{d:?}");
        assert_eq!(d.risk_tier, "low");
        let pay = |leg: &Value| {
            let mut i = input("sap.payment.execute", leg);
            i["request"]["params"] = json!({"amount": 500});
            i
        };
        let d = evaluate(&mut e, &pay(&leg)).unwrap();
        assert_eq!(
            (d.allow, d.reason.as_str()),
            (false, "high_risk_dual_control_required")
        );
        let mut dual = leg.clone();
        dual["dual_control"] =
            json!({"required": true, "approvers": [{"id": "bob"}, {"id": "carol"}]});
        assert!(evaluate(&mut e, &pay(&dual)).unwrap().allow);
        dual["dual_control"]["approvers"] = json!([{"id": "bob"}, {"id": agent}]);
        assert!(!evaluate(&mut e, &pay(&dual)).unwrap().allow);
        let d = evaluate(&mut e, &json!({})).unwrap();
        assert_eq!(
            (d.allow, d.reason.as_str()),
            (false, "poa_required_for_action")
        );
    }

    #[test]
    fn tenant_policy_data_lands_under_data_tenants() {
        let c = crate::config::Config::from_toml(
            "[[tenants]]\nid = \"acme\"\ntrust_domain = \"acme.example\"\n[tenants.policy_data.catalog.tiers]\n\"acme.ledger.close\" = \"high\"\n",
        )
        .unwrap();
        let b = PolicyBundle::load(None, None, &c.tenants, Duration::from_millis(500)).unwrap();
        assert_eq!(
            b.data["tenants"]["acme"]["catalog"]["tiers"]["acme.ledger.close"],
            "high"
        );
        // The embedded catalogue is there too.
        assert_eq!(
            b.data["atb"]["catalog"]["tiers"]["sap.payment.execute"],
            "high"
        );
        let mut e = b.engine().unwrap();
        let agent = "spiffe://acme.example/agent/a";
        let input = json!({
            "agent": {"spiffe_id": agent}, "tenant": {"id": "acme"},
            "poa": {"sub": agent, "act": "acme.ledger.close", "con": {}, "iat": 1, "exp": 60, "jti": "j",
                    "leg": {"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "o"}}},
            "request": {"method": "POST", "path": "/x", "action": "acme.ledger.close", "params": {}},
        });
        let d = evaluate(&mut e, &input).unwrap();
        assert_eq!(d.reason, "high_risk_dual_control_required");
    }

    #[test]
    fn input_value_is_the_serde_conversion() {
        let docs = [
            json!(null),
            json!({}),
            json!({"a": [1, -2, 3.5, 18446744073709551615u64, -9223372036854775808i64, 1e300, 0.1],
                   "b": {"c": [true, false, null, "", "x"], "d": {}}, "": []}),
            json!({"$serde_json::private::Number": "12"}),
            json!({"x": [{"$serde_json::private::Number": "nope"}]}),
        ];
        for d in docs {
            assert_eq!(input_value(&d), regorus::Value::from(d.clone()), "{d}");
        }
    }

    #[test]
    fn engine_errors_are_errors_not_decisions() {
        // A builtin type error under strict mode.
        let mut e = bundle("package atb.poa\nimport rego.v1\ndecision := {\"allow\": true} if { x := upper(input.n) ; x != \"\" }\n")
            .engine()
            .unwrap();
        assert!(matches!(
            evaluate(&mut e, &json!({"n": 5})),
            Err(PolicyError::Engine(_))
        ));
        // Undefined decision.
        let mut e =
            bundle("package atb.poa\nimport rego.v1\ndecision := {\"allow\": true} if input.ok\n")
                .engine()
                .unwrap();
        assert!(evaluate(&mut e, &json!({})).is_err());
        assert!(bundle("package atb.poa\nthis is not rego")
            .engine()
            .is_err());
    }

    #[actix_rt::test]
    async fn pool_answers_and_sheds_load() {
        let registry = prometheus::Registry::new();
        let metrics = ActorMetrics::register(&registry).unwrap();
        let pool =
            EmbeddedPool::start(bundle(super::super::EMBEDDED_POLICY), 1, 4, &metrics).unwrap();
        let d = pool.decide(json!({})).await.unwrap();
        assert!(!d.allow);
        assert_eq!(
            metrics
                .messages
                .with_label_values(&["policy", "pool", "ok"])
                .get(),
            1
        );
    }

    #[actix_rt::test]
    async fn replacing_the_policy_is_atomic_and_keeps_the_old_one_on_failure() {
        let registry = prometheus::Registry::new();
        let metrics = ActorMetrics::register(&registry).unwrap();
        let policy = |allow: bool| {
            bundle(&format!(
                "package atb.poa\nimport rego.v1\ndecision := {{\"allow\": {allow}, \"reason\": \"r{allow}\"}}\n"
            ))
        };
        let pool = EmbeddedPool::start(policy(false), 2, 16, &metrics).unwrap();
        let allowed = || async { pool.decide(json!({})).await.unwrap().allow };
        assert!(!allowed().await);
        assert_eq!(pool.replace(policy(false)), Ok(false), "same bundle");
        assert_eq!(pool.replace(policy(true)), Ok(true));
        // Every thread picks the new bundle up before its next job.
        for _ in 0..8 {
            assert!(allowed().await);
        }
        // A bundle that does not compile is refused; the running policy stays.
        assert!(pool.replace(bundle("package atb.poa\nnot rego")).is_err());
        for _ in 0..8 {
            assert!(allowed().await);
        }
    }
}
