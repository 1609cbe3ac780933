//! Login: checks a password, throttled per address, and starts a session.

use identity_proto::identity::events::v1::{RevocationReason, SessionRevoked, UserLoggedIn};
use std::time::Duration as StdDuration;

use diesel_async::AsyncConnection;
use secrecy::{ExposeSecret, SecretString};
use tracing::field;
use uuid::Uuid;

use super::{Issued, MAX_LIVE_SESSIONS, Sessions};
use crate::{
    db::{self, StoreError, sessions::Attempt},
    domain::{EmailAddress, UserStatus},
    hashing::{HashError, Verification},
};

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Unknown address or wrong password: the caller is not told which.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("the email address is not verified yet")]
    EmailNotVerified,
    #[error("too many failed logins for this address")]
    Throttled { retry_after: StdDuration },
    #[error("password hashing is saturated")]
    Overloaded { retry_after: StdDuration },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<diesel::result::Error> for LoginError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Store(error.into())
    }
}

impl From<HashError> for LoginError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Overloaded { retry_after } => Self::Overloaded { retry_after },
            HashError::Failed(e) => Self::Unexpected(e),
        }
    }
}

impl Sessions {
    /// Checks the credentials and starts a session.
    ///
    /// The password is checked against the address's active account and then against its
    /// newest pending registration: it opens the account, or gets EMAIL_NOT_VERIFIED from the
    /// registration it was registered with, or INVALID_CREDENTIALS. Where a row is missing a
    /// dummy hash stands in, so a refused login costs two hashes whatever the address, and
    /// Register (which keeps a pending registration for any address, taken or not) followed
    /// by Login answers alike for a registered and a new address.
    ///
    /// Throttling: before any hashing, one statement reserves the attempt for the address
    /// (known or not) and counts it as a failure, so a burst of concurrent guesses on any number
    /// of replicas is decided one by one: after a few failures the address is blocked for a
    /// growing delay, capped, and a success clears the count. No connection is held while a
    /// password is hashed. The session is inserted only if the password is still the one
    /// checked, under a lock a password reset waits for, so no session outlives a reset.
    #[tracing::instrument(name = "login", skip_all, fields(user_id = field::Empty))]
    pub async fn login(
        &self,
        email: EmailAddress,
        password: SecretString,
    ) -> Result<Issued, LoginError> {
        let email_key = email.as_ref().to_lowercase();
        let now = self.clock.now();
        let (failures, candidates) = {
            let mut conn = self.pool.get().await.map_err(StoreError::from)?;
            let attempt =
                db::sessions::reserve_attempt(&mut conn, &email_key, now, &self.login_delays)
                    .await?;
            let failures = match attempt {
                Attempt::Allowed { failures } => failures,
                Attempt::Refused { until, refused } => {
                    tracing::debug!(refused, "login refused: throttled");
                    metrics::counter!(crate::metrics::LOGINS, "outcome" => "throttled")
                        .increment(1);
                    let retry_after = StdDuration::try_from(until - now).unwrap_or_default();
                    return Err(LoginError::Throttled { retry_after });
                }
            };
            (
                failures,
                db::sessions::candidates(&mut conn, email.as_ref()).await?,
            )
        };
        let Some((user, verification)) = self.check(&password, candidates).await? else {
            tracing::info!(failures, "login refused: invalid credentials");
            metrics::counter!(crate::metrics::LOGINS, "outcome" => "invalid_credentials")
                .increment(1);
            return Err(LoginError::InvalidCredentials);
        };
        tracing::Span::current().record("user_id", field::display(user.id));
        let active = UserStatus::from_db(&user.status) == Some(UserStatus::Active);
        let upgraded = if active && verification.outdated {
            self.upgraded_hash(&password).await
        } else {
            None
        };

        let mut conn = self.pool.get().await.map_err(StoreError::from)?;
        db::sessions::clear_failures(&mut conn, &email_key).await?;
        if !active {
            return Err(LoginError::EmailNotVerified);
        }

        let session_id = Uuid::now_v7();
        let refresh_expires_at = now + self.settings.refresh_ttl;
        let refresh_token = conn
            .transaction(async |conn| {
                // A reset that committed while the password was being checked has changed
                // the hash: the password checked is no longer the account's.
                if !db::sessions::lock_if_password_unchanged(conn, user.id, &user.password_hash)
                    .await?
                {
                    return Err(LoginError::InvalidCredentials);
                }
                if let Some(upgraded) = &upgraded {
                    db::sessions::upgrade_password_hash(
                        conn,
                        user.id,
                        &user.password_hash,
                        upgraded,
                        now,
                    )
                    .await?;
                    tracing::info!("password hash upgraded to the current parameters");
                }
                // The new session makes MAX_LIVE_SESSIONS at most: the oldest beyond go.
                let ended =
                    db::sessions::revoke_beyond(conn, user.id, MAX_LIVE_SESSIONS - 1, now).await?;
                for session_id in &ended {
                    let revoked = SessionRevoked {
                        user_id: user.id.to_string(),
                        session_id: session_id.to_string(),
                        reason: RevocationReason::SessionLimit.into(),
                        revoked_at: Some(identity_proto::timestamp(now)),
                    };
                    self.settings.events.record(conn, user.id, &revoked).await?;
                }
                db::sessions::insert_session(
                    conn,
                    &db::sessions::NewSession {
                        id: session_id,
                        user_id: user.id,
                        created_at: now,
                        expires_at: refresh_expires_at,
                    },
                )
                .await?;
                let logged_in = UserLoggedIn {
                    user_id: user.id.to_string(),
                    session_id: session_id.to_string(),
                    logged_in_at: Some(identity_proto::timestamp(now)),
                };
                self.settings
                    .events
                    .record(conn, user.id, &logged_in)
                    .await?;
                Ok::<_, LoginError>(Self::new_refresh_token(conn, session_id, 0, now).await?)
            })
            .await
            .inspect_err(|e| {
                if matches!(e, LoginError::InvalidCredentials) {
                    tracing::info!("login refused: the password changed while it was checked");
                    metrics::counter!(crate::metrics::LOGINS, "outcome" => "invalid_credentials")
                        .increment(1);
                }
            })?;
        let (access_token, access_expires_at) = self.access_token(user.id, session_id, now)?;
        tracing::info!(
            event = "user.logged_in",
            user_id = %user.id,
            session_id = %session_id,
            "session started"
        );
        metrics::counter!(crate::metrics::LOGINS, "outcome" => "success").increment(1);
        Ok(Issued {
            user_id: user.id,
            access_token,
            access_expires_at,
            refresh_token,
            refresh_expires_at,
        })
    }

    /// Checks `password` against the active account, then against the newest pending
    /// registration (a dummy hash standing in for a missing one); returns the first row it
    /// opens. Every refusal costs the same two hashes.
    async fn check(
        &self,
        password: &SecretString,
        candidates: db::sessions::Candidates,
    ) -> Result<Option<(db::sessions::Credentials, Verification)>, LoginError> {
        for candidate in [candidates.active, candidates.pending] {
            let stored = candidate
                .as_ref()
                .map_or(self.dummy_hash.as_str(), |c| c.password_hash.as_str());
            let verification = self.hasher.verify(password.expose_secret(), stored).await?;
            if let Some(found) = candidate.filter(|_| verification.matches) {
                return Ok(Some((found, verification)));
            }
        }
        Ok(None)
    }

    /// The password hashed with the current parameters, computed while no connection is held.
    /// Best effort: if hashing is saturated or fails, the login goes on with the old hash and a
    /// later login upgrades it.
    async fn upgraded_hash(&self, password: &SecretString) -> Option<String> {
        match self.hasher.rehash(password.expose_secret()).await {
            Ok(upgraded) => Some(upgraded),
            Err(e) => {
                tracing::warn!(error.message = %e, "password hash not upgraded this time");
                None
            }
        }
    }
}
