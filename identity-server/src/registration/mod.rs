//! The sign-up use cases: [`Registration::register`], [`Registration::verify_email`] and
//! [`Registration::resend_verification_email`]. They own the transactions; the gRPC layer only
//! translates requests and errors.
//!
//! An address belongs to its active account. Until one exists, every Register of the address
//! starts a pending registration of its own (its own password hash and secrets); verifying with
//! a secret activates the registration it was sent for and deletes the others, so whoever reads
//! the mailbox ends up with the password they chose. Every transaction that touches the rows of
//! an address first takes the address's advisory lock (`db::email_budget::lock_address`), then
//! locks the rows in id order; the email budget is spent under the same lock.

mod register;
mod resend;
mod verify;

use std::sync::Arc;

use diesel_async::AsyncPgConnection;
use identity_proto::outbox::EmailVerificationV1;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pub use register::{MAX_PENDING_PER_ADDRESS, NewRegistration, RegisterError};
pub use resend::{ResendError, ResendOutcome};
pub use verify::{Proof, Verification, VerifyEmailError};

use crate::{
    clock::Clock,
    db::{self, StoreError},
    domain::{CodeKey, EmailBudget, VerificationCode, VerificationToken},
    hashing::PasswordHasher,
};

/// The rules' tunable numbers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a link token and code stay valid.
    pub verification_ttl: Duration,
    /// Least time between two verification emails to one account.
    pub resend_cooldown: Duration,
    /// Wrong codes tolerated per verification email.
    pub max_wrong_codes: i32,
    /// Wrong codes tolerated per address, across all its registrations and verification
    /// emails; past it only a link verifies.
    pub max_wrong_codes_per_account: i32,
    /// Whether Register answers an address with an active account as it answers a new one
    /// (and tells the owner by email) instead of ALREADY_EXISTS.
    pub enumeration_safe: bool,
    /// Emails one address may be sent, shared with password reset.
    pub email_budget: EmailBudget,
    /// Whether domain events are queued ([`db::outbox::Events`]).
    pub events: db::outbox::Events,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            verification_ttl: Duration::hours(24),
            resend_cooldown: Duration::seconds(60),
            max_wrong_codes: 5,
            max_wrong_codes_per_account: 15,
            enumeration_safe: true,
            email_budget: EmailBudget::default(),
            events: db::outbox::Events::default(),
        }
    }
}

/// The sign-up service and what it depends on.
pub struct Registration {
    pool: db::Pool,
    hasher: PasswordHasher,
    code_key: CodeKey,
    clock: Arc<dyn Clock>,
    settings: Settings,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("hasher", &self.hasher)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Who a verification email goes to.
#[derive(Clone, Copy)]
struct Recipient<'a> {
    user_id: Uuid,
    email: &'a str,
    display_name: &'a str,
    locale: &'a str,
}

impl Registration {
    /// Assembles the service.
    pub fn new(
        pool: db::Pool,
        hasher: PasswordHasher,
        code_key: CodeKey,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        Self {
            pool,
            hasher,
            code_key,
            clock,
            settings,
        }
    }

    /// Creates a fresh token and code for `to`, stores their hashes and queues the email that
    /// carries them, all inside the caller's transaction.
    async fn issue_verification(
        &self,
        conn: &mut AsyncPgConnection,
        to: &Recipient<'_>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let token = VerificationToken::generate();
        let code = VerificationCode::generate();
        let secret_id = Uuid::now_v7();
        let expires_at = now + self.settings.verification_ttl;

        db::verification::insert(
            conn,
            &db::verification::NewSecret {
                id: secret_id,
                user_id: to.user_id,
                token_hash: &token.hash().0,
                code_mac: &self.code_key.sign(secret_id, &code),
                created_at: now,
                expires_at,
            },
        )
        .await?;

        let payload = EmailVerificationV1 {
            recipient: to.email.to_owned(),
            display_name: to.display_name.to_owned(),
            locale: to.locale.to_owned(),
            token: token.expose().to_owned(),
            code: code.expose().to_owned(),
            expires_at,
        };
        db::outbox::enqueue_for_user(conn, to.user_id, EmailVerificationV1::KIND, &payload).await?;
        Ok(())
    }
}
