//! The SQL statements a call makes the server run, counted by PostgreSQL itself
//! (`pg_stat_statements`, on a throwaway cluster of the test's own), so that a test can assert
//! that two paths a caller must not tell apart run exactly the same statements.

use std::collections::BTreeMap;

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::pg::{Cluster, TestDb};

/// A throwaway PostgreSQL server that counts every statement, and one migrated database on it.
#[derive(Debug)]
pub struct StatementCounter {
    /// The database a server under test should use.
    pub db: TestDb,
    _cluster: Cluster,
}

/// Statements run, by their normalized text (constants replaced by `$n`), with how many times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statements(pub BTreeMap<String, i64>);

impl Statements {
    /// How many statements ran in all.
    pub fn total(&self) -> i64 {
        self.0.values().sum()
    }
}

impl std::fmt::Display for Statements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (query, calls) in &self.0 {
            writeln!(
                f,
                "{calls:>4} × {}",
                query.split_whitespace().collect::<Vec<_>>().join(" ")
            )?;
        }
        Ok(())
    }
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    queryid: i64,
    #[diesel(sql_type = Text)]
    query: String,
    #[diesel(sql_type = BigInt)]
    calls: i64,
}

impl StatementCounter {
    /// Starts a cluster with `pg_stat_statements` loaded and creates a migrated database on it.
    pub async fn start() -> Self {
        let cluster = Cluster::start().expect("a throwaway cluster starts");
        let mut admin = AsyncPgConnection::establish(&cluster.url())
            .await
            .expect("connects to the throwaway cluster");
        diesel::sql_query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            .execute(&mut admin)
            .await
            .expect("configures pg_stat_statements");
        drop(admin);
        cluster.stop().expect("the cluster stops");
        cluster.resume().expect("the cluster starts again");
        let db = TestDb::create_on(&cluster.url())
            .await
            .expect("a database on the throwaway cluster");
        let mut conn = db.connect().await;
        diesel::sql_query("CREATE EXTENSION pg_stat_statements")
            .execute(&mut conn)
            .await
            .expect("creates the extension");
        Self {
            db,
            _cluster: cluster,
        }
    }

    /// The statements run against the database while `call` runs (by anyone: keep background
    /// work out of the way). Utility statements count too; ending a savepoint is one statement
    /// whether it is released or rolled back. Left out: the readiness probe's `SELECT 1`, and
    /// the check PostgreSQL itself runs at commit for a deferred foreign key (a path whose
    /// writes were rolled back has none to check; the check is one index probe).
    pub async fn during<T>(&self, call: impl AsyncFnOnce() -> T) -> (T, Statements) {
        self.counted(call, |query| {
            query != "SELECT $1" && !is_foreign_key_check(query)
        })
        .await
    }

    /// As [`StatementCounter::during`], with every `SELECT 1` counted too (a pool's check of a
    /// connection): for a test whose server runs no readiness probe meanwhile.
    pub async fn during_with_checks<T>(&self, call: impl AsyncFnOnce() -> T) -> (T, Statements) {
        self.counted(call, |query| !is_foreign_key_check(query))
            .await
    }

    /// The statements `call` ran that `keep` keeps, by their normalized text.
    async fn counted<T>(
        &self,
        call: impl AsyncFnOnce() -> T,
        keep: impl Fn(&str) -> bool,
    ) -> (T, Statements) {
        // The counts are read before and after rather than reset: an entry made again after a
        // reset by a statement the server had prepared before it would keep its constants,
        // and read as another statement than the same one prepared after the reset.
        let mut conn = self.db.connect().await;
        let before = Self::counts(&mut conn).await;
        let outcome = call().await;
        let after = Self::counts(&mut conn).await;
        let mut statements = BTreeMap::new();
        for (queryid, (query, calls)) in after {
            let calls = calls - before.get(&queryid).map_or(0, |(_, calls)| *calls);
            let query = normalize(&query);
            if calls > 0 && keep(&query) {
                *statements.entry(query).or_default() += calls;
            }
        }
        (outcome, Statements(statements))
    }

    /// The shared buffers (blocks hit or read) the statements run against the database while
    /// `call` runs touched in all: a measure of their work that does not depend on timing.
    pub async fn blocks_during<T>(&self, call: impl AsyncFnOnce() -> T) -> (T, i64) {
        #[derive(QueryableByName)]
        struct Blocks {
            #[diesel(sql_type = BigInt)]
            blocks: i64,
        }
        async fn blocks(conn: &mut AsyncPgConnection) -> i64 {
            diesel::sql_query(
                "SELECT coalesce(sum(shared_blks_hit + shared_blks_read), 0)::bigint AS blocks
                   FROM pg_stat_statements
                  WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND query NOT LIKE '%pg_stat_statements%'",
            )
            .get_result::<Blocks>(conn)
            .await
            .expect("reads the blocks")
            .blocks
        }
        let mut conn = self.db.connect().await;
        let before = blocks(&mut conn).await;
        let outcome = call().await;
        let after = blocks(&mut conn).await;
        (outcome, after - before)
    }

    /// Every statement's text and calls so far, by its id.
    async fn counts(conn: &mut AsyncPgConnection) -> BTreeMap<i64, (String, i64)> {
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT queryid, min(query) AS query, sum(calls)::bigint AS calls
               FROM pg_stat_statements
              WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND query NOT LIKE '%pg_stat_statements%'
              GROUP BY queryid",
        )
        .load(conn)
        .await
        .expect("reads the counts");
        rows.into_iter()
            .map(|row| (row.queryid, (row.query, row.calls)))
            .collect()
    }
}

/// Whether `query` is PostgreSQL's own referential-integrity check
/// (`SELECT 1 FROM ONLY "public"."users" x WHERE "id" OPERATOR(pg_catalog.=) $1 FOR KEY SHARE OF x`,
/// its constant normalized to `$2`).
fn is_foreign_key_check(query: &str) -> bool {
    query.starts_with("SELECT ")
        && query.contains(" FROM ONLY ")
        && query.ends_with("FOR KEY SHARE OF x")
}

fn normalize(query: &str) -> String {
    let query = query.trim();
    for end in ["RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT "] {
        if let Some(name) = query.strip_prefix(end) {
            return format!("(end of) SAVEPOINT {name}");
        }
    }
    query.to_owned()
}
