//! The steps of stage 1 before the switch to the real root, in boot order.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caisson_devices::BlockDevice;
use caisson_kmod::loader::Loader;
use caisson_kmod::{KmodError, ModuleIndex};
use caisson_layout::{paths, CaissonParams, KernelCmdline};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use crate::error::InitError;
use crate::report::{root_not_found_seen, say};

struct PseudoFs {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

const PSEUDO_FILESYSTEMS: [PseudoFs; 4] = [
    PseudoFs {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    PseudoFs {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV.union(MsFlags::MS_NOEXEC),
        data: None,
    },
    PseudoFs {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV.union(MsFlags::MS_NOEXEC),
        data: None,
    },
    PseudoFs {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
    },
];

/// devtmpfs on /dev, proc, sysfs, and a tmpfs /run (which the agent
/// inherits, with our root-device hint in it).
pub fn mount_pseudo_filesystems() -> Result<(), InitError> {
    for fs in &PSEUDO_FILESYSTEMS {
        create_dir(Path::new(fs.target))?;
        match mount(
            Some(fs.source),
            fs.target,
            Some(fs.fstype),
            fs.flags,
            fs.data,
        ) {
            // Already there (a kernel with CONFIG_DEVTMPFS_MOUNT, or a retry).
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(errno) => {
                return Err(InitError::Mount {
                    source_name: fs.source.into(),
                    target: fs.target.into(),
                    fstype: fs.fstype.into(),
                    errno,
                })
            }
        }
    }
    Ok(())
}

pub fn create_dir(path: &Path) -> Result<(), InitError> {
    std::fs::create_dir_all(path).map_err(|source| InitError::CreateDir {
        path: path.into(),
        source,
    })
}

fn read(path: &str) -> Result<String, InitError> {
    std::fs::read_to_string(path).map_err(|source| InitError::Read {
        path: path.into(),
        source,
    })
}

pub fn read_params() -> Result<CaissonParams, InitError> {
    let line = read("/proc/cmdline")?;
    Ok(CaissonParams::from_cmdline(&KernelCmdline::parse(&line))?)
}

/// Module names from `initrd-modules`: one per line; blank lines and
/// `#` comments ignored.
pub fn parse_module_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Load every listed module with its dependencies. Nothing here is fatal:
/// a missing driver only matters if the root then cannot be found, so the
/// failures are printed now and returned for that message.
pub fn load_modules() -> Vec<String> {
    let mut failures = Vec::new();
    let kernel_release = match read(paths::INITRD_KERNEL_RELEASE) {
        Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
        Ok(_) => {
            failures.push(format!("{} is empty", paths::INITRD_KERNEL_RELEASE));
            return report_failures(failures);
        }
        Err(e) => return report_failures(vec![e.to_string()]),
    };
    let names = match read(paths::INITRD_MODULE_LIST) {
        Ok(text) => parse_module_list(&text),
        Err(e) => return report_failures(vec![e.to_string()]),
    };
    let modules_dir = PathBuf::from(paths::MODULES_ROOT).join(&kernel_release);
    let index = match ModuleIndex::load(&modules_dir) {
        Ok(index) => index,
        Err(e) => {
            return report_failures(vec![format!(
                "module index in {}: {e}",
                modules_dir.display()
            )])
        }
    };
    let mut loader = Loader::new(modules_dir, index);
    let mut loaded = Vec::new();
    for name in &names {
        match loader.load_with_deps(name) {
            Ok(newly) => loaded.extend(newly),
            Err(e) => failures.push(module_failure(name, &e)),
        }
    }
    say(&format!(
        "caisson-init: loaded {} modules: {}",
        loaded.len(),
        loaded.join(" ")
    ));
    report_failures(failures)
}

/// "virtio_blk (ENOENT)" for a kernel refusal, the full error otherwise.
pub fn module_failure(name: &str, error: &KmodError) -> String {
    match error {
        KmodError::Load { name, errno, .. } => format!("{name} ({errno})"),
        other => format!("{name} ({other})"),
    }
}

fn report_failures(failures: Vec<String>) -> Vec<String> {
    for f in &failures {
        say(&format!("caisson-init: module load failed: {f}"));
    }
    failures
}

/// Call `probe` every `interval` until it returns Some or `timeout` has
/// passed (it is always called at least once, and once more at the end).
pub fn wait_for<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return None;
        }
        std::thread::sleep(interval.min(timeout - elapsed));
    }
}

/// Wait, bounded by `caisson.rootwait`, for the partition the command
/// line names. Devices appear asynchronously as drivers probe.
pub fn wait_for_root(
    params: &CaissonParams,
    module_failures: &[String],
) -> Result<BlockDevice, InitError> {
    let found = wait_for(params.rootwait, Duration::from_millis(100), || {
        caisson_devices::find_partition(&params.root).ok().flatten()
    });
    found.ok_or_else(|| InitError::RootNotFound {
        spec: params.root.render(),
        waited_secs: params.rootwait.as_secs(),
        seen: root_not_found_seen(caisson_devices::list_block_devices()),
        module_failures: module_failures.to_vec(),
    })
}

/// Mount the root (the partition, or the verity device over it) read-only
/// on /sysroot and check the agent is there.
pub fn mount_root(source: &Path) -> Result<(), InitError> {
    let sysroot = Path::new(paths::SYSROOT);
    create_dir(sysroot)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
    mount(Some(source), sysroot, Some("squashfs"), flags, None::<&str>).map_err(|errno| {
        InitError::Mount {
            source_name: source.display().to_string(),
            target: sysroot.into(),
            fstype: "squashfs".into(),
            errno,
        }
    })?;
    let agent = sysroot.join(paths::AGENT_PATH.trim_start_matches('/'));
    match std::fs::metadata(&agent) {
        Ok(m) if m.is_file() => Ok(()),
        _ => Err(InitError::NoAgent {
            path: agent,
            device: source.to_path_buf(),
        }),
    }
}

/// Tell the agent's health gate how the root was verified: one line, the
/// root hash or `off`.
pub fn write_verity_hint(root_hash: Option<&str>) -> Result<(), InitError> {
    let hint = Path::new(paths::ROOT_VERITY_HINT);
    if let Some(dir) = hint.parent() {
        create_dir(dir)?;
    }
    let line = format!(
        "{}\n",
        root_hash.unwrap_or(caisson_layout::cmdline::VERITY_OFF)
    );
    std::fs::write(hint, line).map_err(|source| InitError::Write {
        path: hint.into(),
        source,
    })
}

/// For a root read through a loop device, tell the agent which file the
/// device reads (one line); nothing for a partition.
pub fn write_backing_hint(file: Option<&Path>) -> Result<(), InitError> {
    let Some(file) = file else {
        return Ok(());
    };
    let hint = Path::new(paths::ROOT_BACKING_HINT);
    if let Some(dir) = hint.parent() {
        create_dir(dir)?;
    }
    std::fs::write(hint, format!("{}\n", file.display())).map_err(|source| InitError::Write {
        path: hint.into(),
        source,
    })
}

/// Tell the agent which device the root came from (e.g. `vda2`, or `loop0`
/// for a live boot; no newline), so it can find STATE and DATA on the same
/// disk.
pub fn write_root_hint(device: &BlockDevice) -> Result<(), InitError> {
    let hint = Path::new(paths::ROOT_DEVICE_HINT);
    if let Some(dir) = hint.parent() {
        create_dir(dir)?;
    }
    std::fs::write(hint, &device.name).map_err(|source| InitError::Write {
        path: hint.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn module_list_skips_blanks_and_comments() {
        let text = "# drivers for the root\nvirtio_pci\n\n  virtio_blk  \nsquashfs\n";
        assert_eq!(
            parse_module_list(text),
            ["virtio_pci", "virtio_blk", "squashfs"]
        );
        assert!(parse_module_list("\n# nothing\n").is_empty());
    }

    #[test]
    fn wait_for_returns_as_soon_as_found() {
        let calls = Cell::new(0);
        let found = wait_for(Duration::from_secs(5), Duration::from_millis(1), || {
            calls.set(calls.get() + 1);
            (calls.get() == 3).then_some("vda2")
        });
        assert_eq!(found, Some("vda2"));
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn wait_for_gives_up_after_the_timeout_having_probed_at_the_end() {
        let start = Instant::now();
        let calls = Cell::new(0);
        let found: Option<()> = wait_for(
            Duration::from_millis(120),
            Duration::from_millis(50),
            || {
                calls.set(calls.get() + 1);
                None
            },
        );
        assert_eq!(found, None);
        assert!(start.elapsed() >= Duration::from_millis(120));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(calls.get() >= 3, "probed {} times", calls.get());
    }

    #[test]
    fn module_failures_show_the_errno_for_kernel_refusals() {
        let refused = KmodError::Load {
            name: "virtio_blk".into(),
            path: "/x".into(),
            errno: Errno::ENOEXEC,
        };
        assert_eq!(
            module_failure("virtio_blk", &refused),
            "virtio_blk (ENOEXEC: Exec format error)"
        );
        let unknown = KmodError::UnknownModule {
            name: "vfat".into(),
        };
        assert!(module_failure("vfat", &unknown).starts_with("vfat (unknown module"));
    }
}
