//! Between rtnetlink messages and our types: reading links, addresses
//! and routes out of kernel dumps, and building route requests. Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use super::netlink::{Address, NetlinkError, Route};
use super::{Link, LinkId, MacAddr, Origin, RouteSpec};

pub(super) fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

pub(super) fn route_message(
    link: &LinkId,
    route: &RouteSpec,
    origin: Option<Origin>,
) -> Result<RouteMessage, NetlinkError> {
    let family_error = || NetlinkError::RouteFamily {
        link: link.name.clone(),
        route: route.clone(),
    };
    let mut msg = match route.to {
        IpNet::V4(to) => {
            let b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(to.network(), to.prefix_len());
            match route.via {
                Some(IpAddr::V4(gw)) => b.gateway(gw),
                Some(IpAddr::V6(_)) => return Err(family_error()),
                None => b.scope(RouteScope::Link),
            }
            .build()
        }
        IpNet::V6(to) => {
            let b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(to.network(), to.prefix_len());
            match route.via {
                Some(IpAddr::V6(gw)) => b.gateway(gw),
                Some(IpAddr::V4(_)) => return Err(family_error()),
                None => b,
            }
            .build()
        }
    };
    msg.attributes.push(RouteAttribute::Oif(link.index));
    msg.attributes.push(RouteAttribute::Priority(route.metric));
    msg.header.protocol = match origin {
        Some(o) => RouteProtocol::from(o.proto()),
        None => RouteProtocol::Unspec,
    };
    Ok(msg)
}

pub(super) fn link_from_message(msg: &LinkMessage, sysfs: &Path) -> Option<Link> {
    let mut name = None;
    let (mut mac, mut permanent_mac, mut mtu, mut kind) = (None, None, 0, None);
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) => mac = MacAddr::from_slice(a),
            LinkAttribute::PermAddress(a) => permanent_mac = MacAddr::from_slice(a),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    let name = name?;
    let flags = msg.header.flags;
    let loopback = flags.contains(LinkFlags::Loopback)
        || msg.header.link_layer_type == LinkLayerType::Loopback;
    // An all-zero permanent address means the driver has none.
    let permanent_mac = permanent_mac.filter(|m| m.0 != [0; 6]);
    Some(Link {
        index: msg.header.index,
        physical: is_physical(sysfs, &name, loopback, kind.as_deref()),
        name,
        mac,
        permanent_mac,
        mtu,
        up: flags.contains(LinkFlags::Up),
        kind,
    })
}

/// A physical link has a device behind it in sysfs and no virtual kind.
pub(crate) fn is_physical(sysfs: &Path, name: &str, loopback: bool, kind: Option<&str>) -> bool {
    if loopback || kind.is_some() || name.contains('/') || name == "." || name == ".." {
        return false;
    }
    sysfs
        .join("class/net")
        .join(name)
        .join("device")
        .symlink_metadata()
        .is_ok()
}

pub(super) fn address_from_message(msg: &AddressMessage) -> Option<Address> {
    let (mut local, mut address, mut origin, mut valid_lifetime) = (None, None, None, None);
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Protocol(p) => origin = Origin::from_proto(u8::from(*p)),
            AddressAttribute::CacheInfo(c) => {
                valid_lifetime = (c.ifa_valid != u32::MAX).then_some(c.ifa_valid)
            }
            _ => {}
        }
    }
    // IPv4 reports the local address in IFA_LOCAL (IFA_ADDRESS is the peer
    // on point-to-point links); IPv6 only in IFA_ADDRESS.
    let ip = local.or(address)?;
    let net = IpNet::new(ip, msg.header.prefix_len).ok()?;
    Some(Address {
        net,
        origin,
        valid_lifetime,
    })
}

pub(super) fn route_from_message(msg: RouteMessage, index: u32) -> Option<Route> {
    let h = &msg.header;
    if h.kind != RouteType::Unicast
        || !matches!(h.address_family, AddressFamily::Inet | AddressFamily::Inet6)
    {
        return None;
    }
    let (mut dst, mut via, mut oif, mut metric) = (None, None, None, 0);
    let mut table = u32::from(h.table);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_ip(a),
            RouteAttribute::Gateway(a) => via = route_ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if oif != Some(index) || table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = dst.unwrap_or(if h.address_family == AddressFamily::Inet {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let to = IpNet::new(dst, h.destination_prefix_length).ok()?.trunc();
    let origin = Origin::from_proto(u8::from(h.protocol));
    Some(Route {
        spec: RouteSpec { to, via, metric },
        origin,
        message: msg,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_means_a_sysfs_device_and_no_virtual_kind() {
        let root = tempfile::tempdir().unwrap();
        let net = root.path().join("class/net");
        for name in ["eth0", "veth0", "lo"] {
            std::fs::create_dir_all(net.join(name)).unwrap();
            std::os::unix::fs::symlink(
                "../../../devices/pci0000:00/0000:00:03.0",
                net.join(name).join("device"),
            )
            .unwrap();
        }
        std::fs::create_dir_all(net.join("br0")).unwrap();
        assert!(is_physical(root.path(), "eth0", false, None));
        assert!(
            !is_physical(root.path(), "veth0", false, Some("veth")),
            "a virtual kind is never physical"
        );
        assert!(
            !is_physical(root.path(), "lo", true, None),
            "loopback is never physical"
        );
        assert!(
            !is_physical(root.path(), "br0", false, None),
            "no device symlink"
        );
        assert!(!is_physical(root.path(), "missing", false, None));
        assert!(!is_physical(root.path(), "..", false, None));
    }

    #[test]
    fn route_messages_carry_link_metric_and_origin() {
        let link = LinkId {
            index: 7,
            name: "eth0".into(),
        };
        let spec = RouteSpec {
            to: "0.0.0.0/0".parse().unwrap(),
            via: Some("192.0.2.1".parse().unwrap()),
            metric: 5,
        };
        let msg = route_message(&link, &spec, Some(Origin::Config)).unwrap();
        assert_eq!(u8::from(msg.header.protocol), 202);
        assert!(msg.attributes.contains(&RouteAttribute::Oif(7)));
        assert!(msg.attributes.contains(&RouteAttribute::Priority(5)));
        let listed = route_from_message(msg, 7).unwrap();
        assert_eq!((listed.spec, listed.origin), (spec, Some(Origin::Config)));

        let mixed = RouteSpec {
            to: "::/0".parse().unwrap(),
            via: Some("192.0.2.1".parse().unwrap()),
            metric: 0,
        };
        let e = route_message(&link, &mixed, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("link eth0: route ::/0 via 192.0.2.1"),
            "{e}"
        );
    }
}
