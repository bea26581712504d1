//! Live mTLS connections: who is on the other end, how many connections
//! each tenant holds, and cutting a suspended tenant off. Identity is read
//! once per connection, at accept time, not once per request.

use std::any::Any;
use std::collections::HashMap;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_tls::accept::openssl::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge};

use crate::metrics::Metrics;
use crate::runtime::ca_bundle::{CaBundle, PeerCerts};
use crate::runtime::graceful_stop::duplicate;
use crate::runtime::open_connections::OpenConnections;
use crate::runtime::tls::{peer_identity, IdentityError};
use crate::spiffe::SpiffeId;
use crate::tenant::{Tenant, TenantDirectory};

/// What the broker knows about a connection, stored in its extensions.
pub struct PeerConnection {
    /// The verified identity; `WrongIssuer` when the certificate does not
    /// chain to the client CA bundle of the tenant owning its SPIFFE ID.
    pub identity: Result<SpiffeId, IdentityError>,
    /// The owning tenant at accept time (enabled or not).
    pub tenant: Option<Tenant>,
    /// The tenant bundle the certificate was verified against at accept
    /// time (`None` when the directory does not bind issuers).
    pub issuer: Option<Arc<CaBundle>>,
    /// Whether the connection fits the tenant's connection limit.
    pub slot: ConnectionSlot,
}

/// A connection's standing against its tenant's limit.
pub enum ConnectionSlot {
    /// Counted; the count drops when the connection closes.
    Held(#[allow(dead_code)] SlotGuard),
    /// Refused: the tenant already had `max_connections` live connections.
    OverLimit,
    /// Not attributable to a tenant (no identity or unknown tenant).
    Unattributed,
}

struct TenantConnections {
    live: AtomicUsize,
    gauge: IntGauge,
    refused: IntCounter,
    /// Set through the admin API: requests are refused and live
    /// connections are closed.
    suspended: AtomicBool,
    suspended_gauge: IntGauge,
    /// A duplicate handle of each live connection's socket, by slot id, so
    /// a suspension can shut them down. Holding the duplicate also keeps
    /// the socket from being reused while it is listed.
    sockets: Mutex<HashMap<u64, Arc<std::net::TcpStream>>>,
}

/// Releases a tenant connection slot on drop (i.e. when the connection and
/// its extensions go away).
pub struct SlotGuard {
    tenant: Arc<TenantConnections>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.tenant.live.fetch_sub(1, Ordering::AcqRel);
        self.tenant.gauge.dec();
        if let Ok(mut sockets) = self.tenant.sockets.lock() {
            sockets.remove(&self.id);
        }
    }
}

/// Per-tenant live connection counts and limits.
pub struct ConnectionRegistry {
    /// The tenants as configured now (swapped by a configuration reload).
    directory: ArcSwap<TenantDirectory>,
    /// Every tenant ever configured (entries are kept across reloads, so a
    /// removed tenant's live connections can still be closed).
    tenants: ArcSwap<HashMap<String, Arc<TenantConnections>>>,
    metrics: Metrics,
    next_slot: AtomicU64,
    /// Every live connection with its busy count, for closing the idle
    /// ones at a graceful stop (`runtime::graceful_stop`).
    open: Arc<OpenConnections>,
}

impl ConnectionRegistry {
    pub fn new(directory: Arc<TenantDirectory>, metrics: &Metrics) -> Self {
        let registry = Self {
            directory: ArcSwap::new(directory.clone()),
            tenants: ArcSwap::from_pointee(HashMap::new()),
            metrics: metrics.clone(),
            next_slot: AtomicU64::new(0),
            open: Arc::new(OpenConnections::default()),
        };
        registry.update(directory);
        registry
    }

    /// Resolves new connections against `directory` from now on, with
    /// counters for every tenant in it.
    pub fn update(&self, directory: Arc<TenantDirectory>) {
        let mut tenants = HashMap::clone(&self.tenants.load());
        for id in directory.ids() {
            tenants.entry(id.to_owned()).or_insert_with(|| {
                Arc::new(TenantConnections {
                    live: AtomicUsize::new(0),
                    gauge: self.metrics.tenant_connections.with_label_values(&[id]),
                    refused: self.metrics.connections_refused.with_label_values(&[id]),
                    suspended: AtomicBool::new(false),
                    suspended_gauge: self.metrics.tenant_suspended.with_label_values(&[id]),
                    sockets: Mutex::new(HashMap::new()),
                })
            });
        }
        self.tenants.store(Arc::new(tenants));
        self.directory.store(directory);
    }

    /// Shuts down every live connection of `tenant_id` (a tenant removed or
    /// disabled by a reload); returns how many.
    pub fn close(&self, tenant_id: &str) -> usize {
        let tenants = self.tenants.load();
        let Some(entry) = tenants.get(tenant_id) else {
            return 0;
        };
        shutdown_all(entry)
    }

    /// Classifies a freshly accepted connection (actix-web `on_connect`).
    pub fn on_connect(&self, connection: &dyn Any, extensions: &mut Extensions) {
        let Some(tls) = connection.downcast_ref::<TlsStream<TcpStream>>() else {
            return;
        };
        // A duplicate of the socket handle, for closing it on suspension
        // and, idle, at a graceful stop.
        let socket = duplicate(tls.get_ref());
        if let Some(socket) = &socket {
            extensions.insert(self.open.register(socket.clone()));
        }
        let peer = PeerCerts::from_ssl(tls.ssl());
        extensions.insert(self.classify(peer_identity(tls.ssl()), peer.as_ref(), socket));
    }

    /// Attributes an identity to its tenant, if the peer's certificate
    /// chains to that tenant's client CA bundle, and takes a connection
    /// slot (listing `socket` under it). A certificate that the handshake
    /// trusted (through another tenant's CA) but that the owning tenant's
    /// bundle does not is attributed to nobody: `WrongIssuer`.
    pub fn classify(
        &self,
        identity: Result<SpiffeId, IdentityError>,
        peer: Option<&PeerCerts>,
        socket: Option<Arc<std::net::TcpStream>>,
    ) -> PeerConnection {
        let directory = self.directory.load();
        let mut identity = identity;
        let mut tenant = identity
            .as_ref()
            .ok()
            .and_then(|id| directory.resolve(id).cloned());
        let mut issuer = None;
        if let Some(t) = &tenant {
            match directory.verify_issuer(&t.id, peer) {
                Ok(verified) => issuer = verified,
                Err(e) => {
                    tracing::warn!(
                        tenant = %t.id,
                        agent = %identity.as_ref().map(ToString::to_string).unwrap_or_default(),
                        "client certificate does not chain to the tenant's client CA bundle; not attributed"
                    );
                    self.metrics.wrong_issuer.with_label_values(&[&t.id]).inc();
                    identity = Err(e);
                    tenant = None;
                }
            }
        }
        let slot = match &tenant {
            Some(t) if t.enabled && !self.suspended(&t.id) => self.take_slot(t, socket),
            _ => ConnectionSlot::Unattributed,
        };
        PeerConnection {
            identity,
            tenant,
            issuer,
            slot,
        }
    }

    fn take_slot(
        &self,
        tenant: &Tenant,
        socket: Option<Arc<std::net::TcpStream>>,
    ) -> ConnectionSlot {
        let tenants = self.tenants.load();
        let Some(entry) = tenants.get(&tenant.id) else {
            return ConnectionSlot::Unattributed;
        };
        if entry.live.fetch_add(1, Ordering::AcqRel) >= tenant.max_connections {
            entry.live.fetch_sub(1, Ordering::AcqRel);
            entry.refused.inc();
            return ConnectionSlot::OverLimit;
        }
        entry.gauge.inc();
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        if let (Some(socket), Ok(mut sockets)) = (socket, entry.sockets.lock()) {
            sockets.insert(id, socket);
        }
        ConnectionSlot::Held(SlotGuard {
            tenant: entry.clone(),
            id,
        })
    }

    /// Whether `tenant_id` is suspended.
    pub fn suspended(&self, tenant_id: &str) -> bool {
        self.tenants
            .load()
            .get(tenant_id)
            .is_some_and(|e| e.suspended.load(Ordering::Acquire))
    }

    /// Suspends (or resumes) a tenant. Suspending also shuts down every live
    /// connection of its agents; returns how many, or `None` for an unknown
    /// tenant. The flag is set first, so a connection accepted meanwhile is
    /// refused at its first request.
    pub fn suspend(&self, tenant_id: &str, on: bool) -> Option<usize> {
        let tenants = self.tenants.load();
        let entry = tenants.get(tenant_id)?;
        entry.suspended.store(on, Ordering::Release);
        entry.suspended_gauge.set(i64::from(on));
        if !on {
            return Some(0);
        }
        Some(shutdown_all(entry))
    }

    /// Every live connection, for closing the idle ones at a stop.
    pub fn open(&self) -> &Arc<OpenConnections> {
        &self.open
    }

    /// Live connections of `tenant_id`.
    pub fn live(&self, tenant_id: &str) -> usize {
        self.tenants
            .load()
            .get(tenant_id)
            .map_or(0, |e| e.live.load(Ordering::Acquire))
    }
}

/// Shuts down every live connection of a tenant; returns how many.
/// Shutting a socket down ends the connection for its task (reads and
/// writes fail), whatever protocol state it is in.
fn shutdown_all(entry: &TenantConnections) -> usize {
    entry.sockets.lock().map_or(0, |sockets| {
        sockets
            .values()
            .filter(|s| s.shutdown(Shutdown::Both).is_ok())
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn registry() -> ConnectionRegistry {
        let c = Config::from_toml(
            r#"
            [[tenants]]
            id = "acme"
            trust_domain = "acme.example"
            max_connections = 2
            [[tenants]]
            id = "off"
            enabled = false
            trust_domain = "off.example"
            "#,
        )
        .unwrap();
        let metrics = Metrics::new().unwrap();
        ConnectionRegistry::new(Arc::new(TenantDirectory::new(&c.tenants)), &metrics)
    }

    #[test]
    fn a_certificate_counts_only_for_the_tenant_whose_ca_issued_it() {
        use crate::runtime::ca_bundle::test_pki::{ca, leaf, pem};
        use std::path::Path;
        let c = Config::from_toml(
            r#"
            [[tenants]]
            id = "acme"
            trust_domain = "acme.example"
            [[tenants]]
            id = "beta"
            trust_domain = "beta.example"
            [[tenants]]
            id = "gamma"
            trust_domain = "gamma.example"
            "#,
        )
        .unwrap();
        let (ca_a, ca_b) = (ca("acme-ca", None), ca("beta-ca", None));
        let bundle = |cas: &[&crate::runtime::ca_bundle::test_pki::Ca]| {
            Arc::new(CaBundle::from_pem(&pem(cas), Path::new("t.pem")).unwrap())
        };
        // gamma has no bundle at all: it accepts nobody (fail closed).
        let issuers = HashMap::from([
            ("acme".to_owned(), bundle(&[&ca_a])),
            ("beta".to_owned(), bundle(&[&ca_b])),
        ]);
        let directory = Arc::new(TenantDirectory::new(&c.tenants).with_issuers(issuers));
        let metrics = Metrics::new().unwrap();
        let r = ConnectionRegistry::new(directory.clone(), &metrics);
        let peer = |uri: &str, issuer| PeerCerts {
            leaf: leaf(uri, issuer),
            chain: Vec::new(),
        };

        let own = peer("spiffe://acme.example/agent", &ca_a);
        let p = r.classify(id("spiffe://acme.example/agent"), Some(&own), None);
        assert!(matches!(p.slot, ConnectionSlot::Held(_)));
        assert_eq!(p.tenant.as_ref().map(|t| t.id.as_str()), Some("acme"));
        assert!(directory.issuer_current("acme", p.issuer.as_ref()));
        assert!(!directory.issuer_current("beta", p.issuer.as_ref()));

        // acme's CA minting a beta SPIFFE ID: trusted by the handshake
        // (the union), attributed to nobody.
        let forged = peer("spiffe://beta.example/agent", &ca_a);
        let p = r.classify(id("spiffe://beta.example/agent"), Some(&forged), None);
        assert_eq!(p.identity.unwrap_err(), IdentityError::WrongIssuer);
        assert!(p.tenant.is_none() && p.issuer.is_none());
        assert!(matches!(p.slot, ConnectionSlot::Unattributed));
        assert_eq!(r.live("beta"), 0);
        assert_eq!(metrics.wrong_issuer.with_label_values(&["beta"]).get(), 1);

        let theirs = peer("spiffe://beta.example/agent", &ca_b);
        let p = r.classify(id("spiffe://beta.example/agent"), Some(&theirs), None);
        assert!(matches!(p.slot, ConnectionSlot::Held(_)));

        let g = peer("spiffe://gamma.example/agent", &ca_a);
        let p = r.classify(id("spiffe://gamma.example/agent"), Some(&g), None);
        assert_eq!(p.identity.unwrap_err(), IdentityError::WrongIssuer);
        // An identity without the certificates it came from is not bound.
        let p = r.classify(id("spiffe://acme.example/agent"), None, None);
        assert_eq!(p.identity.unwrap_err(), IdentityError::NoCertificate);
        // A directory that does not bind issuers keeps the handshake's word.
        assert!(TenantDirectory::new(&c.tenants).issuer_current("acme", None));
    }

    fn id(s: &str) -> Result<SpiffeId, IdentityError> {
        Ok(SpiffeId::parse(s).unwrap())
    }

    #[test]
    fn enforces_the_tenant_limit_and_releases_on_close() {
        let r = registry();
        let a = r.classify(id("spiffe://acme.example/a"), None, None);
        let b = r.classify(id("spiffe://acme.example/b"), None, None);
        assert!(matches!(a.slot, ConnectionSlot::Held(_)));
        assert!(matches!(b.slot, ConnectionSlot::Held(_)));
        assert_eq!(r.live("acme"), 2);
        let c = r.classify(id("spiffe://acme.example/c"), None, None);
        assert!(matches!(c.slot, ConnectionSlot::OverLimit));
        assert_eq!(r.live("acme"), 2);
        drop(a);
        assert_eq!(r.live("acme"), 1);
        let d = r.classify(id("spiffe://acme.example/d"), None, None);
        assert!(matches!(d.slot, ConnectionSlot::Held(_)));
    }

    #[test]
    fn unknown_disabled_and_anonymous_peers_take_no_slot() {
        let r = registry();
        for p in [
            r.classify(id("spiffe://evil.example/a"), None, None),
            r.classify(id("spiffe://off.example/a"), None, None),
            r.classify(Err(IdentityError::NoCertificate), None, None),
        ] {
            assert!(matches!(p.slot, ConnectionSlot::Unattributed));
        }
        assert_eq!(r.live("off"), 0);
    }

    #[test]
    fn suspending_a_tenant_shuts_its_connections_and_refuses_slots() {
        use std::io::Read;
        let r = registry();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut held = Vec::new();
        for _ in 0..2 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            let (server_side, _) = listener.accept().unwrap();
            held.push(r.classify(
                id("spiffe://acme.example/a"),
                None,
                Some(Arc::new(server_side)),
            ));
        }
        assert_eq!(r.live("acme"), 2);
        assert!(!r.suspended("acme"));
        assert_eq!(r.suspend("acme", true), Some(2));
        assert!(r.suspended("acme"));
        // The peers see the connection end.
        for c in &mut clients {
            c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            assert_eq!(c.read(&mut [0u8; 8]).unwrap(), 0);
        }
        // No new slots while suspended; slots come back after resuming.
        let p = r.classify(id("spiffe://acme.example/b"), None, None);
        assert!(matches!(p.slot, ConnectionSlot::Unattributed));
        drop(held);
        assert_eq!(r.live("acme"), 0);
        assert_eq!(r.suspend("acme", false), Some(0));
        let p = r.classify(id("spiffe://acme.example/b"), None, None);
        assert!(matches!(p.slot, ConnectionSlot::Held(_)));
        assert_eq!(r.suspend("nobody", true), None);
    }
}
