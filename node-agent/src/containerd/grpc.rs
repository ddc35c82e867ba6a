//! A minimal gRPC client for containerd's unix socket: unary calls over
//! HTTP/2 (hyper), messages hand-written with `prost`'s derive, holding
//! only the fields we read (protobuf skips the others).
//!
//! One connection per call: calls are rare (health checks, boot steps) and
//! a fresh connection cannot be left half-broken by a containerd restart.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, TE, USER_AGENT};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixStream;

use super::ContainerdError;

/// Every call ends within this, answered or not.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (an image list of a few thousand images).
const MAX_RESPONSE: usize = 16 << 20;

pub const VERSION_METHOD: &str = "/containerd.services.version.v1.Version/Version";
pub const IMAGES_LIST_METHOD: &str = "/containerd.services.images.v1.Images/List";
pub const CRI_STATUS_METHOD: &str = "/runtime.v1.RuntimeService/Status";
/// containerd 1.6 serves the CRI API under both names.
pub const CRI_STATUS_METHOD_V1ALPHA2: &str = "/runtime.v1alpha2.RuntimeService/Status";
/// The gRPC metadata header that selects a containerd namespace.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// containerd's answer to `Version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// e.g. `1.6.20~ds1`.
    pub version: String,
    pub revision: String,
}

/// `google.protobuf.Empty`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
struct VersionResponse {
    #[prost(string, tag = "1")]
    version: String,
    #[prost(string, tag = "2")]
    revision: String,
}

/// `runtime.v1.StatusRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {
    #[prost(bool, tag = "1")]
    verbose: bool,
}

/// `runtime.v1.StatusResponse` without `status` (field 1).
#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(map = "string, string", tag = "2")]
    info: HashMap<String, String>,
}

/// `containerd.services.images.v1.ListImagesRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct ListImagesRequest {
    #[prost(string, repeated, tag = "1")]
    filters: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListImagesResponse {
    #[prost(message, repeated, tag = "1")]
    images: Vec<Image>,
}

/// `containerd.services.images.v1.Image`: the name is all we read.
#[derive(Clone, PartialEq, prost::Message)]
struct Image {
    #[prost(string, tag = "1")]
    name: String,
}

/// containerd's version: the health check. Only a containerd that answers
/// its API passes; a socket that merely exists does not.
pub async fn version(socket: &Path) -> Result<Version, ContainerdError> {
    let r: VersionResponse = unary(socket, VERSION_METHOD, None, &Empty {}).await?;
    Ok(Version {
        version: r.version,
        revision: r.revision,
    })
}

/// containerd's own view of its CRI configuration: the `config` JSON of a
/// verbose CRI `Status` (e.g. `registry.configPath`, `cni.binDir`,
/// `cni.confDir`, `containerd.snapshotter`), as loaded from config.toml.
pub async fn cri_status_config(socket: &Path) -> Result<serde_json::Value, ContainerdError> {
    let request = StatusRequest { verbose: true };
    let (method, answer) =
        match unary::<_, StatusResponse>(socket, CRI_STATUS_METHOD, None, &request).await {
            Err(e) if e.grpc_code() == Some(UNIMPLEMENTED) => (
                CRI_STATUS_METHOD_V1ALPHA2,
                unary::<_, StatusResponse>(socket, CRI_STATUS_METHOD_V1ALPHA2, None, &request)
                    .await?,
            ),
            other => (CRI_STATUS_METHOD, other?),
        };
    let decode = |detail: String| ContainerdError::Decode {
        socket: socket.to_path_buf(),
        method: method.to_string(),
        detail,
    };
    let Some(config) = answer.info.get("config") else {
        let mut keys: Vec<&str> = answer.info.keys().map(String::as_str).collect();
        keys.sort_unstable();
        return Err(decode(format!(
            "no \"config\" in the status info (keys: {keys:?})"
        )));
    };
    serde_json::from_str(config).map_err(|e| decode(format!("info[\"config\"] is not JSON: {e}")))
}

/// The names of the images in `namespace`, sorted.
pub async fn list_images(socket: &Path, namespace: &str) -> Result<Vec<String>, ContainerdError> {
    let request = ListImagesRequest {
        filters: Vec::new(),
    };
    let r: ListImagesResponse =
        unary(socket, IMAGES_LIST_METHOD, Some(namespace), &request).await?;
    let mut names: Vec<String> = r.images.into_iter().map(|i| i.name).collect();
    names.sort();
    Ok(names)
}

/// One unary gRPC call, within [`CALL_TIMEOUT`]. `namespace` sets the
/// `containerd-namespace` metadata for namespaced services.
pub async fn unary<Req, Resp>(
    socket: &Path,
    method: &str,
    namespace: Option<&str>,
    request: &Req,
) -> Result<Resp, ContainerdError>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let call = Call { socket, method };
    match tokio::time::timeout(CALL_TIMEOUT, call.exchange(namespace, request)).await {
        Ok(answer) => answer,
        Err(_) => Err(ContainerdError::Timeout {
            socket: socket.to_path_buf(),
            method: method.to_string(),
            seconds: CALL_TIMEOUT.as_secs(),
        }),
    }
}

const UNIMPLEMENTED: u32 = 12;

/// The canonical name of a gRPC status code.
pub fn code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "unknown code",
    }
}

struct Call<'a> {
    socket: &'a Path,
    method: &'a str,
}

impl Call<'_> {
    fn transport(&self, detail: impl std::fmt::Display) -> ContainerdError {
        ContainerdError::Transport {
            socket: self.socket.to_path_buf(),
            method: self.method.to_string(),
            detail: detail.to_string(),
        }
    }

    fn decode(&self, detail: impl std::fmt::Display) -> ContainerdError {
        ContainerdError::Decode {
            socket: self.socket.to_path_buf(),
            method: self.method.to_string(),
            detail: detail.to_string(),
        }
    }

    fn connect_error(&self, e: std::io::Error) -> ContainerdError {
        let socket = self.socket.to_path_buf();
        let method = self.method.to_string();
        match e.kind() {
            std::io::ErrorKind::NotFound => ContainerdError::NoSocket { socket, method },
            std::io::ErrorKind::ConnectionRefused => ContainerdError::Refused { socket, method },
            _ => ContainerdError::Connect {
                socket,
                method,
                source: e,
            },
        }
    }

    async fn exchange<Req, Resp>(
        &self,
        namespace: Option<&str>,
        request: &Req,
    ) -> Result<Resp, ContainerdError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let stream = UnixStream::connect(self.socket)
            .await
            .map_err(|e| self.connect_error(e))?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| self.transport(format!("HTTP/2 handshake: {e}")))?;
        let mut builder = Request::post(format!("http://localhost{}", self.method))
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .header(
                USER_AGENT,
                concat!("caisson-node-agent/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(ns) = namespace {
            builder = builder.header(NAMESPACE_HEADER, ns);
        }
        let http_request = builder
            .body(Full::new(frame(request)))
            .map_err(|e| self.transport(e))?;
        let exchange = async move {
            let response = sender
                .send_request(http_request)
                .await
                .map_err(|e| self.transport(e))?;
            let (parts, body) = response.into_parts();
            if parts.status != hyper::StatusCode::OK {
                return Err(self.transport(format!("HTTP status {}", parts.status)));
            }
            // A "trailers-only" answer carries the status in the headers.
            if let Some(status) = grpc_status(&parts.headers) {
                check_status(self, status, &parts.headers)?;
            }
            let collected = Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| self.transport(format!("reading the answer: {e}")))?;
            let trailers = collected.trailers().cloned().unwrap_or_default();
            let message = collected.to_bytes();
            match grpc_status(&trailers) {
                Some(status) => check_status(self, status, &trailers)?,
                None if grpc_status(&parts.headers).is_some() => {}
                None => return Err(self.decode("no grpc-status in the answer")),
            }
            let payload = unframe(&message).map_err(|e| self.decode(e))?;
            Resp::decode(payload).map_err(|e| self.decode(e))
        };
        tokio::pin!(conn);
        tokio::pin!(exchange);
        // The connection is driven here, so nothing outlives a timed-out call.
        tokio::select! {
            answer = &mut exchange => answer,
            ended = &mut conn => match ended {
                Err(e) => Err(self.transport(format!("connection: {e}"))),
                Ok(()) => exchange.await,
            },
        }
    }
}

/// `grpc-status` as a number; an unparsable one counts as Unknown (2).
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status").map(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(2)
    })
}

fn check_status(call: &Call<'_>, code: u32, headers: &HeaderMap) -> Result<(), ContainerdError> {
    if code == 0 {
        return Ok(());
    }
    let message = headers
        .get("grpc-message")
        .map(HeaderValue::as_bytes)
        .map(percent_decode)
        .unwrap_or_default();
    Err(ContainerdError::Status {
        socket: call.socket.to_path_buf(),
        method: call.method.to_string(),
        code,
        message,
    })
}

/// The length-prefixed message: flag 0 (uncompressed), u32 BE length, bytes.
fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer with room for it cannot fail.
    let _ = message.encode(&mut buf);
    buf.freeze()
}

/// The one message of a unary answer.
fn unframe(body: &[u8]) -> Result<&[u8], String> {
    let (header, rest) = body
        .split_at_checked(5)
        .ok_or_else(|| format!("{} bytes, shorter than a gRPC message header", body.len()))?;
    let [flag, a, b, c, d] = <[u8; 5]>::try_from(header).map_err(|_| "short header".to_string())?;
    if flag != 0 {
        return Err("the message is compressed, which was not asked for".to_string());
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    match rest.get(..len) {
        Some(message) if rest.len() == len => Ok(message),
        Some(_) => Err(format!(
            "{} bytes after the message: more than one message",
            rest.len() - len
        )),
        None => Err(format!(
            "message of {len} bytes cut short at {}",
            rest.len()
        )),
    }
}

/// `grpc-message` is percent-encoded (RFC 3986 style, any byte).
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = raw.iter();
    while let Some(&b) = i.next() {
        if b == b'%' {
            let hex = i.clone().take(2).copied().collect::<Vec<u8>>();
            if let Some(v) = std::str::from_utf8(&hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                if hex.len() == 2 {
                    out.push(v);
                    i.nth(1);
                    continue;
                }
            }
        }
        out.push(b);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn messages_are_framed_and_unframed() {
        let framed = frame(&StatusRequest { verbose: true });
        assert_eq!(&framed[..], [0, 0, 0, 0, 2, 0x08, 0x01]);
        assert_eq!(unframe(&framed).unwrap(), [0x08, 0x01]);
        assert_eq!(&frame(&Empty {})[..], [0, 0, 0, 0, 0]);
        assert!(unframe(&[0, 0, 0]).unwrap_err().contains("shorter"));
        assert!(unframe(&[0, 0, 0, 0, 3, 1])
            .unwrap_err()
            .contains("cut short"));
        assert!(unframe(&[1, 0, 0, 0, 0])
            .unwrap_err()
            .contains("compressed"));
        assert!(unframe(&[0, 0, 0, 0, 0, 9])
            .unwrap_err()
            .contains("more than one"));
    }

    #[test]
    fn answers_decode_from_their_wire_form() {
        // VersionResponse{version: "1.6.20", revision: "r"} as protoc encodes it.
        let wire = [0x0a, 6, b'1', b'.', b'6', b'.', b'2', b'0', 0x12, 1, b'r'];
        let v = VersionResponse::decode(&wire[..]).unwrap();
        assert_eq!((v.version.as_str(), v.revision.as_str()), ("1.6.20", "r"));
        // An Image with fields we do not model (labels, target) still decodes.
        let mut image = Vec::new();
        Image { name: "x:1".into() }.encode(&mut image).unwrap();
        image.extend_from_slice(&[0x1a, 2, 0x0a, 0]); // target { media_type: "" }
        let mut list = vec![0x0a, image.len() as u8];
        list.extend_from_slice(&image);
        let r = ListImagesResponse::decode(&list[..]).unwrap();
        assert_eq!(r.images[0].name, "x:1");
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(
            percent_decode(b"unknown service runtime.v1%2FRuntimeService"),
            "unknown service runtime.v1/RuntimeService"
        );
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%zz%4"), "%zz%4");
        assert_eq!(percent_decode(b"caf%C3%A9"), "café");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_missing_socket_and_a_dead_one_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("containerd.sock");
        let e = version(&missing).await.unwrap_err();
        assert!(matches!(e, ContainerdError::NoSocket { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "{VERSION_METHOD} on {}: no socket there (containerd is not running)",
                missing.display()
            )
        );
        // A socket file nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(&missing).unwrap());
        let e = list_images(&missing, "caisson").await.unwrap_err();
        assert!(matches!(e, ContainerdError::Refused { .. }), "{e:?}");
        assert!(
            e.to_string().contains(IMAGES_LIST_METHOD)
                && e.to_string().contains("connection refused")
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn something_that_is_not_grpc_is_a_transport_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-grpc.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        });
        let e = version(&path).await.unwrap_err();
        assert!(matches!(e, ContainerdError::Transport { .. }), "{e:?}");
        server.await.unwrap();
    }

    #[test]
    fn status_errors_name_the_code() {
        let e = ContainerdError::Status {
            socket: "/run/containerd/containerd.sock".into(),
            method: CRI_STATUS_METHOD.into(),
            code: 12,
            message: "unknown service runtime.v1.RuntimeService".into(),
        };
        assert_eq!(
            e.to_string(),
            "/runtime.v1.RuntimeService/Status on /run/containerd/containerd.sock: gRPC status 12 (Unimplemented): unknown service runtime.v1.RuntimeService"
        );
        assert_eq!(e.grpc_code(), Some(12));
    }
}
