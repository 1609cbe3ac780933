use std::time::Duration as StdDuration;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use identity_proto::identity::events::v1::{UserVerified, VerificationProof};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use tracing::field;
use uuid::Uuid;

use super::Registration;
use crate::{
    db::{self, StoreError, retry::MaybeStoreError, users::Activation},
    domain::{EmailAddress, Invalid, Password, VerificationCode, VerificationToken},
    hashing::HashError,
};

/// A VerifyEmail call: the proof, and the password the account will have. The password is the
/// verifier's, never the one given at Register, since anyone can register any address: so
/// verifying an address never makes usable a password that its owner did not type.
#[derive(Debug)]
pub struct Verification {
    pub proof: Proof,
    pub password: SecretString,
}

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
    /// The new password fails the policy (checked once the proof is known to be good).
    #[error("password {0}")]
    WeakPassword(Invalid),
    #[error("password hashing is saturated")]
    Overloaded { retry_after: StdDuration },
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

impl From<HashError> for VerifyEmailError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Overloaded { retry_after } => Self::Overloaded { retry_after },
            HashError::Failed(e) => Self::Unexpected(e),
        }
    }
}

/// A verification's verdict. It is committed whatever it says, since a wrong code must be
/// counted; the transaction rolls back only on a database failure.
type Verdict<T> = Result<T, VerifyEmailError>;

/// A proof found good: the registration it was sent for and the secret that proves it.
#[derive(Debug)]
struct Claim {
    user_id: Uuid,
    secret_id: Uuid,
    /// The address as registered, which the event names, not as typed in the request.
    email: String,
    display_name: String,
    proof: VerificationProof,
}

impl Claim {
    /// What to answer when the registration or its secret is gone by the time it is activated.
    fn gone(&self) -> VerifyEmailError {
        match self.proof {
            VerificationProof::Code => VerifyEmailError::CodeInvalid,
            _ => VerifyEmailError::TokenInvalid,
        }
    }
}

impl Registration {
    /// Activates the registration the proof belongs to with the verifier's password, consumes
    /// its verification secrets and deletes the other pending registrations of the address.
    ///
    /// Two transactions, so that no connection is held while the password is hashed: the first
    /// checks the proof (and counts a wrong code); then the password is checked against the
    /// policy and hashed; the second locks the address again, checks that the registration and
    /// its secret are still as they were, and activates it. Verifications of one address are
    /// serialized by the address's lock, so it gets exactly one active account however many
    /// proofs race; the partial unique index on active addresses backs that up.
    #[tracing::instrument(name = "verify_email", skip_all, fields(user_id = field::Empty))]
    pub async fn verify_email(&self, verification: Verification) -> Result<Uuid, VerifyEmailError> {
        let Verification { proof, password } = verification;
        let verdict = match self.check_proof(&proof).await? {
            Ok(claim) => self.activate_with(&claim, &password).await,
            Err(refused) => Err(refused),
        };
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

    /// The first transaction: which registration the proof is good for, if any. A wrong code is
    /// counted and committed.
    async fn check_proof(&self, proof: &Proof) -> Result<Verdict<Claim>, VerifyEmailError> {
        let now = self.clock.now();
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let mut retry = db::retry::Retry::default();
        loop {
            let attempt = conn
                .transaction(async |conn| match proof {
                    Proof::Token(token) => self.verify_token(conn, token, now).await,
                    Proof::EmailCode { email, code } => {
                        self.verify_code(conn, email, code, now).await
                    }
                })
                .await;
            if let Some(done) = retry.settle(attempt).await {
                return done;
            }
        }
    }

    /// Checks the verifier's password against the policy, hashes it with no connection held,
    /// and activates the claimed registration with it in the second transaction.
    async fn activate_with(&self, claim: &Claim, password: &SecretString) -> Verdict<Uuid> {
        let password =
            Password::parse_for(password.expose_secret(), &claim.email, &claim.display_name)
                .map_err(VerifyEmailError::WeakPassword)?;
        let password_hash = self.hasher.hash(password).await?;
        let now = self.clock.now();
        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        let mut retry = db::retry::Retry::default();
        loop {
            let attempt = conn
                .transaction(async |conn| self.confirm(conn, claim, &password_hash, now).await)
                .await;
            if let Some(done) = retry.settle(attempt).await {
                return done?;
            }
        }
    }

    /// The second transaction: under the address's lock, the claimed registration is still
    /// pending and its secret still unused and unexpired, or the answer says what changed.
    async fn confirm(
        &self,
        conn: &mut AsyncPgConnection,
        claim: &Claim,
        password_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Verdict<Uuid>, VerifyEmailError> {
        db::email_budget::lock_address(conn, &claim.email.to_lowercase()).await?;
        let rows = db::users::lock_address_rows(conn, &claim.email).await?;
        if rows.active().is_some() {
            return Ok(Err(VerifyEmailError::AlreadyVerified));
        }
        let secret = db::verification::find(conn, claim.secret_id).await?;
        let pending = rows.get(claim.user_id).filter(|u| u.is_pending());
        let (Some(secret), Some(user)) = (secret, pending) else {
            return Ok(Err(claim.gone()));
        };
        if secret.consumed_at.is_some() {
            return Ok(Err(VerifyEmailError::AlreadyVerified));
        }
        if secret.expires_at <= now {
            return Ok(Err(VerifyEmailError::Expired));
        }
        self.activate(conn, user.id, &user.email, password_hash, claim.proof, now)
            .await
    }

    async fn verify_token(
        &self,
        conn: &mut AsyncPgConnection,
        token: &VerificationToken,
        now: OffsetDateTime,
    ) -> Result<Verdict<Claim>, VerifyEmailError> {
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
        Ok(Ok(Claim {
            user_id: user.id,
            secret_id: secret.id,
            email: user.email.clone(),
            display_name: user.display_name.clone(),
            proof: VerificationProof::Link,
        }))
    }

    async fn verify_code(
        &self,
        conn: &mut AsyncPgConnection,
        email: &EmailAddress,
        code: &VerificationCode,
        now: OffsetDateTime,
    ) -> Result<Verdict<Claim>, VerifyEmailError> {
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
            let Some(user) = rows.get(secret.user_id).filter(|u| u.is_pending()) else {
                return Ok(Err(VerifyEmailError::AlreadyVerified));
            };
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
            return Ok(Ok(Claim {
                user_id: user.id,
                secret_id: secret.id,
                email: user.email.clone(),
                display_name: user.display_name.clone(),
                proof: VerificationProof::Code,
            }));
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

    /// Activates `user_id` with `password_hash`, consumes its secrets and deletes the other
    /// pending registrations of `email`. The caller holds the address's lock and the rows'
    /// locks.
    async fn activate(
        &self,
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        email: &str,
        password_hash: &str,
        proof: VerificationProof,
        now: OffsetDateTime,
    ) -> Result<Verdict<Uuid>, VerifyEmailError> {
        match db::users::activate(conn, user_id, password_hash, now).await? {
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
