//! HTTPS to one node: a fresh connection per call (nodectl makes one or two
//! calls per run), HTTP/1.1 over rustls, bodies read whole or line by line.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use caisson_api::Endpoint;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::failure::{self, explain, Dial, Failure, Stage};
use crate::target::Target;
use crate::tls::{client_config, Seen, Trust};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries at connecting when the node's listener is restarting.
const CONNECT_ATTEMPTS: u32 = 4;
const CONNECT_RETRY: Duration = Duration::from_millis(750);
/// Whole calls, except the body of a stream. Generous: an apply waits for the
/// node to finish applying.
const CALL_TIMEOUT: Duration = Duration::from_secs(180);
/// An upload: the bundle streams, the node writes and syncs a slot.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Upload chunks: what the progress bar advances by.
const UPLOAD_CHUNK: usize = 256 * 1024;

type ReqBody = BoxBody<Bytes, std::io::Error>;

/// Every upload's bar, stacked when several nodes are upgraded at once.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// The file as a body, advancing a progress bar labelled `label`.
async fn file_body(path: &Path, label: &str) -> Result<ReqBody, Failure> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Failure::new("bad-file", format!("cannot open {}: {e}", path.display())))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let bar = bars().add(ProgressBar::new(len));
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    let stream = tokio_util::io::ReaderStream::with_capacity(file, UPLOAD_CHUNK).map(move |chunk| {
        let chunk = chunk?;
        bar.inc(chunk.len() as u64);
        if bar.position() >= len {
            bar.finish();
        }
        Ok(Frame::data(chunk))
    });
    Ok(BodyExt::boxed(StreamBody::new(stream)))
}

/// One request, built from the endpoint table so client and server agree on
/// methods and paths.
#[derive(Debug, Clone)]
pub struct Call {
    pub endpoint: Endpoint,
    pub path: String,
    pub body: Option<Vec<u8>>,
    /// A file streamed as the body (an update bundle), with a progress bar.
    pub upload: Option<PathBuf>,
}

impl Call {
    pub fn new(endpoint: Endpoint) -> Call {
        Call {
            endpoint,
            path: endpoint.route().1.to_string(),
            body: None,
            upload: None,
        }
    }

    /// Stream `file` as the body.
    pub fn upload(mut self, file: &Path) -> Call {
        self.upload = Some(file.to_path_buf());
        self
    }

    fn time_limit(&self) -> Duration {
        if self.upload.is_some() {
            UPLOAD_TIMEOUT
        } else {
            CALL_TIMEOUT
        }
    }

    /// Fill the `{name}` segment of the route.
    pub fn arg(mut self, name: &str, value: &str) -> Call {
        self.path = self
            .path
            .replace(&format!("{{{name}}}"), &encode_segment(value));
        self
    }

    pub fn query(mut self, pairs: &[(&str, String)]) -> Call {
        let q: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_segment(v)))
            .collect();
        if !q.is_empty() {
            self.path = format!("{}?{}", self.path, q.join("&"));
        }
        self
    }

    pub fn json(mut self, body: &impl Serialize) -> Call {
        self.body = Some(serde_json::to_vec(body).unwrap_or_default());
        self
    }
}

fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A node and how we trust it.
#[derive(Debug, Clone)]
pub struct Node {
    pub target: Target,
    pub trust: Arc<Trust>,
}

impl Node {
    /// Make the call and return the body of a 2xx answer.
    pub async fn call(&self, call: &Call) -> Result<Bytes, Failure> {
        let work = async {
            let (resp, seen) = self.send(call).await?;
            let status = resp.status();
            let body = match resp.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return Err(self.explain(&e, Stage::Exchange, &seen)),
            };
            if !status.is_success() {
                return Err(Failure::from_status(status.as_u16(), &body));
            }
            Ok(body)
        };
        timeout(call.time_limit(), work)
            .await
            .unwrap_or_else(|_| Err(failure::timeout(&self.target)))
    }

    /// Make the call and hand each line of the answer to `on_line` as it
    /// arrives, until the node ends the stream or `on_line` returns false.
    pub async fn stream(
        &self,
        call: &Call,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<(), Failure> {
        let (resp, seen) = timeout(CALL_TIMEOUT, self.send(call))
            .await
            .unwrap_or_else(|_| Err(failure::timeout(&self.target)))?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(Failure::from_status(status.as_u16(), &bytes));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.explain(&e, Stage::Exchange, &seen))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if !on_line(String::from_utf8_lossy(&line[..end]).trim_end_matches('\r')) {
                    return Ok(());
                }
            }
        }
        if !pending.is_empty() {
            on_line(&String::from_utf8_lossy(&pending));
        }
        Ok(())
    }

    fn explain(
        &self,
        err: &(dyn std::error::Error + 'static),
        stage: Stage,
        seen: &Seen,
    ) -> Failure {
        let seen = seen.lock().ok().and_then(|s| s.clone());
        explain(
            err,
            stage,
            &Dial {
                target: &self.target,
                trust: &self.trust,
                seen,
            },
        )
    }

    /// TCP and TLS to the node. Err: the failure, and whether trying again
    /// could help (refused, or cut before the handshake finished).
    async fn connect(
        &self,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Seen), (Failure, bool)> {
        let fatal = |f: Failure| (f, false);
        let (config, seen) = client_config(&self.trust)
            .map_err(|e| fatal(Failure::new("client-config", e)))?;
        let authority = self.target.authority();
        let name = self
            .target
            .server_name()
            .map_err(|e| fatal(Failure::new("bad-endpoint", e)))?;
        let mut addrs = timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(&authority))
            .await
            .map_err(|_| fatal(failure::timeout(&self.target)))?
            .map_err(|e| {
                fatal(Failure::new(
                    "resolve",
                    format!("cannot resolve {}: {e}", self.target.host),
                ))
            })?;
        let addr = addrs.next().ok_or_else(|| {
            fatal(Failure::new("resolve", format!("{} has no address", self.target.host)))
        })?;
        let tcp = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| fatal(failure::timeout(&self.target)))?
            .map_err(|e| {
                let f = self.explain(&e, Stage::Connect, &seen);
                let retry = f.code == "connection-refused";
                (f, retry)
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = timeout(CONNECT_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
            .await
            .map_err(|_| fatal(failure::timeout(&self.target)))?
            .map_err(|e| {
                let f = self.explain(&e, Stage::Handshake, &seen);
                // "transport": the connection ended mid-handshake; a TLS
                // refusal (trust, certificate) has its own code and is final.
                let retry = f.code == "transport";
                (f, retry)
            })?;
        Ok((tls, seen))
    }

    async fn send(&self, call: &Call) -> Result<(Response<Incoming>, Seen), Failure> {
        // A node restarts its listener when its addresses change (DHCP
        // after boot): a connection refused or cut during the handshake
        // sent nothing, so it is tried again, briefly.
        let mut attempt = 1;
        let (tls, seen) = loop {
            match self.connect().await {
                Ok(done) => break done,
                Err((_, true)) if attempt < CONNECT_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
                Err((failure, _)) => return Err(failure),
            }
        };
        let authority = self.target.authority();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.explain(&e, Stage::Exchange, &seen))?;
        let driver = tokio::spawn(conn);

        let (method, _) = call.endpoint.route();
        let mut req = Request::builder()
            .method(method)
            .uri(&call.path)
            .header(hyper::header::HOST, &authority)
            .header(
                hyper::header::USER_AGENT,
                concat!("nodectl/", env!("CARGO_PKG_VERSION")),
            );
        let body: ReqBody = match &call.upload {
            Some(path) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/octet-stream");
                file_body(path, &self.target.label).await?
            }
            None => {
                if call.body.is_some() {
                    req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                }
                Full::new(Bytes::from(call.body.clone().unwrap_or_default()))
                    .map_err(|never| match never {})
                    .boxed()
            }
        };
        let req = req
            .body(body)
            .map_err(|e| Failure::new("bad-request", format!("cannot build the request: {e}")))?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, seen)),
            Err(e) => {
                // The connection task holds the precise cause (a TLS alert,
                // a reset); the request only learns that it was cancelled.
                if let Ok(Err(conn_err)) = driver.await {
                    return Err(self.explain(&conn_err, Stage::Exchange, &seen));
                }
                Err(self.explain(&e, Stage::Exchange, &seen))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_come_from_the_endpoint_table_and_are_encoded() {
        let c = Call::new(Endpoint::ServiceRestart).arg("name", "kube let/x");
        assert_eq!(c.path, "/v1/services/kube%20let%2Fx/restart");
        let c = Call::new(Endpoint::Logs)
            .arg("source", "agent")
            .query(&[("follow", "true".into()), ("tail", "5".into())]);
        assert_eq!(c.path, "/v1/logs/agent?follow=true&tail=5");
        assert_eq!(Call::new(Endpoint::Audit).query(&[]).path, "/v1/audit");
    }
}
