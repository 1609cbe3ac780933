//! The database goes away and comes back while the server keeps running.

mod support;

use std::time::{Duration, Instant};

use identity_tests::pg::{Cluster, TestDb};
use support::{TestApp, assert_error};
use tonic::Code;

#[tokio::test]
async fn with_the_database_stopped_register_fails_fast_and_succeeds_again_after_a_restart() {
    let cluster = Cluster::start().expect("a private PostgreSQL starts");
    let db = TestDb::create_on(&cluster.url())
        .await
        .expect("test database");
    let app = TestApp::spawn_on(db, |_| {}).await;
    app.register("before@example.com")
        .await
        .expect("registers while the database is up");

    cluster.stop().expect("the database stops");
    let started = Instant::now();
    let status = app
        .register("during@example.com")
        .await
        .expect_err("database is down");
    let waited = started.elapsed();

    assert_error(&status, Code::Unavailable, "DATABASE_UNAVAILABLE");
    // The bound is generous: it tells "fails fast" from "hangs", it is not a benchmark.
    assert!(
        waited < Duration::from_secs(5),
        "UNAVAILABLE took {waited:?}"
    );

    cluster.resume().expect("the database restarts");
    assert_eq!(
        app.count_users().await,
        1,
        "nothing was written during the outage"
    );
    app.register("during@example.com")
        .await
        .expect("the same server registers again once the database is back");
    assert_eq!(app.count_users().await, 2);
    assert_eq!(app.count_outbox().await, 2);
}
