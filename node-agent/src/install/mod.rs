//! Install to disk: a node booted live (USB stick, PXE, or any disk other
//! than the target) whose config has `[install]` writes the whole layout to
//! the disk it names, checks what it wrote and reboots into it.
//!
//! The decision ([`decide`]) is pure, made from what [`Situation`] gathered:
//!
//! - the node runs from the disk an install record on its STATE describes
//!   (the installed node, whose config still says `[install]`): nothing;
//! - this medium installed a disk that is in this machine (a marker on its
//!   STATE): nothing, so a stick left in does not install again;
//! - the target (`install.disk`, or the one disk `install.disk_selector`
//!   matches, never the boot medium, loop or RAM devices) is the disk the
//!   node runs from: nothing;
//! - else the target is checked ([`check_target`]): big enough, writable, and
//!   with no partition table or file system unless `wipe = true`; and not
//!   already holding an install of this very config.
//!
//! Then [`write::write_disk`] writes and verifies, the live medium's STATE
//! gets the marker, and the node reboots. A refusal or failure is logged
//! with what to change, and the node keeps running as it was; it never
//! reboots into a half-written disk. One install at a time.

pub mod blank;
pub mod blockdev;
pub mod disks;
pub mod grow;
pub mod record;
pub mod write;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use caisson_config::Install;
use caisson_devices::SysRoots;
use caisson_disk::payload::{self, InstallManifest};
use caisson_layout::paths::{BASE_CMDLINE, ROOT_DEVICE_HINT};
use caisson_layout::{KernelCmdline, PartitionRole, RootSpec, RootVerity};
use nix::mount::{umount2, MntFlags, MsFlags};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::api::Node;
use crate::mounts::MountSpec;
use crate::power::{self, ShutdownAction, ShutdownReason};
use disks::{Disk, Target};
use record::InstallRecord;

const MIB: u64 = 1 << 20;
/// Where a target's existing STATE is looked at (read-only).
const PROBE_MOUNT: &str = "/run/caisson/install/probe";

static INSTALLING: AtomicBool = AtomicBool::new(false);

/// What the node should do about its `[install]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to install; the sentence says why.
    Nothing(String),
    Install(Disk),
}

/// What the decision is made from.
#[derive(Debug, Clone, Default)]
pub struct Situation {
    pub disks: Vec<Disk>,
    /// Kernel name of the disk the node runs from; None on a boot from
    /// memory (PXE) or a loop device.
    pub boot_disk: Option<String>,
    /// `caisson.root=PARTUUID=…` of this boot.
    pub running_root: Option<Uuid>,
    /// `install/record.json` on this node's STATE.
    pub own_record: Option<InstallRecord>,
    /// `install/installed-to-*.json` on this node's STATE.
    pub markers: Vec<InstallRecord>,
    /// Every partition GUID on this machine's disks.
    pub present: BTreeSet<Uuid>,
}

/// Pure: which disk, or why none.
pub fn decide(install: &Install, s: &Situation) -> Result<Plan, String> {
    if let (Some(r), Some(root)) = (&s.own_record, s.running_root) {
        if r.holds(root) {
            return Ok(Plan::Nothing(format!(
                "this node runs from disk {} ({} when it was installed), which it was installed to: nothing to install",
                r.disk_guid, r.device
            )));
        }
    }
    for m in &s.markers {
        if m.root_a().is_some_and(|g| s.present.contains(&g)) {
            return Ok(Plan::Nothing(format!(
                "this medium already installed disk {} ({} then), and that disk is in this machine: \
                 not installing again (boot from it, or remove [install] from this medium's config)",
                m.disk_guid, m.device
            )));
        }
    }
    match disks::resolve(install, &s.disks, s.boot_disk.as_deref())? {
        Target::Running(d) => Ok(Plan::Nothing(format!(
            "the node runs from {}, the install target: nothing to install",
            d.dev_path.display()
        ))),
        Target::Disk(d) => Ok(Plan::Install(d)),
    }
}

/// Pure: may `disk` be written? `signatures` are what [`blank::signatures`]
/// found on it; `needed` is the layout's size.
pub fn check_target(
    disk: &Disk,
    signatures: &[&str],
    wipe: bool,
    needed: u64,
) -> Result<(), String> {
    if disk.read_only {
        return Err(format!("{disk} is read-only"));
    }
    if disk.size < needed {
        return Err(format!(
            "{disk} is too small: the layout needs {} MiB",
            needed.div_ceil(MIB)
        ));
    }
    if wipe {
        return Ok(());
    }
    let mut holds: Vec<String> = signatures.iter().map(|s| s.to_string()).collect();
    if !disk.partitions.is_empty() {
        holds.push(format!("partitions {}", disk.partitions.join(", ")));
    }
    if holds.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{disk} is not blank: it holds {}. Nothing was written. Set `wipe = true` in [install] to overwrite it",
        holds.join(", ")
    ))
}

/// Has the config an `[install]` (so that boot runs the install phase)?
pub async fn configured(node: &Node) -> bool {
    node.running
        .lock()
        .await
        .current
        .as_ref()
        .is_some_and(|a| a.config.install.is_some())
}

/// After a config was applied from the API: install in the background if
/// it asks for one (the apply's answer goes out first).
pub fn after_apply(node: &Arc<Node>) {
    let node = node.clone();
    tokio::spawn(async move {
        if configured(&node).await {
            if let Err(e) = run(node).await {
                error!("install: {e}");
            }
        }
    });
}

/// The install phase: decide, write, verify, reboot. `Ok(true)`: a reboot
/// into the new disk was requested. `Err`: refused or failed; the node
/// keeps running as it is.
pub async fn run(node: Arc<Node>) -> Result<bool, String> {
    if INSTALLING.swap(true, Ordering::SeqCst) {
        return Err("an install is already running".into());
    }
    let result = run_locked(&node).await;
    INSTALLING.store(false, Ordering::SeqCst);
    result
}

async fn run_locked(node: &Arc<Node>) -> Result<bool, String> {
    let Some(active) = node.running.lock().await.current.clone() else {
        return Ok(false);
    };
    let Some(install) = active.config.install.clone() else {
        return Ok(false);
    };
    let text = active.text.to_string();
    let kernel_args = active.config.kernel.args.clone();
    let state = node.state_mounted().then(|| node.paths.state.clone());
    let power = node.power_requests();
    let job = tokio::task::spawn_blocking(move || {
        install_blocking(&install, &text, &kernel_args, state.as_deref())
    });
    let outcome = job
        .await
        .map_err(|e| format!("the install task died: {e}"))??;
    match outcome {
        Some(line) => {
            info!("{line}");
            let request = power::Request {
                action: ShutdownAction::Reboot,
                reason: ShutdownReason::Install,
            };
            if power.send(request).await.is_err() {
                error!("install: the disk is ready, but the shutdown path is gone: reboot by hand");
            }
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Everything off the async runtime. `Some(line)`: installed, reboot.
fn install_blocking(
    install: &Install,
    config_text: &str,
    kernel_args: &[String],
    state: Option<&Path>,
) -> Result<Option<String>, String> {
    let started = Instant::now();
    let cmdline =
        KernelCmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let situation = gather(state, &cmdline)?;
    let target = match decide(install, &situation)? {
        Plan::Nothing(why) => {
            info!("install: {why}");
            return Ok(None);
        }
        Plan::Install(disk) => disk,
    };
    let how = if install.disk.is_some() {
        "install.disk"
    } else {
        "install.disk_selector"
    };
    info!("install: target {target} (from {how})");
    let source = source(&cmdline)?;
    let needed = caisson_layout::DiskPlan::new("size", source.manifest.disk.into())
        .map_err(|e| e.to_string())?
        .size;
    let sigs = read_signatures(&target.dev_path)?;
    check_target(&target, &sigs, install.wipe, needed)?;
    if install.wipe && (!sigs.is_empty() || !target.partitions.is_empty()) {
        warn!(
            "install: wipe = true: overwriting {} (it holds {})",
            target.dev_path.display(),
            if sigs.is_empty() {
                "partitions".to_string()
            } else {
                sigs.join(", ")
            }
        );
    }
    let config_sha = hex(&Sha256::digest(config_text.as_bytes()));
    if let Some(r) = probe_installed(&target) {
        if r.config_sha256 == config_sha {
            info!(
                "install: {} already holds an install of this config (disk {}, version {}): not installing again; boot from it",
                target.dev_path.display(),
                r.disk_guid,
                r.version
            );
            return Ok(None);
        }
    }
    let installed_from = match &situation.boot_disk {
        Some(d) => format!("live medium /dev/{d}"),
        None => format!("{} (no boot disk)", source.root_device.display()),
    };
    let req = write::Request {
        target: &target,
        config_text,
        kernel_args,
        installed_from,
        mount_dir: Path::new(write::STATE_MOUNT),
    };
    let mut say = |line: String| info!("{line}");
    let written = write::write_disk(&source, &req, &mut say).map_err(|e| {
        format!(
            "FAILED at {e}. The node keeps running from its current medium; nothing boots from {}",
            target.dev_path.display()
        )
    })?;
    if let Some(state) = state {
        if let Err(e) = record::write_marker(state, &written.record) {
            warn!("install: the marker on this medium's STATE: {e}; booting this medium again may install again");
        }
    }
    Ok(Some(format!(
        "install: done in {:.1} s: {} is disk {} (ROOT-A {}); rebooting into it",
        started.elapsed().as_secs_f64(),
        target.dev_path.display(),
        written.record.disk_guid,
        written
            .record
            .root_a()
            .map(|g| g.to_string())
            .unwrap_or_default()
    )))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The machine as it is now.
fn gather(state: Option<&Path>, cmdline: &KernelCmdline) -> Result<Situation, String> {
    let roots = SysRoots::default();
    let disks = disks::inventory(&roots)?;
    let root_name = std::fs::read_to_string(ROOT_DEVICE_HINT)
        .map(|t| t.trim().to_string())
        .ok();
    let devices = caisson_devices::list_block_devices().map_err(|e| e.to_string())?;
    let boot_disk = root_name.as_ref().and_then(|name| {
        devices
            .iter()
            .find(|d| &d.name == name)
            .and_then(|d| d.partition.as_ref().map(|p| p.parent.clone()))
    });
    let running_root = caisson_layout::CaissonParams::from_cmdline(cmdline)
        .ok()
        .and_then(|p| match p.root {
            RootSpec::PartUuid(u) => Some(u),
            _ => None,
        });
    let mut present = BTreeSet::new();
    for d in &disks {
        if let Ok(entries) = caisson_devices::read_gpt(&d.dev_path) {
            present.extend(entries.into_iter().map(|e| e.guid));
        }
    }
    Ok(Situation {
        disks,
        boot_disk,
        running_root,
        own_record: state.and_then(record::read_record),
        markers: state.map(record::read_markers).unwrap_or_default(),
        present,
    })
}

/// What the running node copies from: its root's backing device and
/// verity parameters, the payload and its manifest, the base command line.
fn source(cmdline: &KernelCmdline) -> Result<write::Source, String> {
    let params = caisson_layout::CaissonParams::from_cmdline(cmdline)
        .map_err(|e| format!("the kernel command line: {e}"))?;
    let verity = match params.verity {
        Some(RootVerity::Verified(v)) => v,
        _ => {
            return Err("this boot's root is not verified (no caisson.verity parameters): its size is unknown, so it cannot be copied".into())
        }
    };
    let root_name = std::fs::read_to_string(ROOT_DEVICE_HINT).map_err(|e| {
        format!("{ROOT_DEVICE_HINT}: {e}: which device holds the running root is unknown")
    })?;
    let payload_dir = PathBuf::from(payload::INSTALL_DIR);
    let manifest_path = payload_dir.join(payload::MANIFEST);
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        format!(
            "{}: {e}: this image carries no install payload (build it with an image-builder that writes {})",
            manifest_path.display(),
            payload::INSTALL_DIR
        )
    })?;
    let manifest = InstallManifest::parse(&text).map_err(|e| e.to_string())?;
    let base_cmdline =
        crate::bootentry::read_base(Path::new(BASE_CMDLINE)).map_err(|e| e.to_string())?;
    Ok(write::Source {
        root_device: Path::new("/dev").join(root_name.trim()),
        verity,
        payload_dir,
        manifest,
        base_cmdline,
    })
}

/// What [`blank::signatures`] finds at the start and the end of `dev`.
pub fn read_signatures(dev: &Path) -> Result<Vec<&'static str>, String> {
    let shown = dev.display();
    let mut f = File::open(dev).map_err(|e| format!("{shown}: {e}"))?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("{shown}: {e}"))?;
    let read_at = |f: &mut File, at: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| format!("{shown}: reading {len} bytes at {at}: {e}"))?;
        Ok(buf)
    };
    let head_len = blank::HEAD_BYTES.min(usize::try_from(size).unwrap_or(usize::MAX));
    let tail_len = blank::TAIL_BYTES.min(usize::try_from(size).unwrap_or(usize::MAX));
    let head = read_at(&mut f, 0, head_len)?;
    let tail = read_at(&mut f, size - tail_len as u64, tail_len)?;
    Ok(blank::signatures(&head, &tail))
}

/// The install record on `disk`'s STATE, if it holds a Caisson layout:
/// mounted read-only without replaying its journal, for one file.
fn probe_installed(disk: &Disk) -> Option<InstallRecord> {
    let entries = caisson_devices::read_gpt(&disk.dev_path).ok()?;
    let state = entries
        .iter()
        .find(|e| e.label == PartitionRole::State.label())?;
    let devices = caisson_devices::list_block_devices().ok()?;
    let dev = devices.iter().find(|d| {
        d.partition
            .as_ref()
            .is_some_and(|p| p.parent == disk.name && p.number == state.number)
    })?;
    std::fs::create_dir_all(PROBE_MOUNT).ok()?;
    let source = dev.dev_path.display().to_string();
    MountSpec {
        source: &source,
        target: PROBE_MOUNT,
        fs_type: "ext4",
        flags: MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        data: Some("noload"),
    }
    .mount()
    .ok()?;
    let record = record::read_record(Path::new(PROBE_MOUNT));
    if let Err(e) = umount2(PROBE_MOUNT, MntFlags::MNT_DETACH) {
        warn!("install: unmounting {PROBE_MOUNT}: {e}");
    }
    record
}

#[cfg(test)]
mod tests {
    use caisson_config::{DiskSelector, DiskType};

    use super::*;

    fn disk(name: &str, gib: u64) -> Disk {
        Disk {
            name: name.into(),
            dev_path: PathBuf::from(format!("/dev/{name}")),
            size: gib << 30,
            model: None,
            serial: Some(format!("serial-{name}")),
            disk_type: DiskType::Virtio,
            removable: false,
            read_only: false,
            partitions: Vec::new(),
        }
    }

    fn rec(root_a: u128) -> InstallRecord {
        InstallRecord {
            disk_guid: Uuid::from_u128(root_a + 100),
            partitions: [
                ("ROOT-A".to_string(), Uuid::from_u128(root_a)),
                ("ROOT-B".to_string(), Uuid::from_u128(root_a + 1)),
            ]
            .into_iter()
            .collect(),
            device: "/dev/vdb".into(),
            disk_size: 4 << 30,
            installed_at: 0,
            version: "0.1.0".into(),
            config_sha256: String::new(),
            installed_from: "live medium /dev/vda".into(),
        }
    }

    fn to_vdb() -> Install {
        Install {
            disk: Some("/dev/vdb".into()),
            disk_selector: None,
            wipe: false,
        }
    }

    fn usb_boot() -> Situation {
        let mut usb = disk("vda", 5);
        usb.partitions = (1..=5).map(|i| format!("vda{i}")).collect();
        Situation {
            disks: vec![usb, disk("vdb", 4)],
            boot_disk: Some("vda".into()),
            running_root: Some(Uuid::from_u128(7)),
            ..Default::default()
        }
    }

    #[test]
    fn a_live_boot_installs_to_the_named_disk() {
        assert!(matches!(decide(&to_vdb(), &usb_boot()), Ok(Plan::Install(d)) if d.name == "vdb"));
    }

    #[test]
    fn the_installed_node_and_a_stick_left_in_do_nothing() {
        // Booted from the installed disk: its own record holds the root.
        let mut s = usb_boot();
        s.running_root = Some(Uuid::from_u128(43));
        s.own_record = Some(rec(42));
        let Ok(Plan::Nothing(why)) = decide(&to_vdb(), &s) else {
            panic!()
        };
        assert!(why.contains("which it was installed to"), "{why}");
        // Same with a selector that would match no other disk.
        let sel = Install {
            disk: None,
            disk_selector: Some(DiskSelector {
                size: Some("4GiB".into()),
                ..Default::default()
            }),
            wipe: false,
        };
        assert!(matches!(decide(&sel, &s), Ok(Plan::Nothing(_))));
        // The stick boots again with the installed disk present.
        let mut s = usb_boot();
        s.markers = vec![rec(42)];
        s.present = [Uuid::from_u128(42)].into_iter().collect();
        let Ok(Plan::Nothing(why)) = decide(&to_vdb(), &s) else {
            panic!()
        };
        assert!(why.contains("already installed disk"), "{why}");
        // In another machine (the disk is not there) the stick installs.
        s.present.clear();
        assert!(matches!(decide(&to_vdb(), &s), Ok(Plan::Install(_))));
    }

    #[test]
    fn naming_the_boot_disk_means_running_from_it() {
        let mut s = usb_boot();
        s.boot_disk = Some("vdb".into());
        assert!(
            matches!(decide(&to_vdb(), &s), Ok(Plan::Nothing(w)) if w.contains("runs from /dev/vdb"))
        );
    }

    #[test]
    fn a_disk_with_partitions_or_signatures_is_refused_unless_wipe() {
        let needed = 3 << 30;
        let mut d = disk("vdb", 4);
        assert!(check_target(&d, &[], false, needed).is_ok());
        let e = check_target(&d, &["an ext2/3/4 file system"], false, needed).unwrap_err();
        assert!(
            e.contains("holds an ext2/3/4 file system. Nothing was written. Set `wipe = true`"),
            "{e}"
        );
        d.partitions = vec!["vdb1".into()];
        let e = check_target(&d, &["a GPT partition table"], false, needed).unwrap_err();
        assert!(e.contains("a GPT partition table, partitions vdb1"), "{e}");
        assert!(check_target(&d, &["a GPT partition table"], true, needed).is_ok());
        // Too small or read-only: refused even with wipe.
        let e = check_target(&disk("vdc", 1), &[], true, needed).unwrap_err();
        assert!(e.contains("too small: the layout needs 3072 MiB"), "{e}");
        let mut ro = disk("vdd", 8);
        ro.read_only = true;
        assert!(check_target(&ro, &[], true, needed)
            .unwrap_err()
            .contains("read-only"));
    }
}
