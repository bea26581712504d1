//! The source address of a request: the TCP peer, unless that peer is a
//! configured trusted proxy, in which case the right-most `X-Forwarded-For`
//! entry that is not itself a trusted proxy. A header from anyone else is
//! ignored, so a client cannot pick its own rate-limit bucket.

use std::net::IpAddr;

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses count as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Not an address or range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or CIDR range")]
    NotAnAddress(String),
    #[error("{0:?} has a bad prefix length")]
    Prefix(String),
}

/// Parses `10.0.0.0/8`, `fd00::/8` or a single address.
pub fn parse_cidr(text: &str) -> Result<Cidr, CidrError> {
    let text = text.trim();
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| CidrError::NotAnAddress(text.to_owned()))?;
    let addr = canonical(addr);
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| CidrError::Prefix(text.to_owned()))?,
    };
    Ok(Cidr { addr, prefix })
}

/// The trusted proxies.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn parse(list: &[String]) -> Result<Self, CidrError> {
        list.iter()
            .map(|s| parse_cidr(s))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The request's source address from the TCP `peer` and the
    /// `X-Forwarded-For` header values (in order of appearance).
    pub fn source(&self, peer: Option<IpAddr>, forwarded_for: &[&str]) -> Option<IpAddr> {
        let peer = canonical(peer?);
        if !self.trusts(peer) {
            return Some(peer);
        }
        let hops: Vec<&str> = forwarded_for
            .iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .collect();
        let mut source = peer;
        for hop in hops.iter().rev() {
            // A malformed hop ends the walk: nothing further left is believable.
            let Ok(ip) = hop.parse::<IpAddr>() else {
                break;
            };
            source = canonical(ip);
            if !self.trusts(source) {
                break;
            }
        }
        Some(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges() {
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")));
        assert!(parse_cidr("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        assert!(parse_cidr("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(parse_cidr("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        for bad in ["", "10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.source(Some(ip("203.0.113.9")), &["1.1.1.1"]),
            Some(ip("203.0.113.9"))
        );
        let proxies = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        // From an untrusted peer the header is ignored.
        assert_eq!(
            proxies.source(Some(ip("203.0.113.9")), &["1.1.1.1"]),
            Some(ip("203.0.113.9"))
        );
        // From a trusted proxy: the right-most untrusted hop.
        assert_eq!(
            proxies.source(Some(ip("10.0.0.2")), &["6.6.6.6, 198.51.100.7, 10.0.0.3"]),
            Some(ip("198.51.100.7"))
        );
        // A malformed hop stops the walk at the last good address.
        assert_eq!(
            proxies.source(Some(ip("10.0.0.2")), &["198.51.100.7, junk"]),
            Some(ip("10.0.0.2"))
        );
        // No header: the proxy itself.
        assert_eq!(
            proxies.source(Some(ip("10.0.0.2")), &[]),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(proxies.source(None, &[]), None);
    }
}
