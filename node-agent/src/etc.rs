//! The generated /etc. It is a tmpfs filled at every boot: nothing in it
//! survives a reboot, so nothing can drift from what the image and the
//! machine config say.

use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::identity::MachineId;

#[derive(Debug, Error)]
#[error("write {path}: {source}")]
pub struct EtcError {
    path: PathBuf,
    source: io::Error,
}

/// The /etc every process may rely on from the start.
pub fn populate(etc: &Path, machine_id: &MachineId) -> Result<(), EtcError> {
    link(etc, "os-release", "../usr/lib/os-release")?;
    // Mount tools and container runtimes read the mount table here.
    link(etc, "mtab", "../proc/self/mounts")?;
    write(etc, "machine-id", &format!("{machine_id}\n"), 0o444)?;
    // Empty until networking is configured: resolvers then fall back to
    // nothing rather than to a stale file.
    write(etc, "resolv.conf", "", 0o644)
}

/// /etc/hostname and /etc/hosts for `hostname`, plus the config's extra
/// host entries.
pub fn write_hostname(
    etc: &Path,
    hostname: &str,
    extra_hosts: &[(IpAddr, Vec<String>)],
) -> Result<(), EtcError> {
    write(etc, "hostname", &format!("{hostname}\n"), 0o644)?;
    let hosts = caisson_net::render::hosts(hostname, extra_hosts);
    write(etc, "hosts", &hosts, 0o644)
}

fn link(etc: &Path, name: &str, target: &str) -> Result<(), EtcError> {
    let path = etc.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(EtcError { path, source }),
    }
    symlink(target, &path).map_err(|source| EtcError { path, source })
}

fn write(etc: &Path, name: &str, contents: &str, mode: u32) -> Result<(), EtcError> {
    let path = etc.join(name);
    // A read-only file (machine-id) from an earlier run must be replaceable.
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, contents)
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)))
        .map_err(|source| EtcError { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populates_and_regenerates_etc() {
        let dir = tempfile::tempdir().unwrap();
        let id = MachineId::random().unwrap();
        populate(dir.path(), &id).unwrap();
        // Running twice (agent restarted in place) must work too.
        populate(dir.path(), &id).unwrap();
        write_hostname(dir.path(), "caisson-0000abcd", &[]).unwrap();
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("machine-id"), format!("{id}\n"));
        assert_eq!(read("resolv.conf"), "");
        assert_eq!(read("hostname"), "caisson-0000abcd\n");
        assert!(read("hosts").contains("127.0.1.1\tcaisson-0000abcd\n"));
        assert!(read("hosts").contains("127.0.0.1\tlocalhost\n"));
        let extra = [("10.0.0.9".parse().unwrap(), vec!["registry".to_string()])];
        write_hostname(dir.path(), "node-1", &extra).unwrap();
        assert!(read("hosts").contains("10.0.0.9\tregistry\n"));
        assert_eq!(
            std::fs::read_link(dir.path().join("os-release")).unwrap(),
            PathBuf::from("../usr/lib/os-release")
        );
        let mode = std::fs::metadata(dir.path().join("machine-id"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
    }
}
