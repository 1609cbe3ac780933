//! Least-privilege database roles, on the built binaries: a migrator that owns the schema (a
//! login role with CREATEROLE, not a superuser) runs `identity-server migrate`; the server and
//! the relay then run as login members of the `identity_server` and `identity_relay` roles the
//! migrations create and grant. The relay's role cannot read users, hashes, sessions or tokens;
//! the server's cannot change the schema; and the whole system works with them.

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use identity_proto::identity::v1::{self as pb, session_service_client::SessionServiceClient};
use identity_tests::{
    nats::{NatsServer, STREAM},
    outbox,
    pg::{TestDb, admin_url},
    process, relay,
    server::{PASSWORD, Server},
    smtp::SmtpServer,
};

const WAIT: Duration = Duration::from_secs(60);

/// `url` with its user replaced by `role` (trust authentication: no password).
fn as_role(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (_, host) = rest.split_once('@').expect("a user in the URL");
    format!("{scheme}://{role}@{host}")
}

async fn admin(url: &str, sql: &str) {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .expect("connects as the admin");
    diesel::sql_query(sql)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The error `sql` meets when run as the URL's role, or `None` if it succeeds.
async fn refusal(url: &str, sql: &str) -> Option<String> {
    let mut conn = AsyncPgConnection::establish(url).await.expect("connects");
    diesel::sql_query(sql)
        .execute(&mut conn)
        .await
        .err()
        .map(|e| e.to_string())
}

#[tokio::test]
async fn the_relay_role_cannot_read_users_and_the_system_runs_with_three_roles() {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (migrator, server_login, relay_login) = (
        format!("migrator_{suffix}"),
        format!("server_{suffix}"),
        format!("relay_{suffix}"),
    );
    // The database belongs to the migrator, which is no superuser.
    let db = TestDb::create_empty().await;
    admin(
        &admin_url(),
        &format!("CREATE ROLE {migrator} LOGIN CREATEROLE"),
    )
    .await;
    admin(
        &admin_url(),
        &format!("ALTER DATABASE {} OWNER TO {migrator}", db.name),
    )
    .await;
    let migrator_db = TestDb {
        url: as_role(&db.url, &migrator),
        name: db.name.clone(),
    };

    // The migrations run as the migrator; then login roles join the roles they created.
    let migrate = process::run(
        "identity-server",
        &["migrate"],
        &[("DATABASE_URL", migrator_db.url.as_str())],
    );
    assert!(
        migrate.status.success(),
        "migrate as the migrator: {migrate:?}"
    );
    admin(
        &admin_url(),
        &format!("CREATE ROLE {server_login} LOGIN IN ROLE identity_server"),
    )
    .await;
    admin(
        &admin_url(),
        &format!("CREATE ROLE {relay_login} LOGIN IN ROLE identity_relay"),
    )
    .await;
    let server_url = as_role(&db.url, &server_login);
    let relay_url = as_role(&db.url, &relay_login);

    // The relay's role reads and settles the outbox, and nothing else.
    for secret in [
        "SELECT password_hash FROM users",
        "SELECT * FROM sessions",
        "SELECT * FROM refresh_tokens",
        "SELECT * FROM verification_secrets",
        "SELECT * FROM password_reset_tokens",
        "INSERT INTO outbox (id, aggregate_type, aggregate_id, kind, payload) \
         VALUES (gen_random_uuid(), 'user', 'u', 'email.verification.v1', '{}')",
    ] {
        let refused = refusal(&relay_url, secret).await;
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("permission denied")),
            "the relay's role ran {secret:?}: {refused:?}"
        );
    }
    assert_eq!(
        refusal(&relay_url, "SELECT count(*) FROM outbox").await,
        None
    );
    // The server's role uses the tables and cannot change them.
    for ddl in [
        "DROP TABLE users",
        "ALTER TABLE users ADD COLUMN x int",
        "CREATE TABLE x (id int)",
        "TRUNCATE outbox",
    ] {
        let refused = refusal(&server_url, ddl).await;
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("permission denied") || e.contains("must be owner")),
            "the server's role ran {ddl:?}: {refused:?}"
        );
    }

    // The whole system, each binary with its own role: sign-up, the email, verification,
    // login, refresh, a password reset, and the events.
    let smtp = SmtpServer::start();
    let nats = NatsServer::start().await;
    let server = Server::start_on(
        migrator_db,
        &[
            ("DATABASE_URL", server_url.as_str()),
            ("IDENTITY_DOMAIN_EVENTS", "true"),
        ],
    )
    .await;
    let nats_url = nats.url();
    let _relay = relay::start(&relay_url, &smtp.url(), &[("NATS_URL", nats_url.as_str())]).await;
    server.register_and_verify(&smtp, "ada@example.com").await;
    let mut sessions = SessionServiceClient::new(server.channel().await);
    let session = sessions
        .login(pb::LoginRequest {
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("logs in")
        .into_inner();
    sessions
        .refresh_session(pb::RefreshSessionRequest {
            refresh_token: session.refresh_token,
        })
        .await
        .expect("refreshes");
    pb::password_reset_service_client::PasswordResetServiceClient::new(server.channel().await)
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: "ada@example.com".into(),
            ..Default::default()
        })
        .await
        .expect("asks for a reset");
    smtp.wait_for_messages(2, WAIT).await;
    assert_eq!(nats.read_all(STREAM, 3, WAIT).await.len(), 3);
    let mut conn = db.connect().await;
    outbox::drained(&mut conn, WAIT).await;

    drop(server);
    drop(_relay);
    admin(
        &admin_url(),
        &format!("DROP DATABASE {} WITH (FORCE)", db.name),
    )
    .await;
    for role in [server_login, relay_login, migrator] {
        admin(&admin_url(), &format!("DROP ROLE {role}")).await;
    }
}
