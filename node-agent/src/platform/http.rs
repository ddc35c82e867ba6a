//! A small HTTP/1.1 client for the platform's sources (the kernel command
//! line URL, the metadata service): one request per connection, the whole
//! exchange bounded by a time-out, the body by a size.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One request. `host` is a name or an address (IPv6 without brackets).
pub struct Request<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub path_and_query: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub timeout: Duration,
    pub max_body: usize,
}

impl Request<'_> {
    /// Connect, send, read the answer: all within `timeout`.
    pub async fn send(&self) -> Result<Response, String> {
        match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn exchange(&self) -> Result<Response, String> {
        let tcp = tokio::net::TcpStream::connect((self.host, self.port))
            .await
            .map_err(|e| format!("connect to {}:{}: {e}", self.host, self.port))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        // Ends when the response is read and the connection dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let authority = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.to_string()
        };
        let host_header = if self.port == 80 {
            authority
        } else {
            format!("{authority}:{}", self.port)
        };
        let mut builder = hyper::Request::builder()
            .method(self.method)
            .uri(self.path_and_query)
            .header(hyper::header::HOST, host_header)
            .header(
                hyper::header::USER_AGENT,
                concat!("caisson-node-agent/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in self.headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(bytes::Bytes::new()))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{} {}: {e}", self.method, self.path_and_query))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    format!("the answer is larger than {} bytes", self.max_body)
                } else {
                    format!("reading the answer: {e}")
                }
            })?
            .to_bytes()
            .to_vec();
        Ok(Response { status, body })
    }
}

/// `404 Not Found`, for messages.
pub fn status_text(status: u16) -> String {
    match hyper::StatusCode::from_u16(status) {
        Ok(s) => format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
            .trim_end()
            .to_string(),
        Err(_) => status.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod testserver {
    //! A loopback HTTP server for the tests: answers each request with what
    //! `answer(method, path, headers)` returns, and records the requests.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    pub type Seen = Arc<Mutex<Vec<String>>>;

    /// `answer` gets `METHOD /path` and the headers (lower-case names) and
    /// returns (status, body); `None` never answers (holds the connection).
    pub fn start(
        answer: impl Fn(&str, &[(String, String)]) -> Option<(u16, Vec<u8>)> + Send + 'static,
    ) -> (u16, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Seen = Arc::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let request = line
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
                let length: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                record.lock().unwrap().push(request.clone());
                match answer(&request, &headers) {
                    Some((status, body)) => {
                        let head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(head.as_bytes());
                        let _ = stream.write_all(&body);
                    }
                    None => {
                        // Hold it open, unanswered, until the client gives up.
                        std::thread::spawn(move || {
                            let mut sink = [0u8; 16];
                            let _ = stream.read(&mut sink);
                        });
                    }
                }
            }
        });
        (port, seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(port: u16, path: &str, timeout_ms: u64, max_body: usize) -> Request<'_> {
        Request {
            method: "GET",
            host: "127.0.0.1",
            port,
            path_and_query: path,
            headers: &[],
            timeout: Duration::from_millis(timeout_ms),
            max_body,
        }
    }

    #[tokio::test]
    async fn gets_a_body_with_its_status() {
        let (port, seen) = testserver::start(|req, headers| {
            let host = headers
                .iter()
                .find(|(k, _)| k == "host")
                .map(|(_, v)| v.clone());
            Some((
                200,
                format!("{req} host={}", host.unwrap_or_default()).into_bytes(),
            ))
        });
        let r = get(port, "/c?x=1", 5000, 1024).send().await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            format!("GET /c?x=1 host=127.0.0.1:{port}")
        );
        assert_eq!(seen.lock().unwrap().as_slice(), ["GET /c?x=1"]);
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_a_big_body_is_refused() {
        let (port, _) = testserver::start(|req, _| match req {
            "GET /big" => Some((200, vec![b'x'; 4096])),
            _ => None,
        });
        let e = get(port, "/stall", 300, 1024).send().await.unwrap_err();
        assert_eq!(e, "no answer within 300ms");
        let e = get(port, "/big", 5000, 1024).send().await.unwrap_err();
        assert_eq!(e, "the answer is larger than 1024 bytes");
    }

    #[tokio::test]
    async fn a_closed_port_says_connect() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = get(port, "/", 5000, 10).send().await.unwrap_err();
        assert!(
            e.starts_with(&format!("connect to 127.0.0.1:{port}: ")),
            "{e}"
        );
    }

    #[test]
    fn status_texts() {
        assert_eq!(status_text(404), "404 Not Found");
        assert_eq!(status_text(599), "599");
    }
}
