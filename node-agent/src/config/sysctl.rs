//! Sysctls, written to `/proc/sys`. Names use sysctl(8)'s notation: dots
//! separate levels, and a slash stands for a dot inside one level
//! (`net.ipv4.conf.eth0/100.forwarding` is
//! `/proc/sys/net/ipv4/conf/eth0.100/forwarding`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

pub const PROC_SYS: &str = "/proc/sys";

#[derive(Debug, Error)]
pub enum SysctlError {
    #[error("kernel.sysctls.\"{key}\": {key:?} is not a sysctl name")]
    BadName { key: String },
    #[error("kernel.sysctls.\"{key}\": no such sysctl ({} does not exist)", path.display())]
    Unknown { key: String, path: PathBuf },
    #[error("kernel.sysctls.\"{key}\": writing {value:?} to {}: {source}", path.display())]
    Write {
        key: String,
        value: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// The file of `key` under `root` (`/proc/sys`); None for names that would
/// leave it.
pub fn path_of(root: &Path, key: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    for level in key.split('.') {
        let level = level.replace('/', ".");
        if level.is_empty() || level == "." || level == ".." {
            return None;
        }
        path.push(level);
    }
    Some(path)
}

/// Refuse names the kernel does not have, before anything is changed.
pub fn check_exists(root: &Path, key: &str) -> Result<PathBuf, SysctlError> {
    let path = path_of(root, key).ok_or_else(|| SysctlError::BadName {
        key: key.to_string(),
    })?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(SysctlError::Unknown {
            key: key.to_string(),
            path,
        })
    }
}

pub fn write(root: &Path, key: &str, value: &str) -> Result<(), SysctlError> {
    let path = check_exists(root, key)?;
    // As sysctl(8) does ("w"): /proc ignores the truncation, files don't.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{value}\n").as_bytes()))
        .map_err(|source| SysctlError::Write {
            key: key.to_string(),
            value: value.to_string(),
            path,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_proc_sys_paths_and_never_leave_it() {
        let root = Path::new("/proc/sys");
        assert_eq!(
            path_of(root, "net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path_of(root, "net.ipv4.conf.eth0/100.forwarding").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        // "//" would become "..": refused.
        assert_eq!(path_of(root, "net.//.x"), None);
        assert_eq!(path_of(root, "net..x"), None);
        assert_eq!(path_of(root, "/.x"), None);
    }

    #[test]
    fn writes_name_the_key_on_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("vm")).unwrap();
        std::fs::write(root.path().join("vm/swappiness"), "60\n").unwrap();
        write(root.path(), "vm.swappiness", "10").unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("vm/swappiness")).unwrap(),
            "10\n"
        );
        let e = write(root.path(), "vm.nope", "1").unwrap_err().to_string();
        assert!(
            e.starts_with("kernel.sysctls.\"vm.nope\": no such sysctl"),
            "{e}"
        );
        let e = write(root.path(), "net.//.x", "1").unwrap_err().to_string();
        assert!(e.contains("is not a sysctl name"), "{e}");
    }
}
