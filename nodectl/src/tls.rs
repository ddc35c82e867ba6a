//! The client side of the API's TLS: rustls with the ring provider.
//!
//! Normally the node's certificate must chain to the cluster CA and we present
//! our client certificate. In maintenance mode the node has only a throwaway
//! self-signed certificate, so `--insecure` skips the CA and `--fingerprint`
//! pins that certificate's SHA-256 instead.
//!
//! Every verifier records the certificate the node presented, so that a
//! refusal can be explained: "that is a maintenance certificate", "it has
//! fingerprint X, not Y".

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// A pinned `SHA256:<hex>` certificate fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(String);

impl FromStr for Fingerprint {
    type Err = String;

    /// Accepts `SHA256:<hex>` as the node prints it; the prefix, colons
    /// between bytes and case are forgiven.
    fn from_str(s: &str) -> Result<Fingerprint, String> {
        let t = s.trim();
        let hex = match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &t[7..],
            _ => t,
        };
        let hex: String = hex
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "{s:?}: expected SHA256: followed by 64 hex digits, as the node's console shows it"
            ));
        }
        Ok(Fingerprint(format!("SHA256:{hex}")))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Fingerprint {
    pub fn of(cert_der: &[u8]) -> Fingerprint {
        Fingerprint(caisson_pki::fingerprint_sha256(cert_der))
    }
}

/// How we decide to trust a node, and what we present to it.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Normal mode: mutual TLS against the cluster CA of `context`.
    Cluster {
        context: String,
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
    },
    /// Maintenance mode: no CA; the certificate is pinned when a fingerprint
    /// is given and accepted blindly otherwise.
    Insecure { fingerprint: Option<Fingerprint> },
}

/// The certificate a node presented during one handshake.
pub type Seen = Arc<Mutex<Option<Vec<u8>>>>;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config for one connection, and the slot where its verifier puts
/// the node's certificate.
pub fn client_config(trust: &Trust) -> Result<(Arc<ClientConfig>, Seen), String> {
    let provider = provider();
    let seen: Seen = Arc::default();
    let check = match trust {
        Trust::Cluster {
            context, ca_pem, ..
        } => {
            let mut roots = RootCertStore::empty();
            for cert in certs(ca_pem, &format!("the CA of context {context:?}"))? {
                roots
                    .add(cert)
                    .map_err(|e| format!("the CA of context {context:?}: {e}"))?;
            }
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("the CA of context {context:?}: {e}"))?;
            Check::Ca(inner)
        }
        Trust::Insecure {
            fingerprint: Some(f),
        } => Check::Pin(f.clone()),
        Trust::Insecure { fingerprint: None } => Check::Nothing,
    };
    let verifier = Arc::new(Verifier {
        check,
        seen: seen.clone(),
        algs: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match trust {
        Trust::Cluster {
            context,
            cert_pem,
            key_pem,
            ..
        } => {
            let chain = certs(
                cert_pem,
                &format!("the client certificate of context {context:?}"),
            )?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| format!("the client key of context {context:?}: {e}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!("the client certificate and key of context {context:?}: {e}")
            })?
        }
        // Maintenance mode asks for no client certificate.
        Trust::Insecure { .. } => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), seen))
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no CERTIFICATE block in the PEM"));
    }
    Ok(certs)
}

#[derive(Debug)]
enum Check {
    Ca(Arc<WebPkiServerVerifier>),
    Pin(Fingerprint),
    Nothing,
}

#[derive(Debug)]
struct Verifier {
    check: Check,
    seen: Seen,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut slot) = self.seen.lock() {
            *slot = Some(end_entity.as_ref().to_vec());
        }
        match &self.check {
            Check::Ca(inner) => {
                inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            Check::Pin(want) if Fingerprint::of(end_entity.as_ref()) == *want => {
                Ok(ServerCertVerified::assertion())
            }
            // The explanation, with both fingerprints, is built from `seen`.
            Check::Pin(_) => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            Check::Nothing => Ok(ServerCertVerified::assertion()),
        }
    }

    // Signatures are always checked, pinned or not: a pinned certificate is
    // worthless if whoever presents it need not hold its key.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// What a presented certificate says about itself, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub fingerprint: Fingerprint,
    /// Self-signed by a node in maintenance mode (O=caisson-maintenance).
    pub maintenance: bool,
}

pub fn describe(cert_der: &[u8]) -> Presented {
    let maintenance = x509_parser::parse_x509_certificate(cert_der)
        .map(|(_, cert)| {
            let self_signed = cert.subject() == cert.issuer();
            let org = cert
                .subject()
                .iter_organization()
                .next()
                .and_then(|o| o.as_str().ok())
                .map(str::to_owned);
            self_signed && org.as_deref() == Some("caisson-maintenance")
        })
        .unwrap_or(false);
    Presented {
        fingerprint: Fingerprint::of(cert_der),
        maintenance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalised_and_checked() {
        let hex = "AB".repeat(32);
        let want = format!("SHA256:{}", "ab".repeat(32));
        assert_eq!(
            format!("SHA256:{hex}")
                .parse::<Fingerprint>()
                .unwrap()
                .to_string(),
            want
        );
        assert_eq!(
            format!("sha256:{hex}")
                .parse::<Fingerprint>()
                .unwrap()
                .to_string(),
            want
        );
        let colons: Vec<String> = (0..32).map(|_| "ab".to_string()).collect();
        assert_eq!(
            colons.join(":").parse::<Fingerprint>().unwrap().to_string(),
            want
        );
        assert!("SHA256:abcd"
            .parse::<Fingerprint>()
            .unwrap_err()
            .contains("64 hex digits"));
        assert!(format!("SHA256:{}", "zz".repeat(32))
            .parse::<Fingerprint>()
            .is_err());
    }

    #[test]
    fn recognises_a_maintenance_certificate() {
        let m = caisson_pki::self_signed_server("node", &[]).unwrap();
        let der = caisson_pki::pem_to_der(&m.cert_pem).unwrap();
        let p = describe(&der);
        assert!(p.maintenance);
        assert_eq!(
            p.fingerprint.to_string(),
            caisson_pki::fingerprint_sha256(&der)
        );

        let ca_pair = caisson_pki::generate_ca("c").unwrap();
        let ca = caisson_pki::Ca::from_pem(&ca_pair.cert_pem, &ca_pair.key_pem).unwrap();
        let s = ca.issue_server("node", &[], 1).unwrap();
        assert!(!describe(&caisson_pki::pem_to_der(&s.cert_pem).unwrap()).maintenance);
    }

    #[test]
    fn a_context_with_broken_pem_is_named() {
        let trust = Trust::Cluster {
            context: "prod".into(),
            ca_pem: "nope".into(),
            cert_pem: "".into(),
            key_pem: "".into(),
        };
        let e = client_config(&trust).unwrap_err();
        assert!(e.contains("the CA of context \"prod\""), "{e}");
    }
}
