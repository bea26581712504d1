//! Proof-of-Authorization mandates: finding them on a request, verifying
//! their signature, and checking their claims. Plain logic; the broker
//! pipeline calls it on the request's own task.

pub mod claims;
pub mod jwks;
pub mod keys;
pub mod presented;
pub mod token;

use std::borrow::Cow;

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
