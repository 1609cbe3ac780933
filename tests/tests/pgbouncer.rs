//! Both binaries behind a real PgBouncer in transaction pooling mode (the usual pooler in front
//! of managed PostgreSQL, and CloudNativePG's `Pooler`), with `pool_mode=transaction` in their
//! `DATABASE_URL`: sign-up, login, the relay and the janitor work through a server pool smaller
//! than the binaries' own pools, the statement and lock timeouts still hold, and what needs a
//! session of its own (the relay's LISTEN, migrations) is sent to the database directly.

use std::time::Duration;

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use identity_proto::{
    identity::v1::{self as pb, session_service_client::SessionServiceClient},
    pg::{Connector, SessionTimeouts},
};
use identity_tests::{
    outbox::{count, drained},
    pg::{TestDb, admin_url},
    pgbouncer::PgBouncer,
    process, relay,
    server::{PASSWORD, Server, reason, register_request},
    smtp::{SmtpServer, text_part, token_after},
    wait,
};
use tonic::Code;
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(120);

/// What the journeys need of the server: no challenge, limits far above 40 sign-ups from one
/// address (the rate limits' statements still run), room for 40 hashes in the queue, the
/// janitor every second.
const SERVER_ENV: &[(&str, &str)] = &[
    ("IDENTITY_CHALLENGE_POLICY", "off"),
    ("IDENTITY_HASH_QUEUE", "64"),
    (
        "IDENTITY_RATE_LIMITS",
        "register=100000/1s,login=100000/1s,verify_email=100000/1s",
    ),
    ("IDENTITY_JANITOR_INTERVAL_SECS", "1"),
];

/// `db` through `bouncer`, as the binaries are told to reach it.
fn pooled_url(bouncer: &PgBouncer, db: &TestDb) -> String {
    bouncer.url(&db.name, "?pool_mode=transaction")
}

/// Register, the email through the relay and SMTP, VerifyEmail, Login: the access token.
async fn sign_up(server: &Server, smtp: &SmtpServer, email: &str) -> Result<String, String> {
    let step = |what: &'static str| move |e: tonic::Status| format!("{email}: {what}: {e:?}");
    let mut registration = server.registration().await;
    registration
        .register(register_request(email))
        .await
        .map_err(step("Register"))?;
    let mail = smtp.wait_for_message_to(email, WAIT).await;
    let token = token_after(
        &text_part(&mail.data),
        "https://app.example.com/verify?token=",
    );
    registration
        .verify_email(pb::VerifyEmailRequest {
            proof: Some(pb::verify_email_request::Proof::Token(token)),
            password: identity_tests::server::PASSWORD.into(),
        })
        .await
        .map_err(step("VerifyEmail"))?;
    let login = SessionServiceClient::new(server.channel().await)
        .login(pb::LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await
        .map_err(step("Login"))?;
    Ok(login.into_inner().access_token)
}

#[tokio::test]
async fn forty_concurrent_sign_ups_through_pgbouncer_in_transaction_mode_all_succeed() {
    let bouncer = PgBouncer::start(&admin_url(), 5).await;
    let db = TestDb::create_empty().await;
    let url = pooled_url(&bouncer, &db);
    let server = Server::start_through(db, &url, SERVER_ENV).await;
    // Something for the janitor: a challenge solution that expired an hour ago.
    let mut direct = server.db.connect().await;
    direct
        .batch_execute(
            "INSERT INTO challenge_solutions (challenge, expires_at)
             VALUES (sha256('expired'), now() - interval '1 hour')",
        )
        .await
        .expect("the test adds an expired row");
    let smtp = SmtpServer::start();
    // LISTEN needs a session of its own: the relay is given the database's own address for it,
    // and polls only every minute, so the emails arrive because notifications do.
    let _relay = relay::start(
        &url,
        &smtp.url(),
        &[
            ("RELAY_LISTEN_DATABASE_URL", &server.db.url),
            ("RELAY_POLL_INTERVAL_MS", "60000"),
        ],
    )
    .await;

    let journeys = (0..40).map(|i| {
        let (server, smtp) = (&server, &smtp);
        async move { sign_up(server, smtp, &format!("pooled{i}@example.com")).await }
    });
    let outcomes = futures_util::future::join_all(journeys).await;

    let failures: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of 40 journeys failed:\n{}\nserver:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        server.process.output()
    );
    assert!(outcomes.iter().flatten().all(|token| !token.is_empty()));
    drained(&mut direct, WAIT).await;
    wait::until("the janitor to sweep", WAIT, async || {
        let left = count(&mut direct, "SELECT count(*) AS n FROM challenge_solutions").await;
        (left == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_statement_timeout_still_fires_through_pgbouncer() {
    let bouncer = PgBouncer::start(&admin_url(), 2).await;
    let db = TestDb::create_empty().await;
    let url = pooled_url(&bouncer, &db);
    let mut env = SERVER_ENV.to_vec();
    env.extend([
        ("IDENTITY_DB_STATEMENT_TIMEOUT_MS", "500"),
        ("IDENTITY_DB_LOCK_TIMEOUT_MS", "500"),
    ]);
    let server = Server::start_through(db, &url, &env).await;
    // Every insert into users now runs for 30 s without waiting for any lock.
    server
        .db
        .connect()
        .await
        .batch_execute(
            "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$;
             CREATE TRIGGER slow_insert BEFORE INSERT ON users
                 FOR EACH ROW EXECUTE FUNCTION slow_insert();",
        )
        .await
        .expect("the test installs the trigger");

    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        server
            .registration()
            .await
            .register(register_request("slow@example.com")),
    )
    .await
    .expect("Register answers well before the 30 s insert would end");

    let status = answer.expect_err("the insert is cancelled");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "DATABASE_UNAVAILABLE", "{status:?}");
    assert!(status.get_error_details().retry_info().is_some());
}

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    value: String,
}

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Both limits as a pooled connection sees them, and whether a 2 s sleep is cancelled.
async fn limits_seen(conn: &mut diesel_async::AsyncPgConnection) -> (String, String) {
    let statement: Setting =
        diesel::sql_query("SELECT current_setting('statement_timeout') AS value")
            .get_result(conn)
            .await
            .expect("reads statement_timeout");
    let lock: Setting = diesel::sql_query("SELECT current_setting('lock_timeout') AS value")
        .get_result(conn)
        .await
        .expect("reads lock_timeout");
    (statement.value, lock.value)
}

#[tokio::test]
async fn pooled_connections_keep_their_timeouts_in_and_out_of_transactions_through_pgbouncer() {
    let bouncer = PgBouncer::start(&admin_url(), 1).await;
    let db = TestDb::create().await;
    let connector = Connector::new(&pooled_url(&bouncer, &db))
        .expect("the URL parses")
        .with_session_timeouts(SessionTimeouts {
            statement: Duration::from_millis(700),
            lock: Duration::from_millis(300),
        });
    let mut conn = connector
        .connect()
        .await
        .expect("connects through pgbouncer");

    assert_eq!(
        limits_seen(&mut conn).await,
        ("700ms".to_owned(), "300ms".to_owned())
    );
    let in_transaction = conn
        .transaction(async |conn| Ok::<_, diesel::result::Error>(limits_seen(conn).await))
        .await
        .expect("the transaction commits");
    assert_eq!(in_transaction, ("700ms".to_owned(), "300ms".to_owned()));
    // A session that sets nothing shares the one server connection, and sees the defaults.
    let mut bare = Connector::new(&pooled_url(&bouncer, &db))
        .expect("the URL parses")
        .connect()
        .await
        .expect("connects through pgbouncer");
    assert_eq!(
        limits_seen(&mut bare).await,
        ("0".to_owned(), "0".to_owned())
    );

    let slow = diesel::sql_query("SELECT pg_sleep(2)")
        .execute(&mut conn)
        .await
        .expect_err("the statement timeout cancels the sleep");
    match &slow {
        diesel::result::Error::DatabaseError(_, info) => {
            assert_eq!(
                info.sqlstate().map(|state| state.to_string()),
                Some("57014".to_owned()),
                "{slow}"
            );
        }
        other => panic!("not a database error: {other}"),
    }
}

#[tokio::test]
async fn many_pooled_connections_share_two_server_connections_without_statement_clashes() {
    let bouncer = PgBouncer::start(&admin_url(), 2).await;
    let db = TestDb::create().await;
    let connector = Connector::new(&pooled_url(&bouncer, &db))
        .expect("the URL parses")
        .with_session_timeouts(SessionTimeouts::default());
    let pool = identity_proto::pg::pool(connector, 20, Duration::from_secs(30)).expect("a pool");

    let workers = (0..20_i64).map(|worker| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            for i in 0..25_i64 {
                // Statements of several shapes, in and out of transactions, so each client
                // prepares several and each server connection meets many clients' statements.
                let alone: Number = diesel::sql_query("SELECT $1::bigint + $2::bigint AS n")
                    .bind::<BigInt, _>(worker)
                    .bind::<BigInt, _>(i)
                    .get_result(&mut *conn)
                    .await
                    .map_err(|e| format!("worker {worker}, step {i}: {e}"))?;
                let inside: Number = conn
                    .transaction(async |conn| {
                        diesel::sql_query("SELECT $1::bigint * 2 AS n")
                            .bind::<BigInt, _>(alone.n)
                            .execute(conn)
                            .await?;
                        diesel::sql_query("SELECT $1::bigint * 3 AS n")
                            .bind::<BigInt, _>(alone.n)
                            .get_result::<Number>(conn)
                            .await
                    })
                    .await
                    .map_err(|e| format!("worker {worker}, step {i}, transaction: {e}"))?;
                if inside.n != (worker + i) * 3 {
                    return Err(format!("worker {worker}, step {i}: got {}", inside.n));
                }
            }
            Ok::<_, String>(())
        }
    });
    let failures: Vec<String> = futures_util::future::join_all(workers)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn migrate_refuses_a_transaction_pooler_and_names_the_way_out() {
    let bouncer = PgBouncer::start(&admin_url(), 2).await;
    let db = TestDb::create_empty().await;
    let migrate = process::run(
        "identity-server",
        &["migrate"],
        &[("DATABASE_URL", &pooled_url(&bouncer, &db))],
    );
    let log = String::from_utf8_lossy(&migrate.stderr).into_owned()
        + &String::from_utf8_lossy(&migrate.stdout);
    assert!(!migrate.status.success(), "{log}");
    assert!(log.contains("pool_mode=transaction"), "{log}");
    assert!(log.contains("directly"), "{log}");
}

#[tokio::test]
async fn a_relay_with_no_direct_address_polls_through_pgbouncer() {
    let bouncer = PgBouncer::start(&admin_url(), 2).await;
    let db = TestDb::create_empty().await;
    let url = pooled_url(&bouncer, &db);
    let server = Server::start_through(db, &url, SERVER_ENV).await;
    let smtp = SmtpServer::start();
    let relay = relay::start(&url, &smtp.url(), &[("RELAY_POLL_INTERVAL_MS", "200")]).await;

    server.register("polled@example.com").await;

    smtp.wait_for_message_to("polled@example.com", WAIT).await;
    assert!(
        relay.output().contains("RELAY_LISTEN_DATABASE_URL"),
        "the relay says how to be woken at once:\n{}",
        relay.output()
    );
}
