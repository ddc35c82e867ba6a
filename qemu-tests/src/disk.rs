//! Finding partitions in a raw image, and copying one out to a file.

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

/// The used entries of the GPT of `image`, read with the same CRC-checked
/// reader `init` uses (caisson-devices); `sgdisk -v` is the independent check.
pub fn partitions(image: &Path) -> Result<Vec<Partition>> {
    let entries = caisson_devices::read_gpt(image).map_err(|e| HarnessError::Disk {
        image: image.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(entries
        .into_iter()
        .map(|e| Partition {
            number: e.number,
            name: e.label,
            type_guid: e.type_guid.to_string(),
            unique_guid: e.guid.to_string(),
            first_lba: e.first_lba,
            last_lba: e.last_lba,
        })
        .collect())
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
