//! k3s: its argv, `/etc/rancher/k3s/config.yaml` and `registries.yaml`.
//!
//! The YAML is written by hand, keys in a fixed order, every string a
//! double-quoted scalar (see `quote`), so no YAML library is needed and no
//! value can change the document's structure.

use std::collections::BTreeMap;

use caisson_config::{KubernetesRole, MachineConfig, Registry};

use crate::containerd::{authority, ca_path};
use crate::quote::quote;
use crate::{NodeFacts, CONTAINERD_SOCKET, HEADER, K3S_CONFIG_PATH, K3S_DATA_DIR};

/// A YAML document built line by line.
struct Yaml(String);

impl Yaml {
    fn new() -> Self {
        Yaml(HEADER.to_string())
    }

    fn line(&mut self, indent: usize, text: &str) {
        self.0.push_str(&" ".repeat(indent));
        self.0.push_str(text);
        self.0.push('\n');
    }

    fn string(&mut self, indent: usize, key: &str, value: &str) {
        self.line(indent, &format!("{key}: {}", quote(value)));
    }

    fn list<'a>(&mut self, indent: usize, key: &str, items: impl IntoIterator<Item = &'a str>) {
        let mut items = items.into_iter().peekable();
        if items.peek().is_none() {
            return;
        }
        self.line(indent, &format!("{key}:"));
        for item in items {
            self.line(indent + 2, &format!("- {}", quote(item)));
        }
    }
}

/// `/etc/rancher/k3s/config.yaml`, or None without a `[kubernetes]` section.
/// Server-only keys are written for a server only (validation rejects them
/// on an agent).
pub fn k3s_config_yaml(config: &MachineConfig, facts: &NodeFacts) -> Option<String> {
    let k = config.kubernetes.as_ref()?;
    let server = k.role == KubernetesRole::Server;
    let mut y = Yaml::new();
    y.string(0, "data-dir", K3S_DATA_DIR);
    y.string(
        0,
        "container-runtime-endpoint",
        &format!("unix://{CONTAINERD_SOCKET}"),
    );
    if server {
        y.string(0, "write-kubeconfig-mode", "0600");
    }
    if let Some(t) = &k.token {
        y.string(0, "token", t.expose());
    }
    if let Some(s) = &k.server {
        y.string(0, "server", s);
    }
    if k.cluster_init {
        y.line(0, "cluster-init: true");
    }
    // Kubernetes node names are lowercase; the kubelet lowercases host names too.
    let name = k
        .node_name
        .clone()
        .unwrap_or_else(|| facts.hostname.to_ascii_lowercase());
    y.string(0, "node-name", &name);
    let node_ip = facts.addresses.first().map(|a| a.to_string());
    y.list(0, "node-ip", node_ip.as_deref());
    let labels: Vec<String> = k
        .node_labels
        .iter()
        .map(|(key, v)| format!("{key}={v}"))
        .collect();
    y.list(0, "node-label", labels.iter().map(String::as_str));
    y.list(0, "node-taint", k.node_taints.iter().map(String::as_str));
    if server {
        y.list(0, "tls-san", k.tls_san.iter().map(String::as_str));
        y.list(0, "disable", k.disable.iter().map(|d| d.as_str()));
        if let Some(b) = k.flannel_backend {
            y.string(0, "flannel-backend", b.as_str());
        }
    }
    y.list(0, "kubelet-arg", k.kubelet_args.iter().map(String::as_str));
    Some(y.0)
}

/// `/etc/rancher/k3s/registries.yaml`: the same registries as containerd's
/// hosts files, in k3s's terms. `configs` is keyed by the host contacted, so
/// a registry's credentials and TLS settings are listed under its own host
/// and under each of its mirrors' (the first registry, by name, wins a host
/// two share).
pub fn k3s_registries_yaml(config: &MachineConfig) -> String {
    let registries = &config.containerd.registries;
    let mut y = Yaml::new();
    let mirrored: Vec<(&String, &Registry)> = registries
        .iter()
        .filter(|(_, r)| !r.endpoints.is_empty())
        .collect();
    if mirrored.is_empty() {
        y.line(0, "mirrors: {}");
    } else {
        y.line(0, "mirrors:");
        for (name, r) in mirrored {
            y.line(2, &format!("{}:", quote(name)));
            y.list(4, "endpoint", r.endpoints.iter().map(String::as_str));
        }
    }
    let mut configs: BTreeMap<&str, (&str, &Registry)> = BTreeMap::new();
    for (name, r) in registries {
        let has_settings = r.password.is_some() || r.ca_cert.is_some() || r.insecure_skip_verify;
        if has_settings {
            let hosts =
                std::iter::once(name.as_str()).chain(r.endpoints.iter().map(|e| authority(e)));
            for host in hosts {
                configs.entry(host).or_insert((name, r));
            }
        }
    }
    if configs.is_empty() {
        y.line(0, "configs: {}");
        return y.0;
    }
    y.line(0, "configs:");
    for (host, (name, r)) in configs {
        y.line(2, &format!("{}:", quote(host)));
        if let (Some(u), Some(p)) = (&r.username, &r.password) {
            y.line(4, "auth:");
            y.string(6, "username", u);
            y.string(6, "password", p.expose());
        }
        if r.ca_cert.is_some() || r.insecure_skip_verify {
            y.line(4, "tls:");
            if r.ca_cert.is_some() {
                y.string(6, "ca_file", &ca_path(name));
            }
            if r.insecure_skip_verify {
                y.line(6, "insecure_skip_verify: true");
            }
        }
    }
    y.0
}

/// k3s's argv after the program name: the subcommand, the config file, then
/// `kubernetes.extra_args`. None without a `[kubernetes]` section.
pub fn k3s_argv(config: &MachineConfig) -> Option<Vec<String>> {
    let k = config.kubernetes.as_ref()?;
    let mut argv = vec![
        k.role.as_str().to_string(),
        "--config".to_string(),
        K3S_CONFIG_PATH.to_string(),
    ];
    argv.extend(k.extra_args.iter().cloned());
    Some(argv)
}
