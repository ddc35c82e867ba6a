//! The disks an install may target, read from sysfs, and how `[install]`
//! picks one: by device node, or by a selector that must match exactly one
//! disk other than the boot medium. Loop, RAM, zram, device-mapper, md,
//! optical, network-block and floppy devices are never candidates.

use std::fmt;
use std::path::{Path, PathBuf};

use caisson_config::{DiskSelector, DiskType, Install, SizeMatch};
use caisson_devices::{list_block_devices_in, SysRoots};

const MIB: u64 = 1 << 20;
/// Kernel name prefixes of devices that are not disks one installs to.
const NOT_DISKS: &[&str] = &["loop", "ram", "zram", "dm-", "md", "sr", "nbd", "fd"];

/// One whole disk as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `vdb`.
    pub name: String,
    pub dev_path: PathBuf,
    pub size: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub disk_type: DiskType,
    pub removable: bool,
    pub read_only: bool,
    /// The kernel's partitions of it, e.g. `vdb1`.
    pub partitions: Vec<String>,
}

impl fmt::Display for Disk {
    /// `/dev/vdb (4096 MiB, virtio, model "-", serial "target-1")`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} MiB, {}, model {:?}, serial {:?})",
            self.dev_path.display(),
            self.size / MIB,
            self.disk_type.as_str(),
            self.model.as_deref().unwrap_or("-"),
            self.serial.as_deref().unwrap_or("-"),
        )
    }
}

/// Every whole disk under `roots`, sorted by name.
pub fn inventory(roots: &SysRoots) -> Result<Vec<Disk>, String> {
    let devices = list_block_devices_in(roots).map_err(|e| format!("listing disks: {e}"))?;
    let mut disks = Vec::new();
    for d in devices.iter().filter(|d| d.partition.is_none()) {
        if d.size_bytes == 0 || NOT_DISKS.iter().any(|p| d.name.starts_with(p)) {
            continue;
        }
        let dir = roots.class_block.join(&d.name);
        let partitions = devices
            .iter()
            .filter(|p| p.partition.as_ref().is_some_and(|i| i.parent == d.name))
            .map(|p| p.name.clone())
            .collect();
        disks.push(Disk {
            name: d.name.clone(),
            dev_path: d.dev_path.clone(),
            size: d.size_bytes,
            model: attr(&dir.join("device/model")),
            serial: serial(&dir),
            disk_type: disk_type(&d.name, &dir),
            removable: attr(&dir.join("removable")).as_deref() == Some("1"),
            read_only: attr(&dir.join("ro")).as_deref() == Some("1"),
            partitions,
        });
    }
    Ok(disks)
}

/// A sysfs attribute, trimmed; `None` when absent or empty.
fn attr(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// virtio-blk's `serial`, NVMe's and MMC's `device/serial`, or SCSI's unit
/// serial number page (VPD 0x80: four header bytes, then ASCII).
fn serial(dir: &Path) -> Option<String> {
    attr(&dir.join("serial"))
        .or_else(|| attr(&dir.join("device/serial")))
        .or_else(|| {
            let page = std::fs::read(dir.join("device/vpd_pg80")).ok()?;
            let text: String = page
                .get(4..)?
                .iter()
                .map(|&b| b as char)
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .collect();
            let t = text.trim();
            (!t.is_empty()).then(|| t.to_string())
        })
}

/// Exclusive kinds: NVMe and SD/eMMC by name, virtio by driver, the rest
/// by `queue/rotational`.
fn disk_type(name: &str, dir: &Path) -> DiskType {
    if name.starts_with("nvme") {
        return DiskType::Nvme;
    }
    if name.starts_with("mmcblk") {
        return DiskType::Sd;
    }
    let driver = std::fs::read_link(dir.join("device/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if driver.as_deref() == Some("virtio_blk") || name.starts_with("vd") {
        return DiskType::Virtio;
    }
    match attr(&dir.join("queue/rotational")).as_deref() {
        Some("1") => DiskType::Hdd,
        _ => DiskType::Ssd,
    }
}

/// Does `disk` satisfy every criterion of the selector?
// `Option::is_none_or` is Rust 1.82; the workspace's minimum is 1.80.
#[allow(clippy::unnecessary_map_or)]
pub fn selector_matches(selector: &DiskSelector, size: Option<&SizeMatch>, disk: &Disk) -> bool {
    let glob = |pattern: &Option<String>, value: &Option<String>| match (pattern, value) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(p), Some(v)) => caisson_kmod::fnmatch(p, v),
    };
    size.map_or(true, |s| s.matches(disk.size))
        && glob(&selector.model, &disk.model)
        && glob(&selector.serial, &disk.serial)
        && selector.disk_type.map_or(true, |t| t == disk.disk_type)
}

/// The disk `[install]` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Install here.
    Disk(Disk),
    /// The node runs from this disk: there is nothing to install.
    Running(Disk),
}

/// Pick the target among `disks`; `boot` is the kernel name of the disk the
/// node runs from (None: a live boot from memory or the network).
pub fn resolve(install: &Install, disks: &[Disk], boot: Option<&str>) -> Result<Target, String> {
    let list = |ds: &mut dyn Iterator<Item = &Disk>| {
        let lines: Vec<String> = ds.map(|d| format!("  {d}")).collect();
        if lines.is_empty() {
            "  (none)".to_string()
        } else {
            lines.join("\n")
        }
    };
    let is_boot = |d: &Disk| boot == Some(d.name.as_str());
    if let Some(path) = &install.disk {
        let name = path.strip_prefix("/dev/").unwrap_or(path);
        return match disks.iter().find(|d| d.name == name) {
            Some(d) if is_boot(d) => Ok(Target::Running(d.clone())),
            Some(d) => Ok(Target::Disk(d.clone())),
            None => {
                let whole = disks
                    .iter()
                    .find(|d| d.partitions.iter().any(|p| p == name));
                let why = match whole {
                    Some(d) => format!(
                        "{path} is a partition of {}: name the whole disk",
                        d.dev_path.display()
                    ),
                    None => format!("{path} is not a disk of this machine"),
                };
                Err(format!(
                    "install.disk: {why}. Disks:\n{}",
                    list(&mut disks.iter())
                ))
            }
        };
    }
    let Some(selector) = &install.disk_selector else {
        return Err("[install] names neither `disk` nor `disk_selector`".into());
    };
    let size = match &selector.size {
        Some(s) => {
            Some(SizeMatch::parse(s).map_err(|e| format!("install.disk_selector.size: {e}"))?)
        }
        None => None,
    };
    let candidates: Vec<&Disk> = disks.iter().filter(|d| !is_boot(d)).collect();
    let matching: Vec<&Disk> = candidates
        .iter()
        .copied()
        .filter(|d| selector_matches(selector, size.as_ref(), d))
        .collect();
    let boot_note = match boot {
        Some(b) => format!(" (the boot medium /dev/{b} is never a candidate)"),
        None => String::new(),
    };
    match matching.as_slice() {
        [one] => Ok(Target::Disk((*one).clone())),
        [] => Err(format!(
            "install.disk_selector matches no disk{boot_note}. Candidates:\n{}",
            list(&mut candidates.iter().copied())
        )),
        many => Err(format!(
            "install.disk_selector matches {} disks; it must match exactly one (add `serial`){boot_note}:\n{}",
            many.len(),
            list(&mut many.iter().copied())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, gib: u64, t: DiskType, model: Option<&str>, serial: Option<&str>) -> Disk {
        Disk {
            name: name.into(),
            dev_path: PathBuf::from(format!("/dev/{name}")),
            size: gib << 30,
            model: model.map(Into::into),
            serial: serial.map(Into::into),
            disk_type: t,
            removable: false,
            read_only: false,
            partitions: Vec::new(),
        }
    }

    fn machine() -> Vec<Disk> {
        let mut usb = disk(
            "sda",
            16,
            DiskType::Ssd,
            Some("SanDisk Cruzer"),
            Some("4C53"),
        );
        usb.partitions = vec!["sda1".into(), "sda2".into()];
        vec![
            disk(
                "nvme0n1",
                512,
                DiskType::Nvme,
                Some("SAMSUNG MZVL2512"),
                Some("S4EV1"),
            ),
            disk(
                "nvme1n1",
                1024,
                DiskType::Nvme,
                Some("SAMSUNG MZVL21T0"),
                Some("S4EV2"),
            ),
            usb,
            disk("sdb", 4096, DiskType::Hdd, Some("ST4000NM"), None),
        ]
    }

    fn selector(s: DiskSelector) -> Install {
        Install {
            disk: None,
            disk_selector: Some(s),
            wipe: false,
        }
    }

    fn picked(r: Result<Target, String>) -> String {
        match r {
            Ok(Target::Disk(d)) => d.name,
            other => panic!("expected a disk, got {other:?}"),
        }
    }

    #[test]
    fn selectors_combine_size_globs_and_type() {
        let disks = machine();
        let by = |s| picked(resolve(&selector(s), &disks, Some("sda")));
        assert_eq!(
            by(DiskSelector {
                size: Some(">= 1TB".into()),
                disk_type: Some(DiskType::Nvme),
                ..Default::default()
            }),
            "nvme1n1"
        );
        assert_eq!(
            by(DiskSelector {
                serial: Some("S4EV1".into()),
                ..Default::default()
            }),
            "nvme0n1"
        );
        assert_eq!(
            by(DiskSelector {
                disk_type: Some(DiskType::Hdd),
                ..Default::default()
            }),
            "sdb"
        );
        assert_eq!(
            by(DiskSelector {
                model: Some("SAMSUNG MZVL2[0-9]*".into()),
                size: Some("512GiB".into()),
                ..Default::default()
            }),
            "nvme0n1"
        );
    }

    #[test]
    fn a_selector_must_match_exactly_one_disk_and_errors_list_the_candidates() {
        let disks = machine();
        let e = resolve(
            &selector(DiskSelector {
                disk_type: Some(DiskType::Nvme),
                ..Default::default()
            }),
            &disks,
            Some("sda"),
        )
        .unwrap_err();
        assert!(
            e.starts_with("install.disk_selector matches 2 disks; it must match exactly one"),
            "{e}"
        );
        assert!(
            e.contains(
                "/dev/nvme0n1 (524288 MiB, nvme, model \"SAMSUNG MZVL2512\", serial \"S4EV1\")"
            ),
            "{e}"
        );
        assert!(!e.contains("sdb"), "{e}");
        // A serial glob on a disk without a serial never matches.
        let e = resolve(
            &selector(DiskSelector {
                serial: Some("*".into()),
                disk_type: Some(DiskType::Hdd),
                ..Default::default()
            }),
            &disks,
            Some("sda"),
        )
        .unwrap_err();
        assert!(
            e.contains("matches no disk (the boot medium /dev/sda is never a candidate)"),
            "{e}"
        );
        assert!(
            e.contains("/dev/sdb (4194304 MiB, hdd, model \"ST4000NM\", serial \"-\")"),
            "{e}"
        );
        assert!(
            !e.contains("Cruzer"),
            "the boot medium is not a candidate: {e}"
        );
    }

    #[test]
    fn the_boot_medium_is_never_selected_but_naming_it_means_running_from_it() {
        let disks = machine();
        let s = selector(DiskSelector {
            model: Some("SanDisk*".into()),
            ..Default::default()
        });
        assert!(resolve(&s, &disks, Some("sda")).is_err());
        assert_eq!(picked(resolve(&s, &disks, None)), "sda");
        let named = Install {
            disk: Some("/dev/sda".into()),
            disk_selector: None,
            wipe: false,
        };
        assert!(
            matches!(resolve(&named, &disks, Some("sda")), Ok(Target::Running(d)) if d.name == "sda")
        );
        assert_eq!(picked(resolve(&named, &disks, Some("nvme0n1"))), "sda");
    }

    #[test]
    fn a_named_partition_or_unknown_disk_is_refused_with_the_disks() {
        let disks = machine();
        let named = |d: &str| Install {
            disk: Some(d.into()),
            disk_selector: None,
            wipe: false,
        };
        let e = resolve(&named("/dev/sda2"), &disks, None).unwrap_err();
        assert!(
            e.starts_with(
                "install.disk: /dev/sda2 is a partition of /dev/sda: name the whole disk"
            ),
            "{e}"
        );
        let e = resolve(&named("/dev/vdz"), &disks, None).unwrap_err();
        assert!(
            e.contains("/dev/vdz is not a disk of this machine. Disks:\n  /dev/nvme0n1"),
            "{e}"
        );
    }

    #[test]
    fn inventory_reads_model_serial_and_type_from_sysfs_and_skips_loop_devices() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path().join("sys");
        let class = sys.join("class/block");
        let devices = sys.join("devices");
        let mk = |name: &str, sectors: u64, files: &[(&str, &str)]| {
            let dir = devices.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("size"), sectors.to_string()).unwrap();
            for (f, text) in files {
                let p = dir.join(f);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, text).unwrap();
            }
            std::fs::create_dir_all(&class).unwrap();
            std::os::unix::fs::symlink(&dir, class.join(name)).unwrap();
            dir
        };
        mk("vdb", 8 << 20, &[("serial", "target-1\n")]);
        let sda = mk(
            "sda",
            1 << 21,
            &[
                ("device/model", "QEMU HARDDISK   \n"),
                ("queue/rotational", "1\n"),
                ("removable", "1\n"),
            ],
        );
        let mut pg80 = vec![0u8, 0x80, 0, 8];
        pg80.extend_from_slice(b"QM00001 ");
        std::fs::write(sda.join("device/vpd_pg80"), pg80).unwrap();
        mk("loop0", 1 << 10, &[]);
        mk(
            "nvme0n1",
            1 << 21,
            &[("device/model", "Samsung"), ("device/serial", "S4EV")],
        );
        let part = sda.join("sda1");
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(part.join("size"), "2048").unwrap();
        std::fs::write(part.join("partition"), "1").unwrap();
        std::os::unix::fs::symlink(&part, class.join("sda1")).unwrap();

        let disks = inventory(&SysRoots::new(&sys, Path::new("/dev"))).unwrap();
        let names: Vec<_> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sda", "vdb"]);
        let sda = &disks[1];
        assert_eq!(sda.model.as_deref(), Some("QEMU HARDDISK"));
        assert_eq!(sda.serial.as_deref(), Some("QM00001"));
        assert_eq!(
            (sda.disk_type, sda.removable, sda.size),
            (DiskType::Hdd, true, 1 << 30)
        );
        assert_eq!(sda.partitions, ["sda1"]);
        assert_eq!(disks[2].serial.as_deref(), Some("target-1"));
        assert_eq!(disks[2].disk_type, DiskType::Virtio);
        assert_eq!(disks[0].disk_type, DiskType::Nvme);
    }
}
