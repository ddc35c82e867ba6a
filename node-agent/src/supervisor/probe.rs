//! Health probes: the [`Probe`] trait and the built-in [`HttpGet`] and
//! [`UnixSocketConnect`]. The supervisor bounds each check with the
//! service's probe timeout, so a probe may simply await.

use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use hyper::body::Body as _;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

/// One health check. `Ok` carries a detail for the status ("HTTP 200"),
/// `Err` why the service is not healthy.
pub trait Probe: Send + Sync {
    fn check(&self) -> BoxFuture<'_, Result<String, String>>;
}

/// Healthy when a GET of the URL answers 200. `https` does not verify the
/// certificate (k3s's health endpoints use its own self-signed CA) but does
/// check the handshake's signatures. The host must be an IP address or
/// `localhost`: the agent resolves no names.
pub struct HttpGet {
    url: String,
    uri: Uri,
    ip: IpAddr,
    port: u16,
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for HttpGet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HttpGet").field(&self.url).finish()
    }
}

/// The most of a failing answer's body that is quoted.
const BODY_QUOTED: usize = 200;

impl HttpGet {
    pub fn new(url: &str) -> Result<HttpGet, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("health URL {url:?}: {e}"))?;
        let (https, default_port) = match uri.scheme_str() {
            Some("http") => (false, 80),
            Some("https") => (true, 443),
            _ => {
                return Err(format!(
                    "health URL {url:?}: only http:// and https:// are probed"
                ))
            }
        };
        let host = uri.host().unwrap_or_default();
        let ip = match host.trim_start_matches('[').trim_end_matches(']') {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            literal => literal.parse().map_err(|_| {
                format!("health URL {url:?}: the host must be an IP address (the agent resolves no names)")
            })?,
        };
        let tls = if https {
            Some(TlsConnector::from(insecure_client_config()?))
        } else {
            None
        };
        Ok(HttpGet {
            url: url.to_string(),
            port: uri.port_u16().unwrap_or(default_port),
            uri,
            ip,
            tls,
        })
    }

    async fn get(&self) -> Result<String, String> {
        let tcp = TcpStream::connect((self.ip, self.port))
            .await
            .map_err(|e| format!("{}: {e}", self.url))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.exchange(tcp).await,
            Some(tls) => {
                let stream = tls
                    .connect(ServerName::IpAddress(self.ip.into()), tcp)
                    .await
                    .map_err(|e| format!("{}: TLS: {e}", self.url))?;
                self.exchange(stream).await
            }
        }
    }

    async fn exchange<S>(&self, io: S) -> Result<String, String>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let failed = |e: hyper::Error| format!("{}: {e}", self.url);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(failed)?;
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let authority = self.uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let req = Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(
                hyper::header::USER_AGENT,
                concat!("caisson-node-agent/", env!("CARGO_PKG_VERSION")),
            )
            .body(String::new())
            .map_err(|e| format!("{}: {e}", self.url))?;
        let exchange = async move {
            let response = sender.send_request(req).await.map_err(failed)?;
            let status = response.status();
            let mut body = response.into_body();
            let mut text = Vec::new();
            while text.len() < BODY_QUOTED {
                match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            text.extend_from_slice(data);
                        }
                    }
                    Some(Err(_)) | None => break,
                }
            }
            // Lets the connection task end once the exchange is over.
            drop(sender);
            text.truncate(BODY_QUOTED);
            let text = String::from_utf8_lossy(&text).trim().replace('\n', " ");
            let said = if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            };
            if status == hyper::StatusCode::OK {
                Ok(format!("HTTP 200 from {}{said}", self.url))
            } else {
                Err(format!("HTTP {} from {}{said}", status.as_u16(), self.url))
            }
        };
        // The connection is driven here rather than in a task of its own,
        // so a probe that times out leaves nothing running behind it.
        let (result, _) = tokio::join!(exchange, conn);
        result
    }
}

impl Probe for HttpGet {
    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(self.get())
    }
}

/// Healthy when something accepts connections on the socket.
pub struct UnixSocketConnect(pub PathBuf);

impl Probe for UnixSocketConnect {
    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            UnixStream::connect(&self.0)
                .await
                .map(|_| format!("{} accepts connections", self.0.display()))
                .map_err(|e| format!("{}: {e}", self.0.display()))
        })
    }
}

fn insecure_client_config() -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate {
        algs: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any certificate; the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn urls_must_name_an_address_and_a_known_scheme() {
        assert!(HttpGet::new("http://127.0.0.1:10248/healthz").is_ok());
        assert!(HttpGet::new("https://[::1]:6443/ping").is_ok());
        let p = HttpGet::new("http://localhost/x").unwrap();
        assert_eq!((p.ip, p.port), (IpAddr::V4(Ipv4Addr::LOCALHOST), 80));
        assert!(HttpGet::new("https://k3s.local/ping")
            .unwrap_err()
            .contains("resolves no names"));
        assert!(HttpGet::new("ftp://127.0.0.1/").is_err());
    }

    /// Answers one request with `response`, returning what it was sent.
    async fn one_shot_server(response: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(response.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, task)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_get_wants_200_and_quotes_a_failure() {
        let (port, server) =
            one_shot_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        let probe = HttpGet::new(&format!("http://127.0.0.1:{port}/readyz?verbose")).unwrap();
        assert_eq!(
            probe.check().await,
            Ok(format!(
                "HTTP 200 from http://127.0.0.1:{port}/readyz?verbose: ok"
            ))
        );
        assert!(server
            .await
            .unwrap()
            .starts_with("GET /readyz?verbose HTTP/1.1\r\n"));

        let (port, _server) = one_shot_server(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 21\r\nConnection: close\r\n\r\n[-]etcd failed\nnot ok",
        )
        .await;
        let probe = HttpGet::new(&format!("http://127.0.0.1:{port}/readyz")).unwrap();
        let why = probe.check().await.unwrap_err();
        assert!(why.starts_with("HTTP 500 from"), "{why}");
        assert!(why.ends_with(": [-]etcd failed not ok"), "{why}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn https_accepts_a_self_signed_certificate() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::PrivateKeyDer;
        let pair = caisson_pki::self_signed_server("k3s", &["127.0.0.1".into()]).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = vec![0; 4096];
            let _ = tls.read(&mut buf).await.unwrap();
            tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npong")
                .await
                .unwrap();
            tls.shutdown().await.unwrap();
        });
        let probe = HttpGet::new(&format!("https://127.0.0.1:{port}/ping")).unwrap();
        assert_eq!(
            probe.check().await,
            Ok(format!("HTTP 200 from https://127.0.0.1:{port}/ping: pong"))
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_listening_is_unhealthy() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let probe = HttpGet::new(&format!("http://127.0.0.1:{port}/")).unwrap();
        assert!(probe.check().await.is_err());
        let sock = UnixSocketConnect(PathBuf::from("/nonexistent/containerd.sock"));
        assert!(sock.check().await.is_err());
    }
}
