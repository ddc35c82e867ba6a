//! The stop-gap [`NetworkBackend`]: carries out a [`plan::StaticPlan`]
//! over rtnetlink. Addresses and routes it adds carry protocol number
//! [`PROTO_CAISSON`] (the number caisson-net uses for config-owned ones), so
//! the next apply removes what it added before and no longer wants, and
//! never touches anything else (the kernel's IPv6 link-local addresses,
//! whatever caisson-net or a CNI adds later).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use caisson_config::Network;
use caisson_net::ipcmdline::IpArg;
use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressProtocol};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use tokio::sync::Mutex;

use super::plan::{self, LinkFacts, LinkWant, RouteWant};
use super::{BoxFuture, NetworkBackend, NetworkError, NetworkReport};

/// `ip address show proto 202`: what the machine config put there.
pub const PROTO_CAISSON: u8 = 202;
const SYSFS: &str = "/sys";
const ETC: &str = "/etc";

pub struct StaticNetwork {
    ip_arg: Option<IpArg>,
    etc: PathBuf,
    handle: Mutex<Option<Handle>>,
}

impl StaticNetwork {
    pub fn new(ip_arg: Option<IpArg>) -> StaticNetwork {
        StaticNetwork {
            ip_arg,
            etc: PathBuf::from(ETC),
            handle: Mutex::new(None),
        }
    }

    /// One netlink connection for the agent's lifetime, opened on first use.
    async fn handle(&self) -> Result<Handle, NetworkError> {
        let mut slot = self.handle.lock().await;
        if let Some(h) = slot.as_ref() {
            return Ok(h.clone());
        }
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetworkError::new("netlink socket", e))?;
        tokio::spawn(connection);
        *slot = Some(handle.clone());
        Ok(handle)
    }

    async fn apply_inner(&self, network: Option<&Network>) -> Result<NetworkReport, NetworkError> {
        let h = self.handle().await?;
        let links = list_links(&h).await?;
        let mut report = NetworkReport::default();
        if let Some(lo) = links.iter().find(|l| l.name == "lo") {
            set_up(&h, lo).await?;
        }
        let plan = plan::plan(network, self.ip_arg.as_ref(), &links)?;
        report.lines.extend(plan.notes.iter().cloned());
        let mut wanted_addresses = BTreeSet::new();
        let mut wanted_routes = BTreeSet::new();
        for want in &plan.links {
            configure(&h, want, &mut report).await?;
            wanted_addresses.extend(want.addresses.iter().map(|a| (want.index, *a)));
            wanted_routes.extend(want.routes.iter().map(|r| (want.index, r.to, r.via)));
        }
        remove_stale(&h, &links, &wanted_addresses, &wanted_routes, &mut report).await?;
        write_resolv_conf(&self.etc, &plan.nameservers, &plan.search)?;
        Ok(report)
    }

    async fn addresses_inner(&self) -> Result<Vec<IpAddr>, NetworkError> {
        let h = self.handle().await?;
        let mut stream = h.address().get().execute();
        let mut out = BTreeSet::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| NetworkError::new("listing addresses", e))?
        {
            if let Some((_, net, _)) = address_of(&msg) {
                out.insert(net.addr());
            }
        }
        Ok(out.into_iter().collect())
    }
}

impl NetworkBackend for StaticNetwork {
    fn apply<'a>(
        &'a self,
        network: Option<&'a Network>,
    ) -> BoxFuture<'a, Result<NetworkReport, NetworkError>> {
        Box::pin(self.apply_inner(network))
    }

    fn addresses(&self) -> BoxFuture<'_, Result<Vec<IpAddr>, NetworkError>> {
        Box::pin(self.addresses_inner())
    }
}

async fn list_links(h: &Handle) -> Result<Vec<LinkFacts>, NetworkError> {
    let mut stream = h.link().get().execute();
    let mut links = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| NetworkError::new("listing links", e))?
    {
        if let Some(l) = link_facts(&msg, Path::new(SYSFS)) {
            links.push(l);
        }
    }
    links.sort_by_key(|l| l.index);
    Ok(links)
}

fn link_facts(msg: &LinkMessage, sysfs: &Path) -> Option<LinkFacts> {
    let (mut name, mut mac, mut kind) = (None, None, None);
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let parts: Vec<String> = a.iter().map(|b| format!("{b:02x}")).collect();
                mac = Some(parts.join(":"));
            }
            LinkAttribute::LinkInfo(infos) => {
                kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(k.to_string()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    let name = name?;
    let loopback = msg.header.flags.contains(LinkFlags::Loopback);
    let physical = !loopback
        && kind.is_none()
        && !name.contains('/')
        && sysfs.join("class/net").join(&name).join("device").exists();
    Some(LinkFacts {
        index: msg.header.index,
        name,
        mac,
        physical,
    })
}

async fn set_up(h: &Handle, link: &LinkFacts) -> Result<(), NetworkError> {
    h.link()
        .set(LinkUnspec::new_with_index(link.index).up().build())
        .execute()
        .await
        .map_err(|e| NetworkError::new(format!("link {}: setting it up", link.name), e))
}

async fn configure(
    h: &Handle,
    want: &LinkWant,
    report: &mut NetworkReport,
) -> Result<(), NetworkError> {
    let name = &want.name;
    if let Some(mtu) = want.mtu {
        h.link()
            .set(LinkUnspec::new_with_index(want.index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| NetworkError::new(format!("link {name}: MTU {mtu}"), e))?;
    }
    h.link()
        .set(LinkUnspec::new_with_index(want.index).up().build())
        .execute()
        .await
        .map_err(|e| NetworkError::new(format!("link {name}: setting it up"), e))?;
    for address in &want.addresses {
        let mut req = h
            .address()
            .add(want.index, address.addr(), address.prefix_len())
            .replace();
        req.message_mut()
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                PROTO_CAISSON,
            )));
        req.execute()
            .await
            .map_err(|e| NetworkError::new(format!("link {name}: address {address}"), e))?;
        report.lines.push(format!("{name}: address {address}"));
    }
    for route in &want.routes {
        let msg = route_message(want.index, route);
        h.route().add(msg).replace().execute().await.map_err(|e| {
            NetworkError::new(
                format!("link {name}: route {} via {}", route.to, route.via),
                e,
            )
        })?;
        report
            .lines
            .push(format!("{name}: route {} via {}", route.to, route.via));
    }
    Ok(())
}

fn route_message(index: u32, route: &RouteWant) -> RouteMessage {
    let mut msg = match (route.to, route.via) {
        (IpNet::V4(to), IpAddr::V4(via)) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(to.network(), to.prefix_len())
            .gateway(via)
            .build(),
        (IpNet::V6(to), IpAddr::V6(via)) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(to.network(), to.prefix_len())
            .gateway(via)
            .build(),
        // Mixed families are refused by config validation; an on-link
        // route is the harmless reading if one ever gets here.
        (to, _) => {
            let mut m = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(to.addr(), to.prefix_len())
                .map(|b| b.scope(RouteScope::Link).build())
                .unwrap_or_default();
            m.header.scope = RouteScope::Link;
            m
        }
    };
    msg.header.protocol = RouteProtocol::from(PROTO_CAISSON);
    msg.attributes.push(RouteAttribute::Oif(index));
    if let Some(metric) = route.metric {
        msg.attributes.push(RouteAttribute::Priority(metric));
    }
    msg
}

/// (link index, address, protocol) of an address message.
fn address_of(msg: &AddressMessage) -> Option<(u32, IpNet, u8)> {
    let (mut local, mut address, mut proto) = (None, None, 0u8);
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Protocol(p) => proto = u8::from(*p),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    let net = IpNet::new(ip, msg.header.prefix_len).ok()?;
    Some((msg.header.index, net, proto))
}

async fn remove_stale(
    h: &Handle,
    links: &[LinkFacts],
    addresses: &BTreeSet<(u32, IpNet)>,
    routes: &BTreeSet<(u32, IpNet, IpAddr)>,
    report: &mut NetworkReport,
) -> Result<(), NetworkError> {
    let name_of = |index: u32| {
        links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| index.to_string())
    };
    // Routes first: removing an address can take its routes with it.
    for query in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let listed: Vec<RouteMessage> = h
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetworkError::new("listing routes", e))?;
        for msg in listed {
            if u8::from(msg.header.protocol) != PROTO_CAISSON {
                continue;
            }
            let Some((index, to, via)) = route_of(&msg) else {
                continue;
            };
            if !routes.contains(&(index, to, via)) {
                let what = format!("link {}: removing route {to} via {via}", name_of(index));
                h.route()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(|e| NetworkError::new(&what, e))?;
                report
                    .lines
                    .push(format!("{}: removed route {to} via {via}", name_of(index)));
            }
        }
    }
    let listed: Vec<AddressMessage> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetworkError::new("listing addresses", e))?;
    for msg in listed {
        let Some((index, net, proto)) = address_of(&msg) else {
            continue;
        };
        if proto == PROTO_CAISSON && !addresses.contains(&(index, net)) {
            let what = format!("link {}: removing address {net}", name_of(index));
            h.address()
                .del(msg)
                .execute()
                .await
                .map_err(|e| NetworkError::new(&what, e))?;
            report
                .lines
                .push(format!("{}: removed address {net}", name_of(index)));
        }
    }
    Ok(())
}

fn route_of(msg: &RouteMessage) -> Option<(u32, IpNet, IpAddr)> {
    use rtnetlink::packet_route::route::RouteAddress;
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    };
    let (mut dst, mut via, mut oif) = (None, None, None);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = ip(a),
            RouteAttribute::Gateway(a) => via = ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let via = via?;
    let dst = dst.unwrap_or(match via {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let to = IpNet::new(dst, msg.header.destination_prefix_length)
        .ok()?
        .trunc();
    Some((oif?, to, via))
}

fn write_resolv_conf(
    etc: &Path,
    nameservers: &[IpAddr],
    search: &[String],
) -> Result<(), NetworkError> {
    let path = etc.join("resolv.conf");
    let text = caisson_net::render::resolv_conf(nameservers, search);
    // /etc is our tmpfs: a plain write is enough, but never a torn file.
    let temp = etc.join(".resolv.conf.tmp");
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::rename(&temp, &path))
        .map_err(|e| NetworkError::new(format!("write {}", path.display()), e))
}
