//! A DHCPv4 client (RFC 2131): DISCOVER, OFFER, REQUEST, ACK; renewal at
//! T1 by unicast to the server, rebinding at T2 by broadcast, expiry, and
//! a fresh start on NAK.
//!
//! - [`Machine`] is the protocol as a pure state machine: time is an
//!   argument, messages are dhcproto values. All protocol decisions live
//!   there and are unit-tested.
//! - [`run`] / [`spawn`] are the thin tokio runner: one UDP socket, one
//!   timer, and netlink to put the lease on the link (address with the
//!   lease's lifetime, default route, MTU) before reporting a
//!   [`LeaseEvent`] to the agent, which then updates resolv.conf and its
//!   certificate SANs.
//!
//! ## Why a UDP socket is enough
//!
//! Most clients use a raw or packet socket because before the lease there
//! is no address to receive a reply on. We avoid that by asking for
//! broadcast replies (the BROADCAST flag, RFC 2131 §4.1) while we have no
//! address: the server then sends OFFER and ACK to 255.255.255.255, which
//! the kernel delivers to a UDP socket bound to `0.0.0.0:68` even on a link
//! with no address. The socket is tied to its link with `SO_BINDTODEVICE`,
//! so one client per link can share port 68 and our broadcasts leave
//! through the right link with source 0.0.0.0; `SO_BROADCAST` allows
//! sending to 255.255.255.255. Renewals are plain unicast from the leased
//! address. No raw socket means no BPF filter, no hand-built IP/UDP
//! headers and checksums, and no `CAP_NET_RAW` dependency.
//!
//! The cost: the kernel applies reverse-path filtering to the broadcast
//! reply. With `rp_filter` = 0 (the kernel's default, which the node keeps)
//! it is accepted; with 1 or 2 and no route back to the server, the kernel
//! drops it before the socket sees it. The runner warns when it finds
//! `rp_filter` set. Servers behind a relay are unaffected (the relay
//! broadcasts on the link).
//!
//! Not done: ARP probing of the offered address (DHCPDECLINE), INIT-REBOOT
//! (asking again for the previous address after a reboot), DHCPRELEASE,
//! FORCERENEW, classless static routes (option 121).

mod client;
mod lease;
mod machine;
mod socket;
mod wire;

pub use client::{run, spawn, DhcpClient, DhcpError, Options};
pub use lease::{Lease, LeaseEnd, LeaseEvent};
pub use machine::{ClientConfig, Destination, Machine, Output, Phase, Timing, Transmit};
