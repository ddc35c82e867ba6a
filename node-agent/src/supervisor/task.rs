//! The task that runs one service: wait for its conditions and
//! dependencies, start it, watch its exit, restart it with backoff, stop
//! it on request. The task is the only one that starts or signals the
//! service's process, so nothing else can race it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::service::{Ctx, Running, Service, ServiceCommand, KILL_WAIT};
use super::spec::{Condition, Conditions, KillMode};
use super::state::{human, Phase};
use super::{StopOutcome, SupervisorError};
use crate::reaper::ExitStatus;

/// A dependency: healthy or not.
pub(super) struct Dep {
    pub name: String,
    pub healthy: watch::Receiver<bool>,
}

enum Blocker {
    Condition(Condition),
    Dep(usize),
}

/// What the task does next.
enum Step {
    Wait,
    Start,
    Backoff(Duration),
    /// Not running, and not starting by itself: wait for a command.
    Idle(Phase),
    Stop(Option<oneshot::Sender<StopOutcome>>, StopOutcome),
}

pub(super) struct Task {
    service: Arc<Service>,
    ctx: Arc<Ctx>,
    deps: Vec<Dep>,
    conditions: watch::Receiver<Conditions>,
    commands: mpsc::UnboundedReceiver<ServiceCommand>,
    /// Failures in a row, for the backoff.
    failures: u32,
    started_once: bool,
}

impl Task {
    pub fn new(
        service: Arc<Service>,
        ctx: Arc<Ctx>,
        deps: Vec<Dep>,
        commands: mpsc::UnboundedReceiver<ServiceCommand>,
    ) -> Task {
        Task {
            conditions: ctx.conditions.clone(),
            service,
            ctx,
            deps,
            commands,
            failures: 0,
            started_once: false,
        }
    }

    pub async fn run(mut self) {
        let mut step = Step::Wait;
        loop {
            step = match step {
                Step::Wait => self.wait_ready().await,
                Step::Start => self.start().await,
                Step::Backoff(delay) => self.backoff(delay).await,
                Step::Idle(phase) => self.idle(phase).await,
                Step::Stop(reply, outcome) => {
                    self.service.set_phase(Phase::Stopped);
                    if !matches!(outcome, StopOutcome::NotRunning) {
                        self.service.event(&format!("stopped: {outcome}"));
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                    return;
                }
            }
        }
    }

    /// A command while the process is not running. `None`: keep waiting.
    fn idle_command(&mut self, command: Option<ServiceCommand>) -> Option<Step> {
        match command {
            // The supervisor is gone.
            None => Some(Step::Stop(None, StopOutcome::NotRunning)),
            Some(ServiceCommand::Stop(reply)) => {
                Some(Step::Stop(Some(reply), StopOutcome::NotRunning))
            }
            Some(ServiceCommand::Restart(reply)) if self.ctx.stopping() => {
                let _ = reply.send(Err(SupervisorError::ShuttingDown));
                None
            }
            Some(ServiceCommand::Restart(reply)) => {
                let _ = reply.send(Ok(()));
                self.failures = 0;
                Some(Step::Wait)
            }
        }
    }

    fn blocker(&mut self) -> Option<Blocker> {
        let now = *self.conditions.borrow_and_update();
        if let Some(c) = self.service.spec.conditions.iter().find(|c| !c.holds(&now)) {
            return Some(Blocker::Condition(*c));
        }
        self.deps
            .iter_mut()
            .position(|d| !*d.healthy.borrow_and_update())
            .map(Blocker::Dep)
    }

    async fn wait_ready(&mut self) -> Step {
        loop {
            let blocker = match self.blocker() {
                None if self.ctx.stopping() => return Step::Idle(Phase::Stopped),
                None => return Step::Start,
                Some(b) => b,
            };
            let what = match &blocker {
                Blocker::Condition(c) => c.to_string(),
                Blocker::Dep(i) => {
                    let name = self.deps.get(*i).map(|d| d.name.as_str()).unwrap_or("?");
                    format!("{name} healthy")
                }
            };
            self.service.set_phase(Phase::Waiting(what));
            tokio::select! {
                command = self.commands.recv() => {
                    if let Some(step) = self.idle_command(command) {
                        return step;
                    }
                }
                () = changed(&blocker, &mut self.conditions, &mut self.deps) => {}
            }
        }
    }

    async fn start(&mut self) -> Step {
        if std::mem::replace(&mut self.started_once, true) {
            self.service.record().restarts += 1;
        }
        for argv in &self.service.spec.pre_start {
            // Clean-ups that find nothing to clean fail, which is the
            // usual case: say so only in the agent's debug log.
            if let Err(why) = self.service.run_to_end(&self.ctx, argv).await {
                tracing::debug!("service {}: before start: {}: {why}", self.service.spec.name, argv.join(" "));
            }
        }
        match self.service.spawn(&self.ctx) {
            Ok(running) => self.supervise(running).await,
            Err(e) => {
                let how = format!("cannot start {}: {e}", self.service.spec.program.display());
                self.service.record().last_exit = Some((how.clone(), Instant::now()));
                self.service.event(&how);
                self.after_exit(false, how, Duration::ZERO)
            }
        }
    }

    async fn supervise(&mut self, mut running: Running) -> Step {
        loop {
            tokio::select! {
                status = &mut running.exit => {
                    let status = status.ok();
                    let how = self.service.ended(status);
                    self.clean_up(&running);
                    self.service.event(&how);
                    let success = status.is_some_and(ExitStatus::success);
                    return self.after_exit(success, how, running.started.elapsed());
                }
                command = self.commands.recv() => match command {
                    None => {
                        let outcome = self.terminate(&mut running).await;
                        return Step::Stop(None, outcome);
                    }
                    Some(ServiceCommand::Stop(reply)) => {
                        let outcome = self.terminate(&mut running).await;
                        return Step::Stop(Some(reply), outcome);
                    }
                    Some(ServiceCommand::Restart(reply)) if self.ctx.stopping() => {
                        let _ = reply.send(Err(SupervisorError::ShuttingDown));
                    }
                    Some(ServiceCommand::Restart(reply)) => {
                        self.service.event("restart requested");
                        let outcome = self.terminate(&mut running).await;
                        self.service.event(&format!("stopped for the restart: {outcome}"));
                        let _ = reply.send(Ok(()));
                        self.failures = 0;
                        return Step::Wait;
                    }
                },
            }
        }
    }

    /// The process ended on its own (`success`: exit 0) after `ran`.
    fn after_exit(&mut self, success: bool, how: String, ran: Duration) -> Step {
        if self.ctx.stopping() {
            return Step::Idle(Phase::Stopped);
        }
        if !self.service.spec.restart.wants_restart(success) {
            let verdict = if success { "done" } else { "failed" };
            return Step::Idle(Phase::Ended(format!("{verdict}: {how}")));
        }
        if ran >= self.service.spec.backoff.reset_after {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        Step::Backoff(self.service.spec.backoff.delay(self.failures))
    }

    async fn backoff(&mut self, delay: Duration) -> Step {
        // A year is "never" enough, and cannot overflow an Instant.
        let delay = delay.min(Duration::from_secs(365 * 86_400));
        let until = Instant::now() + delay;
        self.service.set_phase(Phase::Backoff { until });
        self.service
            .event(&format!("starting again in {}", human(delay)));
        let deadline = tokio::time::Instant::from_std(until);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    return if self.ctx.stopping() { Step::Idle(Phase::Stopped) } else { Step::Wait };
                }
                command = self.commands.recv() => {
                    if let Some(step) = self.idle_command(command) {
                        return step;
                    }
                }
            }
        }
    }

    async fn idle(&mut self, phase: Phase) -> Step {
        self.service.set_phase(phase);
        loop {
            let command = self.commands.recv().await;
            if let Some(step) = self.idle_command(command) {
                return step;
            }
        }
    }

    /// SIGTERM, `stop_timeout`, then kill.
    async fn terminate(&mut self, running: &mut Running) -> StopOutcome {
        let service = self.service.clone();
        let spec = &service.spec;
        service.set_phase(Phase::Stopping);
        signal(Pid::from_raw(running.pid), Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(spec.stop_timeout, &mut running.exit).await {
            let status = status.ok();
            service.ended(status);
            self.clean_up(running);
            return status.map_or(StopOutcome::Lost, StopOutcome::Exited);
        }
        service.event(&format!(
            "still running {} after SIGTERM; killing it",
            human(spec.stop_timeout)
        ));
        self.kill(running);
        for attempt in 0..2 {
            if let Ok(status) = tokio::time::timeout(KILL_WAIT, &mut running.exit).await {
                let status = status.ok();
                service.ended(status);
                self.clean_up(running);
                return status.map_or(StopOutcome::Lost, StopOutcome::Killed);
            }
            if attempt == 0 {
                signal(Pid::from_raw(running.pid), Signal::SIGKILL);
            }
        }
        service.ended(None);
        service.event(&format!(
            "pid {} was killed but never reaped; giving up on it",
            running.pid
        ));
        StopOutcome::Lost
    }

    /// SIGKILL the main process (not reaped yet) and, in `Group` mode,
    /// everything else of the service.
    fn kill(&self, running: &Running) {
        self.kill_group(running);
        signal(Pid::from_raw(running.pid), Signal::SIGKILL);
    }

    /// In `Group` mode, SIGKILL the whole cgroup, else (no cgroup2) the
    /// process group the service's session started with. `Process` mode
    /// leaves the children alone.
    fn kill_group(&self, running: &Running) {
        if self.service.spec.kill_mode != KillMode::Group {
            return;
        }
        match running.group.as_ref().map(|g| g.kill()) {
            Some(Ok(true)) => return,
            Some(Err(e)) => warn!(
                "service {}: {e}; killing its process group",
                self.service.name()
            ),
            Some(Ok(false)) | None => {}
        }
        match killpg(Pid::from_raw(running.pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => warn!(
                "service {}: killpg({}): {e}",
                self.service.name(),
                running.pid
            ),
        }
    }

    /// After the main process was reaped: in `Group` mode nothing of it
    /// may outlive it (a restart would run beside its leftovers).
    fn clean_up(&self, running: &Running) {
        if self.service.spec.kill_mode != KillMode::Group {
            return;
        }
        let left = running.group.as_ref().map(|g| g.pids()).unwrap_or_default();
        if !left.is_empty() {
            self.service.event(&format!(
                "killing {} processes left in its cgroup",
                left.len()
            ));
        }
        self.kill_group(running);
    }
}

/// Wait until what blocks may have changed; forever if it never can.
async fn changed(
    blocker: &Blocker,
    conditions: &mut watch::Receiver<Conditions>,
    deps: &mut [Dep],
) {
    let gone = match blocker {
        Blocker::Condition(_) => conditions.changed().await.is_err(),
        Blocker::Dep(i) => match deps.get_mut(*i) {
            Some(dep) => dep.healthy.changed().await.is_err(),
            None => true,
        },
    };
    if gone {
        // Nothing will change (a command still can).
        std::future::pending::<()>().await;
    }
}

fn signal(pid: Pid, signal: Signal) {
    match kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => warn!("kill({pid}, {signal}): {e}"),
    }
}
