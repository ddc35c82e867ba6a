//! Block devices from `/sys/class/block`, and finding partitions through
//! their disks' GPTs.

use std::path::{Path, PathBuf};

use caisson_layout::RootSpec;

use crate::gpt::{read_gpt, GptPartition};
use crate::DevicesError;

/// Where sysfs' block class and the device nodes are; tests point these
/// into a temporary tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysRoots {
    /// `/sys/class/block`
    pub class_block: PathBuf,
    /// `/dev`
    pub dev: PathBuf,
}

impl SysRoots {
    pub fn new(sys: &Path, dev: &Path) -> SysRoots {
        SysRoots {
            class_block: sys.join("class/block"),
            dev: dev.to_path_buf(),
        }
    }
}

impl Default for SysRoots {
    fn default() -> SysRoots {
        SysRoots::new(Path::new("/sys"), Path::new("/dev"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name, e.g. `vda2`.
    pub name: String,
    /// e.g. `/dev/vda2`.
    pub dev_path: PathBuf,
    pub size_bytes: u64,
    /// Set for partitions.
    pub partition: Option<PartitionInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The whole disk, e.g. `vda`.
    pub parent: String,
    /// GPT entry number, from sysfs `partition`.
    pub number: u32,
}

/// All block devices, sorted by name.
pub fn list_block_devices() -> Result<Vec<BlockDevice>, DevicesError> {
    list_block_devices_in(&SysRoots::default())
}

/// All block devices under `roots`, sorted by name. A device that vanishes
/// while we look (unplugged) is left out rather than failing the scan.
pub fn list_block_devices_in(roots: &SysRoots) -> Result<Vec<BlockDevice>, DevicesError> {
    let class = &roots.class_block;
    let entries = std::fs::read_dir(class).map_err(|e| DevicesError::io(class, e))?;
    let mut devices = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DevicesError::io(class, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match read_device(roots, &name) {
            Ok(dev) => devices.push(dev),
            Err(DevicesError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(devices)
}

fn read_device(roots: &SysRoots, name: &str) -> Result<BlockDevice, DevicesError> {
    let dir = roots.class_block.join(name);
    // sysfs `size` is in 512-byte units whatever the logical sector size.
    let sectors: u64 = read_number(&dir.join("size"))?;
    let partition_file = dir.join("partition");
    let partition = if partition_file.exists() {
        let number = read_number(&partition_file)?;
        // A partition's sysfs directory sits inside its disk's.
        let real = std::fs::canonicalize(&dir).map_err(|e| DevicesError::io(&dir, e))?;
        let parent = real
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| DevicesError::Sysfs {
                path: real.clone(),
                reason: "partition has no parent disk".into(),
            })?;
        Some(PartitionInfo { parent, number })
    } else {
        None
    };
    Ok(BlockDevice {
        name: name.to_string(),
        dev_path: roots.dev.join(name),
        size_bytes: sectors.saturating_mul(512),
        partition,
    })
}

fn read_number<T: std::str::FromStr>(path: &Path) -> Result<T, DevicesError>
where
    T::Err: std::fmt::Display,
{
    let text = std::fs::read_to_string(path).map_err(|e| DevicesError::io(path, e))?;
    text.trim().parse().map_err(|e| DevicesError::Sysfs {
        path: path.to_path_buf(),
        reason: format!("expected a number, got {:?}: {e}", text.trim()),
    })
}

fn matches(spec: &RootSpec, entry: &GptPartition) -> bool {
    match spec {
        RootSpec::PartUuid(guid) => entry.guid == *guid,
        RootSpec::PartLabel(label) => entry.label == *label,
        // A file in the initramfs is never a partition.
        RootSpec::Initrd(_) => false,
    }
}

/// The partition device of `disk`'s entry `number`, if the kernel has
/// created it yet.
fn partition_device<'a>(
    devices: &'a [BlockDevice],
    disk: &str,
    number: u32,
) -> Option<&'a BlockDevice> {
    devices.iter().find(|d| {
        d.partition
            .as_ref()
            .is_some_and(|p| p.parent == disk && p.number == number)
    })
}

/// The partition `spec` names, found by reading every whole disk's GPT
/// (disks in name order; for a label on several disks the first wins).
/// Disks without a readable GPT (CD-ROMs, blank disks) are skipped. None
/// if no disk has it, or its partition device does not exist yet.
pub fn find_partition(spec: &RootSpec) -> Result<Option<BlockDevice>, DevicesError> {
    find_partition_in(spec, &SysRoots::default())
}

pub fn find_partition_in(
    spec: &RootSpec,
    roots: &SysRoots,
) -> Result<Option<BlockDevice>, DevicesError> {
    let devices = list_block_devices_in(roots)?;
    for disk in devices
        .iter()
        .filter(|d| d.partition.is_none() && d.size_bytes > 0)
    {
        let Ok(entries) = read_gpt(&disk.dev_path) else {
            continue;
        };
        for entry in entries.iter().filter(|e| matches(spec, e)) {
            if let Some(dev) = partition_device(&devices, &disk.name, entry.number) {
                return Ok(Some(dev.clone()));
            }
        }
    }
    Ok(None)
}

/// The partition labelled `label` on the same disk as `partition_name`
/// (e.g. STATE next to the root the system booted from).
pub fn sibling_by_label(
    partition_name: &str,
    label: &str,
) -> Result<Option<BlockDevice>, DevicesError> {
    sibling_by_label_in(partition_name, label, &SysRoots::default())
}

pub fn sibling_by_label_in(
    partition_name: &str,
    label: &str,
    roots: &SysRoots,
) -> Result<Option<BlockDevice>, DevicesError> {
    Ok(sibling_partition_in(partition_name, label, roots)?.map(|(dev, _)| dev))
}

/// Like [`sibling_by_label`], with the partition's GPT entry (its PARTUUID
/// is `guid`): what an upgrade needs to point a boot entry at the other slot.
pub fn sibling_partition(
    partition_name: &str,
    label: &str,
) -> Result<Option<(BlockDevice, GptPartition)>, DevicesError> {
    sibling_partition_in(partition_name, label, &SysRoots::default())
}

pub fn sibling_partition_in(
    partition_name: &str,
    label: &str,
    roots: &SysRoots,
) -> Result<Option<(BlockDevice, GptPartition)>, DevicesError> {
    let devices = list_block_devices_in(roots)?;
    let unknown = |name: &str| DevicesError::UnknownDevice {
        name: name.to_string(),
        class_block: roots.class_block.clone(),
    };
    let me = devices
        .iter()
        .find(|d| d.name == partition_name)
        .ok_or_else(|| unknown(partition_name))?;
    let info = me
        .partition
        .as_ref()
        .ok_or_else(|| DevicesError::NotAPartition {
            name: partition_name.to_string(),
        })?;
    let disk = devices
        .iter()
        .find(|d| d.name == info.parent)
        .ok_or_else(|| unknown(&info.parent))?;
    let entries = read_gpt(&disk.dev_path)?;
    Ok(entries.into_iter().find(|e| e.label == label).and_then(|e| {
        partition_device(&devices, &disk.name, e.number).map(|dev| (dev.clone(), e))
    }))
}

#[cfg(test)]
#[path = "block_tests.rs"]
mod tests;
