//! What a service is doing, as kept under its lock and as `status()` says
//! it. Pure.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::reaper::ExitStatus;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Its task has not looked yet.
    Starting,
    /// For a condition or a dependency, e.g. "network up", "containerd healthy".
    Waiting(String),
    Running,
    /// Starting again at `until`.
    Backoff {
        until: Instant,
    },
    Stopping,
    Stopped,
    /// Ended and not restarted by its policy (or a spawn that failed):
    /// "done: exited 0", "failed: exited 1". A restart starts it again.
    Ended(String),
}

/// Everything `status()` reads, behind the service's lock.
#[derive(Debug, Clone)]
pub struct Record {
    pub phase: Phase,
    /// When `phase` began.
    pub since: Instant,
    /// Counts starts, so a probe of an earlier process is ignored.
    pub instance: u64,
    pub pid: Option<i32>,
    /// Starts (or attempts) after the first.
    pub restarts: u32,
    /// "exited 1", "killed by SIGKILL", "cannot start: …", and when.
    pub last_exit: Option<(String, Instant)>,
    pub healthy: bool,
    /// The last probe's detail or why it failed.
    pub health: Option<String>,
    /// Health comes from a probe (else from the process running).
    pub probed: bool,
}

impl Record {
    pub fn new(probed: bool, now: Instant) -> Record {
        Record {
            phase: Phase::Starting,
            since: now,
            instance: 0,
            pid: None,
            restarts: 0,
            last_exit: None,
            healthy: false,
            health: None,
            probed,
        }
    }

    /// Enter `phase`; `since` moves only when the phase changes.
    pub fn set_phase(&mut self, phase: Phase, now: Instant) {
        if phase != self.phase {
            self.phase = phase;
            self.since = now;
        }
    }

    /// "running", "healthy", "backoff 4s", "waiting: data mounted", …
    pub fn state_text(&self, now: Instant) -> String {
        match &self.phase {
            Phase::Starting => "starting".into(),
            Phase::Waiting(what) => format!("waiting: {what}"),
            Phase::Running if self.probed && self.healthy => "healthy".into(),
            Phase::Running => "running".into(),
            Phase::Backoff { until } => {
                format!("backoff {}", human(until.saturating_duration_since(now)))
            }
            Phase::Stopping => "stopping".into(),
            Phase::Stopped => "stopped".into(),
            Phase::Ended(how) => how.clone(),
        }
    }
}

/// "exited 1", "killed by SIGKILL", "killed by signal 64 (core dumped)".
pub fn exit_text(status: ExitStatus) -> String {
    match status {
        ExitStatus::Exited(code) => format!("exited {code}"),
        ExitStatus::Signaled {
            signal,
            core_dumped,
        } => {
            let name = Signal::try_from(signal)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| format!("signal {signal}"));
            let core = if core_dumped { " (core dumped)" } else { "" };
            format!("killed by {name}{core}")
        }
    }
}

/// A short duration for people: "250ms", "4s", "1m30s", "2h5m".
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    // Rounded up: "backoff 1s" until the very end, never "0s".
    let s = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_the_operator_expects() {
        let t0 = Instant::now();
        let mut r = Record::new(true, t0);
        assert_eq!(r.state_text(t0), "starting");
        r.set_phase(Phase::Waiting("network up".into()), t0);
        assert_eq!(r.state_text(t0), "waiting: network up");
        r.set_phase(Phase::Running, t0);
        assert_eq!(r.state_text(t0), "running");
        r.healthy = true;
        assert_eq!(r.state_text(t0), "healthy");
        r.probed = false;
        assert_eq!(r.state_text(t0), "running");
        r.set_phase(
            Phase::Backoff {
                until: t0 + Duration::from_millis(3500),
            },
            t0,
        );
        assert_eq!(r.state_text(t0), "backoff 4s");
        assert_eq!(r.state_text(t0 + Duration::from_secs(3)), "backoff 500ms");
        r.set_phase(Phase::Ended("failed: exited 1".into()), t0);
        assert_eq!(r.state_text(t0), "failed: exited 1");
    }

    #[test]
    fn since_moves_only_when_the_phase_changes() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        let mut r = Record::new(false, t0);
        r.set_phase(Phase::Running, t0);
        r.set_phase(Phase::Running, later);
        assert_eq!(r.since, t0);
        r.set_phase(Phase::Stopping, later);
        assert_eq!(r.since, later);
    }

    #[test]
    fn exits_and_durations_are_short() {
        assert_eq!(exit_text(ExitStatus::Exited(1)), "exited 1");
        let killed = ExitStatus::Signaled {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(exit_text(killed), "killed by SIGKILL");
        let odd = ExitStatus::Signaled {
            signal: 64,
            core_dumped: true,
        };
        assert_eq!(exit_text(odd), "killed by signal 64 (core dumped)");
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        assert_eq!(human(ms(250)), "250ms");
        assert_eq!(human(s(4)), "4s");
        assert_eq!(human(ms(4001)), "5s");
        assert_eq!(human(s(90)), "1m30s");
        assert_eq!(human(s(120)), "2m");
        assert_eq!(human(s(7500)), "2h5m");
        assert_eq!(human(s(7200)), "2h");
    }
}
