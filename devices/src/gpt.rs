//! A read-only GPT reader with CRC checks, written here rather than using
//! the `gpt` crate: we need only "list the entries", must handle 4096-byte
//! logical sectors, must fall back to the backup header like the kernel,
//! and this runs in `init`, where ~150 lines with no dependencies beat a
//! crate that also writes, logs and assumes its own sector size.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::crc32::crc32;
use crate::DevicesError;

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Sanity bound on the entry array: the spec's minimum is 16 KiB; anything
/// beyond 1 MiB is corruption, not a disk.
const MAX_ENTRY_ARRAY: u64 = 1024 * 1024;

/// One used entry of a GPT partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    /// 1-based entry index; the kernel names the partition device by it.
    pub number: u32,
    /// Unique partition GUID (what `PARTUUID=` names).
    pub guid: Uuid,
    pub type_guid: Uuid,
    /// Partition name (what `PARTLABEL=` names).
    pub label: String,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// The used entries of the disk's GPT, by entry number. The primary header
/// is tried first, then the backup at the disk's last sector.
pub fn read_gpt(disk_dev: &Path) -> Result<Vec<GptPartition>, DevicesError> {
    let mut file = File::open(disk_dev).map_err(|e| DevicesError::io(disk_dev, e))?;
    let mut disk = Disk {
        file: &mut file,
        path: disk_dev.to_path_buf(),
    };
    for block_size in [512u64, 4096] {
        let Some(primary) = disk.read(block_size, block_size)? else {
            continue;
        };
        if !primary.starts_with(SIGNATURE) {
            continue;
        }
        let primary_result = parse_header(&primary, 1).and_then(|h| disk.entries(block_size, h));
        return match primary_result {
            Ok(parts) => Ok(parts),
            Err(reason) => disk
                .read_backup(block_size)
                .unwrap_or(Err(DevicesError::CorruptGpt {
                    path: disk_dev.to_path_buf(),
                    reason: format!("primary header: {reason}; no valid backup header"),
                })),
        };
    }
    Err(DevicesError::NoGpt {
        path: disk_dev.to_path_buf(),
    })
}

struct Disk<'a> {
    file: &'a mut File,
    path: PathBuf,
}

impl Disk<'_> {
    /// `len` bytes at `offset`, or None if the disk is shorter.
    fn read(&mut self, offset: u64, len: u64) -> Result<Option<Vec<u8>>, DevicesError> {
        let len = usize::try_from(len).map_err(|_| self.corrupt(format!("read of {len} bytes")))?;
        let mut buf = vec![0u8; len];
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| DevicesError::io(&self.path, e))?;
        match self.file.read_exact(&mut buf) {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(DevicesError::io(&self.path, e)),
        }
    }

    fn corrupt(&self, reason: String) -> DevicesError {
        DevicesError::CorruptGpt {
            path: self.path.clone(),
            reason,
        }
    }

    /// Entries read through the header; Err carries the reason as text so
    /// the caller can still try the backup.
    fn entries(&mut self, block_size: u64, h: Header) -> Result<Vec<GptPartition>, String> {
        let len = u64::from(h.entry_count) * u64::from(h.entry_size);
        let offset = h
            .entries_lba
            .checked_mul(block_size)
            .ok_or("entry array LBA overflows")?;
        let bytes = match self.read(offset, len) {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(format!(
                    "entry array at byte {offset} runs past the end of the disk"
                ))
            }
            Err(e) => return Err(e.to_string()),
        };
        if crc32(&bytes) != h.entries_crc {
            return Err("entry array CRC mismatch".into());
        }
        Ok(parse_entries(&bytes, h.entry_size))
    }

    /// None if there is no backup to try (disk size unknown or too small).
    fn read_backup(&mut self, block_size: u64) -> Option<Result<Vec<GptPartition>, DevicesError>> {
        let size = self.file.seek(SeekFrom::End(0)).ok()?;
        let last_lba = (size / block_size).checked_sub(1)?;
        let bytes = self.read(last_lba * block_size, block_size).ok()??;
        let header = parse_header(&bytes, last_lba).ok()?;
        Some(
            self.entries(block_size, header)
                .map_err(|reason| self.corrupt(format!("backup header: {reason}"))),
        )
    }
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)?.try_into().ok().map(u32::from_le_bytes)
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)?.try_into().ok().map(u64::from_le_bytes)
}

fn guid(b: &[u8], at: usize) -> Option<Uuid> {
    // GUIDs are stored with their first three fields little-endian.
    b.get(at..at + 16)?.try_into().ok().map(Uuid::from_bytes_le)
}

/// Validate a header sector read from `lba`: signature, size, CRC, its own
/// LBA, and a sane entry array.
fn parse_header(sector: &[u8], lba: u64) -> Result<Header, String> {
    let short = || "header sector too short".to_string();
    if !sector.starts_with(SIGNATURE) {
        return Err("no \"EFI PART\" signature".into());
    }
    let size = le_u32(sector, 12).ok_or_else(short)? as usize;
    let header = sector
        .get(..size)
        .filter(|_| size >= 92)
        .ok_or(format!("header size {size} is invalid"))?;
    let stored_crc = le_u32(header, 16).ok_or_else(short)?;
    let mut zeroed = header.to_vec();
    zeroed.get_mut(16..20).ok_or_else(short)?.fill(0);
    if crc32(&zeroed) != stored_crc {
        return Err("header CRC mismatch".into());
    }
    let my_lba = le_u64(header, 24).ok_or_else(short)?;
    if my_lba != lba {
        return Err(format!(
            "header says it is at LBA {my_lba}, read from LBA {lba}"
        ));
    }
    let h = Header {
        entries_lba: le_u64(header, 72).ok_or_else(short)?,
        entry_count: le_u32(header, 80).ok_or_else(short)?,
        entry_size: le_u32(header, 84).ok_or_else(short)?,
        entries_crc: le_u32(header, 88).ok_or_else(short)?,
    };
    if h.entry_size < 128 || h.entry_size & 7 != 0 {
        return Err(format!("entry size {} is invalid", h.entry_size));
    }
    if u64::from(h.entry_count) * u64::from(h.entry_size) > MAX_ENTRY_ARRAY {
        return Err(format!(
            "{} entries of {} bytes is implausibly large",
            h.entry_count, h.entry_size
        ));
    }
    Ok(h)
}

/// Used entries (non-nil type GUID), numbered from 1 by their slot.
fn parse_entries(bytes: &[u8], entry_size: u32) -> Vec<GptPartition> {
    let mut out = Vec::new();
    for (i, e) in bytes.chunks_exact(entry_size as usize).enumerate() {
        let (Some(type_guid), Some(guid), Some(first_lba), Some(last_lba)) =
            (guid(e, 0), guid(e, 16), le_u64(e, 32), le_u64(e, 40))
        else {
            continue;
        };
        if type_guid.is_nil() {
            continue;
        }
        let name: Vec<u16> = e
            .get(56..128)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|c| <[u8; 2]>::try_from(c).map(u16::from_le_bytes).unwrap_or(0))
            .take_while(|&c| c != 0)
            .collect();
        let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        out.push(GptPartition {
            number,
            guid,
            type_guid,
            label: String::from_utf16_lossy(&name),
            first_lba,
            last_lba,
        });
    }
    out
}

#[cfg(test)]
#[path = "gpt_tests.rs"]
mod tests;
