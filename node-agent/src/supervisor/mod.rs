//! The service supervisor: runs the node's long-lived programs (containerd,
//! k3s) as PID 1's children.
//!
//! Each [`ServiceSpec`] gets its own task, cgroup (`<root>/caisson.slice/
//! <name>`, joined between fork and exec), in-memory log ring and rotated
//! log file. A service starts once its [`Condition`]s hold and every
//! dependency is healthy; it is restarted by its [`Restart`] policy with
//! exponential [`Backoff`]; its [`Health`] is its process running or a
//! [`Probe`] answering. [`Supervisor::stop_all`] stops dependants before
//! what they depend on: SIGTERM, then after `stop_timeout` a kill of the
//! whole cgroup; then it closes the log files, which are on DATA.
//!
//! One service never stalls another or the agent: each is a task of its
//! own, the only lock is a record held for a few assignments, and
//! [`Supervisor::status`] reads those records (and `memory.current`)
//! without awaiting anything. Processes are started through the agent's
//! [`Reaper`], the only waiter for children.

pub mod cgroup;
mod graph;
pub mod logfile;
pub mod output;
pub mod probe;
mod service;
pub mod spec;
mod state;
mod task;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caisson_api::types::ServiceStatus;
use caisson_api::ApiError;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

pub use logfile::{LogLimits, LOG_DIR};
pub use probe::{HttpGet, Probe, UnixSocketConnect};
pub use spec::{Backoff, Condition, Conditions, Health, KillMode, Restart, ServiceSpec};

use crate::logs::LogRing;
use crate::reaper::{ExitStatus, Reaper};
use service::{Ctx, Service, ServiceCommand};
use task::{Dep, Task};

#[derive(Debug, Error)]
pub enum SupervisorError {
    #[error("service name {name:?} is not allowed: {why}")]
    InvalidName { name: String, why: String },
    #[error("service {0:?} is defined twice")]
    Duplicate(String),
    #[error("service {service:?} depends on {dep:?}, which is not defined")]
    UnknownDependency { service: String, dep: String },
    /// The services along the cycle, the first repeated at the end.
    #[error("services depend on each other in a cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    #[error("services can only be started from within the agent's async runtime")]
    NoRuntime,
    #[error("no service named {0:?}")]
    UnknownService(String),
    #[error("services are being stopped: the node is shutting down")]
    ShuttingDown,
    #[error("service {name:?} is not healthy after {waited:?} ({state})")]
    NotHealthy {
        name: String,
        waited: Duration,
        state: String,
    },
}

/// Exhaustive: a new variant must be given a status here.
impl From<SupervisorError> for ApiError {
    fn from(e: SupervisorError) -> ApiError {
        match e {
            SupervisorError::UnknownService(_) => ApiError::NotFound(e.to_string()),
            SupervisorError::ShuttingDown => ApiError::Conflict(e.to_string()),
            SupervisorError::NotHealthy { .. } => ApiError::Conflict(e.to_string()),
            SupervisorError::InvalidName { .. }
            | SupervisorError::Duplicate(_)
            | SupervisorError::UnknownDependency { .. }
            | SupervisorError::Cycle(_)
            | SupervisorError::NoRuntime => ApiError::Internal(e.to_string()),
        }
    }
}

/// How long `stop_all` waits for the service log files to be written and closed.
const LOG_CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// How a service's process ended when it was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// No process was running.
    NotRunning,
    /// It ended within its stop timeout.
    Exited(ExitStatus),
    /// It had to be killed.
    Killed(ExitStatus),
    /// Its exit status never came: the reaper is not running.
    Lost,
}

impl fmt::Display for StopOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopOutcome::NotRunning => f.write_str("was not running"),
            StopOutcome::Exited(s) => write!(f, "{}", state::exit_text(*s)),
            StopOutcome::Killed(s) => write!(f, "{} after its stop timeout", state::exit_text(*s)),
            StopOutcome::Lost => f.write_str("exit status lost"),
        }
    }
}

/// One service's part of [`Supervisor::stop_all`], in the order stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub name: String,
    pub outcome: StopOutcome,
    pub took: Duration,
}

struct Handle {
    service: Arc<Service>,
    commands: mpsc::UnboundedSender<ServiceCommand>,
}

pub struct Supervisor {
    reaper: Arc<Reaper>,
    cgroup_root: PathBuf,
    log_dir: PathBuf,
    log_limits: LogLimits,
    conditions: watch::Receiver<Conditions>,
    /// Set by `start`, in the order the specs were given.
    handles: Vec<Handle>,
    /// For each service, the indices of its dependencies.
    deps: Vec<Vec<usize>>,
    ctx: Option<Arc<Ctx>>,
    /// The services' log files, closed by `stop_all`.
    log_writer: Option<logfile::LogWriter>,
    /// One `stop_all` at a time; a second waits for the first.
    stop_lock: tokio::sync::Mutex<()>,
}

impl Supervisor {
    /// Production: `cgroup_root` /sys/fs/cgroup, `log_dir` [`LOG_DIR`];
    /// `conditions` is what the agent publishes as the node comes up.
    pub fn new(
        reaper: Arc<Reaper>,
        cgroup_root: PathBuf,
        log_dir: PathBuf,
        conditions: watch::Receiver<Conditions>,
    ) -> Supervisor {
        Supervisor {
            reaper,
            cgroup_root,
            log_dir,
            log_limits: LogLimits::default(),
            conditions,
            handles: Vec::new(),
            deps: Vec::new(),
            ctx: None,
            log_writer: None,
            stop_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn with_log_limits(mut self, limits: LogLimits) -> Supervisor {
        self.log_limits = limits;
        self
    }

    /// Check the dependency graph, then start a task for each service (on
    /// the current tokio runtime). Nothing starts if the graph is wrong.
    pub fn start(mut self, specs: Vec<ServiceSpec>) -> Result<Arc<Supervisor>, SupervisorError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SupervisorError::NoRuntime)?;
        self.deps = graph::validate(&specs)?;
        let slice = cgroup::Slice::prepare(&self.cgroup_root)
            .map_err(|e| {
                warn!(
                    "supervisor: no {} under {} ({e}); services run without cgroups of their own",
                    cgroup::SLICE,
                    self.cgroup_root.display()
                )
            })
            .ok();
        let dropped: Vec<Arc<AtomicU64>> = specs.iter().map(|_| Arc::default()).collect();
        let files = specs
            .iter()
            .zip(&dropped)
            .map(|(spec, d)| {
                logfile::RotatingFile::new(&self.log_dir, &spec.name, self.log_limits, d.clone())
            })
            .collect();
        let writer = logfile::LogWriter::start(files);
        let services: Vec<Arc<Service>> = specs
            .into_iter()
            .zip(dropped)
            .enumerate()
            .map(|(i, (spec, d))| {
                Arc::new(Service::new(i, spec, slice.as_ref(), writer.clone(), d))
            })
            .collect();
        let ctx = Arc::new(Ctx {
            reaper: self.reaper.clone(),
            slice,
            conditions: self.conditions.clone(),
            stopping: AtomicBool::new(false),
        });
        for (service, deps) in services.iter().zip(&self.deps) {
            let deps = deps
                .iter()
                .filter_map(|&d| services.get(d))
                .map(|d| Dep {
                    name: d.name().to_string(),
                    healthy: d.subscribe_health(),
                })
                .collect();
            let (commands, rx) = mpsc::unbounded_channel();
            runtime.spawn(Task::new(service.clone(), ctx.clone(), deps, rx).run());
            self.handles.push(Handle {
                service: service.clone(),
                commands,
            });
        }
        self.ctx = Some(ctx);
        self.log_writer = Some(writer);
        Ok(Arc::new(self))
    }

    fn handle(&self, name: &str) -> Result<&Handle, SupervisorError> {
        self.handles
            .iter()
            .find(|h| h.service.name() == name)
            .ok_or_else(|| SupervisorError::UnknownService(name.to_string()))
    }

    fn stopping(&self) -> bool {
        self.ctx.as_ref().is_some_and(|c| c.stopping())
    }

    /// The services' names, in the order given to `start`.
    pub fn names(&self) -> Vec<&str> {
        self.handles.iter().map(|h| h.service.name()).collect()
    }

    /// Every service, in the order given to `start`. Never waits.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.handles.iter().map(|h| h.service.status()).collect()
    }

    pub fn status_of(&self, name: &str) -> Option<ServiceStatus> {
        self.handle(name).ok().map(|h| h.service.status())
    }

    /// The service's output (stdout and stderr) and the supervisor's notes.
    pub fn logs(&self, name: &str) -> Option<&LogRing> {
        self.handle(name).ok().map(|h| &h.service.ring)
    }

    /// Stop the service if it runs (SIGTERM, then kill after its stop
    /// timeout) and start it again, without backoff, once its conditions
    /// and dependencies hold. Returns once the old process is gone.
    pub async fn restart(&self, name: &str) -> Result<(), SupervisorError> {
        let handle = self.handle(name)?;
        if self.stopping() {
            return Err(SupervisorError::ShuttingDown);
        }
        let (reply, answer) = oneshot::channel();
        handle
            .commands
            .send(ServiceCommand::Restart(reply))
            .map_err(|_| SupervisorError::ShuttingDown)?;
        answer.await.unwrap_or(Err(SupervisorError::ShuttingDown))
    }

    /// Wait until the service is healthy, for at most `timeout`.
    pub async fn wait_healthy(&self, name: &str, timeout: Duration) -> Result<(), SupervisorError> {
        let handle = self.handle(name)?;
        let mut healthy = handle.service.subscribe_health();
        let started = Instant::now();
        let became = tokio::time::timeout(timeout, healthy.wait_for(|h| *h))
            .await
            .is_ok_and(|r| r.is_ok());
        if became {
            return Ok(());
        }
        Err(SupervisorError::NotHealthy {
            name: name.to_string(),
            waited: started.elapsed(),
            state: handle.service.status().state,
        })
    }

    /// Stop every service for good, dependants first; services that do not
    /// depend on each other stop together. Nothing is started or restarted
    /// from the moment this is called.
    pub async fn stop_all(&self) -> Vec<Stopped> {
        let _one_at_a_time = self.stop_lock.lock().await;
        if let Some(ctx) = &self.ctx {
            ctx.stopping
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let mut report = Vec::new();
        for layer in graph::stop_layers(&self.deps) {
            let stops = layer.iter().filter_map(|&i| self.handles.get(i)).map(stop);
            report.extend(futures_util::future::join_all(stops).await);
        }
        // Their log files live on DATA, which is unmounted next.
        if let Some(writer) = &self.log_writer {
            writer.close(LOG_CLOSE_LIMIT).await;
        }
        report
    }
}

async fn stop(handle: &Handle) -> Stopped {
    let started = Instant::now();
    let (reply, answer) = oneshot::channel();
    let outcome = match handle.commands.send(ServiceCommand::Stop(reply)) {
        Ok(()) => answer.await.unwrap_or(StopOutcome::NotRunning),
        // Its task has ended: stopped before.
        Err(_) => StopOutcome::NotRunning,
    };
    Stopped {
        name: handle.service.name().to_string(),
        outcome,
        took: started.elapsed(),
    }
}
