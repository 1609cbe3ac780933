//! How both binaries connect to PostgreSQL (feature `postgres`; consumers of the API types do
//! not pull it, nor its dependencies).
//!
//! `identity-server` (its pool and its migration connection) and `outbox-relay` (its pool and
//! its LISTEN connection) connect through one [`Connector`], built from `DATABASE_URL`:
//!
//! - **TLS** with rustls, following libpq's `sslmode` (`disable`, `prefer` (the default),
//!   `require`, `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file of CA certificates, or
//!   `system` for the public web roots). diesel-async's own `establish` speaks no TLS at all;
//!   tokio-postgres knows only `disable|prefer|require` and no `sslrootcert`, so those two are
//!   taken out of the URL here and the rest is left to tokio-postgres. See `tls.rs` for what
//!   each mode checks.
//! - **Session limits** for pooled connections ([`SessionTimeouts`]): `statement_timeout` and
//!   `lock_timeout` are set in the start-up packet (`options`), so every statement on every
//!   pooled connection has them without a round trip. Not for the relay's LISTEN connection,
//!   which idles by design, nor for migrations.
//! - **Transaction poolers** (`pool_mode=transaction` in the URL, for PgBouncer in transaction
//!   mode): no start-up `options` (PgBouncer refuses them); the limits are set in each
//!   transaction instead, and prepared statements stay on the client. See `pooler/mod.rs`.
//! - **Errors** never repeat the URL, so they never show its password. What a failed statement
//!   means (retry later, run again, or a bug) is read from its SQLSTATE: [`Failure`].
//!
//! Layout: `url.rs` splits `DATABASE_URL`; `tls.rs` builds the rustls configuration and its
//! certificate checks per mode; `pool.rs` holds [`SessionTimeouts`] and [`pool`]; `pooler/`
//! connects through a transaction pooler; `prepared.rs` keeps constant raw SQL prepared; `failure.rs` classifies errors.

mod failure;
mod pool;
mod pooler;
mod prepared;
mod tls;
mod url;

use std::{fmt, path::PathBuf};

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use tokio_postgres_rustls::MakeRustlsConnect;

pub use failure::Failure;
pub use pool::{Pool, SessionTimeouts, pool};
pub use prepared::{Statement, statement};
pub use url::{PoolMode, RootCert, SslMode};

/// `DATABASE_URL` cannot be used; the message names the part at fault, never the password.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("DATABASE_URL must be a postgres:// or postgresql:// URL")]
    NotAUrl,
    #[error(
        "DATABASE_URL: sslmode={0:?} is not supported; use disable, prefer, require, verify-ca or verify-full"
    )]
    UnknownSslMode(String),
    #[error(
        "DATABASE_URL: sslmode={0} needs the CA certificate to check the server against: add \
         sslrootcert=/path/to/ca.pem (or sslrootcert=system for the public web roots), or put it \
         in ~/.postgresql/root.crt"
    )]
    MissingRootCert(SslMode),
    #[error(
        "DATABASE_URL: sslmode={0} cannot be used with sslrootcert=system (as in libpq); use sslmode=verify-full"
    )]
    WeakModeWithSystemRoots(SslMode),
    #[error("DATABASE_URL: cannot use sslrootcert {path}: {reason}")]
    RootCert { path: PathBuf, reason: String },
    #[error(
        "DATABASE_URL: pool_mode={0:?} is not supported; use session (the default: PostgreSQL or \
         a session pooler) or transaction (a transaction pooler such as PgBouncer)"
    )]
    UnknownPoolMode(String),
    #[error("DATABASE_URL is not valid: {0}")]
    Invalid(String),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// How to reach the database: `DATABASE_URL` parsed once, with its TLS configuration (CA file
/// read) ready. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    ssl_mode: SslMode,
    pool_mode: PoolMode,
    /// The limits a transaction pooler gets in each transaction.
    limits: Option<SessionTimeouts>,
    /// `host:port/dbname`, for messages.
    target: String,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .field("ssl_mode", &self.ssl_mode)
            .field("pool_mode", &self.pool_mode)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Parses `url` (see the module doc) and prepares TLS; a bad URL or CA file fails here.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let url::DatabaseUrl {
            mut config,
            ssl_mode,
            root_cert,
            pool_mode,
        } = url::parse(url)?;
        let ssl_mode = match (ssl_mode, &root_cert) {
            (Some(mode), _) => mode,
            // libpq 16: sslrootcert=system makes verify-full the default.
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (None, _) => SslMode::Prefer,
        };
        let tls = MakeRustlsConnect::new(tls::client_config(ssl_mode, root_cert.as_ref())?);
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        let target = target(&config);
        Ok(Self {
            config,
            tls,
            ssl_mode,
            pool_mode,
            limits: None,
            target,
        })
    }

    /// The same connector, with `timeouts` on every session it opens (through a transaction
    /// pooler: on every transaction).
    #[must_use]
    pub fn with_session_timeouts(mut self, timeouts: SessionTimeouts) -> Self {
        if self.pool_mode == PoolMode::Transaction {
            self.limits = Some(timeouts);
            return self;
        }
        let limits = format!(
            "-c statement_timeout={} -c lock_timeout={}",
            timeouts.statement.as_millis(),
            timeouts.lock.as_millis()
        );
        let options = match self.config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {limits}"),
            _ => limits,
        };
        self.config.options(&options);
        self
    }

    /// The effective `sslmode` (`prefer` when the URL names none).
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// What the URL leads to: PostgreSQL (or a session pooler), or a transaction pooler.
    pub fn pool_mode(&self) -> PoolMode {
        self.pool_mode
    }

    /// Opens one connection.
    pub async fn connect(&self) -> Result<AsyncPgConnection, ConnectionError> {
        if self.pool_mode == PoolMode::Transaction {
            let (client, connection) =
                pooler::connect(&self.config, &self.tls, self.ssl_mode, self.limits)
                    .await
                    .map_err(|e| self.cannot_connect(&e))?;
            // diesel-async drives only connections on tokio-postgres' own socket type; this one
            // runs on its own task, and ends when the client is dropped (a failure shows as a
            // closed connection at the client's next statement). Notifications are not
            // received: LISTEN cannot work through a transaction pooler anyway.
            tokio::spawn(connection);
            return AsyncPgConnection::try_from(client).await;
        }
        let (client, connection) = self.config.connect(self.tls.clone()).await.map_err(|e| {
            let hint = tls::certificate_hint(&e)
                .map(|hint| format!(" ({hint})"))
                .unwrap_or_default();
            self.cannot_connect(&format!("{}{hint}", error_chain(&e)))
        })?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }

    fn cannot_connect(&self, reason: &str) -> ConnectionError {
        ConnectionError::BadConnection(format!(
            "cannot connect to PostgreSQL at {} (sslmode={}, pool_mode={}): {reason}",
            self.target, self.ssl_mode, self.pool_mode
        ))
    }
}

/// `host:port[,host:port]/dbname` of `config`.
fn target(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    format!(
        "{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or_default()
    )
}

/// `error` followed by each of its causes: tokio-postgres' own message ("error performing TLS
/// handshake") says what failed, the cause says why ("invalid peer certificate: UnknownIssuer").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn session_timeouts_are_appended_to_the_options_the_url_gives() {
        let connector = Connector::new("postgres://db/app?options=-c%20search_path%3Dapp")
            .expect("parses")
            .with_session_timeouts(SessionTimeouts {
                statement: Duration::from_millis(5000),
                lock: Duration::from_millis(2000),
            });
        assert_eq!(
            connector.config.get_options(),
            Some("-c search_path=app -c statement_timeout=5000 -c lock_timeout=2000")
        );
    }

    #[test]
    fn through_a_transaction_pooler_no_options_are_sent_and_the_limits_go_to_each_transaction() {
        let timeouts = SessionTimeouts::default();
        let connector = Connector::new("postgres://pooler:6432/app?pool_mode=transaction")
            .expect("parses")
            .with_session_timeouts(timeouts);
        assert_eq!(connector.config.get_options(), None);
        assert_eq!(connector.limits, Some(timeouts));
        assert_eq!(connector.pool_mode(), PoolMode::Transaction);
    }

    #[test]
    fn without_timeouts_no_options_are_sent() {
        let connector = Connector::new("postgres://db/app").expect("parses");
        assert_eq!(connector.config.get_options(), None);
    }

    #[test]
    fn the_default_sslmode_is_prefer_and_system_roots_make_it_verify_full() {
        let prefer = Connector::new("postgres://db/app").expect("parses");
        let system = Connector::new("postgres://db/app?sslrootcert=system").expect("parses");
        assert_eq!(prefer.ssl_mode(), SslMode::Prefer);
        assert_eq!(system.ssl_mode(), SslMode::VerifyFull);
    }

    #[test]
    fn weaker_modes_with_system_roots_are_refused() {
        for mode in ["disable", "prefer", "require", "verify-ca"] {
            let error = Connector::new(&format!(
                "postgres://db/app?sslmode={mode}&sslrootcert=system"
            ))
            .expect_err(mode);
            assert!(error.to_string().contains("verify-full"), "{error}");
        }
    }

    #[test]
    fn a_missing_ca_file_is_a_start_up_error_naming_the_file() {
        let error = Connector::new(
            "postgres://u:pw-never-shown@db/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )
        .expect_err("no such file");
        let message = error.to_string();
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
        assert!(!message.contains("pw-never-shown"), "{message}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("not-a-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "hello").expect("writes");
        let error = Connector::new(&format!(
            "postgres://db/app?sslmode=verify-ca&sslrootcert={}",
            path.display()
        ))
        .expect_err("no certificate");
        let _ = std::fs::remove_file(&path);
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }

    #[test]
    fn the_debug_form_shows_where_not_the_password() {
        let connector =
            Connector::new("postgres://u:pw-never-shown@db.example:6432/app").expect("parses");
        let debug = format!("{connector:?}");
        assert!(debug.contains("db.example:6432/app"), "{debug}");
        assert!(!debug.contains("pw-never-shown"), "{debug}");
    }
}
