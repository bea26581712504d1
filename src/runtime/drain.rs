//! Reading and discarding what is left of a refused request's body.
//!
//! Over HTTP/2, answering before the client has finished sending its body
//! makes the server reset the stream, and clients such as curl then report
//! a transport error instead of the JSON rejection. Draining a bounded
//! amount first lets ordinary requests see their answer; anything larger or
//! slower than the bounds is abandoned (that client gets the reset).

use std::time::Duration;

use actix_web::web::Payload;
use futures_util::StreamExt;

/// Most bytes read from a refused request's body.
pub const MAX_BYTES: usize = 1024 * 1024;
/// Longest time spent reading a refused request's body.
pub const MAX_TIME: Duration = Duration::from_secs(2);

/// Reads and discards the rest of `payload`, within the bounds.
pub async fn drain(payload: &mut Payload) {
    let mut seen = 0usize;
    let read = async {
        while let Some(chunk) = payload.next().await {
            match chunk {
                Ok(c) => {
                    seen += c.len();
                    if seen > MAX_BYTES {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    };
    let _ = actix_web::rt::time::timeout(MAX_TIME, read).await;
}
