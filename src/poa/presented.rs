//! Finding the PoA mandate on a request.

use actix_web::http::header::{HeaderMap, HeaderValue, AUTHORIZATION};

use crate::error::Rejection;

/// Header carrying a PoA as an alternative to `Authorization: Bearer`.
pub const X_POA_TOKEN: &str = "x-poa-token";

/// The mandate presented with a request, if any: `Authorization: Bearer`
/// or `X-PoA-Token` (if both are sent they must agree). An `Authorization`
/// of another scheme is no mandate.
pub fn presented_token(headers: &HeaderMap) -> Result<Option<&str>, Rejection> {
    let bearer = match single(headers, AUTHORIZATION.as_str())? {
        None => None,
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| Rejection::poa_invalid("Authorization header is not ASCII"))?;
            let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
            // Another scheme (Basic, Digest, …) carries no mandate: the
            // request is treated as one without (SPEC §3), and the header
            // never reaches the upstream.
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        }
    };
    let header = match single(headers, X_POA_TOKEN)? {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Rejection::poa_invalid("X-PoA-Token header is not ASCII"))?
                .trim(),
        ),
    };
    match (bearer, header) {
        (Some(a), Some(b)) if a != b => Err(Rejection::poa_invalid(
            "Authorization and X-PoA-Token carry different tokens",
        )),
        (Some(""), _) | (_, Some("")) => Err(Rejection::poa_invalid("empty PoA token")),
        (Some(t), _) | (None, Some(t)) => Ok(Some(t)),
        (None, None) => Ok(None),
    }
}

/// The value of a credential header, sent at most once: with two, the
/// broker and whatever reads the request after it could each take a
/// different one.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h HeaderValue>, Rejection> {
    let mut values = headers.get_all(name);
    match (values.next(), values.next()) {
        (_, Some(_)) => Err(Rejection::poa_invalid(format!(
            "{name} is sent more than once"
        ))),
        (value, None) => Ok(value),
    }
}

/// Header carrying a Biscuit capability.
pub const X_ATB_BISCUIT: &str = "x-atb-biscuit";

/// A credential as presented, its format told apart unambiguously: a PoA
/// JWT is a compact JWS (three dot-separated parts); a Biscuit is one
/// base64url string (no dot), in `X-ATB-Biscuit` or as a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    Jwt(&'a str),
    Biscuit(&'a str),
}

impl<'a> Presented<'a> {
    /// The `format` label of metrics and audit events.
    pub fn format(&self) -> &'static str {
        match self {
            Self::Jwt(_) => "jwt",
            Self::Biscuit(_) => "biscuit",
        }
    }
}

/// The credential presented with a request, if any. Every header that
/// carries one must carry the same token, and `X-ATB-Biscuit` only a
/// Biscuit.
pub fn presented_credential(headers: &HeaderMap) -> Result<Option<Presented<'_>>, Rejection> {
    let token = presented_token(headers)?;
    let biscuit = match single(headers, X_ATB_BISCUIT)? {
        None => None,
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| Rejection::poa_invalid("X-ATB-Biscuit header is not ASCII"))?
                .trim();
            if v.is_empty() {
                return Err(Rejection::poa_invalid("empty X-ATB-Biscuit"));
            }
            if v.contains('.') {
                return Err(Rejection::poa_invalid(
                    "X-ATB-Biscuit carries a JWS, not a Biscuit",
                ));
            }
            Some(v)
        }
    };
    match (token, biscuit) {
        (Some(t), Some(b)) if t != b => Err(Rejection::poa_invalid(
            "X-ATB-Biscuit and the bearer token carry different credentials",
        )),
        (_, Some(b)) => Ok(Some(Presented::Biscuit(b))),
        (Some(t), None) if t.contains('.') => Ok(Some(Presented::Jwt(t))),
        (Some(t), None) => Ok(Some(Presented::Biscuit(t))),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn code(h: &HeaderMap) -> &'static str {
        presented_token(h).unwrap_err().code
    }

    #[test]
    fn tells_jwts_and_biscuits_apart() {
        let found = |pairs: &[(&str, &str)]| {
            presented_credential(&headers(pairs))
                .map(|p| p.map(|p| format!("{p:?}")))
                .map_err(|e| e.code)
        };
        assert_eq!(found(&[]), Ok(None));
        assert_eq!(
            found(&[("authorization", "Bearer a.b.c")]),
            Ok(Some("Jwt(\"a.b.c\")".to_string()))
        );
        assert_eq!(
            found(&[("authorization", "Bearer EnQKCg")]),
            Ok(Some("Biscuit(\"EnQKCg\")".to_string()))
        );
        assert_eq!(
            found(&[("x-atb-biscuit", "EnQKCg")]),
            Ok(Some("Biscuit(\"EnQKCg\")".to_string()))
        );
        assert_eq!(
            found(&[
                ("x-atb-biscuit", "EnQKCg"),
                ("authorization", "Bearer EnQKCg")
            ]),
            Ok(Some("Biscuit(\"EnQKCg\")".to_string()))
        );
        assert_eq!(found(&[("x-atb-biscuit", "a.b.c")]), Err("poa_invalid"));
        assert_eq!(
            found(&[
                ("x-atb-biscuit", "EnQKCg"),
                ("authorization", "Bearer a.b.c")
            ]),
            Err("poa_invalid")
        );
        assert_eq!(
            found(&[("x-atb-biscuit", "EnQKCg"), ("x-atb-biscuit", "EnQKCg")]),
            Err("poa_invalid")
        );
        assert_eq!(found(&[("x-atb-biscuit", " ")]), Err("poa_invalid"));
    }

    #[test]
    fn finds_bearer_or_header() {
        assert_eq!(presented_token(&headers(&[])).unwrap(), None);
        assert_eq!(
            presented_token(&headers(&[("authorization", "Bearer abc")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&headers(&[("authorization", "bearer abc")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&headers(&[("x-poa-token", "abc")])).unwrap(),
            Some("abc")
        );
        assert_eq!(
            presented_token(&headers(&[
                ("authorization", "Bearer abc"),
                ("x-poa-token", "abc")
            ]))
            .unwrap(),
            Some("abc")
        );
    }

    #[test]
    fn refuses_odd_presentations() {
        assert_eq!(
            presented_token(&headers(&[("authorization", "Basic abc")])).unwrap(),
            None
        );
        assert_eq!(
            presented_token(&headers(&[
                ("authorization", "Basic abc"),
                ("x-poa-token", "t")
            ]))
            .unwrap(),
            Some("t")
        );
        assert_eq!(
            code(&headers(&[("authorization", "Bearer")])),
            "poa_invalid"
        );
        assert_eq!(code(&headers(&[("x-poa-token", " ")])), "poa_invalid");
        // Each carrier once: a second copy (even of another scheme, even
        // equal) is ambiguous.
        for twice in [
            [("authorization", "Bearer a"), ("authorization", "Bearer b")],
            [("authorization", "Bearer a"), ("authorization", "Basic x")],
            [("x-poa-token", "a"), ("x-poa-token", "a")],
        ] {
            assert_eq!(code(&headers(&twice)), "poa_invalid", "{twice:?}");
        }
        assert_eq!(
            code(&headers(&[
                ("authorization", "Bearer a"),
                ("x-poa-token", "b")
            ])),
            "poa_invalid"
        );
    }
}
