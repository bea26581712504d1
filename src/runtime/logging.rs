//! Structured logs through `tracing`: JSON lines (default) or text.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// `[logging] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `debug`, `atb=debug,actix_web=info`, …
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("config key logging.level: {level:?} is not a valid filter: {reason}")]
    Filter { level: String, reason: String },
    #[error("cannot install the logger: {0}")]
    Install(String),
}

/// Installs the global subscriber. Logs go to stderr; stdout is reserved for
/// audit events.
pub fn init(config: &LoggingConfig) -> Result<(), LoggingError> {
    let filter = EnvFilter::try_new(&config.level).map_err(|e| LoggingError::Filter {
        level: config.level.clone(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| LoggingError::Install(e.to_string()))
}
