//! A DHCPv4 lease, read from the server's ACK. Pure.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, OptionCode};
use ipnet::Ipv4Net;

use crate::ipcmdline::netmask_to_prefix;

/// What the server gave us, with the times it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// Option 3; the first is the default gateway.
    pub routers: Vec<Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain: Option<String>,
    /// Option 119, without trailing dots.
    pub search: Vec<String>,
    /// Option 12.
    pub hostname: Option<String>,
    /// Option 26.
    pub mtu: Option<u16>,
    /// Option 54: where renewals go.
    pub server: Ipv4Addr,
    /// Option 51; None: infinite.
    pub lease_time: Option<Duration>,
    /// T1 (option 58, else half the lease).
    pub renew_after: Duration,
    /// T2 (option 59, else 7/8 of the lease).
    pub rebind_after: Duration,
    /// When the ACK arrived; every lease time counts from here.
    pub acquired: Instant,
}

impl Lease {
    pub fn network(&self) -> Ipv4Net {
        // prefix_len <= 32 by construction; /32 is a safe fallback.
        Ipv4Net::new(self.address, self.prefix_len).unwrap_or_else(|_| Ipv4Net::from(self.address))
    }

    /// None for an infinite lease.
    pub fn renew_at(&self) -> Option<Instant> {
        self.lease_time
            .and_then(|_| self.acquired.checked_add(self.renew_after))
    }

    pub fn rebind_at(&self) -> Option<Instant> {
        self.lease_time
            .and_then(|_| self.acquired.checked_add(self.rebind_after))
    }

    pub fn expires_at(&self) -> Option<Instant> {
        self.lease_time.and_then(|t| self.acquired.checked_add(t))
    }

    /// The same binding: address, prefix and routers. A renewal that
    /// changes these is a new lease, not a renewal.
    pub fn same_binding(&self, other: &Lease) -> bool {
        self.address == other.address
            && self.prefix_len == other.prefix_len
            && self.routers == other.routers
    }
}

/// What happened to a link's lease. The runner has already changed the
/// link when the agent receives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A new lease: address and routes are on the link.
    Bound(Lease),
    /// The same binding, extended (options such as DNS may have changed).
    Renewed(Lease),
    /// The lease is gone: address and routes were removed.
    Expired(Lease, LeaseEnd),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// No server extended it before it ran out.
    TimedOut,
    /// The server refused to extend it (DHCPNAK).
    Nak,
    /// A server answered the renewal with a different binding.
    Superseded,
}

const INFINITE: u32 = u32::MAX;

pub(crate) fn lease_from_ack(
    interface: &str,
    msg: &Message,
    now: Instant,
) -> Result<Lease, &'static str> {
    let address = msg.yiaddr();
    if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
        return Err("the ACK offers no usable address (yiaddr)");
    }
    let server = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => *ip,
        _ if !msg.siaddr().is_unspecified() => msg.siaddr(),
        _ => return Err("the ACK names no server (option 54)"),
    };
    let prefix_len = match msg.opts().get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => {
            netmask_to_prefix(*mask).ok_or("the subnet mask (option 1) is not contiguous")?
        }
        _ => classful_prefix(address),
    };
    let opts = msg.opts();
    let routers = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(v)) => v
            .iter()
            .copied()
            .filter(|ip| !ip.is_unspecified())
            .collect(),
        _ => Vec::new(),
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(v)) => v.clone(),
        _ => Vec::new(),
    };
    let domain = match opts.get(OptionCode::DomainName) {
        Some(DhcpOption::DomainName(d)) => clean_name(d),
        _ => None,
    };
    let search = match opts.get(OptionCode::DomainSearch) {
        Some(DhcpOption::DomainSearch(names)) => names
            .iter()
            .filter_map(|n| clean_name(&n.to_utf8()))
            .collect(),
        _ => Vec::new(),
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => clean_name(h),
        _ => None,
    };
    let mtu = match opts.get(OptionCode::InterfaceMtu) {
        Some(DhcpOption::InterfaceMtu(m)) if *m >= 68 => Some(*m),
        _ => None,
    };
    let secs = |code| match opts.get(code) {
        Some(
            DhcpOption::AddressLeaseTime(s) | DhcpOption::Renewal(s) | DhcpOption::Rebinding(s),
        ) => Some(*s),
        _ => None,
    };
    let lease_secs = secs(OptionCode::AddressLeaseTime).unwrap_or(INFINITE);
    let (lease_time, renew_after, rebind_after) = if lease_secs == INFINITE {
        (None, Duration::MAX, Duration::MAX)
    } else {
        let (t1, t2) = timers(
            lease_secs,
            secs(OptionCode::Renewal),
            secs(OptionCode::Rebinding),
        );
        (Some(Duration::from_secs(lease_secs.into())), t1, t2)
    };
    Ok(Lease {
        interface: interface.to_string(),
        address,
        prefix_len,
        routers,
        dns,
        domain,
        search,
        hostname,
        mtu,
        server,
        lease_time,
        renew_after,
        rebind_after,
        acquired: now,
    })
}

/// T1 and T2 as the server gave them, or RFC 2131's 0.5 and 0.875 of the
/// lease when they are missing or out of order.
fn timers(lease: u32, t1: Option<u32>, t2: Option<u32>) -> (Duration, Duration) {
    let lease_ms = u64::from(lease) * 1000;
    let t1 = t1.map_or(lease_ms / 2, |s| u64::from(s) * 1000);
    let t2 = t2.map_or(lease_ms * 7 / 8, |s| u64::from(s) * 1000);
    let (t1, t2) = if t1 <= t2 && t2 <= lease_ms {
        (t1, t2)
    } else {
        (lease_ms / 2, lease_ms * 7 / 8)
    };
    (Duration::from_millis(t1), Duration::from_millis(t2))
}

fn clean_name(s: &str) -> Option<String> {
    let s = s.trim().trim_end_matches('.').trim_end_matches('\0');
    (!s.is_empty()).then(|| s.to_string())
}

/// What a server that sends no subnet mask means (RFC 2132 asks for one).
fn classful_prefix(ip: Ipv4Addr) -> u8 {
    match ip.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::MessageType;
    use dhcproto::Name;
    use std::str::FromStr;

    fn ack() -> Message {
        let mut m = Message::default();
        m.set_yiaddr(Ipv4Addr::new(198, 51, 100, 120));
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(MessageType::Ack));
        o.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(198, 51, 100, 1)));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![Ipv4Addr::new(198, 51, 100, 1)]));
        o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            198, 51, 100, 53,
        )]));
        o.insert(DhcpOption::DomainName("lab.example".into()));
        o.insert(DhcpOption::DomainSearch(vec![
            Name::from_str("a.example.").unwrap(),
            Name::from_str("b.example").unwrap(),
        ]));
        o.insert(DhcpOption::Hostname("node-7".into()));
        o.insert(DhcpOption::InterfaceMtu(1400));
        o.insert(DhcpOption::AddressLeaseTime(3600));
        m
    }

    #[test]
    fn an_ack_becomes_a_lease_with_every_option_we_use() {
        let now = Instant::now();
        let l = lease_from_ack("eth0", &ack(), now).unwrap();
        assert_eq!(l.network().to_string(), "198.51.100.120/24");
        assert_eq!(l.routers, [Ipv4Addr::new(198, 51, 100, 1)]);
        assert_eq!(l.dns, [Ipv4Addr::new(198, 51, 100, 53)]);
        assert_eq!(l.domain.as_deref(), Some("lab.example"));
        assert_eq!(l.search, ["a.example", "b.example"]);
        assert_eq!((l.hostname.as_deref(), l.mtu), (Some("node-7"), Some(1400)));
        assert_eq!(l.server, Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(l.lease_time, Some(Duration::from_secs(3600)));
        assert_eq!(
            (l.renew_after, l.rebind_after),
            (Duration::from_secs(1800), Duration::from_secs(3150))
        );
        assert_eq!(l.expires_at(), Some(now + Duration::from_secs(3600)));
    }

    #[test]
    fn server_timers_are_used_when_sane() {
        let mut m = ack();
        m.opts_mut().insert(DhcpOption::Renewal(100));
        m.opts_mut().insert(DhcpOption::Rebinding(200));
        let l = lease_from_ack("eth0", &m, Instant::now()).unwrap();
        assert_eq!(
            (l.renew_after, l.rebind_after),
            (Duration::from_secs(100), Duration::from_secs(200))
        );
        m.opts_mut().insert(DhcpOption::Rebinding(7200));
        let l = lease_from_ack("eth0", &m, Instant::now()).unwrap();
        assert_eq!(
            l.rebind_after,
            Duration::from_secs(3150),
            "T2 beyond the lease falls back to 7/8"
        );
    }

    #[test]
    fn an_infinite_lease_never_renews() {
        let mut m = ack();
        m.opts_mut().insert(DhcpOption::AddressLeaseTime(u32::MAX));
        let l = lease_from_ack("eth0", &m, Instant::now()).unwrap();
        assert_eq!(
            (l.lease_time, l.renew_at(), l.expires_at()),
            (None, None, None)
        );
    }

    #[test]
    fn unusable_acks_are_refused_with_the_reason() {
        let mut m = ack();
        m.set_yiaddr(Ipv4Addr::UNSPECIFIED);
        assert!(lease_from_ack("eth0", &m, Instant::now())
            .unwrap_err()
            .contains("yiaddr"));
        let mut m = ack();
        m.opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)));
        assert!(lease_from_ack("eth0", &m, Instant::now())
            .unwrap_err()
            .contains("not contiguous"));
        let mut m = ack();
        m.opts_mut().remove(OptionCode::ServerIdentifier);
        assert!(lease_from_ack("eth0", &m, Instant::now())
            .unwrap_err()
            .contains("option 54"));
        let mut m = ack();
        m.opts_mut().remove(OptionCode::SubnetMask);
        assert_eq!(
            lease_from_ack("eth0", &m, Instant::now())
                .unwrap()
                .prefix_len,
            24,
            "classful fallback"
        );
    }
}
