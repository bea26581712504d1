//! The open connections of a listener, for a graceful stop that does not
//! wait on idle ones (`runtime::graceful_stop` is the HTTP side).
//!
//! - **Why.** actix's graceful stop waits for every open connection to
//!   end. Its HTTP/2 dispatcher never closes an idle connection whose peer
//!   answers PINGs, so one idle agent held a stop for the whole
//!   `broker.shutdown_grace_seconds` (30 s by default; AgentAuth: 10 s); an
//!   idle HTTP/1.1 keep-alive connection held it for up to its keep-alive.
//! - **What is listed.** Every accepted connection, with a duplicate
//!   of its socket handle and a busy count ([`OpenConnections::register`]
//!   returns the [`ConnectionTicket`] the connection keeps; dropping it
//!   unlists the connection). Bounded by the live connections (at most
//!   `max_connections_per_worker` × workers).
//! - **What counts as busy.** A request holds a [`BusyGuard`] from when it
//!   enters the service until its response body is dropped — written out
//!   or abandoned — so an answer streamed from the upstream is busy until
//!   its last byte, not only until the handler returns.
//! - **At stop.** Once the listeners are closed, [`OpenConnections::close_idle`]
//!   shuts down every listed connection with nothing in flight; the stop
//!   repeats it every few milliseconds until the workers have finished (a
//!   busy connection is closed when it turns idle). As with any server
//!   that closes idle keep-alive connections (Go's `Server.Shutdown` does
//!   the same), a request that arrives in the instant its connection is
//!   closed is cut before it is answered; if it had started, its audit
//!   record says so (`aborted`).
//! - Plain logic: sockets and counters, no HTTP types.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The live connections and their busy counts.
#[derive(Default)]
pub struct OpenConnections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Listed>>,
}

struct Listed {
    socket: Arc<TcpStream>,
    busy: Arc<AtomicUsize>,
    /// Already shut down (it stays listed until its connection ends).
    closed: bool,
}

/// What [`OpenConnections::close_idle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    /// Connections shut down by this call.
    pub closed: usize,
    /// Listed connections with a request in flight, left open.
    pub busy: usize,
}

impl OpenConnections {
    /// Lists a connection; it stays listed as long as the ticket lives.
    pub fn register(self: &Arc<Self>, socket: Arc<TcpStream>) -> ConnectionTicket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicUsize::new(0));
        if let Ok(mut open) = self.open.lock() {
            open.insert(
                id,
                Listed {
                    socket,
                    busy: busy.clone(),
                    closed: false,
                },
            );
        }
        ConnectionTicket {
            open: self.clone(),
            id,
            busy,
        }
    }

    /// Shuts down every listed connection that has no request in flight.
    pub fn close_idle(&self) -> Closing {
        let mut done = Closing { closed: 0, busy: 0 };
        let Ok(mut open) = self.open.lock() else {
            return done;
        };
        for listed in open.values_mut().filter(|l| !l.closed) {
            if listed.busy.load(Ordering::Acquire) > 0 {
                done.busy += 1;
            } else {
                // An error means the peer is gone already: nothing to wait on.
                let _ = listed.socket.shutdown(Shutdown::Both);
                listed.closed = true;
                done.closed += 1;
            }
        }
        done
    }

    /// Connections listed now.
    pub fn len(&self) -> usize {
        self.open.lock().map_or(0, |open| open.len())
    }

    /// Whether no connection is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's place in [`OpenConnections`]; kept in the connection's
/// data, dropped with it.
pub struct ConnectionTicket {
    open: Arc<OpenConnections>,
    id: u64,
    busy: Arc<AtomicUsize>,
}

impl ConnectionTicket {
    /// Marks one request in flight on this connection until the guard drops.
    pub fn busy(&self) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard(self.busy.clone())
    }
}

impl Drop for ConnectionTicket {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.open.lock() {
            open.remove(&self.id);
        }
    }
}

/// One request in flight on a connection.
pub struct BusyGuard(Arc<AtomicUsize>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A connected pair: (client side, the server side's socket).
    fn pair(listener: &TcpListener) -> (TcpStream, Arc<TcpStream>) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, Arc::new(server))
    }

    fn closed_by_server(client: &mut TcpStream) -> bool {
        matches!(client.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn idle_connections_are_closed_busy_ones_only_once_idle() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = Arc::new(OpenConnections::default());
        let (mut idle_client, idle) = pair(&listener);
        let (mut busy_client, busy) = pair(&listener);
        let _idle_ticket = open.register(idle);
        let busy_ticket = open.register(busy);
        let request = busy_ticket.busy();
        let second = busy_ticket.busy();
        assert_eq!(open.len(), 2);

        assert_eq!(open.close_idle(), Closing { closed: 1, busy: 1 });
        assert!(closed_by_server(&mut idle_client));
        // Closed once: a later pass does not count it again.
        assert_eq!(open.close_idle(), Closing { closed: 0, busy: 1 });

        // Busy while any request on it is in flight (HTTP/2 streams).
        drop(request);
        assert_eq!(open.close_idle(), Closing { closed: 0, busy: 1 });
        busy_client
            .set_nonblocking(true)
            .expect("nonblocking for the probe");
        assert!(
            busy_client.read(&mut [0u8; 1]).is_err(),
            "still open while busy"
        );
        busy_client.set_nonblocking(false).unwrap();
        drop(second);
        assert_eq!(open.close_idle(), Closing { closed: 1, busy: 0 });
        assert!(closed_by_server(&mut busy_client));
    }

    #[test]
    fn a_connection_leaves_the_list_with_its_ticket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = Arc::new(OpenConnections::default());
        let (_client, server) = pair(&listener);
        let ticket = open.register(server);
        assert_eq!(open.len(), 1);
        // A guard may outlive the ticket (a body dropped after its
        // connection): it only decrements a count nobody reads any more.
        let guard = ticket.busy();
        drop(ticket);
        assert!(open.is_empty());
        drop(guard);
        assert_eq!(open.close_idle(), Closing { closed: 0, busy: 0 });
    }
}
