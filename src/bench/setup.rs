//! The broker `atb bench` starts: its directory (dev PKI with one agent
//! certificate per active tenant, keys, `broker.toml`) and configuration.
//!
//! Design points:
//! - The same machinery as `atb dev` (`dev::prepare`, `dev::config`,
//!   `dev::write_config_files`): the benchmark measures the product's own
//!   dev configuration (embedded policy, audit hash chain, demo connector
//!   routes), not a special build.
//! - Changed for load, and only this: tenant and connector rate limits out
//!   of the way (1,000,000 req/s), no JWKS URL (no AgentAuth runs; the dev
//!   signing key is configured as a file), enough connections per tenant
//!   for the run, a mandate lifetime up to the broker's hard maximum of
//!   900 s (mandates are minted before the timed phases, and a soak's must
//!   outlive it; the default of 300 s would refuse the mandates of any run
//!   longer than about 5 minutes), and in the tenant mode a replay capacity that gives each
//!   tenant room for every mandate of the run (the default splits 1,000,000
//!   entries evenly: 1,000 each among 1,000 tenants).
//! - Tenant mode: `configured` tenants `bench-0000`, … each with its own
//!   trust domain (`t0000.bench.example`) and a copy of the demo tenant's
//!   settings; traffic goes to `active` of them, evenly spaced over the
//!   list, each through its own agent certificate and SPIFFE ID.
//! - `--redis URL` puts the broker's shared state in that Redis, as
//!   `atb dev --redis` does.
//! - The PKI is reused across runs while it holds every agent needed;
//!   otherwise it is generated again (CA included).

use std::net::SocketAddr;
use std::path::Path;

use crate::config::Config;
use crate::dev::pki::{self, AgentSpec, DevPki};
use crate::dev::{self, DevError, DevOptions};

/// Which tenants the broker has and which carry traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tenancy {
    /// `atb dev`'s two demo tenants; traffic from acme's demo agent.
    Demo,
    /// `configured` generated tenants, traffic over `active` of them.
    Generated { configured: usize, active: usize },
}

/// An agent the load generator acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchAgent {
    pub tenant: String,
    /// Its certificate is `<name>.crt` / `<name>.key` in the PKI directory.
    pub name: String,
    pub spiffe_id: String,
}

/// The id of generated tenant `i`.
pub fn tenant_id(i: usize) -> String {
    format!("bench-{i:04}")
}

fn trust_domain(i: usize) -> String {
    format!("t{i:04}.bench.example")
}

/// The generated tenants that carry traffic: `active` indices spread evenly
/// over `0..configured`.
pub fn active_indices(configured: usize, active: usize) -> Vec<usize> {
    let active = active.min(configured);
    (0..active).map(|k| k * configured / active).collect()
}

/// The agents traffic comes from.
pub fn agents(tenancy: Tenancy) -> Vec<BenchAgent> {
    match tenancy {
        Tenancy::Demo => vec![BenchAgent {
            tenant: "acme".into(),
            name: "acme-agent".into(),
            spiffe_id: "spiffe://acme.example/agent/demo".into(),
        }],
        Tenancy::Generated { configured, active } => active_indices(configured, active)
            .into_iter()
            .map(|i| BenchAgent {
                tenant: tenant_id(i),
                name: format!("{}-agent", tenant_id(i)),
                spiffe_id: format!("spiffe://{}/agent/bench", trust_domain(i)),
            })
            .collect(),
    }
}

/// Creates (or reuses) the directory: a dev PKI holding `agents`, and
/// `atb dev`'s keys and tokens.
pub fn prepare_dir(dir: &Path, agents: &[BenchAgent]) -> Result<DevPki, DevError> {
    let existing = DevPki {
        dir: dir.to_owned(),
    };
    let complete = existing.ca_cert().exists()
        && agents
            .iter()
            .all(|a| existing.agent_cert(&a.name).exists() && existing.agent_key(&a.name).exists());
    if !complete {
        let mut specs = pki::default_agents();
        for a in agents {
            if !specs.iter().any(|s| s.name == a.name) {
                specs.push(AgentSpec {
                    name: a.name.clone(),
                    spiffe_id: a.spiffe_id.clone(),
                });
            }
        }
        pki::generate(dir, &specs, 30, true)?;
    }
    dev::prepare(dir)
}

/// Where the broker and the upstream listen.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub upstream: SocketAddr,
}

/// The broker's configuration for a run: `atb dev`'s, changed as the module
/// header says. `connections`: the most connections any one tenant gets;
/// `mandates_per_tenant`: the most mandates one tenant is sent.
pub fn config(
    pki: &DevPki,
    addrs: Addresses,
    tenancy: Tenancy,
    connections: usize,
    mandates_per_tenant: usize,
    redis: Option<&str>,
) -> Config {
    let unused: SocketAddr = ([127, 0, 0, 1], 0).into();
    let opts = DevOptions {
        dir: pki.dir.clone(),
        listen_addr: addrs.listen,
        admin_addr: addrs.admin,
        upstream_addr: addrs.upstream,
        tenant_rps: 1_000_000.0,
        agentauth_addr: unused,
        agentauth_admin_addr: unused,
        redis: redis.map(str::to_owned),
    };
    let mut c = dev::config(pki, &opts);
    c.agentauth.broker_admin_urls.clear();
    for t in &mut c.tenants {
        t.poa.jwks_url = None;
        t.poa.max_ttl_seconds = crate::poa::claims::HARD_MAX_TTL_SECONDS as u64;
        t.max_connections = t.max_connections.max(connections);
    }
    if let Tenancy::Generated { configured, .. } = tenancy {
        let mut template = c.tenants[0].clone();
        template.biscuit = None;
        template.agent_owners.clear();
        c.tenants = (0..configured)
            .map(|i| {
                let mut t = template.clone();
                t.id = tenant_id(i);
                t.trust_domain = Some(trust_domain(i));
                t
            })
            .collect();
        let per_tenant = mandates_per_tenant.max(1000);
        c.poa.replay_capacity = c
            .poa
            .replay_capacity
            .max(configured.saturating_mul(per_tenant));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_tenants_spread_over_the_list() {
        assert_eq!(active_indices(1000, 50)[..3], [0, 20, 40]);
        assert_eq!(active_indices(1000, 50).len(), 50);
        assert_eq!(*active_indices(1000, 50).last().unwrap(), 980);
        assert_eq!(active_indices(3, 50), [0, 1, 2]);
        assert_eq!(active_indices(10, 1), [0]);
    }

    #[test]
    fn thousand_tenant_config_is_valid_and_routes_each_agent_to_its_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let tenancy = Tenancy::Generated {
            configured: 1000,
            active: 50,
        };
        let agents = agents(tenancy);
        assert_eq!(agents.len(), 50);
        let pki = prepare_dir(dir.path(), &agents).unwrap();
        for a in &agents {
            assert!(pki.agent_cert(&a.name).exists(), "{a:?}");
        }
        // A second run reuses the PKI.
        let ca = std::fs::read(pki.ca_cert()).unwrap();
        prepare_dir(dir.path(), &agents[..3]).unwrap();
        assert_eq!(std::fs::read(pki.ca_cert()).unwrap(), ca);

        let addrs = Addresses {
            listen: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:2".parse().unwrap(),
            upstream: "127.0.0.1:3".parse().unwrap(),
        };
        let c = config(&pki, addrs, tenancy, 100, 5000, None);
        c.validate().unwrap();
        assert_eq!(c.tenants.len(), 1000);
        assert!(c.tenants.iter().all(|t| t.poa.jwks_url.is_none()));
        assert!(c.tenants.iter().all(|t| t.max_connections >= 100));
        assert!(c.tenants.iter().all(|t| t.poa.max_ttl_seconds == 900));
        let quotas = c.replay_quotas();
        assert!(
            quotas.values().all(|q| *q >= 5000),
            "room for every mandate"
        );
        let directory = crate::tenant::TenantDirectory::new(&c.tenants);
        for a in &agents {
            let id = crate::spiffe::SpiffeId::parse(&a.spiffe_id).unwrap();
            let found = directory.resolve(&id).unwrap();
            assert_eq!(found.id, a.tenant);
        }
    }

    #[test]
    fn demo_config_keeps_the_dev_tenants_without_limits_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let agents = agents(Tenancy::Demo);
        let pki = prepare_dir(dir.path(), &agents).unwrap();
        let addrs = Addresses {
            listen: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:2".parse().unwrap(),
            upstream: "127.0.0.1:3".parse().unwrap(),
        };
        let c = config(
            &pki,
            addrs,
            Tenancy::Demo,
            16,
            100,
            Some("redis://127.0.0.1:6379"),
        );
        c.validate().unwrap();
        assert_eq!(c.tenants.len(), 2);
        assert!(c.tenants[0].requests_per_second >= 1_000_000.0);
        assert!(c.tenants[0].poa.jwks_url.is_none());
        assert!(c.tenants.iter().all(|t| t.poa.max_ttl_seconds == 900));
        assert_eq!(c.broker.listen_addr, addrs.listen);
        assert_eq!(
            c.tenants[0].connectors[0].upstream_url,
            "http://127.0.0.1:3"
        );
        let redis = c.redis.as_ref().and_then(|r| r.url.as_deref());
        assert_eq!(redis, Some("redis://127.0.0.1:6379"));
    }
}
