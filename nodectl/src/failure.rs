//! Why a call failed, in a sentence a person can act on.
//!
//! Errors arrive from three layers: the TCP connect (an `io::Error`), the TLS
//! handshake (a `rustls::Error`, sometimes inside an `io::Error`, sometimes
//! only on the first read), and HTTP (a status with the API's
//! `{code, error}` body). Each gets a stable `code` for `-o json` and a
//! sentence; the node's own sentence is used verbatim where it sent one.

use std::error::Error as StdError;
use std::io;

use caisson_api::types::ErrorBody;
use rustls::{AlertDescription, CertificateError};
use serde::Serialize;

use crate::target::Target;
use crate::tls::{describe, Trust};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub code: String,
    pub error: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl Failure {
    pub fn new(code: &str, error: impl Into<String>) -> Failure {
        Failure {
            code: code.to_string(),
            error: error.into(),
        }
    }

    /// A non-2xx answer: the node's `{code, error}` when it sent one.
    pub fn from_status(status: u16, body: &[u8]) -> Failure {
        if let Ok(b) = serde_json::from_slice::<ErrorBody>(body) {
            return Failure {
                code: b.code,
                error: b.error,
            };
        }
        let text = String::from_utf8_lossy(body);
        let first = text.lines().next().unwrap_or("").trim();
        let first: String = first.chars().take(200).collect();
        let sep = if first.is_empty() { "" } else { ": " };
        Failure::new(
            &format!("http-{status}"),
            format!("the node answered HTTP {status}{sep}{first}"),
        )
    }
}

/// Where in the conversation an error struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Handshake,
    /// After the handshake: sending the request or reading the answer.
    Exchange,
}

/// What the explanation needs to know about the attempt.
pub struct Dial<'a> {
    pub target: &'a Target,
    pub trust: &'a Trust,
    /// The certificate the node presented, if the handshake got that far.
    pub seen: Option<Vec<u8>>,
}

/// Explain a transport error.
pub fn explain(err: &(dyn StdError + 'static), stage: Stage, dial: &Dial<'_>) -> Failure {
    if let Some(tls) = find::<rustls::Error>(err) {
        return explain_tls(tls, dial);
    }
    let port = dial.target.port;
    let kind = find::<io::Error>(err).map(io::Error::kind);
    match (stage, kind) {
        (Stage::Connect, Some(io::ErrorKind::ConnectionRefused)) => Failure::new(
            "connection-refused",
            format!("connection refused: is the node up and is port {port} reachable?"),
        ),
        (_, Some(io::ErrorKind::TimedOut)) => timeout(dial.target),
        (
            Stage::Connect,
            Some(io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable),
        ) => Failure::new(
            "unreachable",
            format!(
                "no route to {}: is the node's address right?",
                dial.target.host
            ),
        ),
        // A node that refuses our certificate under TLS 1.3 does so after our
        // side thinks the handshake is done; when its alert is lost to a
        // reset, a connection closed before any answer is the only trace.
        (
            Stage::Exchange,
            Some(
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof,
            ),
        )
        | (Stage::Exchange, None)
            if matches!(dial.trust, Trust::Cluster { .. }) && closed_early(err) =>
        {
            client_cert_refused()
        }
        _ => Failure::new(
            "transport",
            format!("talking to {}: {}", dial.target.authority(), chain(err)),
        ),
    }
}

pub fn timeout(target: &Target) -> Failure {
    Failure::new(
        "timeout",
        format!(
            "no answer from {} in time: is the node up and is port {} reachable?",
            target.authority(),
            target.port
        ),
    )
}

fn client_cert_refused() -> Failure {
    Failure::new(
        "client-certificate-refused",
        "the node refused our client certificate (is it from this cluster's CA?)",
    )
}

fn closed_early(err: &(dyn StdError + 'static)) -> bool {
    if let Some(h) = find::<hyper::Error>(err) {
        if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
            return true;
        }
    }
    matches!(
        find::<io::Error>(err).map(io::Error::kind),
        Some(
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        )
    )
}

fn explain_tls(err: &rustls::Error, dial: &Dial<'_>) -> Failure {
    let presented = dial.seen.as_deref().map(describe);
    match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => match (&presented, dial.trust) {
            (Some(p), _) if p.maintenance => Failure::new(
                "maintenance",
                format!(
                    "node is in maintenance mode: use --insecure --fingerprint {} \
                     (first check that the node's console shows the same fingerprint)",
                    p.fingerprint
                ),
            ),
            (_, Trust::Cluster { context, .. }) => Failure::new(
                "unknown-ca",
                format!(
                    "certificate signed by an unknown CA: the node's certificate is not from the CA of context \
                     {context:?} (wrong --context, or the node belongs to another cluster)"
                ),
            ),
            _ => Failure::new("unknown-ca", "certificate signed by an unknown CA"),
        },
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
            let expected = match dial.trust {
                Trust::Insecure { fingerprint: Some(f) } => f.to_string(),
                _ => "?".into(),
            };
            let got = presented.map(|p| p.fingerprint.to_string()).unwrap_or_else(|| "?".into());
            Failure::new(
                "fingerprint-mismatch",
                format!(
                    "certificate fingerprint mismatch: expected {expected}, the node presented {got} \
                     (another node, a reinstalled one, or someone in the middle: check the node's console)"
                ),
            )
        }
        rustls::Error::InvalidCertificate(e) => Failure::new("server-certificate", server_cert_sentence(e, dial.target)),
        rustls::Error::AlertReceived(alert) => alert_sentence(*alert),
        other => Failure::new("tls", format!("TLS with {} failed: {other}", dial.target.authority())),
    }
}

fn server_cert_sentence(e: &CertificateError, target: &Target) -> String {
    match e {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the node's certificate has expired (or this machine's clock is wrong)".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the node's certificate is not valid yet (is this machine's clock right?)".into()
        }
        CertificateError::NotValidForNameContext { presented, .. } => format!(
            "the node's certificate does not name {}: it holds {}; dial one of those",
            target.host,
            presented.join(", ")
        ),
        CertificateError::NotValidForName => {
            format!(
                "the node's certificate does not name {}: dial it by a name or address it holds",
                target.host
            )
        }
        other => format!("the node's certificate is not acceptable: {other:?}"),
    }
}

fn alert_sentence(alert: AlertDescription) -> Failure {
    match alert {
        AlertDescription::BadCertificate
        | AlertDescription::UnknownCA
        | AlertDescription::CertificateUnknown
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::DecryptError
        | AlertDescription::AccessDenied => client_cert_refused(),
        AlertDescription::CertificateExpired => Failure::new(
            "client-certificate-refused",
            "the node refused our client certificate: it has expired (issue a new one with `nodectl gen client`)",
        ),
        AlertDescription::CertificateRevoked => {
            Failure::new("client-certificate-refused", "the node refused our client certificate: it is revoked")
        }
        AlertDescription::CertificateRequired => {
            Failure::new("client-certificate-required", "the node requires a client certificate")
        }
        other => Failure::new("tls", format!("the node aborted the TLS handshake ({other:?})")),
    }
}

/// The first `T` in an error's chain, looking inside `io::Error`s too
/// (whose `source()` skips the error they wrap).
fn find<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if let Some(t) = find::<T>(inner) {
                return Some(t);
            }
        }
        cur = e.source();
    }
    None
}

fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dial<'a>(target: &'a Target, trust: &'a Trust, seen: Option<Vec<u8>>) -> Dial<'a> {
        Dial {
            target,
            trust,
            seen,
        }
    }

    fn cluster() -> Trust {
        Trust::Cluster {
            context: "prod".into(),
            ca_pem: String::new(),
            cert_pem: String::new(),
            key_pem: String::new(),
        }
    }

    #[test]
    fn the_nodes_error_body_is_used_verbatim() {
        let f = Failure::from_status(
            403,
            br#"{"code":"forbidden","error":"role reader may not call reboot"}"#,
        );
        assert_eq!(
            f,
            Failure::new("forbidden", "role reader may not call reboot")
        );
        let f = Failure::from_status(502, b"Bad Gateway\nmore");
        assert_eq!(
            f,
            Failure::new("http-502", "the node answered HTTP 502: Bad Gateway")
        );
    }

    #[test]
    fn refused_connections_name_the_port() {
        let t = Target::parse("10.0.0.5").unwrap();
        let trust = cluster();
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        let f = explain(&e, Stage::Connect, &dial(&t, &trust, None));
        assert_eq!(
            f.error,
            "connection refused: is the node up and is port 50443 reachable?"
        );
    }

    #[test]
    fn tls_errors_become_sentences_even_inside_io_errors() {
        let t = Target::parse("10.0.0.5").unwrap();
        let trust = cluster();
        let unknown = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let f = explain(&unknown, Stage::Handshake, &dial(&t, &trust, None));
        assert_eq!(f.code, "unknown-ca");
        assert!(
            f.error.starts_with("certificate signed by an unknown CA"),
            "{f}"
        );

        let m = caisson_pki::self_signed_server("n", &[]).unwrap();
        let der = caisson_pki::pem_to_der(&m.cert_pem).unwrap();
        let f = explain(
            &unknown,
            Stage::Handshake,
            &dial(&t, &trust, Some(der.clone())),
        );
        assert_eq!(f.code, "maintenance");
        assert!(
            f.error.contains(&format!(
                "--insecure --fingerprint {}",
                caisson_pki::fingerprint_sha256(&der)
            )),
            "{f}"
        );

        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::UnknownCA),
        );
        let f = explain(&alert, Stage::Exchange, &dial(&t, &trust, None));
        assert_eq!(
            f.error,
            "the node refused our client certificate (is it from this cluster's CA?)"
        );
    }
}
