//! What the node-agent writes into its tmpfs `/etc` for containerd 1.6 and
//! k3s, rendered from a machine config and a few facts about the node.
//!
//! Everything here is a pure function of its arguments: no I/O, no clock, no
//! environment. The agent renders every file in memory ([`files`]), then
//! writes them. Rendered files carry secrets (registry passwords, the k3s
//! token) because containerd and k3s need them; no type here shows file
//! contents in its `Debug` output.

use std::fmt;
use std::net::IpAddr;

use caisson_config::MachineConfig;

mod containerd;
mod k3s;
mod kernel;
mod quote;

pub use containerd::{containerd_config, registry_hosts};
pub use k3s::{k3s_argv, k3s_config_yaml, k3s_registries_yaml};
pub use kernel::{REQUIRED_MODULES, REQUIRED_SYSCTLS};

/// containerd's configuration file.
pub const CONTAINERD_CONFIG_PATH: &str = "/etc/containerd/config.toml";
/// One `<registry host>/hosts.toml` (and `ca.crt`) per configured registry.
pub const CONTAINERD_HOSTS_DIR: &str = "/etc/containerd/certs.d";
pub const CONTAINERD_ROOT: &str = "/var/lib/containerd";
pub const CONTAINERD_STATE: &str = "/run/containerd";
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// runc in the root image (from Debian's runc package).
pub const RUNC_PATH: &str = "/usr/sbin/runc";
/// The pod sandbox image k3s v1.30's air-gap image archive carries.
pub const SANDBOX_IMAGE: &str = "rancher/mirrored-pause:3.6";

pub const K3S_CONFIG_PATH: &str = "/etc/rancher/k3s/config.yaml";
/// Where a k3s server writes its admin kubeconfig (k3s's default).
pub const K3S_KUBECONFIG_PATH: &str = "/etc/rancher/k3s/k3s.yaml";
pub const K3S_REGISTRIES_PATH: &str = "/etc/rancher/k3s/registries.yaml";
pub const K3S_DATA_DIR: &str = "/var/lib/rancher/k3s";
/// Where k3s unpacks its CNI plugins (flannel, bridge, host-local, …).
pub const K3S_CNI_BIN_DIR: &str = "/var/lib/rancher/k3s/data/current/bin";
/// Where flannel writes the CNI network configuration.
pub const K3S_CNI_CONF_DIR: &str = "/var/lib/rancher/k3s/agent/etc/cni/net.d";

/// Files holding secrets (registry passwords, the k3s token).
pub const SECRET_FILE_MODE: u32 = 0o600;
/// Files anyone on the node may read.
pub const PUBLIC_FILE_MODE: u32 = 0o644;

/// What the agent knows about the node that the config may not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The host name in effect (the config's, DHCP's or the derived one).
    /// The Kubernetes node name when `kubernetes.node_name` is absent.
    pub hostname: String,
    /// The node's addresses, most preferred first. The first is advertised
    /// to Kubernetes as the node IP; none: k3s picks one itself.
    pub addresses: Vec<IpAddr>,
}

/// One file to write: absolute path, permission bits, contents.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: String,
    pub mode: u32,
    pub contents: String,
}

/// Path, mode and size only: contents may hold secrets.
impl fmt::Debug for RenderedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenderedFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:#o}", self.mode))
            .field("bytes", &self.contents.len())
            .finish()
    }
}

/// Every file containerd and k3s need, in the order to write them:
/// containerd's config.toml, the registry hosts files, then (with a
/// `[kubernetes]` section) k3s's config.yaml and registries.yaml.
pub fn files(config: &MachineConfig, facts: &NodeFacts) -> Vec<RenderedFile> {
    let mut out = vec![RenderedFile {
        path: CONTAINERD_CONFIG_PATH.to_string(),
        mode: SECRET_FILE_MODE,
        contents: containerd_config(config),
    }];
    out.extend(registry_hosts(config));
    if let Some(yaml) = k3s_config_yaml(config, facts) {
        out.push(RenderedFile {
            path: K3S_CONFIG_PATH.to_string(),
            mode: SECRET_FILE_MODE,
            contents: yaml,
        });
        out.push(RenderedFile {
            path: K3S_REGISTRIES_PATH.to_string(),
            mode: SECRET_FILE_MODE,
            contents: k3s_registries_yaml(config),
        });
    }
    out
}

/// The first line of every rendered file.
const HEADER: &str = "# Written by node-agent from the machine config. Changes here are lost.\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_rendered_file_never_shows_its_contents() {
        let f = RenderedFile {
            path: "/etc/x".into(),
            mode: 0o600,
            contents: "password = \"hunter2\"".into(),
        };
        let shown = format!("{f:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("0o600") && shown.contains("/etc/x"),
            "{shown}"
        );
    }
}
