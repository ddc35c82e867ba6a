//! Writing a bundle into the inactive slot: the order of work that makes a
//! power cut at any point harmless.
//!
//! 1. Read the header and verify the manifest's signature before anything
//!    is written.
//! 2. Check that the slot may be written (the running slot is known good),
//!    that the new entry will be tried first, that the root fits its
//!    partition and the kernel and initrd fit the ESP.
//! 3. Remove the slot's old entry (nothing may boot a half-written slot).
//! 4. Stream the root into the slot's partition, hashing every byte; fsync.
//! 5. Stream kernel and initrd to temporary files in the slot's ESP
//!    directory, hashing; fsync; rename into place; fsync the directory.
//! 6. Check the bundle's trailer.
//! 7. Only then write the entry, last, with a `+N` boot counter.
//!
//! A mismatch at any step returns an error naming it, and the slot is left
//! without an entry: the node keeps booting the running slot.
//!
//! This module works on paths (a mounted ESP, a partition device or, in the
//! tests, plain files); [`super`] finds and mounts the real ones.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caisson_bundle::{ArtifactKind, BundleError, BundleReader, Manifest, TrustPolicy};
use caisson_layout::boot_entry::{BootEntry, Counter, ENTRIES_DIR, ENTRY_TITLE};
use caisson_layout::cmdline::DEFAULT_ROOTWAIT;
use caisson_layout::slots::{self, EntryState};
use caisson_layout::{CaissonParams, RootSpec, RootVerity, Slot};
use thiserror::Error;
use uuid::Uuid;

/// Tries an upgraded slot gets before systemd-boot gives up on it.
pub const BOOT_TRIES: u32 = 3;
/// Room left free on the ESP beyond the new kernel and initrd.
pub const ESP_MARGIN: u64 = 1 << 20;
const COPY_BUFFER: usize = 1 << 20;
const KERNEL_FILE: &str = "vmlinuz";
const INITRD_FILE: &str = "initrd";
const NEW_SUFFIX: &str = ".new";

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("{0}")]
    Bundle(#[from] BundleError),
    #[error("upgrade refused: {0}")]
    Refused(String),
    #[error("upgrade: {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

/// Where the slot's parts go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The mounted ESP.
    pub esp: PathBuf,
    /// The slot the node runs; never written.
    pub running: Slot,
    /// The slot's root partition (a block device; a file in tests).
    pub root_device: PathBuf,
    pub root_capacity: u64,
    pub root_partuuid: Uuid,
    /// The machine config's `kernel.args`, appended to the entry.
    pub kernel_args: Vec<String>,
}

impl Target {
    pub fn slot(&self) -> Slot {
        self.running.other()
    }
}

/// Where an install is; reported as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Verified {
        version: String,
        signed_by: Option<String>,
    },
    OldEntryRemoved(String),
    RootWritten {
        bytes: u64,
    },
    BootFilesWritten,
    EntryWritten(String),
}

#[derive(Debug, Clone)]
pub struct Installed {
    pub manifest: Manifest,
    pub slot: Slot,
    pub entry: String,
    pub signed_by: Option<String>,
    pub bytes: u64,
    pub elapsed: Duration,
    pub root_bytes: u64,
    /// From the root's first byte to its fsync, waiting for input included.
    pub root_elapsed: Duration,
    /// Only the time spent in write(2) and fsync(2) for the root: the write
    /// path's own speed, whatever the network's.
    pub root_busy: Duration,
}

/// Every entry on the ESP that is ours.
pub fn list_entries(esp: &Path) -> Result<Vec<BootEntry>, InstallError> {
    let dir = esp.join(ENTRIES_DIR);
    let mut entries = Vec::new();
    for item in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
        let item = item.map_err(io_err("read directory", &dir))?;
        if let Some(entry) = item
            .file_name()
            .to_str()
            .and_then(|n| BootEntry::parse_file_name(n).ok())
        {
            entries.push(entry);
        }
    }
    entries.sort_by(slots::boot_order);
    Ok(entries)
}

/// fsync the directory, then syncfs its file system: on FAT (the ESP) a
/// directory's fsync does not reliably write the directory entries a
/// rename changed, and the order of work needs them on disk.
fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    let d = File::open(dir).map_err(io_err("open directory", dir))?;
    d.sync_all().map_err(io_err("fsync directory", dir))?;
    nix::unistd::syncfs(&d).map_err(|e| io_err("syncfs", dir)(io::Error::from(e)))
}

/// Remove `entry`'s file durably.
pub fn remove_entry(esp: &Path, entry: &BootEntry) -> Result<(), InstallError> {
    let dir = esp.join(ENTRIES_DIR);
    let path = dir.join(entry.file_name());
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(&dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &path)(e)),
    }
}

/// Rename `from` to `to`'s file name (a counter change) durably.
pub fn rename_entry(esp: &Path, from: &BootEntry, to: &BootEntry) -> Result<(), InstallError> {
    let dir = esp.join(ENTRIES_DIR);
    let (a, b) = (dir.join(from.file_name()), dir.join(to.file_name()));
    fs::rename(&a, &b).map_err(io_err("rename", &a))?;
    sync_dir(&dir)
}

/// Write `contents` to `dir/name` through a temporary file: fsync, rename,
/// fsync the directory.
fn write_file_durably(dir: &Path, name: &str, contents: &[u8]) -> Result<(), InstallError> {
    let tmp = dir.join(format!(".{name}{NEW_SUFFIX}"));
    let path = dir.join(name);
    let written = (|| {
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(contents).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// Bytes free on the file system holding `path`.
fn free_bytes(path: &Path) -> Result<u64, InstallError> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| io_err("statvfs", path)(io::Error::from(e)))?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
}

fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

const MIB: u64 = 1 << 20;

/// The checks before the first write. Returns the entries of the slot to
/// be written (to remove).
fn preflight(target: &Target, manifest: &Manifest) -> Result<Vec<BootEntry>, InstallError> {
    let slot = target.slot();
    let entries = list_entries(&target.esp)?;
    let running = slots::entry_of(&entries, target.running);
    match EntryState::of(running) {
        EntryState::KnownGood => {}
        EntryState::Trying { left } => {
            return Err(InstallError::Refused(format!(
                "the running slot {} is still on trial ({left} boots left) and slot {slot} is the only known-good one; \
                 wait until the running slot is blessed, or roll back",
                target.running
            )))
        }
        EntryState::Bad | EntryState::Empty => {
            return Err(InstallError::Refused(format!(
                "the running slot {} has no known-good boot entry on the ESP, so slot {slot} may be the only one that boots",
                target.running
            )))
        }
    }
    let new = BootEntry {
        version: manifest.version.clone(),
        slot,
        counter: Some(Counter {
            left: BOOT_TRIES,
            done: 0,
        }),
    };
    let mut after: Vec<BootEntry> = entries.iter().filter(|e| e.slot != slot).cloned().collect();
    after.push(new.clone());
    if slots::next_boot(&after) != Some(&new) {
        let first = slots::next_boot(&after).map(BootEntry::file_name).unwrap_or_default();
        return Err(InstallError::Refused(format!(
            "version {} would not boot first: systemd-boot orders {} before {}; \
             an upgrade needs a version that sorts after the running one",
            manifest.version,
            first,
            new.file_name()
        )));
    }
    let root = manifest
        .artifact(ArtifactKind::Root)
        .map(|a| a.size)
        .unwrap_or(0);
    if root > target.root_capacity {
        return Err(InstallError::Refused(format!(
            "the root image is {root} bytes ({} MiB) and slot {slot}'s partition {} holds {} MiB",
            root.div_ceil(MIB),
            target.root_device.display(),
            target.root_capacity / MIB
        )));
    }
    let boot_files: u64 = [ArtifactKind::Kernel, ArtifactKind::Initrd]
        .iter()
        .filter_map(|k| manifest.artifact(*k))
        .map(|a| a.size)
        .sum();
    let dir = target.esp.join(slot.esp_dir());
    let reclaimed: u64 = [KERNEL_FILE, INITRD_FILE]
        .iter()
        .map(|f| file_size(&dir.join(f)) + file_size(&dir.join(format!(".{f}{NEW_SUFFIX}"))))
        .sum();
    let free = free_bytes(&target.esp)? + reclaimed;
    if free < boot_files + ESP_MARGIN {
        return Err(InstallError::Refused(format!(
            "the ESP has {:.1} MiB free (counting slot {slot}'s old kernel and initrd) and the new ones need {:.1} MiB plus {} MiB spare",
            free as f64 / MIB as f64,
            boot_files as f64 / MIB as f64,
            ESP_MARGIN / MIB
        )));
    }
    Ok(entries.into_iter().filter(|e| e.slot == slot).collect())
}

/// Copy an artifact into `out` and check it. `what` names the destination.
fn copy_artifact<W: Write>(
    mut artifact: caisson_bundle::ArtifactReader<'_, impl Read>,
    out: &mut W,
    path: &Path,
    busy: &mut Duration,
) -> Result<u64, InstallError> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match artifact.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(reader_error(e)),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        let t = Instant::now();
        out.write_all(chunk).map_err(io_err("write", path))?;
        *busy += t.elapsed();
        total += n as u64;
    }
    artifact.finish()?;
    Ok(total)
}

/// The bundle reader's errors come through `io::Read`; keep their text.
fn reader_error(e: io::Error) -> InstallError {
    match BundleError::from_io(e) {
        Ok(b) => InstallError::Bundle(b),
        Err(e) => InstallError::Io {
            action: "read",
            path: PathBuf::from("the bundle"),
            source: e,
        },
    }
}

/// The entry's text: our parameters, the image's command line, the
/// config's arguments.
pub fn entry_text(manifest: &Manifest, target: &Target, entry: &BootEntry) -> String {
    let params = CaissonParams {
        slot: entry.slot,
        root: RootSpec::PartUuid(target.root_partuuid),
        rootwait: DEFAULT_ROOTWAIT,
        verity: Some(RootVerity::Verified(manifest.verity.params())),
    };
    let mut options = params.render();
    options.extend(manifest.cmdline.iter().cloned());
    options.extend(target.kernel_args.iter().cloned());
    entry.render(ENTRY_TITLE, &options)
}

/// Install the bundle `reader` yields into `target`'s inactive slot.
pub fn install<R: Read>(
    reader: R,
    policy: &TrustPolicy,
    target: &Target,
    progress: &mut dyn FnMut(&Step),
) -> Result<Installed, InstallError> {
    let started = Instant::now();
    let slot = target.slot();
    let mut bundle = BundleReader::open(reader)?;
    let verified = bundle.verify(policy)?;
    let manifest = bundle.manifest().clone();
    progress(&Step::Verified {
        version: manifest.version.clone(),
        signed_by: verified.signed_by.clone(),
    });
    let old = preflight(target, &manifest)?;
    for entry in &old {
        remove_entry(&target.esp, entry)?;
        progress(&Step::OldEntryRemoved(entry.file_name()));
    }

    let esp_dir = target.esp.join(slot.esp_dir());
    fs::create_dir_all(&esp_dir).map_err(io_err("create", &esp_dir))?;
    let mut root_bytes = 0;
    let mut root_elapsed = Duration::ZERO;
    let mut root_busy = Duration::ZERO;
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| {
        while let Some(artifact) = bundle.next_artifact()? {
            match artifact.artifact().kind {
                ArtifactKind::Root => {
                    let t = Instant::now();
                    let dev = &target.root_device;
                    let mut out = OpenOptions::new()
                        .write(true)
                        .open(dev)
                        .map_err(io_err("open", dev))?;
                    root_bytes = copy_artifact(artifact, &mut out, dev, &mut root_busy)?;
                    let synced = Instant::now();
                    out.sync_all().map_err(io_err("fsync", dev))?;
                    root_busy += synced.elapsed();
                    root_elapsed = t.elapsed();
                    progress(&Step::RootWritten { bytes: root_bytes });
                }
                kind @ (ArtifactKind::Kernel | ArtifactKind::Initrd) => {
                    let name = if kind == ArtifactKind::Kernel { KERNEL_FILE } else { INITRD_FILE };
                    let tmp = esp_dir.join(format!(".{name}{NEW_SUFFIX}"));
                    let mut out = File::create(&tmp).map_err(io_err("create", &tmp))?;
                    staged.push((tmp.clone(), esp_dir.join(name)));
                    let mut busy = Duration::ZERO;
                    copy_artifact(artifact, &mut out, &tmp, &mut busy)?;
                    out.sync_all().map_err(io_err("fsync", &tmp))?;
                }
            }
        }
        for (tmp, path) in &staged {
            fs::rename(tmp, path).map_err(io_err("rename into place", path))?;
        }
        sync_dir(&esp_dir)?;
        progress(&Step::BootFilesWritten);
        Ok::<(), InstallError>(())
    })();
    if let Err(e) = result {
        for (tmp, _) in &staged {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    let bytes = bundle.offset();
    bundle.finish()?;

    let entry = BootEntry {
        version: manifest.version.clone(),
        slot,
        counter: Some(Counter {
            left: BOOT_TRIES,
            done: 0,
        }),
    };
    let dir = target.esp.join(ENTRIES_DIR);
    write_file_durably(&dir, &entry.file_name(), entry_text(&manifest, target, &entry).as_bytes())?;
    progress(&Step::EntryWritten(entry.file_name()));
    Ok(Installed {
        manifest,
        slot,
        entry: entry.file_name(),
        signed_by: verified.signed_by,
        bytes,
        elapsed: started.elapsed(),
        root_bytes,
        root_elapsed,
        root_busy,
    })
}

#[cfg(test)]
#[path = "install_tests.rs"]
mod tests;
