//! Orderly power-off and reboot.
//!
//! Requests come from the power button ([`crate::input`]), from signals
//! (SIGTERM and SIGPWR power off; Ctrl-Alt-Del, which the kernel turns into
//! SIGINT for PID 1, reboots) and from the API (reboot, shutdown, reset). The first request
//! runs the shutdown [`PLAN`]: its steps are data, so later work inserts
//! "stop services in reverse dependency order" as its own step before the
//! kill-all without touching the rest.

use std::fmt;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::reboot::RebootMode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::mounts::{self, mountinfo::MountEntry};
use crate::reaper::Reaper;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownAction {
    PowerOff,
    Reboot,
}

impl fmt::Display for ShutdownAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownAction::PowerOff => "power-off",
            ShutdownAction::Reboot => "reboot",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    PowerButton,
    Sigterm,
    Sigpwr,
    CtrlAltDel,
    /// `POST /v1/reboot`, `/v1/shutdown`, `/v1/reset` or `apply --mode reboot`.
    Api,
    /// The installer wrote and checked a disk: reboot into it.
    Install,
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownReason::PowerButton => "power button",
            ShutdownReason::Sigterm => "SIGTERM",
            ShutdownReason::Sigpwr => "SIGPWR",
            ShutdownReason::CtrlAltDel => "Ctrl-Alt-Del",
            ShutdownReason::Api => "the API",
            ShutdownReason::Install => "the installer",
        })
    }
}

/// Someone wants the node off or restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub action: ShutdownAction,
    pub reason: ShutdownReason,
}

impl fmt::Display for Request {
    /// `power-off requested by power button`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} requested by {}", self.action, self.reason)
    }
}

/// One step of the shutdown sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// SIGTERM to every process, a grace period, then SIGKILL.
    KillAll,
    Sync,
    /// Every storage-backed mount, children first; read-only if busy.
    Unmount,
}

/// The shutdown sequence, in order. Services (a later issue) will be
/// stopped by a step placed before `KillAll`.
pub const PLAN: &[Step] = &[Step::KillAll, Step::Sync, Step::Unmount, Step::Sync];

/// How long processes get between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(10);
const KILL_GRACE: Duration = Duration::from_secs(3);
const UNMOUNT_ATTEMPTS: u32 = 5;
const UNMOUNT_RETRY: Duration = Duration::from_millis(200);

/// Turn the shutdown signals into requests. Call early: PID 1 ignores any
/// signal it has no handler for, so a signal before this is lost.
pub fn forward_signals(requests: mpsc::Sender<Request>) -> std::io::Result<()> {
    let table = [
        (
            SignalKind::terminate(),
            Request {
                action: ShutdownAction::PowerOff,
                reason: ShutdownReason::Sigterm,
            },
        ),
        (
            SignalKind::from_raw(Signal::SIGPWR as i32),
            Request {
                action: ShutdownAction::PowerOff,
                reason: ShutdownReason::Sigpwr,
            },
        ),
        (
            SignalKind::interrupt(),
            Request {
                action: ShutdownAction::Reboot,
                reason: ShutdownReason::CtrlAltDel,
            },
        ),
    ];
    for (kind, request) in table {
        let mut stream = signal(kind)?;
        let requests = requests.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if requests.send(request).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// How long an API call's shutdown waits, so the HTTP response (and its
/// audit line) goes out first.
pub const API_GRACE: Duration = Duration::from_millis(500);

/// Ask for `action` on behalf of the API, [`API_GRACE`] from now. Needs the
/// tokio runtime.
pub fn request_from_api(requests: &mpsc::Sender<Request>, action: ShutdownAction) {
    let requests = requests.clone();
    tokio::spawn(async move {
        tokio::time::sleep(API_GRACE).await;
        let request = Request {
            action,
            reason: ShutdownReason::Api,
        };
        if requests.send(request).await.is_err() {
            error!("shutdown: {request}, but the shutdown path is gone");
        }
    });
}

/// Make Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once.
pub fn disable_ctrl_alt_del() {
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        warn!("cannot hand Ctrl-Alt-Del to the agent (reboot(RB_DISABLE_CAD)): {e}");
    }
}

/// Run the plan, then power off or reboot. Never returns.
pub async fn shutdown(request: Request, reaper: &Reaper) -> ! {
    info!("shutdown: {request}");
    for step in PLAN {
        match step {
            Step::KillAll => kill_all(reaper).await,
            Step::Sync => {
                info!("shutdown: syncing filesystems");
                nix::unistd::sync();
            }
            Step::Unmount => unmount_all().await,
        }
    }
    let (line, mode) = match request.action {
        ShutdownAction::PowerOff => ("shutdown: powering off", RebootMode::RB_POWER_OFF),
        ShutdownAction::Reboot => ("shutdown: rebooting", RebootMode::RB_AUTOBOOT),
    };
    info!("{line}");
    let Err(e) = nix::sys::reboot::reboot(mode);
    error!("shutdown: reboot(2) failed: {e}; halting here");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn kill_all(reaper: &Reaper) {
    let started = Instant::now();
    info!("shutdown: sending SIGTERM to all processes");
    signal_all(Signal::SIGTERM);
    if reaper.wait_for_no_children(TERM_GRACE).await {
        info!(
            "shutdown: all processes exited after {} ms",
            started.elapsed().as_millis()
        );
        return;
    }
    warn!(
        "shutdown: processes still running after {} s; sending SIGKILL",
        TERM_GRACE.as_secs()
    );
    signal_all(Signal::SIGKILL);
    if !reaper.wait_for_no_children(KILL_GRACE).await {
        warn!("shutdown: processes survived SIGKILL (stuck in the kernel?); going on");
    }
}

/// kill(-1): every process but PID 1 and kernel threads.
fn signal_all(signal: Signal) {
    match kill(Pid::from_raw(-1), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => warn!("shutdown: kill(-1, {signal}): {e}"),
    }
}

async fn unmount_all() {
    let table = match mounts::current_mounts() {
        Ok(table) => table,
        Err(e) => {
            error!("shutdown: cannot plan unmounts: {e}");
            return;
        }
    };
    for entry in mounts::mountinfo::unmount_order(&table) {
        unmount(&entry).await;
    }
}

/// Unmount, retrying briefly while busy; if it stays busy, remount
/// read-only so that at least nothing is lost.
async fn unmount(entry: &MountEntry) {
    let path = entry.mount_point.display();
    let mut last = Errno::UnknownErrno;
    for attempt in 1..=UNMOUNT_ATTEMPTS {
        match umount2(&entry.mount_point, MntFlags::empty()) {
            Ok(()) => {
                info!("shutdown: unmounted {path}");
                return;
            }
            // Gone already (e.g. with a parent that was detached).
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return,
            Err(Errno::EBUSY) if attempt < UNMOUNT_ATTEMPTS => {
                last = Errno::EBUSY;
                tokio::time::sleep(UNMOUNT_RETRY).await;
            }
            Err(e) => {
                last = e;
                break;
            }
        }
    }
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    match nix::mount::mount(
        None::<&str>,
        &entry.mount_point,
        None::<&str>,
        flags,
        None::<&str>,
    ) {
        Ok(()) => warn!("shutdown: cannot unmount {path} ({last}); remounted read-only"),
        Err(e) => {
            let holders = holders_of(&entry.mount_point);
            error!(
                "shutdown: cannot unmount {path} ({last}) nor remount it read-only ({e}); held by: {}",
                if holders.is_empty() { "no open file or working directory of any process".to_string() } else { holders.join(", ") }
            );
            // Synced already; detach it so the kernel finishes once the
            // last reference goes.
            if umount2(&entry.mount_point, MntFlags::MNT_DETACH).is_ok() {
                warn!("shutdown: {path} detached (lazy unmount)");
            }
        }
    }
}

/// Who keeps `mount` busy: open files, working directories and roots of
/// every process, and mounts below it in other mount namespaces.
fn holders_of(mount: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let base = p.path();
        for link in ["cwd", "root"] {
            if let Ok(target) = std::fs::read_link(base.join(link)) {
                if target.starts_with(mount) && target != std::path::Path::new("/") {
                    out.push(format!("pid {pid} {link} {}", target.display()));
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    if target.starts_with(mount) {
                        out.push(format!("pid {pid} fd {} {}", fd.file_name().to_string_lossy(), target.display()));
                    }
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(base.join("mountinfo")) {
            for e in mounts::mountinfo::parse(&text) {
                if e.mount_point.starts_with(mount) && e.mount_point != mount {
                    out.push(format!("pid {pid}'s mount namespace: {}", e.mount_point.display()));
                }
            }
        }
        if out.len() > 20 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_the_action_and_who_asked() {
        let r = Request {
            action: ShutdownAction::PowerOff,
            reason: ShutdownReason::PowerButton,
        };
        assert_eq!(r.to_string(), "power-off requested by power button");
        let r = Request {
            action: ShutdownAction::Reboot,
            reason: ShutdownReason::CtrlAltDel,
        };
        assert_eq!(r.to_string(), "reboot requested by Ctrl-Alt-Del");
        let r = Request {
            action: ShutdownAction::PowerOff,
            reason: ShutdownReason::Sigpwr,
        };
        assert_eq!(r.to_string(), "power-off requested by SIGPWR");
        let r = Request {
            action: ShutdownAction::Reboot,
            reason: ShutdownReason::Api,
        };
        assert_eq!(r.to_string(), "reboot requested by the API");
    }

    #[test]
    fn processes_stop_before_the_disks_go_and_data_is_synced_around_unmounting() {
        let at = |s: Step| PLAN.iter().position(|p| *p == s).unwrap();
        assert_eq!(at(Step::KillAll), 0);
        assert!(at(Step::Sync) < at(Step::Unmount));
        assert_eq!(PLAN.last(), Some(&Step::Sync));
    }
}
