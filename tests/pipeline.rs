//! The PoA enforcement pipeline over real mTLS: every row of the SPEC §3
//! table, each with a test that fails if its check is removed.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use serde_json::{json, Value};

const ACME: &str = "spiffe://acme.example/agent/demo";
const GLOBEX: &str = "spiffe://saas.example/tenants/globex/agent/demo";
const GLOBEX_PREFIX: &str = "spiffe://saas.example/tenants/globex";
const LEG: &str = r#"{"jurisdiction":"EU","accountable_party":{"type":"user","id":"owner"}}"#;

/// Query strings of the requests that reached `/api/slow` (any test
/// upstream in this process).
static SLOW_ARRIVALS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Query strings of the requests that reached `/api/drip`.
static DRIP_ARRIVALS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// An upstream that echoes what it received; `/api/slow` takes 5 s;
/// `/api/drip` streams `first;` at once and `second` 2 s later.
fn start_upstream() -> u16 {
    async fn echo(req: HttpRequest, body: web::Bytes) -> HttpResponse {
        let headers: serde_json::Map<String, Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), Value::from(v.to_str().unwrap_or(""))))
            .collect();
        HttpResponse::Ok()
            .insert_header(("x-upstream", "yes"))
            .json(json!({
                "method": req.method().as_str(), "path": req.path(), "query": req.query_string(),
                "headers": headers, "body": String::from_utf8_lossy(&body),
            }))
    }
    async fn slow(req: HttpRequest) -> HttpResponse {
        SLOW_ARRIVALS
            .lock()
            .unwrap()
            .push(req.query_string().to_owned());
        actix_web::rt::time::sleep(Duration::from_secs(5)).await;
        HttpResponse::Ok().finish()
    }
    async fn drip(req: HttpRequest) -> HttpResponse {
        use futures_util::StreamExt;
        DRIP_ARRIVALS
            .lock()
            .unwrap()
            .push(req.query_string().to_owned());
        let first = futures_util::stream::once(async {
            Ok::<_, actix_web::Error>(web::Bytes::from_static(b"first;"))
        });
        let second = futures_util::stream::once(async {
            actix_web::rt::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, actix_web::Error>(web::Bytes::from_static(b"second"))
        });
        HttpResponse::Ok().streaming(first.chain(second))
    }
    serve_app!(|| {
        App::new()
            .route("/api/slow", web::to(slow))
            .route("/api/drip", web::to(drip))
            .default_service(web::to(echo))
    })
}

struct Setup {
    pki: Pki,
    /// acme's mandate key.
    key: SigningKey,
    /// globex's own mandate key (tenants never share one).
    globex_key: SigningKey,
    broker: Broker,
}

/// The routes every test connector declares: reads anywhere under /api,
/// searches, contact updates and payments on their own paths.
const ROUTES: &str = r#"
[[tenants.connectors.routes]]
action = "crm.contact.read"
methods = ["GET"]
path = "/api/{*rest}"
[[tenants.connectors.routes]]
action = "crm.contact.read"
methods = ["GET"]
path = "/api/contacts/{id}"
[[tenants.connectors.routes]]
action = "crm.contact.update"
methods = ["PUT", "PATCH"]
path = "/api/contacts/{id}"
[[tenants.connectors.routes]]
action = "kb.docs.search"
methods = ["GET", "POST"]
path = "/api/search"
[[tenants.connectors.routes]]
action = "kb.faq.query"
methods = ["GET", "POST"]
path = "/api/search"
[[tenants.connectors.routes]]
action = "sap.payment.execute"
methods = ["POST"]
path = "/api/pay"
"#;

/// Two tenants; `extra_acme` adds keys to acme itself, `extra_acme_poa` to
/// its `[tenants.poa]`. Acme has its own action `acme.vendor.delete`
/// (DELETE, low risk) on `/api/vendors/{vendor_id}` of its `crm` connector,
/// and an unbound connector `open` (`routes = "any"`).
fn tenants(
    keys: (&SigningKey, &SigningKey),
    upstream: u16,
    extra_acme: &str,
    extra_acme_poa: &str,
) -> String {
    format!(
        r#"
[[tenants]]
id = "acme"
trust_domain = "acme.example"
{extra_acme}
[tenants.poa]
public_key_files = ["{pubkey}"]
revoked_jtis = ["revoked-jti"]
{extra_acme_poa}
[tenants.policy_data.catalog.methods]
"acme.vendor.delete" = ["DELETE"]
[tenants.policy_data.catalog.tiers]
"acme.vendor.delete" = "low"
[[tenants.connectors]]
id = "crm"
upstream_url = "http://127.0.0.1:{upstream}"
egress_allowlist = ["/api/"]
timeout_seconds = 1
{ROUTES}
[[tenants.connectors.routes]]
action = "acme.vendor.delete"
methods = ["DELETE"]
path = "/api/vendors/{{vendor_id}}"
[[tenants.connectors]]
id = "tight"
upstream_url = "http://127.0.0.1:{upstream}"
egress_allowlist = ["/api/"]
rate_limit = {{ requests_per_second = 0.5, burst = 1 }}
{ROUTES}
[[tenants.connectors]]
id = "down"
upstream_url = "http://127.0.0.1:{down}"
egress_allowlist = ["/api/"]
{ROUTES}
[[tenants.connectors]]
id = "open"
upstream_url = "http://127.0.0.1:{upstream}"
egress_allowlist = ["/api/"]
routes = "any"

[[tenants]]
id = "globex"
spiffe_prefix = "spiffe://saas.example/tenants/globex"
[tenants.poa]
public_key_files = ["{globex_pubkey}"]
[[tenants.connectors]]
id = "crm"
upstream_url = "http://127.0.0.1:{upstream}"
egress_allowlist = ["/api/"]
{ROUTES}
"#,
        pubkey = keys.0.public.display(),
        globex_pubkey = keys.1.public.display(),
        down = free_port(),
    )
}

fn setup_with(extra_toml: &str, extra_acme_poa: &str, env: &[(&str, &str)]) -> Setup {
    setup_acme(extra_toml, "", extra_acme_poa, env)
}

fn setup_acme(
    extra_toml: &str,
    extra_acme: &str,
    extra_acme_poa: &str,
    env: &[(&str, &str)],
) -> Setup {
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "poa");
    let upstream = start_upstream();
    let globex_key = SigningKey::new(pki.dir.path(), "globex-poa");
    let tenants = tenants((&key, &globex_key), upstream, extra_acme, extra_acme_poa);
    let broker = Broker::start(&pki, &format!("{extra_toml}\n{tenants}"), env);
    Setup {
        pki,
        key,
        globex_key,
        broker,
    }
}

fn setup() -> Setup {
    setup_with("", "", &[])
}

impl Setup {
    /// A mandate of `sub` for `act` through `connector`, with the default leg.
    fn mint_via(&self, sub: &str, act: &str, connector: &str) -> String {
        let con = format!(r#"{{"connector":"{connector}"}}"#);
        let key = if sub.starts_with(GLOBEX_PREFIX) {
            &self.globex_key
        } else {
            &self.key
        };
        key.mint(sub, act, &["--leg", LEG, "--con", &con])
    }

    fn mint(&self, act: &str, extra: &[&str]) -> String {
        let mut args = vec!["--leg", LEG, "--con", r#"{"connector":"crm"}"#];
        args.extend_from_slice(extra);
        self.key.mint(ACME, act, &args)
    }

    fn call(&self, agent: &str, path: &str, token: &str, extra: &[&str]) -> Answer {
        let auth = format!("Authorization: Bearer {token}");
        let mut args = vec!["-H", auth.as_str()];
        args.extend_from_slice(extra);
        agent_get(&self.broker, &self.pki, Some(agent), path, &args)
    }

    fn acme(&self, path: &str, token: &str) -> Answer {
        self.call("acme-agent", path, token, &[])
    }
}

fn expect(a: &Answer, status: u16, code: &str) {
    assert_eq!((a.status, a.error().as_str()), (status, code), "{a:?}");
}

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn kid_of(token: &str) -> String {
    let part = token.split('.').next().unwrap();
    let h: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap();
    h["kid"].as_str().unwrap().to_owned()
}

#[test]
fn an_allowed_call_reaches_the_upstream_with_broker_headers_and_no_credentials() {
    let s = setup();
    let t = s.mint("crm.contact.read", &[]);
    let t_first = t.clone();
    let a = s.call(
        "acme-agent",
        "/api/contacts?id=7",
        &t,
        &[
            "-H",
            "X-ATB-Action: crm.contact.read",
            "-H",
            "X-ATB-Tenant: evil",
            "-H",
            "X-Custom: kept",
        ],
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-upstream"), Some("yes"));
    let echo = a.json();
    assert_eq!(echo["path"], "/api/contacts");
    assert_eq!(echo["query"], "id=7");
    let h = &echo["headers"];
    assert_eq!(h["x-atb-agent"], ACME);
    assert_eq!(
        h["x-atb-tenant"], "acme",
        "client-supplied X-ATB-Tenant must be replaced"
    );
    assert_eq!(h["x-atb-action"], "crm.contact.read");
    assert_eq!(h["x-request-id"], a.header("x-request-id").unwrap());
    assert_eq!(h["x-custom"], "kept");
    assert!(
        h.get("authorization").is_none(),
        "the PoA must not reach the upstream"
    );
    // A JSON body streams through intact, PoA also stripped from X-PoA-Token.
    let t = s.mint("kb.docs.search", &[]);
    let xp = format!("X-PoA-Token: {t}");
    let a = agent_get(
        &s.broker,
        &s.pki,
        Some("acme-agent"),
        "/api/search",
        &[
            "-H",
            &xp,
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"name":"Ada"}"#,
        ],
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["body"], r#"{"name":"Ada"}"#);
    assert_eq!(a.json()["method"], "POST");
    assert!(a.json()["headers"].get("x-poa-token").is_none());

    let m = s.broker.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_poa_validations_total{format="jwt",result="valid",tenant="acme"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"atb_upstream_requests_total{connector="crm",status="2xx",tenant="acme"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, r#"atb_requests_total{status="ok",tenant="acme"}"#),
        Some(2.0)
    );
    assert!(m.contains("atb_policy_evaluation_seconds_bucket{engine=\"embedded\""));
    assert!(eventually(Duration::from_secs(5), || s
        .broker
        .audit()
        .len()
        >= 2));
    let audit = s.broker.audit();
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["tenant"], "acme");
    assert_eq!(audit[0]["agent"], ACME);
    assert_eq!(audit[0]["action"], "crm.contact.read");
    assert_eq!(audit[0]["jti"], claims_of(&t_first)["jti"]);
    assert!(audit[0]["latency_us"].as_u64().is_some());
}

#[test]
fn missing_and_malformed_mandates_are_refused() {
    let s = setup();
    let a = agent_get(&s.broker, &s.pki, Some("acme-agent"), "/api/x", &[]);
    expect(&a, 401, "poa_required");
    expect(&s.acme("/api/x", "not-a-jwt"), 401, "poa_invalid");
}

#[test]
fn unmandated_low_risk_calls_only_where_the_tenant_allows_them() {
    let s = setup_acme(
        "",
        "default_connector = \"crm\"",
        "allow_unmandated_low_risk = true",
        &[],
    );
    let bare = |agent: &str, path: &str, extra: &[&str]| {
        agent_get(&s.broker, &s.pki, Some(agent), path, extra)
    };
    // A low-risk catalogue action on its route: the policy allows it
    // without a mandate and the call is forwarded as that action.
    let a = bare(
        "acme-agent",
        "/api/contacts",
        &["-H", "X-ATB-Action: crm.contact.read"],
    );
    assert_eq!(a.status, 200, "{a:?}");
    let h = &a.json()["headers"];
    assert_eq!(h["x-atb-action"], "crm.contact.read");
    assert_eq!(h["x-atb-agent"], ACME);
    // Without the header the action comes from the route.
    let a = bare("acme-agent", "/api/contacts", &[]);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["headers"]["x-atb-action"], "crm.contact.read");
    // A method no route carries.
    let post = bare(
        "acme-agent",
        "/api/contacts",
        &["-X", "POST", "-H", "X-ATB-Action: crm.contact.read"],
    );
    expect(&post, 403, "action_route_mismatch");
    // The header cannot relabel a route: it must be one of its actions.
    for action in [
        "sap.payment.execute",
        "crm.contact.update",
        "made.up.action",
    ] {
        let header = format!("X-ATB-Action: {action}");
        expect(
            &bare("acme-agent", "/api/x", &["-H", &header]),
            403,
            "action_route_mismatch",
        );
    }
    // Routes of actions above low risk need a mandate, header or not.
    for extra in [
        &["-X", "POST", "-H", "X-ATB-Action: sap.payment.execute"][..],
        &["-X", "POST"][..],
    ] {
        let a = bare("acme-agent", "/api/pay", extra);
        expect(&a, 401, "poa_required");
        assert!(a.json()["reason"]
            .as_str()
            .unwrap()
            .contains("poa_required_for_action"));
    }
    expect(
        &bare("acme-agent", "/api/contacts/7", &["-X", "PUT"]),
        401,
        "poa_required",
    );
    // A route several actions share needs the header to pick one.
    expect(
        &bare("acme-agent", "/api/search", &[]),
        403,
        "action_route_mismatch",
    );
    let a = bare(
        "acme-agent",
        "/api/search",
        &["-H", "X-ATB-Action: kb.docs.search"],
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["headers"]["x-atb-action"], "kb.docs.search");
    // A header that is no action name is a bad request, not a policy input.
    for action in ["crm contact", "crm.contact.read;x", &"a".repeat(257)] {
        let header = format!("X-ATB-Action: {action}");
        expect(
            &bare("acme-agent", "/api/x", &["-H", &header]),
            400,
            "bad_request",
        );
    }
    // The allowed call passes the later steps too: egress still applies.
    expect(
        &bare(
            "acme-agent",
            "/admin/x",
            &["-H", "X-ATB-Action: crm.contact.read"],
        ),
        403,
        "egress_denied",
    );
    // Another tenant that did not enable the path: a mandate is required.
    expect(
        &bare(
            "globex-agent",
            "/api/x",
            &["-H", "X-ATB-Action: crm.contact.read"],
        ),
        401,
        "poa_required",
    );
    // The audit names the path taken.
    let audit = s.broker.audit();
    assert!(audit
        .iter()
        .any(|e| e["reason"] == "allow_low_risk_without_poa"
            && e["action"] == "crm.contact.read"
            && e["status"] == 200));
    let m = s.broker.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_poa_validations_total{format="none",result="absent",tenant="acme"}"#
        ),
        Some(15.0),
        "{m}"
    );
}

#[test]
fn algorithm_confusion_is_refused() {
    let s = setup();
    let good = s.mint("crm.contact.read", &[]);
    let claims = claims_of(&good);
    let kid = kid_of(&good);
    // alg none, empty signature.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": kid}).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    expect(&s.acme("/api/x", &none), 401, "poa_invalid");
    // HS256 keyed with the public key's bytes (PEM and raw).
    let pem = std::fs::read(&s.key.public).unwrap();
    let raw = openssl::pkey::PKey::public_key_from_pem(&pem)
        .unwrap()
        .raw_public_key()
        .unwrap();
    for secret in [pem.clone(), raw] {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let key = openssl::pkey::PKey::hmac(&secret).unwrap();
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
        signer.update(input.as_bytes()).unwrap();
        let hs = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signer.sign_to_vec().unwrap())
        );
        let a = s.acme("/api/x", &hs);
        expect(&a, 401, "poa_invalid");
        assert!(a.json()["reason"].as_str().unwrap().contains("only EdDSA"));
    }
    // The untouched token still works: nothing above burnt its jti.
    assert_eq!(s.acme("/api/x", &good).status, 200);
}

#[test]
fn unknown_kid_and_wrong_key_are_refused() {
    let s = setup();
    let other = SigningKey::new(s.pki.dir.path(), "other");
    let t = other.mint(
        ACME,
        "crm.contact.read",
        &["--leg", LEG, "--con", r#"{"connector":"crm"}"#],
    );
    let a = s.acme("/api/x", &t);
    expect(&a, 401, "poa_invalid");
    assert!(a.json()["reason"].as_str().unwrap().contains("unknown kid"));
    // Signed by another key but claiming the trusted key's kid.
    let real = s.mint("crm.contact.read", &[]);
    let kid = kid_of(&real);
    let t = other.mint(ACME, "crm.contact.read", &["--leg", LEG, "--kid", &kid]);
    let a = s.acme("/api/x", &t);
    expect(&a, 401, "poa_invalid");
    assert!(a.json()["reason"].as_str().unwrap().contains("signature"));
}

#[test]
fn a_forged_token_does_not_burn_the_real_jti() {
    let s = setup();
    let real = s.mint("crm.contact.read", &["--jti", "shared-jti"]);
    let other = SigningKey::new(s.pki.dir.path(), "attacker");
    let forged = other.mint(
        ACME,
        "crm.contact.read",
        &["--leg", LEG, "--kid", &kid_of(&real), "--jti", "shared-jti"],
    );
    expect(&s.acme("/api/x", &forged), 401, "poa_invalid");
    assert_eq!(
        s.acme("/api/x", &real).status,
        200,
        "the real token must still be usable"
    );
    expect(&s.acme("/api/x", &real), 403, "poa_replay");
}

#[test]
fn a_malformed_body_does_not_burn_the_mandate() {
    let s = setup();
    let t = s.mint("kb.docs.search", &[]);
    let json = ["-H", "Content-Type: application/json", "--data"];
    let bad = s.call(
        "acme-agent",
        "/api/search",
        &t,
        &[json[0], json[1], json[2], "{broken"],
    );
    expect(&bad, 400, "bad_request");
    let good = s.call(
        "acme-agent",
        "/api/search",
        &t,
        &[json[0], json[1], json[2], r#"{"ok":true}"#],
    );
    assert_eq!(good.status, 200, "{good:?}");
}

#[test]
fn expired_and_overlong_mandates_are_refused() {
    let s = setup();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let iat = (now - 200).to_string();
    let expired = s.mint("crm.contact.read", &["--iat", &iat, "--ttl", "60"]);
    expect(&s.acme("/api/x", &expired), 401, "poa_expired");
    let long = s.mint("crm.contact.read", &["--ttl", "301"]);
    let a = s.acme("/api/x", &long);
    expect(&a, 401, "poa_invalid");
    assert!(a.json()["reason"].as_str().unwrap().contains("300s"));
    let future = (now + 120).to_string();
    expect(
        &s.acme("/api/x", &s.mint("crm.contact.read", &["--iat", &future])),
        401,
        "poa_invalid",
    );
    let m = s.broker.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_poa_validations_total{format="jwt",result="expired",tenant="acme"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"atb_poa_validations_total{format="jwt",result="invalid",tenant="acme"}"#
        ),
        Some(2.0)
    );
}

#[test]
fn issuer_and_audience_are_enforced_when_configured() {
    let s = setup_with(
        "",
        "issuer = \"https://agentauth.test\"\naudience = \"atb-broker\"",
        &[],
    );
    expect(
        &s.acme("/api/x", &s.mint("crm.contact.read", &[])),
        401,
        "poa_invalid",
    );
    let wrong_aud = s.mint(
        "crm.contact.read",
        &["--iss", "https://agentauth.test", "--aud", "other"],
    );
    expect(&s.acme("/api/x", &wrong_aud), 401, "poa_invalid");
    let ok = s.mint(
        "crm.contact.read",
        &["--iss", "https://agentauth.test", "--aud", "atb-broker"],
    );
    assert_eq!(s.acme("/api/x", &ok).status, 200);
}

#[test]
fn a_mandate_for_another_agent_is_refused() {
    let s = setup();
    let con = ["--leg", LEG, "--con", r#"{"connector":"crm"}"#];
    // Validly signed with acme's key, for another agent, presented with
    // acme's certificate.
    let t = s.key.mint(GLOBEX, "crm.contact.read", &con);
    expect(&s.acme("/api/x", &t), 403, "poa_subject_mismatch");
    // And on globex: signed with globex's key for acme's agent.
    let t = s.globex_key.mint(ACME, "crm.contact.read", &con);
    expect(
        &s.call("globex-agent", "/api/x", &t, &[]),
        403,
        "poa_subject_mismatch",
    );
    // The rightful owner can still use its own.
    let t = s.mint("crm.contact.read", &[]);
    assert_eq!(s.acme("/api/x", &t).status, 200);
}

#[test]
fn the_action_header_must_match_the_mandate() {
    let s = setup();
    let t = s.mint("crm.contact.read", &[]);
    let a = s.call(
        "acme-agent",
        "/api/x",
        &t,
        &["-H", "X-ATB-Action: crm.contact.delete"],
    );
    expect(&a, 403, "action_mismatch");
}

#[test]
fn revoked_mandates_and_keys_are_refused() {
    let s = setup();
    expect(
        &s.acme(
            "/api/x",
            &s.mint("crm.contact.read", &["--jti", "revoked-jti"]),
        ),
        401,
        "poa_revoked",
    );
}

#[test]
fn revocations_added_through_the_admin_api_apply_at_once() {
    let token = "revoke-token-0123456789abcdef";
    let s = setup_with("", "", &[("ATB_ADMIN_TOKEN", token)]);
    let auth = format!("Authorization: Bearer {token}");
    let revoke = |body: &str, headers: &[&str]| {
        admin(
            &s.broker,
            "POST",
            "/admin/tenants/acme/revocations",
            headers,
            Some(body),
        )
    };
    // A mandate not yet used, then its jti revoked: refused.
    let pending = s.mint("crm.contact.read", &["--jti", "leaked-jti"]);
    expect(
        &revoke(r#"{"jtis": ["leaked-jti"]}"#, &[]),
        401,
        "admin_unauthorized",
    );
    let r = revoke(r#"{"jtis": ["leaked-jti"]}"#, &[&auth]);
    assert_eq!(
        r.json()["jtis"],
        json!(["leaked-jti", "revoked-jti"]),
        "{r:?}"
    );
    expect(&s.acme("/api/x", &pending), 401, "poa_revoked");
    // The signing key revoked: every mandate it signed is refused for this
    // tenant; another tenant trusting the same key is not affected.
    let t = s.mint("crm.contact.read", &[]);
    let kid = kid_of(&t);
    let r = revoke(&format!(r#"{{"kids": ["{kid}"]}}"#), &[&auth]);
    assert_eq!(r.json()["kids"], json!([kid]));
    expect(&s.acme("/api/x", &t), 401, "poa_revoked");
    let g = s.mint_via(GLOBEX, "crm.contact.read", "crm");
    assert_eq!(s.call("globex-agent", "/api/x", &g, &[]).status, 200);
    // Bad requests.
    expect(&revoke(r#"{"jtis": [""]}"#, &[&auth]), 400, "bad_request");
    expect(&revoke(r#"{"kid": ["x"]}"#, &[&auth]), 400, "bad_request");
    let unknown = admin(
        &s.broker,
        "POST",
        "/admin/tenants/nobody/revocations",
        &[&auth],
        Some("{}"),
    );
    expect(&unknown, 404, "unknown_tenant");
    // Without the token, whether a tenant exists is not revealed.
    let probe = admin(
        &s.broker,
        "POST",
        "/admin/tenants/nobody/revocations",
        &[],
        Some("{}"),
    );
    expect(&probe, 401, "admin_unauthorized");
    // The token before the body: an unauthenticated 100 KB body is 401
    // (not a framework 413), an authenticated one over the 64 KiB limit a
    // JSON 413; both carry the request id of their X-Request-ID header.
    let big = format!(r#"{{"jtis": ["{}"]}}"#, "x".repeat(100_000));
    expect(&revoke(&big, &[]), 401, "admin_unauthorized");
    let r = revoke(&big, &[&auth]);
    expect(&r, 413, "body_too_large");
    let id = r.json()["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!id.is_empty(), "{r:?}");
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "x-request-id" && *v == id),
        "{r:?}"
    );
    let listed = admin(
        &s.broker,
        "GET",
        "/admin/tenants/acme/revocations",
        &[&auth],
        None,
    );
    assert_eq!(listed.json()["kids"], json!([kid]));
}

#[test]
fn revoked_kid_is_refused() {
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "poa");
    let kid = kid_of(&key.mint(ACME, "x", &[]));
    let upstream = start_upstream();
    let globex_key = SigningKey::new(pki.dir.path(), "globex-poa");
    let config = tenants(
        (&key, &globex_key),
        upstream,
        "",
        &format!("revoked_kids = [\"{kid}\"]"),
    );
    let broker = Broker::start(&pki, &config, &[]);
    let t = key.mint(
        ACME,
        "crm.contact.read",
        &["--leg", LEG, "--con", r#"{"connector":"crm"}"#],
    );
    let a = agent_get(
        &broker,
        &pki,
        Some("acme-agent"),
        "/api/x",
        &["-H", &format!("Authorization: Bearer {t}")],
    );
    expect(&a, 401, "poa_revoked");
    // A forged token naming the revoked kid fails its signature first.
    let other = SigningKey::new(pki.dir.path(), "forger");
    let forged = other.mint(
        ACME,
        "crm.contact.read",
        &[
            "--leg",
            LEG,
            "--con",
            r#"{"connector":"crm"}"#,
            "--kid",
            &kid,
        ],
    );
    let a = agent_get(
        &broker,
        &pki,
        Some("acme-agent"),
        "/api/x",
        &["-H", &format!("Authorization: Bearer {forged}")],
    );
    expect(&a, 401, "poa_invalid");
}

#[test]
fn a_mandate_is_single_use() {
    let s = setup();
    let t = s.mint("crm.contact.read", &[]);
    assert_eq!(s.acme("/api/x", &t).status, 200);
    expect(&s.acme("/api/x", &t), 403, "poa_replay");
    let m = s.broker.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_replay_rejections_total{cause="replay",tenant="acme"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn a_tenant_that_fills_its_replay_share_fails_closed_alone() {
    // Two tenants share 4 entries: 2 live mandates each.
    let s = setup_with("[poa]\nreplay_capacity = 4\n", "", &[]);
    for _ in 0..2 {
        let a = s.acme("/api/x", &s.mint("crm.contact.read", &[]));
        assert_eq!(a.status, 200, "{a:?}");
    }
    let a = s.acme("/api/x", &s.mint("crm.contact.read", &[]));
    expect(&a, 503, "replay_store_unavailable");
    assert!(a.header("retry-after").is_some());
    assert!(
        a.json()["reason"].as_str().unwrap().contains("share"),
        "{a:?}"
    );
    // The other tenant keeps its room.
    for _ in 0..2 {
        let g = s.mint_via(GLOBEX, "crm.contact.read", "crm");
        let a = s.call("globex-agent", "/api/x", &g, &[]);
        assert_eq!(a.status, 200, "{a:?}");
    }
    let m = s.broker.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_replay_rejections_total{cause="tenant_full",tenant="acme"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn single_use_can_be_turned_off() {
    let s = setup_with("", "", &[("POA_SINGLE_USE", "false")]);
    let t = s.mint("crm.contact.read", &[]);
    assert_eq!(s.acme("/api/x", &t).status, 200);
    assert_eq!(s.acme("/api/x", &t).status, 200);
}

#[test]
fn concurrent_replays_from_32_connections_have_exactly_one_winner() {
    let s = setup();
    let t = s.mint("crm.contact.read", &[]);
    let auth = format!("Authorization: Bearer {t}");
    let children: Vec<_> = (0..32)
        .map(|_| {
            Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "20",
                    "--cacert",
                ])
                .arg(s.pki.ca())
                .arg("--cert")
                .arg(s.pki.path("acme-agent.crt"))
                .arg("--key")
                .arg(s.pki.path("acme-agent.key"))
                .args(["-H", &auth, &s.broker.url("/api/x")])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<String> = children
        .into_iter()
        .map(|c| String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap())
        .collect();
    // Exactly one winner was forwarded: normally a 200; on a host so
    // loaded that the echo upstream misses the connector's 1 s timeout, a
    // 504 (forwarded, then timed out). Everyone else is refused.
    let winners: Vec<&String> = codes.iter().filter(|c| *c != "403").collect();
    assert_eq!(winners.len(), 1, "{codes:?}");
    assert!(winners[0] == "200" || winners[0] == "504", "{codes:?}");
}

#[test]
fn policy_denials_carry_the_policys_reason() {
    let s = setup();
    let pay = |t: &str| {
        let body = [
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"amount": 500}"#,
        ];
        s.call("acme-agent", "/api/pay", t, &body)
    };
    // The constraint family runs first: no amount, no payment.
    let a = s.call(
        "acme-agent",
        "/api/pay",
        &s.mint("sap.payment.execute", &[]),
        &["-X", "POST"],
    );
    expect(&a, 403, "policy_denied");
    assert_eq!(a.json()["reason"], "action_denied");
    let a = pay(&s.mint("sap.payment.execute", &[]));
    expect(&a, 403, "policy_denied");
    assert_eq!(a.json()["reason"], "high_risk_dual_control_required");
    assert_eq!(a.json()["details"]["tier"], "high");
    // Evidence as AgentAuth writes it: each approval timestamped.
    let approved_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let dual = json!({"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "owner"},
        "dual_control": {"required": true, "approvers": [
            {"id": "alice", "timestamp": approved_at}, {"id": "bob", "timestamp": approved_at}]}})
    .to_string();
    let t = s.key.mint(
        ACME,
        "sap.payment.execute",
        &["--leg", &dual, "--con", r#"{"connector":"crm"}"#],
    );
    assert_eq!(pay(&t).status, 200);
    assert!(eventually(Duration::from_secs(5), || s
        .broker
        .audit()
        .iter()
        .any(|e| e["code"] == "policy_denied")));
    let e = s
        .broker
        .audit()
        .into_iter()
        .find(|e| e["code"] == "policy_denied" && e["reason"] != "action_denied")
        .unwrap();
    assert_eq!(e["decision"], "deny");
    assert_eq!(e["reason"], "high_risk_dual_control_required");
    assert_eq!(e["risk_tier"], "high");
}

#[test]
fn policy_engine_errors_fail_closed_and_params_reach_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        r#"package atb.poa
import rego.v1
default decision := {"allow": false, "reason": "deny_by_default"}
decision := {"allow": true, "reason": "allow", "risk_tier": "low"} if {
    input.request.action == "kb.docs.search"
    input.request.params.amount < 100
    input.request.params.region == "eu"
    input.rate_limit_state["kb.docs.search"] >= 0
    input.current_time_ns > 0
    input.tenant.id == "acme"
}
decision := {"allow": true, "reason": "allow"} if {
    input.request.action == "kb.faq.query"
    to_number("not a number") > 0
}
"#,
    )
    .unwrap();
    let policy = format!("[policy]\ndir = \"{}\"\n", dir.path().display());
    let s = setup_with(&policy, "", &[]);
    let post = |act: &str, body: &str| {
        let t = s.mint(act, &[]);
        s.call(
            "acme-agent",
            "/api/search?region=eu",
            &t,
            &["-H", "Content-Type: application/json", "--data", body],
        )
    };
    assert_eq!(post("kb.docs.search", r#"{"amount": 5}"#).status, 200);
    expect(
        &post("kb.docs.search", r#"{"amount": 500}"#),
        403,
        "policy_denied",
    );
    expect(&post("kb.docs.search", "{not json"), 400, "bad_request");
    let a = post("kb.faq.query", "{}");
    expect(&a, 503, "policy_unavailable");
    assert!(a.header("retry-after").is_some());
    // The engine's own words stay in the log, with the request id.
    let reason = a.json()["reason"].as_str().unwrap().to_owned();
    assert!(!reason.contains("to_number"), "{reason}");
    let id = a.header("x-request-id").unwrap().to_owned();
    assert!(eventually(Duration::from_secs(5), || {
        let log = s.broker.stderr();
        log.lines()
            .any(|l| l.contains("to_number") && l.contains(id.as_str()))
    }));
    let m = s.broker.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_policy_decisions_total{decision="error",risk_tier="unknown",tenant="acme"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn the_policy_reloads_atomically_and_keeps_the_last_good_one() {
    // The shipped policy and catalogue, from a directory we can edit.
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/atb");
    for f in ["poa.rego", "catalog.json"] {
        std::fs::copy(root.join(f), dir.path().join(f)).unwrap();
    }
    let policy = format!("[policy]\ndir = \"{}\"\n", dir.path().display());
    let token = "reload-token-0123456789abcdef";
    let s = setup_with(
        &policy,
        "",
        &[("ATB_ADMIN_TOKEN", token), ("POLICY_RELOAD_SECONDS", "1")],
    );
    let auth = format!("Authorization: Bearer {token}");
    let reload = |headers: &[&str]| admin(&s.broker, "POST", "/admin/policy/reload", headers, None);
    let read = || s.acme("/api/x", &s.mint("crm.contact.read", &[]));
    assert_eq!(read().status, 200);
    assert_eq!(reload(&[&auth]).json(), json!({"changed": false}));
    expect(&reload(&[]), 401, "admin_unauthorized");

    // The tenant's catalogue now calls the action high risk: reloaded on
    // demand, the next call needs dual control.
    let catalog_path = dir.path().join("catalog.json");
    let original = std::fs::read_to_string(&catalog_path).unwrap();
    let mut catalog: Value = serde_json::from_str(&original).unwrap();
    catalog["atb"]["catalog"]["tiers"]["crm.contact.read"] = json!("high");
    std::fs::write(&catalog_path, catalog.to_string()).unwrap();
    assert_eq!(reload(&[&auth]).json(), json!({"changed": true}));
    let denied = read();
    expect(&denied, 403, "policy_denied");
    assert_eq!(denied.json()["reason"], "high_risk_dual_control_required");

    // A policy that does not compile is refused with its reason; the
    // running one stays, on demand and on the periodic reload alike.
    std::fs::write(
        dir.path().join("broken.rego"),
        "package atb.poa\nthis is not rego\n",
    )
    .unwrap();
    let refused = reload(&[&auth]);
    expect(&refused, 422, "policy_invalid");
    assert!(refused.json()["reason"]
        .as_str()
        .unwrap()
        .contains("broken.rego"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(read().json()["reason"], "high_risk_dual_control_required");
    let m = s.broker.metrics();
    assert!(
        metric(&m, r#"atb_policy_reloads_total{result="error"}"#).unwrap() >= 2.0,
        "{m}"
    );

    // Fixed on disk: the periodic reload picks it up without a request.
    std::fs::remove_file(dir.path().join("broken.rego")).unwrap();
    std::fs::write(&catalog_path, original).unwrap();
    assert!(eventually(Duration::from_secs(10), || read().status == 200));
    let m = s.broker.metrics();
    assert!(
        metric(&m, r#"atb_policy_reloads_total{result="changed"}"#).unwrap() >= 2.0,
        "{m}"
    );
}

#[test]
fn opa_unreachable_fails_closed() {
    let url = format!("http://127.0.0.1:{}/v1/data/atb/poa/decision", free_port());
    let s = setup_with(
        "",
        "",
        &[("POLICY_ENGINE", "opa"), ("OPA_DECISION_URL", &url)],
    );
    let a = s.acme("/api/x", &s.mint("crm.contact.read", &[]));
    expect(&a, 503, "policy_unavailable");
    // A broker whose policy engine is gone takes no traffic.
    let r = admin(&s.broker, "GET", "/ready", &[], None);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.json()["reason"].as_str().unwrap().contains("OPA"),
        "{r:?}"
    );
}

/// A stand-in for OPA's REST API: `/health`, and a decision that allows
/// `crm.contact.read` only (checking the input shape the broker sends).
fn start_fake_opa() -> u16 {
    async fn decide(body: web::Json<Value>) -> HttpResponse {
        let input = &body["input"];
        let allow = input["poa"]["act"] == "crm.contact.read"
            && input["request"]["action"] == "crm.contact.read"
            && input["agent"]["spiffe_id"] == ACME
            && input["tenant"]["id"] == "acme";
        HttpResponse::Ok().json(json!({"result": {
            "allow": allow, "reason": if allow { "allow" } else { "opa_says_no" }, "risk_tier": "low",
        }}))
    }
    serve_app!(|| {
        App::new()
            .route("/health", web::get().to(HttpResponse::Ok))
            .route("/v1/data/atb/poa/decision", web::post().to(decide))
    })
}

#[test]
fn a_remote_opa_decides_and_its_health_gates_readiness() {
    let port = start_fake_opa();
    let url = format!("http://127.0.0.1:{port}/v1/data/atb/poa/decision");
    let s = setup_with(
        "",
        "",
        &[("POLICY_ENGINE", "opa"), ("OPA_DECISION_URL", &url)],
    );
    assert_eq!(admin(&s.broker, "GET", "/ready", &[], None).status, 200);
    assert_eq!(
        s.acme("/api/x", &s.mint("crm.contact.read", &[])).status,
        200
    );
    let denied = s.call(
        "acme-agent",
        "/api/contacts/7",
        &s.mint("crm.contact.update", &[]),
        &["-X", "PUT"],
    );
    expect(&denied, 403, "policy_denied");
    assert_eq!(denied.json()["reason"], "opa_says_no");
}

#[test]
fn egress_and_connector_rules() {
    let s = setup();
    expect(
        &s.acme("/admin/x", &s.mint("crm.contact.read", &[])),
        403,
        "egress_denied",
    );
    // The raw dot segment reaches the broker (curl would resolve it).
    expect(
        &s.call(
            "acme-agent",
            "/api/../admin",
            &s.mint("crm.contact.read", &[]),
            &["--path-as-is"],
        ),
        403,
        "egress_denied",
    );
    let unknown = s.mint_via(ACME, "crm.contact.read", "erp");
    expect(&s.acme("/api/x", &unknown), 403, "egress_denied");
    // With several connectors the mandate must name one.
    let unnamed = s.key.mint(ACME, "crm.contact.read", &["--leg", LEG]);
    expect(&s.acme("/api/x", &unnamed), 403, "egress_denied");
}

#[test]
fn connector_rate_limit_answers_429() {
    let s = setup();
    let tight = |_: ()| s.mint_via(ACME, "crm.contact.read", "tight");
    assert_eq!(s.acme("/api/x", &tight(())).status, 200);
    let t = tight(());
    let a = s.acme("/api/x", &t);
    expect(&a, 429, "rate_limited");
    let wait = a.header("retry-after").unwrap().parse::<u64>().unwrap();
    assert!(wait >= 1);
    // The refused mandate was not spent: after Retry-After it goes through
    // (once).
    std::thread::sleep(Duration::from_secs(wait));
    assert_eq!(s.acme("/api/x", &t).status, 200);
    std::thread::sleep(Duration::from_secs(wait));
    expect(&s.acme("/api/x", &t), 403, "poa_replay");
}

#[test]
fn upstream_failures_are_502_and_504() {
    let s = setup();
    let down = s.mint_via(ACME, "crm.contact.read", "down");
    expect(&s.acme("/api/x", &down), 502, "upstream_error");
    expect(
        &s.acme("/api/slow", &s.mint("crm.contact.read", &[])),
        504,
        "upstream_timeout",
    );
    let m = s.broker.metrics();
    assert_eq!(
        metric(&m, r#"atb_requests_total{status="error",tenant="acme"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"atb_upstream_requests_total{connector="crm",status="timeout",tenant="acme"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn oversized_bodies_are_refused() {
    let s = setup_with(
        "[upstream]\nmax_json_body_bytes = 64\nmax_body_bytes = 128\n",
        "",
        &[],
    );
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(100));
    let t = s.mint("kb.docs.search", &[]);
    let a = s.call(
        "acme-agent",
        "/api/search",
        &t,
        &["-H", "Content-Type: application/json", "--data", &big],
    );
    expect(&a, 413, "body_too_large");
    let t = s.mint("kb.docs.search", &[]);
    let a = s.call(
        "acme-agent",
        "/api/search",
        &t,
        &["-H", "Content-Type: text/plain", "--data", &"b".repeat(200)],
    );
    expect(&a, 413, "body_too_large");
    // A chunked body has no Content-Length: it is cut off at the limit
    // while it streams, and the upstream never gets a complete request.
    let chunked = |len: usize| {
        let t = s.mint("kb.docs.search", &[]);
        let body = "c".repeat(len);
        s.call(
            "acme-agent",
            "/api/search",
            &t,
            &[
                "--http1.1",
                "-H",
                "Content-Type: text/plain",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &body,
            ],
        )
    };
    let small = chunked(100);
    assert_eq!(small.status, 200, "{small:?}");
    assert_eq!(small.json()["body"], "c".repeat(100));
    expect(&chunked(5000), 413, "body_too_large");
    let m = s.broker.metrics();
    assert!(m.contains(r#"status="body_too_large""#), "{m}");
}

/// An independent client: Python requests + PyJWT mint their own EdDSA
/// mandate and call the broker over mTLS.
#[test]
fn python_client_with_pyjwt_passes_through() {
    let python = std::env::var("ATB_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} not found: run scripts/test (it creates .venv with requests, PyJWT, cryptography)"
    );
    let s = setup();
    let script = r#"
import sys, time, uuid, json, jwt, requests
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key, Encoding, PublicFormat
import hashlib, base64
key_path, url, ca, cert, keyfile, sub = sys.argv[1:7]
priv = load_pem_private_key(open(key_path, 'rb').read(), password=None)
raw = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
x = base64.urlsafe_b64encode(raw).rstrip(b'=').decode()
kid = base64.urlsafe_b64encode(hashlib.sha256(('{"crv":"Ed25519","kty":"OKP","x":"%s"}' % x).encode()).digest()).rstrip(b'=').decode()
now = int(time.time())
claims = {"sub": sub, "act": "crm.contact.read", "con": {"connector": "crm"},
          "leg": {"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "owner"}},
          "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
token = jwt.encode(claims, priv, algorithm="EdDSA", headers={"kid": kid})
r1 = requests.get(url, headers={"Authorization": "Bearer " + token}, cert=(cert, keyfile), verify=ca, timeout=10)
r2 = requests.get(url, headers={"Authorization": "Bearer " + token}, cert=(cert, keyfile), verify=ca, timeout=10)
print(json.dumps({"first": r1.status_code, "agent": r1.json().get("headers", {}).get("x-atb-agent"),
                  "second": r2.status_code, "second_error": r2.json().get("error")}))
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&s.key.private)
        .arg(s.broker.url("/api/py"))
        .arg(s.pki.ca())
        .arg(s.pki.path("acme-agent.crt"))
        .arg(s.pki.path("acme-agent.key"))
        .arg(ACME)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["first"], 200, "{v}");
    assert_eq!(v["agent"], ACME);
    assert_eq!(v["second"], 403);
    assert_eq!(v["second_error"], "poa_replay");
}

/// Serves `jwks` (re-read on every request) at `/jwks.json` on `port`,
/// counting fetches.
fn serve_jwks(
    port: u16,
    jwks: std::path::PathBuf,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    serve_app!(port, move || {
        let jwks = jwks.clone();
        let hits = hits.clone();
        App::new().route(
            "/jwks.json",
            web::get().to(move || {
                let jwks = jwks.clone();
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(std::fs::read(&jwks).unwrap_or_default())
                }
            }),
        )
    });
}

fn jwk(key: &SigningKey, kid: &str) -> Value {
    let pem = std::fs::read(&key.public).unwrap();
    let raw = openssl::pkey::PKey::public_key_from_pem(&pem)
        .unwrap()
        .raw_public_key()
        .unwrap();
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(raw)})
}

#[test]
fn jwks_keys_survive_a_startup_outage_and_unknown_kids_do_not_storm() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "jwks-key");
    let jwks_file = pki.path("jwks.json");
    std::fs::write(&jwks_file, json!({"keys": [jwk(&key, "k1")]}).to_string()).unwrap();
    let jwks_port = free_port();
    let upstream = start_upstream();
    let config = format!(
        r#"
[[tenants]]
id = "acme"
trust_domain = "acme.example"
[tenants.poa]
jwks_url = "http://127.0.0.1:{jwks_port}/jwks.json"
[[tenants.connectors]]
id = "crm"
upstream_url = "http://127.0.0.1:{upstream}"
egress_allowlist = ["/api/"]
{ROUTES}
"#
    );
    // The JWKS is down when the broker starts: it starts anyway, not ready.
    let broker = Broker::start(&pki, &config, &[]);
    let r = admin(&broker, "GET", "/ready", &[], None);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["reason"], "verification keys not loaded");
    let call = |t: &str| {
        agent_get(
            &broker,
            &pki,
            Some("acme-agent"),
            "/api/x",
            &["-H", &format!("Authorization: Bearer {t}")],
        )
    };
    let mint = |kid: &str| key.mint(ACME, "crm.contact.read", &["--leg", LEG, "--kid", kid]);
    expect(&call(&mint("k1")), 401, "poa_invalid");

    // The JWKS comes up: the broker's retries pick the keys up.
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    serve_jwks(jwks_port, jwks_file.clone(), hits.clone());
    assert!(
        eventually(Duration::from_secs(20), || admin(
            &broker,
            "GET",
            "/ready",
            &[],
            None
        )
        .status
            == 200),
        "broker never loaded the JWKS"
    );
    assert_eq!(call(&mint("k1")).status, 200);

    // A flood of unknown kids inside the cooldown costs no fetch at all.
    let before = hits.load(Ordering::SeqCst);
    for i in 0..20 {
        expect(&call(&mint(&format!("bogus-{i}"))), 401, "poa_invalid");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "unknown kids must not trigger fetches within the cooldown"
    );
    // Known keys keep working.
    assert_eq!(call(&mint("k1")).status, 200);
    let m = broker.metrics();
    assert!(metric(&m, r#"atb_jwks_refreshes_total{result="ok",tenant="acme"}"#).unwrap() >= 1.0);
    assert_eq!(metric(&m, r#"atb_jwks_keys{tenant="acme"}"#), Some(1.0));
}

/// `curl -X METHOD --path-as-is` on the mTLS listener with a mandate.
fn call_as(s: &Setup, method: &str, path: &str, token: &str, extra: &[&str]) -> Answer {
    let mut args = vec!["-X", method, "--path-as-is"];
    args.extend_from_slice(extra);
    s.call("acme-agent", path, token, &args)
}

#[test]
fn a_mandate_reaches_only_its_actions_routes_and_a_refusal_does_not_spend_it() {
    let s = setup();
    let t = s.mint("crm.contact.read", &[]);
    // The reported hole: the cheapest mandate on a payment and on a vendor
    // deletion.
    let json = ["-H", "Content-Type: application/json", "--data"];
    let pay = call_as(
        &s,
        "POST",
        "/api/pay",
        &t,
        &[json[0], json[1], json[2], r#"{"amount":999999999}"#],
    );
    expect(&pay, 403, "action_route_mismatch");
    expect(
        &call_as(&s, "DELETE", "/api/vendors/1", &t, &[]),
        403,
        "action_route_mismatch",
    );
    // Edges: method case, another method, an empty catch-all.
    for (method, path) in [
        ("get", "/api/contacts/7"),
        ("PUT", "/api/contacts/7"),
        ("GET", "/api/"),
    ] {
        let a = call_as(&s, method, path, &t, &[]);
        expect(&a, 403, "action_route_mismatch");
    }
    // Method overrides (headers or a _method parameter) are refused: an
    // upstream honouring them would perform another method than the route's.
    for extra in [
        &["-H", "X-HTTP-Method-Override: DELETE"][..],
        &["-H", "X-HTTP-Method: DELETE"][..],
        &["-H", "X-Method-Override: DELETE"][..],
    ] {
        expect(
            &call_as(&s, "GET", "/api/contacts/7", &t, extra),
            403,
            "action_route_mismatch",
        );
    }
    expect(
        &call_as(&s, "GET", "/api/contacts/7?_method=DELETE", &t, &[]),
        403,
        "action_route_mismatch",
    );
    // Encoded dots and slashes never reach matching.
    for path in [
        "/api/contacts/%2e%2e",
        "/api/contacts%2f7",
        "/api/%2e%2e/admin",
    ] {
        expect(&call_as(&s, "GET", path, &t, &[]), 403, "egress_denied");
    }
    // None of that spent the mandate: it works on its own route, once, and
    // the upstream receives the canonical path (unreserved escapes decoded).
    let ok = call_as(&s, "GET", "/api/contacts/%37", &t, &[]);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["path"], "/api/contacts/7");
    assert_eq!(ok.json()["headers"]["x-atb-action"], "crm.contact.read");
    expect(
        &call_as(&s, "GET", "/api/contacts/7", &t, &[]),
        403,
        "poa_replay",
    );
    // A catch-all takes any non-empty rest.
    let deep = call_as(
        &s,
        "GET",
        "/api/a/b/c",
        &s.mint("crm.contact.read", &[]),
        &[],
    );
    assert_eq!(deep.status, 200, "{deep:?}");
    // The audit records the refusals and the route the allowed call took.
    assert!(eventually(Duration::from_secs(5), || {
        let audit = s.broker.audit();
        audit
            .iter()
            .filter(|e| e["code"] == "action_route_mismatch" && e["action"] == "crm.contact.read")
            .count()
            == 9
            && audit.iter().any(|e| {
                e["status"] == 200
                    && e["route"] == "/api/contacts/{id}"
                    && e["path"] == "/api/contacts/%37"
            })
    }));
    let m = s.broker.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_rejections_total{code="action_route_mismatch",tenant="acme"}"#
        ),
        Some(9.0),
        "{m}"
    );
}

#[test]
fn a_pinned_mandate_reaches_exactly_its_call() {
    let s = setup();
    let pinned = |con: Value| {
        s.key.mint(
            ACME,
            "acme.vendor.delete",
            &["--leg", LEG, "--con", &con.to_string()],
        )
    };
    let t = pinned(
        json!({"connector": "crm", "http": {"method": "DELETE", "path": "/api/vendors/17"}}),
    );
    // Not vendor 18, not another method, not a spelling that differs.
    expect(
        &call_as(&s, "DELETE", "/api/vendors/18", &t, &[]),
        403,
        "action_route_mismatch",
    );
    expect(
        &call_as(&s, "DELETE", "/api/vendors/170", &t, &[]),
        403,
        "action_route_mismatch",
    );
    expect(
        &call_as(&s, "GET", "/api/vendors/17", &t, &[]),
        403,
        "action_route_mismatch",
    );
    // The pinned call itself (escapes of unreserved characters are the same
    // path), once.
    let ok = call_as(&s, "DELETE", "/api/v%65ndors/%31%37", &t, &[]);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["path"], "/api/vendors/17");
    assert_eq!(ok.json()["method"], "DELETE");
    expect(
        &call_as(&s, "DELETE", "/api/vendors/17", &t, &[]),
        403,
        "poa_replay",
    );
    // A pinned query must match too.
    let q = pinned(
        json!({"connector": "crm", "http": {"method": "DELETE", "path": "/api/vendors/5", "query": "hard=false"}}),
    );
    expect(
        &call_as(&s, "DELETE", "/api/vendors/5?hard=true", &q, &[]),
        403,
        "action_route_mismatch",
    );
    assert_eq!(
        call_as(&s, "DELETE", "/api/vendors/5?hard=false", &q, &[]).status,
        200
    );
    // A malformed pin is refused, never ignored.
    for http in [
        json!("DELETE /api/vendors/17"),
        json!({"method": "DELETE"}),
        json!({"method": "TRACE", "path": "/api/vendors/17"}),
    ] {
        let bad = pinned(json!({"connector": "crm", "http": http}));
        expect(
            &call_as(&s, "DELETE", "/api/vendors/17", &bad, &[]),
            403,
            "action_route_mismatch",
        );
    }
    // Without a pin: exact templates (no trailing slash, no extra segment).
    let free = pinned(json!({"connector": "crm"}));
    for path in ["/api/vendors/17/", "/api/vendors/17/x", "/api/vendors/"] {
        expect(
            &call_as(&s, "DELETE", path, &free, &[]),
            403,
            "action_route_mismatch",
        );
    }
    assert_eq!(
        call_as(&s, "DELETE", "/api/vendors/17", &free, &[]).status,
        200
    );
    // A con member named like a capture binds it (policy).
    let bound = pinned(json!({"connector": "crm", "vendor_id": "17"}));
    let a = call_as(&s, "DELETE", "/api/vendors/18", &bound, &[]);
    expect(&a, 403, "policy_denied");
    assert_eq!(a.json()["reason"], "route_param_mismatch");
    let bound = pinned(json!({"connector": "crm", "vendor_id": 17}));
    assert_eq!(
        call_as(&s, "DELETE", "/api/vendors/17", &bound, &[]).status,
        200
    );
}

#[test]
fn the_policy_sees_the_route_and_its_captures() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        r#"package atb.poa
import rego.v1
default decision := {"allow": false, "reason": "deny_by_default"}
decision := {"allow": true, "reason": "allow", "risk_tier": "low"} if {
    input.request.route == "/api/vendors/{vendor_id}"
    input.request.route_params == {"vendor_id": "a b"}
    input.request.path == "/api/vendors/a%20b"
    input.request.action == "acme.vendor.delete"
}
"#,
    )
    .unwrap();
    let s = setup_with(
        &format!("[policy]\ndir = \"{}\"\n", dir.path().display()),
        "",
        &[],
    );
    let t = s.mint("acme.vendor.delete", &[]);
    let a = call_as(&s, "DELETE", "/api/vendors/a%20b", &t, &[]);
    assert_eq!(a.status, 200, "{a:?}");
    let t = s.mint("acme.vendor.delete", &[]);
    expect(
        &call_as(&s, "DELETE", "/api/vendors/ab", &t, &[]),
        403,
        "policy_denied",
    );
}

#[test]
fn an_unbound_connector_is_explicit_warned_and_flagged() {
    let s = setup();
    // routes = "any": the mandate's act is not bound to method and path.
    let t = s.mint_via(ACME, "crm.contact.read", "open");
    let a = call_as(&s, "POST", "/api/anything", &t, &[]);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["headers"]["x-atb-action"], "crm.contact.read");
    let m = s.broker.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_connector_unbound{connector="open",tenant="acme"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"atb_connector_unbound{connector="crm",tenant="acme"}"#
        ),
        Some(0.0)
    );
    let log = s.broker.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("NOT bound") && l.contains("open")),
        "{log}"
    );
}

#[test]
fn a_route_the_catalogue_forbids_is_refused_at_start_with_its_key() {
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "poa");
    let bad = format!(
        r#"
[tls]
cert_file = "{cert}"
key_file = "{tlskey}"
client_ca_file = "{ca}"

[[tenants]]
id = "acme"
trust_domain = "acme.example"
[tenants.poa]
public_key_files = ["{pubkey}"]
[[tenants.connectors]]
id = "crm"
upstream_url = "http://127.0.0.1:9"
egress_allowlist = ["/api/"]
[[tenants.connectors.routes]]
action = "crm.contact.read"
methods = ["GET"]
path = "/api/contacts/{{id}}"
[[tenants.connectors.routes]]
action = "crm.contact.read"
methods = ["GET", "DELETE"]
path = "/api/contacts/{{id}}"
"#,
        cert = pki.path("server.crt").display(),
        tlskey = pki.path("server.key").display(),
        ca = pki.ca().display(),
        pubkey = key.public.display(),
    );
    let file = pki.path("bad.toml");
    std::fs::write(&file, bad).unwrap();
    for args in [
        &["broker", "--check", "--config"][..],
        &["broker", "--config"][..],
    ] {
        let out = Command::new(ATB)
            .args(args)
            .arg(&file)
            .env_remove("ATB_CONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted the config");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("tenants[0].connectors[0].routes[1].methods")
                && err.contains("allows GET"),
            "{args:?}: {err}"
        );
    }
}

/// The pipeline's steps, in order (`broker::gateway::pipeline`).
const STEPS: [&str; 14] = [
    "maintenance",
    "identify",
    "admit",
    "authenticate",
    "platform",
    "known_action",
    "egress",
    "bind_route",
    "connector_limit",
    "read_body",
    "spend",
    "decide",
    "count_usage",
    "forward",
];

#[test]
fn a_panic_in_any_step_is_refused_and_audited_exactly_once() {
    let s = setup_with("", "", &[("ATB_DEBUG_FAULT_INJECTION", "true")]);
    for (i, step) in STEPS.iter().enumerate() {
        let t = s.mint("crm.contact.read", &[]);
        let header = format!("X-ATB-Debug-Panic: {step}");
        let a = s.call("acme-agent", "/api/x", &t, &["-H", &header]);
        expect(&a, 500, "internal_error");
        let id = a.header("x-request-id").unwrap().to_owned();
        assert!(
            eventually(Duration::from_secs(5), || s
                .broker
                .audit()
                .iter()
                .any(|e| e["request_id"] == id.as_str())),
            "{step}"
        );
        let lines: Vec<Value> = s
            .broker
            .audit()
            .into_iter()
            .filter(|e| e["request_id"] == id.as_str())
            .collect();
        assert_eq!(lines.len(), 1, "{step}: {lines:?}");
        let e = &lines[0];
        assert_eq!(e["outcome"], "aborted", "{step}");
        assert_eq!(e["code"], "internal_error");
        assert_eq!(e["decision"], "error");
        assert!(e["reason"].as_str().unwrap().contains(step), "{e}");
        // What the steps before learnt is still recorded.
        if i >= 2 {
            assert_eq!(e["tenant"], "acme", "{step}");
        }
        if i >= 4 {
            assert_eq!(e["jti"], claims_of(&t)["jti"], "{step}");
        }
        // The broker keeps serving.
        let ok = s.acme("/api/x", &s.mint("crm.contact.read", &[]));
        assert_eq!(ok.status, 200, "after {step}: {ok:?}");
    }
    let m = s.broker.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_rejections_total{code="internal_error",tenant="acme"}"#
        ),
        Some(12.0),
        "{m}"
    );
}

#[test]
fn the_debug_panic_header_does_nothing_without_fault_injection() {
    let s = setup();
    let t = s.mint("crm.contact.read", &[]);
    let a = s.call(
        "acme-agent",
        "/api/x",
        &t,
        &["-H", "X-ATB-Debug-Panic: decide"],
    );
    assert_eq!(a.status, 200, "{a:?}");
    let e = s.broker.audit();
    assert!(e.iter().all(|e| e["outcome"] == "completed"), "{e:?}");
}

impl Setup {
    /// curl as acme's agent with `token` on `path`, to be spawned (a
    /// request that is still running when the test acts), at most 20 s.
    /// A fresh mandate's call to `/api/drip?tag=TAG` (its answer streams
    /// `first;`, then `second` 2 s later), once the upstream has it.
    fn start_drip(&self, tag: &str) -> std::process::Child {
        let t = self.mint("crm.contact.read", &[]);
        let drip = self
            .acme_curl(&t, &format!("/api/drip?tag={tag}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        arrives(&DRIP_ARRIVALS, &format!("tag={tag}"));
        drip
    }

    fn acme_curl(&self, token: &str, path: &str) -> Command {
        let mut c = Command::new("curl");
        c.args(["-s", "--max-time", "20", "--cacert"])
            .arg(self.pki.ca())
            .arg("--cert")
            .arg(self.pki.path("acme-agent.crt"))
            .arg("--key")
            .arg(self.pki.path("acme-agent.key"))
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(self.broker.url(path));
        c
    }

    fn sigterm(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.broker.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

/// Waits until a request with query `tag` has reached the upstream.
fn arrives(arrivals: &std::sync::Mutex<Vec<String>>, tag: &str) {
    assert!(eventually(Duration::from_secs(10), || {
        arrivals.lock().unwrap().iter().any(|q| q == tag)
    }));
}

#[test]
fn a_request_cut_off_at_shutdown_still_leaves_one_audit_line() {
    let s = setup_with("", "", &[("ATB_SHUTDOWN_GRACE_SECONDS", "1")]);
    // /api/slow answers after 5 s; the open connector waits 30 s for it.
    let t = s.mint_via(ACME, "crm.contact.read", "open");
    let mut slow = s
        .acme_curl(&t, "/api/slow?tag=shutdown")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The request is at the upstream when the broker is told to stop.
    arrives(&SLOW_ARRIVALS, "tag=shutdown");
    s.sigterm();
    let mut broker = s.broker;
    assert_eq!(broker.wait_exit(Duration::from_secs(20)), Some(0));
    let _ = slow.wait();
    let lines: Vec<Value> = broker
        .audit()
        .into_iter()
        .filter(|e| e["path"] == "/api/slow")
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "aborted");
    assert_eq!(lines[0]["code"], "aborted");
    assert!(
        lines[0]["reason"].as_str().unwrap().contains("forward"),
        "{lines:?}"
    );
}

/// A tenant's in-flight slot is held until its answer's last byte is
/// written, not only until the handler returns: an answer a client does
/// not read holds an upstream connection, and `max_in_flight` must bound
/// how many one tenant holds (a probe parked 100 unread answers and
/// starved another tenant on the same worker for as long as it liked).
#[test]
fn an_answer_still_streaming_holds_its_tenants_in_flight_slot() {
    let s = setup_acme("", "max_in_flight = 1", "", &[]);
    let drip = s.start_drip("slot");
    // While `first;` is written and `second` is 2 s away, acme's one slot
    // is taken: its next request is shed; globex is not affected.
    let a = s.acme("/api/contacts/7", &s.mint("crm.contact.read", &[]));
    expect(&a, 503, "overloaded");
    let g = s.mint_via(GLOBEX, "crm.contact.read", "crm");
    assert_eq!(
        s.call("globex-agent", "/api/contacts/7", &g, &[]).status,
        200
    );
    let out = drip.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "first;second");
    // Once the answer is done, the slot is free again.
    let a = s.acme("/api/contacts/7", &s.mint("crm.contact.read", &[]));
    assert_eq!(a.status, 200, "{a:?}");
}

/// A graceful stop does not wait on idle connections — an idle keep-alive
/// connection held it for up to its keep-alive (75 s; an idle HTTP/2 one,
/// before the listener went HTTP/1.1-only, for the whole 30 s grace) — and
/// still lets an answer being streamed finish.
#[test]
fn a_graceful_stop_closes_idle_connections_and_finishes_streamed_answers() {
    let s = setup();
    let (crt, key) = (s.pki.path("acme-agent.crt"), s.pki.path("acme-agent.key"));
    // An idle keep-alive connection (independent client): one request
    // answered, then nothing.
    let mut idle = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{}", s.broker.port))
        .arg("-cert")
        .arg(&crt)
        .arg("-key")
        .arg(&key)
        .arg("-CAfile")
        .arg(s.pki.ca())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut to_idle = idle.stdin.take().unwrap();
    to_idle
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    to_idle.flush().unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        metric(
            &s.broker.metrics(),
            r#"atb_tenant_connections{tenant="acme"}"#,
        ) == Some(1.0)
    }));
    // An answer streamed in two parts, 2 s apart, in flight at the stop.
    let drip = s.start_drip("stop");
    s.sigterm();
    // While the answer drains, the admin listener still answers probes.
    assert!(eventually(Duration::from_secs(2), || {
        let ready = admin(&s.broker, "GET", "/ready", &[], None);
        ready.status == 503 && ready.json()["reason"] == "draining"
    }));
    let mut broker = s.broker;
    // Well within the 30 s grace an idle connection would hold it for.
    assert_eq!(
        broker.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        broker.stderr()
    );
    let out = drip.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "first;second");
    let _ = idle.kill();
    let _ = idle.wait();
    drop(to_idle);
    let lines: Vec<Value> = broker
        .audit()
        .into_iter()
        .filter(|e| e["path"] == "/api/drip")
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "completed", "{lines:?}");
}

#[test]
fn every_timer_loop_survives_a_panicking_tick() {
    // A JWKS nobody serves: its loop retries with backoff from 1 s.
    let dead_jwks = format!("jwks_url = \"http://127.0.0.1:{}/jwks.json\"", free_port());
    let s = setup_with(
        "[poa]\nreplay_sweep_seconds = 1\n",
        &dead_jwks,
        &[
            ("ATB_DEBUG_FAULT_INJECTION", "true"),
            ("ATB_ADMIN_TOKEN", "fault-hook-admin-token-0123"),
            ("POLICY_RELOAD_SECONDS", "1"),
        ],
    );
    let series = |actor: &str, key: &str, what: &str| {
        let m = s.broker.metrics();
        let name = match what {
            "restarts" => format!(r#"atb_actor_restarts_total{{actor="{actor}",shard="{key}"}}"#),
            outcome => format!(
                r#"atb_actor_messages_total{{actor="{actor}",outcome="{outcome}",shard="{key}"}}"#
            ),
        };
        metric(&m, &name).unwrap_or(0.0)
    };
    for (actor, key) in [
        ("replay_sweep", "-"),
        ("policy_reload", "-"),
        ("jwks_refresh", "acme"),
    ] {
        let path = format!("/debug/fault?periodic={actor}");
        let auth = "Authorization: Bearer fault-hook-admin-token-0123";
        // The hook needs the admin token even when enabled.
        assert_eq!(admin(&s.broker, "POST", &path, &[], None).status, 401);
        let a = admin(&s.broker, "POST", &path, &[auth], None);
        assert_eq!(a.status, 200, "{actor}: {a:?}");
        assert!(
            eventually(Duration::from_secs(20), || series(actor, key, "restarts")
                == 1.0),
            "{actor}: no restart counted"
        );
        // The loop goes on: later ticks run and succeed.
        let ticks = series(actor, key, "ok");
        assert!(
            eventually(Duration::from_secs(20), || series(actor, key, "ok") > ticks),
            "{actor}: no tick after the panic"
        );
    }
    let a = admin(
        &s.broker,
        "POST",
        "/debug/fault?periodic=nothing",
        &["Authorization: Bearer fault-hook-admin-token-0123"],
        None,
    );
    assert_eq!(a.status, 404);
    assert_eq!(a.error(), "unknown_periodic");
    // Requests are served throughout.
    assert_eq!(
        s.acme("/api/x", &s.mint("crm.contact.read", &[])).status,
        200
    );
}

#[test]
fn the_upstream_gets_no_client_rewrites_and_the_real_peer() {
    let s = setup();
    let t = s.mint("crm.contact.read", &[]);
    let a = s.call(
        "acme-agent",
        "/api/x",
        &t,
        &[
            // Connection is an HTTP/1.1 header (HTTP/2 forbids it).
            "--http1.1",
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Forwarded-Host: evil.example",
            "-H",
            "Forwarded: for=6.6.6.6;host=evil.example",
            "-H",
            "X-Original-URL: /admin/delete-everything",
            "-H",
            "X-Rewrite-URL: /admin",
            "-H",
            "X-Real-IP: 6.6.6.6",
            "-H",
            "Connection: X-Custom-Hop",
            "-H",
            "X-Custom-Hop: yes",
            "-H",
            "X-Kept: yes",
        ],
    );
    assert_eq!(a.status, 200, "{a:?}");
    let h = &a.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["forwarded"], "for=127.0.0.1;proto=https", "{h}");
    for gone in [
        "x-forwarded-host",
        "x-original-url",
        "x-rewrite-url",
        "x-real-ip",
        "x-custom-hop",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    assert_eq!(h["x-kept"], "yes");
    // Paths an upstream might resolve differently are refused unspent.
    for path in [
        "/api/contacts;x/7",
        "/api/contacts/7;jsessionid=1",
        "/api/%252e%252e/admin",
        // Escapes that decode into `%252e%252e` (found by fuzzing).
        "/api/%25%32%65%25%32%65/admin",
        "/api/%C0%AE%C0%AE/admin",
        "/api/%FF",
    ] {
        let t = s.mint("crm.contact.read", &[]);
        let a = s.call("acme-agent", path, &t, &["--path-as-is"]);
        expect(&a, 403, "egress_denied");
        assert_eq!(s.acme("/api/x", &t).status, 200, "{path} spent the mandate");
    }
}

#[test]
fn actions_outside_the_catalogue_are_denied_everywhere() {
    let s = setup();
    for act in [
        "made.up.action",
        "CRM.contact.read",
        "crm.Contact.read",
        "crm.contact.read.",
        "crm",
        "crm.contact-read",
    ] {
        // On a bound connector and on the unbound one alike.
        for connector in ["crm", "open"] {
            let t = s.mint_via(ACME, act, connector);
            let a = s.acme("/api/x", &t);
            expect(&a, 403, "policy_denied");
            assert_eq!(
                a.json()["reason"],
                "unknown_action",
                "{act} via {connector}"
            );
        }
    }
    // The tenant's own extension is known.
    let t = s.mint("acme.vendor.delete", &[]);
    let a = s.call("acme-agent", "/api/vendors/3", &t, &["-X", "DELETE"]);
    assert_eq!(a.status, 200, "{a:?}");
    // Another tenant does not share acme's extension.
    let g = s.mint_via(GLOBEX, "acme.vendor.delete", "crm");
    let a = s.call("globex-agent", "/api/vendors/3", &g, &["-X", "DELETE"]);
    expect(&a, 403, "policy_denied");
    assert_eq!(a.json()["reason"], "unknown_action");
}

#[test]
fn params_have_one_meaning_and_form_bodies_reach_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        r#"package atb.poa
import rego.v1
default decision := {"allow": false, "reason": "deny_by_default"}
decision := {"allow": true, "reason": "allow", "risk_tier": "low"} if {
    input.request.action == "kb.docs.search"
    input.request.params.q == "invoices"
    input.request.params.page == "2"
}
"#,
    )
    .unwrap();
    let s = setup_with(
        &format!("[policy]\ndir = \"{}\"\n", dir.path().display()),
        "",
        &[],
    );
    let send = |path: &str, ct: &str, body: &str| {
        let t = s.mint("kb.docs.search", &[]);
        let header = format!("Content-Type: {ct}");
        let a = s.call(
            "acme-agent",
            path,
            &t,
            &["-H", &header, "--data-binary", body],
        );
        (a, t)
    };
    // A form body is read for the policy and forwarded as read.
    let (a, _) = send(
        "/api/search?page=2",
        "application/x-www-form-urlencoded",
        "q=invoices",
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["body"], "q=invoices");
    // Duplicates and shadowing are refused, and do not spend the mandate.
    for (path, ct, body) in [
        (
            "/api/search?page=2&page=3",
            "application/json",
            r#"{"q": "invoices"}"#,
        ),
        (
            "/api/search?page=2",
            "application/json",
            r#"{"q": "x", "q": "invoices"}"#,
        ),
        (
            "/api/search?page=2",
            "application/json",
            r#"{"q": "invoices", "f": {"a": 1, "a": 2}}"#,
        ),
        (
            "/api/search?page=2",
            "application/x-www-form-urlencoded",
            "q=x&q=invoices",
        ),
        (
            "/api/search?page=2",
            "application/json",
            r#"{"q": "invoices", "page": "9"}"#,
        ),
    ] {
        let (a, t) = send(path, ct, body);
        expect(&a, 400, "bad_request");
        let again = s.call("acme-agent", "/api/search?page=2&q=invoices", &t, &[]);
        assert_eq!(again.status, 200, "{body}: {again:?}");
    }
}

#[test]
fn tenants_reload_live_and_a_bad_file_keeps_the_running_ones() {
    const TOKEN: &str = "reload-admin-token-0123456789";
    let auth = format!("Authorization: Bearer {TOKEN}");
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "poa");
    let globex_key = SigningKey::new(pki.dir.path(), "globex-poa");
    let upstream = start_upstream();
    let both = tenants((&key, &globex_key), upstream, "", "");
    let cut = both.find("[[tenants]]\nid = \"globex\"").unwrap();
    let acme_only = both[..cut].to_owned();
    // Reloads here are explicit (no file watch racing them).
    let broker = Broker::start(
        &pki,
        &acme_only,
        &[
            ("ATB_ADMIN_TOKEN", TOKEN),
            ("ATB_CONFIG_WATCH_SECONDS", "0"),
        ],
    );
    let original = std::fs::read_to_string(&broker.config_path).unwrap();
    let head = original[..original.find(&acme_only).unwrap()].to_owned();
    let write =
        |tenants: &str| std::fs::write(&broker.config_path, format!("{head}{tenants}")).unwrap();
    let reload = || admin(&broker, "POST", "/admin/config/reload", &[&auth], None);
    let call = |agent: &str, sub: &str, act: &str, method: &str| {
        let con = r#"{"connector":"crm"}"#;
        let key = if sub.starts_with(GLOBEX_PREFIX) {
            &globex_key
        } else {
            &key
        };
        let t = key.mint(sub, act, &["--leg", LEG, "--con", con]);
        let h = format!("Authorization: Bearer {t}");
        agent_get(
            &broker,
            &pki,
            Some(agent),
            "/api/x",
            &["-H", &h, "-X", method],
        )
    };
    expect(
        &call("globex-agent", GLOBEX, "crm.contact.read", "GET"),
        403,
        "unknown_tenant",
    );

    // A tenant added to the file serves without a restart.
    write(&both);
    let r = reload();
    assert_eq!(
        (r.status, r.json()["changed"].clone()),
        (200, json!(true)),
        "{r:?}"
    );
    assert_eq!(
        call("globex-agent", GLOBEX, "crm.contact.read", "GET").status,
        200
    );
    assert_eq!(
        reload().json()["changed"],
        false,
        "same file, nothing to do"
    );

    // A connector's routes change: acme's reads under /api go away.
    write(&both.replacen(
        "action = \"crm.contact.read\"\nmethods = [\"GET\"]\npath = \"/api/{*rest}\"",
        "action = \"crm.contact.read\"\nmethods = [\"GET\"]\npath = \"/api/read/{*rest}\"",
        1,
    ));
    assert_eq!(reload().status, 200);
    expect(
        &call("acme-agent", ACME, "crm.contact.read", "GET"),
        403,
        "action_route_mismatch",
    );

    // A bad file is refused with its key named; the running tenants stay.
    write(&both.replacen("methods = [\"GET\"]", "methods = [\"GET\", \"DELETE\"]", 1));
    let r = reload();
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.error(), "config_invalid");
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("tenants[0].connectors[0].routes[0].methods"),
        "{r:?}"
    );
    assert_eq!(
        call("globex-agent", GLOBEX, "crm.contact.read", "GET").status,
        200
    );
    expect(
        &call("acme-agent", ACME, "crm.contact.read", "GET"),
        403,
        "action_route_mismatch",
    );

    // A tenant removed from the file is refused at once, and its open
    // connection (idle in keep-alive after one request, so nothing but the
    // removal closes it for 75 s) is closed by the broker.
    let mut held = hold_connection(&broker, &pki, "globex-agent", "globex");
    held.stdin
        .as_mut()
        .unwrap()
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    write(&acme_only);
    assert_eq!(reload().status, 200);
    assert!(
        eventually(Duration::from_secs(10), || held
            .try_wait()
            .unwrap()
            .is_some()),
        "the removed tenant's connection is still open"
    );
    expect(
        &call("globex-agent", GLOBEX, "crm.contact.read", "GET"),
        403,
        "unknown_tenant",
    );
    assert_eq!(
        call("acme-agent", ACME, "crm.contact.read", "GET").status,
        200
    );

    let m = broker.metrics();
    for (result, n) in [("changed", 3.0), ("unchanged", 1.0), ("error", 1.0)] {
        assert_eq!(
            metric(
                &m,
                &format!(r#"atb_config_reloads_total{{result="{result}"}}"#)
            ),
            Some(n),
            "{result}: {m}"
        );
    }
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_cut_off_with_408() {
    let s = setup_with("", "", &[("ATB_BODY_TIMEOUT_SECONDS", "1")]);
    // Content-Length promises 100 bytes; 5 arrive and the client waits
    // (HTTP/1.1: an HTTP/2 stream would end with its last DATA frame).
    let partial = |ct: &str, token: &str| {
        let header = format!("Content-Type: {ct}");
        s.call(
            "acme-agent",
            "/api/search",
            token,
            &[
                "--http1.1",
                "-H",
                &header,
                "-H",
                "Content-Length: 100",
                "--data-binary",
                r#"{"q":"#,
            ],
        )
    };
    // A JSON body, read for the policy: cut off before the mandate is
    // spent, so the same mandate then works with its whole body.
    let t = s.mint("kb.docs.search", &[]);
    let a = partial("application/json", &t);
    expect(&a, 408, "body_timeout");
    assert_eq!(a.header("connection"), Some("close"), "{a:?}");
    let whole = s.call(
        "acme-agent",
        "/api/search",
        &t,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            r#"{"q": "x"}"#,
        ],
    );
    assert_eq!(whole.status, 200, "{whole:?}");
    // An opaque body, streamed to the connector: cut off the same way.
    let t = s.mint("kb.docs.search", &[]);
    expect(
        &partial("application/octet-stream", &t),
        408,
        "body_timeout",
    );
    let m = s.broker.metrics();
    assert_eq!(
        metric(
            &m,
            r#"atb_upstream_requests_total{connector="crm",status="body_timeout",tenant="acme"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

/// Second spellings of what the broker refuses or strips (found by an
/// adversarial pass): `_` for `-` in header names (CGI-style readers merge
/// them), `_method` in another case, a credential or action header sent
/// twice, a query escape a lenient decoder would keep. None of the
/// refusals spends the mandate.
#[test]
fn second_spellings_of_refused_headers_and_parameters_are_refused_too() {
    let s = setup();
    let t = s.mint("crm.contact.read", &[]);
    let get = |path: &str, extra: &[&str]| call_as(&s, "GET", path, &t, extra);
    for extra in [
        &["-H", "X_HTTP_Method_Override: DELETE"][..],
        &["-H", "x-http_method: DELETE"][..],
    ] {
        expect(&get("/api/contacts/7", extra), 403, "action_route_mismatch");
    }
    for path in [
        "/api/contacts/7?_METHOD=DELETE",
        "/api/contacts/7?_Method=DELETE",
    ] {
        expect(&get(path, &[]), 403, "action_route_mismatch");
    }
    let form = [
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        "--data-binary",
        "q=x&_mEthod=DELETE",
    ];
    expect(&get("/api/contacts/7", &form), 403, "action_route_mismatch");
    expect(
        &get(
            "/api/contacts/7",
            &[
                "-H",
                "X-ATB-Action: crm.contact.read",
                "-H",
                "X-ATB-Action: sap.payment.execute",
            ],
        ),
        400,
        "bad_request",
    );
    let other = s.mint("crm.contact.read", &[]);
    let twice = format!("Authorization: Bearer {other}");
    expect(&get("/api/contacts/7", &["-H", &twice]), 401, "poa_invalid");
    for path in [
        "/api/contacts/7?a=%",
        "/api/contacts/7?a=%zz",
        "/api/contacts/7?a=%FF",
    ] {
        expect(&get(path, &[]), 400, "bad_request");
    }
    // The mandate is unspent; the upstream sees none of the underscored
    // headers an upstream would take for the broker's own.
    let ok = get(
        "/api/contacts/7",
        &[
            "-H",
            "X_ATB_Tenant: globex",
            "-H",
            "X-ATB_Agent: spiffe://evil.example/x",
            "-H",
            "X_Request_ID: forged",
            "-H",
            "X_Forwarded_For: 6.6.6.6",
            "-H",
            "X_Custom: kept",
        ],
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    let headers = ok.json()["headers"].as_object().unwrap().clone();
    for k in headers.keys().filter(|k| k.contains('_')) {
        let n = k.replace('_', "-");
        assert!(
            !(n.starts_with("x-atb-") || n.starts_with("x-forwarded-") || n == "x-request-id"),
            "{k} reached the upstream: {headers:?}"
        );
    }
    assert_eq!(headers["x-atb-tenant"], "acme");
    assert_eq!(headers["x_custom"], "kept");
}

/// A multipart body streams through unread, so a `_method` part (Rails,
/// Laravel, Symfony, ASP.NET take it as the method of a POST) is caught on
/// the way: the answer is 403 and the part never reaches the upstream.
/// Other multipart bodies arrive byte for byte.
#[test]
fn a_method_part_in_a_streamed_multipart_body_is_refused() {
    let s = setup();
    let post = |parts: &[&str]| {
        let t = s.mint("kb.docs.search", &[]);
        let mut args = vec!["-X", "POST"];
        for p in parts {
            args.extend(["-F", p]);
        }
        call_as(&s, "POST", "/api/search", &t, &args)
    };
    for part in ["_method=DELETE", "_METHOD=DELETE"] {
        let a = post(&["q=x", part]);
        expect(&a, 403, "action_route_mismatch");
        assert!(
            a.json()["reason"].as_str().unwrap().contains("multipart"),
            "{a:?}"
        );
    }
    let filler = "a".repeat(20_000);
    let big = format!("blob={filler}");
    let ok = post(&["q=hello", "note=--not a boundary", &big]);
    assert_eq!(ok.status, 200, "{ok:?}");
    let body = ok.json()["body"].as_str().unwrap().to_owned();
    assert!(body.contains("hello") && body.contains(&filler), "{body}");
    assert!(body.trim_end().ends_with("--"), "{body}");
}

/// For an action judged on its parameters, a body or names the policy would
/// read differently from the upstream are refused before the mandate is
/// spent: JSON that is not an object (a JSON Patch array holds the amount
/// the policy would not see), bracketed names (`x[amount]` nests for Rails,
/// PHP, qs), a charset other than UTF-8.
#[test]
fn parameters_the_policy_would_not_see_are_refused_for_constrained_actions() {
    let s = setup();
    let t = s.mint("sap.payment.execute", &[]);
    let send = |path: &str, ct: &str, body: &str| {
        let header = format!("Content-Type: {ct}");
        call_as(
            &s,
            "POST",
            path,
            &t,
            &["-H", &header, "--data-binary", body],
        )
    };
    for (ct, body) in [
        ("application/json", r#"[{"amount": 999999999}]"#),
        (
            "application/json-patch+json",
            r#"[{"op": "replace", "path": "/amount", "value": 999999999}]"#,
        ),
        ("application/json", r#""amount=999999999""#),
        ("application/json; charset=utf-16", r#"{"amount": 5}"#),
        (
            "application/x-www-form-urlencoded; charset=iso-8859-1",
            "amount=5",
        ),
    ] {
        expect(&send("/api/pay", ct, body), 415, "unsupported_body");
    }
    expect(
        &send(
            "/api/pay?order%5Bamount%5D=999999999",
            "application/json",
            r#"{"amount": 5}"#,
        ),
        400,
        "bad_request",
    );
    expect(
        &send(
            "/api/pay",
            "application/x-www-form-urlencoded",
            "x[amount]=999999999&amount=5",
        ),
        400,
        "bad_request",
    );
    // Unspent: the same mandate with a plain object reaches the policy.
    let a = send(
        "/api/pay",
        "application/json; charset=UTF-8",
        r#"{"amount": 5}"#,
    );
    assert_ne!(a.status, 415, "{a:?}");
    assert_ne!(a.status, 400, "{a:?}");
    assert_ne!(a.error(), "poa_replay", "{a:?}");
    // An action not judged on its parameters may send any JSON value.
    let t = s.mint("crm.contact.update", &[]);
    let a = call_as(
        &s,
        "PUT",
        "/api/contacts/7",
        &t,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            r#"[1, 2]"#,
        ],
    );
    // It reaches the policy (which asks this medium-risk mandate for an
    // approval), not a 415.
    expect(&a, 403, "policy_denied");
}

#[test]
fn a_body_the_policy_cannot_read_is_refused_for_actions_judged_on_their_parameters() {
    let s = setup();
    let send = |method: &str, path: &str, token: &str, ct: &str, body: &str| {
        let header = format!("Content-Type: {ct}");
        s.call(
            "acme-agent",
            path,
            token,
            &["-X", method, "-H", &header, "--data-binary", body],
        )
    };
    // sap.payment.execute is judged on request.params.amount: a body in a
    // form the broker does not read would show the policy no amount.
    let t = s.mint("sap.payment.execute", &[]);
    let huge = r#"{"amount": 999999999}"#;
    for ct in ["text/plain", "application/octet-stream", "application/xml"] {
        let a = send("POST", "/api/pay", &t, ct, huge);
        expect(&a, 415, "unsupported_body");
    }
    // Refused before the mandate is spent: the same mandate, as JSON, goes
    // on to the policy (which now sees the amount).
    let a = send("POST", "/api/pay", &t, "application/json", huge);
    assert_ne!(a.status, 415, "{:?}", a);
    assert_ne!(a.error(), "poa_replay", "{:?}", a);
    // No body at all is no parameter to hide.
    let t = s.mint("sap.payment.execute", &[]);
    let a = send("POST", "/api/pay", &t, "text/plain", "");
    assert_ne!(a.status, 415, "{:?}", a);
    // A body the broker would read as raw bytes while the upstream decodes
    // it: a compressed form (the policy would see no amount), for any action.
    let t = s.mint("sap.payment.execute", &[]);
    let gz = s.call(
        "acme-agent",
        "/api/pay",
        &t,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/x-www-form-urlencoded",
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            "amount=999999999",
        ],
    );
    expect(&gz, 415, "unsupported_body");
    let t = s.mint("crm.contact.update", &[]);
    let gz = s.call(
        "acme-agent",
        "/api/contacts/7",
        &t,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "-H",
            "Content-Encoding: br",
            "--data-binary",
            "{}",
        ],
    );
    expect(&gz, 415, "unsupported_body");
    // Two declared types: which one the upstream believes is anyone's guess.
    let two = s.call(
        "acme-agent",
        "/api/contacts/7",
        &t,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "{}",
        ],
    );
    expect(&two, 400, "bad_request");
    // An action without parameter constraints may send any body (it goes
    // on to the policy, which asks for its approval).
    let t = s.mint("crm.contact.update", &[]);
    let a = send("PUT", "/api/contacts/7", &t, "text/plain", "free text");
    expect(&a, 403, "policy_denied");
}

#[test]
fn one_tenants_mandate_key_is_worthless_for_another_tenant() {
    let s = setup();
    let con = ["--leg", LEG, "--con", r#"{"connector":"crm"}"#];
    // Each tenant's own key works for its own agents.
    let own = s.globex_key.mint(GLOBEX, "crm.contact.read", &con);
    assert_eq!(s.call("globex-agent", "/api/x", &own, &[]).status, 200);
    let own = s.key.mint(ACME, "crm.contact.read", &con);
    assert_eq!(s.acme("/api/x", &own).status, 200);
    // acme's key signing for a globex agent, and globex's for acme: the
    // other tenant does not know the key.
    let crossed = s.key.mint(GLOBEX, "crm.contact.read", &con);
    expect(
        &s.call("globex-agent", "/api/x", &crossed, &[]),
        401,
        "poa_invalid",
    );
    let crossed = s.globex_key.mint(ACME, "crm.contact.read", &con);
    expect(&s.acme("/api/x", &crossed), 401, "poa_invalid");
}

/// Signs `claims` as an EdDSA JWT (no `kid`) with the Ed25519 PEM key at
/// `private` (an OIDC platform token in these tests).
fn platform_token(private: &std::path::Path, claims: &Value) -> String {
    platform_token_kid(private, None, claims)
}

fn platform_token_kid(private: &std::path::Path, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(private).unwrap();
    let key = openssl::pkey::PKey::private_key_from_pem(&pem).unwrap();
    let mut header = json!({"alg": "EdDSA", "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = k.into();
    }
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signer = openssl::sign::Signer::new_without_digest(&key).unwrap();
    let sig = signer.sign_oneshot_to_vec(input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn a_verified_platform_token_fills_platform_sub_for_the_binding() {
    let idp_dir = tempfile::tempdir().unwrap();
    let idp = SigningKey::new(idp_dir.path(), "idp");
    let forger = SigningKey::new(idp_dir.path(), "forger");
    let now = unix_now();
    let claims = |sub: &str| {
        json!({"iss": "https://idp.example", "aud": ["x", "atb-broker"], "sub": sub,
               "iat": now, "exp": now + 300})
    };
    // (mode, matching sub, mismatching sub)
    for (mode, good, bad) in [
        ("exact", ACME, "spiffe://acme.example/agent/other"),
        ("prefix", "demo", "dem"),
    ] {
        let platform = format!(
            r#"
[tenants.platform]
issuer = "https://idp.example"
audience = "atb-broker"
public_key_files = ["{}"]
[tenants.policy_data.platform_binding]
mode = "{mode}"
"#,
            idp.public.display()
        );
        let s = setup_with("", &platform, &[]);
        let with = |token: &str| {
            let header = format!("X-ATB-Platform-Token: {token}");
            s.call(
                "acme-agent",
                "/api/contacts/1",
                &s.mint("crm.contact.read", &[]),
                &["-H", &header],
            )
        };
        // A valid token whose subject binds to the agent: allowed, and the
        // token is not forwarded.
        let a = with(&platform_token(&idp.private, &claims(good)));
        assert_eq!(a.status, 200, "{mode}: {a:?}");
        let h = &a.json()["headers"];
        assert!(h.get("x-atb-platform-token").is_none(), "{h}");
        // A verified subject that does not bind: the policy denies.
        let a = with(&platform_token(&idp.private, &claims(bad)));
        expect(&a, 403, "policy_denied");
        assert_eq!(
            a.json()["reason"],
            "platform_spiffe_binding_mismatch",
            "{mode}"
        );
        // No token: denied as before.
        let a = s.acme("/api/contacts/1", &s.mint("crm.contact.read", &[]));
        expect(&a, 403, "policy_denied");
        assert_eq!(a.json()["reason"], "platform_spiffe_binding_mismatch");
        // Forged, expired, wrong audience, wrong issuer, garbage: 401.
        let mut expired = claims(good);
        expired["exp"] = (now - 3600).into();
        let mut wrong_aud = claims(good);
        wrong_aud["aud"] = "someone-else".into();
        let mut wrong_iss = claims(good);
        wrong_iss["iss"] = "https://evil.example".into();
        for (what, token) in [
            ("forged", platform_token(&forger.private, &claims(good))),
            ("expired", platform_token(&idp.private, &expired)),
            ("audience", platform_token(&idp.private, &wrong_aud)),
            ("issuer", platform_token(&idp.private, &wrong_iss)),
            ("garbage", "not.a.jwt".to_owned()),
        ] {
            let a = with(&token);
            assert_eq!(
                (a.status, a.error().as_str()),
                (401, "platform_token_invalid"),
                "{mode} {what}: {a:?}"
            );
        }
        // A token sent for a tenant without a platform issuer is refused.
        let t = s.mint_via(GLOBEX, "crm.contact.read", "crm");
        let header = format!(
            "X-ATB-Platform-Token: {}",
            platform_token(&idp.private, &claims(GLOBEX))
        );
        let a = s.call("globex-agent", "/api/contacts/1", &t, &["-H", &header]);
        expect(&a, 401, "platform_token_invalid");
        // Without one, globex is unaffected.
        let t = s.mint_via(GLOBEX, "crm.contact.read", "crm");
        assert_eq!(
            s.call("globex-agent", "/api/contacts/1", &t, &[]).status,
            200
        );
    }
}

#[test]
fn a_platform_issuer_is_validated_at_start_with_its_key_named() {
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "poa");
    for (platform, want) in [
        (
            "[tenants.platform]\naudience = \"a\"\npublic_key_files = [\"/nonexistent\"]",
            "tenants[0].platform.issuer",
        ),
        (
            "[tenants.platform]\nissuer = \"i\"\naudience = \"a\"",
            "tenants[0].platform",
        ),
        (
            "[tenants.platform]\nissuer = \"i\"\naudience = \"a\"\npublic_key_files = [\"/x\"]\nalgorithms = [\"HS256\"]",
            "tenants[0].platform.algorithms",
        ),
        (
            "[tenants.platform]\nissuer = \"i\"\naudience = \"a\"\npublic_key_files = [\"/nonexistent.pem\"]",
            "tenants[0].platform.public_key_files",
        ),
    ] {
        let (started, text) = broker_start_outcome(
            &pki,
            "platform.toml",
            &tenants((&key, &key), free_port(), "", platform),
        );
        assert!(!started, "{platform}: {text}");
        assert!(text.contains(want), "{want}: {text}");
    }
}

/// A tenant module denying acme's reads under /api/secret.
const ACME_MODULE: &str = r#"package atb.tenants.acme

import rego.v1

deny contains "contacts under /api/secret are off limits" if {
	input.request.action == "crm.contact.read"
	startswith(input.request.path, "/api/secret")
}
"#;

#[test]
fn a_tenants_rego_module_adds_denials_for_that_tenant_only() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("acme.rego");
    std::fs::write(&module, ACME_MODULE).unwrap();
    let extra = format!("policy_files = [\"{}\"]", module.display());
    let s = setup_acme("", &extra, "", &[]);
    let a = s.acme("/api/secret/1", &s.mint("crm.contact.read", &[]));
    expect(&a, 403, "policy_denied");
    assert_eq!(a.json()["reason"], "tenant_policy_denied", "{a:?}");
    assert_eq!(
        a.json()["details"]["reasons"],
        json!(["contacts under /api/secret are off limits"])
    );
    // Elsewhere acme is unaffected, and so is globex on the same path.
    assert_eq!(
        s.acme("/api/contacts/1", &s.mint("crm.contact.read", &[]))
            .status,
        200
    );
    let t = s.mint_via(GLOBEX, "crm.contact.read", "crm");
    assert_eq!(s.call("globex-agent", "/api/secret/1", &t, &[]).status, 200);

    // A module overriding the shared policy's package is refused at start,
    // naming its key.
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "poa");
    let evil = dir.path().join("evil.rego");
    std::fs::write(
        &evil,
        "package atb.poa\n\nimport rego.v1\n\ndecision := {\"allow\": true}\n",
    )
    .unwrap();
    let other = dir.path().join("other.rego");
    std::fs::write(
        &other,
        ACME_MODULE.replace("atb.tenants.acme", "atb.tenants.globex"),
    )
    .unwrap();
    for (file, want) in [(&evil, "package atb.poa"), (&other, "atb.tenants.globex")] {
        let (started, err) = broker_start_outcome(
            &pki,
            "tenant-module.toml",
            &tenants(
                (&key, &key),
                free_port(),
                &format!("policy_files = [\"{}\"]", file.display()),
                "",
            ),
        );
        assert!(!started, "{err}");
        assert!(
            err.contains("tenants[0].policy_files[0]") && err.contains(want),
            "{err}"
        );
    }
}

#[test]
fn a_tenant_module_in_the_wrong_package_is_refused_at_reload() {
    const TOKEN: &str = "reload-admin-token-0123456789";
    let auth = format!("Authorization: Bearer {TOKEN}");
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("acme.rego");
    std::fs::write(&good, ACME_MODULE).unwrap();
    let evil = dir.path().join("evil.rego");
    std::fs::write(
        &evil,
        "package atb.poa\n\nimport rego.v1\n\ndecision := {\"allow\": true}\n",
    )
    .unwrap();
    let pki = Pki::new(&[]);
    let key = SigningKey::new(pki.dir.path(), "poa");
    let upstream = start_upstream();
    let with = |f: &std::path::Path| {
        tenants(
            (&key, &key),
            upstream,
            &format!("policy_files = [\"{}\"]", f.display()),
            "",
        )
    };
    let broker = Broker::start(
        &pki,
        &with(&good),
        &[
            ("ATB_ADMIN_TOKEN", TOKEN),
            ("ATB_CONFIG_WATCH_SECONDS", "0"),
        ],
    );
    let original = std::fs::read_to_string(&broker.config_path).unwrap();
    let good_path = good.display().to_string();
    assert!(original.contains(&good_path));
    std::fs::write(
        &broker.config_path,
        original.replace(&good_path, &evil.display().to_string()),
    )
    .unwrap();
    let r = admin(&broker, "POST", "/admin/config/reload", &[&auth], None);
    assert_eq!(r.status, 422, "{r:?}");
    let reason = r.json()["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("tenants[0].policy_files[0]") && reason.contains("package atb.poa"),
        "{reason}"
    );
    // The running policy (with acme's module) stays.
    let call = |path: &str| {
        let con = r#"{"connector":"crm"}"#;
        let t = key.mint(ACME, "crm.contact.read", &["--leg", LEG, "--con", con]);
        let h = format!("Authorization: Bearer {t}");
        agent_get(&broker, &pki, Some("acme-agent"), path, &["-H", &h])
    };
    let a = call("/api/secret/1");
    expect(&a, 403, "policy_denied");
    assert_eq!(a.json()["reason"], "tenant_policy_denied");
    assert_eq!(call("/api/contacts/1").status, 200);
}

#[test]
fn platform_keys_come_from_the_issuers_jwks_on_demand() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let idp_dir = tempfile::tempdir().unwrap();
    let idp = SigningKey::new(idp_dir.path(), "idp");
    let jwks_file = idp_dir.path().join("jwks.json");
    std::fs::write(&jwks_file, json!({"keys": [jwk(&idp, "p1")]}).to_string()).unwrap();
    let jwks_port = free_port();
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    serve_jwks(jwks_port, jwks_file, hits.clone());
    let platform = format!(
        r#"
[tenants.platform]
issuer = "https://idp.example"
audience = "atb-broker"
jwks_url = "http://127.0.0.1:{jwks_port}/jwks.json"
[tenants.policy_data.platform_binding]
mode = "exact"
"#
    );
    let s = setup_with("", &platform, &[]);
    // Readiness does not wait for platform keys (fetched on demand).
    assert_eq!(admin(&s.broker, "GET", "/ready", &[], None).status, 200);
    let now = unix_now();
    let claims = json!({"iss": "https://idp.example", "aud": "atb-broker", "sub": ACME,
                        "iat": now, "exp": now + 300});
    let with = |kid: &str| {
        let header = format!(
            "X-ATB-Platform-Token: {}",
            platform_token_kid(&idp.private, Some(kid), &claims)
        );
        s.call(
            "acme-agent",
            "/api/contacts/1",
            &s.mint("crm.contact.read", &[]),
            &["-H", &header],
        )
    };
    for _ in 0..3 {
        assert_eq!(with("p1").status, 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once, then cached");
    // Unknown kids are refused without a fetch each (cooldown).
    for i in 0..10 {
        expect(&with(&format!("bogus-{i}")), 401, "platform_token_invalid");
    }
    assert!(hits.load(Ordering::SeqCst) <= 2, "{hits:?}");
}

/// Starts `atb broker` on `tenants` (with the PKI's TLS files) written to
/// `name`: (whether it started, stderr + stdout). A configuration accepted
/// by mistake starts a broker, which the timeout ends: `started` is true.
fn broker_start_outcome(pki: &Pki, name: &str, tenants: &str) -> (bool, String) {
    let toml = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n{}",
        pki.path("server.crt").display(),
        pki.path("server.key").display(),
        pki.ca().display(),
        tenants
    );
    let file = pki.path(name);
    std::fs::write(&file, toml).unwrap();
    let out = Command::new("timeout")
        .arg("20")
        .arg(ATB)
        .args(["broker", "--config"])
        .arg(&file)
        .env_remove("ATB_CONFIG")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // 124: `timeout` ended a broker that was running.
    let started = out.status.success() || out.status.code() == Some(124);
    (started, text)
}
