//! A TFTP read client (RFC 1350), for `caisson.config=tftp://…`: one read
//! request in octet mode, 512-byte blocks, each acknowledged; the server
//! answers from a port of its own (its transfer ID), which the client
//! keeps to. No options are asked for, so a plain server works as well as
//! one that knows RFC 2347. A lost packet is sent again after
//! [`Limits::timeout`], up to [`Limits::retries`] times.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

const OP_RRQ: u16 = 1;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;
/// The block size without the blksize option.
pub const BLOCK: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Rrq {
        file: String,
        mode: String,
    },
    Data {
        block: u16,
        data: Vec<u8>,
    },
    Ack(u16),
    Error {
        code: u16,
        message: String,
    },
    /// Option acknowledgement (RFC 2347): never asked for here.
    Oack(Vec<(String, String)>),
}

impl Packet {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Packet::Rrq { file, mode } => {
                out.extend(OP_RRQ.to_be_bytes());
                for s in [file, mode] {
                    out.extend(s.as_bytes());
                    out.push(0);
                }
            }
            Packet::Data { block, data } => {
                out.extend(OP_DATA.to_be_bytes());
                out.extend(block.to_be_bytes());
                out.extend(data);
            }
            Packet::Ack(block) => {
                out.extend(OP_ACK.to_be_bytes());
                out.extend(block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend(OP_ERROR.to_be_bytes());
                out.extend(code.to_be_bytes());
                out.extend(message.as_bytes());
                out.push(0);
            }
            Packet::Oack(options) => {
                out.extend(OP_OACK.to_be_bytes());
                for (k, v) in options {
                    for s in [k, v] {
                        out.extend(s.as_bytes());
                        out.push(0);
                    }
                }
            }
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Packet, String> {
        let word = |at: usize| {
            b.get(at..at + 2)
                .and_then(|w| <[u8; 2]>::try_from(w).ok())
                .map(u16::from_be_bytes)
                .ok_or_else(|| format!("a {}-byte packet is too short", b.len()))
        };
        let rest = b.get(2..).unwrap_or_default();
        match word(0)? {
            OP_RRQ => {
                let mut strings = cstrings(rest)?;
                if strings.len() < 2 {
                    return Err("a read request needs a file name and a mode".into());
                }
                let mode = strings.remove(1);
                let file = strings.remove(0);
                Ok(Packet::Rrq { file, mode })
            }
            OP_DATA => Ok(Packet::Data {
                block: word(2)?,
                data: b.get(4..).unwrap_or_default().to_vec(),
            }),
            OP_ACK => Ok(Packet::Ack(word(2)?)),
            OP_ERROR => {
                let code = word(2)?;
                let text = b.get(4..).unwrap_or_default();
                let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
                let message =
                    String::from_utf8_lossy(text.get(..end).unwrap_or_default()).into_owned();
                Ok(Packet::Error { code, message })
            }
            OP_OACK => {
                let strings = cstrings(rest)?;
                let pairs = strings
                    .chunks(2)
                    .map(|kv| {
                        (
                            kv.first().cloned().unwrap_or_default(),
                            kv.get(1).cloned().unwrap_or_default(),
                        )
                    })
                    .collect();
                Ok(Packet::Oack(pairs))
            }
            op => Err(format!("unknown TFTP opcode {op}")),
        }
    }
}

/// NUL-terminated strings, back to back; the last must be terminated.
fn cstrings(b: &[u8]) -> Result<Vec<String>, String> {
    if b.is_empty() {
        return Ok(Vec::new());
    }
    if b.last() != Some(&0) {
        return Err("a string is not NUL-terminated".into());
    }
    Ok(b.get(..b.len() - 1)
        .unwrap_or_default()
        .split(|&c| c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// RFC 1350's error codes, for messages.
fn error_name(code: u16) -> &'static str {
    match code {
        1 => "file not found",
        2 => "access violation",
        3 => "disk full",
        4 => "illegal operation",
        5 => "unknown transfer ID",
        6 => "file already exists",
        7 => "no such user",
        8 => "option refused",
        _ => "not defined",
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wait for each answer this long before sending again.
    pub timeout: Duration,
    /// Sends of the same packet after the first.
    pub retries: u32,
    /// The most bytes accepted.
    pub max_bytes: usize,
}

/// How a transfer ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TftpError {
    /// The server said no; code 1 is "file not found".
    Server {
        code: u16,
        message: String,
    },
    /// Nothing came back in time.
    TimedOut {
        waited: Duration,
        received: usize,
    },
    Other(String),
}

impl std::fmt::Display for TftpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TftpError::Server { code, message } => write!(
                f,
                "the TFTP server answered error {code} ({}): {message}",
                error_name(*code)
            ),
            TftpError::TimedOut { waited, received } => write!(
                f,
                "the TFTP server did not answer for {} s ({received} bytes received)",
                waited.as_secs()
            ),
            TftpError::Other(s) => f.write_str(s),
        }
    }
}

/// Read `file` from the server at `server`.
pub async fn fetch(server: SocketAddr, file: &str, limits: Limits) -> Result<Vec<u8>, TftpError> {
    let other = |what: &str, e: std::io::Error| TftpError::Other(format!("{what}: {e}"));
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| other("binding a UDP socket", e))?;
    let request = Packet::Rrq {
        file: file.to_string(),
        mode: "octet".into(),
    }
    .encode();
    let mut peer: Option<SocketAddr> = None;
    let mut last_sent = request.clone();
    let mut data = Vec::new();
    let mut expected: u16 = 1;
    let mut buf = vec![0u8; BLOCK + 4];
    let mut tries = 0u32;
    socket
        .send_to(&request, server)
        .await
        .map_err(|e| other(&format!("sending the read request to {server}"), e))?;
    loop {
        let received = tokio::time::timeout(limits.timeout, socket.recv_from(&mut buf)).await;
        let (n, from) = match received {
            Err(_elapsed) => {
                if tries >= limits.retries {
                    return Err(TftpError::TimedOut {
                        waited: limits.timeout * (limits.retries + 1),
                        received: data.len(),
                    });
                }
                tries += 1;
                let to = peer.unwrap_or(server);
                socket
                    .send_to(&last_sent, to)
                    .await
                    .map_err(|e| other(&format!("sending to {to}"), e))?;
                continue;
            }
            Ok(Err(e)) => return Err(other("receiving", e)),
            Ok(Ok(got)) => got,
        };
        // The first answer fixes the server's transfer ID; any other
        // sender is told it is unknown and otherwise ignored.
        match peer {
            None if from.ip() == server.ip() => peer = Some(from),
            Some(p) if p == from => {}
            _ => {
                let stray = Packet::Error {
                    code: 5,
                    message: "unknown transfer ID".into(),
                };
                let _ = socket.send_to(&stray.encode(), from).await;
                continue;
            }
        }
        let packet = match Packet::decode(buf.get(..n).unwrap_or_default()) {
            Ok(p) => p,
            Err(e) => {
                return Err(TftpError::Other(format!(
                    "a malformed packet from {from}: {e}"
                )))
            }
        };
        match packet {
            Packet::Error { code, message } => return Err(TftpError::Server { code, message }),
            Packet::Data { block, data: chunk } if block == expected => {
                tries = 0;
                if data.len() + chunk.len() > limits.max_bytes {
                    let too_big = Packet::Error {
                        code: 3,
                        message: "file too large".into(),
                    };
                    let _ = socket.send_to(&too_big.encode(), from).await;
                    return Err(TftpError::Other(format!(
                        "the file is larger than {} bytes",
                        limits.max_bytes
                    )));
                }
                data.extend_from_slice(&chunk);
                last_sent = Packet::Ack(block).encode();
                socket
                    .send_to(&last_sent, from)
                    .await
                    .map_err(|e| other(&format!("acknowledging block {block} to {from}"), e))?;
                if chunk.len() < BLOCK {
                    return Ok(data);
                }
                expected = expected.wrapping_add(1);
            }
            // A duplicate: our acknowledgement was lost; say it again.
            Packet::Data { block, .. } if block == expected.wrapping_sub(1) => {
                let _ = socket.send_to(&Packet::Ack(block).encode(), from).await;
            }
            Packet::Data { block, .. } => {
                return Err(TftpError::Other(format!(
                    "block {block} arrived while block {expected} was expected"
                )))
            }
            other_packet => {
                return Err(TftpError::Other(format!(
                    "unexpected {other_packet:?} from {from} (only DATA answers a read request without options)"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_encode_to_rfc1350_bytes_and_back() {
        let rrq = Packet::Rrq {
            file: "node.toml".into(),
            mode: "octet".into(),
        };
        assert_eq!(rrq.encode(), b"\x00\x01node.toml\x00octet\x00");
        assert_eq!(Packet::Ack(0x0102).encode(), [0, 4, 1, 2]);
        let data = Packet::Data {
            block: 7,
            data: b"abc".to_vec(),
        };
        assert_eq!(data.encode(), b"\x00\x03\x00\x07abc");
        let err = Packet::Error {
            code: 1,
            message: "File not found".into(),
        };
        assert_eq!(err.encode(), b"\x00\x05\x00\x01File not found\x00");
        let oack = Packet::Oack(vec![("blksize".into(), "1428".into())]);
        assert_eq!(oack.encode(), b"\x00\x06blksize\x001428\x00");
        for p in [rrq, Packet::Ack(9), data, err, oack] {
            assert_eq!(Packet::decode(&p.encode()).unwrap(), p);
        }
        // An empty final block is a valid end of file.
        assert_eq!(
            Packet::decode(&[0, 3, 0, 2]).unwrap(),
            Packet::Data {
                block: 2,
                data: Vec::new()
            }
        );
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"\x00",
            b"\x00\x04\x00",
            b"\x00\x09xx",
            b"\x00\x01file",
            b"\x00\x01f\x00",
        ] {
            assert!(Packet::decode(bad).is_err(), "{bad:?}");
        }
        // An error without its NUL still reads.
        assert_eq!(
            Packet::decode(b"\x00\x05\x00\x02denied").unwrap(),
            Packet::Error {
                code: 2,
                message: "denied".into()
            }
        );
    }

    const LIMITS: Limits = Limits {
        timeout: Duration::from_millis(300),
        retries: 3,
        max_bytes: 4096,
    };

    /// A scripted server on 127.0.0.1: answers the request from a second
    /// socket (its transfer ID) with `file`, dropping the first ACK of
    /// block 2 so the client must cope with a duplicate.
    fn serve(file: Vec<u8>, drop_first_ack: bool) -> SocketAddr {
        let listen = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = listen.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 600];
            let (n, client) = listen.recv_from(&mut buf).unwrap();
            let Packet::Rrq { file: name, mode } = Packet::decode(&buf[..n]).unwrap() else {
                panic!("not a read request")
            };
            assert_eq!((name.as_str(), mode.as_str()), ("n.toml", "octet"));
            let tid = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            tid.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let blocks: Vec<&[u8]> = file.chunks(BLOCK).collect();
            let mut blocks: Vec<Vec<u8>> = blocks.iter().map(|b| b.to_vec()).collect();
            // A last block of exactly 512 bytes needs an empty one after it.
            if blocks.last().is_none_or(|b| b.len() == BLOCK) {
                blocks.push(Vec::new());
            }
            let mut dropped = !drop_first_ack;
            for (i, block) in blocks.iter().enumerate() {
                let number = (i + 1) as u16;
                let packet = Packet::Data {
                    block: number,
                    data: block.clone(),
                }
                .encode();
                loop {
                    tid.send_to(&packet, client).unwrap();
                    // The client gave up (a refused file): nothing to check.
                    let Ok((n, _)) = tid.recv_from(&mut buf) else {
                        return;
                    };
                    if !dropped && number == 2 {
                        dropped = true;
                        continue; // as if this ACK were lost: send the block again
                    }
                    // Anything but the right ACK ends the transfer, which the
                    // client then reports as a time-out.
                    if Packet::decode(&buf[..n]).ok() != Some(Packet::Ack(number)) {
                        return;
                    }
                    break;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_a_multi_block_file_through_a_lost_ack() {
        let file: Vec<u8> = (0..1300u32).map(|i| (i % 251) as u8).collect();
        let server = serve(file.clone(), true);
        assert_eq!(fetch(server, "n.toml", LIMITS).await.unwrap(), file);
    }

    #[tokio::test]
    async fn an_exact_multiple_of_512_ends_with_an_empty_block() {
        let file = vec![b'x'; 1024];
        let server = serve(file.clone(), false);
        assert_eq!(fetch(server, "n.toml", LIMITS).await.unwrap(), file);
    }

    #[tokio::test]
    async fn the_servers_error_and_silence_are_reported() {
        let listen = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = listen.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 600];
            let (_, client) = listen.recv_from(&mut buf).unwrap();
            let no = Packet::Error {
                code: 1,
                message: "File not found".into(),
            };
            listen.send_to(&no.encode(), client).unwrap();
        });
        let e = fetch(addr, "n.toml", LIMITS).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "the TFTP server answered error 1 (file not found): File not found"
        );

        // Nobody answers: the request is sent 1 + retries times, then it ends.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let started = std::time::Instant::now();
        let e = fetch(silent.local_addr().unwrap(), "n.toml", LIMITS)
            .await
            .unwrap_err();
        assert!(matches!(e, TftpError::TimedOut { received: 0, .. }), "{e}");
        assert!(
            started.elapsed() >= Duration::from_millis(1200),
            "{:?}",
            started.elapsed()
        );
        let mut buf = [0u8; 64];
        silent.set_nonblocking(true).unwrap();
        let mut requests = 0;
        while silent.recv_from(&mut buf).is_ok() {
            requests += 1;
        }
        assert_eq!(requests, 4);
    }

    #[tokio::test]
    async fn a_file_over_the_limit_is_refused() {
        let server = serve(vec![b'y'; 5000], false);
        let small = Limits {
            max_bytes: 1000,
            ..LIMITS
        };
        let e = fetch(server, "n.toml", small).await.unwrap_err();
        assert!(e.to_string().contains("larger than 1000 bytes"), "{e}");
    }
}
