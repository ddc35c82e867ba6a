//! Zombie reaping for PID 1, and exit statuses for the processes the agent
//! starts itself.
//!
//! Every orphan on the node becomes a child of PID 1, so the agent must
//! `waitpid(-1)` on SIGCHLD. That also reaps the agent's own services, so
//! their statuses are handed over here: a process started through
//! [`Reaper::spawn`] is registered under the same lock the reaper holds while
//! it waits, so its exit can never be reaped before someone is waiting for it.
//! Nothing else in the agent may wait for children (no `tokio::process`, no
//! `std::process::Child::wait`): those would race with `waitpid(-1)`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }

    fn from_wait(status: WaitStatus) -> Option<(i32, ExitStatus)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid.as_raw(), ExitStatus::Exited(code))),
            WaitStatus::Signaled(pid, signal, core_dumped) => Some((
                pid.as_raw(),
                ExitStatus::Signaled {
                    signal: signal as i32,
                    core_dumped,
                },
            )),
            // Stopped/continued are only reported with WUNTRACED/WCONTINUED,
            // which the reaper does not ask for.
            _ => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exited with status {code}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                write!(
                    f,
                    "killed by signal {signal}{}",
                    if *core_dumped { " (core dumped)" } else { "" }
                )
            }
        }
    }
}

/// What happened to a reaped status.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Handed to the task that started the process.
    Delivered,
    /// Nobody waits for this pid: an orphan reparented to PID 1.
    Orphan,
    /// The process was registered but whoever waited has gone away.
    WaiterGone,
}

/// Who waits for which pid. Pure bookkeeping, no system calls.
#[derive(Debug, Default)]
pub struct Waiters {
    by_pid: HashMap<i32, oneshot::Sender<ExitStatus>>,
}

impl Waiters {
    pub fn register(&mut self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        if self.by_pid.insert(pid, tx).is_some() {
            // A pid is only reused after it was reaped, which removes it.
            warn!("reaper: pid {pid} was registered twice; the first waiter is dropped");
        }
        rx
    }

    pub fn deliver(&mut self, pid: i32, status: ExitStatus) -> Delivery {
        match self.by_pid.remove(&pid) {
            None => Delivery::Orphan,
            Some(tx) => match tx.send(status) {
                Ok(()) => Delivery::Delivered,
                Err(_) => Delivery::WaiterGone,
            },
        }
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

/// A process started through the reaper.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// The result of one reaping pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub reaped: Vec<(i32, ExitStatus, Delivery)>,
    /// False once waitpid says the agent has no children at all, which (for
    /// PID 1) means no user-space process is left on the node.
    pub children_left: bool,
}

#[derive(Debug, Default)]
pub struct Reaper {
    waiters: Mutex<Waiters>,
}

impl Reaper {
    pub fn new() -> Reaper {
        Reaper::default()
    }

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (each operation is one insert or remove), so keep using it.
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Start `command` and register its pid before anyone can reap it.
    pub fn spawn(&self, command: &mut Command) -> io::Result<Spawned> {
        let mut waiters = self.waiters();
        let child = command.spawn()?;
        let pid = i32::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
        // Dropping `child` neither kills nor waits for the process.
        drop(child);
        Ok(Spawned {
            pid,
            exit: waiters.register(pid),
        })
    }

    /// Reap every child that has exited, without blocking.
    pub fn reap(&self) -> Pass {
        let mut waiters = self.waiters();
        let mut pass = Pass::default();
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    pass.children_left = true;
                    break;
                }
                Ok(status) => {
                    if let Some((pid, exit)) = ExitStatus::from_wait(status) {
                        let delivery = waiters.deliver(pid, exit);
                        debug!("reaper: pid {pid} {exit} ({delivery:?})");
                        pass.reaped.push((pid, exit, delivery));
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => break,
                Err(e) => {
                    warn!("reaper: waitpid: {e}");
                    pass.children_left = true;
                    break;
                }
            }
        }
        pass
    }

    /// Reap on every SIGCHLD, for as long as the agent runs.
    pub async fn run(&self, mut sigchld: tokio::signal::unix::Signal) {
        // Children may have exited before the handler was installed.
        self.reap();
        while sigchld.recv().await.is_some() {
            self.reap();
        }
        warn!("reaper: SIGCHLD stream ended; reaping every second instead");
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.reap();
        }
    }

    /// Reap until no child is left or `limit` passes. Returns true if all
    /// children are gone.
    pub async fn wait_for_no_children(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if !self.reap().children_left {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// waitpid(-1) reaps any child of the test process: tests that spawn
    /// take this lock so they do not reap each other's processes.
    static SPAWNING: Mutex<()> = Mutex::new(());

    #[test]
    fn statuses_reach_their_waiters_and_orphans_are_recognised() {
        let mut w = Waiters::default();
        let mut rx = w.register(42);
        let dropped = w.register(43);
        drop(dropped);
        assert_eq!(w.len(), 2);
        assert_eq!(w.deliver(42, ExitStatus::Exited(3)), Delivery::Delivered);
        assert_eq!(rx.try_recv(), Ok(ExitStatus::Exited(3)));
        assert_eq!(w.deliver(43, ExitStatus::Exited(0)), Delivery::WaiterGone);
        assert_eq!(w.deliver(44, ExitStatus::Exited(0)), Delivery::Orphan);
        // A pid delivered once is forgotten: its reuse is an orphan.
        assert_eq!(w.deliver(42, ExitStatus::Exited(0)), Delivery::Orphan);
        assert!(w.is_empty());
    }

    #[test]
    fn exit_statuses_read_well() {
        assert_eq!(ExitStatus::Exited(1).to_string(), "exited with status 1");
        let killed = ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(killed.to_string(), "killed by signal 9");
        assert!(ExitStatus::Exited(0).success() && !killed.success());
    }

    fn reap_until_none_left(reaper: &Reaper) -> Vec<(i32, ExitStatus, Delivery)> {
        let mut all = Vec::new();
        for _ in 0..200 {
            let pass = reaper.reap();
            all.extend(pass.reaped);
            if !pass.children_left {
                return all;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("children did not exit: {all:?}");
    }

    #[test]
    fn spawned_processes_get_their_exit_status_from_the_reaper() {
        let _serial = SPAWNING.lock().unwrap_or_else(|p| p.into_inner());
        let reaper = Reaper::new();
        let mut exits = reaper
            .spawn(Command::new("sh").args(["-c", "exit 3"]))
            .unwrap();
        let mut killed = reaper
            .spawn(Command::new("sh").args(["-c", "kill -9 $$"]))
            .unwrap();
        let reaped = reap_until_none_left(&reaper);
        assert_eq!(reaped.len(), 2, "{reaped:?}");
        assert!(reaped.iter().all(|(_, _, d)| *d == Delivery::Delivered));
        assert_eq!(exits.exit.try_recv(), Ok(ExitStatus::Exited(3)));
        assert_eq!(
            killed.exit.try_recv(),
            Ok(ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            })
        );
        assert!(exits.pid > 0 && killed.pid != exits.pid);
    }

    #[test]
    fn orphans_reparented_to_a_subreaper_are_reaped() {
        let _serial = SPAWNING.lock().unwrap_or_else(|p| p.into_inner());
        // Make the test process stand in for PID 1.
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        let reaper = Reaper::new();
        // The shell exits at once; its background child is reparented to us.
        let mut parent = reaper
            .spawn(Command::new("sh").args(["-c", "sleep 0.2 & exit 0"]))
            .unwrap();
        let reaped = reap_until_none_left(&reaper);
        assert_eq!(parent.exit.try_recv(), Ok(ExitStatus::Exited(0)));
        let orphans: Vec<_> = reaped
            .iter()
            .filter(|(_, _, d)| *d == Delivery::Orphan)
            .collect();
        assert_eq!(orphans.len(), 1, "{reaped:?}");
        assert_eq!(orphans[0].1, ExitStatus::Exited(0));
    }

    #[test]
    fn waiting_for_no_children_returns_once_they_are_gone() {
        let _serial = SPAWNING.lock().unwrap_or_else(|p| p.into_inner());
        let reaper = Reaper::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        reaper
            .spawn(Command::new("sh").args(["-c", "sleep 0.1"]))
            .unwrap();
        assert!(rt.block_on(reaper.wait_for_no_children(Duration::from_secs(5))));
        let mut long = reaper.spawn(Command::new("sleep").arg("5")).unwrap();
        assert!(!rt.block_on(reaper.wait_for_no_children(Duration::from_millis(100))));
        nix::sys::signal::kill(Pid::from_raw(long.pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        assert!(rt.block_on(reaper.wait_for_no_children(Duration::from_secs(5))));
        assert!(matches!(
            long.exit.try_recv(),
            Ok(ExitStatus::Signaled { signal: 9, .. })
        ));
    }
}
