//! The machine config schema, `version = 1`. Every struct rejects unknown
//! keys. New sections are added as optional fields; a node that does not know
//! a section refuses the config instead of ignoring it.

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
    /// A/B upgrades: who may sign an update bundle, how long health gates wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<Upgrade>,
    /// k3s. Absent: the node runs no Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Kubernetes>,
    #[serde(default, skip_serializing_if = "Containerd::is_empty")]
    pub containerd: Containerd,
    /// System containers, run by the agent outside Kubernetes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    /// Install to a disk: a node booted live (USB, PXE) writes the whole
    /// layout to the disk named here, then reboots into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<Install>,
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

/// How long a freshly upgraded slot has to pass its health gates, by default.
pub const DEFAULT_HEALTH_TIMEOUT_SECS: u32 = 300;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    /// Ed25519 public keys (SPKI PEM) whose signatures on an update bundle
    /// are accepted.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Accept bundles without a valid signature from a trusted key.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Seconds a freshly upgraded slot has to pass its health gates
    /// (10 to 3600) before the node falls back to the old slot.
    #[serde(default = "default_health_timeout_secs")]
    pub health_timeout_secs: u32,
}

impl Default for Upgrade {
    fn default() -> Self {
        Upgrade {
            trusted_keys: Vec::new(),
            allow_unsigned: false,
            health_timeout_secs: DEFAULT_HEALTH_TIMEOUT_SECS,
        }
    }
}

fn default_health_timeout_secs() -> u32 {
    DEFAULT_HEALTH_TIMEOUT_SECS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesRole {
    /// Control plane (and workloads, unless tainted).
    Server,
    /// Workloads only; joins `server`.
    Agent,
}

impl KubernetesRole {
    /// The k3s subcommand.
    pub fn as_str(self) -> &'static str {
        match self {
            KubernetesRole::Server => "server",
            KubernetesRole::Agent => "agent",
        }
    }
}

/// A packaged k3s component a server can leave out (`--disable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum K3sComponent {
    Traefik,
    Servicelb,
    LocalStorage,
    MetricsServer,
    Coredns,
    HelmController,
}

impl K3sComponent {
    pub const ALL: [K3sComponent; 6] = [
        K3sComponent::Traefik,
        K3sComponent::Servicelb,
        K3sComponent::LocalStorage,
        K3sComponent::MetricsServer,
        K3sComponent::Coredns,
        K3sComponent::HelmController,
    ];

    /// The name k3s knows it by.
    pub fn as_str(self) -> &'static str {
        match self {
            K3sComponent::Traefik => "traefik",
            K3sComponent::Servicelb => "servicelb",
            K3sComponent::LocalStorage => "local-storage",
            K3sComponent::MetricsServer => "metrics-server",
            K3sComponent::Coredns => "coredns",
            K3sComponent::HelmController => "helm-controller",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlannelBackend {
    Vxlan,
    HostGw,
    WireguardNative,
    /// No flannel: bring your own CNI.
    None,
}

impl FlannelBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            FlannelBackend::Vxlan => "vxlan",
            FlannelBackend::HostGw => "host-gw",
            FlannelBackend::WireguardNative => "wireguard-native",
            FlannelBackend::None => "none",
        }
    }
}

/// k3s on this node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    pub role: KubernetesRole,
    /// `https://host:port` of a server to join. Required for an agent; a
    /// server with it joins an existing HA cluster.
    pub server: Option<String>,
    /// The cluster join token. Required for an agent and for a joining server.
    pub token: Option<Secret>,
    /// Start a new HA cluster with embedded etcd (server only, without `server`).
    #[serde(default)]
    pub cluster_init: bool,
    /// Absent: the host name.
    pub node_name: Option<String>,
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    /// `key[=value]:Effect`.
    #[serde(default)]
    pub node_taints: Vec<String>,
    /// Extra names and addresses in the API server certificate (server only).
    #[serde(default)]
    pub tls_san: Vec<String>,
    /// Packaged components not to deploy (server only).
    #[serde(default)]
    pub disable: Vec<K3sComponent>,
    /// Server only; absent: k3s's default (vxlan).
    pub flannel_backend: Option<FlannelBackend>,
    /// Extra k3s arguments, each starting with `--`, appended to its argv.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Kubelet arguments as `name=value` (`--kubelet-arg`).
    #[serde(default)]
    pub kubelet_args: Vec<String>,
}

/// containerd settings beyond what the OS fixes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Containerd {
    /// Keyed by registry host[:port] as it appears in image names
    /// (`docker.io`, `registry.example.internal:5000`).
    #[serde(default)]
    pub registries: BTreeMap<String, Registry>,
}

impl Containerd {
    pub fn is_empty(&self) -> bool {
        self.registries.is_empty()
    }
}

/// How to reach one registry: mirrors, trust, credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Mirror URLs (`https://…` or `http://…`), tried in order before the
    /// registry itself.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// PEM CA bundle trusted for the registry and its mirrors.
    pub ca_cert: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Skip TLS verification for the registry and its mirrors.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
}

/// A system container: run by the agent under containerd, outside Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// RFC 1123 label, unique among `containers`.
    pub name: String,
    /// Image reference, e.g. `docker.io/prom/node-exporter:v1.8.2`.
    pub image: String,
    /// File name of an OCI archive in the image's `/usr/lib/caisson/images/`
    /// to import instead of pulling `image`.
    pub archive: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    pub memory_max_mib: Option<u32>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

/// A bind mount from the host into a system container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub source: String,
    pub destination: String,
    #[serde(default)]
    pub readonly: bool,
}

/// Where a live node installs itself: `disk` or `disk_selector`, exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Install {
    /// The whole disk's device node, `/dev/<kernel name>` (`/dev/sda`,
    /// `/dev/nvme0n1`, `/dev/vdb`).
    pub disk: Option<String>,
    /// Choose the disk by what it is; it must match exactly one disk.
    pub disk_selector: Option<DiskSelector>,
    /// Overwrite a disk that holds a partition table or a file system.
    /// Without it such a disk is refused.
    #[serde(default)]
    pub wipe: bool,
}

/// Every criterion given must hold; at least one is required.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSelector {
    /// `"4GiB"` (exactly), `">= 100GB"`, `"<= 2TiB"`, `"> 1TB"`, `"< 64GiB"`;
    /// units B, KB/MB/GB/TB (powers of 1000) and KiB/MiB/GiB/TiB (of 1024).
    pub size: Option<String>,
    /// Glob (`*`, `?`, `[…]`) on the disk's model (sysfs `device/model`).
    pub model: Option<String>,
    /// Glob on the disk's serial number (sysfs `device/serial`, or the
    /// virtio/NVMe/SCSI equivalent).
    pub serial: Option<String>,
    #[serde(rename = "type")]
    pub disk_type: Option<DiskType>,
}

/// What kind of disk, as the node reads it from sysfs. The kinds are
/// exclusive: an NVMe drive is `nvme` (not `ssd`), an SD/eMMC card `sd`, a
/// virtio disk `virtio`; the rest are `ssd` or `hdd` by `queue/rotational`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    Ssd,
    Hdd,
    Nvme,
    Sd,
    Virtio,
}

impl DiskType {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskType::Ssd => "ssd",
            DiskType::Hdd => "hdd",
            DiskType::Nvme => "nvme",
            DiskType::Sd => "sd",
            DiskType::Virtio => "virtio",
        }
    }
}
