//! Password reset: [`PasswordReset::request`] emails a single-use link to an active account
//! (answering the same whether or not one exists), [`PasswordReset::reset`] sets the new
//! password, signs the user out everywhere and emails a notice.

use std::{sync::Arc, time::Duration as StdDuration};

use diesel_async::{AsyncConnection, AsyncPgConnection};
use identity_proto::{
    identity::events::v1::{RevocationReason, SessionRevoked, UserPasswordChanged},
    outbox::{EmailPasswordChangedV1, EmailPasswordResetV1},
};
use time::{Duration, OffsetDateTime};
use tracing::field;
use uuid::Uuid;

use crate::{
    clock::Clock,
    db::{self, StoreError, retry::MaybeStoreError},
    domain::{EmailAddress, EmailBudget, Invalid, Password, Spend, TokenHash, VerificationToken},
    hashing::{HashError, PasswordHasher},
};

/// The rules' numbers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a reset link works.
    pub token_ttl: Duration,
    /// Least time between two reset emails to one account.
    pub cooldown: Duration,
    /// Emails one address may be sent, shared with sign-up. The notice after a completed
    /// reset is not counted: a user must always learn that their password changed.
    pub email_budget: EmailBudget,
    /// Whether domain events are queued ([`db::outbox::Events`]).
    pub events: db::outbox::Events,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            token_ttl: Duration::hours(1),
            cooldown: Duration::seconds(60),
            email_budget: EmailBudget::default(),
            events: db::outbox::Events::default(),
        }
    }
}

/// Why a reset failed.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("unknown reset token")]
    TokenInvalid,
    #[error("the reset link has expired")]
    TokenExpired,
    #[error("the reset link was already used")]
    TokenUsed,
    /// The new password fails the policy.
    #[error("new_password {0}")]
    WeakPassword(Invalid),
    #[error("password hashing is saturated")]
    Overloaded { retry_after: StdDuration },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<diesel::result::Error> for ResetError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Store(error.into())
    }
}

impl MaybeStoreError for ResetError {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HashError> for ResetError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Overloaded { retry_after } => Self::Overloaded { retry_after },
            HashError::Failed(e) => Self::Unexpected(e),
        }
    }
}

/// The password-reset service.
pub struct PasswordReset {
    pool: db::Pool,
    hasher: PasswordHasher,
    clock: Arc<dyn Clock>,
    settings: Settings,
}

impl std::fmt::Debug for PasswordReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordReset")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PasswordReset {
    /// Assembles the service.
    pub fn new(
        pool: db::Pool,
        hasher: PasswordHasher,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        Self {
            pool,
            hasher,
            clock,
            settings,
        }
    }

    /// Queues a reset email for an active account outside the cooldown and within the
    /// address's email budget; returns whether it did. The caller answers OK either way.
    #[tracing::instrument(name = "request_password_reset", skip_all, fields(user_id = field::Empty))]
    pub async fn request(&self, email: EmailAddress) -> Result<bool, ResetError> {
        let now = self.clock.now();
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let mut retry = db::retry::Retry::default();
        let queued = loop {
            let attempt = conn
                .transaction(async |conn| self.queue_reset_email(conn, &email, now).await)
                .await;
            if let Some(done) = retry.settle(attempt).await {
                break done;
            }
        }?;
        tracing::info!(queued, "password reset requested");
        Ok(queued)
    }

    /// The request's transaction: under the address's lock, so that the cooldown and budget
    /// checks and the insert cannot interleave with another request or a sign-up. Whether it
    /// queues an email or not, it runs the same statements (a request that queues nothing
    /// rehearses the writes: [`db::rehearsal`]), so its time does not tell an active address
    /// from an unknown one.
    async fn queue_reset_email(
        &self,
        conn: &mut AsyncPgConnection,
        email: &EmailAddress,
        now: OffsetDateTime,
    ) -> Result<bool, ResetError> {
        let key = email.key();
        db::email_budget::lock_address(conn, &key).await?;
        let rows = db::users::lock_address_rows(conn, email.as_ref()).await?;
        // Only an active account can reset its password; pending registrations cannot.
        let user = rows.active();
        if let Some(user) = user {
            tracing::Span::current().record("user_id", field::display(user.id));
        }
        // What a rehearsal writes for: a user that does not exist.
        let user_id = user.map_or_else(Uuid::nil, |u| u.id);
        let last = db::password_reset::latest_issued_at(conn, user_id).await?;
        let budget = self.settings.email_budget;
        let kind = EmailPasswordResetV1::KIND;
        let ledger = db::email_budget::ledger(conn, &key, budget, kind, now).await?;
        let cooling = last.is_some_and(|last| now - last < self.settings.cooldown);
        let allowed = ledger.spend(budget, now) == Spend::Allowed;
        if user.is_some() && !cooling && !allowed {
            tracing::info!("password reset not queued: the address's email budget is spent");
        }
        let queue = user.is_some() && !cooling && allowed;

        db::rehearsal::open(conn).await?;
        db::email_budget::record_send(conn, &key, kind, now).await?;
        let token = VerificationToken::generate();
        let expires_at = now + self.settings.token_ttl;
        db::password_reset::insert(conn, user_id, &token.hash(), now, expires_at).await?;
        let payload = EmailPasswordResetV1 {
            recipient: user.map_or_else(|| email.as_ref().to_owned(), |u| u.email.clone()),
            display_name: user.map(|u| u.display_name.clone()).unwrap_or_default(),
            locale: user.map_or_else(|| "en".to_owned(), |u| u.locale.clone()),
            token: token.expose().to_owned(),
            expires_at,
        };
        db::outbox::enqueue_for_user(conn, user_id, kind, &payload).await?;
        db::rehearsal::close(conn, queue).await?;
        Ok(queue)
    }

    /// Sets a new password with a reset token; the token and any other outstanding one are
    /// consumed, every session of the user is revoked, and a notice is queued.
    #[tracing::instrument(name = "reset_password", skip_all, fields(user_id = field::Empty))]
    pub async fn reset(
        &self,
        token: VerificationToken,
        new_password: &str,
    ) -> Result<(), ResetError> {
        let hash = token.hash();
        // Read first, to hold the policy against the user's own address and name. The
        // connection goes back to the pool before Argon2 runs, so a burst of resets cannot
        // hold every connection while hashing.
        let found = {
            let mut conn = self.pool.get().await.map_err(StoreError::from)?;
            db::password_reset::find(&mut conn, &hash).await?
        };
        let Some(found) = found else {
            return Err(ResetError::TokenInvalid);
        };
        tracing::Span::current().record("user_id", field::display(found.user_id));
        let password = Password::parse_for(new_password, &found.email, &found.display_name)
            .map_err(ResetError::WeakPassword)?;
        let password_hash = self.hasher.hash(password).await?;

        let now = self.clock.now();
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let mut retry = db::retry::Retry::default();
        let revoked = loop {
            let attempt = conn
                .transaction(async |conn| {
                    self.apply_reset(conn, &hash, found.user_id, &password_hash, now)
                        .await
                })
                .await;
            if let Some(done) = retry.settle(attempt).await {
                break done;
            }
        }?;
        tracing::info!(
            event = "user.password_changed",
            user_id = %found.user_id,
            revoked_sessions = revoked,
            "password changed with a reset link; sessions revoked"
        );
        Ok(())
    }

    /// The reset's transaction. It locks the user row before touching any token, the order
    /// every use case follows, so concurrent resets of one user take turns instead of
    /// deadlocking; reading the token after the lock sees what the previous turn did to it.
    async fn apply_reset(
        &self,
        conn: &mut AsyncPgConnection,
        hash: &TokenHash,
        user_id: Uuid,
        password_hash: &str,
        now: OffsetDateTime,
    ) -> Result<usize, ResetError> {
        if db::users::lock_by_id(conn, user_id).await?.is_none() {
            return Err(ResetError::TokenInvalid);
        }
        let found = db::password_reset::find(conn, hash)
            .await?
            .ok_or(ResetError::TokenInvalid)?;
        if found.consumed_at.is_some() {
            return Err(ResetError::TokenUsed);
        }
        if found.expires_at <= now {
            return Err(ResetError::TokenExpired);
        }
        db::password_reset::set_password(conn, user_id, password_hash, now).await?;
        let revoked = db::password_reset::revoke_sessions(conn, user_id, now).await?;
        let changed = UserPasswordChanged {
            user_id: user_id.to_string(),
            changed_at: Some(identity_proto::timestamp(now)),
        };
        let events = self.settings.events;
        events.record(conn, user_id, &changed).await?;
        for session_id in &revoked {
            let revoked = SessionRevoked {
                user_id: user_id.to_string(),
                session_id: session_id.to_string(),
                reason: RevocationReason::PasswordReset.into(),
                revoked_at: Some(identity_proto::timestamp(now)),
            };
            events.record(conn, user_id, &revoked).await?;
        }
        db::sessions::clear_failures(conn, &found.email.to_lowercase()).await?;
        let notice = EmailPasswordChangedV1 {
            recipient: found.email.clone(),
            display_name: found.display_name.clone(),
            locale: found.locale.clone(),
            changed_at: now,
        };
        db::outbox::enqueue_for_user(conn, user_id, EmailPasswordChangedV1::KIND, &notice).await?;
        Ok(revoked.len())
    }
}
