use diesel_async::AsyncConnection;
use identity_proto::outbox::EmailVerificationV1;
use tracing::field;

use super::{Recipient, Registration};
use crate::{
    db::{self, StoreError, retry::MaybeStoreError},
    domain::{EmailAddress, Spend},
};

/// What a resend did. The caller is told nothing of it (the API answers OK either way); it is
/// for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResendOutcome {
    /// A new verification email was queued.
    Queued,
    /// No account with that address, or it is already active.
    NoPendingAccount,
    /// The previous email to the address was queued less than the cooldown ago.
    CoolingDown,
    /// The address's email budget is spent.
    OverBudget,
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
    /// Queues a fresh verification email for the newest pending registration of the address,
    /// at most once per cooldown (counted across every registration of the address) and within
    /// the address's email budget. Earlier tokens and codes stay valid until one of them is
    /// used.
    #[tracing::instrument(name = "resend_verification_email", skip_all, fields(user_id = field::Empty))]
    pub async fn resend_verification_email(
        &self,
        email: EmailAddress,
    ) -> Result<ResendOutcome, ResendError> {
        let now = self.clock.now();
        let cooldown = self.settings.resend_cooldown;
        let key = email.key();
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let mut retry = db::retry::Retry::default();
        let outcome = loop {
            let attempt = conn
                .transaction(async |conn| {
                    // Under the address's lock, concurrent resends and registrations of one
                    // address take turns, so the checks and the insert cannot interleave.
                    db::email_budget::lock_address(conn, &key).await?;
                    let rows = db::users::lock_address_rows(conn, email.as_ref()).await?;
                    if rows.active().is_some() {
                        return Ok::<_, ResendError>(ResendOutcome::NoPendingAccount);
                    }
                    let Some(user) = rows.newest_pending() else {
                        return Ok(ResendOutcome::NoPendingAccount);
                    };
                    tracing::Span::current().record("user_id", field::display(user.id));
                    let last = db::verification::latest_issued_at(conn, &rows.ids()).await?;
                    if last.is_some_and(|last| now - last < cooldown) {
                        return Ok(ResendOutcome::CoolingDown);
                    }
                    let budget = self.settings.email_budget;
                    let kind = EmailVerificationV1::KIND;
                    if db::email_budget::try_spend(conn, &key, kind, budget, now).await?
                        != Spend::Allowed
                    {
                        return Ok(ResendOutcome::OverBudget);
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
