//! Shared by the end-to-end test files that include it (`mod support;`): a private CA and a
//! server certificate for 127.0.0.1 signed by it, made with `rcgen` (a dev-dependency only),
//! for the test SMTP server's implicit TLS.

use std::path::{Path, PathBuf};

use identity_tests::smtp::TlsIdentity;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA of the test's own, its certificate in a PEM file (removed on drop) for the client to
/// trust, and a certificate for `127.0.0.1` it signed, for the server.
#[derive(Debug)]
pub struct TestCa {
    /// The server certificate and key.
    pub identity: TlsIdentity,
    ca_file: PathBuf,
}

impl TestCa {
    /// Makes a fresh CA and server certificate.
    pub fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "identity-tests CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a CA key"))
            .expect("a self-signed CA certificate");

        let server_key = KeyPair::generate().expect("a server key");
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("server parameters")
            .signed_by(&server_key, &ca)
            .expect("a server certificate signed by the CA");

        let ca_file = std::env::temp_dir().join(format!(
            "identity-tests-ca-{}.pem",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&ca_file, ca.pem()).expect("the CA file is written");
        Self {
            identity: TlsIdentity {
                cert_chain_pem: server.pem(),
                key_pem: server_key.serialize_pem(),
            },
            ca_file,
        }
    }

    /// The CA certificate, PEM, for `RELAY_SMTP_CA_FILE` or any client.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}
