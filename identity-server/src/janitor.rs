//! The janitor: a background task that deletes, on an interval, what no longer serves anyone,
//! so that no table grows without bound and no unverified sign-up holds an address forever.
//!
//! What goes, and when (`now` comes from the injected [`Clock`]):
//! - pending accounts older than `unverified_account_ttl` none of whose links still works
//!   (with their secrets), which frees the address for a new sign-up;
//! - verification secrets and reset tokens `spent_secret_retention` after they stopped working
//!   (used or expired); until then a user presenting one is told "expired" or "already used"
//!   rather than "unknown";
//! - sessions once they expire, with their refresh tokens;
//! - login-throttle rows `login_throttle_retention` after both their last failure and their
//!   block;
//! - dead letters (`outbox_dead`) `dead_letter_retention` after they died;
//! - marks of used challenge solutions [`CHALLENGE_CLOCK_MARGIN`] after their challenge
//!   expired (an expired solution is refused anyway).
//! - the email budget's ledger rows a day after their send, when they no longer count.
//! - rate-limit rows once their theoretical arrival time has passed (they hold no state then).
//!
//! Every replica runs one; they never delete the same row or wait on each other
//! ([`db::retention`]).

use std::sync::Arc;

use time::Duration;

use crate::{
    clock::Clock,
    db::{self, StoreError, retention::Due},
    domain::EmailBudget,
};

/// How long a used challenge solution stays marked after its challenge expired: a replica whose
/// clock lags this much behind the janitor's still refuses a replay.
pub const CHALLENGE_CLOCK_MARGIN: Duration = Duration::minutes(5);

/// When the janitor runs and what it keeps.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between two sweeps; the first comes one interval after start.
    pub interval: std::time::Duration,
    /// Most rows one statement deletes.
    pub batch_size: i64,
    /// How long used or expired verification secrets and reset tokens are kept.
    pub spent_secret_retention: Duration,
    /// How long a login-throttle row is kept after its last failure and its block.
    pub login_throttle_retention: Duration,
    /// How long dead letters are kept.
    pub dead_letter_retention: Duration,
    /// How long a pending account may wait for its address to be verified.
    pub unverified_account_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: std::time::Duration::from_secs(5 * 60),
            batch_size: 1000,
            spent_secret_retention: Duration::days(7),
            login_throttle_retention: Duration::days(1),
            dead_letter_retention: Duration::days(30),
            unverified_account_ttl: Duration::days(7),
        }
    }
}

/// What one sweep deleted, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub unverified_accounts: usize,
    pub verification_secrets: usize,
    pub reset_tokens: usize,
    pub sessions: usize,
    pub login_throttles: usize,
    pub dead_letters: usize,
    pub challenge_solutions: usize,
    pub email_sends: usize,
    pub rate_limits: usize,
}

impl Swept {
    /// Rows deleted in all.
    pub fn total(&self) -> usize {
        self.unverified_accounts
            + self.verification_secrets
            + self.reset_tokens
            + self.sessions
            + self.login_throttles
            + self.dead_letters
            + self.challenge_solutions
            + self.email_sends
            + self.rate_limits
    }

    fn count(&mut self, due: Due, deleted: usize) {
        let counter = match due {
            Due::UnverifiedAccounts { .. } => &mut self.unverified_accounts,
            Due::VerificationSecrets { .. } => &mut self.verification_secrets,
            Due::ResetTokens { .. } => &mut self.reset_tokens,
            Due::ExpiredSessions { .. } => &mut self.sessions,
            Due::StaleLoginThrottles { .. } => &mut self.login_throttles,
            Due::DeadLetters { .. } => &mut self.dead_letters,
            Due::ChallengeSolutions { .. } => &mut self.challenge_solutions,
            Due::EmailSends { .. } => &mut self.email_sends,
            Due::SpentRateLimits { .. } => &mut self.rate_limits,
        };
        *counter += deleted;
    }
}

/// Deletes what is due; see the module documentation.
pub struct Janitor {
    pool: db::Pool,
    clock: Arc<dyn Clock>,
    settings: Settings,
}

impl std::fmt::Debug for Janitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Janitor")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Janitor {
    /// A janitor on `pool`, telling time by `clock`.
    pub fn new(pool: db::Pool, clock: Arc<dyn Clock>, settings: Settings) -> Self {
        Self {
            pool,
            clock,
            settings,
        }
    }

    /// Deletes everything that is due now, batch by batch, and says how much it deleted.
    #[tracing::instrument(name = "janitor_sweep", skip_all)]
    pub async fn sweep(&self) -> Result<Swept, StoreError> {
        let now = self.clock.now();
        let s = &self.settings;
        // Accounts first: their secrets go with them. Sessions go with their refresh tokens.
        let kinds = [
            Due::UnverifiedAccounts {
                created_before: now - s.unverified_account_ttl,
                now,
            },
            Due::VerificationSecrets {
                spent_before: now - s.spent_secret_retention,
            },
            Due::ResetTokens {
                spent_before: now - s.spent_secret_retention,
            },
            Due::ExpiredSessions {
                expired_before: now,
            },
            Due::StaleLoginThrottles {
                stale_before: now - s.login_throttle_retention,
            },
            Due::DeadLetters {
                dead_before: now - s.dead_letter_retention,
            },
            Due::ChallengeSolutions {
                expired_before: now - CHALLENGE_CLOCK_MARGIN,
            },
            Due::EmailSends {
                sent_before: now - EmailBudget::WINDOW,
            },
            Due::SpentRateLimits { tat_before: now },
        ];
        let mut swept = Swept::default();
        for due in kinds {
            let mut conn = self.pool.get().await?;
            loop {
                let deleted = db::retention::delete_batch(&mut conn, due, s.batch_size).await?;
                swept.count(due, deleted);
                if i64::try_from(deleted).map_or(true, |n| n < s.batch_size) {
                    break;
                }
            }
        }
        Ok(swept)
    }

    /// Sweeps every interval until the task is dropped. Dropping it mid-sweep is safe: each
    /// batch is one statement, which either commits or rolls back.
    pub async fn run(self) {
        let period = self.settings.interval;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.sweep().await {
                Ok(swept) if swept.total() > 0 => tracing::info!(
                    unverified_accounts = swept.unverified_accounts,
                    verification_secrets = swept.verification_secrets,
                    reset_tokens = swept.reset_tokens,
                    sessions = swept.sessions,
                    login_throttles = swept.login_throttles,
                    dead_letters = swept.dead_letters,
                    challenge_solutions = swept.challenge_solutions,
                    email_sends = swept.email_sends,
                    rate_limits = swept.rate_limits,
                    "janitor deleted expired rows"
                ),
                Ok(_) => tracing::debug!("janitor found nothing due"),
                Err(e) => tracing::warn!(
                    error.message = %e,
                    error.cause_chain = ?e,
                    "janitor sweep failed; trying again next interval"
                ),
            }
        }
    }
}
