//! Allocations per component of the broker's request path (issue 16), for
//! the classes of `atb bench`'s mix: the low-risk read
//! (`GET /api/contacts/42`), the high-risk allow (`POST /api/pay`, dual
//! control, a constraint) and the critical allow (`POST /api/merge`,
//! executive approval) — their real mandates, routes, bodies and the
//! embedded policy.
//!
//! `cargo run --release --example allocations [RUNS]` (default 2,000).
//!
//! Each component is the library code the gateway step runs
//! (`broker::gateway`), called directly: no HTTP, TLS, actors or
//! upstream, which is what the whole-broker figure of `atb bench` built
//! with `--features count-allocations` adds. The counting allocator is
//! `atb::alloc_count` around mimalloc, as in the `atb` binary with that
//! feature. One call first (lazy statics, caches), then RUNS calls
//! counted; the figures are per call.

use std::hint::black_box;
use std::time::Duration;

use atb::alloc_count::{self, Counting};
use atb::audit::chain::{Chain, ChainHead};
use atb::audit::AuditEvent;
use atb::bench::mix::{self, Class};
use atb::broker::params;
use atb::catalog::TenantCatalogue;
use atb::poa::claims::{self, ClaimRules};
use atb::poa::token;
use atb::policy::embedded::PolicyBundle;
use atb::policy::input::DecisionInput;
use atb::routes::{path, RouteTable};
use ed25519_dalek::SigningKey;
use serde_json::{Map, Value};

#[global_allocator]
static ALLOCATOR: Counting<mimalloc::MiMalloc> = Counting::new(mimalloc::MiMalloc);

const AGENT: &str = "spiffe://acme.example/agent/demo";

/// Allocations, reallocations and bytes per call.
type PerCall = (f64, f64, f64);

/// [`PerCall`] of `f`.
fn count<R>(runs: u64, mut f: impl FnMut() -> R) -> PerCall {
    black_box(f());
    let before = alloc_count::totals();
    for _ in 0..runs {
        black_box(f());
    }
    let d = alloc_count::totals().since(&before);
    let per = |v: u64| v as f64 / runs as f64;
    (per(d.allocations), per(d.reallocations), per(d.bytes))
}

fn main() {
    let runs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000);
    let key = SigningKey::from_bytes(&[9; 32]);
    let vk = key.verifying_key();
    let now = atb::runtime::clock::unix_now();
    let rules = ClaimRules {
        max_ttl_seconds: 900,
        leeway_seconds: 10,
        issuer: None,
        audience: None,
    };
    let catalogue = TenantCatalogue::new(None).expect("built-in catalogue");
    let table =
        RouteTable::compile(&atb::dev::demo_routes(), &catalogue, "demo").expect("demo routes");
    let bundle = PolicyBundle::load(None, None, &[], Duration::from_secs(1)).expect("policy loads");
    let mut engine = bundle.engine().expect("policy compiles");

    println!("allocations per call ({runs} calls after one warm-up), allocations / reallocations / bytes");
    println!(
        "{:<34} {:>24} {:>24} {:>24}",
        "component", "low-risk read", "high-risk allow", "critical allow"
    );
    let mut rows: Vec<(&str, [PerCall; 3])> = Vec::new();
    let mut put = |name: &'static str, i: usize, v: PerCall| match rows
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some((_, vals)) => vals[i] = v,
        None => {
            let mut vals = [(0.0, 0.0, 0.0); 3];
            vals[i] = v;
            rows.push((name, vals));
        }
    };

    for (i, class) in [Class::Low, Class::High, Class::Critical]
        .into_iter()
        .enumerate()
    {
        let route = mix::route(class);
        let claims_doc = mix::claims(class, AGENT, "0123456789abcdef0123456789abcdef", now, 600);
        let jwt = token::sign(&claims_doc, &key, "kid-1");
        let (path_only, query) = route.path.split_once('?').unwrap_or((route.path, ""));

        // authenticate: parse, Ed25519 verify, claims (validator::verify_jwt).
        put(
            "mandate verify (parse+sig+claims)",
            i,
            count(runs, || {
                let u = token::parse(&jwt).expect("parse");
                let payload = u.verify(&vk).expect("verify");
                claims::validate(&payload, &rules, now + 1).expect("claims")
            }),
        );
        let poa = {
            let u = token::parse(&jwt).expect("parse");
            claims::validate(&u.verify(&vk).expect("verify"), &rules, now + 1).expect("claims")
        };

        // bind_route: canonical path, radix lookup, the Routed it keeps.
        let routed = || {
            let canonical = path::canonical(path_only).expect("canonical path");
            let found = table.lookup(route.method, &canonical).expect("route");
            assert!(found.allows(&poa.act));
            (
                poa.act.to_owned(),
                found.shared.clone(),
                found
                    .params
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), Value::String(v)))
                    .collect::<Map<String, Value>>(),
            )
        };
        put("route match (path+lookup+binding)", i, count(runs, routed));
        let (action, template, route_params) = routed();

        // read_body / read_params: query and JSON members, merged.
        let body = route.body.unwrap_or_default().as_bytes();
        let read_params = || {
            let q = params::from_query(query).expect("query");
            let members = if body.is_empty() {
                Map::new()
            } else {
                params::from_json(body)
                    .expect("json body")
                    .expect("an object")
            };
            params::merge(q, members).expect("merge")
        };
        put("param extraction (query+body)", i, count(runs, read_params));
        let request_params = read_params();

        // decide: the engine's input value (built once, as the gateway
        // builds it), then the evaluation.
        let input = DecisionInput {
            agent: AGENT,
            poa: Some(&poa.raw),
            method: route.method,
            path: path_only,
            action: &action,
            params: &request_params,
            route: Some(&template),
            route_params: &route_params,
            max_ttl_seconds: 900,
            current_time_ns: (now as u64 + 1) * 1_000_000_000,
            usage: 1,
            tenant: "acme",
            platform_sub: None,
        };
        let built = count(runs, || input.to_rego());
        put("policy input (engine value)", i, built);
        let decide = |engine: &mut regorus::Engine, value: regorus::Value| {
            engine.set_input(value);
            let out = engine
                .eval_rule(atb::policy::DECISION_RULE.to_owned())
                .expect("decision");
            atb::policy::embedded::decision_of(&out).expect("a decision")
        };
        let decision = decide(&mut engine, input.to_rego());
        assert!(
            decision.allow,
            "{class:?} must be allowed: {}",
            decision.reason
        );
        // The evaluation proper: the whole call less building its input.
        let whole = count(runs, || decide(&mut engine, input.to_rego()));
        put(
            "policy evaluation (regorus)",
            i,
            (whole.0 - built.0, whole.1 - built.1, whole.2 - built.2),
        );

        // The request's audit record: the event (BrokerLog::close) and its
        // chained line (the audit writer: JSON, SHA-256, hex).
        let mut chain = Chain::new("broker", ChainHead::default());
        put(
            "audit record (event+chain line)",
            i,
            count(runs, || {
                let event = AuditEvent {
                    ts: atb::audit::now_rfc3339(),
                    event: "decision",
                    request_id: "5f0c6d1e-3b7a-4f7e-9d8e-1a2b3c4d5e6f".to_owned(),
                    tenant: "acme".to_owned(),
                    agent: AGENT.to_owned(),
                    method: route.method.to_owned(),
                    path: path_only.to_owned(),
                    action: action.clone(),
                    jti: poa.jti.clone(),
                    format: "jwt",
                    decision: "allow",
                    status: 200,
                    code: "",
                    reason: "allow".into(),
                    risk_tier: decision.risk_tier.clone(),
                    connector: "demo".to_owned(),
                    route: template.to_string(),
                    latency_us: 512,
                    outcome: "completed",
                };
                chain.seal(&event).expect("audit line")
            }),
        );
    }
    let mut sum = [(0.0, 0.0, 0.0); 3];
    let cell = |(a, r, b): PerCall| format!("{a:.1} / {r:.1} / {b:.0}");
    for (name, vals) in &rows {
        println!(
            "{name:<34} {:>24} {:>24} {:>24}",
            cell(vals[0]),
            cell(vals[1]),
            cell(vals[2])
        );
        for (s, v) in sum.iter_mut().zip(vals) {
            *s = (s.0 + v.0, s.1 + v.1, s.2 + v.2);
        }
    }
    println!(
        "{:<34} {:>24} {:>24} {:>24}",
        "sum of the components",
        cell(sum[0]),
        cell(sum[1]),
        cell(sum[2])
    );
    // The mix of `atb bench` (14/5/1 of 20), to set against the whole
    // broker's allocations per request there.
    let weights: Vec<f64> = mix::ROUTES
        .iter()
        .map(|r| r.per_cycle as f64 / mix::CYCLE as f64)
        .collect();
    let weighted =
        |f: fn(&PerCall) -> f64| -> f64 { sum.iter().zip(&weights).map(|(v, w)| f(v) * w).sum() };
    println!(
        "the mix (70/25/5), per request: {:.1} allocations / {:.1} reallocations / {:.0} bytes",
        weighted(|v| v.0),
        weighted(|v| v.1),
        weighted(|v| v.2)
    );
}
