//! The DHCP client against real servers on a veth pair between two
//! network namespaces: dnsmasq for the bind path, and a tiny in-test
//! server (tests/dhcp_server) for renewal, rebinding, expiry and NAK,
//! which need leases of seconds. Needs root, iproute2 and dnsmasq.

mod dhcp_server;
mod netns;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use caisson_net::dhcp::{self, Lease, LeaseEnd, LeaseEvent, Options, Timing};
use caisson_net::link::{Link, Netlink, Origin};
use dhcp_server::{Mode, TestServer, LEASED, SERVER};
use netns::{addresses, eventually, has_address, mtu, routes, veth, Netns};
use tokio::sync::mpsc::Receiver;

/// A client namespace and a server namespace, joined by c0 <-> s0, with
/// the server at 198.51.100.1/24.
fn lab(tag: &str) -> (Netns, Netns) {
    let client = Netns::new(&format!("{tag}-c"));
    let server = Netns::new(&format!("{tag}-s"));
    veth(&client, "c0", &server, "s0");
    server.ip(&["address", "add", "198.51.100.1/24", "dev", "s0"]);
    // The node runs with the kernel's default (0); see the dhcp module docs.
    client.sysctl("net.ipv4.conf.all.rp_filter", "0");
    client.sysctl("net.ipv4.conf.c0.rp_filter", "0");
    (client, server)
}

fn fast() -> Timing {
    Timing {
        initial_retransmit: Duration::from_millis(300),
        max_retransmit: Duration::from_secs(1),
        jitter: Duration::from_millis(50),
        request_attempts: 4,
        min_lease_retry: Duration::from_millis(200),
    }
}

async fn c0() -> (Netlink, Link) {
    let nl = Netlink::connect().unwrap();
    let sysfs = tempfile::tempdir().unwrap();
    let link = nl
        .links(sysfs.path())
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.name == "c0")
        .expect("c0");
    (nl, link)
}

async fn next(rx: &mut Receiver<LeaseEvent>, within: Duration) -> LeaseEvent {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no lease event within {within:?}"))
        .expect("the DHCP client stopped")
}

fn bound(event: LeaseEvent) -> Lease {
    match event {
        LeaseEvent::Bound(l) => l,
        other => panic!("expected Bound, got {other:?}"),
    }
}

fn dnsmasq_args(dir: &std::path::Path) -> Vec<String> {
    [
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=s0",
        "--bind-interfaces",
        "--user=root",
        "--dhcp-authoritative",
        "--dhcp-range=198.51.100.100,198.51.100.150,255.255.255.0,2m",
        "--dhcp-option=option:router,198.51.100.1",
        "--dhcp-option=option:dns-server,198.51.100.53",
        "--dhcp-option=option:domain-name,lab.example",
        "--dhcp-option=option:domain-search,a.example,b.example",
        "--dhcp-option=option:mtu,1400",
        "--log-dhcp",
        "--log-facility=-",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--dhcp-leasefile={}", dir.join("leases").display()),
        format!("--pid-file={}", dir.join("pid").display()),
    ])
    .collect()
}

#[test]
fn a_lease_from_dnsmasq_puts_address_route_and_mtu_on_the_link() {
    let (client, server) = lab("dnsmasq");
    let dir = tempfile::tempdir().unwrap();
    let which = std::process::Command::new("dnsmasq")
        .arg("--version")
        .output();
    assert!(
        which.is_ok_and(|o| o.status.success()),
        "this test needs dnsmasq (Debian package dnsmasq-base)"
    );
    let mut dnsmasq = server.spawn(
        "dnsmasq",
        &dnsmasq_args(dir.path()),
        &dir.path().join("dnsmasq.log"),
    );
    std::thread::sleep(Duration::from_millis(200));
    dnsmasq.assert_running();

    let lease = client.block_on(Duration::from_secs(40), || async {
        let (nl, link) = c0().await;
        let options = Options {
            hostname: Some("edge-1".into()),
            timing: fast(),
            ..Options::default()
        };
        let (_client, mut events) = dhcp::spawn(nl.clone(), link.clone(), options).unwrap();
        let lease = bound(next(&mut events, Duration::from_secs(30)).await);

        // The runner put the lease on the link before reporting it, tagged as DHCP's.
        let ours = nl.addresses(&link.id()).await.unwrap();
        let a = ours
            .iter()
            .find(|a| a.net == lease.network().into())
            .expect("the leased address is on c0");
        assert_eq!(a.origin, Some(Origin::Dhcp));
        assert!(
            a.valid_lifetime.is_some_and(|s| s <= 120),
            "the kernel holds the lease's lifetime: {a:?}"
        );
        lease
    });
    assert!(
        lease.address >= Ipv4Addr::new(198, 51, 100, 100)
            && lease.address <= Ipv4Addr::new(198, 51, 100, 150),
        "{lease:?}"
    );
    assert_eq!((lease.prefix_len, lease.server), (24, SERVER));
    assert_eq!(lease.routers, [SERVER]);
    assert_eq!(lease.dns, [Ipv4Addr::new(198, 51, 100, 53)]);
    assert_eq!(lease.domain.as_deref(), Some("lab.example"));
    assert_eq!(lease.search, ["a.example", "b.example"]);
    assert_eq!(lease.mtu, Some(1400));
    assert_eq!(lease.lease_time, Some(Duration::from_secs(120)));

    let net = lease.network().to_string();
    let (addr, lifetime) = addresses(&client, "c0")
        .into_iter()
        .find(|(a, _)| *a == net)
        .expect("ip shows the address");
    assert!(
        lifetime <= 120 && lifetime > 60,
        "valid_lft {lifetime} for {addr}"
    );
    assert!(routes(&client, "-4", "c0")
        .contains(&"default via 198.51.100.1 proto 203 metric 1024".to_string()));
    assert_eq!(mtu(&client, "c0"), 1400);
    let log = dnsmasq.log();
    assert!(
        log.contains(&format!("DHCPACK(s0) {}", lease.address)) && log.contains("edge-1"),
        "{log}"
    );
}

#[test]
fn a_short_lease_is_renewed_by_unicast_at_t1_and_outlives_its_first_term() {
    let (client, server) = lab("renew");
    let srv = TestServer::start(&server.name, "s0", 6, 2, 4);
    client.block_on(Duration::from_secs(40), || async {
        let (nl, link) = c0().await;
        let (_client, mut events) = dhcp::spawn(
            nl,
            link,
            Options {
                timing: fast(),
                ..Options::default()
            },
        )
        .unwrap();
        let lease = bound(next(&mut events, Duration::from_secs(10)).await);
        assert_eq!(lease.address, LEASED);
        let bound_at = Instant::now();

        let LeaseEvent::Renewed(renewed) = next(&mut events, Duration::from_secs(5)).await else {
            panic!("expected Renewed")
        };
        let after = bound_at.elapsed();
        assert!(
            after >= Duration::from_millis(1500) && after < Duration::from_secs(4),
            "renewed {after:?} after binding: not at T1"
        );
        assert_eq!(renewed.address, LEASED);
        let renewals: Vec<_> = srv
            .seen()
            .into_iter()
            .filter(|s| s.ciaddr == LEASED)
            .collect();
        assert!(!renewals.is_empty());
        assert!(
            renewals.iter().all(|s| s.unicast && !s.broadcast_flag),
            "renewals go straight to the server: {renewals:?}"
        );

        // Past the first lease's end, the address is still there, with a refreshed lifetime.
        let LeaseEvent::Renewed(_) = next(&mut events, Duration::from_secs(5)).await else {
            panic!("expected a second renewal")
        };
        tokio::time::sleep_until((bound_at + Duration::from_millis(6500)).into()).await;
        let lft = addresses(&client, "c0")
            .into_iter()
            .find(|(a, _)| a == "198.51.100.120/24")
            .map(|(_, l)| l);
        assert!(
            lft.is_some_and(|l| l <= 6),
            "address after 6.5 s of a 6 s lease: lifetime {lft:?}"
        );
    });
}

#[test]
fn an_unanswered_lease_rebinds_by_broadcast_then_expires_and_the_address_goes() {
    let (client, server) = lab("expire");
    let srv = TestServer::start(&server.name, "s0", 6, 2, 4);
    client.block_on(Duration::from_secs(40), || async {
        let (nl, link) = c0().await;
        let (_client, mut events) = dhcp::spawn(
            nl,
            link,
            Options {
                timing: fast(),
                ..Options::default()
            },
        )
        .unwrap();
        bound(next(&mut events, Duration::from_secs(10)).await);
        let bound_at = Instant::now();
        assert!(has_address(&client, "c0", "198.51.100.120/24"));
        srv.set_mode(Mode::Silent);

        match next(&mut events, Duration::from_secs(9)).await {
            LeaseEvent::Expired(l, LeaseEnd::TimedOut) => assert_eq!(l.address, LEASED),
            other => panic!("expected Expired(TimedOut), got {other:?}"),
        }
        assert!(
            bound_at.elapsed() >= Duration::from_millis(5500),
            "expired early: {:?}",
            bound_at.elapsed()
        );
        assert!(
            !has_address(&client, "c0", "198.51.100.120/24"),
            "expiry removes the address"
        );
        assert!(
            !routes(&client, "-4", "c0")
                .iter()
                .any(|r| r.starts_with("default")),
            "and the default route"
        );

        let seen = srv.seen();
        let requests: Vec<_> = seen.iter().filter(|s| s.ciaddr == LEASED).collect();
        let (renew, rebind): (Vec<&dhcp_server::Seen>, Vec<&dhcp_server::Seen>) =
            requests.iter().copied().partition(|s| s.unicast);
        assert!(
            !renew.is_empty() && !rebind.is_empty(),
            "unicast renewals, then broadcast rebinds: {requests:?}"
        );
        let last_renew = renew.iter().map(|s| s.at).max().unwrap();
        assert!(
            rebind.iter().all(|s| s.at >= last_renew),
            "rebinding (broadcast) comes after renewing: {requests:?}"
        );
        eventually(Duration::from_secs(3), "a DISCOVER after expiry", || {
            srv.seen()
                .iter()
                .any(|s| s.kind == dhcproto::v4::MessageType::Discover && s.at > last_renew)
        });
    });
}

#[test]
fn a_nak_on_renewal_drops_the_lease_and_the_client_binds_again() {
    let (client, server) = lab("nak");
    let srv = TestServer::start(&server.name, "s0", 6, 2, 4);
    client.block_on(Duration::from_secs(40), || async {
        let (nl, link) = c0().await;
        let (_client, mut events) = dhcp::spawn(
            nl,
            link,
            Options {
                timing: fast(),
                ..Options::default()
            },
        )
        .unwrap();
        bound(next(&mut events, Duration::from_secs(10)).await);
        srv.set_mode(Mode::NakOnce);
        match next(&mut events, Duration::from_secs(5)).await {
            LeaseEvent::Expired(_, LeaseEnd::Nak) => {}
            other => panic!("expected Expired(Nak), got {other:?}"),
        }
        assert!(
            !has_address(&client, "c0", "198.51.100.120/24"),
            "a NAKed lease's address is removed"
        );
        let again = bound(next(&mut events, Duration::from_secs(10)).await);
        assert_eq!(again.address, LEASED);
        assert!(has_address(&client, "c0", "198.51.100.120/24"));
    });
}
