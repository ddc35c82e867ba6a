//! The unified cgroup hierarchy at /sys/fs/cgroup, with every controller
//! the kernel offers enabled for the children (containerd and k3s make
//! their own groups below). The agent stays in the root group for now; since
//! the root is exempt from the no-internal-processes rule it can move into a
//! child group later without anything else changing.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use thiserror::Error;
use tracing::{info, warn};

use crate::mounts::mountinfo::is_mount_point;
use crate::mounts::{current_mounts, MountError, MountSpec};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// The controllers enabled, and those the kernel refused with why.
#[derive(Debug, Default)]
pub struct Controllers {
    pub enabled: Vec<String>,
    pub failed: Vec<(String, io::Error)>,
}

pub fn setup() -> Result<Controllers, CgroupError> {
    if is_mount_point(&current_mounts()?, Path::new(CGROUP_ROOT)) {
        info!("cgroup2: {CGROUP_ROOT} is already mounted");
    } else {
        mount()?;
    }
    enable_all(Path::new(CGROUP_ROOT))
}

fn mount() -> Result<(), MountError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME;
    let spec = |data| MountSpec {
        source: "cgroup2",
        target: CGROUP_ROOT,
        fs_type: "cgroup2",
        flags,
        data: Some(data),
    };
    // memory_recursiveprot (5.7+) makes memory.min/low protect whole
    // subtrees, as the kubelet expects; older kernels reject the option.
    spec("nsdelegate,memory_recursiveprot")
        .mount()
        .or_else(|e| {
            warn!("cgroup2: {e}; retrying with nsdelegate only");
            spec("nsdelegate").mount()
        })
}

/// Enable each available controller on its own, so one the kernel refuses
/// does not keep the others off.
fn enable_all(root: &Path) -> Result<Controllers, CgroupError> {
    let available_path = root.join("cgroup.controllers");
    let available =
        std::fs::read_to_string(&available_path).map_err(|source| CgroupError::Read {
            path: available_path,
            source,
        })?;
    let control = root.join("cgroup.subtree_control");
    let mut result = Controllers::default();
    for controller in parse_controllers(&available) {
        match std::fs::write(&control, format!("+{controller}")) {
            Ok(()) => result.enabled.push(controller),
            Err(e) => {
                warn!("cgroup2: cannot enable controller {controller}: {e}");
                result.failed.push((controller, e));
            }
        }
    }
    Ok(result)
}

/// `cgroup.controllers` is one line of space-separated names.
pub fn parse_controllers(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_are_space_separated_names() {
        assert_eq!(
            parse_controllers("cpuset cpu io memory hugetlb pids rdma misc\n").len(),
            8
        );
        assert!(parse_controllers("\n").is_empty());
    }

    #[test]
    fn each_controller_is_enabled_separately() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        // subtree_control is a directory here, so every write fails: both
        // controllers must be tried and reported.
        std::fs::create_dir(dir.path().join("cgroup.subtree_control")).unwrap();
        let result = enable_all(dir.path()).unwrap();
        assert!(result.enabled.is_empty());
        let failed: Vec<_> = result.failed.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(failed, ["cpu", "memory"]);
    }
}
