use diesel_async::{AsyncConnection, AsyncPgConnection};
use time::OffsetDateTime;
use tracing::field;
use uuid::Uuid;

use super::Registration;
use crate::{
    db::{self, StoreError, retry::MaybeStoreError},
    domain::{EmailAddress, VerificationCode, VerificationToken},
};

/// What a caller presents to prove they own the address.
#[derive(Debug)]
pub enum Proof {
    /// The token from the link.
    Token(VerificationToken),
    /// The address and the code from the email.
    EmailCode {
        email: EmailAddress,
        code: VerificationCode,
    },
}

/// Why a verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyEmailError {
    #[error("unknown verification token")]
    TokenInvalid,
    #[error("wrong verification code")]
    CodeInvalid,
    #[error("the verification token or code has expired")]
    Expired,
    #[error("already verified")]
    AlreadyVerified,
    #[error("too many wrong codes")]
    TooManyAttempts,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<diesel::result::Error> for VerifyEmailError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Store(error.into())
    }
}

impl MaybeStoreError for VerifyEmailError {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// A verification's verdict. It is committed whatever it says, since a wrong code must be
/// counted; the transaction rolls back only on a database failure.
type Verdict = Result<Uuid, VerifyEmailError>;

impl Registration {
    /// Activates the user the proof belongs to and consumes all its verification secrets.
    /// Verifications of one account are serialized by a lock on its row, so it is activated
    /// exactly once however many proofs race.
    #[tracing::instrument(name = "verify_email", skip_all, fields(user_id = field::Empty))]
    pub async fn verify_email(&self, proof: Proof) -> Result<Uuid, VerifyEmailError> {
        let now = self.clock.now();
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let mut retry = db::retry::Retry::default();
        let verdict = loop {
            let attempt = conn
                .transaction(async |conn| match &proof {
                    Proof::Token(token) => self.verify_token(conn, token, now).await,
                    Proof::EmailCode { email, code } => {
                        self.verify_code(conn, email, code, now).await
                    }
                })
                .await;
            if let Some(done) = retry.settle(attempt).await {
                break done;
            }
        }?;
        match &verdict {
            Ok(user_id) => {
                tracing::Span::current().record("user_id", field::display(user_id));
                tracing::info!("email verified; user active");
            }
            Err(e) => tracing::info!(outcome = %e, "verification refused"),
        }
        verdict
    }

    async fn verify_token(
        &self,
        conn: &mut AsyncPgConnection,
        token: &VerificationToken,
        now: OffsetDateTime,
    ) -> Result<Verdict, VerifyEmailError> {
        let hash = token.hash();
        let Some(found) = db::verification::find_by_token(conn, &hash).await? else {
            return Ok(Err(VerifyEmailError::TokenInvalid));
        };
        // Lock the account, then read the secret again: a concurrent verification may have
        // consumed it while we waited, or the janitor deleted a never-verified account.
        let Some(user) = db::users::lock_by_id(conn, found.user_id).await? else {
            return Ok(Err(VerifyEmailError::TokenInvalid));
        };
        let Some(secret) = db::verification::find_by_token(conn, &hash).await? else {
            return Ok(Err(VerifyEmailError::TokenInvalid));
        };
        if secret.consumed_at.is_some() || !user.is_pending() {
            return Ok(Err(VerifyEmailError::AlreadyVerified));
        }
        if secret.expires_at <= now {
            return Ok(Err(VerifyEmailError::Expired));
        }
        self.activate(conn, user.id, now).await
    }

    async fn verify_code(
        &self,
        conn: &mut AsyncPgConnection,
        email: &EmailAddress,
        code: &VerificationCode,
        now: OffsetDateTime,
    ) -> Result<Verdict, VerifyEmailError> {
        // An unknown address and a wrong code look alike, so the answer reveals no account.
        let Some(user) = db::users::lock_by_email(conn, email.as_ref()).await? else {
            return Ok(Err(VerifyEmailError::CodeInvalid));
        };
        // Past the account's cap no code is even compared, so guessing ends for good however
        // many emails are asked for; the unguessable link still works.
        if user.failed_code_attempts >= self.settings.max_wrong_codes_per_account {
            return Ok(Err(VerifyEmailError::TooManyAttempts));
        }
        let max = self.settings.max_wrong_codes;
        let secrets = db::verification::of_user(conn, user.id).await?;
        let matching = secrets
            .iter()
            .find(|s| self.code_key.verify(s.id, code, &s.code_mac));

        if let Some(secret) = matching {
            if secret.consumed_at.is_some() {
                return Ok(Err(VerifyEmailError::AlreadyVerified));
            }
            // A locked pair stays locked even for the right code, or guessing would go on.
            if secret.failed_code_attempts >= max {
                return Ok(Err(VerifyEmailError::TooManyAttempts));
            }
            if secret.expires_at <= now {
                return Ok(Err(VerifyEmailError::Expired));
            }
            return self.activate(conn, user.id, now).await;
        }

        let live = |s: &&db::verification::Secret| s.consumed_at.is_none() && s.expires_at > now;
        let open: Vec<Uuid> = secrets
            .iter()
            .filter(live)
            .filter(|s| s.failed_code_attempts < max)
            .map(|s| s.id)
            .collect();
        if open.is_empty() {
            let locked = secrets
                .iter()
                .filter(live)
                .any(|s| s.failed_code_attempts >= max);
            let verdict = if locked {
                VerifyEmailError::TooManyAttempts
            } else {
                VerifyEmailError::CodeInvalid
            };
            return Ok(Err(verdict));
        }
        db::verification::record_wrong_code(conn, &open).await?;
        db::users::count_wrong_code(conn, user.id).await?;
        Ok(Err(VerifyEmailError::CodeInvalid))
    }

    async fn activate(
        &self,
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Verdict, VerifyEmailError> {
        if !db::users::activate(conn, user_id, now).await? {
            return Ok(Err(VerifyEmailError::AlreadyVerified));
        }
        db::verification::consume_all(conn, user_id, now).await?;
        Ok(Ok(user_id))
    }
}
