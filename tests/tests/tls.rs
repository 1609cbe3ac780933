//! TLS on identity-server's gRPC port, through the built binary: TLS and mutual TLS with
//! certificates from a CA of the test's own (rcgen), a rotated certificate served without a
//! restart, gRPC-Web over TLS, the plaintext health-only port, and connections asked to close
//! after IDENTITY_MAX_CONNECTION_AGE_SECS.

mod support;

use std::{path::PathBuf, sync::Arc, time::Duration};

use identity_proto::identity::v1::registration_service_client::RegistrationServiceClient;
use identity_tests::{
    process,
    server::{Server, register_request},
    wait,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use support::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const WAIT: Duration = Duration::from_secs(30);

/// The server's certificate and key files (and the client CA's), removed on drop.
struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("identity-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Writes a server certificate for 127.0.0.1 from `ca` (and its key).
    fn write_server_cert(&self, ca: &TestCa) -> String {
        let (cert, key) = ca.issue(&["127.0.0.1"]);
        std::fs::write(self.path("tls.crt"), &cert).expect("writes the certificate");
        std::fs::write(self.path("tls.key"), key).expect("writes the key");
        cert
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the server with TLS from `files` (mutual when `client_ca` is given) and `extra`.
async fn tls_server(
    files: &TlsFiles,
    client_ca: Option<&TestCa>,
    extra: &[(&str, &str)],
) -> Server {
    let cert = files.path_str("tls.crt");
    let key = files.path_str("tls.key");
    let ca = files.path_str("client-ca.crt");
    let mut env = vec![
        ("IDENTITY_TLS_CERT_FILE", cert.as_str()),
        ("IDENTITY_TLS_KEY_FILE", key.as_str()),
        ("IDENTITY_TLS_RELOAD_SECS", "1"),
    ];
    if let Some(client_ca) = client_ca {
        std::fs::write(files.path("client-ca.crt"), client_ca.ca_pem()).expect("writes the CA");
        env.push(("IDENTITY_TLS_CLIENT_CA_FILE", ca.as_str()));
    }
    env.extend_from_slice(extra);
    Server::start(&env).await
}

/// An HTTPS channel to `server` trusting `ca`, presenting `identity` when given.
async fn tls_channel(
    server: &Server,
    ca: &TestCa,
    identity: Option<(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.ca_pem()))
        .domain_name("127.0.0.1");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{}", server.addr))
        .expect("a URL")
        .tls_config(tls)?
        .connect()
        .await
}

async fn health(channel: Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(response.into_inner().status())
}

/// The certificate the server at `addr` presents to a new TLS connection (trusting `ca`), and
/// the protocol ALPN chose when offered `alpn`.
async fn presented(addr: &str, ca: &TestCa, alpn: &[&[u8]]) -> (Vec<u8>, Option<Vec<u8>>) {
    let stream = connect_tls(addr, ca, alpn).await;
    let (_, session) = stream.get_ref();
    let cert = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .expect("a server certificate")
        .to_vec();
    (cert, session.alpn_protocol().map(<[u8]>::to_vec))
}

async fn connect_tls(
    addr: &str,
    ca: &TestCa,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.ca_pem().as_bytes()).expect("the CA"))
        .expect("a root");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("an IP name"), tcp)
        .await
        .expect("a TLS handshake")
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a certificate")
        .to_vec()
}

#[tokio::test]
async fn over_tls_a_sign_up_works_plaintext_is_refused_and_probes_use_the_health_port() {
    let ca = TestCa::new();
    let files = TlsFiles::new();
    files.write_server_cert(&ca);
    let server = tls_server(&files, None, &[("IDENTITY_HEALTH_ADDR", "127.0.0.1:0")]).await;

    let channel = tls_channel(&server, &ca, None)
        .await
        .expect("a TLS connection");
    RegistrationServiceClient::new(channel)
        .register(register_request("ada@example.com"))
        .await
        .expect("registers over TLS");

    // Plaintext HTTP/2 to the TLS port gets no answer.
    let plaintext = Channel::from_shared(format!("http://{}", server.addr))
        .expect("a URL")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    health(plaintext, "")
        .await
        .expect_err("plaintext is refused");

    // The health-only port speaks plaintext, and says what readiness says.
    let line = server
        .process
        .output()
        .lines()
        .find(|line| line.contains("health service listening"))
        .expect("the health port is logged")
        .to_owned();
    let health_addr = process::field(&line, "health.addr")
        .expect("health.addr")
        .to_owned();
    let probe = Channel::from_shared(format!("http://{health_addr}"))
        .expect("a URL")
        .connect()
        .await
        .expect("connects to the health port");
    assert_eq!(
        health(probe.clone(), "readiness").await.expect("answers"),
        ServingStatus::Serving
    );
    assert_eq!(
        health(probe.clone(), "liveness").await.expect("answers"),
        ServingStatus::Serving
    );
    // Only health: the API is not on that port.
    RegistrationServiceClient::new(probe)
        .register(register_request("grace@example.com"))
        .await
        .expect_err("no API on the health port");
}

#[tokio::test]
async fn with_mutual_tls_only_a_client_certificate_from_the_ca_gets_in() {
    let ca = TestCa::new();
    let client_ca = TestCa::new();
    let stranger_ca = TestCa::new();
    let files = TlsFiles::new();
    files.write_server_cert(&ca);
    let server = tls_server(&files, Some(&client_ca), &[]).await;
    assert!(server.process.output().contains("mutual_tls=true"));

    let without = async {
        health(tls_channel(&server, &ca, None).await?, "")
            .await
            .map_err(Into::into)
    };
    let refused: Result<ServingStatus, Box<dyn std::error::Error>> = without.await;
    assert!(
        refused.is_err(),
        "a client without a certificate is refused"
    );

    let foreign = async {
        let channel = tls_channel(&server, &ca, Some(stranger_ca.issue(&["billing"]))).await?;
        health(channel, "").await.map_err(Into::into)
    };
    let refused: Result<ServingStatus, Box<dyn std::error::Error>> = foreign.await;
    assert!(refused.is_err(), "a certificate from another CA is refused");

    let channel = tls_channel(&server, &ca, Some(client_ca.issue(&["billing"])))
        .await
        .expect("a mutual TLS connection");
    RegistrationServiceClient::new(channel)
        .register(register_request("ada@example.com"))
        .await
        .expect("registers with a client certificate");
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let ca = TestCa::new();
    let files = TlsFiles::new();
    let first = files.write_server_cert(&ca);
    let mut server = tls_server(&files, None, &[]).await;
    let (served, _) = presented(&server.addr, &ca, &[b"h2"]).await;
    assert_eq!(served, der(&first));
    let channel = tls_channel(&server, &ca, None)
        .await
        .expect("a TLS connection");

    // A key that does not match the certificate (a half-written rotation) is not used.
    let (other_cert, _) = ca.issue(&["127.0.0.1"]);
    std::fs::write(files.path("tls.crt"), &other_cert).expect("writes a certificate");
    server
        .process
        .wait_for_line("the new TLS files are not usable", WAIT)
        .await;
    assert_eq!(presented(&server.addr, &ca, &[b"h2"]).await.0, der(&first));

    // A renewed certificate and key: new connections get it, without a restart.
    let renewed = files.write_server_cert(&ca);
    wait::until("the renewed certificate to be served", WAIT, async || {
        (presented(&server.addr, &ca, &[b"h2"]).await.0 == der(&renewed)).then_some(())
    })
    .await;
    assert!(server.process.output().contains("TLS certificate reloaded"));
    // The connection made before the rotation still works.
    assert_eq!(
        health(channel, "").await.expect("answers"),
        ServingStatus::Serving
    );
    server.process.send_sigterm();
}

#[tokio::test]
async fn grpc_web_works_over_tls_with_http1() {
    let ca = TestCa::new();
    let files = TlsFiles::new();
    files.write_server_cert(&ca);
    let server = tls_server(&files, None, &[]).await;

    // ALPN offers h2 and http/1.1: a browser's fetch over HTTP/1.1 is served.
    let (_, alpn) = presented(&server.addr, &ca, &[b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

    let mut stream = connect_tls(&server.addr, &ca, &[b"http/1.1"]).await;
    // An empty HealthCheckRequest, framed for gRPC-Web.
    let frame = [0u8, 0, 0, 0, 0];
    let head = format!(
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: identity\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        frame.len()
    );
    stream.write_all(head.as_bytes()).await.expect("writes");
    stream.write_all(&frame).await.expect("writes");
    let mut response = Vec::new();
    // A TLS peer that closes without close_notify is fine here: the answer is complete.
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(
        response.contains("content-type: application/grpc-web+proto"),
        "{response}"
    );
    assert!(response.contains("grpc-status:0"), "{response}");
}

#[tokio::test]
async fn a_connection_is_asked_to_close_after_its_maximum_age() {
    let server = Server::start(&[("IDENTITY_MAX_CONNECTION_AGE_SECS", "1")]).await;
    // A bare HTTP/2 connection: the preface and empty SETTINGS, then read frames until GOAWAY.
    let mut stream = tokio::net::TcpStream::connect(&server.addr)
        .await
        .expect("connects");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("writes the preface");
    let goaway = tokio::time::timeout(WAIT, async {
        loop {
            let mut header = [0u8; 9];
            stream
                .read_exact(&mut header)
                .await
                .expect("a frame header");
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; length];
            stream
                .read_exact(&mut payload)
                .await
                .expect("a frame payload");
            if header[3] == 0x7 {
                return payload;
            }
        }
    })
    .await
    .expect("GOAWAY within the wait");
    // Error code NO_ERROR: a graceful close, not a failure.
    assert_eq!(&goaway[4..8], &[0, 0, 0, 0]);
}
