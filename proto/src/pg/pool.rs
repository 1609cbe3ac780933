//! Pooled connections: the limits every statement runs under, and the pool itself.

use std::time::Duration;

use deadpool::managed::{BuildError, Metrics, RecycleError, RecycleResult};
use diesel::ConnectionError;
use diesel_async::{
    AsyncPgConnection,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, PoolError, PoolableConnection,
    },
};
use futures_util::FutureExt;

use super::Connector;

/// Limits every statement of a pooled connection runs under, so no call waits forever behind a
/// stuck lock or a runaway query. When one fires, PostgreSQL cancels the statement (SQLSTATE
/// 55P03 for the lock, 57014 for the statement) and the transaction rolls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    /// `statement_timeout`: the longest any statement may run, lock waits included.
    pub statement: Duration,
    /// `lock_timeout`: the longest a statement may wait for one lock.
    pub lock: Duration,
}

impl Default for SessionTimeouts {
    fn default() -> Self {
        Self {
            statement: Duration::from_secs(5),
            lock: Duration::from_secs(2),
        }
    }
}

impl SessionTimeouts {
    /// Refuses a zero limit (PostgreSQL reads 0 as "no limit") and a lock limit above the
    /// statement limit (it could never fire).
    pub fn validate(&self) -> Result<(), String> {
        if self.statement.is_zero() || self.lock.is_zero() {
            return Err("the statement and lock timeouts must be positive".into());
        }
        if self.lock > self.statement {
            return Err(format!(
                "the lock timeout ({} ms) cannot exceed the statement timeout ({} ms)",
                self.lock.as_millis(),
                self.statement.as_millis()
            ));
        }
        Ok(())
    }
}

/// A pool of connections.
pub type Pool = deadpool::managed::Pool<Manager>;

/// A connection back in the pool for less than this is handed out again without a query to
/// check it.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Opens connections as diesel-async's manager does, and checks one with a query (`SELECT 1`,
/// a round trip) before handing it out again only if it sat idle in the pool for a second or
/// more: a server restart or a dropped network path while it sat there is then found before a
/// call uses it. A connection used a moment ago is handed out at once, unless it is known to be
/// broken or left inside a transaction; under load that spares every call a round trip (one of
/// RefreshSession's five). The cost: a connection the server dropped within the second before
/// it is reused fails its call once, and is then discarded.
pub struct Manager(AsyncDieselConnectionManager<AsyncPgConnection>);

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Manager").finish_non_exhaustive()
    }
}

impl deadpool::managed::Manager for Manager {
    type Type = AsyncPgConnection;
    type Error = PoolError;

    async fn create(&self) -> Result<AsyncPgConnection, PoolError> {
        self.0.create().await
    }

    async fn recycle(
        &self,
        conn: &mut AsyncPgConnection,
        metrics: &Metrics,
    ) -> RecycleResult<PoolError> {
        if metrics.last_used() >= CHECK_AFTER_IDLE {
            return self.0.recycle(conn, metrics).await;
        }
        if std::thread::panicking() || conn.is_broken() {
            return Err(RecycleError::message("a broken connection"));
        }
        Ok(())
    }
}

/// A pool of up to `max_size` connections opened by `connector`: opening one, waiting for a
/// free one and recycling one each give up after `timeout`. No connection is opened until one
/// is needed, so this succeeds while the database is down.
pub fn pool(connector: Connector, max_size: usize, timeout: Duration) -> Result<Pool, BuildError> {
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    let description = connector.target.clone();
    manager_config.custom_setup = Box::new(move |_url| {
        let connector = connector.clone();
        async move {
            tokio::time::timeout(timeout, connector.connect())
                .await
                .unwrap_or_else(|_| {
                    Err(ConnectionError::BadConnection(
                        "timed out connecting to the database".into(),
                    ))
                })
        }
        .boxed()
    });
    // The manager's URL only reaches our setup above, which ignores it: hand it no secret.
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        description,
        manager_config,
    );
    deadpool::managed::Pool::builder(Manager(manager))
        .max_size(max_size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_must_be_positive_and_the_lock_limit_within_the_statement_limit() {
        let ok = SessionTimeouts::default();
        assert_eq!(ok.validate(), Ok(()));
        let zero = SessionTimeouts {
            statement: Duration::ZERO,
            ..ok
        };
        assert!(zero.validate().is_err());
        let inverted = SessionTimeouts {
            statement: Duration::from_secs(1),
            lock: Duration::from_secs(2),
        };
        assert!(
            inverted
                .validate()
                .expect_err("inverted")
                .contains("2000 ms")
        );
    }
}
