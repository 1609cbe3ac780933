//! Login under concurrent load, on a real PostgreSQL: a burst of guesses for one address is
//! throttled atomically, and upgrading an outdated hash holds no database connection while it
//! hashes.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::join_all;
use identity_proto::identity::v1 as pb;
use identity_server::{db::schema, hashing::HashingConfig};
use support::{
    PASSWORD, TestApp,
    calls::{active_user, login, sessions},
};
use time::{Duration, OffsetDateTime};
use tonic::Code;
use tonic_types::StatusExt;

const GUESSES: usize = 40;

/// How a burst of wrong-password logins was answered.
#[derive(Debug, Default)]
struct Burst {
    /// Answered INVALID_CREDENTIALS: the password was checked.
    evaluated: usize,
    /// Answered LOGIN_THROTTLED with a RetryInfo.
    throttled: usize,
}

/// Sends `GUESSES` wrong-password logins for `email` at once.
async fn guess_at_once(app: &TestApp, email: &str) -> Burst {
    let answers = join_all((0..GUESSES).map(|_| login(app, email, "wrong-password-guess"))).await;
    let mut burst = Burst::default();
    for answer in answers {
        let status = answer.expect_err("a wrong password never logs in");
        let reason = status.get_details_error_info().map(|info| info.reason);
        match (status.code(), reason.as_deref()) {
            (Code::Unauthenticated, Some("INVALID_CREDENTIALS")) => burst.evaluated += 1,
            (Code::ResourceExhausted, Some("LOGIN_THROTTLED")) => {
                assert!(
                    status.get_details_retry_info().is_some(),
                    "no RetryInfo: {status:?}"
                );
                burst.throttled += 1;
            }
            _ => panic!("unexpected answer: {status:?}"),
        }
    }
    burst
}

/// Until when logins for `email` are refused, as stored.
async fn blocked_until(app: &TestApp, email: &str) -> OffsetDateTime {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use schema::login_throttle::dsl as t;
    t::login_throttle
        .find(email.to_lowercase())
        .select(t::blocked_until)
        .first(&mut app.conn().await)
        .await
        .expect("a throttle row")
}

/// The one user's stored password hash.
async fn stored_hash(app: &TestApp) -> String {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    schema::users::table
        .select(schema::users::password_hash)
        .first(&mut app.conn().await)
        .await
        .expect("a user")
}

/// The cap on one block (15 minutes by default).
const CAP: Duration = Duration::minutes(15);

#[tokio::test]
async fn forty_concurrent_wrong_passwords_for_one_account_are_evaluated_at_most_five_times() {
    // Many calls from one client: this test is about the login throttle, not the rate limits.
    let app = TestApp::spawn_with(support::without_rate_limits).await;
    active_user(&app, "ada@example.com").await;

    let burst = guess_at_once(&app, "ada@example.com").await;

    println!("{GUESSES} concurrent guesses: {burst:?}");
    assert!(
        (1..=5).contains(&burst.evaluated),
        "{burst:?}: at most 5 guesses may be checked"
    );
    assert_eq!(burst.evaluated + burst.throttled, GUESSES, "{burst:?}");
    let until = blocked_until(&app, "ada@example.com").await;
    assert!(until > app.now(), "the address is blocked");
    assert!(
        until <= app.now() + CAP,
        "blocked until {until}, beyond the cap"
    );

    // The owner is not locked out once the block has passed.
    app.clock.advance(until - app.now());
    login(&app, "ada@example.com", PASSWORD)
        .await
        .expect("the owner logs in after the block");
}

#[tokio::test]
async fn forty_concurrent_guesses_for_an_unknown_address_are_throttled_the_same_way() {
    // Many calls from one client: this test is about the login throttle, not the rate limits.
    let app = TestApp::spawn_with(support::without_rate_limits).await;

    let burst = guess_at_once(&app, "nobody@example.com").await;

    assert!((1..=5).contains(&burst.evaluated), "{burst:?}");
    assert_eq!(burst.evaluated + burst.throttled, GUESSES, "{burst:?}");
    let until = blocked_until(&app, "nobody@example.com").await;
    assert!(until > app.now() && until <= app.now() + CAP, "{until}");

    app.clock.advance(until - app.now());
    let status = login(&app, "nobody@example.com", PASSWORD)
        .await
        .expect_err("unknown");
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "evaluated again after the block: {status:?}"
    );
}

#[tokio::test]
async fn a_block_never_exceeds_the_cap_however_many_guesses_came_before() {
    // Many calls from one client: this test is about the login throttle, not the rate limits.
    let app = TestApp::spawn_with(support::without_rate_limits).await;
    active_user(&app, "ada@example.com").await;

    // Guess after guess, each as soon as the previous block ends, far past the cap.
    for _ in 0..20 {
        let _ = guess_at_once(&app, "ada@example.com").await;
        let until = blocked_until(&app, "ada@example.com").await;
        assert!(
            until <= app.now() + CAP,
            "blocked until {until}, beyond the cap"
        );
        app.clock.advance(until - app.now());
    }

    login(&app, "ada@example.com", PASSWORD)
        .await
        .expect("the owner logs in once the block has passed");
}

#[tokio::test]
async fn upgrading_an_outdated_hash_at_login_holds_no_database_connection_while_hashing() {
    // Registered under cheap parameters...
    let weak = TestApp::spawn_with(|settings| {
        settings.hashing = HashingConfig {
            params: argon2::Params::new(8 * 1024, 1, 1, None).expect("valid"),
            workers: 1,
            queue: 8,
        };
    })
    .await;
    active_user(&weak, "ada@example.com").await;
    // ...then served with parameters that make the upgrade take seconds, and one connection
    // (waited for at most a second, the test default) for everybody.
    let slow = TestApp::spawn_on(weak.db.clone(), |settings| {
        settings.hashing = HashingConfig {
            params: argon2::Params::new(19 * 1024, 150, 1, None).expect("valid"),
            workers: 2,
            queue: 8,
        };
        settings.database.max_size = 1;
    })
    .await;
    let probe = async || {
        sessions(&slow)
            .revoke_session(pb::RevokeSessionRequest {
                refresh_token: "A".repeat(43),
            })
            .await
    };
    probe().await.expect("the pool's connection is open");

    // Other calls keep being served while the login upgrades the hash.
    let login_done = AtomicBool::new(false);
    let logging_in = async {
        let answer = login(&slow, "ada@example.com", PASSWORD).await;
        login_done.store(true, Ordering::SeqCst);
        answer
    };
    let probing = async {
        let mut served = 0;
        while !login_done.load(Ordering::SeqCst) {
            probe().await?;
            served += 1;
            tokio::task::yield_now().await;
        }
        Ok::<_, tonic::Status>(served)
    };
    let (logged_in, probes) = tokio::join!(logging_in, probing);

    logged_in.expect("logs in");
    let served = probes.expect("no call waited for the connection the login held");
    assert!(served > 1, "only {served} calls ran during the login");
    let stored = stored_hash(&slow).await;
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=150,p=1$"),
        "upgraded"
    );
}
