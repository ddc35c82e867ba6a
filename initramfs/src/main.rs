//! caisson-init: stage 1, PID 1 in the initramfs.
//!
//! Mount the API filesystems, load the root's drivers, wait for the root
//! partition named on the command line, put dm-verity over it (unless the
//! entry says `caisson.verity=off`), mount it, and switch to it running
//! node-agent. Any failure prints one `caisson-init: FATAL: …` line and
//! reboots after 5 s, so systemd-boot's counter falls back to the other
//! slot; there is never a shell.

// PID 1 must not panic: outside tests, every fallible call is handled.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

mod dm;
mod error;
mod report;
mod steps;
mod switch_root;
mod verity;

use std::convert::Infallible;
use std::path::Path;
use std::time::{Duration, Instant};

use caisson_devices::BlockDevice;
use caisson_layout::{paths, RootVerity};
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
    let device = timed("root device", || {
        steps::wait_for_root(&params, &module_failures)
    })?;
    say(&format!(
        "caisson-init: root is {}",
        device.dev_path.display()
    ));
    let root_hash = mount_root(mode, &device)?;
    steps::write_root_hint(&device)?;
    steps::write_verity_hint(root_hash.as_deref())?;
    switch_root::switch_root(Path::new(paths::SYSROOT), paths::AGENT_PATH)
}

/// Mount the root on /sysroot, under dm-verity unless the entry said
/// `caisson.verity=off`; the root hash it was mounted under, if any.
fn mount_root(mode: &RootVerity, device: &BlockDevice) -> Result<Option<String>, InitError> {
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
                device: device.dev_path.clone(),
                root_hash: verity::short_hash(&params.root_hash),
                cause: Box::new(cause),
            },
            _ => cause,
        }
    })?;
    active.restart_on_corruption()?;
    say(&format!(
        "caisson-init: root verified by dm-verity (root hash {})",
        verity::short_hash(&active.root_hash)
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
