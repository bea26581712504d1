//! The remote OPA option: `POST {OPA_DECISION_URL}` with `{"input": …}`,
//! bounded by a timeout; every failure is a [`PolicyError`] (fail closed):
//! refused or broken connections `Unreachable`, no answer in time
//! `Timeout`, a non-2xx status `Engine`, a body that is no decision
//! `BadDecision`.

use std::time::Duration;

use serde_json::Value;

use super::{Decision, PolicyError};

/// Largest OPA response read.
const MAX_RESPONSE: usize = 1024 * 1024;

/// Asks OPA for a decision with `client` (one per HTTP worker).
pub async fn decide(
    client: &awc::Client,
    url: &str,
    timeout: Duration,
    input: &Value,
) -> Result<Decision, PolicyError> {
    let mut response = client
        .post(url)
        .timeout(timeout)
        .send_json(&serde_json::json!({ "input": input }))
        .await
        .map_err(|e| match e {
            awc::error::SendRequestError::Timeout => PolicyError::Timeout(timeout.as_millis()),
            e => PolicyError::Unreachable(e.to_string()),
        })?;
    let status = response.status();
    let body = response
        .body()
        .limit(MAX_RESPONSE)
        .await
        .map_err(|e| PolicyError::Unreachable(e.to_string()))?;
    if !status.is_success() {
        return Err(PolicyError::Engine(format!("OPA answered {status}")));
    }
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| PolicyError::BadDecision(format!("OPA body is not JSON: {e}")))?;
    let result = doc.get("result").unwrap_or(&Value::Null);
    Decision::from_value(result)
}
