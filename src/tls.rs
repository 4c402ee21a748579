//! TLS client configurations for both services (rustls with the ring
//! provider), built once from the URLs' parameters when the configuration
//! is parsed, so that a missing or unreadable certificate file is a
//! configuration error at start, not a connection error later; and the
//! certificate verifier of the worker application's https:// address
//! (`--worker-addr`, `--worker-ca-file`), built when the relay starts.
//!
//! Invariants owned here:
//! - a configuration that asks for verification verifies: the chain against
//!   the given roots, and the host name unless the mode says otherwise
//!   (PostgreSQL's `verify-ca`);
//! - verification is skipped only where the user's URL says so (`sslmode`
//!   `prefer`/`require` without a root certificate, as libpq does, or
//!   `verify=verify_none`); the handshake's signatures are still checked;
//! - key material never appears in an error or a log line: errors name the
//!   file and the kind of problem only.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// The platform's trust store (`/etc/ssl/certs` and the like).
    System,
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Chain to a trusted root and the host name (the default for amqps,
    /// PostgreSQL's `verify-full`).
    Full,
    /// Chain to a trusted root only (PostgreSQL's `verify-ca`).
    ChainOnly,
    /// Nothing: encrypts, but a man in the middle is not detected
    /// (PostgreSQL's `require` without a root certificate, amqps'
    /// `verify=verify_none`).
    Nothing,
}

/// A client certificate and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a TLS configuration could not be built. Names files, never contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the {what} {path} holds no PEM certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the platform's trust store holds no usable root certificate ({0})")]
    SystemRoots(String),
    #[error("the client certificate {cert} and key {key} cannot be used together: {reason}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("the root certificates cannot verify servers: {0}")]
    Verifier(String),
}

/// The one crypto provider of the binary's TLS clients.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a client configuration: `roots` is required unless `verify` is
/// [`Verify::Nothing`].
pub fn client_config(
    verify: Verify,
    roots: Option<&Roots>,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = server_verifier(verify, roots)?;
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => {
            let certs = load_certs("client certificate", &id.cert)?;
            let key = PrivateKeyDer::from_pem_file(&id.key).map_err(|e| TlsError::File {
                what: "client key",
                path: id.key.clone(),
                reason: pem_reason(&e),
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::Identity {
                    cert: id.cert.clone(),
                    key: id.key.clone(),
                    reason: e.to_string(),
                })
        }
    }
}

/// What checks the server's certificate: `roots` is required unless
/// `verify` is [`Verify::Nothing`]. Also used on its own where the client
/// builds its TLS configuration itself (tonic, for the worker application).
pub fn server_verifier(
    verify: Verify,
    roots: Option<&Roots>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let provider = provider();
    Ok(match (verify, roots) {
        (Verify::Nothing, _) => Arc::new(NoVerification(provider)),
        (mode, Some(roots)) => {
            let store = Arc::new(load_roots(roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider)
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            if mode == Verify::ChainOnly {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
        (_, None) => return Err(TlsError::Verifier("no root certificates given".into())),
    })
}

fn load_roots(roots: &Roots) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let (added, _) =
                store.add_parsable_certificates(load_certs("root certificate file", path)?);
            if added == 0 {
                return Err(TlsError::NoCertificate {
                    what: "root certificate file",
                    path: path.clone(),
                });
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let reason = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(TlsError::SystemRoots(reason));
            }
        }
    }
    Ok(store)
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| TlsError::File {
            what,
            path: path.to_owned(),
            reason: pem_reason(&e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A PEM error's kind, without any of the file's bytes.
fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM item of the expected kind".into(),
        _ => "not valid PEM".into(),
    }
}

/// Checks the chain but not the name (PostgreSQL's `verify-ca`): webpki
/// checks the name only after the chain has verified, so a name error
/// means the chain is good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any certificate, still checking that the server holds its key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
