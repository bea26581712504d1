//! The embedded regorus engine on its own threads.
//!
//! regorus engines are `!Send`, so each policy thread compiles its own
//! engine once and keeps it (one engine per thread, no per-request clone,
//! no lock). Requests reach the threads through `atb_actors::BlockingPool`:
//! a bounded queue with a per-tenant share (a full queue or share is an
//! immediate [`PolicyError::Overloaded`]); evaluation never runs on the HTTP
//! I/O threads; a panic inside the engine is caught, answered with an
//! error, and the thread rebuilds its engine. The broker's decisions and
//! AgentAuth's risk tiers run this same pool.

use std::time::Duration;

use serde_json::Value;

use super::{Decision, PolicyError, DECISION_RULE};
use atb_actors::{ActorMetrics, BlockingConfig, BlockingLogic, BlockingPool, CallError};

/// Rego modules and data an engine is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyBundle {
    /// `(file name, source)`.
    pub modules: Vec<(String, String)>,
    pub data: Value,
    /// Per-evaluation time limit.
    pub eval_timeout: Duration,
}

/// A policy bundle that cannot run; the running one (if any) stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// A file or directory of the bundle could not be read or parsed.
    #[error("{what}: {reason}")]
    Source { what: String, reason: String },
    /// The policy data is refused (the key is named).
    #[error("policy data: {0}")]
    Data(String),
    /// A module does not compile, or the rule does not evaluate.
    #[error("{what}: {reason}")]
    Compile { what: String, reason: String },
    /// The evaluation threads could not start.
    #[error("{0}")]
    Threads(String),
}

fn source(what: impl Into<String>) -> impl FnOnce(String) -> BundleError {
    let what = what.into();
    move |reason| BundleError::Source { what, reason }
}

fn compile(what: impl Into<String>) -> impl FnOnce(String) -> BundleError {
    let what = what.into();
    move |reason| BundleError::Compile { what, reason }
}

impl PolicyBundle {
    /// The policy to run: the `.rego` files under `dir` (recursively,
    /// sorted, `*_test.rego` skipped) or the embedded policy; `data` is the
    /// embedded catalogue (or the `.json` files under `dir`), then
    /// `data_file`, then each tenant's `policy_data` under `tenants.<id>`.
    pub fn load(
        dir: Option<&std::path::Path>,
        data_file: Option<&std::path::Path>,
        tenants: &[crate::tenant::TenantConfig],
        eval_timeout: Duration,
    ) -> Result<Self, BundleError> {
        let mut data = serde_json::json!({});
        let mut modules = Vec::new();
        match dir {
            None => {
                modules.push((
                    "policies/atb/poa.rego".to_string(),
                    super::EMBEDDED_POLICY.to_string(),
                ));
                let catalog: Value = serde_json::from_str(super::EMBEDDED_CATALOG)
                    .map_err(|e| source("embedded catalog")(e.to_string()))?;
                super::merge_data(&mut data, catalog);
            }
            Some(dir) => {
                let mut files = Vec::new();
                collect(dir, &mut files)
                    .map_err(|e| source(format!("policy.dir {}", dir.display()))(e.to_string()))?;
                files.sort();
                for f in files {
                    let name = f.display().to_string();
                    let text = std::fs::read_to_string(&f)
                        .map_err(|e| source(name.clone())(e.to_string()))?;
                    if name.ends_with("_test.rego") {
                        continue;
                    } else if name.ends_with(".rego") {
                        modules.push((name, text));
                    } else {
                        let doc: Value = serde_json::from_str(&text)
                            .map_err(|e| source(name.clone())(e.to_string()))?;
                        super::merge_data(&mut data, doc);
                    }
                }
                if modules.is_empty() {
                    return Err(source(format!("policy.dir {}", dir.display()))(
                        "no .rego files".into(),
                    ));
                }
            }
        }
        if let Some(path) = data_file {
            let what = format!("policy.data_file {}", path.display());
            let text =
                std::fs::read_to_string(path).map_err(|e| source(what.clone())(e.to_string()))?;
            let doc: Value =
                serde_json::from_str(&text).map_err(|e| source(what)(e.to_string()))?;
            super::merge_data(&mut data, doc);
        }
        let mut dispatch = Vec::new();
        for (i, t) in tenants.iter().enumerate() {
            for (j, path) in t.policy_files.iter().enumerate() {
                let what = format!("tenants[{i}].policy_files[{j}] {}", path.display());
                let text = std::fs::read_to_string(path)
                    .map_err(|e| source(what.clone())(e.to_string()))?;
                confined_to_tenant(&t.id, path, &text).map_err(compile(what))?;
                modules.push((format!("tenant:{}:{}", t.id, path.display()), text));
            }
            if !t.policy_files.is_empty() {
                // The id is a Rego identifier (checked above).
                dispatch.push(format!(
                    "deny := data.atb.tenants.{id}.deny if input.tenant.id == \"{id}\"\n",
                    id = t.id
                ));
            }
        }
        if !dispatch.is_empty() {
            // `data.atb.tenant_policy.deny`: the input tenant's deny set, by
            // one static reference per tenant (a dynamic
            // `data.atb.tenants[id]` would evaluate every tenant's rules).
            modules.push((
                "generated:atb.tenant_policy".to_string(),
                format!(
                    "package atb.tenant_policy\n\nimport rego.v1\n\n{}",
                    dispatch.concat()
                ),
            ));
        }
        for t in tenants {
            if let Some(d) = &t.policy_data {
                super::merge_data(
                    &mut data,
                    serde_json::json!({"tenants": {t.id.clone(): d.clone()}}),
                );
            }
        }
        // Tiers outside the four and values of the wrong type are refused
        // here, naming the key, rather than read as a default by the policy.
        super::data::validate(&data).map_err(BundleError::Data)?;
        Ok(Self {
            modules,
            data,
            eval_timeout,
        })
    }

    /// The bundle `config.policy` names, with every tenant's policy data.
    pub fn from_config(config: &crate::config::Config) -> Result<Self, BundleError> {
        let p = &config.policy;
        Self::load(
            p.dir.as_deref(),
            p.data_file.as_deref(),
            &config.tenants,
            Duration::from_millis(p.eval_timeout_ms),
        )
    }

    /// Compiles an engine (strict builtin errors, time limit).
    pub fn engine(&self) -> Result<regorus::Engine, BundleError> {
        let mut engine = regorus::Engine::new();
        engine.set_strict_builtin_errors(true);
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit: self.eval_timeout,
            check_interval: std::num::NonZeroU32::new(1024).unwrap_or(std::num::NonZeroU32::MIN),
        });
        for (name, src) in &self.modules {
            engine
                .add_policy(name.clone(), src.clone())
                .map_err(|e| compile(name.clone())(e.to_string()))?;
        }
        let data = regorus::Value::from_json_str(&self.data.to_string())
            .map_err(|e| BundleError::Data(e.to_string()))?;
        engine
            .add_data(data)
            .map_err(|e| BundleError::Data(e.to_string()))?;
        // Evaluate once so compile-time problems surface at start.
        engine.set_input(regorus::Value::new_object());
        engine
            .eval_rule(DECISION_RULE.to_string())
            .map_err(|e| compile(DECISION_RULE)(e.to_string()))?;
        Ok(engine)
    }
}

/// Whether `id` can name a Rego package segment as is.
pub fn is_rego_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A tenant's module must declare exactly `package atb.tenants.<id>`: it
/// can then define rules only under that tenant's document, and the shared
/// policy reads no more of it than its `deny` set.
fn confined_to_tenant(id: &str, path: &std::path::Path, text: &str) -> Result<(), String> {
    if !is_rego_identifier(id) {
        return Err(format!("the tenant id {id:?} is not a Rego identifier"));
    }
    let mut scratch = regorus::Engine::new();
    let package = scratch
        .add_policy(path.display().to_string(), text.to_owned())
        .map_err(|e| e.to_string())?;
    let want = format!("data.atb.tenants.{id}");
    if package != want {
        return Err(format!(
            "declares package {}; a tenant's modules must declare package atb.tenants.{id}",
            package.strip_prefix("data.").unwrap_or(&package)
        ));
    }
    Ok(())
}

/// The `.rego` and `.json` files under `dir`. Entries whose name starts
/// with a dot are skipped: a Kubernetes ConfigMap volume holds every file
/// twice more under `..data` and `..<timestamp>` (the top-level names are
/// links into them), and editors leave hidden swap files.
fn collect(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
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

/// A JSON object's members as a regorus value, by reference: the value
/// [`input_value`] gives for the object.
pub fn map_value(map: &serde_json::Map<String, Value>) -> regorus::Value {
    direct_map(map).unwrap_or_else(|| regorus::Value::from(Value::Object(map.clone())))
}

/// The key by which regorus reads a JSON object as a number.
const SERDE_NUMBER_KEY: &str = "$serde_json::private::Number";

fn direct(v: &Value) -> Option<regorus::Value> {
    Some(match v {
        Value::Null => regorus::Value::Null,
        Value::Bool(b) => regorus::Value::from(*b),
        Value::Number(_) => regorus::Value::from(v.clone()),
        Value::String(s) => regorus::Value::from(s.as_str()),
        Value::Array(items) => {
            regorus::Value::from(items.iter().map(direct).collect::<Option<Vec<_>>>()?)
        }
        Value::Object(map) => direct_map(map)?,
    })
}

fn direct_map(map: &serde_json::Map<String, Value>) -> Option<regorus::Value> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in map {
        if k == SERDE_NUMBER_KEY {
            return None;
        }
        out.insert(regorus::Value::from(k.as_str()), direct(v)?);
    }
    Some(regorus::Value::from(out))
}

/// Evaluates one input with `engine`.
pub fn evaluate(engine: &mut regorus::Engine, input: &Value) -> Result<Decision, PolicyError> {
    engine.set_input(input_value(input));
    let out = engine
        .eval_rule(DECISION_RULE.to_string())
        .map_err(|e| PolicyError::Engine(e.to_string()))?;
    decision_of(&out)
}

/// Reads the engine's decision value as [`Decision::from_value`] reads the
/// same value as JSON (one test holds the two equal), without converting the
/// whole object: only `details`, when present, goes through serde.
pub fn decision_of(out: &regorus::Value) -> Result<Decision, PolicyError> {
    let regorus::Value::Object(obj) = out else {
        return Err(PolicyError::BadDecision(format!(
            "expected an object, got {}",
            rego_kind(out)
        )));
    };
    let field = |name: &str| obj.get(&regorus::Value::from(name));
    let allow = match field("allow") {
        Some(regorus::Value::Bool(b)) => *b,
        _ => {
            return Err(PolicyError::BadDecision(
                "allow is missing or not a boolean".into(),
            ))
        }
    };
    let text = |name: &str, default: &str| match field(name) {
        Some(regorus::Value::String(s)) => s.to_string(),
        _ => default.to_owned(),
    };
    let details = match field("details") {
        None | Some(regorus::Value::Null) => None,
        Some(d) => Some(serde_json::to_value(d).map_err(|e| PolicyError::Engine(e.to_string()))?),
    };
    Ok(Decision {
        allow,
        reason: text("reason", if allow { "allow" } else { "deny" }),
        details,
        risk_tier: text("risk_tier", "unknown"),
    })
}

fn rego_kind(v: &regorus::Value) -> &'static str {
    match v {
        regorus::Value::Null => "null (undefined)",
        regorus::Value::Bool(_) => "a boolean",
        regorus::Value::Number(_) => "a number",
        regorus::Value::String(_) => "a string",
        regorus::Value::Array(_) | regorus::Value::Set(_) => "an array",
        regorus::Value::Object(_) => "an object",
        regorus::Value::Undefined => "undefined",
    }
}

/// The policy as the pool's threads run it: a bundle, and the rule a
/// freshly built engine must answer to be used.
#[derive(Debug, PartialEq)]
pub struct PolicyLogic {
    pub bundle: PolicyBundle,
    pub rule: &'static str,
}

/// One evaluation: `rule` against `input`.
pub struct PolicyJob {
    pub rule: &'static str,
    pub input: regorus::Value,
}

impl BlockingLogic for PolicyLogic {
    type Worker = regorus::Engine;
    type Job = PolicyJob;
    type Output = Result<regorus::Value, PolicyError>;

    type BuildError = BundleError;

    fn build(&self) -> Result<regorus::Engine, BundleError> {
        let mut engine = self.bundle.engine()?;
        if self.rule != DECISION_RULE {
            engine.set_input(regorus::Value::new_object());
            engine
                .eval_rule(self.rule.to_string())
                .map_err(|e| compile(self.rule)(e.to_string()))?;
        }
        Ok(engine)
    }

    fn run(&self, engine: &mut regorus::Engine, job: PolicyJob) -> Self::Output {
        engine.set_input(job.input);
        engine
            .eval_rule(job.rule.to_string())
            .map_err(|e| PolicyError::Engine(e.to_string()))
    }
}

fn constrained_of(bundle: &PolicyBundle) -> std::collections::HashSet<String> {
    super::constrained_actions(bundle.modules.iter().map(|(_, text)| text.as_str()))
}

/// The embedded engine on its own threads (`atb_actors::BlockingPool`):
/// broker decisions and AgentAuth's risk tiers alike, never on an I/O
/// thread, no lock around an engine, each tenant within its share of the
/// queue.
pub struct EmbeddedPool {
    pool: BlockingPool<PolicyLogic>,
    /// The running policy's constrained actions (see
    /// [`super::constrained_actions`]), swapped with the policy.
    constrained: arc_swap::ArcSwap<std::collections::HashSet<String>>,
}

impl EmbeddedPool {
    /// Compiles the bundle once (to fail fast; `rule` must answer) and
    /// starts `threads` workers behind a queue of `queue`, `per_tenant` of
    /// it per tenant.
    pub fn start(
        bundle: PolicyBundle,
        rule: &'static str,
        threads: usize,
        queue: usize,
        per_tenant: usize,
        metrics: &ActorMetrics,
    ) -> Result<Self, BundleError> {
        let constrained = constrained_of(&bundle);
        let pool = BlockingPool::start(
            PolicyLogic { bundle, rule },
            BlockingConfig {
                actor: "policy",
                threads,
                queue,
                per_key: per_tenant,
            },
            metrics,
        )
        .map_err(|e| match e {
            atb_actors::StartError::Build(b) => b,
            threads => BundleError::Threads(threads.to_string()),
        })?;
        Ok(Self {
            pool,
            constrained: arc_swap::ArcSwap::from_pointee(constrained),
        })
    }

    /// Swaps in `bundle` if it differs from the running one and compiles;
    /// otherwise the running policy stays. `Ok(false)`: nothing changed.
    /// Compiles on the calling thread, so call it off the I/O threads.
    pub fn replace(&self, bundle: PolicyBundle) -> Result<bool, BundleError> {
        let running = self.pool.logic();
        if running.bundle == bundle {
            return Ok(false);
        }
        let constrained = constrained_of(&bundle);
        self.pool.replace(PolicyLogic {
            bundle,
            rule: running.rule,
        })?;
        self.constrained.store(std::sync::Arc::new(constrained));
        Ok(true)
    }

    /// The running policy's constrained actions.
    pub fn constrained(&self) -> std::sync::Arc<std::collections::HashSet<String>> {
        self.constrained.load_full()
    }

    async fn eval(
        &self,
        tenant: &str,
        rule: &'static str,
        input: regorus::Value,
    ) -> Result<regorus::Value, PolicyError> {
        match self.pool.call(tenant, PolicyJob { rule, input }).await {
            Ok(out) => out,
            Err(CallError::Overloaded { .. }) => Err(PolicyError::Overloaded),
            Err(CallError::Fault { .. }) => {
                Err(PolicyError::Engine("policy engine panicked".into()))
            }
            Err(CallError::Unavailable { .. }) => {
                Err(PolicyError::Engine("policy failed to compile".into()))
            }
        }
    }

    /// The decision (`data.atb.poa.decision`) for `tenant`'s `input`
    /// (built by [`super::input::DecisionInput::to_rego`], or converted with
    /// [`input_value`]).
    pub async fn decide(
        &self,
        tenant: &str,
        input: regorus::Value,
    ) -> Result<Decision, PolicyError> {
        let out = self.eval(tenant, DECISION_RULE, input).await?;
        decision_of(&out)
    }

    /// The value of `rule` (e.g. `data.atb.poa.risk_tier`) for `input`.
    pub async fn value(
        &self,
        tenant: &str,
        rule: &'static str,
        input: Value,
    ) -> Result<Value, PolicyError> {
        let out = self.eval(tenant, rule, input_value(&input)).await?;
        serde_json::to_value(&out).map_err(|e| PolicyError::Engine(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `decision_of` reads what `Decision::from_value` reads from the same
    /// value serialised: the same decision, or an error for the same values.
    #[test]
    fn a_decision_read_from_the_engine_value_is_the_json_reading() {
        // details holding a set (which JSON writes as an array)
        let mut set = regorus::Value::new_set();
        set.as_set_mut().unwrap().insert(regorus::Value::from("a"));
        let mut with_set = regorus::Value::from_json_str(r#"{"allow": false}"#).unwrap();
        with_set
            .as_object_mut()
            .unwrap()
            .insert(regorus::Value::from("details"), set);
        let cases: Vec<regorus::Value> = [
            r#"{"allow": true, "reason": "allow", "risk_tier": "high"}"#,
            r#"{"allow": false, "reason": "dual_control", "details": {"need": 2, "have": ["a"]}, "risk_tier": "high"}"#,
            r#"{"allow": false}"#,
            r#"{"allow": true}"#,
            r#"{"allow": true, "reason": 7, "risk_tier": ["low"], "details": null}"#,
            r#"{"allow": false, "details": [1, "x", {"y": null}]}"#,
            r#"{"allow": "true", "reason": "r"}"#,
            r#"{"reason": "no allow"}"#,
            r#"{"allow": null}"#,
            r#"[true]"#,
            r#""allow""#,
            r#"null"#,
            r#"1"#,
            r#"true"#,
        ]
        .iter()
        .map(|j| regorus::Value::from_json_str(j).unwrap())
        .chain([regorus::Value::Undefined, with_set])
        .collect();
        for v in cases {
            let json = serde_json::to_value(&v).unwrap();
            match (decision_of(&v), Decision::from_value(&json)) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{json}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{json}: {a:?} against {b:?}"),
            }
        }
        // a real decision, both ways
        let mut e = PolicyBundle::load(None, None, &[], Duration::from_millis(500))
            .unwrap()
            .engine()
            .unwrap();
        e.set_input(input_value(&json!({"request": {"action": "nope"}})));
        let out = e.eval_rule(DECISION_RULE.to_string()).unwrap();
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(
            decision_of(&out).unwrap(),
            Decision::from_value(&json).unwrap()
        );
    }

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
        dual["dual_control"] = json!({"required": true, "approvers": [
            {"id": "bob", "timestamp": 100}, {"id": "carol", "timestamp": 100}]});
        assert!(evaluate(&mut e, &pay(&dual)).unwrap().allow);
        dual["dual_control"]["approvers"] =
            json!([{"id": "bob", "timestamp": 100}, {"id": agent, "timestamp": 100}]);
        assert!(!evaluate(&mut e, &pay(&dual)).unwrap().allow);
        // Evidence without timestamps proves nothing.
        dual["dual_control"]["approvers"] = json!([{"id": "bob"}, {"id": "carol"}]);
        let d = evaluate(&mut e, &pay(&dual)).unwrap();
        assert_eq!(
            (d.allow, d.reason.as_str()),
            (false, "approval_timestamp_invalid")
        );
        let d = evaluate(&mut e, &json!({})).unwrap();
        assert_eq!(
            (d.allow, d.reason.as_str()),
            (false, "poa_required_for_action")
        );
    }

    #[test]
    fn tenant_modules_are_confined_and_read_only_for_their_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, src: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, src).unwrap();
            p
        };
        let acme = write(
            "acme.rego",
            "package atb.tenants.acme\nimport rego.v1\ndeny contains \"no reads\" if input.request.action == \"crm.contact.read\"\n",
        );
        // Globex's module fails at evaluation (strict builtin errors).
        let globex = write(
            "globex.rego",
            "package atb.tenants.globex\nimport rego.v1\ndeny contains x if x := 1 / 0\n",
        );
        let mut c = crate::config::Config::from_toml(
            "[[tenants]]\nid = \"acme\"\ntrust_domain = \"acme.example\"\n[[tenants]]\nid = \"globex\"\ntrust_domain = \"globex.example\"\n[[tenants]]\nid = \"initech\"\ntrust_domain = \"initech.example\"\n",
        )
        .unwrap();
        c.tenants[0].policy_files = vec![acme.clone()];
        c.tenants[1].policy_files = vec![globex];
        let mut e = PolicyBundle::load(None, None, &c.tenants, Duration::from_millis(500))
            .unwrap()
            .engine()
            .unwrap();
        let input = |tenant: &str| {
            let agent = format!("spiffe://{tenant}.example/agent/a");
            json!({
                "agent": {"spiffe_id": agent},
                "poa": {"sub": agent, "act": "crm.contact.read", "con": {}, "iat": 100, "exp": 160, "jti": "j",
                        "leg": {"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "o"}}},
                "request": {"method": "GET", "path": "/x", "action": "crm.contact.read", "params": {}},
                "policy": {"max_ttl_seconds": 300},
                "tenant": {"id": tenant},
            })
        };
        let d = evaluate(&mut e, &input("acme")).unwrap();
        assert_eq!(
            (d.allow, d.reason.as_str()),
            (false, "tenant_policy_denied")
        );
        assert_eq!(d.details, Some(json!({"reasons": ["no reads"]})));
        // Another tenant's module is not evaluated for initech; globex's
        // own failure fails closed (an error, never an allow).
        assert!(evaluate(&mut e, &input("initech")).unwrap().allow);
        assert!(evaluate(&mut e, &input("globex")).is_err());
        // Any package but the tenant's own is refused, naming the key.
        for (i, bad) in [
            "package atb.poa\nimport rego.v1\ndecision := {\"allow\": true}\n",
            "package atb.tenants.globex\nimport rego.v1\ndeny contains \"x\"\n",
            "package atb.tenants\nimport rego.v1\nacme := {}\n",
            "package atb.tenants.acme.sub\nimport rego.v1\nx := 1\n",
            "package atb.tenants.acme\nthis is not rego\n",
        ]
        .iter()
        .enumerate()
        {
            c.tenants[0].policy_files = vec![acme.clone(), write(&format!("bad{i}.rego"), bad)];
            let e = PolicyBundle::load(None, None, &c.tenants, Duration::from_millis(500))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("tenants[0].policy_files[1]"), "{bad}: {e}");
        }
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
    fn policy_data_of_the_wrong_shape_is_refused_at_load() {
        let c = crate::config::Config::from_toml(
            "[[tenants]]\nid = \"acme\"\ntrust_domain = \"acme.example\"\n[tenants.policy_data.time_policy.business_hours]\nrequired_for_high_risk = \"true\"\n",
        );
        // Refused by the configuration already, or at the latest by the loader.
        let e = match c {
            Err(e) => e.to_string(),
            Ok(c) => PolicyBundle::load(None, None, &c.tenants, Duration::from_millis(500))
                .unwrap_err()
                .to_string(),
        };
        assert!(
            e.contains("time_policy.business_hours.required_for_high_risk"),
            "{e}"
        );
        // A global catalogue tier outside the four, from a data file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.json");
        std::fs::write(
            &file,
            r#"{"atb": {"catalog": {"tiers": {"crm.contact.read": "urgent"}}}}"#,
        )
        .unwrap();
        let e = PolicyBundle::load(None, Some(&file), &[], Duration::from_millis(500)).unwrap_err();
        assert!(matches!(e, BundleError::Data(_)), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("atb.catalog.tiers.\"crm.contact.read\"") && e.contains("not a risk tier"),
            "{e}"
        );
    }

    #[test]
    fn a_configmap_volume_loads_each_module_once() {
        // The layout kubelet writes: files in a timestamped directory,
        // `..data` linking to it, top-level names linking through `..data`.
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("..2026_12_03_01_02_03.123");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(
            real.join("extra.rego"),
            "package atb.extra\nimport rego.v1\nx := 1\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("..data/extra.rego"),
            dir.path().join("extra.rego"),
        )
        .unwrap();
        let mut files = Vec::new();
        collect(dir.path(), &mut files).unwrap();
        assert_eq!(files, vec![dir.path().join("extra.rego")]);
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
        let pool = EmbeddedPool::start(
            bundle(super::super::EMBEDDED_POLICY),
            DECISION_RULE,
            1,
            4,
            4,
            &metrics,
        )
        .unwrap();
        let d = pool
            .decide("acme", regorus::Value::new_object())
            .await
            .unwrap();
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
        let pool = EmbeddedPool::start(policy(false), DECISION_RULE, 2, 16, 16, &metrics).unwrap();
        let allowed = || async {
            pool.decide("acme", regorus::Value::new_object())
                .await
                .unwrap()
                .allow
        };
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
