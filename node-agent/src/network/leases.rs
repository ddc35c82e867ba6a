//! What the DHCP leases mean for the rest of the node: the resolv.conf it
//! serves, the host name it is offered, and when the API's certificate
//! must be looked at again. Pure: [`Leases`] takes lease events and the
//! plan's static settings and answers with [`Effect`]s, which the kernel
//! backend carries out in order.
//!
//! By the time an event arrives the DHCP runner has already put the lease
//! on the link (or taken it off), so nothing here touches addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use caisson_net::dhcp::{Lease, LeaseEnd, LeaseEvent};
use caisson_net::link::LinkId;

use super::{Learned, LearnedHostname};

/// Something the backend must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A console line (after `network: `).
    Info(String),
    Warn(String),
    /// Replace /etc/resolv.conf with this text.
    ResolvConf(String),
    /// Tell the agent: the host name offered, or addresses, changed.
    Publish(Learned),
}

/// What the node's plan says about name resolution, besides the leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticResolver {
    /// The config's `network.nameservers`, or those of `ip=`.
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    /// From `ip=` (the config's host name is the agent's business).
    pub hostname: Option<String>,
}

/// The leases in force, by link, and what was last made of them.
#[derive(Debug, Default)]
pub struct Leases {
    bound: BTreeMap<LinkId, Lease>,
    resolver: StaticResolver,
    /// The resolv.conf text last asked for; None: never written.
    resolv_conf: Option<String>,
    learned: Learned,
}

/// resolv.conf honours three nameservers (MAXNS) and six search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCH: usize = 6;
/// HOST_NAME_MAX.
const MAX_HOSTNAME: usize = 64;

impl Leases {
    pub fn learned(&self) -> &Learned {
        &self.learned
    }

    /// A lease event from `link`'s DHCP client.
    pub fn on_event(&mut self, link: &LinkId, event: &LeaseEvent) -> Vec<Effect> {
        let (line, addresses_changed) = match event {
            LeaseEvent::Bound(lease) => {
                self.bound.insert(link.clone(), lease.clone());
                (Effect::Info(bound_line(link, lease)), true)
            }
            LeaseEvent::Renewed(lease) => {
                self.bound.insert(link.clone(), lease.clone());
                let line = format!(
                    "{link}: DHCP lease {} renewed ({})",
                    lease.network(),
                    lifetime(lease.lease_time)
                );
                (Effect::Info(line), false)
            }
            LeaseEvent::Expired(lease, why) => {
                self.bound.remove(link);
                let why = match why {
                    LeaseEnd::TimedOut => "no server renewed it in time",
                    LeaseEnd::Nak => "the server refused to renew it (DHCPNAK)",
                    LeaseEnd::Superseded => "a server answered with a different binding",
                };
                let line = format!(
                    "{link}: DHCP lease {} ended: {why}; its address and routes are removed",
                    lease.network()
                );
                (Effect::Warn(line), true)
            }
        };
        let mut effects = vec![line];
        effects.extend(self.settle(addresses_changed));
        effects
    }

    /// `link`'s client is gone (stopped, or it failed): its lease no longer
    /// counts.
    pub fn forget(&mut self, link: &LinkId) -> Vec<Effect> {
        let had = self.bound.remove(link).is_some();
        self.settle(had)
    }

    /// A plan was applied: its static resolver settings, and addresses may
    /// have changed.
    pub fn set_static(&mut self, resolver: StaticResolver) -> Vec<Effect> {
        self.resolver = resolver;
        self.settle(true)
    }

    /// The config's nameservers first (the operator's choice), then each
    /// lease's in link order; search domains likewise, a lease's domain
    /// name (option 15) standing in for a missing search list (option 119).
    pub fn resolver(&self) -> (Vec<IpAddr>, Vec<String>) {
        let mut nameservers: Vec<IpAddr> = self.resolver.nameservers.clone();
        let mut search: Vec<String> = self.resolver.search.clone();
        for lease in self.bound.values() {
            nameservers.extend(lease.dns.iter().map(|ip| IpAddr::V4(*ip)));
            if lease.search.is_empty() {
                search.extend(lease.domain.iter().cloned());
            } else {
                search.extend(lease.search.iter().cloned());
            }
        }
        (
            first_distinct(nameservers, MAX_NAMESERVERS),
            first_distinct(search, MAX_SEARCH),
        )
    }

    /// The first lease (in link order) that offers a usable host name,
    /// else `ip=`'s.
    fn hostname(&self) -> Option<LearnedHostname> {
        let from_lease = self.bound.iter().find_map(|(link, lease)| {
            let name = usable_hostname(lease.hostname.as_deref()?)?;
            Some(LearnedHostname {
                name,
                from: format!("the DHCP lease on {link}"),
            })
        });
        from_lease.or_else(|| {
            let name = usable_hostname(self.resolver.hostname.as_deref()?)?;
            Some(LearnedHostname {
                name,
                from: "the ip= kernel argument".into(),
            })
        })
    }

    fn settle(&mut self, addresses_changed: bool) -> Vec<Effect> {
        let mut effects = Vec::new();
        let (nameservers, search) = self.resolver();
        let text = caisson_net::render::resolv_conf(&nameservers, &search);
        if self.resolv_conf.as_ref() != Some(&text) {
            self.resolv_conf = Some(text.clone());
            effects.push(Effect::Info(resolv_line(&nameservers, &search)));
            effects.push(Effect::ResolvConf(text));
        }
        let learned = Learned {
            hostname: self.hostname(),
            generation: self.learned.generation + u64::from(addresses_changed),
        };
        if learned != self.learned {
            self.learned = learned.clone();
            effects.push(Effect::Publish(learned));
        }
        effects
    }
}

fn first_distinct<T: PartialEq>(items: Vec<T>, max: usize) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        if out.len() < max && !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn lifetime(lease_time: Option<Duration>) -> String {
    match lease_time {
        Some(t) => format!("lease {} s", t.as_secs()),
        None => "infinite lease".into(),
    }
}

/// `eth0: DHCP lease 10.0.2.15/24 from 10.0.2.2 (router 10.0.2.2, DNS 10.0.2.3, lease 86400 s)`
fn bound_line(link: &LinkId, lease: &Lease) -> String {
    let mut details = Vec::new();
    match lease.routers.first() {
        Some(router) => details.push(format!("router {router}")),
        None => details.push("no router".into()),
    }
    if !lease.dns.is_empty() {
        let dns: Vec<String> = lease.dns.iter().map(ToString::to_string).collect();
        details.push(format!("DNS {}", dns.join(" ")));
    }
    if let Some(domain) = &lease.domain {
        details.push(format!("domain {domain}"));
    }
    match lease.hostname.as_deref() {
        Some(h) if usable_hostname(h).is_some() => details.push(format!("host name {h}")),
        Some(h) => details.push(format!("host name {h:?} ignored: not a valid host name")),
        None => {}
    }
    if let Some(mtu) = lease.mtu {
        details.push(format!("MTU {mtu}"));
    }
    details.push(lifetime(lease.lease_time));
    format!(
        "{link}: DHCP lease {} from {} ({})",
        lease.network(),
        lease.server,
        details.join(", ")
    )
}

/// `resolv.conf: nameservers 10.0.2.3; search lab.example`
fn resolv_line(nameservers: &[IpAddr], search: &[String]) -> String {
    let mut line = if nameservers.is_empty() {
        "resolv.conf: no nameservers".to_string()
    } else {
        let ns: Vec<String> = nameservers.iter().map(ToString::to_string).collect();
        format!("resolv.conf: nameservers {}", ns.join(" "))
    };
    if !search.is_empty() {
        line.push_str(&format!("; search {}", search.join(" ")));
    }
    line
}

/// A name a server offers, as the node may use it: the whole name if it is
/// a valid one that fits, else its first label if that is valid.
pub fn usable_hostname(name: &str) -> Option<String> {
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let name = name.trim_end_matches('.');
    if name.len() <= MAX_HOSTNAME && name.split('.').all(valid_label) {
        return Some(name.to_string());
    }
    let first = name.split('.').next()?;
    valid_label(first).then(|| first.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Instant;

    fn eth(index: u32) -> LinkId {
        LinkId {
            index,
            name: format!("eth{}", index - 2),
        }
    }

    /// What QEMU's user networking (slirp) hands out.
    fn slirp() -> Lease {
        Lease {
            interface: "eth0".into(),
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            routers: vec![Ipv4Addr::new(10, 0, 2, 2)],
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            domain: None,
            search: vec![],
            hostname: None,
            mtu: None,
            server: Ipv4Addr::new(10, 0, 2, 2),
            lease_time: Some(Duration::from_secs(86400)),
            renew_after: Duration::from_secs(43200),
            rebind_after: Duration::from_secs(75600),
            acquired: Instant::now(),
        }
    }

    fn resolv_text(effects: &[Effect]) -> Option<&str> {
        effects.iter().find_map(|e| match e {
            Effect::ResolvConf(t) => Some(t.as_str()),
            _ => None,
        })
    }

    fn published(effects: &[Effect]) -> Option<&Learned> {
        effects.iter().find_map(|e| match e {
            Effect::Publish(l) => Some(l),
            _ => None,
        })
    }

    #[test]
    fn the_first_plan_writes_resolv_conf_even_when_empty() {
        let mut leases = Leases::default();
        let effects = leases.set_static(StaticResolver::default());
        assert_eq!(
            effects[0],
            Effect::Info("resolv.conf: no nameservers".into())
        );
        assert!(resolv_text(&effects).is_some());
        assert_eq!(published(&effects).unwrap().generation, 1);
        let again = leases.set_static(StaticResolver::default());
        assert_eq!(
            again,
            [Effect::Publish(Learned {
                hostname: None,
                generation: 2
            })],
            "an apply may have moved addresses: the agent looks again; resolv.conf is unchanged"
        );
    }

    #[test]
    fn a_bound_lease_is_logged_and_adds_its_dns_after_the_configs() {
        let mut leases = Leases::default();
        leases.set_static(StaticResolver {
            nameservers: vec!["192.0.2.53".parse().unwrap()],
            search: vec!["corp.example".into()],
            hostname: None,
        });
        let effects = leases.on_event(&eth(2), &LeaseEvent::Bound(slirp()));
        assert_eq!(
            effects[0],
            Effect::Info(
                "eth0: DHCP lease 10.0.2.15/24 from 10.0.2.2 (router 10.0.2.2, DNS 10.0.2.3, lease 86400 s)"
                    .into()
            )
        );
        assert_eq!(
            effects[1],
            Effect::Info(
                "resolv.conf: nameservers 192.0.2.53 10.0.2.3; search corp.example".into()
            )
        );
        assert_eq!(
            resolv_text(&effects)
                .unwrap()
                .lines()
                .skip(1)
                .collect::<Vec<_>>(),
            [
                "nameserver 192.0.2.53",
                "nameserver 10.0.2.3",
                "search corp.example"
            ]
        );
        assert_eq!(
            published(&effects).unwrap().generation,
            2,
            "a new address: the certificate is looked at again"
        );
    }

    #[test]
    fn a_renewal_with_the_same_options_only_logs() {
        let mut leases = Leases::default();
        leases.set_static(StaticResolver::default());
        leases.on_event(&eth(2), &LeaseEvent::Bound(slirp()));
        let effects = leases.on_event(&eth(2), &LeaseEvent::Renewed(slirp()));
        assert_eq!(
            effects,
            [Effect::Info(
                "eth0: DHCP lease 10.0.2.15/24 renewed (lease 86400 s)".into()
            )]
        );
        let mut changed = slirp();
        changed.dns = vec![Ipv4Addr::new(10, 0, 2, 4)];
        let effects = leases.on_event(&eth(2), &LeaseEvent::Renewed(changed));
        assert_eq!(
            resolv_text(&effects).unwrap().lines().nth(1),
            Some("nameserver 10.0.2.4"),
            "a renewal may bring new DNS servers"
        );
        assert!(
            published(&effects).is_none(),
            "same binding: no new address"
        );
    }

    #[test]
    fn an_expired_lease_warns_and_takes_its_dns_and_host_name_away() {
        let mut leases = Leases::default();
        leases.set_static(StaticResolver::default());
        let mut lease = slirp();
        lease.hostname = Some("node-7".into());
        let effects = leases.on_event(&eth(2), &LeaseEvent::Bound(lease.clone()));
        assert_eq!(
            published(&effects).unwrap().hostname,
            Some(LearnedHostname {
                name: "node-7".into(),
                from: "the DHCP lease on eth0".into()
            })
        );
        let effects = leases.on_event(&eth(2), &LeaseEvent::Expired(lease, LeaseEnd::Nak));
        assert_eq!(
            effects[0],
            Effect::Warn(
                "eth0: DHCP lease 10.0.2.15/24 ended: the server refused to renew it (DHCPNAK); its address and routes are removed"
                    .into()
            )
        );
        assert_eq!(resolv_text(&effects).unwrap().lines().count(), 1);
        assert_eq!(
            published(&effects).unwrap(),
            &Learned {
                hostname: None,
                generation: 3
            }
        );
    }

    #[test]
    fn the_first_link_with_a_host_name_wins_and_ip_is_the_fallback() {
        let mut leases = Leases::default();
        leases.set_static(StaticResolver {
            hostname: Some("from-ip".into()),
            ..StaticResolver::default()
        });
        assert_eq!(
            leases.learned().hostname.as_ref().unwrap().from,
            "the ip= kernel argument"
        );
        let mut on_eth1 = slirp();
        on_eth1.hostname = Some("second".into());
        leases.on_event(&eth(3), &LeaseEvent::Bound(on_eth1));
        let mut on_eth0 = slirp();
        on_eth0.hostname = Some("first.lab.example".into());
        leases.on_event(&eth(2), &LeaseEvent::Bound(on_eth0));
        assert_eq!(
            leases.learned().hostname.as_ref().unwrap().name,
            "first.lab.example"
        );
        let effects = leases.forget(&eth(2));
        assert_eq!(
            published(&effects).unwrap().hostname.as_ref().unwrap().name,
            "second",
            "a stopped client's lease no longer counts"
        );
    }

    #[test]
    fn a_domain_name_stands_in_for_a_missing_search_list_and_limits_hold() {
        let mut leases = Leases::default();
        let mut lease = slirp();
        lease.domain = Some("lab.example".into());
        lease.dns = (1..=5).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        leases.on_event(&eth(2), &LeaseEvent::Bound(lease.clone()));
        let (ns, search) = leases.resolver();
        assert_eq!(ns.len(), 3);
        assert_eq!(search, ["lab.example"]);
        lease.search = vec!["a.example".into(), "b.example".into()];
        leases.on_event(&eth(2), &LeaseEvent::Renewed(lease));
        assert_eq!(leases.resolver().1, ["a.example", "b.example"]);
    }

    #[test]
    fn offered_host_names_are_checked() {
        assert_eq!(usable_hostname("node-7").as_deref(), Some("node-7"));
        assert_eq!(
            usable_hostname("node-7.lab.example.").as_deref(),
            Some("node-7.lab.example")
        );
        assert_eq!(
            usable_hostname(&format!("node-7.{}", "a".repeat(60))).as_deref(),
            Some("node-7"),
            "too long for the kernel: the first label"
        );
        for bad in ["", "-x", "a b", "x_y", "ünï", "."] {
            assert_eq!(usable_hostname(bad), None, "{bad:?}");
        }
        let mut lease = slirp();
        lease.hostname = Some("bad name".into());
        assert!(bound_line(&eth(2), &lease)
            .contains("host name \"bad name\" ignored: not a valid host name"));
    }
}
