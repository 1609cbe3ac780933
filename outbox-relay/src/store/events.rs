//! The event channel's claim, which keeps each user's events in order (its batch settlement is
//! [`super::complete_many`]).
//!
//! **Order per user.** A claim takes only each user's earliest event still in the outbox (by
//! `seq`, which identity-server assigns in commit order per user): while that event is leased,
//! waiting for a retry or being published, the user's later events are not claimable at all.
//! So at most one event per user is in flight across every relay replica, and a later event is
//! published only after the earlier one was acknowledged by JetStream and deleted here, or was
//! dead-lettered.

use std::time::Duration;

use diesel::{
    QueryResult,
    sql_types::{BigInt, Double, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::Claimed;

/// Leases the oldest available head events: each user's earliest event still in the outbox,
/// marked `head` by the outbox's triggers. The claim reads `outbox_event_head_claim_idx`, which
/// holds heads only, so a user with a long queue costs it one entry, not one per queued event.
/// The probe for the user's lowest `seq` (one entry of `outbox_event_order_idx`) keeps the order
/// even if a mark were ever wrong; a row another relay holds locked is skipped, and since it
/// still exists, so is every later event of its user. The probe is a scalar subquery, run for
/// each candidate with its user as the index key, whatever the statistics say: as a `NOT EXISTS`,
/// which the planner turns into a join, statistics gathered while the outbox held only emails
/// (an SMTP outage) made it scan every queued event for each candidate.
pub(crate) const CLAIM_EVENTS: &str = "UPDATE outbox
    SET lease_token = $1,
        leased_until = now() + make_interval(secs => $2),
        available_at = now() + make_interval(secs => $2)
  WHERE id = ANY(ARRAY(SELECT o.id FROM outbox o
                        WHERE o.channel = 'event' AND o.head AND o.available_at <= now()
                          AND o.seq = (SELECT min(earlier.seq) FROM outbox earlier
                                        WHERE earlier.channel = 'event'
                                          AND earlier.aggregate_type = o.aggregate_type
                                          AND earlier.aggregate_id = o.aggregate_id)
                        ORDER BY o.available_at, o.seq
                        LIMIT $3
                        FOR UPDATE OF o SKIP LOCKED))
RETURNING id, aggregate_id, kind, payload, attempts, created_at, traceparent, tracestate,
          now() AS claimed_at";

/// Leases up to `limit` events for `lease`, at most one per user (each user's earliest).
pub async fn claim_events(
    conn: &mut AsyncPgConnection,
    lease_token: Uuid,
    lease: Duration,
    limit: i64,
) -> QueryResult<Vec<Claimed>> {
    diesel::sql_query(CLAIM_EVENTS)
        .bind::<SqlUuid, _>(lease_token)
        .bind::<Double, _>(lease.as_secs_f64())
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await
}

#[cfg(test)]
mod tests {
    use diesel::sql_types::Array;
    use identity_tests::pg::TestDb;

    use super::*;
    use crate::store::complete_many;

    /// Queues events for `users`, `per_user` each, interleaved as concurrent users would write
    /// them.
    async fn queue(conn: &mut AsyncPgConnection, users: &[&str], per_user: usize) {
        for round in 0..per_user {
            for user in users {
                diesel::sql_query(
                    "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload)
                     VALUES (gen_random_uuid(), 'user', $1, $2, '{}')",
                )
                .bind::<diesel::sql_types::Text, _>(*user)
                .bind::<diesel::sql_types::Text, _>(format!("identity.test.e{round}.v1"))
                .execute(conn)
                .await
                .expect("an event");
            }
        }
    }

    fn by_user(claimed: &[Claimed]) -> Vec<(String, String)> {
        let mut seen: Vec<(String, String)> = claimed
            .iter()
            .map(|c| (c.aggregate_id.clone(), c.kind.clone()))
            .collect();
        seen.sort();
        seen
    }

    #[tokio::test]
    async fn a_claim_takes_only_each_users_earliest_event_and_the_next_after_it_is_gone() {
        let db = TestDb::create().await;
        let mut conn = db.connect().await;
        queue(&mut conn, &["a", "b"], 3).await;

        let lease = Duration::from_secs(30);
        let first = claim_events(&mut conn, Uuid::new_v4(), lease, 100)
            .await
            .expect("claims");
        assert_eq!(
            by_user(&first),
            [
                ("a".into(), "identity.test.e0.v1".into()),
                ("b".into(), "identity.test.e0.v1".into())
            ]
        );

        // While the earliest events are leased, another relay finds nothing to take.
        let other = claim_events(&mut conn, Uuid::new_v4(), lease, 100)
            .await
            .expect("claims");
        assert!(other.is_empty(), "{:?}", by_user(&other));

        // Only a's first event is settled: a's second becomes claimable, b's stays behind.
        let token = Uuid::new_v4();
        let a_first: Vec<Uuid> = first
            .iter()
            .filter(|c| c.aggregate_id == "a")
            .map(|c| c.id)
            .collect();
        let wrong = complete_many(&mut conn, &a_first, token)
            .await
            .expect("runs");
        assert_eq!(wrong, 0, "another lease token settles nothing");
        diesel::sql_query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind::<Array<SqlUuid>, _>(&a_first)
            .execute(&mut conn)
            .await
            .expect("a's first event is published");
        let next = claim_events(&mut conn, token, lease, 100)
            .await
            .expect("claims");
        assert_eq!(by_user(&next), [("a".into(), "identity.test.e1.v1".into())]);
        let ids: Vec<Uuid> = next.iter().map(|c| c.id).collect();
        assert_eq!(
            complete_many(&mut conn, &ids, token).await.expect("runs"),
            1
        );
    }

    #[tokio::test]
    async fn emails_are_not_claimed_as_events() {
        let db = TestDb::create().await;
        let mut conn = db.connect().await;
        diesel::sql_query(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload)
             VALUES (gen_random_uuid(), 'user', 'a', 'email.verification.v1', '{}')",
        )
        .execute(&mut conn)
        .await
        .expect("an email");
        let claimed = claim_events(&mut conn, Uuid::new_v4(), Duration::from_secs(30), 10)
            .await
            .expect("claims");
        assert!(claimed.is_empty());
    }

    #[tokio::test]
    async fn a_claim_reads_about_its_batch_when_the_statistics_saw_only_emails() {
        // An SMTP outage: the outbox filled with emails and was analyzed then, so the planner
        // expects no events when a burst of them comes.
        let db = TestDb::create().await;
        let mut conn = db.connect().await;
        for statement in [
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload)
             SELECT gen_random_uuid(), 'user', gen_random_uuid()::text,
                    'email.verification.v1', '{}'
               FROM generate_series(1, 30000)",
            "ANALYZE outbox",
            "WITH users AS MATERIALIZED (
                 SELECT u, gen_random_uuid()::text AS id FROM generate_series(0, 199) AS u)
             INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload)
             SELECT gen_random_uuid(), 'user', users.id, 'identity.test.e.v1', '{}'
               FROM generate_series(0, 1999) AS i JOIN users ON users.u = i % 200
              ORDER BY i",
        ] {
            diesel::sql_query(statement)
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        let plan: Vec<identity_tests::pg::PlanLine> =
            diesel::sql_query(format!("EXPLAIN (ANALYZE, TIMING OFF) {CLAIM_EVENTS}"))
                .bind::<SqlUuid, _>(Uuid::new_v4())
                .bind::<Double, _>(30.0)
                .bind::<BigInt, _>(64)
                .load(&mut conn)
                .await
                .expect("the claim runs");
        let plan: Vec<String> = plan.into_iter().map(|p| p.line).collect();
        let most = identity_tests::pg::most_rows_read(&plan, "outbox");
        assert!(
            most <= 4 * 64,
            "a scan of the outbox read {most} rows to claim 64 of 2,000 events:\n{}",
            plan.join("\n")
        );
    }
}
