//! The GPT layout of a Caisson disk, computed in memory before anything is
//! written. The builder writes it into an image; the installer (later) writes
//! the same plan onto a real disk; the agent finds partitions by their labels.

use thiserror::Error;
use uuid::Uuid;

use crate::guid::derive_guid;

pub const SECTOR_SIZE: u64 = 512;
const MIB: u64 = 1024 * 1024;
/// Partitions start on 1 MiB boundaries; the first MiB holds the protective
/// MBR and primary GPT, and the last MiB leaves room for the backup GPT.
pub const ALIGNMENT: u64 = MIB;

/// What a partition is for. The order of the variants is the order on disk
/// and the GPT entry number (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PartitionRole {
    Esp,
    RootA,
    RootB,
    State,
    Data,
}

impl PartitionRole {
    pub const ALL: [PartitionRole; 5] = [
        PartitionRole::Esp,
        PartitionRole::RootA,
        PartitionRole::RootB,
        PartitionRole::State,
        PartitionRole::Data,
    ];

    /// GPT partition name; the agent finds partitions by it.
    pub fn label(self) -> &'static str {
        match self {
            PartitionRole::Esp => "ESP",
            PartitionRole::RootA => "ROOT-A",
            PartitionRole::RootB => "ROOT-B",
            PartitionRole::State => "STATE",
            PartitionRole::Data => "DATA",
        }
    }

    /// 1-based GPT entry number.
    pub fn number(self) -> u32 {
        match self {
            PartitionRole::Esp => 1,
            PartitionRole::RootA => 2,
            PartitionRole::RootB => 3,
            PartitionRole::State => 4,
            PartitionRole::Data => 5,
        }
    }

    /// Type GUID from the Discoverable Partitions Specification where one
    /// exists, so `systemd-dissect` and friends recognise the disk. STATE has
    /// no DPS type and uses "Linux filesystem data".
    pub fn type_guid(self) -> Uuid {
        let s = match self {
            PartitionRole::Esp => "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            // Root partition (x86-64).
            PartitionRole::RootA | PartitionRole::RootB => "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
            // Linux filesystem data.
            PartitionRole::State => "0fc63daf-8483-4772-8e79-3d69d8477de4",
            // Variable data partition (/var).
            PartitionRole::Data => "4d21b016-b534-45c2-a9fb-5c16e091fd2d",
        };
        // The literals above are valid; fall back to nil rather than panic.
        Uuid::parse_str(s).unwrap_or(Uuid::nil())
    }

    pub fn from_label(label: &str) -> Option<PartitionRole> {
        PartitionRole::ALL.into_iter().find(|r| r.label() == label)
    }
}

/// Partition sizes in MiB. DATA's size is its size in the built image; on
/// first boot it grows to the end of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizesMiB {
    pub esp: u64,
    pub root: u64,
    pub state: u64,
    pub data: u64,
}

impl Default for SizesMiB {
    fn default() -> Self {
        SizesMiB { esp: 512, root: 2048, state: 128, data: 256 }
    }
}

impl SizesMiB {
    fn of(&self, role: PartitionRole) -> u64 {
        match role {
            PartitionRole::Esp => self.esp,
            PartitionRole::RootA | PartitionRole::RootB => self.root,
            PartitionRole::State => self.state,
            PartitionRole::Data => self.data,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("partition {label} is {size_mib} MiB; it must be at least {min_mib} MiB")]
    TooSmall { label: &'static str, size_mib: u64, min_mib: u64 },
}

/// GPT attribute bit 63, "no-auto" in the Discoverable Partitions
/// Specification: tools such as `systemd-dissect` skip the partition when
/// they pick a root. Set on the slot that is not meant to boot, so the disk
/// has exactly one auto-discoverable root.
pub const GPT_ATTR_NO_AUTO: u64 = 1 << 63;

/// One partition of the plan, in bytes and sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    pub role: PartitionRole,
    pub label: &'static str,
    pub type_guid: Uuid,
    pub part_guid: Uuid,
    /// Byte offset of the first byte.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// GPT attribute bits.
    pub attributes: u64,
}

impl PartitionPlan {
    pub fn first_lba(&self) -> u64 {
        self.offset / SECTOR_SIZE
    }
    /// Inclusive, as GPT stores it.
    pub fn last_lba(&self) -> u64 {
        (self.offset + self.size) / SECTOR_SIZE - 1
    }
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }
}

/// The whole disk: its GUID, its size and its partitions in on-disk order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    pub disk_guid: Uuid,
    pub size: u64,
    pub partitions: Vec<PartitionPlan>,
}

impl DiskPlan {
    /// Lay the partitions out back to back on 1 MiB boundaries. GUIDs are
    /// derived from `identity`, so the same identity gives the same disk.
    pub fn new(identity: &str, sizes: SizesMiB) -> Result<DiskPlan, PlanError> {
        let minimum = |role: PartitionRole| match role {
            // FAT32 needs 65525 clusters; at 4 KiB clusters that is ~260 MiB,
            // but fatfs picks smaller clusters for small volumes. 64 MiB is
            // the least we accept for two kernels and initrds.
            PartitionRole::Esp => 64,
            PartitionRole::RootA | PartitionRole::RootB => 16,
            PartitionRole::State => 16,
            PartitionRole::Data => 16,
        };
        let mut offset = ALIGNMENT;
        let mut partitions = Vec::with_capacity(PartitionRole::ALL.len());
        for role in PartitionRole::ALL {
            let size_mib = sizes.of(role);
            let min_mib = minimum(role);
            if size_mib < min_mib {
                return Err(PlanError::TooSmall { label: role.label(), size_mib, min_mib });
            }
            let size = size_mib * MIB;
            partitions.push(PartitionPlan {
                role,
                label: role.label(),
                type_guid: role.type_guid(),
                part_guid: derive_guid(identity, &format!("partition/{}", role.label())),
                offset,
                size,
                // A fresh disk boots slot A; slot B is empty until the first upgrade.
                attributes: if role == PartitionRole::RootB { GPT_ATTR_NO_AUTO } else { 0 },
            });
            offset += size;
        }
        Ok(DiskPlan {
            disk_guid: derive_guid(identity, "disk"),
            size: offset + ALIGNMENT,
            partitions,
        })
    }

    pub fn partition(&self, role: PartitionRole) -> Option<&PartitionPlan> {
        self.partitions.iter().find(|p| p.role == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_is_aligned_contiguous_and_in_order() {
        let plan = DiskPlan::new("caisson-0.1.0", SizesMiB::default()).unwrap();
        assert_eq!(plan.partitions.len(), 5);
        let mut expected_offset = MIB;
        for (i, p) in plan.partitions.iter().enumerate() {
            assert_eq!(p.role.number() as usize, i + 1);
            assert_eq!(p.offset % ALIGNMENT, 0, "{} misaligned", p.label);
            assert_eq!(p.offset, expected_offset);
            expected_offset += p.size;
        }
        assert_eq!(plan.size, expected_offset + MIB);
        let esp = plan.partition(PartitionRole::Esp).unwrap();
        assert_eq!(esp.first_lba(), 2048);
        assert_eq!(esp.last_lba(), 2048 + 512 * 2048 - 1);
        assert_eq!(plan.partition(PartitionRole::RootA).unwrap().size, 2048 * MIB);
        let no_auto: Vec<_> =
            plan.partitions.iter().filter(|p| p.attributes & GPT_ATTR_NO_AUTO != 0).map(|p| p.label).collect();
        assert_eq!(no_auto, ["ROOT-B"]);
    }

    #[test]
    fn guids_are_derived_from_identity_and_distinct() {
        let a = DiskPlan::new("caisson-0.1.0", SizesMiB::default()).unwrap();
        let b = DiskPlan::new("caisson-0.1.0", SizesMiB::default()).unwrap();
        let c = DiskPlan::new("caisson-0.2.0", SizesMiB::default()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.disk_guid, c.disk_guid);
        let mut guids: Vec<_> = a.partitions.iter().map(|p| p.part_guid).collect();
        guids.push(a.disk_guid);
        guids.sort();
        guids.dedup();
        assert_eq!(guids.len(), 6);
    }

    #[test]
    fn too_small_partition_is_refused_by_name() {
        let sizes = SizesMiB { esp: 8, ..SizesMiB::default() };
        let err = DiskPlan::new("x", sizes).unwrap_err();
        assert_eq!(err, PlanError::TooSmall { label: "ESP", size_mib: 8, min_mib: 64 });
        assert!(err.to_string().contains("ESP"));
    }

    #[test]
    fn type_guids_follow_the_discoverable_partitions_spec() {
        assert_eq!(
            PartitionRole::Esp.type_guid().to_string(),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        assert_eq!(
            PartitionRole::RootA.type_guid().to_string(),
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
        );
        assert_eq!(PartitionRole::from_label("STATE"), Some(PartitionRole::State));
        assert_eq!(PartitionRole::from_label("nope"), None);
    }
}
