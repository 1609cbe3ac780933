//! Register on an address that has an active account (issue 8): by default the caller gets the
//! same answer as for a new address, and the owner an email, at most once an hour. Real
//! PostgreSQL, a clock the test moves.

mod support;

use identity_proto::identity::v1 as pb;
use support::{TestApp, calls};
use time::Duration;

const KIND: &str = "email.account_exists.v1";

#[tokio::test]
async fn registering_an_active_address_answers_like_a_new_one_and_keeps_a_registration_that_cannot_be_verified()
 {
    let app = TestApp::spawn().await;
    calls::active_user(&app, "ada@example.com").await;
    let owner = app.rows_of("ada@example.com").await[0].0;
    let emails_before = app.emails_to("ada@example.com").await.len();

    let response = app
        .register("ADA@example.com")
        .await
        .expect("answers as for a new address");

    assert_eq!(response.status(), pb::UserStatus::PendingVerification);
    let id: uuid::Uuid = response.user_id.parse().expect("a UUID");
    assert_eq!(id.get_version_num(), 7);
    assert_ne!(id, owner);
    let rows = app.rows_of("ada@example.com").await;
    assert_eq!(
        rows,
        [
            (owner, "active".to_owned()),
            (id, "pending_verification".to_owned())
        ],
        "the caller's registration is kept, as for a new address"
    );
    assert_eq!(
        app.emails_to("ada@example.com").await.len(),
        emails_before,
        "no verification email goes out for it: nothing can ever verify it"
    );
}

#[tokio::test]
async fn the_owner_is_told_at_most_once_an_hour_however_many_registrations_hit_the_address() {
    // Many Registers of one address from one client: this test is about the notice, not the rate limits.
    let app = TestApp::spawn_with(support::without_rate_limits).await;
    calls::active_user(&app, "ada@example.com").await;

    for _ in 0..5 {
        app.register("ada@example.com").await.expect("answers OK");
    }
    let notices = app.queued_to(KIND, "ada@example.com").await;
    assert_eq!(notices.len(), 1);
    let notice = &notices[0];
    assert_eq!(notice["recipient"], "ada@example.com");
    assert_eq!(notice["display_name"], "Ada Lovelace");
    assert_eq!(notice["locale"], "en");
    assert!(notice.get("token").is_none() && notice.get("code").is_none());

    app.clock.advance(Duration::minutes(59));
    app.register("ada@example.com").await.expect("answers OK");
    assert_eq!(app.queued_to(KIND, "ada@example.com").await.len(), 1);

    app.clock.advance(Duration::minutes(2));
    app.register("ada@example.com").await.expect("answers OK");
    assert_eq!(app.queued_to(KIND, "ada@example.com").await.len(), 2);
}

#[tokio::test]
async fn with_enumeration_safety_off_an_active_address_is_already_exists_and_nobody_is_told() {
    let app = TestApp::spawn_with(|settings| {
        settings.registration.enumeration_safe = false;
    })
    .await;
    calls::active_user(&app, "ada@example.com").await;

    let status = app
        .register("ADA@example.com")
        .await
        .expect_err("the address is taken");

    support::assert_error(
        &status,
        tonic::Code::AlreadyExists,
        "EMAIL_ALREADY_REGISTERED",
    );
    assert!(app.queued_to(KIND, "ada@example.com").await.is_empty());
    assert_eq!(app.rows_of("ada@example.com").await.len(), 1);
}
