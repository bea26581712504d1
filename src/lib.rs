//! ATB — the Agent Trust Broker.
//!
//! Plain logic lives in small modules that unit tests drive directly;
//! `broker` wires them into actix-web listeners and supervised actors
//! (from the `atb-actors` crate).

pub mod agentauth;
pub mod alloc_count;
pub mod audit;
pub mod bench;
pub mod biscuit;
pub mod broker;
pub mod catalog;
pub mod config;
pub mod credential;
pub mod dev;
pub mod error;
pub mod metrics;
pub mod poa;
pub mod policy;
pub mod routes;
pub mod runtime;
pub mod spiffe;
pub mod store;
pub mod strict_json;
pub mod tenant;

/// At most the first `chars` characters of `s`: how much of a
/// client-supplied string a reason or log line echoes.
pub fn clip(s: &str, chars: usize) -> &str {
    match s.char_indices().nth(chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The admin token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("admin.token_file {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("admin.token_file {}: the token must be at least 16 characters", .0.display())]
    TooShort(std::path::PathBuf),
}

/// The admin API token from `admin.token` or `admin.token_file`.
pub fn admin_token(config: &config::Config) -> Result<Option<String>, AdminTokenError> {
    if let Some(t) = &config.admin.token {
        return Ok(Some(t.trim().to_owned()));
    }
    match &config.admin.token_file {
        None => Ok(None),
        Some(path) => {
            let token = std::fs::read_to_string(path).map_err(|source| AdminTokenError::Read {
                path: path.clone(),
                source,
            })?;
            let token = token.trim().to_owned();
            if token.len() < 16 {
                return Err(AdminTokenError::TooShort(path.clone()));
            }
            Ok(Some(token))
        }
    }
}
