//! Shared by the end-to-end test files that include it (`mod support;`): a private CA of the
//! test's own, made with `rcgen` (a dev-dependency only), that issues server certificates for
//! the test SMTP server's implicit TLS, a TLS-only PostgreSQL and identity-server's TLS, and
//! client certificates for mutual TLS.

#![allow(dead_code)] // Each test file uses its own subset.

use std::path::{Path, PathBuf};

use identity_tests::{pg::ServerTls, smtp::TlsIdentity};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A fresh CA, its certificate in a PEM file (removed on drop) for clients to trust, and a
/// certificate for `127.0.0.1` it signed.
#[derive(Debug)]
pub struct TestCa {
    /// A server certificate for `127.0.0.1` and its key, for the test SMTP server.
    pub identity: TlsIdentity,
    issuer: CertifiedIssuer<'static, KeyPair>,
    ca_file: PathBuf,
}

impl TestCa {
    /// Makes a fresh CA and a server certificate for `127.0.0.1`.
    pub fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            // A name of its own, as two real CAs have.
            .push(
                DnType::CommonName,
                format!("identity-tests CA {}", uuid::Uuid::new_v4().simple()),
            );
        let issuer =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a CA key"))
                .expect("a self-signed CA certificate");
        let ca_file = std::env::temp_dir().join(format!(
            "identity-tests-ca-{}.pem",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&ca_file, issuer.pem()).expect("the CA file is written");
        let (cert_chain_pem, key_pem) = issue(&issuer, &["127.0.0.1"]);
        Self {
            identity: TlsIdentity {
                cert_chain_pem,
                key_pem,
            },
            issuer,
            ca_file,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses) and its key, for PostgreSQL.
    pub fn server_tls(&self, names: &[&str]) -> ServerTls {
        let (cert_pem, key_pem) = issue(&self.issuer, names);
        ServerTls { cert_pem, key_pem }
    }

    /// A certificate for `names` signed by this CA and its key, both PEM (a server's, or a
    /// client's for mutual TLS).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        issue(&self.issuer, names)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, PEM, for `RELAY_SMTP_CA_FILE`, `sslrootcert` or any client.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
}

/// A certificate for `names` signed by `issuer`, and its key, both PEM.
fn issue(issuer: &CertifiedIssuer<'static, KeyPair>, names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let key = KeyPair::generate().expect("a server key");
    let cert = CertificateParams::new(names)
        .expect("server parameters")
        .signed_by(&key, issuer)
        .expect("a server certificate signed by the CA");
    (cert.pem(), key.serialize_pem())
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}
