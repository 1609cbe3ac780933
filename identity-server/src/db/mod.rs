//! PostgreSQL access: the connection pool, the embedded migrations, error classification and
//! one module of queries per table. Queries take an open connection, so callers decide the
//! transaction they run in.

pub mod challenge_solutions;
pub mod email_budget;
pub mod outbox;
pub mod password_reset;
pub mod rate_limits;
pub mod retention;
pub mod retry;
pub mod schema;
pub mod sessions;
pub mod users;
pub mod verification;

mod migrations;

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncPgConnection, pooled_connection::deadpool};
use identity_proto::pg::{self, Connector, SessionTimeouts};
use secrecy::{ExposeSecret, SecretString};

pub use migrations::{MIGRATION_LOCK_KEY, MIGRATIONS, pending_migrations, run_migrations};

#[diesel::declare_sql_function]
extern "SQL" {
    /// PostgreSQL's `lower(text)`, as the indexes on `users` compare addresses.
    fn lower(value: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// The connection pool.
pub type Pool = deadpool::Pool<AsyncPgConnection>;

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
    fn from(error: DieselError) -> Self {
        if is_connection_loss(&error) || is_timeout(&error) {
            Self::Unavailable(error.to_string())
        } else {
            Self::Query(error)
        }
    }
}

/// Whether `error` means the connection is gone rather than that the query was wrong.
fn is_connection_loss(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => true,
        // A server that shuts down or starts up says so with SQLSTATE 57P01 / 57P03, which
        // diesel reports as Unknown; its message is the only thing diesel lets us see.
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let message = info.message();
            message.starts_with("terminating connection")
                || message.starts_with("the database system is")
        }
        _ => false,
    }
}

/// Whether PostgreSQL cancelled the statement because it waited too long: `lock_timeout` or a
/// `NOWAIT` lock (SQLSTATE 55P03, lock_not_available), `statement_timeout` or a cancel request
/// (57014, query_canceled). The transaction was rolled back.
///
/// diesel reports both as `DatabaseErrorKind::Unknown` and does not expose the SQLSTATE
/// (`DatabaseErrorInformation` has no code, and diesel-async's wrapper around tokio-postgres'
/// `DbError` is private), so the primary message is what we can match, as for shutdowns
/// above. These are fixed texts in PostgreSQL's source, translated only when the server's
/// `lc_messages` names another language (a client cannot override it without superuser
/// rights); matched by prefix, so the relation named in "could not obtain lock on row in
/// relation ..." does not matter. Should a server answer in another language, such a call
/// still fails fast and writes nothing, but as INTERNAL.
fn is_timeout(error: &DieselError) -> bool {
    const PREFIXES: [&str; 2] = [
        // 55P03 from lock_timeout, 57014 from statement_timeout or pg_cancel_backend.
        "canceling statement due to ",
        // 55P03 from NOWAIT.
        "could not obtain lock on ",
    ];
    match error {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => PREFIXES
            .iter()
            .any(|prefix| info.message().starts_with(prefix)),
        _ => false,
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

    fn unknown(message: &str) -> DieselError {
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_owned()))
    }

    #[test]
    fn lock_and_statement_timeouts_are_unavailable() {
        for message in [
            "canceling statement due to lock timeout",
            "canceling statement due to statement timeout",
            "canceling statement due to user request",
            "could not obtain lock on row in relation \"users\"",
            "terminating connection due to administrator command",
            "the database system is shutting down",
        ] {
            assert!(
                matches!(
                    StoreError::from(unknown(message)),
                    StoreError::Unavailable(_)
                ),
                "{message}"
            );
        }
    }

    #[test]
    fn other_database_errors_stay_query_errors() {
        for error in [
            unknown("relation \"nope\" does not exist"),
            DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                Box::new("canceling statement due to lock timeout".to_owned()),
            ),
            DieselError::NotFound,
        ] {
            assert!(matches!(StoreError::from(error), StoreError::Query(_)));
        }
    }
}
