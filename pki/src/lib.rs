//! Caisson's PKI.
//!
//! One cluster CA signs everything. Client certificates carry the caller's
//! role in the subject's Organization field (`admin`, `operator`, `reader`);
//! node server certificates are minted on the node from the CA in its config,
//! with SANs for the host name and every address.
//!
//! Keys are ECDSA P-256: rustls/ring, OpenSSL, curl and every HSM and FIPS
//! 140 validated module speak it, which matters on regulated sites; Ed25519
//! is smaller and faster but still missing from some of those (FIPS 186-5
//! only approved it in 2023).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// Validity of the cluster CA.
pub const CA_DAYS: i64 = 3650;
/// Validity of client certificates.
pub const CLIENT_DAYS: i64 = 365;
/// Validity of node server certificates; they are re-minted on every boot and
/// on every address change.
pub const SERVER_DAYS: i64 = 365;

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("cannot generate a key: {0}")]
    KeyGen(rcgen::Error),
    #[error("cannot read the {what} PEM: {source}")]
    Pem { what: &'static str, source: rcgen::Error },
    #[error("cannot sign the {what} certificate: {source}")]
    Sign { what: &'static str, source: rcgen::Error },
    #[error("invalid subject alternative name {name:?}: {source}")]
    San { name: String, source: rcgen::Error },
    #[error("certificate is not valid DER X.509: {0}")]
    Parse(String),
    #[error("certificate has no Organization (role) in its subject")]
    NoRole,
    #[error("certificate names role {0:?}; expected admin, operator or reader")]
    UnknownRole(String),
}

/// What a client may do, carried in its certificate's Organization field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Admin,
    Operator,
    Reader,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Reader];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Reader => "reader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Role, PkiError> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| PkiError::UnknownRole(s.to_string()))
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKey").field("cert_pem", &self.cert_pem).field("key_pem", &"***").finish()
    }
}

fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::KeyGen)
}

/// A random-enough serial: sha256 of the public key and the current time.
fn serial(key: &KeyPair) -> SerialNumber {
    let mut h = Sha256::new();
    h.update(key.public_key_raw());
    h.update(OffsetDateTime::now_utc().unix_timestamp_nanos().to_le_bytes());
    let d = h.finalize();
    let mut bytes = d[..16].to_vec();
    // Positive INTEGER.
    if let Some(b) = bytes.first_mut() {
        *b &= 0x7f;
    }
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // Tolerate clocks a few minutes apart.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

fn subject(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

/// Make a new cluster CA.
pub fn generate_ca(common_name: &str) -> Result<CertKey, PkiError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name, Some("caisson"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(serial(&key));
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key).map_err(|source| PkiError::Sign { what: "CA", source })?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The cluster CA, able to sign.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl Ca {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|source| PkiError::Pem { what: "CA key", source })?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|source| PkiError::Pem { what: "CA certificate", source })?;
        Ok(Ca { issuer, cert_pem: cert_pem.to_string() })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A client certificate for `common_name` acting as `role`.
    pub fn issue_client(&self, common_name: &str, role: Role, days: i64) -> Result<CertKey, PkiError> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(common_name, Some(role.as_str()));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial(&key));
        validity(&mut params, days);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Sign { what: "client", source })?;
        Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A server certificate for a node: `hostname` plus every name and
    /// address in `sans`.
    pub fn issue_server(&self, hostname: &str, sans: &[String], days: i64) -> Result<CertKey, PkiError> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(hostname, Some("caisson-node"));
        params.subject_alt_names = san_list(hostname, sans)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial(&key));
        validity(&mut params, days);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Sign { what: "server", source })?;
        Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn san_list(hostname: &str, sans: &[String]) -> Result<Vec<SanType>, PkiError> {
    let mut names: Vec<&str> = std::iter::once(hostname).chain(sans.iter().map(String::as_str)).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .to_string()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|source| PkiError::San { name: n.to_string(), source }),
        })
        .collect()
}

/// A throwaway self-signed server certificate for maintenance mode.
pub fn self_signed_server(hostname: &str, sans: &[String]) -> Result<CertKey, PkiError> {
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(hostname, Some("caisson-maintenance"));
    params.subject_alt_names = san_list(hostname, sans)?;
    params.serial_number = Some(serial(&key));
    validity(&mut params, 30);
    let cert = params.self_signed(&key).map_err(|source| PkiError::Sign { what: "maintenance", source })?;
    Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Who a verified client certificate belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub common_name: String,
    pub role: Role,
}

/// Read the CN and role of a client certificate. The chain must already have
/// been verified (by rustls); this only reads the subject.
pub fn client_identity(cert_der: &[u8]) -> Result<ClientIdentity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    let org = subject
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .ok_or(PkiError::NoRole)?;
    Ok(ClientIdentity { common_name, role: org.parse()? })
}

/// The subject CN of any certificate, verified or not.
pub fn common_name(cert_der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    Ok(cn)
}

/// `SHA256:<hex>` of a DER certificate, as maintenance mode shows it.
pub fn fingerprint_sha256(cert_der: &[u8]) -> String {
    format!("SHA256:{}", hex::encode(Sha256::digest(cert_der)))
}

/// DER of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(p.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_carry_their_role_and_chain_to_the_ca() {
        let ca_pair = generate_ca("test CA").unwrap();
        let ca = Ca::from_pem(&ca_pair.cert_pem, &ca_pair.key_pem).unwrap();
        for role in Role::ALL {
            let c = ca.issue_client("alice", role, CLIENT_DAYS).unwrap();
            let der = pem_to_der(&c.cert_pem).unwrap();
            let id = client_identity(&der).unwrap();
            assert_eq!(id, ClientIdentity { common_name: "alice".into(), role });
            let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
            let ca_der = pem_to_der(&ca_pair.cert_pem).unwrap();
            let (_, ca_parsed) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
            assert_eq!(parsed.issuer(), ca_parsed.subject());
            parsed.verify_signature(Some(ca_parsed.public_key())).unwrap();
        }
    }

    #[test]
    fn a_foreign_ca_does_not_verify() {
        let ours = generate_ca("ours").unwrap();
        let theirs = generate_ca("theirs").unwrap();
        let theirs_ca = Ca::from_pem(&theirs.cert_pem, &theirs.key_pem).unwrap();
        let c = theirs_ca.issue_client("mallory", Role::Admin, 1).unwrap();
        let der = pem_to_der(&c.cert_pem).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ours_der = pem_to_der(&ours.cert_pem).unwrap();
        let (_, ours_parsed) = x509_parser::parse_x509_certificate(&ours_der).unwrap();
        assert!(parsed.verify_signature(Some(ours_parsed.public_key())).is_err());
    }

    #[test]
    fn server_certificates_name_host_and_addresses() {
        let ca_pair = generate_ca("ca").unwrap();
        let ca = Ca::from_pem(&ca_pair.cert_pem, &ca_pair.key_pem).unwrap();
        let s = ca.issue_server("node-1", &["10.0.2.15".into(), "fe80::1".into(), "node-1".into()], 30).unwrap();
        let der = pem_to_der(&s.cert_pem).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san.value.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&"IPAddress(0a:00:02:0f)".to_string()), "{names:?}");
        assert!(names.contains(&"DNSName(node-1)".to_string()), "{names:?}");
    }

    #[test]
    fn unknown_or_missing_roles_are_refused() {
        assert!(matches!("root".parse::<Role>(), Err(PkiError::UnknownRole(r)) if r == "root"));
        let m = self_signed_server("x", &[]).unwrap();
        let der = pem_to_der(&m.cert_pem).unwrap();
        assert!(matches!(client_identity(&der), Err(PkiError::UnknownRole(_))));
        assert!(fingerprint_sha256(&der).starts_with("SHA256:"));
        assert_eq!(fingerprint_sha256(&der).len(), 7 + 64);
        assert!(!format!("{m:?}").contains("PRIVATE"));
    }
}
