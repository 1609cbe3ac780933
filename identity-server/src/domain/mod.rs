//! Parsed values and the rules of sign-up. No I/O here: every type is built by a `parse` (or
//! `generate`) that enforces its rules once, so code holding one never checks it again.

mod display_name;
mod email;
mod email_budget;
mod locale;
mod password;
mod verification;

pub use display_name::DisplayName;
pub use email::EmailAddress;
pub use email_budget::{EmailBudget, Limits, Spend};
pub use locale::Locale;
pub use password::Password;
pub use verification::{CodeKey, TokenHash, VerificationCode, VerificationToken};

/// A refresh token: the same kind of opaque secret as a verification link token.
pub type RefreshToken = VerificationToken;

/// Why an input was rejected, in words fit for the caller (it becomes the description of a
/// `google.rpc.BadRequest` field violation). It never echoes the input, which may be a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

/// Where a user stands; stored as text in `users.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    /// Registered; the address is not verified yet.
    PendingVerification,
    /// The address is verified.
    Active,
}

impl UserStatus {
    /// The database representation.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingVerification => "pending_verification",
            Self::Active => "active",
        }
    }

    /// Reads the database representation.
    pub fn from_db(value: &str) -> Option<Self> {
        match value {
            "pending_verification" => Some(Self::PendingVerification),
            "active" => Some(Self::Active),
            _ => None,
        }
    }
}
