//! Sessions: Login starts one, RefreshSession rotates its refresh token, RevokeSession ends it.
//! Access tokens are PASETO v4.public, signed by the [`KeyDirectory`]'s ring; refresh tokens are
//! opaque and stored only as SHA-256.

mod login;
mod refresh;

use std::{sync::Arc, time::Duration as StdDuration};

use diesel_async::AsyncPgConnection;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pub use login::LoginError;
pub use refresh::RefreshError;

use crate::{
    clock::Clock,
    db::{self, StoreError},
    domain::RefreshToken,
    hashing::PasswordHasher,
    tokens::{KeyDirectory, TokenSettings},
};

/// The most consecutive failures [`Settings::free_failures`] may allow.
pub const MAX_FREE_FAILURES: i32 = 32;

/// The most live sessions one user has: a login beyond ends the oldest (reason
/// `SESSION_LIMIT`), so what a password reset revokes, and writes as events, is bounded.
pub const MAX_LIVE_SESSIONS: i64 = 50;

/// Access tokens, session lifetime, and the login throttle.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Issuer, audience and lifetime of access tokens.
    pub tokens: TokenSettings,
    /// How long a session lives, however often it is refreshed.
    pub refresh_ttl: Duration,
    /// Consecutive failures allowed before logins for an address are delayed.
    pub free_failures: i32,
    /// The first delay; each further failure doubles it.
    pub first_delay: StdDuration,
    /// The longest delay.
    pub max_delay: StdDuration,
    /// How long after a refresh token was retired by a rotation presenting it again is taken
    /// for a retry (a fresh pair) rather than reuse (revocation); see [`refresh`].
    pub refresh_reuse_grace: Duration,
    /// Whether domain events are queued ([`crate::db::outbox::Events`]).
    pub events: crate::db::outbox::Events,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tokens: TokenSettings {
                issuer: "identity".into(),
                audience: "identity-clients".into(),
                access_ttl: Duration::minutes(15),
            },
            refresh_ttl: Duration::days(30),
            free_failures: 3,
            first_delay: StdDuration::from_secs(1),
            max_delay: StdDuration::from_secs(15 * 60),
            refresh_reuse_grace: Duration::seconds(20),
            events: crate::db::outbox::Events::default(),
        }
    }
}

impl Settings {
    /// How long logins wait after `failures` consecutive failures (zero while free).
    pub fn delay_after(&self, failures: i32) -> StdDuration {
        let over = failures - self.free_failures;
        if over < 0 {
            return StdDuration::ZERO;
        }
        let doubled = self.first_delay.saturating_mul(
            1u32.checked_shl(over.unsigned_abs().min(31))
                .unwrap_or(u32::MAX),
        );
        doubled.min(self.max_delay)
    }

    /// [`Settings::delay_after`] 1, 2, 3… failures, in seconds, up to the first delay that
    /// stays the same for every further failure (the login throttle repeats the last one).
    pub fn delay_schedule(&self) -> Vec<f64> {
        // Past `free_failures + 31` failures the doubling stops (see `delay_after`).
        let last = self.free_failures.clamp(0, MAX_FREE_FAILURES) + 32;
        let mut delays = Vec::new();
        for failures in 1..=last {
            let delay = self.delay_after(failures);
            delays.push(delay.as_secs_f64());
            if delay >= self.max_delay {
                break;
            }
        }
        delays
    }
}

/// A session's tokens, as Login and RefreshSession return them.
pub struct Issued {
    pub user_id: Uuid,
    pub access_token: String,
    pub access_expires_at: OffsetDateTime,
    pub refresh_token: RefreshToken,
    pub refresh_expires_at: OffsetDateTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("user_id", &self.user_id)
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_expires_at", &self.refresh_expires_at)
            .finish_non_exhaustive()
    }
}

/// The session service and what it depends on.
pub struct Sessions {
    pool: db::Pool,
    hasher: PasswordHasher,
    keys: Arc<KeyDirectory>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    /// [`Settings::delay_schedule`], for the login throttle.
    login_delays: Vec<f64>,
    /// Checked against when the address is unknown, so that the answer takes as long.
    dummy_hash: String,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Assembles the service; computes the dummy hash once.
    pub async fn new(
        pool: db::Pool,
        hasher: PasswordHasher,
        keys: Arc<KeyDirectory>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (0..=MAX_FREE_FAILURES).contains(&settings.free_failures),
            "free login failures must be between 0 and {MAX_FREE_FAILURES}"
        );
        anyhow::ensure!(
            !settings.refresh_reuse_grace.is_negative(),
            "the refresh reuse grace window cannot be negative"
        );
        let dummy_hash = hasher
            .dummy_hash()
            .await
            .map_err(|e| anyhow::anyhow!("computing the dummy hash: {e}"))?;
        Ok(Self {
            pool,
            hasher,
            keys,
            clock,
            login_delays: settings.delay_schedule(),
            settings,
            dummy_hash,
        })
    }

    /// What access tokens carry, for the services that verify them.
    pub fn token_settings(&self) -> &TokenSettings {
        &self.settings.tokens
    }

    /// Gives `session_id` a fresh refresh token of `generation` inside the caller's transaction.
    async fn new_refresh_token(
        conn: &mut AsyncPgConnection,
        session_id: Uuid,
        generation: i64,
        now: OffsetDateTime,
    ) -> Result<RefreshToken, StoreError> {
        let token = RefreshToken::generate();
        db::sessions::insert_refresh_token(conn, session_id, &token.hash(), generation, now)
            .await?;
        Ok(token)
    }

    /// Signs an access token for the session.
    fn access_token(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        now: OffsetDateTime,
    ) -> anyhow::Result<(String, OffsetDateTime)> {
        let tokens = &self.settings.tokens;
        let claims = tokens.claims(user_id, session_id, vec!["user".into()]);
        let issued = self
            .keys
            .ring()
            .issue(&claims, now, tokens.access_ttl)
            .map_err(|e| anyhow::anyhow!("signing an access token: {e}"))?;
        Ok((issued.token, issued.expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_delays_double_after_the_free_failures_up_to_the_cap() {
        let settings = Settings::default();
        let delays: Vec<u64> = (1..=8).map(|n| settings.delay_after(n).as_secs()).collect();
        assert_eq!(delays, [0, 0, 1, 2, 4, 8, 16, 32]);
        assert_eq!(settings.delay_after(100), StdDuration::from_secs(900));
    }

    #[test]
    fn the_delay_schedule_ends_at_the_cap() {
        let settings = Settings::default();
        let schedule = settings.delay_schedule();
        assert_eq!(
            schedule,
            [
                0., 0., 1., 2., 4., 8., 16., 32., 64., 128., 256., 512., 900.
            ]
        );
    }

    #[test]
    fn the_delay_schedule_is_never_empty_and_never_passes_the_cap() {
        for (free_failures, first, max) in [(0, 0, 0), (3, 0, 60), (0, 1, 1), (32, 1, u64::MAX)] {
            let settings = Settings {
                free_failures,
                first_delay: StdDuration::from_secs(first),
                max_delay: StdDuration::from_secs(max),
                ..Settings::default()
            };
            let schedule = settings.delay_schedule();
            assert!(!schedule.is_empty());
            assert!(schedule.len() <= 65, "{schedule:?}");
            assert!(schedule.iter().all(|&d| d <= max as f64), "{schedule:?}");
        }
    }
}
