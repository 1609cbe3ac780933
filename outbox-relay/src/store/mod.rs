//! The outbox table, seen from the relay: claim a batch under a lease, then complete, retry,
//! dead-letter or release each message. Every change after the claim is guarded by the lease
//! token, so a relay whose lease lapsed (and whose messages another relay may have claimed)
//! changes nothing.

pub mod schema;

use std::time::Duration;

use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Double, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;
use uuid::Uuid;

use schema::outbox;

/// The connection pool.
pub type Pool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;

/// A pool of up to `max_size` connections that waits at most `timeout` for one, connecting as
/// `url` says (TLS after libpq's `sslmode`, see `identity_proto::pg`) with `session` limits on
/// every statement. A malformed URL or unreadable CA file fails here, at start-up.
pub fn pool(
    url: &secrecy::SecretString,
    max_size: usize,
    timeout: Duration,
    session: identity_proto::pg::SessionTimeouts,
) -> anyhow::Result<Pool> {
    use secrecy::ExposeSecret;
    let connector =
        identity_proto::pg::Connector::new(url.expose_secret())?.with_session_timeouts(session);
    Ok(identity_proto::pg::pool(connector, max_size, timeout)?)
}

/// Payload keys a dead-lettered message keeps; everything else (tokens, codes) is dropped. An
/// allowlist, so a new secret field is dropped without anyone remembering to.
const SAFE_PAYLOAD_KEYS: [&str; 5] = [
    "recipient",
    "display_name",
    "locale",
    "expires_at",
    "changed_at",
];

/// A message this relay holds a lease on.
#[derive(QueryableByName)]
#[diesel(table_name = outbox, check_for_backend(diesel::pg::Pg))]
pub struct Claimed {
    pub id: Uuid,
    pub kind: String,
    /// May hold secrets: never log it.
    pub payload: serde_json::Value,
    /// Failed deliveries so far.
    pub attempts: i32,
    pub created_at: OffsetDateTime,
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Leases up to `limit` available messages (oldest first) for `lease`, skipping rows other
/// relays hold locked, so replicas never claim the same message at once. A claimed message
/// becomes available again when the lease lapses: a relay that crashes loses nothing.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    lease_token: Uuid,
    lease: Duration,
    limit: i64,
) -> QueryResult<Vec<Claimed>> {
    diesel::sql_query(
        "UPDATE outbox
            SET lease_token = $1,
                leased_until = now() + make_interval(secs => $2),
                available_at = now() + make_interval(secs => $2)
          WHERE id IN (SELECT id FROM outbox
                        WHERE available_at <= now()
                        ORDER BY available_at, id
                        LIMIT $3
                        FOR UPDATE SKIP LOCKED)
      RETURNING id, kind, payload, attempts, created_at",
    )
    .bind::<SqlUuid, _>(lease_token)
    .bind::<Double, _>(lease.as_secs_f64())
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Deletes a delivered message (and the secrets in it). Returns false if the lease was lost.
pub async fn complete(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    lease_token: Uuid,
) -> QueryResult<bool> {
    let deleted = diesel::delete(outbox::table)
        .filter(outbox::id.eq(id))
        .filter(outbox::lease_token.eq(lease_token))
        .execute(conn)
        .await?;
    Ok(deleted == 1)
}

/// Records a failed attempt and makes the message available again after `delay`.
pub async fn retry_later(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    lease_token: Uuid,
    delay: Duration,
    error: &str,
) -> QueryResult<bool> {
    let next = OffsetDateTime::now_utc() + delay;
    let updated = diesel::update(outbox::table)
        .filter(outbox::id.eq(id))
        .filter(outbox::lease_token.eq(lease_token))
        .set((
            outbox::lease_token.eq(None::<Uuid>),
            outbox::leased_until.eq(None::<OffsetDateTime>),
            outbox::available_at.eq(next),
            outbox::attempts.eq(outbox::attempts + 1),
            outbox::last_error.eq(error),
        ))
        .execute(conn)
        .await?;
    Ok(updated == 1)
}

/// Gives a message back without counting an attempt, available again after `delay` (used when
/// the fault is ours, such as rejected SMTP credentials, or at shutdown).
pub async fn put_back(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    lease_token: Uuid,
    delay: Duration,
) -> QueryResult<bool> {
    let next = OffsetDateTime::now_utc() + delay;
    let updated = diesel::update(outbox::table)
        .filter(outbox::id.eq(id))
        .filter(outbox::lease_token.eq(lease_token))
        .set((
            outbox::lease_token.eq(None::<Uuid>),
            outbox::leased_until.eq(None::<OffsetDateTime>),
            outbox::available_at.eq(next),
        ))
        .execute(conn)
        .await?;
    Ok(updated == 1)
}

/// Releases every message still leased under `lease_tokens`, for another relay to take now.
pub async fn release(conn: &mut AsyncPgConnection, lease_tokens: &[Uuid]) -> QueryResult<usize> {
    diesel::update(outbox::table)
        .filter(outbox::lease_token.eq_any(lease_tokens))
        .set((
            outbox::lease_token.eq(None::<Uuid>),
            outbox::leased_until.eq(None::<OffsetDateTime>),
            outbox::available_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
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
                (id, aggregate_type, aggregate_id, kind, payload, traceparent, created_at,
                 attempts, reason)
         SELECT id, aggregate_type, aggregate_id, kind,
                CASE WHEN jsonb_typeof(payload) = 'object'
                     THEN COALESCE((SELECT jsonb_object_agg(key, value)
                                      FROM jsonb_each(payload)
                                     WHERE key = ANY($3)), '{}'::jsonb)
                     ELSE 'null'::jsonb END,
                traceparent, created_at, attempts + $4, $5
           FROM moved",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(lease_token)
    .bind::<Array<Text>, _>(&SAFE_PAYLOAD_KEYS[..])
    .bind::<diesel::sql_types::Integer, _>(failed)
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
