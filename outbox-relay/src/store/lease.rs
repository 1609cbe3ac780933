//! Taking and keeping leases: claim a batch, extend one message's lease just before its send
//! (a heartbeat), release what is still held at shutdown.

use std::time::Duration;

use diesel::{
    OptionalExtension, QueryResult, QueryableByName,
    sql_types::{Array, BigInt, Double, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Claimed;

/// Leases the oldest available emails (the `email` channel; domain events are claimed on their
/// own). `available_at` moves with the lease, so one condition
/// on it selects what is claimable, and the index on `(available_at, id)` hands the rows over
/// in the order wanted: the claim reads the first `$3` entries and stops, with no sort. The ids
/// are gathered into an array first, so the update finds its rows by primary key rather than by
/// joining against the whole table.
const CLAIM: &str = "UPDATE outbox
    SET lease_token = $1,
        leased_until = now() + make_interval(secs => $2),
        available_at = now() + make_interval(secs => $2)
  WHERE id = ANY(ARRAY(SELECT id FROM outbox
                        WHERE channel = 'email' AND available_at <= now()
                        ORDER BY available_at, id
                        LIMIT $3
                        FOR UPDATE SKIP LOCKED))
RETURNING id, aggregate_id, kind, payload, attempts, created_at, traceparent, tracestate,
          now() AS claimed_at";

/// Leases up to `limit` available messages (oldest first) for `lease`, skipping rows other
/// relays hold locked, so replicas never claim the same message at once. A claimed message
/// becomes available again when the lease lapses: a relay that crashes loses nothing.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    lease_token: Uuid,
    lease: Duration,
    limit: i64,
) -> QueryResult<Vec<Claimed>> {
    diesel::sql_query(CLAIM)
        .bind::<SqlUuid, _>(lease_token)
        .bind::<Double, _>(lease.as_secs_f64())
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await
}

#[derive(QueryableByName)]
struct DatabaseNow {
    #[diesel(sql_type = Timestamptz)]
    now: OffsetDateTime,
}

/// Extends the lease on message `id` held under `lease_token` to `lease` from now. Returns the
/// database's time, or `None` when the lease was lost (another relay holds the message, or it
/// is gone): then the message must not be sent.
pub async fn extend(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    lease_token: Uuid,
    lease: Duration,
) -> QueryResult<Option<OffsetDateTime>> {
    let extended = diesel::sql_query(
        "UPDATE outbox
            SET leased_until = now() + make_interval(secs => $3),
                available_at = now() + make_interval(secs => $3)
          WHERE id = $1 AND lease_token = $2
      RETURNING now() AS now",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(lease_token)
    .bind::<Double, _>(lease.as_secs_f64())
    .get_result::<DatabaseNow>(conn)
    .await
    .optional()?;
    Ok(extended.map(|row| row.now))
}

/// Makes the messages `$1` (ids) still leased under one of `$2` (lease tokens) available again
/// at once. The rows are found by primary key: no index holds the lease token, and the outbox
/// may hold millions of rows.
const RELEASE: &str = "UPDATE outbox
    SET lease_token = NULL, leased_until = NULL, available_at = now()
  WHERE id = ANY($1) AND lease_token = ANY($2)";

/// Releases the messages `ids` still leased under one of `lease_tokens`, for another relay to
/// take now.
pub async fn release(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    lease_tokens: &[Uuid],
) -> QueryResult<usize> {
    diesel::sql_query(RELEASE)
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Array<SqlUuid>, _>(lease_tokens)
        .execute(conn)
        .await
}

#[cfg(test)]
mod tests {
    use identity_tests::pg::{PlanLine, TestDb};

    use super::*;

    /// 10,000 emails waiting, as after an outage.
    const EMAIL_BACKLOG: &str =
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload, available_at)
         SELECT gen_random_uuid(), 'user', 'u', 'email.verification.v1', '{}',
                now() - make_interval(secs => i)
           FROM generate_series(1, 10000) AS i";

    /// The plan `explain` gets (it runs an `EXPLAIN` on the connection it is given) after the
    /// `seed` statements filled a fresh outbox and its statistics were refreshed. (On a nearly
    /// empty table the planner rightly prefers reading it whole, so the plan would say nothing.)
    async fn plan_after(
        seed: &[&str],
        explain: impl AsyncFnOnce(&mut AsyncPgConnection) -> QueryResult<Vec<PlanLine>>,
    ) -> Vec<String> {
        let db = TestDb::create().await;
        let mut conn = db.connect().await;
        for statement in seed.iter().chain(&["ANALYZE outbox"]) {
            diesel::sql_query(*statement)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        let plan = explain(&mut conn)
            .await
            .expect("the statement can be explained");
        plan.into_iter().map(|p| p.line).collect()
    }

    #[tokio::test]
    async fn a_claim_from_a_backlog_reads_the_claim_index_in_order_without_sorting() {
        let plan = plan_after(&[EMAIL_BACKLOG], async |conn| {
            diesel::sql_query(format!("EXPLAIN {CLAIM}"))
                .bind::<SqlUuid, _>(Uuid::new_v4())
                .bind::<Double, _>(30.0)
                .bind::<BigInt, _>(64)
                .load(conn)
                .await
        })
        .await
        .join("\n");

        assert!(
            plan.contains("Index Scan using outbox_email_claim_idx"),
            "{plan}"
        );
        assert!(!plan.contains("Sort"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }

    #[tokio::test]
    async fn releasing_a_batch_finds_its_rows_by_primary_key() {
        let plan = plan_after(&[EMAIL_BACKLOG], async |conn| {
            diesel::sql_query(format!("EXPLAIN {RELEASE}"))
                .bind::<Array<SqlUuid>, _>(vec![Uuid::new_v4(), Uuid::new_v4()])
                .bind::<Array<SqlUuid>, _>(vec![Uuid::new_v4()])
                .load(conn)
                .await
        })
        .await
        .join("\n");
        assert!(
            plan.contains("Index Scan using outbox_pkey")
                || plan.contains("Bitmap Index Scan on outbox_pkey"),
            "{plan}"
        );
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }

    #[tokio::test]
    async fn the_backlog_sample_reads_a_capped_number_of_index_entries_whatever_the_outbox_holds() {
        let cap = 1_000;
        // 30,000 emails and 30,000 events.
        let seed =
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload, created_at)
             SELECT gen_random_uuid(), 'user', 'u' || (i % 100),
                    CASE WHEN i % 2 = 0 THEN 'email.verification.v1'
                         ELSE 'identity.user.registered.v1' END,
                    '{}', now() - make_interval(secs => i)
               FROM generate_series(1, 60000) AS i";
        let plan = plan_after(&[seed], async |conn| {
            diesel::sql_query(format!(
                "EXPLAIN (ANALYZE, TIMING OFF) {}",
                crate::store::BACKLOGS
            ))
            .bind::<BigInt, _>(cap)
            .load(conn)
            .await
        })
        .await;
        let most_rows = identity_tests::pg::most_rows_read(&plan, "outbox");
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        assert!(plan.contains("outbox_channel_created_at_idx"), "{plan}");
        // One scan per channel, each stopping at the cap.
        assert!(
            most_rows <= 2 * cap,
            "a scan read {most_rows} rows for a count capped at {cap} per channel:\n{plan}"
        );
    }

    #[tokio::test]
    async fn one_users_long_event_queue_costs_the_event_claim_one_entry() {
        // One user has 10,000 events queued (the oldest in the outbox), 20 others one each.
        let seed = |user: &str, users: u32, events: u32, age: u32| {
            format!(
                "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload, available_at)
                 SELECT gen_random_uuid(), 'user', '{user}' || u, 'identity.user.logged_in.v1',
                        '{{}}', now() - make_interval(secs => {age} - e * 0.001)
                   FROM generate_series(1, {users}) AS u, generate_series(1, {events}) AS e
                  ORDER BY e, u"
            )
        };
        let (busy, quiet) = (seed("busy", 1, 10_000, 3_600), seed("quiet", 20, 1, 60));
        let plan = plan_after(&[&busy, &quiet], async |conn| {
            diesel::sql_query(format!(
                "EXPLAIN (ANALYZE, TIMING OFF) {}",
                crate::store::events::CLAIM_EVENTS
            ))
            .bind::<SqlUuid, _>(Uuid::new_v4())
            .bind::<Double, _>(30.0)
            .bind::<BigInt, _>(64)
            .load(conn)
            .await
        })
        .await;
        let most_rows = identity_tests::pg::most_rows_read(&plan, "outbox");
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        assert!(
            most_rows <= 64,
            "a scan read {most_rows} rows to claim 21 users' first events:\n{plan}"
        );
    }
}
