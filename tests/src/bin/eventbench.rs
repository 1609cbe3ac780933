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
//!    this process's monotonic clock);
//! 3. publishing rate by backlog size, to show the relay's cost does not grow with its backlog:
//!    a backlog of `--small-backlog` events (10,000), then one of `--large-backlog` (1,000,000),
//!    both of `--users` users, each inserted in one transaction with `ANALYZE outbox`, then one
//!    relay starts. Publishing a million would take minutes, so the rate runs over a window
//!    after a warm-up (from the stream's 1,000th new message to its 21,000th by default), then
//!    the relay stops and the outbox is emptied. The small backlog cannot fill that window: both
//!    rates are also given over the window it can fill (the 1,000th to the 10,000th), and
//!    compared. The users stay few (2,000, so 500 events each in the large backlog): inserting
//!    a user's event takes its advisory lock until commit, and one transaction can hold only a
//!    few thousand locks;
//! 4. events during an SMTP outage: a relay whose SMTP server is down (nothing listens on its
//!    port, so it fails every email and retries it with backoff) while `--outage-emails`
//!    verification emails (1,000,000) are queued, in one transaction with `ANALYZE outbox`; once
//!    it has failed one, the latency of phase 2; then the rate of phase 1 (one backlog) twice:
//!    with the statistics of the emails only (the planner then believes there are no events),
//!    and with `ANALYZE outbox` in the events' insert; then the emails are deleted.
//!
//! It needs `DATABASE_URL` (a role that may CREATE DATABASE), `nats-server` and the release
//! binaries next to it (`scripts/bench events` does all three). It prints figures; it asserts
//! nothing.

use std::time::{Duration, Instant};

use async_nats::jetstream::stream::Stream;
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
    pg::{TestDb, free_port},
    process::Process,
    relay,
    smtp::SmtpServer,
    wait,
};

/// Measure outbox-relay's event channel: backlog publishing rate to JetStream, idle latency from
/// commit to JetStream ack, the rate with a small and with a large backlog, and the latency
/// while a large backlog of emails waits for an SMTP server that is down.
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
    /// Size of the small backlog of the comparison by backlog size.
    #[arg(long, default_value_t = 10_000)]
    small_backlog: u64,
    /// Size of the large backlog whose publishing rate is compared with that of
    /// `--small-backlog` (0: skip the comparison).
    #[arg(long, default_value_t = 1_000_000)]
    large_backlog: u64,
    /// Messages a windowed rate skips first (connections opening, first claims).
    #[arg(long, default_value_t = 1_000)]
    warm_up: u64,
    /// Messages a windowed rate runs over, after the warm-up.
    #[arg(long, default_value_t = 20_000)]
    window: u64,
    /// Emails queued while the SMTP server is down, for the figures during an outage (0: skip
    /// that phase).
    #[arg(long, default_value_t = 1_000_000)]
    outage_emails: i64,
    /// Events sent one by one during the outage.
    #[arg(long, default_value_t = 200)]
    outage_samples: usize,
}

/// The statement that inserts `n` events of `users` new users (user `i % users` owns the `i`th
/// row, so users alternate), all with the payload `$1`.
fn backlog_sql(n: u64, users: u64) -> String {
    format!(
        "WITH users AS MATERIALIZED (
             SELECT u, gen_random_uuid()::text AS id FROM generate_series(0, {users} - 1) AS u)
         INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload)
         SELECT gen_random_uuid(), 'user', users.id, '{kind}', $1::jsonb
           FROM generate_series(0, {n} - 1) AS i JOIN users ON users.u = i % {users}
          ORDER BY i",
        kind = UserLoggedIn::TYPE,
    )
}

/// Waits until the stream holds `count` messages (polled every 20 ms); returns when it saw them.
async fn until_held(stream: &mut Stream, count: u64) -> Instant {
    wait::until(
        &format!("{count} messages in the stream"),
        Duration::from_secs(600),
        async || {
            let held = stream.info().await.map_or(0, |info| info.state.messages);
            (held >= count).then(Instant::now)
        },
    )
    .await
}

/// Inserts `n` events of `users` new users in one statement (followed by `ANALYZE outbox` in
/// its transaction if `analyze`), notifies, and waits until the stream holds `before + n`
/// messages; returns events per second from the insert's commit.
async fn publish_backlog(
    conn: &mut AsyncPgConnection,
    stream: &mut Stream,
    payload: &str,
    (n, users): (u64, u64),
    before: u64,
    analyze: bool,
) -> f64 {
    conn.transaction(async |tx| {
        outbox::execute_with(tx, &backlog_sql(n, users), &[payload]).await;
        if analyze {
            outbox::execute(tx, "ANALYZE outbox").await;
        }
        Ok::<_, diesel::result::Error>(())
    })
    .await
    .expect("the backlog is queued");
    let committed = Instant::now();
    outbox::notify(conn).await;
    until_held(stream, before + n).await;
    n as f64 / committed.elapsed().as_secs_f64()
}

/// Inserts `n` events of `users` new users and runs `ANALYZE outbox` in one transaction, starts
/// `start`'s relay and waits until the stream holds each of `counts` more messages (ascending);
/// then stops the relay and empties the outbox. Returns when each count was seen, and how long
/// the insert took.
async fn publish_window(
    conn: &mut AsyncPgConnection,
    stream: &mut Stream,
    payload: &str,
    (n, users): (u64, u64),
    counts: &[u64],
    start: impl AsyncFnOnce() -> Process,
) -> anyhow::Result<(Vec<Instant>, Duration)> {
    let before = stream.info().await?.state.messages;
    let started = Instant::now();
    conn.transaction(async |tx| {
        outbox::execute_with(tx, &backlog_sql(n, users), &[payload]).await;
        outbox::execute(tx, "ANALYZE outbox").await;
        Ok::<_, diesel::result::Error>(())
    })
    .await?;
    let inserted_in = started.elapsed();
    let mut relay = start().await;
    let mut seen = Vec::with_capacity(counts.len());
    for count in counts {
        seen.push(until_held(stream, before + count).await);
    }
    relay.terminate(Duration::from_secs(30)).await;
    outbox::execute(conn, "TRUNCATE outbox").await;
    Ok((seen, inserted_in))
}

/// Sends `samples` events one at a time, each inserted with its NOTIFY in one autocommit
/// statement, and returns the time from the statement's return to the event's arrival at a
/// core NATS subscriber of `identity.>` on a connection of its own, sorted.
async fn commit_to_ack(
    nats_url: &str,
    conn: &mut AsyncPgConnection,
    payload: &str,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let client = async_nats::connect(nats_url).await?;
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
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let id = uuid::Uuid::now_v7().to_string();
        let user = uuid::Uuid::new_v4().to_string();
        outbox::execute_with(conn, &insert, &[&id, &user, payload]).await;
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
    latencies.sort();
    Ok(latencies)
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
        args.latency_samples > 0 && args.outage_samples > 0,
        "--latency-samples and --outage-samples must be at least 1"
    );
    anyhow::ensure!(
        args.warm_up >= 1 && args.warm_up < args.small_backlog,
        "--warm-up must be at least 1 and less than --small-backlog"
    );
    anyhow::ensure!(
        args.large_backlog == 0 || args.large_backlog >= args.small_backlog,
        "--large-backlog must be 0 or at least --small-backlog"
    );
    anyhow::ensure!(args.window >= 1, "--window must be at least 1");
    let smtp = SmtpServer::start_sink();
    let nats = NatsServer::start().await;
    let db = TestDb::create().await;
    let batch_size = args.batch_size.to_string();
    let nats_url = nats.url();
    // A relay publishing to `nats` with the benchmark's batch size, sending emails to
    // `smtp_url`, with the `extra` settings.
    let start_relay = async |smtp_url: &str, extra: &[(&str, &str)]| {
        let mut env = vec![
            ("NATS_URL", nats_url.as_str()),
            ("RELAY_BATCH_SIZE", &batch_size),
        ];
        env.extend_from_slice(extra);
        relay::start_for_bench(&db.url, smtp_url, &env).await
    };
    let mut relay = start_relay(&smtp.url(), &[]).await;
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
            (args.backlog, args.users),
            held,
            false,
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
    let latencies = commit_to_ack(&nats_url, &mut conn, &payload, args.latency_samples).await?;
    relay.terminate(Duration::from_secs(30)).await;
    println!(
        "events: commit to JetStream ack, idle, {} samples: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (goal: p50 < 20 ms)",
        latencies.len(),
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 90.0),
        percentile_ms(&latencies, 99.0),
        percentile_ms(&latencies, 100.0)
    );

    // 3. Publishing rate by backlog size.
    if args.large_backlog > 0 {
        let short = args.window.min(args.small_backlog - args.warm_up);
        let long = args.window.min(args.large_backlog - args.warm_up);
        let (small, _) = publish_window(
            &mut conn,
            &mut stream,
            &payload,
            (args.small_backlog, args.users),
            &[args.warm_up, args.warm_up + short],
            async || start_relay(&smtp.url(), &[]).await,
        )
        .await?;
        let (large, inserted_in) = publish_window(
            &mut conn,
            &mut stream,
            &payload,
            (args.large_backlog, args.users),
            &[args.warm_up, args.warm_up + short, args.warm_up + long],
            async || start_relay(&smtp.url(), &[]).await,
        )
        .await?;
        let rate = |from: Instant, to: Instant, n: u64| n as f64 / (to - from).as_secs_f64();
        let small_rate = rate(small[0], small[1], short);
        let large_rate = rate(large[0], large[1], short);
        println!(
            "events: rate by backlog size, one relay, events of {} users, stream messages {} to {} (the {} before are warm-up), ANALYZE outbox run with each backlog's insert: {} queued: {small_rate:.0} events/s; {} queued: {large_rate:.0} events/s; large/small {:.2} (goal: within 10% of each other)",
            args.users,
            args.warm_up + 1,
            args.warm_up + short,
            args.warm_up,
            args.small_backlog,
            args.large_backlog,
            large_rate / small_rate,
        );
        println!(
            "events: rate with {} events of {} users queued (inserted with ANALYZE in one transaction, {:.1} s), one relay, stream messages {} to {}: {:.0} events/s (then the relay stopped and the rest was emptied)",
            args.large_backlog,
            args.users,
            inserted_in.as_secs_f64(),
            args.warm_up + 1,
            args.warm_up + long,
            rate(large[0], large[2], long),
        );
    }

    // 4. Events during an SMTP outage.
    if args.outage_emails > 0 {
        // Nothing listens on a port just found free: every connection is refused. The relay's
        // log lines for its sends are left out but its warnings.
        let dead_smtp = format!("smtp://127.0.0.1:{}", free_port()?);
        let mut relay =
            start_relay(&dead_smtp, &[("RUST_LOG", "info,outbox_relay::relay=warn")]).await;
        let started = Instant::now();
        // With ANALYZE in the same transaction (the NOTIFY goes out at commit), the statistics
        // describe the outbox the relay sees: emails only, as autovacuum's next ANALYZE would.
        conn.transaction(async |tx| {
            outbox::enqueue(tx, "outage-", args.outage_emails).await;
            outbox::execute(tx, "ANALYZE outbox").await;
            Ok::<_, diesel::result::Error>(())
        })
        .await?;
        let queued_in = started.elapsed();
        relay
            .wait_for_line("the SMTP server cannot be reached", Duration::from_secs(60))
            .await;
        let latencies = commit_to_ack(&nats_url, &mut conn, &payload, args.outage_samples).await?;
        println!(
            "events: commit to JetStream ack while {} emails wait for an SMTP server that is down (queued in one INSERT with ANALYZE outbox, {:.1} s; the relay tries the server once a second meanwhile), {} samples: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (goal: every event within 1 s)",
            args.outage_emails,
            queued_in.as_secs_f64(),
            latencies.len(),
            percentile_ms(&latencies, 50.0),
            percentile_ms(&latencies, 90.0),
            percentile_ms(&latencies, 99.0),
            percentile_ms(&latencies, 100.0)
        );
        // First with the statistics of the emails only, as when autovacuum's last ANALYZE came
        // before a burst of events; then with the events analyzed too.
        for analyze in [false, true] {
            let held = stream.info().await?.state.messages;
            let rate = publish_backlog(
                &mut conn,
                &mut stream,
                &payload,
                (args.backlog, args.users),
                held,
                analyze,
            )
            .await;
            let failed = outbox::count(
                &mut conn,
                "SELECT count(*) AS n FROM outbox WHERE channel = 'email' AND attempts > 0",
            )
            .await;
            println!(
                "events: {} events of {} users published in {:.2} s while {} emails wait for an SMTP server that is down: {rate:.0} events/s (one relay, batch size {}, outbox statistics: {}; {failed} of the emails had failed at least once by the end)",
                args.backlog,
                args.users,
                args.backlog as f64 / rate,
                args.outage_emails,
                args.batch_size,
                if analyze {
                    "ANALYZE outbox run with the events' insert"
                } else {
                    "from before the events (emails only)"
                },
            );
        }
        relay.terminate(Duration::from_secs(30)).await;
        outbox::execute(&mut conn, "DELETE FROM outbox WHERE channel = 'email'").await;
    }
    // A million-row outbox is gigabytes on disk.
    db.drop_on(&identity_tests::pg::admin_url()).await
}
