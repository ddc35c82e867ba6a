//! The machine config schema, `version = 1`. Every struct rejects unknown
//! keys. Later sections (`kubernetes`, `containerd`, `containers`, `upgrade`)
//! are added here as new optional fields; a node that does not know a section
//! refuses the config instead of ignoring it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The API port when the config does not name one.
pub const DEFAULT_API_PORT: u16 = 50443;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub version: u32,
    #[serde(default)]
    pub machine: Machine,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub time: Time,
    #[serde(default)]
    pub kernel: Kernel,
    pub api: Api,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// RFC 1123 host name. Absent: DHCP's, else one derived from the machine id.
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Links to configure. Absent: DHCPv4 on every physical link.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    /// DNS search domains.
    #[serde(default)]
    pub search: Vec<String>,
    /// Extra `/etc/hosts` entries.
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
}

/// One link, selected by name or by MAC address (exactly one of them).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: Option<String>,
    pub mac: Option<String>,
    #[serde(default)]
    pub dhcp: bool,
    /// Static addresses in CIDR form, IPv4 or IPv6.
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    /// Default gateway(s): at most one IPv4 and one IPv6.
    #[serde(default)]
    pub gateways: Vec<IpAddr>,
    #[serde(default)]
    pub routes: Vec<Route>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub to: IpNet,
    pub via: IpAddr,
    pub metric: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub ip: IpAddr,
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Time {
    #[serde(default)]
    pub ntp_servers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Extra modules to load at boot.
    #[serde(default)]
    pub modules: Vec<String>,
    /// `net.ipv4.ip_forward = 1`; values may be strings or integers.
    #[serde(default)]
    pub sysctls: BTreeMap<String, SysctlValue>,
    /// Extra kernel arguments, written to the boot entry's `options` line
    /// (effective after a reboot).
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SysctlValue {
    Int(i64),
    Text(String),
}

impl SysctlValue {
    /// The text written to `/proc/sys/...`.
    pub fn render(&self) -> String {
        match self {
            SysctlValue::Int(i) => i.to_string(),
            SysctlValue::Text(s) => s.clone(),
        }
    }
}

/// The node API. The CA certificate is required; the node either holds the
/// CA key (and mints its own server certificate) or is given one.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    #[serde(default = "default_api_port")]
    pub port: u16,
    /// PEM of the cluster CA certificate.
    pub ca_cert: String,
    /// PEM of the CA private key.
    pub ca_key: Option<Secret>,
    /// PEM of a server certificate issued to this node by the CA.
    pub node_cert: Option<String>,
    /// PEM of that certificate's private key.
    pub node_key: Option<Secret>,
}

fn default_api_port() -> u16 {
    DEFAULT_API_PORT
}
