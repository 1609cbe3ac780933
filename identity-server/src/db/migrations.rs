//! The embedded migrations, applied (`migrate`, `serve --migrate`) or checked (`serve`) while
//! holding a PostgreSQL advisory lock, so any number of replicas and a migration Job may start
//! at once: one applies, the others wait for it and then find nothing pending.
//!
//! The lock is under the fixed key [`MIGRATION_LOCK_KEY`]. Applying holds it session-level, on
//! the migration connection (PostgreSQL releases it if the process dies); so applying needs a
//! session of its own and refuses a transaction pooler's URL (`pool_mode=transaction`). The
//! check holds it shared, for one transaction, so it works through such a pooler too. An
//! operator can see who holds it with `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND
//! objid = 1953068153` (the key's low 32 bits; its high 32 bits are `classid` 1768187246).

use std::collections::HashSet;

use diesel::{
    Connection, QueryResult, QueryableByName, RunQueryDsl,
    migration::MigrationSource,
    pg::Pg,
    sql_types::{BigInt, Bool, Text},
};
use diesel_async::{AsyncPgConnection, async_connection_wrapper::AsyncConnectionWrapper};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use identity_proto::pg::{Connector, PoolMode};
use secrecy::{ExposeSecret, SecretString};

/// Every migration in `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// The advisory lock every migrating or checking process takes: the ASCII bytes of "identity"
/// read as a big-endian integer, 7594306396727374969.
pub const MIGRATION_LOCK_KEY: i64 = i64::from_be_bytes(*b"identity");

/// How often a process waiting for the migration lock tries again. It polls rather than
/// blocks: a statement blocked on the lock keeps a transaction open, and `CREATE INDEX
/// CONCURRENTLY` in the migration that holds the lock waits for every open transaction, so the
/// two would wait on each other (PostgreSQL reports a deadlock).
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(200);

type SyncConnection = AsyncConnectionWrapper<AsyncPgConnection>;

#[diesel::declare_sql_function]
extern "SQL" {
    /// Takes the session-level advisory lock `key` if free; says whether it did.
    fn pg_try_advisory_lock(key: BigInt) -> diesel::sql_types::Bool;
    /// Takes the advisory lock `key`, shared, until the transaction ends, if no session holds it
    /// exclusively; says whether it did.
    fn pg_try_advisory_xact_lock_shared(key: BigInt) -> diesel::sql_types::Bool;
}

/// Applies pending migrations; returns the versions it applied (none if another process
/// applied them while this one waited for the lock).
pub async fn run_migrations(url: &SecretString) -> anyhow::Result<Vec<String>> {
    let connector = Connector::new(url.expose_secret())?;
    anyhow::ensure!(
        connector.pool_mode() == PoolMode::Session,
        "DATABASE_URL has pool_mode=transaction, but migrations need a session of their own (they \
         hold a session advisory lock while they run): run `identity-server migrate` with a \
         DATABASE_URL that reaches PostgreSQL directly (or through a session-mode pooler), then \
         start `serve` without --migrate"
    );
    under_migration_lock(connector, |conn| {
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("applying migrations: {e}"))?;
        Ok(applied.iter().map(ToString::to_string).collect())
    })
    .await
}

/// The versions of migrations that are embedded but not applied. Waits while another process
/// applies migrations, so it reports the outcome rather than a half-way state.
///
/// It only reads the ledger (diesel's harness would create it when missing, which the server's
/// role may not do): a database without one has every migration pending. It holds the lock
/// shared for one transaction, which a transaction pooler carries as well as a session.
pub async fn pending_migrations(url: &SecretString) -> anyhow::Result<Vec<String>> {
    let conn = Connector::new(url.expose_secret())?.connect().await?;
    tokio::task::spawn_blocking(move || {
        let mut conn = SyncConnection::from(conn);
        let mut told = false;
        let applied = loop {
            let read = conn.transaction(|conn| {
                let taken = diesel::select(pg_try_advisory_xact_lock_shared(MIGRATION_LOCK_KEY))
                    .get_result::<bool>(conn)?;
                if taken {
                    applied_versions(conn).map(Some)
                } else {
                    Ok(None)
                }
            });
            match read {
                Ok(Some(applied)) => break Ok(applied),
                Ok(None) => {
                    if !std::mem::replace(&mut told, true) {
                        tracing::info!(
                            lock_key = MIGRATION_LOCK_KEY,
                            "another process is applying migrations; waiting for it"
                        );
                    }
                    std::thread::sleep(LOCK_POLL);
                }
                Err(e) => break Err(e),
            }
        };
        let applied = applied.map_err(|e| anyhow::anyhow!("reading applied migrations: {e}"))?;
        let embedded = MigrationSource::<Pg>::migrations(&MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("reading embedded migrations: {e}"))?;
        Ok(embedded
            .iter()
            .filter(|m| !applied.contains(&m.name().version().to_string()))
            .map(|m| m.name().to_string())
            .collect())
    })
    .await?
}

#[derive(QueryableByName)]
struct Applied {
    #[diesel(sql_type = Text)]
    version: String,
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

/// The versions in diesel's ledger, none when there is no ledger yet.
fn applied_versions(conn: &mut SyncConnection) -> QueryResult<HashSet<String>> {
    let ledger =
        diesel::sql_query("SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS exists")
            .get_result::<Exists>(conn)?;
    if !ledger.exists {
        return Ok(HashSet::new());
    }
    let applied: Vec<Applied> =
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations").load(conn)?;
    Ok(applied.into_iter().map(|row| row.version).collect())
}

/// Opens a connection (TLS as the URL says, no session timeouts: a migration may take long),
/// takes the migration lock, runs `work` and releases the lock.
async fn under_migration_lock<T: Send + 'static>(
    connector: Connector,
    work: impl FnOnce(&mut SyncConnection) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let conn = connector.connect().await?;
    // diesel's migration harness is synchronous; the wrapper drives the async connection from
    // a blocking thread.
    tokio::task::spawn_blocking(move || {
        let mut conn = SyncConnection::from(conn);
        let mut told = false;
        while !diesel::select(pg_try_advisory_lock(MIGRATION_LOCK_KEY))
            .get_result::<bool>(&mut conn)?
        {
            if !std::mem::replace(&mut told, true) {
                tracing::info!(
                    lock_key = MIGRATION_LOCK_KEY,
                    "another process holds the migration lock; waiting for it"
                );
            }
            std::thread::sleep(LOCK_POLL);
        }
        let outcome = work(&mut conn);
        // Closing the connection would release it too; say so explicitly while it is open.
        let released = diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
            .execute(&mut conn);
        let value = outcome?;
        released?;
        Ok(value)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::MIGRATION_LOCK_KEY;

    #[test]
    fn the_lock_key_is_the_documented_number() {
        assert_eq!(MIGRATION_LOCK_KEY, 7_594_306_396_727_374_969);
        assert_eq!(MIGRATION_LOCK_KEY >> 32, 1_768_187_246);
        assert_eq!(MIGRATION_LOCK_KEY & 0xffff_ffff, 1_953_068_153);
    }
}
