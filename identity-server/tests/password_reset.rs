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
