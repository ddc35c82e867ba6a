//! The client's UDP socket (see the module docs for why UDP suffices).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::DhcpError;

pub(crate) const CLIENT_PORT: u16 = 68;
pub(crate) const SERVER_PORT: u16 = 67;

/// A non-blocking UDP socket on `0.0.0.0:68`, bound to `interface`, that
/// may send broadcasts.
pub(crate) fn open(interface: &str) -> Result<UdpSocket, DhcpError> {
    let err = |step: &'static str| {
        move |source: io::Error| DhcpError::Socket {
            interface: interface.to_string(),
            step,
            source,
        }
    };
    let socket =
        Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err("socket"))?;
    // Before bind: with it, each link's client gets its own port 68.
    socket
        .bind_device(Some(interface.as_bytes()))
        .map_err(err("SO_BINDTODEVICE"))?;
    socket
        .set_reuse_address(true)
        .map_err(err("SO_REUSEADDR"))?;
    socket.set_broadcast(true).map_err(err("SO_BROADCAST"))?;
    socket.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
    let local = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT);
    socket.bind(&local.into()).map_err(err("bind 0.0.0.0:68"))?;
    UdpSocket::from_std(socket.into()).map_err(err("registering with tokio"))
}

/// The reverse-path filter in force on `interface` (the larger of `all`
/// and the link's own), if readable.
pub(crate) fn rp_filter(interface: &str) -> Option<u8> {
    let read = |name: &str| -> Option<u8> {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    if interface.contains('/') || interface.starts_with('.') {
        return None;
    }
    Some(read("all")?.max(read(interface)?))
}
