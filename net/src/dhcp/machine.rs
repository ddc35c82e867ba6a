//! The DHCPv4 client state machine (RFC 2131 §4.4), without I/O: time comes
//! in as an argument, packets come in decoded and go out as [`Transmit`]s,
//! and lease changes come out as [`LeaseEvent`]s. The runner in
//! `client.rs` does the sockets, timers and netlink.
//!
//! ```text
//! Init ─DISCOVER→ Selecting ─OFFER/REQUEST→ Requesting ─ACK→ Bound
//!   ↑                                            │NAK, no answer   │T1
//!   └────────────────────────────────────────────┘                 ↓
//!   ↑  expiry, NAK                 Rebinding ←T2─ Renewing (unicast to the server)
//!   └──────────────────────────── (broadcast)  ─ACK→ Bound
//! ```

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};

use super::lease::{lease_from_ack, Lease, LeaseEnd, LeaseEvent};
use crate::link::MacAddr;

/// Retransmission and retry timing. The defaults are RFC 2131's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// First DISCOVER/REQUEST retransmission delay; doubles each time.
    pub initial_retransmit: Duration,
    pub max_retransmit: Duration,
    /// Each delay is moved by a random amount up to this, either way, so a
    /// rack of nodes that lost power together does not retry in step.
    pub jitter: Duration,
    /// REQUESTs sent for one OFFER before starting over with DISCOVER.
    pub request_attempts: u32,
    /// Shortest wait between renewal (and rebinding) retransmissions.
    pub min_lease_retry: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            initial_retransmit: Duration::from_secs(4),
            max_retransmit: Duration::from_secs(64),
            jitter: Duration::from_secs(1),
            request_attempts: 4,
            min_lease_retry: Duration::from_secs(60),
        }
    }
}

/// Who the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub interface: String,
    pub mac: MacAddr,
    /// Sent as option 12, so the server can register the name.
    pub hostname: Option<String>,
    pub timing: Timing,
}

/// Where a message goes: the limited broadcast, or the server itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Broadcast,
    Unicast(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transmit {
    pub message: Message,
    pub to: Destination,
}

/// What the runner must do after a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Send(Transmit),
    Event(LeaseEvent),
}

/// The state's name, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Init,
    Selecting,
    Requesting,
    Bound,
    Renewing,
    Rebinding,
}

/// One request/reply exchange: its xid and its retransmission clock.
#[derive(Debug, Clone)]
struct Exchange {
    xid: u32,
    started: Instant,
    next: Instant,
    delay: Duration,
    sent: u32,
}

#[derive(Debug, Clone)]
enum State {
    Init {
        at: Instant,
    },
    Selecting(Exchange),
    Requesting {
        ex: Exchange,
        address: Ipv4Addr,
        server: Ipv4Addr,
    },
    Bound(Lease),
    Renewing {
        ex: Exchange,
        lease: Lease,
    },
    Rebinding {
        ex: Exchange,
        lease: Lease,
    },
}

pub struct Machine {
    cfg: ClientConfig,
    rng: u64,
    state: State,
}

const PARAMETERS: [OptionCode; 10] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::DomainName,
    OptionCode::DomainSearch,
    OptionCode::Hostname,
    OptionCode::InterfaceMtu,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

impl Machine {
    /// `seed` drives xids and jitter; the first DISCOVER is due at `now`.
    pub fn new(cfg: ClientConfig, seed: u64, now: Instant) -> Machine {
        Machine {
            cfg,
            rng: seed | 1,
            state: State::Init { at: now },
        }
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            State::Init { .. } => Phase::Init,
            State::Selecting(_) => Phase::Selecting,
            State::Requesting { .. } => Phase::Requesting,
            State::Bound(_) => Phase::Bound,
            State::Renewing { .. } => Phase::Renewing,
            State::Rebinding { .. } => Phase::Rebinding,
        }
    }

    /// The lease in force, if any.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound(lease)
            | State::Renewing { lease, .. }
            | State::Rebinding { lease, .. } => Some(lease),
            _ => None,
        }
    }

    /// When [`Machine::on_timeout`] has work to do; None: never (an infinite lease).
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Init { at } => Some(*at),
            State::Selecting(ex) | State::Requesting { ex, .. } => Some(ex.next),
            State::Bound(lease) => lease.renew_at(),
            State::Renewing { ex, lease } => min_opt(ex.next, lease.rebind_at()),
            State::Rebinding { ex, lease } => min_opt(ex.next, lease.expires_at()),
        }
    }

    /// Advance the clock to `now`: retransmit, renew, rebind or expire.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        let state = self.state.clone();
        match state {
            State::Init { at } if now >= at => self.discover(now, &mut out),
            State::Selecting(mut ex) if now >= ex.next => {
                self.backoff(&mut ex, now);
                out.push(self.send_discover(&ex, now));
                self.state = State::Selecting(ex);
            }
            State::Requesting {
                mut ex,
                address,
                server,
            } if now >= ex.next => {
                if ex.sent >= self.cfg.timing.request_attempts {
                    self.discover(now, &mut out);
                } else {
                    self.backoff(&mut ex, now);
                    out.push(self.send_select_request(&ex, now, address, server));
                    self.state = State::Requesting {
                        ex,
                        address,
                        server,
                    };
                }
            }
            State::Bound(lease)
            | State::Renewing { lease, .. }
            | State::Rebinding { lease, .. }
                if lease.expires_at().is_some_and(|t| now >= t) =>
            {
                out.push(Output::Event(LeaseEvent::Expired(
                    lease,
                    LeaseEnd::TimedOut,
                )));
                self.discover(now, &mut out);
            }
            State::Bound(lease) | State::Renewing { lease, .. }
                if lease.rebind_at().is_some_and(|t| now >= t) =>
            {
                let mut ex = self.exchange(now);
                self.lease_retry(&mut ex, now, lease.expires_at());
                out.push(self.send_lease_request(&ex, now, &lease, Destination::Broadcast));
                self.state = State::Rebinding { ex, lease };
            }
            State::Bound(lease) if lease.renew_at().is_some_and(|t| now >= t) => {
                let mut ex = self.exchange(now);
                self.lease_retry(&mut ex, now, lease.rebind_at());
                out.push(self.send_lease_request(
                    &ex,
                    now,
                    &lease,
                    Destination::Unicast(lease.server),
                ));
                self.state = State::Renewing { ex, lease };
            }
            State::Renewing { mut ex, lease } if now >= ex.next => {
                self.lease_retry(&mut ex, now, lease.rebind_at());
                out.push(self.send_lease_request(
                    &ex,
                    now,
                    &lease,
                    Destination::Unicast(lease.server),
                ));
                self.state = State::Renewing { ex, lease };
            }
            State::Rebinding { mut ex, lease } if now >= ex.next => {
                self.lease_retry(&mut ex, now, lease.expires_at());
                out.push(self.send_lease_request(&ex, now, &lease, Destination::Broadcast));
                self.state = State::Rebinding { ex, lease };
            }
            _ => {}
        }
        out
    }

    /// A message from the network. Anything not addressed to this exchange
    /// (wrong xid or hardware address, not a reply) is ignored.
    pub fn on_message(&mut self, now: Instant, msg: &Message) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(kind) = self.reply_kind(msg) else {
            return out;
        };
        let state = self.state.clone();
        match (state, kind) {
            (State::Selecting(ex), MessageType::Offer) => {
                let address = msg.yiaddr();
                let Some(server) = server_id(msg) else {
                    return out;
                };
                if address.is_unspecified() {
                    return out;
                }
                let mut ex = Exchange { sent: 0, ..ex };
                self.backoff_reset(&mut ex, now);
                out.push(self.send_select_request(&ex, now, address, server));
                self.state = State::Requesting {
                    ex,
                    address,
                    server,
                };
            }
            (State::Requesting { server, .. }, MessageType::Ack) if from_server(msg, server) => {
                match lease_from_ack(&self.cfg.interface, msg, now) {
                    Ok(lease) => {
                        out.push(Output::Event(LeaseEvent::Bound(lease.clone())));
                        self.state = State::Bound(lease);
                    }
                    Err(why) => {
                        tracing::warn!(interface = %self.cfg.interface, "ignoring a DHCPACK: {why}")
                    }
                }
            }
            (State::Requesting { server, .. }, MessageType::Nak) if from_server(msg, server) => {
                self.restart_later(now);
            }
            (
                State::Renewing { lease: old, .. } | State::Rebinding { lease: old, .. },
                MessageType::Ack,
            ) => match lease_from_ack(&self.cfg.interface, msg, now) {
                Ok(lease) if lease.same_binding(&old) => {
                    out.push(Output::Event(LeaseEvent::Renewed(lease.clone())));
                    self.state = State::Bound(lease);
                }
                Ok(lease) => {
                    out.push(Output::Event(LeaseEvent::Expired(
                        old,
                        LeaseEnd::Superseded,
                    )));
                    out.push(Output::Event(LeaseEvent::Bound(lease.clone())));
                    self.state = State::Bound(lease);
                }
                Err(why) => {
                    tracing::warn!(interface = %self.cfg.interface, "ignoring a DHCPACK: {why}")
                }
            },
            (State::Renewing { lease, .. } | State::Rebinding { lease, .. }, MessageType::Nak) => {
                out.push(Output::Event(LeaseEvent::Expired(lease, LeaseEnd::Nak)));
                self.restart_later(now);
            }
            _ => {}
        }
        out
    }

    fn reply_kind(&self, msg: &Message) -> Option<MessageType> {
        let xid = match &self.state {
            State::Selecting(ex)
            | State::Requesting { ex, .. }
            | State::Renewing { ex, .. }
            | State::Rebinding { ex, .. } => ex.xid,
            State::Init { .. } | State::Bound(_) => return None,
        };
        // hlen first: dhcproto's chaddr() slices by it and a hostile
        // packet may claim more than the 16 bytes there are.
        let ours = msg.opcode() == Opcode::BootReply
            && msg.xid() == xid
            && msg.hlen() == 6
            && msg.chaddr() == &self.cfg.mac.0[..];
        ours.then(|| msg.opts().msg_type()).flatten()
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: jitter and xids need spread, not secrecy.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn jittered(&mut self, delay: Duration) -> Duration {
        let j = u64::try_from(self.cfg.timing.jitter.as_millis())
            .unwrap_or(u64::MAX / 4)
            .min(u64::MAX / 4);
        if j == 0 {
            return delay;
        }
        let offset = self.next_random() % (2 * j + 1);
        delay
            .saturating_add(Duration::from_millis(offset))
            .saturating_sub(Duration::from_millis(j))
    }

    fn exchange(&mut self, now: Instant) -> Exchange {
        let xid = self.next_random() as u32;
        Exchange {
            xid,
            started: now,
            next: now,
            delay: Duration::ZERO,
            sent: 0,
        }
    }

    fn backoff_reset(&mut self, ex: &mut Exchange, now: Instant) {
        ex.delay = Duration::ZERO;
        self.backoff(ex, now);
    }

    /// Exponential backoff: initial, doubling, capped, each jittered.
    fn backoff(&mut self, ex: &mut Exchange, now: Instant) {
        let t = &self.cfg.timing;
        ex.delay = if ex.delay.is_zero() {
            t.initial_retransmit
        } else {
            ex.delay.saturating_mul(2).min(t.max_retransmit)
        };
        ex.next = later(now, self.jittered(ex.delay));
        ex.sent += 1;
    }

    /// RFC 2131 §4.4.5: half the time left until `until`, at least the
    /// minimum retry; the phase change at `until` comes first anyway.
    fn lease_retry(&mut self, ex: &mut Exchange, now: Instant, until: Option<Instant>) {
        let half = until.map_or(self.cfg.timing.min_lease_retry, |t| {
            t.saturating_duration_since(now) / 2
        });
        ex.next = later(now, half.max(self.cfg.timing.min_lease_retry));
        ex.sent += 1;
    }

    fn discover(&mut self, now: Instant, out: &mut Vec<Output>) {
        let mut ex = self.exchange(now);
        self.backoff(&mut ex, now);
        out.push(self.send_discover(&ex, now));
        self.state = State::Selecting(ex);
    }

    /// After a NAK, start over after a short random pause, not in a tight loop.
    fn restart_later(&mut self, now: Instant) {
        let pause = self.jittered(self.cfg.timing.jitter);
        self.state = State::Init {
            at: later(now, pause),
        };
    }

    fn message(&self, ex: &Exchange, now: Instant, kind: MessageType, ciaddr: Ipv4Addr) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_xid(ex.xid)
            .set_chaddr(&self.cfg.mac.0)
            .set_ciaddr(ciaddr);
        let secs = now.saturating_duration_since(ex.started).as_secs();
        m.set_secs(u16::try_from(secs).unwrap_or(u16::MAX));
        if ciaddr.is_unspecified() {
            // With no address yet, replies must be broadcast for our UDP
            // socket to see them (see the module docs).
            m.set_flags(Flags::default().set_broadcast());
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        let mut client_id = vec![1u8];
        client_id.extend_from_slice(&self.cfg.mac.0);
        o.insert(DhcpOption::ClientIdentifier(client_id));
        o.insert(DhcpOption::MaxMessageSize(1500));
        o.insert(DhcpOption::ParameterRequestList(PARAMETERS.to_vec()));
        if let Some(h) = &self.cfg.hostname {
            o.insert(DhcpOption::Hostname(h.clone()));
        }
        m
    }

    fn send_discover(&self, ex: &Exchange, now: Instant) -> Output {
        let message = self.message(ex, now, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        Output::Send(Transmit {
            message,
            to: Destination::Broadcast,
        })
    }

    fn send_select_request(
        &self,
        ex: &Exchange,
        now: Instant,
        address: Ipv4Addr,
        server: Ipv4Addr,
    ) -> Output {
        let mut message = self.message(ex, now, MessageType::Request, Ipv4Addr::UNSPECIFIED);
        message
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(address));
        message
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(server));
        Output::Send(Transmit {
            message,
            to: Destination::Broadcast,
        })
    }

    /// RENEWING and REBINDING requests: ciaddr set, no server id.
    fn send_lease_request(
        &self,
        ex: &Exchange,
        now: Instant,
        lease: &Lease,
        to: Destination,
    ) -> Output {
        let message = self.message(ex, now, MessageType::Request, lease.address);
        Output::Send(Transmit { message, to })
    }
}

fn server_id(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// An answer from `server`, or one that does not say whom it is from.
fn from_server(msg: &Message, server: Ipv4Addr) -> bool {
    server_id(msg).is_none() || server_id(msg) == Some(server)
}

/// `now + d`, without the panic `Instant + Duration` has on overflow.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(Duration::from_secs(365 * 86_400)))
        .unwrap_or(now)
}

fn min_opt(a: Instant, b: Option<Instant>) -> Option<Instant> {
    Some(b.map_or(a, |b| a.min(b)))
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
