//! Networking, as the agent needs it: make the links match the config (or,
//! before any config, the `ip=` kernel argument), and list every address
//! for the API's server certificate.
//!
//! **The seam.** Everything the agent does with the network goes through
//! [`NetworkBackend`]. The backend here, [`minimal::StaticNetwork`], is a
//! stop-gap: static addresses, gateways, routes and MTU over rtnetlink,
//! from the config or from `ip=`, and no DHCP. `caisson-net`'s netlink
//! plan/apply and DHCPv4 client replace it by implementing the same trait;
//! `main.rs` picks the backend in one line ([`backend`]).
//!
//! Until then a link the config leaves to DHCP (including "no interfaces
//! configured", which means DHCP on every physical link) gets the `ip=`
//! address if `ip=` names that link or names none, and stays unconfigured
//! otherwise; the console says so.

pub mod minimal;
pub mod plan;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use caisson_config::Network;
use caisson_net::ipcmdline::IpArg;
use thiserror::Error;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Error)]
#[error("network: {what}: {cause}")]
pub struct NetworkError {
    /// The link, address or config key concerned.
    pub what: String,
    pub cause: String,
}

impl NetworkError {
    pub fn new(what: impl Into<String>, cause: impl ToString) -> NetworkError {
        NetworkError {
            what: what.into(),
            cause: cause.to_string(),
        }
    }
}

/// What a network apply did, one line each, for the console and the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkReport {
    pub lines: Vec<String>,
}

/// What the agent needs from networking.
pub trait NetworkBackend: Send + Sync + 'static {
    /// Make the links match `network`; `None`: the node has no config yet
    /// (maintenance mode: `ip=`, else DHCP on every physical link).
    /// Also writes /etc/resolv.conf.
    fn apply<'a>(
        &'a self,
        network: Option<&'a Network>,
    ) -> BoxFuture<'a, Result<NetworkReport, NetworkError>>;

    /// Every address on every link, loopback included: the SANs of the
    /// API's server certificate, which is re-issued when this changes.
    fn addresses(&self) -> BoxFuture<'_, Result<Vec<IpAddr>, NetworkError>>;
}

/// The backend the agent runs with.
pub fn backend(ip_arg: Option<IpArg>) -> Arc<dyn NetworkBackend> {
    Arc::new(minimal::StaticNetwork::new(ip_arg))
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
