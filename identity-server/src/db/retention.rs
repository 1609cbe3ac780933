//! The janitor's deletes: one batch of rows that are due, per kind.
//!
//! Each batch is one statement: it picks at most `limit` due rows with `FOR UPDATE SKIP
//! LOCKED` and deletes them, so any number of janitors (one per replica) run at once, each
//! deleting rows no other holds, and none waits for a request that holds a row. Each `WHERE`
//! clause has an index of its own (migrations `..._retention_and_code_cap`,
//! `..._rate_limits`, `..._challenge_solutions`, `..._pending_registrations`).

use diesel::sql_types::{BigInt, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;

use super::StoreError;

/// A kind of row the janitor deletes, and when one is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Pending accounts created before the cutoff, none of whose links still works at `now`;
    /// their secrets go with them, and the address is free again.
    UnverifiedAccounts {
        created_before: OffsetDateTime,
        now: OffsetDateTime,
    },
    /// Verification secrets that stopped working (consumed or expired) before the cutoff.
    VerificationSecrets { spent_before: OffsetDateTime },
    /// Reset tokens that stopped working (consumed or expired) before the cutoff.
    ResetTokens { spent_before: OffsetDateTime },
    /// Sessions that ended before the cutoff, with their refresh tokens.
    ExpiredSessions { expired_before: OffsetDateTime },
    /// Login-throttle rows whose last failure and block both ended before the cutoff.
    StaleLoginThrottles { stale_before: OffsetDateTime },
    /// Dead letters older than the cutoff.
    DeadLetters { dead_before: OffsetDateTime },
    /// Marks of used challenge solutions whose challenges expired before the cutoff.
    ChallengeSolutions { expired_before: OffsetDateTime },
    /// Email budget ledger rows of sends made before the cutoff.
    EmailSends { sent_before: OffsetDateTime },
    /// Rate-limit rows whose theoretical arrival time has passed: they hold no state (a key
    /// without a row behaves the same).
    SpentRateLimits { tat_before: OffsetDateTime },
}

/// The statement for a table whose rows are due when one expression (matching the table's
/// retention index) is at most the cutoff `$1`: at most `$2` rows, skipping locked ones.
macro_rules! batch {
    ($table:literal, $key:literal, $due:literal) => {
        concat!(
            "DELETE FROM ",
            $table,
            " WHERE ",
            $key,
            " IN (SELECT ",
            $key,
            " FROM ",
            $table,
            " WHERE ",
            $due,
            " <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
        )
    };
}

/// Deletes at most `limit` due rows of one kind; returns how many it deleted.
pub async fn delete_batch(
    conn: &mut AsyncPgConnection,
    due: Due,
    limit: i64,
) -> Result<usize, StoreError> {
    let (sql, cutoff) = match due {
        // A pending account goes only once no link of its works, so nobody holds a live link
        // to a deleted account. Verifications and resends lock the user row, so SKIP LOCKED
        // leaves alone an account that is being verified right now.
        Due::UnverifiedAccounts { created_before, .. } => (
            "DELETE FROM users WHERE id IN (
                SELECT u.id FROM users u
                WHERE u.status = 'pending_verification' AND u.created_at <= $1
                  AND NOT EXISTS (
                      SELECT 1 FROM verification_secrets s
                      WHERE s.user_id = u.id AND s.consumed_at IS NULL AND s.expires_at > $3)
                LIMIT $2 FOR UPDATE OF u SKIP LOCKED)",
            created_before,
        ),
        Due::VerificationSecrets { spent_before } => (
            batch!(
                "verification_secrets",
                "id",
                "LEAST(expires_at, consumed_at)"
            ),
            spent_before,
        ),
        Due::ResetTokens { spent_before } => (
            batch!(
                "password_reset_tokens",
                "id",
                "LEAST(expires_at, consumed_at)"
            ),
            spent_before,
        ),
        // A batch of expired sessions with their refresh tokens, in one statement. It locks
        // in the order a refresh does (the session, then its tokens), and skips a session a
        // refresh or revocation holds, so it never waits for one. (Deleting the tokens of all
        // expired sessions first, in batches, walked the expired sessions already drained on
        // every batch: a sweep's cost grew with the square of the sessions it deleted.)
        Due::ExpiredSessions { expired_before } => (
            "WITH due AS MATERIALIZED (
                SELECT id FROM sessions WHERE expires_at <= $1
                LIMIT $2 FOR UPDATE SKIP LOCKED),
            tokens AS (
                DELETE FROM refresh_tokens r USING due WHERE r.session_id = due.id)
            DELETE FROM sessions s USING due WHERE s.id = due.id",
            expired_before,
        ),
        Due::StaleLoginThrottles { stale_before } => (
            batch!(
                "login_throttle",
                "email_key",
                "GREATEST(blocked_until, last_failed_at)"
            ),
            stale_before,
        ),
        Due::DeadLetters { dead_before } => (batch!("outbox_dead", "id", "dead_at"), dead_before),
        Due::ChallengeSolutions { expired_before } => (
            batch!("challenge_solutions", "challenge", "expires_at"),
            expired_before,
        ),
        Due::EmailSends { sent_before } => (batch!("email_sends", "id", "sent_at"), sent_before),
        // A call racing with this delete either locked the row first (SKIP LOCKED leaves it)
        // or finds no row and inserts a fresh one, which is what the deleted row meant.
        Due::SpentRateLimits { tat_before } => (batch!("rate_limits", "key", "tat"), tat_before),
    };
    let query = diesel::sql_query(sql)
        .bind::<Timestamptz, _>(cutoff)
        .bind::<BigInt, _>(limit);
    let deleted = match due {
        Due::UnverifiedAccounts { now, .. } => {
            query.bind::<Timestamptz, _>(now).execute(conn).await?
        }
        _ => query.execute(conn).await?,
    };
    Ok(deleted)
}
