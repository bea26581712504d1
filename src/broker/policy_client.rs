//! The policy client (design card: PolicyClient): one decision per
//! request from the configured engine — the embedded regorus pool
//! (`policy::embedded`, its own threads, a share per tenant) or a remote
//! OPA's REST API. Every engine error is a deny upstream of here; this
//! module only routes the call.

use std::time::Duration;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::config::PolicyEngine;
use crate::policy::embedded::{BundleError, EmbeddedPool, PolicyBundle};
use crate::policy::input::DecisionInput;
use crate::policy::{Decision, PolicyError};

/// Where decisions come from.
pub enum PolicyClient {
    Embedded(EmbeddedPool),
    Opa {
        url: String,
        /// Probed by `/ready`.
        health_url: String,
        timeout: Duration,
    },
}

impl PolicyClient {
    pub fn engine_label(&self) -> &'static str {
        match self {
            PolicyClient::Embedded(_) => "embedded",
            PolicyClient::Opa { .. } => "opa",
        }
    }

    /// One decision for `tenant`; `client` is the calling worker's HTTP
    /// client.
    pub async fn decide(
        &self,
        client: &awc::Client,
        tenant: &str,
        input: &DecisionInput<'_>,
    ) -> Result<Decision, PolicyError> {
        match self {
            PolicyClient::Embedded(pool) => pool.decide(tenant, input.to_rego()).await,
            PolicyClient::Opa { url, timeout, .. } => {
                crate::policy::opa::decide(client, url, *timeout, &input.to_json()).await
            }
        }
    }
}

impl PolicyClient {
    /// The actions the running policy constrains by request parameters
    /// (for OPA: those of the policy built into the binary).
    pub fn constrained_actions(&self) -> std::sync::Arc<std::collections::HashSet<String>> {
        match self {
            PolicyClient::Embedded(pool) => pool.constrained(),
            PolicyClient::Opa { .. } => {
                static OPA: std::sync::OnceLock<std::sync::Arc<std::collections::HashSet<String>>> =
                    std::sync::OnceLock::new();
                OPA.get_or_init(|| {
                    std::sync::Arc::new(crate::policy::embedded_constrained_actions().clone())
                })
                .clone()
            }
        }
    }

    /// The configured engine: a started embedded pool, or OPA's REST API.
    pub fn start(config: &Config, metrics: &Metrics) -> Result<Self, BundleError> {
        let p = &config.policy;
        if p.engine == PolicyEngine::Opa {
            return Ok(PolicyClient::Opa {
                url: p.opa_decision_url.clone(),
                health_url: p.opa_health(),
                timeout: Duration::from_millis(p.opa_timeout_ms),
            });
        }
        let bundle = PolicyBundle::from_config(config)?;
        let threads = if p.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            p.threads
        };
        EmbeddedPool::start(
            bundle,
            crate::policy::DECISION_RULE,
            threads,
            p.queue_capacity,
            p.queue_per_tenant,
            &metrics.actors,
        )
        .map(PolicyClient::Embedded)
    }
}
