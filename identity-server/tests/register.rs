//! Register against a real PostgreSQL.

mod support;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use identity_proto::identity::v1 as pb;
use identity_server::{db::schema, hashing::HashingConfig};
use sha2::{Digest, Sha256};
use support::{PASSWORD, TestApp, assert_error, register_request, violated_fields};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn registering_creates_a_pending_user_a_verification_secret_and_one_outbox_message() {
    let app = TestApp::spawn().await;

    let response = app.register("Ada@Example.com").await.expect("registers");

    assert_eq!(response.status(), pb::UserStatus::PendingVerification);
    let user_id: uuid::Uuid = response.user_id.parse().expect("user_id is a UUID");
    assert_eq!(user_id.get_version_num(), 7);

    let mut conn = app.conn().await;
    let (email, status, hash, name, locale): (String, String, String, String, String) =
        schema::users::table
            .find(user_id)
            .select((
                schema::users::email,
                schema::users::status,
                schema::users::password_hash,
                schema::users::display_name,
                schema::users::locale,
            ))
            .first(&mut conn)
            .await
            .expect("the user row exists");
    assert_eq!(email, "Ada@Example.com");
    assert_eq!(status, "pending_verification");
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains(PASSWORD));
    assert_eq!((name.as_str(), locale.as_str()), ("Ada Lovelace", "en"));

    assert_eq!(app.count_outbox().await, 1);
    let email = app.email_to("ada@example.com").await;
    assert_eq!(email.recipient, "Ada@Example.com");
    assert_eq!(email.display_name, "Ada Lovelace");
    assert_eq!(email.locale, "en");
    assert_eq!(email.code.len(), 6);
    assert_eq!(email.expires_at, app.now() + time::Duration::hours(24));

    // Only hashes are stored: the secret row holds SHA-256 of the token, not the token.
    let (token_hash, expires_at): (Vec<u8>, time::OffsetDateTime) =
        schema::verification_secrets::table
            .filter(schema::verification_secrets::user_id.eq(user_id))
            .select((
                schema::verification_secrets::token_hash,
                schema::verification_secrets::expires_at,
            ))
            .first(&mut conn)
            .await
            .expect("one verification secret");
    assert_eq!(token_hash, Sha256::digest(email.token.as_bytes()).to_vec());
    assert_eq!(expires_at, email.expires_at);
}

#[tokio::test]
async fn every_invalid_field_is_rejected_with_a_violation_naming_it_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    type Spoil = fn(&mut pb::RegisterRequest);
    let cases: [(&str, Spoil); 8] = [
        ("email", |r| r.email = "not-an-address".into()),
        ("email", |r| {
            r.email = format!("{}@example.com", "a".repeat(250))
        }),
        ("password", |r| r.password = "short".into()),
        ("password", |r| r.password = "password123".into()),
        ("password", |r| r.password = "x".repeat(257)),
        ("display_name", |r| r.display_name = "   ".into()),
        ("display_name", |r| r.display_name = "Ada\u{7}".into()),
        ("locale", |r| r.locale = "not a locale".into()),
    ];
    for (field, spoil) in cases {
        let mut request = register_request("ada@example.com");
        spoil(&mut request);

        let status = app
            .client
            .clone()
            .register(request)
            .await
            .expect_err("rejected");

        assert_eq!(violated_fields(&status), [field], "{status:?}");
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    }

    let all_bad = pb::RegisterRequest {
        email: "@".into(),
        password: "1234".into(),
        display_name: String::new(),
        locale: "!!".into(),
        ..Default::default()
    };
    let status = app
        .client
        .clone()
        .register(all_bad)
        .await
        .expect_err("rejected");
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(fields, ["display_name", "email", "locale", "password"]);

    assert_eq!(app.count_users().await, 0);
    assert_eq!(app.count_outbox().await, 0);
}

#[tokio::test]
async fn error_messages_never_echo_the_password() {
    let app = TestApp::spawn().await;
    let mut request = register_request("ada@example.com");
    request.password = "password1".into();

    let status = app
        .client
        .clone()
        .register(request)
        .await
        .expect_err("rejected");

    let everything = format!("{status:?} {:?}", status.get_error_details());
    assert!(!everything.contains("password1"), "{everything}");
}

#[tokio::test]
async fn with_enumeration_safety_off_an_active_address_in_another_letter_case_is_rejected() {
    // By default such a call answers OK (tests/account_exists.rs); trusted internal callers may
    // turn that off and be told.
    let app = TestApp::spawn_with(|settings| settings.registration.enumeration_safe = false).await;
    app.register("grace@example.com")
        .await
        .expect("first registration");
    let email = app.email_to("grace@example.com").await;
    app.verify_token(&email.token).await.expect("verifies");

    let status = app
        .register("GRACE@Example.COM")
        .await
        .expect_err("duplicate");

    assert_error(&status, Code::AlreadyExists, "EMAIL_ALREADY_REGISTERED");
    assert_eq!(app.count_users().await, 1);
    assert_eq!(app.count_outbox().await, 1);
}

#[tokio::test]
async fn thirty_two_concurrent_registrations_of_one_address_each_get_a_registration_and_one_wins() {
    // Many calls from one client, and a budget large enough for all of them: this test is about
    // a race on one address, not the rate limits or the budget (email_budget.rs tests that).
    let app = TestApp::spawn_with(|settings| {
        support::without_rate_limits(settings);
        settings.registration.email_budget =
            identity_server::domain::EmailBudget::new(32, 32).expect("valid");
    })
    .await;
    let attempts: Vec<_> = (0..32)
        .map(|i| {
            let client = app.client.clone();
            // Mixed letter case: they are all one address.
            let email = if i % 2 == 0 {
                "race@example.com"
            } else {
                "RACE@example.com"
            };
            tokio::spawn(async move { client.clone().register(register_request(email)).await })
        })
        .collect();
    for attempt in attempts {
        attempt
            .await
            .expect("task completes")
            .expect("every registration is accepted");
    }
    assert_eq!(app.count_users().await, 32);
    let emails = app.emails_to("race@example.com").await;
    assert_eq!(emails.len(), 32);

    // Then every link at once: exactly one registration becomes the account.
    let verifications: Vec<_> = emails
        .into_iter()
        .map(|email| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                client
                    .verify_email(pb::VerifyEmailRequest {
                        proof: Some(pb::verify_email_request::Proof::Token(email.token)),
                        password: support::PASSWORD.into(),
                    })
                    .await
            })
        })
        .collect();
    let mut activated = 0;
    for verification in verifications {
        match verification.await.expect("task completes") {
            Ok(_) => activated += 1,
            Err(status) => assert!(
                [Code::FailedPrecondition, Code::InvalidArgument].contains(&status.code()),
                "{status:?}"
            ),
        }
    }
    assert_eq!(activated, 1);
    let rows = app.rows_of("race@example.com").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, "active");
}

#[tokio::test]
async fn a_full_hashing_queue_fails_fast_with_resource_exhausted_and_a_retry_delay() {
    // One hashing worker, one place in the queue, and a slow hash: of 12 callers arriving
    // together, at most two are served and the others are turned away at once.
    let app = TestApp::spawn_with(|settings| {
        // Many calls from one client: this test is about the hashing queue, not the rate limits.
        support::without_rate_limits(settings);
        settings.hashing = HashingConfig {
            params: argon2::Params::new(64 * 1024, 6, 1, None).expect("valid params"),
            workers: 1,
            queue: 1,
        };
    })
    .await;
    let callers: Vec<_> = (0..12)
        .map(|i| {
            let client = app.client.clone();
            tokio::spawn(async move {
                client
                    .clone()
                    .register(register_request(&format!("user{i}@example.com")))
                    .await
            })
        })
        .collect();

    let (mut served, mut rejected) = (0, 0);
    for caller in callers {
        match caller.await.expect("task completes") {
            Ok(_) => served += 1,
            Err(status) => {
                assert_error(&status, Code::ResourceExhausted, "OVERLOADED");
                let retry = status
                    .get_details_retry_info()
                    .expect("RetryInfo is attached");
                assert!(retry.retry_delay.is_some_and(|d| !d.is_zero()));
                rejected += 1;
            }
        }
    }
    assert!((1..=2).contains(&served), "{served} served");
    assert_eq!(rejected, 12 - served);
    assert_eq!(app.count_users().await, served);
}

#[tokio::test]
async fn a_registration_notifies_the_relay_channel_on_commit_and_a_rejected_one_does_not() {
    use futures_util::StreamExt;

    // With enumeration safety off, so that a registration of an active address is rejected.
    let app = TestApp::spawn_with(|settings| settings.registration.enumeration_safe = false).await;
    let mut listener = app.conn().await;
    diesel::sql_query(format!("LISTEN {}", identity_proto::outbox::NOTIFY_CHANNEL))
        .execute(&mut listener)
        .await
        .expect("listens");

    app.register("ada@example.com").await.expect("registers");
    let email = app.email_to("ada@example.com").await;
    app.verify_token(&email.token).await.expect("verifies");
    app.register("ADA@example.com")
        .await
        .expect_err("duplicate");
    // Notifications arrive in commit order: if the rejected registration had notified, its
    // notification would come before this marker.
    diesel::sql_query("SELECT pg_notify($1, 'marker')")
        .bind::<diesel::sql_types::Text, _>(identity_proto::outbox::NOTIFY_CHANNEL)
        .execute(&mut app.conn().await)
        .await
        .expect("notifies");

    let mut notifications = std::pin::pin!(listener.notifications_stream());
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(10), notifications.next())
            .await
            .expect("a notification arrives")
            .expect("the stream is open")
            .expect("a valid notification")
    };
    let from_registration = next().await;
    assert_eq!(
        from_registration.channel,
        identity_proto::outbox::NOTIFY_CHANNEL
    );
    assert_eq!(from_registration.payload, "");
    assert_eq!(
        next().await.payload,
        "marker",
        "the rejected registration sent nothing"
    );
}

/// When a test-only trigger on `outbox` raises: as each row is inserted, or at commit.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    OnInsert,
    AtCommit,
}

/// Makes every insert into `outbox` fail, the way `refusal` says.
async fn refuse_outbox_inserts(app: &TestApp, refusal: Refusal) {
    let mut conn = app.conn().await;
    diesel::sql_query(
        "CREATE FUNCTION test_refuse_outbox_insert() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'outbox insert refused by a test trigger'; END $$",
    )
    .execute(&mut conn)
    .await
    .expect("the trigger function is created");
    let trigger = match refusal {
        Refusal::OnInsert => "CREATE TRIGGER test_refuse_outbox_insert AFTER INSERT ON outbox",
        // A deferred constraint trigger raises at COMMIT, after the NOTIFY has been issued.
        Refusal::AtCommit => {
            "CREATE CONSTRAINT TRIGGER test_refuse_outbox_insert AFTER INSERT ON outbox \
             DEFERRABLE INITIALLY DEFERRED"
        }
    };
    diesel::sql_query(format!(
        "{trigger} FOR EACH ROW EXECUTE FUNCTION test_refuse_outbox_insert()"
    ))
    .execute(&mut conn)
    .await
    .expect("the trigger is created");
}

/// Registers while outbox inserts fail, and asserts that the registration left nothing behind:
/// no user, no verification secret, no outbox row, and no notification to the relay.
async fn assert_a_failed_outbox_insert_leaves_nothing(refusal: Refusal) {
    use futures_util::StreamExt;

    let app = TestApp::spawn().await;
    refuse_outbox_inserts(&app, refusal).await;
    let mut listener = app.conn().await;
    diesel::sql_query(format!("LISTEN {}", identity_proto::outbox::NOTIFY_CHANNEL))
        .execute(&mut listener)
        .await
        .expect("listens");

    let status = app
        .register("ada@example.com")
        .await
        .expect_err("the outbox insert fails");

    assert_eq!(status.code(), Code::Internal, "{refusal:?}: {status:?}");
    assert_eq!(app.count_users().await, 0, "{refusal:?}: no user");
    let secrets: i64 = schema::verification_secrets::table
        .count()
        .get_result(&mut app.conn().await)
        .await
        .expect("readable");
    assert_eq!(secrets, 0, "{refusal:?}: no verification secret");
    assert_eq!(app.count_outbox().await, 0, "{refusal:?}: no outbox row");
    // Notifications arrive in commit order: had the failed registration notified, its
    // notification would arrive before this marker.
    diesel::sql_query("SELECT pg_notify($1, 'marker')")
        .bind::<diesel::sql_types::Text, _>(identity_proto::outbox::NOTIFY_CHANNEL)
        .execute(&mut app.conn().await)
        .await
        .expect("notifies");
    let mut notifications = std::pin::pin!(listener.notifications_stream());
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), notifications.next())
        .await
        .expect("a notification arrives")
        .expect("the stream is open")
        .expect("a valid notification");
    assert_eq!(first.payload, "marker", "{refusal:?}: no NOTIFY");
}

#[tokio::test]
async fn a_registration_whose_outbox_insert_fails_leaves_no_user_secret_message_or_notify() {
    assert_a_failed_outbox_insert_leaves_nothing(Refusal::OnInsert).await;
}

#[tokio::test]
async fn a_registration_whose_commit_fails_after_the_notify_leaves_no_user_secret_message_or_notify()
 {
    assert_a_failed_outbox_insert_leaves_nothing(Refusal::AtCommit).await;
}
