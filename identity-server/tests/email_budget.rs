//! The email budget per address (issue 8): whatever mix of Register, ResendVerificationEmail
//! and RequestPasswordReset, at most 3 emails an hour and 10 a day go to one address; past it
//! the calls answer as usual and queue nothing. Real PostgreSQL, a clock the test moves.

mod support;

use identity_proto::{
    identity::v1::{self as pb, password_reset_service_client::PasswordResetServiceClient},
    outbox::{EmailPasswordChangedV1, EmailPasswordResetV1},
};
use support::{TestApp, calls};
use time::Duration;

/// A server with no cooldowns and no rate limits, so that only the budget stops emails.
async fn spawn_without_cooldowns() -> TestApp {
    TestApp::spawn_with(|settings| {
        support::without_rate_limits(settings);
        settings.registration.resend_cooldown = Duration::ZERO;
        settings.password_reset.cooldown = Duration::ZERO;
    })
    .await
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

#[tokio::test]
async fn register_and_resends_queue_at_most_three_emails_an_hour_to_one_address() {
    let app = spawn_without_cooldowns().await;
    app.register("ada@example.com").await.expect("registers");
    for _ in 0..4 {
        app.resend("ada@example.com").await.expect("answers OK");
    }
    assert_eq!(app.count_outbox_to("ada@example.com").await, 3);

    // The window slides: an hour after the first three emails, three more may go.
    app.clock
        .advance(Duration::minutes(60) + Duration::seconds(1));
    for _ in 0..4 {
        app.resend("ada@example.com").await.expect("answers OK");
    }
    assert_eq!(app.count_outbox_to("ada@example.com").await, 6);
}

#[tokio::test]
async fn at_most_ten_emails_a_day_go_to_one_address() {
    let app = spawn_without_cooldowns().await;
    app.register("ada@example.com").await.expect("registers");
    for _ in 0..6 {
        for _ in 0..3 {
            app.resend("ada@example.com").await.expect("answers OK");
        }
        app.clock.advance(Duration::minutes(61));
    }
    assert_eq!(app.count_outbox_to("ada@example.com").await, 10);

    // A day after the first email, the first one no longer counts.
    app.clock
        .advance(Duration::hours(24) - Duration::minutes(6 * 61) + Duration::seconds(1));
    app.resend("ada@example.com").await.expect("answers OK");
    assert_eq!(app.count_outbox_to("ada@example.com").await, 11);
}

#[tokio::test]
async fn registrations_past_the_budget_answer_ok_and_queue_nothing() {
    // Many calls for one address from one client: the per-address rate limit would refuse them
    // before the budget does. This test is about the budget, which holds whatever the limits are.
    let app = TestApp::spawn_with(support::without_rate_limits).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let response = app.register("ada@example.com").await.expect("answers OK");
        assert_eq!(response.status(), pb::UserStatus::PendingVerification);
        ids.push(response.user_id);
    }

    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "every answer names a fresh id");
    // Every registration is kept (Login with its password must answer as for an address with
    // an active account, where the caller's registration is kept too), but only three emails
    // went out.
    assert_eq!(app.rows_of("ada@example.com").await.len(), 5);
    assert_eq!(app.count_outbox_to("ada@example.com").await, 3);
}

#[tokio::test]
async fn thirty_two_concurrent_registrations_of_one_address_spend_exactly_the_budget() {
    // Many calls for one address from one client: the per-address rate limit would refuse them
    // before the budget does. This test is about the budget, which holds whatever the limits are.
    let app = TestApp::spawn_with(support::without_rate_limits).await;
    let attempts: Vec<_> = (0..32)
        .map(|i| {
            let client = app.client.clone();
            let email = if i % 2 == 0 {
                "race@example.com"
            } else {
                "RACE@example.com"
            };
            tokio::spawn(async move {
                client
                    .clone()
                    .register(support::register_request(email))
                    .await
            })
        })
        .collect();
    for attempt in attempts {
        attempt
            .await
            .expect("task completes")
            .expect("every call answers OK");
    }

    // Three registrations got their email; of the 29 without one, the newest ten are kept.
    assert_eq!(
        app.rows_of("race@example.com").await.len(),
        3 + usize::try_from(identity_server::registration::MAX_PENDING_PER_ADDRESS)
            .expect("a small number")
    );
    assert_eq!(app.count_outbox_to("race@example.com").await, 3);
}

#[tokio::test]
async fn reset_requests_share_the_budget_and_the_password_changed_notice_is_not_counted() {
    let app = spawn_without_cooldowns().await;
    calls::active_user(&app, "ada@example.com").await;
    for _ in 0..3 {
        request_reset(&app, "ada@example.com").await;
    }
    let resets = app
        .queued_to(EmailPasswordResetV1::KIND, "ada@example.com")
        .await;
    assert_eq!(
        resets.len(),
        2,
        "1 verification + 2 resets = the hourly budget"
    );

    let token = resets[0]["token"].as_str().expect("a token").to_owned();
    PasswordResetServiceClient::new(app.channel.clone())
        .reset_password(pb::ResetPasswordRequest {
            token,
            new_password: "marmalade-lantern-quartz-9".into(),
        })
        .await
        .expect("resets");

    let notices = app
        .queued_to(EmailPasswordChangedV1::KIND, "ada@example.com")
        .await;
    assert_eq!(
        notices.len(),
        1,
        "the security notice goes out past the budget"
    );
    assert_eq!(app.count_outbox_to("ada@example.com").await, 4);
}

#[tokio::test]
async fn with_enumeration_safety_off_a_registration_past_the_budget_is_resource_exhausted() {
    let app = TestApp::spawn_with(|settings| {
        settings.registration.enumeration_safe = false;
    })
    .await;
    for _ in 0..3 {
        app.register("ada@example.com").await.expect("registers");
    }
    app.clock.advance(Duration::minutes(20));

    let status = app
        .register("ada@example.com")
        .await
        .expect_err("the budget is spent");

    support::assert_error(
        &status,
        tonic::Code::ResourceExhausted,
        "EMAIL_BUDGET_EXHAUSTED",
    );
    use tonic_types::StatusExt;
    let retry = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo");
    assert_eq!(retry, std::time::Duration::from_secs(40 * 60));
    assert_eq!(app.rows_of("ada@example.com").await.len(), 3);
}
