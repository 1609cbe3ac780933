//! Benchmark of outbox-relay publishing domain events to NATS JetStream (a real `nats-server -js`
//! with file storage, started by this process on a free port):
//!
//! 1. throughput: a backlog of events (20,000 by default) of many users (2,000, so 10 each),
//!    interleaved so each user's events alternate with the others', inserted in one statement
//!    while one relay runs, then a NOTIFY; the rate runs from the insert's commit until the
//!    stream holds them all (its message count polled every 20 ms). The relay publishes one
//!    event per user at a time, in order, so the rate needs many users;
//! 2. latency when idle, commit to JetStream ack: one event at a time, inserted with its NOTIFY
//!    in one autocommit statement, from the statement's return to its arrival at a core NATS
//!    subscriber of `identity.>` (JetStream delivers a stored message to those too, so the
//!    arrival follows the store), matched by its `ce-id` header, the outbox id (both timed on
//!    this process's monotonic clock).
//!
//! It needs `DATABASE_URL` (a role that may CREATE DATABASE), `nats-server` and the release
//! binaries next to it (`scripts/bench events` does all three). It prints figures; it asserts
//! nothing.

use std::time::{Duration, Instant};

use clap::Parser;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::StreamExt;
use identity_proto::{
    identity::events::v1::UserLoggedIn,
    outbox::{DomainEvent, EventPayload},
};
use identity_tests::{
    load::percentile_ms,
    nats::{NatsServer, STREAM},
    outbox,
    pg::TestDb,
    relay,
    smtp::SmtpServer,
    wait,
};

/// Measure outbox-relay's event channel: backlog publishing rate to JetStream, and idle latency
/// from commit to JetStream ack.
#[derive(Debug, Parser)]
#[command(name = "eventbench")]
struct Args {
    /// Size of the backlog for the throughput figures.
    #[arg(long, default_value_t = 20_000)]
    backlog: u64,
    /// Users the backlog's events are spread over (evenly, interleaved).
    #[arg(long, default_value_t = 2_000)]
    users: u64,
    /// Backlogs published, one after the other, for the throughput figures.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// The relay's RELAY_BATCH_SIZE (events claimed and published at once).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Events sent one by one for the latency figures.
    #[arg(long, default_value_t = 300)]
    latency_samples: usize,
}

/// Inserts `n` events of `users` new users in one statement (user `i % users` owns the `i`th
/// row, so users alternate), notifies, and waits until the stream holds `before + n` messages;
/// returns events per second from the insert's commit.
async fn publish_backlog(
    conn: &mut AsyncPgConnection,
    stream: &mut async_nats::jetstream::stream::Stream,
    payload: &str,
    n: u64,
    users: u64,
    before: u64,
) -> f64 {
    let sql = format!(
        "WITH users AS MATERIALIZED (
             SELECT u, gen_random_uuid()::text AS id FROM generate_series(0, {users} - 1) AS u)
         INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload)
         SELECT gen_random_uuid(), 'user', users.id, '{kind}', $1::jsonb
           FROM generate_series(0, {n} - 1) AS i JOIN users ON users.u = i % {users}
          ORDER BY i",
        kind = UserLoggedIn::TYPE,
    );
    outbox::execute_with(conn, &sql, &[payload]).await;
    let committed = Instant::now();
    outbox::notify(conn).await;
    let expected = before + n;
    wait::until(
        &format!("{expected} messages in the stream"),
        Duration::from_secs(600),
        async || {
            let held = stream.info().await.map_or(0, |info| info.state.messages);
            (held >= expected).then_some(())
        },
    )
    .await;
    n as f64 / committed.elapsed().as_secs_f64()
}

/// How many times the outbox table was analyzed. Without statistics (a fresh table, until
/// autovacuum's first ANALYZE, which may come at any time in the first minute) the relay's claim
/// sorts the whole backlog each time: the figures say which case a run measured.
async fn analyses(conn: &mut AsyncPgConnection) -> i64 {
    outbox::count(
        conn,
        "SELECT analyze_count + autoanalyze_count AS n FROM pg_stat_user_tables
          WHERE relname = 'outbox'",
    )
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    anyhow::ensure!(
        args.latency_samples > 0,
        "--latency-samples must be at least 1"
    );
    let smtp = SmtpServer::start_sink();
    let nats = NatsServer::start().await;
    let db = TestDb::create().await;
    let batch_size = args.batch_size.to_string();
    let nats_url = nats.url();
    let mut relay = relay::start_for_bench(
        &db.url,
        &smtp.url(),
        &[("NATS_URL", &nats_url), ("RELAY_BATCH_SIZE", &batch_size)],
    )
    .await;
    let mut conn = AsyncPgConnection::establish(&db.url).await?;
    // One valid payload for every row: the relay does not compare its user id with the row's.
    let payload = serde_json::to_string(&EventPayload::of(&UserLoggedIn {
        user_id: uuid::Uuid::new_v4().to_string(),
        session_id: uuid::Uuid::new_v4().to_string(),
        logged_in_at: None,
    }))?;

    // The relay creates the stream once it has connected.
    let js = nats.jetstream().await;
    let mut stream = wait::until("the relay to create the stream", Duration::from_secs(30), {
        let js = &js;
        async move || js.get_stream(STREAM).await.ok()
    })
    .await;

    // 1. Throughput.
    let mut held = stream.info().await?.state.messages;
    for run in 1..=args.runs {
        let analyses_before = analyses(&mut conn).await;
        let rate = publish_backlog(
            &mut conn,
            &mut stream,
            &payload,
            args.backlog,
            args.users,
            held,
        )
        .await;
        held += args.backlog;
        let statistics = match (analyses_before, analyses(&mut conn).await) {
            (0, 0) => "none",
            (0, _) => "first gathered during the run",
            _ => "present",
        };
        println!(
            "events: {} events of {} users published in {:.2} s: {rate:.0} events/s (one relay, JetStream file storage, batch size {}, run {run} of {}, outbox statistics: {statistics}; goal: at least 2,000 events/s)",
            args.backlog,
            args.users,
            args.backlog as f64 / rate,
            args.batch_size,
            args.runs,
        );
    }

    // 2. Latency when idle.
    let client = async_nats::connect(nats.url()).await?;
    let mut subscriber = client.subscribe("identity.>").await?;
    // The server has the subscription before the first event.
    client.flush().await?;
    let insert = format!(
        "WITH ins AS (
             INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload)
             VALUES ($1::uuid, 'user', $2, '{}', $3::jsonb) RETURNING 1)
         SELECT pg_notify('outbox', '') FROM ins",
        UserLoggedIn::TYPE,
    );
    let mut latencies = Vec::with_capacity(args.latency_samples);
    for _ in 0..args.latency_samples {
        let id = uuid::Uuid::now_v7().to_string();
        let user = uuid::Uuid::new_v4().to_string();
        outbox::execute_with(&mut conn, &insert, &[&id, &user, &payload]).await;
        let committed = Instant::now();
        let arrived = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(message) = subscriber.next().await {
                let ce_id = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get("ce-id"))
                    .map(|value| value.as_str().to_owned());
                if ce_id.as_deref() == Some(id.as_str()) {
                    return Instant::now();
                }
            }
            panic!("the NATS subscription ended");
        })
        .await
        .unwrap_or_else(|_| panic!("event {id} did not arrive within 30 s"));
        latencies.push(arrived.saturating_duration_since(committed));
    }
    relay.terminate(Duration::from_secs(30)).await;
    latencies.sort();
    println!(
        "events: commit to JetStream ack, idle, {} samples: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (goal: p50 < 20 ms)",
        latencies.len(),
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 90.0),
        percentile_ms(&latencies, 99.0),
        percentile_ms(&latencies, 100.0)
    );
    Ok(())
}
