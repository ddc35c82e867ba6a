//! What a service is: its program, when it may start, how it is restarted,
//! how its health is judged and how it is stopped.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::probe::Probe;

/// One supervised program. Build one with [`ServiceSpec::new`] and struct
/// update syntax: `ServiceSpec { deps: vec!["containerd".into()], ..ServiceSpec::new("k3s", "/usr/bin/k3s") }`.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Also its cgroup, log file and log source name.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment: nothing is inherited from PID 1. `PATH`
    /// defaults to [`DEFAULT_PATH`].
    pub env: BTreeMap<String, String>,
    /// Services that must be healthy before this one starts.
    pub deps: Vec<String>,
    /// What must hold on the node before this one starts.
    pub conditions: Vec<Condition>,
    pub restart: Restart,
    pub backoff: Backoff,
    pub health: Health,
    /// How long SIGTERM is given before the service is killed.
    pub stop_timeout: Duration,
    /// The cgroup's memory.max, in bytes.
    pub memory_max: Option<u64>,
    pub kill_mode: KillMode,
    /// Commands run to completion before each start (e.g. removing what a
    /// killed predecessor left in containerd); a failure is logged, not fatal.
    pub pre_start: Vec<Vec<String>>,
}

/// `PATH` of a service whose spec sets none.
pub const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

impl ServiceSpec {
    /// A service restarted always, healthy while it runs, given 10 s to stop.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            deps: Vec::new(),
            conditions: Vec::new(),
            restart: Restart::Always,
            backoff: Backoff::default(),
            health: Health::Process,
            stop_timeout: Duration::from_secs(10),
            memory_max: None,
            kill_mode: KillMode::Group,
            pre_start: Vec::new(),
        }
    }
}

/// When a service that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Always,
    /// Only after a non-zero exit or a signal.
    OnFailure,
    Never,
}

impl Restart {
    pub fn wants_restart(self, success: bool) -> bool {
        match self {
            Restart::Always => true,
            Restart::OnFailure => !success,
            Restart::Never => false,
        }
    }
}

/// The delay before a restart: `initial`, doubled after each failure in a
/// row up to `max`. A run that lasted `reset_after` ends the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay after the `failures`-th failure in a row (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// What is stopped with a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMode {
    /// SIGTERM to the main process; after the timeout, and whenever the
    /// main process has ended, everything left in its cgroup is killed.
    Group,
    /// Only the main process is signalled, and its children are left alone
    /// (systemd's `KillMode=process`, which containerd and k3s use so that
    /// restarting them does not kill the containers' shims).
    Process,
}

/// Something about the node that the agent establishes and services wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    DataMounted,
    NetworkUp,
    TimeSane,
    /// The images baked into the root are imported into containerd.
    ImagesReady,
}

impl Condition {
    pub fn holds(self, now: &Conditions) -> bool {
        match self {
            Condition::DataMounted => now.data_mounted,
            Condition::NetworkUp => now.network_up,
            Condition::TimeSane => now.time_sane,
            Condition::ImagesReady => now.images_ready,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Condition::DataMounted => "data mounted",
            Condition::NetworkUp => "network up",
            Condition::TimeSane => "time sane",
            Condition::ImagesReady => "images imported",
        })
    }
}

/// The node's conditions as the agent last published them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions {
    pub data_mounted: bool,
    pub network_up: bool,
    pub time_sane: bool,
    pub images_ready: bool,
}

impl Conditions {
    /// Everything holds (tests, and nodes that need no waiting).
    pub fn all() -> Conditions {
        Conditions {
            data_mounted: true,
            network_up: true,
            time_sane: true,
            images_ready: true,
        }
    }
}

/// How a running service is judged healthy.
#[derive(Clone)]
pub enum Health {
    /// Healthy while its process runs.
    Process,
    /// Healthy while `probe` succeeds. It is run as soon as the process has
    /// started and then every `interval`; one that takes longer than
    /// `timeout` has failed.
    Probe {
        probe: Arc<dyn Probe>,
        interval: Duration,
        timeout: Duration,
    },
}

impl Health {
    /// `probe` every 2 s, each given 2 s.
    pub fn probe(probe: Arc<dyn Probe>) -> Health {
        Health::Probe {
            probe,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Process => f.write_str("Process"),
            Health::Probe {
                interval, timeout, ..
            } => f
                .debug_struct("Probe")
                .field("interval", interval)
                .field("timeout", timeout)
                .finish_non_exhaustive(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_initial_up_to_its_cap() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(60),
        };
        let secs: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.delay(0), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn restart_policies() {
        assert!(Restart::Always.wants_restart(true) && Restart::Always.wants_restart(false));
        assert!(!Restart::OnFailure.wants_restart(true) && Restart::OnFailure.wants_restart(false));
        assert!(!Restart::Never.wants_restart(true) && !Restart::Never.wants_restart(false));
    }

    #[test]
    fn conditions_read_as_what_is_awaited() {
        let now = Conditions {
            data_mounted: true,
            ..Conditions::default()
        };
        assert!(Condition::DataMounted.holds(&now));
        assert!(!Condition::NetworkUp.holds(&now));
        assert_eq!(Condition::NetworkUp.to_string(), "network up");
    }
}
