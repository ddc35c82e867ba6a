//! Networking, as the agent needs it: make the links match the config (or,
//! before any config, the `ip=` kernel argument, else DHCP on every
//! physical link), keep DHCP leases, /etc/resolv.conf and the offered host
//! name current, and list every address for the API's server certificate.
//!
//! **The seam.** Everything the agent does with the network goes through
//! [`NetworkBackend`]; [`backend`] picks the implementation in one line.
//! The real one is [`kernel::KernelNetwork`], built on caisson-net:
//!
//! - [`plan`] (pure): which [`caisson_net::link::NetworkPlan`] the node
//!   runs, and the [`plan::Transition`] from the running plan and DHCP
//!   clients to a new one.
//! - [`leases`] (pure): what each DHCP lease event means for resolv.conf,
//!   the offered host name and the certificate's addresses.
//! - [`kernel`]: carries both out over netlink, one DHCP client per link.

pub mod kernel;
pub mod leases;
pub mod plan;

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use caisson_config::Network;
use caisson_net::ipcmdline::IpArg;
use thiserror::Error;
use tokio::sync::watch;
use tracing::{info, warn};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A network step failed; the message names the link, address or config
/// key and the cause.
#[derive(Debug, Error)]
#[error("network: {message}")]
pub struct NetworkError {
    message: String,
}

impl NetworkError {
    pub fn new(what: impl std::fmt::Display, cause: impl std::fmt::Display) -> NetworkError {
        NetworkError {
            message: format!("{what}: {cause}"),
        }
    }
}

impl From<caisson_net::link::PlanError> for NetworkError {
    fn from(e: caisson_net::link::PlanError) -> NetworkError {
        NetworkError {
            message: e.to_string(),
        }
    }
}

impl From<caisson_net::link::NetlinkError> for NetworkError {
    fn from(e: caisson_net::link::NetlinkError) -> NetworkError {
        NetworkError {
            message: e.to_string(),
        }
    }
}

/// What a network apply did, one line each, for the console and the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkReport {
    pub lines: Vec<String>,
}

/// A host name the network offers (a DHCP lease, `ip=`); the config's own
/// `machine.hostname` wins over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedHostname {
    pub name: String,
    /// For the console: "the DHCP lease on eth0".
    pub from: String,
}

/// What the backend learns on its own, between applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learned {
    pub hostname: Option<LearnedHostname>,
    /// Goes up whenever addresses may have changed (a lease bound or
    /// ended, a plan applied): the API then compares its certificate's
    /// addresses with [`NetworkBackend::addresses`].
    pub generation: u64,
}

/// What the agent needs from networking.
pub trait NetworkBackend: Send + Sync + 'static {
    /// Make the links match `network`; `None`: the node has no config yet
    /// (`ip=`, else DHCP on every physical link). Also writes
    /// /etc/resolv.conf. Returns once the plan is applied and the DHCP
    /// clients are started, not when they have leases.
    fn apply<'a>(
        &'a self,
        network: Option<&'a Network>,
    ) -> BoxFuture<'a, Result<NetworkReport, NetworkError>>;

    /// Every address on every link, loopback included, IPv6 link-local
    /// left out: the SANs of the API's server certificate.
    fn addresses(&self) -> BoxFuture<'_, Result<Vec<IpAddr>, NetworkError>>;

    /// Changes the backend makes on its own (DHCP).
    fn learned(&self) -> watch::Receiver<Learned>;
}

/// The backend the agent runs with.
pub fn backend(ip_arg: Option<IpArg>) -> Arc<dyn NetworkBackend> {
    Arc::new(kernel::KernelNetwork::new(ip_arg))
}

/// The `ip=` kernel argument, if any; a malformed one is logged and ignored.
pub fn ip_arg(cmdline: &caisson_layout::KernelCmdline) -> Option<IpArg> {
    let value = cmdline.value("ip")?;
    match IpArg::parse(value) {
        Ok(arg) => Some(arg),
        Err(e) => {
            tracing::error!("network: ignoring the kernel argument {e}");
            None
        }
    }
}

/// The sysctls networking relies on, set before the config's own (which
/// may override them): with `promote_secondaries`, removing a subnet's
/// primary IPv4 address (a renumbering, an expired lease) keeps the other
/// addresses of that subnet and their routes instead of flushing them.
pub const KERNEL_DEFAULTS: [(&str, &str); 1] = [("net.ipv4.conf.all.promote_secondaries", "1")];

pub fn set_kernel_defaults(proc_sys: &Path) {
    for (key, value) in KERNEL_DEFAULTS {
        match crate::config::sysctl::write(proc_sys, key, value) {
            Ok(()) => info!("network: {key} = {value}"),
            Err(e) => warn!("network: setting {key} = {value}: {e}"),
        }
    }
}
