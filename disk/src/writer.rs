//! The layout writer: a protective MBR, primary and backup GPT written by
//! the `gpt` crate from a [`DiskPlan`] (GUIDs included), and each
//! partition's contents copied into its byte range. The target is any
//! fixed-size `Read + Write + Seek`: the builder's sparse image file, or the
//! installer's opened block device. The backup GPT goes at the target's
//! end, which may lie past the plan's last partition (a real disk).

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use caisson_layout::{DiskPlan, PartitionPlan, PartitionRole};
use fscommon::StreamSlice;
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition::Partition;
use gpt::partition_types::{OperatingSystem, Type};
use gpt::GptConfig;
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("disk {target}: {source}")]
    Io { target: String, source: io::Error },
    #[error("{what} {file}: {source}")]
    Source {
        what: String,
        file: String,
        source: io::Error,
    },
    #[error("disk {target}: writing the GPT failed: {message}")]
    Gpt { target: String, message: String },
    #[error("disk {target} is {size} bytes; the layout needs {needed} bytes")]
    TargetTooSmall {
        target: String,
        size: u64,
        needed: u64,
    },
    #[error("disk {target}: logical block size {size} is not supported (512 or 4096)")]
    BlockSize { target: String, size: u64 },
    #[error("{what} is {size} bytes but partition {label} holds only {capacity} bytes")]
    TooBig {
        what: String,
        label: &'static str,
        size: u64,
        capacity: u64,
    },
    #[error("{what}: the source ended after {got} of {expected} bytes")]
    ShortSource {
        what: String,
        got: u64,
        expected: u64,
    },
}

/// How [`DiskWriter::fill`] treats all-zero blocks of the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// The target range already reads as zeros (a fresh sparse file, a range
    /// the caller zeroed): zero blocks are skipped, so a file stays sparse.
    SkipZeros,
    /// Every byte is written.
    All,
}

/// A 512- or 4096-byte logical block, as the GPT counts them.
pub fn logical_block_size(bytes: u64) -> Option<LogicalBlockSize> {
    match bytes {
        512 => Some(LogicalBlockSize::Lb512),
        4096 => Some(LogicalBlockSize::Lb4096),
        _ => None,
    }
}

/// The GPT entries of `plan`, keyed by 1-based entry number, exactly as
/// they will be written, in blocks of `block` bytes (the plan's offsets are
/// 1 MiB-aligned, so any supported block size divides them).
pub fn gpt_entries(plan: &DiskPlan, block: u64) -> BTreeMap<u32, Partition> {
    plan.partitions
        .iter()
        .map(|p| {
            let entry = Partition {
                part_type_guid: Type {
                    guid: p.type_guid,
                    os: OperatingSystem::None,
                },
                part_guid: p.part_guid,
                first_lba: p.offset / block,
                last_lba: (p.offset + p.size) / block - 1,
                flags: p.attributes,
                name: p.label.to_string(),
            };
            (p.role.number(), entry)
        })
        .collect()
}

/// A disk being written. `target` names it in errors (a file path or a
/// device node).
pub struct DiskWriter<D> {
    dev: D,
    target: String,
    plan: DiskPlan,
    block: u64,
    size: u64,
}

impl<D: Read + Write + Seek + std::fmt::Debug> DiskWriter<D> {
    /// Start writing `plan` onto `dev`, whose size is fixed (its end is
    /// where the backup GPT goes) and at least `plan.size`; `block` is its
    /// logical block size (512 or 4096).
    pub fn new(
        mut dev: D,
        target: impl Into<String>,
        plan: DiskPlan,
        block: u64,
    ) -> Result<DiskWriter<D>, DiskError> {
        let target = target.into();
        if logical_block_size(block).is_none() {
            return Err(DiskError::BlockSize {
                target,
                size: block,
            });
        }
        let size = match dev.seek(SeekFrom::End(0)) {
            Ok(size) => size,
            Err(source) => return Err(DiskError::Io { target, source }),
        };
        if size < plan.size {
            return Err(DiskError::TargetTooSmall {
                target,
                size,
                needed: plan.size,
            });
        }
        Ok(DiskWriter {
            dev,
            target,
            plan,
            block,
            size,
        })
    }

    pub fn plan(&self) -> &DiskPlan {
        &self.plan
    }

    /// The target's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    pub fn into_inner(self) -> D {
        self.dev
    }

    fn io(&self) -> impl FnOnce(io::Error) -> DiskError + '_ {
        |source| DiskError::Io {
            target: self.target.clone(),
            source,
        }
    }

    pub fn partition(&self, role: PartitionRole) -> Result<PartitionPlan, DiskError> {
        self.plan
            .partition(role)
            .cloned()
            .ok_or_else(|| DiskError::Gpt {
                target: self.target.clone(),
                message: format!("plan has no {} partition", role.label()),
            })
    }

    /// Protective MBR, primary GPT after it, backup GPT at the target's end.
    pub fn write_gpt(&mut self) -> Result<(), DiskError> {
        let lb = logical_block_size(self.block).unwrap_or(LogicalBlockSize::Lb512);
        let blocks = self.size / self.block;
        let mbr = ProtectiveMBR::with_lb_size(u32::try_from(blocks - 1).unwrap_or(u32::MAX));
        let target = self.target.clone();
        let gpt_err = |e: &dyn std::fmt::Display| DiskError::Gpt {
            target: target.clone(),
            message: e.to_string(),
        };
        mbr.overwrite_lba0(&mut self.dev).map_err(|e| gpt_err(&e))?;
        let mut disk = GptConfig::new()
            .writable(true)
            .logical_block_size(lb)
            .create_from_device(&mut self.dev, Some(self.plan.disk_guid))
            .map_err(|e| gpt_err(&e))?;
        disk.update_partitions(gpt_entries(&self.plan, self.block))
            .map_err(|e| gpt_err(&e))?;
        disk.write().map_err(|e| gpt_err(&e))?;
        Ok(())
    }

    /// The partition's bytes as a stream of their own (for fatfs).
    pub fn volume(&mut self, role: PartitionRole) -> Result<StreamSlice<&mut D>, DiskError> {
        let p = self.partition(role)?;
        let target = self.target.clone();
        StreamSlice::new(&mut self.dev, p.offset, p.offset + p.size)
            .map_err(|source| DiskError::Io { target, source })
    }

    /// Copy `size` bytes of `src` to the start of the partition. Refuses a
    /// source larger than the partition, and one that ends early.
    pub fn fill(
        &mut self,
        role: PartitionRole,
        what: &str,
        src: &mut dyn Read,
        size: u64,
        mode: Fill,
    ) -> Result<u64, DiskError> {
        let p = self.partition(role)?;
        if size > p.size {
            return Err(DiskError::TooBig {
                what: what.to_string(),
                label: p.label,
                size,
                capacity: p.size,
            });
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        let mut input = src.take(size);
        loop {
            let n = read_full(&mut input, &mut buf).map_err(|source| DiskError::Source {
                what: what.to_string(),
                file: format!("at byte {pos}"),
                source,
            })?;
            let Some(chunk) = buf.get(..n) else { break };
            if n == 0 {
                break;
            }
            if mode == Fill::All || chunk.iter().any(|&b| b != 0) {
                self.dev
                    .seek(SeekFrom::Start(p.offset + pos))
                    .map_err(self.io())?;
                self.dev.write_all(chunk).map_err(self.io())?;
            }
            pos += n as u64;
        }
        if pos != size {
            return Err(DiskError::ShortSource {
                what: what.to_string(),
                got: pos,
                expected: size,
            });
        }
        Ok(size)
    }

    /// [`fill`](Self::fill) from a file, all of it.
    pub fn fill_from(
        &mut self,
        role: PartitionRole,
        what: &str,
        src: &Path,
        mode: Fill,
    ) -> Result<u64, DiskError> {
        let open_err = |source| DiskError::Source {
            what: what.to_string(),
            file: src.display().to_string(),
            source,
        };
        let mut input = std::fs::File::open(src).map_err(open_err)?;
        let size = input.metadata().map_err(open_err)?.len();
        self.fill(role, what, &mut input, size, mode)
    }

    /// sha256 of the first `len` bytes of the partition as the target reads
    /// them back now.
    pub fn read_back_sha256(
        &mut self,
        role: PartitionRole,
        len: u64,
    ) -> Result<[u8; 32], DiskError> {
        let p = self.partition(role)?;
        self.dev
            .seek(SeekFrom::Start(p.offset))
            .map_err(self.io())?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len.min(p.size);
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let Some(slot) = buf.get_mut(..want) else {
                break;
            };
            self.dev.read_exact(slot).map_err(self.io())?;
            hasher.update(&*slot);
            left -= want as u64;
        }
        Ok(hasher.finalize().into())
    }

    /// Flush what the writer buffered; the caller makes it durable (fsync
    /// of a file or device) with [`sync_file`] or its own means.
    pub fn flush(&mut self) -> Result<(), DiskError> {
        self.dev.flush().map_err(self.io())
    }
}

impl DiskWriter<&mut std::fs::File> {
    /// Flush and fsync the file or block device.
    pub fn sync(&mut self) -> Result<(), DiskError> {
        self.flush()?;
        let target = self.target.clone();
        self.dev
            .sync_all()
            .map_err(|source| DiskError::Io { target, source })
    }
}

impl DiskWriter<std::fs::File> {
    /// Flush and fsync the file or block device.
    pub fn sync(&mut self) -> Result<(), DiskError> {
        self.flush()?;
        let target = self.target.clone();
        self.dev
            .sync_all()
            .map_err(|source| DiskError::Io { target, source })
    }
}

pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use caisson_layout::SizesMiB;

    use super::*;

    fn small_plan() -> DiskPlan {
        DiskPlan::new(
            "t-1",
            SizesMiB {
                esp: 64,
                root: 16,
                state: 16,
                data: 16,
            },
        )
        .unwrap()
    }

    #[test]
    fn gpt_entries_follow_the_plan() {
        let plan = small_plan();
        let entries = gpt_entries(&plan, 512);
        assert_eq!(entries.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        let esp = &entries[&1];
        assert_eq!(
            (esp.name.as_str(), esp.first_lba, esp.last_lba),
            ("ESP", 2048, 2048 + 64 * 2048 - 1)
        );
        assert_eq!(esp.part_type_guid.guid, PartitionRole::Esp.type_guid());
        let root_b = &entries[&3];
        assert_eq!(
            root_b.part_guid,
            plan.partition(PartitionRole::RootB).unwrap().part_guid
        );
        assert_eq!(root_b.name, "ROOT-B");
        let esp4k = &gpt_entries(&plan, 4096)[&1];
        assert_eq!((esp4k.first_lba, esp4k.last_lba), (256, 256 + 64 * 256 - 1));
    }

    #[test]
    fn written_gpt_reads_back_with_plan_guids_and_stays_sparse() {
        let plan = small_plan();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        let mut file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(plan.size).unwrap();
        let data = dir.path().join("data");
        let mut blob = vec![0u8; 3 << 20];
        blob[(2 << 20) + 7] = 0xAA;
        std::fs::write(&data, &blob).unwrap();
        {
            let mut disk =
                DiskWriter::new(&mut file, path.display().to_string(), plan.clone(), 512).unwrap();
            disk.write_gpt().unwrap();
            assert_eq!(
                disk.fill_from(PartitionRole::RootA, "root", &data, Fill::SkipZeros)
                    .unwrap(),
                3 << 20
            );
            let big = dir.path().join("big");
            std::fs::write(&big, vec![1u8; 17 << 20]).unwrap();
            let e = disk
                .fill_from(PartitionRole::State, "STATE image", &big, Fill::SkipZeros)
                .unwrap_err();
            assert!(e.to_string().contains("STATE"), "{e}");
            let short = disk
                .fill(
                    PartitionRole::State,
                    "short",
                    &mut &[1u8; 10][..],
                    20,
                    Fill::All,
                )
                .unwrap_err();
            assert!(
                matches!(short, DiskError::ShortSource { got: 10, .. }),
                "{short}"
            );
            let want: [u8; 32] = Sha256::digest(&blob).into();
            assert_eq!(
                disk.read_back_sha256(PartitionRole::RootA, 3 << 20)
                    .unwrap(),
                want
            );
            disk.sync().unwrap();
        }
        let disk = GptConfig::new().open(&path).unwrap();
        assert_eq!(*disk.guid(), plan.disk_guid);
        for p in &plan.partitions {
            let got = &disk.partitions()[&p.role.number()];
            assert_eq!(
                (got.part_guid, got.first_lba, got.name.as_str()),
                (p.part_guid, p.first_lba(), p.label)
            );
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, plan.size);
        assert_eq!(
            bytes[plan.partition(PartitionRole::RootA).unwrap().offset as usize + (2 << 20) + 7],
            0xAA
        );
        assert_eq!(&bytes[510..512], &[0x55, 0xAA], "protective MBR");
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < 4 << 20, "sparse: {allocated} bytes allocated");
    }

    #[test]
    fn a_bigger_target_gets_its_backup_gpt_at_its_own_end() {
        let plan = small_plan();
        let size = plan.size + (64 << 20);
        let mut dev = std::io::Cursor::new(vec![0u8; size as usize]);
        let mut disk = DiskWriter::new(&mut dev, "mem", plan.clone(), 512).unwrap();
        disk.write_gpt().unwrap();
        let bytes = dev.into_inner();
        let backup = &bytes[size as usize - 512..];
        assert_eq!(&backup[..8], b"EFI PART");
        let gpt = GptConfig::new()
            .open_from_device(std::io::Cursor::new(bytes))
            .unwrap();
        assert_eq!(gpt.header().backup_lba, size / 512 - 1);
        assert_eq!(gpt.partitions()[&5].last_lba, plan.partitions[4].last_lba());
    }

    #[test]
    fn a_too_small_target_or_odd_block_size_is_refused() {
        let plan = small_plan();
        let e = DiskWriter::new(
            std::io::Cursor::new(vec![0u8; 1 << 20]),
            "tiny",
            plan.clone(),
            512,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("tiny is 1048576 bytes"), "{e}");
        let e = DiskWriter::new(std::io::Cursor::new(Vec::new()), "odd", plan, 1024)
            .err()
            .unwrap();
        assert!(matches!(e, DiskError::BlockSize { size: 1024, .. }), "{e}");
    }
}
