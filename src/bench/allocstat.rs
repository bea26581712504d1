//! What `atb bench` reads of the broker's allocations: the totals a broker
//! built with `--features count-allocations` exports on its `/metrics`
//! (`crate::alloc_count`), read before and after each timed phase like its
//! CPU time from /proc ([`super::procstat`]).
//!
//! Design points:
//! - Parsing is a plain function over the Prometheus text, tested on a
//!   captured sample; reading is a thin wrapper (one `GET /metrics` on the
//!   broker's admin listener).
//! - Absent series are not an error: a broker built without the feature
//!   has none, and the report then says "not counted".
//! - A reading includes the broker's own work around it: one scrape's
//!   rendering (≈ 700–900 allocations, README "Allocations per request":
//!   under 0.01 % of a phase's), and its background tasks (timers, the audit
//!   writer — whose per-request work belongs to the requests anyway).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::alloc_count::{
    Totals, ALLOCATED_BYTES_METRIC, ALLOCATIONS_METRIC, REALLOCATIONS_METRIC,
};

/// The allocation totals in a Prometheus text exposition, if it has all
/// three series.
pub fn parse_totals(text: &str) -> Option<Totals> {
    let value = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
            // Counters are rendered as floats (e.g. `1.2e7` when large).
            let v: f64 = rest.split_whitespace().next()?.parse().ok()?;
            (v.is_finite() && v >= 0.0).then_some(v as u64)
        })
    };
    Some(Totals {
        allocations: value(ALLOCATIONS_METRIC)?,
        reallocations: value(REALLOCATIONS_METRIC)?,
        bytes: value(ALLOCATED_BYTES_METRIC)?,
    })
}

/// Most bytes of a `/metrics` page read (it grows with tenants and
/// shards; the allocation series sort near its start).
const MAX_PAGE: u64 = 16 << 20;

/// The broker's totals from its admin listener's `/metrics` (None: the
/// broker does not count allocations). One plain `GET`, `Connection:
/// close`, read to the end (bounded): the page can be larger than what
/// [`super::http1`] keeps of a body.
pub fn read(admin: SocketAddr) -> Result<Option<Totals>, String> {
    let failed = |e: std::io::Error| format!("GET http://{admin}/metrics: {e}");
    let mut tcp = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).map_err(failed)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(failed)?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(failed)?;
    let mut page = Vec::new();
    tcp.take(MAX_PAGE).read_to_end(&mut page).map_err(failed)?;
    let text = String::from_utf8_lossy(&page);
    let status = text.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "GET http://{admin}/metrics answered {}",
            crate::clip(status, 40)
        ));
    }
    Ok(parse_totals(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_parse_from_the_exposition() {
        let text = "\
# HELP atb_allocated_bytes_total Bytes asked for
# TYPE atb_allocated_bytes_total counter
atb_allocated_bytes_total 123456789
# HELP atb_allocations_total Heap allocations
# TYPE atb_allocations_total counter
atb_allocations_total 4567
atb_allocations_total_other 9
# TYPE atb_reallocations_total counter
atb_reallocations_total 1.5e3
atb_requests_total{status=\"ok\",tenant=\"acme\"} 3
";
        assert_eq!(
            parse_totals(text),
            Some(Totals {
                allocations: 4567,
                reallocations: 1500,
                bytes: 123_456_789,
            })
        );
        // A broker built without the feature: no series, not counted.
        assert_eq!(
            parse_totals("atb_requests_total{status=\"ok\",tenant=\"acme\"} 3\n"),
            None
        );
        // One series missing, or a value that is not a count.
        assert_eq!(
            parse_totals("atb_allocations_total 1\natb_reallocations_total 1\n"),
            None
        );
        assert_eq!(
            parse_totals(
                "atb_allocations_total -1\natb_reallocations_total 1\natb_allocated_bytes_total 1\n"
            ),
            None
        );
    }
}
