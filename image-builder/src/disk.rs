//! The raw disk: a sparse file of `DiskPlan::size` bytes with a protective
//! MBR, primary and backup GPT written by the `gpt` crate from the plan
//! (GUIDs included), and each partition's contents copied into its range.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use caisson_layout::partitions::SECTOR_SIZE;
use caisson_layout::{DiskPlan, PartitionPlan, PartitionRole};
use fscommon::StreamSlice;
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition::Partition;
use gpt::partition_types::{OperatingSystem, Type};
use gpt::GptConfig;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("disk image {file}: {source}")]
    Io { file: PathBuf, source: io::Error },
    #[error("disk image {file}: writing the GPT failed: {message}")]
    Gpt { file: PathBuf, message: String },
    #[error("{what} is {size} bytes but partition {label} holds only {capacity} bytes")]
    TooBig {
        what: String,
        label: &'static str,
        size: u64,
        capacity: u64,
    },
}

/// The GPT entries of `plan`, keyed by 1-based entry number, exactly as
/// they will be written.
pub fn gpt_entries(plan: &DiskPlan) -> BTreeMap<u32, Partition> {
    plan.partitions
        .iter()
        .map(|p| {
            let entry = Partition {
                part_type_guid: Type {
                    guid: p.type_guid,
                    os: OperatingSystem::None,
                },
                part_guid: p.part_guid,
                first_lba: p.first_lba(),
                last_lba: p.last_lba(),
                flags: p.attributes,
                name: p.label.to_string(),
            };
            (p.role.number(), entry)
        })
        .collect()
}

/// An image being written. The file is sized up front and stays sparse:
/// only non-zero data is ever written.
pub struct RawDisk<'f> {
    file: &'f mut File,
    path: PathBuf,
    plan: DiskPlan,
}

impl<'f> RawDisk<'f> {
    pub fn create(
        file: &'f mut File,
        path: &Path,
        plan: DiskPlan,
    ) -> Result<RawDisk<'f>, DiskError> {
        file.set_len(plan.size).map_err(|source| DiskError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        Ok(RawDisk {
            file,
            path: path.to_path_buf(),
            plan,
        })
    }

    fn io(&self) -> impl FnOnce(io::Error) -> DiskError + '_ {
        |source| DiskError::Io {
            file: self.path.clone(),
            source,
        }
    }

    fn part(&self, role: PartitionRole) -> Result<PartitionPlan, DiskError> {
        self.plan
            .partition(role)
            .cloned()
            .ok_or_else(|| DiskError::Gpt {
                file: self.path.clone(),
                message: format!("plan has no {} partition", role.label()),
            })
    }

    pub fn write_gpt(&mut self) -> Result<(), DiskError> {
        let sectors = self.plan.size / SECTOR_SIZE;
        let mbr = ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
        let gpt_err = |e: &dyn std::fmt::Display| DiskError::Gpt {
            file: self.path.clone(),
            message: e.to_string(),
        };
        mbr.overwrite_lba0(&mut *self.file)
            .map_err(|e| gpt_err(&e))?;
        let mut disk = GptConfig::new()
            .writable(true)
            .logical_block_size(LogicalBlockSize::Lb512)
            .create_from_device(&mut *self.file, Some(self.plan.disk_guid))
            .map_err(|e| gpt_err(&e))?;
        disk.update_partitions(gpt_entries(&self.plan))
            .map_err(|e| gpt_err(&e))?;
        disk.write().map_err(|e| gpt_err(&e))?;
        Ok(())
    }

    /// The partition's bytes as a stream of their own (for fatfs).
    pub fn volume(&mut self, role: PartitionRole) -> Result<StreamSlice<&mut File>, DiskError> {
        let p = self.part(role)?;
        let path = self.path.clone();
        StreamSlice::new(&mut *self.file, p.offset, p.offset + p.size)
            .map_err(|source| DiskError::Io { file: path, source })
    }

    /// Copy `src` into the partition, skipping all-zero blocks so the image
    /// stays sparse. Refuses a source larger than the partition.
    pub fn fill_from(
        &mut self,
        role: PartitionRole,
        what: &str,
        src: &Path,
    ) -> Result<u64, DiskError> {
        let p = self.part(role)?;
        let open_err = |source| DiskError::Io {
            file: src.to_path_buf(),
            source,
        };
        let mut input = File::open(src).map_err(open_err)?;
        let size = input.metadata().map_err(open_err)?.len();
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
        loop {
            let n = read_full(&mut input, &mut buf).map_err(open_err)?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                self.file
                    .seek(SeekFrom::Start(p.offset + pos))
                    .map_err(self.io())?;
                self.file.write_all(&buf[..n]).map_err(self.io())?;
            }
            pos += n as u64;
        }
        Ok(size)
    }

    pub fn sync(&mut self) -> Result<(), DiskError> {
        self.file.flush().map_err(self.io())?;
        self.file.sync_all().map_err(self.io())
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
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
        let entries = gpt_entries(&plan);
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
        let data = dir.path().join("data");
        let mut blob = vec![0u8; 3 << 20];
        blob[(2 << 20) + 7] = 0xAA;
        std::fs::write(&data, &blob).unwrap();
        {
            let mut disk = RawDisk::create(&mut file, &path, plan.clone()).unwrap();
            disk.write_gpt().unwrap();
            assert_eq!(
                disk.fill_from(PartitionRole::RootA, "root", &data).unwrap(),
                3 << 20
            );
            let big = dir.path().join("big");
            std::fs::write(&big, vec![1u8; 17 << 20]).unwrap();
            let e = disk
                .fill_from(PartitionRole::State, "STATE image", &big)
                .unwrap_err();
            assert!(e.to_string().contains("STATE"), "{e}");
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
}
