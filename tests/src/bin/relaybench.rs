//! Benchmark of outbox-relay against a local SMTP sink (the mailin-based test server, in this process):
//!
//! 1. latency when idle: one message at a time, from its transaction's commit to the SMTP
//!    server's acceptance (both timed on this process's monotonic clock);
//! 2. drain throughput: a backlog (10,000 by default) drained by one relay, then by two; the
//!    rate runs from the first acceptance to the last.
//!
//! It needs `DATABASE_URL` (a role that may CREATE DATABASE) and the release binaries next to
//! it (`scripts/bench` does both). It prints figures; it asserts nothing.

use std::time::{Duration, Instant};

use clap::Parser;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use identity_tests::{load::percentile_ms, outbox, pg::TestDb, relay, smtp::SmtpServer, wait};

/// Measure outbox-relay: idle latency from commit to SMTP acceptance, and backlog drain rate
/// with one and with two relays.
#[derive(Debug, Parser)]
#[command(name = "relaybench")]
struct Args {
    /// Messages sent one by one for the latency figures.
    #[arg(long, default_value_t = 300)]
    latency_samples: usize,
    /// Size of the backlog for the throughput figures.
    #[arg(long, default_value_t = 10_000)]
    backlog: i64,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    Ok(())
}
