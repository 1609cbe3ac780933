use std::time::Duration;

use diesel_async::AsyncConnection;
use tracing::field;
use uuid::Uuid;

use super::{Recipient, Registration};
use crate::{
    db::{self, StoreError, users::InsertUserError},
    domain::{DisplayName, EmailAddress, Locale, Password, UserStatus},
    hashing::HashError,
};

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
    #[error("the email address is already registered")]
    EmailTaken,
    #[error("password hashing is saturated")]
    Overloaded { retry_after: Duration },
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

impl From<InsertUserError> for RegisterError {
    fn from(error: InsertUserError) -> Self {
        match error {
            InsertUserError::EmailTaken => Self::EmailTaken,
            InsertUserError::Store(e) => Self::Store(e),
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

impl Registration {
    /// Creates a pending user and queues its verification email in one transaction: the user
    /// row, the verification secret and the outbox message exist together or not at all.
    #[tracing::instrument(name = "register", skip_all, fields(user_id = field::Empty))]
    pub async fn register(&self, input: NewRegistration) -> Result<Uuid, RegisterError> {
        let NewRegistration {
            email,
            password,
            display_name,
            locale,
        } = input;
        // The slow part runs before a connection is taken, so hashing never holds one.
        let password_hash = self.hasher.hash(password).await?;
        let user_id = Uuid::now_v7();
        tracing::Span::current().record("user_id", field::display(user_id));
        let now = self.clock.now();

        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        conn.transaction(async |conn| {
            db::users::insert(
                conn,
                &db::users::NewUser {
                    id: user_id,
                    email: email.as_ref(),
                    status: UserStatus::PendingVerification.as_str(),
                    password_hash: &password_hash,
                    display_name: display_name.as_ref(),
                    locale: locale.as_ref(),
                    created_at: now,
                    updated_at: now,
                },
            )
            .await?;
            let to = Recipient {
                user_id,
                email: email.as_ref(),
                display_name: display_name.as_ref(),
                locale: locale.as_ref(),
            };
            self.issue_verification(conn, &to, now).await?;
            Ok::<_, RegisterError>(())
        })
        .await?;
        tracing::info!("user registered; verification email queued");
        Ok(user_id)
    }
}
