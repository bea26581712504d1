//! `atb dev`: the whole product on one machine with embedded defaults — a
//! generated dev PKI, two demo tenants, a demo upstream and the broker.

pub mod demo_upstream;
pub mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::poa::config::TenantPoaConfig;
use crate::routes::{ConnectorRoutes, RouteConfig};
use crate::runtime::logging::LogFormat;
use crate::runtime::tls::TlsConfig;
use crate::tenant::{ConnectorConfig, RateLimitConfig, TenantConfig};
use pki::DevPki;

/// The dev mandate signing key (PKCS#8 PEM) and its public half.
pub const SIGNING_KEY: &str = "poa-signing.key";
pub const SIGNING_PUB: &str = "poa-signing.pub.pem";

/// The demo tenants (their ids).
pub const DEMO_TENANTS: [&str; 2] = ["acme", "globex"];

/// A demo tenant's Biscuit root key pair in the dev directory: the private
/// key (`ed25519-private/<hex>`, owner-only; `atb biscuit mint --tenant T`
/// reads it by default from `atb-dev/`) and the public key
/// (`ed25519/<hex>`), configured as the tenant's root key id 1.
pub fn biscuit_root_key(dir: &Path, tenant: &str) -> PathBuf {
    dir.join(format!("{tenant}-biscuit-root.key"))
}

/// See [`biscuit_root_key`].
pub fn biscuit_root_pub(dir: &Path, tenant: &str) -> PathBuf {
    dir.join(format!("{tenant}-biscuit-root.pub"))
}

/// Options of `atb dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub dir: PathBuf,
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub upstream_addr: SocketAddr,
    /// Tenant request rate (burst twice that); connectors get half.
    pub tenant_rps: f64,
    /// AgentAuth's HTTPS listener and its plain admin listener.
    pub agentauth_addr: SocketAddr,
    pub agentauth_admin_addr: SocketAddr,
    /// Redis for both services' shared state (`[redis] url`); `None` =
    /// in memory.
    pub redis: Option<String>,
}

/// The configuration files `atb dev` writes into its directory: the exact
/// configuration it runs, to start more replicas of either service.
pub const BROKER_TOML: &str = "broker.toml";
pub const AGENTAUTH_TOML: &str = "agentauth.toml";

/// The dev identity provider's key (approver tokens) and key id.
pub const DEV_IDP_KEY: &str = "dev-idp.key";
pub const DEV_IDP_PUB: &str = "dev-idp.pem";
pub const DEV_IDP_ISSUER: &str = "atb-dev-idp";
pub const DEV_APPROVER_AUDIENCE: &str = "atb-agentauth";
/// AgentAuth's signing keys (see `atb keys rotate`).
pub const AGENTAUTH_KEYS: &str = "agentauth-keys";
/// Dev approvers: name, roles, the tenant they are bound to. Their tokens
/// are written to `approver-<name>.jwt` and printed by `atb dev`; each acts
/// for its own tenant only.
pub const DEV_APPROVERS: [(&str, &[&str], &str); 6] = [
    ("alice", &["manager"], "acme"),
    ("bob", &["manager"], "acme"),
    ("carol", &["ceo"], "acme"),
    ("dave", &["cfo"], "acme"),
    ("erin", &["manager"], "globex"),
    ("frank", &["manager"], "globex"),
];

/// The demo connector's routes: every call of the README walk-through,
/// each bound to its action.
pub fn demo_routes() -> Vec<RouteConfig> {
    [
        ("crm.contact.read", &["GET"][..], "/api/hello"),
        ("crm.contact.list", &["GET"], "/api/contacts"),
        ("crm.contact.read", &["GET"], "/api/contacts/{id}"),
        (
            "crm.contact.update",
            &["PUT", "PATCH"],
            "/api/contacts/{id}",
        ),
        ("crm.contact.delete", &["DELETE"], "/api/contacts/{id}"),
        ("sap.vendor.create", &["POST"], "/api/vendors"),
        // `{vendor_id}`: the capture binds a mandate's `con.vendor_id`, the
        // name approvers see (README, *Captures reach the policy*).
        ("erp.vendor.read", &["GET"], "/api/vendors/{vendor_id}"),
        (
            "sap.vendor.change",
            &["PUT", "PATCH"],
            "/api/vendors/{vendor_id}",
        ),
        ("sap.payment.execute", &["POST"], "/api/pay"),
        ("org.company.merge", &["POST"], "/api/merge"),
        ("kb.docs.search", &["GET", "POST"], "/api/docs/{*rest}"),
    ]
    .into_iter()
    .map(|(action, methods, path)| RouteConfig {
        action: action.into(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path: path.into(),
    })
    .collect()
}

/// The embedded dev configuration for a PKI in `pki` and a demo upstream.
/// Its paths are absolute, so the files written from it
/// ([`write_config_files`]) work from any directory.
pub fn config(pki: &DevPki, opts: &DevOptions) -> Config {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let pki = &DevPki {
        dir: absolute(&pki.dir),
    };
    let dir = absolute(&opts.dir);
    let upstream = format!("http://{}", opts.upstream_addr);
    let connector = |id: &str| ConnectorConfig {
        id: id.into(),
        upstream_url: upstream.clone(),
        egress_allowlist: vec!["/api/".into()],
        rate_limit: Some(RateLimitConfig {
            requests_per_second: opts.tenant_rps / 2.0,
            burst: opts.tenant_rps as u32,
        }),
        timeout_seconds: 30,
        routes: ConnectorRoutes::Declared(demo_routes()),
    };
    let tenant = |id: &str, td: Option<&str>, prefix: Option<&str>| TenantConfig {
        id: id.into(),
        enabled: true,
        trust_domain: td.map(Into::into),
        spiffe_prefix: prefix.map(Into::into),
        client_ca_file: None,
        max_connections: 64,
        max_in_flight: 256,
        requests_per_second: opts.tenant_rps,
        burst: (opts.tenant_rps * 2.0) as u32,
        poa: TenantPoaConfig {
            // Mandates from `atb mint` (dev key) and from AgentAuth (JWKS).
            public_key_files: vec![pki.dir.join(SIGNING_PUB)],
            // Over HTTPS, verified with the dev CA (tls.outbound_ca_file).
            jwks_url: Some(format!(
                "https://localhost:{}/.well-known/jwks.json",
                opts.agentauth_addr.port()
            )),
            ..TenantPoaConfig::default()
        },
        platform: None,
        policy_files: Vec::new(),
        policy_data: None,
        default_connector: None,
        connectors: vec![connector("crm")],
        agent_owners: Vec::new(),
        audit_required: false,
        // Capabilities the tenant mints with `atb biscuit mint` (its dev
        // root key, id 1); AgentAuth mints `format: "biscuit"` mandates
        // with the same key.
        biscuit: Some(crate::biscuit::config::TenantBiscuitConfig {
            root_keys: vec![crate::biscuit::config::RootKeyConfig {
                id: 1,
                public_key: None,
                public_key_file: Some(biscuit_root_pub(&dir, id)),
            }],
            agentauth_key_file: Some(biscuit_root_key(&dir, id)),
            agentauth_root_key_id: Some(1),
        }),
    };
    let mut c = Config::default();
    c.broker.listen_addr = opts.listen_addr;
    c.broker.admin_addr = opts.admin_addr;
    c.broker.drain_delay_seconds = 0;
    c.tls = TlsConfig {
        cert_file: pki.server_cert(),
        key_file: pki.server_key(),
        client_ca_file: pki.ca_cert(),
        outbound_ca_file: Some(pki.ca_cert()),
    };
    c.logging.format = LogFormat::Text;
    // The authorizer's time limit is wall-clock: 5 ms (the default) suits a
    // release build on a host with headroom, not `cargo run -- dev` (a
    // debug build) on a busy laptop. Runaway tokens are still stopped by
    // the static work bound, facts and iterations.
    c.biscuit.max_time_ms = 50;
    c.admin.token_file = Some(dir.join("admin.token"));
    let a = &mut c.agentauth;
    a.listen_addr = opts.agentauth_addr;
    a.admin_addr = opts.agentauth_admin_addr;
    a.keys_dir = dir.join(AGENTAUTH_KEYS);
    // AgentAuth tells the broker of key changes at once.
    let broker_admin = if opts.admin_addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], opts.admin_addr.port()))
    } else {
        opts.admin_addr
    };
    a.broker_admin_urls = vec![format!("http://{broker_admin}")];
    a.approvers.issuer = DEV_IDP_ISSUER.into();
    a.approvers.audience = DEV_APPROVER_AUDIENCE.into();
    a.approvers.public_key_files = vec![dir.join(DEV_IDP_PUB)];
    let mut acme = tenant("acme", Some("acme.example"), None);
    // acme's reporter agent answers to alice: she may not approve its
    // requests, whatever the agent writes.
    acme.agent_owners = vec![crate::tenant::AgentOwners {
        agent: "spiffe://acme.example/agent/reporter".into(),
        owners: vec!["alice@acme.example".into()],
    }];
    c.tenants = vec![
        acme,
        tenant("globex", None, Some("spiffe://saas.example/tenants/globex")),
    ];
    debug_assert!(c.tenants.iter().map(|t| t.id.as_str()).eq(DEMO_TENANTS));
    c.redis = opts
        .redis
        .as_ref()
        .map(|url| crate::store::config::RedisConfig {
            url: Some(url.clone()),
            ..Default::default()
        });
    c
}

/// Which service a written configuration file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Broker,
    AgentAuth,
}

/// `config` as a configuration file for `service`: a header saying where it
/// comes from and how to start another replica with it, then the whole
/// configuration (`atb broker` reads the broker's sections, `atb agentauth`
/// `[agentauth]` with `[tls]`, the tenants, policy and audit; both validate
/// all of it). `path` is where the
/// file goes, as the header's commands should name it.
///
/// Inline secrets (`admin.token`, `audit.http_authorization` — set only
/// from `ATB_ADMIN_TOKEN` / `AUDIT_SINK_AUTH` here) are left out, as is the
/// Redis password (never serialized): the header says to set them again.
pub fn config_toml(config: &Config, service: Service, path: &Path) -> Result<String, DevError> {
    let mut c = config.clone();
    c.admin.token = None;
    c.audit.http_authorization = None;
    let body = toml::to_string_pretty(&c)?;
    let file = path.display();
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| "the directory `atb dev` ran in".into());
    let header = match service {
        Service::Broker => format!(
            r#"# Generated by `atb dev`: the exact configuration its broker runs (after
# environment overrides and validation). Every `atb dev` run rewrites it.
# It is the whole configuration; `atb broker` uses the broker's sections.
#
# A second broker replica (same tenants, keys, PKI, policy, audit settings)
# needs only its own listen addresses:
#
#   LISTEN_ADDR=127.0.0.1:9443 HTTP_LISTEN_ADDR=127.0.0.1:9080 \
#     atb broker --config {file}
#
# - With AUDIT_SINK=file give each replica its own AUDIT_FILE: every process
#   writes its own hash chain.
# - Replay protection and challenges are shared between replicas only with
#   [redis] (`atb dev --redis redis://127.0.0.1:6379`); in memory, each
#   replica has its own replay cache.
# - AgentAuth notifies only the brokers in agentauth.broker_admin_urls of key
#   changes at once; another replica re-reads the JWKS at its next refresh.
# - Not written here: ATB_ADMIN_TOKEN, AUDIT_SINK_AUTH and REDIS_PASSWORD;
#   set them again if `atb dev` had them.
# - Paths are absolute; any relative one (from the environment) is relative
#   to {cwd}.

"#
        ),
        Service::AgentAuth => format!(
            r#"# Generated by `atb dev`: the exact configuration its AgentAuth runs (after
# environment overrides and validation). Every `atb dev` run rewrites it.
# It is the whole configuration; `atb agentauth` uses [agentauth], [tls],
# [[tenants]], [policy] and [audit].
#
# A second AgentAuth replica (same signing keys directory, approvers, PKI)
# needs only its own listen addresses:
#
#   AGENTAUTH_LISTEN_ADDR=127.0.0.1:9444 AGENTAUTH_ADMIN_ADDR=127.0.0.1:9081 \
#     atb agentauth --config {file}
#
# - With AUDIT_SINK=file give each replica its own AUDIT_FILE: every process
#   writes its own hash chain.
# - Challenges and approvals are shared between replicas only with [redis]
#   (`atb dev --redis redis://127.0.0.1:6379`); in memory, a challenge lives
#   on the replica that created it.
# - Brokers fetch the JWKS from the first AgentAuth (tenants.poa.jwks_url);
#   both replicas sign with the keys in agentauth.keys_dir.
# - Not written here: ATB_ADMIN_TOKEN, AUDIT_SINK_AUTH and REDIS_PASSWORD;
#   set them again if `atb dev` had them.
# - Paths are absolute; any relative one (from the environment) is relative
#   to {cwd}.

"#
        ),
    };
    Ok(header + &body)
}

/// Writes `broker.toml` and `agentauth.toml` into `dir` (owner-only, each
/// replaced atomically) and returns their paths.
pub fn write_config_files(config: &Config, dir: &Path) -> Result<[PathBuf; 2], DevError> {
    let paths = [dir.join(BROKER_TOML), dir.join(AGENTAUTH_TOML)];
    for (path, service) in paths.iter().zip([Service::Broker, Service::AgentAuth]) {
        let text = config_toml(config, service, path)?;
        crate::runtime::files::write_file_atomic(path, text.as_bytes(), true)?;
    }
    Ok(paths)
}

/// Why `atb dev` could not prepare its directory.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Write(#[from] crate::runtime::files::WriteError),
    #[error("openssl: {0}")]
    Ssl(#[from] openssl::error::ErrorStack),
    #[error(transparent)]
    Key(#[from] crate::poa::keys::KeyError),
    #[error(transparent)]
    Keyring(#[from] crate::agentauth::keyring::KeyringError),
    #[error("cannot write the configuration as TOML: {0}")]
    Toml(#[from] toml::ser::Error),
}

/// Creates (or reuses) the dev PKI and admin token in `dir`.
pub fn prepare(dir: &Path) -> Result<DevPki, DevError> {
    let pki = DevPki {
        dir: dir.to_owned(),
    };
    let pki = if pki.ca_cert().exists() {
        pki
    } else {
        pki::generate(dir, &pki::default_agents(), 30, false)?
    };
    if !dir.join(SIGNING_KEY).exists() {
        crate::poa::keys::generate_signing_key(&dir.join(SIGNING_KEY), &dir.join(SIGNING_PUB))?;
    }
    if !dir
        .join(AGENTAUTH_KEYS)
        .join(crate::agentauth::keyring::ACTIVE)
        .exists()
    {
        crate::agentauth::keyring::rotate(&dir.join(AGENTAUTH_KEYS), false)?;
    }
    if !dir.join(DEV_IDP_KEY).exists() {
        crate::poa::keys::generate_signing_key(&dir.join(DEV_IDP_KEY), &dir.join(DEV_IDP_PUB))?;
    }
    for tenant in DEMO_TENANTS {
        let (key, public) = (biscuit_root_key(dir, tenant), biscuit_root_pub(dir, tenant));
        if !(key.exists() && public.exists()) {
            let (private_text, public_text) = crate::biscuit::tools::keygen();
            crate::runtime::files::write_file_atomic(
                &public,
                format!("{public_text}\n").as_bytes(),
                false,
            )?;
            crate::runtime::files::write_file_atomic(
                &key,
                format!("{private_text}\n").as_bytes(),
                true,
            )?;
        }
    }
    write_approver_tokens(dir, 12 * 3600)?;
    let token_file = dir.join("admin.token");
    if !token_file.exists() {
        let mut bytes = [0u8; 24];
        openssl::rand::rand_bytes(&mut bytes)?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        // Readable by its owner only, like every secret atb writes.
        crate::runtime::files::write_file(&token_file, (token + "\n").as_bytes(), true)?;
    }
    Ok(pki)
}

/// Signs a dev approver token (as the dev identity provider would), bound
/// to `tenant`.
pub fn approver_token(
    dir: &Path,
    name: &str,
    roles: &[&str],
    tenant: &str,
    ttl: i64,
) -> Result<String, DevError> {
    let key = crate::poa::keys::load_signing_pem(&dir.join(DEV_IDP_KEY))?;
    let now = crate::runtime::clock::unix_now();
    let id = format!("{name}@{tenant}.example");
    let claims = serde_json::json!({
        "iss": DEV_IDP_ISSUER, "aud": DEV_APPROVER_AUDIENCE,
        "sub": id, "email": id, "tenant": tenant,
        "roles": roles, "iat": now, "exp": now + ttl,
    });
    Ok(crate::poa::token::sign(&claims, &key, "dev-idp"))
}

/// Writes `approver-<name>.jwt` for every dev approver.
fn write_approver_tokens(dir: &Path, ttl: i64) -> Result<(), DevError> {
    for (name, roles, tenant) in DEV_APPROVERS {
        let token = approver_token(dir, name, roles, tenant, ttl)?;
        crate::runtime::files::write_file(
            &dir.join(format!("approver-{name}.jwt")),
            token.as_bytes(),
            true,
        )?;
    }
    Ok(())
}

/// What to tell the person who just ran `atb dev`.
pub fn banner(pki: &DevPki, opts: &DevOptions) -> String {
    let d = pki.dir.display();
    let port = opts.listen_addr.port();
    let admin = opts.admin_addr.port();
    format!(
        r#"
ATB dev is up.
  agent listener (mTLS)  https://localhost:{port}
  admin listener         http://localhost:{admin}   (/health /ready /metrics)
  demo upstream          http://{upstream}
  AgentAuth              https://localhost:{aa}   (admin http://{aa_admin}: /health /ready /metrics /.well-known/jwks.json)
  dev PKI and token      {d}/
  what runs, as files    {d}/{broker_toml} {d}/{agentauth_toml}   (more replicas: see their headers)
  shared state           {state}

Try it:
  curl -k https://localhost:{port}/health
  curl --cacert {d}/ca.crt https://localhost:{port}/api/hello                         # 401 spiffe_id_required
  curl --cacert {d}/ca.crt --cert {d}/acme-agent.crt --key {d}/acme-agent.key \
       https://localhost:{port}/api/hello                                             # 401 poa_required
  T=$({exe} mint --key {d}/{key} --sub spiffe://acme.example/agent/demo --act crm.contact.read)
  curl --cacert {d}/ca.crt --cert {d}/acme-agent.crt --key {d}/acme-agent.key \
       -H "Authorization: Bearer $T" https://localhost:{port}/api/hello                # 200, then 403 poa_replay
  curl --cacert {d}/ca.crt --cert {d}/stranger-agent.crt --key {d}/stranger-agent.key \
       https://localhost:{port}/api/hello                                             # 403 unknown_tenant
  curl -s http://localhost:{admin}/metrics | grep atb_actor_

Biscuit capabilities (each demo tenant's root key, id 1: {d}/<tenant>-biscuit-root.key, .pub):
  B=$({exe} biscuit mint --tenant acme --key {d}/acme-biscuit-root.key \
       --agent spiffe://acme.example/agent/demo --action crm.contact.read \
       --leg '{{"jurisdiction":"EU","accountable_party":{{"type":"user","id":"dev-owner"}}}}')
  B2=$({exe} biscuit attenuate "$B" --ttl 60 --route GET /api/hello)                  # offline, no key
  {exe} biscuit inspect "$B2"                                                        # blocks, revocation ids
  curl --cacert {d}/ca.crt --cert {d}/acme-agent.crt --key {d}/acme-agent.key \
       -H "X-ATB-Biscuit: $B2" https://localhost:{port}/api/hello                      # 200, then 403 poa_replay

AgentAuth (mTLS for agents, OIDC bearer tokens for approvers):
  AA="curl -s --cacert {d}/ca.crt --cert {d}/acme-agent.crt --key {d}/acme-agent.key"
  $AA -d '{{"act":"sap.vendor.create","con":{{}},"leg":{{"jurisdiction":"EU","accountable_party":{{"type":"user","id":"dev-owner"}}}}}}' \
       https://localhost:{aa}/v1/challenge                                           # risk_tier high, approvals_needed 2
  curl -s --cacert {d}/ca.crt -X POST -H "Authorization: Bearer $(cat {d}/approver-alice.jwt)" \
       https://localhost:{aa}/v1/challenge/$ID/approve                               # then approver-bob.jwt
  $AA -d '{{"challenge_id":"'$ID'"}}' https://localhost:{aa}/v1/mandate              # the mandate, once ("format":"biscuit" for a Biscuit)
  dev approvers (tokens valid 12 h): {d}/approver-{{alice,bob}}.jwt (manager),
    {d}/approver-carol.jwt (ceo), {d}/approver-dave.jwt (cfo)
  curl -X POST -H "Authorization: Bearer $(cat {d}/admin.token)" \
       -d '{{"enabled":true}}' http://localhost:{admin}/admin/maintenance              # maintenance on
Stop with Ctrl-C.
"#,
        upstream = opts.upstream_addr,
        aa = opts.agentauth_addr.port(),
        aa_admin = opts.agentauth_admin_addr,
        key = SIGNING_KEY,
        broker_toml = BROKER_TOML,
        agentauth_toml = AGENTAUTH_TOML,
        state = opts.redis.as_deref().map_or_else(
            || "in memory (one replica)".to_owned(),
            |u| format!("Redis {u}")
        ),
        exe = std::env::current_exe().map_or_else(|_| "atb".into(), |p| p.display().to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_config_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DevOptions {
            dir: dir.path().to_owned(),
            listen_addr: "127.0.0.1:8443".parse().unwrap(),
            admin_addr: "127.0.0.1:8080".parse().unwrap(),
            upstream_addr: "127.0.0.1:9000".parse().unwrap(),
            tenant_rps: 100.0,
            agentauth_addr: "127.0.0.1:8444".parse().unwrap(),
            agentauth_admin_addr: "127.0.0.1:8081".parse().unwrap(),
            redis: None,
        };
        let pki = prepare(dir.path()).unwrap();
        let c = config(&pki, &opts);
        c.validate().unwrap();
        c.agentauth.validate_for_service().unwrap();
        crate::agentauth::keyring::KeyRing::load(&c.agentauth.keys_dir).unwrap();
        assert!(dir.path().join("approver-carol.jwt").exists());
        assert!(crate::admin_token(&c).unwrap().is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("admin.token"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the admin token is a secret");
        }
        // Each demo tenant has a Biscuit root key pair, configured as its
        // root key id 1.
        let mut first = Vec::new();
        for tenant in DEMO_TENANTS {
            let key = biscuit_root_key(dir.path(), tenant);
            let public = std::fs::read_to_string(biscuit_root_pub(dir.path(), tenant)).unwrap();
            let private = std::fs::read_to_string(&key).unwrap();
            assert!(public.starts_with("ed25519/"), "{public}");
            assert!(private.starts_with("ed25519-private/"));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&key).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "a Biscuit root key is a secret");
            }
            let t = c.tenants.iter().find(|t| t.id == tenant).unwrap();
            let roots = &t.biscuit.as_ref().unwrap().root_keys;
            assert_eq!(roots.len(), 1);
            assert_eq!(roots[0].id, 1);
            assert_eq!(roots[0].text().unwrap(), public.trim());
            crate::biscuit::verify::RootKeys::parse(&[(1, roots[0].text().unwrap())]).unwrap();
            first.push((private, public));
        }
        // A second run reuses the PKI and the keys instead of failing.
        prepare(dir.path()).unwrap();
        for (tenant, keys) in DEMO_TENANTS.iter().zip(&first) {
            let again = (
                std::fs::read_to_string(biscuit_root_key(dir.path(), tenant)).unwrap(),
                std::fs::read_to_string(biscuit_root_pub(dir.path(), tenant)).unwrap(),
            );
            assert_eq!(&again, keys, "{tenant}'s Biscuit root key is kept");
        }
    }

    /// The written files parse back into what `atb dev` runs: same TOML
    /// once serialized again, valid for both services, absolute paths, and
    /// the Redis URL of `--redis`; inline secrets stay out.
    #[test]
    fn written_config_files_are_the_running_config() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DevOptions {
            dir: dir.path().to_owned(),
            listen_addr: "127.0.0.1:8443".parse().unwrap(),
            admin_addr: "127.0.0.1:8080".parse().unwrap(),
            upstream_addr: "127.0.0.1:9000".parse().unwrap(),
            tenant_rps: 100.0,
            agentauth_addr: "127.0.0.1:8444".parse().unwrap(),
            agentauth_admin_addr: "127.0.0.1:8081".parse().unwrap(),
            redis: Some("redis://127.0.0.1:6379".into()),
        };
        let pki = prepare(dir.path()).unwrap();
        let mut running = config(&pki, &opts);
        // As `atb dev` does: environment overrides, then validation.
        let env = |k: &str| match k {
            "ATB_ADMIN_TOKEN" => Some("an-inline-admin-token-0123456789".to_owned()),
            "ATB_SHARDS" => Some("3".to_owned()),
            _ => None,
        };
        running.apply_env(&env).unwrap();
        running.validate().unwrap();
        let paths = write_config_files(&running, dir.path()).unwrap();
        assert_eq!(paths[0], dir.path().join(BROKER_TOML));
        assert_eq!(paths[1], dir.path().join(AGENTAUTH_TOML));

        let mut expected = running.clone();
        expected.admin.token = None;
        let expected_toml = toml::to_string(&expected).unwrap();
        for (path, starts) in paths
            .iter()
            .zip(["atb broker --config", "atb agentauth --config"])
        {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.starts_with("# Generated by `atb dev`"), "{text}");
            assert!(
                text.contains(&format!("{starts} {}", path.display())),
                "the header says how to start a replica: {text}"
            );
            assert!(!text.contains("an-inline-admin-token"), "no inline secret");
            let back = Config::load(Some(path), &|_| None).unwrap();
            back.agentauth.validate_for_service().unwrap();
            assert_eq!(toml::to_string(&back).unwrap(), expected_toml, "{path:?}");
            assert_eq!(back.tenants.len(), 2);
            assert_eq!(back.shards.count, 3, "environment overrides are kept");
            assert_eq!(back.broker.listen_addr, opts.listen_addr);
            assert_eq!(back.agentauth.listen_addr, opts.agentauth_addr);
            assert_eq!(
                back.redis.as_ref().and_then(|r| r.url.as_deref()),
                Some("redis://127.0.0.1:6379")
            );
            assert!(back.tls.cert_file.is_absolute());
            assert!(back.agentauth.keys_dir.is_absolute());
            assert!(back.tenants[0].poa.public_key_files[0].is_absolute());
            // The admin token file is what the broker and replicas use.
            assert!(crate::admin_token(&back).unwrap().is_some());
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }

        // Relative directories become absolute paths in the configuration.
        let relative = DevOptions {
            dir: "atb-dev-relative".into(),
            redis: None,
            ..opts.clone()
        };
        let c = config(
            &DevPki {
                dir: relative.dir.clone(),
            },
            &relative,
        );
        assert!(c.tls.client_ca_file.is_absolute());
        assert!(c.admin.token_file.as_ref().unwrap().is_absolute());
        assert!(c.agentauth.approvers.public_key_files[0].is_absolute());
        assert!(c.redis.is_none());
    }
}
