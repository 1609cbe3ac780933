//! outbox-relay's lease against a slow mail provider: the built binaries with their default
//! batch, concurrency, lease and SMTP timeout, a real PostgreSQL and a real SMTP server that
//! takes its time to accept each message.

use std::time::Duration;

use identity_tests::{
    outbox::{self, count, enqueue},
    pg::TestDb,
    process::Process,
    relay::{self, deliveries},
    smtp::SmtpServer,
    wait,
};

const WAIT: Duration = Duration::from_secs(60);

/// The test helper's lease and SMTP timeout unset, so the relay runs with its defaults (batch
/// 64, concurrency 16, lease 30 s, SMTP timeout 10 s).
const DEFAULTS: [(&str, &str); 4] = [
    ("RELAY_BATCH_SIZE", ""),
    ("RELAY_CONCURRENCY", ""),
    ("RELAY_LEASE_SECS", ""),
    ("RELAY_SMTP_TIMEOUT_SECS", ""),
];

#[tokio::test]
async fn with_a_provider_taking_9_s_per_email_a_second_relay_sends_nothing_twice() {
    let smtp = SmtpServer::start();
    // Under the 10 s SMTP timeout, but 64 emails, 16 at a time, take 36 s: longer than a lease.
    smtp.delay_each_message(Duration::from_secs(9));
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let recipients = enqueue(&mut conn, "slow", 64).await;

    let _first = relay::start(&db.url, &smtp.url(), &DEFAULTS).await;
    wait::until(
        "the first relay to lease all 64 messages",
        WAIT,
        async || {
            let leased = "SELECT count(*) AS n FROM outbox WHERE lease_token IS NOT NULL";
            (count(&mut conn, leased).await == 64).then_some(())
        },
    )
    .await;
    let _second = relay::start(&db.url, &smtp.url(), &DEFAULTS).await;
    outbox::drained(&mut conn, Duration::from_secs(120)).await;

    let seen = deliveries(&smtp);
    let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    println!("{} of 64 sent more than once: {twice:?}", twice.len());
    assert!(twice.is_empty(), "{} sent more than once", twice.len());
    for recipient in &recipients {
        assert_eq!(seen.get(recipient), Some(&1), "{recipient}");
    }
}

#[tokio::test]
async fn a_lease_too_short_to_cover_one_delivery_is_refused_at_start_up() {
    let db = TestDb::create().await;
    let mut settings = relay::configured_env(&db.url);
    settings.extend([
        ("RELAY_HEALTH_ADDR", "127.0.0.1:0"),
        ("RELAY_LEASE_SECS", "15"),
        ("RELAY_SMTP_TIMEOUT_SECS", "10"),
    ]);
    let mut relay = Process::spawn("outbox-relay", &["serve"], &settings);

    let status = relay.wait_for_exit(Duration::from_secs(30)).await;

    assert!(!status.success());
    let output = relay.output();
    for named in ["RELAY_LEASE_SECS", "RELAY_SMTP_TIMEOUT_SECS"] {
        assert!(output.contains(named), "{named} not named in:\n{output}");
    }
}
