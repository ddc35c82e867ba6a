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
    pub state: String,
    pub healthy: bool,
    pub restarts: u32,
    pub pid: Option<u32>,
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
