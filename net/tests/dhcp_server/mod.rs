//! A tiny DHCPv4 server for tests (dnsmasq will not lease for less than
//! two minutes): one address, short leases, and switches to go silent or
//! NAK, so renewal, rebinding, expiry and NAK can be seen in seconds.
//! TEST FIXTURE ONLY.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use socket2::{Domain, Protocol, Socket, Type};

pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const LEASED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Answer,
    /// Receive and record, answer nothing.
    Silent,
    /// NAK the next renewal (a REQUEST with ciaddr set), then answer again.
    NakOnce,
}

/// One message the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub kind: MessageType,
    pub ciaddr: Ipv4Addr,
    pub broadcast_flag: bool,
    /// Sent to the server's own address, not to 255.255.255.255.
    pub unicast: bool,
    pub hostname: Option<String>,
}

#[derive(Debug)]
pub struct Shared {
    pub mode: Mode,
    pub seen: Vec<Seen>,
}

pub struct TestServer {
    pub shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serves on `dev` inside the namespace `netns` (a name under
    /// /run/netns), which must have SERVER on `dev`.
    pub fn start(netns: &str, dev: &str, lease: u32, t1: u32, t2: u32) -> TestServer {
        let shared = Arc::new(Mutex::new(Shared {
            mode: Mode::Answer,
            seen: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (path, dev) = (format!("/run/netns/{netns}"), dev.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                let file = std::fs::File::open(&path).expect("netns file");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let any = socket(&dev, Ipv4Addr::UNSPECIFIED);
                let own = socket(&dev, SERVER);
                ready_tx.send(()).expect("ready");
                serve(&any, &own, &shared, &stop, [lease, t1, t2]);
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the test DHCP server did not start");
        TestServer {
            shared,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().expect("lock").mode = mode;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().expect("lock").seen.clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Port 67 on `addr`: the unspecified address gets broadcasts, the
/// server's own address gets unicasts (the kernel picks the most specific).
fn socket(dev: &str, addr: Ipv4Addr) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    s.bind_device(Some(dev.as_bytes()))
        .expect("SO_BINDTODEVICE");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.set_broadcast(true).expect("SO_BROADCAST");
    s.bind(&SocketAddrV4::new(addr, 67).into())
        .expect("bind :67");
    s.set_nonblocking(true).expect("nonblocking");
    s.into()
}

fn serve(
    any: &UdpSocket,
    own: &UdpSocket,
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
    timers: [u32; 3],
) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        let mut got = None;
        for (sock, unicast) in [(own, true), (any, false)] {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                got = Some((buf[..n].to_vec(), unicast));
                break;
            }
        }
        let Some((bytes, unicast)) = got else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let Ok(msg) = Message::from_bytes(&bytes) else {
            continue;
        };
        let Some(kind) = msg.opts().msg_type() else {
            continue;
        };
        let hostname = match msg.opts().get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) => Some(h.clone()),
            _ => None,
        };
        let seen = Seen {
            at: Instant::now(),
            kind,
            ciaddr: msg.ciaddr(),
            broadcast_flag: msg.flags().broadcast(),
            unicast,
            hostname,
        };
        let reply = {
            let mut s = shared.lock().expect("lock");
            s.seen.push(seen);
            match (s.mode, kind) {
                (Mode::Silent, _) => None,
                (Mode::NakOnce, MessageType::Request) if !msg.ciaddr().is_unspecified() => {
                    s.mode = Mode::Answer;
                    Some(MessageType::Nak)
                }
                (_, MessageType::Discover) => Some(MessageType::Offer),
                (_, MessageType::Request) => Some(MessageType::Ack),
                _ => None,
            }
        };
        if let Some(reply_kind) = reply {
            let out = answer(&msg, reply_kind, timers);
            let to = if msg.ciaddr().is_unspecified() {
                Ipv4Addr::BROADCAST
            } else {
                msg.ciaddr()
            };
            let _ = any.send_to(&out.to_vec().expect("encode"), SocketAddrV4::new(to, 68));
        }
    }
}

fn answer(req: &Message, kind: MessageType, [lease, t1, t2]: [u32; 3]) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_chaddr(req.chaddr());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(SERVER));
    if kind != MessageType::Nak {
        m.set_yiaddr(LEASED);
        let o = m.opts_mut();
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![SERVER]));
        o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            198, 51, 100, 53,
        )]));
        o.insert(DhcpOption::AddressLeaseTime(lease));
        o.insert(DhcpOption::Renewal(t1));
        o.insert(DhcpOption::Rebinding(t2));
    }
    m
}
