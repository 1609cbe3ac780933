//! Password reset on a real PostgreSQL, with a clock the test moves.

mod support;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use identity_proto::{
    identity::v1::{
        self as pb, password_reset_service_client::PasswordResetServiceClient,
        session_service_client::SessionServiceClient,
    },
    outbox::{EmailPasswordChangedV1, EmailPasswordResetV1},
};
use identity_server::db::schema;
use support::{PASSWORD, TestApp, assert_error, violated_fields};
use time::Duration;
use tonic::Code;

const NEW_PASSWORD: &str = "marmalade-lantern-quartz-9";

async fn active_user(app: &TestApp, email: &str) {
    app.register(email).await.expect("registers");
    let message = app.email_to(email).await;
    app.verify_token(&message.token).await.expect("verifies");
}

async fn request_reset(app: &TestApp, email: &str) {
    PasswordResetServiceClient::new(app.channel.clone())
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: email.into(),
            ..Default::default()
        })
        .await
        .expect("answers OK");
}

async fn reset(app: &TestApp, token: &str, password: &str) -> Result<(), tonic::Status> {
    PasswordResetServiceClient::new(app.channel.clone())
        .reset_password(pb::ResetPasswordRequest {
            token: token.into(),
            new_password: password.into(),
        })
        .await
        .map(|_| ())
}

async fn login(app: &TestApp, password: &str) -> Result<pb::LoginResponse, tonic::Status> {
    SessionServiceClient::new(app.channel.clone())
        .login(pb::LoginRequest {
            email: "ada@example.com".into(),
            password: password.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The payloads of `kind` in the outbox, oldest first.
async fn queued<T: serde::de::DeserializeOwned>(app: &TestApp, kind: &str) -> Vec<T> {
    use schema::outbox::dsl as o;
    let payloads: Vec<serde_json::Value> = o::outbox
        .filter(o::kind.eq(kind))
        .order(o::id.asc())
        .select(o::payload)
        .load(&mut app.conn().await)
        .await
        .expect("outbox is readable");
    payloads
        .into_iter()
        .map(|p| serde_json::from_value(p).expect("payload parses"))
        .collect()
}

#[tokio::test]
async fn a_reset_sets_the_password_signs_out_everywhere_and_queues_a_notice() {
    let app = TestApp::spawn().await;
    active_user(&app, "ada@example.com").await;
    let before = login(&app, PASSWORD).await.expect("logs in");

    request_reset(&app, "ADA@example.com").await;
    let emails: Vec<EmailPasswordResetV1> = queued(&app, EmailPasswordResetV1::KIND).await;
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0].expires_at, app.now() + Duration::hours(1));
    reset(&app, &emails[0].token, NEW_PASSWORD)
        .await
        .expect("resets");

    assert_error(
        &login(&app, PASSWORD).await.expect_err("old password"),
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    login(&app, NEW_PASSWORD)
        .await
        .expect("the new password works");
    let refreshed = SessionServiceClient::new(app.channel.clone())
        .refresh_session(pb::RefreshSessionRequest {
            refresh_token: before.refresh_token,
        })
        .await
        .expect_err("earlier sessions were revoked");
    assert_error(&refreshed, Code::Unauthenticated, "REFRESH_TOKEN_INVALID");
    let notices: Vec<EmailPasswordChangedV1> = queued(&app, EmailPasswordChangedV1::KIND).await;
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].recipient, "ada@example.com");

    let again = reset(&app, &emails[0].token, "another-password-entirely")
        .await
        .expect_err("single use");
    assert_error(&again, Code::FailedPrecondition, "RESET_TOKEN_USED");
}

#[tokio::test]
async fn an_expired_reset_link_is_refused_and_nothing_changes() {
    let app = TestApp::spawn().await;
    active_user(&app, "ada@example.com").await;
    request_reset(&app, "ada@example.com").await;
    let emails: Vec<EmailPasswordResetV1> = queued(&app, EmailPasswordResetV1::KIND).await;

    app.clock.advance(Duration::hours(1));

    let status = reset(&app, &emails[0].token, NEW_PASSWORD)
        .await
        .expect_err("expired");
    assert_error(&status, Code::FailedPrecondition, "RESET_TOKEN_EXPIRED");
    login(&app, PASSWORD)
        .await
        .expect("the old password still works");
}

#[tokio::test]
async fn requests_for_unknown_or_pending_accounts_answer_ok_and_queue_nothing() {
    let app = TestApp::spawn().await;
    app.register("pending@example.com")
        .await
        .expect("registers");

    request_reset(&app, "nobody@example.com").await;
    request_reset(&app, "pending@example.com").await;

    assert!(
        queued::<EmailPasswordResetV1>(&app, EmailPasswordResetV1::KIND)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_second_request_within_the_cooldown_queues_nothing_more() {
    let app = TestApp::spawn().await;
    active_user(&app, "ada@example.com").await;
    request_reset(&app, "ada@example.com").await;
    app.clock.advance(Duration::seconds(30));
    request_reset(&app, "ada@example.com").await;
    assert_eq!(
        queued::<EmailPasswordResetV1>(&app, EmailPasswordResetV1::KIND)
            .await
            .len(),
        1
    );

    app.clock.advance(Duration::seconds(30));
    request_reset(&app, "ada@example.com").await;
    assert_eq!(
        queued::<EmailPasswordResetV1>(&app, EmailPasswordResetV1::KIND)
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn unknown_tokens_and_weak_new_passwords_are_refused() {
    let app = TestApp::spawn().await;
    active_user(&app, "ada@example.com").await;
    request_reset(&app, "ada@example.com").await;
    let emails: Vec<EmailPasswordResetV1> = queued(&app, EmailPasswordResetV1::KIND).await;

    let unknown = reset(&app, &"A".repeat(43), NEW_PASSWORD)
        .await
        .expect_err("unknown");
    assert_error(&unknown, Code::InvalidArgument, "RESET_TOKEN_INVALID");
    let malformed = reset(&app, "short", NEW_PASSWORD)
        .await
        .expect_err("malformed");
    assert_eq!(violated_fields(&malformed), ["token"]);
    let weak = reset(&app, &emails[0].token, "password123")
        .await
        .expect_err("weak");
    assert_eq!(violated_fields(&weak), ["new_password"]);
    let own_name = reset(&app, &emails[0].token, "adalovelace")
        .await
        .expect_err("the user's own name");
    assert_eq!(violated_fields(&own_name), ["new_password"]);

    reset(&app, &emails[0].token, NEW_PASSWORD)
        .await
        .expect("the link still works after refusals");
}

/// Active accounts `reset0@example.com`, `reset1@…`, each with one reset email queued; returns
/// their reset tokens in that order.
async fn accounts_with_reset_links(app: &TestApp, count: usize) -> Vec<String> {
    for i in 0..count {
        let email = format!("reset{i}@example.com");
        active_user(app, &email).await;
        request_reset(app, &email).await;
    }
    let emails: Vec<EmailPasswordResetV1> = queued(app, EmailPasswordResetV1::KIND).await;
    (0..count)
        .map(|i| {
            let recipient = format!("reset{i}@example.com");
            emails
                .iter()
                .find(|e| e.recipient == recipient)
                .map(|e| e.token.clone())
                .unwrap_or_else(|| panic!("no reset email to {recipient}"))
        })
        .collect()
}

#[tokio::test]
async fn a_burst_of_resets_with_slow_hashing_does_not_exhaust_a_small_pool() {
    // Two connections, a one-second wait for one, and hashes of a few hundred milliseconds
    // computed one at a time: a reset that held its connection while hashing would keep the
    // others waiting for longer than the pool lets them.
    let app = TestApp::spawn_with(|settings| {
        // Many calls from one client: this test is about the pool under slow hashing, not the rate limits.
        support::without_rate_limits(settings);
        settings.database.max_size = 2;
        settings.database.timeout = std::time::Duration::from_secs(1);
        settings.hashing = identity_server::hashing::HashingConfig {
            params: argon2::Params::new(19_456, 20, 1, None).expect("valid params"),
            workers: 1,
            queue: 64,
        };
    })
    .await;
    let tokens = accounts_with_reset_links(&app, 8).await;

    let resets: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let client = PasswordResetServiceClient::new(app.channel.clone());
            tokio::spawn(async move {
                client
                    .clone()
                    .reset_password(pb::ResetPasswordRequest {
                        token,
                        new_password: NEW_PASSWORD.into(),
                    })
                    .await
            })
        })
        .collect();

    let mut failures = Vec::new();
    for reset in resets {
        if let Err(status) = reset.await.expect("task completes") {
            failures.push(format!("{:?}: {}", status.code(), status.message()));
        }
    }
    assert!(failures.is_empty(), "failed resets: {failures:?}");
}

#[tokio::test]
async fn concurrent_resets_of_one_user_with_distinct_tokens_succeed_once_and_never_fail_internally()
{
    // Cheap hashes on as many workers as calls, so the resets reach the database together.
    let app = TestApp::spawn_with(|settings| {
        // Many calls from one client: this test is about concurrent resets, not the rate limits.
        support::without_rate_limits(settings);
        settings.hashing = identity_server::hashing::HashingConfig {
            params: argon2::Params::new(1024, 1, 1, None).expect("valid params"),
            workers: 16,
            queue: 64,
        };
        settings.database.max_size = 16;
        // Sixteen reset emails to one address: far past the default email budget.
        let budget = identity_server::domain::EmailBudget::new(32, 32).expect("valid");
        settings.registration.email_budget = budget;
        settings.password_reset.email_budget = budget;
    })
    .await;
    active_user(&app, "ada@example.com").await;
    for _ in 0..16 {
        request_reset(&app, "ada@example.com").await;
        app.clock.advance(Duration::seconds(60));
    }
    let emails: Vec<EmailPasswordResetV1> = queued(&app, EmailPasswordResetV1::KIND).await;
    assert_eq!(emails.len(), 16, "sixteen distinct reset links");
    // A slow update of the user row holds the first reset inside its transaction long enough
    // for all the others to arrive while it is there.
    let mut conn = app.conn().await;
    diesel::sql_query(
        "CREATE FUNCTION test_slow_update() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$",
    )
    .execute(&mut conn)
    .await
    .expect("the trigger function is created");
    diesel::sql_query(
        "CREATE TRIGGER test_slow_update BEFORE UPDATE ON users
         FOR EACH ROW EXECUTE FUNCTION test_slow_update()",
    )
    .execute(&mut conn)
    .await
    .expect("the trigger is created");

    let resets: Vec<_> = emails
        .into_iter()
        .map(|email| {
            let client = PasswordResetServiceClient::new(app.channel.clone());
            tokio::spawn(async move {
                client
                    .clone()
                    .reset_password(pb::ResetPasswordRequest {
                        token: email.token,
                        new_password: NEW_PASSWORD.into(),
                    })
                    .await
            })
        })
        .collect();

    let mut succeeded = 0;
    for reset in resets {
        match reset.await.expect("task completes") {
            Ok(_) => succeeded += 1,
            Err(status) => assert_error(&status, Code::FailedPrecondition, "RESET_TOKEN_USED"),
        }
    }
    assert_eq!(succeeded, 1);
    login(&app, NEW_PASSWORD)
        .await
        .expect("the new password works");
}
