//! The runner: drives a [`Machine`] with a UDP socket and a timer, puts
//! each lease on the link over netlink, and reports [`LeaseEvent`]s.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use dhcproto::Encodable;
use ipnet::{IpNet, Ipv4Net};
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::lease::{Lease, LeaseEvent};
use super::machine::{ClientConfig, Destination, Machine, Output, Timing, Transmit};
use super::socket;
use super::wire::decode_reply;
use crate::link::{
    Link, LinkId, MacAddr, Netlink, NetlinkError, Origin, RouteSpec, DHCP_ROUTE_METRIC,
};

#[derive(Debug, Error)]
pub enum DhcpError {
    #[error("link {interface}: DHCP socket: {step}: {source}")]
    Socket {
        interface: String,
        step: &'static str,
        source: io::Error,
    },
    #[error("link {interface}: has no MAC address, so it cannot run DHCP")]
    NoMac { interface: String },
    #[error("bringing the link up for DHCP: {0}")]
    LinkUp(#[source] NetlinkError),
    #[error("DHCP lease {address}: {source}")]
    Configure {
        address: Ipv4Net,
        source: NetlinkError,
    },
    #[error("link {interface}: DHCP: no tokio runtime to run the client on")]
    NoRuntime { interface: String },
    #[error("link {interface}: the DHCP client task ended abnormally: {why}")]
    Stopped { interface: String, why: String },
}

/// How the runner treats leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Sent to the server (option 12).
    pub hostname: Option<String>,
    pub timing: Timing,
    /// Metric of the default route via the lease's first router.
    pub route_metric: u32,
    /// Set the link's MTU from option 26; turn off when the config sets one.
    pub use_mtu: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            hostname: None,
            timing: Timing::default(),
            route_metric: DHCP_ROUTE_METRIC,
            use_mtu: true,
        }
    }
}

/// A running client; dropping it stops the client. The lease's address
/// stays on the link until its lifetime runs out in the kernel, or until
/// [`crate::link::apply()`] removes it from a link that no longer runs DHCP.
pub struct DhcpClient {
    interface: String,
    task: Option<JoinHandle<Result<(), DhcpError>>>,
}

impl DhcpClient {
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Waits for the client to end: Ok when the event receiver was dropped,
    /// the error that stopped it otherwise.
    pub async fn finished(&mut self) -> Result<(), DhcpError> {
        let Some(task) = self.task.as_mut() else {
            return Ok(());
        };
        let result = task.await;
        self.task = None;
        match result {
            Ok(r) => r,
            Err(e) => Err(DhcpError::Stopped {
                interface: self.interface.clone(),
                why: e.to_string(),
            }),
        }
    }
}

impl Drop for DhcpClient {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts a client for `link` on the current tokio runtime; its lease
/// events arrive on the receiver.
pub fn spawn(
    netlink: Netlink,
    link: Link,
    options: Options,
) -> Result<(DhcpClient, mpsc::Receiver<LeaseEvent>), DhcpError> {
    let interface = link.name.clone();
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| DhcpError::NoRuntime {
        interface: interface.clone(),
    })?;
    let (tx, rx) = mpsc::channel(8);
    let task = runtime.spawn(run(netlink, link, options, tx));
    Ok((
        DhcpClient {
            interface,
            task: Some(task),
        },
        rx,
    ))
}

/// Runs a client for `link` until `events` is closed. Returns an error
/// only when the client cannot go on: the socket cannot be opened, or a
/// lease cannot be put on the link. Send and receive failures (a link
/// without carrier, say) are logged and retried by the protocol's own
/// retransmissions.
pub async fn run(
    netlink: Netlink,
    link: Link,
    options: Options,
    events: mpsc::Sender<LeaseEvent>,
) -> Result<(), DhcpError> {
    let id = link.id();
    let mac = link.mac.ok_or_else(|| DhcpError::NoMac {
        interface: id.name.clone(),
    })?;
    netlink.set_up(&id, true).await.map_err(DhcpError::LinkUp)?;
    let socket = socket::open(&id.name)?;
    if let Some(rp) = socket::rp_filter(&id.name).filter(|rp| *rp != 0) {
        tracing::warn!(interface = %id, "rp_filter is {rp}: the kernel may drop DHCP offers before the link has an address");
    }
    let cfg = ClientConfig {
        interface: id.name.clone(),
        mac,
        hostname: options.hostname.clone(),
        timing: options.timing.clone(),
    };
    let mut machine = Machine::new(cfg, seed(mac), Instant::now());
    let mut buf = vec![0u8; 4096];
    loop {
        let deadline = machine.deadline();
        let outputs = tokio::select! {
            () = sleep_until(deadline) => machine.on_timeout(Instant::now()),
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, _)) => match decode_reply(buf.get(..n).unwrap_or_default()) {
                    Some(msg) => machine.on_message(Instant::now(), &msg),
                    None => Vec::new(),
                },
                Err(e) => {
                    tracing::warn!(interface = %id, "receiving DHCP messages: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Vec::new()
                }
            },
        };
        for output in outputs {
            match output {
                Output::Send(t) => send(&socket, &id, t).await,
                Output::Event(event) => {
                    configure(&netlink, &id, &options, &event).await?;
                    tracing::info!(interface = %id, "{}", describe(&event));
                    if events.send(event).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

fn seed(mac: MacAddr) -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write(&mac.0);
    h.finish()
}

/// BOOTP's minimum message; some relays drop anything shorter.
const MIN_MESSAGE: usize = 300;

async fn send(socket: &UdpSocket, link: &LinkId, t: Transmit) {
    let mut bytes = match t.message.to_vec() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(interface = %link, "encoding a DHCP message: {e}");
            return;
        }
    };
    if bytes.len() < MIN_MESSAGE {
        bytes.resize(MIN_MESSAGE, 0);
    }
    let to = match t.to {
        Destination::Broadcast => Ipv4Addr::BROADCAST,
        Destination::Unicast(ip) => ip,
    };
    if let Err(e) = socket
        .send_to(&bytes, SocketAddrV4::new(to, socket::SERVER_PORT))
        .await
    {
        tracing::warn!(interface = %link, "sending a DHCP message to {to}: {e}");
    }
}

fn describe(event: &LeaseEvent) -> String {
    match event {
        LeaseEvent::Bound(l) => format!("DHCP lease {} from {} bound", l.network(), l.server),
        LeaseEvent::Renewed(l) => format!("DHCP lease {} renewed", l.network()),
        LeaseEvent::Expired(l, why) => format!(
            "DHCP lease {} ended ({why:?}); address removed",
            l.network()
        ),
    }
}

/// The routes a lease asks for: a default route via the first router, and
/// an on-link route to that router when it is outside the subnet.
pub(crate) fn lease_routes(lease: &Lease, metric: u32) -> Vec<RouteSpec> {
    let Some(router) = lease.routers.first().copied() else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    if !lease.network().contains(&router) {
        routes.push(RouteSpec {
            to: IpNet::V4(Ipv4Net::from(router)),
            via: None,
            metric,
        });
    }
    let default = IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap_or_default());
    routes.push(RouteSpec {
        to: default,
        via: Some(router.into()),
        metric,
    });
    routes
}

/// Makes the link carry `event`'s outcome, before the agent hears of it.
async fn configure(
    nl: &Netlink,
    link: &LinkId,
    options: &Options,
    event: &LeaseEvent,
) -> Result<(), DhcpError> {
    let (lease, bound) = match event {
        LeaseEvent::Bound(l) | LeaseEvent::Renewed(l) => (l, true),
        LeaseEvent::Expired(l, _) => (l, false),
    };
    let address = lease.network();
    let fail = |source| DhcpError::Configure { address, source };
    let wanted = if bound {
        lease_routes(lease, options.route_metric)
    } else {
        Vec::new()
    };
    if bound {
        // Replace: a renewal refreshes the lifetime of the address in place.
        nl.add_address(
            link,
            IpNet::V4(address),
            Origin::Dhcp,
            lease.lease_time,
            true,
        )
        .await
        .map_err(fail)?;
        if let Some(mtu) = lease.mtu.filter(|_| options.use_mtu).map(u32::from) {
            if nl.link_state(link).await.map_err(fail)?.0 != mtu {
                nl.set_mtu(link, mtu).await.map_err(fail)?;
            }
        }
    }
    let current = nl.routes(link).await.map_err(fail)?;
    for r in current
        .iter()
        .filter(|r| r.origin == Some(Origin::Dhcp) && !wanted.contains(&r.spec))
    {
        match nl.delete_listed_route(link, r).await {
            Err(e) if !e.is_not_found() => return Err(fail(e)),
            _ => {}
        }
    }
    for route in wanted
        .iter()
        .filter(|w| !current.iter().any(|r| &r.spec == *w))
    {
        nl.add_route(link, route, Origin::Dhcp)
            .await
            .map_err(fail)?;
    }
    if !bound {
        match nl.delete_address(link, IpNet::V4(address)).await {
            Err(e) if !e.is_not_found() => return Err(fail(e)),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::lease::LeaseEnd;

    fn lease(address: &str, prefix_len: u8, router: &str) -> Lease {
        Lease {
            interface: "eth0".into(),
            address: address.parse().unwrap(),
            prefix_len,
            routers: vec![router.parse().unwrap()],
            dns: vec![],
            domain: None,
            search: vec![],
            hostname: None,
            mtu: None,
            server: router.parse().unwrap(),
            lease_time: Some(Duration::from_secs(60)),
            renew_after: Duration::from_secs(30),
            rebind_after: Duration::from_secs(52),
            acquired: Instant::now(),
        }
    }

    #[test]
    fn a_lease_gives_a_default_route_via_its_first_router() {
        let routes = lease_routes(&lease("198.51.100.7", 24, "198.51.100.1"), 1024);
        let text: Vec<String> = routes.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["0.0.0.0/0 via 198.51.100.1 metric 1024"]);
    }

    #[test]
    fn a_router_outside_the_subnet_gets_an_on_link_route_first() {
        let routes = lease_routes(&lease("10.128.0.7", 32, "10.128.0.1"), 100);
        let text: Vec<String> = routes.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "10.128.0.1/32 on-link metric 100",
                "0.0.0.0/0 via 10.128.0.1 metric 100"
            ]
        );
    }

    #[test]
    fn no_router_no_routes() {
        let mut l = lease("198.51.100.7", 24, "198.51.100.1");
        l.routers.clear();
        assert!(lease_routes(&l, 1024).is_empty());
    }

    #[test]
    fn events_are_logged_with_the_address() {
        let l = lease("198.51.100.7", 24, "198.51.100.1");
        assert_eq!(
            describe(&LeaseEvent::Bound(l.clone())),
            "DHCP lease 198.51.100.7/24 from 198.51.100.1 bound"
        );
        assert!(describe(&LeaseEvent::Expired(l, LeaseEnd::Nak)).contains("(Nak); address removed"));
    }

    #[test]
    fn errors_name_the_link_and_the_step() {
        let e = DhcpError::Socket {
            interface: "eth0".into(),
            step: "SO_BINDTODEVICE",
            source: io::Error::from_raw_os_error(1),
        };
        assert!(
            e.to_string()
                .starts_with("link eth0: DHCP socket: SO_BINDTODEVICE: Operation not permitted"),
            "{e}"
        );
    }
}
