//! Thin async wrappers over rtnetlink: each call does one kernel operation
//! and turns failures into a [`NetlinkError`] that names the link, the
//! address or route, and the errno.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressMessage, AddressProtocol, CacheInfo,
};
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use thiserror::Error;

use super::messages::{
    address_from_message, family_of, link_from_message, route_from_message, route_message,
};
use super::{Link, LinkId, Origin, RouteSpec};

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("netlink: no tokio runtime to drive the connection")]
    NoRuntime,
    #[error("netlink: opening the socket: {0}")]
    Connect(#[source] io::Error),
    #[error("listing links: {0}")]
    ListLinks(#[source] io::Error),
    #[error("link {name}: no such link")]
    NoSuchLink { name: String },
    #[error("link {link}: setting it {}: {source}", if *.up { "up" } else { "down" })]
    SetState {
        link: String,
        up: bool,
        source: io::Error,
    },
    #[error("link {link}: setting MTU {mtu}: {source}")]
    SetMtu {
        link: String,
        mtu: u32,
        source: io::Error,
    },
    #[error("link {link}: listing addresses: {source}")]
    ListAddresses { link: String, source: io::Error },
    #[error("link {link}: adding address {address}: {source}")]
    AddAddress {
        link: String,
        address: IpNet,
        source: io::Error,
    },
    #[error("link {link}: removing address {address}: {source}")]
    DeleteAddress {
        link: String,
        address: IpNet,
        source: io::Error,
    },
    #[error("link {link}: listing routes: {source}")]
    ListRoutes { link: String, source: io::Error },
    #[error("link {link}: adding route {route}: {source}")]
    AddRoute {
        link: String,
        route: RouteSpec,
        source: io::Error,
    },
    #[error("link {link}: removing route {route}: {source}")]
    DeleteRoute {
        link: String,
        route: RouteSpec,
        source: io::Error,
    },
    #[error(
        "link {link}: route {route}: the gateway's address family differs from the destination's"
    )]
    RouteFamily { link: String, route: RouteSpec },
}

impl NetlinkError {
    fn source_errno(&self) -> Option<i32> {
        match self {
            NetlinkError::SetState { source, .. }
            | NetlinkError::SetMtu { source, .. }
            | NetlinkError::ListAddresses { source, .. }
            | NetlinkError::AddAddress { source, .. }
            | NetlinkError::DeleteAddress { source, .. }
            | NetlinkError::ListRoutes { source, .. }
            | NetlinkError::AddRoute { source, .. }
            | NetlinkError::DeleteRoute { source, .. }
            | NetlinkError::Connect(source)
            | NetlinkError::ListLinks(source) => source.raw_os_error(),
            NetlinkError::NoRuntime
            | NetlinkError::NoSuchLink { .. }
            | NetlinkError::RouteFamily { .. } => None,
        }
    }

    /// The object was already gone (ENOENT, ESRCH, EADDRNOTAVAIL, ENODEV).
    pub fn is_not_found(&self) -> bool {
        matches!(self.source_errno(), Some(2 | 3 | 19 | 99))
    }

    /// The object already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.source_errno() == Some(17)
    }
}

/// rtnetlink reports kernel refusals as an errno; keep it one, so
/// callers can tell "already there" from real failures.
fn cause(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => match m.code {
            Some(code) => io::Error::from_raw_os_error(-code.get()),
            None => io::Error::other("netlink error without an errno"),
        },
        other => io::Error::other(other.to_string()),
    }
}

/// An address on a link, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub net: IpNet,
    /// None: someone else's (the kernel, an operator tool, a CNI).
    pub origin: Option<Origin>,
    /// Seconds until the kernel drops it; None: forever.
    pub valid_lifetime: Option<u32>,
}

/// A route on a link in the main table, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub spec: RouteSpec,
    /// None: someone else's.
    pub origin: Option<Origin>,
    pub(super) message: RouteMessage,
}

impl Route {
    #[cfg(test)]
    pub(crate) fn for_tests(spec: RouteSpec, origin: Option<Origin>) -> Route {
        Route {
            spec,
            origin,
            message: RouteMessage::default(),
        }
    }
}

/// A netlink connection in the network namespace of the thread that opened
/// it. Cheap to clone.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a route netlink socket and spawns its connection task on the
    /// current tokio runtime (current_thread is fine).
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        runtime.spawn(connection);
        Ok(Netlink { handle })
    }

    /// Every link, sorted by index. `sysfs` is where sysfs is mounted
    /// (`/sys`; tests pass a directory of their own) and decides which
    /// links are physical.
    pub async fn links(&self, sysfs: &Path) -> Result<Vec<Link>, NetlinkError> {
        let mut stream = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| NetlinkError::ListLinks(cause(e)))?
        {
            if let Some(link) = link_from_message(&msg, sysfs) {
                links.push(link);
            }
        }
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    /// One link, by index; [`NetlinkError::NoSuchLink`] when it is gone
    /// or has been renamed since `id` was taken.
    pub async fn link(&self, id: &LinkId, sysfs: &Path) -> Result<Link, NetlinkError> {
        let gone = || NetlinkError::NoSuchLink {
            name: id.name.clone(),
        };
        let mut stream = self.handle.link().get().match_index(id.index).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => link_from_message(&msg, sysfs)
                .filter(|l| l.name == id.name)
                .ok_or_else(gone),
            Ok(None) => Err(gone()),
            Err(e) => {
                let e = cause(e);
                if e.raw_os_error() == Some(19) {
                    Err(gone())
                } else {
                    Err(NetlinkError::ListLinks(e))
                }
            }
        }
    }

    /// (MTU, administratively up) of one link.
    pub(crate) async fn link_state(&self, id: &LinkId) -> Result<(u32, bool), NetlinkError> {
        let link = self.link(id, Path::new("/nonexistent")).await?;
        Ok((link.mtu, link.up))
    }

    pub async fn set_up(&self, link: &LinkId, up: bool) -> Result<(), NetlinkError> {
        let b = LinkUnspec::new_with_index(link.index);
        let msg = if up { b.up() } else { b.down() }.build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::SetState {
                link: link.name.clone(),
                up,
                source: cause(e),
            })
    }

    pub async fn set_mtu(&self, link: &LinkId, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::SetMtu {
                link: link.name.clone(),
                mtu,
                source: cause(e),
            })
    }

    /// IPv4 and IPv6 addresses on the link, the kernel's own included.
    pub async fn addresses(&self, link: &LinkId) -> Result<Vec<Address>, NetlinkError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        let mut out = Vec::new();
        let err = |e| NetlinkError::ListAddresses {
            link: link.name.clone(),
            source: cause(e),
        };
        while let Some(msg) = stream.try_next().await.map_err(err)? {
            if let Some(a) = address_from_message(&msg) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Adds `address`, tagged with `origin`. `lifetime`: the kernel drops
    /// the address by itself when it runs out (DHCP leases), None: forever.
    /// `replace`: update an existing address's lifetime instead of failing
    /// with EEXIST.
    pub async fn add_address(
        &self,
        link: &LinkId,
        address: IpNet,
        origin: Origin,
        lifetime: Option<Duration>,
        replace: bool,
    ) -> Result<(), NetlinkError> {
        let mut req = self
            .handle
            .address()
            .add(link.index, address.addr(), address.prefix_len());
        let attrs = &mut req.message_mut().attributes;
        attrs.push(AddressAttribute::Protocol(AddressProtocol::from(
            origin.proto(),
        )));
        if let Some(lifetime) = lifetime {
            let secs = u32::try_from(lifetime.as_secs())
                .unwrap_or(u32::MAX)
                .min(u32::MAX - 1);
            let mut info = CacheInfo::default();
            info.ifa_valid = secs;
            info.ifa_preferred = secs;
            attrs.push(AddressAttribute::CacheInfo(info));
        }
        if replace {
            req = req.replace();
        }
        req.execute().await.map_err(|e| NetlinkError::AddAddress {
            link: link.name.clone(),
            address,
            source: cause(e),
        })
    }

    pub async fn delete_address(&self, link: &LinkId, address: IpNet) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.index = link.index;
        msg.header.prefix_len = address.prefix_len();
        msg.header.family = family_of(address.addr());
        msg.attributes.push(AddressAttribute::Local(address.addr()));
        msg.attributes
            .push(AddressAttribute::Address(address.addr()));
        self.handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::DeleteAddress {
                link: link.name.clone(),
                address,
                source: cause(e),
            })
    }

    /// Removes every address on the link (`only`: just those of that
    /// origin) and returns what it removed.
    pub async fn flush_addresses(
        &self,
        link: &LinkId,
        only: Option<Origin>,
    ) -> Result<Vec<IpNet>, NetlinkError> {
        let mut removed = Vec::new();
        for a in self.addresses(link).await? {
            if only.is_none() || a.origin == only {
                match self.delete_address(link, a.net).await {
                    Ok(()) => removed.push(a.net),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    /// Unicast routes in the main table that leave through the link.
    pub async fn routes(&self, link: &LinkId) -> Result<Vec<Route>, NetlinkError> {
        let mut out = Vec::new();
        let err = |e| NetlinkError::ListRoutes {
            link: link.name.clone(),
            source: cause(e),
        };
        let dumps = [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ];
        for query in dumps {
            let mut stream = self.handle.route().get(query).execute();
            while let Some(msg) = stream.try_next().await.map_err(err)? {
                if let Some(r) = route_from_message(msg, link.index) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Adds `route` leaving through the link, tagged with `origin`.
    pub async fn add_route(
        &self,
        link: &LinkId,
        route: &RouteSpec,
        origin: Origin,
    ) -> Result<(), NetlinkError> {
        let msg = route_message(link, route, Some(origin))?;
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::AddRoute {
                link: link.name.clone(),
                route: route.clone(),
                source: cause(e),
            })
    }

    /// Removes `route` from the link. With `origin`, only a route of that
    /// origin matches.
    pub async fn delete_route(
        &self,
        link: &LinkId,
        route: &RouteSpec,
        origin: Option<Origin>,
    ) -> Result<(), NetlinkError> {
        let msg = route_message(link, route, origin)?;
        self.delete_route_message(link, route, msg).await
    }

    /// Removes a route exactly as listed by [`Netlink::routes`].
    pub async fn delete_listed_route(
        &self,
        link: &LinkId,
        route: &Route,
    ) -> Result<(), NetlinkError> {
        self.delete_route_message(link, &route.spec, route.message.clone())
            .await
    }

    async fn delete_route_message(
        &self,
        link: &LinkId,
        route: &RouteSpec,
        msg: RouteMessage,
    ) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::DeleteRoute {
                link: link.name.clone(),
                route: route.clone(),
                source: cause(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_link_the_object_and_the_errno() {
        let e = NetlinkError::AddAddress {
            link: "eth0".into(),
            address: "192.0.2.5/24".parse().unwrap(),
            source: io::Error::from_raw_os_error(17),
        };
        assert!(e.is_exists());
        assert!(
            e.to_string()
                .starts_with("link eth0: adding address 192.0.2.5/24: File exists"),
            "{e}"
        );
        let e = NetlinkError::DeleteAddress {
            link: "eth0".into(),
            address: "192.0.2.5/24".parse().unwrap(),
            source: io::Error::from_raw_os_error(99),
        };
        assert!(e.is_not_found());
    }
}
