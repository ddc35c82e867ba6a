//! Handing the machine to the real root, as util-linux `switch_root` does:
//! move the API filesystems into it, free the initramfs, make it `/`, and
//! exec the agent.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
use nix::unistd::{chdir, chroot, execv};

use crate::error::InitError;
use crate::report::say;

/// Mounted by `init` and handed to the agent, in this order.
pub const MOVED_MOUNTS: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];
/// The initramfs is ramfs or tmpfs; anything else is not ours to delete.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

pub fn switch_root(new_root: &Path, agent: &str) -> Result<Infallible, InitError> {
    move_mounts(new_root)?;
    free_initramfs(new_root);
    let step = |step: &'static str| move |errno| InitError::SwitchRoot { step, errno };
    chdir(new_root).map_err(step("chdir to the new root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(step("move the new root to /"))?;
    chroot(".").map_err(step("chroot"))?;
    chdir("/").map_err(step("chdir /"))?;
    let path = CString::new(agent).map_err(|_| InitError::Exec {
        path: agent.into(),
        errno: nix::errno::Errno::EINVAL,
    })?;
    say(&format!("caisson-init: switching root, exec {agent}"));
    match execv(&path, &[&path]) {
        Ok(never) => match never {},
        Err(errno) => Err(InitError::Exec {
            path: agent.into(),
            errno,
        }),
    }
}

fn move_mounts(new_root: &Path) -> Result<(), InitError> {
    for old in MOVED_MOUNTS {
        let new = new_root.join(old.trim_start_matches('/'));
        mount(
            Some(old),
            &new,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|errno| InitError::MoveMount {
            from: old.into(),
            to: new.clone(),
            errno,
        })?;
    }
    Ok(())
}

/// Delete the initramfs so its memory is freed. Failures only waste RAM,
/// so they are reported and do not stop the boot.
fn free_initramfs(new_root: &Path) {
    let root_is_ram = statfs("/").map(|s| {
        let kind = s.filesystem_type();
        kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
    });
    if !matches!(root_is_ram, Ok(true)) {
        say("caisson-init: warning: / is not an initramfs (ramfs/tmpfs); not deleting it");
        return;
    }
    let root_dev = match std::fs::symlink_metadata("/") {
        Ok(m) => m.dev(),
        Err(e) => {
            say(&format!(
                "caisson-init: warning: stat /: {e}; not deleting the initramfs"
            ));
            return;
        }
    };
    let mut errors = Vec::new();
    remove_contents(Path::new("/"), root_dev, new_root, &mut errors);
    for e in errors.iter().take(5) {
        say(&format!(
            "caisson-init: warning: freeing the initramfs: {e}"
        ));
    }
}

/// What cleanup does with one directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The new root, or something on another filesystem: never touched.
    Keep,
    /// Empty it, then remove it.
    Descend,
    Remove,
}

pub fn decide(path: &Path, is_dir: bool, dev: u64, root_dev: u64, keep: &Path) -> Action {
    if path == keep || dev != root_dev {
        Action::Keep
    } else if is_dir {
        Action::Descend
    } else {
        Action::Remove
    }
}

/// Remove everything under `dir` that is on `root_dev`, except `keep`.
/// Symlinks are removed, never followed.
pub fn remove_contents(dir: &Path, root_dev: u64, keep: &Path, errors: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return errors.push(format!("{}: {e}", dir.display())),
    };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let result = match decide(&path, meta.is_dir(), meta.dev(), root_dev, keep) {
            Action::Keep => Ok(()),
            Action::Descend => {
                remove_contents(&path, root_dev, keep, errors);
                std::fs::remove_dir(&path)
            }
            Action::Remove => std::fs::remove_file(&path),
        };
        if let Err(e) = result {
            errors.push(format!("{}: {e}", path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_keeps_the_new_root_and_other_filesystems() {
        let keep = Path::new("/sysroot");
        assert_eq!(
            decide(Path::new("/sysroot"), true, 1, 1, keep),
            Action::Keep
        );
        assert_eq!(decide(Path::new("/dev"), true, 5, 1, keep), Action::Keep);
        assert_eq!(decide(Path::new("/usr"), true, 1, 1, keep), Action::Descend);
        assert_eq!(
            decide(Path::new("/init"), false, 1, 1, keep),
            Action::Remove
        );
    }

    #[test]
    fn remove_contents_spares_the_kept_tree_and_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("usr/lib/modules/k/kernel")).unwrap();
        std::fs::write(root.join("usr/lib/modules/k/kernel/a.ko"), b"x").unwrap();
        std::fs::write(root.join("init"), b"x").unwrap();
        std::fs::create_dir_all(root.join("sysroot/usr/bin")).unwrap();
        std::fs::write(root.join("sysroot/usr/bin/node-agent"), b"x").unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

        let dev = std::fs::metadata(&root).unwrap().dev();
        let mut errors = Vec::new();
        remove_contents(&root, dev, &root.join("sysroot"), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["sysroot"]);
        assert!(root.join("sysroot/usr/bin/node-agent").exists());
        assert!(outside.join("precious").exists());
    }
}
