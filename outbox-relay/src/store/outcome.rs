//! What becomes of a claimed message: deleted once delivered, retried later, put back, or moved
//! to `outbox_dead`. Each change applies only under the caller's lease token.

use std::time::Duration;

use diesel::{
    QueryResult,
    prelude::*,
    sql_types::{Array, Double, Integer, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::outbox;

/// Payload keys a dead-lettered message keeps; everything else (tokens, codes) is dropped. An
/// allowlist, so a new secret field is dropped without anyone remembering to. `data` is a domain
/// event's protobuf message, which never holds a secret (the event tests scan every one): kept,
/// so that a dead-lettered event can be queued again.
const SAFE_PAYLOAD_KEYS: [&str; 7] = [
    "recipient",
    "display_name",
    "locale",
    "expires_at",
    "changed_at",
    "attempted_at",
    "data",
];

/// Deletes a delivered message (and the secrets in it). Returns false if the lease was lost.
pub async fn complete(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    lease_token: Uuid,
) -> QueryResult<bool> {
    Ok(complete_many(conn, &[id], lease_token).await? == 1)
}

/// Deletes the delivered or published messages `ids` still leased under `lease_token`, in one
/// statement; returns how many were.
pub async fn complete_many(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    lease_token: Uuid,
) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    diesel::delete(outbox::table)
        .filter(outbox::id.eq_any(ids))
        .filter(outbox::lease_token.eq(lease_token))
        .execute(conn)
        .await
}

/// Records a failed attempt and makes the message available again `delay` from now.
pub async fn retry_later(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    lease_token: Uuid,
    delay: Duration,
    error: &str,
) -> QueryResult<bool> {
    let updated = diesel::sql_query(
        "UPDATE outbox
            SET lease_token = NULL,
                leased_until = NULL,
                available_at = now() + make_interval(secs => $3),
                attempts = attempts + 1,
                last_error = $4
          WHERE id = $1 AND lease_token = $2",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(lease_token)
    .bind::<Double, _>(delay.as_secs_f64())
    .bind::<Text, _>(error)
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// Gives a message back without counting an attempt, available again `delay` from now (used
/// when the fault is ours, such as rejected SMTP credentials, or at shutdown).
pub async fn put_back(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    lease_token: Uuid,
    delay: Duration,
) -> QueryResult<bool> {
    let updated = diesel::sql_query(
        "UPDATE outbox
            SET lease_token = NULL,
                leased_until = NULL,
                available_at = now() + make_interval(secs => $3)
          WHERE id = $1 AND lease_token = $2",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(lease_token)
    .bind::<Double, _>(delay.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// Moves a message to `outbox_dead` with `reason`, in one statement. The dead row keeps the
/// attempts, timestamps and the payload's harmless fields, never its secrets. `failed` is 1 when
/// this delivery attempt itself failed, 0 when the message was never tried (poison).
pub async fn dead_letter(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    lease_token: Uuid,
    failed: i32,
    reason: &str,
) -> QueryResult<bool> {
    let moved = diesel::sql_query(
        "WITH moved AS (DELETE FROM outbox WHERE id = $1 AND lease_token = $2 RETURNING *)
         INSERT INTO outbox_dead
                (id, aggregate_type, aggregate_id, kind, payload, traceparent, tracestate,
                 created_at, attempts, reason)
         SELECT id, aggregate_type, aggregate_id, kind,
                CASE WHEN jsonb_typeof(payload) = 'object'
                     THEN COALESCE((SELECT jsonb_object_agg(key, value)
                                      FROM jsonb_each(payload)
                                     WHERE key = ANY($3)), '{}'::jsonb)
                     ELSE 'null'::jsonb END,
                traceparent, tracestate, created_at, attempts + $4, $5
           FROM moved",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(lease_token)
    .bind::<Array<Text>, _>(&SAFE_PAYLOAD_KEYS[..])
    .bind::<Integer, _>(failed)
    .bind::<Text, _>(reason)
    .execute(conn)
    .await?;
    Ok(moved == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_never_keep_a_token_or_a_code() {
        for secret in ["token", "code"] {
            assert!(!SAFE_PAYLOAD_KEYS.contains(&secret), "{secret}");
        }
    }
}
