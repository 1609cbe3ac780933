//! TLS on the gRPC port (rustls): the certificate and key files, read again when they change
//! (cert-manager rotates them in place) without closing the listener, and optionally client
//! certificates verified against a CA bundle (mutual TLS, for service-to-service calls).
//!
//! TLS 1.2 is the lowest version offered (rustls implements nothing older), and ALPN offers
//! `h2` and `http/1.1`, so gRPC-Web over HTTP/1.1 works over TLS as it does in plaintext.
//!
//! Each accepted connection is handshaken in a task of its own (with a time limit), so a slow or
//! silent client never holds up the others; the handshake uses the configuration current when
//! the connection arrived.

use std::{
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use futures_util::Stream;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server's TLS material is, and how often to look for a new one.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key of the certificate.
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to; set: mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// How often the files are read again.
    pub reload_interval: Duration,
}

/// The files' contents, to tell whether they changed.
#[derive(PartialEq, Eq)]
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// The TLS configuration in use, replaced when the files change.
pub struct Tls {
    settings: TlsSettings,
    current: RwLock<(Arc<ServerConfig>, Arc<Material>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the files and builds the configuration; any fault is a start-up error naming the
    /// file.
    pub fn load(settings: TlsSettings) -> anyhow::Result<Self> {
        let material = read(&settings)?;
        let config = configure(&material, &settings)?;
        Ok(Self {
            settings,
            current: RwLock::new((config, Arc::new(material))),
        })
    }

    /// Whether client certificates are required.
    pub fn is_mutual(&self) -> bool {
        self.settings.client_ca.is_some()
    }

    fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(Arc::clone(&current.0))
    }

    /// Reads the files again and, when they changed and make a valid configuration, uses it
    /// for the connections that come next; returns whether it did. A broken set (a key that
    /// does not match its certificate, half-written files) keeps the configuration in use.
    pub fn reload(&self) -> bool {
        let material = match read(&self.settings) {
            Ok(material) => material,
            Err(e) => {
                tracing::warn!(error.message = %e, "cannot read the TLS files; keeping the certificate in use");
                return false;
            }
        };
        let unchanged = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            *current.1 == material
        };
        if unchanged {
            return false;
        }
        match configure(&material, &self.settings) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    (config, Arc::new(material));
                tracing::info!(cert = %self.settings.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "the new TLS files are not usable; keeping the certificate in use");
                false
            }
        }
    }

    /// Reads the files again every reload interval, forever.
    pub async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.settings.reload_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            self.reload();
        }
    }

    /// The TLS connections accepted on `listener`, as tonic's incoming stream. The accepting
    /// task stops once the stream is dropped.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: let the moment pass.
                        tracing::warn!(error.message = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = self.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(client.address = %peer.ip(), error.message = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(client.address = %peer.ip(), "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

fn read(settings: &TlsSettings) -> anyhow::Result<Material> {
    let file = |path: &PathBuf, name: &str| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("{name} {}: {e}", path.display()))
    };
    Ok(Material {
        cert: file(&settings.cert, "IDENTITY_TLS_CERT_FILE")?,
        key: file(&settings.key, "IDENTITY_TLS_KEY_FILE")?,
        client_ca: settings
            .client_ca
            .as_ref()
            .map(|path| file(path, "IDENTITY_TLS_CLIENT_CA_FILE"))
            .transpose()?,
    })
}

fn configure(material: &Material, settings: &TlsSettings) -> anyhow::Result<Arc<ServerConfig>> {
    let named = |path: &PathBuf| path.display().to_string();
    let certs = CertificateDer::pem_slice_iter(&material.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("IDENTITY_TLS_CERT_FILE {}: {e}", named(&settings.cert)))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "IDENTITY_TLS_CERT_FILE {}: no certificate in it",
        named(&settings.cert)
    );
    let key = PrivateKeyDer::from_pem_slice(&material.key)
        .map_err(|e| anyhow::anyhow!("IDENTITY_TLS_KEY_FILE {}: {e}", named(&settings.key)))?;
    let builder = ServerConfig::builder();
    let builder = match (&material.client_ca, &settings.client_ca) {
        (Some(pem), Some(path)) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(pem) {
                let ca = ca.map_err(|e| {
                    anyhow::anyhow!("IDENTITY_TLS_CLIENT_CA_FILE {}: {e}", named(path))
                })?;
                roots.add(ca).map_err(|e| {
                    anyhow::anyhow!("IDENTITY_TLS_CLIENT_CA_FILE {}: {e}", named(path))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| anyhow::anyhow!("IDENTITY_TLS_CLIENT_CA_FILE {}: {e}", named(path)))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow::anyhow!(
            "IDENTITY_TLS_CERT_FILE {} and IDENTITY_TLS_KEY_FILE {}: {e}",
            named(&settings.cert),
            named(&settings.key)
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
