//! outbox-relay keeps time by the database's clock: the built relay run with its clock set
//! ahead by libfaketime (`LD_PRELOAD`; `scripts/test` installs Debian's `faketime`), a real
//! PostgreSQL and a real SMTP server.

use std::{path::PathBuf, time::Duration};

use identity_tests::{
    outbox::{self, dead_letters, enqueue},
    pg::TestDb,
    process::Process,
    relay,
    smtp::{Reply, SmtpServer},
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// libfaketime's preload library, where Debian installs it (`/usr/lib/<triplet>/faketime/`).
fn libfaketime() -> PathBuf {
    let triplets = std::fs::read_dir("/usr/lib")
        .map(|dirs| dirs.filter_map(Result::ok).map(|d| d.path()).collect())
        .unwrap_or_else(|_| Vec::new());
    let found = triplets
        .into_iter()
        .chain([PathBuf::from("/usr/lib")])
        .map(|dir| dir.join("faketime/libfaketime.so.1"))
        .find(|path| path.exists());
    found.unwrap_or_else(|| {
        panic!(
            "libfaketime is missing: run scripts/test, which installs it (apt-get install faketime)"
        )
    })
}

/// Starts the relay with its clock `offset` ahead (libfaketime syntax, e.g. "+1h"), and checks
/// that the clock really is ahead, from the time stamp of its first log line.
async fn start_relay_ahead(
    db: &TestDb,
    smtp: &SmtpServer,
    offset: &str,
    ahead: Duration,
) -> Process {
    let lib = libfaketime().display().to_string();
    let relay = relay::start(
        &db.url,
        &smtp.url(),
        &[("LD_PRELOAD", lib.as_str()), ("FAKETIME", offset)],
    )
    .await;
    let output = relay.output();
    let stamp = output
        .split_whitespace()
        .next()
        .and_then(|word| OffsetDateTime::parse(word, &Rfc3339).ok())
        .unwrap_or_else(|| panic!("no time stamp on the relay's first line:\n{output}"));
    assert!(
        stamp - OffsetDateTime::now_utc() > ahead - Duration::from_secs(60),
        "the relay's clock is not ahead ({stamp}):\n{output}"
    );
    relay
}

#[tokio::test]
async fn a_relay_whose_clock_is_an_hour_ahead_retries_a_451_within_seconds() {
    let smtp = SmtpServer::start();
    smtp.reply_to(
        "ahead1@example.com",
        Reply::TransientTimes {
            code: 451,
            times: 1,
        },
    );
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let _relay = start_relay_ahead(&db, &smtp, "+1h", Duration::from_secs(3600)).await;

    enqueue(&mut conn, "ahead", 1).await;

    // The retry is due within a second (the tests' backoff) by the database's clock; by the
    // relay's, it would be an hour away.
    smtp.wait_for_message_to("ahead1@example.com", Duration::from_secs(30))
        .await;
    assert_eq!(smtp.attempts("ahead1@example.com"), 2);
    outbox::drained(&mut conn, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_relay_whose_clock_is_two_days_ahead_sends_a_link_still_valid_by_the_database_clock() {
    let smtp = SmtpServer::start();
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let _relay = start_relay_ahead(&db, &smtp, "+2d", Duration::from_secs(2 * 86_400)).await;

    // Its link expires in a day, by the database's clock.
    enqueue(&mut conn, "valid", 1).await;

    smtp.wait_for_message_to("valid1@example.com", Duration::from_secs(30))
        .await;
    assert!(dead_letters(&mut conn).await.is_empty());
}
