//! Writes made only to be as slow as real ones.
//!
//! A call must not tell a caller whether an address is registered, by its answer or by its
//! time. Where one path writes (an email queued, a secret stored) and another writes nothing,
//! the second makes the same writes inside a savepoint and rolls them back: both paths then run
//! the same statements, and both commits write and flush WAL. The real path runs its writes
//! inside a savepoint too, released, so the statements match one for one.
//!
//! The rows a rehearsal writes may name a user that does not exist (there is none for an
//! unknown address): the foreign keys that point at `users` from the tables written here are
//! `DEFERRABLE INITIALLY DEFERRED`, checked at commit, and a rolled-back savepoint takes its
//! pending checks with it.

use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::StoreError;

/// Opens the savepoint the writes that follow go into. If one of them fails, return the error:
/// the whole transaction rolls back.
pub async fn open(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    identity_proto::pg::statement("SAVEPOINT rehearsal")
        .execute(conn)
        .await?;
    Ok(())
}

/// Closes the savepoint: keeps its writes when `keep`, otherwise rolls them back.
pub async fn close(conn: &mut AsyncPgConnection, keep: bool) -> Result<(), StoreError> {
    let end = if keep {
        "RELEASE SAVEPOINT rehearsal"
    } else {
        "ROLLBACK TO SAVEPOINT rehearsal"
    };
    identity_proto::pg::statement(end).execute(conn).await?;
    Ok(())
}
