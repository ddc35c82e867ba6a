//! `[kubernetes]`: what k3s would refuse, or silently misread, caught early.

use super::{check_host_port, check_hostname, has_control, is_host, map_key, Problems};
use crate::schema::{Kubernetes, KubernetesRole};

/// k3s flags the OS sets itself, or that have a key of their own.
const RESERVED_FLAGS: &[(&str, &str)] = &[
    ("config", "is set by Caisson"),
    ("data-dir", "is set by Caisson"),
    ("container-runtime-endpoint", "is set by Caisson"),
    ("token", "has its own key, `token`"),
    ("server", "has its own key, `server`"),
    ("cluster-init", "has its own key, `cluster_init`"),
    ("node-name", "has its own key, `node_name`"),
];

const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

pub(super) fn kubernetes(p: &mut Problems, k: &Kubernetes) {
    let at = "kubernetes";
    let is_server = k.role == KubernetesRole::Server;
    match (k.role, &k.server, &k.token) {
        (KubernetesRole::Agent, None, _) => p.add(
            format!("{at}.server"),
            "an agent needs `server`, the URL of a server to join",
        ),
        (KubernetesRole::Agent, Some(_), None) => {
            p.add(format!("{at}.token"), "an agent needs the cluster `token`")
        }
        (KubernetesRole::Server, Some(_), None) => p.add(
            format!("{at}.token"),
            "a server that joins `server` needs the cluster `token`",
        ),
        _ => {}
    }
    if let Some(url) = &k.server {
        if let Err(why) = check_server_url(url) {
            p.add(
                format!("{at}.server"),
                format!("{url:?}: expected https://host:port ({why})"),
            );
        }
    }
    if let Some(t) = &k.token {
        if t.expose().is_empty()
            || t.expose()
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            p.add(
                format!("{at}.token"),
                "expected a non-empty token without spaces",
            );
        }
    }
    if k.cluster_init {
        if !is_server {
            p.add(
                format!("{at}.cluster_init"),
                "only a server can start a cluster",
            );
        } else if k.server.is_some() {
            p.add(
                format!("{at}.cluster_init"),
                "`cluster_init` starts a new cluster; a server with `server` joins one",
            );
        }
    }
    if !is_server {
        for (key, set) in [
            ("tls_san", !k.tls_san.is_empty()),
            ("disable", !k.disable.is_empty()),
            ("flannel_backend", k.flannel_backend.is_some()),
        ] {
            if set {
                p.add(format!("{at}.{key}"), "applies to role \"server\" only");
            }
        }
    }
    if let Some(n) = &k.node_name {
        if check_hostname(n).is_err() || n.bytes().any(|b| b.is_ascii_uppercase()) {
            p.add(
                format!("{at}.node_name"),
                format!("{n:?} is not a valid node name: lowercase letters, digits, '-' and '.'"),
            );
        }
    }
    for (key, value) in &k.node_labels {
        if let Err(why) = check_qualified_name(key) {
            p.add(
                map_key(&format!("{at}.node_labels"), key),
                format!("{key:?} is not a label key: {why}"),
            );
        } else if let Err(why) = check_label_value(value) {
            p.add(
                map_key(&format!("{at}.node_labels"), key),
                format!("{value:?} is not a label value: {why}"),
            );
        }
    }
    for (i, t) in k.node_taints.iter().enumerate() {
        if let Err(why) = check_taint(t) {
            p.add(
                format!("{at}.node_taints[{i}]"),
                format!("{t:?}: expected key[=value]:Effect ({why})"),
            );
        }
    }
    for (i, san) in k.tls_san.iter().enumerate() {
        if !is_host(san) {
            p.add(
                format!("{at}.tls_san[{i}]"),
                format!("{san:?} is neither a host name nor an IP address"),
            );
        }
    }
    for (i, d) in k.disable.iter().enumerate() {
        if k.disable[..i].contains(d) {
            p.add(
                format!("{at}.disable[{i}]"),
                format!("{:?} is listed twice", d.as_str()),
            );
        }
    }
    for (i, a) in k.extra_args.iter().enumerate() {
        if let Err(why) = check_extra_arg(a) {
            p.add(format!("{at}.extra_args[{i}]"), format!("{a:?}: {why}"));
        }
    }
    for (i, a) in k.kubelet_args.iter().enumerate() {
        let ok = a.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && !name.starts_with('-')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !ok || has_control(a) {
            p.add(
                format!("{at}.kubelet_args[{i}]"),
                format!("{a:?}: expected name=value, without leading dashes"),
            );
        }
    }
}

fn check_server_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .ok_or("the scheme must be https")?;
    if rest.contains(['/', '?', '#', '@']) {
        return Err("no path, query or user part");
    }
    check_host_port(rest, true)
}

fn check_extra_arg(a: &str) -> Result<(), String> {
    let Some(flag) = a.strip_prefix("--") else {
        return Err("expected a long option starting with --".into());
    };
    if flag.is_empty() || has_control(a) {
        return Err("expected a long option starting with --".into());
    }
    let name = flag.split_once('=').map_or(flag, |(n, _)| n);
    match RESERVED_FLAGS.iter().find(|(r, _)| *r == name) {
        Some((_, why)) => Err(format!("--{name} {why}")),
        None => Ok(()),
    }
}

/// A Kubernetes label or taint key: `[prefix/]name`, the prefix a lowercase
/// DNS subdomain of at most 253 characters.
pub(super) fn check_qualified_name(key: &str) -> Result<(), &'static str> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.len() > 253
                || check_hostname(prefix).is_err()
                || prefix.bytes().any(|b| b.is_ascii_uppercase())
            {
                return Err("the prefix before '/' must be a lowercase DNS subdomain");
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("the name part is empty");
    }
    check_label_value(name)
}

/// A label value: at most 63 of `[A-Za-z0-9._-]`, starting and ending with a
/// letter or digit; or empty.
pub(super) fn check_label_value(v: &str) -> Result<(), &'static str> {
    if v.len() > 63 {
        return Err("at most 63 characters");
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only letters, digits, '.', '_' and '-' are allowed");
    }
    let (first, last) = (v.bytes().next(), v.bytes().last());
    if [first, last]
        .into_iter()
        .flatten()
        .any(|b| !b.is_ascii_alphanumeric())
    {
        return Err("it must start and end with a letter or digit");
    }
    Ok(())
}

fn check_taint(t: &str) -> Result<(), &'static str> {
    let (kv, effect) = t.rsplit_once(':').ok_or("no ':Effect'")?;
    if !TAINT_EFFECTS.contains(&effect) {
        return Err("the effect must be NoSchedule, PreferNoSchedule or NoExecute");
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    check_qualified_name(key)?;
    check_label_value(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_follow_kubernetes_syntax() {
        assert!(check_qualified_name("topology.kubernetes.io/zone").is_ok());
        assert!(check_qualified_name("app").is_ok());
        assert!(check_qualified_name("Example.com/app").is_err());
        assert!(check_qualified_name("bad key").is_err());
        assert!(check_qualified_name("a/").is_err());
        assert!(check_qualified_name("-a").is_err());
        assert!(check_qualified_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn taints_need_an_effect() {
        assert!(check_taint("dedicated=infra:NoSchedule").is_ok());
        assert!(check_taint("node-role.kubernetes.io/control-plane:NoExecute").is_ok());
        assert!(check_taint("dedicated=infra").is_err());
        assert!(check_taint("dedicated=infra:Sometimes").is_err());
        assert!(check_taint("=x:NoSchedule").is_err());
    }

    #[test]
    fn server_urls_are_https_host_port() {
        assert!(check_server_url("https://10.0.0.10:6443").is_ok());
        assert!(check_server_url("https://[2001:db8::1]:6443").is_ok());
        assert!(check_server_url("https://cp.example:6443").is_ok());
        assert!(check_server_url("http://10.0.0.10:6443").is_err());
        assert!(check_server_url("https://10.0.0.10").is_err());
        assert!(check_server_url("https://10.0.0.10:6443/").is_err());
        assert!(check_server_url("https://10.0.0.10:0").is_err());
    }
}
