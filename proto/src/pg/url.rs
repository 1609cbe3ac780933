//! `DATABASE_URL`: libpq's `sslmode` and `sslrootcert`, and our own `pool_mode`, are taken out
//! and parsed here, since tokio-postgres knows only `disable|prefer|require` and refuses unknown
//! keys; everything else is left for tokio-postgres to parse. No error repeats the URL, so none
//! shows its password.

use std::{fmt, path::PathBuf, str::FromStr};

use percent_encoding::percent_decode_str;

use super::ConfigError;

/// How much TLS to insist on, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, plain otherwise; the certificate is not checked. libpq's
    /// default, and ours when `sslmode` is absent.
    Prefer,
    /// TLS or nothing; the certificate is not checked (unless `sslrootcert` is given, then as
    /// `verify-ca`).
    Require,
    /// TLS, with the server's certificate chain checked against `sslrootcert`; the host name is
    /// not checked.
    VerifyCa,
    /// TLS, with the chain checked against `sslrootcert` and the certificate issued for the host
    /// name we connect to.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            // libpq's `allow` (plain first, TLS only if refused) has no tokio-postgres equivalent.
            other => Err(ConfigError::UnknownSslMode(other.to_owned())),
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// What the URL leads to (`pool_mode`, named after PgBouncer's setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolMode {
    /// A session of our own for as long as the connection lasts: PostgreSQL itself, or a pooler
    /// in session mode. The default.
    #[default]
    Session,
    /// A transaction pooler (PgBouncer `pool_mode = transaction`): each transaction may run on
    /// another server session (see `pooler.rs` for what changes).
    Transaction,
}

impl FromStr for PoolMode {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "session" => Ok(Self::Session),
            "transaction" => Ok(Self::Transaction),
            other => Err(ConfigError::UnknownPoolMode(other.to_owned())),
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
        })
    }
}

/// Where the trusted CA certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the well-known public roots (Mozilla's list, as `webpki-roots`
    /// ships it), as libpq 16 does.
    System,
}

/// A `DATABASE_URL` split into what tokio-postgres parses and our TLS settings.
#[derive(Debug)]
pub(crate) struct DatabaseUrl {
    pub(crate) config: tokio_postgres::Config,
    /// The mode as written, or `None` when absent.
    pub(crate) ssl_mode: Option<SslMode>,
    pub(crate) root_cert: Option<RootCert>,
    pub(crate) pool_mode: PoolMode,
}

/// Splits `url` (`postgres://` or `postgresql://`) into tokio-postgres' config and the
/// parameters it does not know (TLS, pool mode).
pub(crate) fn parse(url: &str) -> Result<DatabaseUrl, ConfigError> {
    let rest = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .ok_or(ConfigError::NotAUrl)?;
    // As tokio-postgres reads it: credentials run to the first '@', the query starts at the
    // first '?' after them.
    let after_credentials = rest.find('@').map_or(0, |at| at + 1);
    let (head, query) = match rest[after_credentials..].find('?') {
        Some(q) => (
            &url[..url.len() - rest.len() + after_credentials + q],
            Some(&rest[after_credentials + q + 1..]),
        ),
        None => (url, None),
    };

    let mut ssl_mode = None;
    let mut root_cert = None;
    let mut pool_mode = PoolMode::default();
    let mut kept = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(key)?.as_str() {
            "sslmode" => ssl_mode = Some(decode(value)?.parse()?),
            "sslrootcert" => {
                let value = decode(value)?;
                root_cert = Some(if value == "system" {
                    RootCert::System
                } else {
                    RootCert::File(value.into())
                });
            }
            "pool_mode" => pool_mode = decode(value)?.parse()?,
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    let config = rest
        .parse::<tokio_postgres::Config>()
        .map_err(|e| ConfigError::Invalid(super::error_chain(&e)))?;
    Ok(DatabaseUrl {
        config,
        ssl_mode,
        root_cert,
        pool_mode,
    })
}

fn decode(text: &str) -> Result<String, ConfigError> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ConfigError::Invalid("a query parameter is not valid UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "s3cret-pa55";

    fn url(query: &str) -> String {
        format!("postgres://app:{PASSWORD}@db.example.com:6432/identity{query}")
    }

    #[test]
    fn every_libpq_sslmode_is_understood() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let parsed = parse(&url(&format!("?sslmode={text}"))).expect(text);
            assert_eq!(parsed.ssl_mode, Some(mode));
            assert_eq!(mode.to_string(), text);
        }
    }

    #[test]
    fn sslmode_is_absent_when_not_given() {
        let parsed = parse(&url("")).expect("parses");
        assert_eq!(parsed.ssl_mode, None);
        assert_eq!(parsed.root_cert, None);
    }

    #[test]
    fn an_unknown_sslmode_is_refused_with_the_accepted_values() {
        let error = parse(&url("?sslmode=allow")).expect_err("allow is not supported");
        let message = error.to_string();
        assert!(message.contains("sslmode"), "{message}");
        assert!(message.contains("verify-full"), "{message}");
        assert!(!message.contains(PASSWORD), "{message}");
    }

    #[test]
    fn the_tls_parameters_are_taken_out_and_the_rest_reaches_tokio_postgres() {
        let parsed = parse(&url(
            "?application_name=identity&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&connect_timeout=3",
        ))
        .expect("parses");

        assert_eq!(parsed.ssl_mode, Some(SslMode::VerifyFull));
        assert_eq!(
            parsed.root_cert,
            Some(RootCert::File("/etc/ca dir/ca.pem".into()))
        );
        let config = parsed.config;
        assert_eq!(config.get_application_name(), Some("identity"));
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(config.get_user(), Some("app"));
        assert_eq!(config.get_password(), Some(PASSWORD.as_bytes()));
        assert_eq!(config.get_dbname(), Some("identity"));
        assert_eq!(config.get_ports(), [6432]);
    }

    #[test]
    fn pool_mode_is_session_unless_the_url_says_transaction() {
        assert_eq!(
            parse(&url("")).expect("parses").pool_mode,
            PoolMode::Session
        );
        let pooled =
            parse(&url("?pool_mode=transaction&application_name=identity")).expect("parses");
        assert_eq!(pooled.pool_mode, PoolMode::Transaction);
        assert_eq!(pooled.config.get_application_name(), Some("identity"));
        let error = parse(&url("?pool_mode=statement")).expect_err("statement mode cannot work");
        assert!(error.to_string().contains("transaction"), "{error}");
        assert!(!error.to_string().contains(PASSWORD), "{error}");
    }

    #[test]
    fn sslrootcert_system_means_the_public_roots() {
        let parsed = parse(&url("?sslrootcert=system")).expect("parses");
        assert_eq!(parsed.root_cert, Some(RootCert::System));
    }

    #[test]
    fn a_password_with_a_question_mark_or_an_at_sign_stays_the_password() {
        let parsed =
            parse("postgresql://app:pa?ss%40word@db/identity?sslmode=require").expect("parses");
        assert_eq!(parsed.ssl_mode, Some(SslMode::Require));
        assert_eq!(parsed.config.get_password(), Some(&b"pa?ss@word"[..]));
        assert_eq!(parsed.config.get_dbname(), Some("identity"));
    }

    #[test]
    fn urls_without_credentials_or_query_parse() {
        for url in [
            "postgres://localhost",
            "postgres://localhost/identity",
            "postgres://localhost?sslmode=disable",
        ] {
            parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn no_error_shows_the_password() {
        for bad in [
            url("?sslmode=verify_full"),
            url("?unknown_key=1"),
            url("?port=notaport"),
            url("?sslrootcert=%FF"),
            format!("mysql://app:{PASSWORD}@db/identity"),
            format!("host=db password={PASSWORD}"),
            format!("postgres://app:{PASSWORD}@[::1/identity"),
        ] {
            let message = parse(&bad).expect_err(&bad).to_string();
            assert!(!message.contains(PASSWORD), "{bad}: {message}");
        }
    }

    #[test]
    fn a_key_value_connection_string_is_refused_as_not_a_url() {
        let error = parse("host=db user=app").expect_err("not a URL");
        assert!(error.to_string().contains("postgres://"), "{error}");
    }
}
