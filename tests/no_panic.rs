//! No panic on any input: every parser that sees attacker-controlled bytes
//! is fed thousands of mutations of valid inputs (bit flips, cut-offs,
//! spliced-in delimiters, replaced spans) plus random bytes. Each call must
//! return — `Ok` or a clear `Err` — and never panic. Deterministic (seeded).

use std::time::Duration;

use atb::poa::claims::{self, ClaimRules};
use atb::poa::token;
use atb::policy::embedded::{evaluate, PolicyBundle};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};

/// xorshift64*: a small deterministic generator, enough for mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SPLICE: &[&[u8]] = &[
    b".",
    b"..",
    b"/",
    b"//",
    b"%2e",
    b"%00",
    b"\0",
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"=",
    b"-",
    b"_",
    b"+",
    b" ",
    b"\xff",
    b"\xc3\x28",
    b"\xe2\x82",
    b"null",
    b"true",
    b"1e309",
    b"-0",
    b"18446744073709551616",
    b"\"\\ud800\"",
    b"spiffe://",
    b"eyJ",
];

/// One mutation of `seed`.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.truncate(at),
            2 => {
                let s = SPLICE[rng.below(SPLICE.len())];
                v.splice(at..at, s.iter().copied());
            }
            3 if at < v.len() => {
                let end = (at + rng.below(16)).min(v.len());
                v.drain(at..end);
            }
            4 => {
                let n = rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            _ => {
                let copy = v.clone();
                v.extend_from_slice(&copy[at.min(copy.len())..]);
            }
        }
    }
    v
}

fn inputs(rng: &mut Rng, seeds: &[Vec<u8>], n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            if i % 10 == 0 {
                let len = rng.below(200);
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                let seed = &seeds[rng.below(seeds.len())];
                mutate(rng, seed)
            }
        })
        .collect()
}

const AGENT: &str = "spiffe://acme.example/agent/demo";

fn valid_claims() -> Value {
    json!({
        "sub": AGENT, "act": "sap.payment.execute",
        "con": {"connector": "erp", "payment_limit": 5000},
        "leg": {"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "owner"},
                "dual_control": {"required": true, "approvers": [
                    {"id": "alice", "timestamp": 1_800_000_000}, {"id": "bob", "timestamp": 1_800_000_000}]}},
        "iat": 1_800_000_000, "exp": 1_800_000_300, "jti": "0123456789abcdef",
        "iss": "atb-agentauth", "aud": ["atb-broker"],
    })
}

#[test]
fn mandates_never_panic() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let vk = key.verifying_key();
    let jwt = token::sign(&valid_claims(), &key, "kid-1");
    let rules = ClaimRules {
        max_ttl_seconds: 300,
        leeway_seconds: 10,
        issuer: Some("atb-agentauth".into()),
        audience: Some("atb-broker".into()),
    };
    let mut rng = Rng(0x5eed_0001);
    let mut verified = 0;
    // (Fewer than the others: most mutations still parse, and each then
    // costs a signature check.)
    for bytes in inputs(&mut rng, &[jwt.clone().into_bytes()], 4_000) {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Ok(unverified) = token::parse(text) {
            if unverified.verify(&vk).is_ok() {
                // Not malleable: only the token itself verifies, not a
                // re-encoding of it.
                assert_eq!(text, jwt, "a changed token verified");
                verified += 1;
            }
        }
    }
    // Some mutations give the token back unchanged (and those verify).
    assert!(verified > 0);

    // The claim checks see the payload after the signature: mutate it too.
    let payload = serde_json::to_vec(&valid_claims()).unwrap();
    assert!(claims::validate(&payload, &rules, 1_800_000_100).is_ok());
    for bytes in inputs(&mut rng, &[payload], 20_000) {
        let _ = claims::validate(&bytes, &rules, 1_800_000_100);
    }
}

#[test]
fn identities_keys_and_challenge_bodies_never_panic() {
    let mut rng = Rng(0x5eed_0002);
    let ids = [
        b"spiffe://acme.example/agent/demo".to_vec(),
        b"spiffe://saas.example/tenants/globex/agent/a-b_c.d".to_vec(),
    ];
    for bytes in inputs(&mut rng, &ids, 20_000) {
        let _ = atb::spiffe::SpiffeId::parse(&String::from_utf8_lossy(&bytes));
    }

    let ed = SigningKey::from_bytes(&[9; 32]).verifying_key();
    use base64::Engine;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ed.as_bytes());
    let jwks = json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "a", "alg": "EdDSA", "use": "sig"},
        {"kty": "RSA", "n": "sXch", "e": "AQAB", "kid": "r"},
        {"kty": "EC", "crv": "P-256", "x": "f83O", "y": "x_FE", "kid": "e"},
    ], "revoked_kids": ["old"]})
    .to_string()
    .into_bytes();
    for bytes in inputs(&mut rng, &[jwks], 5_000) {
        let _ = atb::poa::keys::parse_jwks(&bytes);
        let _ = atb::agentauth::approver::parse_jwks(&bytes);
    }

    let body = json!({"act": "crm.contact.update", "con": {"amount": 5, "tags": ["a", "b"]},
                      "leg": {"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "o"}}})
    .to_string()
    .into_bytes();
    for bytes in inputs(&mut rng, &[body], 20_000) {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            let _ = atb::agentauth::challenge::parse_request(&v, AGENT);
        }
    }
}

#[test]
fn request_paths_routes_and_pins_never_panic() {
    use atb::catalog::TenantCatalogue;
    use atb::routes::{path, pinned::PinnedCall, RouteConfig, RouteTable};
    let mut rng = Rng(0x5eed_0005);
    let catalogue = TenantCatalogue::new(None).unwrap();
    let route = |action: &str, methods: &[&str], path: &str| RouteConfig {
        action: action.into(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path: path.into(),
    };
    let table = RouteTable::compile(
        &[
            route("crm.contact.read", &["GET"], "/api/contacts/{id}"),
            route(
                "crm.contact.update",
                &["PUT", "PATCH"],
                "/api/contacts/{id}",
            ),
            route("kb.docs.search", &["GET", "POST"], "/api/docs/{*rest}"),
            route("sap.payment.execute", &["POST"], "/api/pay"),
        ],
        &catalogue,
        "c",
    )
    .unwrap();
    // Request paths: canonicalised, then matched (as the pipeline does).
    let paths = [
        b"/api/contacts/17".to_vec(),
        b"/api/docs/a/b%20c/d.md".to_vec(),
        b"/api/v%65ndors/%31%37".to_vec(),
    ];
    for bytes in inputs(&mut rng, &paths, 20_000) {
        let raw = String::from_utf8_lossy(&bytes);
        let _ = path::decode(&raw);
        if let Ok(p) = path::canonical(&raw) {
            for method in ["GET", "POST", "get", "DELETE"] {
                let _ = table.lookup(method, &p);
            }
        }
    }
    // Route templates from configuration.
    let templates = [
        b"/api/contacts/{id}".to_vec(),
        b"/api/{a}/x/{*rest}".to_vec(),
    ];
    for bytes in inputs(&mut rng, &templates, 5_000) {
        let t = String::from_utf8_lossy(&bytes).into_owned();
        let _ = RouteTable::compile(&[route("crm.contact.read", &["GET"], &t)], &catalogue, "c");
    }
    // Query strings and JSON and form bodies read for the policy.
    let bodies = [
        br#"{"amount": 5, "to": {"iban": "X", "tags": [1, "a"]}}"#.to_vec(),
        b"q=invoices&page=2&x=%20y".to_vec(),
    ];
    for bytes in inputs(&mut rng, &bodies, 20_000) {
        let _ = atb::broker::params::from_json(&bytes);
        let _ = atb::broker::params::from_form(&bytes);
        let _ = atb::broker::params::from_query(&String::from_utf8_lossy(&bytes));
    }
    // Pinned calls in a mandate's con.
    let pins = [
        json!({"http": {"method": "DELETE", "path": "/api/vendors/17", "query": "a=1"}})
            .to_string()
            .into_bytes(),
    ];
    for bytes in inputs(&mut rng, &pins, 10_000) {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            if let Ok(Some(p)) = PinnedCall::from_con(Some(&v)) {
                let _ = p.check("DELETE", "/api/vendors/17", "a=1");
            }
        }
    }
}

#[test]
fn audit_lines_and_configuration_never_panic() {
    let mut rng = Rng(0x5eed_0003);
    let mut chain = atb::audit::chain::Chain::new("broker", Default::default());
    let lines: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            chain
                .seal(&json!({"event": "decision", "i": i}))
                .unwrap()
                .into_bytes()
        })
        .collect();
    for bytes in inputs(&mut rng, &lines, 20_000) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = atb::audit::chain::read_line(&text);
        let _ = atb::audit::chain::verify(bytes.as_slice(), false);
        let _ = atb::audit::chain::verify(bytes.as_slice(), true);
    }

    let config = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/atb.example.toml"),
    )
    .unwrap();
    for bytes in inputs(&mut rng, &[config], 2_000) {
        if let Ok(c) = atb::config::Config::from_toml(&String::from_utf8_lossy(&bytes)) {
            let _ = c.validate();
        }
    }
}

#[test]
fn policy_inputs_never_panic_the_engine() {
    let bundle = PolicyBundle::load(None, None, &[], Duration::from_secs(1)).unwrap();
    let mut engine = bundle.engine().unwrap();
    let input = json!({
        "agent": {"spiffe_id": AGENT}, "poa": valid_claims(),
        "request": {"method": "POST", "path": "/api/pay", "action": "sap.payment.execute",
                    "params": {"amount": 100}},
        "policy": {"max_ttl_seconds": 300}, "current_time_ns": 1_800_000_100_000_000_000u64,
        "rate_limit_state": {"sap.payment.execute": 3}, "tenant": {"id": "acme"},
    });
    assert!(evaluate(&mut engine, &input).unwrap().allow);
    let mut rng = Rng(0x5eed_0004);
    let seed = serde_json::to_vec(&input).unwrap();
    let mut decided = 0;
    for bytes in inputs(&mut rng, &[seed], 3_000) {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            // A decision or an engine error (answered 503), never a panic.
            if evaluate(&mut engine, &v).is_ok() {
                decided += 1;
            }
        }
    }
    assert!(decided > 0);
}

#[test]
fn approver_tokens_token_headers_and_forwarded_for_never_panic() {
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
    let mut rng = Rng(0x5eed_0007);

    // Approver tokens: a valid one mutated, through the whole check.
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = (dir.path().join("idp.key"), dir.path().join("idp.pub"));
    atb::poa::keys::generate_signing_key(&private, &public).unwrap();
    let key = atb::poa::keys::load_signing_pem(&private).unwrap();
    let config = atb::agentauth::config::ApproverAuthConfig {
        issuer: "idp".into(),
        audience: "atb".into(),
        public_key_files: vec![public],
        ..Default::default()
    };
    let tls = atb::runtime::tls::outbound(&Default::default()).unwrap();
    let auth = atb::agentauth::approver::ApproverAuth::new(config, tls).unwrap();
    let claims = json!({"iss": "idp", "aud": "atb", "sub": "alice@acme.example",
        "tenant": ["acme"], "roles": ["manager", "cfo"], "iat": 1_800_000_000i64,
        "exp": 1_800_000_600i64});
    let valid = token::sign(&claims, &key, "idp").into_bytes();
    actix_web::rt::System::new().block_on(async {
        // The seed itself passes, so the mutations exercise the whole check.
        let seed = String::from_utf8_lossy(&valid).into_owned();
        assert!(auth.authenticate(&seed, 1_800_000_100).await.is_ok());
        for bytes in inputs(&mut rng, &[valid], 10_000) {
            let _ = auth
                .authenticate(&String::from_utf8_lossy(&bytes), 1_800_000_100)
                .await;
        }
    });

    // Mandate headers: Authorization and X-PoA-Token, alone or together.
    let seeds = [
        b"Bearer eyJhbGciOiJFZERTQSJ9.e30.c2ln".to_vec(),
        b"bearer  a.b.c".to_vec(),
        b"Basic dXNlcjpwYXNz".to_vec(),
    ];
    for bytes in inputs(&mut rng, &seeds, 20_000) {
        let Ok(value) = HeaderValue::from_bytes(&bytes) else {
            continue;
        };
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("authorization"), value.clone());
        let _ = atb::poa::presented::presented_token(&headers);
        headers.insert(HeaderName::from_static("x-poa-token"), value);
        let _ = atb::poa::presented::presented_token(&headers);
    }

    // X-Forwarded-For as AgentAuth reads it behind trusted proxies.
    let proxies = atb::agentauth::client_addr::TrustedProxies::parse(&[
        "10.0.0.0/8".into(),
        "fd00::/8".into(),
    ])
    .unwrap();
    let seeds = [
        b"203.0.113.7, 10.1.2.3".to_vec(),
        b"[2001:db8::1]:443, fd00::5".to_vec(),
        b"unknown, , 10.0.0.1".to_vec(),
    ];
    for bytes in inputs(&mut rng, &seeds, 20_000) {
        let text = String::from_utf8_lossy(&bytes);
        for peer in ["10.0.0.9", "192.0.2.1", "fd00::1"] {
            let _ = proxies.source(peer.parse().ok(), &[&text, &text]);
        }
        let _ = atb::agentauth::client_addr::parse_cidr(&text);
    }
}

#[test]
fn platform_tokens_never_panic() {
    use atb::broker::platform::PlatformVerifier;
    use atb::tenant::PlatformConfig;
    let key = SigningKey::from_bytes(&[11; 32]);
    let dir = tempfile::tempdir().unwrap();
    let pem = openssl::pkey::PKey::public_key_from_raw_bytes(
        key.verifying_key().as_bytes(),
        openssl::pkey::Id::ED25519,
    )
    .unwrap()
    .public_key_to_pem()
    .unwrap();
    let path = dir.path().join("idp-1.pem");
    std::fs::write(&path, pem).unwrap();
    let config = PlatformConfig {
        issuer: "https://idp.example".into(),
        audience: "atb".into(),
        public_key_files: vec![path],
        ..PlatformConfig::default()
    };
    let tls = atb::runtime::tls::outbound(&Default::default()).unwrap();
    let verifier = PlatformVerifier::new("acme", &config, tls).unwrap();
    let claims = json!({"iss": "https://idp.example", "aud": "atb", "sub": AGENT,
                        "iat": 1_800_000_000, "exp": 1_800_000_300});
    let jwt = token::sign(&claims, &key, "idp-1");
    let mut rng = Rng(0x5eed_0007);
    let inputs = inputs(&mut rng, &[jwt.clone().into_bytes()], 3_000);
    actix_web::rt::System::new().block_on(async {
        let now = 1_800_000_100;
        assert_eq!(verifier.verify(&jwt, now).await.unwrap(), AGENT);
        let mut verified = 0;
        for bytes in inputs {
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            if verifier.verify(text, now).await.is_ok() {
                assert_eq!(text, jwt, "a changed platform token verified");
                verified += 1;
            }
        }
        assert!(verified > 0);
    });
}

#[test]
fn biscuits_never_panic() {
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
    use atb::biscuit::config::BiscuitConfig;
    use atb::biscuit::tools::{self, Attenuation, Mint};
    use atb::biscuit::verify::{authorize, verify, Request, RootKeys};
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE;
    let mut rng = Rng(0x5eed_0008);
    let now = 1_800_000_000;
    let (private, public) = tools::keygen();
    let keys = RootKeys::parse(&[(1, public)]).unwrap();
    let limits = BiscuitConfig::default();
    let actions = vec!["sap.payment.execute".to_owned()];
    let minted = tools::mint(
        &private,
        &Mint {
            tenant: "acme",
            agent: AGENT,
            actions: &actions,
            issued: now,
            ttl: 300,
            con: &json!({"connector": "erp"}),
            leg: &valid_claims()["leg"],
            id: Some("0123456789abcdef"),
            root_key_id: 1,
        },
    )
    .unwrap();
    let token = tools::attenuate(
        &minted,
        &Attenuation {
            max_amount: Some(5000),
            route: Some(("POST".into(), "/api/pay".into())),
            checks: vec!["n(1); n(2); p($x, $y) <- n($x), n($y); check if p(1, 2)".into()],
            now,
            ..Attenuation::default()
        },
    )
    .unwrap();
    let params = json!({"amount": 100, "to": "x", "urgent": true, "f": 1.5});
    let params = params.as_object().unwrap();
    let request = Request {
        agent: AGENT,
        tenant: "acme",
        action: "sap.payment.execute",
        method: "POST",
        path: "/api/pay",
        route: Some("/api/pay"),
        connector: "erp",
        params,
        now,
    };
    let original = verify(&token, &keys, &limits, now, 10, 300).unwrap();
    authorize(&original, &request, &limits).unwrap();
    // The whole check, on mutations of the text and of the decoded bytes.
    let bytes = b64.decode(&token).unwrap();
    let mut texts: Vec<String> = inputs(&mut rng, &[token.clone().into_bytes()], 1_500)
        .into_iter()
        .filter_map(|b| String::from_utf8(b).ok())
        .collect();
    texts.extend(
        inputs(&mut rng, &[bytes], 1_500)
            .into_iter()
            .map(|b| b64.encode(b)),
    );
    let mut verified = 0;
    for text in &texts {
        if let Ok(cap) = verify(text, &keys, &limits, now, 10, 300) {
            // Whatever verifies grants what the original grants.
            assert_eq!(cap.agent, original.agent);
            assert_eq!(cap.rights, original.rights);
            assert_eq!(cap.revocation_ids[0], original.revocation_ids[0]);
            let _ = authorize(&cap, &request, &limits);
            verified += 1;
        }
    }
    assert!(verified > 0);
    // The offline tools read untrusted tokens too.
    for text in texts.iter().take(1_000) {
        let _ = tools::inspect(text);
        let _ = tools::attenuate(
            text,
            &Attenuation {
                ttl: Some(60),
                now,
                ..Attenuation::default()
            },
        );
    }
    // Huge and odd tokens are refused, not parsed at length.
    for odd in [
        "A".repeat(1 << 20),
        "=".repeat(9000),
        String::new(),
        "\u{0}".into(),
        token[..token.len() / 2].to_owned(),
        format!("{token}{token}"),
        token.replace('-', "+").replace('_', "/"),
    ] {
        assert!(verify(&odd, &keys, &limits, now, 10, 300).is_err());
        let _ = tools::inspect(&odd);
    }
    // Datalog an attenuation may carry: parsed, never a panic.
    let checks = [
        b"check if param(\"amount\", $v), $v <= 5000".to_vec(),
        b"e(0, 1); e(1, 2); r($x, $y) <- e($x, $y); r($x, $z) <- e($x, $y), r($y, $z); check if r(0, 2)".to_vec(),
    ];
    for bytes in inputs(&mut rng, &checks, 1_000) {
        let check = String::from_utf8_lossy(&bytes).into_owned();
        if let Ok(t) = tools::attenuate(
            &minted,
            &Attenuation {
                checks: vec![check],
                now,
                ..Attenuation::default()
            },
        ) {
            if let Ok(cap) = verify(&t, &keys, &limits, now, 10, 300) {
                let _ = authorize(&cap, &request, &limits);
            }
        }
    }
    // X-ATB-Biscuit (alone, twice, beside a bearer token).
    let seeds = [
        token.clone().into_bytes(),
        b"EnQKCg".to_vec(),
        b"a.b.c".to_vec(),
    ];
    for bytes in inputs(&mut rng, &seeds, 5_000) {
        let Ok(value) = HeaderValue::from_bytes(&bytes) else {
            continue;
        };
        let biscuit = HeaderName::from_static("x-atb-biscuit");
        let mut headers = HeaderMap::new();
        headers.insert(biscuit.clone(), value.clone());
        let _ = atb::poa::presented::presented_credential(&headers);
        headers.append(biscuit, value.clone());
        let _ = atb::poa::presented::presented_credential(&headers);
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("x-atb-biscuit"), value.clone());
        let mut bearer = b"Bearer ".to_vec();
        bearer.extend_from_slice(value.as_bytes());
        if let Ok(bearer) = HeaderValue::from_bytes(&bearer) {
            headers.insert(HeaderName::from_static("authorization"), bearer);
        }
        let _ = atb::poa::presented::presented_credential(&headers);
    }
}
