//! An upgrade that does not block production (issue 16, point 13): `identity-server migrate`
//! from the previous release's schema, on a database of 300,000 users with a session each and
//! 100,000 queued events, while logins keep coming. Every login succeeds, and none waits as long
//! as the lock timeout: index changes on big tables are built `CONCURRENTLY` (outside a
//! transaction, `metadata.toml`), and what takes a lock takes it briefly.
//!
//! The previous release's replicas are stood in for by this release's binary, serving the old
//! schema: the test applies the previous release's migrations itself, lets the server start by
//! marking this release's as applied for a moment, then unmarks them and migrates. (Login reads
//! and writes nothing this release's migrations add.)

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use identity_proto::identity::v1::{self as pb, session_service_client::SessionServiceClient};
use identity_tests::{pg::TestDb, process, server::Server};
use tokio::task::JoinSet;

/// The first migration of this release: every one from it on is the upgrade under test.
const THIS_RELEASE: &str = "2026-12-07";
const USERS: i64 = 300_000;
const PASSWORD: &str = "upgrade-under-load-password-7";
/// The server's lock timeout (its default).
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The migration directories, oldest first.
fn migrations() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("migrations/ is readable")
        .map(|entry| entry.expect("a migration directory").path())
        .filter(|path| path.join("up.sql").exists())
        .collect();
    dirs.sort();
    dirs
}

/// A migration's version as diesel records it (`2026-11-21-000001_x` → `20261121000001`).
fn version(dir: &std::path::Path) -> String {
    let name = dir.file_name().expect("a name").to_string_lossy();
    name.split('_').next().expect("a version").replace('-', "")
}

fn is_this_release(dir: &std::path::Path) -> bool {
    dir.file_name()
        .is_some_and(|name| name.to_string_lossy().as_ref() >= THIS_RELEASE)
}

/// The PHC string of [`PASSWORD`] with the cheap parameters the server is given.
fn password_hash() -> String {
    let params = Params::new(64, 1, 1, None).expect("valid parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(PASSWORD.as_bytes())
        .expect("hashes")
        .to_string()
}

#[tokio::test]
async fn migrating_from_the_previous_release_under_login_load_fails_and_blocks_no_login() {
    let db = TestDb::create_empty().await;
    let mut conn = db.connect().await;
    conn.batch_execute(
        "CREATE TABLE __diesel_schema_migrations (
             version varchar(50) PRIMARY KEY NOT NULL,
             run_on timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    )
    .await
    .expect("creates diesel's table of applied migrations");
    let (previous, upgrade): (Vec<_>, Vec<_>) = migrations()
        .into_iter()
        .partition(|dir| !is_this_release(dir));
    assert!(!upgrade.is_empty(), "this release has migrations");
    for dir in &previous {
        let sql = std::fs::read_to_string(dir.join("up.sql")).expect("up.sql is readable");
        conn.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        conn.batch_execute(&format!(
            "INSERT INTO __diesel_schema_migrations (version) VALUES ('{}')",
            version(dir)
        ))
        .await
        .expect("records the migration");
    }

    // The previous release's data: users with a live session each, and a backlog of events.
    let seed = format!(
        "INSERT INTO users (id, email, status, password_hash, display_name, locale, created_at,
                            updated_at, verified_at)
         SELECT gen_random_uuid(), 'user' || i || '@example.com', 'active', '{hash}', 'User',
                'en', now(), now(), now()
           FROM generate_series(1, {USERS}) AS i;
         INSERT INTO sessions (id, user_id, created_at, expires_at)
         SELECT gen_random_uuid(), id, now(), now() + interval '30 days' FROM users;
         INSERT INTO refresh_tokens (token_hash, session_id, created_at)
         SELECT sha256(id::text::bytea), id, now() FROM sessions;
         INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload, created_at)
         SELECT gen_random_uuid(), 'user', 'u' || (i % 5000), 'identity.user.registered.v1',
                '{{}}', now() - make_interval(secs => i)
           FROM generate_series(1, 100000) AS i;
         ANALYZE",
        hash = password_hash()
    );
    conn.batch_execute(&seed).await.expect("seeds the data");

    // The server starts only on a migrated database: mark the upgrade applied while it starts.
    let versions: Vec<String> = upgrade.iter().map(|dir| version(dir)).collect();
    let listed = versions
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(", ");
    conn.batch_execute(&format!(
        "INSERT INTO __diesel_schema_migrations (version) SELECT unnest(ARRAY[{listed}])"
    ))
    .await
    .expect("marks the upgrade applied");
    let server = Server::serve_as_is(
        db.clone(),
        &[
            ("IDENTITY_RATE_LIMITING", "false"),
            ("IDENTITY_ARGON2_M_KIB", "64"),
            ("IDENTITY_ARGON2_T", "1"),
        ],
    )
    .await;
    conn.batch_execute(&format!(
        "DELETE FROM __diesel_schema_migrations WHERE version IN ({listed})"
    ))
    .await
    .expect("unmarks the upgrade");

    // Logins by 8 callers, over and over, until the migration is done.
    let migrating = Arc::new(AtomicBool::new(true));
    let mut callers = JoinSet::new();
    for caller in 0..8_i64 {
        let channel = server.channel().await;
        let migrating = Arc::clone(&migrating);
        callers.spawn(async move {
            let mut client = SessionServiceClient::new(channel);
            let mut outcomes = Vec::new();
            let mut i = caller;
            // At least a few calls each, however fast the migration.
            while migrating.load(Ordering::Relaxed) || outcomes.len() < 5 {
                let started = Instant::now();
                let result = client
                    .login(pb::LoginRequest {
                        email: format!("user{}@example.com", 1 + i * 7919 % USERS),
                        password: PASSWORD.into(),
                    })
                    .await
                    .map(drop);
                outcomes.push((started.elapsed(), result));
                i += 8;
            }
            outcomes
        });
    }
    let url = db.url.clone();
    let started = Instant::now();
    let migrate = tokio::task::spawn_blocking(move || {
        process::run("identity-server", &["migrate"], &[("DATABASE_URL", &url)])
    })
    .await
    .expect("the migrate task");
    let migration_took = started.elapsed();
    migrating.store(false, Ordering::Relaxed);
    let outcomes: Vec<_> = callers.join_all().await.into_iter().flatten().collect();

    assert!(migrate.status.success(), "migrate failed: {migrate:?}");
    let applied: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "SELECT count(*) FROM __diesel_schema_migrations",
    )
    .get_result(&mut conn)
    .await
    .expect("counts the applied migrations");
    assert_eq!(
        applied,
        i64::try_from(previous.len() + upgrade.len()).expect("a few"),
        "every migration is applied"
    );
    let failed: Vec<_> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
    let slowest = outcomes
        .iter()
        .map(|(took, _)| *took)
        .max()
        .unwrap_or_default();
    println!(
        "{} migrations applied in {:.2} s under {} logins; slowest login {:.0} ms; {} failed",
        upgrade.len(),
        migration_took.as_secs_f64(),
        outcomes.len(),
        slowest.as_secs_f64() * 1000.0,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "logins failed during the upgrade: {failed:?}"
    );
    assert!(
        slowest < LOCK_TIMEOUT,
        "a login took {slowest:?} during the upgrade, as long as the lock timeout"
    );
}
