//! Environment overrides: typed readers of one variable each, so a bad
//! value is an error naming the variable, never a silent default. Depends
//! on nothing else in the crate but `config::error`.

use super::error::ConfigError;

pub fn env_parsed<T: std::str::FromStr>(
    env: EnvLookup<'_>,
    var: &'static str,
    what: &str,
) -> Result<Option<T>, ConfigError> {
    match env(var) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| ConfigError::Env {
            var,
            message: format!("{v:?} is not {what}"),
        }),
    }
}
pub fn env_flag(env: EnvLookup<'_>, var: &'static str) -> Result<Option<bool>, ConfigError> {
    match env(var) {
        None => Ok(None),
        Some(v) => parse_bool(&v).map(Some).ok_or_else(|| ConfigError::Env {
            var,
            message: format!("{v:?} is not a boolean (true/false, 1/0, yes/no, on/off)"),
        }),
    }
}
pub fn env_choice<T: Copy>(
    env: EnvLookup<'_>,
    var: &'static str,
    options: &[(&str, T)],
) -> Result<Option<T>, ConfigError> {
    let Some(v) = env(var) else {
        return Ok(None);
    };
    let wanted = v.trim().to_ascii_lowercase();
    options
        .iter()
        .find(|(name, _)| *name == wanted)
        .map(|(_, value)| Some(*value))
        .ok_or_else(|| ConfigError::Env {
            var,
            message: format!(
                "{v:?} is not one of {}",
                options
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

/// Source of environment variables (a function so tests need not touch the
/// process environment).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Booleans as operators write them; anything else is an error, not a default.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Reads the real process environment.
pub fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}
