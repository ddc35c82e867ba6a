//! caisson-init: stage 1, PID 1 in the initramfs.
//!
//! Mount the API filesystems, load the root's drivers, wait for the root
//! partition named on the command line (or, for a live boot, bind the root
//! image carried in the initramfs to a loop device), put dm-verity over it
//! (unless the entry says `caisson.verity=off`), mount it, and switch to it
//! running node-agent. Any failure prints one `caisson-init: FATAL: …` line and
//! reboots after 5 s, so systemd-boot's counter falls back to the other
//! slot; there is never a shell.

// PID 1 must not panic: outside tests, every fallible call is handled.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod dm;
mod error;
mod loop_device;
mod report;
mod steps;
mod switch_root;
mod verity;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caisson_devices::BlockDevice;
use caisson_layout::{paths, CaissonParams, RootSpec, RootVerity};
use nix::sys::reboot::{reboot, RebootMode};
use nix::unistd::{getpid, sync};

use crate::error::InitError;
use crate::report::{fatal, say, starting, step_done};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() {
    let pid = getpid().as_raw();
    if pid != 1 {
        say(&format!("caisson-init: refusing to run as pid {pid}: this is the initramfs /init and must be PID 1"));
        std::process::exit(1);
    }
    // A panic would kill PID 1 and hang the kernel; treat it like any
    // other failure so boot counting still works.
    std::panic::set_hook(Box::new(|info| {
        say(&fatal(&format!("panic: {info}")));
        reboot_after_delay();
    }));
    let error = match boot() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    say(&fatal(&error));
    reboot_after_delay();
}

/// Run one named step and log how long it took.
fn timed<T>(name: &str, f: impl FnOnce() -> Result<T, InitError>) -> Result<T, InitError> {
    let start = Instant::now();
    let value = f()?;
    say(&step_done(name, start.elapsed()));
    Ok(value)
}

fn boot() -> Result<Infallible, InitError> {
    say(&starting(VERSION));
    timed("pseudo filesystems", steps::mount_pseudo_filesystems)?;
    let params = timed("kernel command line", steps::read_params)?;
    let mode = verity::mode(&params)?;
    say(&format!(
        "caisson-init: slot {}, root {}, rootwait {} s, verity {}",
        params.slot,
        params.root.render(),
        params.rootwait.as_secs(),
        match mode {
            RootVerity::Off => "off".to_string(),
            RootVerity::Verified(p) => verity::short_hash(&p.root_hash),
        }
    ));
    let module_failures = timed("modules", || Ok(steps::load_modules()))?;
    let root = timed("root device", || find_root(&params, &module_failures))?;
    say(&format!("caisson-init: root is {}", root.describe()));
    let root_hash = mount_root(mode, &root)?;
    steps::write_root_hint(&root.device)?;
    steps::write_backing_hint(root.backing_file.as_deref())?;
    steps::write_verity_hint(root_hash.as_deref())?;
    switch_root::switch_root(Path::new(paths::SYSROOT), paths::AGENT_PATH)
}

/// The block device the root is read from: a partition, or (live boot) a
/// loop device over an image file in the initramfs.
struct RootSource {
    device: BlockDevice,
    backing_file: Option<PathBuf>,
}

impl RootSource {
    /// `/dev/vda2`, or `/dev/loop0 (loop over /caisson/root.img from the initramfs)`.
    fn describe(&self) -> String {
        match &self.backing_file {
            Some(file) => format!(
                "{} (loop over {} from the initramfs)",
                self.device.dev_path.display(),
                file.display()
            ),
            None => self.device.dev_path.display().to_string(),
        }
    }
}

/// Wait for the partition the command line names, or bind the initramfs
/// image it names to a loop device (nothing to wait for: it is in memory).
fn find_root(params: &CaissonParams, module_failures: &[String]) -> Result<RootSource, InitError> {
    match &params.root {
        RootSpec::Initrd(path) => {
            let attached = loop_device::attach(Path::new(path)).map_err(|e| {
                match (e, module_failures.is_empty()) {
                    (InitError::RootImage { path, reason }, false) => InitError::RootImage {
                        path,
                        reason: format!(
                            "{reason}; modules that failed to load: {}",
                            module_failures.join(", ")
                        ),
                    },
                    (e, _) => e,
                }
            })?;
            Ok(RootSource {
                device: attached.device,
                backing_file: Some(attached.backing_file),
            })
        }
        RootSpec::PartUuid(_) | RootSpec::PartLabel(_) => Ok(RootSource {
            device: steps::wait_for_root(params, module_failures)?,
            backing_file: None,
        }),
    }
}

/// Mount the root on /sysroot, under dm-verity unless the entry said
/// `caisson.verity=off`; the root hash it was mounted under, if any.
fn mount_root(mode: &RootVerity, root: &RootSource) -> Result<Option<String>, InitError> {
    let device = &root.device;
    let params = match mode {
        RootVerity::Off => {
            timed("mount root", || steps::mount_root(&device.dev_path))?;
            say("caisson-init: root NOT verified: the boot entry says caisson.verity=off");
            return Ok(None);
        }
        RootVerity::Verified(params) => params,
    };
    let mut active = timed("dm-verity", || verity::open(device, params))?;
    say(&format!(
        "caisson-init: dm-verity table: {}",
        active.table_line()
    ));
    timed("mount root", || steps::mount_root(&active.node)).map_err(|cause| {
        // EIO from the mount or the agent lookup: say it was verity.
        match active.corrupted() {
            Some(true) => InitError::RootCorrupted {
                device: root.describe(),
                root_hash: verity::short_hash(&params.root_hash),
                cause: Box::new(cause),
            },
            _ => cause,
        }
    })?;
    active.restart_on_corruption()?;
    say(&format!(
        "caisson-init: root verified by dm-verity (root hash {}){}",
        verity::short_hash(&active.root_hash),
        match &root.backing_file {
            Some(file) => format!(", from the initramfs image {}", file.display()),
            None => String::new(),
        }
    ));
    Ok(Some(params.root_hash.clone()))
}

fn reboot_after_delay() -> ! {
    std::thread::sleep(Duration::from_secs(5));
    sync();
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    // Only reached if reboot(2) failed: keep PID 1 alive, never exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
