//! Which network plan the node runs, and what has to happen to the DHCP
//! clients and links when it moves from one plan to the next. Pure: the
//! kernel side is [`super::kernel`].

use std::collections::BTreeMap;
use std::fmt;

use caisson_config::Network;
use caisson_net::ipcmdline::IpArg;
use caisson_net::link::{Link, LinkId, LinkPlan, NetworkPlan, PlanError};

/// The plan for `network`; `None`: the node has no config yet, so the
/// `ip=` kernel argument decides if there is one (static addressing,
/// `dhcp` or `off`), else DHCPv4 on every physical link.
pub fn choose(
    network: Option<&Network>,
    ip_arg: Option<&IpArg>,
    links: &[Link],
) -> Result<NetworkPlan, PlanError> {
    match (network, ip_arg) {
        (Some(network), _) => NetworkPlan::from_config(network, links),
        (None, Some(arg)) => NetworkPlan::from_ip_arg(arg, links),
        (None, None) => Ok(NetworkPlan::dhcp_on_physical(links)),
    }
}

/// How a link's DHCP client runs; a change restarts the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpSettings {
    /// Take the MTU from the lease (option 26): only when the config sets
    /// none for the link.
    pub use_mtu: bool,
}

impl DhcpSettings {
    fn of(lp: &LinkPlan) -> Option<DhcpSettings> {
        lp.dhcp.then_some(DhcpSettings {
            use_mtu: lp.mtu.is_none(),
        })
    }
}

/// The DHCP clients `plan` wants, by link.
pub fn dhcp_wanted(plan: &NetworkPlan) -> BTreeMap<LinkId, DhcpSettings> {
    plan.links
        .iter()
        .filter_map(|lp| DhcpSettings::of(lp).map(|s| (lp.link.clone(), s)))
        .collect()
}

/// Why a DHCP client is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The plan no longer names the link.
    LeftPlan,
    /// The link is static now.
    NoDhcp,
    /// Its settings changed: it is started again with the new ones.
    Restart,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::LeftPlan => "the link left the network plan",
            StopReason::NoDhcp => "the link is static now",
            StopReason::Restart => "its settings changed; starting it again",
        })
    }
}

/// From the running plan and clients to a new plan, in this order: stop
/// clients, release links, apply the new plan (caisson-net), start clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transition {
    pub stop: Vec<(LinkId, StopReason)>,
    /// Links the new plan does not name: what we put on them is removed
    /// (caisson-net's `apply` never touches a link outside its plan).
    pub release: Vec<LinkId>,
    pub start: Vec<(LinkId, DhcpSettings)>,
}

impl Transition {
    pub fn between(
        old: &NetworkPlan,
        running: &BTreeMap<LinkId, DhcpSettings>,
        new: &NetworkPlan,
    ) -> Transition {
        let wanted = dhcp_wanted(new);
        let in_new = |id: &LinkId| new.links.iter().any(|lp| &lp.link == id);
        let mut t = Transition::default();
        for (id, settings) in running {
            match wanted.get(id) {
                Some(w) if w == settings => {}
                Some(_) => t.stop.push((id.clone(), StopReason::Restart)),
                None if in_new(id) => t.stop.push((id.clone(), StopReason::NoDhcp)),
                None => t.stop.push((id.clone(), StopReason::LeftPlan)),
            }
        }
        t.release = old
            .links
            .iter()
            .map(|lp| &lp.link)
            .filter(|id| !in_new(id))
            .cloned()
            .collect();
        t.start = wanted
            .into_iter()
            .filter(|(id, w)| running.get(id) != Some(w))
            .collect();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caisson_net::link::MacAddr;

    fn link(index: u32, name: &str, physical: bool) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some(MacAddr([0x52, 0x54, 0, 0x12, 0x34, index as u8])),
            permanent_mac: None,
            mtu: 1500,
            up: true,
            physical,
            kind: None,
        }
    }

    fn machine() -> Vec<Link> {
        vec![
            link(1, "lo", false),
            link(2, "eth0", true),
            link(3, "eth1", true),
        ]
    }

    fn id(index: u32, name: &str) -> LinkId {
        LinkId {
            index,
            name: name.into(),
        }
    }

    fn network(toml_text: &str) -> Network {
        toml::from_str(toml_text).unwrap()
    }

    const DHCP: DhcpSettings = DhcpSettings { use_mtu: true };

    #[test]
    fn before_any_config_every_physical_link_runs_dhcp() {
        let plan = choose(None, None, &machine()).unwrap();
        let wanted: Vec<_> = dhcp_wanted(&plan).into_keys().collect();
        assert_eq!(wanted, [id(2, "eth0"), id(3, "eth1")]);
    }

    #[test]
    fn before_any_config_a_static_ip_argument_replaces_dhcp() {
        let arg = IpArg::parse("10.0.2.15::10.0.2.2:255.255.255.0::eth0:off").unwrap();
        let plan = choose(None, Some(&arg), &machine()).unwrap();
        assert_eq!(plan.links.len(), 1);
        assert_eq!(plan.links[0].addresses[0].to_string(), "10.0.2.15/24");
        assert!(dhcp_wanted(&plan).is_empty());
        let off = choose(None, Some(&IpArg::Off), &machine()).unwrap();
        assert!(
            off.links.is_empty(),
            "ip=off: no networking before a config"
        );
    }

    #[test]
    fn a_config_decides_and_ip_is_no_longer_consulted() {
        let arg = IpArg::parse("10.0.2.15::10.0.2.2:255.255.255.0::eth0:off").unwrap();
        let n = network("[[interfaces]]\nname = \"eth1\"\ndhcp = true\nmtu = 9000\n");
        let plan = choose(Some(&n), Some(&arg), &machine()).unwrap();
        assert_eq!(
            dhcp_wanted(&plan).into_iter().collect::<Vec<_>>(),
            [(id(3, "eth1"), DhcpSettings { use_mtu: false })],
            "the config's MTU wins over the lease's"
        );
        let e = choose(
            Some(&network("[[interfaces]]\nname = \"eth7\"\n")),
            None,
            &machine(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("network.interfaces[0]: no link has name \"eth7\""),
            "{e}"
        );
    }

    #[test]
    fn the_first_plan_starts_a_client_per_dhcp_link_and_releases_nothing() {
        let new = choose(None, None, &machine()).unwrap();
        let t = Transition::between(&NetworkPlan::default(), &BTreeMap::new(), &new);
        assert_eq!(
            t,
            Transition {
                stop: vec![],
                release: vec![],
                start: vec![(id(2, "eth0"), DHCP), (id(3, "eth1"), DHCP)],
            }
        );
    }

    #[test]
    fn the_same_plan_again_changes_no_client() {
        let plan = choose(None, None, &machine()).unwrap();
        let running = dhcp_wanted(&plan);
        assert_eq!(
            Transition::between(&plan, &running, &plan),
            Transition::default()
        );
    }

    #[test]
    fn a_link_that_leaves_the_plan_loses_its_client_and_is_released() {
        let old = choose(None, None, &machine()).unwrap();
        let running = dhcp_wanted(&old);
        let new = choose(
            Some(&network(
                "[[interfaces]]\nname = \"eth0\"\naddresses = [\"10.0.9.5/24\"]\n",
            )),
            None,
            &machine(),
        )
        .unwrap();
        let t = Transition::between(&old, &running, &new);
        assert_eq!(
            t.stop,
            [
                (id(2, "eth0"), StopReason::NoDhcp),
                (id(3, "eth1"), StopReason::LeftPlan)
            ]
        );
        assert_eq!(
            t.release,
            [id(3, "eth1")],
            "eth0 stays in the plan: apply replaces its lease with the static address"
        );
        assert!(t.start.is_empty());
    }

    #[test]
    fn a_changed_setting_restarts_the_client_and_a_client_that_died_is_started_again() {
        let old = choose(None, None, &machine()).unwrap();
        let mut running = dhcp_wanted(&old);
        let new = choose(
            Some(&network(
                "[[interfaces]]\nname = \"eth0\"\ndhcp = true\nmtu = 1400\n",
            )),
            None,
            &machine(),
        )
        .unwrap();
        let t = Transition::between(&old, &running, &new);
        assert_eq!(
            t.stop,
            [
                (id(2, "eth0"), StopReason::Restart),
                (id(3, "eth1"), StopReason::LeftPlan)
            ]
        );
        assert_eq!(t.start, [(id(2, "eth0"), DhcpSettings { use_mtu: false })]);

        // eth1's client died (it is no longer running): the same plan starts it.
        running.remove(&id(3, "eth1"));
        let t = Transition::between(&old, &running, &old);
        assert_eq!(t.start, [(id(3, "eth1"), DHCP)]);
        assert!(t.stop.is_empty() && t.release.is_empty());
    }

    #[test]
    fn a_link_renamed_or_recreated_counts_as_a_new_link() {
        let old = choose(None, None, &machine()).unwrap();
        let running = dhcp_wanted(&old);
        let mut links = machine();
        links[2] = link(7, "eth1", true);
        let new = choose(None, None, &links).unwrap();
        let t = Transition::between(&old, &running, &new);
        assert_eq!(t.stop, [(id(3, "eth1"), StopReason::LeftPlan)]);
        assert_eq!(t.release, [id(3, "eth1")]);
        assert_eq!(t.start, [(id(7, "eth1"), DHCP)]);
    }
}
