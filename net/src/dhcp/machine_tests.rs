use super::*;
use crate::dhcp::wire::decode_reply;
use dhcproto::Encodable;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const OFFERED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 120);

fn machine(seed: u64, t0: Instant) -> Machine {
    let cfg = ClientConfig {
        interface: "eth0".into(),
        mac: MAC,
        hostname: Some("edge-1".into()),
        timing: Timing::default(),
    };
    Machine::new(cfg, seed, t0)
}

fn sent(out: &[Output]) -> Vec<&Transmit> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(t) => Some(t),
            Output::Event(_) => None,
        })
        .collect()
}

fn events(out: &[Output]) -> Vec<&LeaseEvent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e),
            Output::Send(_) => None,
        })
        .collect()
}

fn only_send(out: &[Output]) -> &Transmit {
    let s = sent(out);
    assert_eq!(s.len(), 1, "{out:?}");
    s[0]
}

fn kind(t: &Transmit) -> MessageType {
    t.message.opts().msg_type().unwrap()
}

fn reply(kind: MessageType, xid: u32, address: Ipv4Addr, lease_secs: u32) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_xid(xid)
        .set_chaddr(&MAC.0)
        .set_yiaddr(address);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(SERVER));
    if kind != MessageType::Nak {
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![SERVER]));
        o.insert(DhcpOption::AddressLeaseTime(lease_secs));
    }
    m
}

/// DISCOVER, OFFER, REQUEST, ACK at t0; returns the machine, Bound.
fn bound(t0: Instant, lease_secs: u32) -> Machine {
    let mut m = machine(7, t0);
    let xid = only_send(&m.on_timeout(t0)).message.xid();
    m.on_message(t0, &reply(MessageType::Offer, xid, OFFERED, lease_secs));
    let out = m.on_message(t0, &reply(MessageType::Ack, xid, OFFERED, lease_secs));
    assert!(
        matches!(events(&out)[..], [LeaseEvent::Bound(_)]),
        "{out:?}"
    );
    m
}

#[test]
fn discover_offer_request_ack_binds_a_lease() {
    let t0 = Instant::now();
    let mut m = machine(1, t0);
    assert_eq!((m.phase(), m.deadline()), (Phase::Init, Some(t0)));

    let out = m.on_timeout(t0);
    let d = only_send(&out);
    assert_eq!(
        (kind(d), d.to),
        (MessageType::Discover, Destination::Broadcast)
    );
    assert!(
        d.message.flags().broadcast(),
        "no address yet: replies must be broadcast"
    );
    assert_eq!(d.message.chaddr(), &MAC.0[..]);
    let o = d.message.opts();
    assert_eq!(
        o.get(OptionCode::ClientIdentifier),
        Some(&DhcpOption::ClientIdentifier(vec![
            1, 0x52, 0x54, 0, 0x12, 0x34, 0x56
        ]))
    );
    assert_eq!(
        o.get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("edge-1".into()))
    );
    let Some(DhcpOption::ParameterRequestList(params)) = o.get(OptionCode::ParameterRequestList)
    else {
        panic!()
    };
    for code in [
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::DomainSearch,
        OptionCode::InterfaceMtu,
    ] {
        assert!(params.contains(&code), "{code:?} is requested");
    }
    let xid = d.message.xid();
    assert_eq!(m.phase(), Phase::Selecting);

    let out = m.on_message(t0, &reply(MessageType::Offer, xid, OFFERED, 600));
    let r = only_send(&out);
    assert_eq!(
        (kind(r), r.to, r.message.xid()),
        (MessageType::Request, Destination::Broadcast, xid)
    );
    assert!(r.message.flags().broadcast());
    assert_eq!(
        r.message.opts().get(OptionCode::RequestedIpAddress),
        Some(&DhcpOption::RequestedIpAddress(OFFERED))
    );
    assert_eq!(
        r.message.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(m.phase(), Phase::Requesting);

    let out = m.on_message(t0, &reply(MessageType::Ack, xid, OFFERED, 600));
    let [LeaseEvent::Bound(lease)] = &events(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (lease.address, lease.prefix_len, lease.server),
        (OFFERED, 24, SERVER)
    );
    assert_eq!(m.phase(), Phase::Bound);
    assert_eq!(
        m.deadline(),
        Some(t0 + Duration::from_secs(300)),
        "next: renew at T1"
    );
    assert!(
        m.on_timeout(t0 + Duration::from_secs(299)).is_empty(),
        "nothing to do before T1"
    );
}

#[test]
fn discover_is_retransmitted_with_exponential_backoff_and_jitter() {
    let t0 = Instant::now();
    let delays = |seed| {
        let mut m = machine(seed, t0);
        let xid = only_send(&m.on_timeout(t0)).message.xid();
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            let next = m.deadline().unwrap();
            delays.push(next - now);
            now = next;
            let out = m.on_timeout(now);
            assert_eq!(
                only_send(&out).message.xid(),
                xid,
                "retransmissions keep the xid"
            );
            assert_eq!(kind(only_send(&out)), MessageType::Discover);
        }
        delays
    };
    let a = delays(1);
    for (d, nominal) in a.iter().zip([4u64, 8, 16, 32, 64, 64, 64]) {
        let (lo, hi) = (
            Duration::from_secs(nominal - 1),
            Duration::from_secs(nominal + 1),
        );
        assert!(*d >= lo && *d <= hi, "{d:?} is not {nominal}s ± 1s: {a:?}");
    }
    assert_ne!(a, delays(2), "different seeds, different jitter");
}

#[test]
fn t1_renews_by_unicast_to_the_server_and_an_ack_extends_the_lease() {
    let t0 = Instant::now();
    let mut m = bound(t0, 600);
    let t1 = t0 + Duration::from_secs(300);
    let out = m.on_timeout(t1);
    let r = only_send(&out);
    assert_eq!(
        (kind(r), r.to),
        (MessageType::Request, Destination::Unicast(SERVER))
    );
    assert_eq!(r.message.ciaddr(), OFFERED);
    assert!(
        !r.message.flags().broadcast(),
        "we have an address: the server may unicast"
    );
    assert!(
        r.message.opts().get(OptionCode::ServerIdentifier).is_none(),
        "RFC 2131: no server id when renewing"
    );
    assert!(r
        .message
        .opts()
        .get(OptionCode::RequestedIpAddress)
        .is_none());
    assert_eq!(m.phase(), Phase::Renewing);

    let out = m.on_message(t1, &reply(MessageType::Ack, r.message.xid(), OFFERED, 600));
    let [LeaseEvent::Renewed(lease)] = &events(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!(lease.acquired, t1);
    assert_eq!(m.deadline(), Some(t1 + Duration::from_secs(300)));
}

#[test]
fn unanswered_renewals_rebind_by_broadcast_at_t2_then_expire() {
    let t0 = Instant::now();
    let mut m = bound(t0, 1000); // T1 500 s, T2 875 s
    let at = |s| t0 + Duration::from_secs(s);
    assert_eq!(
        only_send(&m.on_timeout(at(500))).to,
        Destination::Unicast(SERVER)
    );
    // Half of the 375 s left to T2, no less than 60 s.
    assert_eq!(m.deadline(), Some(at(500) + Duration::from_millis(187_500)));
    assert_eq!(
        only_send(&m.on_timeout(m.deadline().unwrap())).to,
        Destination::Unicast(SERVER)
    );

    let out = m.on_timeout(at(875));
    let r = only_send(&out);
    assert_eq!(
        (m.phase(), r.to, r.message.ciaddr()),
        (Phase::Rebinding, Destination::Broadcast, OFFERED)
    );
    assert_eq!(
        m.deadline(),
        Some(at(875 + 62) + Duration::from_millis(500)),
        "half of the 125 s left"
    );
    m.on_timeout(m.deadline().unwrap());
    assert_eq!(
        m.deadline(),
        Some(at(997) + Duration::from_millis(500)),
        "no sooner than the 60 s minimum"
    );
    assert_eq!(
        only_send(&m.on_timeout(m.deadline().unwrap())).to,
        Destination::Broadcast
    );
    assert_eq!(
        m.deadline(),
        Some(at(1000)),
        "the next retry would pass expiry: expiry comes first"
    );

    let out = m.on_timeout(at(1000));
    let [LeaseEvent::Expired(lease, LeaseEnd::TimedOut)] = &events(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!(lease.address, OFFERED);
    assert_eq!(
        kind(only_send(&out)),
        MessageType::Discover,
        "start over at once"
    );
    assert_eq!((m.phase(), m.lease()), (Phase::Selecting, None));
}

#[test]
fn a_clock_that_jumps_past_expiry_expires_the_lease_at_once() {
    let t0 = Instant::now();
    let mut m = bound(t0, 600);
    let out = m.on_timeout(t0 + Duration::from_secs(3600));
    assert!(
        matches!(
            events(&out)[..],
            [LeaseEvent::Expired(_, LeaseEnd::TimedOut)]
        ),
        "{out:?}"
    );
}

#[test]
fn a_nak_while_renewing_drops_the_lease_and_starts_over() {
    let t0 = Instant::now();
    let mut m = bound(t0, 600);
    let t1 = t0 + Duration::from_secs(300);
    let xid = only_send(&m.on_timeout(t1)).message.xid();
    let out = m.on_message(t1, &reply(MessageType::Nak, xid, Ipv4Addr::UNSPECIFIED, 0));
    assert!(
        matches!(events(&out)[..], [LeaseEvent::Expired(_, LeaseEnd::Nak)]),
        "{out:?}"
    );
    assert_eq!(m.phase(), Phase::Init);
    let restart = m.deadline().unwrap();
    assert!(
        restart <= t1 + Duration::from_secs(2),
        "a short pause, not a lease's worth"
    );
    let out = m.on_timeout(restart);
    assert_eq!(kind(only_send(&out)), MessageType::Discover);
    assert_ne!(
        only_send(&out).message.xid(),
        xid,
        "a new exchange, a new xid"
    );
}

#[test]
fn a_nak_or_silence_while_requesting_goes_back_to_discover() {
    let t0 = Instant::now();
    let mut m = machine(3, t0);
    let xid = only_send(&m.on_timeout(t0)).message.xid();
    m.on_message(t0, &reply(MessageType::Offer, xid, OFFERED, 600));
    m.on_message(t0, &reply(MessageType::Nak, xid, Ipv4Addr::UNSPECIFIED, 0));
    assert_eq!(m.phase(), Phase::Init);

    let xid = only_send(&m.on_timeout(m.deadline().unwrap()))
        .message
        .xid();
    m.on_message(t0, &reply(MessageType::Offer, xid, OFFERED, 600));
    let mut requests = 1;
    while m.phase() == Phase::Requesting {
        let out = m.on_timeout(m.deadline().unwrap());
        if kind(only_send(&out)) == MessageType::Request {
            requests += 1;
        }
    }
    assert_eq!(requests, Timing::default().request_attempts);
    assert_eq!(m.phase(), Phase::Selecting);
}

#[test]
fn a_renewal_with_a_different_address_is_a_new_lease() {
    let t0 = Instant::now();
    let mut m = bound(t0, 600);
    let t1 = t0 + Duration::from_secs(300);
    let xid = only_send(&m.on_timeout(t1)).message.xid();
    let out = m.on_message(
        t1,
        &reply(MessageType::Ack, xid, Ipv4Addr::new(198, 51, 100, 121), 600),
    );
    let evs = events(&out);
    assert!(
        matches!(
            evs[..],
            [
                LeaseEvent::Expired(_, LeaseEnd::Superseded),
                LeaseEvent::Bound(_)
            ]
        ),
        "{out:?}"
    );
}

#[test]
fn replies_not_meant_for_us_are_ignored() {
    let t0 = Instant::now();
    let mut m = machine(4, t0);
    let xid = only_send(&m.on_timeout(t0)).message.xid();
    let mut wrong_xid = reply(MessageType::Offer, xid ^ 1, OFFERED, 600);
    let mut wrong_mac = reply(MessageType::Offer, xid, OFFERED, 600);
    wrong_mac.set_chaddr(&[0x52, 0x54, 0, 0, 0, 1]);
    let mut request = reply(MessageType::Offer, xid, OFFERED, 600);
    request.set_opcode(Opcode::BootRequest);
    let ack_in_selecting = reply(MessageType::Ack, xid, OFFERED, 600);
    for msg in [&mut wrong_xid, &mut wrong_mac, &mut request] {
        assert!(m.on_message(t0, msg).is_empty());
    }
    assert!(m.on_message(t0, &ack_in_selecting).is_empty());
    assert_eq!(m.phase(), Phase::Selecting);

    m.on_message(t0, &reply(MessageType::Offer, xid, OFFERED, 600));
    let mut other_server = reply(MessageType::Ack, xid, OFFERED, 600);
    other_server
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(198, 51, 100, 2)));
    assert!(
        m.on_message(t0, &other_server).is_empty(),
        "an ACK from a server we did not choose"
    );
    assert_eq!(m.phase(), Phase::Requesting);
}

#[test]
fn hostile_packets_never_panic() {
    let t0 = Instant::now();
    let mut m = machine(5, t0);
    let xid = only_send(&m.on_timeout(t0)).message.xid();
    let good = reply(MessageType::Offer, xid, OFFERED, 600)
        .to_vec()
        .unwrap();
    // hlen 200 would make dhcproto's chaddr() slice out of bounds.
    let mut bad_hlen = good.clone();
    bad_hlen[2] = 200;
    if let Some(msg) = decode_reply(&bad_hlen) {
        assert!(m.on_message(t0, &msg).is_empty());
    }
    let mut rng = 0x1234_5678_9abc_def1u64;
    for i in 0..20_000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut bytes = good.clone();
        let flips = 1 + (rng % 8) as usize;
        for k in 0..flips {
            let pos = (rng.rotate_left(k as u32 * 8) as usize) % bytes.len();
            bytes[pos] = (rng >> (k % 8 * 8)) as u8;
        }
        bytes.truncate(bytes.len() - (i % 3) * (rng as usize % 40));
        if let Some(msg) = decode_reply(&bytes) {
            m.on_message(t0, &msg);
        }
    }
}
