//! Taking and keeping leases: claim a batch, extend one message's lease just before its send
//! (a heartbeat), release what is still held at shutdown.

use std::time::Duration;

use diesel::{
    OptionalExtension, QueryResult, QueryableByName,
    prelude::*,
    sql_types::{BigInt, Double, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Claimed, schema::outbox};

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

#[cfg(test)]
mod tests {
    use diesel::sql_types::Text;
    use identity_tests::pg::TestDb;

    use super::*;

    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
        line: String,
    }

    #[tokio::test]
    async fn a_claim_from_a_backlog_reads_the_claim_index_in_order_without_sorting() {
        let db = TestDb::create().await;
        let mut conn = db.connect().await;
        // A backlog, as after an outage, with fresh statistics. (On a nearly empty table the
        // planner rightly prefers reading it whole, so the plan would say nothing.)
        diesel::sql_query(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload, available_at)
             SELECT gen_random_uuid(), 'user', 'u', 'email.verification.v1', '{}',
                    now() - make_interval(secs => i)
               FROM generate_series(1, 10000) AS i",
        )
        .execute(&mut conn)
        .await
        .expect("a backlog");
        diesel::sql_query("ANALYZE outbox")
            .execute(&mut conn)
            .await
            .expect("statistics");

        let plan: Vec<PlanLine> = diesel::sql_query(format!("EXPLAIN {CLAIM}"))
            .bind::<SqlUuid, _>(Uuid::new_v4())
            .bind::<Double, _>(30.0)
            .bind::<BigInt, _>(64)
            .load(&mut conn)
            .await
            .expect("the claim can be explained");
        let plan: Vec<String> = plan.into_iter().map(|p| p.line).collect();
        let plan = plan.join("\n");

        assert!(
            plan.contains("Index Scan using outbox_email_claim_idx"),
            "{plan}"
        );
        assert!(!plan.contains("Sort"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }
}
