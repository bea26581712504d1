//! A graceful stop that closes idle connections: the HTTP side of
//! [`super::open_connections`].
//!
//! - [`list`] (in a server's `on_connect`) lists each accepted connection.
//! - [`hold_busy`] (`App::wrap_fn`): a request marks its connection busy
//!   from when it enters the service until its response body is dropped
//!   (written out, or abandoned with the connection), so a stop never
//!   closes a connection in the middle of an answer, streamed ones
//!   included.
//! - [`stop`]: a server stops gracefully (its listeners close, in-flight
//!   requests get its shutdown timeout) while every connection with nothing
//!   in flight is shut down, every [`CLOSE_IDLE_EVERY`], until it has
//!   stopped. Broker and AgentAuth stop the same way: the traffic listener
//!   first, then the admin one (probes and metrics answer while requests
//!   drain).

use std::any::Any;
use std::future::Future;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use actix_tls::accept::openssl::TlsStream;
use actix_web::dev::{Extensions, Service, ServiceRequest, ServiceResponse};
use actix_web::rt::net::TcpStream;

use super::held_body::HeldBody;
use super::open_connections::{BusyGuard, ConnectionTicket, OpenConnections};

/// How often a stopping server closes the connections that turned idle.
pub const CLOSE_IDLE_EVERY: Duration = Duration::from_millis(20);

/// Stops `server` gracefully, closing the idle connections of `open`
/// meanwhile; returns when it has stopped. (Servers stopped one after the
/// other share `open`: an idle connection of one still running is closed
/// too, and its client reconnects.)
pub async fn stop(server: &actix_web::dev::ServerHandle, open: &Arc<OpenConnections>) {
    let stopped = server.stop(true);
    let closing_idle = async {
        loop {
            open.close_idle();
            actix_web::rt::time::sleep(CLOSE_IDLE_EVERY).await;
        }
    };
    futures_util::future::select(Box::pin(stopped), Box::pin(closing_idle)).await;
}

/// Lists a freshly accepted connection (TLS or plain TCP) in `open`, its
/// ticket in the connection's data (a server's `on_connect`).
pub fn list(open: &Arc<OpenConnections>, connection: &dyn Any, extensions: &mut Extensions) {
    let stream = match connection.downcast_ref::<TlsStream<TcpStream>>() {
        Some(tls) => Some(tls.get_ref()),
        None => connection.downcast_ref::<TcpStream>(),
    };
    if let Some(socket) = stream.and_then(duplicate) {
        extensions.insert(open.register(socket));
    }
}

/// A second handle of `stream`'s socket (none if the process is out of
/// file descriptors: the connection is then served, just not listed).
pub fn duplicate(stream: &TcpStream) -> Option<Arc<std::net::TcpStream>> {
    stream
        .as_fd()
        .try_clone_to_owned()
        .map(|fd| Arc::new(std::net::TcpStream::from(fd)))
        .ok()
}

/// A response body that holds its connection's [`BusyGuard`].
pub type BusyBody<B> = HeldBody<B, Option<BusyGuard>>;

/// Middleware (`App::wrap_fn`): the request's busy guard, moved into its
/// response body. A connection without a ticket (its socket could not be
/// listed) is served the same, unguarded.
pub fn hold_busy<S, B>(
    req: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse<BusyBody<B>>, actix_web::Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: 'static,
{
    let busy = req
        .conn_data::<ConnectionTicket>()
        .map(ConnectionTicket::busy);
    let response = service.call(req);
    async move {
        Ok(response
            .await?
            .map_body(|_, body| HeldBody::new(body, busy)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A plain or TLS connection is listed, its ticket in the connection's
    /// data, and the stop's pass closes it when idle; anything else is not
    /// a connection and is not listed.
    #[actix_rt::test]
    async fn accepted_connections_are_listed_and_closed_when_idle() {
        let open = Arc::new(OpenConnections::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (server_side, _) = listener.accept().unwrap();
        server_side.set_nonblocking(true).unwrap();
        let stream = TcpStream::from_std(server_side).unwrap();
        let mut extensions = Extensions::new();
        list(&open, &stream, &mut extensions);
        assert!(extensions.get::<ConnectionTicket>().is_some());
        assert_eq!(open.len(), 1);
        list(&open, &"not a socket", &mut Extensions::new());
        assert_eq!(open.len(), 1);
        assert_eq!(open.close_idle().closed, 1);
        assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0);
        drop(extensions);
        assert!(open.is_empty());
    }
}
