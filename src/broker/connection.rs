//! Live mTLS connections: who is on the other end, how many connections
//! each tenant holds, and cutting a suspended tenant off. Identity is read
//! once per connection, at accept time, not once per request.

use std::any::Any;
use std::collections::HashMap;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_tls::accept::openssl::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge};

use crate::metrics::Metrics;
use crate::runtime::tls::{peer_identity, IdentityError};
use crate::spiffe::SpiffeId;
use crate::tenant::{Tenant, TenantDirectory};

/// What the broker knows about a connection, stored in its extensions.
pub struct PeerConnection {
    pub identity: Result<SpiffeId, IdentityError>,
    /// The owning tenant at accept time (enabled or not).
    pub tenant: Option<Tenant>,
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
    sockets: Mutex<HashMap<u64, std::net::TcpStream>>,
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
}

impl ConnectionRegistry {
    pub fn new(directory: Arc<TenantDirectory>, metrics: &Metrics) -> Self {
        let registry = Self {
            directory: ArcSwap::new(directory.clone()),
            tenants: ArcSwap::from_pointee(HashMap::new()),
            metrics: metrics.clone(),
            next_slot: AtomicU64::new(0),
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
        // A duplicate of the socket handle, for closing it on suspension.
        let socket = tls
            .get_ref()
            .as_fd()
            .try_clone_to_owned()
            .map(std::net::TcpStream::from)
            .ok();
        extensions.insert(self.classify(peer_identity(tls.ssl()), socket));
    }

    /// Attributes an identity to its tenant and takes a connection slot
    /// (listing `socket` under it).
    pub fn classify(
        &self,
        identity: Result<SpiffeId, IdentityError>,
        socket: Option<std::net::TcpStream>,
    ) -> PeerConnection {
        let tenant = identity
            .as_ref()
            .ok()
            .and_then(|id| self.directory.load().resolve(id).cloned());
        let slot = match &tenant {
            Some(t) if t.enabled && !self.suspended(&t.id) => self.take_slot(t, socket),
            _ => ConnectionSlot::Unattributed,
        };
        PeerConnection {
            identity,
            tenant,
            slot,
        }
    }

    fn take_slot(&self, tenant: &Tenant, socket: Option<std::net::TcpStream>) -> ConnectionSlot {
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

    fn id(s: &str) -> Result<SpiffeId, IdentityError> {
        Ok(SpiffeId::parse(s).unwrap())
    }

    #[test]
    fn enforces_the_tenant_limit_and_releases_on_close() {
        let r = registry();
        let a = r.classify(id("spiffe://acme.example/a"), None);
        let b = r.classify(id("spiffe://acme.example/b"), None);
        assert!(matches!(a.slot, ConnectionSlot::Held(_)));
        assert!(matches!(b.slot, ConnectionSlot::Held(_)));
        assert_eq!(r.live("acme"), 2);
        let c = r.classify(id("spiffe://acme.example/c"), None);
        assert!(matches!(c.slot, ConnectionSlot::OverLimit));
        assert_eq!(r.live("acme"), 2);
        drop(a);
        assert_eq!(r.live("acme"), 1);
        let d = r.classify(id("spiffe://acme.example/d"), None);
        assert!(matches!(d.slot, ConnectionSlot::Held(_)));
    }

    #[test]
    fn unknown_disabled_and_anonymous_peers_take_no_slot() {
        let r = registry();
        for p in [
            r.classify(id("spiffe://evil.example/a"), None),
            r.classify(id("spiffe://off.example/a"), None),
            r.classify(Err(IdentityError::NoCertificate), None),
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
            held.push(r.classify(id("spiffe://acme.example/a"), Some(server_side)));
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
        let p = r.classify(id("spiffe://acme.example/b"), None);
        assert!(matches!(p.slot, ConnectionSlot::Unattributed));
        drop(held);
        assert_eq!(r.live("acme"), 0);
        assert_eq!(r.suspend("acme", false), Some(0));
        let p = r.classify(id("spiffe://acme.example/b"), None);
        assert!(matches!(p.slot, ConnectionSlot::Held(_)));
        assert_eq!(r.suspend("nobody", true), None);
    }
}
