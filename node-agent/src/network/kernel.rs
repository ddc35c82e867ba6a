//! The [`NetworkBackend`] that drives the kernel, built on caisson-net.
//!
//! An apply computes the plan ([`plan::choose`]) and the
//! [`Transition`] from what runs, then: stops the DHCP clients the new
//! plan does not want as they are, releases links that left the plan
//! (our routes and addresses removed: caisson-net's `apply` never touches
//! a link outside its plan), applies the plan with
//! [`caisson_net::link::apply()`] (static addresses, routes, MTU, up), and
//! starts the DHCP clients it wants. Applies run one at a time.
//!
//! Each DHCP client gets a task that follows its lease events
//! ([`Leases`] decides what they mean: resolv.conf, the offered host name,
//! a new address for the API's certificate). A client that fails (a
//! netlink error while putting a lease on the link) is started again,
//! with a growing delay, for as long as the plan wants it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use caisson_config::Network;
use caisson_net::dhcp::{self, DhcpClient, DhcpError, LeaseEvent};
use caisson_net::ipcmdline::IpArg;
use caisson_net::link::{Link, LinkId, Netlink, NetlinkError, NetworkPlan, Origin};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::leases::{Effect, Leases, StaticResolver};
use super::plan::{self, DhcpSettings, Transition};
use super::{BoxFuture, Learned, NetworkBackend, NetworkError, NetworkReport};

/// The first wait before a failed DHCP client is started again; it
/// doubles up to [`RESTART_MAX`] and starts over once a lease is bound.
pub const RESTART_FIRST: Duration = Duration::from_secs(5);
pub const RESTART_MAX: Duration = Duration::from_secs(60);

/// Where the backend reads and writes.
#[derive(Debug, Clone)]
pub struct NetPaths {
    pub etc: PathBuf,
    pub sysfs: PathBuf,
    pub proc_sys: PathBuf,
}

impl Default for NetPaths {
    fn default() -> NetPaths {
        NetPaths {
            etc: PathBuf::from("/etc"),
            sysfs: PathBuf::from("/sys"),
            proc_sys: PathBuf::from(crate::config::sysctl::PROC_SYS),
        }
    }
}

pub struct KernelNetwork {
    ip_arg: Option<IpArg>,
    /// One apply at a time.
    applying: tokio::sync::Mutex<()>,
    /// The applies' connection, opened on first use (it needs the runtime).
    netlink: Mutex<Option<Netlink>>,
    /// A connection of its own for [`NetworkBackend::addresses`], one
    /// listing at a time: the kernel refuses a second dump on a netlink
    /// socket while one runs (EBUSY), so queries, applies and each DHCP
    /// client never share a socket.
    queries: tokio::sync::Mutex<Option<Netlink>>,
    shared: Arc<Shared>,
}

/// What the apply path and the lease followers share.
struct Shared {
    paths: NetPaths,
    inner: Mutex<Inner>,
    learned: watch::Sender<Learned>,
}

#[derive(Default)]
struct Inner {
    /// The plan last applied (also when applying it partly failed, so the
    /// next transition, a rollback say, releases what it added).
    plan: NetworkPlan,
    clients: BTreeMap<LinkId, Client>,
    leases: Leases,
    /// Numbers clients, so a follower can tell whether its client is
    /// still the link's.
    started: u64,
}

struct Client {
    number: u64,
    settings: DhcpSettings,
    /// Dropping it stops the client.
    handle: DhcpClient,
}

impl KernelNetwork {
    pub fn new(ip_arg: Option<IpArg>) -> KernelNetwork {
        KernelNetwork::with_paths(ip_arg, NetPaths::default())
    }

    pub fn with_paths(ip_arg: Option<IpArg>, paths: NetPaths) -> KernelNetwork {
        let (learned, _) = watch::channel(Learned::default());
        KernelNetwork {
            ip_arg,
            applying: tokio::sync::Mutex::new(()),
            netlink: Mutex::new(None),
            queries: tokio::sync::Mutex::new(None),
            shared: Arc::new(Shared {
                paths,
                inner: Mutex::new(Inner::default()),
                learned,
            }),
        }
    }

    fn netlink(&self) -> Result<Netlink, NetworkError> {
        let mut slot = self.netlink.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(nl) = slot.as_ref() {
            return Ok(nl.clone());
        }
        let nl = Netlink::connect()?;
        *slot = Some(nl.clone());
        Ok(nl)
    }

    async fn apply_inner(&self, network: Option<&Network>) -> Result<NetworkReport, NetworkError> {
        let _one = self.applying.lock().await;
        let nl = self.netlink()?;
        let links = nl.links(&self.shared.paths.sysfs).await?;
        // Before any change: a config naming a missing link changes nothing.
        let plan = plan::choose(network, self.ip_arg.as_ref(), &links)?;
        let mut lines = Vec::new();
        let mut failures = Vec::new();
        if let Some(lo) = links.iter().find(|l| l.name == "lo" && !l.up) {
            match nl.set_up(&lo.id(), true).await {
                Ok(()) => lines.push("lo: up".to_string()),
                Err(e) => failures.push(e.to_string()),
            }
        }

        let mut effects = Vec::new();
        let transition = {
            let mut inner = self.shared.lock();
            let t = Transition::between(&inner.plan, &inner.running(), &plan);
            for (link, why) in &t.stop {
                inner.clients.remove(link);
                lines.push(format!("{link}: DHCP client stopped: {why}"));
                effects.extend(inner.leases.forget(link));
            }
            t
        };
        for link in &transition.release {
            if let Err(e) = release(&nl, link, &mut lines).await {
                failures.push(e.to_string());
            }
        }
        match caisson_net::link::apply(&nl, &plan).await {
            Ok(report) => lines.extend(report.changes.iter().map(ToString::to_string)),
            Err(e) => {
                lines.extend(e.changes.iter().map(ToString::to_string));
                failures.extend(e.failures.iter().map(ToString::to_string));
            }
        }
        for (id, settings) in &transition.start {
            let Some(link) = links.iter().find(|l| &l.id() == id) else {
                continue;
            };
            effects.extend(rp_filter_for_dhcp(&self.shared.paths.proc_sys, id));
            match self.shared.start_client(link.clone(), *settings) {
                Ok(true) => lines.push(format!("{id}: DHCP client started")),
                Ok(false) => {}
                Err(e) => failures.push(e.to_string()),
            }
        }
        {
            let mut inner = self.shared.lock();
            effects.extend(inner.leases.set_static(StaticResolver {
                nameservers: plan.nameservers.clone(),
                search: plan.search.clone(),
                hostname: plan.hostname.clone(),
            }));
            inner.plan = plan;
        }
        self.shared.carry_out(effects, Some(&mut lines));
        if failures.is_empty() {
            return Ok(NetworkReport { lines });
        }
        // The caller only sees the error: say what did change.
        for line in &lines {
            info!("network: {line}");
        }
        Err(NetworkError::new(
            "applying the network plan",
            failures.join("; "),
        ))
    }

    async fn addresses_inner(&self) -> Result<Vec<IpAddr>, NetworkError> {
        let mut slot = self.queries.lock().await;
        let nl = match slot.as_ref() {
            Some(nl) => nl.clone(),
            None => slot.insert(Netlink::connect()?).clone(),
        };
        let mut out = BTreeSet::new();
        for link in nl.links(&self.shared.paths.sysfs).await? {
            match nl.addresses(&link.id()).await {
                Ok(list) => out.extend(
                    list.iter()
                        .map(|a| a.net.addr())
                        .filter(|ip| !is_ipv6_link_local(ip)),
                ),
                // The link went away since it was listed.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out.into_iter().collect())
    }
}

impl NetworkBackend for KernelNetwork {
    fn apply<'a>(
        &'a self,
        network: Option<&'a Network>,
    ) -> BoxFuture<'a, Result<NetworkReport, NetworkError>> {
        Box::pin(self.apply_inner(network))
    }

    fn addresses(&self) -> BoxFuture<'_, Result<Vec<IpAddr>, NetworkError>> {
        Box::pin(self.addresses_inner())
    }

    fn learned(&self) -> watch::Receiver<Learned> {
        self.shared.learned.subscribe()
    }
}

impl Inner {
    fn running(&self) -> BTreeMap<LinkId, DhcpSettings> {
        self.clients
            .iter()
            .map(|(id, c)| (id.clone(), c.settings))
            .collect()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start `link`'s client unless one with these settings runs already
    /// (a follower may have started it again); Ok(false) then.
    fn start_client(
        self: &Arc<Self>,
        link: Link,
        settings: DhcpSettings,
    ) -> Result<bool, DhcpError> {
        let id = link.id();
        let mut inner = self.lock();
        if inner
            .clients
            .get(&id)
            .is_some_and(|c| c.settings == settings)
        {
            return Ok(false);
        }
        let (number, events) = inner.insert_client(link, settings)?;
        drop(inner);
        tokio::spawn(follow(self.clone(), id, number, events));
        Ok(true)
    }

    /// A lease event from client `number` of `link`: None if that client
    /// has been replaced or stopped since (its news are stale).
    fn on_event(&self, link: &LinkId, number: u64, event: &LeaseEvent) -> Option<Vec<Effect>> {
        let mut inner = self.lock();
        let current = inner.clients.get(link).map(|c| c.number) == Some(number);
        current.then(|| inner.leases.on_event(link, event))
    }

    /// Client `number` of `link` ended by itself: take it out (None if it
    /// was stopped or replaced, which ends its events too).
    fn take_ended(&self, link: &LinkId, number: u64) -> Option<(Client, Vec<Effect>)> {
        let mut inner = self.lock();
        if inner.clients.get(link).map(|c| c.number) != Some(number) {
            return None;
        }
        let client = inner.clients.remove(link)?;
        let effects = inner.leases.forget(link);
        Some((client, effects))
    }

    /// Start `link`'s client again if the plan still wants one and nobody
    /// has started it meanwhile.
    async fn restart_client(&self, link: &LinkId) -> Option<(u64, mpsc::Receiver<LeaseEvent>)> {
        let wanted = |inner: &Inner| {
            if inner.clients.contains_key(link) {
                return None;
            }
            plan::dhcp_wanted(&inner.plan).get(link).copied()
        };
        wanted(&self.lock())?;
        let looked_up = match Netlink::connect() {
            Ok(nl) => nl.link(link, &self.paths.sysfs).await,
            Err(e) => Err(e),
        };
        let kernel_link = match looked_up {
            Ok(l) => l,
            Err(e) => {
                warn!("network: {e}; its DHCP client is not started again");
                return None;
            }
        };
        self.carry_out(rp_filter_for_dhcp(&self.paths.proc_sys, link), None);
        let mut inner = self.lock();
        let settings = wanted(&inner)?;
        match inner.insert_client(kernel_link, settings) {
            Ok(started) => {
                drop(inner);
                info!("network: {link}: DHCP client started again");
                Some(started)
            }
            Err(e) => {
                warn!("network: {e}");
                None
            }
        }
    }

    /// Carry out effects in order. Info lines go to `report` when there is
    /// one (an apply reports them), else to the console.
    fn carry_out(&self, effects: Vec<Effect>, mut report: Option<&mut Vec<String>>) {
        for effect in effects {
            match effect {
                Effect::Info(line) => match report.as_deref_mut() {
                    Some(lines) => lines.push(line),
                    None => info!("network: {line}"),
                },
                Effect::Warn(line) => warn!("network: {line}"),
                Effect::ResolvConf(text) => {
                    if let Err(e) = write_resolv_conf(&self.paths.etc, &text) {
                        warn!("network: {e}");
                    }
                }
                Effect::Publish(learned) => {
                    self.learned.send_replace(learned);
                }
            }
        }
    }
}

impl Inner {
    fn insert_client(
        &mut self,
        link: Link,
        settings: DhcpSettings,
    ) -> Result<(u64, mpsc::Receiver<LeaseEvent>), DhcpError> {
        let id = link.id();
        let options = dhcp::Options {
            use_mtu: settings.use_mtu,
            ..dhcp::Options::default()
        };
        // Its own socket: see `KernelNetwork::queries`.
        let own = Netlink::connect().map_err(|e| DhcpError::Socket {
            interface: id.name.clone(),
            step: "netlink socket",
            source: std::io::Error::other(e.to_string()),
        })?;
        let (handle, events) = dhcp::spawn(own, link, options)?;
        self.started += 1;
        let number = self.started;
        self.clients.insert(
            id,
            Client {
                number,
                settings,
                handle,
            },
        );
        Ok((number, events))
    }
}

/// Follows client `number` of `link`: its lease events, and its end.
async fn follow(
    shared: Arc<Shared>,
    link: LinkId,
    mut number: u64,
    mut events: mpsc::Receiver<LeaseEvent>,
) {
    let mut wait = RESTART_FIRST;
    loop {
        while let Some(event) = events.recv().await {
            let Some(effects) = shared.on_event(&link, number, &event) else {
                return;
            };
            shared.carry_out(effects, None);
            if matches!(event, LeaseEvent::Bound(_)) {
                wait = RESTART_FIRST;
            }
        }
        // The client's task is over: stopped by an apply, or failed.
        let Some((mut client, effects)) = shared.take_ended(&link, number) else {
            return;
        };
        shared.carry_out(effects, None);
        match client.handle.finished().await {
            Err(e @ DhcpError::NoMac { .. }) => {
                warn!("network: {e}; the link gets no DHCP lease");
                return;
            }
            Err(e) => warn!(
                "network: {link}: the DHCP client stopped: {e}; starting it again in {} s",
                wait.as_secs()
            ),
            Ok(()) => warn!(
                "network: {link}: the DHCP client stopped; starting it again in {} s",
                wait.as_secs()
            ),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RESTART_MAX);
        match shared.restart_client(&link).await {
            Some((n, rx)) => (number, events) = (n, rx),
            None => return,
        }
    }
}

/// Remove every route and address we put on a link the plan no longer
/// names. A link that is gone has nothing left to remove.
async fn release(nl: &Netlink, link: &LinkId, lines: &mut Vec<String>) -> Result<(), NetlinkError> {
    let gone = |e: &NetlinkError| e.is_not_found() || matches!(e, NetlinkError::NoSuchLink { .. });
    let routes = match nl.routes(link).await {
        Ok(r) => r,
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for route in routes.iter().filter(|r| r.origin.is_some()) {
        match nl.delete_listed_route(link, route).await {
            Ok(()) => lines.push(format!("{link}: removed route {}", route.spec)),
            Err(e) if gone(&e) => {}
            Err(e) => return Err(e),
        }
    }
    for origin in [Origin::Config, Origin::Dhcp] {
        match nl.flush_addresses(link, Some(origin)).await {
            Ok(removed) => {
                lines.extend(
                    removed
                        .iter()
                        .map(|a| format!("{link}: removed address {a}")),
                );
            }
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The DHCP client receives its first replies on a link without an
/// address, which reverse-path filtering would drop: keep the link's
/// `rp_filter` at 0, and warn when `all` (the kernel uses the higher of
/// the two) is set.
fn rp_filter_for_dhcp(proc_sys: &Path, link: &LinkId) -> Vec<Effect> {
    let conf = proc_sys.join("net/ipv4/conf");
    let read = |dir: &str| -> Option<u8> {
        std::fs::read_to_string(conf.join(dir).join("rp_filter"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let mut effects = Vec::new();
    if let Some(value) = read(&link.name).filter(|v| *v != 0) {
        let path = conf.join(&link.name).join("rp_filter");
        effects.push(match std::fs::write(&path, "0\n") {
            Ok(()) => Effect::Info(format!(
                "{link}: rp_filter {value} -> 0 (DHCP replies arrive before the link has an address)"
            )),
            Err(e) => Effect::Warn(format!(
                "{link}: cannot set rp_filter to 0 for DHCP ({}: {e}); offers may be dropped",
                path.display()
            )),
        });
    }
    if let Some(all) = read("all").filter(|v| *v != 0) {
        effects.push(Effect::Warn(format!(
            "net.ipv4.conf.all.rp_filter is {all}: the kernel applies the higher of it and {link}'s, so DHCP offers may be dropped"
        )));
    }
    effects
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.segments().first().is_some_and(|s| s & 0xffc0 == 0xfe80),
        IpAddr::V4(_) => false,
    }
}

fn write_resolv_conf(etc: &Path, text: &str) -> Result<(), String> {
    let path = etc.join("resolv.conf");
    // /etc is our tmpfs: no fsync, but never a torn file.
    let temp = etc.join(".resolv.conf.tmp");
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::rename(&temp, &path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rp_filter_is_cleared_on_the_dhcp_link_and_a_strict_all_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net/ipv4/conf");
        for (link, value) in [("all", "1"), ("eth0", "2"), ("eth1", "0")] {
            std::fs::create_dir_all(conf.join(link)).unwrap();
            std::fs::write(conf.join(link).join("rp_filter"), format!("{value}\n")).unwrap();
        }
        let eth0 = LinkId {
            index: 2,
            name: "eth0".into(),
        };
        let effects = rp_filter_for_dhcp(dir.path(), &eth0);
        assert_eq!(
            effects,
            [
                Effect::Info(
                    "eth0: rp_filter 2 -> 0 (DHCP replies arrive before the link has an address)"
                        .into()
                ),
                Effect::Warn("net.ipv4.conf.all.rp_filter is 1: the kernel applies the higher of it and eth0's, so DHCP offers may be dropped".into()),
            ]
        );
        assert_eq!(
            std::fs::read_to_string(conf.join("eth0/rp_filter")).unwrap(),
            "0\n"
        );
        std::fs::write(conf.join("all/rp_filter"), "0\n").unwrap();
        let eth1 = LinkId {
            index: 3,
            name: "eth1".into(),
        };
        assert!(rp_filter_for_dhcp(dir.path(), &eth1).is_empty());
    }

    #[test]
    fn link_local_ipv6_is_not_a_certificate_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(is_ipv6_link_local(&ip("fe80::5054:ff:fe12:3456")));
        assert!(!is_ipv6_link_local(&ip("fd00::5")));
        assert!(!is_ipv6_link_local(&ip("::1")));
        assert!(!is_ipv6_link_local(&ip("169.254.1.1")));
    }

    #[test]
    fn resolv_conf_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        write_resolv_conf(dir.path(), "nameserver 10.0.2.3\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap(),
            "nameserver 10.0.2.3\n"
        );
        assert!(!dir.path().join(".resolv.conf.tmp").exists());
    }
}
