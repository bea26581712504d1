//! Exactly one audit record per request, whatever happens to the request:
//! the last phase is not the last line of a handler but a guard (Pingora's
//! `logging` phase, agentgateway's `DropOnLog`).
//!
//! - A request's record ([`RequestRecord`]) rides along with it; steps
//!   write what they learn into it.
//! - Answered normally, the handler calls [`RecordOnDrop::finish`]: the
//!   record closes with the answer's status and code, and the audit event
//!   waits for queue room like every other (backpressure, never a drop).
//! - A step that panicked is finished the same way, flagged `aborted`.
//! - A request that never finishes — its future dropped because the worker
//!   stopped at shutdown or the connection went away — closes from `Drop`
//!   as `aborted`. `Drop` cannot wait, so the event goes through
//!   [`AuditSink::record_now`] (never dropped either).
//! - Closing is where metrics and the log line are emitted too, so they
//!   cannot be skipped either. Used by the broker and by AgentAuth.

use super::{AuditRecord, AuditSink};

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Answered with this status and error code (`""` on success).
    Answered { status: u16, code: &'static str },
    /// A step panicked; the agent was answered 500 `internal_error`.
    Panicked,
    /// The request's future was dropped before an answer.
    Dropped,
}

impl Ending {
    /// `completed` or `aborted`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Ending::Answered { .. } => "completed",
            Ending::Panicked | Ending::Dropped => "aborted",
        }
    }

    /// The status the audit records: the answer's, or 500 when aborted.
    pub fn status(&self) -> u16 {
        match self {
            Ending::Answered { status, .. } => *status,
            Ending::Panicked | Ending::Dropped => 500,
        }
    }
}

/// What a request records about itself.
pub trait RequestRecord {
    type Event: AuditRecord;

    /// Where the audit event goes.
    fn sink(&self) -> &AuditSink<Self::Event>;

    /// Emits the request's metrics and log line and returns its audit
    /// event. Called exactly once.
    fn close(&mut self, ending: Ending) -> Self::Event;
}

/// Holds a request's record until it is closed, by [`Self::finish`] or by
/// `Drop`.
pub struct RecordOnDrop<R: RequestRecord> {
    record: R,
    closed: bool,
}

impl<R: RequestRecord> RecordOnDrop<R> {
    pub fn new(record: R) -> Self {
        Self {
            record,
            closed: false,
        }
    }

    /// Closes the record with `ending` and writes its audit event (waiting
    /// for queue room).
    pub async fn finish(&mut self, ending: Ending) {
        if self.closed {
            return;
        }
        self.closed = true;
        let event = self.record.close(ending);
        self.record.sink().record(event).await;
    }
}

impl<R: RequestRecord> std::ops::Deref for RecordOnDrop<R> {
    type Target = R;
    fn deref(&self) -> &R {
        &self.record
    }
}

impl<R: RequestRecord> std::ops::DerefMut for RecordOnDrop<R> {
    fn deref_mut(&mut self) -> &mut R {
        &mut self.record
    }
}

impl<R: RequestRecord> Drop for RecordOnDrop<R> {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let event = self.record.close(Ending::Dropped);
        self.record.sink().record_now(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::sync::{Arc, Mutex};

    #[derive(Serialize)]
    struct Line {
        outcome: &'static str,
        status: u16,
    }

    impl AuditRecord for Line {
        fn metric_label(&self) -> &'static str {
            self.outcome
        }
    }

    struct Rec {
        sink: AuditSink<Line>,
        closes: Arc<Mutex<Vec<String>>>,
    }

    impl RequestRecord for Rec {
        type Event = Line;
        fn sink(&self) -> &AuditSink<Line> {
            &self.sink
        }
        fn close(&mut self, ending: Ending) -> Line {
            self.closes.lock().unwrap().push(ending.outcome().into());
            Line {
                outcome: ending.outcome(),
                status: ending.status(),
            }
        }
    }

    fn sink(dir: &std::path::Path) -> (AuditSink<Line>, std::path::PathBuf) {
        let path = dir.join("audit.jsonl");
        let config = crate::audit::config::AuditConfig {
            sink: crate::audit::config::AuditSinkKind::File,
            file: path.clone(),
            ..Default::default()
        };
        (crate::audit::test_sink(&config), path)
    }

    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[actix_web::test]
    async fn finished_or_dropped_a_request_records_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, path) = sink(dir.path());
        let closes = Arc::new(Mutex::new(Vec::new()));
        let rec = || Rec {
            sink: sink.clone(),
            closes: closes.clone(),
        };
        // Finished: once, even if finished twice; nothing more on drop.
        let mut a = RecordOnDrop::new(rec());
        a.finish(Ending::Answered {
            status: 403,
            code: "poa_replay",
        })
        .await;
        a.finish(Ending::Panicked).await;
        drop(a);
        // Dropped unfinished (a request future cancelled mid-step).
        drop(RecordOnDrop::new(rec()));
        // A panic while the record is held: unwinding drops it.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = RecordOnDrop::new(rec());
            panic!("a step failed");
        }));
        assert!(r.is_err());
        sink.flush(std::time::Duration::from_secs(5)).await;
        assert_eq!(
            *closes.lock().unwrap(),
            vec!["completed", "aborted", "aborted"]
        );
        let got: Vec<(String, u64)> = lines(&path)
            .iter()
            .map(|l| {
                (
                    l["outcome"].as_str().unwrap().to_owned(),
                    l["status"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("completed".into(), 403),
                ("aborted".into(), 500),
                ("aborted".into(), 500)
            ]
        );
    }
}
