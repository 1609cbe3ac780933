use diesel_async::{AsyncConnection, AsyncPgConnection};
use identity_proto::identity::events::v1::{UserVerified, VerificationProof};
use time::OffsetDateTime;
use tracing::field;
use uuid::Uuid;

use super::Registration;
use crate::{
    db::{self, StoreError, retry::MaybeStoreError, users::Activation},
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
    /// Activates the registration the proof belongs to, consumes its verification secrets and
    /// deletes the other pending registrations of the address (with their secrets), so that
    /// the account goes live with the password of the registration whose email was used.
    /// Verifications of one address are serialized by the address's lock, so it gets exactly
    /// one active account however many proofs race; the partial unique index on active
    /// addresses backs that up.
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
                let proof = match &proof {
                    Proof::Token(_) => "link",
                    Proof::EmailCode { .. } => "code",
                };
                tracing::info!(
                    event = "user.verified",
                    user_id = %user_id,
                    proof,
                    "email verified; user active"
                );
                metrics::counter!(crate::metrics::VERIFICATIONS, "proof" => proof).increment(1);
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
        let Some(email) = db::users::email_of(conn, found.user_id).await? else {
            return Ok(Err(VerifyEmailError::TokenInvalid));
        };
        // Lock the address, then read the secret again: a concurrent verification may have
        // consumed it, or deleted it with its registration, while we waited; or the janitor
        // deleted a never-verified account.
        db::email_budget::lock_address(conn, &email.to_lowercase()).await?;
        let rows = db::users::lock_address_rows(conn, &email).await?;
        let secret = db::verification::find_by_token(conn, &hash).await?;
        let (Some(secret), Some(user)) = (secret, rows.get(found.user_id)) else {
            let verdict = if rows.active().is_some() {
                VerifyEmailError::AlreadyVerified
            } else {
                VerifyEmailError::TokenInvalid
            };
            return Ok(Err(verdict));
        };
        if secret.consumed_at.is_some() || !user.is_pending() {
            return Ok(Err(VerifyEmailError::AlreadyVerified));
        }
        if secret.expires_at <= now {
            return Ok(Err(VerifyEmailError::Expired));
        }
        self.activate(conn, user.id, &email, VerificationProof::Link, now)
            .await
    }

    async fn verify_code(
        &self,
        conn: &mut AsyncPgConnection,
        email: &EmailAddress,
        code: &VerificationCode,
        now: OffsetDateTime,
    ) -> Result<Verdict, VerifyEmailError> {
        db::email_budget::lock_address(conn, &email.key()).await?;
        let rows = db::users::lock_address_rows(conn, email.as_ref()).await?;
        // An unknown address and a wrong code look alike, so the answer reveals no account.
        if rows.all().is_empty() {
            return Ok(Err(VerifyEmailError::CodeInvalid));
        }
        // Past the cap no code is even compared, so guessing ends for good however many emails
        // or registrations are asked for: every row of the address counts each wrong code, and
        // the most any row has counted is the address's. The unguessable link still works.
        let failed = rows
            .all()
            .iter()
            .map(|u| u.failed_code_attempts)
            .max()
            .unwrap_or_default();
        if failed >= self.settings.max_wrong_codes_per_account {
            return Ok(Err(VerifyEmailError::TooManyAttempts));
        }
        let max = self.settings.max_wrong_codes;
        let secrets = db::verification::of_users(conn, &rows.ids()).await?;
        let matching = secrets
            .iter()
            .find(|s| self.code_key.verify(s.id, code, &s.code_mac));

        if let Some(secret) = matching {
            let pending = rows.get(secret.user_id).is_some_and(|u| u.is_pending());
            if secret.consumed_at.is_some() || !pending {
                return Ok(Err(VerifyEmailError::AlreadyVerified));
            }
            // A locked pair stays locked even for the right code, or guessing would go on.
            if secret.failed_code_attempts >= max {
                return Ok(Err(VerifyEmailError::TooManyAttempts));
            }
            if secret.expires_at <= now {
                return Ok(Err(VerifyEmailError::Expired));
            }
            return self
                .activate(
                    conn,
                    secret.user_id,
                    // The address as registered, which the event names, not as typed here.
                    rows.get(secret.user_id)
                        .map_or(email.as_ref(), |user| user.email.as_str()),
                    VerificationProof::Code,
                    now,
                )
                .await;
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
        db::users::count_wrong_code(conn, &rows.ids()).await?;
        Ok(Err(VerifyEmailError::CodeInvalid))
    }

    /// Activates `user_id`, consumes its secrets and deletes the other pending registrations
    /// of `email`. The caller holds the address's lock and the rows' locks.
    async fn activate(
        &self,
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        email: &str,
        proof: VerificationProof,
        now: OffsetDateTime,
    ) -> Result<Verdict, VerifyEmailError> {
        match db::users::activate(conn, user_id, now).await? {
            Activation::Activated => {}
            Activation::NotPending => return Ok(Err(VerifyEmailError::AlreadyVerified)),
            // The statement failed and the transaction with it: roll back, nothing to keep.
            Activation::AddressTaken => return Err(VerifyEmailError::AlreadyVerified),
        }
        db::verification::consume_all(conn, user_id, now).await?;
        let verified = UserVerified {
            user_id: user_id.to_string(),
            email: email.to_owned(),
            proof: proof.into(),
            verified_at: Some(identity_proto::timestamp(now)),
        };
        self.settings
            .events
            .record(conn, user_id, &verified)
            .await?;
        let removed = db::users::delete_other_pending(conn, email, user_id).await?;
        if removed > 0 {
            tracing::info!(
                removed,
                "other pending registrations of the address deleted"
            );
        }
        Ok(Ok(user_id))
    }
}
