//! Opening SMTP sessions ourselves: TCP with `TCP_NODELAY`, TLS (implicit, or STARTTLS) trusting
//! the public web PKI roots plus any CA from `RELAY_SMTP_CA_FILE`, EHLO and AUTH; each failure
//! classified by the [`Stage`] it happened at.
//!
//! Why not lettre's own transport: lettre 0.11.23 leaves Nagle's algorithm on and writes the
//! end-of-data marker (`\r\n.\r\n`) separately from the body, so every email waits for the
//! server's delayed ACK, about 40 ms (fixed upstream in lettre#1159, not released yet). lettre
//! still speaks the protocol here (EHLO, STARTTLS, AUTH).

use std::{path::Path, sync::Arc, time::Duration};

use lettre::transport::smtp::{
    authentication::Mechanism,
    client::{AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters},
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;

use super::{
    SendError,
    dialogue::Stage,
    target::{Security, Target},
};

/// Opens ready sessions (greeted, secured, authenticated) to one target.
pub struct Connector {
    target: Target,
    /// Bounds opening a session.
    pub timeout: Duration,
    /// For implicit TLS.
    tls: Arc<rustls::ClientConfig>,
    /// For STARTTLS (lettre upgrades the stream itself).
    starttls: Option<TlsParameters>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `target`, trusting the PEM certificates in `ca_file` besides the public
    /// roots. Fails at start-up on an unreadable or empty CA file.
    pub fn new(target: Target, ca_file: Option<&Path>, timeout: Duration) -> anyhow::Result<Self> {
        let extra_roots = match ca_file {
            None => Vec::new(),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("RELAY_SMTP_CA_FILE: cannot read {}: {e}", path.display())
                })?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        anyhow::anyhow!("RELAY_SMTP_CA_FILE: {} is not PEM ({e})", path.display())
                    })?;
                anyhow::ensure!(
                    !certs.is_empty(),
                    "RELAY_SMTP_CA_FILE: no PEM certificate in {}",
                    path.display()
                );
                certs
            }
        };
        let starttls = match target.security {
            Security::StartTls { .. } => {
                let mut builder = TlsParameters::builder(target.host.clone());
                for cert in &extra_roots {
                    builder = builder.add_root_certificate(Certificate::from_der(cert.to_vec())?);
                }
                Some(builder.build_rustls()?)
            }
            _ => None,
        };
        Ok(Self {
            tls: Arc::new(tls_config(extra_roots)?),
            starttls,
            target,
            timeout,
        })
    }

    /// Opens a session: TCP with `TCP_NODELAY`, TLS as configured, greeting and EHLO, AUTH.
    pub async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        tokio::time::timeout(self.timeout, self.open())
            .await
            .unwrap_or_else(|_| {
                Err(SendError::Unreachable(
                    "connecting to the SMTP server timed out".into(),
                ))
            })
    }

    async fn open(&self) -> Result<AsyncSmtpConnection, SendError> {
        let target = &self.target;
        let network = |e: std::io::Error| {
            SendError::Unreachable(format!(
                "connecting to {}:{}: {e}",
                target.host, target.port
            ))
        };
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(network)?;
        tcp.set_nodelay(true).map_err(network)?;
        let stream: Box<dyn AsyncTokioStream> = match target.security {
            Security::Implicit => Box::new(TlsStream(self.handshake(tcp).await?)),
            _ => Box::new(tcp),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &target.hello)
            .await
            .map_err(|e| Stage::Session.classify(&e))?;
        if let (Security::StartTls { required }, Some(parameters)) =
            (target.security, &self.starttls)
        {
            if conn.can_starttls() {
                conn.starttls(parameters.clone(), &target.hello)
                    .await
                    .map_err(|e| Stage::Tls.classify(&e))?;
            } else if required {
                return Err(SendError::ChannelRefused(
                    "the SMTP server does not offer STARTTLS, which SMTP_URL requires".into(),
                ));
            }
        }
        if let Some(credentials) = &target.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| Stage::Auth.classify(&e))?;
        }
        Ok(conn)
    }

    /// The implicit-TLS handshake. A certificate or protocol failure refuses us (it will not
    /// pass by itself; pausing loses nothing); an I/O failure is transient.
    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SendError> {
        let name = ServerName::try_from(self.target.host.clone()).map_err(|e| {
            SendError::ChannelRefused(format!("the SMTP host is no TLS server name: {e}"))
        })?;
        tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| {
                let tls_failure = e
                    .get_ref()
                    .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
                if tls_failure {
                    SendError::ChannelRefused(format!(
                        "the TLS handshake with the SMTP server failed: {e}"
                    ))
                } else {
                    SendError::Transient(format!("TLS handshake: {e}"))
                }
            })
    }
}

/// A rustls client configuration trusting the public web PKI roots and `extra_roots`.
fn tls_config(extra_roots: Vec<CertificateDer<'static>>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("RELAY_SMTP_CA_FILE: unusable CA certificate ({e})"))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
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
