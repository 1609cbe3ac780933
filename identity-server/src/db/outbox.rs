//! Writes to the transactional outbox.

use diesel::sql_types::{Integer, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use identity_proto::{
    outbox::{AGGREGATE_USER, DomainEvent, EventPayload, NOTIFY_CHANNEL},
    telemetry::TraceContext,
};
use tracing::Instrument;
use uuid::Uuid;

use super::StoreError;

/// Adds a message to the outbox and wakes the relay, in one statement: `$1` id, `$2`
/// aggregate type, `$3` aggregate id, `$4` kind, `$5` payload, `$6` traceparent, `$7`
/// tracestate, `$8` the channel to notify.
const ENQUEUE: &str = "INSERT INTO outbox
        (id, aggregate_type, aggregate_id, kind, payload, traceparent, tracestate)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    RETURNING pg_notify($8, '')";

/// [`ENQUEUE`] for a domain event: first takes the user's event lock (`$9` its namespace, the
/// aggregate id its key), held until commit, so the row's `seq` is drawn only once every
/// earlier writer of the user's events committed. The lock is a materialized CTE, read before
/// the row (and its `seq`) is formed.
const ENQUEUE_EVENT: &str = "WITH locked AS MATERIALIZED (
        SELECT pg_advisory_xact_lock($9, hashtext($3))
    )
    INSERT INTO outbox
        (id, aggregate_type, aggregate_id, kind, payload, traceparent, tracestate)
    SELECT $1, $2, $3, $4, $5, $6, $7 FROM locked
    RETURNING pg_notify($8, '')";

/// Adds the message to the outbox within the caller's transaction and wakes the relay, whose
/// notification PostgreSQL delivers only if, and when, that transaction commits; under the
/// event lock `event_lock` (a namespace) of `aggregate_id` when given. The insert is the
/// message's producer span, whose trace context the row carries to the relay. The payload may
/// hold secrets (a verification token and code): never log it.
async fn enqueue(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    aggregate_type: &str,
    aggregate_id: &str,
    kind: &str,
    payload: serde_json::Value,
    event_lock: Option<i32>,
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
    let sql = if event_lock.is_some() {
        ENQUEUE_EVENT
    } else {
        ENQUEUE
    };
    let mut query = identity_proto::pg::statement(sql)
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(aggregate_type)
        .bind::<Text, _>(aggregate_id)
        .bind::<Text, _>(kind)
        .bind::<Jsonb, _>(payload)
        .bind::<Nullable<Text>, _>(traceparent)
        .bind::<Nullable<Text>, _>(tracestate)
        .bind::<Text, _>(NOTIFY_CHANNEL);
    if let Some(namespace) = event_lock {
        query = query.bind::<Integer, _>(namespace);
    }
    async { Ok(query.execute(conn).await.map(drop)?) }
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
        None,
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
        // One writer of a user's events at a time, until commit: the next transaction takes
        // its `seq` only after this one committed, so `seq` follows commit order per user and
        // the relay, publishing each user's lowest `seq` first, never overtakes an event that
        // was about to commit.
        // (Two users may share a lock, the key being a 32-bit hash: they then take turns.)
        enqueue(
            conn,
            Uuid::now_v7(),
            AGGREGATE_USER,
            &user_id.to_string(),
            E::TYPE,
            payload,
            Some(EVENT_LOCK_NAMESPACE),
        )
        .await
    }
}
