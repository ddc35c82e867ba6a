//! Node networking for the agent.
//!
//! - [`ipcmdline`]: the kernel's `ip=` argument. Pure.
//! - [`render`]: `/etc/resolv.conf` and `/etc/hosts`. Pure.
//! - [`link`]: links, addresses and routes over rtnetlink; the
//!   [`link::NetworkPlan`] computed from the config, and [`link::apply()`].
//! - [`dhcp`]: a DHCPv4 client: a pure state machine and a thin tokio
//!   runner that puts the lease on the link and reports lease events.
//!
//! Nothing here panics: no `unwrap`/`expect` outside tests, and every error
//! names the link or address and the cause.

pub mod dhcp;
pub mod ipcmdline;
pub mod link;
pub mod render;

/// The agent drives these from `Send` futures (its backend trait asks for
/// them); this fails to compile if one stops being `Send`.
#[cfg(test)]
#[allow(dead_code, clippy::let_underscore_future)]
fn futures_are_send(nl: link::Netlink, plan: link::NetworkPlan, l: link::Link, id: link::LinkId) {
    fn send<T: Send>(_: &T) {}
    let sysfs = std::path::Path::new("/sys");
    send(&link::apply(&nl, &plan));
    send(&nl.links(sysfs));
    send(&nl.addresses(&id));
    send(&nl.routes(&id));
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    send(&dhcp::run(nl.clone(), l, dhcp::Options::default(), tx));
}
