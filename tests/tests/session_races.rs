//! A login that checks the password while a password reset commits (issue 16, point 4): the
//! session it starts must not survive the reset. Through the built server, with one slow hashing
//! worker so that the calls interleave exactly as a race would have them.

use std::time::Duration;

use diesel::{QueryableByName, sql_types::Text};
use diesel_async::RunQueryDsl;
use identity_proto::identity::v1::{
    self as pb, password_reset_service_client::PasswordResetServiceClient,
    session_service_client::SessionServiceClient,
};
use identity_tests::{
    http::{sample, scrape},
    pg::free_port,
    server::{PASSWORD, Server},
    wait,
};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(60);
const NEW_PASSWORD: &str = "marmalade-lantern-quartz-9";

/// The reset token of the newest reset email in the outbox for `email`.
async fn reset_token(server: &Server, email: &str) -> String {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        token: String,
    }
    let mut conn = server.db.connect().await;
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT payload->>'token' AS token FROM outbox
          WHERE kind = 'email.password_reset.v1' AND payload->>'recipient' = $1
          ORDER BY id DESC LIMIT 1",
    )
    .bind::<Text, _>(email)
    .load(&mut conn)
    .await
    .expect("reads the outbox");
    rows.into_iter().next().expect("a reset email").token
}

#[tokio::test]
async fn a_login_whose_password_check_straddles_a_reset_gets_no_session_that_outlives_it() {
    let metrics_addr = format!("127.0.0.1:{}", free_port().expect("a free port"));
    // One hashing worker, and hashes slow enough (about a second) that each call below is seen
    // waiting for it.
    let server = Server::start(&[
        ("IDENTITY_METRICS_ADDR", metrics_addr.as_str()),
        ("IDENTITY_HASH_WORKERS", "1"),
        ("IDENTITY_ARGON2_M_KIB", "65536"),
        ("IDENTITY_ARGON2_T", "16"),
        ("IDENTITY_RATE_LIMITING", "false"),
    ])
    .await;
    let email = "ada@example.com";
    server.activate(email).await;
    let channel = server.channel().await;
    PasswordResetServiceClient::new(channel.clone())
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: email.into(),
            ..Default::default()
        })
        .await
        .expect("asks for a reset");
    let reset_token = reset_token(&server, email).await;

    let jobs_taken = async || {
        sample(
            &scrape(&metrics_addr).await,
            "identity_password_hash_wait_seconds_count",
        )
        .unwrap_or_default()
    };
    let queued = async || {
        sample(
            &scrape(&metrics_addr).await,
            "identity_password_hash_queue_depth",
        )
        .unwrap_or_default()
    };
    let before = jobs_taken().await;

    // The reset hashes the new password on the only worker...
    let reset = tokio::spawn({
        let channel = channel.clone();
        async move {
            PasswordResetServiceClient::new(channel)
                .reset_password(pb::ResetPasswordRequest {
                    token: reset_token,
                    new_password: NEW_PASSWORD.into(),
                })
                .await
        }
    });
    wait::until("the reset's hash to start", WAIT, async || {
        (jobs_taken().await > before).then_some(())
    })
    .await;
    // ...while a login reads the old hash and waits for the worker to check the old password.
    let login = tokio::spawn({
        let channel = channel.clone();
        async move {
            SessionServiceClient::new(channel)
                .login(pb::LoginRequest {
                    email: email.into(),
                    password: PASSWORD.into(),
                })
                .await
        }
    });
    wait::until(
        "the login's check to wait for the worker",
        WAIT,
        async || (queued().await >= 1.0).then_some(()),
    )
    .await;
    // The reset commits as soon as its hash is done; the login's check of the old password
    // succeeds after that.
    reset
        .await
        .expect("the reset task")
        .expect("the password is reset");
    let login = login.await.expect("the login task");

    match login {
        Err(status) => assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "a login with the replaced password is refused as invalid: {status:?}"
        ),
        Ok(session) => {
            let refreshed = SessionServiceClient::new(channel.clone())
                .refresh_session(pb::RefreshSessionRequest {
                    refresh_token: session.into_inner().refresh_token,
                })
                .await;
            assert!(
                refreshed.is_err(),
                "the session a login started with the old password outlives the reset"
            );
        }
    }
}
