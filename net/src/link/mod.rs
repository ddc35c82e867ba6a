//! Links, addresses and routes over rtnetlink, and the network plan.
//!
//! The flow is Bottlerocket's "compute in memory, then commit":
//! [`NetworkPlan`] is computed from the machine config (or the `ip=` kernel
//! argument) and the link list without touching the kernel, and
//! [`apply()`] makes the kernel match it.
//!
//! **Ownership lives in the kernel.** Every address and route we add carries
//! a protocol number of ours (`IFA_PROTO` on addresses, `rtm_protocol` on
//! routes): [`Origin::Config`] for the machine config, [`Origin::Dhcp`] for
//! leases. `apply` therefore needs no state file to know what it added
//! before, and never removes what someone else added (the kernel's IPv6
//! link-local address, a load balancer's VIP, CNI routes). `IFA_PROTO` needs
//! Linux 5.18 or later; Debian 12's kernel is 6.1. Inspect with
//! `ip route show proto 202` (and, with iproute2 6.2 or later,
//! `ip address show proto 202`).

mod apply;
mod messages;
mod netlink;
mod plan;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

pub use apply::{apply, ApplyError, ApplyReport, Change};
pub use netlink::{Address, Netlink, NetlinkError, Route};
pub use plan::{LinkPlan, NetworkPlan, PlanError, Selector};

/// The protocol number on what the machine config put in the kernel.
pub const PROTO_CONFIG: u8 = 202;
/// The protocol number on what a DHCP lease put in the kernel.
pub const PROTO_DHCP: u8 = 203;

/// Metric of routes whose config names none: the kernel's own defaults
/// (IPv6 turns 0 into 1024), so what we read back equals what we asked for.
pub const DEFAULT_METRIC_V4: u32 = 0;
pub const DEFAULT_METRIC_V6: u32 = 1024;
/// Metric of routes learned from DHCP: a configured static gateway wins.
pub const DHCP_ROUTE_METRIC: u32 = 1024;

/// Who put an address or a route in the kernel, when it was us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Config,
    Dhcp,
}

impl Origin {
    pub fn proto(self) -> u8 {
        match self {
            Origin::Config => PROTO_CONFIG,
            Origin::Dhcp => PROTO_DHCP,
        }
    }

    /// None: not ours.
    pub fn from_proto(proto: u8) -> Option<Origin> {
        match proto {
            PROTO_CONFIG => Some(Origin::Config),
            PROTO_DHCP => Some(Origin::Dhcp),
            _ => None,
        }
    }
}

/// An Ethernet address, written `52:54:00:12:34:56`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<MacAddr, String> {
        let bad = || format!("{s:?} is not a MAC address like 52:54:00:12:34:56");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// A link by kernel index, with its name for messages. Operations act on
/// the index; the name is what errors and logs say.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId {
    pub index: u32,
    pub name: String,
}

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A network link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    /// The hardware's own address; differs from `mac` on bond members.
    pub permanent_mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// A device of its own (`/sys/class/net/<name>/device` exists), not
    /// loopback and not a virtual kind (veth, bridge, bond, vlan, …).
    pub physical: bool,
    /// The rtnetlink kind of a virtual link ("veth", "bridge", …).
    pub kind: Option<String>,
}

impl Link {
    pub fn id(&self) -> LinkId {
        LinkId {
            index: self.index,
            name: self.name.clone(),
        }
    }

    pub fn has_mac(&self, mac: MacAddr) -> bool {
        self.mac == Some(mac) || self.permanent_mac == Some(mac)
    }
}

/// A route on one link, in the main table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteSpec {
    /// Destination, with host bits cleared; `0.0.0.0/0` or `::/0` for a
    /// default route.
    pub to: IpNet,
    /// Gateway; None for an on-link (scope link) route.
    pub via: Option<IpAddr>,
    pub metric: u32,
}

impl RouteSpec {
    pub fn is_default(&self) -> bool {
        self.to.prefix_len() == 0
    }
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            Some(via) => write!(f, "{} via {via} metric {}", self.to, self.metric),
            None => write!(f, "{} on-link metric {}", self.to, self.metric),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_and_print_in_lower_case() {
        let mac: MacAddr = "52:54:00:AA:bb:02".parse().unwrap();
        assert_eq!(mac.0, [0x52, 0x54, 0, 0xaa, 0xbb, 2]);
        assert_eq!(mac.to_string(), "52:54:00:aa:bb:02");
        for bad in [
            "52:54:00:aa:bb",
            "52:54:00:aa:bb:02:03",
            "52:54:00:aa:bb:2",
            "zz:54:00:aa:bb:02",
            "",
        ] {
            assert!(
                bad.parse::<MacAddr>()
                    .unwrap_err()
                    .contains("not a MAC address"),
                "{bad}"
            );
        }
    }

    #[test]
    fn origins_round_trip_through_protocol_numbers() {
        for o in [Origin::Config, Origin::Dhcp] {
            assert_eq!(Origin::from_proto(o.proto()), Some(o));
        }
        assert_eq!(Origin::from_proto(2), None, "kernel routes are not ours");
        assert_eq!(
            Origin::from_proto(4),
            None,
            "`ip route add proto static` is not ours"
        );
    }
}
