//! `link::apply` against a real kernel, inside network namespaces made for
//! each test (see tests/netns). Needs root and iproute2.

mod netns;

use std::time::Duration;

use caisson_config::{Interface, Network, Route};
use caisson_net::link::{apply, Change, Netlink, NetworkPlan, Origin};
use ipnet::IpNet;
use netns::{addresses, has_address, mtu, routes, veth, Netns};

fn a0_config(
    addresses: &[&str],
    gateways: &[&str],
    routes: &[(&str, &str, u32)],
    mtu: Option<u32>,
) -> Network {
    Network {
        interfaces: vec![Interface {
            name: Some("a0".into()),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            gateways: gateways.iter().map(|g| g.parse().unwrap()).collect(),
            routes: routes
                .iter()
                .map(|(to, via, metric)| Route {
                    to: to.parse().unwrap(),
                    via: via.parse().unwrap(),
                    metric: Some(*metric),
                })
                .collect(),
            mtu,
            ..Interface::default()
        }],
        ..Network::default()
    }
}

/// What `ip` shows for a link: addresses, IPv4 and IPv6 routes, MTU.
fn snapshot(ns: &Netns, dev: &str) -> (Vec<String>, Vec<String>, Vec<String>, u64) {
    let mut addrs: Vec<String> = addresses(ns, dev).into_iter().map(|(a, _)| a).collect();
    addrs.sort();
    (
        addrs,
        routes(ns, "-4", dev),
        routes(ns, "-6", dev),
        mtu(ns, dev),
    )
}

fn texts(changes: &[Change]) -> Vec<String> {
    let mut v: Vec<String> = changes.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

#[test]
fn a_static_plan_lands_reapplying_it_changes_nothing_and_a_changed_plan_removes_what_is_stale() {
    let ns = Netns::new("apply");
    // The node's kernel default (systemd hosts set 1): removing a subnet's
    // primary address takes the secondaries and the subnet's routes along.
    ns.sysctl("net.ipv4.conf.all.promote_secondaries", "0");
    ns.sysctl("net.ipv4.conf.default.promote_secondaries", "0");
    veth(&ns, "a0", &ns, "a1");
    veth(&ns, "b0", &ns, "b1");
    ns.ip(&["link", "set", "a0", "down"]);
    // Someone else's addresses: one on the planned link, one on a link the
    // plan does not name. Neither may be touched.
    ns.ip(&["address", "add", "2001:db8:ffff::5/64", "dev", "a0"]);
    ns.ip(&["address", "add", "198.51.100.5/24", "dev", "b0"]);
    let b0_before = snapshot(&ns, "b0");
    let sysfs = tempfile::tempdir().unwrap();
    let sysfs = sysfs.path().to_path_buf();
    let ns = &ns;
    ns.block_on(Duration::from_secs(60), || async move {
        let nl = Netlink::connect().unwrap();
        let links = nl.links(&sysfs).await.unwrap();

        let first = a0_config(
            &["192.0.2.10/24", "2001:db8:1::10/64"],
            &["192.0.2.1", "2001:db8:1::1"],
            &[("10.99.0.0/16", "192.0.2.254", 50)],
            Some(1400),
        );
        let plan = NetworkPlan::from_config(&first, &links).unwrap();
        let report = apply(&nl, &plan).await.unwrap();
        assert_eq!(
            texts(&report.changes),
            [
                "a0: MTU 1500 -> 1400",
                "a0: added address 192.0.2.10/24",
                "a0: added address 2001:db8:1::10/64",
                "a0: added route 0.0.0.0/0 via 192.0.2.1 metric 0",
                "a0: added route 10.99.0.0/16 via 192.0.2.254 metric 50",
                "a0: added route ::/0 via 2001:db8:1::1 metric 1024",
                "a0: up",
            ]
        );
        let (addrs, v4, v6, a0_mtu) = snapshot(ns, "a0");
        for want in ["192.0.2.10/24", "2001:db8:1::10/64", "2001:db8:ffff::5/64"] {
            assert!(addrs.contains(&want.to_string()), "{want} in {addrs:?}");
        }
        assert!(
            v4.contains(&"default via 192.0.2.1 proto 202 metric 0".into()),
            "{v4:?}"
        );
        assert!(
            v4.contains(&"10.99.0.0/16 via 192.0.2.254 proto 202 metric 50".into()),
            "{v4:?}"
        );
        assert!(
            v6.contains(&"default via 2001:db8:1::1 proto 202 metric 1024".into()),
            "{v6:?}"
        );
        assert_eq!(a0_mtu, 1400);
        let a0 = ns.ip_json(&["link", "show", "dev", "a0"]);
        assert!(
            a0[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{a0}"
        );

        // Ours are tagged; the foreign address is not.
        let id = links.iter().find(|l| l.name == "a0").unwrap().id();
        let tagged: Vec<(IpNet, Option<Origin>)> = nl
            .addresses(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.net, a.origin))
            .collect();
        assert!(
            tagged.contains(&("192.0.2.10/24".parse().unwrap(), Some(Origin::Config))),
            "{tagged:?}"
        );
        assert!(
            tagged.contains(&("2001:db8:ffff::5/64".parse().unwrap(), None)),
            "{tagged:?}"
        );

        // The same plan again: nothing to do, and the kernel agrees.
        let before = snapshot(ns, "a0");
        let again = apply(&nl, &plan).await.unwrap();
        assert!(again.is_empty(), "re-applying changed {:?}", again.changes);
        assert_eq!(snapshot(ns, "a0"), before);

        // Renumber IPv4, drop the IPv6 gateway, change a metric, leave the
        // MTU alone.
        let second = a0_config(
            &["192.0.2.11/24", "2001:db8:1::10/64"],
            &["192.0.2.1"],
            &[("10.99.0.0/16", "192.0.2.254", 60)],
            None,
        );
        let plan = NetworkPlan::from_config(&second, &links).unwrap();
        let report = apply(&nl, &plan).await.unwrap();
        assert_eq!(
            texts(&report.changes),
            [
                "a0: added address 192.0.2.11/24",
                // Put back: the kernel dropped .11 with the primary .10 and
                // flushed the subnet's routes, the stale metric-50 one too.
                "a0: added route 0.0.0.0/0 via 192.0.2.1 metric 0",
                "a0: added route 10.99.0.0/16 via 192.0.2.254 metric 60",
                "a0: removed address 192.0.2.10/24",
                "a0: removed route ::/0 via 2001:db8:1::1 metric 1024",
            ]
        );
        let (addrs, v4, v6, a0_mtu) = snapshot(ns, "a0");
        assert!(
            !addrs.contains(&"192.0.2.10/24".to_string()),
            "the stale address is gone: {addrs:?}"
        );
        assert!(
            addrs.contains(&"192.0.2.11/24".to_string())
                && addrs.contains(&"2001:db8:ffff::5/64".to_string()),
            "{addrs:?}"
        );
        assert!(
            v4.contains(&"default via 192.0.2.1 proto 202 metric 0".into()),
            "renumbering keeps the default route: {v4:?}"
        );
        assert!(!v4.iter().any(|r| r.contains("metric 50")), "{v4:?}");
        assert!(!v6.iter().any(|r| r.starts_with("default")), "{v6:?}");
        assert_eq!(a0_mtu, 1400, "a plan without an MTU leaves it");
        assert!(apply(&nl, &plan).await.unwrap().is_empty());
    });
    assert_eq!(
        snapshot(ns, "b0"),
        b0_before,
        "a link the plan does not name is never touched"
    );
}

#[test]
fn dhcp_addresses_stay_on_dhcp_links_and_are_removed_where_dhcp_stopped() {
    let ns = Netns::new("apply-dhcp");
    veth(&ns, "a0", &ns, "a1");
    let sysfs = tempfile::tempdir().unwrap();
    let sysfs = sysfs.path().to_path_buf();
    let ns = &ns;
    ns.block_on(Duration::from_secs(30), || async move {
        let nl = Netlink::connect().unwrap();
        let links = nl.links(&sysfs).await.unwrap();
        let id = links.iter().find(|l| l.name == "a0").unwrap().id();
        let lease: IpNet = "192.0.2.77/24".parse().unwrap();
        nl.add_address(
            &id,
            lease,
            Origin::Dhcp,
            Some(Duration::from_secs(600)),
            false,
        )
        .await
        .unwrap();

        let mut network = a0_config(&[], &[], &[], None);
        network.interfaces[0].dhcp = true;
        let plan = NetworkPlan::from_config(&network, &links).unwrap();
        assert!(apply(&nl, &plan).await.unwrap().is_empty());
        assert!(
            has_address(ns, "a0", "192.0.2.77/24"),
            "the lease belongs to the DHCP client"
        );

        network.interfaces[0].dhcp = false;
        let plan = NetworkPlan::from_config(&network, &links).unwrap();
        let report = apply(&nl, &plan).await.unwrap();
        assert_eq!(
            texts(&report.changes),
            ["a0: removed address 192.0.2.77/24"]
        );
        assert!(!has_address(ns, "a0", "192.0.2.77/24"));
    });
}

#[test]
fn a_failing_link_is_reported_by_name_and_route_and_the_others_are_still_applied() {
    let ns = Netns::new("apply-err");
    veth(&ns, "a0", &ns, "a1");
    veth(&ns, "b0", &ns, "b1");
    let sysfs = tempfile::tempdir().unwrap();
    let sysfs = sysfs.path().to_path_buf();
    let ns = &ns;
    ns.block_on(Duration::from_secs(30), || async move {
        let nl = Netlink::connect().unwrap();
        let links = nl.links(&sysfs).await.unwrap();
        // a0's gateway is on no subnet of a0.
        let mut network = a0_config(&["192.0.2.10/24"], &["10.0.0.1"], &[], None);
        network.interfaces.push(Interface {
            name: Some("b0".into()),
            addresses: vec!["198.51.100.9/24".parse().unwrap()],
            ..Interface::default()
        });
        let plan = NetworkPlan::from_config(&network, &links).unwrap();
        let err = apply(&nl, &plan).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("link a0: adding route 0.0.0.0/0 via 10.0.0.1 metric 0: "),
            "{text}"
        );
        assert_eq!(err.failures.len(), 1, "{text}");
        assert!(
            err.changes
                .iter()
                .any(|c| c.to_string() == "b0: added address 198.51.100.9/24"),
            "{:?}",
            err.changes
        );
        assert!(has_address(ns, "b0", "198.51.100.9/24"));
    });
}

#[test]
fn links_report_name_mac_mtu_state_and_that_veths_are_not_physical() {
    let ns = Netns::new("links");
    veth(&ns, "a0", &ns, "a1");
    ns.ip(&["link", "set", "a1", "down"]);
    ns.ip(&["link", "set", "a1", "mtu", "1280"]);
    // A device symlink alone does not make a veth physical.
    let sysfs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(sysfs.path().join("class/net/a0")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", sysfs.path().join("class/net/a0/device")).unwrap();
    let sysfs = sysfs.path().to_path_buf();
    let links = ns.block_on(Duration::from_secs(20), || async move {
        Netlink::connect().unwrap().links(&sysfs).await.unwrap()
    });
    let mut names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert!(
        links.windows(2).all(|w| w[0].index < w[1].index),
        "sorted by index"
    );
    names.sort();
    assert_eq!(names, ["a0", "a1", "lo"]);
    for l in &links {
        let j = &ns.ip_json(&["link", "show", "dev", &l.name])[0];
        assert_eq!(u64::from(l.index), j["ifindex"].as_u64().unwrap());
        assert_eq!(u64::from(l.mtu), j["mtu"].as_u64().unwrap());
        assert_eq!(
            l.up,
            j["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{}",
            l.name
        );
        assert!(!l.physical, "{} is not physical", l.name);
        if l.name != "lo" {
            assert_eq!(l.mac.unwrap().to_string(), j["address"].as_str().unwrap());
            assert_eq!(l.kind.as_deref(), Some("veth"));
        }
    }
    let a1 = links.iter().find(|l| l.name == "a1").unwrap();
    assert_eq!((a1.up, a1.mtu), (false, 1280));
    let plan = NetworkPlan::from_config(&Network::default(), &links).unwrap();
    assert!(
        plan.links.is_empty(),
        "no physical links, nothing to DHCP on"
    );
}
