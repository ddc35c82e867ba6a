//! STATE and DATA: ext4 partitions found by their GPT label on the disk the
//! root came from (so a second Caisson disk in the machine is never used by
//! mistake); or, on a live boot (`caisson.live`), tmpfs mounts at the same
//! places, with no disk looked at at all.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use caisson_devices::DevicesError;
use caisson_layout::paths::{DATA_MOUNT, ROOT_DEVICE_HINT, STATE_MOUNT};
use caisson_layout::{PartitionRole, RootSpec};
use nix::mount::MsFlags;
use thiserror::Error;
use tracing::{info, warn};

use super::mountinfo::is_mount_point;
use super::{create_dir_all, current_mounts, set_mode, MountError, MountSpec};

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("no partition labelled {label} on the disk of the root partition {root}")]
    NotOnRootDisk { label: &'static str, root: String },
    #[error("no partition labelled {label} on any disk (and no {hint} to say which disk is ours)", hint = ROOT_DEVICE_HINT)]
    NotFound { label: &'static str },
    #[error("read {path}: {source}")]
    Hint {
        path: &'static str,
        source: io::Error,
    },
    #[error("looking for {label}: {source}")]
    Devices {
        label: &'static str,
        source: DevicesError,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// Where STATE and DATA live on this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// The STATE and DATA partitions beside the root.
    Disk,
    /// `caisson.live`: tmpfs, gone at the next boot. Disks are never
    /// searched, so a live node cannot pick up another node's STATE.
    Live,
}

impl Storage {
    pub fn from_cmdline(cmdline: &caisson_layout::KernelCmdline) -> Storage {
        if caisson_layout::is_live(cmdline) {
            Storage::Live
        } else {
            Storage::Disk
        }
    }
}

/// The console line of a live boot, before the state phase.
pub const LIVE_LINE: &str = "live: STATE and DATA are in memory (caisson.live): nothing is kept across a reboot and no disk is looked at";

/// Where a partition was found, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Next to the root partition named by `init`.
    BesideRoot(String),
    /// By label on some disk, because `init` left no hint.
    AnyDisk,
    /// It was mounted already (e.g. the agent restarted in place).
    AlreadyMounted,
    /// A tmpfs of a live boot.
    InMemory,
}

#[derive(Debug, Clone)]
pub struct Mounted {
    pub device: PathBuf,
    pub mount_point: &'static str,
    pub found: Found,
}

impl fmt::Display for Mounted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.found {
            Found::BesideRoot(root) => {
                write!(
                    f,
                    "{} (beside root {root}) on {}",
                    self.device.display(),
                    self.mount_point
                )
            }
            Found::AnyDisk => write!(
                f,
                "{} (found by label, no root hint) on {}",
                self.device.display(),
                self.mount_point
            ),
            Found::AlreadyMounted => write!(f, "{} was already mounted", self.mount_point),
            Found::InMemory => write!(f, "tmpfs on {} (live: in memory)", self.mount_point),
        }
    }
}

const STATE_FLAGS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);
const DATA_FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// STATE at /run/caisson/state, 0700, nosuid,nodev,noexec: machine config,
/// keys and the audit log, for the agent alone.
pub fn mount_state(storage: Storage) -> Result<Mounted, StorageError> {
    let target = Path::new(STATE_MOUNT);
    if already_mounted(target)? {
        return Ok(Mounted {
            device: PathBuf::new(),
            mount_point: STATE_MOUNT,
            found: Found::AlreadyMounted,
        });
    }
    create_dir_all(target)?;
    set_mode(target, 0o700)?;
    let mounted = match storage {
        Storage::Live => {
            mount_tmpfs(STATE_MOUNT, STATE_FLAGS, "mode=0700")?;
            in_memory(STATE_MOUNT)
        }
        Storage::Disk => {
            let (device, found) = find_partition(PartitionRole::State.label())?;
            mount_ext4(&device, STATE_MOUNT, STATE_FLAGS)?;
            Mounted {
                device,
                mount_point: STATE_MOUNT,
                found,
            }
        }
    };
    set_mode(target, 0o700)?;
    Ok(mounted)
}

/// DATA at /var, nosuid,nodev: containerd, k3s, logs.
pub fn mount_data(storage: Storage) -> Result<Mounted, StorageError> {
    let target = Path::new(DATA_MOUNT);
    let mounted = if already_mounted(target)? {
        Mounted {
            device: PathBuf::new(),
            mount_point: DATA_MOUNT,
            found: Found::AlreadyMounted,
        }
    } else {
        match storage {
            Storage::Live => {
                mount_tmpfs(DATA_MOUNT, DATA_FLAGS, "mode=0755")?;
                in_memory(DATA_MOUNT)
            }
            Storage::Disk => {
                let (device, found) = find_partition(PartitionRole::Data.label())?;
                mount_ext4(&device, DATA_MOUNT, DATA_FLAGS)?;
                Mounted {
                    device,
                    mount_point: DATA_MOUNT,
                    found,
                }
            }
        }
    };
    for dir in ["log", "lib"] {
        create_dir_all(&target.join(dir))?;
    }
    Ok(mounted)
}

fn already_mounted(target: &Path) -> Result<bool, StorageError> {
    Ok(is_mount_point(&current_mounts()?, target))
}

/// No device: like an already mounted one, nothing to grow or check.
fn in_memory(mount_point: &'static str) -> Mounted {
    Mounted {
        device: PathBuf::new(),
        mount_point,
        found: Found::InMemory,
    }
}

/// A tmpfs with the default size limit (half the RAM): what a live node
/// writes lives in memory anyway.
fn mount_tmpfs(target: &str, flags: MsFlags, data: &str) -> Result<(), MountError> {
    MountSpec {
        source: "tmpfs",
        target,
        fs_type: "tmpfs",
        flags,
        data: Some(data),
    }
    .mount()
}

fn mount_ext4(device: &Path, target: &str, flags: MsFlags) -> Result<(), MountError> {
    let source = device.to_string_lossy();
    MountSpec {
        source: &source,
        target,
        fs_type: "ext4",
        flags,
        data: None,
    }
    .mount()
}

/// The device node of the partition labelled `label` on the root's disk; if
/// `init` left no hint, on whichever disk has one (logged as such). Never
/// called on a live boot.
fn find_partition(label: &'static str) -> Result<(PathBuf, Found), StorageError> {
    match std::fs::read_to_string(ROOT_DEVICE_HINT) {
        Ok(hint) => {
            let root = hint.trim().to_string();
            match caisson_devices::sibling_by_label(&root, label) {
                Ok(Some(dev)) => Ok((dev.dev_path, Found::BesideRoot(root))),
                Ok(None) => Err(StorageError::NotOnRootDisk { label, root }),
                Err(source) => Err(StorageError::Devices { label, source }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            warn!("{ROOT_DEVICE_HINT} is missing; looking for {label} on every disk");
            find_on_any_disk(label).map(|dev| (dev, Found::AnyDisk))
        }
        Err(source) => Err(StorageError::Hint {
            path: ROOT_DEVICE_HINT,
            source,
        }),
    }
}

/// Any disk's partition labelled `label` (disks in sysfs order).
fn find_on_any_disk(label: &'static str) -> Result<PathBuf, StorageError> {
    match caisson_devices::find_partition(&RootSpec::PartLabel(label.to_string())) {
        Ok(Some(dev)) => {
            info!("{label}: found {} by label", dev.dev_path.display());
            Ok(dev.dev_path)
        }
        Ok(None) => Err(StorageError::NotFound { label }),
        Err(source) => Err(StorageError::Devices { label, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caisson_layout::KernelCmdline;

    #[test]
    fn live_storage_comes_from_caisson_live_alone() {
        let live = KernelCmdline::parse(
            "caisson.slot=a caisson.root=initrd:/caisson/root.img caisson.live",
        );
        assert_eq!(Storage::from_cmdline(&live), Storage::Live);
        let disk = KernelCmdline::parse("caisson.slot=a caisson.root=PARTLABEL=ROOT-A");
        assert_eq!(Storage::from_cmdline(&disk), Storage::Disk);
        assert!(LIVE_LINE.starts_with("live: STATE and DATA are in memory"));
    }

    #[test]
    fn mounted_lines_say_where_it_came_from() {
        assert_eq!(
            in_memory(STATE_MOUNT).to_string(),
            "tmpfs on /run/caisson/state (live: in memory)"
        );
        let beside = Mounted {
            device: PathBuf::from("/dev/vda4"),
            mount_point: STATE_MOUNT,
            found: Found::BesideRoot("vda2".into()),
        };
        assert_eq!(
            beside.to_string(),
            "/dev/vda4 (beside root vda2) on /run/caisson/state"
        );
    }
}
