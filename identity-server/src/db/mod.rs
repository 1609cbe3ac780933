//! PostgreSQL access: the connection pool, the embedded migrations, error classification and
//! one module of queries per table. Queries take an open connection, so callers decide the
//! transaction they run in.

pub mod challenge_solutions;
pub mod email_budget;
pub mod outbox;
pub mod password_reset;
pub mod rate_limits;
pub mod rehearsal;
pub mod retention;
pub mod retry;
pub mod schema;
pub mod sessions;
pub mod users;
pub mod verification;

mod migrations;

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool;
use identity_proto::pg::{self, Connector, Failure, SessionTimeouts};
use secrecy::{ExposeSecret, SecretString};

pub use migrations::{MIGRATION_LOCK_KEY, MIGRATIONS, pending_migrations, run_migrations};

#[diesel::declare_sql_function]
extern "SQL" {
    /// PostgreSQL's `lower(text)`, as the indexes on `users` compare addresses.
    fn lower(value: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// The connection pool.
pub type Pool = pg::Pool;

/// How the pool connects and how long anything may wait on the database before the caller is
/// told it is unavailable.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// `postgres://` URL, with libpq's `sslmode` and `sslrootcert` (see `identity_proto::pg`); a
    /// secret, since it may hold a password.
    pub url: SecretString,
    /// Most connections open at once.
    pub max_size: usize,
    /// Limit for opening one connection, and for waiting on a free one.
    pub timeout: Duration,
    /// `statement_timeout` and `lock_timeout` of every pooled connection.
    pub session: SessionTimeouts,
}

/// Builds the pool. No connection is opened until one is needed, so this succeeds while the
/// database is down and the server recovers by itself when it comes back; a malformed URL or
/// an unreadable CA file fails here, at start-up.
pub fn pool(config: &PoolConfig) -> anyhow::Result<Pool> {
    let connector =
        Connector::new(config.url.expose_secret())?.with_session_timeouts(config.session);
    Ok(pg::pool(connector, config.max_size, config.timeout)?)
}

/// A database failure, split by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (down, restarting, or too slow to hand out a connection),
    /// or gave up on a statement (lock or statement timeout). Nothing was committed; retrying
    /// later is safe.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other failure: a bug or a broken invariant.
    #[error("database error: {0}")]
    Query(#[source] DieselError),
    /// A value could not be prepared for storage: a bug.
    #[error("{0}")]
    Unexpected(String),
}

impl From<deadpool::PoolError> for StoreError {
    fn from(error: deadpool::PoolError) -> Self {
        if matches!(error, deadpool::PoolError::Timeout(_)) {
            metrics::counter!(crate::metrics::DB_POOL_TIMEOUTS).increment(1);
        }
        Self::Unavailable(error.to_string())
    }
}

impl From<DieselError> for StoreError {
    /// Unavailable when the error's SQLSTATE says so (a timeout, a lost or refused connection, a
    /// server stopping or out of resources: see [`Failure`]); any other failure, conflicts
    /// included (the caller's [`retry::Retry`] runs those again), stays a query error.
    fn from(error: DieselError) -> Self {
        match Failure::of(&error) {
            Failure::Unavailable => Self::Unavailable(error.to_string()),
            Failure::Conflict | Failure::Other => Self::Query(error),
        }
    }
}

/// Whether `error` is a violation of the unique index or constraint named `constraint`.
pub fn is_unique_violation(error: &DieselError, constraint: &str) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(constraint)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_mean_retry_later_are_unavailable() {
        let closed = DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("connection closed".to_owned()),
        );
        assert!(matches!(
            StoreError::from(closed),
            StoreError::Unavailable(_)
        ));
        // The message does not count: an English timeout text without its SQLSTATE is a bug.
        for error in [
            DieselError::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new("canceling statement due to lock timeout".to_owned()),
            ),
            DieselError::NotFound,
        ] {
            assert!(matches!(StoreError::from(error), StoreError::Query(_)));
        }
    }
}
