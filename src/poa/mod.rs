//! Proof-of-Authorization mandates: finding them on a request, verifying
//! their signature, and checking their claims. Plain logic; the broker
//! pipeline calls it on the request's own task.

pub mod claims;
pub mod config;
pub mod jwks;
pub mod keys;
pub mod presented;
pub mod token;

use std::borrow::Cow;

/// Longest action name (`act`, `X-ATB-Action`).
pub const MAX_ACTION_LEN: usize = 256;

/// An action name as the catalogue spells them: 1 to 256 letters, digits,
/// `.`, `_`, `-` or `:`.
pub fn is_action_name(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= MAX_ACTION_LEN
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// Why a mandate is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoaError {
    /// 401 `poa_invalid`.
    Invalid(Cow<'static, str>),
    /// 401 `poa_expired`.
    Expired(Cow<'static, str>),
}

impl PoaError {
    pub fn invalid(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::Invalid(reason.into())
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Invalid(r) | Self::Expired(r) => r,
        }
    }

    /// The `result` label of `atb_poa_validations_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Expired(_) => "expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names() {
        for ok in [
            "crm.contact.read",
            "a",
            "x:y-z_1",
            &"a".repeat(MAX_ACTION_LEN),
        ] {
            assert!(is_action_name(ok), "{ok}");
        }
        let long = "a".repeat(MAX_ACTION_LEN + 1);
        for bad in ["", "a b", "a/b", "a;b", "é", "a\u{0}", long.as_str()] {
            assert!(!is_action_name(bad), "{bad:?}");
        }
    }
}
