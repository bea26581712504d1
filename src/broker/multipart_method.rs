//! Finds a `_method` part in a `multipart/form-data` body while it streams
//! to the upstream, and stops the body before that part reaches it.
//!
//! Design points:
//! - **Why.** Rails, Laravel, Symfony and ASP.NET read `_method` from a
//!   POSTed multipart form as the real method: a mandate for a POST route
//!   could DELETE upstream. The broker refuses `_method` in the query, a
//!   form and a JSON body, which it reads; multipart bodies (uploads) are
//!   streamed, not read, so they are checked here, on the way through.
//! - **Held back, not sent.** Bytes are released only once they cannot be
//!   part of a delimiter or of a part's header block still arriving: the
//!   headers of a `_method` part never leave the broker. The body then
//!   ends in an error, which aborts the upstream request.
//! - **Bounded.** At most the delimiter's length plus [`MAX_PART_HEADERS`]
//!   bytes are held; a part whose headers are longer is refused.
//! - Names compared ignoring ASCII case (`_METHOD` counts), in `name=` and
//!   in RFC 5987's `name*=charset''value`.
//! - Plain logic over bytes; no HTTP types.

/// The longest header block of one part the guard holds back.
pub const MAX_PART_HEADERS: usize = 8 * 1024;

/// Why the guard stopped a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("a _method part is refused: the route binds the request's own method")]
    MethodPart,
    #[error("a multipart part's headers are longer than {MAX_PART_HEADERS} bytes")]
    HeadersTooLong,
}

/// The scanner of one multipart body.
pub struct MethodPartGuard {
    /// `--` + the boundary.
    delimiter: Vec<u8>,
    /// Bytes received and not yet released.
    held: Vec<u8>,
}

impl MethodPartGuard {
    /// A guard for a body of this `Content-Type`: `Some` for `multipart/*`
    /// with a boundary.
    pub fn for_content_type(content_type: &str) -> Option<Self> {
        let mut params = content_type.split(';');
        let media = params.next()?.trim();
        if !media
            .get(..10)
            .is_some_and(|m| m.eq_ignore_ascii_case("multipart/"))
        {
            return None;
        }
        let boundary = params.find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"'))
        })?;
        if boundary.is_empty() || boundary.len() > 200 {
            return None;
        }
        let mut delimiter = b"--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        Some(Self {
            delimiter,
            held: Vec::new(),
        })
    }

    /// Takes the next chunk; returns the bytes that may go on now.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, Refused> {
        self.held.extend_from_slice(chunk);
        let mut released = 0;
        loop {
            let rest = &self.held[released..];
            let Some(at) = memchr::memmem::find(rest, &self.delimiter) else {
                // Keep what could be the start of a delimiter.
                let keep = (self.delimiter.len() - 1).min(rest.len());
                released += rest.len() - keep;
                break;
            };
            let headers_start = at + self.delimiter.len();
            match memchr::memmem::find(&rest[headers_start..], b"\r\n\r\n") {
                Some(end) => {
                    if names_method(&rest[headers_start..headers_start + end]) {
                        return Err(Refused::MethodPart);
                    }
                    released += headers_start + end + 4;
                }
                None if rest.len() - headers_start > MAX_PART_HEADERS => {
                    return Err(Refused::HeadersTooLong)
                }
                None => {
                    // Wait for the rest of this part's headers.
                    released += at;
                    break;
                }
            }
        }
        Ok(self.held.drain(..released).collect())
    }

    /// The body has ended: whatever is held goes on (an unfinished header
    /// block names no part).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// Whether a part's header block gives it the name `_method`.
fn names_method(headers: &[u8]) -> bool {
    let text = String::from_utf8_lossy(headers);
    text.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("content-disposition"))
        .flat_map(|(_, value)| value.split(';').skip(1))
        .filter_map(|param| param.split_once('='))
        .any(|(key, value)| {
            let key = key.trim();
            let value = value.trim().trim_matches('"');
            if key.eq_ignore_ascii_case("name") {
                value.eq_ignore_ascii_case("_method")
            } else if key.eq_ignore_ascii_case("name*") {
                // charset'language'percent-encoded value
                let encoded = value.rsplit('\'').next().unwrap_or(value);
                crate::routes::path::decode(encoded)
                    .is_some_and(|name| name.eq_ignore_ascii_case("_method"))
            } else {
                false
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=XyZ";

    fn body(name_line: &str) -> Vec<u8> {
        format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello --X world\r\n--XyZ\r\n{name_line}\r\n\r\nDELETE\r\n--XyZ--\r\n"
        )
        .into_bytes()
    }

    /// Feeds `bytes` in chunks of `size`; the released bytes, or the refusal.
    fn run(bytes: &[u8], size: usize) -> Result<Vec<u8>, Refused> {
        let mut g = MethodPartGuard::for_content_type(CT).unwrap();
        let mut out = Vec::new();
        for chunk in bytes.chunks(size) {
            out.extend(g.push(chunk)?);
        }
        out.extend(g.finish());
        Ok(out)
    }

    #[test]
    fn only_multipart_bodies_with_a_boundary_are_guarded() {
        assert!(MethodPartGuard::for_content_type(CT).is_some());
        assert!(MethodPartGuard::for_content_type("Multipart/Mixed; boundary=\"a b\"").is_some());
        assert!(MethodPartGuard::for_content_type("multipart/form-data").is_none());
        assert!(MethodPartGuard::for_content_type("application/json; boundary=x").is_none());
        assert!(MethodPartGuard::for_content_type("multipart/form-data; boundary=").is_none());
    }

    #[test]
    fn a_method_part_is_refused_in_every_spelling_and_every_chunking() {
        for line in [
            "Content-Disposition: form-data; name=\"_method\"",
            "content-disposition: form-data; name=_METHOD",
            "Content-Disposition: form-data;name=\"_Method\"; foo=bar",
            "Content-Disposition: form-data; name*=utf-8''%5Fmethod",
        ] {
            let b = body(line);
            for size in [1, 2, 3, 5, 7, 64, b.len()] {
                assert_eq!(run(&b, size), Err(Refused::MethodPart), "{line} / {size}");
            }
        }
    }

    #[test]
    fn other_bodies_pass_through_unchanged_in_every_chunking() {
        for line in [
            "Content-Disposition: form-data; name=\"method\"",
            "Content-Disposition: form-data; name=\"x\"; filename=\"_method\"",
            "Content-Disposition: form-data; name=\"_method_x\"",
        ] {
            let b = body(line);
            for size in [1, 2, 3, 5, 7, 64, b.len()] {
                assert_eq!(run(&b, size).as_deref(), Ok(&b[..]), "{line} / {size}");
            }
        }
    }

    #[test]
    fn the_held_bytes_are_bounded_and_the_method_part_never_released() {
        let b = body("Content-Disposition: form-data; name=\"_method\"");
        let mut g = MethodPartGuard::for_content_type(CT).unwrap();
        let mut released = Vec::new();
        for chunk in b.chunks(3) {
            match g.push(chunk) {
                Ok(out) => released.extend(out),
                Err(_) => break,
            }
            assert!(g.held.len() <= 5 + MAX_PART_HEADERS, "{}", g.held.len());
        }
        let text = String::from_utf8_lossy(&released);
        assert!(!text.to_ascii_lowercase().contains("_method"), "{text}");
        // A part whose headers never end is refused once they pass the bound.
        let mut g = MethodPartGuard::for_content_type(CT).unwrap();
        let mut long = b"--XyZ\r\nX-Pad: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_PART_HEADERS + 10));
        assert_eq!(g.push(&long), Err(Refused::HeadersTooLong));
    }
}
