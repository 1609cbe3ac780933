//! SMTP connections this relay opens itself, so that it can set `TCP_NODELAY`, and pools them.
//!
//! Why not lettre's own pooled transport: lettre 0.11.23 leaves Nagle's algorithm on and writes
//! the end-of-data marker (`\r\n.\r\n`) separately from the body, so every email waits for the
//! server's delayed ACK, about 40 ms (fixed upstream in lettre#1159, not released yet). lettre
//! still speaks the protocol here (EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA); this module only
//! opens the socket, wraps implicit TLS, and keeps a pool.

use std::{sync::Arc, time::Duration};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use lettre::transport::smtp::{
    authentication::{Credentials, Mechanism},
    client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters},
    extension::ClientId,
};
use percent_encoding::percent_decode_str;
use tokio::net::TcpStream;
use url::Url;

/// How the connection is secured, from the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// `smtp://host` with no `tls` parameter: plain text (tests and local sinks only).
    Plain,
    /// `smtp://host?tls=required` or `?tls=opportunistic`: STARTTLS.
    StartTls { required: bool },
    /// `smtps://host`: TLS from the first byte.
    Implicit,
}

/// Where and how to connect, parsed from lettre's URL form
/// `scheme://user:pass@host:port/ehlo-name?tls=...`.
pub struct Target {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Parses `url`; `timeout` bounds connecting and each email.
    pub fn parse(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        // Errors never repeat the URL: it may hold a password.
        let url = Url::parse(url).map_err(|e| anyhow::anyhow!("not a URL ({e})"))?;
        let tls_param = url
            .query_pairs()
            .find(|(key, _)| key == "tls")
            .map(|(_, value)| value.into_owned());
        let security = match (url.scheme(), tls_param.as_deref()) {
            ("smtps", None) => Security::Implicit,
            ("smtp", None) => Security::Plain,
            ("smtp", Some("required")) => Security::StartTls { required: true },
            ("smtp", Some("opportunistic")) => Security::StartTls { required: false },
            (scheme, tls) => anyhow::bail!(
                "unsupported scheme {scheme:?} with tls={tls:?}: use smtps://, smtp://...?tls=required, or smtp:// (plain text)"
            ),
        };
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("the URL names no host"))?
            .to_owned();
        let port = url.port().unwrap_or(match security {
            Security::Implicit => 465,
            _ => 587,
        });
        let credentials = if url.username().is_empty() {
            None
        } else {
            let decode = |raw: &str| percent_decode_str(raw).decode_utf8_lossy().into_owned();
            Some(Credentials::new(
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            ))
        };
        let hello = match url.path().trim_start_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_owned()),
        };
        Ok(Self {
            host,
            port,
            security,
            credentials,
            hello,
            timeout,
            tls: Arc::new(tls_config()?),
        })
    }

    /// Opens a ready connection: TCP with `TCP_NODELAY`, TLS as configured, EHLO, AUTH.
    async fn connect(&self) -> Result<AsyncSmtpConnection, ConnectError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn AsyncTokioStream> = match self.security {
            Security::Implicit => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                Box::new(TlsStream(tls))
            }
            _ => Box::new(tcp),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello).await?;
        if let Security::StartTls { required } = self.security {
            if conn.can_starttls() {
                conn.starttls(TlsParameters::new(self.host.clone())?, &self.hello)
                    .await?;
            } else if required {
                return Err(ConnectError::Tls(
                    "the server does not offer STARTTLS".into(),
                ));
            }
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await?;
        }
        Ok(conn)
    }
}

fn tls_config() -> anyhow::Result<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("timed out")]
    Timeout,
}

/// Opens and checks pooled connections.
#[derive(Debug)]
pub struct Manager(Target);

impl managed::Manager for Manager {
    type Type = AsyncSmtpConnection;
    type Error = ConnectError;

    async fn create(&self) -> Result<AsyncSmtpConnection, ConnectError> {
        tokio::time::timeout(self.0.timeout, self.0.connect())
            .await
            .map_err(|_| ConnectError::Timeout)?
    }

    async fn recycle(
        &self,
        conn: &mut AsyncSmtpConnection,
        _: &Metrics,
    ) -> RecycleResult<ConnectError> {
        if conn.has_broken() {
            return Err(RecycleError::message("the connection is broken"));
        }
        Ok(())
    }
}

/// A pool of SMTP connections.
pub type Pool = managed::Pool<Manager>;

/// A pool of at most `size` connections to `target`.
pub fn pool(target: Target, size: usize) -> anyhow::Result<Pool> {
    let timeout = target.timeout;
    Ok(Pool::builder(Manager(target))
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?)
}

/// A client TLS stream that lettre can drive.
struct TlsStream(tokio_rustls::client::TlsStream<TcpStream>);

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsStream")
    }
}

impl AsyncTokioStream for TlsStream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl tokio::io::AsyncRead for TlsStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Target {
        Target::parse(url, Duration::from_secs(5)).expect("valid URL")
    }

    #[test]
    fn urls_choose_security_port_and_credentials_like_lettre() {
        let plain = parse("smtp://127.0.0.1:2525");
        assert_eq!((plain.security, plain.port), (Security::Plain, 2525));
        assert!(plain.credentials.is_none());

        let implicit = parse("smtps://user:p%40ss@mail.example.com");
        assert_eq!(
            (implicit.security, implicit.port),
            (Security::Implicit, 465)
        );
        assert_eq!(
            implicit.credentials,
            Some(Credentials::new("user".into(), "p@ss".into()))
        );

        let starttls = parse("smtp://mail.example.com/relay.example.com?tls=required");
        assert_eq!(starttls.security, Security::StartTls { required: true });
        assert_eq!(starttls.port, 587);
        assert_eq!(starttls.hello, ClientId::Domain("relay.example.com".into()));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for url in [
            "http://user:secret@host",
            "smtps://user:secret@host?tls=none",
            "nonsense-secret",
        ] {
            let error = Target::parse(url, Duration::from_secs(5))
                .expect_err("refused")
                .to_string();
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn debug_output_hides_credentials() {
        let target = parse("smtps://user:hunter2@mail.example.com");
        assert!(!format!("{target:?}").contains("hunter2"));
    }
}
