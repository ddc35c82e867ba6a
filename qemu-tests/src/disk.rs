//! Just enough of the GPT to find partitions in a raw image, independently
//! of the builder's own code, plus copying a partition out to a file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{HarnessError, Result};

const SECTOR: u64 = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based entry number.
    pub number: u32,
    pub name: String,
    /// Lower-case textual GUIDs.
    pub type_guid: String,
    pub unique_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

/// The used entries of the primary GPT of `image`.
pub fn partitions(image: &Path) -> Result<Vec<Partition>> {
    let err = |message: String| HarnessError::Disk {
        image: image.to_path_buf(),
        message,
    };
    let mut f = File::open(image).map_err(HarnessError::io("cannot open", image))?;
    let mut header = [0u8; 92];
    f.seek(SeekFrom::Start(SECTOR))
        .and_then(|_| f.read_exact(&mut header))
        .map_err(HarnessError::io("cannot read GPT header of", image))?;
    if &header[0..8] != b"EFI PART" {
        return Err(err("no GPT header at LBA 1".into()));
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80) as usize;
    let entry_size = u32_at(&header, 84) as usize;
    if entry_size < 128 || count > 1024 {
        return Err(err(format!(
            "implausible GPT: {count} entries of {entry_size} bytes"
        )));
    }
    let mut table = vec![0u8; count * entry_size];
    f.seek(SeekFrom::Start(entries_lba * SECTOR))
        .and_then(|_| f.read_exact(&mut table))
        .map_err(HarnessError::io("cannot read GPT entries of", image))?;
    let mut found = Vec::new();
    for (i, e) in table.chunks(entry_size).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        found.push(Partition {
            number: i as u32 + 1,
            name: String::from_utf16_lossy(&name),
            type_guid: guid_text(&e[0..16]),
            unique_guid: guid_text(&e[16..32]),
            first_lba: u64_at(e, 32),
            last_lba: u64_at(e, 40),
        });
    }
    Ok(found)
}

/// The partition named `label` (e.g. "ESP", "ROOT-A").
pub fn partition(image: &Path, label: &str) -> Result<Partition> {
    let all = partitions(image)?;
    let names: Vec<String> = all.iter().map(|p| p.name.clone()).collect();
    all.into_iter()
        .find(|p| p.name == label)
        .ok_or_else(|| HarnessError::Disk {
            image: image.to_path_buf(),
            message: format!("no partition named {label:?} (found {names:?})"),
        })
}

/// Copy a partition's bytes to `dest`, leaving runs of zeros as holes.
pub fn extract(image: &Path, part: &Partition, dest: &Path) -> Result<PathBuf> {
    let mut src = File::open(image).map_err(HarnessError::io("cannot open", image))?;
    let mut out = File::create(dest).map_err(HarnessError::io("cannot create", dest))?;
    src.seek(SeekFrom::Start(part.offset()))
        .map_err(HarnessError::io("cannot seek in", image))?;
    let mut left = part.size();
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n])
            .map_err(HarnessError::io("cannot read", image))?;
        if buf[..n].iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(n as i64))
                .map_err(HarnessError::io("cannot seek in", dest))?;
        } else {
            out.write_all(&buf[..n])
                .map_err(HarnessError::io("cannot write", dest))?;
        }
        left -= n as u64;
    }
    out.set_len(part.size())
        .map_err(HarnessError::io("cannot size", dest))?;
    Ok(dest.to_path_buf())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// GPT stores the first three GUID fields little-endian.
fn guid_text(b: &[u8]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_mixed_endian() {
        // The ESP type GUID as it is stored on disk.
        let raw = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(guid_text(&raw), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }
}
