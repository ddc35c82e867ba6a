//! caisson-init: stage 1, PID 1 in the initramfs.
//!
//! Mount the API filesystems, load the root's drivers, wait for the root
//! partition named on the command line, mount it, and switch to it running
//! node-agent. Any failure prints one `caisson-init: FATAL: …` line and
//! reboots after 5 s, so systemd-boot's counter falls back to the other
//! slot; there is never a shell.

mod error;
mod report;
mod steps;
mod switch_root;

use std::convert::Infallible;
use std::path::Path;
use std::time::{Duration, Instant};

use caisson_layout::paths;
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
    say(&format!(
        "caisson-init: slot {}, root {}, rootwait {} s",
        params.slot,
        params.root.render(),
        params.rootwait.as_secs()
    ));
    let module_failures = timed("modules", || Ok(steps::load_modules()))?;
    let device = timed("root device", || {
        steps::wait_for_root(&params, &module_failures)
    })?;
    say(&format!(
        "caisson-init: root is {}",
        device.dev_path.display()
    ));
    timed("mount root", || steps::mount_root(&device))?;
    steps::write_root_hint(&device)?;
    switch_root::switch_root(Path::new(paths::SYSROOT), paths::AGENT_PATH)
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
