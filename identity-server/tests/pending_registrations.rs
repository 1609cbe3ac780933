//! Pending registrations (issue 8): every sign-up of an address without an active account gets
//! its own pending account and secret, and whoever verifies ends up with the password they
//! chose. Against a real PostgreSQL, with a clock the test moves.

mod support;

use support::{PASSWORD, TestApp, assert_error, calls};
use time::Duration;
use tonic::Code;

/// The squatter's password; the victim's is [`PASSWORD`].
const ATTACKER_PASSWORD: &str = "quartz-lantern-marmalade-8";

/// A 6-digit code that differs from `code`.
fn wrong_code(code: &str) -> String {
    let n: u32 = code.parse().expect("six digits");
    format!("{:06}", (n + 1) % 1_000_000)
}

#[tokio::test]
async fn a_second_registration_of_a_pending_address_gets_its_own_account_and_email() {
    let app = TestApp::spawn().await;
    let first = app
        .register_with("victim@example.com", ATTACKER_PASSWORD)
        .await
        .expect("the squatter registers");

    let second = app
        .register_with("Victim@Example.com", PASSWORD)
        .await
        .expect("the owner registers too");

    assert_ne!(first.user_id, second.user_id);
    let rows = app.rows_of("victim@example.com").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|(_, status)| status == "pending_verification")
    );
    let emails = app.emails_to("victim@example.com").await;
    assert_eq!(emails.len(), 2);
    assert_ne!(emails[0].token, emails[1].token);
}

#[tokio::test]
async fn verifying_one_registration_activates_it_with_its_password_and_removes_the_others() {
    let app = TestApp::spawn().await;
    app.register_with("victim@example.com", ATTACKER_PASSWORD)
        .await
        .expect("the squatter registers");
    let owner = app
        .register_with("victim@example.com", PASSWORD)
        .await
        .expect("the owner registers");
    let emails = app.emails_to("victim@example.com").await;
    let (squatters, owners) = (&emails[0], &emails[1]);

    let verified = app
        .verify_token(&owners.token)
        .await
        .expect("the owner verifies");

    assert_eq!(verified.user_id, owner.user_id);
    let rows = app.rows_of("victim@example.com").await;
    assert_eq!(rows.len(), 1, "the other registration is gone: {rows:?}");
    assert_eq!(rows[0].0.to_string(), owner.user_id);
    assert_eq!(rows[0].1, "active");
    calls::login(&app, "victim@example.com", PASSWORD)
        .await
        .expect("the owner's password works");
    let status = calls::login(&app, "victim@example.com", ATTACKER_PASSWORD)
        .await
        .expect_err("the squatter's password does not");
    assert_error(&status, Code::Unauthenticated, "INVALID_CREDENTIALS");
    let status = app
        .verify_token(&squatters.token)
        .await
        .expect_err("the squatter's link died with its registration");
    assert_error(&status, Code::InvalidArgument, "VERIFICATION_TOKEN_INVALID");
    app.verify_code("victim@example.com", &squatters.code)
        .await
        .expect_err("so did its code");
}

#[tokio::test]
async fn a_code_activates_the_registration_it_was_sent_for() {
    let app = TestApp::spawn().await;
    let squatter = app
        .register_with("victim@example.com", ATTACKER_PASSWORD)
        .await
        .expect("the squatter registers");
    app.register_with("victim@example.com", PASSWORD)
        .await
        .expect("the owner registers");
    let emails = app.emails_to("victim@example.com").await;

    // Here the squatter's email is the one the mailbox owner acts on: its registration wins,
    // with the password the owner types when verifying, not the squatter's.
    let verified = app
        .verify_code("VICTIM@example.com", &emails[0].code)
        .await
        .expect("verifies");

    assert_eq!(verified.user_id, squatter.user_id);
    calls::login(&app, "victim@example.com", PASSWORD)
        .await
        .expect("the verifier's password works");
    calls::login(&app, "victim@example.com", ATTACKER_PASSWORD)
        .await
        .expect_err("the squatter's does not");
    assert_eq!(app.rows_of("victim@example.com").await.len(), 1);
}

#[tokio::test]
async fn two_concurrent_verifications_of_two_registrations_of_one_address_activate_exactly_one() {
    // Many calls for one address from one client: this test is about the race, not the rate limits.
    let app = TestApp::spawn_with(support::without_rate_limits).await;
    for round in 0..8 {
        let email = format!("race{round}@example.com");
        app.register_with(&email, ATTACKER_PASSWORD)
            .await
            .expect("first registration");
        app.register_with(&email, PASSWORD)
            .await
            .expect("second registration");
        let emails = app.emails_to(&email).await;
        let (a, b) = (emails[0].token.clone(), emails[1].token.clone());

        let (first, second) = tokio::join!(app.verify_token(&a), app.verify_token(&b));

        let outcomes = [first, second];
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        for lost in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            let reason = lost
                .get_details_error_info_reason()
                .unwrap_or_else(|| panic!("no reason in {lost:?}"));
            assert!(
                ["ALREADY_VERIFIED", "VERIFICATION_TOKEN_INVALID"].contains(&reason.as_str()),
                "round {round}: {lost:?}"
            );
        }
        let rows = app.rows_of(&email).await;
        assert_eq!(rows.len(), 1, "round {round}: {rows:?}");
        assert_eq!(rows[0].1, "active");
    }
}

#[tokio::test]
async fn the_wrong_code_cap_holds_per_address_so_a_fresh_registration_does_not_reset_it() {
    let app = TestApp::spawn_with(|settings| {
        settings.registration.max_wrong_codes_per_account = 3;
    })
    .await;
    app.register("ada@example.com").await.expect("registers");
    let first = app.email_to("ada@example.com").await;
    for _ in 0..3 {
        let status = app
            .verify_code("ada@example.com", &wrong_code(&first.code))
            .await
            .expect_err("wrong code");
        assert_error(&status, Code::InvalidArgument, "VERIFICATION_CODE_INVALID");
    }

    app.register_with("ada@example.com", ATTACKER_PASSWORD)
        .await
        .expect("a fresh registration is accepted");
    let emails = app.emails_to("ada@example.com").await;
    let fresh = emails.last().expect("a fresh email");
    let status = app
        .verify_code("ada@example.com", &fresh.code)
        .await
        .expect_err("the address's cap still holds");

    assert_error(&status, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    app.verify_token(&fresh.token)
        .await
        .expect("the link still verifies");
}

#[tokio::test]
async fn a_resend_goes_to_the_newest_registration_and_the_cooldown_spans_the_address() {
    let app = TestApp::spawn().await;
    app.register_with("ada@example.com", ATTACKER_PASSWORD)
        .await
        .expect("first registration");
    app.clock.advance(Duration::seconds(61));
    let newest = app
        .register_with("ada@example.com", PASSWORD)
        .await
        .expect("second registration");

    // The newest registration's email went out just now: the cooldown applies to the address.
    app.resend("ada@example.com").await.expect("answers OK");
    assert_eq!(app.emails_to("ada@example.com").await.len(), 2);

    app.clock.advance(Duration::seconds(61));
    app.resend("ada@example.com").await.expect("answers OK");
    let emails = app.emails_to("ada@example.com").await;
    assert_eq!(emails.len(), 3);
    let verified = app
        .verify_token(&emails[2].token)
        .await
        .expect("the resent link verifies");
    assert_eq!(verified.user_id, newest.user_id);
}

/// The ErrorInfo reason of a status, if it has one.
trait Reason {
    fn get_details_error_info_reason(&self) -> Option<String>;
}

impl Reason for tonic::Status {
    fn get_details_error_info_reason(&self) -> Option<String> {
        use tonic_types::StatusExt;
        self.get_details_error_info().map(|info| info.reason)
    }
}
