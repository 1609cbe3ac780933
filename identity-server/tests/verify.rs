//! VerifyEmail against a real PostgreSQL, with a clock the test moves.

mod support;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use identity_proto::identity::v1 as pb;
use identity_server::db::schema;
use support::{TestApp, assert_error, violated_fields};
use time::Duration;
use tonic::Code;

/// A code that is not `code` (and still six digits).
fn other_code(code: &str) -> String {
    let n: u32 = code.parse().expect("digits");
    format!("{:06}", (n + 1) % 1_000_000)
}

/// A six-digit code that none of `emails` carries.
fn code_of_none(emails: &[identity_proto::outbox::EmailVerificationV1]) -> String {
    (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|candidate| emails.iter().all(|e| &e.code != candidate))
        .expect("six emails cannot use every code")
}

#[tokio::test]
async fn verifying_with_the_link_token_activates_the_user() {
    let app = TestApp::spawn().await;
    let registered = app.register("ada@example.com").await.expect("registers");
    let email = app.email_to("ada@example.com").await;

    let verified = app.verify_token(&email.token).await.expect("verifies");

    assert_eq!(verified.user_id, registered.user_id);
    assert_eq!(verified.status(), pb::UserStatus::Active);
    assert_eq!(app.status_of("ada@example.com").await, "active");
}

#[tokio::test]
async fn verifying_with_the_address_in_any_case_and_the_code_activates_the_user() {
    let app = TestApp::spawn().await;
    let registered = app.register("ada@example.com").await.expect("registers");
    let email = app.email_to("ada@example.com").await;

    let verified = app
        .verify_code(" ADA@example.com ", &email.code)
        .await
        .expect("verifies");

    assert_eq!(verified.user_id, registered.user_id);
    assert_eq!(verified.status(), pb::UserStatus::Active);
    assert_eq!(app.status_of("ada@example.com").await, "active");
}

#[tokio::test]
async fn an_expired_token_or_code_is_rejected_and_the_user_stays_pending() {
    let app = TestApp::spawn().await;
    app.register("ada@example.com").await.expect("registers");
    let email = app.email_to("ada@example.com").await;

    app.clock.advance(Duration::hours(24));

    let by_token = app.verify_token(&email.token).await.expect_err("expired");
    assert_error(&by_token, Code::FailedPrecondition, "VERIFICATION_EXPIRED");
    let by_code = app
        .verify_code("ada@example.com", &email.code)
        .await
        .expect_err("expired");
    assert_error(&by_code, Code::FailedPrecondition, "VERIFICATION_EXPIRED");
    assert_eq!(
        app.status_of("ada@example.com").await,
        "pending_verification"
    );
}

#[tokio::test]
async fn a_used_token_or_code_is_rejected_as_already_verified() {
    let app = TestApp::spawn().await;
    app.register("ada@example.com").await.expect("registers");
    let email = app.email_to("ada@example.com").await;
    app.verify_token(&email.token).await.expect("first use");

    let again = app.verify_token(&email.token).await.expect_err("reused");
    assert_error(&again, Code::FailedPrecondition, "ALREADY_VERIFIED");
    let code = app
        .verify_code("ada@example.com", &email.code)
        .await
        .expect_err("consumed");
    assert_error(&code, Code::FailedPrecondition, "ALREADY_VERIFIED");
}

#[tokio::test]
async fn unknown_tokens_and_wrong_codes_are_rejected_alike_for_known_and_unknown_addresses() {
    let app = TestApp::spawn().await;
    app.register("ada@example.com").await.expect("registers");
    let email = app.email_to("ada@example.com").await;

    let unknown_token = "A".repeat(43);
    let status = app.verify_token(&unknown_token).await.expect_err("unknown");
    assert_error(&status, Code::InvalidArgument, "VERIFICATION_TOKEN_INVALID");

    let wrong = app
        .verify_code("ada@example.com", &other_code(&email.code))
        .await
        .expect_err("wrong code");
    assert_error(&wrong, Code::InvalidArgument, "VERIFICATION_CODE_INVALID");
    let nobody = app
        .verify_code("nobody@example.com", &email.code)
        .await
        .expect_err("unknown address");
    assert_error(&nobody, Code::InvalidArgument, "VERIFICATION_CODE_INVALID");
    assert_eq!(
        app.status_of("ada@example.com").await,
        "pending_verification"
    );
}

#[tokio::test]
async fn malformed_proofs_are_bad_requests_naming_the_field() {
    let app = TestApp::spawn().await;

    let short_token = app.verify_token("too-short").await.expect_err("malformed");
    assert_eq!(violated_fields(&short_token), ["token"]);
    let letters = app
        .verify_code("ada@example.com", "12ab56")
        .await
        .expect_err("malformed");
    assert_eq!(violated_fields(&letters), ["email_code.code"]);
    let both = app.verify_code("ada", "1").await.expect_err("malformed");
    assert_eq!(
        violated_fields(&both),
        ["email_code.email", "email_code.code"]
    );
    let nothing = app
        .client
        .clone()
        .verify_email(pb::VerifyEmailRequest {
            proof: None,
            password: support::PASSWORD.into(),
        })
        .await
        .expect_err("no proof");
    assert_eq!(violated_fields(&nothing), ["proof"]);
}

#[tokio::test]
async fn the_verifier_must_give_a_password_that_meets_the_policy_for_this_account() {
    let app = TestApp::spawn().await;
    app.register("ada@example.com").await.expect("registers");
    let email = app.email_to("ada@example.com").await;
    let verify = async |password: &str| {
        app.client
            .clone()
            .verify_email(pb::VerifyEmailRequest {
                proof: Some(pb::verify_email_request::Proof::Token(email.token.clone())),
                password: password.into(),
            })
            .await
    };

    let missing = verify("").await.expect_err("no password");
    assert_eq!(violated_fields(&missing), ["password"]);
    // Built from the registration's own address and name: only known once the proof is good.
    for weak in ["ada@example.com", "Lovelace", "short"] {
        let refused = verify(weak).await.expect_err("a weak password");
        assert_eq!(violated_fields(&refused), ["password"], "{weak:?}");
    }
    // Nothing was spent: the same link still verifies, with a good password.
    verify(support::PASSWORD).await.expect("verifies");
}

#[tokio::test]
async fn the_sixth_wrong_code_gives_too_many_attempts_and_locks_the_code() {
    // Many calls from one client: this test is about the per-email cap on wrong codes, not the rate limits.
    let app = TestApp::spawn_with(support::without_rate_limits).await;
    app.register("ada@example.com").await.expect("registers");
    let email = app.email_to("ada@example.com").await;
    let wrong = other_code(&email.code);

    for attempt in 1..=5 {
        let status = app
            .verify_code("ada@example.com", &wrong)
            .await
            .expect_err("wrong");
        assert_error(&status, Code::InvalidArgument, "VERIFICATION_CODE_INVALID");
        let _ = attempt;
    }
    let sixth = app
        .verify_code("ada@example.com", &wrong)
        .await
        .expect_err("locked");
    assert_error(&sixth, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");

    // Even the right code no longer works, or guessing could go on forever.
    let right = app
        .verify_code("ada@example.com", &email.code)
        .await
        .expect_err("locked");
    assert_error(&right, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    assert_eq!(
        app.status_of("ada@example.com").await,
        "pending_verification"
    );

    // The link cannot be guessed, so it still works.
    app.verify_token(&email.token)
        .await
        .expect("the link still verifies");
}

#[tokio::test]
async fn after_a_resend_the_old_and_the_new_pair_both_work_until_one_is_used() {
    let app = TestApp::spawn().await;
    for address in ["old@example.com", "new@example.com"] {
        app.register(address).await.expect("registers");
    }
    app.clock.advance(Duration::seconds(61));
    for address in ["old@example.com", "new@example.com"] {
        app.resend(address).await.expect("resends");
    }

    // One user verifies with the first email's code, the other with the second email's token.
    let old_pair = app.emails_to("old@example.com").await;
    let new_pair = app.emails_to("new@example.com").await;
    assert_eq!((old_pair.len(), new_pair.len()), (2, 2));
    assert_ne!(old_pair[0].token, old_pair[1].token);

    app.verify_code("old@example.com", &old_pair[0].code)
        .await
        .expect("the first code still works after a resend");
    app.verify_token(&new_pair[1].token)
        .await
        .expect("the new token works");

    // Using one pair consumed the other.
    let status = app
        .verify_token(&old_pair[1].token)
        .await
        .expect_err("consumed");
    assert_error(&status, Code::FailedPrecondition, "ALREADY_VERIFIED");
    let status = app
        .verify_code("new@example.com", &new_pair[0].code)
        .await
        .expect_err("consumed");
    assert_error(&status, Code::FailedPrecondition, "ALREADY_VERIFIED");
}

#[tokio::test]
async fn concurrent_verifications_activate_the_user_exactly_once() {
    // Many calls from one client: this test is about concurrent verifications, not the rate limits.
    let app = TestApp::spawn_with(support::without_rate_limits).await;
    app.register("ada@example.com").await.expect("registers");
    let email = app.email_to("ada@example.com").await;

    let attempts: Vec<_> = (0..16)
        .map(|i| {
            let client = app.client.clone();
            let proof = if i % 2 == 0 {
                pb::verify_email_request::Proof::Token(email.token.clone())
            } else {
                pb::verify_email_request::Proof::EmailCode(pb::EmailCode {
                    email: "ada@example.com".into(),
                    code: email.code.clone(),
                })
            };
            tokio::spawn(async move {
                client
                    .clone()
                    .verify_email(pb::VerifyEmailRequest {
                        proof: Some(proof),
                        password: support::PASSWORD.into(),
                    })
                    .await
            })
        })
        .collect();
    let mut activated = 0;
    for attempt in attempts {
        match attempt.await.expect("task completes") {
            Ok(_) => activated += 1,
            Err(status) => assert_error(&status, Code::FailedPrecondition, "ALREADY_VERIFIED"),
        }
    }

    assert_eq!(activated, 1);
    let unconsumed: i64 = schema::verification_secrets::table
        .filter(schema::verification_secrets::consumed_at.is_null())
        .count()
        .get_result(&mut app.conn().await)
        .await
        .expect("readable");
    assert_eq!(unconsumed, 0);
}

#[tokio::test]
async fn wrong_codes_across_resends_hit_the_account_cap_after_which_only_the_link_verifies() {
    // The default cap is 15 wrong codes per account. Three wrong codes per email never lock a
    // fresh email's own code (5 per email), so only the account-wide count can stop them. Six
    // emails in minutes from one client: past the default email budget and the rate limits,
    // which this test is not about; both are lifted.
    let app = TestApp::spawn_with(|settings| {
        support::without_rate_limits(settings);
        settings.registration.email_budget =
            identity_server::domain::EmailBudget::new(10, 10).expect("valid");
    })
    .await;
    app.register("ada@example.com").await.expect("registers");
    for email_number in 1..=5 {
        if email_number > 1 {
            app.clock.advance(Duration::seconds(61));
            app.resend("ada@example.com").await.expect("resends");
        }
        let emails = app.emails_to("ada@example.com").await;
        assert_eq!(emails.len(), email_number);
        let wrong = code_of_none(&emails);
        for _ in 0..3 {
            let status = app
                .verify_code("ada@example.com", &wrong)
                .await
                .expect_err("wrong code");
            assert_error(&status, Code::InvalidArgument, "VERIFICATION_CODE_INVALID");
        }
    }

    app.clock.advance(Duration::seconds(61));
    app.resend("ada@example.com").await.expect("resends");
    let emails = app.emails_to("ada@example.com").await;
    let fresh = emails.last().expect("a sixth email");
    let right = app
        .verify_code("ada@example.com", &fresh.code)
        .await
        .expect_err("the account is past its cap");
    assert_error(&right, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    let wrong = app
        .verify_code("ada@example.com", &code_of_none(&emails))
        .await
        .expect_err("the account is past its cap");
    assert_error(&wrong, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    assert_eq!(
        app.status_of("ada@example.com").await,
        "pending_verification"
    );

    app.verify_token(&fresh.token)
        .await
        .expect("the link still verifies");
}
