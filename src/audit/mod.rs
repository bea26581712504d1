//! Audit events: one JSON line per decision (every allow and every deny)
//! and per AgentAuth event, sealed into a hash chain ([`chain`]) and written
//! by a dedicated thread to stdout, an append-only file or an HTTP
//! collector (NDJSON batches). The queue is
//! bounded and a full queue makes the request wait for room — an event is
//! never dropped.
//!
//! - Durable records ([`AuditSink::record_durable`]): the caller waits
//!   until its line is written and settled (fsynced for a file, posted 2xx
//!   for HTTP). Settles are shared: the writer writes every event waiting
//!   in the queue and settles once for all of them (group commit), so
//!   concurrent durable records cost one fsync per batch, not one each.
//!   A failed write or settle answers every durable record waiting on it
//!   with the error at once (the writer then retries as always, so the
//!   chain shows no gap); a caller also stops waiting after
//!   `audit.durable_timeout_ms`.
//! - A file sink starts by cutting a torn last line (bytes after the last
//!   newline: the writer died mid-line) into `<file>.torn` and continues the
//!   chain from the last complete line, so the file verifies as one chain.

pub mod chain;
pub mod config;
pub mod guard;

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use std::collections::HashMap;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::audit::config::{AuditConfig, AuditSinkKind};
use chain::Chain;
#[cfg(test)]
use chain::ChainHead;

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
    /// The credential's format (`jwt`, `biscuit`; empty without one).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub format: &'static str,
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// The HTTP status answered.
    pub status: u16,
    /// The error code (`""` on allow).
    pub code: &'static str,
    pub reason: String,
    pub risk_tier: String,
    pub connector: String,
    /// The route template the call matched (`""` when none did).
    pub route: String,
    pub latency_us: u64,
    /// `completed`, or `aborted` when a step panicked or the request was
    /// dropped before an answer (worker stopped, connection gone).
    pub outcome: &'static str,
}

/// The `event` of the durable record an `audit_required` tenant's request
/// gets before it is forwarded (its `status` is 0: not answered yet; the
/// request's `decision` record follows when it is answered).
pub const FORWARD_EVENT: &str = "forward";

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
    /// Whose share of the queue the event takes (a tenant id).
    fn share_key(&self) -> &str {
        ""
    }
}

impl AuditRecord for AuditEvent {
    fn metric_label(&self) -> &'static str {
        match self.event {
            FORWARD_EVENT => FORWARD_EVENT,
            _ => self.decision,
        }
    }
    fn share_key(&self) -> &str {
        &self.tenant
    }
}

/// The audit writer's own series, so backpressure is visible: a queue
/// that stays deep, or failed writes (retried, requests wait meanwhile).
#[derive(Clone)]
pub struct AuditWriterMetrics {
    pub queue_depth: prometheus::IntGauge,
    pub write_failures: prometheus::IntCounter,
    /// `atb_actor_restarts_total{actor="audit_writer"}`: events whose
    /// handling panicked (the writer goes on with the next one).
    pub panics: prometheus::IntCounter,
    /// `atb_dependency_up{dependency, tenant}`: 1 while a dependency's
    /// last call succeeded, 0 after a failed one. Registered here, with
    /// the writer (every process has one), and shared with the broker's
    /// other dependencies (OPA, Redis, JWKS, upstreams).
    pub dependency_up: prometheus::IntGaugeVec,
    /// `atb_dependency_up{dependency="audit_sink"}`: the writer's last
    /// write or flush (1 at start).
    pub sink_up: prometheus::IntGauge,
}

impl AuditWriterMetrics {
    /// Registers the writer's series; `actors` counts its panics.
    pub fn register(
        registry: &prometheus::Registry,
        actors: &atb_actors::ActorMetrics,
    ) -> prometheus::Result<Self> {
        let queue_depth = prometheus::IntGauge::new(
            "atb_audit_queue_depth",
            "Audit events waiting for the writer",
        )?;
        let write_failures = prometheus::IntCounter::new(
            "atb_audit_write_failures_total",
            "Failed audit writes or flushes (each is retried until it succeeds)",
        )?;
        let dependency_up = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "atb_dependency_up",
                "1 while the dependency's last call succeeded, 0 after a failed one \
                 (opa, audit_sink, redis; jwks and upstream:<connector> per tenant)",
            ),
            &["dependency", "tenant"],
        )?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(write_failures.clone()))?;
        registry.register(Box::new(dependency_up.clone()))?;
        let sink_up = dependency_up.with_label_values(&["audit_sink", ""]);
        sink_up.set(1);
        Ok(Self {
            queue_depth,
            write_failures,
            panics: actors.restarts.with_label_values(&["audit_writer", "-"]),
            dependency_up,
            sink_up,
        })
    }
}

/// Hands events to the writer thread.
pub struct AuditSink<E: AuditRecord = AuditEvent> {
    tx: mpsc::Sender<Message<E>>,
    events: prometheus::IntCounterVec,
    writer: AuditWriterMetrics,
    shares: Shares,
    /// How long [`Self::record_durable`] waits.
    durable_timeout: std::time::Duration,
    /// The writer thread, woken early by durable records and flushes
    /// while it lingers.
    writer_thread: std::thread::Thread,
    /// Events [`Self::record_now`] found no room for, waiting for one
    /// thread to move them into the queue.
    overflow: std::sync::Arc<Overflow<E>>,
}

/// Events that found the queue full when they could not wait (a dropped
/// request's record): one thread moves them into the queue as room frees,
/// in order. It holds at most one event per such request (bounded by the
/// connections and in-flight limits), and no thread per event.
struct Overflow<E> {
    events: std::sync::Mutex<std::collections::VecDeque<Message<E>>>,
    more: std::sync::Condvar,
}

impl<E: Send + 'static> Overflow<E> {
    /// The overflow of the queue `tx` feeds; its thread ends once every
    /// sender of the queue is gone.
    fn start(tx: &mpsc::Sender<Message<E>>) -> std::io::Result<std::sync::Arc<Self>> {
        let overflow = std::sync::Arc::new(Self {
            events: Default::default(),
            more: Default::default(),
        });
        let weak = tx.downgrade();
        let mover = overflow.clone();
        std::thread::Builder::new()
            .name("atb-audit-wait".into())
            .spawn(move || loop {
                let next = {
                    let mut events = mover.events.lock().unwrap_or_else(|p| p.into_inner());
                    match events.pop_front() {
                        Some(next) => next,
                        None => {
                            drop(
                                mover
                                    .more
                                    .wait_timeout(events, std::time::Duration::from_secs(1))
                                    .unwrap_or_else(|p| p.into_inner()),
                            );
                            if weak.strong_count() == 0 {
                                return;
                            }
                            continue;
                        }
                    }
                };
                let Some(tx) = weak.upgrade() else {
                    tracing::error!("audit writer is gone; event could not be written");
                    return;
                };
                if tx.blocking_send(next).is_err() {
                    tracing::error!("audit writer is gone; event could not be written");
                }
            })?;
        Ok(overflow)
    }

    fn push(&self, message: Message<E>) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(message);
        self.more.notify_one();
    }

    /// Events waiting for room.
    fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Each tenant's share of the queue: a semaphore of `per_key` permits per
/// key; an event holds one until the writer has taken it off the queue.
#[derive(Clone)]
struct Shares {
    per_key: usize,
    keys: std::sync::Arc<std::sync::Mutex<HashMap<String, std::sync::Arc<Semaphore>>>>,
}

impl Shares {
    fn of(&self, key: &str) -> std::sync::Arc<Semaphore> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.entry(key.to_owned())
            .or_insert_with(|| std::sync::Arc::new(Semaphore::new(self.per_key.max(1))))
            .clone()
    }
}

/// Answers a durable record: `Ok` once its line is written and settled.
type Ack = tokio::sync::oneshot::Sender<Result<(), String>>;

/// An event until it is queued; dropped still holding it (its caller
/// was cancelled while waiting for room), it goes through
/// [`AuditSink::record_now`], so it is never lost.
struct Pending<'s, E: AuditRecord> {
    sink: &'s AuditSink<E>,
    event: Option<E>,
}

impl<E: AuditRecord> Drop for Pending<'_, E> {
    fn drop(&mut self) {
        if let Some(event) = self.event.take() {
            self.sink.record_now(event);
        }
    }
}

enum Message<E> {
    /// An event, its place in its tenant's share (released once the
    /// writer took it), and for a durable record who waits for it.
    Event(E, Option<OwnedSemaphorePermit>, Option<Ack>),
    /// Settle everything queued before, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl<E: AuditRecord> Clone for AuditSink<E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            events: self.events.clone(),
            writer: self.writer.clone(),
            shares: self.shares.clone(),
            durable_timeout: self.durable_timeout,
            writer_thread: self.writer_thread.clone(),
            overflow: self.overflow.clone(),
        }
    }
}

/// The audit sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditStartError {
    #[error("audit.file {}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the audit writer: {0}")]
    Writer(std::io::Error),
}

/// A durable record could not be made durable (the request it stands for
/// must not go ahead).
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("the audit write failed: {0}")]
    Write(String),
    #[error("the audit record was not durable within {0} ms")]
    Timeout(u64),
    #[error("the audit writer is gone")]
    WriterGone,
}

impl<E: AuditRecord> AuditSink<E> {
    /// Starts the writer of chain `chain_name` on the configured sink. A
    /// file sink continues the chain from the file's last intact line of
    /// that chain (after a torn last line, on a new line, as a new start).
    pub fn start(
        chain_name: &'static str,
        config: &AuditConfig,
        tls: &openssl::ssl::SslConnector,
        events: prometheus::IntCounterVec,
        writer: AuditWriterMetrics,
    ) -> Result<Self, AuditStartError> {
        // Files are opened here, so a bad path fails the start; an HTTP
        // client is made on the writer thread, which runs it.
        let (file, head) = match config.sink {
            AuditSinkKind::File => {
                let (f, tail) = open_file(&config.file, chain_name).map_err(|source| {
                    AuditStartError::File {
                        path: config.file.clone(),
                        source,
                    }
                })?;
                (Some(f), tail)
            }
            _ => (None, chain::Tail::default()),
        };
        let http = match config.sink {
            AuditSinkKind::Http => Some((config.clone(), tls.clone())),
            _ => None,
        };
        let durable_timeout = std::time::Duration::from_millis(config.durable_timeout_ms);
        let (tx, rx) = mpsc::channel::<Message<E>>(config.queue_capacity.max(1));
        let metrics = writer.clone();
        let linger = std::time::Duration::from_millis(config.batch_linger_ms);
        let writer_thread = std::thread::Builder::new()
            .name("atb-audit".into())
            .spawn(move || {
                let out = match (file, http) {
                    (Some(f), _) => Output::File(AppendFile::opened(f)),
                    (None, Some((c, tls))) => Output::Http(Box::new(HttpBatch::new(&c, &tls))),
                    (None, None) => Output::Stdout(std::io::stdout()),
                };
                write_loop(rx, Chain::resume(chain_name, head), out, linger, &metrics)
            })
            .map_err(AuditStartError::Writer)?
            .thread()
            .clone();
        let shares = Shares {
            per_key: config.queue_per_tenant,
            keys: Default::default(),
        };
        let overflow = Overflow::start(&tx).map_err(AuditStartError::Writer)?;
        Ok(Self {
            tx,
            events,
            writer,
            shares,
            durable_timeout,
            writer_thread,
            overflow,
        })
    }

    /// Records `event`, waiting for room in its tenant's share and in the
    /// queue if needed. Cancellation-safe: the event is held by a guard
    /// until it is in the queue, so a caller dropped while waiting (a
    /// request whose client went away, a worker stopped at the end of the
    /// shutdown grace) hands it to [`Self::record_now`] instead of losing it.
    pub async fn record(&self, event: E) {
        let share = self.shares.of(event.share_key());
        let mut pending = Pending {
            sink: self,
            event: Some(event),
        };
        let permit = share.acquire_owned().await.ok();
        if let Err(e) = self.enqueue(&mut pending, permit, None).await {
            tracing::error!(error = %e, "audit event could not be written");
        }
    }

    /// Room first, then the event: waiting for room never holds the event,
    /// so a cancelled wait leaves it with `pending` (which writes it on
    /// drop).
    async fn enqueue(
        &self,
        pending: &mut Pending<'_, E>,
        permit: Option<OwnedSemaphorePermit>,
        ack: Option<Ack>,
    ) -> Result<(), DurableError> {
        let room = self.tx.reserve().await.map_err(|_| {
            pending.event = None;
            DurableError::WriterGone
        })?;
        if let Some(event) = pending.event.take() {
            self.events.with_label_values(&[event.metric_label()]).inc();
            room.send(Message::Event(event, permit, ack));
        }
        let waiting = self.tx.max_capacity() - self.tx.capacity();
        self.writer.queue_depth.set(waiting as i64);
        Ok(())
    }

    /// Records `event` and waits until its line is written and settled
    /// (fsynced, posted), at most `audit.durable_timeout_ms` in all
    /// (waiting for queue room included). An error means the line may
    /// not be durable: whatever it stands for must not go ahead (the
    /// writer still retries it, so the chain keeps no gap; an event still
    /// waiting for room when the time is up is written without waiting).
    pub async fn record_durable(&self, event: E) -> Result<(), DurableError> {
        let limit = self.durable_timeout;
        let share = self.shares.of(event.share_key());
        let mut pending = Pending {
            sink: self,
            event: Some(event),
        };
        let waited = tokio::time::timeout(limit, async {
            let permit = share.acquire_owned().await.ok();
            let (ack, settled) = tokio::sync::oneshot::channel();
            self.enqueue(&mut pending, permit, Some(ack)).await?;
            // Someone waits for this line: no lingering.
            self.writer_thread.unpark();
            match settled.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(DurableError::Write(e)),
                Err(_) => Err(DurableError::WriterGone),
            }
        })
        .await;
        waited.unwrap_or(Err(DurableError::Timeout(limit.as_millis() as u64)))
    }

    /// Records `event` without waiting (for `Drop`, which cannot): into
    /// the queue when it has room (and nothing overflowed before it), else
    /// into the overflow, whose one thread moves it in as room frees.
    /// Never dropped.
    pub fn record_now(&self, event: E) {
        self.events.with_label_values(&[event.metric_label()]).inc();
        // Never waits for the share either: an event that finds its
        // tenant's share full goes in without a permit rather than be lost.
        let permit = self.shares.of(event.share_key()).try_acquire_owned().ok();
        let message = Message::Event(event, permit, None);
        // Behind events already overflowed, to keep them in order.
        if self.overflow.len() > 0 {
            self.overflow.push(message);
            return;
        }
        match self.tx.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => self.overflow.push(message),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer is gone; event could not be written");
            }
        }
    }

    /// Waits until every event recorded so far is written and settled
    /// (at shutdown, so nothing queued is lost), at most `limit`: an
    /// unreachable collector must not keep the process from exiting.
    pub async fn flush(&self, limit: std::time::Duration) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let flushed = tokio::time::timeout(limit, async {
            if self.tx.send(Message::Flush(done)).await.is_ok() {
                self.writer_thread.unpark();
                let _ = wait.await;
            }
        })
        .await;
        if flushed.is_err() {
            tracing::error!(
                waited_s = limit.as_secs(),
                "audit events still queued at exit could not be written"
            );
        }
    }
}

/// How much of an existing audit file is read at start to find where a
/// chain stands (its last line is expected near the end).
const TAIL_BYTES: u64 = 1 << 20;

/// Opens `path` for appending and finds where `chain` stands in it, from
/// the file's last [`TAIL_BYTES`] only (start-up does not grow with the
/// log). A torn last line (bytes after the last newline without a hash
/// suffix: the writer died mid-line, [`chain::is_torn`]) is moved to
/// `<path>.torn` and cut off, so the chain continues from the last complete
/// line; an intact line that only lacks its newline is kept and ended; an
/// altered one is kept and the chain restarts after it. No intact line of the
/// chain in the tail means a new start. Only the file's first writer (the
/// holder of its exclusive lock) repairs the tail; a second writer of the
/// same file only reads where its chain stands. A file that is not a
/// regular file (a FIFO, a device) is only appended to.
fn open_file(path: &Path, chain: &str) -> std::io::Result<(std::fs::File, chain::Tail)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok((file, chain::Tail::default()));
    }
    // The first writer of a file holds an exclusive lock on it while it
    // runs (released by the kernel when the process dies, even by kill -9).
    // Only that writer repairs the tail: a later writer of the same file
    // (AgentAuth beside the broker in `atb dev`) must not cut or end a
    // line the first one is writing.
    let first_writer = match rustix::fs::flock(
        &file,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    ) {
        Ok(()) => true,
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => false,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot lock the audit file; its tail is left as it is");
            false
        }
    };
    let from = meta.len().saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let last_newline = tail.iter().rposition(|&b| b == b'\n');
    if !first_writer {
        let complete = &tail[..last_newline.map_or(0, |nl| nl + 1)];
        let lines = match (from, complete.iter().position(|&b| b == b'\n')) {
            (0, _) => complete,
            (_, Some(nl)) => &complete[nl + 1..],
            (_, None) => &[][..],
        };
        return Ok((file, chain::tail_of(lines, chain)?));
    }
    let unterminated = &tail[last_newline.map_or(0, |nl| nl + 1)..];
    // Not torn but altered (a hash suffix that fails): kept, ended, and
    // the chain restarts linked to its last intact line, so verify shows it.
    let altered = !unterminated.is_empty()
        && !chain::is_torn(unterminated)
        && std::str::from_utf8(unterminated).map_or(true, |l| chain::read_line(l).is_err());
    let torn = !unterminated.is_empty() && chain::is_torn(unterminated);
    let mut kept = tail.len();
    match (torn, last_newline) {
        (false, _) if altered => {
            file.write_all(b"\n")?;
            tracing::warn!(file = %path.display(), "the audit file's last line fails its hash; the chain restarts after it");
        }
        (false, _) if !unterminated.is_empty() => file.write_all(b"\n")?,
        (false, _) => {}
        // The torn line starts inside the tail: cut it off.
        (true, Some(nl)) => kept = nl + 1,
        (true, None) if from == 0 => kept = 0,
        // A torn line longer than the tail: end it and start a new run
        // linked to nothing found (an edge no writer of ours produces).
        (true, None) => {
            file.write_all(b"\n")?;
            return Ok((file, chain::Tail::default()));
        }
    }
    if kept < tail.len() {
        let cut = &tail[kept..];
        let mut aside = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(torn_path(path))?;
        aside.write_all(cut)?;
        aside.write_all(b"\n")?;
        aside.sync_data()?;
        file.set_len(from + kept as u64)?;
        file.sync_data()?;
        tracing::warn!(
            file = %path.display(),
            bytes = cut.len(),
            moved_to = %torn_path(path).display(),
            "the audit file ended in a torn line (the writer stopped mid-line); it was cut off and the chain continues from the last complete line"
        );
    }
    // Reading from the middle of the file: skip the partial first line.
    let lines = &tail[..kept];
    let lines = match (from, lines.iter().position(|&b| b == b'\n')) {
        (0, _) => lines,
        (_, Some(nl)) => &lines[nl + 1..],
        (_, None) => &[][..],
    };
    let head = chain::tail_of(lines, chain)?;
    Ok((file, head))
}

/// Where a torn last line cut off at start is kept.
pub fn torn_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".torn");
    name.into()
}

/// Where sealed lines go.
enum Output {
    Stdout(std::io::Stdout),
    File(AppendFile<std::fs::File>),
    Http(Box<HttpBatch>),
}

/// What an [`AppendFile`] needs of a file: appending, and cutting back.
trait Truncatable: Write {
    fn truncate_to(&mut self, len: u64) -> std::io::Result<()>;
}

impl Truncatable for std::fs::File {
    fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }
}

/// An append-only file and the length its whole lines end at. A write that
/// fails part-way (a full disk) is cut back to that length before the
/// error is returned, so the retry writes the line whole and no fragment
/// breaks the chain.
struct AppendFile<F> {
    file: F,
    /// `None` for what is not a regular file (nothing to cut back).
    len: Option<u64>,
}

impl AppendFile<std::fs::File> {
    /// `file` as opened for appending: its whole lines end at its length
    /// (a torn tail was cut off when it was opened).
    fn opened(file: std::fs::File) -> Self {
        let len = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        Self { file, len }
    }
}

impl<F: Truncatable> AppendFile<F> {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self.file.write_all(line) {
            Ok(()) => {
                if let Some(len) = &mut self.len {
                    *len += line.len() as u64;
                }
                Ok(())
            }
            Err(e) => {
                if let Some(len) = self.len {
                    if let Err(cut) = self.file.truncate_to(len) {
                        tracing::error!(error = %cut, "cannot cut a partly written audit line back");
                    }
                }
                Err(e)
            }
        }
    }
}

impl Output {
    /// One line, in one write (for HTTP: into the pending batch).
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => s.lock().write_all(line),
            Output::File(f) => f.write_line(line),
            Output::Http(h) => {
                h.pending.extend_from_slice(line);
                h.lines += 1;
                Ok(())
            }
        }
    }

    /// Whether the output should be settled before the queue drains.
    fn full(&self) -> bool {
        matches!(self, Output::Http(h) if h.lines >= h.max_lines)
    }

    /// Makes what was written visible (stdout), durable (file) or
    /// delivered (HTTP: the pending batch is posted).
    fn settle(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => s.flush(),
            Output::File(f) => f.file.sync_data(),
            Output::Http(h) => h.post(),
        }
    }
}

/// Sealed lines posted in batches as NDJSON (the exact bytes, so the
/// collector's stored body verifies with `atb audit verify`).
struct HttpBatch {
    runner: actix_web::rt::SystemRunner,
    client: awc::Client,
    url: String,
    authorization: Option<String>,
    pending: Vec<u8>,
    lines: usize,
    max_lines: usize,
    timeout: std::time::Duration,
}

impl HttpBatch {
    fn new(config: &AuditConfig, tls: &openssl::ssl::SslConnector) -> Self {
        let runner = actix_web::rt::System::new();
        let timeout = std::time::Duration::from_secs(10);
        let client = runner.block_on(async { crate::runtime::tls::http_client(tls, timeout) });
        Self {
            runner,
            client,
            url: config.http_url.clone(),
            authorization: config.http_authorization.clone(),
            pending: Vec::new(),
            lines: 0,
            max_lines: config.http_batch_lines.max(1),
            timeout,
        }
    }

    /// Posts the pending batch; kept for the next try unless the collector
    /// answers 2xx.
    fn post(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut request = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .insert_header(("content-type", "application/x-ndjson"));
        if let Some(auth) = &self.authorization {
            request = request.insert_header(("authorization", auth.as_str()));
        }
        let body = actix_web::web::Bytes::copy_from_slice(&self.pending);
        let status = self
            .runner
            .block_on(async move { request.send_body(body).await.map(|r| r.status()) })
            .map_err(|e| std::io::Error::other(format!("audit collector: {e}")))?;
        if !status.is_success() {
            return Err(std::io::Error::other(format!(
                "audit collector answered {status}"
            )));
        }
        self.pending.clear();
        self.lines = 0;
        Ok(())
    }
}

/// Runs `op` until it succeeds, logging and backing off (up to 5 s) in
/// between: the queue fills meanwhile and requests wait for room.
fn retry(what: &str, metrics: &AuditWriterMetrics, mut op: impl FnMut() -> std::io::Result<()>) {
    let mut backoff = std::time::Duration::from_millis(100);
    let mut failed = false;
    while let Err(e) = op() {
        failed = true;
        metrics.write_failures.inc();
        metrics.sink_up.set(0);
        tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "audit {what} failed; retrying (requests wait)");
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
    if failed {
        metrics.sink_up.set(1);
        tracing::info!("audit {what} succeeded again");
    }
}

/// Most durable records waiting for one settle: under a queue that never
/// drains, the writer still settles at least this often.
const MAX_GROUP_COMMIT: usize = 256;

/// Durable records written and waiting for the next settle.
#[derive(Default)]
struct Waiting(Vec<Ack>);

impl Waiting {
    /// Tells everyone waiting how the settle went.
    fn answer(&mut self, result: &Result<(), String>) {
        for ack in self.0.drain(..) {
            let _ = ack.send(result.clone());
        }
    }
}

/// Settles `out`; a first failure is reported to the durable records
/// waiting at once (they must not wait out the retries), then the settle is
/// retried until it succeeds.
fn settle(out: &mut Output, waiting: &mut Waiting, metrics: &AuditWriterMetrics) {
    let first = out.settle().map_err(|e| e.to_string());
    if let Err(e) = &first {
        metrics.write_failures.inc();
        metrics.sink_up.set(0);
        tracing::error!(error = %e, "audit flush failed; retrying (requests wait)");
        waiting.answer(&Err(e.clone()));
        retry("flush", metrics, || out.settle());
        metrics.sink_up.set(1);
    }
    waiting.answer(&Ok(()));
}

/// Seals and writes events as they come, settling the output whenever the
/// queue is drained (or an HTTP batch is full, or [`MAX_GROUP_COMMIT`]
/// durable records wait). Having drained the queue it lingers up to
/// `linger` (unless unparked by a durable record or a flush) so that events
/// arriving one by one are taken in batches: one wake-up and one settle per
/// batch, not per request. Failed writes and settles are retried until they
/// succeed, so nothing is dropped and the chain shows no gap.
fn write_loop<E: Serialize>(
    mut rx: mpsc::Receiver<Message<E>>,
    mut chain: Chain,
    mut out: Output,
    linger: std::time::Duration,
    metrics: &AuditWriterMetrics,
) {
    let mut waiting = Waiting::default();
    loop {
        if !linger.is_zero() && rx.is_empty() {
            std::thread::park_timeout(linger);
        }
        let Some(message) = rx.blocking_recv() else {
            break;
        };
        metrics.queue_depth.set(rx.len() as i64);
        let more_waiting = !rx.is_empty();
        // The writer is supervised per event: a panic (say, in an event's
        // serialisation) is caught and counted, and the writer goes on with
        // the chain as it stood (a line is sealed whole or not at all).
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let (event, mut ack) = match message {
                // The permit goes with the message: the tenant's share
                // frees as the writer takes its event.
                Message::Event(event, _permit, ack) => (event, ack),
                Message::Flush(done) => {
                    settle(&mut out, &mut waiting, metrics);
                    let _ = done.send(());
                    return;
                }
            };
            let mut line = match chain.seal(&event) {
                Ok(line) => line,
                Err(e) => {
                    tracing::error!(error = %e, "audit event could not be encoded");
                    if let Some(ack) = ack {
                        let _ = ack.send(Err(format!("not encodable: {e}")));
                    }
                    return;
                }
            };
            line.push('\n');
            if let Err(e) = out.write_line(line.as_bytes()) {
                metrics.write_failures.inc();
                metrics.sink_up.set(0);
                if let Some(ack) = ack.take() {
                    let _ = ack.send(Err(e.to_string()));
                }
                tracing::error!(error = %e, "audit write failed; retrying (requests wait)");
                retry("write", metrics, || out.write_line(line.as_bytes()));
                metrics.sink_up.set(1);
            }
            waiting.0.extend(ack);
            if !more_waiting || out.full() || waiting.0.len() >= MAX_GROUP_COMMIT {
                settle(&mut out, &mut waiting, metrics);
            }
        }));
        if handled.is_err() {
            metrics.panics.inc();
            tracing::error!("the audit writer panicked on one event; it goes on with the next");
        }
    }
    settle(&mut out, &mut waiting, metrics);
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

/// A sink on `config` with throwaway metrics (unit tests).
#[cfg(test)]
pub(crate) fn test_sink<E: AuditRecord>(config: &AuditConfig) -> AuditSink<E> {
    let metrics = crate::metrics::Metrics::new().unwrap();
    let tls = crate::runtime::tls::outbound(&Default::default()).unwrap();
    AuditSink::start(
        "test",
        config,
        &tls,
        metrics.audit_events.clone(),
        metrics.audit_writer.clone(),
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn one_tenant_cannot_take_the_whole_queue() {
        // A collector nobody serves: the writer retries its first batch,
        // so events pile up in the queue.
        let (_, config) = unserved_collector(AuditConfig {
            queue_capacity: 16,
            queue_per_tenant: 2,
            ..Default::default()
        });
        let sink = test_sink(&config);
        let event = |tenant: &str| AuditEvent {
            ts: String::new(),
            event: "decision",
            request_id: String::new(),
            tenant: tenant.into(),
            agent: String::new(),
            method: String::new(),
            path: String::new(),
            action: String::new(),
            jti: String::new(),
            format: "",
            decision: "allow",
            status: 200,
            code: "",
            reason: String::new(),
            risk_tier: String::new(),
            connector: String::new(),
            route: String::new(),
            latency_us: 0,
            outcome: "completed",
        };
        let quick = std::time::Duration::from_millis(300);
        // The writer takes the first event and gets stuck posting it.
        tokio::time::timeout(quick, sink.record(event("acme")))
            .await
            .unwrap();
        while sink.writer.write_failures.get() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Two more fill acme's share of the queue.
        for _ in 0..2 {
            tokio::time::timeout(quick, sink.record(event("acme")))
                .await
                .unwrap();
        }
        // acme waits for its share; globex's events still go in.
        assert!(tokio::time::timeout(quick, sink.record(event("acme")))
            .await
            .is_err());
        for _ in 0..2 {
            tokio::time::timeout(quick, sink.record(event("globex")))
                .await
                .expect("another tenant's event must not wait");
        }
        // A dropped request's event never waits, even over its share.
        sink.record_now(event("acme"));
    }

    impl AuditRecord for serde_json::Value {
        fn metric_label(&self) -> &'static str {
            "test"
        }
    }

    /// `config` as an HTTP sink posting to a free loopback port nobody
    /// listens on (until a test starts [`collector`] there).
    fn unserved_collector(config: AuditConfig) -> (u16, AuditConfig) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = AuditConfig {
            sink: AuditSinkKind::Http,
            http_url: format!("http://127.0.0.1:{port}/ingest"),
            ..config
        };
        (port, config)
    }

    /// A collector on `port` from now on: answers every POST 200 and
    /// keeps the bodies.
    fn collector(port: u16) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
        use std::io::{BufRead, BufReader, Read};
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let store = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut out = conn.try_clone().unwrap();
                    let mut reader = BufReader::new(conn);
                    loop {
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some((k, v)) = line.split_once(':') {
                                if k.eq_ignore_ascii_case("content-length") {
                                    length = v.trim().parse().unwrap();
                                }
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        store.lock().unwrap().extend_from_slice(&body);
                        out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .unwrap();
                    }
                });
            }
        });
        got
    }

    #[actix_web::test]
    async fn an_event_whose_caller_is_cancelled_while_waiting_for_room_is_still_written() {
        // The collector is down: the writer holds the first event, the
        // queue (one slot) holds the second, the third waits for room.
        let (port, config) = unserved_collector(AuditConfig {
            queue_capacity: 1,
            durable_timeout_ms: 300,
            ..Default::default()
        });
        let sink: AuditSink<serde_json::Value> = test_sink(&config);
        let quick = std::time::Duration::from_millis(300);
        sink.record(serde_json::json!({"n": 0})).await;
        while sink.writer.write_failures.get() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(sink.writer.sink_up.get(), 0);
        tokio::time::timeout(quick, sink.record(serde_json::json!({"n": 1})))
            .await
            .unwrap();
        // Its caller gives up while it waits (a client that went away).
        assert!(
            tokio::time::timeout(quick, sink.record(serde_json::json!({"n": 2})))
                .await
                .is_err(),
            "the queue is full: the call waits"
        );
        // A durable record that times out waiting for room is refused
        // (its request must not go ahead) but still written.
        assert!(matches!(
            sink.record_durable(serde_json::json!({"n": 3})).await,
            Err(DurableError::Timeout(300))
        ));
        // The collector comes back: all four arrive, in one chain.
        let got = collector(port);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let lines = loop {
            let body = got.lock().unwrap().clone();
            let text = String::from_utf8(body).unwrap();
            if text.lines().count() >= 4 || std::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let ns: Vec<u64> = lines
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ns, vec![0, 1, 2, 3], "{lines}");
        assert_eq!(chain::verify(lines.as_bytes(), false).unwrap().broken, None);
        assert_eq!(sink.writer.sink_up.get(), 1);
    }

    /// An event whose serialisation panics.
    struct Poison;
    impl Serialize for Poison {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            panic!("poisoned event")
        }
    }

    #[test]
    fn a_panicking_event_is_contained_and_the_writer_goes_on() {
        let registry = prometheus::Registry::new();
        let actors = atb_actors::ActorMetrics::register(&registry).unwrap();
        let metrics = AuditWriterMetrics::register(&registry, &actors).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (file, _) = open_file(&path, "broker").unwrap();
        let (tx, rx) = mpsc::channel::<Message<Result<serde_json::Value, Poison>>>(8);
        for e in [
            Ok(serde_json::json!({"i": 0})),
            Err(Poison),
            Ok(serde_json::json!({"i": 1})),
        ] {
            tx.try_send(Message::Event(e, None, None)).ok().unwrap();
        }
        drop(tx);
        let chain = Chain::new("broker", ChainHead::default());
        write_loop(
            rx,
            chain,
            Output::File(AppendFile::opened(file)),
            std::time::Duration::ZERO,
            &metrics,
        );
        assert_eq!(metrics.panics.get(), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        // The chain is unbroken across the panic.
        let v = chain::verify(text.as_bytes(), false).unwrap();
        assert_eq!(v.broken, None);
        assert_eq!(v.lines, 2);
    }

    #[test]
    fn a_file_is_continued_from_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // More than the tail of other lines, then the chain's last line.
        let filler = format!("{}\n", "x".repeat(1000)).repeat(1200);
        let mut chain = Chain::new("broker", ChainHead::default());
        let first = chain.seal(&serde_json::json!({"i": 0})).unwrap();
        let last = chain.seal(&serde_json::json!({"i": 1})).unwrap();
        std::fs::write(&path, format!("{first}\n{filler}{last}\n")).unwrap();
        let (_, tail) = open_file(&path, "broker").unwrap();
        let head = tail.head.unwrap();
        assert_eq!(head.seq, 2);
        assert_eq!(head.prev, chain::read_line(&last).unwrap().hash);
        // A torn last line: cut off into `.torn`, and the chain continues
        // from the last complete line (the file verifies as one chain).
        let torn = "{\"chain\":\"broker\",\"se";
        std::fs::write(&path, format!("{first}\n{last}\n{torn}")).unwrap();
        let (file, tail) = open_file(&path, "broker").unwrap();
        assert_eq!(tail.head.clone().unwrap().seq, 2);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{first}\n{last}\n")
        );
        assert_eq!(
            std::fs::read_to_string(torn_path(&path)).unwrap(),
            format!("{torn}\n")
        );
        let mut out = Output::File(AppendFile::opened(file));
        let mut next = Chain::resume("broker", tail);
        let line = next.seal(&serde_json::json!({"i": 2})).unwrap();
        out.write_line(format!("{line}\n").as_bytes()).unwrap();
        let v = chain::verify(
            std::fs::File::open(&path)
                .map(std::io::BufReader::new)
                .unwrap(),
            false,
        )
        .unwrap();
        assert_eq!((v.lines, v.broken, v.torn_tail), (3, None, None));
        drop(out); // the writer is gone, and its lock on the file
                   // A torn line cut inside a multi-byte character, as the only line.
        std::fs::write(&path, &"{\"chain\":\"é".as_bytes()[..11]).unwrap();
        let (_, tail) = open_file(&path, "broker").unwrap();
        assert_eq!(tail, chain::Tail::default());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // An intact last line that only lacks its newline is kept.
        std::fs::write(&path, format!("{first}\n{last}")).unwrap();
        let (_, tail) = open_file(&path, "broker").unwrap();
        assert_eq!(tail.head.unwrap().seq, 2);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{first}\n{last}\n")
        );
        // An empty file.
        std::fs::write(&path, "").unwrap();
        assert_eq!(
            open_file(&path, "broker").unwrap().1,
            chain::Tail::default()
        );
    }

    fn file_sink(path: &Path) -> AuditSink<serde_json::Value> {
        test_sink(&AuditConfig {
            sink: AuditSinkKind::File,
            file: path.to_owned(),
            durable_timeout_ms: 2_000,
            ..Default::default()
        })
    }

    #[actix_web::test]
    async fn durable_records_are_on_disk_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = file_sink(&path);
        // Concurrent durable records share settles; each is acknowledged
        // only once its line is in the file.
        let waits = (0..64).map(|i| {
            let sink = sink.clone();
            let path = path.clone();
            async move {
                sink.record_durable(serde_json::json!({ "i": i }))
                    .await
                    .unwrap();
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.contains(&format!("\"i\":{i},\"hash\"")), "{i}");
            }
        });
        futures_util::future::join_all(waits).await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 64);
        let v = chain::verify(text.as_bytes(), false).unwrap();
        assert_eq!((v.lines, v.broken), (64, None));
    }

    #[test]
    fn overflowed_events_reach_the_queue_in_order_through_one_thread() {
        let (tx, mut rx) = mpsc::channel::<Message<u32>>(1);
        let overflow = Overflow::start(&tx).unwrap();
        tx.try_send(Message::Event(0, None, None)).ok().unwrap();
        for i in 1..=100 {
            overflow.push(Message::Event(i, None, None));
        }
        // The queue holds one; the rest wait in the overflow, in order.
        for want in 0..=100 {
            match rx.blocking_recv() {
                Some(Message::Event(got, _, _)) => assert_eq!(got, want),
                _ => panic!("event {want} lost"),
            }
        }
        assert_eq!(overflow.len(), 0);
        // One mover thread for the whole overflow, not one per event.
        let movers = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "atb-audit-wait")
            })
            .count();
        assert!(movers >= 1, "the mover thread runs");
        assert!(movers < 100, "{movers} mover threads");
    }

    /// A file that takes `room` more bytes, then fails (a disk filling up).
    struct FillingFile {
        bytes: Vec<u8>,
        room: usize,
    }

    impl Write for FillingFile {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::other("no space left on device"));
            }
            let n = buf.len().min(self.room);
            self.bytes.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Truncatable for FillingFile {
        fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
            self.bytes.truncate(len as usize);
            Ok(())
        }
    }

    #[test]
    fn a_line_written_in_part_is_cut_back_before_the_retry() {
        let mut f = AppendFile {
            file: FillingFile {
                bytes: Vec::new(),
                room: 10,
            },
            len: Some(0),
        };
        f.write_line(b"first\n").unwrap();
        // Only four bytes of the second line fit: the write fails, and the
        // fragment is gone.
        assert!(f.write_line(b"second line\n").is_err());
        assert_eq!(f.file.bytes, b"first\n");
        // Room again (the disk was cleaned up): the retry writes it whole.
        f.file.room = 100;
        f.write_line(b"second line\n").unwrap();
        assert_eq!(f.file.bytes, b"first\nsecond line\n");
        assert_eq!(f.len, Some(18));
    }

    #[actix_web::test]
    async fn a_lingering_writer_batches_events_and_wakes_for_durable_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // A linger far longer than the test may wait for a durable record.
        let sink = test_sink(&AuditConfig {
            sink: AuditSinkKind::File,
            file: path.clone(),
            durable_timeout_ms: 2_000,
            batch_linger_ms: 1_000,
            ..Default::default()
        });
        sink.record(serde_json::json!({"i": 0})).await;
        // The writer drained the queue and lingers: the next ordinary
        // events wait for it...
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        for i in 1..4 {
            sink.record(serde_json::json!({ "i": i })).await;
        }
        let lines = || std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines() < 4, "events written one by one, not lingered on");
        // ...but a durable record wakes it: it is acknowledged long before
        // the linger is over, and the events before it are written with it.
        let started = std::time::Instant::now();
        sink.record_durable(serde_json::json!({"i": 4}))
            .await
            .unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_millis(900),
            "the durable record waited out the linger: {:?}",
            started.elapsed()
        );
        assert_eq!(lines(), 5);
        // A flush wakes it too; nothing is lost and the chain is whole.
        sink.record(serde_json::json!({"i": 5})).await;
        sink.flush(std::time::Duration::from_millis(900)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let v = chain::verify(text.as_bytes(), false).unwrap();
        assert_eq!((v.lines, v.broken), (6, None));
    }

    #[actix_web::test]
    async fn a_durable_record_that_cannot_be_written_is_an_error() {
        // Every write to /dev/full fails (ENOSPC).
        let sink = file_sink(Path::new("/dev/full"));
        // Answered with the error at the first failure (not a timeout
        // after the retries).
        let r = sink.record_durable(serde_json::json!({"i": 0})).await;
        assert!(matches!(r, Err(DurableError::Write(_))), "{r:?}");
        // A durable record queued behind the retried one times out.
        let r = sink.record_durable(serde_json::json!({"i": 1})).await;
        assert!(matches!(r, Err(DurableError::Timeout(2_000))), "{r:?}");
    }

    #[test]
    fn only_the_first_writer_of_a_file_repairs_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut chain = Chain::new("broker", ChainHead::default());
        let first = chain.seal(&serde_json::json!({"i": 0})).unwrap();
        std::fs::write(&path, format!("{first}\n")).unwrap();
        let (mut held, _) = open_file(&path, "broker").unwrap();
        // The first writer is mid-line when a second one opens the file.
        held.write_all(b"{\"chain\":\"broker\",\"se").unwrap();
        let (_, tail) = open_file(&path, "agentauth").unwrap();
        assert_eq!(tail, chain::Tail::default());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with("\"se"),
            "the line in progress was touched: {text}"
        );
        assert!(!torn_path(&path).exists());
        // Once the first writer is gone (its lock with it), the next
        // first writer cuts the torn line.
        drop(held);
        let (_, tail) = open_file(&path, "broker").unwrap();
        assert_eq!(tail.head.unwrap().seq, 1);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{first}\n")
        );
    }

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
