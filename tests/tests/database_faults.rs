//! The built server when the database misbehaves around it: a table lock nobody releases, and
//! several replicas migrating one empty database at once.

use std::time::Duration;

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use identity_tests::{
    outbox::count,
    pg::TestDb,
    process::{self, Process},
    relay,
    server::{CODE_KEY, Server, keygen_for, register_request},
    wait,
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Rows in `users` and in `outbox` that mention `email`.
async fn rows_for(db: &TestDb, email: &str) -> (i64, i64) {
    let mut conn = db.connect().await;
    let users: Count = diesel::sql_query("SELECT count(*) AS n FROM users WHERE email = $1")
        .bind::<Text, _>(email)
        .get_result(&mut conn)
        .await
        .expect("users is readable");
    let outbox: Count =
        diesel::sql_query("SELECT count(*) AS n FROM outbox WHERE payload->>'recipient' = $1")
            .bind::<Text, _>(email)
            .get_result(&mut conn)
            .await
            .expect("outbox is readable");
    (users.n, outbox.n)
}

#[tokio::test]
async fn register_behind_a_stuck_table_lock_answers_unavailable_with_retry_info_and_writes_nothing()
{
    let server = Server::start(&[]).await;
    let mut locker = server.db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("the test takes the lock");

    let mut client = server.registration().await;
    let answer = tokio::time::timeout(
        Duration::from_secs(6),
        client.register(register_request("locked@example.com")),
    )
    .await
    .expect("Register answers within 6 s while the users table is locked");

    let status = answer.expect_err("Register cannot succeed behind the lock");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.get_error_details().retry_info().is_some(),
        "UNAVAILABLE carries RetryInfo: {status:?}"
    );
    locker
        .batch_execute("ROLLBACK")
        .await
        .expect("the test releases the lock");
    assert_eq!(
        rows_for(&server.db, "locked@example.com").await,
        (0, 0),
        "nothing was written"
    );
    server.register("locked@example.com").await;
    assert_eq!(rows_for(&server.db, "locked@example.com").await, (1, 1));
}

#[tokio::test]
async fn three_replicas_started_at_once_with_serve_migrate_on_an_empty_database_all_serve() {
    let db = TestDb::create_empty().await;
    let keys = keygen_for(&db).display().to_string();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("IDENTITY_GRPC_ADDR", "127.0.0.1:0"),
        ("IDENTITY_CODE_HMAC_KEY", CODE_KEY),
        (
            "IDENTITY_CHALLENGE_HMAC_KEY",
            identity_tests::server::CHALLENGE_KEY,
        ),
        ("IDENTITY_KEYS_DIR", keys.as_str()),
    ];

    // Line the three up at the worst moment: the test starts creating diesel's bookkeeping
    // table and does not commit, so the replica that takes the migration lock first waits on it
    // and the other two wait for the migration lock (polling it, so that they hold no
    // transaction a `CREATE INDEX CONCURRENTLY` would wait for); once all three wait, the test
    // rolls back and they go at once.
    let mut gate = db.connect().await;
    gate.batch_execute("BEGIN; CREATE TABLE __diesel_schema_migrations (version text)")
        .await
        .expect("the test opens the gate");
    let mut replicas: Vec<Process> = (0..3)
        .map(|_| Process::spawn("identity-server", &["serve", "--migrate"], &env))
        .collect();
    let mut observer = db.connect().await;
    wait::until(
        "one replica waiting on the gate, two for the migration lock",
        Duration::from_secs(30),
        async || {
            let waiting = count(
                &mut observer,
                "SELECT count(*) AS n FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await;
            let polling = replicas
                .iter()
                .filter(|r| {
                    r.output()
                        .contains("holds the migration lock; waiting for it")
                })
                .count();
            (waiting >= 1 && polling >= 2).then_some(())
        },
    )
    .await;
    gate.batch_execute("ROLLBACK")
        .await
        .expect("the test closes the gate");

    for replica in &mut replicas {
        let line = replica
            .wait_for_line("identity-server listening", Duration::from_secs(60))
            .await;
        let addr = process::field(&line, "grpc.addr").expect("the address is logged");
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect()
            .await
            .expect("the replica accepts connections");
        let mut health = HealthClient::new(channel);
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving);
    }
}

#[test]
fn help_documents_the_database_timeouts_of_both_binaries() {
    let server = process::run("identity-server", &["serve", "--help"], &[]);
    let relay = process::run("outbox-relay", &["serve", "--help"], &[]);
    let server = String::from_utf8_lossy(&server.stdout);
    let relay = String::from_utf8_lossy(&relay.stdout);

    for documented in [
        "IDENTITY_DB_STATEMENT_TIMEOUT_MS",
        "IDENTITY_DB_LOCK_TIMEOUT_MS",
        "statement_timeout",
        "lock_timeout",
    ] {
        assert!(server.contains(documented), "{documented}:\n{server}");
    }
    for documented in ["RELAY_DB_STATEMENT_TIMEOUT_MS", "RELAY_DB_LOCK_TIMEOUT_MS"] {
        assert!(relay.contains(documented), "{documented}:\n{relay}");
    }
}

#[test]
fn a_lock_timeout_above_the_statement_timeout_is_refused_at_start_up() {
    let keys = std::env::temp_dir().join("identity-keys-never-read");
    let keys = keys.display().to_string();
    let server = process::run(
        "identity-server",
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://127.0.0.1:1/identity"),
            ("IDENTITY_CODE_HMAC_KEY", CODE_KEY),
            (
                "IDENTITY_CHALLENGE_HMAC_KEY",
                identity_tests::server::CHALLENGE_KEY,
            ),
            ("IDENTITY_KEYS_DIR", keys.as_str()),
            ("IDENTITY_DB_STATEMENT_TIMEOUT_MS", "1000"),
            ("IDENTITY_DB_LOCK_TIMEOUT_MS", "3000"),
        ],
    );
    let mut relay_env = relay::configured_env("postgres://127.0.0.1:1/identity");
    relay_env.extend([
        ("RELAY_DB_STATEMENT_TIMEOUT_MS", "1000"),
        ("RELAY_DB_LOCK_TIMEOUT_MS", "3000"),
    ]);
    let relay = process::run("outbox-relay", &["serve"], &relay_env);

    for (name, output) in [("identity-server", server), ("outbox-relay", relay)] {
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: {log}");
        assert!(
            log.contains("lock timeout (3000 ms) cannot exceed the statement timeout (1000 ms)"),
            "{name}: {log}"
        );
    }
}
