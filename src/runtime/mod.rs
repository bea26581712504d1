//! Process plumbing shared by the broker and AgentAuth, and nothing else:
//! TLS listeners and outbound clients, shutdown signals and drain, logging,
//! the wall clock and secret-file writing. No module here knows about
//! tenants, mandates or policy.

pub mod ca_bundle;
pub mod clock;
pub mod drain;
pub mod files;
pub mod graceful_stop;
pub mod held_body;
pub mod logging;
pub mod open_connections;
pub mod open_files;
pub mod tls;

/// A component that could not start: which one, and its own typed error.
#[derive(Debug, thiserror::Error)]
#[error("{component}: {source}")]
pub struct StartError {
    pub component: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Names the component a start-up step belongs to.
pub trait Starting<T> {
    fn starting(self, component: &'static str) -> Result<T, StartError>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> Starting<T> for Result<T, E> {
    fn starting(self, component: &'static str) -> Result<T, StartError> {
        self.map_err(|e| StartError {
            component,
            source: e.into(),
        })
    }
}

/// Resolves on the first SIGTERM or SIGINT and names it; the caller drains.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            tracing::error!("cannot install signal handlers; SIGTERM will not drain");
            std::future::pending().await
        }
    }
}
