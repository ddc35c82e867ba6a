//! Applying a config through the API, in the order: validate, diff
//! (secrets masked; `dry_run` stops here), persist (the running config kept
//! as previous), apply live, report what needs a reboot.
//!
//! Modes:
//! - `auto`: persist, apply live, report; never reboots.
//! - `no-reboot`: as auto, but refused (nothing changed) if anything needs a
//!   reboot.
//! - `reboot`: persist, then reboot.
//! - `staged`: persist only; everything takes effect at the next boot.
//! - `try`: apply live *without* persisting; `confirm` persists it, and when
//!   the timeout runs out first the previous config is applied again. A
//!   reboot inside the window therefore also comes back with the previous
//!   config. Needs a running config to return to (not in maintenance mode).
//!
//! If a live step fails (a sysctl value the kernel refuses, a link that is
//! not there), the previous config is put back, on STATE and live, and the
//! call fails naming the key: a node never runs half of a config.

use std::sync::Arc;
use std::time::{Duration, Instant};

use caisson_api::types::{ApplyMode, ApplyRequest, ApplyResponse, ConfigChange};
use caisson_api::ApiError;
use caisson_config::{Api, MachineConfig};
use tracing::{error, info, warn};

use super::{Active, Node, Running};
use crate::bootentry::Outcome;
use crate::config::tryout::timeout_from;
use crate::config::{plan, ApplyPlan, Source};
use crate::power::{self, ShutdownAction};

/// The changes from `old` (None: nothing yet) to `new`, secrets masked.
pub fn changes(old: Option<&MachineConfig>, new: &MachineConfig) -> Vec<ConfigChange> {
    let blank;
    let (from, added) = match old {
        Some(o) => (o, false),
        None => {
            // Version and port 0 so that they show as added too.
            blank = MachineConfig {
                version: 0,
                machine: Default::default(),
                network: Default::default(),
                time: Default::default(),
                kernel: Default::default(),
                api: Api {
                    port: 0,
                    ca_cert: String::new(),
                    ca_key: None,
                    node_cert: None,
                    node_key: None,
                },
                upgrade: None,
                kubernetes: None,
                containerd: Default::default(),
                containers: Vec::new(),
                install: None,
            };
            (&blank, true)
        }
    };
    caisson_config::redact::diff(from, new)
        .into_iter()
        .filter(|c| !(added && c.new.is_none()))
        .map(|c| ConfigChange {
            path: c.path,
            old: if added { None } else { c.old },
            new: c.new,
        })
        .collect()
}

/// The store's files before a commit.
struct Saved {
    current: Option<String>,
    previous: Option<String>,
}

fn invalid(problems: Vec<String>) -> ApiError {
    ApiError::InvalidConfig(problems.join("\n"))
}

impl Node {
    pub async fn apply(&self, req: ApplyRequest) -> Result<ApplyResponse, ApiError> {
        if self.is_resetting() {
            return Err(ApiError::Conflict("the node is being reset".into()));
        }
        let new = caisson_config::parse("request", &req.config)
            .map_err(|e| ApiError::InvalidConfig(e.to_string()))?;
        let new = Arc::new(new);
        let mut running = self.running.lock().await;
        if let Some(left) = running.tryout.remaining(Instant::now()) {
            return Err(ApiError::Conflict(format!(
                "a try-mode apply is waiting for confirmation ({} s left): confirm it, or let it time out, first",
                left.as_secs()
            )));
        }
        let old = running.current.clone();
        let old_config = old.as_ref().map(|a| a.config.as_ref());
        let p = plan(old_config, &new);
        self.preflight(&p).map_err(invalid)?;
        let mut response = ApplyResponse {
            changes: changes(old_config, &new),
            applied: Vec::new(),
            needs_reboot: p.needs_reboot.clone(),
            dry_run: req.dry_run,
            confirm_within_secs: None,
        };
        if req.dry_run {
            return Ok(response);
        }
        let hostname = self.hostname_for(&new);
        let active = Active {
            config: new.clone(),
            text: Arc::from(req.config.as_str()),
            source: Source::Api,
        };
        match req.mode {
            ApplyMode::NoReboot if !p.needs_reboot.is_empty() => Err(ApiError::Conflict(format!(
                "mode no-reboot refused: these changes need a reboot: {}. Nothing was changed.",
                p.needs_reboot.join("; ")
            ))),
            ApplyMode::Try => {
                let Some(previous) = old else {
                    return Err(ApiError::BadRequest(
                        "mode try needs a running config to return to, and this node is in maintenance mode: use mode auto"
                            .into(),
                    ));
                };
                let timeout = timeout_from(req.try_timeout_secs);
                if timeout.is_zero() {
                    return Err(ApiError::BadRequest(
                        "try_timeout_secs must be at least 1".into(),
                    ));
                }
                response.applied = self
                    .apply_live(&mut running, Some(previous.clone()), active, &p, None)
                    .await?;
                let opened = Instant::now();
                let id = running
                    .tryout
                    .open(opened, timeout, previous)
                    .map_err(|b| {
                        ApiError::Conflict(format!(
                            "a try window is open ({} s left)",
                            b.remaining.as_secs()
                        ))
                    })?;
                self.start_try_timer(id, opened + timeout);
                response.confirm_within_secs = Some(timeout.as_secs());
                info!(
                    "config: try mode: applied {} change(s) live; confirm within {} s or the previous config returns",
                    response.changes.len(),
                    timeout.as_secs()
                );
                Ok(response)
            }
            ApplyMode::Staged => {
                self.persist(&req.config, old.as_ref())?;
                response.needs_reboot = p.all_at_next_boot(&new, &hostname);
                self.args_to_entry(old_config, &new, &mut response.needs_reboot);
                info!(
                    "config: staged {} change(s) on STATE for the next boot",
                    response.changes.len()
                );
                Ok(response)
            }
            ApplyMode::Reboot => {
                self.persist(&req.config, old.as_ref())?;
                response.needs_reboot = p.all_at_next_boot(&new, &hostname);
                self.args_to_entry(old_config, &new, &mut response.needs_reboot);
                info!(
                    "config: saved {} change(s) on STATE; rebooting to apply them",
                    response.changes.len()
                );
                power::request_from_api(&self.power, ShutdownAction::Reboot);
                Ok(response)
            }
            ApplyMode::Auto | ApplyMode::NoReboot => {
                let saved = self.persist(&req.config, old.as_ref())?;
                let old_args = old_config.map(|o| o.kernel.args.clone());
                response.applied = self
                    .apply_live(&mut running, old, active, &p, Some(saved))
                    .await?;
                self.args_to_entry_from(old_args.as_deref(), &new, &mut response.needs_reboot);
                let reboot = if p.needs_reboot.is_empty() {
                    String::new()
                } else {
                    format!("; needs a reboot: {}", p.needs_reboot.join("; "))
                };
                info!(
                    "config: applied from the API (mode {}): {} change(s), {} live{reboot}",
                    mode_name(req.mode),
                    response.changes.len(),
                    response.applied.len()
                );
                if new.install.is_some() {
                    if let Some(me) = self.me.upgrade() {
                        crate::install::after_apply(&me);
                    }
                }
                Ok(response)
            }
        }
    }

    /// Save `text` as current, `previous` as previous. Returns what the
    /// store held before, for [`ConfigStore::restore`].
    fn persist(&self, text: &str, previous: Option<&Active>) -> Result<Saved, ApiError> {
        if !self.state_mounted() {
            return Err(ApiError::Internal(format!(
                "STATE is not mounted at {}: the config cannot be saved, so nothing was changed",
                self.paths.state.display()
            )));
        }
        let internal =
            |e: crate::store::StoreError| ApiError::Internal(format!("{e}; nothing was changed"));
        let before = Saved {
            current: self.store.current().map_err(internal)?,
            previous: self.store.previous().map_err(internal)?,
        };
        self.store
            .commit(text, previous.map(|a| a.text.as_ref()))
            .map_err(internal)?;
        Ok(before)
    }

    /// Make `new` current and carry out the plan's live steps. On failure
    /// put `old` back (and the store as `saved` says, when it was written)
    /// and fail.
    async fn apply_live(
        &self,
        running: &mut Running,
        old: Option<Active>,
        new: Active,
        p: &ApplyPlan,
        saved: Option<Saved>,
    ) -> Result<Vec<String>, ApiError> {
        let new_config = new.config.clone();
        self.make_current(running, Some(new), "");
        let mut applied = Vec::new();
        for step in &p.live {
            match self.run_step(step, &new_config).await {
                Ok(lines) => applied.extend(lines),
                Err(failure) => {
                    error!(
                        "config: applying live failed: {failure}; restoring the previous config"
                    );
                    if let Some(saved) = &saved {
                        if let Err(e) = self
                            .store
                            .restore(saved.current.as_deref(), saved.previous.as_deref())
                        {
                            error!("config: {e}: the failed config stays on STATE");
                        }
                    }
                    self.restore_live(running, &new_config, old).await;
                    return Err(ApiError::InvalidConfig(format!(
                        "{failure}\nNothing of this config remains: the previous config was restored."
                    )));
                }
            }
        }
        applied.extend(p.notes.iter().cloned());
        Ok(applied)
    }

    /// Go back from `tried` to `previous` (None: maintenance mode).
    async fn restore_live(
        &self,
        running: &mut Running,
        tried: &MachineConfig,
        previous: Option<Active>,
    ) {
        let Some(previous) = previous else {
            self.make_current(running, None, "no machine config");
            return;
        };
        let back = plan(Some(tried), &previous.config);
        let config = previous.config.clone();
        self.make_current(running, Some(previous), "");
        for step in &back.live {
            if let Err(e) = self.run_step(step, &config).await {
                error!("config: restoring the previous config: {e}");
            }
        }
    }

    fn start_try_timer(&self, id: u64, deadline: Instant) {
        let me = self.me.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
            if let Some(node) = me.upgrade() {
                node.try_expired(id).await;
            }
        });
    }

    async fn try_expired(&self, id: u64) {
        let mut running = self.running.lock().await;
        let Some(previous) = running.tryout.expire(id, Instant::now()) else {
            return;
        };
        warn!(
            "config: the try-mode apply was not confirmed in time; restoring the previous config"
        );
        let Some(tried) = running.current.as_ref().map(|a| a.config.clone()) else {
            return;
        };
        self.restore_live(&mut running, &tried, Some(previous))
            .await;
        info!("config: restored the previous config (try mode timed out)");
    }

    pub async fn confirm(&self) -> Result<(), ApiError> {
        let mut running = self.running.lock().await;
        let Some(previous) = running.tryout.confirm() else {
            return Err(ApiError::Conflict(
                "no try-mode apply is waiting for confirmation".into(),
            ));
        };
        let Some(current) = running.current.clone() else {
            return Err(ApiError::Internal("no running config to confirm".into()));
        };
        if let Err(e) = self.persist(&current.text, Some(&previous)).map(drop) {
            // Keep the window closed: the tried config runs until the next
            // boot, which brings back the saved one.
            warn!("config: confirming the try-mode apply: {e}");
            return Err(ApiError::Internal(format!(
                "{e}. The tried config keeps running but was not saved: the next boot returns to the previous one"
            )));
        }
        info!("config: try-mode apply confirmed; saved on STATE");
        // Only now: an unconfirmed try must not outlive a reboot.
        if previous.config.kernel.args != current.config.kernel.args {
            let said = self.write_kernel_args(&current.config.kernel.args);
            info!("config: {said}");
        }
        Ok(())
    }

    /// When `new` changes the kernel arguments, write them into the
    /// running entry and say so in place of the plan's sentence.
    fn args_to_entry(
        &self,
        old: Option<&MachineConfig>,
        new: &MachineConfig,
        needs_reboot: &mut Vec<String>,
    ) {
        let old_args = old.map(|o| o.kernel.args.as_slice());
        self.args_to_entry_from(old_args, new, needs_reboot);
    }

    fn args_to_entry_from(
        &self,
        old_args: Option<&[String]>,
        new: &MachineConfig,
        needs_reboot: &mut Vec<String>,
    ) {
        if old_args.unwrap_or(&[]) == new.kernel.args.as_slice() {
            return;
        }
        let said = self.write_kernel_args(&new.kernel.args);
        match needs_reboot.iter_mut().find(|n| is_args_sentence(n)) {
            Some(n) => *n = said,
            None => needs_reboot.push(said),
        }
    }

    /// Write `args` into the running slot's boot entry. The sentence for
    /// `needs_reboot`; a failure is logged and said, not fatal: the config
    /// is saved and the next boot tries again.
    pub(crate) fn write_kernel_args(&self, args: &[String]) -> String {
        if self.facts.live {
            return "kernel.args: saved in the config, but a live boot has no boot entry to write them to: \
                    put them on the command line in the PXE directory's boot.ipxe"
                .to_string();
        }
        let mut load = |name: &'static str| self.load_module(name);
        match self.host.write_boot_entry(args, &mut load) {
            Ok(Outcome::Written(file)) => {
                info!(
                    "boot entry: wrote kernel.args [{}] to {file}",
                    args.join(" ")
                );
                format!("kernel.args: written to the boot entry {file}; effective after a reboot")
            }
            Ok(Outcome::Unchanged(file)) => format!(
                "kernel.args: the boot entry {file} has them already; effective after a reboot"
            ),
            Err(e) => {
                error!("{e}");
                format!("kernel.args: saved in the config, but not in the boot entry: {e}; the next boot tries again")
            }
        }
    }
}

/// The plan's (or our) sentence about `kernel.args`.
pub(crate) fn is_args_sentence(sentence: &str) -> bool {
    sentence.starts_with("kernel.args:")
}

fn mode_name(mode: ApplyMode) -> &'static str {
    match mode {
        ApplyMode::Auto => "auto",
        ApplyMode::NoReboot => "no-reboot",
        ApplyMode::Reboot => "reboot",
        ApplyMode::Staged => "staged",
        ApplyMode::Try => "try",
    }
}

/// How long try mode waits without `try_timeout_secs`.
pub const TRY_DEFAULT: Duration = crate::config::tryout::DEFAULT_TIMEOUT;

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----";

    fn config(extra: &str) -> MachineConfig {
        let text = format!(
            "version = 1\n{extra}\n[api]\nca_cert = \"\"\"{CA}\"\"\"\nca_key = \"\"\"{KEY}\"\"\"\n"
        );
        caisson_config::parse("test", &text).unwrap()
    }

    #[test]
    fn the_first_config_shows_every_key_as_added_with_secrets_masked() {
        let new = config("[machine]\nhostname = \"node-1\"");
        let c = changes(None, &new);
        let paths: Vec<&str> = c.iter().map(|c| c.path.as_str()).collect();
        assert!(paths.contains(&"machine.hostname"), "{paths:?}");
        assert!(paths.contains(&"version"), "{paths:?}");
        assert!(paths.contains(&"api.port"), "{paths:?}");
        assert!(c.iter().all(|c| c.old.is_none()), "{c:?}");
        let key = c.iter().find(|c| c.path == "api.ca_key").unwrap();
        assert_eq!(key.new.as_deref(), Some("***"));
        assert!(!format!("{c:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn later_changes_show_old_and_new() {
        let old = config("[machine]\nhostname = \"node-1\"");
        let new = config("[machine]\nhostname = \"node-2\"");
        let c = changes(Some(&old), &new);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].path, "machine.hostname");
        assert_eq!(c[0].old.as_deref(), Some("\"node-1\""));
        assert_eq!(c[0].new.as_deref(), Some("\"node-2\""));
        assert!(changes(Some(&new), &new).is_empty());
    }

    #[test]
    fn mode_names_match_the_wire_format() {
        for mode in [
            ApplyMode::Auto,
            ApplyMode::NoReboot,
            ApplyMode::Reboot,
            ApplyMode::Staged,
            ApplyMode::Try,
        ] {
            let wire = serde_json::to_value(mode).unwrap();
            assert_eq!(wire.as_str(), Some(mode_name(mode)));
        }
        assert_eq!(TRY_DEFAULT, Duration::from_secs(60));
    }
}
