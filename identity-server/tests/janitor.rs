//! The janitor on a real PostgreSQL, with a clock the test moves: each kind of row goes when it
//! is due and not a second before.

mod support;

use std::{sync::Arc, time::Duration as StdDuration};

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text, Timestamptz},
};
use diesel_async::RunQueryDsl;
use identity_proto::{
    identity::v1::{
        self as pb, challenge_service_client::ChallengeServiceClient,
        password_reset_service_client::PasswordResetServiceClient,
        session_service_client::SessionServiceClient,
    },
    outbox::EmailPasswordResetV1,
};
use identity_server::{
    challenge::{self, ChallengeKey, Policy},
    clock::{Clock, SystemClock},
    db,
    janitor::{self, Janitor, Swept},
};
use identity_tests::statements::StatementCounter;
use secrecy::SecretString;
use support::{PASSWORD, TestApp, assert_error};
use time::{Duration, OffsetDateTime};
use tonic::Code;

/// The defaults, spelled out, since the tests count on them.
fn settings() -> janitor::Settings {
    janitor::Settings {
        interval: StdDuration::from_secs(3600),
        batch_size: 100,
        spent_secret_retention: Duration::days(7),
        login_throttle_retention: Duration::days(1),
        dead_letter_retention: Duration::days(30),
        unverified_account_ttl: Duration::days(7),
    }
}

fn janitor(app: &TestApp, settings: janitor::Settings) -> Janitor {
    janitor_on(&app.db.url, Arc::new(app.clock.clone()), settings)
}

/// A janitor on the database at `url`, with a pool of its own.
fn janitor_on(url: &str, clock: Arc<dyn Clock>, settings: janitor::Settings) -> Janitor {
    let pool = db::pool(&db::PoolConfig {
        url: SecretString::from(url.to_owned()),
        max_size: 2,
        timeout: StdDuration::from_secs(5),
        session: identity_proto::pg::SessionTimeouts::default(),
    })
    .expect("a pool");
    Janitor::new(pool, clock, settings)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The result of a `SELECT count(*) AS n ...`.
async fn count(app: &TestApp, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(&mut app.conn().await)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// Sweeps one second before `due` and asserts `sql` still counts `present` rows, then sweeps
/// at `due` and asserts it counts none.
async fn assert_deleted_exactly_when_due(
    app: &TestApp,
    janitor: &Janitor,
    due: OffsetDateTime,
    sql: &str,
    present: i64,
) {
    app.clock.advance(due - app.now() - Duration::seconds(1));
    janitor.sweep().await.expect("the sweep succeeds");
    assert_eq!(count(app, sql).await, present, "kept until due: {sql}");

    app.clock.advance(Duration::seconds(1));
    janitor.sweep().await.expect("the sweep succeeds");
    assert_eq!(count(app, sql).await, 0, "deleted when due: {sql}");
}

async fn active_user(app: &TestApp, email: &str) {
    app.register(email).await.expect("registers");
    let message = app.email_to(email).await;
    app.verify_token(&message.token).await.expect("verifies");
}

#[tokio::test]
async fn a_never_verified_account_is_deleted_after_the_ttl_and_its_address_can_register_again() {
    let app = TestApp::spawn().await;
    let janitor = janitor(&app, settings());
    let registered_at = app.now();
    app.register("ada@example.com").await.expect("registers");
    active_user(&app, "grace@example.com").await;

    assert_deleted_exactly_when_due(
        &app,
        &janitor,
        registered_at + Duration::days(7),
        "SELECT count(*) AS n FROM users WHERE lower(email) = 'ada@example.com'",
        1,
    )
    .await;

    let secrets = count(&app, "SELECT count(*) AS n FROM verification_secrets s JOIN users u ON u.id = s.user_id WHERE u.email = 'grace@example.com'").await;
    assert_eq!(secrets, 0, "the used secret of the active account went too");
    assert_eq!(app.count_users().await, 1, "the active account stays");
    let again = app
        .register("ADA@example.com")
        .await
        .expect("the address is free again");
    assert_eq!(again.status(), pb::UserStatus::PendingVerification);
}

#[tokio::test]
async fn the_email_budget_ledger_keeps_a_send_for_a_day_then_deletes_it() {
    let app = TestApp::spawn().await;
    let janitor = janitor(&app, settings());
    let sent_at = app.now();
    app.register("ada@example.com").await.expect("registers");
    app.clock.advance(Duration::hours(1));
    app.register("grace@example.com").await.expect("registers");

    assert_deleted_exactly_when_due(
        &app,
        &janitor,
        sent_at + Duration::days(1),
        "SELECT count(*) AS n FROM email_sends WHERE address_key = 'ada@example.com'",
        1,
    )
    .await;
    let kept = count(&app, "SELECT count(*) AS n FROM email_sends").await;
    assert_eq!(kept, 1, "the later send is kept");
}

#[tokio::test]
async fn a_pending_account_past_the_ttl_is_kept_while_a_link_of_it_still_works() {
    let app = TestApp::spawn().await;
    let janitor = janitor(&app, settings());
    app.register("ada@example.com").await.expect("registers");
    app.clock.advance(Duration::days(7) - Duration::hours(1));
    app.resend("ada@example.com").await.expect("resends");
    let resent_at = app.now();

    assert_deleted_exactly_when_due(
        &app,
        &janitor,
        resent_at + Duration::hours(24),
        "SELECT count(*) AS n FROM users",
        1,
    )
    .await;
}

#[tokio::test]
async fn used_and_expired_verification_secrets_are_kept_for_the_retention_then_deleted() {
    let app = TestApp::spawn().await;
    // Pending accounts live longer here, so that their expired secrets are swept on their own.
    let janitor = janitor(
        &app,
        janitor::Settings {
            unverified_account_ttl: Duration::days(365),
            ..settings()
        },
    );
    let start = app.now();
    active_user(&app, "used@example.com").await;
    app.register("expired@example.com")
        .await
        .expect("registers");
    let used = app.email_to("used@example.com").await;

    // Within the retention a used link still says why it no longer works.
    app.clock.advance(Duration::days(6));
    let status = app.verify_token(&used.token).await.expect_err("used");
    assert_error(&status, Code::FailedPrecondition, "ALREADY_VERIFIED");

    // Used at `start`: gone at start + 7 days, while the expired one (at start + 24 h) stays.
    assert_deleted_exactly_when_due(
        &app,
        &janitor,
        start + Duration::days(7),
        "SELECT count(*) AS n FROM verification_secrets WHERE consumed_at IS NOT NULL",
        1,
    )
    .await;
    assert_deleted_exactly_when_due(
        &app,
        &janitor,
        start + Duration::hours(24) + Duration::days(7),
        "SELECT count(*) AS n FROM verification_secrets",
        1,
    )
    .await;
    let status = app.verify_token(&used.token).await.expect_err("forgotten");
    assert_error(&status, Code::InvalidArgument, "VERIFICATION_TOKEN_INVALID");
}

/// Every reset email queued.
async fn reset_links(app: &TestApp) -> Vec<EmailPasswordResetV1> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        payload: serde_json::Value,
    }
    diesel::sql_query("SELECT payload FROM outbox WHERE kind = $1")
        .bind::<Text, _>(EmailPasswordResetV1::KIND)
        .load::<Row>(&mut app.conn().await)
        .await
        .expect("readable")
        .into_iter()
        .map(|row| serde_json::from_value(row.payload).expect("parses"))
        .collect()
}

#[tokio::test]
async fn used_and_expired_reset_tokens_are_kept_for_the_retention_then_deleted() {
    let app = TestApp::spawn().await;
    let janitor = janitor(&app, settings());
    active_user(&app, "used@example.com").await;
    active_user(&app, "expired@example.com").await;
    let requested_at = app.now();
    let client = PasswordResetServiceClient::new(app.channel.clone());
    for email in ["used@example.com", "expired@example.com"] {
        client
            .clone()
            .request_password_reset(pb::RequestPasswordResetRequest {
                email: email.into(),
                ..Default::default()
            })
            .await
            .expect("answers OK");
    }
    let links = reset_links(&app).await;
    let used = links
        .iter()
        .find(|l| l.recipient == "used@example.com")
        .expect("a link");
    client
        .clone()
        .reset_password(pb::ResetPasswordRequest {
            token: used.token.clone(),
            new_password: "marmalade-lantern-quartz-9".into(),
        })
        .await
        .expect("resets");

    // The used token at `requested_at`, the other when it expires an hour later.
    assert_deleted_exactly_when_due(
        &app,
        &janitor,
        requested_at + Duration::days(7),
        "SELECT count(*) AS n FROM password_reset_tokens WHERE consumed_at IS NOT NULL",
        1,
    )
    .await;
    assert_deleted_exactly_when_due(
        &app,
        &janitor,
        requested_at + Duration::hours(1) + Duration::days(7),
        "SELECT count(*) AS n FROM password_reset_tokens",
        1,
    )
    .await;
}

#[tokio::test]
async fn an_expired_session_is_deleted_with_its_refresh_tokens() {
    let app = TestApp::spawn().await;
    let janitor = janitor(&app, settings());
    active_user(&app, "ada@example.com").await;
    let logged_in_at = app.now();
    let sessions = SessionServiceClient::new(app.channel.clone());
    let login = sessions
        .clone()
        .login(pb::LoginRequest {
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("logs in")
        .into_inner();
    sessions
        .clone()
        .refresh_session(pb::RefreshSessionRequest {
            refresh_token: login.refresh_token,
        })
        .await
        .expect("refreshes");
    assert_eq!(
        count(&app, "SELECT count(*) AS n FROM refresh_tokens").await,
        2
    );

    assert_deleted_exactly_when_due(
        &app,
        &janitor,
        logged_in_at + Duration::days(30),
        "SELECT count(*) AS n FROM sessions",
        1,
    )
    .await;
    assert_eq!(
        count(&app, "SELECT count(*) AS n FROM refresh_tokens").await,
        0
    );
}

/// The blocks a janitor sweep touches per expired session, with `n` expired sessions of one
/// refresh token each added to `db` first.
async fn sweep_blocks_per_session(counter: &StatementCounter, n: i64) -> f64 {
    let mut conn = counter.db.connect().await;
    diesel::sql_query(
        "WITH ended AS (
             INSERT INTO sessions (id, user_id, created_at, expires_at)
             SELECT gen_random_uuid(), '00000000-0000-0000-0000-000000000001',
                    now() - interval '31 days', now() - interval '1 day'
               FROM generate_series(1, $1)
             RETURNING id)
         INSERT INTO refresh_tokens (token_hash, session_id, created_at)
         SELECT sha256(uuid_send(id)), id, now() - interval '31 days' FROM ended",
    )
    .bind::<BigInt, _>(n)
    .execute(&mut conn)
    .await
    .expect("expired sessions are inserted");
    diesel::sql_query("ANALYZE")
        .execute(&mut conn)
        .await
        .expect("analyzed");
    let janitor = janitor_on(&counter.db.url, Arc::new(SystemClock), settings());
    let (swept, blocks) = counter
        .blocks_during(async || janitor.sweep().await.expect("the sweep succeeds"))
        .await;
    assert_eq!(
        usize::try_from(n).ok(),
        Some(swept.sessions),
        "every expired session went"
    );
    blocks as f64 / n as f64
}

#[tokio::test]
async fn a_sweep_of_expired_sessions_costs_the_same_per_session_however_many_there_are() {
    let counter = StatementCounter::start().await;
    diesel::sql_query(
        "INSERT INTO users (id, email, password_hash, status, display_name, locale, created_at,
                            updated_at, verified_at)
         VALUES ('00000000-0000-0000-0000-000000000001', 'ada@example.com', '$argon2id$x',
                 'active', 'Ada', 'en', now(), now(), now())",
    )
    .execute(&mut counter.db.connect().await)
    .await
    .expect("a user");
    // Batches of 100 (settings()).
    let few = sweep_blocks_per_session(&counter, 300).await;
    let many = sweep_blocks_per_session(&counter, 3_000).await;
    assert!(
        many < 2.0 * few,
        "sweeping 3,000 expired sessions touched {many:.1} blocks per session, 300 touched \
         {few:.1}: a batch's cost grows with the sessions swept before it"
    );
}

#[tokio::test]
async fn a_login_throttle_row_is_deleted_a_day_after_its_last_failure_and_block() {
    let app = TestApp::spawn().await;
    let janitor = janitor(&app, settings());
    let failed_at = app.now();
    let blocked_until = failed_at + Duration::minutes(15);
    diesel::sql_query(
        "INSERT INTO login_throttle (email_key, failures, last_failed_at, blocked_until)
         VALUES ('ada@example.com', 12, $1, $2)",
    )
    .bind::<Timestamptz, _>(failed_at)
    .bind::<Timestamptz, _>(blocked_until)
    .execute(&mut app.conn().await)
    .await
    .expect("inserted");

    assert_deleted_exactly_when_due(
        &app,
        &janitor,
        blocked_until + Duration::days(1),
        "SELECT count(*) AS n FROM login_throttle",
        1,
    )
    .await;
}

/// Puts `count` dead letters that died at `dead_at` into `outbox_dead`.
async fn dead_letters(app: &TestApp, count: i64, dead_at: OffsetDateTime) {
    diesel::sql_query(
        "INSERT INTO outbox_dead (id, aggregate_type, aggregate_id, kind, payload, created_at,
                                  attempts, reason, dead_at)
         SELECT gen_random_uuid(), 'user', 'u' || i, $1, '{}', $2, 100, 'test', $2
         FROM generate_series(1, $3) AS i",
    )
    .bind::<Text, _>("email.verification.v1")
    .bind::<Timestamptz, _>(dead_at)
    .bind::<BigInt, _>(count)
    .execute(&mut app.conn().await)
    .await
    .expect("inserted");
}

#[tokio::test]
async fn a_dead_letter_is_deleted_after_the_retention() {
    let app = TestApp::spawn().await;
    let janitor = janitor(&app, settings());
    let dead_at = app.now();
    dead_letters(&app, 1, dead_at).await;

    assert_deleted_exactly_when_due(
        &app,
        &janitor,
        dead_at + Duration::days(30),
        "SELECT count(*) AS n FROM outbox_dead",
        1,
    )
    .await;
}

#[tokio::test]
async fn a_used_challenge_solution_is_kept_until_its_challenge_expired_plus_the_clock_margin() {
    let app = TestApp::spawn_with(|settings| {
        settings.challenge = challenge::Settings {
            policy: Policy::Always,
            key: Some(ChallengeKey::new(vec![7; 32]).expect("long enough")),
            ..challenge::Settings::off()
        };
    })
    .await;
    let janitor = janitor(&app, settings());
    let challenge = ChallengeServiceClient::new(app.channel.clone())
        .create_challenge(pb::CreateChallengeRequest {})
        .await
        .expect("a challenge")
        .into_inner();
    let number = identity_tests::altcha::solve(&challenge).expect("solvable");
    let solution = identity_tests::altcha::payload(&challenge, number);
    let register = || {
        let mut client = app.client.clone();
        let request = pb::RegisterRequest {
            altcha: solution.clone(),
            ..support::register_request("ada@example.com")
        };
        async move { client.register(request).await }
    };
    register().await.expect("the solution is accepted");
    let expires_at: i64 = challenge
        .salt
        .split_once("?expires=")
        .and_then(|(_, rest)| rest.strip_suffix('&'))
        .and_then(|digits| digits.parse().ok())
        .expect("the expiry in the salt");
    let expires_at = OffsetDateTime::from_unix_timestamp(expires_at).expect("a time");

    assert_deleted_exactly_when_due(
        &app,
        &janitor,
        expires_at + janitor::CHALLENGE_CLOCK_MARGIN,
        "SELECT count(*) AS n FROM challenge_solutions",
        1,
    )
    .await;
    // Its mark is gone, and the solution is still refused: it has expired.
    let replay = register().await.expect_err("refused");
    assert_error(&replay, Code::FailedPrecondition, "CHALLENGE_INVALID");
}

#[tokio::test]
async fn the_server_runs_the_janitor_on_its_interval() {
    let app = TestApp::spawn_with(|settings| {
        settings.janitor.interval = StdDuration::from_millis(50);
    })
    .await;
    app.register("ada@example.com").await.expect("registers");

    app.clock.advance(Duration::days(8));

    identity_tests::wait::until(
        "the server's janitor to delete the account",
        StdDuration::from_secs(30),
        async || (app.count_users().await == 0).then_some(()),
    )
    .await;
}

#[tokio::test]
async fn two_janitors_sweeping_at_once_both_finish_and_delete_each_row_once() {
    let app = TestApp::spawn().await;
    let now = app.now();
    let mut conn = app.conn().await;
    diesel::sql_query(
        "INSERT INTO users (id, email, status, password_hash, display_name, locale,
                            created_at, updated_at)
         SELECT gen_random_uuid(), 'user' || i || '@example.com', 'pending_verification',
                '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA', 'User', 'en', $1, $1
         FROM generate_series(1, 1000) AS i",
    )
    .bind::<Timestamptz, _>(now - Duration::days(8))
    .execute(&mut conn)
    .await
    .expect("users inserted");
    diesel::sql_query(
        "INSERT INTO login_throttle (email_key, failures, last_failed_at, blocked_until)
         SELECT 'user' || i || '@example.com', 3, $1, $1 FROM generate_series(1, 1000) AS i",
    )
    .bind::<Timestamptz, _>(now - Duration::days(2))
    .execute(&mut conn)
    .await
    .expect("throttle rows inserted");
    dead_letters(&app, 1000, now - Duration::days(31)).await;
    let small_batches = janitor::Settings {
        batch_size: 25,
        ..settings()
    };
    let (first, second) = (
        janitor(&app, small_batches.clone()),
        janitor(&app, small_batches),
    );

    let (a, b) = tokio::join!(first.sweep(), second.sweep());

    let (a, b): (Swept, Swept) = (a.expect("first finishes"), b.expect("second finishes"));
    assert_eq!(a.unverified_accounts + b.unverified_accounts, 1000);
    assert_eq!(a.login_throttles + b.login_throttles, 1000);
    assert_eq!(a.dead_letters + b.dead_letters, 1000);
    for table in ["users", "login_throttle", "outbox_dead"] {
        let sql = format!("SELECT count(*) AS n FROM {table}");
        assert_eq!(count(&app, &sql).await, 0, "{table} is empty");
    }
}
