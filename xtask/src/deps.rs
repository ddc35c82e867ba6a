//! Host tools the commands need, and installing the missing ones on Debian.
//!
//! One table says, for each need, how to check for it and which Debian package
//! provides it. On Debian the missing packages are installed with apt-get (as
//! root, or through sudo); elsewhere the missing pieces are listed and the
//! command fails.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::workspace::{describe, run};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    AptGet,
    Qemu,
    QemuImg,
    OvmfCode,
    OvmfVars,
    Mke2fs,
    E2fsck,
    Sgdisk,
    FsckFat,
    Unsquashfs,
    SystemdDissect,
    Mtools,
    /// The API tests talk to the server with curl: a client nobody here wrote.
    Curl,
    /// caisson-net's tests build network namespaces and veth pairs.
    Ip,
    /// caisson-net's DHCP test leases from dnsmasq.
    Dnsmasq,
    /// The independent check of our dm-verity trees.
    Veritysetup,
    /// OpenStack config drives for the config-source tests.
    Genisoimage,
    /// NoCloud seeds for the config-source tests (Debian's cloud-image-utils).
    CloudLocalds,
    /// QEMU's iPXE option ROMs: the PXE tests boot over TFTP with them.
    IpxeRom,
    /// SeaBIOS, which runs the iPXE ROM in the PXE tests.
    Seabios,
    /// Loop devices for the installer's and DATA growth's host tests.
    Losetup,
}

enum Check {
    Command(&'static str),
    File(&'static str),
}

impl Need {
    /// The one table: how to check for each need, and the Debian package
    /// that provides it. A `match`, so a new need cannot lack a row.
    fn row(self) -> (Check, &'static str) {
        use qemu_tests::qemu::{OVMF_CODE, OVMF_VARS};
        match self {
            Need::AptGet => (Check::Command("apt-get"), "apt"),
            Need::Qemu => (Check::Command("qemu-system-x86_64"), "qemu-system-x86"),
            Need::QemuImg => (Check::Command("qemu-img"), "qemu-utils"),
            Need::OvmfCode => (Check::File(OVMF_CODE), "ovmf"),
            Need::OvmfVars => (Check::File(OVMF_VARS), "ovmf"),
            Need::Mke2fs => (Check::Command("mke2fs"), "e2fsprogs"),
            Need::E2fsck => (Check::Command("e2fsck"), "e2fsprogs"),
            Need::Sgdisk => (Check::Command("sgdisk"), "gdisk"),
            Need::FsckFat => (Check::Command("fsck.fat"), "dosfstools"),
            Need::Unsquashfs => (Check::Command("unsquashfs"), "squashfs-tools"),
            Need::SystemdDissect => (Check::Command("systemd-dissect"), "systemd-container"),
            Need::Mtools => (Check::Command("mcopy"), "mtools"),
            Need::Curl => (Check::Command("curl"), "curl"),
            Need::Ip => (Check::Command("ip"), "iproute2"),
            Need::Dnsmasq => (Check::Command("dnsmasq"), "dnsmasq-base"),
            Need::Veritysetup => (Check::Command("veritysetup"), "cryptsetup-bin"),
            Need::Genisoimage => (Check::Command("genisoimage"), "genisoimage"),
            Need::CloudLocalds => (Check::Command("cloud-localds"), "cloud-image-utils"),
            Need::IpxeRom => (Check::File("/usr/lib/ipxe/qemu/pxe-virtio.rom"), "ipxe-qemu"),
            Need::Seabios => (Check::File("/usr/share/seabios/bios-256k.bin"), "seabios"),
            Need::Losetup => (Check::Command("losetup"), "mount"),
        }
    }
}

/// `fetch`: apt-get download and apt-cache.
pub const FETCH: &[Need] = &[Need::AptGet];
/// The image builder: ext4 file systems through mke2fs.
pub const IMAGE: &[Need] = &[Need::Mke2fs, Need::E2fsck];
/// Booting an image.
pub const BOOT: &[Need] = &[Need::Qemu, Need::QemuImg, Need::OvmfCode, Need::OvmfVars];
/// Everything the test suite touches.
pub const TEST: &[Need] = &[
    Need::Qemu,
    Need::QemuImg,
    Need::OvmfCode,
    Need::OvmfVars,
    Need::Mke2fs,
    Need::E2fsck,
    Need::Sgdisk,
    Need::FsckFat,
    Need::Unsquashfs,
    Need::SystemdDissect,
    Need::Mtools,
    Need::Curl,
    Need::Ip,
    Need::Dnsmasq,
    Need::Veritysetup,
    Need::Genisoimage,
    Need::CloudLocalds,
    Need::IpxeRom,
    Need::Seabios,
    Need::Losetup,
];
/// Size and boot measurements.
pub const BENCH: &[Need] = &[
    Need::Qemu,
    Need::QemuImg,
    Need::OvmfCode,
    Need::OvmfVars,
    Need::Unsquashfs,
    Need::Mtools,
];

fn describe_check(check: &Check) -> String {
    match check {
        Check::Command(c) => format!("command `{c}`"),
        Check::File(f) => format!("file {f}"),
    }
}

fn satisfied(check: &Check) -> bool {
    match check {
        Check::Command(c) => find_command(c).is_some(),
        Check::File(f) => Path::new(f).is_file(),
    }
}

pub fn find_command(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // mke2fs, sgdisk, dnsmasq live in sbin, which a non-root PATH may lack.
    let sbin = ["/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(sbin)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Check every need of every group; install what is missing on Debian.
pub fn ensure(groups: &[&[Need]]) -> Result<()> {
    let mut missing: Vec<(Need, Check, &str)> = Vec::new();
    for &need in groups.iter().flat_map(|g| g.iter()) {
        let (check, package) = need.row();
        if !satisfied(&check) && !missing.iter().any(|m| m.0 == need) {
            missing.push((need, check, package));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let packages: BTreeSet<&str> = missing.iter().map(|m| m.2).collect();
    let list = missing
        .iter()
        .map(|(_, check, pkg)| format!("  {:<40} Debian package {pkg}", describe_check(check)))
        .collect::<Vec<_>>()
        .join("\n");
    if !is_debian() {
        bail!("missing host tools (this is not a Debian host, install them yourself):\n{list}");
    }
    eprintln!(
        "xtask: missing host tools:\n{list}\nxtask: installing {}",
        packages.iter().copied().collect::<Vec<_>>().join(" ")
    );
    apt_get(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(packages.iter().copied());
    apt_get(&install)?;
    let still: Vec<String> = missing
        .iter()
        .filter(|m| !satisfied(&m.1))
        .map(|m| describe_check(&m.1))
        .collect();
    if !still.is_empty() {
        bail!(
            "still missing after installing {packages:?}: {}",
            still.join(", ")
        );
    }
    Ok(())
}

fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists() && find_command("apt-get").is_some()
}

pub fn is_root() -> bool {
    // The effective uid is the second field of "Uid:" in /proc/self/status.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// `apt-get <args>` non-interactively, as root (through sudo if need be).
pub fn apt_get(args: &[&str]) -> Result<()> {
    let mut cmd = if is_root() {
        Command::new("apt-get")
    } else if find_command("sudo").is_some() {
        let mut c = Command::new("sudo");
        if !std::io::stdin().is_terminal() {
            // Nobody can type a password: fail rather than hang.
            c.arg("-n");
        }
        c.args(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        c
    } else {
        bail!(
            "`apt-get {}` needs root: run as root or install sudo",
            args.join(" ")
        );
    };
    cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
    eprintln!("xtask: {}", describe(&cmd));
    run(&mut cmd)
}
