//! Per-request CPU of the PoA pipeline's stateless steps: mandate parsing,
//! Ed25519 verification and claim checks, and one embedded policy decision.

use std::hint::black_box;
use std::time::Duration;

use atb::poa::claims::{self, ClaimRules};
use atb::poa::token;
use atb::policy::embedded::{evaluate, input_value, PolicyBundle};
use atb::policy::input::DecisionInput;
use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::SigningKey;
use serde_json::json;

/// The broker's allocator (src/main.rs), so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/grant.rs"]
mod grant;

fn bench(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[9; 32]);
    let now = grant::NOW;
    let claims_doc = grant::claims();
    let jwt = token::sign(&claims_doc, &key, "kid-1");
    let vk = key.verifying_key();
    let rules = ClaimRules {
        max_ttl_seconds: 300,
        leeway_seconds: 10,
        issuer: None,
        audience: None,
    };
    c.bench_function("poa_verify_and_claims", |b| {
        b.iter(|| {
            let u = token::parse(black_box(&jwt)).expect("parse");
            let payload = u.verify(&vk).expect("verify");
            claims::validate(&payload, &rules, now + 1).expect("claims")
        })
    });

    let bundle = PolicyBundle::load(None, None, &[], Duration::from_secs(1)).expect("policy loads");
    let mut engine = bundle.engine().expect("policy compiles");
    let grant::PolicyInputs {
        high_allow: high,
        critical_allow,
        critical_deny,
        constraint_deny,
        ..
    } = grant::policy_inputs();
    // The benchmarks measure the outcomes their names promise.
    assert!(
        evaluate(&mut engine, &high).expect("decision").allow,
        "high-risk input must be allowed"
    );
    assert!(
        evaluate(&mut engine, &critical_allow)
            .expect("decision")
            .allow,
        "critical input must be allowed"
    );
    assert!(
        !evaluate(&mut engine, &critical_deny)
            .expect("decision")
            .allow,
        "critical input must be denied"
    );
    assert_eq!(
        evaluate(&mut engine, &constraint_deny)
            .expect("decision")
            .reason,
        "action_denied",
        "the payment over its limit must be refused by its constraint"
    );
    c.bench_function("policy_high_risk_allow", |b| {
        b.iter(|| evaluate(&mut engine, black_box(&high)).expect("decision"))
    });
    c.bench_function("policy_critical_allow", |b| {
        b.iter(|| evaluate(&mut engine, black_box(&critical_allow)).expect("decision"))
    });
    c.bench_function("policy_critical_deny", |b| {
        b.iter(|| evaluate(&mut engine, black_box(&critical_deny)).expect("decision"))
    });

    c.bench_function("policy_constraint_deny", |b| {
        b.iter(|| evaluate(&mut engine, black_box(&constraint_deny)).expect("decision"))
    });

    // Building the engine's input for the high-risk allow: the JSON document
    // and its conversion (the broker before), against the value built
    // directly (`DecisionInput::to_rego`, the broker now).
    let empty = serde_json::Map::new();
    let object = |v: &serde_json::Value| v.as_object().cloned().unwrap_or_default();
    let (poa, params) = (object(&high["poa"]), object(&high["request"]["params"]));
    let parts = DecisionInput {
        agent: grant::AGENT,
        poa: Some(&poa),
        method: "POST",
        path: "/api/pay",
        action: grant::ACTION,
        params: &params,
        route: Some("/api/pay"),
        route_params: &empty,
        max_ttl_seconds: 300,
        current_time_ns: grant::NOW as u64 * 1_000_000_000,
        usage: 3,
        tenant: "acme",
        platform_sub: None,
    };
    c.bench_function("policy_input_json_then_convert", |b| {
        b.iter(|| input_value(&black_box(&parts).to_json()))
    });
    c.bench_function("policy_input_direct", |b| {
        b.iter(|| black_box(&parts).to_rego())
    });

    // The engine's floor: the same input through a one-line policy.
    let trivial = PolicyBundle {
        modules: vec![(
            "t.rego".into(),
            "package atb.poa\nimport rego.v1\ndecision := {\"allow\": true, \"reason\": \"allow\"}\n".into(),
        )],
        data: json!({}),
        eval_timeout: Duration::from_secs(1),
    };
    let mut floor = trivial.engine().expect("trivial policy compiles");
    c.bench_function("policy_engine_floor", |b| {
        b.iter(|| evaluate(&mut floor, black_box(&high)).expect("decision"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
