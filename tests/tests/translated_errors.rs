//! A PostgreSQL server whose messages are in another language (`lc_messages`, common on managed
//! databases outside English locales): the built server still tells a call that timed out or
//! lost its connection (UNAVAILABLE with RetryInfo: retry later) from a bug (INTERNAL), since it
//! reads the error's SQLSTATE, not its text.
//!
//! The clusters answer in German: the `de_DE.UTF-8` locale must exist (`scripts/test` generates
//! it) and PostgreSQL's German catalogue comes with its Debian package.

use std::time::Duration;

use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use identity_tests::{
    outbox::count,
    pg::{Cluster, TestDb},
    server::{Server, register_request},
    wait,
};
use tonic::Code;
use tonic_types::StatusExt;

/// A cluster answering in German.
fn german_cluster() -> Cluster {
    Cluster::start_with("lc_messages = 'de_DE.UTF-8'").unwrap_or_else(|e| {
        panic!(
            "cannot start a cluster with German messages (the de_DE.UTF-8 locale must exist: \
             scripts/test generates it): {e:#}"
        )
    })
}

/// `identity-server` on a new database of `cluster` with `extra_env`, after checking that the
/// database really answers in German.
async fn server_on(cluster: &Cluster, extra_env: &[(&str, &str)]) -> Server {
    let db = TestDb::create_empty_on(&cluster.url())
        .await
        .expect("a database on the German cluster");
    let server = Server::start_on(db, extra_env).await;
    // PostgreSQL's message for a division by zero shows the language it answers in.
    let error = diesel::sql_query("SELECT 1 / 0")
        .execute(&mut server.db.connect().await)
        .await
        .expect_err("a division by zero fails");
    assert!(
        error.to_string().contains("Division durch Null"),
        "the cluster answers in German: {error}"
    );
    server
}

/// Asserts that `answer` is UNAVAILABLE / DATABASE_UNAVAILABLE with RetryInfo.
fn assert_retry_later(answer: Result<tonic::Response<impl std::fmt::Debug>, tonic::Status>) {
    let status = answer.expect_err("the call cannot succeed");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        identity_tests::server::reason(&status),
        "DATABASE_UNAVAILABLE",
        "{status:?}"
    );
    assert!(
        status.get_error_details().retry_info().is_some(),
        "UNAVAILABLE carries RetryInfo: {status:?}"
    );
}

/// Makes every insert into `users` sleep for `seconds` (a statement that runs long without
/// waiting for any lock).
async fn slow_down_sign_ups(server: &Server, seconds: u32) {
    server
        .db
        .connect()
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$;
             CREATE TRIGGER slow_insert BEFORE INSERT ON users
                 FOR EACH ROW EXECUTE FUNCTION slow_insert();"
        ))
        .await
        .expect("the test installs the trigger");
}

#[tokio::test]
async fn a_lock_timeout_reported_in_german_is_unavailable_with_retry_info() {
    let cluster = german_cluster();
    let server = server_on(
        &cluster,
        &[
            ("IDENTITY_DB_STATEMENT_TIMEOUT_MS", "5000"),
            ("IDENTITY_DB_LOCK_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    let mut locker = server.db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("the test takes the lock");

    let answer = server
        .registration()
        .await
        .register(register_request("locked@example.com"))
        .await;

    assert_retry_later(answer);
    assert!(
        server
            .process
            .output()
            .contains("Zeitüberschreitung einer Sperre"),
        "the server saw PostgreSQL's German message:\n{}",
        server.process.output()
    );
}

#[tokio::test]
async fn a_statement_timeout_reported_in_german_is_unavailable_with_retry_info() {
    let cluster = german_cluster();
    let server = server_on(
        &cluster,
        &[
            ("IDENTITY_DB_STATEMENT_TIMEOUT_MS", "500"),
            ("IDENTITY_DB_LOCK_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    slow_down_sign_ups(&server, 30).await;

    let answer = server
        .registration()
        .await
        .register(register_request("slow@example.com"))
        .await;

    assert_retry_later(answer);
}

#[tokio::test]
async fn a_connection_the_administrator_terminates_mid_statement_is_unavailable_in_german_too() {
    let cluster = german_cluster();
    let server = server_on(&cluster, &[]).await;
    slow_down_sign_ups(&server, 30).await;

    let mut client = server.registration().await;
    let call = tokio::spawn(async move {
        client
            .register(register_request("terminated@example.com"))
            .await
    });
    let mut admin = server.db.connect().await;
    wait::until(
        "the sign-up's insert to be running",
        Duration::from_secs(30),
        async || {
            let terminated = count(
                &mut admin,
                "SELECT count(*) AS n FROM pg_stat_activity, pg_terminate_backend(pid)
                  WHERE datname = current_database() AND query LIKE 'INSERT INTO \"users\"%'
                    AND state = 'active'",
            )
            .await;
            (terminated > 0).then_some(())
        },
    )
    .await;

    assert_retry_later(call.await.expect("the call task ends"));
}
