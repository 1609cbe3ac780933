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

/// Pending registrations of one address kept without a verification secret (registrations of
/// an address with an active account, or over its email budget): past this, the oldest go. The
/// newest, the one Login checks, always stays; rows with a secret are bounded by the budget.
pub const MAX_PENDING_PER_ADDRESS: i64 = 10;

/// What a Register did. The caller sees none of it (the answer is the same); it is for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A pending registration was created and its verification email queued.
    Pending,
    /// The address has an active account: the caller's registration was kept, never to be
    /// verified (no secret), and the owner was sent a notice.
    OwnerNotified,
    /// As [`Outcome::OwnerNotified`], but the owner was notified less than an hour ago.
    OwnerRecentlyNotified,
    /// The address's email budget is spent: the registration was kept, with no email.
    OverBudget,
}

impl Registration {
    /// Registers an address. Every Register keeps the caller's registration, pending, with the
    /// hash of the caller's password, and then, in the same transaction:
    ///
    /// - for an address without an active account, within its email budget: a verification
    ///   secret and the email that carries it (the user row, the secret and the outbox message
    ///   exist together or not at all);
    /// - for an address with an active account: no secret, so the registration can never be
    ///   verified, and a notice to the owner, at most once an hour, within the budget. Login
    ///   with the caller's password then answers EMAIL_NOT_VERIFIED as for a new address.
    ///
    /// Returns the registration's id. With enumeration safety on (the default), every path
    /// runs the same statements (the writes a path does not make are rehearsed:
    /// [`db::rehearsal`]) and hashes the password, so neither the answer nor its time tells an
    /// active address, or a spent budget, from a new address. With it off, an active address
    /// gets ALREADY_EXISTS and a spent budget RESOURCE_EXHAUSTED, and nothing is kept.
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
                .transaction(async |conn| self.register_in(conn, &new, now).await)
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
            tracing::info!(?outcome, "registration kept without a verification email");
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
        let safe = self.settings.enumeration_safe;
        db::email_budget::lock_address(conn, &key).await?;
        let rows = db::users::lock_address_rows(conn, new.email.as_ref()).await?;
        let budget = self.settings.email_budget;
        let notice = EmailAccountExistsV1::KIND;
        let ledger = db::email_budget::ledger(conn, &key, budget, notice, now).await?;
        let spend = ledger.spend(budget, now);
        let owner = rows.active();
        let outcome = match (owner, spend) {
            (Some(_), _) if !safe => return Err(RegisterError::EmailTaken),
            (_, Spend::Exhausted { retry_after }) if !safe => {
                return Err(RegisterError::EmailBudgetExhausted { retry_after });
            }
            (Some(_), _)
                if ledger
                    .last_sent()
                    .is_some_and(|last| now - last < ACCOUNT_EXISTS_NOTICE_INTERVAL) =>
            {
                Outcome::OwnerRecentlyNotified
            }
            (_, Spend::Exhausted { .. }) => Outcome::OverBudget,
            (Some(_), Spend::Allowed) => Outcome::OwnerNotified,
            (None, Spend::Allowed) => Outcome::Pending,
        };

        // From here every path runs the same statements.
        let new_row = self.insert_pending(conn, new, now).await?;
        db::users::trim_pending(conn, new.email.as_ref(), MAX_PENDING_PER_ADDRESS).await?;

        // The registration's secret and verification email.
        db::rehearsal::open(conn).await?;
        db::email_budget::record_send(conn, &key, EmailVerificationV1::KIND, now).await?;
        self.issue_verification(conn, &new_row, now).await?;
        db::rehearsal::close(conn, outcome == Outcome::Pending).await?;

        // Its event: a registration of an address with an active account is none.
        db::rehearsal::open(conn).await?;
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
        db::rehearsal::close(conn, owner.is_none()).await?;

        // The owner's notice.
        db::rehearsal::open(conn).await?;
        db::email_budget::record_send(conn, &key, notice, now).await?;
        let to = owner.map_or(new_row, |owner| Recipient {
            user_id: owner.id,
            email: &owner.email,
            display_name: &owner.display_name,
            locale: &owner.locale,
        });
        let payload = EmailAccountExistsV1 {
            recipient: to.email.to_owned(),
            display_name: to.display_name.to_owned(),
            locale: to.locale.to_owned(),
            attempted_at: now,
        };
        db::outbox::enqueue_for_user(conn, to.user_id, notice, &payload).await?;
        db::rehearsal::close(conn, outcome == Outcome::OwnerNotified).await?;
        Ok(outcome)
    }

    /// Inserts the pending registration `new`; returns whom its verification email goes to.
    async fn insert_pending<'a>(
        &self,
        conn: &mut AsyncPgConnection,
        new: &PendingUser<'a>,
        now: OffsetDateTime,
    ) -> Result<Recipient<'a>, RegisterError> {
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
        Ok(Recipient {
            user_id: new.id,
            email: new.email.as_ref(),
            display_name: new.display_name.as_ref(),
            locale: new.locale.as_ref(),
        })
    }
}

/// The pending registration a Register creates.
struct PendingUser<'a> {
    id: Uuid,
    email: &'a EmailAddress,
    password_hash: &'a str,
    display_name: &'a DisplayName,
    locale: &'a Locale,
}
