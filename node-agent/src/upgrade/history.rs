//! What the node remembers about its slots on STATE: the last upgrade or
//! rollback and how it ended, and why a slot is bad after its entry is gone
//! (cleanup removes bad entries; the reason stays here).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use caisson_api::types::UpgradeRecord;
use serde::{Deserialize, Serialize};

use crate::store::{write_atomic, StoreError};

/// Below STATE.
pub const HISTORY_FILE: &str = "upgrade/history.json";

pub const OUTCOME_IN_PROGRESS: &str = "in-progress";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub version: Option<String>,
    /// Set when the slot must not be offered for rollback.
    pub bad: bool,
    pub note: Option<String>,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// By slot name.
    #[serde(default)]
    pub slots: BTreeMap<String, SlotRecord>,
    #[serde(default)]
    pub last: Option<UpgradeRecord>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct HistoryFile {
    path: PathBuf,
}

impl HistoryFile {
    pub fn new(state: &Path) -> HistoryFile {
        HistoryFile {
            path: state.join(HISTORY_FILE),
        }
    }

    /// The history; an unreadable or unparsable file reads as empty (it is
    /// informational: the ESP's entries decide what boots).
    pub fn load(&self) -> History {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, history: &History) -> Result<(), StoreError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError {
                action: "create",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let text = serde_json::to_vec_pretty(history).unwrap_or_default();
        write_atomic(&self.path, &text)
    }

    /// Load, change, save; a failure to save is logged, not fatal.
    pub fn update(&self, change: impl FnOnce(&mut History)) {
        let mut h = self.load();
        change(&mut h);
        if let Err(e) = self.save(&h) {
            tracing::warn!("upgrade history: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_survives_a_round_trip_and_a_garbled_file_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = HistoryFile::new(dir.path());
        assert_eq!(file.load(), History::default());
        file.update(|h| {
            h.slots.insert(
                "b".into(),
                SlotRecord {
                    version: Some("0.2.0".into()),
                    bad: true,
                    note: Some("tries ran out".into()),
                    updated_ms: 1,
                },
            );
        });
        assert!(file.load().slots["b"].bad);
        std::fs::write(dir.path().join(HISTORY_FILE), b"{not json").unwrap();
        assert_eq!(file.load(), History::default());
    }
}
