//! The tenant part of the broker's configuration, built into what the
//! pipeline reads: the directory of SPIFFE IDs, each tenant's mandate keys
//! and rules, its action catalogue and its connectors' compiled routes.
//!
//! - One build path for start and reload ([`TenantSet::build`]): a set is
//!   built whole from a validated configuration and swapped in atomically;
//!   a request reads one set from start to end.
//! - A tenant whose mandate settings did not change keeps its
//!   [`TenantAuth`] across a reload (fetched keys, runtime revocations),
//!   with its Biscuit root keys as configured now.
//! - Plain data; the JWKS loops and connections are managed by the state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::broker::platform::PlatformVerifier;
use crate::broker::validator::TenantAuth;
use crate::config::error::{invalid, ConfigError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::poa::jwks::JwksCache;
use crate::routes::Binding;
use crate::runtime::ca_bundle::CaBundle;
use crate::tenant::TenantDirectory;

/// Tenant → connector → compiled routes.
pub type Bindings = HashMap<String, HashMap<String, Binding>>;
pub type Catalogues = HashMap<String, crate::catalog::TenantCatalogue>;

/// Every tenant's connectors compiled into route bindings (at start and
/// on reload); unbound connectors are warned about and flagged by
/// `atb_connector_unbound`.
fn compile_bindings(
    config: &Config,
    metrics: &Metrics,
) -> Result<(Bindings, Catalogues), ConfigError> {
    let mut all = HashMap::with_capacity(config.tenants.len());
    let mut catalogues = HashMap::with_capacity(config.tenants.len());
    for (i, t) in config.tenants.iter().enumerate() {
        let catalogue = crate::catalog::TenantCatalogue::new(t.policy_data.as_ref())
            .map_err(|e| invalid(format!("tenants[{i}].policy_data"), e.to_string()))?;
        let mut connectors = HashMap::with_capacity(t.connectors.len());
        for (j, c) in t.connectors.iter().enumerate() {
            let binding = Binding::compile(
                &c.routes,
                &catalogue,
                &format!("tenants[{i}].connectors[{j}]"),
            )
            .map_err(|e| invalid(e.key, e.reason))?;
            let unbound = matches!(binding, Binding::Unbound);
            match &binding {
                Binding::Unbound => tracing::warn!(
                    tenant = %t.id,
                    connector = %c.id,
                    "connector routes = \"any\": its mandates are NOT bound to method and path; any call inside its egress allowlist carries any action"
                ),
                Binding::Bound(table) if table.is_empty() => tracing::warn!(
                    tenant = %t.id,
                    connector = %c.id,
                    "connector declares no routes: every call through it is refused (action_route_mismatch)"
                ),
                Binding::Bound(_) => {}
            }
            metrics
                .connector_unbound
                .with_label_values(&[&t.id, &c.id])
                .set(i64::from(unbound));
            connectors.insert(c.id.clone(), binding);
        }
        all.insert(t.id.clone(), connectors);
        catalogues.insert(t.id.clone(), catalogue);
    }
    Ok((all, catalogues))
}

/// Whether the client CA bundles `config` names now hold other
/// certificates than `set` verifies with (a file rewritten in place, with
/// the `[[tenants]]` text unchanged). An unreadable file counts as changed,
/// so the rebuild reports it.
pub fn issuers_stale(config: &Config, set: &TenantSet) -> bool {
    let mut files: HashMap<&std::path::Path, Option<CaBundle>> = HashMap::new();
    config.tenants.iter().any(|t| {
        let path = t
            .client_ca_file
            .as_deref()
            .unwrap_or(&config.tls.client_ca_file);
        let now = files
            .entry(path)
            .or_insert_with(|| CaBundle::load(path).ok());
        match (now, set.directory.issuer(&t.id)) {
            (Some(now), Some(then)) => !now.same_certs(then),
            _ => true,
        }
    })
}

/// The client CA bundle files a configuration reads (for the file watch).
pub fn issuer_files(config: &Config) -> Vec<std::path::PathBuf> {
    let mut files = vec![config.tls.client_ca_file.clone()];
    for t in &config.tenants {
        if let Some(p) = &t.client_ca_file {
            if !files.contains(p) {
                files.push(p.clone());
            }
        }
    }
    files
}

/// Each tenant's platform issuer: PEM keys loaded now (a bad one refuses
/// the whole set, naming its key); a tenant whose `[tenants.platform]` is
/// unchanged from `previous` keeps its verifier (and its fetched keys).
fn build_platform(
    config: &Config,
    previous: Option<&TenantSet>,
) -> Result<HashMap<String, Arc<PlatformVerifier>>, ConfigError> {
    let mut out = HashMap::new();
    let mut tls = None;
    for (i, t) in config.tenants.iter().enumerate() {
        let Some(p) = &t.platform else { continue };
        let kept = previous.and_then(|prev| {
            let old = prev.config.tenants.iter().find(|o| o.id == t.id)?;
            (old.platform.as_ref() == Some(p))
                .then(|| prev.platform.get(&t.id).cloned())
                .flatten()
        });
        let verifier = match kept {
            Some(v) => v,
            None => {
                let connector = match &tls {
                    Some(c) => c,
                    None => tls.insert(
                        crate::runtime::tls::outbound(&config.tls)
                            .map_err(|e| invalid("tls.outbound_ca_file", e.to_string()))?,
                    ),
                };
                Arc::new(
                    PlatformVerifier::new(&t.id, p, connector.clone()).map_err(|e| {
                        invalid(
                            format!("tenants[{i}].platform.public_key_files"),
                            e.to_string(),
                        )
                    })?,
                )
            }
        };
        out.insert(t.id.clone(), verifier);
    }
    Ok(out)
}

/// Everything the pipeline reads about tenants, from one configuration.
pub struct TenantSet {
    /// The configuration the set was built from (the policy reads its
    /// tenants' `policy_data`).
    pub config: Arc<Config>,
    pub directory: Arc<TenantDirectory>,
    pub auth: HashMap<String, Arc<TenantAuth>>,
    /// Compiled routes: tenant → connector → binding.
    pub bindings: Bindings,
    /// Each tenant's action catalogue (built-in plus its extensions).
    pub catalogues: Catalogues,
    /// Interned tenant ids handed to shards without allocating per request.
    pub keys: HashMap<String, Arc<str>>,
    /// Each tenant's platform issuer (`[tenants.platform]`), if it has one.
    pub platform: HashMap<String, Arc<PlatformVerifier>>,
}

impl TenantSet {
    /// Builds the set for `config` (validated). Tenants whose mandate
    /// settings are unchanged from `previous` keep their `TenantAuth`.
    pub fn build(
        config: Arc<Config>,
        previous: Option<&TenantSet>,
        metrics: &Metrics,
    ) -> Result<Self, ConfigError> {
        let quotas = config.replay_quotas();
        let mut auth = HashMap::with_capacity(config.tenants.len());
        let mut rotated = Vec::new();
        for t in &config.tenants {
            let quota = quotas.get(&t.id).copied().unwrap_or(1);
            let kept = previous.and_then(|p| {
                let old = p.config.tenants.iter().find(|o| o.id == t.id)?;
                let same = serde_json::to_value(&old.poa).ok() == serde_json::to_value(&t.poa).ok()
                    && p.auth.get(&t.id)?.replay_quota == quota;
                same.then(|| p.auth.get(&t.id).cloned()).flatten()
            });
            let a = match kept {
                Some(a) => {
                    // A kept TenantAuth takes the Biscuit root keys as they
                    // are now (a rotation, or a key file rewritten under the
                    // same name), once the whole set has been built.
                    rotated.push((a.clone(), crate::broker::validator::biscuit_roots(t)?));
                    a
                }
                None => Arc::new(TenantAuth::load(t, &config, metrics, quota)?),
            };
            auth.insert(t.id.clone(), a);
        }
        let platform = build_platform(&config, previous)?;
        let (bindings, catalogues) = compile_bindings(&config, metrics)?;
        let issuers = crate::tenant::load_issuers(&config, previous.map(|p| p.directory.as_ref()))?;
        let directory = Arc::new(TenantDirectory::new(&config.tenants).with_issuers(issuers));
        let keys = directory
            .ids()
            .map(|id| (id.to_owned(), Arc::from(id)))
            .collect();
        for (a, roots) in rotated {
            a.biscuit_roots.store(Arc::new(roots));
        }
        Ok(Self {
            config,
            directory,
            auth,
            bindings,
            catalogues,
            keys,
            platform,
        })
    }

    /// Every JWKS source (for readiness).
    pub fn jwks(&self) -> impl Iterator<Item = &Arc<JwksCache>> {
        self.auth.values().filter_map(|a| a.jwks.as_ref())
    }
}

/// The current set, swapped whole.
pub type CurrentTenants = ArcSwap<TenantSet>;

/// What a reload changed, for connections and loops.
pub struct Changes {
    /// Tenants gone or disabled, or whose client CA bundle changed: their
    /// connections are closed (agents reconnect and are verified again).
    pub closed: Vec<String>,
    /// Tenants whose `TenantAuth` is new (their JWKS loop starts) or gone
    /// (their loop stops).
    pub auth_replaced: HashSet<String>,
}

/// Whether `tenant_id`'s client CA bundle is not the same in both sets.
fn issuer_changed(old: &TenantSet, new: &TenantSet, tenant_id: &str) -> bool {
    match (
        old.directory.issuer(tenant_id),
        new.directory.issuer(tenant_id),
    ) {
        (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
        (None, None) => false,
        _ => true,
    }
}

/// Compares two sets.
pub fn changes(old: &TenantSet, new: &TenantSet) -> Changes {
    let closed = old
        .config
        .tenants
        .iter()
        .filter(|t| {
            new.config
                .tenants
                .iter()
                .find(|n| n.id == t.id)
                .is_none_or(|n| !n.enabled)
                || issuer_changed(old, new, &t.id)
        })
        .map(|t| t.id.clone())
        .collect();
    let auth_replaced = old
        .auth
        .iter()
        .filter(|(id, a)| new.auth.get(*id).is_none_or(|n| !Arc::ptr_eq(a, n)))
        .map(|(id, _)| id.clone())
        .chain(
            new.auth
                .iter()
                .filter(|(id, a)| old.auth.get(*id).is_none_or(|o| !Arc::ptr_eq(a, o)))
                .map(|(id, _)| id.clone()),
        )
        .collect();
    Changes {
        closed,
        auth_replaced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ca_bundle::test_pki::{ca, pem};

    fn config(dir: &std::path::Path) -> Config {
        let mut c = Config::from_toml(&format!(
            r#"
            [tls]
            client_ca_file = "{global}"
            [[tenants]]
            id = "a"
            trust_domain = "a.example"
            client_ca_file = "{a}"
            [[tenants]]
            id = "b"
            trust_domain = "b.example"
            "#,
            global = dir.join("global.pem").display(),
            a = dir.join("a.pem").display(),
        ))
        .unwrap();
        c.tls.cert_file = "s.crt".into();
        c.tls.key_file = "s.key".into();
        c
    }

    #[test]
    fn tenant_bundles_are_built_kept_and_their_changes_close_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (global, a1, a2) = (ca("global", None), ca("a1", None), ca("a2", None));
        std::fs::write(dir.path().join("global.pem"), pem(&[&global])).unwrap();
        std::fs::write(dir.path().join("a.pem"), pem(&[&a1])).unwrap();
        let metrics = Metrics::new().unwrap();
        let c = Arc::new(config(dir.path()));
        c.validate().unwrap();
        let first = TenantSet::build(c.clone(), None, &metrics).unwrap();
        let d = &first.directory;
        assert!(d.binds_issuers());
        let (ia, ib) = (d.issuer("a").unwrap(), d.issuer("b").unwrap());
        assert_eq!(ia.certs()[0].to_der().unwrap(), a1.cert.to_der().unwrap());
        // A tenant without its own bundle uses tls.client_ca_file.
        assert_eq!(
            ib.certs()[0].to_der().unwrap(),
            global.cert.to_der().unwrap()
        );
        assert!(!issuers_stale(&c, &first));
        assert_eq!(
            issuer_files(&c),
            vec![dir.path().join("global.pem"), dir.path().join("a.pem")]
        );

        // Same files: the bundles are kept, nothing is closed.
        let second = TenantSet::build(c.clone(), Some(&first), &metrics).unwrap();
        assert!(Arc::ptr_eq(ia, second.directory.issuer("a").unwrap()));
        assert!(changes(&first, &second).closed.is_empty());

        // a's bundle rewritten in place: noticed, rebuilt, a's
        // connections closed, b's kept.
        std::fs::write(dir.path().join("a.pem"), pem(&[&a2])).unwrap();
        assert!(issuers_stale(&c, &second));
        let third = TenantSet::build(c.clone(), Some(&second), &metrics).unwrap();
        assert_eq!(changes(&second, &third).closed, vec!["a".to_owned()]);
        assert!(Arc::ptr_eq(
            second.directory.issuer("b").unwrap(),
            third.directory.issuer("b").unwrap()
        ));

        // A bad bundle is refused, naming the key.
        std::fs::write(dir.path().join("a.pem"), "no certificate here").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("tenants[0].client_ca_file"), "{e}");
        let e = TenantSet::build(c.clone(), Some(&third), &metrics)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("tenants[0].client_ca_file"), "{e}");
        std::fs::remove_file(dir.path().join("a.pem")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("tenants[0].client_ca_file"), "{e}");
    }

    /// Two tenants on one client CA (written to `dir`), acme with
    /// `platform` settings.
    fn platform_config(dir: &std::path::Path, platform: &str) -> Arc<Config> {
        let global = dir.join("global.pem");
        if !global.exists() {
            std::fs::write(&global, pem(&[&ca("global", None)])).unwrap();
        }
        let mut c = Config::from_toml(&format!(
            "[[tenants]]\nid = \"acme\"\ntrust_domain = \"acme.example\"\n{platform}\n[[tenants]]\nid = \"globex\"\ntrust_domain = \"globex.example\"\n"
        ))
        .unwrap();
        c.tls.client_ca_file = global;
        Arc::new(c)
    }

    #[test]
    fn platform_verifiers_are_part_of_the_set_and_follow_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("idp.pem");
        let key = openssl::pkey::PKey::generate_ed25519().unwrap();
        std::fs::write(&pem, key.public_key_to_pem().unwrap()).unwrap();
        let platform = |aud: &str, file: &std::path::Path| {
            format!(
                "[tenants.platform]\nissuer = \"https://idp\"\naudience = \"{aud}\"\npublic_key_files = [\"{}\"]",
                file.display()
            )
        };
        let metrics = Metrics::new().unwrap();
        let first = TenantSet::build(
            platform_config(dir.path(), &platform("a", &pem)),
            None,
            &metrics,
        )
        .unwrap();
        assert!(first.platform.contains_key("acme"));
        assert!(!first.platform.contains_key("globex"));
        // Unchanged: kept (with its fetched keys); changed: rebuilt.
        let same = TenantSet::build(
            platform_config(dir.path(), &platform("a", &pem)),
            Some(&first),
            &metrics,
        )
        .unwrap();
        assert!(Arc::ptr_eq(&first.platform["acme"], &same.platform["acme"]));
        let other = TenantSet::build(
            platform_config(dir.path(), &platform("b", &pem)),
            Some(&first),
            &metrics,
        )
        .unwrap();
        assert!(!Arc::ptr_eq(
            &first.platform["acme"],
            &other.platform["acme"]
        ));
        // Removed: gone.
        let none =
            TenantSet::build(platform_config(dir.path(), ""), Some(&first), &metrics).unwrap();
        assert!(none.platform.is_empty());
        // A key file that is not a public key refuses the set, naming it.
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a key").unwrap();
        let e = TenantSet::build(
            platform_config(dir.path(), &platform("a", &bad)),
            Some(&first),
            &metrics,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("tenants[0].platform.public_key_files"), "{e}");
    }
}
