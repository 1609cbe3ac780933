//! outbox-relay end to end: the built binaries, a real PostgreSQL and a real SMTP server over
//! TCP or TLS (the mailin crate's implementation) whose replies each test scripts.

mod support;

use std::{
    collections::{HashMap, HashSet},
    process::Output,
    time::Duration,
};

use diesel_async::RunQueryDsl;
use identity_proto::identity::v1::{self as pb, verify_email_request::Proof};
use identity_tests::{
    outbox::{self, count, dead_letters, enqueue},
    pg::{TestDb, free_port},
    process::{self, Process},
    relay::{self, DELIVERED, delivered_ids, deliveries},
    server::Server,
    smtp::{Received, Reply, SmtpServer, Stage},
    wait,
};
use support::TestCa;

const WAIT: Duration = Duration::from_secs(60);

async fn start_relay(db_url: &str, smtp_url: &str, extra: &[(&str, &str)]) -> Process {
    relay::start(db_url, smtp_url, extra).await
}

/// Settings a relay with SMTP needs besides the URL, for relays run until they exit.
const SMTP_SETTINGS: [(&str, &str); 4] = [
    ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
    ("EMAIL_FROM", "Identity <no-reply@identity.example.com>"),
    (
        "VERIFY_URL_TEMPLATE",
        "https://app.example.com/verify?token={token}",
    ),
    (
        "RESET_URL_TEMPLATE",
        "https://app.example.com/reset?token={token}",
    ),
];

/// Runs the relay with `env` and expects it to refuse to start: it exits by itself, non-zero.
/// Returns what it printed.
async fn refused_start(env: &[(&str, &str)]) -> String {
    let output: Output = relay::run_until_exit(env, Duration::from_secs(20))
        .await
        .expect("the relay refuses to start, but it kept running");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "it exits non-zero:\n{printed}");
    printed
}

/// `SMTP_SETTINGS` with `overrides` set (an empty value unsets).
fn smtp_settings<'a>(overrides: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = SMTP_SETTINGS.to_vec();
    for (key, value) in overrides {
        env.retain(|(k, _)| k != key);
        env.push((key, value));
    }
    env.retain(|(_, value)| !value.is_empty());
    env
}

/// The text/plain part of a received email, decoded.
fn text_body(mail: &Received) -> String {
    let parsed = mailparse::parse_mail(mail.data.as_bytes()).expect("a MIME message");
    parsed
        .subparts
        .iter()
        .find(|part| part.ctype.mimetype == "text/plain")
        .expect("a text/plain part")
        .get_body()
        .expect("a decodable body")
}

#[tokio::test]
async fn registered_users_get_their_email_over_smtp_and_verify_with_its_link_or_code() {
    let smtp = SmtpServer::start();
    let server = Server::start(&[]).await;
    let _relay = start_relay(&server.db.url, &smtp.url(), &[]).await;

    server.register("link@example.com").await;
    server.register("code@example.com").await;
    let by_link = smtp.wait_for_message_to("link@example.com", WAIT).await;
    let by_code = smtp.wait_for_message_to("code@example.com", WAIT).await;

    // A multipart email with a stable Message-ID, from the configured sender.
    let parsed = mailparse::parse_mail(by_link.data.as_bytes()).expect("a MIME message");
    assert_eq!(parsed.ctype.mimetype, "multipart/alternative");
    let types: Vec<_> = parsed
        .subparts
        .iter()
        .map(|p| p.ctype.mimetype.clone())
        .collect();
    assert_eq!(types, ["text/plain", "text/html"]);
    let headers: HashMap<String, String> = parsed
        .headers
        .iter()
        .map(|h| (h.get_key().to_ascii_lowercase(), h.get_value()))
        .collect();
    assert!(
        headers["message-id"].ends_with("@identity.example.com>"),
        "{headers:?}"
    );
    assert!(headers["from"].contains("no-reply@identity.example.com"));
    assert!(headers["to"].contains("link@example.com"));

    let text = text_body(&by_link);
    let token = text
        .split("https://app.example.com/verify?token=")
        .nth(1)
        .and_then(|rest| rest.get(..43))
        .unwrap_or_else(|| panic!("no verification link in:\n{text}"))
        .to_owned();
    let text = text_body(&by_code);
    let code = text
        .split(|c: char| !c.is_ascii_digit())
        .find(|word| word.len() == 6)
        .unwrap_or_else(|| panic!("no 6-digit code in:\n{text}"))
        .to_owned();
    assert!(
        text.contains("24 hours"),
        "the expiry is said in plain words:\n{text}"
    );

    let mut client = server.registration().await;
    for proof in [
        Proof::Token(token),
        Proof::EmailCode(pb::EmailCode {
            email: "code@example.com".into(),
            code,
        }),
    ] {
        let verified = client
            .verify_email(pb::VerifyEmailRequest {
                proof: Some(proof),
                password: identity_tests::server::PASSWORD.into(),
            })
            .await
            .expect("the proof from the email verifies")
            .into_inner();
        assert_eq!(verified.status(), pb::UserStatus::Active);
    }
    // Delivered messages are deleted, and their secrets with them.
    outbox::drained(&mut server.db.connect().await, WAIT).await;
}

#[tokio::test]
async fn a_recipient_answered_451_twice_gets_the_email_once_on_the_third_attempt() {
    let smtp = SmtpServer::start();
    smtp.reply_to(
        "slow1@example.com",
        Reply::TransientTimes {
            code: 451,
            times: 2,
        },
    );
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let relay = start_relay(&db.url, &smtp.url(), &[]).await;

    enqueue(&mut conn, "slow", 1).await;
    smtp.wait_for_message_to("slow1@example.com", WAIT).await;
    outbox::drained(&mut conn, WAIT).await;

    assert_eq!(smtp.attempts("slow1@example.com"), 3);
    assert_eq!(smtp.messages_to("slow1@example.com").len(), 1);
    assert_eq!(relay.count_lines("email delivery failed; will retry"), 2);
    assert!(
        relay.output().contains("failed_attempts=2"),
        "{}",
        relay.output()
    );
    assert!(dead_letters(&mut conn).await.is_empty());
}

#[tokio::test]
async fn a_recipient_answered_550_is_dead_lettered_at_once_without_its_secrets() {
    let smtp = SmtpServer::start();
    smtp.reply_to("gone1@example.com", Reply::Permanent(550));
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let _relay = start_relay(&db.url, &smtp.url(), &[]).await;

    enqueue(&mut conn, "gone", 1).await;
    let dead = wait::until("a dead letter", WAIT, || async {
        dead_letters(&mut db.connect().await).await.pop()
    })
    .await;

    assert_eq!(
        smtp.attempts("gone1@example.com"),
        1,
        "no retry after a 5xx"
    );
    assert!(dead.reason.contains("550"), "{dead:?}");
    assert_eq!(dead.attempts, 1);
    assert_eq!(dead.kind, "email.verification.v1");
    assert!(
        dead.whole_row.contains("gone1@example.com"),
        "the recipient is kept: {dead:?}"
    );
    for secret in ["token-gone1", "\"000001\"", "\"token\"", "\"code\""] {
        assert!(
            !dead.whole_row.contains(secret),
            "{secret} kept in {dead:?}"
        );
    }
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM outbox").await,
        0
    );
}

/// What the relay logs each time it finds the SMTP server unreachable and holds.
const UNREACHABLE: &str = "the SMTP server cannot be reached";

/// How long `output` has been logging lines with `needle`: from the first to the last, by
/// their timestamps.
fn logged_for(output: &str, needle: &str) -> Duration {
    let stamps: Vec<time::OffsetDateTime> = output
        .lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| {
            let stamp = line.split_whitespace().next()?;
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()
        })
        .collect();
    match (stamps.first(), stamps.last()) {
        (Some(first), Some(last)) => (*last - *first).try_into().unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

#[tokio::test]
async fn emails_queued_while_the_smtp_server_is_down_all_arrive_once_it_is_up() {
    let port = free_port().expect("a free port");
    let smtp_url = format!("smtp://127.0.0.1:{port}");
    // 50 sign-ups from one client: this test is about delivery, not the rate limits.
    let server = Server::start(&[("IDENTITY_RATE_LIMITING", "false")]).await;
    let mut conn = server.db.connect().await;
    // The tests' quick retries and default attempt limit: an outage that counted attempts
    // would dead-letter the emails within seconds.
    let relay = start_relay(&server.db.url, &smtp_url, &[]).await;

    let recipients: Vec<String> = (1..=50)
        .map(|i| format!("patient{i}@example.com"))
        .collect();
    for recipient in &recipients {
        server.register(recipient).await;
    }
    // The relay keeps finding the server unreachable for longer than its readiness check's
    // interval (2 s), or counts an attempt on some email.
    let counted = async |conn: &mut diesel_async::AsyncPgConnection| {
        count(conn, "SELECT count(*) AS n FROM outbox WHERE attempts > 0").await
            + count(conn, "SELECT count(*) AS n FROM outbox_dead").await
    };
    wait::until(
        "2.5 s of an unreachable server or a counted attempt",
        WAIT,
        async || {
            (logged_for(&relay.output(), UNREACHABLE) >= Duration::from_millis(2500)
                || counted(&mut conn).await > 0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        counted(&mut conn).await,
        0,
        "an attempt was counted while the SMTP server could not be reached:\n{}",
        relay.output()
    );
    // An outage of the provider is not the relay's: it stays ready (the readiness check logs
    // each change).
    assert!(
        !relay.output().contains("not ready"),
        "the relay reported itself not ready during the outage:\n{}",
        relay.output()
    );

    let smtp = SmtpServer::start_on(port);
    smtp.wait_for_messages(50, WAIT).await;
    outbox::drained(&mut conn, WAIT).await;

    let seen = deliveries(&smtp);
    for recipient in &recipients {
        assert_eq!(seen.get(recipient), Some(&1), "{recipient}");
    }
    assert!(dead_letters(&mut conn).await.is_empty());
}

#[tokio::test]
async fn two_relays_share_500_messages_and_each_goes_out_exactly_once() {
    let smtp = SmtpServer::start();
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let settings = [("RELAY_BATCH_SIZE", "20")];
    let mut first = start_relay(&db.url, &smtp.url(), &settings).await;
    let mut second = start_relay(&db.url, &smtp.url(), &settings).await;
    // Both are idle and listening before the work arrives, so both wake to it.
    for relay in [&mut first, &mut second] {
        relay
            .wait_for_line("listening for outbox notifications", WAIT)
            .await;
    }

    let recipients = enqueue(&mut conn, "pair", 500).await;
    smtp.wait_for_messages(500, WAIT).await;
    outbox::drained(&mut conn, WAIT).await;

    // Each relay's own account: the messages it saw accepted, none twice, none by both.
    let by_first: HashSet<String> = delivered_ids(&first).into_iter().collect();
    let by_second: HashSet<String> = delivered_ids(&second).into_iter().collect();
    println!(
        "first relay delivered {}, second {}",
        by_first.len(),
        by_second.len()
    );
    assert!(
        !by_first.is_empty() && !by_second.is_empty(),
        "both relays delivered: {} and {}",
        by_first.len(),
        by_second.len()
    );
    assert_eq!(first.count_lines(DELIVERED), by_first.len());
    assert_eq!(second.count_lines(DELIVERED), by_second.len());
    assert!(by_first.is_disjoint(&by_second), "a message went out twice");
    assert_eq!(by_first.len() + by_second.len(), 500);
    // The SMTP server's account: every recipient exactly once.
    let seen = deliveries(&smtp);
    assert_eq!(seen.len(), 500);
    for recipient in &recipients {
        assert_eq!(
            seen.get(recipient),
            Some(&1),
            "{recipient} delivered more than once or not at all"
        );
    }
}

#[tokio::test]
async fn killing_the_relay_repeatedly_loses_nothing_and_duplicates_only_sends_in_flight() {
    // A kill -9 can only repeat what was accepted but not yet deleted: at most one send per
    // concurrent slot.
    const CONCURRENCY: usize = 16;
    const KILLS: usize = 6;
    let smtp = SmtpServer::start();
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let recipients = enqueue(&mut conn, "crash", 1000).await;
    let concurrency = CONCURRENCY.to_string();
    let settings = [
        ("RELAY_BATCH_SIZE", "32"),
        ("RELAY_CONCURRENCY", concurrency.as_str()),
        ("RELAY_SMTP_TIMEOUT_SECS", "2"),
        ("RELAY_LEASE_SECS", "7"),
    ];

    for kill in 1..=KILLS {
        let mut relay = start_relay(&db.url, &smtp.url(), &settings).await;
        // A random moment in this relay's drain: after it saw a random number of its own
        // emails accepted (or, should the outbox empty first, then).
        let target = rand::random_range(1..=60);
        wait::until(
            "the relay to deliver, or the outbox to drain",
            WAIT,
            async || {
                let drained = count(&mut conn, "SELECT count(*) AS n FROM outbox").await == 0;
                (relay.count_lines(DELIVERED) >= target || drained).then_some(())
            },
        )
        .await;
        relay.kill();
        println!(
            "kill {kill}: after {} deliveries by this relay, {} in all",
            relay.count_lines(DELIVERED),
            smtp.message_count()
        );
    }
    // A last, clean run takes what is left, once the killed relays' leases have lapsed.
    let _final_run = start_relay(&db.url, &smtp.url(), &settings).await;
    outbox::drained(&mut conn, WAIT).await;

    let seen = deliveries(&smtp);
    let missing: Vec<&String> = recipients
        .iter()
        .filter(|r| !seen.contains_key(*r))
        .collect();
    let twice: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "{} messages, {KILLS} kills: {} delivered, {} missing, {twice} duplicates (bound {})",
        recipients.len(),
        seen.len(),
        missing.len(),
        CONCURRENCY * KILLS
    );
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert_eq!(seen.len(), recipients.len(), "nothing else was sent");
    assert!(twice <= CONCURRENCY * KILLS, "{twice} duplicates");
}

#[tokio::test]
async fn after_its_listen_connection_is_terminated_the_relay_still_delivers_promptly() {
    let smtp = SmtpServer::start();
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    // Polling every minute: only a working LISTEN can deliver within the test's deadline.
    let mut relay = start_relay(&db.url, &smtp.url(), &[("RELAY_POLL_INTERVAL_MS", "60000")]).await;
    relay
        .wait_for_line("listening for outbox notifications", WAIT)
        .await;

    let terminated = count(
        &mut conn,
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
          WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .await;
    assert_eq!(terminated, 1, "the relay's listener connection was found");
    wait::until("the listener to reconnect", WAIT, || {
        std::future::ready(
            (relay.count_lines("listening for outbox notifications") >= 2).then_some(()),
        )
    })
    .await;

    enqueue(&mut conn, "after-drop", 1).await;
    smtp.wait_for_message_to("after-drop1@example.com", Duration::from_secs(20))
        .await;
}

#[tokio::test]
async fn sigterm_during_a_drain_exits_zero_and_leaves_no_message_leased() {
    let smtp = SmtpServer::start();
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    enqueue(&mut conn, "drain", 2000).await;
    let mut relay = start_relay(&db.url, &smtp.url(), &[("RELAY_LEASE_SECS", "300")]).await;
    wait::until("the drain to be under way", WAIT, || {
        std::future::ready((smtp.message_count() >= 50).then_some(()))
    })
    .await;

    assert!(relay.terminate(WAIT).await, "the relay exits 0 on SIGTERM");

    let leased = count(
        &mut conn,
        "SELECT count(*) AS n FROM outbox WHERE lease_token IS NOT NULL",
    )
    .await;
    assert_eq!(leased, 0);
    let left = count(&mut conn, "SELECT count(*) AS n FROM outbox").await;
    println!(
        "SIGTERM after {} deliveries; {left} messages left for the next relay",
        smtp.message_count()
    );
    assert!(left > 0, "stopped during the drain, not after it");
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_their_reason_and_the_rest_delivered() {
    let smtp = SmtpServer::start();
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    enqueue(&mut conn, "before", 2).await;
    diesel::sql_query(
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload) VALUES
           (gen_random_uuid(), 'user', 'u1', 'email.verification.v1', '{\"nonsense\": true, \"token\": \"poison-token\"}'),
           (gen_random_uuid(), 'user', 'u2', 'sms.v1', '{\"to\": \"+15550100\"}'),
           (gen_random_uuid(), 'user', 'u3', 'email.verification.v1',
            jsonb_build_object('recipient', 'not an address', 'display_name', 'X', 'locale', 'en',
                               'token', 'bad-recipient-token', 'code', '424242',
                               'expires_at', '2030-01-01T00:00:00Z'))",
    )
    .execute(&mut conn)
    .await
    .expect("poison is queued");
    enqueue(&mut conn, "after", 2).await;
    let _relay = start_relay(&db.url, &smtp.url(), &[]).await;

    smtp.wait_for_messages(4, WAIT).await;
    outbox::drained(&mut conn, WAIT).await;

    let dead = dead_letters(&mut conn).await;
    let mut reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("malformed email.verification.v1 payload")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown message kind \"sms.v1\"")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("invalid recipient")),
        "{reasons:?}"
    );
    for d in &dead {
        assert_eq!(d.attempts, 0, "never sent: {d:?}");
        assert!(
            !d.whole_row.contains("poison-token")
                && !d.whole_row.contains("bad-recipient-token")
                && !d.whole_row.contains("424242"),
            "{d:?}"
        );
    }
    let seen = deliveries(&smtp);
    for ok in ["before1", "before2", "after1", "after2"] {
        assert_eq!(seen.get(&format!("{ok}@example.com")), Some(&1));
    }
}

#[tokio::test]
async fn refused_smtp_credentials_pause_delivery_without_counting_attempts() {
    let ca = TestCa::new();
    let ca_file = ca.ca_file().to_str().expect("a UTF-8 path");
    let smtp = SmtpServer::start_tls(&ca.identity);
    smtp.require_auth("relay", "right-password");
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    enqueue(&mut conn, "auth", 3).await;

    let wrong = smtp.url_with_credentials("relay", "wrong-password");
    let settings = [
        ("RELAY_SMTP_CA_FILE", ca_file),
        ("RELAY_REFUSED_PAUSE_SECS", "3600"),
    ];
    let mut relay = start_relay(&db.url, &wrong, &settings).await;
    relay.wait_for_line("refused our credentials", WAIT).await;
    wait::until("the messages to be put back", WAIT, async || {
        let leased = "SELECT count(*) AS n FROM outbox WHERE lease_token IS NOT NULL";
        (count(&mut conn, leased).await == 0).then_some(())
    })
    .await;

    assert!(smtp.auth_failures() >= 1);
    assert_eq!(smtp.message_count(), 0);
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM outbox WHERE attempts = 0"
        )
        .await,
        3
    );
    assert!(dead_letters(&mut conn).await.is_empty());
    assert!(
        !relay.output().contains("wrong-password"),
        "the SMTP password is never logged"
    );
    assert!(relay.terminate(WAIT).await);

    // Restarted with the right credentials, it sends them at once, over TLS.
    let right = smtp.url_with_credentials("relay", "right-password");
    let _relay = start_relay(&db.url, &right, &[("RELAY_SMTP_CA_FILE", ca_file)]).await;
    let messages = smtp.wait_for_messages(3, WAIT).await;
    outbox::drained(&mut conn, WAIT).await;
    assert!(
        messages
            .iter()
            .all(|m| m.authenticated_as.as_deref() == Some("relay"))
    );
}

#[tokio::test]
async fn smtp_credentials_that_would_travel_in_clear_are_refused_at_start_up_unechoed() {
    for url in [
        "smtp://relay:plain-secret@127.0.0.1:2525",
        "smtp://relay:plain-secret@127.0.0.1:2525?tls=opportunistic",
    ] {
        let printed = refused_start(&smtp_settings(&[("SMTP_URL", url)])).await;

        assert!(
            printed.contains("smtps://") && printed.contains("tls=required"),
            "{url}: the error says what to use:\n{printed}"
        );
        assert!(
            !printed.contains("plain-secret"),
            "the password was printed:\n{printed}"
        );
    }
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_while_idle_is_replaced_without_a_failed_attempt() {
    let smtp = SmtpServer::start();
    smtp.close_idle_sessions_after(Duration::from_millis(1500));
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let relay = start_relay(&db.url, &smtp.url(), &[]).await;
    enqueue(&mut conn, "before-idle", 1).await;
    smtp.wait_for_message_to("before-idle1@example.com", WAIT)
        .await;
    wait::until("the server to close the idle session", WAIT, || {
        std::future::ready((smtp.idle_closures() == 1).then_some(()))
    })
    .await;

    enqueue(&mut conn, "after-idle", 1).await;
    smtp.wait_for_message_to("after-idle1@example.com", WAIT)
        .await;
    outbox::drained(&mut conn, WAIT).await;

    assert_eq!(smtp.attempts("after-idle1@example.com"), 1);
    assert_eq!(
        relay.count_lines("email delivery failed"),
        0,
        "{}",
        relay.output()
    );
    assert_eq!(smtp.connections(), 2, "the stale one was replaced");
}

#[tokio::test]
async fn a_server_refusing_our_sender_pauses_delivery_which_resumes_by_itself_losing_nothing() {
    server_level_refusal_pauses_and_delivery_resumes(Stage::MailFrom, 550, "refused our sender")
        .await;
}

#[tokio::test]
async fn a_server_refusing_the_session_at_its_greeting_pauses_delivery_which_resumes_by_itself() {
    server_level_refusal_pauses_and_delivery_resumes(Stage::Greeting, 554, "refused the session")
        .await;
}

/// A server that answers `code` at `stage` refuses us, not the messages: 5 queued messages are
/// neither dead-lettered nor charged an attempt, an ERROR line says what was refused (`said`),
/// and once the server accepts again all 5 go out once, with no restart.
async fn server_level_refusal_pauses_and_delivery_resumes(stage: Stage, code: u16, said: &str) {
    let smtp = SmtpServer::start();
    smtp.script(stage, Reply::Permanent(code));
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let recipients = enqueue(&mut conn, "refused", 5).await;
    let mut relay = start_relay(&db.url, &smtp.url(), &[("RELAY_REFUSED_PAUSE_SECS", "1")]).await;

    settled_after_a_refusal(&smtp, stage, &mut conn).await;
    let dead = dead_letters(&mut conn).await;
    assert!(
        dead.is_empty(),
        "{} of 5 dead-lettered: {dead:?}",
        dead.len()
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM outbox WHERE attempts = 0"
        )
        .await,
        5,
        "no attempt counted"
    );
    let line = relay.wait_for_line(said, WAIT).await;
    assert!(
        line.contains("ERROR") && line.contains(&code.to_string()),
        "{line}"
    );
    assert_eq!(smtp.message_count(), 0);

    smtp.script(stage, Reply::Accept);
    smtp.wait_for_messages(5, WAIT).await;
    outbox::drained(&mut conn, WAIT).await;

    let seen = deliveries(&smtp);
    for recipient in &recipients {
        assert_eq!(seen.get(recipient), Some(&1), "{recipient}");
    }
    assert_eq!(relay.count_lines("email delivery failed"), 0);
    assert!(dead_letters(&mut conn).await.is_empty());
}

/// Waits until the server has refused at `stage` at least once and every message of the test
/// is settled: back in the outbox unleased, or dead-lettered.
async fn settled_after_a_refusal(
    smtp: &SmtpServer,
    stage: Stage,
    conn: &mut diesel_async::AsyncPgConnection,
) {
    let settled = "SELECT (SELECT count(*) FROM outbox WHERE lease_token IS NULL)
                        + (SELECT count(*) FROM outbox_dead) AS n";
    wait::until("every message to be tried and settled", WAIT, async || {
        let tried = smtp.attempts_at(stage) > 0;
        (tried && count(conn, settled).await == 5).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_5xx_after_the_message_data_is_dead_lettered_at_once() {
    let smtp = SmtpServer::start();
    smtp.script_for(Stage::DataEnd, "spam1@example.com", Reply::Permanent(554));
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let _relay = start_relay(&db.url, &smtp.url(), &[]).await;

    enqueue(&mut conn, "spam", 1).await;
    let dead = wait::until("a dead letter", WAIT, || async {
        dead_letters(&mut db.connect().await).await.pop()
    })
    .await;

    assert!(dead.reason.contains("554"), "{dead:?}");
    assert_eq!(dead.attempts, 1);
    assert_eq!(smtp.attempts_at(Stage::DataEnd), 1, "no retry after a 5xx");
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM outbox").await,
        0
    );
}

#[tokio::test]
async fn with_a_dev_mail_dir_emails_are_written_as_files_and_the_link_is_logged() {
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let dir = std::env::temp_dir().join(format!("relay-mail-{}", uuid::Uuid::new_v4().simple()));
    let mut relay = relay::start_writing_files(&db.url, &dir, &[("EMAIL_FROM", "")]).await;

    enqueue(&mut conn, "file", 1).await;
    let line = relay.wait_for_line("email written to a file", WAIT).await;
    outbox::drained(&mut conn, WAIT).await;

    let path = process::field(&line, "path").expect("the log names the file");
    assert!(path.starts_with(dir.to_str().expect("UTF-8")), "{path}");
    let email = std::fs::read_to_string(path).expect("the .eml file exists");
    assert!(email.contains("file1@example.com") && email.contains("multipart/alternative"));
    assert!(
        relay
            .output()
            .contains("link=https://app.example.com/verify?token=token-file1"),
        "the development log shows the link:\n{}",
        relay.output()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn without_smtp_url_or_a_dev_mail_dir_the_relay_refuses_to_start_and_leaves_the_outbox_alone()
{
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    enqueue(&mut conn, "unsent", 3).await;

    let exited = relay::run_until_exit(&[("DATABASE_URL", &db.url)], Duration::from_secs(20)).await;

    let left = count(&mut conn, "SELECT count(*) AS n FROM outbox").await;
    assert_eq!(
        left,
        3,
        "the relay consumed {} of 3 queued messages",
        3 - left
    );
    let output = exited.expect("the relay exits by itself");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("SMTP_URL") && stderr.contains("RELAY_DEV_MAIL_DIR"),
        "the error names both ways to deliver:\n{stderr}"
    );
}

#[tokio::test]
async fn an_smtp_url_and_a_dev_mail_dir_together_are_refused() {
    let printed = refused_start(&smtp_settings(&[
        ("SMTP_URL", "smtp://127.0.0.1:2525"),
        ("RELAY_DEV_MAIL_DIR", "/tmp/never-written"),
    ]))
    .await;

    assert!(
        printed.contains("SMTP_URL") && printed.contains("RELAY_DEV_MAIL_DIR"),
        "{printed}"
    );
}

#[tokio::test]
async fn with_smtp_the_link_templates_are_required_and_must_be_https() {
    let smtp_url = ("SMTP_URL", "smtp://127.0.0.1:2525");
    let http_verify = (
        "VERIFY_URL_TEMPLATE",
        "http://app.example.com/verify?token={token}",
    );
    let cases = [
        (
            vec![smtp_url, ("VERIFY_URL_TEMPLATE", "")],
            "VERIFY_URL_TEMPLATE",
        ),
        (
            vec![smtp_url, ("RESET_URL_TEMPLATE", "")],
            "RESET_URL_TEMPLATE",
        ),
        (vec![smtp_url, http_verify], "RELAY_ALLOW_HTTP_LINKS"),
    ];
    for (overrides, named) in cases {
        let printed = refused_start(&smtp_settings(&overrides)).await;

        assert!(printed.contains(named), "{overrides:?}: {printed}");
    }
}

#[tokio::test]
async fn http_links_are_sent_over_smtp_only_when_explicitly_allowed() {
    let smtp = SmtpServer::start();
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let settings = [
        (
            "VERIFY_URL_TEMPLATE",
            "http://localhost:3000/verify?token={token}",
        ),
        ("RELAY_ALLOW_HTTP_LINKS", "true"),
    ];
    let _relay = start_relay(&db.url, &smtp.url(), &settings).await;

    enqueue(&mut conn, "http", 1).await;
    let mail = smtp.wait_for_message_to("http1@example.com", WAIT).await;

    assert!(
        text_body(&mail).contains("http://localhost:3000/verify?token=token-http1"),
        "{}",
        text_body(&mail)
    );
}

#[test]
fn help_explains_the_relay_and_never_prints_the_smtp_password() {
    let output = process::run(
        "outbox-relay",
        &["serve", "--help"],
        &[("SMTP_URL", "smtps://relay:hunter2-secret@mail.example.com")],
    );
    let help = String::from_utf8_lossy(&output.stdout);
    for documented in [
        "DATABASE_URL",
        "SMTP_URL",
        "EMAIL_FROM",
        "VERIFY_URL_TEMPLATE",
        "RELAY_MAX_ATTEMPTS",
        "RELAY_LEASE_SECS",
        "RELAY_HEALTH_ADDR",
    ] {
        assert!(
            help.contains(documented),
            "{documented} missing from:\n{help}"
        );
    }
    assert!(
        !help.contains("hunter2-secret"),
        "--help printed the SMTP password:\n{help}"
    );
}
