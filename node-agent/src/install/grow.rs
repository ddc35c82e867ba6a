//! DATA grows to the end of its disk, on the first boot from a disk that is
//! bigger than the layout (an install, or a raw image `dd`'d to a bigger
//! stick), with no userspace tool:
//!
//! 1. the GPT: backup header moved to the disk's end, DATA's entry extended
//!    (`caisson_disk::grow_last_partition`), fsync;
//! 2. the kernel: BLKPG_RESIZE_PARTITION (DATA is mounted, so the table
//!    cannot be re-read as a whole);
//! 3. ext4, mounted: EXT4_IOC_RESIZE_FS.
//!
//! Each step first checks whether it is still needed, so a power cut
//! between them is finished by the next boot, and a grown disk costs one
//! read of its GPT.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use caisson_layout::PartitionRole;

use super::blockdev;

const MIB: u64 = 1 << 20;

/// What growing did, for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    pub old_bytes: u64,
    pub new_bytes: u64,
    pub table: bool,
    pub kernel: bool,
    pub filesystem: bool,
}

impl Grown {
    /// `data: grew DATA from 256 to 3838 MiB (GPT entry, kernel, ext4)`
    pub fn line(&self) -> String {
        let mut what = Vec::new();
        if self.table {
            what.push("GPT entry and backup header");
        }
        if self.kernel {
            what.push("kernel partition");
        }
        if self.filesystem {
            what.push("ext4 online");
        }
        format!(
            "data: grew DATA from {} to {} MiB ({})",
            self.old_bytes / MIB,
            self.new_bytes / MIB,
            what.join(", ")
        )
    }
}

/// ext4's size from its superblock: (blocks, block size).
pub fn ext4_size(sb: &[u8]) -> Option<(u64, u64)> {
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(sb.get(o..o + 4)?.try_into().ok()?)) };
    if sb.get(0x38..0x3a) != Some(&[0x53, 0xEF][..]) {
        return None;
    }
    let lo = u64::from(u32_at(0x4)?);
    let log = u32_at(0x18)?;
    let incompat = u32_at(0x60)?;
    // INCOMPAT_64BIT: the block count's high half is at 0x150.
    let hi = if incompat & 0x80 != 0 {
        u64::from(u32_at(0x150)?)
    } else {
        0
    };
    // ext4 blocks are 1 to 64 KiB.
    if log > 6 {
        return None;
    }
    let block = 1024u64 << log;
    Some((hi << 32 | lo, block))
}

fn read_superblock(device: &Path) -> Result<(u64, u64), String> {
    let mut f = File::open(device).map_err(|e| format!("{}: {e}", device.display()))?;
    let mut sb = vec![0u8; 1024];
    f.seek(SeekFrom::Start(1024))
        .and_then(|_| f.read_exact(&mut sb))
        .map_err(|e| format!("{}: reading the ext4 superblock: {e}", device.display()))?;
    ext4_size(&sb).ok_or_else(|| format!("{}: no ext4 superblock", device.display()))
}

/// Grow DATA (`device`, e.g. `/dev/vda5`, mounted at `mount_point`) to its
/// disk's end. `None`: it already fills the disk.
pub fn grow_data(device: &Path, mount_point: &Path) -> Result<Option<Grown>, String> {
    let Some(name) = device.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(None);
    };
    let devices = caisson_devices::list_block_devices().map_err(|e| e.to_string())?;
    let Some(info) = devices
        .iter()
        .find(|d| d.name == name)
        .and_then(|d| d.partition.clone())
    else {
        return Ok(None);
    };
    let disk_path = Path::new("/dev").join(&info.parent);
    let shown = disk_path.display().to_string();
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_path)
        .map_err(|e| format!("{shown}: {e}"))?;
    let block =
        blockdev::logical_block_size(&disk).map_err(|e| format!("BLKSSZGET {shown}: {e}"))?;
    let label = PartitionRole::Data.label();
    let grown = caisson_disk::grow_last_partition(&mut disk, &shown, block, label)
        .map_err(|e| e.to_string())?;
    if grown.is_some() {
        disk.sync_all().map_err(|e| format!("fsync {shown}: {e}"))?;
    }
    // Where the table says DATA is now (also when a past boot grew it).
    let entry = caisson_devices::read_gpt(&disk_path)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|e| e.label == label)
        .ok_or_else(|| format!("{shown}: no {label} entry in the GPT"))?;
    if entry.number != info.number {
        return Err(format!(
            "{shown}: the GPT's {label} is entry {}, but {} is partition {}",
            entry.number,
            device.display(),
            info.number
        ));
    }
    let start = entry.first_lba * block;
    let table_bytes = (entry.last_lba + 1)
        .saturating_sub(entry.first_lba)
        .saturating_mul(block);
    let kernel_bytes = devices
        .iter()
        .find(|d| d.name == name)
        .map_or(0, |d| d.size_bytes);
    let mut kernel = false;
    if kernel_bytes < table_bytes {
        blockdev::resize_partition(&disk, info.number, start, table_bytes).map_err(|e| {
            format!(
                "BLKPG_RESIZE_PARTITION {shown} partition {}: {e}",
                info.number
            )
        })?;
        kernel = true;
    }
    let (fs_blocks, fs_block) = read_superblock(device)?;
    let want = table_bytes / fs_block;
    let mut filesystem = false;
    if fs_blocks < want {
        let dir = File::open(mount_point).map_err(|e| format!("{}: {e}", mount_point.display()))?;
        blockdev::ext4_resize(&dir, want).map_err(|e| {
            format!(
                "EXT4_IOC_RESIZE_FS {} to {want} blocks of {fs_block} bytes: {e}",
                mount_point.display()
            )
        })?;
        filesystem = true;
    }
    if grown.is_none() && !kernel && !filesystem {
        return Ok(None);
    }
    let old_bytes = match &grown {
        Some(g) => g.old_size(),
        None => fs_blocks * fs_block,
    };
    Ok(Some(Grown {
        old_bytes,
        new_bytes: table_bytes,
        table: grown.is_some(),
        kernel,
        filesystem,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_size_reads_the_block_count_of_64bit_and_small_file_systems() {
        let mut sb = vec![0u8; 1024];
        sb[0x38] = 0x53;
        sb[0x39] = 0xEF;
        sb[0x4..0x8].copy_from_slice(&65536u32.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(ext4_size(&sb), Some((65536, 4096)));
        sb[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(ext4_size(&sb), Some(((1 << 32) + 65536, 4096)));
        sb[0x18..0x1c].copy_from_slice(&60u32.to_le_bytes());
        assert_eq!(ext4_size(&sb), None, "a nonsense block size");
        sb[0x38] = 0;
        assert_eq!(ext4_size(&sb), None);
        assert_eq!(ext4_size(&[]), None);
    }

    #[test]
    fn the_console_line_says_from_and_to_in_mib() {
        let g = Grown {
            old_bytes: 256 * MIB,
            new_bytes: 3838 * MIB,
            table: true,
            kernel: true,
            filesystem: true,
        };
        assert_eq!(
            g.line(),
            "data: grew DATA from 256 to 3838 MiB (GPT entry and backup header, kernel partition, ext4 online)"
        );
    }
}
