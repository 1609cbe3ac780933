use diesel_async::{AsyncConnection, AsyncPgConnection};
use identity_proto::outbox::EmailVerificationV1;
use time::OffsetDateTime;
use tracing::field;
use uuid::Uuid;

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
    /// used. Whether it queues or not, it runs the same statements (a call that queues nothing
    /// rehearses the writes: [`db::rehearsal`]), so its time does not tell whether the address
    /// has a pending registration.
    #[tracing::instrument(name = "resend_verification_email", skip_all, fields(user_id = field::Empty))]
    pub async fn resend_verification_email(
        &self,
        email: EmailAddress,
    ) -> Result<ResendOutcome, ResendError> {
        let now = self.clock.now();
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let mut retry = db::retry::Retry::default();
        let outcome = loop {
            let attempt = conn
                .transaction(async |conn| self.resend_in(conn, &email, now).await)
                .await;
            if let Some(done) = retry.settle(attempt).await {
                break done;
            }
        }?;
        tracing::info!(?outcome, "verification email resend handled");
        Ok(outcome)
    }

    /// The resend's transaction. Under the address's lock, concurrent resends and
    /// registrations of one address take turns, so the checks and the insert cannot
    /// interleave.
    async fn resend_in(
        &self,
        conn: &mut AsyncPgConnection,
        email: &EmailAddress,
        now: OffsetDateTime,
    ) -> Result<ResendOutcome, ResendError> {
        let key = email.key();
        db::email_budget::lock_address(conn, &key).await?;
        let rows = db::users::lock_address_rows(conn, email.as_ref()).await?;
        let last = db::verification::latest_issued_at(conn, &rows.ids()).await?;
        let budget = self.settings.email_budget;
        let kind = EmailVerificationV1::KIND;
        let ledger = db::email_budget::ledger(conn, &key, budget, kind, now).await?;
        let target = rows.newest_pending().filter(|_| rows.active().is_none());
        let outcome = if target.is_none() {
            ResendOutcome::NoPendingAccount
        } else if last.is_some_and(|last| now - last < self.settings.resend_cooldown) {
            ResendOutcome::CoolingDown
        } else if ledger.spend(budget, now) != Spend::Allowed {
            ResendOutcome::OverBudget
        } else {
            ResendOutcome::Queued
        };
        let to = match target {
            Some(user) => {
                tracing::Span::current().record("user_id", field::display(user.id));
                Recipient {
                    user_id: user.id,
                    email: &user.email,
                    display_name: &user.display_name,
                    locale: &user.locale,
                }
            }
            // What a rehearsal writes: a registration that does not exist.
            None => Recipient {
                user_id: Uuid::now_v7(),
                email: email.as_ref(),
                display_name: "",
                locale: "en",
            },
        };
        db::rehearsal::open(conn).await?;
        db::email_budget::record_send(conn, &key, kind, now).await?;
        self.issue_verification(conn, &to, now).await?;
        db::rehearsal::close(conn, outcome == ResendOutcome::Queued).await?;
        Ok(outcome)
    }
}
