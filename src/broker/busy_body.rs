//! The HTTP side of [`super::drain`]: a request on the agent listener marks
//! its connection busy from when it enters the service until its response
//! body is dropped (written out, or abandoned with the connection), so a
//! graceful stop never closes a connection in the middle of an answer,
//! streamed ones included.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::web::Bytes;

use super::drain::{BusyGuard, ConnectionTicket};

/// A response body that holds its connection's [`BusyGuard`].
pub struct BusyBody<B> {
    body: B,
    _busy: Option<BusyGuard>,
}

impl<B: MessageBody + Unpin> MessageBody for BusyBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

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
            .map_body(|_, body| BusyBody { body, _busy: busy }))
    }
}
