//! The network plan: which link gets what, computed in memory from the
//! machine config (or the `ip=` kernel argument) and the link list. Pure.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use caisson_config::{Interface, Network};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

use super::{Link, LinkId, MacAddr, RouteSpec, DEFAULT_METRIC_V4, DEFAULT_METRIC_V6};
use crate::ipcmdline::IpArg;

/// How the config picks a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Name(String),
    Mac(MacAddr),
    /// No interfaces configured: every physical link.
    AnyPhysical,
    /// `ip=` without a device: the first physical link.
    FirstPhysical,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Name(n) => write!(f, "name {n:?}"),
            Selector::Mac(m) => write!(f, "mac {m}"),
            Selector::AnyPhysical => f.write_str("every physical link"),
            Selector::FirstPhysical => f.write_str("the first physical link"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("{at}: {why}")]
    BadSelector { at: String, why: String },
    #[error("{at}: no link has {selector} (links: {known})")]
    NoLink {
        at: String,
        selector: Selector,
        known: String,
    },
    #[error("{at}: there is no physical link (links: {known})")]
    NoPhysicalLink { at: String, known: String },
    #[error("{at}: {selector} matches several links: {links}")]
    Ambiguous {
        at: String,
        selector: Selector,
        links: String,
    },
    #[error("{second}: link {link} is already configured by {first}")]
    SelectedTwice {
        link: String,
        first: String,
        second: String,
    },
    #[error("{at}: {route}: the gateway's address family differs from the destination's")]
    RouteFamily { at: String, route: String },
}

/// What one link gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    pub link: LinkId,
    /// How the link was chosen, for messages.
    pub selector: Selector,
    /// Run a DHCPv4 client on it.
    pub dhcp: bool,
    /// Static addresses, IPv4 and IPv6.
    pub addresses: Vec<IpNet>,
    /// Static routes, default gateways included, metrics filled in.
    pub routes: Vec<RouteSpec>,
    /// None: leave the MTU as it is.
    pub mtu: Option<u32>,
}

/// The whole network, ready for [`super::apply()`]. Links are sorted by
/// index; links the plan does not name are never touched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkPlan {
    pub links: Vec<LinkPlan>,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    /// From `ip=`; the config's host name lives in `[machine]`.
    pub hostname: Option<String>,
}

impl NetworkPlan {
    /// From the config's `[network]`. No interfaces: DHCPv4 on every
    /// physical link.
    pub fn from_config(network: &Network, links: &[Link]) -> Result<NetworkPlan, PlanError> {
        let mut plan = if network.interfaces.is_empty() {
            NetworkPlan::dhcp_on_physical(links)
        } else {
            let mut chosen: BTreeMap<u32, (String, LinkPlan)> = BTreeMap::new();
            for (i, iface) in network.interfaces.iter().enumerate() {
                let at = format!("network.interfaces[{i}]");
                let lp = link_plan(&at, iface, links)?;
                if let Some((first, _)) = chosen.get(&lp.link.index) {
                    return Err(PlanError::SelectedTwice {
                        link: lp.link.name,
                        first: first.clone(),
                        second: at,
                    });
                }
                chosen.insert(lp.link.index, (at, lp));
            }
            NetworkPlan {
                links: chosen.into_values().map(|(_, lp)| lp).collect(),
                ..NetworkPlan::default()
            }
        };
        plan.nameservers = network.nameservers.clone();
        plan.search = network.search.clone();
        Ok(plan)
    }

    /// DHCPv4 on every physical link; what a node does with no config.
    pub fn dhcp_on_physical(links: &[Link]) -> NetworkPlan {
        let mut links: Vec<LinkPlan> = links
            .iter()
            .filter(|l| l.physical)
            .map(|l| LinkPlan {
                link: l.id(),
                selector: Selector::AnyPhysical,
                dhcp: true,
                addresses: Vec::new(),
                routes: Vec::new(),
                mtu: None,
            })
            .collect();
        links.sort_by_key(|lp| lp.link.index);
        NetworkPlan {
            links,
            ..NetworkPlan::default()
        }
    }

    /// From the `ip=` kernel argument, for a node that has no config yet.
    pub fn from_ip_arg(arg: &IpArg, links: &[Link]) -> Result<NetworkPlan, PlanError> {
        const AT: &str = "ip=";
        match arg {
            IpArg::Off => Ok(NetworkPlan::default()),
            IpArg::Dhcp { device: None } => Ok(NetworkPlan::dhcp_on_physical(links)),
            IpArg::Dhcp { device: Some(name) } => {
                let link = select(AT, &Selector::Name(name.clone()), links)?;
                let lp = LinkPlan {
                    link: link.id(),
                    selector: Selector::Name(name.clone()),
                    dhcp: true,
                    addresses: Vec::new(),
                    routes: Vec::new(),
                    mtu: None,
                };
                Ok(NetworkPlan {
                    links: vec![lp],
                    ..NetworkPlan::default()
                })
            }
            IpArg::Static(s) => {
                let selector = match &s.device {
                    Some(name) => Selector::Name(name.clone()),
                    None => Selector::FirstPhysical,
                };
                let link = select(AT, &selector, links)?;
                let address =
                    Ipv4Net::new(s.address, s.prefix_len).map_err(|_| PlanError::BadSelector {
                        at: AT.into(),
                        why: format!("prefix length {} is over 32", s.prefix_len),
                    })?;
                let routes = s
                    .gateway
                    .map(|gw| RouteSpec {
                        to: default_route(IpAddr::V4(gw)),
                        via: Some(IpAddr::V4(gw)),
                        metric: DEFAULT_METRIC_V4,
                    })
                    .into_iter()
                    .collect();
                let lp = LinkPlan {
                    link: link.id(),
                    selector,
                    dhcp: false,
                    addresses: vec![IpNet::V4(address)],
                    routes,
                    mtu: None,
                };
                Ok(NetworkPlan {
                    links: vec![lp],
                    nameservers: s.nameservers.iter().map(|ip| IpAddr::V4(*ip)).collect(),
                    search: Vec::new(),
                    hostname: s.hostname.clone(),
                })
            }
        }
    }

    /// The links that want a DHCP client.
    pub fn dhcp_links(&self) -> impl Iterator<Item = &LinkPlan> {
        self.links.iter().filter(|lp| lp.dhcp)
    }

    pub fn link(&self, name: &str) -> Option<&LinkPlan> {
        self.links.iter().find(|lp| lp.link.name == name)
    }
}

fn link_plan(at: &str, iface: &Interface, links: &[Link]) -> Result<LinkPlan, PlanError> {
    let selector = match (&iface.name, &iface.mac) {
        (Some(name), None) => Selector::Name(name.clone()),
        (None, Some(mac)) => Selector::Mac(mac.parse().map_err(|why| PlanError::BadSelector {
            at: format!("{at}.mac"),
            why,
        })?),
        _ => {
            return Err(PlanError::BadSelector {
                at: at.into(),
                why: "expected exactly one of `name` and `mac`".into(),
            })
        }
    };
    let link = select(at, &selector, links)?;
    let mut addresses: Vec<IpNet> = Vec::new();
    for a in &iface.addresses {
        if !addresses.contains(a) {
            addresses.push(*a);
        }
    }
    let mut routes: Vec<RouteSpec> = Vec::new();
    let gateways = iface
        .gateways
        .iter()
        .map(|gw| (default_route(*gw), *gw, None));
    let others = iface.routes.iter().map(|r| (r.to.trunc(), r.via, r.metric));
    for (j, (to, via, metric)) in gateways.chain(others).enumerate() {
        if to.addr().is_ipv4() != via.is_ipv4() {
            return Err(PlanError::RouteFamily {
                at: format!("{at}.routes[{j}]"),
                route: format!("{to} via {via}"),
            });
        }
        let route = RouteSpec {
            to,
            via: Some(via),
            metric: normalize_metric(to, metric),
        };
        if !routes.contains(&route) {
            routes.push(route);
        }
    }
    Ok(LinkPlan {
        link: link.id(),
        selector,
        dhcp: iface.dhcp,
        addresses,
        routes,
        mtu: iface.mtu,
    })
}

fn default_route(gateway: IpAddr) -> IpNet {
    match gateway {
        IpAddr::V4(_) => IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap_or_default()),
        IpAddr::V6(_) => IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).unwrap_or_default()),
    }
}

/// The kernel stores an IPv6 metric of 0 as 1024; say so up front, so the
/// route read back equals the route planned.
fn normalize_metric(to: IpNet, metric: Option<u32>) -> u32 {
    match (to, metric) {
        (IpNet::V4(_), m) => m.unwrap_or(DEFAULT_METRIC_V4),
        (IpNet::V6(_), None | Some(0)) => DEFAULT_METRIC_V6,
        (IpNet::V6(_), Some(m)) => m,
    }
}

fn names(links: &[&Link]) -> String {
    let v: Vec<String> = links.iter().map(|l| l.name.clone()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn select<'a>(at: &str, selector: &Selector, links: &'a [Link]) -> Result<&'a Link, PlanError> {
    let mut candidates: Vec<&Link> = match selector {
        Selector::Name(name) => links.iter().filter(|l| &l.name == name).collect(),
        Selector::Mac(mac) => links.iter().filter(|l| l.has_mac(*mac)).collect(),
        Selector::AnyPhysical | Selector::FirstPhysical => {
            let mut phys: Vec<&Link> = links.iter().filter(|l| l.physical).collect();
            phys.sort_by_key(|l| l.index);
            phys.truncate(1);
            phys
        }
    };
    // VLANs, bridges and bonds copy their lower link's MAC: the physical
    // link is the one meant.
    if candidates.len() > 1 && candidates.iter().any(|l| l.physical) {
        candidates.retain(|l| l.physical);
    }
    let known = || {
        names(
            &links
                .iter()
                .filter(|l| l.kind.is_none() && l.name != "lo")
                .collect::<Vec<_>>(),
        )
    };
    match candidates.as_slice() {
        [one] => Ok(one),
        [] if matches!(selector, Selector::AnyPhysical | Selector::FirstPhysical) => {
            Err(PlanError::NoPhysicalLink {
                at: at.into(),
                known: known(),
            })
        }
        [] => Err(PlanError::NoLink {
            at: at.into(),
            selector: selector.clone(),
            known: known(),
        }),
        many => Err(PlanError::Ambiguous {
            at: at.into(),
            selector: selector.clone(),
            links: names(many),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipcmdline::StaticIp;
    use caisson_config::Route;

    fn link(index: u32, name: &str, mac: &str, physical: bool, kind: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some(mac.parse().unwrap()),
            permanent_mac: None,
            mtu: 1500,
            up: false,
            physical,
            kind: kind.map(String::from),
        }
    }

    fn machine() -> Vec<Link> {
        vec![
            Link {
                mac: None,
                ..link(1, "lo", "00:00:00:00:00:00", false, None)
            },
            link(2, "eth0", "52:54:00:aa:bb:01", true, None),
            link(3, "eth1", "52:54:00:aa:bb:02", true, None),
            link(4, "eth1.10", "52:54:00:aa:bb:02", false, Some("vlan")),
            link(5, "cni0", "52:54:00:cc:cc:cc", false, Some("bridge")),
        ]
    }

    fn iface(name: Option<&str>, mac: Option<&str>) -> Interface {
        Interface {
            name: name.map(String::from),
            mac: mac.map(String::from),
            ..Interface::default()
        }
    }

    #[test]
    fn no_interfaces_means_dhcp_on_every_physical_link() {
        let network = Network {
            nameservers: vec!["10.0.0.53".parse().unwrap()],
            ..Network::default()
        };
        let plan = NetworkPlan::from_config(&network, &machine()).unwrap();
        let names: Vec<_> = plan
            .links
            .iter()
            .map(|lp| (lp.link.name.as_str(), lp.dhcp))
            .collect();
        assert_eq!(names, [("eth0", true), ("eth1", true)]);
        assert_eq!(plan.nameservers, network.nameservers);
        assert_eq!(plan.dhcp_links().count(), 2);
    }

    #[test]
    fn links_are_selected_by_name_or_mac_and_get_addresses_routes_and_mtu() {
        let network = Network {
            interfaces: vec![
                Interface {
                    addresses: vec![
                        "10.10.0.17/24".parse().unwrap(),
                        "fd00:10::17/64".parse().unwrap(),
                    ],
                    gateways: vec!["10.10.0.1".parse().unwrap(), "fd00:10::1".parse().unwrap()],
                    ..iface(Some("eth0"), None)
                },
                Interface {
                    dhcp: true,
                    mtu: Some(9000),
                    routes: vec![Route {
                        to: "10.30.1.7/16".parse().unwrap(),
                        via: "10.20.0.1".parse().unwrap(),
                        metric: Some(100),
                    }],
                    ..iface(None, Some("52:54:00:AA:BB:02"))
                },
            ],
            ..Network::default()
        };
        let plan = NetworkPlan::from_config(&network, &machine()).unwrap();
        let eth0 = plan.link("eth0").unwrap();
        assert_eq!(eth0.link.index, 2);
        assert!(!eth0.dhcp);
        assert_eq!(eth0.addresses.len(), 2);
        let routes: Vec<String> = eth0.routes.iter().map(ToString::to_string).collect();
        assert_eq!(
            routes,
            [
                "0.0.0.0/0 via 10.10.0.1 metric 0",
                "::/0 via fd00:10::1 metric 1024"
            ]
        );
        let eth1 = plan
            .link("eth1")
            .expect("the MAC picks the physical link, not its VLAN");
        assert_eq!((eth1.dhcp, eth1.mtu), (true, Some(9000)));
        assert_eq!(
            eth1.routes[0].to.to_string(),
            "10.30.0.0/16",
            "host bits are cleared"
        );
        assert_eq!(eth1.selector.to_string(), "mac 52:54:00:aa:bb:02");
    }

    #[test]
    fn a_selector_that_matches_no_link_is_named_in_the_error() {
        let network = Network {
            interfaces: vec![
                iface(Some("eth0"), None),
                iface(None, Some("52:54:00:00:00:09")),
            ],
            ..Network::default()
        };
        let e = NetworkPlan::from_config(&network, &machine()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.interfaces[1]: no link has mac 52:54:00:00:00:09 (links: eth0, eth1)"
        );
        let network = Network {
            interfaces: vec![iface(Some("ens3"), None)],
            ..Network::default()
        };
        let e = NetworkPlan::from_config(&network, &machine()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("network.interfaces[0]: no link has name \"ens3\""),
            "{e}"
        );
    }

    #[test]
    fn one_link_selected_twice_is_refused() {
        let network = Network {
            interfaces: vec![
                iface(Some("eth1"), None),
                iface(None, Some("52:54:00:aa:bb:02")),
            ],
            ..Network::default()
        };
        let e = NetworkPlan::from_config(&network, &machine()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network.interfaces[1]: link eth1 is already configured by network.interfaces[0]"
        );
    }

    #[test]
    fn a_mac_shared_by_two_physical_links_is_ambiguous() {
        let mut links = machine();
        links[2].mac = links[1].mac;
        let network = Network {
            interfaces: vec![iface(None, Some("52:54:00:aa:bb:01"))],
            ..Network::default()
        };
        let e = NetworkPlan::from_config(&network, &links).unwrap_err();
        assert!(matches!(e, PlanError::Ambiguous { .. }), "{e}");
        assert!(e.to_string().contains("eth0, eth1"), "{e}");
    }

    #[test]
    fn ipv6_metric_zero_is_planned_as_the_kernel_stores_it() {
        let network = Network {
            interfaces: vec![Interface {
                routes: vec![Route {
                    to: "fd00:30::/48".parse().unwrap(),
                    via: "fd00:10::1".parse().unwrap(),
                    metric: Some(0),
                }],
                ..iface(Some("eth0"), None)
            }],
            ..Network::default()
        };
        let plan = NetworkPlan::from_config(&network, &machine()).unwrap();
        assert_eq!(plan.links[0].routes[0].metric, 1024);
    }

    #[test]
    fn the_ip_kernel_argument_makes_a_plan() {
        let links = machine();
        let arg = IpArg::Static(StaticIp {
            address: "10.0.0.5".parse().unwrap(),
            prefix_len: 24,
            gateway: Some("10.0.0.1".parse().unwrap()),
            hostname: Some("node-1".into()),
            device: None,
            nameservers: vec!["10.0.0.53".parse().unwrap()],
            ntp: None,
        });
        let plan = NetworkPlan::from_ip_arg(&arg, &links).unwrap();
        assert_eq!(plan.links.len(), 1);
        let lp = &plan.links[0];
        assert_eq!(
            (lp.link.name.as_str(), lp.dhcp),
            ("eth0", false),
            "no device: the first physical link"
        );
        assert_eq!(lp.addresses, ["10.0.0.5/24".parse::<IpNet>().unwrap()]);
        assert_eq!(lp.routes[0].to_string(), "0.0.0.0/0 via 10.0.0.1 metric 0");
        assert_eq!(plan.hostname.as_deref(), Some("node-1"));
        assert_eq!(plan.nameservers, ["10.0.0.53".parse::<IpAddr>().unwrap()]);

        let plan = NetworkPlan::from_ip_arg(
            &IpArg::Dhcp {
                device: Some("eth1".into()),
            },
            &links,
        )
        .unwrap();
        assert_eq!(
            plan.dhcp_links()
                .map(|lp| lp.link.name.as_str())
                .collect::<Vec<_>>(),
            ["eth1"]
        );
        assert_eq!(
            NetworkPlan::from_ip_arg(&IpArg::Dhcp { device: None }, &links)
                .unwrap()
                .links
                .len(),
            2
        );
        assert!(NetworkPlan::from_ip_arg(&IpArg::Off, &links)
            .unwrap()
            .links
            .is_empty());
        let e = NetworkPlan::from_ip_arg(
            &IpArg::Dhcp {
                device: Some("eth9".into()),
            },
            &links,
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("ip=: no link has name \"eth9\""),
            "{e}"
        );
        let e = NetworkPlan::from_ip_arg(&arg, &links[..1]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ip=: there is no physical link (links: none)"
        );
    }
}
