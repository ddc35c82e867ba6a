//! STATE and DATA: ext4 partitions found by their GPT label on the disk the
//! root came from (so a second Caisson disk in the machine is never used by
//! mistake).

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

/// Where a partition was found, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Next to the root partition named by `init`.
    BesideRoot(String),
    /// By label on some disk, because `init` left no hint.
    AnyDisk,
    /// It was mounted already (e.g. the agent restarted in place).
    AlreadyMounted,
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
        }
    }
}

/// STATE at /run/caisson/state, 0700, nosuid,nodev,noexec: machine config,
/// keys and the audit log, for the agent alone.
pub fn mount_state() -> Result<Mounted, StorageError> {
    let target = Path::new(STATE_MOUNT);
    if already_mounted(target)? {
        return Ok(Mounted {
            device: PathBuf::new(),
            mount_point: STATE_MOUNT,
            found: Found::AlreadyMounted,
        });
    }
    let (device, found) = find_partition(PartitionRole::State.label())?;
    create_dir_all(target)?;
    set_mode(target, 0o700)?;
    mount_ext4(
        &device,
        STATE_MOUNT,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )?;
    set_mode(target, 0o700)?;
    Ok(Mounted {
        device,
        mount_point: STATE_MOUNT,
        found,
    })
}

/// DATA at /var, nosuid,nodev: containerd, k3s, logs.
pub fn mount_data() -> Result<Mounted, StorageError> {
    let target = Path::new(DATA_MOUNT);
    let mounted = if already_mounted(target)? {
        Mounted {
            device: PathBuf::new(),
            mount_point: DATA_MOUNT,
            found: Found::AlreadyMounted,
        }
    } else {
        let (device, found) = find_partition(PartitionRole::Data.label())?;
        mount_ext4(&device, DATA_MOUNT, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
        Mounted {
            device,
            mount_point: DATA_MOUNT,
            found,
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
/// `init` left no hint, on whichever disk has one (logged as such).
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
