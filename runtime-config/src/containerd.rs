//! containerd 1.6: `config.toml` (version 2) and the `certs.d` hosts files.
//!
//! Key names follow containerd 1.6's docs/cri/config.md and docs/hosts.md;
//! containerd ignores keys it does not know, so the tests parse the output
//! back and check each key path.

use std::collections::BTreeMap;
use std::fmt::Write;

use caisson_config::{MachineConfig, Registry};

use crate::quote::quote;
use crate::{
    RenderedFile, CONTAINERD_HOSTS_DIR, CONTAINERD_ROOT, CONTAINERD_SOCKET, CONTAINERD_STATE,
    HEADER, K3S_CNI_BIN_DIR, K3S_CNI_CONF_DIR, PUBLIC_FILE_MODE, RUNC_PATH, SANDBOX_IMAGE,
};

const CRI: &str = "plugins.\"io.containerd.grpc.v1.cri\"";

/// `/etc/containerd/config.toml`. Mirrors and TLS settings live in the hosts
/// files (`registry.config_path`); containerd 1.6 refuses `registry.mirrors`
/// next to `config_path`, but still reads credentials from
/// `registry.configs."<host>".auth`, looked up by the host it contacts.
pub fn containerd_config(config: &MachineConfig) -> String {
    let mut s = String::from(HEADER);
    let _ = write!(
        s,
        r#"version = 2
root = {root}
state = {state}

[grpc]
  address = {socket}

[{CRI}]
  sandbox_image = {sandbox}

[{CRI}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{CRI}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

# No systemd on the node: runc and the kubelet both use cgroupfs.
[{CRI}.containerd.runtimes.runc.options]
  BinaryName = {runc}
  SystemdCgroup = false

[{CRI}.cni]
  bin_dir = {cni_bin}
  conf_dir = {cni_conf}

[{CRI}.registry]
  config_path = {hosts_dir}
"#,
        root = quote(CONTAINERD_ROOT),
        state = quote(CONTAINERD_STATE),
        socket = quote(CONTAINERD_SOCKET),
        sandbox = quote(SANDBOX_IMAGE),
        runc = quote(RUNC_PATH),
        cni_bin = quote(K3S_CNI_BIN_DIR),
        cni_conf = quote(K3S_CNI_CONF_DIR),
        hosts_dir = quote(CONTAINERD_HOSTS_DIR),
    );
    for (host, (username, password)) in credentials(config) {
        let _ = write!(
            s,
            "\n[{CRI}.registry.configs.{}.auth]\n  username = {}\n  password = {}\n",
            quote(host),
            quote(username),
            quote(password)
        );
    }
    s
}

/// Username and password for every host contacted with credentials: each
/// registry's own host, its upstream (`registry-1.docker.io` for
/// `docker.io`) and its mirrors. Validation made sure registries sharing a
/// host agree; the first (by registry name) wins regardless.
fn credentials(config: &MachineConfig) -> BTreeMap<&str, (&str, &str)> {
    let mut out = BTreeMap::new();
    for (name, r) in &config.containerd.registries {
        if let (Some(u), Some(p)) = (&r.username, &r.password) {
            for host in contacted_hosts(name, r) {
                out.entry(host).or_insert((u.as_str(), p.expose()));
            }
        }
    }
    out
}

/// The hosts containerd may contact for registry `name`, without repeats.
pub(crate) fn contacted_hosts<'a>(name: &'a str, r: &'a Registry) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    let candidates = [name, upstream_host(name)]
        .into_iter()
        .chain(r.endpoints.iter().map(|e| authority(e)));
    for h in candidates {
        if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

/// The registry behind image names starting with `name`.
pub(crate) fn upstream_url(name: &str) -> String {
    format!("https://{}", upstream_host(name))
}

fn upstream_host(name: &str) -> &str {
    // Docker Hub's images are named docker.io/… but served elsewhere.
    if name == "docker.io" {
        "registry-1.docker.io"
    } else {
        name
    }
}

/// `host[:port]` of a validated `http(s)://host[:port][/path]` URL.
pub(crate) fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split_once('/').map_or(rest, |(a, _)| a)
}

/// Where registry `name`'s CA bundle is written.
pub(crate) fn ca_path(name: &str) -> String {
    format!("{CONTAINERD_HOSTS_DIR}/{name}/ca.crt")
}

/// `/etc/containerd/certs.d/<registry>/hosts.toml` for every registry, and
/// its `ca.crt` when it has one. The mirrors come first, in order; the
/// registry itself (`server`) is the fallback. The CA and `skip_verify`
/// apply to the mirrors and to the registry alike.
pub fn registry_hosts(config: &MachineConfig) -> Vec<RenderedFile> {
    let mut out = Vec::new();
    for (name, r) in &config.containerd.registries {
        let tls = tls_lines(name, r);
        let mut s = String::from(HEADER);
        let _ = writeln!(s, "server = {}", quote(&upstream_url(name)));
        for line in &tls {
            let _ = writeln!(s, "{line}");
        }
        for e in &r.endpoints {
            let _ = write!(
                s,
                "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
                quote(e)
            );
            for line in &tls {
                let _ = writeln!(s, "  {line}");
            }
        }
        out.push(RenderedFile {
            path: format!("{CONTAINERD_HOSTS_DIR}/{name}/hosts.toml"),
            mode: PUBLIC_FILE_MODE,
            contents: s,
        });
        if let Some(ca) = &r.ca_cert {
            let mut pem = ca.trim_start().to_string();
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
            out.push(RenderedFile {
                path: ca_path(name),
                mode: PUBLIC_FILE_MODE,
                contents: pem,
            });
        }
    }
    out
}

fn tls_lines(name: &str, r: &Registry) -> Vec<String> {
    let mut lines = Vec::new();
    if r.ca_cert.is_some() {
        lines.push(format!("ca = {}", quote(&ca_path(name))));
    }
    if r.insecure_skip_verify {
        lines.push("skip_verify = true".to_string());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_io_is_served_by_registry_1() {
        assert_eq!(upstream_url("docker.io"), "https://registry-1.docker.io");
        assert_eq!(upstream_url("quay.io"), "https://quay.io");
        let r = Registry {
            endpoints: vec!["https://m.example:5000/v2/x".into()],
            ..Default::default()
        };
        assert_eq!(
            contacted_hosts("docker.io", &r),
            ["docker.io", "registry-1.docker.io", "m.example:5000"]
        );
        let r = Registry {
            endpoints: vec!["http://quay.io".into()],
            ..Default::default()
        };
        assert_eq!(contacted_hosts("quay.io", &r), ["quay.io"]);
    }
}
