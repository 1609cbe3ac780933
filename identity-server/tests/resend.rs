//! ResendVerificationEmail against a real PostgreSQL, with a clock the test moves.

mod support;

use support::{TestApp, violated_fields};
use time::Duration;

#[tokio::test]
async fn resending_to_an_unknown_address_answers_ok_and_queues_nothing() {
    let app = TestApp::spawn().await;

    app.resend("nobody@example.com").await.expect("answers OK");

    assert_eq!(app.count_outbox().await, 0);
}

#[tokio::test]
async fn resending_within_the_cooldown_answers_ok_and_queues_nothing() {
    let app = TestApp::spawn().await;
    app.register("ada@example.com").await.expect("registers");
    app.clock.advance(Duration::seconds(59));

    app.resend("ada@example.com").await.expect("answers OK");

    assert_eq!(app.emails_to("ada@example.com").await.len(), 1);
}

#[tokio::test]
async fn resending_after_the_cooldown_queues_a_new_email_with_a_fresh_pair() {
    let app = TestApp::spawn().await;
    app.register("ada@example.com").await.expect("registers");
    app.clock.advance(Duration::seconds(60));

    app.resend("ADA@example.com").await.expect("answers OK");

    let emails = app.emails_to("ada@example.com").await;
    assert_eq!(emails.len(), 2);
    assert_ne!(emails[0].token, emails[1].token);
    assert_eq!(emails[1].recipient, "ada@example.com");
    assert_eq!(emails[1].expires_at, app.now() + Duration::hours(24));

    // The cooldown starts again from the resend.
    app.clock.advance(Duration::seconds(30));
    app.resend("ada@example.com").await.expect("answers OK");
    assert_eq!(app.emails_to("ada@example.com").await.len(), 2);
}

#[tokio::test]
async fn resending_to_an_active_account_answers_ok_and_queues_nothing() {
    let app = TestApp::spawn().await;
    app.register("ada@example.com").await.expect("registers");
    let email = app.email_to("ada@example.com").await;
    app.verify_token(&email.token).await.expect("verifies");
    app.clock.advance(Duration::minutes(5));

    app.resend("ada@example.com").await.expect("answers OK");

    assert_eq!(app.emails_to("ada@example.com").await.len(), 1);
}

#[tokio::test]
async fn resending_to_a_malformed_address_is_a_bad_request() {
    let app = TestApp::spawn().await;

    let status = app.resend("not-an-address").await.expect_err("malformed");

    assert_eq!(violated_fields(&status), ["email"]);
}
