//! A/B upgrades on the node: install a bundle into the inactive slot
//! ([`install`]), bless a new slot once its health gates pass, roll back,
//! clean up, and describe both slots.
//!
//! systemd-boot's boot counting does the rollback that needs no agent: an
//! entry written with `+3` is tried three times, each try renames it
//! (`+2-1`, …), and at `+0-3` it sorts last and the other slot boots. The
//! agent of a slot on trial blesses it (drops the counter) only when every
//! gate passes within `upgrade.health_timeout_secs`; otherwise it reboots
//! and lets the counter run down.
//!
//! The ESP's entries decide what boots; [`history`] on STATE only explains
//! (which upgrade ran last and how it ended; why a slot is bad after its
//! entry was cleaned up).

pub mod history;
pub mod install;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use caisson_api::types::{SlotInfo, UpgradeRecord};
use caisson_layout::boot_entry::{BootEntry, Counter};
use caisson_layout::slots::{self, EntryState};
use caisson_layout::{PartitionRole, Slot};
use tracing::{info, warn};

use self::history::{now_ms, History, HistoryFile, SlotRecord, OUTCOME_IN_PROGRESS};
use self::install::{list_entries, remove_entry, rename_entry, InstallError, Target};
use crate::bootentry::{self, EntryError};

/// Who is upgrading, while an upgrade runs.
#[derive(Debug, Clone)]
pub struct Busy {
    pub by: String,
    pub since_ms: u64,
}

/// The agent's upgrade state. The entry list is a cache of the ESP's
/// (only the agent changes it while the node runs), refreshed whenever the
/// agent reads or writes the ESP.
#[derive(Debug)]
pub struct Upgrades {
    pub running: Slot,
    pub history: HistoryFile,
    busy: Mutex<Option<Busy>>,
    entries: Mutex<Option<Vec<BootEntry>>>,
}

/// Releases the upgrade lock when dropped.
#[derive(Debug)]
pub struct BusyGuard<'a> {
    upgrades: &'a Upgrades,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.upgrades.busy) = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl From<EntryError> for InstallError {
    fn from(e: EntryError) -> InstallError {
        InstallError::Refused(e.to_string())
    }
}

/// What the boot found about this slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootVerdict {
    /// The running slot's entry is blessed.
    KnownGood,
    /// The running slot is on trial: its entry still has a counter.
    OnTrial { entry: BootEntry },
    /// The ESP could not be read; nothing to do.
    Unknown(String),
}

impl Upgrades {
    pub fn new(running: Slot, state: &Path) -> Upgrades {
        Upgrades {
            running,
            history: HistoryFile::new(state),
            busy: Mutex::new(None),
            entries: Mutex::new(None),
        }
    }

    /// Take the one upgrade slot, or say who holds it.
    pub fn begin(&self, by: &str) -> Result<BusyGuard<'_>, Busy> {
        let mut busy = lock(&self.busy);
        if let Some(b) = busy.as_ref() {
            return Err(b.clone());
        }
        *busy = Some(Busy {
            by: by.to_string(),
            since_ms: now_ms(),
        });
        Ok(BusyGuard { upgrades: self })
    }

    pub fn is_busy(&self) -> bool {
        lock(&self.busy).is_some()
    }

    pub fn remember_entries(&self, entries: Vec<BootEntry>) {
        *lock(&self.entries) = Some(entries);
    }

    pub fn cached_entries(&self) -> Option<Vec<BootEntry>> {
        lock(&self.entries).clone()
    }

    /// Both slots as `nodectl version` shows them.
    pub fn slots_view(&self, running_version: &str) -> (Vec<SlotInfo>, Option<UpgradeRecord>) {
        let history = self.history.load();
        let entries = self.cached_entries();
        let view = [Slot::A, Slot::B]
            .into_iter()
            .map(|slot| slot_info(slot, self.running, running_version, entries.as_deref(), &history))
            .collect();
        (view, history.last)
    }

    /// At boot, with the ESP mounted at `esp`: record what happened to the
    /// other slot, clean up, and say whether this slot is on trial.
    pub fn on_boot(&self, esp: &Path) -> Result<BootVerdict, InstallError> {
        let entries = list_entries(esp)?;
        let other = self.running.other();
        let mut history = self.history.load();
        let mut changed = false;
        if let Some(bad) = slots::entry_of(&entries, other).filter(|e| e.is_bad()) {
            let record = history.slots.entry(other.to_string()).or_default();
            if !record.bad || record.version.as_deref() != Some(bad.version.as_str()) {
                *record = SlotRecord {
                    version: Some(bad.version.clone()),
                    bad: true,
                    note: Some(format!(
                        "its boot entry ran out of tries ({} boots) without passing its health gates",
                        bad.counter.map(|c| c.done).unwrap_or(0)
                    )),
                    updated_ms: now_ms(),
                };
            }
            if let Some(last) = history.last.as_mut().filter(|l| {
                l.kind == "upgrade" && l.slot == other.name() && l.finished_ms.is_none()
            }) {
                last.outcome = format!(
                    "rolled-back: slot {other} ({}) did not pass its health gates in {} boots; slot {} runs",
                    bad.version,
                    bad.counter.map(|c| c.done).unwrap_or(0),
                    self.running
                );
                last.finished_ms = Some(now_ms());
            }
            changed = true;
            let why = history
                .slots
                .get(other.name())
                .and_then(|r| r.note.clone())
                .unwrap_or_default();
            info!("upgrade: slot {other} ({}) is bad ({why}); removing its entry", bad.version);
            remove_entry(esp, bad)?;
        }
        if slots::entry_of(&entries, other).is_none() {
            if let Some(last) = history.last.as_mut().filter(|l| {
                l.kind == "upgrade" && l.slot == other.name() && l.outcome == OUTCOME_IN_PROGRESS
            }) {
                last.outcome = "failed: the node restarted before the upgrade had written the slot's boot entry; \
                                the slot has no entry and does not boot"
                    .into();
                last.finished_ms = Some(now_ms());
                changed = true;
            }
            clean_temp_files(esp, other);
        }
        if changed {
            if let Err(e) = self.history.save(&history) {
                warn!("upgrade history: {e}");
            }
        }
        let entries = list_entries(esp)?;
        let verdict = match slots::entry_of(&entries, self.running) {
            Some(e) if e.counter.is_some() => BootVerdict::OnTrial { entry: e.clone() },
            Some(_) => BootVerdict::KnownGood,
            None => BootVerdict::Unknown(format!("no boot entry for the running slot {}", self.running)),
        };
        self.remember_entries(entries);
        Ok(verdict)
    }

    /// Drop the running entry's counter: the slot is known good.
    pub fn bless(&self, esp: &Path, version: &str) -> Result<String, InstallError> {
        let entries = list_entries(esp)?;
        let Some(entry) = slots::entry_of(&entries, self.running).cloned() else {
            return Err(InstallError::Refused(format!(
                "no boot entry for the running slot {} to bless",
                self.running
            )));
        };
        let blessed = BootEntry {
            counter: None,
            ..entry.clone()
        };
        if entry.counter.is_some() {
            rename_entry(esp, &entry, &blessed)?;
        }
        self.history.update(|h| {
            h.slots.insert(
                self.running.to_string(),
                SlotRecord {
                    version: Some(version.to_string()),
                    bad: false,
                    note: None,
                    updated_ms: now_ms(),
                },
            );
            if let Some(last) = h.last.as_mut().filter(|l| l.slot == self.running.name() && l.finished_ms.is_none()) {
                last.outcome = "blessed".into();
                last.finished_ms = Some(now_ms());
            }
        });
        self.remember_entries(list_entries(esp)?);
        Ok(blessed.file_name())
    }

    /// Make the other slot boot next: it must hold a known-good entry.
    /// The running slot's entry is marked as out of tries, which sorts it
    /// last; it is cleaned up after the next boot.
    pub fn rollback(&self, esp: &Path, running_version: &str, by: &str) -> Result<BootEntry, InstallError> {
        let entries = list_entries(esp)?;
        let other = self.running.other();
        let target = match slots::entry_of(&entries, other) {
            Some(e) if EntryState::of(Some(e)) == EntryState::KnownGood => e.clone(),
            Some(e) => {
                return Err(InstallError::Refused(format!(
                    "slot {other} ({}) is {} and not known good: rolling back to it could leave the node without a bootable slot",
                    e.version,
                    EntryState::of(Some(e)).name()
                )))
            }
            None => {
                return Err(InstallError::Refused(format!(
                    "slot {other} holds no bootable image (no boot entry): there is nothing to roll back to"
                )))
            }
        };
        let Some(mine) = slots::entry_of(&entries, self.running).cloned() else {
            return Err(InstallError::Refused(format!(
                "no boot entry for the running slot {}",
                self.running
            )));
        };
        let retired = BootEntry {
            counter: Some(Counter { left: 0, done: 0 }),
            ..mine.clone()
        };
        rename_entry(esp, &mine, &retired)?;
        let after = list_entries(esp)?;
        if slots::next_boot(&after).map(|e| e.slot) != Some(other) {
            // Cannot happen with our own entries only; undo rather than guess.
            let _ = rename_entry(esp, &retired, &mine);
            return Err(InstallError::Refused(format!(
                "after marking slot {} the boot loader would still not choose slot {other}; nothing changed",
                self.running
            )));
        }
        self.history.update(|h| {
            h.slots.insert(
                self.running.to_string(),
                SlotRecord {
                    version: Some(running_version.to_string()),
                    bad: true,
                    note: Some(format!("rolled back from by {by}")),
                    updated_ms: now_ms(),
                },
            );
            h.last = Some(UpgradeRecord {
                kind: "rollback".into(),
                from_version: running_version.to_string(),
                to_version: target.version.clone(),
                slot: other.to_string(),
                started_ms: now_ms(),
                finished_ms: Some(now_ms()),
                outcome: format!("rolled-back: slot {other} ({}) boots next", target.version),
                by: by.to_string(),
            });
        });
        self.remember_entries(after);
        Ok(target)
    }
}

/// Leftovers of an interrupted write into `slot`'s ESP directory.
fn clean_temp_files(esp: &Path, slot: Slot) {
    let dir = esp.join(slot.esp_dir());
    let Ok(items) = std::fs::read_dir(&dir) else { return };
    for item in items.flatten() {
        let name = item.file_name();
        if name.to_string_lossy().ends_with(".new") {
            let path = item.path();
            match std::fs::remove_file(&path) {
                Ok(()) => info!("upgrade: removed {}, left by an interrupted upgrade", path.display()),
                Err(e) => warn!("upgrade: remove {}: {e}", path.display()),
            }
        }
    }
}

fn slot_info(
    slot: Slot,
    running: Slot,
    running_version: &str,
    entries: Option<&[BootEntry]>,
    history: &History,
) -> SlotInfo {
    let entry = entries.and_then(|e| slots::entry_of(e, slot));
    let record = history.slots.get(slot.name());
    let state = EntryState::of(entry);
    let tries_left = match state {
        EntryState::Trying { left } => Some(left),
        _ => None,
    };
    let (state_name, note) = if slot == running {
        ("running", None)
    } else {
        match (state, record) {
            (EntryState::Empty, Some(r)) if r.bad => ("bad", r.note.clone()),
            (EntryState::Empty, _) if entries.is_none() => ("unknown", Some("the ESP could not be read".into())),
            (EntryState::Bad, r) => ("bad", r.and_then(|r| r.note.clone())),
            (s, _) => (s.name(), None),
        }
    };
    let version = if slot == running {
        Some(running_version.to_string())
    } else {
        entry
            .map(|e| e.version.clone())
            .or_else(|| record.and_then(|r| r.version.clone()))
    };
    SlotInfo {
        slot: slot.to_string(),
        version,
        state: state_name.to_string(),
        running: slot == running,
        tries_left,
        entry: entry.map(BootEntry::file_name),
        note,
    }
}

/// The slot partitions and the ESP on the disk the node booted from.
pub fn locate_target(running: Slot, esp: &Path, kernel_args: Vec<String>) -> Result<Target, InstallError> {
    let root = bootentry::root_partition_name()?;
    let role = match running.other() {
        Slot::A => PartitionRole::RootA,
        Slot::B => PartitionRole::RootB,
    };
    let label = role.label();
    let (dev, gpt) = caisson_devices::sibling_partition(&root, label)
        .map_err(|e| InstallError::Refused(format!("looking for {label} beside {root}: {e}")))?
        .ok_or_else(|| InstallError::Refused(format!("no partition labelled {label} beside the root {root}")))?;
    Ok(Target {
        esp: esp.to_path_buf(),
        running,
        root_device: dev.dev_path,
        root_capacity: dev.size_bytes,
        root_partuuid: gpt.guid,
        kernel_args,
    })
}

/// Where the running system says it was verified from (init's hint).
pub fn root_verity_hint() -> Option<String> {
    std::fs::read_to_string(caisson_layout::paths::ROOT_VERITY_HINT)
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn esp_mount_dir() -> PathBuf {
    PathBuf::from(bootentry::ESP_MOUNT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str) -> BootEntry {
        BootEntry::parse_file_name(name).unwrap()
    }

    #[test]
    fn the_view_names_each_slots_state() {
        let mut h = History::default();
        let entries = vec![e("caisson-0.1.0-a.conf"), e("caisson-0.2.0-b+2-1.conf")];
        let (a, b) = (
            slot_info(Slot::A, Slot::A, "0.1.0", Some(&entries), &h),
            slot_info(Slot::B, Slot::A, "0.1.0", Some(&entries), &h),
        );
        assert_eq!((a.state.as_str(), a.running), ("running", true));
        assert_eq!((b.state.as_str(), b.tries_left, b.version.as_deref()), ("trying", Some(2), Some("0.2.0")));
        h.slots.insert(
            "b".into(),
            SlotRecord { version: Some("0.2.0".into()), bad: true, note: Some("ran out".into()), updated_ms: 0 },
        );
        let entries = vec![e("caisson-0.1.0-a.conf")];
        let b = slot_info(Slot::B, Slot::A, "0.1.0", Some(&entries), &h);
        assert_eq!((b.state.as_str(), b.version.as_deref(), b.note.as_deref()), ("bad", Some("0.2.0"), Some("ran out")));
        let b = slot_info(Slot::B, Slot::A, "0.1.0", Some(&entries), &History::default());
        assert_eq!(b.state, "empty");
    }

    #[test]
    fn only_one_upgrade_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let u = Upgrades::new(Slot::A, dir.path());
        let first = u.begin("admin").unwrap();
        assert_eq!(u.begin("other").unwrap_err().by, "admin");
        drop(first);
        assert!(u.begin("other").is_ok());
    }
}
