//! Each service's cgroup2 group, `<root>/caisson.slice/<name>`: memory.max,
//! memory accounting, joining it before exec, and killing what is left.
//!
//! The root is a parameter so tests can use a plain directory; there the
//! same files are written (so what would reach the kernel can be checked)
//! but nothing is enforced, and [`ServiceGroup::kill`] reports that it
//! cannot kill, so callers fall back to signals.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::libc;
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
use tracing::warn;

/// The parent of every service's group.
pub const SLICE: &str = "caisson.slice";
/// The controllers services' groups get.
pub const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// `<root>/caisson.slice`, with its controllers enabled for the services.
#[derive(Debug, Clone)]
pub struct Slice {
    dir: PathBuf,
    /// A real cgroup2 file system (else a directory standing in for one).
    kernel: bool,
}

impl Slice {
    /// Create the slice and enable [`CONTROLLERS`] for its children, each on
    /// its own so one the kernel refuses does not keep the others off.
    pub fn prepare(root: &Path) -> io::Result<Slice> {
        let kernel = statfs(root)
            .map(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
            .map_err(io::Error::from)?;
        let dir = root.join(SLICE);
        mkdir(&dir)?;
        let control = dir.join("cgroup.subtree_control");
        for controller in CONTROLLERS {
            if let Err(e) = std::fs::write(&control, format!("+{controller}")) {
                warn!(
                    "supervisor: cannot enable the {controller} controller in {}: {e}",
                    dir.display()
                );
            }
        }
        Ok(Slice { dir, kernel })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_kernel(&self) -> bool {
        self.kernel
    }

    /// The service's group, created if need be, with its memory limit
    /// (`None` lifts a limit set before). A limit that cannot be written is
    /// a warning: the service runs without it.
    pub fn group(&self, name: &str, memory_max: Option<u64>) -> io::Result<ServiceGroup> {
        let group = ServiceGroup {
            dir: self.dir.join(name),
            kernel: self.kernel,
        };
        mkdir(&group.dir)?;
        let limit = memory_max.map_or_else(|| "max".to_string(), |b| b.to_string());
        let path = group.dir.join("memory.max");
        if let Err(e) = std::fs::write(&path, &limit) {
            if memory_max.is_some() {
                warn!(
                    "supervisor: {name}: cannot set {} to {limit}: {e}",
                    path.display()
                );
            }
        }
        Ok(group)
    }
}

fn mkdir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io::Error::new(
            e.kind(),
            format!("create {}: {e}", dir.display()),
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone)]
pub struct ServiceGroup {
    dir: PathBuf,
    kernel: bool,
}

impl ServiceGroup {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `cgroup.procs`, opened now so the child only has to write(2) to it.
    pub fn open_procs(&self) -> io::Result<OwnedFd> {
        let path = self.dir.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            // A stand-in directory has no such file yet; the kernel's always exists.
            .create(!self.kernel)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))
    }

    /// Bytes charged to the group (`memory.current`).
    pub fn memory_current(&self) -> Option<u64> {
        memory_current(&self.dir)
    }

    /// Pids in the group (none known in a stand-in directory).
    pub fn pids(&self) -> Vec<i32> {
        if !self.kernel {
            return Vec::new();
        }
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILL everything in the group (`cgroup.kill`, Linux 5.14+).
    /// `Ok(false)`: this group cannot do that (not a kernel cgroup2, or an
    /// older kernel); signal the processes instead.
    pub fn kill(&self) -> io::Result<bool> {
        let path = self.dir.join("cgroup.kill");
        if !self.kernel || !path.exists() {
            return Ok(false);
        }
        std::fs::write(&path, "1")
            .map(|()| true)
            .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
    }
}

/// `memory.current` of a group directory.
pub fn memory_current(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Make the child, between fork and exec, the leader of a new session (so
/// it and its children can be signalled as a process group) and, with
/// `procs` (a group's `cgroup.procs`), a member of that group, so that it
/// never runs a single instruction of the program outside it. Only
/// async-signal-safe calls happen in the child. `procs` must stay open
/// until the command has been spawned.
pub fn join_before_exec(command: &mut Command, procs: Option<&OwnedFd>) {
    let fd = procs.map(|f| f.as_raw_fd());
    let in_child = move || -> io::Result<()> {
        // SAFETY: setsid(2) and write(2) are async-signal-safe, the buffer is
        // a static, and `fd` is open in the child (inherited from the parent,
        // closed by O_CLOEXEC only at exec).
        unsafe {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = fd {
                // "0": the writing process itself.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe system calls and
    // allocates nothing.
    unsafe {
        command.pre_exec(in_child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stand_in_directory_gets_the_files_the_kernel_would() {
        let root = tempfile::tempdir().unwrap();
        let slice = Slice::prepare(root.path()).unwrap();
        assert!(!slice.is_kernel());
        assert_eq!(slice.dir(), root.path().join("caisson.slice"));
        // Each controller was written on its own; the last one remains.
        assert_eq!(
            std::fs::read_to_string(root.path().join("caisson.slice/cgroup.subtree_control"))
                .unwrap(),
            "+cpu"
        );
        let group = slice.group("k3s", Some(512 << 20)).unwrap();
        assert_eq!(
            std::fs::read_to_string(group.dir().join("memory.max")).unwrap(),
            "536870912"
        );
        // Again, without a limit: lifted; the directory already exists.
        let group = slice.group("k3s", None).unwrap();
        assert_eq!(
            std::fs::read_to_string(group.dir().join("memory.max")).unwrap(),
            "max"
        );
        assert_eq!(group.memory_current(), None);
        std::fs::write(group.dir().join("memory.current"), "1234\n").unwrap();
        assert_eq!(group.memory_current(), Some(1234));
        assert!(!group.kill().unwrap(), "a stand-in cannot kill");
        assert!(group.open_procs().is_ok());
    }

    #[test]
    fn a_missing_root_is_an_error() {
        assert!(Slice::prepare(Path::new("/nonexistent/cgroup")).is_err());
    }
}
