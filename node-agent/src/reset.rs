//! `reset`: return the node to maintenance mode.
//!
//! The node has no mkfs, so reset does not re-make the filesystems: it
//! deletes everything on STATE except the audit log (which gets the reset's
//! own record, so the trail survives) and `lost+found`, deletes everything
//! under /var (DATA), and reboots. The next boot finds no config on STATE
//! and enters maintenance mode, or boots with the image's embedded config
//! if it has one. Deletion never crosses into another filesystem mounted
//! below the directory being emptied.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub const AUDIT_LOG: &str = "audit.jsonl";
/// Kept on STATE: the audit trail, and ext4's directory for fsck.
pub const KEEP_ON_STATE: &[&str] = &[AUDIT_LOG, "lost+found"];
/// Kept on DATA: ext4's directory for fsck.
pub const KEEP_ON_DATA: &[&str] = &["lost+found"];

#[derive(Debug, Error)]
#[error("reset: removing {}: {source}", path.display())]
pub struct ResetError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Delete every entry of `dir` except those named in `keep`; how many
/// entries were removed.
pub fn empty_dir(dir: &Path, keep: &[&str]) -> Result<usize, ResetError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ResetError { path, source }
    };
    let device = std::fs::symlink_metadata(dir).map_err(err(dir))?.dev();
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(err(dir))? {
        let entry = entry.map_err(err(dir))?;
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        remove_tree(&entry.path(), device).map_err(err(&entry.path()))?;
        removed += 1;
    }
    Ok(removed)
}

/// `rm -rf --one-file-system`: a mount point below is emptied of nothing
/// and left in place (unmounting is shutdown's job).
fn remove_tree(path: &Path, device: u64) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.dev() != device {
        return Ok(());
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            remove_tree(&entry?.path(), device)?;
        }
        match std::fs::remove_dir(path) {
            Ok(()) => Ok(()),
            // A mount point below kept it non-empty, or it is one: leave it.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOTEMPTY as i32) => Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => Ok(()),
            Err(e) => Err(e),
        }
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_emptied_except_the_audit_log() {
        let state = tempfile::tempdir().unwrap();
        let s = state.path();
        std::fs::create_dir_all(s.join("config")).unwrap();
        std::fs::write(s.join("config/current.toml"), "x").unwrap();
        std::fs::write(s.join("config/previous.toml"), "y").unwrap();
        std::fs::write(s.join(AUDIT_LOG), "{}\n").unwrap();
        std::fs::create_dir(s.join("lost+found")).unwrap();
        std::fs::write(s.join("node.key"), "k").unwrap();
        std::os::unix::fs::symlink("/nonexistent", s.join("dangling")).unwrap();
        assert_eq!(empty_dir(s, KEEP_ON_STATE).unwrap(), 3);
        let mut left: Vec<String> = std::fs::read_dir(s)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [AUDIT_LOG, "lost+found"]);
        assert_eq!(std::fs::read_to_string(s.join(AUDIT_LOG)).unwrap(), "{}\n");
    }

    #[test]
    fn var_is_emptied_entirely_and_symlinks_are_not_followed() {
        let var = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), "keep me").unwrap();
        std::fs::create_dir_all(var.path().join("lib/containerd/x")).unwrap();
        std::fs::write(var.path().join("lib/containerd/x/blob"), "b").unwrap();
        std::os::unix::fs::symlink(outside.path(), var.path().join("lib/link")).unwrap();
        empty_dir(var.path(), &[]).unwrap();
        assert_eq!(std::fs::read_dir(var.path()).unwrap().count(), 0);
        assert!(outside.path().join("precious").exists());
    }

    #[test]
    fn errors_name_the_path() {
        let e = empty_dir(Path::new("/nonexistent/state"), &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("reset: removing /nonexistent/state: "),
            "{e}"
        );
    }
}
