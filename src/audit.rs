//! Audit events: one JSON line per decision (every allow and every deny),
//! written to stdout by a dedicated thread. The queue is bounded and a full
//! queue makes the request wait for room — an event is never dropped.

use std::io::Write;

use serde::Serialize;
use tokio::sync::mpsc;

/// One decision.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// RFC 3339 UTC timestamp.
    pub ts: String,
    pub event: &'static str,
    pub request_id: String,
    pub tenant: String,
    pub agent: String,
    pub method: String,
    pub path: String,
    pub action: String,
    pub jti: String,
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// The HTTP status answered.
    pub status: u16,
    /// The error code (`""` on allow).
    pub code: &'static str,
    pub reason: String,
    pub risk_tier: String,
    pub connector: String,
    pub latency_us: u64,
}

/// The `decision` of an answer: allow for 2xx/3xx, error for 5xx, else deny.
pub fn decision_for(status: u16) -> &'static str {
    match status {
        500.. => "error",
        400..=499 => "deny",
        _ => "allow",
    }
}

/// An event the audit sink can write: serialisable, with a bounded label
/// for the `atb_audit_events_total` counter.
pub trait AuditRecord: Serialize + Send + 'static {
    fn metric_label(&self) -> &'static str;
}

impl AuditRecord for AuditEvent {
    fn metric_label(&self) -> &'static str {
        self.decision
    }
}

/// Hands events to the writer thread.
pub struct AuditSink<E: AuditRecord = AuditEvent> {
    tx: mpsc::Sender<E>,
    events: prometheus::IntCounterVec,
}

impl<E: AuditRecord> Clone for AuditSink<E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            events: self.events.clone(),
        }
    }
}

impl<E: AuditRecord> AuditSink<E> {
    /// Starts the stdout writer with a queue of `capacity` events.
    pub fn stdout(capacity: usize, events: prometheus::IntCounterVec) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<E>(capacity.max(1));
        std::thread::Builder::new()
            .name("atb-audit".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                while let Some(event) = rx.blocking_recv() {
                    let mut out = stdout.lock();
                    if serde_json::to_writer(&mut out, &event).is_ok() {
                        let _ = out.write_all(b"\n");
                    }
                    // Flush when the queue is drained so lines are not held back.
                    if rx.is_empty() {
                        let _ = out.flush();
                    }
                }
            })?;
        Ok(Self { tx, events })
    }

    /// Records `event`, waiting for queue room if needed.
    pub async fn record(&self, event: E) {
        self.events.with_label_values(&[event.metric_label()]).inc();
        if self.tx.send(event).await.is_err() {
            tracing::error!("audit writer is gone; event could not be written");
        }
    }
}

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = rfc3339(now.as_secs() as i64);
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), now.subsec_millis())
}

/// Unix seconds as RFC 3339 UTC (second precision).
pub fn rfc3339(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t % 3600 / 60,
        t % 60,
    )
}

/// Days since 1970-01-01 to (year, month, day) — Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z'));
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn decisions_by_status() {
        assert_eq!(decision_for(200), "allow");
        assert_eq!(decision_for(403), "deny");
        assert_eq!(decision_for(503), "error");
    }
}
