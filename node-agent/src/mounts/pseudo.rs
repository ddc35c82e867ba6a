//! The pseudo filesystems. `init` moved /dev, /proc, /sys and /run into the
//! new root; the agent checks they are there (mounting any that are not, so
//! the agent also comes up when started some other way) and adds the rest.

use std::path::Path;

use nix::mount::MsFlags;
use tracing::{info, warn};

use super::mountinfo::is_mount_point;
use super::{create_dir_all, current_mounts, MountError, MountSpec, MOUNTINFO};

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// What `init` should already have mounted.
const FROM_INIT: &[MountSpec<'static>] = &[
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fs_type: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fs_type: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fs_type: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
    },
];

/// What the agent adds. /etc is a tmpfs because it is generated at every boot.
const OWN: &[MountSpec<'static>] = &[
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fs_type: "devpts",
        flags: NOSUID_NODEV.union(MsFlags::MS_NOEXEC),
        data: Some("mode=0620,ptmxmode=0666"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/dev/shm",
        fs_type: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fs_type: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/etc",
        fs_type: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
    },
];

const PROC: MountSpec<'static> = MountSpec {
    source: "proc",
    target: "/proc",
    fs_type: "proc",
    flags: NOSUID_NODEV_NOEXEC,
    data: None,
};

/// Mount whatever of the pseudo filesystems is missing. Returns the mount
/// points it mounted itself.
pub fn pseudo_filesystems() -> Result<Vec<&'static str>, MountError> {
    let mut mounted = Vec::new();
    if ensure_proc()? {
        warn!("/proc was not mounted by init; mounted it");
        mounted.push(PROC.target);
    }
    let table = current_mounts()?;
    for spec in FROM_INIT {
        if !is_mount_point(&table, Path::new(spec.target)) {
            warn!("{} was not mounted by init; mounting it", spec.target);
            mount_at(spec)?;
            mounted.push(spec.target);
        }
    }
    for spec in OWN {
        if is_mount_point(&table, Path::new(spec.target)) {
            info!("{} is already mounted", spec.target);
            continue;
        }
        mount_at(spec)?;
        mounted.push(spec.target);
    }
    Ok(mounted)
}

/// Mount /proc if it is missing; true if it was. The agent needs it before
/// anything else: the command line and the mount table are read from it.
pub fn ensure_proc() -> Result<bool, MountError> {
    if Path::new(MOUNTINFO).exists() {
        return Ok(false);
    }
    mount_at(&PROC)?;
    Ok(true)
}

fn mount_at(spec: &MountSpec<'_>) -> Result<(), MountError> {
    create_dir_all(Path::new(spec.target))?;
    spec.mount()
}
