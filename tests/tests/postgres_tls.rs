//! Both binaries against a PostgreSQL that, over TCP, accepts TLS connections only (`hostssl` in
//! pg_hba.conf, as managed PostgreSQL services do), with a CA and server certificate the test
//! makes. `sslmode` and `sslrootcert` in `DATABASE_URL` follow libpq.

mod support;

use std::{path::Path, time::Duration};

use identity_tests::{
    pg::{Cluster, TestDb, with_database},
    process, relay,
    server::Server,
    smtp::SmtpServer,
};
use support::TestCa;

/// Never needed (the test cluster trusts its users), so it must never be printed either.
const PASSWORD: &str = "pg-password-never-printed";

/// A TLS-only cluster whose certificate `ca` signed for `names`, with an empty database, and
/// the right and a wrong CA certificate as files.
struct TlsDb {
    cluster: Cluster,
    db: TestDb,
    ca: TestCa,
    wrong_ca: TestCa,
}

impl TlsDb {
    async fn start(names: &[&str]) -> Self {
        let ca = TestCa::new();
        let cluster =
            Cluster::start_tls(&ca.server_tls(names)).expect("a TLS-only PostgreSQL starts");
        let db = TestDb::create_empty_on(&cluster.socket_url())
            .await
            .expect("an empty database");
        Self {
            cluster,
            db,
            ca,
            wrong_ca: TestCa::new(),
        }
    }

    /// The CA that signed the server's certificate, as a PEM file.
    fn ca_file(&self) -> &Path {
        self.ca.ca_file()
    }

    /// Another CA's certificate, as a PEM file.
    fn wrong_ca_file(&self) -> &Path {
        self.wrong_ca.ca_file()
    }

    /// The database's URL over TCP, with a password, and `query` (e.g. "sslmode=require").
    fn url(&self, query: &str) -> String {
        let base = with_database(
            &format!(
                "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
                self.cluster.port()
            ),
            &self.db.name,
        );
        if query.is_empty() {
            base
        } else {
            format!("{base}?{query}")
        }
    }

    fn verify_full_url(&self) -> String {
        self.url(&format!(
            "sslmode=verify-full&sslrootcert={}",
            self.ca_file().display()
        ))
    }

    /// This database as a test server sees it: reached over TCP with `url`.
    fn test_db(&self, url: String) -> TestDb {
        TestDb {
            url,
            name: self.db.name.clone(),
        }
    }
}

fn migrate(url: &str) -> std::process::Output {
    process::run("identity-server", &["migrate"], &[("DATABASE_URL", url)])
}

fn printed(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn migrate_with_verify_full_and_the_right_ca_succeeds_on_a_tls_only_server() {
    let pg = TlsDb::start(&["localhost", "127.0.0.1"]).await;

    let output = migrate(&pg.verify_full_url());

    assert!(output.status.success(), "{}", printed(&output));
    assert!(
        printed(&output).contains("migrations applied"),
        "{}",
        printed(&output)
    );
}

#[tokio::test]
async fn every_sslmode_that_allows_tls_reaches_a_tls_only_server() {
    let pg = TlsDb::start(&["localhost", "127.0.0.1"]).await;
    let ca = pg.ca_file().display();

    for query in [
        String::new(), // no sslmode: prefer, as libpq
        "sslmode=prefer".into(),
        "sslmode=require".into(),
        format!("sslmode=require&sslrootcert={ca}"),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        format!("sslmode=verify-full&sslrootcert={ca}"),
    ] {
        let output = migrate(&pg.url(&query));
        assert!(
            output.status.success(),
            "with {query:?}: {}",
            printed(&output)
        );
    }
}

#[tokio::test]
async fn migrate_with_a_wrong_ca_fails_with_a_certificate_error_that_hides_the_password() {
    let pg = TlsDb::start(&["localhost", "127.0.0.1"]).await;

    for mode in ["verify-full", "verify-ca", "require"] {
        let output = migrate(&pg.url(&format!(
            "sslmode={mode}&sslrootcert={}",
            pg.wrong_ca_file().display()
        )));

        let log = printed(&output);
        assert!(!output.status.success(), "{mode} with a wrong CA: {log}");
        assert!(
            log.contains("not signed by a CA in sslrootcert"),
            "{mode}: {log}"
        );
        assert!(!log.contains(PASSWORD), "{mode}: {log}");
    }
}

#[tokio::test]
async fn sslmode_disable_is_refused_by_a_tls_only_server() {
    let pg = TlsDb::start(&["localhost", "127.0.0.1"]).await;

    let output = migrate(&pg.url("sslmode=disable"));

    let log = printed(&output);
    assert!(!output.status.success(), "{log}");
    assert!(log.contains("no encryption"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
}

#[tokio::test]
async fn verify_ca_accepts_a_certificate_for_another_host_name_and_verify_full_refuses_it() {
    let pg = TlsDb::start(&["db.internal.example"]).await;
    let ca = pg.ca_file().display();

    let verify_ca = migrate(&pg.url(&format!("sslmode=verify-ca&sslrootcert={ca}")));
    let verify_full = migrate(&pg.url(&format!("sslmode=verify-full&sslrootcert={ca}")));

    assert!(verify_ca.status.success(), "{}", printed(&verify_ca));
    assert!(!verify_full.status.success(), "{}", printed(&verify_full));
    assert!(
        printed(&verify_full).contains("certificate"),
        "{}",
        printed(&verify_full)
    );
}

#[tokio::test]
async fn serve_over_verify_full_comes_up_and_registers_a_user() {
    let pg = TlsDb::start(&["localhost", "127.0.0.1"]).await;

    let server = Server::start_on(pg.test_db(pg.verify_full_url()), &[]).await;
    server.register("tls@example.com").await;

    assert!(!server.process.output().contains(PASSWORD));
}

#[tokio::test]
async fn the_relay_listens_and_delivers_over_verify_full() {
    let pg = TlsDb::start(&["localhost", "127.0.0.1"]).await;
    let url = pg.verify_full_url();
    let server = Server::start_on(pg.test_db(url.clone()), &[]).await;
    let smtp = SmtpServer::start();
    // Polling every ten minutes: an email that arrives sooner was announced by NOTIFY, which
    // the relay hears on its LISTEN connection.
    let mut relay = relay::start(&url, &smtp.url(), &[("RELAY_POLL_INTERVAL_MS", "600000")]).await;
    relay
        .wait_for_line(
            "listening for outbox notifications",
            Duration::from_secs(30),
        )
        .await;

    server.register("relay-tls@example.com").await;

    smtp.wait_for_message_to("relay-tls@example.com", Duration::from_secs(30))
        .await;
    assert!(!relay.output().contains(PASSWORD));
}

#[test]
fn an_unknown_sslmode_stops_both_binaries_with_the_accepted_values_and_no_password() {
    let url = format!("postgres://app:{PASSWORD}@127.0.0.1:1/identity?sslmode=verify_full");

    let server = migrate(&url);
    let relay = process::run("outbox-relay", &["serve"], &relay::configured_env(&url));

    for (name, output) in [("identity-server", server), ("outbox-relay", relay)] {
        let log = printed(&output);
        assert!(!output.status.success(), "{name}: {log}");
        assert!(
            log.contains(r#"sslmode="verify_full" is not supported"#),
            "{name}: {log}"
        );
        assert!(
            log.contains("prefer, require, verify-ca or verify-full"),
            "{name}: {log}"
        );
        assert!(!log.contains(PASSWORD), "{name}: {log}");
    }
}

#[test]
fn help_explains_sslmode_and_sslrootcert_in_both_binaries() {
    for (binary, args) in [
        ("identity-server", &["migrate", "--help"][..]),
        ("identity-server", &["serve", "--help"][..]),
        ("outbox-relay", &["serve", "--help"][..]),
    ] {
        let help = String::from_utf8_lossy(&process::run(binary, args, &[]).stdout).into_owned();
        for documented in ["sslmode", "verify-full", "sslrootcert"] {
            assert!(
                help.contains(documented),
                "{binary} {args:?}: {documented} missing from:\n{help}"
            );
        }
    }
}
