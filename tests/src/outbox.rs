//! Filling the outbox directly, as identity-server would, for relay tests and benchmarks that
//! need many messages faster than sign-ups (each hashes a password) can make them.

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// Queues `n` verification emails to `{prefix}{i}@example.com` (token `token-{prefix}{i}`,
/// code `i` zero-padded) in one statement, notifies the relay channel, and returns the
/// recipients.
pub async fn enqueue(conn: &mut AsyncPgConnection, prefix: &str, n: i64) -> Vec<String> {
    diesel::sql_query(
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload)
         SELECT gen_random_uuid(), 'user', gen_random_uuid()::text, 'email.verification.v1',
                jsonb_build_object(
                    'recipient', $1 || i || '@example.com',
                    'display_name', 'User ' || i,
                    'locale', 'en',
                    'token', 'token-' || $1 || i,
                    'code', lpad(i::text, 6, '0'),
                    'expires_at', to_char((now() + interval '1 day') AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))
           FROM generate_series(1, $2) AS i",
    )
    .bind::<Text, _>(prefix)
    .bind::<BigInt, _>(n)
    .execute(conn)
    .await
    .expect("messages are queued");
    notify(conn).await;
    (1..=n)
        .map(|i| format!("{prefix}{i}@example.com"))
        .collect()
}

/// Wakes the relays, as a writer does when it commits.
pub async fn notify(conn: &mut AsyncPgConnection) {
    diesel::sql_query("SELECT pg_notify('outbox', '')")
        .execute(conn)
        .await
        .expect("notifies");
}
