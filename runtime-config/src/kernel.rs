//! What the kernel must provide before containerd and k3s start. There is no
//! `modprobe` on the node, so the kernel cannot load a module on demand (as
//! it would when flannel creates a vxlan link or iptables needs a match): the
//! agent loads all of these first.

/// Modules for overlayfs, pod networking (bridge, veth, flannel's vxlan and
/// wireguard backends), kube-proxy and the network policy controller
/// (iptables legacy and nft, the `xt_*` matches and targets they use, ipset).
/// Every one is a module (`=m`) in Debian's 6.1 cloud kernel
/// (linux-image-6.1.0-*-cloud-amd64, checked with `dpkg -c`); their
/// dependencies (nf_defrag_*, libcrc32c, …) come from modules.dep.
pub const REQUIRED_MODULES: &[&str] = &[
    "overlay",
    "bridge",
    "br_netfilter",
    "veth",
    "vxlan",
    "wireguard",
    "nf_conntrack",
    "nf_nat",
    "ip_tables",
    "iptable_filter",
    "iptable_nat",
    "iptable_mangle",
    "iptable_raw",
    "ip6_tables",
    "ip6table_filter",
    "ip6table_nat",
    "ip6table_mangle",
    "ip6table_raw",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "ipt_REJECT",
    "ip6t_REJECT",
    "xt_addrtype",
    "xt_comment",
    "xt_connmark",
    "xt_conntrack",
    "xt_limit",
    "xt_mark",
    "xt_multiport",
    "xt_nat",
    "xt_physdev",
    "xt_set",
    "xt_statistic",
    "xt_tcpudp",
    "xt_MASQUERADE",
    "xt_NFLOG",
    "xt_REDIRECT",
    "nfnetlink_log",
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_net",
];

/// Sysctls for a Kubernetes node, written after the modules are loaded (the
/// `net.bridge.*` keys exist only once br_netfilter is). The config's
/// `kernel.sysctls` are applied after these and win.
pub const REQUIRED_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    // Forwarding turns off accepting router advertisements on every link.
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    // Every pod's log tailing and every controller's file watch counts here;
    // the kernel's 128 instances run out on a busy node.
    ("fs.inotify.max_user_instances", "8192"),
    ("fs.inotify.max_user_watches", "524288"),
    // What the kubelet would otherwise set itself (and check with
    // --protect-kernel-defaults): restart on panic, so boot counting works.
    ("vm.overcommit_memory", "1"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_and_sysctls_are_listed_once_and_well_formed() {
        for (i, m) in REQUIRED_MODULES.iter().enumerate() {
            assert!(!REQUIRED_MODULES[..i].contains(m), "{m} twice");
            assert!(
                m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{m}"
            );
        }
        for (i, (k, v)) in REQUIRED_SYSCTLS.iter().enumerate() {
            assert!(
                !REQUIRED_SYSCTLS[..i].iter().any(|(o, _)| o == k),
                "{k} twice"
            );
            assert!(k.contains('.') && !v.is_empty(), "{k}");
        }
    }
}
