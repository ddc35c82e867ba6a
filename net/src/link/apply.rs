//! Make the kernel match a [`NetworkPlan`]. What to change is decided by
//! the pure `*_diff` functions; `apply` only reads the kernel and carries
//! the changes out, link by link.

use std::fmt;

use ipnet::IpNet;
use thiserror::Error;

use super::{Address, LinkPlan, Netlink, NetlinkError, NetworkPlan, Origin, Route, RouteSpec};

/// One change `apply` made to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    LinkUp { link: String },
    Mtu { link: String, from: u32, to: u32 },
    AddressAdded { link: String, address: IpNet },
    AddressRemoved { link: String, address: IpNet },
    RouteAdded { link: String, route: RouteSpec },
    RouteRemoved { link: String, route: RouteSpec },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::LinkUp { link } => write!(f, "{link}: up"),
            Change::Mtu { link, from, to } => write!(f, "{link}: MTU {from} -> {to}"),
            Change::AddressAdded { link, address } => write!(f, "{link}: added address {address}"),
            Change::AddressRemoved { link, address } => {
                write!(f, "{link}: removed address {address}")
            }
            Change::RouteAdded { link, route } => write!(f, "{link}: added route {route}"),
            Change::RouteRemoved { link, route } => write!(f, "{link}: removed route {route}"),
        }
    }
}

/// What `apply` changed; empty when the kernel already matched the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub changes: Vec<Change>,
}

impl ApplyReport {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Some links could not be configured. The others were; `changes` says
/// what was done everywhere.
#[derive(Debug, Error)]
#[error("applying the network plan: {}", failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ApplyError {
    pub failures: Vec<NetlinkError>,
    pub changes: Vec<Change>,
}

/// Make the kernel match `plan`. Idempotent: applying the same plan again
/// changes nothing. On each link the plan names: the MTU (when planned),
/// up, the planned addresses and routes added, and those we added before
/// that the plan no longer wants removed. DHCP addresses and routes are
/// left to the DHCP client on links that run one, and removed elsewhere.
/// Links the plan does not name, and addresses and routes that are not
/// ours, are never touched. A failing link does not stop the others.
pub async fn apply(netlink: &Netlink, plan: &NetworkPlan) -> Result<ApplyReport, ApplyError> {
    let mut changes = Vec::new();
    let mut failures = Vec::new();
    for lp in &plan.links {
        if let Err(e) = apply_link(netlink, lp, &mut changes).await {
            failures.push(e);
        }
    }
    if failures.is_empty() {
        Ok(ApplyReport { changes })
    } else {
        Err(ApplyError { failures, changes })
    }
}

async fn apply_link(
    nl: &Netlink,
    lp: &LinkPlan,
    changes: &mut Vec<Change>,
) -> Result<(), NetlinkError> {
    let link = &lp.link;
    let name = || link.name.clone();
    let (mtu, up) = nl.link_state(link).await?;
    if let Some(want) = lp.mtu.filter(|m| *m != mtu) {
        nl.set_mtu(link, want).await?;
        changes.push(Change::Mtu {
            link: name(),
            from: mtu,
            to: want,
        });
    }
    if !up {
        nl.set_up(link, true).await?;
        changes.push(Change::LinkUp { link: name() });
    }

    // Add before removing: the kernel flushes a link's IPv4 routes when its
    // last IPv4 address goes, so a renumbering must never pass through zero.
    let (stale, missing) = address_diff(lp, &nl.addresses(link).await?);
    for address in missing {
        nl.add_address(link, address, Origin::Config, None, false)
            .await?;
        changes.push(Change::AddressAdded {
            link: name(),
            address,
        });
    }
    let removed_any = !stale.is_empty();
    for address in stale {
        match nl.delete_address(link, address).await {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => changes.push(Change::AddressRemoved {
                link: name(),
                address,
            }),
        }
    }
    if removed_any {
        // Removing a subnet's primary IPv4 address takes its secondaries
        // with it unless promote_secondaries is set: put back what we want.
        let (_, missing) = address_diff(lp, &nl.addresses(link).await?);
        for address in missing {
            nl.add_address(link, address, Origin::Config, None, false)
                .await?;
            let change = Change::AddressAdded {
                link: name(),
                address,
            };
            if !changes.contains(&change) {
                changes.push(change);
            }
        }
    }

    // Routes are read after the addresses changed, since that can drop some.
    let (stale, missing) = route_diff(lp, &nl.routes(link).await?);
    for route in stale {
        match nl.delete_listed_route(link, &route).await {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => changes.push(Change::RouteRemoved {
                link: name(),
                route: route.spec,
            }),
        }
    }
    for route in missing {
        nl.add_route(link, &route, Origin::Config).await?;
        changes.push(Change::RouteAdded {
            link: name(),
            route,
        });
    }
    Ok(())
}

/// Ours and unwanted: config objects the plan dropped, and DHCP objects on
/// a link that no longer runs DHCP.
fn unwanted(origin: Option<Origin>, planned: bool, dhcp: bool) -> bool {
    match origin {
        Some(Origin::Config) => !planned,
        Some(Origin::Dhcp) => !dhcp,
        None => false,
    }
}

/// (stale addresses to remove, planned addresses to add)
pub(crate) fn address_diff(lp: &LinkPlan, current: &[Address]) -> (Vec<IpNet>, Vec<IpNet>) {
    let stale: Vec<IpNet> = current
        .iter()
        .filter(|a| unwanted(a.origin, lp.addresses.contains(&a.net), lp.dhcp))
        .map(|a| a.net)
        .collect();
    let missing = lp
        .addresses
        .iter()
        .filter(|want| {
            !current
                .iter()
                .any(|a| a.net == **want && !stale.contains(&a.net))
        })
        .copied()
        .collect();
    (stale, missing)
}

/// (stale routes to remove, planned routes to add)
pub(crate) fn route_diff(lp: &LinkPlan, current: &[Route]) -> (Vec<Route>, Vec<RouteSpec>) {
    let stale: Vec<Route> = current
        .iter()
        .filter(|r| unwanted(r.origin, lp.routes.contains(&r.spec), lp.dhcp))
        .cloned()
        .collect();
    let missing = lp
        .routes
        .iter()
        .filter(|want| {
            !current
                .iter()
                .any(|r| r.spec == **want && !stale.iter().any(|s| s.spec == r.spec))
        })
        .cloned()
        .collect();
    (stale, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{LinkId, Selector};

    fn plan(dhcp: bool, addresses: &[&str], routes: &[RouteSpec]) -> LinkPlan {
        LinkPlan {
            link: LinkId {
                index: 2,
                name: "eth0".into(),
            },
            selector: Selector::Name("eth0".into()),
            dhcp,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            routes: routes.to_vec(),
            mtu: None,
        }
    }

    fn addr(net: &str, origin: Option<Origin>) -> Address {
        Address {
            net: net.parse().unwrap(),
            origin,
            valid_lifetime: None,
        }
    }

    fn gw(via: &str, metric: u32) -> RouteSpec {
        RouteSpec {
            to: "0.0.0.0/0".parse().unwrap(),
            via: Some(via.parse().unwrap()),
            metric,
        }
    }

    fn nets(v: &[IpNet]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_same_plan_twice_changes_nothing() {
        let lp = plan(
            false,
            &["192.0.2.10/24", "2001:db8::10/64"],
            &[gw("192.0.2.1", 0)],
        );
        let current = [
            addr("192.0.2.10/24", Some(Origin::Config)),
            addr("2001:db8::10/64", Some(Origin::Config)),
        ];
        assert_eq!(address_diff(&lp, &current), (vec![], vec![]));
    }

    #[test]
    fn only_our_unwanted_addresses_are_removed() {
        let lp = plan(false, &["192.0.2.11/24"], &[]);
        let current = [
            addr("192.0.2.10/24", Some(Origin::Config)),
            addr("192.0.2.99/24", Some(Origin::Dhcp)),
            addr("fe80::1/64", None),
            addr("203.0.113.5/32", None),
        ];
        let (stale, missing) = address_diff(&lp, &current);
        assert_eq!(
            nets(&stale),
            ["192.0.2.10/24", "192.0.2.99/24"],
            "the DHCP address goes: this link no longer runs DHCP"
        );
        assert_eq!(nets(&missing), ["192.0.2.11/24"]);
    }

    #[test]
    fn a_dhcp_link_keeps_its_lease_and_someone_elses_address_counts_as_present() {
        let lp = plan(true, &["203.0.113.5/32"], &[]);
        let current = [
            addr("192.0.2.99/24", Some(Origin::Dhcp)),
            addr("203.0.113.5/32", None),
        ];
        assert_eq!(address_diff(&lp, &current), (vec![], vec![]));
    }

    #[test]
    fn a_dhcp_tagged_address_that_is_now_static_is_replaced() {
        let lp = plan(false, &["192.0.2.99/24"], &[]);
        let (stale, missing) = address_diff(&lp, &[addr("192.0.2.99/24", Some(Origin::Dhcp))]);
        assert_eq!(
            (nets(&stale), nets(&missing)),
            (
                vec!["192.0.2.99/24".to_string()],
                vec!["192.0.2.99/24".to_string()]
            )
        );
    }

    #[test]
    fn a_changed_metric_replaces_our_route_and_foreign_routes_stay() {
        let lp = plan(false, &[], &[gw("192.0.2.1", 10)]);
        let mk = |spec: RouteSpec, origin| Route::for_tests(spec, origin);
        let current = [
            mk(gw("192.0.2.1", 0), Some(Origin::Config)),
            mk(
                RouteSpec {
                    to: "192.0.2.0/24".parse().unwrap(),
                    via: None,
                    metric: 0,
                },
                None,
            ),
        ];
        let (stale, missing) = route_diff(&lp, &current);
        assert_eq!(
            stale.iter().map(|r| r.spec.to_string()).collect::<Vec<_>>(),
            ["0.0.0.0/0 via 192.0.2.1 metric 0"]
        );
        assert_eq!(missing, [gw("192.0.2.1", 10)]);
        let (stale, missing) = route_diff(&lp, &[mk(gw("192.0.2.1", 10), Some(Origin::Config))]);
        assert!(stale.is_empty() && missing.is_empty());
    }
}
