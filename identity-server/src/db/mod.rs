//! PostgreSQL access: the connection pool, the embedded migrations, error classification and
//! one module of queries per table. Queries take an open connection, so callers decide the
//! transaction they run in.

pub mod outbox;
pub mod password_reset;
pub mod retention;
pub mod retry;
pub mod schema;
pub mod sessions;
pub mod users;
pub mod verification;

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{
    AsyncConnection, AsyncPgConnection,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, deadpool},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;
use secrecy::{ExposeSecret, SecretString};

#[diesel::declare_sql_function]
extern "SQL" {
    /// PostgreSQL's `lower(text)`, as the unique index on `users` compares addresses.
    fn lower(value: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// Every migration in `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// The connection pool.
pub type Pool = deadpool::Pool<AsyncPgConnection>;

/// How the pool connects and how long anything may wait on the database before the caller is
/// told it is unavailable.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// `postgres://` URL; a secret, since it may hold a password.
    pub url: SecretString,
    /// Most connections open at once.
    pub max_size: usize,
    /// Limit for opening one connection, and for waiting on a free one.
    pub timeout: Duration,
}

/// Builds the pool. No connection is opened until one is needed, so this succeeds while the
/// database is down and the server recovers by itself when it comes back.
pub fn pool(config: &PoolConfig) -> anyhow::Result<Pool> {
    let connect_timeout = config.timeout;
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    manager_config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        async move {
            tokio::time::timeout(connect_timeout, AsyncPgConnection::establish(&url))
                .await
                .unwrap_or_else(|_| {
                    Err(diesel::ConnectionError::BadConnection(
                        "timed out connecting to the database".into(),
                    ))
                })
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        config.url.expose_secret(),
        manager_config,
    );
    Ok(deadpool::Pool::builder(manager)
        .max_size(config.max_size)
        .wait_timeout(Some(config.timeout))
        .create_timeout(Some(config.timeout))
        .recycle_timeout(Some(config.timeout))
        .runtime(::deadpool::Runtime::Tokio1)
        .build()?)
}

/// A database failure, split by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (down, restarting, or too slow to hand out a connection).
    /// Nothing was committed; retrying later is safe.
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
        Self::Unavailable(error.to_string())
    }
}

impl From<DieselError> for StoreError {
    fn from(error: DieselError) -> Self {
        if is_connection_loss(&error) {
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

/// Whether `error` is a violation of the unique index or constraint named `constraint`.
pub fn is_unique_violation(error: &DieselError, constraint: &str) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(constraint)
    )
}

/// Applies pending migrations on one connection; returns the versions it applied.
pub async fn run_migrations(url: &SecretString) -> anyhow::Result<Vec<String>> {
    let url = url.expose_secret().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("applying migrations: {e}"))?;
        Ok(applied.iter().map(ToString::to_string).collect())
    })
    .await?
}

/// The versions of migrations that are embedded but not applied.
pub async fn pending_migrations(url: &SecretString) -> anyhow::Result<Vec<String>> {
    let url = url.expose_secret().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)?;
        let pending = conn
            .pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("reading applied migrations: {e}"))?;
        Ok(pending.iter().map(|m| m.name().to_string()).collect())
    })
    .await?
}
