//! `[upgrade]`, `[containerd]` and `[[containers]]`.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::VerifyingKey;

use super::{check_abs_path, check_host_port, check_hostname, has_control, map_key, Problems};
use crate::schema::{Container, Containerd, Mount, Registry, Upgrade};

const HEALTH_TIMEOUT_SECS: std::ops::RangeInclusive<u32> = 10..=3600;

/// Host directories a system container may bind-mount, read-write…
const MOUNTABLE: &[&str] = &["/var", "/run"];
/// …except these, which belong to the OS, containerd and k3s…
const NOT_MOUNTABLE: &[&str] = &[
    "/var/lib/containerd",
    "/var/lib/rancher",
    "/var/log/caisson",
    "/run/caisson",
    "/run/containerd",
];
/// …and these, read-only.
const MOUNTABLE_READ_ONLY: &[&str] = &["/etc", "/proc", "/sys"];

pub(super) fn upgrade(p: &mut Problems, u: &Upgrade) {
    if !HEALTH_TIMEOUT_SECS.contains(&u.health_timeout_secs) {
        p.add(
            "upgrade.health_timeout_secs",
            format!(
                "{} is out of range: expected {} to {} seconds",
                u.health_timeout_secs,
                HEALTH_TIMEOUT_SECS.start(),
                HEALTH_TIMEOUT_SECS.end()
            ),
        );
    }
    for (i, key) in u.trusted_keys.iter().enumerate() {
        if VerifyingKey::from_public_key_pem(key.trim()).is_err() {
            p.add(
                format!("upgrade.trusted_keys[{i}]"),
                "expected an Ed25519 public key in PEM (-----BEGIN PUBLIC KEY-----, as `openssl pkey -pubout` writes)",
            );
        }
    }
}

pub(super) fn containerd(p: &mut Problems, c: &Containerd) {
    // Credentials are looked up by the host contacted, so two registries that
    // share a mirror must agree on them.
    let mut credentials: BTreeMap<String, (&str, &Registry)> = BTreeMap::new();
    for (host, r) in &c.registries {
        let at = map_key("containerd.registries", host);
        if let Err(why) = check_host_port(host, false) {
            p.add(
                at.clone(),
                format!("{host:?} is not a registry host[:port]: {why}"),
            );
        }
        for (i, e) in r.endpoints.iter().enumerate() {
            if let Err(why) = endpoint_authority(e) {
                p.add(
                    format!("{at}.endpoints[{i}]"),
                    format!("{e:?}: expected an http:// or https:// URL ({why})"),
                );
            }
        }
        if let Some(ca) = &r.ca_cert {
            if let Err(why) = check_certificates(ca) {
                p.add(
                    format!("{at}.ca_cert"),
                    format!("expected PEM certificates: {why}"),
                );
            }
        }
        match (&r.username, &r.password) {
            (Some(_), None) => p.add(
                format!("{at}.password"),
                "`username` is set but `password` is missing",
            ),
            (None, Some(_)) => p.add(
                format!("{at}.username"),
                "`password` is set but `username` is missing",
            ),
            (Some(u), Some(_)) if u.is_empty() || has_control(u) => {
                p.add(format!("{at}.username"), "expected a non-empty user name")
            }
            (Some(_), Some(_)) => {
                let hosts = std::iter::once(host.as_str()).chain(
                    r.endpoints
                        .iter()
                        .filter_map(|e| endpoint_authority(e).ok()),
                );
                for h in hosts {
                    match credentials.get(h) {
                        Some((other, o)) if (&o.username, &o.password) != (&r.username, &r.password) => p.add(
                            at.clone(),
                            format!("{h:?} is also contacted for registry {other:?}, with other credentials"),
                        ),
                        _ => {
                            credentials.insert(h.to_string(), (host, r));
                        }
                    }
                }
            }
            (None, None) => {}
        }
        if let Some(pw) = &r.password {
            if has_control(pw.expose()) {
                p.add(
                    format!("{at}.password"),
                    "a password may not contain control characters",
                );
            }
        }
    }
}

/// `host[:port]` of an `http(s)://host[:port][/path]` URL.
fn endpoint_authority(url: &str) -> Result<&str, &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("the scheme must be http or https")?;
    if url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("no spaces");
    }
    if rest.contains(['?', '#', '@']) {
        return Err("no query, fragment or user part");
    }
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    check_host_port(authority, false)?;
    Ok(authority)
}

fn check_certificates(pem: &str) -> Result<(), String> {
    let mut n = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| format!("block {}: {e}", n + 1))?;
        n += 1;
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "block {n} is a {:?}, not a CERTIFICATE",
                block.label
            ));
        }
        block
            .parse_x509()
            .map_err(|e| format!("certificate {n} does not parse: {e}"))?;
    }
    if n == 0 {
        return Err("no -----BEGIN CERTIFICATE----- block".into());
    }
    Ok(())
}

pub(super) fn containers(p: &mut Problems, containers: &[Container]) {
    let mut names = BTreeSet::new();
    for (i, c) in containers.iter().enumerate() {
        container(p, &format!("containers[{i}]"), c, &mut names);
    }
}

fn container<'a>(p: &mut Problems, at: &str, c: &'a Container, names: &mut BTreeSet<&'a str>) {
    let label_ok = check_hostname(&c.name).is_ok()
        && !c.name.contains('.')
        && !c.name.bytes().any(|b| b.is_ascii_uppercase());
    if !label_ok {
        p.add(
            format!("{at}.name"),
            format!(
                "{:?} is not a valid name: 1-63 lowercase letters, digits and '-'",
                c.name
            ),
        );
    } else if !names.insert(&c.name) {
        p.add(
            format!("{at}.name"),
            format!("container {:?} is defined twice", c.name),
        );
    }
    if c.image.is_empty()
        || c.image
            .contains(|ch: char| ch.is_whitespace() || ch.is_control())
        || c.image.contains("://")
    {
        p.add(
            format!("{at}.image"),
            format!(
                "{:?}: expected an image reference like docker.io/library/busybox:1.36",
                c.image
            ),
        );
    }
    if let Some(a) = &c.archive {
        if a.is_empty() || a == "." || a == ".." || a.contains(['/', '\0']) {
            p.add(
                format!("{at}.archive"),
                format!("{a:?}: expected a file name in /usr/lib/caisson/images/, without '/'"),
            );
        }
    }
    for (j, a) in c.args.iter().enumerate() {
        if a.contains('\0') {
            p.add(format!("{at}.args[{j}]"), "an argument may not contain NUL");
        }
    }
    for (k, v) in &c.env {
        let name_ok = k
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            p.add(
                map_key(&format!("{at}.env"), k),
                format!("{k:?} is not a variable name like HTTP_PROXY"),
            );
        } else if v.contains('\0') {
            p.add(
                map_key(&format!("{at}.env"), k),
                "a value may not contain NUL",
            );
        }
    }
    if c.memory_max_mib == Some(0) {
        p.add(
            format!("{at}.memory_max_mib"),
            "0 leaves no memory: expected at least 1",
        );
    }
    let mut destinations = BTreeSet::new();
    for (j, m) in c.mounts.iter().enumerate() {
        mount(p, &format!("{at}.mounts[{j}]"), m);
        if !destinations.insert(&m.destination) {
            p.add(
                format!("{at}.mounts[{j}].destination"),
                format!("{:?} is mounted twice", m.destination),
            );
        }
    }
}

fn mount(p: &mut Problems, at: &str, m: &Mount) {
    if let Err(why) = check_abs_path(&m.destination) {
        p.add(
            format!("{at}.destination"),
            format!("{:?}: {why}", m.destination),
        );
    }
    if let Err(why) = check_abs_path(&m.source) {
        p.add(format!("{at}.source"), format!("{:?}: {why}", m.source));
    } else if !source_allowed(&m.source, m.readonly) {
        p.add(
            format!("{at}.source"),
            format!(
                "{:?} may not be mounted: allowed are paths under /var/ and /run/ (except {}) and, with readonly = true, /etc, /proc and /sys",
                m.source,
                NOT_MOUNTABLE.join(", ")
            ),
        );
    }
}

/// `path` is `dir` or below it.
fn within(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `source` is normalized and absolute.
fn source_allowed(source: &str, readonly: bool) -> bool {
    // Neither inside a protected directory nor a parent of one.
    if NOT_MOUNTABLE
        .iter()
        .any(|d| within(source, d) || within(d, source))
    {
        return false;
    }
    let strictly_below = |d: &&str| within(source, d) && source != *d;
    MOUNTABLE.iter().any(strictly_below)
        || (readonly && MOUNTABLE_READ_ONLY.iter().any(|d| within(source, d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_sources_stay_out_of_the_os_and_runtimes() {
        assert!(source_allowed("/var/lib/node-exporter", false));
        assert!(source_allowed("/run/my-app", false));
        assert!(source_allowed("/etc/ssl", true));
        assert!(source_allowed("/proc", true));
        assert!(!source_allowed("/etc/ssl", false));
        assert!(!source_allowed("/sys", false));
        assert!(!source_allowed("/var", false));
        assert!(
            !source_allowed("/var/lib", true),
            "a parent of /var/lib/containerd"
        );
        assert!(!source_allowed("/var/lib/rancher/k3s", true));
        assert!(!source_allowed("/var/log/caisson", true));
        assert!(!source_allowed("/run/caisson/state", true));
        assert!(!source_allowed("/run/containerd", false));
        assert!(!source_allowed("/run", false));
        assert!(!source_allowed("/usr", true));
        assert!(!source_allowed("/", true));
        assert!(
            source_allowed("/var/lib/containerd-other", false),
            "a sibling, not the directory"
        );
    }

    #[test]
    fn endpoints_are_http_urls_with_a_host() {
        assert_eq!(
            endpoint_authority("https://mirror.example:5000"),
            Ok("mirror.example:5000")
        );
        assert_eq!(
            endpoint_authority("http://10.0.0.5/v2/proxy"),
            Ok("10.0.0.5")
        );
        assert_eq!(
            endpoint_authority("https://[2001:db8::1]:5000"),
            Ok("[2001:db8::1]:5000")
        );
        assert!(endpoint_authority("ftp://mirror.example").is_err());
        assert!(endpoint_authority("https://user@mirror.example").is_err());
        assert!(endpoint_authority("https://").is_err());
    }
}
