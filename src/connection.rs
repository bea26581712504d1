//! Live mTLS connections: who is on the other end and how many connections
//! each tenant holds. Identity is read once per connection, at accept time,
//! not once per request.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_tls::accept::openssl::TlsStream;
use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use prometheus::{IntCounter, IntGauge};

use crate::metrics::Metrics;
use crate::spiffe::SpiffeId;
use crate::tenant::{Tenant, TenantDirectory};
use crate::tls::{peer_identity, IdentityError};

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
}

/// Releases a tenant connection slot on drop (i.e. when the connection and
/// its extensions go away).
pub struct SlotGuard(Arc<TenantConnections>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// Per-tenant live connection counts and limits.
pub struct ConnectionRegistry {
    directory: Arc<TenantDirectory>,
    tenants: HashMap<String, Arc<TenantConnections>>,
}

impl ConnectionRegistry {
    pub fn new(directory: Arc<TenantDirectory>, metrics: &Metrics) -> Self {
        let tenants = directory
            .ids()
            .map(|id| {
                (
                    id.to_owned(),
                    Arc::new(TenantConnections {
                        live: AtomicUsize::new(0),
                        gauge: metrics.tenant_connections.with_label_values(&[id]),
                        refused: metrics.connections_refused.with_label_values(&[id]),
                    }),
                )
            })
            .collect();
        Self { directory, tenants }
    }

    /// Classifies a freshly accepted connection (actix-web `on_connect`).
    pub fn on_connect(&self, connection: &dyn Any, extensions: &mut Extensions) {
        let Some(tls) = connection.downcast_ref::<TlsStream<TcpStream>>() else {
            return;
        };
        extensions.insert(self.classify(peer_identity(tls.ssl())));
    }

    /// Attributes an identity to its tenant and takes a connection slot.
    pub fn classify(&self, identity: Result<SpiffeId, IdentityError>) -> PeerConnection {
        let tenant = identity
            .as_ref()
            .ok()
            .and_then(|id| self.directory.resolve(id))
            .cloned();
        let slot = match &tenant {
            Some(t) if t.enabled => self.take_slot(t),
            _ => ConnectionSlot::Unattributed,
        };
        PeerConnection {
            identity,
            tenant,
            slot,
        }
    }

    fn take_slot(&self, tenant: &Tenant) -> ConnectionSlot {
        let Some(entry) = self.tenants.get(&tenant.id) else {
            return ConnectionSlot::Unattributed;
        };
        if entry.live.fetch_add(1, Ordering::AcqRel) >= tenant.max_connections {
            entry.live.fetch_sub(1, Ordering::AcqRel);
            entry.refused.inc();
            return ConnectionSlot::OverLimit;
        }
        entry.gauge.inc();
        ConnectionSlot::Held(SlotGuard(entry.clone()))
    }

    /// Live connections of `tenant_id`.
    pub fn live(&self, tenant_id: &str) -> usize {
        self.tenants
            .get(tenant_id)
            .map_or(0, |e| e.live.load(Ordering::Acquire))
    }
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
        let a = r.classify(id("spiffe://acme.example/a"));
        let b = r.classify(id("spiffe://acme.example/b"));
        assert!(matches!(a.slot, ConnectionSlot::Held(_)));
        assert!(matches!(b.slot, ConnectionSlot::Held(_)));
        assert_eq!(r.live("acme"), 2);
        let c = r.classify(id("spiffe://acme.example/c"));
        assert!(matches!(c.slot, ConnectionSlot::OverLimit));
        assert_eq!(r.live("acme"), 2);
        drop(a);
        assert_eq!(r.live("acme"), 1);
        let d = r.classify(id("spiffe://acme.example/d"));
        assert!(matches!(d.slot, ConnectionSlot::Held(_)));
    }

    #[test]
    fn unknown_disabled_and_anonymous_peers_take_no_slot() {
        let r = registry();
        for p in [
            r.classify(id("spiffe://evil.example/a")),
            r.classify(id("spiffe://off.example/a")),
            r.classify(Err(IdentityError::NoCertificate)),
        ] {
            assert!(matches!(p.slot, ConnectionSlot::Unattributed));
        }
        assert_eq!(r.live("off"), 0);
    }
}
