//! outbox-relay end to end for the password emails (`email.password_reset.v1` and
//! `email.password_changed.v1`) and the account-exists notice (`email.account_exists.v1`): the
//! built binary, a real PostgreSQL and a real SMTP server.

use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use identity_proto::outbox::{EmailAccountExistsV1, EmailPasswordChangedV1, EmailPasswordResetV1};
use identity_tests::{
    outbox::{dead_letters, drained},
    pg::TestDb,
    process::{self, Process},
    smtp::{Received, SmtpServer},
};
use mailparse::{MailHeaderMap, ParsedMail};
use time::OffsetDateTime;

const WAIT: Duration = Duration::from_secs(60);
const RESET_URL: &str = "https://app.example.com/reset-password?token=";

/// The shared test relay sending to `smtp_url`, with the reset links this file expects;
/// `extra` overrides any setting.
async fn start_relay(db_url: &str, smtp_url: &str, extra: &[(&str, &str)]) -> Process {
    let mut settings = vec![(
        "RESET_URL_TEMPLATE",
        "https://app.example.com/reset-password?token={token}",
    )];
    settings.extend_from_slice(extra);
    identity_tests::relay::start(db_url, smtp_url, &settings).await
}

/// Queues a message of `kind` with a `payload` written as JSON, and wakes the relays, as a
/// writer does when it commits.
async fn insert(conn: &mut AsyncPgConnection, kind: &str, payload: &str) {
    diesel::sql_query(
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload)
         VALUES (gen_random_uuid(), 'user', gen_random_uuid()::text, $1, $2::jsonb)",
    )
    .bind::<Text, _>(kind)
    .bind::<Text, _>(payload)
    .execute(conn)
    .await
    .expect("the message is queued");
    diesel::sql_query("SELECT pg_notify('outbox', '')")
        .execute(conn)
        .await
        .expect("notifies");
}

fn reset_payload(recipient: &str, token: &str, expires_at: OffsetDateTime) -> String {
    serde_json::to_string(&EmailPasswordResetV1 {
        recipient: recipient.into(),
        display_name: "Ada Lovelace".into(),
        locale: "en".into(),
        token: token.into(),
        expires_at,
    })
    .expect("serializes")
}

fn changed_payload(recipient: &str, locale: &str) -> String {
    serde_json::to_string(&EmailPasswordChangedV1 {
        recipient: recipient.into(),
        display_name: "Ada".into(),
        locale: locale.into(),
        changed_at: OffsetDateTime::now_utc(),
    })
    .expect("serializes")
}

/// A received email, parsed.
fn parse(mail: &Received) -> ParsedMail<'_> {
    mailparse::parse_mail(mail.data.as_bytes()).expect("a MIME message")
}

/// The decoded body of the `mimetype` part of a multipart/alternative email.
fn body(mail: &ParsedMail<'_>, mimetype: &str) -> String {
    mail.subparts
        .iter()
        .find(|part| part.ctype.mimetype == mimetype)
        .unwrap_or_else(|| panic!("a {mimetype} part"))
        .get_body()
        .expect("a decodable body")
}

fn header(mail: &ParsedMail<'_>, name: &str) -> String {
    mail.headers
        .get_first_value(name)
        .unwrap_or_else(|| panic!("a {name} header"))
}

#[tokio::test]
async fn reset_and_changed_emails_are_delivered_with_their_subject_recipient_and_link() {
    let smtp = SmtpServer::start();
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let relay = start_relay(&db.url, &smtp.url(), &[]).await;
    let token = "cmVzZXQtdG9rZW4tZW5kLXRvLWVuZC10ZXN0LTAwMDE";

    let expires_at = OffsetDateTime::now_utc() + time::Duration::hours(2);
    insert(
        &mut conn,
        EmailPasswordResetV1::KIND,
        &reset_payload("reset@example.com", token, expires_at),
    )
    .await;
    insert(
        &mut conn,
        EmailPasswordChangedV1::KIND,
        &changed_payload("changed@example.com", "fr"),
    )
    .await;
    let reset = smtp.wait_for_message_to("reset@example.com", WAIT).await;
    let changed = smtp.wait_for_message_to("changed@example.com", WAIT).await;
    drained(&mut conn, WAIT).await;

    let reset = parse(&reset);
    assert_eq!(reset.ctype.mimetype, "multipart/alternative");
    assert_eq!(header(&reset, "Subject"), "Reset your password");
    assert!(header(&reset, "To").contains("reset@example.com"));
    assert!(header(&reset, "Message-ID").ends_with("@identity.example.com>"));
    let text = body(&reset, "text/plain");
    assert!(text.contains(&format!("{RESET_URL}{token}")), "{text}");
    assert!(text.contains("This link expires in 2 hours, on "), "{text}");
    assert!(text.contains("your password is unchanged"), "{text}");

    let changed = parse(&changed);
    assert_eq!(
        header(&changed, "Subject"),
        "Votre mot de passe a été modifié"
    );
    assert!(header(&changed, "To").contains("changed@example.com"));
    for mimetype in ["text/plain", "text/html"] {
        let notice = body(&changed, mimetype);
        assert!(notice.contains("a été modifié le "), "{notice}");
        for link in ["token", "http", token] {
            assert!(!notice.contains(link), "{link} in the notice:\n{notice}");
        }
    }

    assert!(dead_letters(&mut conn).await.is_empty());
    assert!(
        !relay.output().contains(token),
        "the reset token is never logged when sending over SMTP:\n{}",
        relay.output()
    );
}

#[tokio::test]
async fn an_account_exists_notice_is_delivered_in_the_owners_locale_without_a_link() {
    let smtp = SmtpServer::start();
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let _relay = start_relay(&db.url, &smtp.url(), &[]).await;
    let payload = serde_json::to_string(&EmailAccountExistsV1 {
        recipient: "owner@example.com".into(),
        display_name: "Ada".into(),
        locale: "en-GB".into(),
        attempted_at: OffsetDateTime::now_utc(),
    })
    .expect("serializes");

    insert(&mut conn, EmailAccountExistsV1::KIND, &payload).await;
    let notice = smtp.wait_for_message_to("owner@example.com", WAIT).await;
    drained(&mut conn, WAIT).await;

    let notice = parse(&notice);
    assert_eq!(
        header(&notice, "Subject"),
        "Someone tried to sign up with your email address"
    );
    for mimetype in ["text/plain", "text/html"] {
        let body = body(&notice, mimetype);
        assert!(body.contains("Hello Ada,"), "{body}");
        assert!(body.contains("Your account is unchanged"), "{body}");
        for link in ["token", "http"] {
            assert!(!body.contains(link), "{link} in the notice:\n{body}");
        }
    }
    assert!(dead_letters(&mut conn).await.is_empty());
}

#[tokio::test]
async fn malformed_or_expired_reset_payloads_are_dead_lettered_without_their_token() {
    let smtp = SmtpServer::start();
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    // No expires_at: the payload does not parse.
    let malformed = r#"{"recipient": "malformed@example.com", "display_name": "Ada",
                        "locale": "en", "token": "malformed-reset-token"}"#;
    insert(&mut conn, EmailPasswordResetV1::KIND, malformed).await;
    let expired = reset_payload(
        "expired@example.com",
        "expired-reset-token",
        OffsetDateTime::now_utc() - time::Duration::minutes(1),
    );
    insert(&mut conn, EmailPasswordResetV1::KIND, &expired).await;
    insert(
        &mut conn,
        EmailPasswordChangedV1::KIND,
        &changed_payload("fine@example.com", "en"),
    )
    .await;
    let relay = start_relay(&db.url, &smtp.url(), &[]).await;

    smtp.wait_for_message_to("fine@example.com", WAIT).await;
    drained(&mut conn, WAIT).await;

    let dead = dead_letters(&mut conn).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let reason_for = |recipient: &str| {
        dead.iter()
            .find(|d| d.whole_row.contains(recipient))
            .unwrap_or_else(|| panic!("{recipient} dead-lettered with its recipient: {dead:?}"))
            .reason
            .clone()
    };
    assert_eq!(
        reason_for("malformed@example.com"),
        "malformed email.password_reset.v1 payload (Data error)"
    );
    assert!(
        reason_for("expired@example.com").contains("expired"),
        "{dead:?}"
    );
    for d in &dead {
        assert_eq!(d.kind, EmailPasswordResetV1::KIND);
        assert_eq!(d.attempts, 0, "never sent: {d:?}");
        for secret in ["malformed-reset-token", "expired-reset-token", "\"token\""] {
            assert!(!d.whole_row.contains(secret), "{secret} kept in {d:?}");
        }
    }
    assert_eq!(smtp.message_count(), 1, "only the valid notice was sent");
    let log = relay.output();
    assert!(
        !log.contains("malformed-reset-token") && !log.contains("expired-reset-token"),
        "a token leaked into the log:\n{log}"
    );
}

#[tokio::test]
async fn with_a_dev_mail_dir_the_reset_email_is_written_to_a_file_and_its_link_logged() {
    let db = TestDb::create().await;
    let mut conn = db.connect().await;
    let dir = std::env::temp_dir().join(format!("relay-mail-{}", uuid::Uuid::new_v4().simple()));
    let mut relay = identity_tests::relay::start_writing_files(
        &db.url,
        &dir,
        &[
            (
                "RESET_URL_TEMPLATE",
                "https://app.example.com/reset-password?token={token}",
            ),
            ("EMAIL_FROM", ""),
        ],
    )
    .await;

    let expires_at = OffsetDateTime::now_utc() + time::Duration::hours(1);
    insert(
        &mut conn,
        EmailPasswordResetV1::KIND,
        &reset_payload("file-reset@example.com", "file-reset-token", expires_at),
    )
    .await;
    let line = relay
        .wait_for_line("password reset email for file-reset@example.com", WAIT)
        .await;
    drained(&mut conn, WAIT).await;

    let path = process::field(&line, "path").expect("the log names the file");
    let email = std::fs::read_to_string(path).expect("the .eml file exists");
    assert!(email.contains("file-reset@example.com"));
    assert!(
        line.contains(&format!("link={RESET_URL}file-reset-token")),
        "the development log shows the link: {line}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn help_documents_the_reset_link_and_a_template_without_token_is_refused() {
    let help = process::run("outbox-relay", &["serve", "--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("RESET_URL_TEMPLATE")
            && help.contains("http://localhost:3000/reset-password?token={token}"),
        "{help}"
    );

    let refused = process::run(
        "outbox-relay",
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
            (
                "RESET_URL_TEMPLATE",
                "https://app.example.com/reset-password",
            ),
        ],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("RESET_URL_TEMPLATE") && stderr.contains("{token}"),
        "{stderr}"
    );
}
