//! The `[audit]` section.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where audit lines go (each process writes its own hash chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSinkKind {
    Stdout,
    File,
    Http,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `stdout` (default; logs go to stderr), `file` or `http`.
    pub sink: AuditSinkKind,
    /// The append-only file for `sink = "file"`; a restart continues the
    /// chain written there.
    pub file: PathBuf,
    /// Events waiting for the writer; when full, requests wait for room
    /// (nothing is dropped).
    pub queue_capacity: usize,
    /// Events one tenant may have waiting; past it, that tenant's requests
    /// wait for room while other tenants' events go on through.
    pub queue_per_tenant: usize,
    /// `sink = "http"`: the collector receiving `POST`s of NDJSON batches
    /// (retried until it answers 2xx).
    pub http_url: String,
    /// `Authorization` header value for the collector (prefer the
    /// `AUDIT_SINK_AUTH` environment variable).
    pub http_authorization: Option<String>,
    /// Most lines in one batch (a batch is also sent whenever the queue
    /// drains).
    pub http_batch_lines: usize,
    /// How long a request of an `audit_required` tenant waits for its
    /// pre-forward record to be durable (written and fsynced, or posted)
    /// before it is refused with 503 `audit_unavailable`.
    pub durable_timeout_ms: u64,
    /// How long the writer, having drained the queue, lets events gather
    /// before it looks again (0: it waits for the next event at once). It
    /// then wakes at most every `batch_linger_ms` instead of once per
    /// request, and settles (flush, fsync, post) once per batch. An
    /// ordinary event may reach the sink up to this much later (the crash
    /// loss window grows by it); a durable record or a flush wakes the
    /// writer at once.
    pub batch_linger_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: AuditSinkKind::Stdout,
            file: PathBuf::new(),
            queue_capacity: 65_536,
            queue_per_tenant: 16_384,
            http_url: String::new(),
            http_authorization: None,
            http_batch_lines: 500,
            durable_timeout_ms: 2_000,
            batch_linger_ms: 5,
        }
    }
}
