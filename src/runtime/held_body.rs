//! A response body that holds something until the body is dropped: what
//! a request keeps while its answer is still being written (a connection's
//! busy guard, a tenant's in-flight slot).
//!
//! Design points:
//! - **Held to the last byte.** An answer streamed from an upstream is
//!   written long after the handler returned; whatever counts the request
//!   as in progress must count it until the body is done or dropped (the
//!   client went away), not until the handler returns.
//! - Transparent: size and chunks are the inner body's.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::web::Bytes;

/// `body`, holding `held` until it is dropped.
pub struct HeldBody<B, G> {
    body: B,
    _held: G,
}

impl<B, G> HeldBody<B, G> {
    pub fn new(body: B, held: G) -> Self {
        Self { body, _held: held }
    }
}

impl<B: MessageBody + Unpin, G: Unpin> MessageBody for HeldBody<B, G> {
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
