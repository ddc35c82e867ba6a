//! What applying a config changes: the steps that take effect live, in
//! order, and what only a reboot makes true. Pure: computed from the old
//! and new configs alone, so `--dry-run`, `no-reboot`'s refusal and the
//! real apply all agree.

use std::collections::BTreeSet;

use caisson_config::MachineConfig;

/// One thing done to the running node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveStep {
    /// sethostname, /etc/hostname and /etc/hosts (which also carries the
    /// config's extra host entries).
    Hostname,
    /// Write these sysctls (keys of `kernel.sysctls`).
    Sysctls(Vec<String>),
    /// Load these modules (with their dependencies).
    Modules(Vec<String>),
    /// Links, addresses, routes, resolv.conf.
    Network,
    /// Re-issue the server certificate and restart the API listener.
    Api,
    /// Start containerd, k3s and the system containers: once, with the
    /// node's first config (later changes to them need a reboot).
    Services,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyPlan {
    /// In the order they run.
    pub live: Vec<LiveStep>,
    /// Sentences naming the key and why it waits for a reboot.
    pub needs_reboot: Vec<String>,
    /// Changes that are saved but have nothing to act on yet.
    pub notes: Vec<String>,
}

/// How the kernel arguments' reboot is explained before the apply writes
/// them (dry runs, `no-reboot`'s refusal, try mode until confirmed).
pub const KERNEL_ARGS_LATER: &str =
    "written to the running slot's boot entry when the config is saved";

/// The steps from `old` (None: maintenance mode, nothing applied) to `new`.
pub fn plan(old: Option<&MachineConfig>, new: &MachineConfig) -> ApplyPlan {
    let mut p = ApplyPlan::default();
    let old_hostname = old.and_then(|o| o.machine.hostname.as_ref());
    let old_hosts = old.map(|o| &o.network.hosts);
    if old.is_none()
        || old_hostname != new.machine.hostname.as_ref()
        || old_hosts != Some(&new.network.hosts)
    {
        p.live.push(LiveStep::Hostname);
    }

    let sysctls: Vec<String> = new
        .kernel
        .sysctls
        .iter()
        .filter(|(k, v)| old.and_then(|o| o.kernel.sysctls.get(*k)) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    if !sysctls.is_empty() {
        p.live.push(LiveStep::Sysctls(sysctls));
    }
    if let Some(o) = old {
        for key in o.kernel.sysctls.keys() {
            if !new.kernel.sysctls.contains_key(key) {
                p.needs_reboot.push(format!(
                    "kernel.sysctls.\"{key}\": removed; the running value stays until a reboot"
                ));
            }
        }
    }

    let old_modules: BTreeSet<&String> = old
        .map(|o| o.kernel.modules.iter().collect())
        .unwrap_or_default();
    let new_modules: BTreeSet<&String> = new.kernel.modules.iter().collect();
    let load: Vec<String> = new
        .kernel
        .modules
        .iter()
        .filter(|m| !old_modules.contains(m))
        .cloned()
        .collect();
    if !load.is_empty() {
        p.live.push(LiveStep::Modules(load));
    }
    for gone in old_modules.difference(&new_modules) {
        p.needs_reboot.push(format!(
            "kernel.modules: {gone} removed; it stays loaded until a reboot"
        ));
    }

    let old_args: &[String] = old.map(|o| o.kernel.args.as_slice()).unwrap_or(&[]);
    if old_args != new.kernel.args.as_slice() {
        p.needs_reboot.push(format!(
            "kernel.args: [{}] -> [{}] take effect at boot ({KERNEL_ARGS_LATER})",
            old_args.join(" "),
            new.kernel.args.join(" ")
        ));
    }

    if old.map(|o| &o.network) != Some(&new.network) {
        p.live.push(LiveStep::Network);
    }
    if old.map(|o| &o.time) != Some(&new.time) && !new.time.ntp_servers.is_empty() {
        p.notes.push(
            "time.ntp_servers: saved; the node has no NTP client yet (a later issue)".to_string(),
        );
    }
    // The certificate names the host: a new name needs a new certificate.
    let hostname_changed = p.live.contains(&LiveStep::Hostname) && old.is_some();
    if old.map(|o| &o.api) != Some(&new.api) || hostname_changed {
        p.live.push(LiveStep::Api);
    }
    match old {
        None => p.live.push(LiveStep::Services),
        Some(o) => {
            if o.kubernetes != new.kubernetes {
                p.needs_reboot
                    .push("kubernetes: k3s starts with the new settings at the next boot".to_string());
            }
            if o.containerd != new.containerd {
                p.needs_reboot.push(
                    "containerd.registries: containerd and k3s read the new registries at the next boot".to_string(),
                );
            }
            if o.containers != new.containers {
                p.needs_reboot
                    .push("containers: the system containers change at the next boot".to_string());
            }
        }
    }
    p
}

impl ApplyPlan {
    /// What the live steps do, for the apply response and the console.
    pub fn describe(step: &LiveStep, new: &MachineConfig, hostname: &str) -> Vec<String> {
        match step {
            LiveStep::Hostname => vec![format!("machine.hostname: {hostname}")],
            LiveStep::Sysctls(keys) => keys
                .iter()
                .map(|k| {
                    let v = new
                        .kernel
                        .sysctls
                        .get(k)
                        .map(|v| v.render())
                        .unwrap_or_default();
                    format!("kernel.sysctls.\"{k}\" = {v}")
                })
                .collect(),
            LiveStep::Modules(names) => names
                .iter()
                .map(|m| format!("kernel.modules: {m} loaded"))
                .collect(),
            LiveStep::Network => vec!["network: links, addresses and routes".to_string()],
            LiveStep::Api => {
                vec![format!(
                    "api: server certificate re-issued; listener restarted on port {}",
                    new.api.port
                )]
            }
            LiveStep::Services => vec!["services: containerd, k3s and system containers started".to_string()],
        }
    }

    /// Everything, as "needs a reboot" sentences: what `staged` reports.
    pub fn all_at_next_boot(&self, new: &MachineConfig, hostname: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .live
            .iter()
            .flat_map(|s| ApplyPlan::describe(s, new, hostname))
            .map(|d| format!("{d} (staged: at the next boot)"))
            .collect();
        out.extend(self.needs_reboot.iter().cloned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caisson_config::{Api, HostEntry, SysctlValue};

    fn base() -> MachineConfig {
        MachineConfig {
            version: 1,
            machine: Default::default(),
            network: Default::default(),
            time: Default::default(),
            kernel: Default::default(),
            api: Api {
                port: 50443,
                ca_cert: "ca".into(),
                ca_key: None,
                node_cert: None,
                node_key: None,
            },
            upgrade: None,
            kubernetes: None,
            containerd: Default::default(),
            containers: Vec::new(),
            install: None,
        }
    }

    #[test]
    fn the_first_config_applies_everything_live_except_kernel_arguments() {
        let mut new = base();
        new.machine.hostname = Some("node-1".into());
        new.kernel
            .sysctls
            .insert("net.ipv4.ip_forward".into(), SysctlValue::Int(1));
        new.kernel.modules = vec!["br_netfilter".into()];
        new.kernel.args = vec!["mitigations=off".into()];
        let p = plan(None, &new);
        assert_eq!(
            p.live,
            vec![
                LiveStep::Hostname,
                LiveStep::Sysctls(vec!["net.ipv4.ip_forward".into()]),
                LiveStep::Modules(vec!["br_netfilter".into()]),
                LiveStep::Network,
                LiveStep::Api,
                LiveStep::Services,
            ]
        );
        assert_eq!(p.needs_reboot.len(), 1);
        assert!(p.needs_reboot[0]
            .starts_with("kernel.args: [] -> [mitigations=off] take effect at boot"));
        assert!(p.needs_reboot[0].contains("boot entry"));
    }

    #[test]
    fn the_same_config_again_changes_nothing() {
        let mut c = base();
        c.machine.hostname = Some("node-1".into());
        c.kernel
            .sysctls
            .insert("vm.swappiness".into(), SysctlValue::Text("10".into()));
        assert_eq!(plan(Some(&c), &c), ApplyPlan::default());
    }

    #[test]
    fn hostname_and_sysctl_changes_are_live_and_renew_the_certificate() {
        let old = base();
        let mut new = base();
        new.machine.hostname = Some("node-2".into());
        new.kernel
            .sysctls
            .insert("vm.swappiness".into(), SysctlValue::Int(10));
        let p = plan(Some(&old), &new);
        assert_eq!(
            p.live,
            vec![
                LiveStep::Hostname,
                LiveStep::Sysctls(vec!["vm.swappiness".into()]),
                LiveStep::Api
            ]
        );
        assert!(p.needs_reboot.is_empty());
        let said = ApplyPlan::describe(&p.live[1], &new, "node-2");
        assert_eq!(said, ["kernel.sysctls.\"vm.swappiness\" = 10"]);
    }

    #[test]
    fn removals_and_kernel_arguments_need_a_reboot() {
        let mut old = base();
        old.kernel
            .sysctls
            .insert("vm.swappiness".into(), SysctlValue::Int(10));
        old.kernel.modules = vec!["dummy".into()];
        old.kernel.args = vec!["quiet".into()];
        let new = base();
        let p = plan(Some(&old), &new);
        assert!(p.live.is_empty(), "{:?}", p.live);
        assert_eq!(p.needs_reboot.len(), 3, "{:?}", p.needs_reboot);
        assert!(p.needs_reboot[0].starts_with("kernel.sysctls.\"vm.swappiness\": removed"));
        assert!(p.needs_reboot[1].starts_with("kernel.modules: dummy removed"));
        assert!(p.needs_reboot[2].starts_with("kernel.args: [quiet] -> []"));
    }

    #[test]
    fn extra_hosts_rewrite_etc_hosts_and_network_and_api_changes_are_live() {
        let old = base();
        let mut new = base();
        new.network.hosts = vec![HostEntry {
            ip: "10.0.0.9".parse().unwrap(),
            names: vec!["registry".into()],
        }];
        new.api.port = 50444;
        let p = plan(Some(&old), &new);
        assert_eq!(
            p.live,
            vec![LiveStep::Hostname, LiveStep::Network, LiveStep::Api]
        );
    }

    #[test]
    fn ntp_servers_are_saved_with_a_note() {
        let old = base();
        let mut new = base();
        new.time.ntp_servers = vec!["pool.ntp.org".into()];
        let p = plan(Some(&old), &new);
        assert!(p.live.is_empty() && p.needs_reboot.is_empty());
        assert_eq!(p.notes.len(), 1);
    }

    #[test]
    fn staged_reports_every_change_as_waiting_for_the_next_boot() {
        let mut new = base();
        new.kernel.args = vec!["quiet".into()];
        let p = plan(Some(&base()), &new);
        let all = p.all_at_next_boot(&new, "n");
        assert_eq!(all.len(), 1);
        let p = plan(None, &new);
        let all = p.all_at_next_boot(&new, "n");
        assert!(all[0].starts_with("machine.hostname: n (staged"), "{all:?}");
        assert!(all.last().unwrap().starts_with("kernel.args"));
    }
}

#[cfg(test)]
mod runtime_tests {
    use super::*;

    #[test]
    fn later_changes_to_kubernetes_registries_or_containers_wait_for_a_reboot() {
        let old: MachineConfig = toml::from_str("version = 1\n[api]\nca_cert = \"ca\"\n").unwrap();
        let mut new = old.clone();
        new.containers.push(caisson_config::Container {
            name: "exporter".into(),
            image: "localhost/exporter:1".into(),
            archive: None,
            args: vec![],
            env: Default::default(),
            restart: Default::default(),
            memory_max_mib: None,
            mounts: vec![],
        });
        let p = plan(Some(&old), &new);
        assert!(!p.live.contains(&LiveStep::Services), "{p:?}");
        assert!(p.needs_reboot.iter().any(|r| r.starts_with("containers:")), "{p:?}");
        assert!(plan(Some(&new), &new).needs_reboot.is_empty());
    }
}
