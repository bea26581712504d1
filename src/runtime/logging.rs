//! Structured logs through `tracing`: JSON lines (default) or text.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global subscriber. Logs go to stderr; stdout is reserved for
/// audit events.
pub fn init(config: &LoggingConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.level).map_err(|e| {
        format!(
            "config key logging.level: {:?} is not a valid filter: {e}",
            config.level
        )
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
    result.map_err(|e| format!("cannot install the logger: {e}"))
}
