//! What the stop-gap backend puts on each link, computed from the config
//! (or `ip=`) and the link list without touching the kernel. Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use caisson_config::{Interface, Network};
use caisson_net::ipcmdline::{IpArg, StaticIp};
use ipnet::IpNet;

use super::NetworkError;

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFacts {
    pub index: u32,
    pub name: String,
    /// Lower case, `52:54:00:12:34:56`.
    pub mac: Option<String>,
    /// Backed by a device (not loopback, not virtual).
    pub physical: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteWant {
    pub to: IpNet,
    pub via: IpAddr,
    pub metric: Option<u32>,
}

/// One link: brought up, with these settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkWant {
    pub index: u32,
    pub name: String,
    pub mtu: Option<u32>,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<RouteWant>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticPlan {
    pub links: Vec<LinkWant>,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    /// What the plan could not do (DHCP), for the console.
    pub notes: Vec<String>,
}

const NO_DHCP: &str = "no DHCP client on the node yet (caisson-net)";

fn known(links: &[LinkFacts]) -> String {
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    names.join(", ")
}

fn default_route(gw: IpAddr) -> RouteWant {
    let to = match gw {
        IpAddr::V4(_) => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    RouteWant {
        to: to.unwrap_or_default(),
        via: gw,
        metric: None,
    }
}

/// The link `ip=` is for: the one it names, else the first physical link.
fn ip_arg_link<'a>(s: &StaticIp, links: &'a [LinkFacts]) -> Result<&'a LinkFacts, NetworkError> {
    match &s.device {
        Some(name) => links.iter().find(|l| &l.name == name).ok_or_else(|| {
            NetworkError::new(
                "ip=",
                format!("no link named {name} (links: {})", known(links)),
            )
        }),
        None => links.iter().find(|l| l.physical).ok_or_else(|| {
            NetworkError::new("ip=", format!("no physical link (links: {})", known(links)))
        }),
    }
}

fn from_ip_arg(link: &LinkFacts, s: &StaticIp) -> LinkWant {
    let address = IpNet::new(IpAddr::V4(s.address), s.prefix_len)
        .map(|n| vec![n])
        .unwrap_or_default();
    LinkWant {
        index: link.index,
        name: link.name.clone(),
        mtu: None,
        addresses: address,
        routes: s
            .gateway
            .map(|gw| vec![default_route(IpAddr::V4(gw))])
            .unwrap_or_default(),
    }
}

fn bare(link: &LinkFacts) -> LinkWant {
    LinkWant {
        index: link.index,
        name: link.name.clone(),
        mtu: None,
        addresses: Vec::new(),
        routes: Vec::new(),
    }
}

fn select<'a>(
    at: &str,
    iface: &Interface,
    links: &'a [LinkFacts],
) -> Result<&'a LinkFacts, NetworkError> {
    let found = match (&iface.name, &iface.mac) {
        (Some(name), _) => links.iter().find(|l| &l.name == name),
        (None, Some(mac)) => {
            let mac = mac.to_ascii_lowercase();
            links
                .iter()
                .find(|l| l.mac.as_deref() == Some(mac.as_str()))
        }
        (None, None) => None,
    };
    found.ok_or_else(|| {
        let by = iface
            .name
            .as_ref()
            .map(|n| format!("name {n}"))
            .or_else(|| iface.mac.as_ref().map(|m| format!("mac {m}")))
            .unwrap_or_else(|| "nothing".into());
        NetworkError::new(at, format!("no link has {by} (links: {})", known(links)))
    })
}

/// The plan for `network` (None: no config yet) with `ip=` as the stand-in
/// for DHCP.
pub fn plan(
    network: Option<&Network>,
    ip_arg: Option<&IpArg>,
    links: &[LinkFacts],
) -> Result<StaticPlan, NetworkError> {
    let ip_static = match ip_arg {
        Some(IpArg::Static(s)) => Some((ip_arg_link(s, links)?, s)),
        _ => None,
    };
    let mut p = StaticPlan::default();
    let dhcp_stand_in = |p: &mut StaticPlan, link: &LinkFacts| -> LinkWant {
        match ip_static {
            Some((target, s)) if target.index == link.index => {
                p.notes.push(format!(
                    "{}: {NO_DHCP}: using the ip= kernel argument",
                    link.name
                ));
                p.nameservers
                    .extend(s.nameservers.iter().map(|n| IpAddr::V4(*n)));
                from_ip_arg(link, s)
            }
            _ => {
                p.notes
                    .push(format!("{}: {NO_DHCP}: up without an address", link.name));
                bare(link)
            }
        }
    };
    let interfaces = network.map(|n| n.interfaces.as_slice()).unwrap_or(&[]);
    if network.is_none() && matches!(ip_arg, Some(IpArg::Off)) {
        return Ok(p);
    }
    if interfaces.is_empty() {
        // DHCP on every physical link; with ip=, its link gets that.
        for link in links.iter().filter(|l| l.physical) {
            let want = dhcp_stand_in(&mut p, link);
            p.links.push(want);
        }
        if let Some((target, s)) = ip_static {
            if !target.physical {
                p.nameservers
                    .extend(s.nameservers.iter().map(|n| IpAddr::V4(*n)));
                p.links.push(from_ip_arg(target, s));
            }
        }
    }
    for (i, iface) in interfaces.iter().enumerate() {
        let at = format!("network.interfaces[{i}]");
        let link = select(&at, iface, links)?;
        if p.links.iter().any(|l| l.index == link.index) {
            return Err(NetworkError::new(
                at,
                format!("link {} is configured twice", link.name),
            ));
        }
        let mut want = if iface.dhcp && iface.addresses.is_empty() {
            dhcp_stand_in(&mut p, link)
        } else {
            if iface.dhcp {
                p.notes
                    .push(format!("{}: {NO_DHCP}: static addresses only", link.name));
            }
            bare(link)
        };
        want.mtu = iface.mtu;
        want.addresses.extend(iface.addresses.iter().copied());
        want.routes
            .extend(iface.gateways.iter().map(|gw| default_route(*gw)));
        want.routes.extend(iface.routes.iter().map(|r| RouteWant {
            to: r.to.trunc(),
            via: r.via,
            metric: r.metric,
        }));
        p.links.push(want);
    }
    if let Some(n) = network {
        if !n.nameservers.is_empty() {
            p.nameservers = n.nameservers.clone();
        }
        p.search = n.search.clone();
    }
    p.links.sort_by_key(|l| l.index);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Vec<LinkFacts> {
        vec![
            LinkFacts {
                index: 1,
                name: "lo".into(),
                mac: None,
                physical: false,
            },
            LinkFacts {
                index: 2,
                name: "eth0".into(),
                mac: Some("52:54:00:12:34:56".into()),
                physical: true,
            },
            LinkFacts {
                index: 3,
                name: "eth1".into(),
                mac: Some("52:54:00:12:34:57".into()),
                physical: true,
            },
        ]
    }

    fn qemu_ip() -> IpArg {
        IpArg::parse("10.0.2.15::10.0.2.2:255.255.255.0::eth0:off").unwrap()
    }

    #[test]
    fn before_any_config_ip_gives_its_link_a_static_address_and_gateway() {
        let p = plan(None, Some(&qemu_ip()), &links()).unwrap();
        assert_eq!(p.links.len(), 2);
        let eth0 = &p.links[0];
        assert_eq!(eth0.name, "eth0");
        assert_eq!(
            eth0.addresses,
            vec!["10.0.2.15/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            eth0.routes,
            vec![default_route("10.0.2.2".parse().unwrap())]
        );
        assert!(p.links[1].addresses.is_empty(), "eth1 is only brought up");
        assert!(
            p.notes
                .iter()
                .any(|n| n.starts_with("eth1: no DHCP client")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn ip_without_a_device_is_for_the_first_physical_link_and_off_means_nothing() {
        let arg = IpArg::parse("192.168.1.9:::255.255.0.0").unwrap();
        let p = plan(None, Some(&arg), &links()).unwrap();
        assert_eq!(
            p.links[0].addresses,
            vec!["192.168.1.9/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            plan(None, Some(&IpArg::Off), &links()).unwrap(),
            StaticPlan::default()
        );
        let arg = IpArg::parse("10.0.0.1:::::eth9:off").unwrap();
        let e = plan(None, Some(&arg), &links()).unwrap_err().to_string();
        assert_eq!(
            e,
            "network: ip=: no link named eth9 (links: lo, eth0, eth1)"
        );
    }

    #[test]
    fn config_interfaces_are_selected_by_name_or_mac_with_routes_and_mtu() {
        let network: Network = toml::from_str(
            r#"
            nameservers = ["10.0.0.53"]
            search = ["example.org"]
            [[interfaces]]
            mac = "52:54:00:12:34:57"
            addresses = ["10.0.1.5/24", "fd00::5/64"]
            gateways = ["10.0.1.1"]
            mtu = 9000
            [[interfaces.routes]]
            to = "10.9.0.7/16"
            via = "10.0.1.254"
            metric = 10
            "#,
        )
        .unwrap();
        let p = plan(Some(&network), Some(&qemu_ip()), &links()).unwrap();
        assert_eq!(
            p.links.len(),
            1,
            "eth0 is not configured: ip= applies only to DHCP links"
        );
        let eth1 = &p.links[0];
        assert_eq!((eth1.name.as_str(), eth1.mtu), ("eth1", Some(9000)));
        assert_eq!(eth1.addresses.len(), 2);
        assert_eq!(eth1.routes[1].to, "10.9.0.0/16".parse::<IpNet>().unwrap());
        assert_eq!(p.nameservers, vec!["10.0.0.53".parse::<IpAddr>().unwrap()]);
        assert_eq!(p.search, vec!["example.org".to_string()]);
    }

    #[test]
    fn a_dhcp_link_falls_back_to_ip_and_a_missing_link_names_the_key() {
        let network: Network =
            toml::from_str("[[interfaces]]\nname = \"eth0\"\ndhcp = true\n").unwrap();
        let p = plan(Some(&network), Some(&qemu_ip()), &links()).unwrap();
        assert_eq!(
            p.links[0].addresses,
            vec!["10.0.2.15/24".parse::<IpNet>().unwrap()]
        );
        let network: Network = toml::from_str("[[interfaces]]\nname = \"eth7\"\n").unwrap();
        let e = plan(Some(&network), None, &links())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("network: network.interfaces[0]: no link has name eth7"),
            "{e}"
        );
    }

    #[test]
    fn no_interfaces_means_every_physical_link_with_ip_as_the_dhcp_stand_in() {
        let p = plan(Some(&Network::default()), Some(&qemu_ip()), &links()).unwrap();
        assert_eq!(p.links.len(), 2);
        assert_eq!(p.links[0].addresses.len(), 1);
        assert!(p.links[1].addresses.is_empty());
    }
}
