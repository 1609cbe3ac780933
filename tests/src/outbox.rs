//! The outbox from a test's side: filling it directly, as identity-server would (faster than
//! sign-ups, which hash a password each), and reading what is left in it and in `outbox_dead`.

use std::time::Duration;

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Integer, Text},
};
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

/// Runs `sql`, which may hold several statements (a test's setup).
pub async fn execute(conn: &mut AsyncPgConnection, sql: &str) {
    use diesel_async::SimpleAsyncConnection;
    conn.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Runs the statement `sql` with `binds` as its text parameters, in order.
pub async fn execute_with(conn: &mut AsyncPgConnection, sql: &str, binds: &[&str]) {
    let mut query = diesel::sql_query(sql).into_boxed::<diesel::pg::Pg>();
    for bind in binds {
        query = query.bind::<Text, _>(bind.to_string());
    }
    query
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Wakes the relays, as a writer does when it commits.
pub async fn notify(conn: &mut AsyncPgConnection) {
    diesel::sql_query("SELECT pg_notify('outbox', '')")
        .execute(conn)
        .await
        .expect("notifies");
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Runs `sql`, a query that selects one `count(*) AS n`.
pub async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// Waits until the outbox is empty.
pub async fn drained(conn: &mut AsyncPgConnection, timeout: Duration) {
    crate::wait::until("the outbox to drain", timeout, async || {
        (count(conn, "SELECT count(*) AS n FROM outbox").await == 0).then_some(())
    })
    .await;
}

/// A row of `outbox_dead`.
#[derive(QueryableByName, Debug)]
pub struct DeadLetter {
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub reason: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// The whole row as JSON, to search for anything that should not be there.
    #[diesel(sql_type = Text)]
    pub whole_row: String,
}

/// Every dead letter, oldest first.
pub async fn dead_letters(conn: &mut AsyncPgConnection) -> Vec<DeadLetter> {
    diesel::sql_query(
        "SELECT kind, reason, attempts, row_to_json(d)::text AS whole_row
           FROM outbox_dead d ORDER BY dead_at",
    )
    .load(conn)
    .await
    .expect("outbox_dead is readable")
}
