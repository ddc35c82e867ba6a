//! Writing the whole layout onto the target, with `caisson-disk` (the code
//! the builder writes images with), then checking what was written:
//!
//! 1. payload: the install files' sha256 against the image's manifest;
//! 2. the old tables and signatures zeroed (first and last MiB, ROOT-B's
//!    first MiB), STATE's and DATA's ranges zeroed (BLKZEROOUT);
//! 3. ESP: FAT32, systemd-boot, loader.conf, slot A's blessed entry naming
//!    the new ROOT-A, the running root's verity parameters and kernel.args;
//! 4. ROOT-A: the running root's squashfs + hash area copied from its
//!    backing device; the data's dm-verity root hash must be the one the
//!    node booted with;
//! 5. STATE and DATA from the zstd templates (exactly the manifest's size);
//! 6. GPT with fresh GUIDs, fsync, the kernel re-reads the table;
//! 7. STATE mounted: the config committed as the config store does, plus
//!    the install record; unmounted;
//! 8. page cache dropped, then read back: ROOT-A's sha256, every ESP file,
//!    the GPT (with our own reader).
//!
//! Any failure after the first write erases the target's partition tables
//! again, so firmware never boots a half-written disk.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use caisson_disk::esp::{self, Content, EspInputs, EspPlan};
use caisson_disk::payload::{self, InstallManifest};
use caisson_disk::{DiskWriter, Fill};
use caisson_layout::{DiskPlan, PartitionRole, RootVerity, VerityParams};
use caisson_verity::{Geometry, TreeBuilder};
use nix::mount::{umount2, MntFlags, MsFlags};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::blockdev;
use super::disks::Disk;
use super::record::{self, InstallRecord};
use crate::mounts::MountSpec;
use crate::store::ConfigStore;

const MIB: u64 = 1 << 20;
/// Where the new disk's STATE is mounted while the config is committed.
pub const STATE_MOUNT: &str = "/run/caisson/install/state";

/// What the running node gives the installer.
#[derive(Debug, Clone)]
pub struct Source {
    /// The running root's backing device (a partition, or a loop device on
    /// a live boot), e.g. `/dev/vda2`.
    pub root_device: PathBuf,
    pub verity: VerityParams,
    /// `/usr/lib/caisson/install`.
    pub payload_dir: PathBuf,
    pub manifest: InstallManifest,
    /// The image's base command line words (`/usr/lib/caisson/cmdline`).
    pub base_cmdline: Vec<String>,
}

impl Source {
    /// The root image's bytes: the data blocks (the hash offset) and the
    /// hash area after them (the verity superblock's block and the tree).
    pub fn root_len(&self) -> u64 {
        let data_blocks = self.verity.hash_offset / caisson_verity::BLOCK_SIZE;
        self.verity.hash_offset + Geometry::new(data_blocks).hash_area_size()
    }

    fn payload(&self, name: &str) -> PathBuf {
        self.payload_dir.join(name)
    }
}

/// One install.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub target: &'a Disk,
    pub config_text: &'a str,
    pub kernel_args: &'a [String],
    /// For the record: `live medium /dev/sda`, `memory`.
    pub installed_from: String,
    /// Where the new STATE is mounted for the commit ([`STATE_MOUNT`]).
    pub mount_dir: &'a Path,
}

#[derive(Debug)]
pub struct InstallError {
    pub step: &'static str,
    pub message: String,
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

impl std::error::Error for InstallError {}

/// Timed steps, each reported as `install: <step>: <detail> (<N> ms)`.
struct Steps<'a> {
    say: &'a mut dyn FnMut(String),
    done: Vec<(&'static str, Duration)>,
}

impl Steps<'_> {
    fn run<T>(
        &mut self,
        step: &'static str,
        f: impl FnOnce() -> Result<(T, String), String>,
    ) -> Result<T, InstallError> {
        let started = Instant::now();
        let (value, detail) = f().map_err(|message| InstallError { step, message })?;
        let took = started.elapsed();
        (self.say)(format!(
            "install: {step}: {detail} ({} ms)",
            took.as_millis()
        ));
        self.done.push((step, took));
        Ok(value)
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub record: InstallRecord,
    pub steps: Vec<(&'static str, Duration)>,
    pub root_bytes: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut h)?;
    Ok((n, hex(&h.finalize())))
}

/// A reader that hashes what passes: sha256 of everything, and the
/// dm-verity tree of the first `verity_len` bytes when asked.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
    tree: Option<(TreeBuilder, u64)>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = buf.get(..n).unwrap_or_default();
        self.sha.update(got);
        if let Some((tree, left)) = &mut self.tree {
            let take = usize::try_from((*left).min(n as u64)).unwrap_or(n);
            tree.update(got.get(..take).unwrap_or_default());
            *left -= take as u64;
        }
        Ok(n)
    }
}

/// Write the layout to `req.target` and check it. On success the disk is
/// complete and durable; on failure its partition tables are erased.
pub fn write_disk(
    src: &Source,
    req: &Request<'_>,
    say: &mut dyn FnMut(String),
) -> Result<Written, InstallError> {
    let mut steps = Steps {
        say,
        done: Vec::new(),
    };
    steps.run("payload", || check_payload(src))?;
    let dev_name = req.target.dev_path.display().to_string();
    let open_err = |e: io::Error| InstallError {
        step: "open",
        message: match e.raw_os_error() {
            Some(nix::libc::EBUSY) => {
                format!("{dev_name} is in use (mounted, or held by the kernel): {e}")
            }
            _ => format!("{dev_name}: {e}"),
        },
    };
    // O_EXCL on a block device fails while any of it is mounted or held.
    // Only a check: held for the whole install, it would keep the new
    // STATE from being mounted.
    drop(
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(&req.target.dev_path)
            .map_err(open_err)?,
    );
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(&req.target.dev_path)
        .map_err(open_err)?;
    let mut wrote = false;
    let mut state_mounted = false;
    let result = write_and_check(
        src,
        req,
        &mut file,
        &mut steps,
        &mut wrote,
        &mut state_mounted,
    );
    if let Err(e) = &result {
        if state_mounted {
            let _ = umount2(req.mount_dir, MntFlags::MNT_DETACH);
        }
        if wrote {
            let said = match scrub(&file) {
                Ok(()) => format!(
                    "install: FAILED at {e}; the partition tables on {dev_name} were erased so that it never boots half-written"
                ),
                Err(s) => format!(
                    "install: FAILED at {e}; erasing the partition tables on {dev_name} failed too ({s}): do not boot from it"
                ),
            };
            (steps.say)(said);
        }
    }
    let record = result?;
    Ok(Written {
        record,
        steps: steps.done,
        root_bytes: src.root_len(),
    })
}

/// The payload's files against the manifest, before anything is written.
fn check_payload(src: &Source) -> Result<((), String), String> {
    let mut total = 0;
    for (name, want) in &src.manifest.files {
        let path = src.payload(name);
        let (size, sha) = sha256_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if size != want.size || sha != want.sha256 {
            return Err(format!(
                "{} is {size} bytes with sha256 {sha}; the image's manifest says {} bytes, sha256 {}",
                path.display(),
                want.size,
                want.sha256
            ));
        }
        total += size;
    }
    Ok((
        (),
        format!(
            "{} files ({} MiB) match the image's manifest (version {})",
            src.manifest.files.len(),
            total.div_ceil(MIB),
            src.manifest.version
        ),
    ))
}

fn write_and_check(
    src: &Source,
    req: &Request<'_>,
    file: &mut File,
    steps: &mut Steps<'_>,
    wrote: &mut bool,
    state_mounted: &mut bool,
) -> Result<InstallRecord, InstallError> {
    let dev_name = req.target.dev_path.display().to_string();
    let (size, block) = steps.run("geometry", || {
        let size = blockdev::size(file).map_err(|e| format!("BLKGETSIZE64 {dev_name}: {e}"))?;
        let block =
            blockdev::logical_block_size(file).map_err(|e| format!("BLKSSZGET {dev_name}: {e}"))?;
        Ok((
            (size, block),
            format!(
                "{dev_name}: {} MiB, {block}-byte logical blocks",
                size / MIB
            ),
        ))
    })?;
    // Fresh GUIDs: a live stick and the disk it installed never share PARTUUIDs.
    let identity = format!("install-{}", Uuid::new_v4());
    let plan = DiskPlan::new(&identity, src.manifest.disk.into()).map_err(|e| InstallError {
        step: "plan",
        message: e.to_string(),
    })?;
    let part = |role: PartitionRole| {
        plan.partition(role).cloned().ok_or_else(|| InstallError {
            step: "plan",
            message: format!("the plan has no {}", role.label()),
        })
    };
    let (root_a, root_b, state, data) = (
        part(PartitionRole::RootA)?,
        part(PartitionRole::RootB)?,
        part(PartitionRole::State)?,
        part(PartitionRole::Data)?,
    );
    let mut disk =
        DiskWriter::new(&mut *file, dev_name.clone(), plan.clone(), block).map_err(|e| {
            InstallError {
                step: "plan",
                message: e.to_string(),
            }
        })?;

    *wrote = true;
    let zeroed = steps.run("zero", || {
        let dev: &File = disk.device_mut();
        let mut ranges = vec![
            (0, MIB),
            (size - MIB, MIB),
            (root_b.offset, MIB),
            (state.offset, state.size),
            (data.offset, data.size),
        ];
        ranges.sort_unstable();
        let mut zeroed = true;
        for (start, len) in &ranges {
            if let Err(e) = blockdev::zero_range(dev, *start, *len) {
                tracing::warn!("install: BLKZEROOUT {dev_name} at {start}+{len}: {e}; writing every byte instead");
                zeroed = false;
                break;
            }
        }
        let total: u64 = ranges.iter().map(|(_, l)| l).sum();
        Ok((zeroed, format!("{} MiB of old tables and the STATE and DATA ranges zeroed", total / MIB)))
    })?;
    let template_fill = if zeroed { Fill::SkipZeros } else { Fill::All };

    let verity = RootVerity::Verified(src.verity.clone());
    let mut cmdline = src.base_cmdline.clone();
    cmdline.extend(req.kernel_args.iter().cloned());
    let esp_plan = EspPlan::new(EspInputs {
        version: &src.manifest.version,
        root_a_partuuid: root_a.part_guid,
        verity,
        cmdline: &cmdline,
        bootloader: Content::host_file(&src.payload(payload::BOOTLOADER)).map_err(|e| {
            InstallError {
                step: "esp",
                message: e.to_string(),
            }
        })?,
        kernel: Content::host_file(&src.payload(payload::KERNEL)).map_err(|e| InstallError {
            step: "esp",
            message: e.to_string(),
        })?,
        initrd: Content::host_file(&src.payload(payload::INITRD)).map_err(|e| InstallError {
            step: "esp",
            message: e.to_string(),
        })?,
    });
    steps.run("esp", || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let volume = disk.volume(PartitionRole::Esp).map_err(|e| e.to_string())?;
        esp_plan
            .write(volume, esp::volume_id(&identity), now)
            .map_err(|e| e.to_string())?;
        Ok((
            (),
            format!(
                "FAT32 with systemd-boot, the slot a entry (caisson.root=PARTUUID={}) and kernel + initrd ({} MiB)",
                root_a.part_guid,
                esp_plan.payload_bytes().div_ceil(MIB)
            ),
        ))
    })?;

    let root_len = src.root_len();
    let root_sha = steps.run("root-a", || copy_root(src, &mut disk, root_len))?;

    for (role, template) in [
        (PartitionRole::State, "STATE"),
        (PartitionRole::Data, "DATA"),
    ] {
        let step = if role == PartitionRole::State {
            "state"
        } else {
            "data"
        };
        steps.run(step, || {
            fill_template(src, &mut disk, role, template, template_fill)
        })?;
    }

    steps.run("gpt", || {
        disk.write_gpt().map_err(|e| e.to_string())?;
        disk.sync().map_err(|e| e.to_string())?;
        let dev: &File = disk.device_mut();
        blockdev::reread_partitions(dev).map_err(|e| format!("BLKRRPART {dev_name}: {e}"))?;
        Ok((
            (),
            format!(
                "disk {} with 5 partitions, fsynced; the kernel re-read it",
                plan.disk_guid
            ),
        ))
    })?;

    let record = InstallRecord {
        disk_guid: plan.disk_guid,
        partitions: plan
            .partitions
            .iter()
            .map(|p| (p.label.to_string(), p.part_guid))
            .collect(),
        device: dev_name.clone(),
        disk_size: size,
        installed_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        version: src.manifest.version.clone(),
        config_sha256: hex(&Sha256::digest(req.config_text.as_bytes())),
        installed_from: req.installed_from.clone(),
    };
    steps.run("config", || {
        commit_config(req, &plan, &record, state_mounted).map(|detail| ((), detail))
    })?;

    steps.run("verify", || {
        let dev: &File = disk.device_mut();
        blockdev::flush_buffers(dev).map_err(|e| format!("BLKFLSBUF {dev_name}: {e}"))?;
        let back = disk
            .read_back_sha256(PartitionRole::RootA, root_len)
            .map_err(|e| e.to_string())?;
        if hex(&back) != root_sha {
            return Err(format!(
                "ROOT-A reads back as sha256 {}, but {root_sha} was copied",
                hex(&back)
            ));
        }
        let volume = disk.volume(PartitionRole::Esp).map_err(|e| e.to_string())?;
        esp_plan
            .verify_with(volume, &known_esp_hashes(src))
            .map_err(|e| e.to_string())?;
        check_gpt(&req.target.dev_path, &plan)?;
        Ok((
            (),
            format!(
                "ROOT-A sha256 {}… matches its source; {} ESP files match; the GPT reads back with the new GUIDs",
                root_sha.get(..12).unwrap_or(&root_sha),
                esp_plan.files.len()
            ),
        ))
    })?;
    Ok(record)
}

/// The manifest's sha256 of the payload files the ESP gets, by ESP path:
/// checked against the files in the payload step, so not hashed again.
fn known_esp_hashes(src: &Source) -> std::collections::BTreeMap<String, [u8; 32]> {
    let slot = caisson_layout::Slot::A.esp_dir();
    [
        (esp::BOOTLOADER_PATH.to_string(), payload::BOOTLOADER),
        (format!("{slot}/vmlinuz"), payload::KERNEL),
        (format!("{slot}/initrd"), payload::INITRD),
    ]
    .into_iter()
    .filter_map(|(path, name)| {
        let hex = &src.manifest.files.get(name)?.sha256;
        let bytes = hex_decode(hex)?;
        Some((path, <[u8; 32]>::try_from(bytes).ok()?))
    })
    .collect()
}

/// ROOT-A from the running root's backing device: sha256 of every byte,
/// and the data's dm-verity root hash, which must be the booted one.
fn copy_root(
    src: &Source,
    disk: &mut DiskWriter<&mut File>,
    root_len: u64,
) -> Result<(String, String), String> {
    let dev = &src.root_device;
    let input = File::open(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    let have = blockdev::size(&input)
        .or_else(|_| input.metadata().map(|m| m.len()))
        .map_err(|e| format!("{}: {e}", dev.display()))?;
    if have < root_len {
        return Err(format!(
            "the running root {} is {have} bytes, but its verity parameters say the image is {root_len}",
            dev.display()
        ));
    }
    let salt = hex_decode(&src.verity.salt)
        .ok_or_else(|| format!("caisson.verity.salt {:?} is not hex", src.verity.salt))?;
    let tree = TreeBuilder::new(&salt).map_err(|e| e.to_string())?;
    let mut hashing = Hashing {
        inner: input,
        sha: Sha256::new(),
        tree: Some((tree, src.verity.hash_offset)),
    };
    disk.fill(
        PartitionRole::RootA,
        "the running root (squashfs + dm-verity hash area)",
        &mut hashing,
        root_len,
        Fill::All,
    )
    .map_err(|e| e.to_string())?;
    let sha = hex(&hashing.sha.finalize());
    let root_hash = match hashing.tree {
        Some((tree, _)) => tree.finish().map_err(|e| e.to_string())?.root_hash_hex(),
        None => String::new(),
    };
    if !root_hash.eq_ignore_ascii_case(&src.verity.root_hash) {
        return Err(format!(
            "the root copied from {} has dm-verity root hash {root_hash}, but the node booted with {}: the source is not the running root",
            dev.display(),
            src.verity.root_hash
        ));
    }
    Ok((
        sha.clone(),
        format!(
            "{} MiB from {} (dm-verity root hash {}… as booted)",
            root_len.div_ceil(MIB),
            dev.display(),
            root_hash.get(..12).unwrap_or(&root_hash)
        ),
    ))
}

// `is_multiple_of` is Rust 1.87; the workspace's minimum is 1.80.
#[allow(clippy::manual_is_multiple_of)]
fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}

/// The template expanded into its partition. The compressed file's sha256
/// was checked against the manifest in the payload step and zstd is
/// deterministic, so the expansion is only checked for its length (hashing
/// 384 MiB of almost-zeros again took ~20 s under TCG).
fn fill_template(
    src: &Source,
    disk: &mut DiskWriter<&mut File>,
    role: PartitionRole,
    label: &str,
    fill: Fill,
) -> Result<((), String), String> {
    let t = src.manifest.template(label).map_err(|e| e.to_string())?;
    let path = src.payload(&t.file);
    let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut decoder =
        zstd::stream::read::Decoder::new(file).map_err(|e| format!("{}: {e}", path.display()))?;
    disk.fill(
        role,
        &format!("the {label} template {}", path.display()),
        &mut decoder,
        t.size,
        fill,
    )
    .map_err(|e| e.to_string())?;
    let mut more = [0u8; 1];
    if decoder
        .read(&mut more)
        .map_err(|e| format!("{}: {e}", path.display()))?
        != 0
    {
        return Err(format!(
            "{} expands to more than the manifest's {} bytes",
            path.display(),
            t.size
        ));
    }
    Ok(((), format!("ext4 from {} ({} MiB)", t.file, t.size / MIB)))
}

/// Mount the new STATE, commit the config as the config store does, write
/// the install record, unmount.
fn commit_config(
    req: &Request<'_>,
    plan: &DiskPlan,
    record: &InstallRecord,
    state_mounted: &mut bool,
) -> Result<String, String> {
    let part = partition_device(req.target, plan, PartitionRole::State)?;
    let mount = req.mount_dir;
    let shown = mount.display().to_string();
    std::fs::create_dir_all(mount).map_err(|e| format!("create {shown}: {e}"))?;
    let source = part.display().to_string();
    MountSpec {
        source: &source,
        target: &shown,
        fs_type: "ext4",
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        data: None,
    }
    .mount()
    .map_err(|e| e.to_string())?;
    *state_mounted = true;
    let store = ConfigStore::new(mount);
    store
        .commit(req.config_text, None)
        .map_err(|e| e.to_string())?;
    record::write_record(mount, record).map_err(|e| e.to_string())?;
    let back = store.current().map_err(|e| e.to_string())?;
    if back.as_deref() != Some(req.config_text) {
        return Err(format!(
            "{} does not read back as written",
            store.current_path().display()
        ));
    }
    umount2(mount, MntFlags::empty()).map_err(|e| format!("umount {shown}: {e}"))?;
    *state_mounted = false;
    Ok(format!(
        "the machine config ({} bytes) and the install record committed to STATE on {source}",
        req.config_text.len()
    ))
}

/// The kernel's device for `role`'s partition on `target`, once it appears
/// after BLKRRPART (devtmpfs makes the node). A kernel that did not pick
/// the new table up (no GPT parser for this device) is given the plan's
/// partitions with BLKPG_ADD_PARTITION.
fn partition_device(
    target: &Disk,
    plan: &DiskPlan,
    role: PartitionRole,
) -> Result<PathBuf, String> {
    let number = role.number();
    if let Some(dev) = wait_for_partition(&target.name, number, Duration::from_secs(3))? {
        return Ok(dev);
    }
    tracing::warn!(
        "install: the kernel shows no partition {number} on {} after BLKRRPART; adding the new table's partitions with BLKPG",
        target.dev_path.display()
    );
    let disk =
        File::open(&target.dev_path).map_err(|e| format!("{}: {e}", target.dev_path.display()))?;
    for p in &plan.partitions {
        blockdev::add_partition(&disk, p.role.number(), p.offset, p.size).map_err(|e| {
            format!(
                "BLKPG_ADD_PARTITION {} {}: {e}",
                target.dev_path.display(),
                p.role.number()
            )
        })?;
    }
    wait_for_partition(&target.name, number, Duration::from_secs(10))?.ok_or_else(|| {
        format!(
            "partition {number} of {} did not appear within 10 s",
            target.dev_path.display()
        )
    })
}

fn wait_for_partition(disk: &str, number: u32, wait: Duration) -> Result<Option<PathBuf>, String> {
    let deadline = Instant::now() + wait;
    loop {
        let devices = caisson_devices::list_block_devices().map_err(|e| e.to_string())?;
        let found = devices.into_iter().find(|d| {
            d.partition
                .as_ref()
                .is_some_and(|p| p.parent == disk && p.number == number)
        });
        if let Some(dev) = found {
            if dev.dev_path.exists() {
                return Ok(Some(dev.dev_path));
            }
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The table as our own GPT reader sees it must be the plan.
fn check_gpt(dev: &Path, plan: &DiskPlan) -> Result<(), String> {
    let entries = caisson_devices::read_gpt(dev).map_err(|e| e.to_string())?;
    for p in &plan.partitions {
        let ok = entries
            .iter()
            .any(|e| e.number == p.role.number() && e.guid == p.part_guid && e.label == p.label);
        if !ok {
            return Err(format!(
                "the GPT read back from {} has no entry {} {} {}",
                dev.display(),
                p.role.number(),
                p.label,
                p.part_guid
            ));
        }
    }
    if entries.len() != plan.partitions.len() {
        return Err(format!(
            "the GPT read back from {} has {} entries, not {}",
            dev.display(),
            entries.len(),
            plan.partitions.len()
        ));
    }
    Ok(())
}

/// Erase both GPT copies and the protective MBR (and the first and last
/// MiB with them), fsync, and have the kernel drop the partitions.
fn scrub(file: &File) -> io::Result<()> {
    let size = blockdev::size(file)?;
    blockdev::zero_range(file, 0, MIB.min(size))?;
    if size > 2 * MIB {
        blockdev::zero_range(file, size - MIB, MIB)?;
    }
    file.sync_all()?;
    let _ = blockdev::reread_partitions(file);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_length_is_the_hash_offset_plus_the_hash_area() {
        let src = |hash_offset: u64| Source {
            root_device: PathBuf::new(),
            verity: VerityParams {
                root_hash: String::new(),
                salt: String::new(),
                hash_offset,
            },
            payload_dir: PathBuf::new(),
            manifest: InstallManifest {
                format: 1,
                version: String::new(),
                kernel_release: String::new(),
                disk: caisson_layout::SizesMiB::default().into(),
                files: Default::default(),
                templates: Default::default(),
            },
            base_cmdline: Vec::new(),
        };
        // 2 data blocks: one tree block; plus the superblock's block.
        assert_eq!(src(8192).root_len(), 8192 + 2 * 4096);
        // 80 MiB of data: 20480 blocks → 160 level-0 blocks + 2 + 1.
        assert_eq!(
            src(80 << 20).root_len(),
            (80 << 20) + (1 + 160 + 2 + 1) * 4096
        );
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex_decode("00ff10").unwrap(), [0, 255, 16]);
        assert_eq!(hex(&[0, 255, 16]), "00ff10");
        assert!(hex_decode("abc").is_none() && hex_decode("zz").is_none());
    }
}
