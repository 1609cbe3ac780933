//! Writes to the transactional outbox.

use diesel::{
    prelude::*,
    sql_types::{Integer, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use identity_proto::{
    outbox::{AGGREGATE_USER, DomainEvent, EventPayload, NOTIFY_CHANNEL},
    telemetry::TraceContext,
};
use tracing::Instrument;
use uuid::Uuid;

use super::{StoreError, schema::outbox};

/// A message to deliver once the surrounding transaction commits.
#[derive(Insertable)]
#[diesel(table_name = outbox, check_for_backend(diesel::pg::Pg))]
struct NewMessage<'a> {
    pub id: Uuid,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub kind: &'a str,
    /// May hold secrets (a verification token and code): never log it.
    pub payload: serde_json::Value,
    /// The W3C trace context of the span that queued it, which the relay's send continues.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
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

/// Adds the message to the outbox within the caller's transaction and wakes the relay, whose
/// notification PostgreSQL delivers only if, and when, that transaction commits. The insert
/// is the message's producer span, whose trace context the row carries to the relay.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    aggregate_type: &str,
    aggregate_id: &str,
    kind: &str,
    payload: serde_json::Value,
) -> Result<(), StoreError> {
    let span = tracing::info_span!(
        "send outbox",
        otel.kind = "producer",
        messaging.system = "outbox",
        messaging.operation.type = "send",
        messaging.destination.name = "outbox",
        messaging.message.id = %id,
        outbox.kind = kind,
        db.system.name = "postgresql",
        db.collection.name = "outbox",
        db.operation.name = "INSERT",
    );
    let trace = TraceContext::of(&span);
    let (traceparent, tracestate) = trace.map_or((None, None), |trace| {
        (Some(trace.traceparent), trace.tracestate)
    });
    let message = NewMessage {
        id,
        aggregate_type,
        aggregate_id,
        kind,
        payload,
        traceparent,
        tracestate,
    };
    async {
        diesel::insert_into(outbox::table)
            .values(&message)
            .execute(conn)
            .await?;
        identity_proto::pg::statement("SELECT pg_notify($1, '')")
            .bind::<Text, _>(NOTIFY_CHANNEL)
            .execute(conn)
            .await?;
        Ok(())
    }
    .instrument(span)
    .await
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
        Uuid::now_v7(),
        AGGREGATE_USER,
        &user_id.to_string(),
        kind,
        payload,
    )
    .await
}

/// The first half of the two-part advisory lock key of a user's events ("evnt"), apart from
/// the other advisory locks of the database (see `email_budget`).
const EVENT_LOCK_NAMESPACE: i32 = 0x6576_6e74;

/// Whether the use cases queue domain events (`IDENTITY_DOMAIN_EVENTS`). Only turn it on where a
/// relay publishes them (with `NATS_URL`): nothing else takes them out of the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    pub enabled: bool,
}

impl Events {
    /// Queues `event` about `user_id` within the caller's transaction, when enabled: it is
    /// published if, and only if, that transaction commits.
    pub async fn record<E: DomainEvent>(
        self,
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        event: &E,
    ) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        let payload = serde_json::to_value(EventPayload::of(event)).map_err(|e| {
            StoreError::Unexpected(format!("serializing a {} payload: {e}", E::TYPE))
        })?;
        let aggregate_id = user_id.to_string();
        // One writer of a user's events at a time, until commit: the next transaction takes
        // its `seq` only after this one committed, so `seq` follows commit order per user and
        // the relay, publishing each user's lowest `seq` first, never overtakes an event that
        // was about to commit.
        // (Two users may share a lock, the key being a 32-bit hash: they then take turns.)
        identity_proto::pg::statement("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind::<Integer, _>(EVENT_LOCK_NAMESPACE)
            .bind::<Text, _>(&aggregate_id)
            .execute(conn)
            .await?;
        enqueue(
            conn,
            Uuid::now_v7(),
            AGGREGATE_USER,
            &aggregate_id,
            E::TYPE,
            payload,
        )
        .await
    }
}
