//! SPIFFE IDs: strict parsing (SPIFFE-ID spec §2) with no lenient fallback.

use std::fmt;

/// Longest SPIFFE ID accepted (the spec's URI limit).
pub const MAX_LEN: usize = 2048;
/// Longest trust domain accepted (a DNS name's limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A validated SPIFFE ID, e.g. `spiffe://acme.example/agent/reporter`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset where the path starts (== `uri.len()` when there is none).
    path_start: usize,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("SPIFFE ID is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("SPIFFE ID must start with spiffe://")]
    WrongScheme,
    #[error("SPIFFE ID has an empty trust domain")]
    EmptyTrustDomain,
    #[error("SPIFFE trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("SPIFFE trust domain may only hold lower-case letters, digits, '.', '-' and '_'")]
    BadTrustDomainChar,
    #[error("SPIFFE path segments may only hold letters, digits, '.', '-' and '_'")]
    BadPathChar,
    #[error("SPIFFE path has an empty segment or a trailing slash")]
    EmptySegment,
    #[error("SPIFFE path has a '.' or '..' segment")]
    DotSegment,
}

impl SpiffeId {
    /// Parses `s` strictly: scheme `spiffe` (lower case), trust domain of
    /// `[a-z0-9._-]`, path segments of `[A-Za-z0-9._-]`, no empty, `.` or `..`
    /// segments, no trailing slash, no port, user info, query or fragment
    /// (all of which fail the character checks).
    pub fn parse(s: &str) -> Result<Self, SpiffeError> {
        if s.len() > MAX_LEN {
            return Err(SpiffeError::TooLong);
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or(SpiffeError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                match segment {
                    "" => return Err(SpiffeError::EmptySegment),
                    "." | ".." => return Err(SpiffeError::DotSegment),
                    seg if !seg.bytes().all(is_path_byte) => return Err(SpiffeError::BadPathChar),
                    _ => {}
                }
            }
        }
        Ok(Self {
            uri: s.to_owned(),
            path_start: "spiffe://".len() + td.len(),
        })
    }

    /// The trust domain, e.g. `acme.example`.
    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len()..self.path_start]
    }

    /// The path including its leading `/`, or `""`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// Whether this ID equals `prefix` or lies below it on a segment boundary
    /// (`spiffe://d/t/acme` is under `spiffe://d/t/acme` and `spiffe://d/t/`,
    /// but not under `spiffe://d/t/ac`).
    pub fn is_under(&self, prefix: &str) -> bool {
        match self.uri.strip_prefix(prefix) {
            Some("") => true,
            Some(rest) => prefix.ends_with('/') || rest.starts_with('/'),
            None => false,
        }
    }
}

fn is_trust_domain_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// Checks a trust-domain name as used in configuration.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeError> {
    if td.is_empty() {
        return Err(SpiffeError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeError::TrustDomainTooLong);
    }
    if !td.bytes().all(is_trust_domain_byte) {
        return Err(SpiffeError::BadTrustDomainChar);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_ids() {
        let id = SpiffeId::parse("spiffe://acme.example/agent/reporter-1").unwrap();
        assert_eq!(id.trust_domain(), "acme.example");
        assert_eq!(id.path(), "/agent/reporter-1");
        assert_eq!(id.to_string(), "spiffe://acme.example/agent/reporter-1");
        let bare = SpiffeId::parse("spiffe://td_1.example").unwrap();
        assert_eq!(bare.trust_domain(), "td_1.example");
        assert_eq!(bare.path(), "");
        SpiffeId::parse("spiffe://x/A.b-c_D/9").unwrap();
    }

    #[test]
    fn rejects_malformed_ids() {
        use SpiffeError::*;
        let cases: &[(&str, SpiffeError)] = &[
            ("https://acme.example/agent", WrongScheme),
            ("SPIFFE://acme.example/agent", WrongScheme),
            ("spiffe:/acme.example/agent", WrongScheme),
            ("spiffe://", EmptyTrustDomain),
            ("spiffe:///agent", EmptyTrustDomain),
            ("spiffe://Acme.example/agent", BadTrustDomainChar),
            ("spiffe://acme.example:443/agent", BadTrustDomainChar),
            ("spiffe://user@acme.example/agent", BadTrustDomainChar),
            ("spiffe://acme.example/agent/", EmptySegment),
            ("spiffe://acme.example//agent", EmptySegment),
            ("spiffe://acme.example/", EmptySegment),
            ("spiffe://acme.example/agent/../admin", DotSegment),
            ("spiffe://acme.example/./agent", DotSegment),
            ("spiffe://acme.example/agent?x=1", BadPathChar),
            ("spiffe://acme.example/agent#frag", BadPathChar),
            ("spiffe://acme.example/ag%2e%2e", BadPathChar),
            ("spiffe://acme.example/agent name", BadPathChar),
            ("spiffe://acme.example/agënt", BadPathChar),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input).as_ref(), Err(want), "input {input}");
        }
        let long = format!("spiffe://a/{}", "x".repeat(MAX_LEN));
        assert_eq!(SpiffeId::parse(&long), Err(TooLong));
        let long_td = format!("spiffe://{}/a", "x".repeat(300));
        assert_eq!(SpiffeId::parse(&long_td), Err(TrustDomainTooLong));
    }

    #[test]
    fn prefix_matching_respects_segments() {
        let id = SpiffeId::parse("spiffe://saas.example/tenants/acme/agent").unwrap();
        assert!(id.is_under("spiffe://saas.example/tenants/acme"));
        assert!(id.is_under("spiffe://saas.example/tenants/acme/"));
        assert!(id.is_under("spiffe://saas.example/tenants/"));
        assert!(id.is_under("spiffe://saas.example/tenants/acme/agent"));
        assert!(!id.is_under("spiffe://saas.example/tenants/ac"));
        assert!(!id.is_under("spiffe://saas.example/tenants/acme/agent2"));
        assert!(!id.is_under("spiffe://other.example/tenants/acme"));
    }

    #[test]
    fn validates_trust_domains() {
        assert!(validate_trust_domain("acme.example").is_ok());
        assert!(validate_trust_domain("Acme").is_err());
        assert!(validate_trust_domain("acme/x").is_err());
        assert!(validate_trust_domain("").is_err());
    }
}
