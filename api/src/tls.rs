//! TLS for the API: mutual TLS against the cluster CA in normal mode, a
//! throwaway self-signed certificate in maintenance mode. Client certificates
//! are optional at the TLS layer so that a caller without one gets a readable
//! HTTP refusal (and an audit line) rather than a bare handshake alert; a
//! certificate that *is* presented must chain to the CA, and every such
//! handshake refusal is audited too.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use thiserror::Error;

use crate::audit::{AuditLog, AuditRecord};

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read the {what} PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn certs_from_pem(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Pem { what, reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { what, reason: "no CERTIFICATE block".into() });
    }
    Ok(certs)
}

pub fn key_from_pem(what: &'static str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem { what, reason: e.to_string() })
}

/// Normal mode: clients must chain to `ca_pem`; refusals go to `audit`.
pub fn mtls_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    audit: Arc<AuditLog>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem("CA certificate", ca_pem)? {
        roots.add(c).map_err(|e| TlsError::Pem { what: "CA certificate", reason: e.to_string() })?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = Arc::new(AuditingVerifier { inner, audit });
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_from_pem("server certificate", cert_pem)?, key_from_pem("server key", key_pem)?)
        .map(Arc::new)
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// Maintenance mode: no client certificates; the server certificate is
/// throwaway and its fingerprint is shown on the console.
pub fn maintenance_server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs_from_pem("server certificate", cert_pem)?, key_from_pem("server key", key_pem)?)
        .map(Arc::new)
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// Delegates to webpki and writes an audit line for every certificate it
/// refuses (unknown CA, expired, wrong usage).
#[derive(Debug)]
struct AuditingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    audit: Arc<AuditLog>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path()).finish()
    }
}

fn refused_cn(cert: &CertificateDer<'_>) -> String {
    // The certificate is untrusted: its CN is recorded as a claim only.
    x509_cn(cert.as_ref()).map(|cn| format!("{cn} (unverified)")).unwrap_or_else(|| "-".into())
}

fn x509_cn(der: &[u8]) -> Option<String> {
    caisson_pki::client_identity(der).ok().map(|id| id.common_name).or_else(|| {
        // No valid role: still try to name who it claims to be.
        caisson_pki::common_name(der).ok()
    })
}

impl ClientCertVerifier for AuditingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self.inner.verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &result {
            let record = AuditRecord::now(
                &refused_cn(end_entity),
                "-",
                "tls",
                serde_json::Value::Null,
                format!("refused: client certificate rejected: {e}"),
            );
            if let Err(io) = self.audit.append(&record) {
                tracing::error!("audit log {}: {io}", self.audit.path().display());
            }
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
