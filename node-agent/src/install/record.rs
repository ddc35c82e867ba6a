//! What an install leaves behind on STATE, as JSON:
//!
//! - on the installed disk, `install/record.json`: which disk and partition
//!   GUIDs this install wrote, when, from which version and with which
//!   config (its sha256). The installed node reads it to know that it runs
//!   from the disk its `[install]` names, and does nothing.
//! - on the live medium (a USB stick), `install/installed-to-<disk GUID>.json`:
//!   the same record. The stick booting again in a machine that holds
//!   that disk does not install a second time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{write_atomic, StoreError};

pub const DIR: &str = "install";
pub const RECORD: &str = "record.json";
const MARKER_PREFIX: &str = "installed-to-";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub disk_guid: Uuid,
    /// Partition GUID by GPT label.
    pub partitions: BTreeMap<String, Uuid>,
    /// The device node the installer wrote, e.g. `/dev/vdb`.
    pub device: String,
    /// Size of that disk, bytes.
    pub disk_size: u64,
    /// Unix seconds.
    pub installed_at: u64,
    /// The image version installed into slot A.
    pub version: String,
    /// sha256 (hex) of the machine config committed to the new STATE.
    pub config_sha256: String,
    /// Where the installer ran from, e.g. `live medium /dev/sda` or `memory`.
    pub installed_from: String,
}

impl InstallRecord {
    /// Does the running root (`caisson.root=PARTUUID=…`) live on this install?
    pub fn holds(&self, partuuid: Uuid) -> bool {
        self.partitions.values().any(|g| *g == partuuid)
    }

    pub fn root_a(&self) -> Option<Uuid> {
        self.partitions.get("ROOT-A").copied()
    }
}

pub fn record_path(state: &Path) -> PathBuf {
    state.join(DIR).join(RECORD)
}

pub fn marker_path(state: &Path, disk_guid: Uuid) -> PathBuf {
    state
        .join(DIR)
        .join(format!("{MARKER_PREFIX}{disk_guid}.json"))
}

fn ensure_dir(state: &Path) -> Result<(), StoreError> {
    let dir = state.join(DIR);
    std::fs::create_dir_all(&dir).map_err(|source| StoreError {
        action: "create",
        path: dir,
        source,
    })
}

fn write(path: &Path, record: &InstallRecord) -> Result<(), StoreError> {
    let mut text = serde_json::to_string_pretty(record).unwrap_or_default();
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// The record on the installed disk's STATE (mounted at `state`).
pub fn write_record(state: &Path, record: &InstallRecord) -> Result<(), StoreError> {
    ensure_dir(state)?;
    write(&record_path(state), record)
}

/// The marker on the live medium's STATE.
pub fn write_marker(state: &Path, record: &InstallRecord) -> Result<(), StoreError> {
    ensure_dir(state)?;
    write(&marker_path(state, record.disk_guid), record)
}

fn read(path: &Path) -> Option<InstallRecord> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn read_record(state: &Path) -> Option<InstallRecord> {
    read(&record_path(state))
}

/// Every marker on `state`, oldest file name first.
pub fn read_markers(state: &Path) -> Vec<InstallRecord> {
    let Ok(entries) = std::fs::read_dir(state.join(DIR)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(MARKER_PREFIX) && n.ends_with(".json"))
        })
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| read(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn record() -> InstallRecord {
        InstallRecord {
            disk_guid: Uuid::from_u128(1),
            partitions: [("ROOT-A", 2u128), ("ROOT-B", 3), ("STATE", 4)]
                .iter()
                .map(|(l, g)| (l.to_string(), Uuid::from_u128(*g)))
                .collect(),
            device: "/dev/vdb".into(),
            disk_size: 4 << 30,
            installed_at: 1_700_000_000,
            version: "0.1.0".into(),
            config_sha256: "ab".repeat(32),
            installed_from: "live medium /dev/vda".into(),
        }
    }

    #[test]
    fn records_and_markers_round_trip_and_name_their_disk() {
        let state = tempfile::tempdir().unwrap();
        assert_eq!(read_record(state.path()), None);
        assert!(read_markers(state.path()).is_empty());
        let r = record();
        write_record(state.path(), &r).unwrap();
        write_marker(state.path(), &r).unwrap();
        assert_eq!(read_record(state.path()), Some(r.clone()));
        assert_eq!(read_markers(state.path()), std::slice::from_ref(&r));
        assert!(marker_path(state.path(), r.disk_guid)
            .ends_with("install/installed-to-00000000-0000-0000-0000-000000000001.json"));
        assert!(r.holds(Uuid::from_u128(3)) && !r.holds(Uuid::from_u128(9)));
        assert_eq!(r.root_a(), Some(Uuid::from_u128(2)));
        // A damaged marker is ignored, not fatal.
        std::fs::write(state.path().join("install/installed-to-x.json"), "{").unwrap();
        assert_eq!(read_markers(state.path()).len(), 1);
    }
}
