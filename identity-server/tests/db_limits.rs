//! The pool's connections run under the configured statement and lock timeouts, and a statement
//! that hits one is reported as the database being unavailable (retry later), not as a bug.

use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use identity_proto::pg::SessionTimeouts;
use identity_server::db::{self, StoreError};
use identity_tests::pg::TestDb;
use secrecy::SecretString;

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    value: String,
}

fn pool(db: &TestDb, session: SessionTimeouts) -> db::Pool {
    db::pool(&db::PoolConfig {
        url: SecretString::from(db.url.clone()),
        max_size: 2,
        timeout: Duration::from_secs(5),
        session,
    })
    .expect("a pool")
}

#[tokio::test]
async fn pooled_connections_carry_the_configured_statement_and_lock_timeouts() {
    let db = TestDb::create().await;
    let pool = pool(
        &db,
        SessionTimeouts {
            statement: Duration::from_millis(4321),
            lock: Duration::from_millis(1234),
        },
    );
    let mut conn = pool.get().await.expect("a connection");

    let mut show = async |name: &str| {
        diesel::sql_query(format!("SELECT current_setting('{name}') AS value"))
            .get_result::<Setting>(&mut *conn)
            .await
            .expect("readable")
            .value
    };

    assert_eq!(show("statement_timeout").await, "4321ms");
    assert_eq!(show("lock_timeout").await, "1234ms");
}

#[tokio::test]
async fn a_statement_past_the_statement_timeout_is_cancelled_and_reported_unavailable() {
    let db = TestDb::create().await;
    let pool = pool(
        &db,
        SessionTimeouts {
            statement: Duration::from_millis(200),
            lock: Duration::from_millis(100),
        },
    );
    let mut conn = pool.get().await.expect("a connection");

    let error = tokio::time::timeout(
        Duration::from_secs(5),
        diesel::sql_query("SELECT pg_sleep(30)").execute(&mut conn),
    )
    .await
    .expect("cancelled by the server long before the hang guard")
    .expect_err("the statement cannot finish");

    assert!(
        matches!(StoreError::from(error), StoreError::Unavailable(_)),
        "a statement timeout means retry later"
    );
}
