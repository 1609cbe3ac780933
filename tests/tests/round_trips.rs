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

/// A domain event costs a Login one statement: the row, the user's event lock and the relay's
/// wake-up are one round trip.
#[tokio::test]
async fn a_domain_event_costs_a_login_one_statement() {
    let counter = StatementCounter::start().await;
    let env = |events: &'static str| {
        [
            ("IDENTITY_RATE_LIMITING", "false"),
            ("IDENTITY_JANITOR_INTERVAL_SECS", "86400"),
            ("IDENTITY_DOMAIN_EVENTS", events),
        ]
    };
    let quiet = Server::start_on(counter.db.clone(), &env("false")).await;
    let publishing = quiet.replica(&env("true")).await;
    quiet.activate("ada@example.com").await;
    let login = async |channel| {
        SessionServiceClient::new(channel)
            .login(pb::LoginRequest {
                email: "ada@example.com".into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("logs in");
    };
    // Each server's first login prepares its statements on its connection.
    login(quiet.channel().await).await;
    login(publishing.channel().await).await;

    let ((), without) = counter
        .during(async || login(quiet.channel().await).await)
        .await;
    let ((), with) = counter
        .during(async || login(publishing.channel().await).await)
        .await;
    println!("a Login without events ran:\n{without}\nwith events:\n{with}");
    assert_eq!(
        with.total(),
        without.total() + 1,
        "a Login that queues one event (user.logged_in) ran\n{with}\nand without events\n{without}"
    );
}

/// A pooled connection handed out a moment ago goes out again without a `SELECT 1` (a round
/// trip saved on every call under load); one that sat idle for a second or more is checked
/// first, so a connection the server dropped meanwhile is found before a call uses it.
#[tokio::test]
async fn the_pool_checks_a_connection_with_a_query_only_after_it_sat_idle() {
    use diesel_async::RunQueryDsl;
    use identity_proto::pg::{Connector, pool};

    let counter = StatementCounter::start().await;
    let connector = Connector::new(&counter.db.url).expect("a valid URL");
    let pool = pool(connector, 1, std::time::Duration::from_secs(5)).expect("a pool");
    let use_once = async || {
        let mut conn = pool.get().await.expect("a connection");
        diesel::sql_query("SELECT now()")
            .execute(&mut conn)
            .await
            .expect("runs");
    };
    use_once().await;
    let checks = |statements: &identity_tests::statements::Statements| {
        statements.0.get("SELECT $1").copied().unwrap_or_default()
    };

    let ((), busy) = counter
        .during_with_checks(async || {
            for _ in 0..5 {
                use_once().await;
            }
        })
        .await;
    assert_eq!(
        checks(&busy),
        0,
        "a connection used a moment ago was checked:\n{busy}"
    );

    // Idle for longer than the pool hands a connection out unchecked.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let ((), idle) = counter.during_with_checks(use_once).await;
    assert_eq!(checks(&idle), 1, "a connection idle for a second:\n{idle}");
}
