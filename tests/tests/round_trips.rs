//! What one RefreshSession costs the database (issue 16, point 16): the statements it runs,
//! each a round trip, counted by PostgreSQL itself through the built server. A refresh is the
//! most frequent call a client makes (every few minutes per signed-in user), so each statement
//! it saves is one less round trip for every user.

use identity_proto::identity::v1::{self as pb, session_service_client::SessionServiceClient};
use identity_tests::{
    server::{PASSWORD, Server},
    statements::StatementCounter,
};

/// Statements per RefreshSession, besides the pool's check of the connection it hands out:
/// BEGIN, the statement that locks the session and reads the presented token, the one that
/// rotates (retires the session's current tokens, moves it to the next generation and stores
/// the new token), and COMMIT.
const STATEMENTS_PER_REFRESH: i64 = 4;

#[tokio::test]
async fn a_refresh_session_runs_four_statements() {
    const REFRESHES: i64 = 10;
    let counter = StatementCounter::start().await;
    let server = Server::start_on(
        counter.db.clone(),
        &[
            ("IDENTITY_RATE_LIMITING", "false"),
            ("IDENTITY_JANITOR_INTERVAL_SECS", "86400"),
        ],
    )
    .await;
    server.activate("ada@example.com").await;
    let mut sessions = SessionServiceClient::new(server.channel().await);
    let mut refresh_token = sessions
        .login(pb::LoginRequest {
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("logs in")
        .into_inner()
        .refresh_token;

    let ((), statements) = counter
        .during(async || {
            for _ in 0..REFRESHES {
                refresh_token = sessions
                    .refresh_session(pb::RefreshSessionRequest {
                        refresh_token: refresh_token.clone(),
                    })
                    .await
                    .expect("refreshes")
                    .into_inner()
                    .refresh_token;
            }
        })
        .await;
    println!("{REFRESHES} RefreshSession calls ran:\n{statements}");
    assert_eq!(
        statements.total(),
        STATEMENTS_PER_REFRESH * REFRESHES,
        "statements per RefreshSession, besides the pool's connection check:\n{statements}"
    );
}
