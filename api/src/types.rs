//! JSON bodies of the API, shared by the agent (server) and nodectl (client).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub image_version: String,
    pub agent_version: String,
    pub slot: String,
    pub kernel: String,
    pub hostname: String,
    /// True while the node waits for its first config.
    pub maintenance: bool,
    /// A live (diskless) boot: STATE and DATA in memory, no A/B slots.
    #[serde(default)]
    pub live: bool,
    /// Both A/B slots, A first.
    #[serde(default)]
    pub slots: Vec<SlotInfo>,
    /// The most recent upgrade (or rollback) and how it ended.
    #[serde(default)]
    pub last_upgrade: Option<UpgradeRecord>,
}

/// What one A/B slot holds and whether it may boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// "a" or "b".
    pub slot: String,
    /// The image version in the slot, if known.
    pub version: Option<String>,
    /// One of: "running", "known-good", "trying", "bad", "empty".
    pub state: String,
    /// The node booted from this slot.
    pub running: bool,
    /// For "trying" (and a running slot still on trial): boots left.
    pub tries_left: Option<u32>,
    /// The slot's boot entry file on the ESP, if it has one.
    pub entry: Option<String>,
    /// Why a slot is bad or empty, when the node knows.
    pub note: Option<String>,
}

/// One upgrade or rollback, as the node records it on STATE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRecord {
    /// "upgrade" or "rollback".
    pub kind: String,
    pub from_version: String,
    pub to_version: String,
    /// The slot written (upgrade) or made to boot (rollback).
    pub slot: String,
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// "in-progress", "staged", "written", "blessed", "rolled-back: ...",
    /// "failed: ...".
    pub outcome: String,
    /// Common name of the client that asked.
    pub by: String,
}

/// `POST /v1/upgrade?stage=true`: the body is the bundle itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpgradeQuery {
    /// Write the slot but do not reboot.
    #[serde(default)]
    pub stage: bool,
    /// Also time a scratch write on DATA, to compare the slot's write
    /// speed with the disk's own (benchmarks).
    #[serde(default)]
    pub measure_disk: bool,
}

/// `POST /v1/upgrade/url`: the node fetches the bundle itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeFetchRequest {
    /// `http://` URL of the bundle, e.g. on a mirror inside the site.
    pub url: String,
    #[serde(default)]
    pub stage: bool,
    #[serde(default)]
    pub measure_disk: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeResponse {
    pub from_version: String,
    pub version: String,
    /// The slot written.
    pub slot: String,
    /// The boot entry written, with its `+N` counter.
    pub entry: String,
    /// Key id of the signature that was accepted; None: unsigned (allowed
    /// by the config).
    pub signed_by: Option<String>,
    /// Bundle bytes read.
    pub bytes: u64,
    /// Seconds from the first byte to the entry.
    pub seconds: f64,
    /// The root's stream rate, MB/s (10^6 bytes): first byte to fsync,
    /// waiting for the network included.
    pub root_write_mb_s: f64,
    /// The root's write path alone: bytes over the time spent in write(2)
    /// and fsync(2), MB/s.
    #[serde(default)]
    pub root_write_busy_mb_s: f64,
    /// With `measure_disk`: a 64 MiB scratch write + fsync on DATA, MB/s.
    #[serde(default)]
    pub disk_write_mb_s: Option<f64>,
    /// The agent's peak resident memory (VmHWM) after the upgrade, KiB.
    #[serde(default)]
    pub agent_peak_rss_kib: Option<u64>,
    pub staged: bool,
    pub rebooting: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Reboot into the other slot now (default), or only at the next boot.
    #[serde(default = "yes")]
    pub reboot: bool,
}

fn yes() -> bool {
    true
}

impl Default for RollbackRequest {
    fn default() -> Self {
        RollbackRequest { reboot: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackResponse {
    pub from_version: String,
    /// The slot that boots next, and what it holds.
    pub slot: String,
    pub version: String,
    pub rebooting: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Every check passed.
    pub ready: bool,
    pub checks: Vec<HealthCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyMode {
    /// Apply what can be applied live; report what needs a reboot; never reboot.
    #[default]
    Auto,
    /// Like auto, but refuse if anything needs a reboot.
    NoReboot,
    /// Persist, then reboot.
    Reboot,
    /// Persist only; takes effect at the next boot.
    Staged,
    /// Apply live; restore the previous config unless confirmed in time.
    Try,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// The machine config, TOML text.
    pub config: String,
    #[serde(default)]
    pub mode: ApplyMode,
    /// Validate and diff only.
    #[serde(default)]
    pub dry_run: bool,
    /// For `try`: seconds until the previous config is restored.
    #[serde(default)]
    pub try_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    pub path: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub changes: Vec<ConfigChange>,
    /// What was applied live.
    pub applied: Vec<String>,
    /// What takes effect only after a reboot.
    pub needs_reboot: Vec<String>,
    pub dry_run: bool,
    /// For `try`: seconds left to confirm.
    pub confirm_within_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// "running", "healthy", "backoff 4s", "waiting: data mounted",
    /// "stopping", "stopped", "failed: exited 1", …
    pub state: String,
    pub healthy: bool,
    /// Starts after the first.
    pub restarts: u32,
    pub pid: Option<u32>,
    // Fields below came later: absent from older nodes, ignored by older clients.
    /// The health probe's last detail, or why it failed.
    #[serde(default)]
    pub health: Option<String>,
    /// How the last process ended: "exited 1", "killed by SIGKILL", …
    #[serde(default)]
    pub last_exit: Option<String>,
    #[serde(default)]
    pub last_exit_secs_ago: Option<u64>,
    /// Seconds in the current state.
    #[serde(default)]
    pub since_secs: u64,
    /// The service's cgroup memory.current.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Output lines that did not reach the log file (disk full, too slow);
    /// the in-memory log has them.
    #[serde(default)]
    pub log_lines_dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// Must be true: reset wipes STATE and DATA.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LogQuery {
    #[serde(default)]
    pub follow: bool,
    /// Lines of history before following; default 100.
    pub tail: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable kind, e.g. "forbidden".
    pub code: String,
    /// A sentence for a person.
    pub error: String,
}
