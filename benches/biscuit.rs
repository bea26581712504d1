//! Biscuit capabilities next to PoA JWTs: the broker's per-request CPU to
//! verify a credential (signatures, authority facts) and, for a Biscuit, to
//! run its authorizer against the request — with the authority block alone
//! and with two attenuation blocks (3 blocks). The JWT path is the same
//! work as `pipeline`'s `poa_verify_and_claims`, on the same grant.

use std::hint::black_box;
use std::time::Duration;

use atb::biscuit::config::BiscuitConfig;
use atb::biscuit::tools::{self, Attenuation, Mint};
use atb::biscuit::verify::{authorize, verify, Request, RootKeys};
use atb::poa::claims::{self, ClaimRules};
use atb::poa::token;
use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::SigningKey;
use serde_json::{json, Map, Value};

#[path = "support/grant.rs"]
mod grant;
use grant::{ACTION, AGENT};

fn bench(c: &mut Criterion) {
    let now = grant::NOW;
    let leg = grant::leg();
    let con = grant::con();
    let jti = grant::JTI;

    // The JWT path.
    let key = SigningKey::from_bytes(&[9; 32]);
    let claims_doc = grant::claims();
    let jwt = token::sign(&claims_doc, &key, "kid-1");
    let vk = key.verifying_key();
    let rules = ClaimRules {
        max_ttl_seconds: 300,
        leeway_seconds: 10,
        issuer: None,
        audience: None,
    };
    c.bench_function("jwt_verify_and_claims", |b| {
        b.iter(|| {
            let u = token::parse(black_box(&jwt)).expect("parse");
            let payload = u.verify(&vk).expect("verify");
            claims::validate(&payload, &rules, now + 1).expect("claims")
        })
    });

    // The same grant as a Biscuit, and attenuated twice (3 blocks): only
    // this action and at most 1000 through `erp`; then 60 s and one route.
    let (private, public) = tools::keygen();
    let keys = RootKeys::parse(&[(1, public)]).expect("root key");
    let one = tools::mint(
        &private,
        &Mint {
            tenant: "acme",
            agent: AGENT,
            actions: &[ACTION.to_owned()],
            issued: now,
            ttl: 300,
            con: &con,
            leg: &leg,
            id: Some(jti),
            root_key_id: 1,
        },
    )
    .expect("mint");
    let two = tools::attenuate(
        &one,
        &Attenuation {
            actions: vec![ACTION.into()],
            max_amount: Some(1000),
            connector: Some("erp".into()),
            now,
            ..Attenuation::default()
        },
    )
    .expect("attenuate");
    let three = tools::attenuate(
        &two,
        &Attenuation {
            ttl: Some(60),
            route: Some(("POST".into(), "/api/pay".into())),
            now,
            ..Attenuation::default()
        },
    )
    .expect("attenuate");
    // The default limits, except the authorizer's wall-clock budget
    // (5 ms): on a shared host a preempted iteration can exceed it, which
    // the broker answers 401 but a benchmark must not die of.
    let limits = BiscuitConfig {
        max_time_ms: 1000,
        ..BiscuitConfig::default()
    };
    let params: Map<String, Value> =
        serde_json::from_value(json!({"amount": 100})).expect("params");
    let request = Request {
        agent: AGENT,
        tenant: "acme",
        action: ACTION,
        method: "POST",
        path: "/api/pay",
        route: Some("/api/pay"),
        connector: "erp",
        params: &params,
        now: now + 1,
    };
    for (name, token, blocks) in [
        ("biscuit_1_block", &one, 1),
        ("biscuit_3_blocks", &three, 3),
    ] {
        let mut cap = verify(token, &keys, &limits, now + 1, 10, 300).expect("verifies");
        assert_eq!(cap.blocks, blocks);
        cap.act = ACTION.into();
        // The benchmarks measure an allowed request.
        authorize(&cap, &request, &limits).expect("allowed");
        c.bench_function(&format!("{name}_verify"), |b| {
            b.iter(|| verify(black_box(token), &keys, &limits, now + 1, 10, 300).expect("verify"))
        });
        c.bench_function(&format!("{name}_authorize"), |b| {
            b.iter(|| authorize(black_box(&cap), &request, &limits).expect("authorize"))
        });
        c.bench_function(&format!("{name}_verify_and_authorize"), |b| {
            b.iter(|| {
                let mut cap =
                    verify(black_box(token), &keys, &limits, now + 1, 10, 300).expect("verify");
                cap.act = ACTION.into();
                authorize(&cap, &request, &limits).expect("authorize")
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
