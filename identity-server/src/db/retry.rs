//! Running a transaction again when PostgreSQL aborted it to keep concurrent transactions
//! consistent: a serialization failure (SQLSTATE 40001) or a deadlock (40P01). Such a
//! transaction changed nothing, so running it again is safe; after a few attempts the caller is
//! told the database is unavailable (retry later), never that something broke.
//!
//! Use cases take their row locks in one order (the user row first, then its secrets, tokens
//! or sessions), so conflicts are rare; this turns the rare one into a short wait.

use std::time::Duration;

use diesel::result::Error as DieselError;
use identity_proto::pg::Failure;

use super::StoreError;

/// Attempts in all, the first included.
const MAX_ATTEMPTS: u32 = 5;

/// The pause before attempt `n + 1` is random in `[0, BASE_PAUSE * 2^(n - 1))`: full jitter,
/// so the transactions that collided do not collide again.
const BASE_PAUSE: Duration = Duration::from_millis(10);

/// An error that may be a database failure; lets [`Retry::settle`] look inside a use case's
/// own error type.
pub trait MaybeStoreError {
    /// The database failure this error is, if it is one.
    fn store_error(&self) -> Option<&StoreError>;
}

impl StoreError {
    /// Whether PostgreSQL aborted the transaction because of a concurrent one (serialization
    /// failure or deadlock), so that running it again may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Query(e) if is_conflict(e))
    }
}

/// Whether `error` is a serialization failure (40001) or a deadlock (40P01), by its SQLSTATE.
pub fn is_conflict(error: &DieselError) -> bool {
    Failure::of(error) == Failure::Conflict
}

/// Decides, after each attempt of a transaction, whether to run it again. Use it as
///
/// ```text
/// let mut retry = db::retry::Retry::default();
/// let outcome = loop {
///     let attempt = conn.transaction(async |conn| { /* ... */ }).await;
///     if let Some(done) = retry.settle(attempt).await {
///         break done;
///     }
/// };
/// ```
#[derive(Debug, Default)]
pub struct Retry {
    attempts: u32,
}

impl Retry {
    /// `Some(outcome)` once the transaction is done: it succeeded, failed for another reason,
    /// or conflicted [`MAX_ATTEMPTS`] times (then as [`StoreError::Unavailable`]: nothing was
    /// written and the caller may retry). `None`, after a short random pause, when it
    /// conflicted and should run again.
    pub async fn settle<T, E>(&mut self, outcome: Result<T, E>) -> Option<Result<T, E>>
    where
        E: MaybeStoreError + From<StoreError> + std::fmt::Display,
    {
        let conflict = match &outcome {
            Err(e) => e.store_error().is_some_and(StoreError::is_conflict),
            Ok(_) => false,
        };
        if !conflict {
            return Some(outcome);
        }
        self.attempts += 1;
        let attempts = self.attempts;
        let error = outcome.err().map(|e| e.to_string()).unwrap_or_default();
        if attempts >= MAX_ATTEMPTS {
            tracing::warn!(
                attempts,
                error.message = %error,
                "transaction still conflicting after the last attempt; giving up"
            );
            return Some(Err(StoreError::Unavailable(format!(
                "transaction aborted by concurrent ones {attempts} times: {error}"
            ))
            .into()));
        }
        tracing::debug!(attempts, error.message = %error, "transaction conflicted; retrying");
        tokio::time::sleep(pause(attempts)).await;
        None
    }
}

/// A random pause before the attempt after attempt `attempts`.
fn pause(attempts: u32) -> Duration {
    let ceiling = BASE_PAUSE.saturating_mul(1 << attempts.saturating_sub(1).min(10));
    let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rand::random_range(0..micros.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_with_the_attempts_and_stay_under_their_ceiling() {
        for attempts in 1..MAX_ATTEMPTS {
            let ceiling = BASE_PAUSE * (1 << (attempts - 1));
            for _ in 0..100 {
                assert!(pause(attempts) < ceiling);
            }
        }
    }
}
