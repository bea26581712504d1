//! Log sampling for shed requests: a flood answered with 429/503 must not
//! also flood the log, nor pay a log line per shed.
//!
//! Design points:
//! * only sheds are sampled (`rate_limited`, `overloaded`): every other
//!   answer, allow or deny, keeps its log line; every request, shed or not,
//!   keeps its audit line and its metrics (the record of what happened);
//! * per `(tenant, code)` the first [`LINES_PER_SECOND`] sheds of each
//!   wall-clock second are logged, the rest counted; the next line written
//!   for that key carries `suppressed` = how many were left out since the
//!   previous one, so the log still adds up;
//! * measured: a text log line per request cost 0.045–0.085 ms of broker
//!   CPU (README "Benchmarks"), and with the broker on one core a flood's
//!   sheds at 7,500/s took about half of it (README "Overload");
//! * bounded: at most [`MAX_KEYS`] keys (tenants × 2 codes in practice);
//!   when full, the table starts over, which only lets a few more lines
//!   through.

use std::collections::HashMap;
use std::sync::Mutex;

/// Shed log lines written per `(tenant, code)` per second.
pub const LINES_PER_SECOND: u32 = 10;
/// Keys the sampler tracks.
pub const MAX_KEYS: usize = 10_000;

/// Whether `code` is a shed (sampled) rather than a decision.
pub fn is_shed(code: &str) -> bool {
    matches!(code, "rate_limited" | "overloaded")
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    second: i64,
    written: u32,
    suppressed: u64,
}

/// The sampler's state.
#[derive(Debug, Default)]
pub struct ShedLog {
    windows: Mutex<HashMap<(String, &'static str), Window>>,
}

impl ShedLog {
    /// For a shed of `tenant` with `code` at wall-clock second `second`
    /// (Unix time, `runtime::clock::unix_now`):
    /// `Some(n)` to write its line, `n` being the sheds left out before it;
    /// `None` to leave it out.
    pub fn admit(&self, tenant: &str, code: &'static str, second: i64) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_owned(), code);
        if windows.len() >= MAX_KEYS && !windows.contains_key(&key) {
            windows.clear();
        }
        let w = windows.entry(key).or_default();
        if w.second != second {
            w.second = second;
            w.written = 0;
        }
        if w.written < LINES_PER_SECOND {
            w.written += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_a_few_lines_a_second_and_counts_the_rest() {
        let log = ShedLog::default();
        let written: Vec<u64> = (0..100)
            .filter_map(|_| log.admit("acme", "rate_limited", 7))
            .collect();
        assert_eq!(written, vec![0; LINES_PER_SECOND as usize]);
        // Another tenant, another code: their own budgets.
        assert_eq!(log.admit("globex", "rate_limited", 7), Some(0));
        assert_eq!(log.admit("acme", "overloaded", 7), Some(0));
        // The next second's first line says how many were left out.
        assert_eq!(log.admit("acme", "rate_limited", 8), Some(90));
        assert_eq!(log.admit("acme", "rate_limited", 8), Some(0));
    }

    #[test]
    fn only_sheds_are_sampled() {
        assert!(is_shed("rate_limited") && is_shed("overloaded"));
        for code in ["", "poa_replay", "policy_denied", "shard_unavailable"] {
            assert!(!is_shed(code), "{code}");
        }
    }

    #[test]
    fn the_table_is_bounded() {
        let log = ShedLog::default();
        for i in 0..(MAX_KEYS + 10) {
            log.admit(&format!("t{i}"), "overloaded", 1);
        }
        assert!(log.windows.lock().unwrap().len() <= MAX_KEYS);
    }
}
