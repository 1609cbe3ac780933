//! Benchmark of outbox-relay against a local SMTP sink (the mailin-based test server, in this process):
//!
//! 1. latency when idle: one message at a time, from its transaction's commit to the SMTP
//!    server's acceptance (both timed on this process's monotonic clock);
//! 2. drain throughput: a backlog (10,000 by default) drained by one relay, then by two; the
//!    rate runs from the first acceptance to the last;
//! 3. drain rate by backlog size, to show the relay's cost does not grow with its backlog: a
//!    backlog of `--backlog` emails, then one of `--large-backlog` (1,000,000), each queued in
//!    one statement, then `ANALYZE outbox`, then one relay starts. Draining a million would
//!    take ten minutes or more, so the rate runs over a window of acceptances after a warm-up
//!    (from the 1,000th acceptance to the 21,000th by default), then the relay stops and the
//!    rest of the backlog is emptied. The small backlog cannot fill that window: both rates
//!    are also given over the window it can fill (the 1,000th to the 10,000th), and compared.
//!
//! It needs `DATABASE_URL` (a role that may CREATE DATABASE) and the release binaries next to
//! it (`scripts/bench` does both). It prints figures; it asserts nothing.

use std::time::{Duration, Instant};

use clap::Parser;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use identity_tests::{load::percentile_ms, outbox, pg::TestDb, relay, smtp::SmtpServer, wait};

/// Measure outbox-relay: idle latency from commit to SMTP acceptance, backlog drain rate with
/// one and with two relays, and the drain rate with a small and with a large backlog.
#[derive(Debug, Parser)]
#[command(name = "relaybench")]
struct Args {
    /// Messages sent one by one for the latency figures.
    #[arg(long, default_value_t = 300)]
    latency_samples: usize,
    /// Size of the backlog for the throughput figures.
    #[arg(long, default_value_t = 10_000)]
    backlog: i64,
    /// Size of the large backlog whose drain rate is compared with that of `--backlog` (0: skip
    /// the comparison).
    #[arg(long, default_value_t = 1_000_000)]
    large_backlog: i64,
    /// Acceptances a windowed rate skips first (SMTP connections opening, first claims).
    #[arg(long, default_value_t = 1_000)]
    warm_up: usize,
    /// Acceptances a windowed rate runs over, after the warm-up.
    #[arg(long, default_value_t = 20_000)]
    window: usize,
}

/// Drains a backlog of `n` with `replicas` relays; returns emails per second.
async fn drain(db: &TestDb, smtp: &SmtpServer, replicas: usize, n: i64, prefix: &str) -> f64 {
    let mut conn = db.connect().await;
    let before = smtp.message_count();
    outbox::enqueue(&mut conn, prefix, n).await;
    let mut relays = Vec::new();
    for _ in 0..replicas {
        relays.push(relay::start_for_bench(&db.url, &smtp.url(), &[]).await);
    }
    let expected = before + usize::try_from(n).unwrap_or(usize::MAX);
    wait::until(
        "the backlog to drain",
        Duration::from_secs(600),
        async || (smtp.message_count() >= expected).then_some(()),
    )
    .await;
    let accepted = smtp.messages();
    let first = accepted[before].accepted_at;
    let last = accepted[expected - 1].accepted_at;
    for mut relay in relays {
        relay.terminate(Duration::from_secs(30)).await;
    }
    (n - 1) as f64 / (last - first).as_secs_f64()
}

/// Queues `n` emails in one statement, runs `ANALYZE outbox`, starts one relay and waits until
/// it delivered `accepted` of them; then stops it and empties the outbox. Returns when each of
/// those emails was accepted, in order, and how long the queueing took.
async fn drain_window(
    db: &TestDb,
    smtp: &SmtpServer,
    n: i64,
    accepted: usize,
    prefix: &str,
) -> (Vec<Instant>, Duration) {
    let mut conn = db.connect().await;
    let before = smtp.message_count();
    let started = Instant::now();
    outbox::enqueue(&mut conn, prefix, n).await;
    let queued_in = started.elapsed();
    outbox::execute(&mut conn, "ANALYZE outbox").await;
    let mut relay = relay::start_for_bench(&db.url, &smtp.url(), &[]).await;
    wait::until(
        &format!("{accepted} emails of the backlog to be accepted"),
        Duration::from_secs(600),
        async || (smtp.message_count() >= before + accepted).then_some(()),
    )
    .await;
    relay.terminate(Duration::from_secs(30)).await;
    outbox::execute(&mut conn, "TRUNCATE outbox").await;
    let times = smtp.messages()[before..before + accepted]
        .iter()
        .map(|message| message.accepted_at)
        .collect();
    (times, queued_in)
}

/// Emails per second from the `warm_up`th acceptance to the `warm_up + window`th.
fn window_rate(accepted: &[Instant], warm_up: usize, window: usize) -> f64 {
    let span = accepted[warm_up + window - 1] - accepted[warm_up - 1];
    window as f64 / span.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.warm_up >= 1 && i64::try_from(args.warm_up)? < args.backlog,
        "--warm-up must be at least 1 and less than --backlog"
    );
    anyhow::ensure!(
        args.large_backlog == 0 || args.large_backlog >= args.backlog,
        "--large-backlog must be 0 or at least --backlog"
    );
    anyhow::ensure!(args.window >= 1, "--window must be at least 1");
    let smtp = SmtpServer::start_sink();
    let db = TestDb::create().await;

    // 1. Latency when idle.
    let mut relay = relay::start_for_bench(&db.url, &smtp.url(), &[]).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await?;
    let mut latencies = Vec::with_capacity(args.latency_samples);
    for i in 0..args.latency_samples {
        let before = smtp.message_count();
        // Insert and NOTIFY in one transaction, as identity-server does; the clock starts when
        // COMMIT returns.
        let prefix = format!("idle{i}-");
        conn.transaction(async |tx| {
            outbox::enqueue(tx, &prefix, 1).await;
            Ok::<_, diesel::result::Error>(())
        })
        .await?;
        let committed = Instant::now();
        wait::until(
            "the email to be accepted",
            Duration::from_secs(30),
            async || (smtp.message_count() > before).then_some(()),
        )
        .await;
        let accepted = smtp.messages()[before].accepted_at;
        latencies.push(accepted.saturating_duration_since(committed));
    }
    relay.terminate(Duration::from_secs(30)).await;
    latencies.sort();
    println!(
        "idle latency, commit to SMTP accepted, {} emails one at a time: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (goals: p50 < 20 ms, p99 < 100 ms)",
        latencies.len(),
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 99.0),
        percentile_ms(&latencies, 100.0)
    );

    // 2. Throughput.
    let one = drain(&db, &smtp, 1, args.backlog, "one-").await;
    println!(
        "drain of {} emails, 1 relay: {one:.0} emails/s (goal: at least 1,000 per replica)",
        args.backlog
    );
    let two = drain(&db, &smtp, 2, args.backlog, "two-").await;
    println!(
        "drain of {} emails, 2 relays: {two:.0} emails/s",
        args.backlog
    );

    // 3. Drain rate by backlog size.
    if args.large_backlog > 0 {
        let room = |n: i64| usize::try_from(n).unwrap_or(usize::MAX) - args.warm_up;
        let short = args.window.min(room(args.backlog));
        let long = args.window.min(room(args.large_backlog));
        let (small, _) =
            drain_window(&db, &smtp, args.backlog, args.warm_up + short, "small-").await;
        let (large, queued_in) = drain_window(
            &db,
            &smtp,
            args.large_backlog,
            args.warm_up + long,
            "large-",
        )
        .await;
        let (small_rate, large_rate) = (
            window_rate(&small, args.warm_up, short),
            window_rate(&large, args.warm_up, short),
        );
        println!(
            "drain rate by backlog size, 1 relay, emails {} to {} accepted (the {} before are warm-up), ANALYZE outbox run after each backlog was queued: {} queued: {small_rate:.0} emails/s; {} queued: {large_rate:.0} emails/s; large/small {:.2} (goal: within 10% of each other)",
            args.warm_up + 1,
            args.warm_up + short,
            args.warm_up,
            args.backlog,
            args.large_backlog,
            large_rate / small_rate,
        );
        println!(
            "drain rate with {} emails queued (in one INSERT, {:.1} s), 1 relay, emails {} to {} accepted: {:.0} emails/s (then the relay stopped and the rest was emptied)",
            args.large_backlog,
            queued_in.as_secs_f64(),
            args.warm_up + 1,
            args.warm_up + long,
            window_rate(&large, args.warm_up, long),
        );
    }
    // A million-row outbox is gigabytes on disk.
    db.drop_on(&identity_tests::pg::admin_url()).await
}
