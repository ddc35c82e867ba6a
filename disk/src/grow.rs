//! Growing the disk's last partition (DATA) to the disk's end: the backup
//! GPT moves to the real last block and the entry's last LBA follows it,
//! aligned down to 1 MiB. A raw image `dd`'d to a bigger stick and a fresh
//! install both land here on their first boot. Idempotent: a partition that
//! already ends where it would grow to is left alone.
//!
//! Only the partition table is written here; telling the kernel and growing
//! the file system are the caller's (the agent's BLKPG and ext4 ioctls).

use std::io::{self, Read, Seek, SeekFrom, Write};

use gpt::GptConfig;
use thiserror::Error;

use crate::writer::logical_block_size;

const MIB: u64 = 1 << 20;
/// GPT entry size; the gpt crate supports no other.
const ENTRY_SIZE: u32 = 128;

#[derive(Debug, Error)]
pub enum GrowError {
    #[error("{target}: {source}")]
    Io { target: String, source: io::Error },
    #[error("{target}: logical block size {size} is not supported (512 or 4096)")]
    BlockSize { target: String, size: u64 },
    #[error("{target}: the GPT header is not usable here: {why}")]
    Header { target: String, why: String },
    #[error("{target}: reading or writing the GPT failed: {message}")]
    Gpt { target: String, message: String },
    #[error("{target}: no partition named {label} in the GPT")]
    NoSuchPartition { target: String, label: String },
    #[error("{target}: {label} (entry {number}) is not the last partition: {other} follows it")]
    NotLast {
        target: String,
        label: String,
        number: u32,
        other: String,
    },
}

/// What [`grow_last_partition`] changed, in logical blocks of `block` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Growth {
    pub label: String,
    /// 1-based GPT entry number (the kernel's partition number).
    pub number: u32,
    pub block: u64,
    pub first_lba: u64,
    pub old_last_lba: u64,
    pub new_last_lba: u64,
    /// Where the backup header was, and is now.
    pub old_backup_lba: u64,
    pub new_backup_lba: u64,
}

impl Growth {
    pub fn start(&self) -> u64 {
        self.first_lba * self.block
    }
    pub fn old_size(&self) -> u64 {
        (self.old_last_lba + 1).saturating_sub(self.first_lba) * self.block
    }
    pub fn new_size(&self) -> u64 {
        (self.new_last_lba + 1).saturating_sub(self.first_lba) * self.block
    }
}

/// The last LBA a partition may end on in a disk of `disk_size` bytes:
/// before the backup partition array and header, aligned down to 1 MiB.
pub fn last_lba_at_end(disk_size: u64, block: u64) -> Option<u64> {
    let blocks = disk_size / block;
    let array_blocks = (u64::from(ENTRY_SIZE) * 128).div_ceil(block);
    let last_usable = blocks.checked_sub(2 + array_blocks)?;
    let end = (last_usable + 1) * block / MIB * MIB;
    (end / block).checked_sub(1)
}

/// Grow the partition named `label`, which must be the last one on the
/// disk, to the disk's end; moves the backup GPT there first. `None`: it
/// already reaches the end (nothing written). The caller fsyncs.
pub fn grow_last_partition<D: Read + Write + Seek + std::fmt::Debug>(
    dev: &mut D,
    target: &str,
    block: u64,
    label: &str,
) -> Result<Option<Growth>, GrowError> {
    let io_err = |source| GrowError::Io {
        target: target.to_string(),
        source,
    };
    let gpt_err = |e: &dyn std::fmt::Display| GrowError::Gpt {
        target: target.to_string(),
        message: e.to_string(),
    };
    let lb = logical_block_size(block).ok_or_else(|| GrowError::BlockSize {
        target: target.to_string(),
        size: block,
    })?;
    check_primary_header(dev, target, block)?;
    let disk_size = dev.seek(SeekFrom::End(0)).map_err(io_err)?;
    let mut gpt = GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .open_from_device(&mut *dev)
        .map_err(|e| gpt_err(&e))?;
    let mut entries = gpt.partitions().clone();
    let (number, entry) = entries
        .iter()
        .find(|(_, p)| p.is_used() && p.name == label)
        .map(|(n, p)| (*n, p.clone()))
        .ok_or_else(|| GrowError::NoSuchPartition {
            target: target.to_string(),
            label: label.to_string(),
        })?;
    if let Some((_, other)) = entries
        .iter()
        .find(|(n, p)| **n != number && p.is_used() && p.first_lba > entry.first_lba)
    {
        return Err(GrowError::NotLast {
            target: target.to_string(),
            label: label.to_string(),
            number,
            other: other.name.clone(),
        });
    }
    let old_backup_lba = gpt.header().backup_lba;
    let new_backup_lba = disk_size / block - 1;
    let Some(new_last) = last_lba_at_end(disk_size, block) else {
        return Ok(None);
    };
    if new_last <= entry.last_lba {
        return Ok(None);
    }
    let growth = Growth {
        label: label.to_string(),
        number,
        block,
        first_lba: entry.first_lba,
        old_last_lba: entry.last_lba,
        new_last_lba: new_last,
        old_backup_lba,
        new_backup_lba,
    };
    if let Some(e) = entries.get_mut(&number) {
        e.last_lba = new_last;
    }
    // update_partitions recomputes both headers for the device's size: the
    // backup header and array move to the last blocks.
    gpt.update_partitions(entries).map_err(|e| gpt_err(&e))?;
    gpt.write_inplace().map_err(|e| gpt_err(&e))?;
    drop(gpt);
    if old_backup_lba != new_backup_lba {
        // The old backup header now lies inside the grown partition, past its
        // file system's end: zero it so no tool takes it for a GPT.
        zero_block(dev, old_backup_lba, block).map_err(io_err)?;
    }
    dev.flush().map_err(io_err)?;
    Ok(Some(growth))
}

fn zero_block<D: Write + Seek>(dev: &mut D, lba: u64, block: u64) -> io::Result<()> {
    dev.seek(SeekFrom::Start(lba * block))?;
    dev.write_all(&vec![0u8; block as usize])
}

/// The gpt crate asserts (panics) on an entry size other than 128: check
/// the primary header ourselves first.
fn check_primary_header<D: Read + Seek>(
    dev: &mut D,
    target: &str,
    block: u64,
) -> Result<(), GrowError> {
    let mut header = [0u8; 92];
    dev.seek(SeekFrom::Start(block))
        .and_then(|_| dev.read_exact(&mut header))
        .map_err(|source| GrowError::Io {
            target: target.to_string(),
            source,
        })?;
    let bad = |why: String| GrowError::Header {
        target: target.to_string(),
        why,
    };
    if &header[..8] != b"EFI PART" {
        return Err(bad("no \"EFI PART\" signature in the primary header".into()));
    }
    let entry_size = u32::from_le_bytes([header[84], header[85], header[86], header[87]]);
    if entry_size != ENTRY_SIZE {
        return Err(bad(format!(
            "partition entries are {entry_size} bytes, not 128"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use caisson_layout::{DiskPlan, PartitionRole, SizesMiB};

    use super::*;
    use crate::writer::DiskWriter;

    fn image(extra: u64) -> (DiskPlan, Cursor<Vec<u8>>) {
        let plan = DiskPlan::new(
            "grow-1",
            SizesMiB {
                esp: 64,
                root: 16,
                state: 16,
                data: 16,
            },
        )
        .unwrap();
        let mut dev = Cursor::new(vec![0u8; plan.size as usize]);
        DiskWriter::new(&mut dev, "img", plan.clone(), 512)
            .unwrap()
            .write_gpt()
            .unwrap();
        // dd onto a bigger disk: the bytes after the image are whatever.
        dev.get_mut().resize((plan.size + extra) as usize, 0);
        (plan, dev)
    }

    #[test]
    fn last_lba_leaves_the_backup_table_and_aligns_down_to_a_mib() {
        // 64 MiB disk, 512-byte blocks: 33 blocks at the end are the backup.
        assert_eq!(last_lba_at_end(64 * MIB, 512), Some((63 * MIB) / 512 - 1));
        assert_eq!(
            last_lba_at_end(64 * MIB + 40 * 512, 512),
            Some(64 * MIB / 512 - 1)
        );
        assert_eq!(last_lba_at_end(64 * MIB, 4096), Some(63 * MIB / 4096 - 1));
        assert_eq!(last_lba_at_end(1024, 512), None);
    }

    #[test]
    fn data_grows_to_the_end_the_backup_moves_and_a_second_run_does_nothing() {
        let (plan, mut dev) = image(100 * MIB);
        let data = plan.partition(PartitionRole::Data).unwrap();
        let old_end = plan.size;
        let g = grow_last_partition(&mut dev, "img", 512, "DATA")
            .unwrap()
            .expect("grows");
        assert_eq!(g.number, 5);
        assert_eq!(g.old_size(), data.size);
        assert_eq!(g.start(), data.offset);
        assert_eq!(g.start() + g.new_size(), old_end + 100 * MIB - MIB);
        assert_eq!(g.old_backup_lba, old_end / 512 - 1);
        let size = dev.get_ref().len() as u64;
        assert_eq!(g.new_backup_lba, size / 512 - 1);
        // The tables read back with both headers valid; the old backup is gone.
        let gpt = GptConfig::new()
            .only_valid_headers(true)
            .open_from_device(Cursor::new(dev.get_ref().clone()))
            .unwrap();
        assert_eq!(gpt.partitions()[&5].last_lba, g.new_last_lba);
        assert_eq!(gpt.header().backup_lba, size / 512 - 1);
        assert_eq!(gpt.partitions()[&2].part_guid, plan.partitions[1].part_guid);
        let old = (old_end - 512) as usize;
        assert!(dev.get_ref()[old..old + 512].iter().all(|&b| b == 0));
        assert_eq!(
            grow_last_partition(&mut dev, "img", 512, "DATA").unwrap(),
            None
        );
    }

    #[test]
    fn an_image_on_a_disk_of_its_own_size_does_not_grow() {
        let (_, mut dev) = image(0);
        let before = dev.get_ref().clone();
        assert_eq!(
            grow_last_partition(&mut dev, "img", 512, "DATA").unwrap(),
            None
        );
        assert!(dev.get_ref() == &before, "nothing written");
    }

    #[test]
    fn only_the_last_partition_grows_and_errors_name_it() {
        let (_, mut dev) = image(10 * MIB);
        let e = grow_last_partition(&mut dev, "img", 512, "STATE").unwrap_err();
        assert!(
            e.to_string()
                .contains("STATE (entry 4) is not the last partition: DATA follows it"),
            "{e}"
        );
        let e = grow_last_partition(&mut dev, "img", 512, "NOPE").unwrap_err();
        assert!(matches!(e, GrowError::NoSuchPartition { .. }), "{e}");
        let mut blank = Cursor::new(vec![0u8; 4 << 20]);
        let e = grow_last_partition(&mut blank, "blank", 512, "DATA").unwrap_err();
        assert!(e.to_string().contains("EFI PART"), "{e}");
    }
}
