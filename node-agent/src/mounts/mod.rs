//! Everything the agent mounts: the pseudo filesystems and the generated
//! `/etc` tmpfs ([`pseudo`]), STATE and DATA ([`storage`]), and the table of
//! what is mounted ([`mountinfo`]) that shutdown plans its unmounts from.

pub mod mountinfo;
mod pseudo;
mod storage;

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use thiserror::Error;

pub use pseudo::{ensure_proc, pseudo_filesystems};
pub use storage::{mount_data, mount_state, Storage, LIVE_LINE};

use mountinfo::MountEntry;

pub const MOUNTINFO: &str = "/proc/self/mountinfo";

#[derive(Debug, Error)]
pub enum MountError {
    #[error("mount {fs_type} {device} on {target} ({options}): {errno}")]
    Mount {
        fs_type: String,
        device: String,
        target: PathBuf,
        options: String,
        errno: Errno,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl MountError {
    pub fn io(action: &'static str, path: &Path, source: io::Error) -> MountError {
        MountError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One mount(2) call, described so that its error can say what was tried.
#[derive(Debug, Clone, Copy)]
pub struct MountSpec<'a> {
    pub source: &'a str,
    pub target: &'a str,
    pub fs_type: &'a str,
    pub flags: MsFlags,
    /// Filesystem-specific options (the `data` argument), e.g. `mode=0755`.
    pub data: Option<&'a str>,
}

impl MountSpec<'_> {
    pub fn mount(&self) -> Result<(), MountError> {
        nix::mount::mount(
            Some(self.source),
            self.target,
            Some(self.fs_type),
            self.flags,
            self.data,
        )
        .map_err(|errno| MountError::Mount {
            fs_type: self.fs_type.to_string(),
            device: self.source.to_string(),
            target: PathBuf::from(self.target),
            options: self.describe_options(),
            errno,
        })
    }

    fn describe_options(&self) -> String {
        let mut words: Vec<String> = [
            (MsFlags::MS_RDONLY, "ro"),
            (MsFlags::MS_NOSUID, "nosuid"),
            (MsFlags::MS_NODEV, "nodev"),
            (MsFlags::MS_NOEXEC, "noexec"),
            (MsFlags::MS_RELATIME, "relatime"),
        ]
        .into_iter()
        .filter(|(flag, _)| self.flags.contains(*flag))
        .map(|(_, word)| word.to_string())
        .collect();
        words.extend(self.data.map(str::to_string));
        if words.is_empty() {
            "defaults".to_string()
        } else {
            words.join(",")
        }
    }
}

/// The mount table as the kernel sees it now.
pub fn current_mounts() -> Result<Vec<MountEntry>, MountError> {
    std::fs::read_to_string(MOUNTINFO)
        .map(|text| mountinfo::parse(&text))
        .map_err(|e| MountError::io("read", Path::new(MOUNTINFO), e))
}

/// `mkdir -p` that names the directory in its error.
pub fn create_dir_all(path: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(path).map_err(|e| MountError::io("create directory", path, e))
}

/// chmod that names the path in its error.
pub fn set_mode(path: &Path, mode: u32) -> Result<(), MountError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| MountError::io("chmod", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_errors_say_what_was_tried() {
        let spec = MountSpec {
            source: "/dev/vda5",
            target: "/var",
            fs_type: "ext4",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: None,
        };
        let err = MountError::Mount {
            fs_type: spec.fs_type.into(),
            device: spec.source.into(),
            target: spec.target.into(),
            options: spec.describe_options(),
            errno: Errno::EBUSY,
        };
        assert_eq!(
            err.to_string(),
            "mount ext4 /dev/vda5 on /var (nosuid,nodev): EBUSY: Device or resource busy"
        );
    }
}
