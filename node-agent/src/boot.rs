//! The boot sequence: named phases, each logged with its duration when it
//! ends, so the console reads like a table of contents:
//!
//! ```text
//! phase pseudo-filesystems: ok in 3 ms
//! phase data: FAILED after 12 ms: no partition labelled DATA on …
//! ```
//!
//! A failing phase is logged and boot goes on: a node without DATA still
//! runs its agent, so it can be reached and repaired.
//!
//! [`boot`] runs the system phases (synchronous system calls); [`configure`]
//! then runs `config`, `network` and `api`, which need the async runtime.

use std::error::Error;
use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caisson_layout::cmdline::KEY_SLOT;
use caisson_layout::paths::OS_RELEASE;
use caisson_layout::{KernelCmdline, Slot};
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::api::{self, Facts, Node, Paths, RealHost};
use crate::coldplug::{self, KernelModules};
use crate::identity::{self, MachineId, MachineIdSource};
use crate::{cgroup, etc, mounts, network, power};

type PhaseResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// `phase <name>: ok in <N> ms` or `phase <name>: FAILED after <N> ms: <error>`.
/// Tests and people grep for exactly this.
pub fn phase_line(name: &str, elapsed: Duration, error: Option<&dyn Display>) -> String {
    let ms = elapsed.as_millis();
    match error {
        None => format!("phase {name}: ok in {ms} ms"),
        Some(e) => format!("phase {name}: FAILED after {ms} ms: {e}"),
    }
}

/// Run one phase and log how it ended. `None` if it failed.
pub fn run_phase<T, E: Display>(name: &str, phase: impl FnOnce() -> Result<T, E>) -> Option<T> {
    let started = Instant::now();
    let result = phase();
    let elapsed = started.elapsed();
    match result {
        Ok(value) => {
            info!("{}", phase_line(name, elapsed, None));
            Some(value)
        }
        Err(e) => {
            error!("{}", phase_line(name, elapsed, Some(&e)));
            None
        }
    }
}

/// The async twin of [`run_phase`].
pub async fn run_phase_async<T, E: Display>(
    name: &str,
    phase: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    let started = Instant::now();
    let result = phase.await;
    let elapsed = started.elapsed();
    match result {
        Ok(value) => {
            info!("{}", phase_line(name, elapsed, None));
            Some(value)
        }
        Err(e) => {
            error!("{}", phase_line(name, elapsed, Some(&e)));
            None
        }
    }
}

/// What boot produced that the running agent keeps using.
pub struct Booted {
    pub machine_id: Option<MachineId>,
    pub hostname: Option<String>,
    /// The module loader, for modules wanted later (filesystems, netfilter
    /// for k3s); `None` if coldplug could not read the module index.
    pub modules: Option<KernelModules>,
    /// STATE is mounted: the config store and audit log are usable.
    pub state_mounted: bool,
}

/// The phases, in order. `storage`: STATE and DATA on disk, or in memory
/// for a live boot.
pub fn boot(storage: mounts::Storage) -> Booted {
    let machine_id = run_phase("pseudo-filesystems", pseudo_filesystems);
    run_phase("cgroup2", cgroup2);
    let modules = run_phase("coldplug", coldplug);
    if storage == mounts::Storage::Live {
        info!("{}", mounts::LIVE_LINE);
    }
    let state_mounted = run_phase("state", || {
        mounts::mount_state(storage).map(|m| info!("state: mounted {m}"))
    })
    .is_some();
    run_phase("data", || {
        mounts::mount_data(storage).map(|m| {
            info!("data: mounted {m}");
            grow_data(&m.device);
        })
    });
    let hostname = run_phase("hostname", || hostname(machine_id.as_ref()));
    Booted {
        machine_id,
        hostname,
        modules,
        state_mounted,
    }
}

/// The phases after [`boot`]: `config` (find the machine config, apply
/// host name, sysctls and modules), `network`, `api`. Returns the node the
/// API serves; it lives as long as the agent.
pub async fn configure(
    booted: Booted,
    cmdline: &KernelCmdline,
    power: mpsc::Sender<power::Request>,
    reaper: Arc<crate::reaper::Reaper>,
) -> Arc<Node> {
    let facts = Facts {
        image_version: image_version(),
        slot: slot(cmdline).map_or_else(|| "unknown".to_string(), |s| s.to_string()),
        live: caisson_layout::is_live(cmdline),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| r.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string()),
        default_hostname: booted.hostname.unwrap_or_else(|| "caisson".to_string()),
    };
    // Before the config's sysctls, which may override them.
    network::set_kernel_defaults(Path::new(crate::config::sysctl::PROC_SYS));
    let network = network::backend(network::ip_arg(cmdline));
    let node = Node::new(
        facts,
        Paths::default(),
        network,
        Box::new(RealHost),
        booted.modules,
        power,
    );
    tokio::spawn(node.clone().follow_network());
    run_phase_async("config", node.load_boot_config(booted.state_mounted)).await;
    run_phase_async("network", node.bring_up_network()).await;
    run_phase_async("api", api::listener::start(node.clone())).await;
    node.set_runtime(crate::runtime::RuntimeCtx::node(reaper));
    // [install] on a live boot: write the target disk and reboot into it
    // (the services are not started for the minute that takes).
    let rebooting = crate::install::configured(&node).await
        && run_phase_async("install", crate::install::run(node.clone())).await == Some(true);
    if !rebooting {
        run_phase_async("services", node.start_boot_services()).await;
    }
    // A slot on trial after an upgrade: health gates, then bless or reboot.
    tokio::spawn(node.clone().watch_trial());
    node
}

fn pseudo_filesystems() -> PhaseResult<MachineId> {
    mounts::pseudo_filesystems()?;
    let (id, source) =
        identity::machine_id().map_err(|e| format!("machine-id: reading /dev/urandom: {e}"))?;
    etc::populate(Path::new("/etc"), &id)?;
    let from = match source {
        MachineIdSource::ProductUuid => "derived from the SMBIOS product UUID",
        MachineIdSource::Random => "random: no SMBIOS product UUID",
    };
    info!("machine-id: {id} ({from})");
    Ok(id)
}

fn cgroup2() -> PhaseResult<()> {
    let controllers = cgroup::setup()?;
    info!(
        "cgroup2: controllers enabled: {}",
        controllers.enabled.join(" ")
    );
    Ok(())
}

fn coldplug() -> PhaseResult<KernelModules> {
    let dir = coldplug::modules_dir().map_err(|e| format!("reading the kernel release: {e}"))?;
    let mut modules = KernelModules::open(&dir)?;
    let report = coldplug::coldplug(&mut modules, coldplug::MAX_PASSES);
    info!("{}", report.summary());
    Ok(modules)
}

/// DATA to its disk's end, on the first boot from a bigger disk; a failure
/// is logged and DATA keeps its size.
fn grow_data(device: &Path) {
    if device.as_os_str().is_empty() {
        return; // already mounted, or in memory
    }
    match crate::install::grow::grow_data(device, Path::new(caisson_layout::paths::DATA_MOUNT)) {
        Ok(Some(grown)) => info!("{}", grown.line()),
        Ok(None) => {}
        Err(e) => error!("data: growing DATA to the disk's end failed: {e}; DATA keeps its size"),
    }
}

fn hostname(machine_id: Option<&MachineId>) -> PhaseResult<String> {
    let id = machine_id.ok_or("no machine-id: phase pseudo-filesystems failed")?;
    let name = identity::default_hostname(id);
    nix::unistd::sethostname(&name).map_err(|e| format!("sethostname({name}): {e}"))?;
    etc::write_hostname(Path::new("/etc"), &name, &[])?;
    info!("hostname: {name} (no machine config yet: derived from the machine-id)");
    Ok(name)
}

/// `node-agent 1.2.0 running as PID 1 (slot a)`
pub fn banner(version: &str, slot: Option<Slot>) -> String {
    match slot {
        Some(slot) => format!("node-agent {version} running as PID 1 (slot {slot})"),
        None => {
            format!("node-agent {version} running as PID 1 (slot unknown: no valid {KEY_SLOT})")
        }
    }
}

/// The image's version: VERSION_ID of os-release, else the agent's own.
pub fn image_version() -> String {
    std::fs::read_to_string(OS_RELEASE)
        .ok()
        .and_then(|text| os_release_value(&text, "VERSION_ID"))
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
}

pub fn slot(cmdline: &KernelCmdline) -> Option<Slot> {
    cmdline.value(KEY_SLOT).and_then(|v| v.parse().ok())
}

/// One value of an os-release(5) file, unquoted.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| {
            let v = v.trim();
            let unquoted = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
            let unquoted =
                unquoted.or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')));
            unquoted.unwrap_or(v).to_string()
        })
}

/// `boot: ready in 812 ms (kernel uptime 3.456 s, VmRSS 2345 kB)`
pub fn ready_line(agent: Duration, kernel_uptime: Option<&str>, rss_kb: Option<u64>) -> String {
    let mut line = format!("boot: ready in {} ms", agent.as_millis());
    let mut details = Vec::new();
    if let Some(up) = kernel_uptime {
        details.push(format!("kernel uptime {up} s"));
    }
    if let Some(kb) = rss_kb {
        details.push(format!("VmRSS {kb} kB"));
    }
    if !details.is_empty() {
        line.push_str(&format!(" ({})", details.join(", ")));
    }
    line
}

pub fn log_ready(agent_started: Instant) {
    let uptime = std::fs::read_to_string("/proc/uptime").ok();
    let uptime = uptime.as_deref().and_then(|t| t.split_whitespace().next());
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| vm_rss_kb(&s));
    info!("{}", ready_line(agent_started.elapsed(), uptime, rss));
}

/// `VmRSS:     2345 kB` from /proc/self/status.
pub fn vm_rss_kb(status: &str) -> Option<u64> {
    status_kb(status, "VmRSS:")
}

/// Peak resident memory (`VmHWM`), kB.
pub fn vm_hwm_kb(status: &str) -> Option<u64> {
    status_kb(status, "VmHWM:")
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines_have_the_exact_documented_format() {
        assert_eq!(
            phase_line("pseudo-filesystems", Duration::from_micros(3_900), None),
            "phase pseudo-filesystems: ok in 3 ms"
        );
        let err = "no partition labelled DATA on the disk of the root partition vda2";
        assert_eq!(
            phase_line("data", Duration::from_millis(12), Some(&err)),
            "phase data: FAILED after 12 ms: no partition labelled DATA on the disk of the root partition vda2"
        );
    }

    #[test]
    fn a_failed_phase_yields_nothing_and_a_good_one_its_value() {
        assert_eq!(run_phase("ok", || Ok::<_, String>(7)), Some(7));
        assert_eq!(run_phase("bad", || Err::<u8, _>("boom")), None);
    }

    #[test]
    fn banner_names_version_and_slot() {
        assert_eq!(
            banner("1.2.0", Some(Slot::A)),
            "node-agent 1.2.0 running as PID 1 (slot a)"
        );
        assert!(
            banner("1.2.0", None).starts_with("node-agent 1.2.0 running as PID 1 (slot unknown")
        );
        let cmdline = KernelCmdline::parse("console=ttyS0 caisson.slot=b quiet");
        assert_eq!(slot(&cmdline), Some(Slot::B));
        assert_eq!(slot(&KernelCmdline::parse("caisson.slot=z")), None);
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let text =
            "NAME=\"Caisson\"\nID=caisson\nVERSION_ID=\"1.2.0\"\nPRETTY_NAME='Caisson 1.2.0'\n";
        assert_eq!(
            os_release_value(text, "VERSION_ID").as_deref(),
            Some("1.2.0")
        );
        assert_eq!(os_release_value(text, "ID").as_deref(), Some("caisson"));
        assert_eq!(
            os_release_value(text, "PRETTY_NAME").as_deref(),
            Some("Caisson 1.2.0")
        );
        assert_eq!(os_release_value(text, "VERSION"), None);
    }

    #[test]
    fn ready_line_reports_agent_time_kernel_uptime_and_memory() {
        let status = "Name:\tnode-agent\nVmPeak:\t  9000 kB\nVmRSS:\t    2345 kB\nThreads:\t1\n";
        assert_eq!(vm_rss_kb(status), Some(2345));
        assert_eq!(
            ready_line(Duration::from_millis(812), Some("3.45"), vm_rss_kb(status)),
            "boot: ready in 812 ms (kernel uptime 3.45 s, VmRSS 2345 kB)"
        );
        assert_eq!(
            ready_line(Duration::from_millis(5), None, None),
            "boot: ready in 5 ms"
        );
    }
}
