//! Finding a medium by its filesystem label (`config-2`, `cidata`) and
//! reading files off it: the label is read from the raw device (ISO 9660's
//! primary volume descriptor, FAT's root-directory label or boot sector),
//! so nothing is mounted that is not asked for; then the filesystem is
//! mounted read-only (its modules loaded first), read, and unmounted.
//!
//! CD-ROMs (OpenStack's config drive, `cloud-localds` seeds attached as
//! one) need `sr_mod`: it is loaded when a SCSI CD-ROM device exists.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags, MsFlags};

use crate::mounts::{create_dir_all, MountSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Iso9660,
    Vfat,
}

impl FsType {
    pub fn kernel_name(self) -> &'static str {
        match self {
            FsType::Iso9660 => "iso9660",
            FsType::Vfat => "vfat",
        }
    }

    /// What mounting it needs from the cloud kernel (all `=m`).
    pub fn modules(self) -> &'static [&'static str] {
        match self {
            FsType::Iso9660 => &["isofs"],
            FsType::Vfat => crate::bootentry::ESP_MODULES,
        }
    }
}

/// A device whose filesystem carries a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    pub device: PathBuf,
    pub fs: FsType,
    pub label: String,
}

const ISO_SECTOR: u64 = 2048;
const ISO_FIRST_DESCRIPTOR: u64 = 16;

/// ISO 9660: the primary volume descriptor's volume identifier, looking
/// through the descriptor set from sector 16 to its terminator.
fn iso9660_label(read: &mut dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>>) -> Option<String> {
    for n in 0..32 {
        let d = read((ISO_FIRST_DESCRIPTOR + n) * ISO_SECTOR, ISO_SECTOR as usize).ok()?;
        if d.get(1..6) != Some(b"CD001") {
            return None;
        }
        match d.first() {
            Some(1) => return d.get(40..72).map(text_field),
            Some(255) => return None,
            _ => {}
        }
    }
    None
}

fn text_field(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

fn le16(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 2)
        .and_then(|s| <[u8; 2]>::try_from(s).ok())
        .map(|a| u64::from(u16::from_le_bytes(a)))
}

fn le32(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(|a| u64::from(u32::from_le_bytes(a)))
}

/// FAT12/16/32: the volume label entry of the root directory (what
/// `blkid` reports), else the boot sector's label; `None` if the first
/// sector is not a FAT boot sector.
fn fat_label(read: &mut dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>>) -> Option<String> {
    let boot = read(0, 512).ok()?;
    if boot.get(510..512) != Some(&[0x55, 0xAA][..]) {
        return None;
    }
    let bps = le16(&boot, 11)?;
    let spc = u64::from(*boot.get(13)?);
    let reserved = le16(&boot, 14)?;
    let fats = u64::from(*boot.get(16)?);
    let root_entries = le16(&boot, 17)?;
    if ![512, 1024, 2048, 4096].contains(&bps)
        || spc == 0
        || !spc.is_power_of_two()
        || reserved == 0
        || fats == 0
    {
        return None;
    }
    let fat16_size = le16(&boot, 22)?;
    let (fat_size, boot_label_at, fs_type_at) = if fat16_size == 0 {
        (le32(&boot, 36)?, 71, 82)
    } else {
        (fat16_size, 43, 54)
    };
    if boot.get(fs_type_at..fs_type_at + 3) != Some(&b"FAT"[..]) {
        return None;
    }
    let fat_end = (reserved + fats * fat_size) * bps;
    let (root_at, root_len) = if fat16_size == 0 {
        let root_cluster = le32(&boot, 44)?;
        let cluster = spc * bps;
        (fat_end + root_cluster.checked_sub(2)? * cluster, cluster)
    } else {
        (fat_end, root_entries * 32)
    };
    let root = read(root_at, usize::try_from(root_len.min(64 * 1024)).ok()?).unwrap_or_default();
    for entry in root.chunks_exact(32) {
        match entry.first() {
            Some(0) => break,
            Some(0xE5) => continue,
            _ => {}
        }
        // Attribute 0x08 alone: a volume label (0x0F is a long-name part).
        if entry.get(11).is_some_and(|a| a & 0x1F == 0x08) {
            return entry.get(..11).map(text_field);
        }
    }
    boot.get(boot_label_at..boot_label_at + 11)
        .map(text_field)
        .filter(|l| !l.is_empty() && l != "NO NAME")
}

/// The filesystem and label of a device's contents, if ISO 9660 or FAT.
pub fn probe(
    read: &mut dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
) -> Option<(FsType, String)> {
    if let Some(l) = iso9660_label(read) {
        return Some((FsType::Iso9660, l));
    }
    fat_label(read).map(|l| (FsType::Vfat, l))
}

fn read_at(file: &File) -> impl FnMut(u64, usize) -> std::io::Result<Vec<u8>> + '_ {
    move |offset, len| {
        let mut buf = vec![0u8; len];
        let n = file.read_at(&mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// Loop devices, RAM disks, device-mapper and md are never a platform's medium.
fn skipped(name: &str) -> bool {
    ["loop", "ram", "zram", "dm-", "md", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Every block device whose label is one of `labels` (any case), sorted by
/// device name. Devices that cannot be opened (an empty CD drive) are passed over.
pub fn find(labels: &[&str]) -> Result<Vec<Labelled>, String> {
    let devices =
        caisson_devices::list_block_devices().map_err(|e| format!("listing block devices: {e}"))?;
    let mut out = Vec::new();
    for dev in devices
        .iter()
        .filter(|d| !skipped(&d.name) && d.size_bytes > 0)
    {
        let Ok(file) = File::open(&dev.dev_path) else {
            continue;
        };
        let probed = probe(&mut read_at(&file));
        if let Some((fs, label)) = probed {
            if labels.iter().any(|l| l.eq_ignore_ascii_case(&label)) {
                out.push(Labelled {
                    device: dev.dev_path.clone(),
                    fs,
                    label,
                });
            }
        }
    }
    Ok(out)
}

/// SCSI device type 5 is a CD-ROM (`/sys/bus/scsi/devices/*/type`).
pub fn has_scsi_cdrom(scsi_devices: &Path) -> bool {
    std::fs::read_dir(scsi_devices)
        .map(|entries| {
            entries.filter_map(Result::ok).any(|e| {
                std::fs::read_to_string(e.path().join("type")).is_ok_and(|t| t.trim() == "5")
            })
        })
        .unwrap_or(false)
}

/// Load `sr_mod` when a SCSI CD-ROM is attached and wait (briefly) for its
/// block device. Returns what it did, for the console.
pub fn prepare_cdroms(load: &mut dyn FnMut(&str) -> Result<(), String>) -> Option<String> {
    let scsi = Path::new("/sys/bus/scsi/devices");
    if !has_scsi_cdrom(scsi) {
        return None;
    }
    if let Err(e) = load("sr_mod") {
        return Some(format!(
            "a SCSI CD-ROM is attached but sr_mod does not load: {e}"
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let has_sr = std::fs::read_dir("/sys/class/block")
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with("sr"))
            })
            .unwrap_or(false);
        if has_sr {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some("sr_mod is loaded but no srN device appeared within 3 s".into())
}

/// Where media are mounted while read.
pub const MOUNT_DIR: &str = "/run/caisson/platform";

/// Mount `medium` read-only (loading its modules), run `f` on the mount
/// point, unmount. Err: the medium cannot be mounted (corrupt, or the
/// kernel lacks the filesystem).
pub fn with_mounted<T>(
    medium: &Labelled,
    load: &mut dyn FnMut(&str) -> Result<(), String>,
    f: impl FnOnce(&Path) -> T,
) -> Result<T, String> {
    for module in medium.fs.modules() {
        load(module).map_err(|e| format!("loading {module}: {e}"))?;
    }
    let target = Path::new(MOUNT_DIR).join(&medium.label);
    create_dir_all(&target).map_err(|e| e.to_string())?;
    let source = medium.device.to_string_lossy();
    let target_str = target.to_string_lossy();
    MountSpec {
        source: &source,
        target: &target_str,
        fs_type: medium.fs.kernel_name(),
        flags: MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        data: None,
    }
    .mount()
    .map_err(|e| e.to_string())?;
    let result = f(&target);
    if let Err(errno) = umount2(OsStr::new(target.as_os_str()), MntFlags::empty()) {
        tracing::warn!("config: unmounting {}: {errno}", target.display());
    } else {
        let _ = std::fs::remove_dir(&target);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn reader(image: &[u8]) -> impl FnMut(u64, usize) -> std::io::Result<Vec<u8>> + '_ {
        move |offset, len| {
            let start = usize::try_from(offset).unwrap().min(image.len());
            let end = (start + len).min(image.len());
            Ok(image[start..end].to_vec())
        }
    }

    /// An ISO 9660 descriptor set: a boot record, the PVD, the terminator.
    fn iso(label: &str) -> Vec<u8> {
        let mut img = vec![0u8; 20 * 2048];
        for (sector, kind) in [(16, 0u8), (17, 1), (18, 255)] {
            let d = &mut img[sector * 2048..(sector + 1) * 2048];
            d[0] = kind;
            d[1..6].copy_from_slice(b"CD001");
            d[6] = 1;
        }
        let mut id = [b' '; 32];
        id[..label.len()].copy_from_slice(label.as_bytes());
        img[17 * 2048 + 40..17 * 2048 + 72].copy_from_slice(&id);
        img
    }

    #[test]
    fn iso9660_volume_id_is_the_label() {
        assert_eq!(
            probe(&mut reader(&iso("config-2"))),
            Some((FsType::Iso9660, "config-2".into()))
        );
        assert_eq!(
            probe(&mut reader(&iso("cidata"))),
            Some((FsType::Iso9660, "cidata".into()))
        );
        // No CD001: not ISO; zeros: not FAT either.
        assert_eq!(probe(&mut reader(&vec![0u8; 40 * 2048])), None);
        // A short device is not an error.
        assert_eq!(probe(&mut reader(&[0u8; 100])), None);
        // A set without a PVD before its terminator.
        let mut no_pvd = iso("x");
        no_pvd[17 * 2048] = 2;
        assert_eq!(probe(&mut reader(&no_pvd)), None);
    }

    /// A FAT filesystem written by the `fatfs` crate, labelled `label`.
    fn fat(label: &[u8; 11], fat_type: fatfs::FatType, mib: u64) -> Vec<u8> {
        let mut file = tempfile::tempfile().unwrap();
        file.set_len(mib << 20).unwrap();
        fatfs::format_volume(
            &mut file,
            fatfs::FormatVolumeOptions::new()
                .volume_label(*label)
                .fat_type(fat_type),
        )
        .unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).unwrap();
            fs.root_dir()
                .create_file("user-data")
                .unwrap()
                .write_all(b"version = 1\n")
                .unwrap();
        }
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut image = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut image).unwrap();
        image
    }

    #[test]
    fn fat_labels_of_every_fat_type() {
        for (t, mib) in [
            (fatfs::FatType::Fat12, 2),
            (fatfs::FatType::Fat16, 20),
            (fatfs::FatType::Fat32, 40),
        ] {
            let image = fat(b"CIDATA     ", t, mib);
            assert_eq!(
                probe(&mut reader(&image)),
                Some((FsType::Vfat, "CIDATA".into())),
                "{t:?}"
            );
        }
    }

    #[test]
    fn the_root_directory_label_wins_over_the_boot_sectors() {
        // As after `fatlabel`: the root entry renamed, the boot sector stale.
        let mut image = fat(b"CONFIG-2   ", fatfs::FatType::Fat16, 20);
        let at = image.windows(11).position(|w| w == b"CONFIG-2   ").unwrap();
        assert!(at < 512, "the boot sector copy comes first");
        image[at..at + 11].copy_from_slice(b"OLD        ");
        assert_eq!(
            probe(&mut reader(&image)),
            Some((FsType::Vfat, "CONFIG-2".into()))
        );
    }

    #[test]
    fn labels_are_compared_as_the_platforms_write_them() {
        assert!(crate::platform::openstack::LABELS
            .iter()
            .any(|l| l.eq_ignore_ascii_case("config-2")));
        assert!(["cidata"].iter().any(|l| l.eq_ignore_ascii_case("CIDATA")));
        assert!(skipped("loop0") && skipped("dm-1") && !skipped("sr0") && !skipped("vdb"));
    }

    #[test]
    fn scsi_cdroms_are_seen_by_their_type() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!has_scsi_cdrom(&dir.path().join("absent")));
        std::fs::create_dir(dir.path().join("0:0:0:0")).unwrap();
        std::fs::write(dir.path().join("0:0:0:0/type"), "0\n").unwrap();
        assert!(!has_scsi_cdrom(dir.path()));
        std::fs::create_dir(dir.path().join("0:0:1:0")).unwrap();
        std::fs::write(dir.path().join("0:0:1:0/type"), "5\n").unwrap();
        assert!(has_scsi_cdrom(dir.path()));
    }
}
