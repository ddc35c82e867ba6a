//! The EFI system partition: planned as a sorted list of files in memory,
//! then written as FAT32 by `fatfs` straight into the partition's byte range,
//! with a volume id derived from the image identity and every timestamp set
//! to the build's epoch. [`EspPlan::verify`] reads a written ESP back and
//! compares every file with the plan (the installer's check).

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use caisson_layout::{BootEntry, CaissonParams, RootSpec, RootVerity, Slot};
use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};
use sha2::{Digest, Sha256};
use thiserror::Error;
use uuid::Uuid;

pub const BOOTLOADER_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
pub const LOADER_CONF_PATH: &str = "loader/loader.conf";
pub const VOLUME_LABEL: [u8; 11] = *b"ESP        ";
/// Title on systemd-boot's menu; the entry adds version and slot.
pub use caisson_layout::boot_entry::ENTRY_TITLE;

/// No `default` line: systemd-boot picks the highest version, which is what
/// makes an upgrade's new entry boot first (see DESIGN.md, boot counting).
pub const LOADER_CONF: &str =
    "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nrandom-seed-mode off\n";

#[derive(Debug, Error)]
pub enum EspError {
    #[error("ESP: cannot read {file}: {source}")]
    Read { file: PathBuf, source: io::Error },
    #[error("ESP: {need} bytes of files do not fit in the {have}-byte partition (with FAT overhead); raise disk.esp_mib")]
    TooBig { need: u64, have: u64 },
    #[error("ESP: cannot format the FAT32 volume ({size} bytes): {source}")]
    Format { size: u64, source: io::Error },
    #[error("ESP: cannot write {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("ESP: reading back {path}: {source}")]
    ReadBack { path: String, source: io::Error },
    #[error("ESP: {path} reads back as sha256 {got}, but {want} was written")]
    Mismatch {
        path: String,
        got: String,
        want: String,
    },
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    HostFile { path: PathBuf, size: u64 },
}

impl Content {
    pub fn host_file(path: &Path) -> Result<Content, EspError> {
        let size = std::fs::metadata(path)
            .map_err(|source| EspError::Read {
                file: path.to_path_buf(),
                source,
            })?
            .len();
        Ok(Content::HostFile {
            path: path.to_path_buf(),
            size,
        })
    }

    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::HostFile { size, .. } => *size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// sha256 of the bytes (a host file is read).
    pub fn sha256(&self) -> Result<[u8; 32], EspError> {
        match self {
            Content::Bytes(b) => Ok(Sha256::digest(b).into()),
            Content::HostFile { path, .. } => {
                let read = |source| EspError::Read {
                    file: path.clone(),
                    source,
                };
                let mut f = std::fs::File::open(path).map_err(read)?;
                let mut h = Sha256::new();
                io::copy(&mut f, &mut h).map_err(read)?;
                Ok(h.finalize().into())
            }
        }
    }
}

/// What the ESP of a fresh image holds: slot A, blessed.
#[derive(Debug, Clone)]
pub struct EspInputs<'a> {
    pub version: &'a str,
    pub root_a_partuuid: Uuid,
    /// How slot A's root is verified; rendered onto its entry.
    pub verity: RootVerity,
    pub cmdline: &'a [String],
    pub bootloader: Content,
    pub kernel: Content,
    pub initrd: Content,
}

/// The ESP's files by path, sorted; nothing written yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspPlan {
    pub files: BTreeMap<String, Content>,
}

impl EspPlan {
    pub fn new(inputs: EspInputs<'_>) -> EspPlan {
        let slot = Slot::A;
        let entry = BootEntry {
            version: inputs.version.to_string(),
            slot,
            counter: None,
        };
        let params = CaissonParams {
            slot,
            root: RootSpec::PartUuid(inputs.root_a_partuuid),
            rootwait: caisson_layout::cmdline::DEFAULT_ROOTWAIT,
            verity: Some(inputs.verity),
        };
        let mut options = params.render();
        options.extend(inputs.cmdline.iter().cloned());
        let dir = slot.esp_dir();
        let files = BTreeMap::from([
            (BOOTLOADER_PATH.to_string(), inputs.bootloader),
            (
                LOADER_CONF_PATH.to_string(),
                Content::Bytes(LOADER_CONF.as_bytes().to_vec()),
            ),
            (
                format!(
                    "{}/{}",
                    caisson_layout::boot_entry::ENTRIES_DIR,
                    entry.file_name()
                ),
                Content::Bytes(entry.render(ENTRY_TITLE, &options).into_bytes()),
            ),
            (format!("{dir}/vmlinuz"), inputs.kernel),
            (format!("{dir}/initrd"), inputs.initrd),
        ]);
        EspPlan { files }
    }

    pub fn payload_bytes(&self) -> u64 {
        self.files.values().map(Content::len).sum()
    }

    /// Directories to create, parents first.
    fn dirs(&self) -> Vec<String> {
        let mut dirs = std::collections::BTreeSet::new();
        for path in self.files.keys() {
            let mut p = path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                dirs.insert(parent.to_string());
                p = parent;
            }
        }
        dirs.into_iter().collect()
    }

    /// Format `volume` (exactly the partition's bytes) as FAT32 and write
    /// the files.
    pub fn write<V: Read + Write + Seek>(
        &self,
        mut volume: V,
        volume_id: u32,
        epoch: u64,
    ) -> Result<(), EspError> {
        let size = volume
            .seek(SeekFrom::End(0))
            .map_err(|source| EspError::Format { size: 0, source })?;
        // FAT tables and directories take ~1% at 4 KiB clusters; keep 4 MiB spare.
        if self.payload_bytes() + size / 64 + (4 << 20) > size {
            return Err(EspError::TooBig {
                need: self.payload_bytes(),
                have: size,
            });
        }
        volume
            .seek(SeekFrom::Start(0))
            .map_err(|source| EspError::Format { size, source })?;
        let options = FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .volume_id(volume_id)
            .volume_label(VOLUME_LABEL)
            .bytes_per_cluster(cluster_size(size));
        fatfs::format_volume(&mut volume, options)
            .map_err(|source| EspError::Format { size, source })?;
        volume
            .seek(SeekFrom::Start(0))
            .map_err(|source| EspError::Format { size, source })?;
        // fatfs wants a &'static provider; one tiny allocation per build.
        let clock: &'static FixedClock = Box::leak(Box::new(FixedClock(dos_datetime(epoch))));
        let fs = FileSystem::new(&mut volume, FsOptions::new().time_provider(clock))
            .map_err(|source| EspError::Format { size, source })?;
        let root = fs.root_dir();
        for dir in self.dirs() {
            root.create_dir(&dir).map_err(|source| EspError::Write {
                path: dir.clone(),
                source,
            })?;
        }
        for (path, content) in &self.files {
            let err = |source| EspError::Write {
                path: path.clone(),
                source,
            };
            let mut file = root.create_file(path).map_err(err)?;
            match content {
                Content::Bytes(bytes) => file.write_all(bytes).map_err(err)?,
                Content::HostFile { path: host, .. } => {
                    let mut src = std::fs::File::open(host).map_err(|source| EspError::Read {
                        file: host.clone(),
                        source,
                    })?;
                    io::copy(&mut src, &mut file).map_err(err)?;
                }
            }
            file.flush().map_err(err)?;
        }
        drop(root);
        let finish = |source| EspError::Write {
            path: "(FAT metadata)".into(),
            source,
        };
        // Counting free clusters makes fatfs record them in FSInfo.
        fs.stats().map_err(finish)?;
        fs.unmount().map_err(finish)?;
        fix_dot_entries(&mut volume).map_err(finish)
    }
}

impl EspPlan {
    /// Read every planned file back from the FAT volume and compare its
    /// sha256 with what was planned; the first difference is the error.
    pub fn verify<V: Read + Write + Seek>(&self, volume: V) -> Result<(), EspError> {
        self.verify_with(volume, &BTreeMap::new())
    }

    /// [`verify`](Self::verify), taking the expected sha256 of the files in
    /// `known` (by ESP path) instead of hashing their contents again.
    pub fn verify_with<V: Read + Write + Seek>(
        &self,
        mut volume: V,
        known: &BTreeMap<String, [u8; 32]>,
    ) -> Result<(), EspError> {
        // fatfs asserts (panics) unless the stream starts at 0.
        volume
            .seek(SeekFrom::Start(0))
            .map_err(|source| EspError::ReadBack {
                path: "(FAT boot sector)".into(),
                source,
            })?;
        let fs =
            FileSystem::new(volume, FsOptions::new()).map_err(|source| EspError::ReadBack {
                path: "(FAT boot sector)".into(),
                source,
            })?;
        let root = fs.root_dir();
        for (path, content) in &self.files {
            let back = |source| EspError::ReadBack {
                path: path.clone(),
                source,
            };
            let mut file = root.open_file(path).map_err(back)?;
            let mut h = Sha256::new();
            io::copy(&mut file, &mut h).map_err(back)?;
            let got: [u8; 32] = h.finalize().into();
            let want = match known.get(path) {
                Some(sha) => *sha,
                None => content.sha256()?,
            };
            if got != want {
                return Err(EspError::Mismatch {
                    path: path.clone(),
                    got: hex(&got),
                    want: hex(&want),
                });
            }
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// fatfs 0.3.6 writes long-name entries for "." and "..", and points ".."
/// of a top-level directory at the root's cluster. FAT wants "." and ".." as
/// the first two (short) entries and 0 for the root; fsck.fat and some
/// firmware insist. Repair both in place once fatfs is done.
fn fix_dot_entries<V: Read + Write + Seek>(v: &mut V) -> io::Result<()> {
    let mut bs = [0u8; 512];
    v.seek(SeekFrom::Start(0))?;
    v.read_exact(&mut bs)?;
    let u16_at = |o: usize| u64::from(u16::from_le_bytes(le_bytes(&bs, o)));
    let u32_at = |o: usize| u32::from_le_bytes(le_bytes(&bs, o));
    let sector = u16_at(11);
    let geometry = Fat32Geometry {
        cluster_size: sector * u64::from(bs[13]),
        fat_start: u16_at(14) * sector,
        data_start: (u16_at(14) + u64::from(bs[16]) * u64::from(u32_at(36))) * sector,
        root: u32_at(44),
    };
    if geometry.cluster_size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "FAT boot sector: zero cluster size",
        ));
    }
    geometry.fix_dir(v, geometry.root, true)
}

/// `N` bytes at `at`, zeros where `b` is too short.
fn le_bytes<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, i) in out.iter_mut().zip(b.iter().skip(at)) {
        *o = *i;
    }
    out
}

struct Fat32Geometry {
    cluster_size: u64,
    fat_start: u64,
    data_start: u64,
    root: u32,
}

const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";
const ATTR_LFN: u8 = 0x0F;
const ATTR_DIR: u8 = 0x10;

type DirEntry = [u8; 32];

fn entry_cluster(e: &DirEntry) -> u32 {
    u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
        | u32::from(u16::from_le_bytes([e[26], e[27]]))
}

fn entry_name(e: &DirEntry) -> [u8; 11] {
    le_bytes(e, 0)
}

impl Fat32Geometry {
    fn chain<V: Read + Seek>(&self, v: &mut V, first: u32) -> io::Result<Vec<u32>> {
        let mut chain = vec![first];
        let mut next = [0u8; 4];
        loop {
            let last = *chain.last().unwrap_or(&first);
            v.seek(SeekFrom::Start(self.fat_start + u64::from(last) * 4))?;
            v.read_exact(&mut next)?;
            let n = u32::from_le_bytes(next) & 0x0FFF_FFFF;
            if !(2..0x0FFF_FFF8).contains(&n) || chain.len() > 1 << 16 {
                return Ok(chain);
            }
            chain.push(n);
        }
    }

    fn cluster_offset(&self, c: u32) -> io::Result<u64> {
        let index = c.checked_sub(2).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("FAT directory chain names cluster {c}"),
            )
        })?;
        Ok(self.data_start + u64::from(index) * self.cluster_size)
    }

    fn fix_dir<V: Read + Write + Seek>(
        &self,
        v: &mut V,
        first: u32,
        is_root: bool,
    ) -> io::Result<()> {
        let clusters = self.chain(v, first)?;
        let cluster_size = self.cluster_size as usize;
        let mut bytes = vec![0u8; clusters.len() * cluster_size];
        for (c, chunk) in clusters.iter().zip(bytes.chunks_exact_mut(cluster_size)) {
            v.seek(SeekFrom::Start(self.cluster_offset(*c)?))?;
            v.read_exact(chunk)?;
        }
        let entries: Vec<DirEntry> = bytes
            .chunks_exact(32)
            .map(|e| le_bytes::<32>(e, 0))
            .take_while(|e| e[0] != 0)
            .collect();
        let subdirs: Vec<u32> = entries
            .iter()
            .filter(|e| e[11] != ATTR_LFN && e[11] & ATTR_DIR != 0 && e[0] != 0xE5)
            .filter(|e| &entry_name(e) != DOT && &entry_name(e) != DOTDOT)
            .map(entry_cluster)
            .collect();
        if !is_root {
            let (mut dots, mut others, mut pending) = (Vec::new(), Vec::new(), Vec::new());
            for mut e in entries {
                let name = entry_name(&e);
                if e[11] == ATTR_LFN && e[0] != 0xE5 {
                    pending.push(e);
                } else if &name == DOT || &name == DOTDOT {
                    pending.clear();
                    if &name == DOTDOT && entry_cluster(&e) == self.root {
                        e[20] = 0;
                        e[21] = 0;
                        e[26] = 0;
                        e[27] = 0;
                    }
                    dots.push(e);
                } else {
                    others.append(&mut pending);
                    others.push(e);
                }
            }
            dots.sort_by_key(entry_name);
            let mut fixed = dots.iter().chain(others.iter()).flatten().copied();
            for b in bytes.iter_mut() {
                *b = fixed.next().unwrap_or(0);
            }
            for (c, chunk) in clusters.iter().zip(bytes.chunks_exact(cluster_size)) {
                v.seek(SeekFrom::Start(self.cluster_offset(*c)?))?;
                v.write_all(chunk)?;
            }
        }
        for sub in subdirs {
            self.fix_dir(v, sub, false)?;
        }
        Ok(())
    }
}

/// FAT32 needs at least 65525 clusters: use 4 KiB clusters when the volume
/// is large enough (≥ 260 MiB), smaller ones otherwise.
fn cluster_size(volume_bytes: u64) -> u32 {
    let mut cluster = 4096u32;
    while cluster > 512 && volume_bytes / u64::from(cluster) < 66_000 {
        cluster /= 2;
    }
    cluster
}

/// A FAT volume id from the image identity, so the same image gets the same id.
pub fn volume_id(identity: &str) -> u32 {
    let g = caisson_layout::derive_guid(identity, "esp-volume-id");
    let b = g.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[derive(Debug)]
struct FixedClock(DateTime);

impl TimeProvider for FixedClock {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// Unix seconds to a FAT timestamp (UTC). FAT cannot go before 1980 or past
/// 2107; values outside are clamped.
pub fn dos_datetime(epoch: u64) -> DateTime {
    const MIN: u64 = 315_532_800; // 1980-01-01T00:00:00Z
    const MAX: u64 = 4_354_819_199; // 2107-12-31T23:59:59Z
    let t = epoch.clamp(MIN, MAX);
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    DateTime {
        date: Date { year, month, day },
        time: Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    const ROOT_A: &str = "0a2b3c4d-1111-4222-8333-444455556666";

    fn plan() -> EspPlan {
        EspPlan::new(EspInputs {
            version: "0.1.0",
            root_a_partuuid: Uuid::parse_str(ROOT_A).unwrap(),
            verity: RootVerity::Verified(caisson_layout::VerityParams {
                root_hash: "ab".repeat(32),
                salt: "cd".repeat(32),
                hash_offset: 58724352,
            }),
            cmdline: &["console=ttyS0,115200".to_string()],
            bootloader: Content::Bytes(b"MZ-efi".to_vec()),
            kernel: Content::Bytes(b"kernel".to_vec()),
            initrd: Content::Bytes(b"initrd".to_vec()),
        })
    }

    #[test]
    fn plan_holds_bootloader_loader_conf_blessed_entry_and_slot_a() {
        let p = plan();
        let names: Vec<_> = p.files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "EFI/BOOT/BOOTX64.EFI",
                "a/initrd",
                "a/vmlinuz",
                "loader/entries/caisson-0.1.0-a.conf",
                "loader/loader.conf"
            ]
        );
        let Content::Bytes(entry) = &p.files["loader/entries/caisson-0.1.0-a.conf"] else {
            panic!()
        };
        let entry = String::from_utf8(entry.clone()).unwrap();
        assert!(
            entry.contains(&format!(
                "options caisson.slot=a caisson.root=PARTUUID={ROOT_A} caisson.verity={} \
                 caisson.verity.salt={} caisson.verity.hashoffset=58724352 console=ttyS0,115200\n",
                "ab".repeat(32),
                "cd".repeat(32)
            )),
            "{entry}"
        );
        assert!(
            entry.contains("linux /a/vmlinuz\n") && entry.contains("version 0.1.0\n"),
            "{entry}"
        );
        let Content::Bytes(conf) = &p.files["loader/loader.conf"] else {
            panic!()
        };
        let conf = String::from_utf8(conf.clone()).unwrap();
        assert!(!conf.contains("default"), "{conf}");
        assert!(conf.contains("timeout 0\n") && conf.contains("random-seed-mode off\n"));
        assert_eq!(
            p.dirs(),
            ["EFI", "EFI/BOOT", "a", "loader", "loader/entries"]
        );
    }

    #[test]
    fn dos_time_is_utc_civil_time_and_clamped() {
        let t = dos_datetime(1_700_000_000); // 2023-11-14T22:13:20Z
        assert_eq!(
            t.date,
            Date {
                year: 2023,
                month: 11,
                day: 14
            }
        );
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        assert_eq!(
            dos_datetime(0).date,
            Date {
                year: 1980,
                month: 1,
                day: 1
            }
        );
        assert_eq!(
            dos_datetime(951_782_400).date,
            Date {
                year: 2000,
                month: 2,
                day: 29
            }
        );
    }

    #[test]
    fn writes_a_reproducible_fat32_volume_with_fixed_id_and_times() {
        let size = 64usize << 20;
        let write = || {
            let mut v = Cursor::new(vec![0u8; size]);
            plan().write(&mut v, 0xCAFE_F00D, 1_700_000_000).unwrap();
            v.into_inner()
        };
        let a = write();
        assert_eq!(a, write(), "same plan, same bytes");
        let fs = FileSystem::new(Cursor::new(a), FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat32);
        assert_eq!(fs.volume_id(), 0xCAFE_F00D);
        assert_eq!(fs.volume_label(), "ESP");
        let mut text = String::new();
        fs.root_dir()
            .open_file("loader/loader.conf")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, LOADER_CONF);
        let entry = fs
            .root_dir()
            .open_dir("a")
            .unwrap()
            .iter()
            .find(|e| e.as_ref().unwrap().file_name() == "vmlinuz");
        let entry = entry.unwrap().unwrap();
        assert_eq!(
            entry.modified().date,
            Date {
                year: 2023,
                month: 11,
                day: 14
            }
        );
        assert_eq!(entry.len(), 6);
    }

    #[test]
    fn verify_accepts_what_was_written_and_names_a_changed_file() {
        let mut v = Cursor::new(vec![0u8; 64 << 20]);
        let p = plan();
        p.write(&mut v, 1, 1_700_000_000).unwrap();
        p.verify(&mut v).unwrap();
        let mut other = p.clone();
        other
            .files
            .insert("a/vmlinuz".into(), Content::Bytes(b"kernel2".to_vec()));
        let e = other.verify(&mut v).unwrap_err();
        assert!(
            matches!(&e, EspError::Mismatch { path, .. } if path == "a/vmlinuz"),
            "{e}"
        );
        other
            .files
            .insert("b/extra".into(), Content::Bytes(Vec::new()));
        other.files.remove("a/vmlinuz");
        let e = other.verify(&mut v).unwrap_err();
        assert!(e.to_string().contains("b/extra"), "{e}");
    }

    #[test]
    fn too_much_for_the_volume_is_refused_with_sizes() {
        let mut p = plan();
        p.files
            .insert("a/initrd".into(), Content::Bytes(vec![0; 63 << 20]));
        let e = p.write(Cursor::new(vec![0u8; 64 << 20]), 1, 0).unwrap_err();
        assert!(matches!(e, EspError::TooBig { .. }), "{e}");
    }
}
