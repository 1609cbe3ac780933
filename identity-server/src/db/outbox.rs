//! Writes to the transactional outbox.

use diesel::{prelude::*, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use identity_proto::outbox::{AGGREGATE_USER, NOTIFY_CHANNEL};
use uuid::Uuid;

use super::{StoreError, schema::outbox};

/// A message to deliver once the surrounding transaction commits.
#[derive(Insertable)]
#[diesel(table_name = outbox, check_for_backend(diesel::pg::Pg))]
pub struct NewMessage<'a> {
    pub id: Uuid,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub kind: &'a str,
    /// May hold secrets (a verification token and code): never log it.
    pub payload: serde_json::Value,
    pub traceparent: Option<&'a str>,
}

impl std::fmt::Debug for NewMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewMessage")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("aggregate_id", &self.aggregate_id)
            .finish_non_exhaustive()
    }
}

/// Adds `message` to the outbox within the caller's transaction and wakes the relay, whose
/// notification PostgreSQL delivers only if, and when, that transaction commits.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    message: &NewMessage<'_>,
) -> Result<(), StoreError> {
    diesel::insert_into(outbox::table)
        .values(message)
        .execute(conn)
        .await?;
    diesel::sql_query("SELECT pg_notify($1, '')")
        .bind::<Text, _>(NOTIFY_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Queues `payload` as a message of `kind` about `user_id`, within the caller's transaction.
pub async fn enqueue_for_user<T: serde::Serialize>(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    kind: &str,
    payload: &T,
) -> Result<(), StoreError> {
    let payload = serde_json::to_value(payload)
        .map_err(|e| StoreError::Unexpected(format!("serializing a {kind} payload: {e}")))?;
    enqueue(
        conn,
        &NewMessage {
            id: Uuid::now_v7(),
            aggregate_type: AGGREGATE_USER,
            aggregate_id: &user_id.to_string(),
            kind,
            payload,
            traceparent: None,
        },
    )
    .await
}
