//! The one place where errors become gRPC statuses. Every status carries a
//! `google.rpc.ErrorInfo` (domain `identity.v1`, a stable reason); malformed input carries a
//! `google.rpc.BadRequest`, overload a `google.rpc.RetryInfo`. Internal details are logged here
//! and never sent to the caller.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    abuse::AdmitError,
    challenge::ChallengeError,
    db::StoreError,
    domain::Invalid,
    password_reset::ResetError,
    registration::{RegisterError, ResendError, VerifyEmailError},
    sessions::{LoginError, RefreshError},
};

/// `ErrorInfo.domain` of every error.
pub const DOMAIN: &str = "identity.v1";

/// How long a caller should wait before retrying while the database is unreachable.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// Fields that failed to parse, by their path in the request ("email", "email_code.code").
#[derive(Debug, Default)]
pub struct FieldViolations(Vec<(&'static str, Invalid)>);

impl FieldViolations {
    /// Keeps the value if it parsed, or records why field `field` did not.
    pub fn check<T>(&mut self, field: &'static str, parsed: Result<T, Invalid>) -> Option<T> {
        parsed.map_err(|why| self.0.push((field, why))).ok()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records a violation directly.
    pub fn add(&mut self, field: &'static str, why: Invalid) {
        self.0.push((field, why));
    }
}

impl From<FieldViolations> for Status {
    fn from(violations: FieldViolations) -> Self {
        let message = violations
            .0
            .iter()
            .map(|(field, why)| format!("{field} {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut details = ErrorDetails::new();
        details.set_error_info("INVALID_ARGUMENT", DOMAIN, HashMap::new());
        for (field, why) in &violations.0 {
            details.add_bad_request_violation(*field, why.to_string());
        }
        Status::with_error_details(Code::InvalidArgument, message, details)
    }
}

fn status(code: Code, reason: &str, message: &str) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new()),
    )
}

fn retry_later(code: Code, reason: &str, message: &str, after: Duration) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new());
    details.set_retry_info(Some(after));
    Status::with_error_details(code, message, details)
}

fn unexpected(error: &(dyn std::error::Error + 'static)) -> Status {
    tracing::error!(error.message = %error, error.cause_chain = ?error, "request failed");
    status(Code::Internal, "INTERNAL", "internal error")
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error.message = %cause, "database unavailable");
                retry_later(
                    Code::Unavailable,
                    "DATABASE_UNAVAILABLE",
                    "the database is unreachable or did not answer in time; nothing was changed, retry later",
                    UNAVAILABLE_RETRY,
                )
            }
            other @ (StoreError::Query(_) | StoreError::Unexpected(_)) => unexpected(&other),
        }
    }
}

impl From<AdmitError> for Status {
    /// RESOURCE_EXHAUSTED, reason RATE_LIMITED, with the limit's action and scope (`ip`, `ip48`,
    /// `ip32` or `address`, never the address itself) in the ErrorInfo metadata and the wait in
    /// RetryInfo.
    fn from(error: AdmitError) -> Self {
        match error {
            AdmitError::RateLimited {
                action,
                scope,
                retry_after,
            } => {
                metrics::counter!(
                    crate::metrics::REFUSALS,
                    "reason" => "rate_limited",
                    "action" => action.name(),
                    "scope" => scope.name(),
                )
                .increment(1);
                let metadata = HashMap::from([
                    ("action".to_owned(), action.name().to_owned()),
                    ("scope".to_owned(), scope.name().to_owned()),
                ]);
                let mut details = ErrorDetails::with_error_info("RATE_LIMITED", DOMAIN, metadata);
                details.set_retry_info(Some(retry_after));
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "too many {action} calls per {scope}; retry after the delay in RetryInfo"
                    ),
                    details,
                )
            }
            AdmitError::Store(e) => e.into(),
        }
    }
}

impl From<RegisterError> for Status {
    fn from(error: RegisterError) -> Self {
        match error {
            RegisterError::EmailTaken => status(
                Code::AlreadyExists,
                "EMAIL_ALREADY_REGISTERED",
                "this email address is already registered",
            ),
            RegisterError::EmailBudgetExhausted { retry_after } => retry_later(
                Code::ResourceExhausted,
                "EMAIL_BUDGET_EXHAUSTED",
                "no more emails may be sent to this address for now; retry after the delay in RetryInfo",
                retry_after,
            ),
            RegisterError::Overloaded { retry_after } => retry_later(
                Code::ResourceExhausted,
                "OVERLOADED",
                "the service is busy; retry after the delay in RetryInfo",
                retry_after,
            ),
            RegisterError::Store(e) => e.into(),
            RegisterError::Unexpected(e) => unexpected(e.as_ref()),
        }
    }
}

impl From<VerifyEmailError> for Status {
    fn from(error: VerifyEmailError) -> Self {
        use VerifyEmailError as E;
        match error {
            E::TokenInvalid => status(
                Code::InvalidArgument,
                "VERIFICATION_TOKEN_INVALID",
                "the verification token is not valid",
            ),
            E::CodeInvalid => status(
                Code::InvalidArgument,
                "VERIFICATION_CODE_INVALID",
                "the verification code is not valid for this address",
            ),
            E::Expired => status(
                Code::FailedPrecondition,
                "VERIFICATION_EXPIRED",
                "the verification token or code has expired; request a new email",
            ),
            E::AlreadyVerified => status(
                Code::FailedPrecondition,
                "ALREADY_VERIFIED",
                "this email address is already verified",
            ),
            E::TooManyAttempts => status(
                Code::ResourceExhausted,
                "TOO_MANY_ATTEMPTS",
                "too many wrong codes; request a new verification email",
            ),
            E::WeakPassword(why) => {
                let mut violations = FieldViolations::default();
                violations.add("password", why);
                violations.into()
            }
            E::Overloaded { retry_after } => retry_later(
                Code::ResourceExhausted,
                "OVERLOADED",
                "the service is busy; retry after the delay in RetryInfo",
                retry_after,
            ),
            E::Store(e) => e.into(),
            E::Unexpected(e) => unexpected(e.as_ref()),
        }
    }
}

impl From<ResendError> for Status {
    fn from(error: ResendError) -> Self {
        match error {
            ResendError::Store(e) => e.into(),
            ResendError::Unexpected(e) => unexpected(e.as_ref()),
        }
    }
}

/// UNAUTHENTICATED with `reason`.
pub fn unauthenticated(reason: &str, message: &str) -> Status {
    status(Code::Unauthenticated, reason, message)
}

impl From<LoginError> for Status {
    fn from(error: LoginError) -> Self {
        match error {
            LoginError::InvalidCredentials => unauthenticated(
                "INVALID_CREDENTIALS",
                "the email address or the password is wrong",
            ),
            LoginError::EmailNotVerified => status(
                Code::FailedPrecondition,
                "EMAIL_NOT_VERIFIED",
                "verify the email address before signing in",
            ),
            LoginError::Throttled { retry_after } => retry_later(
                Code::ResourceExhausted,
                "LOGIN_THROTTLED",
                "too many failed sign-ins for this address; retry after the delay in RetryInfo",
                retry_after,
            ),
            LoginError::Overloaded { retry_after } => retry_later(
                Code::ResourceExhausted,
                "OVERLOADED",
                "the service is busy; retry after the delay in RetryInfo",
                retry_after,
            ),
            LoginError::Store(e) => e.into(),
            LoginError::Unexpected(e) => unexpected(e.as_ref()),
        }
    }
}

impl From<RefreshError> for Status {
    fn from(error: RefreshError) -> Self {
        match error {
            RefreshError::Invalid => unauthenticated(
                "REFRESH_TOKEN_INVALID",
                "the refresh token is invalid, expired or revoked; sign in again",
            ),
            RefreshError::Store(e) => e.into(),
            RefreshError::Unexpected(e) => unexpected(e.as_ref()),
        }
    }
}

impl From<ResetError> for Status {
    fn from(error: ResetError) -> Self {
        match error {
            ResetError::TokenInvalid => status(
                Code::InvalidArgument,
                "RESET_TOKEN_INVALID",
                "the reset link is not valid",
            ),
            ResetError::TokenExpired => status(
                Code::FailedPrecondition,
                "RESET_TOKEN_EXPIRED",
                "the reset link has expired; request a new one",
            ),
            ResetError::TokenUsed => status(
                Code::FailedPrecondition,
                "RESET_TOKEN_USED",
                "the reset link was already used; request a new one",
            ),
            ResetError::WeakPassword(why) => {
                let mut violations = FieldViolations::default();
                violations.add("new_password", why);
                violations.into()
            }
            ResetError::Overloaded { retry_after } => retry_later(
                Code::ResourceExhausted,
                "OVERLOADED",
                "the service is busy; retry after the delay in RetryInfo",
                retry_after,
            ),
            ResetError::Store(e) => e.into(),
            ResetError::Unexpected(e) => unexpected(e.as_ref()),
        }
    }
}

impl From<ChallengeError> for Status {
    fn from(error: ChallengeError) -> Self {
        let refused = |reason: &'static str| {
            metrics::counter!(crate::metrics::REFUSALS, "reason" => reason).increment(1);
        };
        match error {
            ChallengeError::Required => {
                refused("challenge_required");
                status(
                    Code::FailedPrecondition,
                    "CHALLENGE_REQUIRED",
                    "solve a proof-of-work challenge (ChallengeService.CreateChallenge) and send it in the altcha field",
                )
            }
            ChallengeError::Invalid => {
                refused("challenge_invalid");
                status(
                    Code::FailedPrecondition,
                    "CHALLENGE_INVALID",
                    "the proof-of-work solution is not valid; solve a new challenge",
                )
            }
            ChallengeError::Disabled => status(
                Code::FailedPrecondition,
                "CHALLENGE_DISABLED",
                "proof-of-work challenges are disabled on this server",
            ),
            ChallengeError::Store(e) => e.into(),
        }
    }
}
