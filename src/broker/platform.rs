//! The platform token (SPEC §3 `platform.sub`): an optional OIDC JWT in
//! `X-ATB-Platform-Token`, verified against the agent's tenant's platform
//! issuer (`[tenants.platform]`) with the approver verifier's code
//! (`agentauth::approver`: RS256/ES256/EdDSA, never `none` or HMAC; keys
//! from PEM files and/or a JWKS fetched on demand through the shared
//! single-flight cache). Its verified subject fills `platform.sub`.
//!
//! Fail closed: a token that is present but invalid, or present for a
//! tenant with no platform issuer, is refused; only an absent token leaves
//! `platform` empty (so binding modes other than `none` deny).

use std::time::Duration;

use serde_json::Value;

use crate::agentauth::approver::{check_registered, ApproverKeys, AuthError, KeyError};
use crate::poa::jwks::JwksTimings;
use crate::tenant::PlatformConfig;

/// The request header carrying the platform token.
pub const PLATFORM_TOKEN_HEADER: &str = "x-atb-platform-token";

/// Longest subject accepted as `platform.sub`.
const MAX_SUB_LEN: usize = 512;

/// How long fetched platform keys stay usable while the issuer's JWKS
/// cannot be fetched.
const PLATFORM_KEYS_STALE: Duration = Duration::from_secs(3600);

/// One tenant's platform issuer: its settings and keys.
pub struct PlatformVerifier {
    config: PlatformConfig,
    keys: ApproverKeys,
}

impl PlatformVerifier {
    /// Loads the PEM keys and prepares the JWKS cache (nothing is fetched
    /// until a token needs a key).
    pub fn new(
        tenant: &str,
        config: &PlatformConfig,
        tls: openssl::ssl::SslConnector,
    ) -> Result<Self, KeyError> {
        let keys = ApproverKeys::from_sources(
            &format!("platform:{tenant}"),
            config.jwks_url.as_deref(),
            &config.public_key_files,
            JwksTimings {
                refresh: Duration::from_secs(300),
                cooldown: Duration::from_secs(30),
                negative_ttl: Duration::from_secs(60),
                stale_after: PLATFORM_KEYS_STALE,
                timeout: Duration::from_secs(5),
            },
            tls,
        )?;
        Ok(Self {
            config: config.clone(),
            keys,
        })
    }

    /// The verified subject of `token` at `now` (Unix seconds): signature,
    /// `iss`, `aud`, `exp`/`nbf`/`iat` with leeway, and a non-empty string
    /// in the configured subject claim.
    pub async fn verify(&self, token: &str, now: i64) -> Result<String, AuthError> {
        let claims = self.keys.verify(token, &self.config.algorithms).await?;
        check_registered(
            &claims,
            &self.config.issuer,
            &self.config.audience,
            self.config.leeway_seconds,
            now,
        )?;
        subject(&claims, &self.config.subject_claim)
    }
}

/// The subject claim: a non-empty string of at most [`MAX_SUB_LEN`] bytes
/// without control characters.
fn subject(claims: &Value, claim: &str) -> Result<String, AuthError> {
    match claims.get(claim).and_then(Value::as_str) {
        Some(s) if !s.is_empty() && s.len() <= MAX_SUB_LEN && !s.chars().any(char::is_control) => {
            Ok(s.to_owned())
        }
        _ => Err(AuthError(format!(
            "the token has no usable {claim} claim (a non-empty string)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_subject_must_be_a_plain_string() {
        assert_eq!(subject(&json!({"sub": "a"}), "sub").unwrap(), "a");
        assert_eq!(subject(&json!({"oid": "x", "sub": 1}), "oid").unwrap(), "x");
        for bad in [
            json!({}),
            json!({"sub": ""}),
            json!({"sub": 7}),
            json!({"sub": "a\nb"}),
        ] {
            assert!(subject(&bad, "sub").is_err(), "{bad}");
        }
        let long = "x".repeat(MAX_SUB_LEN + 1);
        assert!(subject(&json!({ "sub": long }), "sub").is_err());
    }
}
