//! The `[policy]` section.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyEngine {
    /// regorus, in process.
    Embedded,
    /// A remote OPA's REST API.
    Opa,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub engine: PolicyEngine,
    /// Directory of `.rego` files for the embedded engine; unset = the
    /// policy built into the binary (`policies/atb/poa.rego`).
    pub dir: Option<PathBuf>,
    /// JSON file loaded as the policy's `data` document.
    pub data_file: Option<PathBuf>,
    /// Threads evaluating policy (embedded engine); 0 = one per core.
    pub threads: usize,
    /// Evaluations that may wait for a thread before requests get 503.
    pub queue_capacity: usize,
    /// Evaluations one tenant may have queued or running at once, so one
    /// tenant cannot fill the queue for everyone (its own calls get 503).
    pub queue_per_tenant: usize,
    /// Time limit of one embedded evaluation, in milliseconds.
    pub eval_timeout_ms: u64,
    /// OPA decision endpoint (engine = "opa").
    pub opa_decision_url: String,
    /// Time limit of one OPA call, in milliseconds.
    pub opa_timeout_ms: u64,
    /// OPA's health endpoint, probed by the broker's `/ready` (engine =
    /// "opa"); default: `/health` on the decision URL's host.
    pub opa_health_url: Option<String>,
    /// How often `dir` and `data_file` are re-read (embedded engine); a
    /// changed bundle that compiles replaces the running one, a bad one is
    /// refused and the running one stays. 0 = only on
    /// `POST /admin/policy/reload`.
    pub reload_seconds: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            engine: PolicyEngine::Embedded,
            dir: None,
            data_file: None,
            threads: 0,
            queue_capacity: 1024,
            queue_per_tenant: 256,
            eval_timeout_ms: 100,
            opa_decision_url: "http://localhost:8181/v1/data/atb/poa/decision".into(),
            opa_timeout_ms: 1500,
            opa_health_url: None,
            reload_seconds: 30,
        }
    }
}

impl PolicyConfig {
    /// Where `/ready` probes OPA: `opa_health_url`, or `/health` on the
    /// decision URL's scheme and host.
    pub fn opa_health(&self) -> String {
        if let Some(u) = &self.opa_health_url {
            return u.clone();
        }
        match self.opa_decision_url.parse::<actix_web::http::Uri>() {
            Ok(uri) => format!(
                "{}://{}/health",
                uri.scheme_str().unwrap_or("http"),
                uri.authority().map_or("localhost:8181", |a| a.as_str())
            ),
            Err(_) => "http://localhost:8181/health".into(),
        }
    }
}
