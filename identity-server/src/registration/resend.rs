use diesel_async::AsyncConnection;
use tracing::field;

use super::{Recipient, Registration};
use crate::{
    db::{self, StoreError, retry::MaybeStoreError},
    domain::EmailAddress,
};

/// What a resend did. The caller is told nothing of it (the API answers OK either way); it is
/// for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResendOutcome {
    /// A new verification email was queued.
    Queued,
    /// No account with that address, or it is already active.
    NoPendingAccount,
    /// The previous email was queued less than the cooldown ago.
    CoolingDown,
}

/// Why a resend failed.
#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<diesel::result::Error> for ResendError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Store(error.into())
    }
}

impl MaybeStoreError for ResendError {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(e) => Some(e),
            Self::Unexpected(_) => None,
        }
    }
}

impl Registration {
    /// Queues a fresh verification email for a pending account, at most once per cooldown.
    /// Earlier tokens and codes stay valid until one of them is used.
    #[tracing::instrument(name = "resend_verification_email", skip_all, fields(user_id = field::Empty))]
    pub async fn resend_verification_email(
        &self,
        email: EmailAddress,
    ) -> Result<ResendOutcome, ResendError> {
        let now = self.clock.now();
        let cooldown = self.settings.resend_cooldown;
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let mut retry = db::retry::Retry::default();
        let outcome = loop {
            let attempt = conn
                .transaction(async |conn| {
                    // The row lock makes concurrent resends of one account take turns, so the
                    // cooldown check and the insert cannot interleave.
                    let Some(user) = db::users::lock_by_email(conn, email.as_ref()).await? else {
                        return Ok::<_, ResendError>(ResendOutcome::NoPendingAccount);
                    };
                    tracing::Span::current().record("user_id", field::display(user.id));
                    if !user.is_pending() {
                        return Ok(ResendOutcome::NoPendingAccount);
                    }
                    let last = db::verification::latest_issued_at(conn, user.id).await?;
                    if last.is_some_and(|last| now - last < cooldown) {
                        return Ok(ResendOutcome::CoolingDown);
                    }
                    let to = Recipient {
                        user_id: user.id,
                        email: &user.email,
                        display_name: &user.display_name,
                        locale: &user.locale,
                    };
                    self.issue_verification(conn, &to, now).await?;
                    Ok(ResendOutcome::Queued)
                })
                .await;
            if let Some(done) = retry.settle(attempt).await {
                break done;
            }
        }?;
        tracing::info!(?outcome, "verification email resend handled");
        Ok(outcome)
    }
}
