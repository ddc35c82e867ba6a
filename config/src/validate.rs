//! Checks that serde cannot express: values that parse but make no sense.
//! Every problem carries the key path; `crate::parse` adds the position.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::schema::{Api, Interface, Kernel, MachineConfig, Network};
use crate::CONFIG_VERSION;

mod install;
mod kubernetes;
mod runtime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

pub fn validate(c: &MachineConfig) -> Vec<Problem> {
    let mut p = Problems(Vec::new());
    if c.version != CONFIG_VERSION {
        p.add(
            "version",
            format!(
                "unsupported version {}: expected {CONFIG_VERSION}",
                c.version
            ),
        );
    }
    if let Some(h) = &c.machine.hostname {
        if let Err(why) = check_hostname(h) {
            p.add(
                "machine.hostname",
                format!("{h:?} is not a valid host name: {why}"),
            );
        }
    }
    network(&mut p, &c.network);
    for (i, server) in c.time.ntp_servers.iter().enumerate() {
        if server.trim().is_empty() || server.contains(char::is_whitespace) {
            p.add(
                format!("time.ntp_servers[{i}]"),
                format!("{server:?}: expected a host name or IP address"),
            );
        }
    }
    kernel(&mut p, &c.kernel);
    api(&mut p, &c.api);
    if let Some(u) = &c.upgrade {
        runtime::upgrade(&mut p, u);
    }
    if let Some(k) = &c.kubernetes {
        kubernetes::kubernetes(&mut p, k);
    }
    runtime::containerd(&mut p, &c.containerd);
    runtime::containers(&mut p, &c.containers);
    if let Some(i) = &c.install {
        install::install(&mut p, i);
    }
    p.0
}

/// The key path of map entry `key` under `path`: always quoted, as a key may
/// contain dots (`kubernetes.node_labels."topology.kubernetes.io/zone"`).
fn map_key(path: &str, key: &str) -> String {
    format!("{path}.\"{key}\"")
}

/// An IPv4 or IPv6 address, or an RFC 1123 host name.
fn is_host(h: &str) -> bool {
    h.parse::<IpAddr>().is_ok() || check_hostname(h).is_ok()
}

/// `host[:port]` with `[v6]:port` for IPv6; the port, when present, 1-65535.
fn check_host_port(hp: &str, port_required: bool) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ']'")?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("the part in [] is not an IPv6 address");
        }
        match after {
            "" => (None, None),
            p => (
                None,
                Some(
                    p.strip_prefix(':')
                        .ok_or("expected ':' and a port after ']'")?,
                ),
            ),
        }
    } else {
        match hp.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(hp), None),
        }
    };
    if let Some(h) = host {
        if h.parse::<std::net::Ipv4Addr>().is_err() && check_hostname(h).is_err() {
            return Err("the host is neither a host name nor an IPv4 address");
        }
    }
    match port {
        Some(p) if !matches!(p.parse::<u16>(), Ok(n) if n > 0) => {
            Err("the port must be 1 to 65535")
        }
        None if port_required => Err("a port is required"),
        _ => Ok(()),
    }
}

/// An absolute path with no empty, `.` or `..` components.
fn check_abs_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("expected an absolute path");
    }
    if path.contains('\0') {
        return Err("a path may not contain NUL");
    }
    if path == "/" {
        return Ok(());
    }
    if path[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("expected a normalized path: no '//', '.', '..' or trailing '/'");
    }
    Ok(())
}

/// RFC 1123 host name: dot-separated labels of letters, digits and hyphens.
pub fn check_hostname(h: &str) -> Result<(), &'static str> {
    if h.is_empty() {
        return Err("it is empty");
    }
    if h.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    for label in h.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with '-'");
        }
    }
    Ok(())
}

fn check_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn network(p: &mut Problems, n: &Network) {
    let mut selectors = BTreeSet::new();
    for (i, iface) in n.interfaces.iter().enumerate() {
        interface(
            p,
            &format!("network.interfaces[{i}]"),
            iface,
            &mut selectors,
        );
    }
    for (i, d) in n.search.iter().enumerate() {
        if check_hostname(d).is_err() {
            p.add(
                format!("network.search[{i}]"),
                format!("{d:?} is not a valid domain name"),
            );
        }
    }
    for (i, h) in n.hosts.iter().enumerate() {
        if h.names.is_empty() {
            p.add(
                format!("network.hosts[{i}].names"),
                "expected at least one name",
            );
        }
        for (j, name) in h.names.iter().enumerate() {
            if check_hostname(name).is_err() {
                p.add(
                    format!("network.hosts[{i}].names[{j}]"),
                    format!("{name:?} is not a valid host name"),
                );
            }
        }
    }
}

fn interface(p: &mut Problems, at: &str, iface: &Interface, selectors: &mut BTreeSet<String>) {
    match (&iface.name, &iface.mac) {
        (Some(_), Some(_)) => p.add(at, "set either `name` or `mac`, not both"),
        (None, None) => p.add(at, "expected `name` or `mac` to select the link"),
        (Some(name), None) => {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) {
                p.add(format!("{at}.name"), format!("{name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"));
            }
            if !selectors.insert(format!("name:{name}")) {
                p.add(
                    format!("{at}.name"),
                    format!("interface {name:?} is configured twice"),
                );
            }
        }
        (None, Some(mac)) => {
            if !check_mac(mac) {
                p.add(
                    format!("{at}.mac"),
                    format!("{mac:?} is not a MAC address like 52:54:00:12:34:56"),
                );
            }
            if !selectors.insert(format!("mac:{}", mac.to_ascii_lowercase())) {
                p.add(
                    format!("{at}.mac"),
                    format!("interface {mac:?} is configured twice"),
                );
            }
        }
    }
    if let Some(mtu) = iface.mtu {
        let min = if iface.addresses.iter().any(|a| a.addr().is_ipv6()) {
            1280
        } else {
            68
        };
        if !(min..=65535).contains(&mtu) {
            p.add(
                format!("{at}.mtu"),
                format!("{mtu} is out of range: expected {min} to 65535"),
            );
        }
    }
    let (v4, v6): (Vec<&IpAddr>, Vec<&IpAddr>) = iface.gateways.iter().partition(|g| g.is_ipv4());
    if v4.len() > 1 || v6.len() > 1 {
        p.add(
            format!("{at}.gateways"),
            "expected at most one IPv4 and one IPv6 gateway",
        );
    }
    for (j, r) in iface.routes.iter().enumerate() {
        if r.to.addr().is_ipv4() != r.via.is_ipv4() {
            p.add(
                format!("{at}.routes[{j}].via"),
                format!("{} and {} are of different address families", r.to, r.via),
            );
        }
    }
}

fn kernel(p: &mut Problems, k: &Kernel) {
    for (i, m) in k.modules.iter().enumerate() {
        if m.is_empty()
            || !m
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            p.add(
                format!("kernel.modules[{i}]"),
                format!("{m:?} is not a module name"),
            );
        }
    }
    for key in k.sysctls.keys() {
        let ok = !key.is_empty()
            && !key.contains("..")
            && !key.starts_with(['.', '/'])
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'));
        if !ok {
            p.add(
                format!("kernel.sysctls.\"{key}\""),
                format!("{key:?} is not a sysctl name like net.ipv4.ip_forward"),
            );
        }
    }
    for (i, a) in k.args.iter().enumerate() {
        if a.is_empty() || a.contains(char::is_whitespace) {
            p.add(
                format!("kernel.args[{i}]"),
                format!("{a:?}: expected one argument without spaces"),
            );
        } else if a.starts_with("caisson.") {
            p.add(
                format!("kernel.args[{i}]"),
                format!("{a:?}: caisson.* arguments are set by the OS and may not be overridden"),
            );
        }
    }
}

fn api(p: &mut Problems, a: &Api) {
    if a.port == 0 {
        p.add("api.port", "0 is not a usable port");
    }
    if !is_pem(&a.ca_cert, "CERTIFICATE") {
        p.add(
            "api.ca_cert",
            "expected a PEM certificate (-----BEGIN CERTIFICATE-----)",
        );
    }
    match (&a.ca_key, &a.node_cert, &a.node_key) {
        (Some(_), _, _) | (None, Some(_), Some(_)) => {}
        (None, None, _) => p.add(
            "api",
            "expected `ca_key`, or `node_cert` with `node_key`, so the node can serve TLS",
        ),
        (None, Some(_), None) => p.add("api.node_key", "`node_cert` is set but its key is missing"),
    }
    if let Some(k) = &a.ca_key {
        if !is_pem(k.expose(), "PRIVATE KEY") {
            p.add("api.ca_key", "expected a PEM private key");
        }
    }
    if let Some(c) = &a.node_cert {
        if !is_pem(c, "CERTIFICATE") {
            p.add("api.node_cert", "expected a PEM certificate");
        }
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn is_pem(text: &str, kind: &str) -> bool {
    let t = text.trim();
    t.starts_with("-----BEGIN ") && t.contains(&format!("{kind}-----")) && t.ends_with("-----")
}
