//! One service as the supervisor and its task share it: the record that
//! `status()` reads (behind a lock held for a few assignments, never across
//! an await), its health, its logs, and how its process is started.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use caisson_api::types::ServiceStatus;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::cgroup::{self, Slice};
use super::logfile::LogWriter;
use super::output;
use super::probe::Probe;
use super::spec::{Conditions, Health, ServiceSpec, DEFAULT_PATH};
use super::state::{exit_text, human, Phase, Record};
use super::{StopOutcome, SupervisorError};
use crate::logs::LogRing;
use crate::reaper::{ExitStatus, Reaper};

/// Lines of a service's output kept in memory.
pub const RING_LINES: usize = 1000;
/// How long a killed process is given to be reaped before it is killed
/// again (and, after that, given up on).
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// What every service task shares.
/// How long a pre-start command may take.
pub const PRE_START_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) struct Ctx {
    pub reaper: Arc<Reaper>,
    pub slice: Option<Slice>,
    pub conditions: watch::Receiver<Conditions>,
    /// Set by `stop_all`: from then on nothing is started.
    pub stopping: AtomicBool,
}

impl Ctx {
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// What the supervisor asks of a service's task.
pub(super) enum ServiceCommand {
    Restart(oneshot::Sender<Result<(), SupervisorError>>),
    Stop(oneshot::Sender<StopOutcome>),
}

pub(super) struct Service {
    index: usize,
    pub spec: ServiceSpec,
    pub ring: LogRing,
    record: Mutex<Record>,
    healthy: watch::Sender<bool>,
    group_dir: Option<PathBuf>,
    logs: LogWriter,
    /// Lines that did not reach the log file.
    dropped: Arc<AtomicU64>,
}

impl Service {
    pub fn new(
        index: usize,
        spec: ServiceSpec,
        slice: Option<&Slice>,
        logs: LogWriter,
        dropped: Arc<AtomicU64>,
    ) -> Service {
        let probed = matches!(spec.health, Health::Probe { .. });
        Service {
            index,
            group_dir: slice.map(|s| s.dir().join(&spec.name)),
            spec,
            ring: LogRing::new(RING_LINES, crate::logs::ring::FOLLOW_LAG),
            record: Mutex::new(Record::new(probed, Instant::now())),
            healthy: watch::Sender::new(false),
            logs,
            dropped,
        }
    }

    pub(super) fn record(&self) -> MutexGuard<'_, Record> {
        // Every update is a few assignments: a poisoned record is usable.
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn subscribe_health(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    pub fn status(&self) -> ServiceStatus {
        let now = Instant::now();
        let mut status = {
            let r = self.record();
            ServiceStatus {
                name: self.spec.name.clone(),
                state: r.state_text(now),
                healthy: r.healthy,
                restarts: r.restarts,
                pid: r.pid.and_then(|p| u32::try_from(p).ok()),
                health: r.health.clone(),
                last_exit: r.last_exit.as_ref().map(|(how, _)| how.clone()),
                last_exit_secs_ago: r
                    .last_exit
                    .as_ref()
                    .map(|(_, at)| now.saturating_duration_since(*at).as_secs()),
                since_secs: now.saturating_duration_since(r.since).as_secs(),
                memory_bytes: None,
                log_lines_dropped: 0,
            }
        };
        // Outside the lock: a read of the kernel's counter.
        status.memory_bytes = self.group_dir.as_deref().and_then(cgroup::memory_current);
        status.log_lines_dropped = self.dropped.load(Ordering::Relaxed);
        status
    }

    /// One line of the service's output: to its ring and, without waiting,
    /// to its file.
    pub fn log_line(&self, line: &str) {
        if line.is_empty() {
            return;
        }
        self.ring.push(line);
        if !self.logs.send(self.index, Arc::from(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What the supervisor did, in the service's log and the agent's.
    pub(super) fn event(&self, text: &str) {
        info!("service {}: {text}", self.spec.name);
        self.log_line(&format!("-- node-agent: {text} --"));
    }

    pub(super) fn set_phase(&self, phase: Phase) {
        self.record().set_phase(phase, Instant::now());
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy
            .send_if_modified(|h| std::mem::replace(h, healthy) != healthy);
    }

    /// A probe's answer about process `instance`.
    fn probed(&self, instance: u64, result: Result<String, String>) {
        let ok = result.is_ok();
        let detail = match result {
            Ok(d) | Err(d) => d,
        };
        let changed = {
            let mut r = self.record();
            if r.instance != instance || r.phase != Phase::Running {
                return;
            }
            r.health = Some(detail.clone());
            std::mem::replace(&mut r.healthy, ok) != ok
        };
        if changed {
            self.set_healthy(ok);
            self.event(&if ok {
                format!("healthy: {detail}")
            } else {
                format!("unhealthy: {detail}")
            });
        }
    }

    /// The process ended (or was given up on): record how.
    pub(super) fn ended(&self, status: Option<ExitStatus>) -> String {
        let how = status.map_or_else(|| "exit status lost".to_string(), exit_text);
        {
            let mut r = self.record();
            r.pid = None;
            r.healthy = false;
            r.last_exit = Some((how.clone(), Instant::now()));
        }
        self.set_healthy(false);
        how
    }

    /// Run `argv` (a pre-start command) to its end, output discarded, for
    /// at most [`PRE_START_LIMIT`].
    pub(super) async fn run_to_end(&self, ctx: &Ctx, argv: &[String]) -> Result<(), String> {
        let (program, args) = argv.split_first().ok_or("empty command")?;
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let spawned = ctx.reaper.spawn(&mut command).map_err(|e| e.to_string())?;
        match tokio::time::timeout(PRE_START_LIMIT, spawned.exit).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("ended: {status}")),
            Ok(Err(_)) => Err("its exit status was lost".into()),
            Err(_) => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(spawned.pid), nix::sys::signal::Signal::SIGKILL);
                Err(format!("still running after {} s; killed", PRE_START_LIMIT.as_secs()))
            }
        }
    }

    /// Start the process: its own cgroup and session, output into the logs.
    pub(super) fn spawn(self: &Arc<Self>, ctx: &Ctx) -> io::Result<Running> {
        let group = ctx.slice.as_ref().and_then(|slice| {
            slice
                .group(&self.spec.name, self.spec.memory_max)
                .map_err(|e| {
                    self.event(&format!("no cgroup of its own ({e}); started without one"))
                })
                .ok()
        });
        let procs = group.as_ref().and_then(|g| {
            g.open_procs()
                .map_err(|e| {
                    self.event(&format!("cannot join its cgroup ({e}); started outside it"))
                })
                .ok()
        });
        let (read, write) = output::pipe()?;
        let mut command = Command::new(&self.spec.program);
        command
            .args(&self.spec.args)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(&self.spec.env)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::from(write.try_clone()?))
            .stderr(Stdio::from(write));
        cgroup::join_before_exec(&mut command, procs.as_ref());
        let spawned = ctx.reaper.spawn(&mut command);
        // Our copies of the pipe's write end must go, or it never ends.
        drop(command);
        drop(procs);
        let spawned = spawned?;

        let reader = self.clone();
        tokio::spawn(async move {
            if let Err(e) = output::forward(read, |line| reader.log_line(line)).await {
                warn!("service {}: reading its output: {e}", reader.spec.name);
            }
        });
        let instance = {
            let mut r = self.record();
            r.instance += 1;
            r.pid = Some(spawned.pid);
            r.health = None;
            r.healthy = !r.probed;
            r.set_phase(Phase::Running, Instant::now());
            r.instance
        };
        self.set_healthy(!matches!(self.spec.health, Health::Probe { .. }));
        self.event(&format!(
            "started {} (pid {})",
            self.spec.program.display(),
            spawned.pid
        ));
        let probe = match &self.spec.health {
            Health::Process => None,
            Health::Probe {
                probe,
                interval,
                timeout,
            } => Some(tokio::spawn(probe_loop(
                self.clone(),
                instance,
                probe.clone(),
                *interval,
                *timeout,
            ))),
        };
        Ok(Running {
            pid: spawned.pid,
            exit: spawned.exit,
            started: Instant::now(),
            probe,
            group,
        })
    }
}

async fn probe_loop(
    service: Arc<Service>,
    instance: u64,
    probe: Arc<dyn Probe>,
    interval: Duration,
    timeout: Duration,
) {
    loop {
        let result = match tokio::time::timeout(timeout, probe.check()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}", human(timeout))),
        };
        service.probed(instance, result);
        tokio::time::sleep(interval).await;
    }
}

/// A started process.
pub(super) struct Running {
    pub pid: i32,
    pub exit: oneshot::Receiver<ExitStatus>,
    pub started: Instant,
    probe: Option<JoinHandle<()>>,
    pub group: Option<cgroup::ServiceGroup>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(probe) = &self.probe {
            probe.abort();
        }
    }
}
