use std::time::Duration as StdDuration;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use identity_proto::{
    identity::events::v1::UserRegistered,
    outbox::{EmailAccountExistsV1, EmailVerificationV1},
};
use time::{Duration, OffsetDateTime};
use tracing::field;
use uuid::Uuid;

use super::{Recipient, Registration};
use crate::{
    db::{self, StoreError, retry::MaybeStoreError},
    domain::{DisplayName, EmailAddress, Locale, Password, Spend, UserStatus},
    hashing::HashError,
};

/// Least time between two account-exists notices to one address. At most the budget's window,
/// which is how long the ledger remembers a send.
const ACCOUNT_EXISTS_NOTICE_INTERVAL: Duration = Duration::hours(1);

/// A sign-up whose every field has been parsed.
#[derive(Debug)]
pub struct NewRegistration {
    pub email: EmailAddress,
    pub password: Password,
    pub display_name: DisplayName,
    pub locale: Locale,
}

/// Why a sign-up failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The address has an active account (only with enumeration safety off).
    #[error("the email address is already registered")]
    EmailTaken,
    /// The address's email budget is spent (only with enumeration safety off).
    #[error("no more emails may be sent to this address for now")]
    EmailBudgetExhausted { retry_after: StdDuration },
    #[error("password hashing is saturated")]
    Overloaded { retry_after: StdDuration },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<diesel::result::Error> for RegisterError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Store(error.into())
    }
}

impl MaybeStoreError for RegisterError {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HashError> for RegisterError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Overloaded { retry_after } => Self::Overloaded { retry_after },
            HashError::Failed(e) => Self::Unexpected(e),
        }
    }
}

/// What a Register did. The caller sees none of it (the answer is the same); it is for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A pending registration was created and its verification email queued.
    Pending,
    /// The address has an active account; its owner was sent a notice.
    OwnerNotified,
    /// The address has an active account; its owner was notified less than an hour ago.
    OwnerRecentlyNotified,
    /// The address's email budget is spent: nothing was created or queued.
    OverBudget,
}

impl Registration {
    /// Registers an address: for an address without an active account, creates a pending
    /// registration and queues its verification email in one transaction (the user row, the
    /// secret and the outbox message exist together or not at all). Returns the id the caller
    /// is given.
    ///
    /// With enumeration safety on (the default), an address with an active account, and an
    /// address whose email budget is spent, get the same answer as a new address: a fresh id
    /// that names no account. The password is hashed in every case, and a call that creates
    /// nothing rehearses the writes of one that does (`rehearse`), so the answer takes
    /// as long. The owner of an active account is emailed a notice, at most once an hour.
    #[tracing::instrument(name = "register", skip_all, fields(user_id = field::Empty))]
    pub async fn register(&self, input: NewRegistration) -> Result<Uuid, RegisterError> {
        // The slow part runs before a connection is taken, so hashing never holds one, and it
        // runs whatever the address, so the time of the answer does not tell them apart.
        let password_hash = self.hasher.hash(input.password).await?;
        let user_id = Uuid::now_v7();
        let now = self.clock.now();
        let new = PendingUser {
            id: user_id,
            email: &input.email,
            password_hash: &password_hash,
            display_name: &input.display_name,
            locale: &input.locale,
        };

        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let mut retry = db::retry::Retry::default();
        let outcome = loop {
            let attempt = conn
                .transaction(async |conn| {
                    let outcome = self.register_in(conn, &new, now).await?;
                    if outcome != Outcome::Pending && self.settings.enumeration_safe {
                        self.rehearse(conn, &new, now).await?;
                    }
                    Ok::<_, RegisterError>(outcome)
                })
                .await;
            if let Some(done) = retry.settle(attempt).await {
                break done;
            }
        }?;
        if outcome == Outcome::Pending {
            tracing::Span::current().record("user_id", field::display(user_id));
            tracing::info!(
                event = "user.registered",
                user_id = %user_id,
                "user registered; verification email queued"
            );
            metrics::counter!(crate::metrics::REGISTRATIONS).increment(1);
        } else {
            tracing::info!(?outcome, "registration answered without a new account");
        }
        Ok(user_id)
    }

    /// The registration's transaction, under the address's lock.
    async fn register_in(
        &self,
        conn: &mut AsyncPgConnection,
        new: &PendingUser<'_>,
        now: OffsetDateTime,
    ) -> Result<Outcome, RegisterError> {
        let key = new.email.key();
        let budget = self.settings.email_budget;
        db::email_budget::lock_address(conn, &key).await?;
        let rows = db::users::lock_address_rows(conn, new.email.as_ref()).await?;

        if let Some(owner) = rows.active() {
            if !self.settings.enumeration_safe {
                return Err(RegisterError::EmailTaken);
            }
            let kind = EmailAccountExistsV1::KIND;
            let last = db::email_budget::last_sent(conn, &key, kind).await?;
            if last.is_some_and(|last| now - last < ACCOUNT_EXISTS_NOTICE_INTERVAL) {
                return Ok(Outcome::OwnerRecentlyNotified);
            }
            if db::email_budget::try_spend(conn, &key, kind, budget, now).await? != Spend::Allowed {
                return Ok(Outcome::OverBudget);
            }
            let notice = EmailAccountExistsV1 {
                recipient: owner.email.clone(),
                display_name: owner.display_name.clone(),
                locale: owner.locale.clone(),
                attempted_at: now,
            };
            db::outbox::enqueue_for_user(conn, owner.id, kind, &notice).await?;
            return Ok(Outcome::OwnerNotified);
        }

        let kind = EmailVerificationV1::KIND;
        match db::email_budget::try_spend(conn, &key, kind, budget, now).await? {
            Spend::Allowed => {}
            Spend::Exhausted { .. } if self.settings.enumeration_safe => {
                return Ok(Outcome::OverBudget);
            }
            Spend::Exhausted { retry_after } => {
                return Err(RegisterError::EmailBudgetExhausted { retry_after });
            }
        }
        self.insert_pending(conn, new, now).await?;
        Ok(Outcome::Pending)
    }

    /// Makes the writes a new registration makes (the budget's ledger row, the user row, its
    /// secret, the outbox message and its notification) inside a savepoint, and rolls them
    /// back. A call that creates nothing then costs what a call that creates an account costs
    /// (the same statements, a commit that writes), so the time of the answer does not tell an
    /// active address, or a spent budget, from a new address.
    async fn rehearse(
        &self,
        conn: &mut AsyncPgConnection,
        new: &PendingUser<'_>,
        now: OffsetDateTime,
    ) -> Result<(), RegisterError> {
        let rehearsal = conn
            .transaction(async |conn| {
                db::email_budget::record_send(
                    conn,
                    &new.email.key(),
                    EmailVerificationV1::KIND,
                    now,
                )
                .await?;
                self.insert_pending(conn, new, now).await?;
                Err::<(), RegisterError>(diesel::result::Error::RollbackTransaction.into())
            })
            .await;
        match rehearsal {
            Err(RegisterError::Store(StoreError::Query(
                diesel::result::Error::RollbackTransaction,
            ))) => Ok(()),
            Err(e) => Err(e),
            Ok(()) => Ok(()),
        }
    }

    /// Inserts the pending registration `new` and queues its verification email.
    async fn insert_pending(
        &self,
        conn: &mut AsyncPgConnection,
        new: &PendingUser<'_>,
        now: OffsetDateTime,
    ) -> Result<(), RegisterError> {
        db::users::insert(
            conn,
            &db::users::NewUser {
                id: new.id,
                email: new.email.as_ref(),
                status: UserStatus::PendingVerification.as_str(),
                password_hash: new.password_hash,
                display_name: new.display_name.as_ref(),
                locale: new.locale.as_ref(),
                created_at: now,
                updated_at: now,
            },
        )
        .await?;
        let to = Recipient {
            user_id: new.id,
            email: new.email.as_ref(),
            display_name: new.display_name.as_ref(),
            locale: new.locale.as_ref(),
        };
        self.issue_verification(conn, &to, now).await?;
        let registered = UserRegistered {
            user_id: new.id.to_string(),
            email: new.email.as_ref().to_owned(),
            display_name: new.display_name.as_ref().to_owned(),
            locale: new.locale.as_ref().to_owned(),
            registered_at: Some(identity_proto::timestamp(now)),
        };
        self.settings
            .events
            .record(conn, new.id, &registered)
            .await?;
        Ok(())
    }
}

/// The pending registration a Register would create.
struct PendingUser<'a> {
    id: Uuid,
    email: &'a EmailAddress,
    password_hash: &'a str,
    display_name: &'a DisplayName,
    locale: &'a Locale,
}
