//! The API's TLS configuration.
//!
//! - Normal mode: a server certificate minted on the node by the cluster CA
//!   (`api.ca_key`), for the host name and every address on the links,
//!   loopback included (so a client reaching the node through a port
//!   forward, as the QEMU tests do, still verifies it); or, without the CA
//!   key, the config's own `node_cert`/`node_key` as given. Clients must
//!   present a certificate of the same CA.
//! - Maintenance mode: a throwaway self-signed certificate, whose SHA-256
//!   fingerprint goes on the console so `nodectl --fingerprint` can pin it.

use std::net::IpAddr;
use std::sync::Arc;

use caisson_api::audit::AuditLog;
use caisson_config::Api;
use caisson_pki::{fingerprint_sha256, pem_to_der, Ca, SERVER_DAYS};
use rustls::ServerConfig;

/// A TLS configuration and the console line that announces it.
pub struct Tls {
    pub config: Arc<ServerConfig>,
    pub line: String,
    /// Short form for health: `mTLS on port 50443`.
    pub detail: String,
}

/// The SANs besides the host name: every address, sorted, no duplicates.
pub fn sans(addresses: &[IpAddr]) -> Vec<String> {
    let mut sorted: Vec<IpAddr> = addresses.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted.into_iter().map(|a| a.to_string()).collect()
}

/// `maintenance mode: no machine config; API on port 50443, certificate fingerprint SHA256:<hex>`
pub fn maintenance_line(why: &str, port: u16, fingerprint: &str) -> String {
    format!("maintenance mode: {why}; API on port {port}, certificate fingerprint {fingerprint}")
}

pub fn maintenance(
    why: &str,
    hostname: &str,
    addresses: &[IpAddr],
    port: u16,
) -> Result<Tls, String> {
    let pair = caisson_pki::self_signed_server(hostname, &sans(addresses))
        .map_err(|e| format!("maintenance certificate: {e}"))?;
    let der = pem_to_der(&pair.cert_pem).map_err(|e| format!("maintenance certificate: {e}"))?;
    let fingerprint = fingerprint_sha256(&der);
    let config = caisson_api::tls::maintenance_server_config(&pair.cert_pem, &pair.key_pem)
        .map_err(|e| format!("maintenance TLS: {e}"))?;
    Ok(Tls {
        config,
        line: maintenance_line(why, port, &fingerprint),
        detail: format!("maintenance mode on port {port}, certificate fingerprint {fingerprint}"),
    })
}

pub fn normal(
    api: &Api,
    hostname: &str,
    addresses: &[IpAddr],
    audit: Arc<AuditLog>,
) -> Result<Tls, String> {
    let names = sans(addresses);
    let (cert, key, from) = match (&api.ca_key, &api.node_cert, &api.node_key) {
        (Some(ca_key), _, _) => {
            let ca = Ca::from_pem(&api.ca_cert, ca_key.expose())
                .map_err(|e| format!("api.ca_key: {e}"))?;
            let pair = ca
                .issue_server(hostname, &names, SERVER_DAYS)
                .map_err(|e| format!("server certificate for {hostname}: {e}"))?;
            let mut all = vec![hostname.to_string()];
            all.extend(names);
            (
                pair.cert_pem,
                pair.key_pem,
                format!("minted by the cluster CA for {}", all.join(", ")),
            )
        }
        (None, Some(cert), Some(key)) => (
            cert.clone(),
            key.expose().to_string(),
            "api.node_cert from the config (its names are as issued)".to_string(),
        ),
        _ => return Err("api: neither ca_key nor node_cert with node_key is set".into()),
    };
    let config = caisson_api::tls::mtls_server_config(&api.ca_cert, &cert, &key, audit)
        .map_err(|e| format!("api TLS: {e}"))?;
    Ok(Tls {
        config,
        line: format!(
            "api: serving mTLS on port {}; server certificate {from}",
            api.port
        ),
        detail: format!("mTLS on port {}", api.port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maintenance_line_is_exactly_as_documented() {
        let tls = maintenance(
            "no machine config",
            "caisson-1234abcd",
            &["10.0.2.15".parse().unwrap()],
            50443,
        )
        .unwrap();
        let prefix = "maintenance mode: no machine config; API on port 50443, certificate fingerprint SHA256:";
        assert!(tls.line.starts_with(prefix), "{}", tls.line);
        let hex = &tls.line[prefix.len()..];
        assert_eq!(hex.len(), 64);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn sans_are_sorted_and_unique() {
        let a: Vec<IpAddr> = ["10.0.2.15", "127.0.0.1", "10.0.2.15", "::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(sans(&a), ["10.0.2.15", "127.0.0.1", "::1"]);
    }

    #[test]
    fn normal_mode_mints_from_the_ca_or_uses_the_given_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Arc::new(AuditLog::new(dir.path().join("audit.jsonl")));
        let ca = caisson_pki::generate_ca("test").unwrap();
        let mut api = Api {
            port: 50443,
            ca_cert: ca.cert_pem.clone(),
            ca_key: Some(caisson_config::Secret::new(ca.key_pem.clone())),
            node_cert: None,
            node_key: None,
        };
        let tls = normal(
            &api,
            "node-1",
            &["10.0.2.15".parse().unwrap()],
            audit.clone(),
        )
        .unwrap();
        assert_eq!(
            tls.line,
            "api: serving mTLS on port 50443; server certificate minted by the cluster CA for node-1, 10.0.2.15"
        );
        let issuer = Ca::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        let given = issuer.issue_server("node-1", &[], 1).unwrap();
        api.ca_key = None;
        api.node_cert = Some(given.cert_pem);
        api.node_key = Some(caisson_config::Secret::new(given.key_pem));
        let tls = normal(&api, "node-1", &[], audit.clone()).unwrap();
        assert!(tls.line.contains("api.node_cert"), "{}", tls.line);
        api.node_key = Some(caisson_config::Secret::new(
            "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----",
        ));
        assert!(normal(&api, "node-1", &[], audit).is_err());
    }
}
