//! Approver authentication: an OIDC JWT from the organisation's identity
//! provider. The signature algorithm must be one of the configured ones and
//! must match the key's type (RS256 ⇔ RSA, ES256 ⇔ P-256, EdDSA ⇔ Ed25519),
//! never `none` or HMAC; `iss`, `aud` and `exp` are required; identity and
//! roles come from the token only.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::Rsa;
use openssl::sign::Verifier;
use serde_json::Value;

use super::challenge::Approver;
use super::config::ApproverAuthConfig;
use crate::poa::jwks::{JwksCache, JwksError, JwksTimings, KeyDocument};
use crate::poa::keys::DocumentError;

/// Longest approver token accepted.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A key that cannot verify approver tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("RSA keys must have at least 2048 bits")]
    WeakRsa,
    #[error("only P-256 EC keys are supported")]
    Curve,
    #[error("unsupported key type (RSA, EC P-256 or Ed25519)")]
    Unsupported,
    #[error("JWKS contains private key material")]
    Private,
    #[error("JWK member {0} is missing or not base64url")]
    Member(&'static str),
    #[error("not a signing key")]
    NotSigning,
    #[error("JWK alg {0} does not fit its key type")]
    AlgMismatch(String),
    #[error("openssl: {0}")]
    Ssl(String),
    #[error("{}: {reason}", path.display())]
    File {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl From<openssl::error::ErrorStack> for KeyError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        Self::Ssl(e.to_string())
    }
}

/// A verification key and the algorithm it serves.
#[derive(Clone, Debug)]
pub struct ApproverKey {
    pub alg: &'static str,
    key: PKey<Public>,
}

impl ApproverKey {
    /// Wraps a public key; only RSA (≥ 2048 bits), P-256 and Ed25519 keys.
    pub fn new(key: PKey<Public>) -> Result<Self, KeyError> {
        let alg = match key.id() {
            Id::RSA if key.bits() >= 2048 => "RS256",
            Id::RSA => return Err(KeyError::WeakRsa),
            Id::EC => {
                if key.ec_key()?.group().curve_name() != Some(Nid::X9_62_PRIME256V1) {
                    return Err(KeyError::Curve);
                }
                "ES256"
            }
            Id::ED25519 => "EdDSA",
            _ => return Err(KeyError::Unsupported),
        };
        Ok(Self { alg, key })
    }

    fn verify(&self, input: &[u8], sig: &[u8]) -> bool {
        let check = || -> Result<bool, openssl::error::ErrorStack> {
            match self.alg {
                "RS256" => {
                    let mut v = Verifier::new(MessageDigest::sha256(), &self.key)?;
                    v.update(input)?;
                    v.verify(sig)
                }
                "ES256" => {
                    if sig.len() != 64 {
                        return Ok(false);
                    }
                    let r = BigNum::from_slice(&sig[..32])?;
                    let s = BigNum::from_slice(&sig[32..])?;
                    let der = EcdsaSig::from_private_components(r, s)?.to_der()?;
                    let mut v = Verifier::new(MessageDigest::sha256(), &self.key)?;
                    v.update(input)?;
                    v.verify(&der)
                }
                _ => {
                    let mut v = Verifier::new_without_digest(&self.key)?;
                    v.verify_oneshot(sig, input)
                }
            }
        };
        check().unwrap_or(false)
    }
}

/// Reads one JWK (public RSA, EC P-256 or Ed25519 key).
pub fn key_from_jwk(jwk: &Value) -> Result<ApproverKey, KeyError> {
    if jwk.get("d").is_some() {
        return Err(KeyError::Private);
    }
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    let b = |k: &'static str| -> Result<Vec<u8>, KeyError> {
        s(k).and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            .ok_or(KeyError::Member(k))
    };
    if matches!(s("use"), Some(u) if u != "sig") {
        return Err(KeyError::NotSigning);
    }
    let key = match (s("kty"), s("crv")) {
        (Some("RSA"), _) => {
            let n = BigNum::from_slice(&b("n")?)?;
            let e = BigNum::from_slice(&b("e")?)?;
            PKey::from_rsa(Rsa::from_public_components(n, e)?)?
        }
        (Some("EC"), Some("P-256")) => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
            let x = BigNum::from_slice(&b("x")?)?;
            let y = BigNum::from_slice(&b("y")?)?;
            PKey::from_ec_key(EcKey::from_public_key_affine_coordinates(&group, &x, &y)?)?
        }
        (Some("OKP"), Some("Ed25519")) => PKey::public_key_from_raw_bytes(&b("x")?, Id::ED25519)?,
        _ => return Err(KeyError::Unsupported),
    };
    let key = ApproverKey::new(key)?;
    if let Some(alg) = s("alg") {
        if alg != key.alg {
            return Err(KeyError::AlgMismatch(alg.to_owned()));
        }
    }
    Ok(key)
}

/// Parses a JWKS document; keys that cannot be used are skipped.
pub fn parse_jwks(body: &[u8]) -> Result<HashMap<String, ApproverKey>, DocumentError> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| DocumentError::NotJson(e.to_string()))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(DocumentError::NoKeysArray)?;
    let mut out = HashMap::new();
    for (i, jwk) in keys.iter().enumerate() {
        if jwk.get("d").is_some() {
            return Err(DocumentError::PrivateKey);
        }
        match key_from_jwk(jwk) {
            Ok(k) => {
                let kid = jwk
                    .get("kid")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("#{i}"), str::to_owned);
                out.insert(kid, k);
            }
            Err(e) => tracing::debug!(error = %e, "skipping an approver JWKS key"),
        }
    }
    if out.is_empty() {
        return Err(DocumentError::NoUsableKeys("signing"));
    }
    Ok(out)
}

/// Why an approver token is refused (the text is safe to return).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

fn fail(s: impl Into<String>) -> AuthError {
    AuthError(s.into())
}

/// The approver IdP's fetched keys, by `kid`.
#[derive(Default)]
pub struct ApproverKeySet(HashMap<String, ApproverKey>);

impl KeyDocument for ApproverKeySet {
    fn parse(body: &[u8]) -> Result<Self, DocumentError> {
        parse_jwks(body).map(Self)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// How long fetched approver keys stay usable while the IdP's JWKS cannot
/// be fetched; past it only the configured PEM keys verify.
const APPROVER_KEYS_STALE: Duration = Duration::from_secs(3600);

/// The keys approver tokens are checked against: PEM files, and the IdP's
/// JWKS through the same cache the broker uses for mandate keys (single
/// flight, cooldown, negative cache of unknown kids, bounded stale window).
pub struct ApproverKeys {
    static_keys: HashMap<String, ApproverKey>,
    jwks: Option<JwksCache<ApproverKeySet>>,
    /// Outbound TLS (system trust store + `tls.outbound_ca_file`).
    tls: openssl::ssl::SslConnector,
}

impl ApproverKeys {
    pub fn new(
        config: &ApproverAuthConfig,
        tls: openssl::ssl::SslConnector,
    ) -> Result<Self, KeyError> {
        Self::from_sources(
            "approvers",
            config.jwks_url.as_deref(),
            &config.public_key_files,
            JwksTimings {
                refresh: Duration::from_secs(config.jwks_refresh_seconds),
                cooldown: Duration::from_secs(config.jwks_cooldown_seconds),
                negative_ttl: Duration::from_secs(config.jwks_cooldown_seconds.max(60)),
                stale_after: APPROVER_KEYS_STALE,
                timeout: Duration::from_secs(5),
            },
            tls,
        )
    }

    /// Keys from PEM files (`kid` = file stem) and/or a JWKS fetched on
    /// demand through the shared cache; `name` labels the cache's logs.
    pub fn from_sources(
        name: &str,
        jwks_url: Option<&str>,
        public_key_files: &[std::path::PathBuf],
        timings: JwksTimings,
        tls: openssl::ssl::SslConnector,
    ) -> Result<Self, KeyError> {
        let mut static_keys = HashMap::new();
        for path in public_key_files {
            let file = |reason: String| KeyError::File {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| file(e.to_string()))?;
            let key = PKey::public_key_from_pem(&pem)
                .map_err(|e| file(format!("not a public key PEM: {e}")))
                .and_then(|k| ApproverKey::new(k).map_err(|e| file(e.to_string())))?;
            let kid = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            static_keys.insert(kid, key);
        }
        let jwks = jwks_url.map(|url| JwksCache::new(name.into(), url.to_owned(), timings, None));
        Ok(Self {
            static_keys,
            jwks,
            tls,
        })
    }

    pub fn jwks_url(&self) -> Option<&str> {
        self.jwks.as_ref().map(|j| j.url.as_str())
    }

    /// The key for a token among the PEM keys and `fetched`: by `kid`, or
    /// without one only when exactly one key fits the alg.
    fn find(&self, fetched: &ApproverKeySet, kid: Option<&str>, alg: &str) -> Option<ApproverKey> {
        let all = || self.static_keys.iter().chain(fetched.0.iter());
        match kid {
            Some(kid) => all()
                .find(|(k, _)| k.as_str() == kid)
                .map(|(_, v)| v.clone()),
            None => {
                let mut fitting = all().filter(|(_, v)| v.alg == alg);
                match (fitting.next(), fitting.next()) {
                    (Some((_, k)), None) => Some(k.clone()),
                    _ => None,
                }
            }
        }
        .filter(|k| k.alg == alg)
    }

    /// A client per fetch: fetches are rare (refresh interval, unknown kids
    /// after a cooldown) and awc clients are bound to one thread.
    fn client(&self) -> awc::Client {
        crate::runtime::tls::http_client(&self.tls, Duration::from_secs(5))
    }

    /// The key for a token, fetching the JWKS when it is not known.
    async fn key(&self, kid: Option<&str>, alg: &str) -> Option<ApproverKey> {
        let Some(jwks) = &self.jwks else {
            return self.find(&ApproverKeySet::default(), kid, alg);
        };
        let find = |fetched: &ApproverKeySet| self.find(fetched, kid, alg);
        if let Some(k) = jwks.cached(&find) {
            return Some(k);
        }
        // Only a key not known yet needs a client (and maybe a fetch).
        jwks.lookup(&self.client(), kid.unwrap_or(""), find).await
    }

    /// Fetches the JWKS now (single flight with token-triggered fetches).
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let Some(jwks) = &self.jwks else {
            return Ok(0);
        };
        let _flight = jwks.fetch_lock.lock().await;
        jwks.fetch(&self.client()).await
    }
}

pub struct ApproverAuth {
    pub config: ApproverAuthConfig,
    pub keys: ApproverKeys,
}

impl ApproverAuth {
    pub fn new(
        config: ApproverAuthConfig,
        tls: openssl::ssl::SslConnector,
    ) -> Result<Self, KeyError> {
        let keys = ApproverKeys::new(&config, tls)?;
        Ok(Self { config, keys })
    }

    /// Authenticates `token` at `now` (Unix seconds).
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<Approver, AuthError> {
        let claims = self.keys.verify(token, &self.config.algorithms).await?;
        claims_to_approver(&claims, &self.config, now)
    }
}

impl ApproverKeys {
    /// Checks a compact JWS's form, alg (one of `allowed`, never `none` or
    /// HMAC) and signature against these keys; returns its claims, whose
    /// registered claims the caller still checks ([`check_registered`]).
    pub async fn verify(&self, token: &str, allowed: &[String]) -> Result<Value, AuthError> {
        let parsed = parse(token, allowed)?;
        let key = self
            .key(parsed.kid.as_deref(), parsed.alg)
            .await
            .ok_or_else(|| fail("no key fits the token's kid and alg"))?;
        if !key.verify(parsed.input.as_bytes(), &parsed.signature) {
            return Err(fail("signature does not verify"));
        }
        Ok(parsed.claims)
    }
}

struct Parsed<'a> {
    alg: &'static str,
    kid: Option<String>,
    input: &'a str,
    signature: Vec<u8>,
    claims: Value,
}

fn parse<'a>(token: &'a str, allowed: &[String]) -> Result<Parsed<'a>, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(fail("token is too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(fail("not a compact JWS"));
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| fail(format!("{what} is not base64url")))
    };
    let header: Value =
        serde_json::from_slice(&decode(h, "header")?).map_err(|_| fail("header is not JSON"))?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg = super::config::APPROVER_ALGORITHMS
        .into_iter()
        .find(|a| *a == alg && allowed.iter().any(|x| x == a))
        .ok_or_else(|| fail("alg is not accepted"))?;
    if header.get("crit").is_some() {
        return Err(fail("critical header extensions are not supported"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 256 => Some(k.clone()),
        Some(_) => return Err(fail("kid must be a non-empty string")),
    };
    let claims: Value =
        serde_json::from_slice(&decode(p, "payload")?).map_err(|_| fail("payload is not JSON"))?;
    Ok(Parsed {
        alg,
        kid,
        input: &token[..h.len() + 1 + p.len()],
        signature: decode(s, "signature")?,
        claims,
    })
}

/// Checks the registered claims: `iss` and `aud` (string or list member)
/// as configured, `exp` required, `nbf`/`iat` when present, each with
/// `leeway_seconds` of clock skew.
pub fn check_registered(
    claims: &Value,
    issuer: &str,
    audience: &str,
    leeway_seconds: u64,
    now: i64,
) -> Result<(), AuthError> {
    if !claims.is_object() {
        return Err(fail("claims are not a JSON object"));
    }
    let leeway = leeway_seconds as i64;
    let num = |k: &str| claims.get(k).and_then(Value::as_i64);
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(fail("wrong or missing iss"));
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(fail("wrong or missing aud"));
    }
    let exp = num("exp").ok_or_else(|| fail("exp is required"))?;
    if now > exp.saturating_add(leeway) {
        return Err(fail("token has expired"));
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_i64().ok_or_else(|| fail("nbf is not a number"))?;
        if now.saturating_add(leeway) < nbf {
            return Err(fail("token is not valid yet"));
        }
    }
    if let Some(iat) = claims.get("iat") {
        let iat = iat.as_i64().ok_or_else(|| fail("iat is not a number"))?;
        if iat > now.saturating_add(leeway) {
            return Err(fail("token was issued in the future"));
        }
    }
    Ok(())
}

/// Checks the registered claims and reads identity and roles.
pub fn claims_to_approver(
    claims: &Value,
    config: &ApproverAuthConfig,
    now: i64,
) -> Result<Approver, AuthError> {
    check_registered(
        claims,
        &config.issuer,
        &config.audience,
        config.leeway_seconds,
        now,
    )?;
    let text = |k: &str| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 512)
            .map(str::to_owned)
    };
    let email = text("email");
    let id = text(&config.identity_claim)
        .or_else(|| email.clone())
        .ok_or_else(|| {
            fail(format!(
                "token names no approver ({} or email)",
                config.identity_claim
            ))
        })?;
    let roles: Vec<String> = string_list(claims.get(&config.role_claim))
        .map(str::to_ascii_lowercase)
        .collect();
    // The tenants the IdP binds the approver to; none binds to nothing.
    // Each once: a claim repeating a tenant must not list its challenges
    // twice (nor scan the store once per copy).
    let mut tenants: Vec<String> = string_list(claims.get(&config.tenant_claim))
        .map(str::to_owned)
        .collect();
    tenants.sort();
    tenants.dedup();
    let cross_tenant = roles.iter().any(|r| {
        config
            .cross_tenant_roles
            .iter()
            .any(|c| c.eq_ignore_ascii_case(r))
    });
    Ok(Approver {
        id,
        email,
        roles,
        tenants: tenants.into_iter().filter(|t| !t.is_empty()).collect(),
        cross_tenant,
    })
}

/// A claim that is a string or a list of strings (at most 64), trimmed;
/// anything else is no value.
fn string_list(claim: Option<&Value>) -> impl Iterator<Item = &str> {
    let items: Box<dyn Iterator<Item = &Value>> = match claim {
        Some(Value::Array(list)) => Box::new(list.iter()),
        Some(one @ Value::String(_)) => Box::new(std::iter::once(one)),
        _ => Box::new(std::iter::empty()),
    };
    items.filter_map(Value::as_str).take(64).map(str::trim)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use openssl::pkey::Private;
    use openssl::sign::Signer;
    use serde_json::json;

    /// Signs `claims` as a compact JWS with `key` (test helper, also used
    /// by the integration tests' dev IdP through `atb dev`).
    pub fn sign(claims: &Value, key: &PKey<Private>, alg: &str, kid: Option<&str>) -> String {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(k) = kid {
            header["kid"] = k.into();
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = match alg {
            "RS256" => {
                let mut s = Signer::new(MessageDigest::sha256(), key).unwrap();
                s.update(input.as_bytes()).unwrap();
                s.sign_to_vec().unwrap()
            }
            "ES256" => {
                let mut s = Signer::new(MessageDigest::sha256(), key).unwrap();
                s.update(input.as_bytes()).unwrap();
                let der = s.sign_to_vec().unwrap();
                let sig = EcdsaSig::from_der(&der).unwrap();
                let mut raw = sig.r().to_vec_padded(32).unwrap();
                raw.extend(sig.s().to_vec_padded(32).unwrap());
                raw
            }
            _ => {
                let mut s = Signer::new_without_digest(key).unwrap();
                s.sign_oneshot_to_vec(input.as_bytes()).unwrap()
            }
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn test_tls() -> openssl::ssl::SslConnector {
        crate::runtime::tls::outbound(&crate::runtime::tls::TlsConfig::default()).unwrap()
    }

    fn config() -> ApproverAuthConfig {
        ApproverAuthConfig {
            issuer: "https://idp.example".into(),
            audience: "atb-agentauth".into(),
            ..ApproverAuthConfig::default()
        }
    }

    fn claims(now: i64) -> Value {
        json!({"iss": "https://idp.example", "aud": ["x", "atb-agentauth"], "sub": "alice",
               "email": "alice@example.com", "roles": ["CFO", "engineer"], "exp": now + 60, "iat": now})
    }

    fn auth_with(keys: Vec<(&str, PKey<Private>)>) -> ApproverAuth {
        let mut a = ApproverAuth::new(config(), test_tls()).unwrap();
        for (kid, k) in keys {
            let public = PKey::public_key_from_der(&k.public_key_to_der().unwrap()).unwrap();
            a.keys
                .static_keys
                .insert(kid.into(), ApproverKey::new(public).unwrap());
        }
        a
    }

    #[actix_web::test]
    async fn every_algorithm_verifies_and_reads_identity() {
        let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let ec = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let ed = PKey::generate_ed25519().unwrap();
        let auth = auth_with(vec![
            ("r", rsa.clone()),
            ("e", ec.clone()),
            ("d", ed.clone()),
        ]);
        let now = 1_700_000_000;
        for (key, alg, kid) in [
            (&rsa, "RS256", "r"),
            (&ec, "ES256", "e"),
            (&ed, "EdDSA", "d"),
        ] {
            let t = sign(&claims(now), key, alg, Some(kid));
            let a = auth.authenticate(&t, now).await.unwrap();
            assert_eq!(a.id, "alice");
            assert_eq!(a.email.as_deref(), Some("alice@example.com"));
            assert_eq!(a.roles, vec!["cfo", "engineer"]);
        }
        // An alg that does not fit the key named by kid.
        let t = sign(&claims(now), &ed, "EdDSA", Some("r"));
        assert!(auth.authenticate(&t, now).await.is_err());
        // A signature by another key.
        let other = PKey::generate_ed25519().unwrap();
        let t = sign(&claims(now), &other, "EdDSA", Some("d"));
        assert_eq!(
            auth.authenticate(&t, now).await.unwrap_err().0,
            "signature does not verify"
        );
        // HS256 and none are never accepted.
        for alg in ["HS256", "none"] {
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg}).to_string());
            let body = URL_SAFE_NO_PAD.encode(claims(now).to_string());
            let t = format!("{header}.{body}.AAAA");
            assert_eq!(
                auth.authenticate(&t, now).await.unwrap_err().0,
                "alg is not accepted"
            );
        }
    }

    #[actix_web::test]
    async fn approvers_are_bound_to_the_tenants_their_token_names() {
        let ed = PKey::generate_ed25519().unwrap();
        let mut auth = auth_with(vec![("d", ed.clone())]);
        async fn who(auth: &ApproverAuth, key: &PKey<Private>, extra: Value) -> Approver {
            let now = 1_700_000_000;
            let mut c = claims(now);
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            let t = sign(&c, key, "EdDSA", Some("d"));
            auth.authenticate(&t, now).await.unwrap()
        }
        let a = who(&auth, &ed, json!({"tenant": "acme"})).await;
        assert!(a.may_act_for("acme") && !a.may_act_for("globex"));
        let a = who(&auth, &ed, json!({"tenant": ["acme", "globex"]})).await;
        assert!(a.may_act_for("acme") && a.may_act_for("globex"));
        assert!(!a.may_act_for("initech"));
        // A tenant repeated in the claim is one tenant (the approvals list
        // scans each of them once).
        let a = who(
            &auth,
            &ed,
            json!({"tenant": ["acme", "globex", "acme", " acme"]}),
        )
        .await;
        assert_eq!(a.tenants, ["acme", "globex"]);
        // No binding, an empty one or one of the wrong type: nobody's.
        for extra in [json!({}), json!({"tenant": ""}), json!({"tenant": 7})] {
            let a = who(&auth, &ed, extra.clone()).await;
            assert!(!a.may_act_for("acme"), "{extra}");
        }
        // Only a role the operator names acts for every tenant.
        auth.config.cross_tenant_roles = vec!["Auditor".into()];
        let a = who(&auth, &ed, json!({"roles": ["auditor"]})).await;
        assert!(a.may_act_for("acme") && a.may_act_for("globex"));
        let a = who(&auth, &ed, json!({"roles": ["cfo"]})).await;
        assert!(!a.may_act_for("acme"));
    }

    #[test]
    fn registered_claims_are_required() {
        let c = config();
        let now = 1_700_000_000;
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|v| v["iss"] = "https://evil".into()), "iss"),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("iss");
                }),
                "iss",
            ),
            (Box::new(|v| v["aud"] = "other".into()), "aud"),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("aud");
                }),
                "aud",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("exp");
                }),
                "exp is required",
            ),
            (Box::new(move |v| v["exp"] = (now - 31).into()), "expired"),
            (
                Box::new(move |v| v["nbf"] = (now + 31).into()),
                "not valid yet",
            ),
            (Box::new(move |v| v["iat"] = (now + 31).into()), "future"),
            (
                Box::new(|v| {
                    let o = v.as_object_mut().unwrap();
                    o.remove("sub");
                    o.remove("email");
                }),
                "names no approver",
            ),
        ];
        for (mutate, want) in cases {
            let mut v = claims(now);
            mutate(&mut v);
            let e = claims_to_approver(&v, &c, now).unwrap_err().0;
            assert!(e.contains(want), "{want}: {e}");
        }
        // Within leeway is fine; email stands in for a missing sub.
        let mut v = claims(now);
        v["exp"] = (now - 29).into();
        v.as_object_mut().unwrap().remove("sub");
        v["roles"] = "CEO".into();
        let a = claims_to_approver(&v, &c, now).unwrap();
        assert_eq!(a.id, "alice@example.com");
        assert_eq!(a.roles, vec!["ceo"]);
    }

    #[test]
    fn jwks_keys_of_every_type() {
        let rsa = Rsa::generate(2048).unwrap();
        let n = URL_SAFE_NO_PAD.encode(rsa.n().to_vec());
        let e = URL_SAFE_NO_PAD.encode(rsa.e().to_vec());
        let ed = PKey::generate_ed25519().unwrap();
        let x = URL_SAFE_NO_PAD.encode(ed.raw_public_key().unwrap());
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": n, "e": e, "alg": "RS256", "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "d", "x": x},
            {"kty": "OKP", "crv": "Ed25519", "kid": "bad-alg", "x": x, "alg": "RS256"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "n": n, "e": e, "use": "enc"},
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, vec!["d", "r"]);
        assert!(parse_jwks(br#"{"keys": [{"kty":"RSA","d":"x"}]}"#).is_err());
        assert!(parse_jwks(br#"{"keys": []}"#).is_err());
        let small = Rsa::generate(1024).unwrap();
        let weak = json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(small.n().to_vec()), "e": e});
        assert_eq!(key_from_jwk(&weak).unwrap_err(), KeyError::WeakRsa);
    }

    /// Serves `doc` as a JWKS on a local port, counting fetches.
    async fn serve_jwks(doc: Value) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let fetches = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = fetches.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let server = actix_web::HttpServer::new(move || {
            let (doc, counted) = (doc.clone(), counted.clone());
            actix_web::App::new().default_service(actix_web::web::to(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let doc = doc.clone();
                async move { actix_web::HttpResponse::Ok().json(doc) }
            }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_web::rt::spawn(server);
        (url, fetches)
    }

    #[actix_web::test]
    async fn idp_keys_come_from_its_jwks_through_the_shared_cache() {
        use std::sync::atomic::Ordering;
        let ed = PKey::generate_ed25519().unwrap();
        let x = URL_SAFE_NO_PAD.encode(ed.raw_public_key().unwrap());
        let (url, fetches) =
            serve_jwks(json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "idp-1", "x": x}]}))
                .await;
        let mut c = config();
        c.jwks_url = Some(url);
        let auth = ApproverAuth::new(c, test_tls()).unwrap();
        let now = 1_700_000_000;
        // The first token fetches the JWKS; later ones use the cached keys.
        for _ in 0..3 {
            let t = sign(&claims(now), &ed, "EdDSA", Some("idp-1"));
            assert_eq!(auth.authenticate(&t, now).await.unwrap().id, "alice");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // Tokens naming unknown kids cost no fetch inside the cooldown.
        for i in 0..20 {
            let t = sign(&claims(now), &ed, "EdDSA", Some(&format!("bogus-{i}")));
            assert!(auth.authenticate(&t, now).await.is_err());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // A periodic refresh fetches again.
        assert_eq!(auth.keys.refresh().await, Ok(1));
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }
}
