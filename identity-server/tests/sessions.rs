//! Sessions on a real PostgreSQL: Login, throttling, rehashing, access tokens verified offline,
//! refresh rotation with reuse detection, revocation, GetCurrentUser. Key rotation is in
//! key_rotation.rs; races (concurrent logins and refreshes) in login_under_load.rs and
//! refresh_grace.rs.

mod support;

use std::sync::Arc;

use identity_proto::identity::v1::{self as pb, user_service_client::UserServiceClient};
use identity_server::{
    db::schema,
    hashing::HashingConfig,
    tokens::{KeyDirectory, KeyRing, Rotation},
};
use support::{
    PASSWORD, TestApp, assert_error,
    calls::{active_user, current_user, login, published_keys, refresh, sessions, verify_offline},
};
use time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn an_active_user_logs_in_and_the_access_token_names_them_and_their_session() {
    let app = TestApp::spawn().await;
    active_user(&app, "ada@example.com").await;

    let session = login(&app, "ADA@example.com", PASSWORD)
        .await
        .expect("logs in");

    let keys = published_keys(&app).await;
    let claims =
        verify_offline(&keys, &session.access_token, "identity-clients").expect("verifies offline");
    assert_eq!(claims["sub"], session.user_id.as_str());
    assert_eq!(claims["roles"], serde_json::json!(["user"]));
    assert!(claims["sid"].as_str().is_some() && claims["jti"].as_str().is_some());
    let access_expires = session.access_token_expires_at.expect("set").seconds;
    let refresh_expires = session.refresh_token_expires_at.expect("set").seconds;
    assert_eq!(access_expires - app.now().unix_timestamp(), 15 * 60);
    assert_eq!(
        refresh_expires - app.now().unix_timestamp(),
        30 * 24 * 60 * 60
    );

    let me = current_user(&app, &session.access_token)
        .await
        .expect("authenticated");
    assert_eq!(me.user_id, session.user_id);
    assert_eq!(me.email, "ada@example.com");
    assert_eq!(me.status(), pb::UserStatus::Active);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_address_get_the_same_answer() {
    let app = TestApp::spawn().await;
    active_user(&app, "ada@example.com").await;

    let wrong = login(&app, "ada@example.com", "not-the-password")
        .await
        .expect_err("refused");
    let unknown = login(&app, "nobody@example.com", PASSWORD)
        .await
        .expect_err("refused");

    for status in [&wrong, &unknown] {
        assert_error(status, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    assert_eq!(wrong.message(), unknown.message());
}

#[tokio::test]
async fn the_right_password_on_a_pending_account_asks_for_verification() {
    let app = TestApp::spawn().await;
    app.register("pending@example.com")
        .await
        .expect("registers");

    let status = login(&app, "pending@example.com", PASSWORD)
        .await
        .expect_err("pending");

    assert_error(&status, Code::FailedPrecondition, "EMAIL_NOT_VERIFIED");
}

#[tokio::test]
async fn repeated_failures_are_throttled_with_growing_delays_and_a_success_resets_them() {
    let app = TestApp::spawn().await;
    active_user(&app, "ada@example.com").await;
    for _ in 0..3 {
        login(&app, "ada@example.com", "wrong-password")
            .await
            .expect_err("refused");
    }

    // The third failure blocks the address for a second, even for the right password.
    let blocked = login(&app, "ada@example.com", PASSWORD)
        .await
        .expect_err("throttled");
    assert_error(&blocked, Code::ResourceExhausted, "LOGIN_THROTTLED");
    let retry = blocked
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert_eq!(retry.as_secs(), 1);

    app.clock.advance(Duration::seconds(1));
    login(&app, "ada@example.com", "wrong-password")
        .await
        .expect_err("refused");
    let blocked = login(&app, "ada@example.com", PASSWORD)
        .await
        .expect_err("throttled");
    let retry = blocked
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert_eq!(retry.as_secs(), 2, "the delay doubles");

    app.clock.advance(Duration::seconds(2));
    login(&app, "ada@example.com", PASSWORD)
        .await
        .expect("the right password after the delay");
    login(&app, "ada@example.com", "wrong-password")
        .await
        .expect_err("refused");
    login(&app, "ada@example.com", PASSWORD)
        .await
        .expect("one failure after a success is free");

    // Unknown addresses are throttled the same way.
    for _ in 0..3 {
        login(&app, "nobody@example.com", "x-password")
            .await
            .expect_err("refused");
    }
    let blocked = login(&app, "nobody@example.com", "x-password")
        .await
        .expect_err("throttled");
    assert_error(&blocked, Code::ResourceExhausted, "LOGIN_THROTTLED");
}

#[tokio::test]
async fn a_hash_with_outdated_parameters_is_upgraded_at_login() {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;

    let weak = TestApp::spawn_with(|settings| {
        settings.hashing = HashingConfig {
            params: argon2::Params::new(8 * 1024, 1, 1, None).expect("valid"),
            workers: 1,
            queue: 8,
        };
    })
    .await;
    active_user(&weak, "ada@example.com").await;
    let stored = async |app: &TestApp| -> String {
        schema::users::table
            .select(schema::users::password_hash)
            .first(&mut app.conn().await)
            .await
            .expect("a user")
    };
    assert!(
        stored(&weak)
            .await
            .starts_with("$argon2id$v=19$m=8192,t=1,p=1$")
    );

    // The same database served with today's parameters.
    let current = TestApp::spawn_on(weak.db.clone(), |_| {}).await;
    login(&current, "ada@example.com", PASSWORD)
        .await
        .expect("logs in");

    assert!(
        stored(&current)
            .await
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
    );
    login(&current, "ada@example.com", PASSWORD)
        .await
        .expect("the new hash verifies");
}

#[tokio::test]
async fn offline_verification_rejects_tampered_expired_misaddressed_and_foreign_tokens() {
    // The clock steps back an hour below, which rate limits read as the calls before it
    // running an hour ahead; this test is about offline token verification.
    let app = TestApp::spawn_with(support::without_rate_limits).await;
    active_user(&app, "ada@example.com").await;
    let keys = published_keys(&app).await;
    let good = login(&app, "ada@example.com", PASSWORD)
        .await
        .expect("logs in")
        .access_token;
    verify_offline(&keys, &good, "identity-clients").expect("the genuine token verifies");

    // Tampered: one character of the signed payload changed.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let payload = &mut parts[2];
    let flipped = if payload.starts_with('A') { "B" } else { "A" };
    payload.replace_range(0..1, flipped);
    assert!(verify_offline(&keys, &parts.join("."), "identity-clients").is_err());

    // Wrong audience.
    assert!(verify_offline(&keys, &good, "some-other-api").is_err());

    // Expired: issued by a server whose clock says an hour ago.
    app.clock.advance(Duration::hours(-1));
    let old = login(&app, "ada@example.com", PASSWORD)
        .await
        .expect("logs in")
        .access_token;
    assert!(verify_offline(&keys, &old, "identity-clients").is_err());

    // Signed by a key that was never published.
    let foreign_dir =
        std::env::temp_dir().join(format!("foreign-{}", uuid::Uuid::new_v4().simple()));
    KeyRing::generate(&foreign_dir, app.now()).expect("a key");
    let foreign = TestApp::spawn_on(app.db.clone(), |settings| {
        settings.keys = Arc::new(
            KeyDirectory::open(&foreign_dir, Rotation::default(), app.now()).expect("loads"),
        );
    })
    .await;
    let foreign_token = login(&foreign, "ada@example.com", PASSWORD)
        .await
        .expect("logs in")
        .access_token;
    assert_eq!(
        verify_offline(&keys, &foreign_token, "identity-clients"),
        Err("unknown key".into())
    );
    let status = current_user(&app, &foreign_token)
        .await
        .expect_err("unknown key");
    assert_error(&status, Code::Unauthenticated, "ACCESS_TOKEN_INVALID");
}

#[tokio::test]
async fn refreshing_rotates_the_pair_and_reusing_a_retired_token_revokes_the_session() {
    let app = TestApp::spawn().await;
    active_user(&app, "ada@example.com").await;
    let session = login(&app, "ada@example.com", PASSWORD)
        .await
        .expect("logs in");

    let second = refresh(&app, &session.refresh_token)
        .await
        .expect("refreshes");
    assert_ne!(second.refresh_token, session.refresh_token);
    assert_ne!(second.access_token, session.access_token);
    assert_eq!(
        second.refresh_token_expires_at, session.refresh_token_expires_at,
        "rotation never extends the session"
    );
    let third = refresh(&app, &second.refresh_token)
        .await
        .expect("refreshes again");

    // The first token comes back: it leaked. The whole session ends, the newest token too.
    let reused = refresh(&app, &session.refresh_token)
        .await
        .expect_err("retired");
    assert_error(&reused, Code::Unauthenticated, "REFRESH_TOKEN_INVALID");
    let newest = refresh(&app, &third.refresh_token)
        .await
        .expect_err("session revoked");
    assert_error(&newest, Code::Unauthenticated, "REFRESH_TOKEN_INVALID");
}

#[tokio::test]
async fn revoking_a_session_is_idempotent_and_ends_its_refresh_tokens() {
    let app = TestApp::spawn().await;
    active_user(&app, "ada@example.com").await;
    let session = login(&app, "ada@example.com", PASSWORD)
        .await
        .expect("logs in");
    let revoke = async |token: &str| {
        sessions(&app)
            .revoke_session(pb::RevokeSessionRequest {
                refresh_token: token.into(),
            })
            .await
    };

    revoke(&session.refresh_token).await.expect("revokes");
    revoke(&session.refresh_token)
        .await
        .expect("again: still OK");
    revoke(&"A".repeat(43))
        .await
        .expect("an unknown token: OK, nothing revealed");

    let status = refresh(&app, &session.refresh_token)
        .await
        .expect_err("revoked");
    assert_error(&status, Code::Unauthenticated, "REFRESH_TOKEN_INVALID");
    // Offline verification cannot know: the access token lives until it expires.
    current_user(&app, &session.access_token)
        .await
        .expect("still valid until it expires");
}

#[tokio::test]
async fn a_session_ends_after_its_absolute_lifetime() {
    let app = TestApp::spawn().await;
    active_user(&app, "ada@example.com").await;
    let session = login(&app, "ada@example.com", PASSWORD)
        .await
        .expect("logs in");
    app.clock.advance(Duration::days(29));
    let fresh = refresh(&app, &session.refresh_token)
        .await
        .expect("still within 30 days");

    app.clock.advance(Duration::days(1));

    let status = refresh(&app, &fresh.refresh_token)
        .await
        .expect_err("expired");
    assert_error(&status, Code::Unauthenticated, "REFRESH_TOKEN_INVALID");
}

#[tokio::test]
async fn get_current_user_needs_a_valid_bearer_token() {
    let app = TestApp::spawn().await;
    active_user(&app, "ada@example.com").await;
    let session = login(&app, "ada@example.com", PASSWORD)
        .await
        .expect("logs in");

    let none = UserServiceClient::new(app.channel.clone())
        .get_current_user(pb::GetCurrentUserRequest {})
        .await
        .expect_err("no token");
    assert_error(&none, Code::Unauthenticated, "ACCESS_TOKEN_MISSING");
    let garbage = current_user(&app, "v4.public.garbage")
        .await
        .expect_err("garbage");
    assert_error(&garbage, Code::Unauthenticated, "ACCESS_TOKEN_INVALID");

    app.clock.advance(Duration::minutes(15));
    let expired = current_user(&app, &session.access_token)
        .await
        .expect_err("expired");
    assert_error(&expired, Code::Unauthenticated, "ACCESS_TOKEN_INVALID");
}
