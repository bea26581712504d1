//! A minimal blocking HTTP/1.1 client connection for `atb bench`: write a
//! pre-rendered request, read the response's status and skip its body,
//! keep the connection for the next request.
//!
//! Design points:
//! - Generic over `Read + Write`: the same code drives a plain TCP
//!   connection (direct to the upstream) and an mTLS one (the broker), and
//!   unit tests drive it over in-memory streams.
//! - The response head is parsed with `httparse`; the body is framed by
//!   Content-Length, chunked encoding, or the end of the connection, and
//!   discarded (only its size is kept). One read buffer per connection,
//!   reused, bounded (a head over 64 KiB is an error). On request
//!   ([`Connection::exchange_with_body`], for `--soak`'s replay check) the
//!   body's first [`MAX_KEPT_BODY`] bytes are kept instead.
//! - `Connection: close` (or an HTTP/1.0 answer) ends keep-alive: the
//!   caller opens a new connection.

use std::io::{Read, Write};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// Most body bytes [`Connection::exchange_with_body`] keeps.
pub const MAX_KEPT_BODY: usize = 64 * 1024;

/// Why an exchange failed (a transport error of the run).
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection closed before the response was complete")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// The outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    pub status: u16,
    pub body_bytes: usize,
    /// The connection may carry another request.
    pub keep_alive: bool,
}

/// A client connection.
pub struct Connection<S> {
    stream: S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<S: Read + Write> Connection<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        }
    }

    /// Reads more bytes into the buffer; `Closed` at end of stream.
    fn fill(&mut self) -> Result<(), Http1Error> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < READ_CHUNK / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK / 2 {
            if self.buf.len() >= MAX_HEAD * 2 {
                return Err(Http1Error::Malformed("response head too large"));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(Http1Error::Closed);
        }
        self.end += n;
        Ok(())
    }

    /// Consumes `n` body bytes; with `keep`, copies them there (up to
    /// [`MAX_KEPT_BODY`]).
    fn skip(&mut self, mut n: usize, keep: &mut Option<&mut Vec<u8>>) -> Result<(), Http1Error> {
        loop {
            let have = (self.end - self.start).min(n);
            if let Some(k) = keep.as_deref_mut() {
                let room = MAX_KEPT_BODY.saturating_sub(k.len()).min(have);
                k.extend_from_slice(&self.buf[self.start..self.start + room]);
            }
            self.start += have;
            n -= have;
            if n == 0 {
                return Ok(());
            }
            self.fill()?;
        }
    }

    /// One line (without CRLF) from the buffer, as bytes.
    fn line(&mut self) -> Result<Vec<u8>, Http1Error> {
        loop {
            if let Some(at) = self.buf[self.start..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                let line = self.buf[self.start..self.start + at].to_vec();
                self.start += at + 2;
                return Ok(line);
            }
            if self.end - self.start > MAX_HEAD {
                return Err(Http1Error::Malformed("line too long"));
            }
            self.fill()?;
        }
    }

    fn skip_chunked(&mut self, keep: &mut Option<&mut Vec<u8>>) -> Result<usize, Http1Error> {
        let mut total = 0;
        loop {
            let line = self.line()?;
            let size = line.split(|b| *b == b';').next().unwrap_or(&[]);
            let size = std::str::from_utf8(size)
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or(Http1Error::Malformed("chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line()?.is_empty() {}
                return Ok(total);
            }
            self.skip(size, keep)?;
            if !self.line()?.is_empty() {
                return Err(Http1Error::Malformed("chunk not followed by CRLF"));
            }
            total += size;
        }
    }

    fn skip_to_end(&mut self, keep: &mut Option<&mut Vec<u8>>) -> Result<usize, Http1Error> {
        let mut total = 0;
        loop {
            let have = self.end - self.start;
            self.skip(have, keep)?;
            total += have;
            match self.fill() {
                Ok(()) => {}
                Err(Http1Error::Closed) => return Ok(total),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `request` (complete HTTP/1.1 bytes) and reads the response.
    pub fn exchange(&mut self, request: &[u8]) -> Result<Exchange, Http1Error> {
        self.exchange_keeping(request, None)
    }

    /// [`Self::exchange`], keeping the body's first [`MAX_KEPT_BODY`]
    /// bytes in `body` (cleared first): to read an error code.
    pub fn exchange_with_body(
        &mut self,
        request: &[u8],
        body: &mut Vec<u8>,
    ) -> Result<Exchange, Http1Error> {
        body.clear();
        self.exchange_keeping(request, Some(body))
    }

    fn exchange_keeping(
        &mut self,
        request: &[u8],
        mut keep: Option<&mut Vec<u8>>,
    ) -> Result<Exchange, Http1Error> {
        self.stream.write_all(request)?;
        self.stream.flush()?;
        // The head.
        let (status, head_len, length, chunked, mut keep_alive) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 48];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf[self.start..self.end]) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = response.code.ok_or(Http1Error::Malformed("no status"))?;
                    let mut length = None;
                    let mut chunked = false;
                    let mut keep_alive = response.version == Some(1);
                    for h in response.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let v = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|s| s.trim().parse::<usize>().ok())
                                .ok_or(Http1Error::Malformed("content-length"))?;
                            length = Some(v);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = h.value.eq_ignore_ascii_case(b"chunked");
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            if h.value.eq_ignore_ascii_case(b"close") {
                                keep_alive = false;
                            } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                                keep_alive = true;
                            }
                        }
                    }
                    break (status, n, length, chunked, keep_alive);
                }
                Ok(httparse::Status::Partial) => {
                    if self.end - self.start > MAX_HEAD {
                        return Err(Http1Error::Malformed("response head too large"));
                    }
                    self.fill()?;
                }
                Err(_) => return Err(Http1Error::Malformed("response head")),
            }
        };
        self.start += head_len;
        let body_bytes = if (100..200).contains(&status) || status == 204 || status == 304 {
            0
        } else if chunked {
            self.skip_chunked(&mut keep)?
        } else if let Some(n) = length {
            self.skip(n, &mut keep)?;
            n
        } else {
            keep_alive = false;
            self.skip_to_end(&mut keep)?
        };
        Ok(Exchange {
            status,
            body_bytes,
            keep_alive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Responses to read, requests written.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        written: Vec<u8>,
        /// Most bytes a read returns (to exercise partial reads).
        max_read: usize,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.max_read);
            self.input.read(&mut buf[..n])
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn conn(responses: &str, max_read: usize) -> Connection<Duplex> {
        Connection::new(Duplex {
            input: Cursor::new(responses.as_bytes().to_vec()),
            written: Vec::new(),
            max_read,
        })
    }

    const REQ: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

    #[test]
    fn keep_alive_responses_in_sequence_with_any_read_size() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
            HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\n{}\
            HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: t\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\r\n";
        for max_read in [1, 3, 7, 64, 100_000] {
            let mut c = conn(text, max_read);
            let want = [(200, 5), (403, 2), (200, 19), (204, 0)];
            for (status, body) in want {
                let e = c.exchange(REQ).unwrap();
                assert_eq!((e.status, e.body_bytes, e.keep_alive), (status, body, true));
            }
            assert_eq!(c.stream.written.len(), REQ.len() * 4);
            assert!(matches!(c.exchange(REQ), Err(Http1Error::Closed)));
        }
    }

    #[test]
    fn bodies_are_kept_on_request_in_every_framing() {
        let text = "HTTP/1.1 403 Forbidden\r\nContent-Length: 22\r\n\r\n{\"error\":\"poa_replay\"}\
            HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
            HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
            HTTP/1.1 200 OK\r\n\r\nuntil the end";
        for max_read in [1, 5, 100_000] {
            let mut c = conn(text, max_read);
            let mut body = Vec::new();
            let e = c.exchange_with_body(REQ, &mut body).unwrap();
            assert_eq!((e.status, e.body_bytes), (403, 22));
            assert_eq!(body, br#"{"error":"poa_replay"}"#);
            // exchange() keeps nothing; the next kept body replaces the last.
            assert_eq!(c.exchange(REQ).unwrap().body_bytes, 5);
            c.exchange_with_body(REQ, &mut body).unwrap();
            assert_eq!(body, b"abcde");
            let e = c.exchange_with_body(REQ, &mut body).unwrap();
            assert_eq!((e.body_bytes, e.keep_alive), (13, false));
            assert_eq!(body, b"until the end");
        }
        // Bounded: a large body is counted whole, kept in part.
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
            MAX_KEPT_BODY + 10,
            "x".repeat(MAX_KEPT_BODY + 10)
        );
        let mut body = Vec::new();
        let e = conn(&big, 100_000)
            .exchange_with_body(REQ, &mut body)
            .unwrap();
        assert_eq!(
            (e.body_bytes, body.len()),
            (MAX_KEPT_BODY + 10, MAX_KEPT_BODY)
        );
    }

    #[test]
    fn connection_close_and_unframed_bodies_end_keep_alive() {
        let mut c = conn(
            "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            64,
        );
        let e = c.exchange(REQ).unwrap();
        assert_eq!((e.status, e.keep_alive), (503, false));
        let mut c = conn("HTTP/1.1 200 OK\r\n\r\nuntil the end", 4);
        let e = c.exchange(REQ).unwrap();
        assert_eq!((e.status, e.body_bytes, e.keep_alive), (200, 13, false));
        let mut c = conn("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 64);
        assert!(!c.exchange(REQ).unwrap().keep_alive);
    }

    #[test]
    fn truncated_and_malformed_responses_are_errors() {
        let mut c = conn("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 64);
        assert!(matches!(c.exchange(REQ), Err(Http1Error::Closed)));
        let mut c = conn("HTTP/1.1 200 OK\r\nContent-Len", 64);
        assert!(matches!(c.exchange(REQ), Err(Http1Error::Closed)));
        let mut c = conn("garbage\r\n\r\n", 64);
        assert!(matches!(c.exchange(REQ), Err(Http1Error::Malformed(_))));
        let mut c = conn(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            64,
        );
        assert!(matches!(c.exchange(REQ), Err(Http1Error::Malformed(_))));
        let mut c = conn("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", 64);
        assert!(matches!(c.exchange(REQ), Err(Http1Error::Malformed(_))));
        // A head that never ends is refused once past the bound.
        let endless = format!("HTTP/1.1 200 OK\r\n{}", "X-A: b\r\n".repeat(20_000));
        let mut c = conn(&endless, 100_000);
        assert!(matches!(c.exchange(REQ), Err(Http1Error::Malformed(_))));
    }
}
