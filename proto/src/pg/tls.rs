//! The rustls client configuration for each `sslmode`, with libpq's rules for what is checked:
//!
//! | sslmode | chain checked | host name checked |
//! | --- | --- | --- |
//! | `prefer`, `require` | only if `sslrootcert` is given | no |
//! | `verify-ca` | yes | no |
//! | `verify-full` | yes | yes |
//!
//! `verify-ca` and `verify-full` need CA certificates: `sslrootcert=/path/ca.pem`, or else
//! `~/.postgresql/root.crt` as libpq looks for; `sslrootcert=system` takes the public web roots
//! and, as in libpq, allows `verify-full` only.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
    server::ParsedCertificate,
};

use super::{
    ConfigError,
    url::{RootCert, SslMode},
};

/// What the client checks of the server's certificate.
enum Check {
    Nothing,
    Chain(Arc<RootCertStore>),
    ChainAndName(Arc<RootCertStore>),
}

/// The client configuration for `mode` with `root_cert`. Reads the CA file now, so a bad one
/// is a start-up error.
pub(crate) fn client_config(
    mode: SslMode,
    root_cert: Option<&RootCert>,
) -> Result<ClientConfig, ConfigError> {
    let check = match (mode, root_cert) {
        (SslMode::VerifyFull, Some(RootCert::System)) => {
            Check::ChainAndName(Arc::new(system_roots()))
        }
        // libpq 16 refuses sslrootcert=system with anything weaker than verify-full.
        (weaker, Some(RootCert::System)) => {
            return Err(ConfigError::WeakModeWithSystemRoots(weaker));
        }
        // libpq ignores sslrootcert when TLS is off.
        (SslMode::Disable, _) => Check::Nothing,
        (SslMode::VerifyFull, Some(RootCert::File(path))) => {
            Check::ChainAndName(Arc::new(roots_from(path)?))
        }
        // libpq checks the chain whenever it has CA certificates, even for prefer and require.
        (_, Some(RootCert::File(path))) => Check::Chain(Arc::new(roots_from(path)?)),
        (SslMode::Prefer | SslMode::Require, None) => Check::Nothing,
        (SslMode::VerifyCa, None) => Check::Chain(Arc::new(default_roots(mode)?)),
        (SslMode::VerifyFull, None) => Check::ChainAndName(Arc::new(default_roots(mode)?)),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::ChainAndName(roots) => {
            WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| ConfigError::Tls(e.to_string()))?
        }
        Check::Chain(roots) => Arc::new(NameNotChecked {
            roots: Some(roots),
            algorithms: provider.signature_verification_algorithms,
        }),
        Check::Nothing => Arc::new(NameNotChecked {
            roots: None,
            algorithms: provider.signature_verification_algorithms,
        }),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// What an operator should do about a certificate the handshake refused, if that is why
/// `error` happened.
pub(crate) fn certificate_hint(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next = Some(error);
    while let Some(cause) = next {
        // rustls' error reaches us wrapped in an io::Error, whose `source` skips it.
        let inner = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map_or(cause, |inner| inner as &(dyn std::error::Error + 'static));
        if let Some(rustls::Error::InvalidCertificate(problem)) =
            inner.downcast_ref::<rustls::Error>()
        {
            return match problem {
                // BadSignature: a CA in sslrootcert has the issuer's name but not its key (a
                // re-issued CA, say).
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    Some("the server's certificate is not signed by a CA in sslrootcert")
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Some(
                    "the certificate is not issued for the host in DATABASE_URL: connect by a \
                     name it is issued for, or use sslmode=verify-ca to check the CA only",
                ),
                _ => None,
            };
        }
        next = cause.source();
    }
    None
}

fn system_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// libpq's default CA file, `~/.postgresql/root.crt`, required for `mode`.
fn default_roots(mode: SslMode) -> Result<RootCertStore, ConfigError> {
    let path = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
        .filter(|path| path.exists())
        .ok_or(ConfigError::MissingRootCert(mode))?;
    roots_from(&path)
}

fn roots_from(path: &Path) -> Result<RootCertStore, ConfigError> {
    let bad = |reason: String| ConfigError::RootCert {
        path: path.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("it holds no PEM certificate".into()));
    }
    Ok(roots)
}

/// The checks rustls' own verifier cannot be told to skip: `verify-ca` (with `roots`) checks
/// that the chain leads to a trusted root, whatever name the certificate carries; `prefer` and
/// `require` without `sslrootcert` (no `roots`) check nothing of the certificate: encryption
/// without authentication, as libpq does. Either way the handshake's own signatures are checked.
#[derive(Debug)]
struct NameNotChecked {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NameNotChecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
