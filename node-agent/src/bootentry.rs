//! The running slot's boot entry on the ESP, rewritten so that its `options`
//! line carries the machine config's `kernel.args`: the entry's own
//! `caisson.*` words (slot, root, verity: kept exactly as written), then the
//! image's base command line ([`BASE_CMDLINE`]), then the args.
//!
//! Planned in memory first ([`plan_entry`], pure); written only if the text
//! changes, atomically (temp file beside it, fsync, rename over, fsync the
//! directory), under the same file name so the boot counter is untouched.
//! The ESP is mounted at [`ESP_MOUNT`] only for the write.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use caisson_layout::boot_entry::{BootEntry, ENTRIES_DIR};
use caisson_layout::cmdline::{KEY_ROOT, KEY_SLOT};
use caisson_layout::paths::{BASE_CMDLINE, ROOT_DEVICE_HINT};
use caisson_layout::{KernelCmdline, PartitionRole, Slot};
use nix::mount::{umount2, MntFlags, MsFlags};
use thiserror::Error;
use tracing::warn;

use crate::mounts::{create_dir_all, MountError, MountSpec};

/// Where the ESP is mounted while its entry is written.
pub const ESP_MOUNT: &str = "/run/caisson/esp";
/// What mounting the ESP needs from the cloud kernel (all `=m`; the kernel
/// cannot load them itself: there is no modprobe). FAT's default codepage
/// is 437 and its iocharset ascii.
pub const ESP_MODULES: &[&str] = &["vfat", "nls_cp437", "nls_ascii"];
const OPTIONS: &str = "options";
const CAISSON_PREFIX: &str = "caisson.";

#[derive(Debug, Error)]
pub enum EntryError {
    #[error("boot entry: {0}")]
    Running(String),
    #[error("boot entry: the image's base command line {path}: {source}")]
    Base { path: PathBuf, source: io::Error },
    #[error("boot entry: the ESP: read {hint}: {source}", hint = ROOT_DEVICE_HINT)]
    Hint { source: io::Error },
    #[error("boot entry: no partition labelled ESP beside the root partition {root}")]
    NoEsp { root: String },
    #[error("boot entry: looking for the ESP beside {root}: {reason}")]
    Devices { root: String, reason: String },
    #[error("boot entry: the ESP {device}: loading {module}: {reason}")]
    Module {
        device: PathBuf,
        module: &'static str,
        reason: String,
    },
    #[error("boot entry: the ESP {device}: {source}")]
    Mount {
        device: PathBuf,
        source: Box<MountError>,
    },
    #[error("boot entry: the ESP {device}: {problem}")]
    Entry { device: PathBuf, problem: String },
    #[error("boot entry: the ESP {device}: {action} {path}: {source}; the entry is unchanged")]
    Io {
        device: PathBuf,
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// What happened to the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file (its name on the ESP) was rewritten.
    Written(String),
    /// It already said this.
    Unchanged(String),
}

impl Outcome {
    pub fn file(&self) -> &str {
        match self {
            Outcome::Written(f) | Outcome::Unchanged(f) => f,
        }
    }
}

/// One word of an options line as written (quotes kept), and its key.
fn raw_words(line: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start = None;
    let mut in_quotes = false;
    for (i, c) in line.char_indices() {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        if c.is_whitespace() && !in_quotes {
            if let Some(s) = start.take() {
                words.extend(line.get(s..i));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        words.extend(line.get(s..));
    }
    words
}

fn is_caisson_word(word: &str) -> bool {
    word.trim_start_matches('"').starts_with(CAISSON_PREFIX)
}

/// The value of an `options` line, if `line` is one.
fn options_value(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix(OPTIONS)?;
    (rest.is_empty() || rest.starts_with(char::is_whitespace)).then_some(rest)
}

/// Every `options` line of an entry, joined (BLS concatenates them).
pub fn entry_options(text: &str) -> String {
    text.lines()
        .filter_map(options_value)
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The entry's text with its options rebuilt: its `caisson.*` words as
/// written, then `base`, then `args`. Other lines stay as they are; several
/// `options` lines become one, where the first was. `None`: nothing to
/// change. Refuses an entry without `caisson.slot`: that is not ours.
pub fn plan_entry(text: &str, base: &[String], args: &[String]) -> Result<Option<String>, String> {
    let own: Vec<&str> = text
        .lines()
        .filter_map(options_value)
        .flat_map(raw_words)
        .filter(|w| is_caisson_word(w))
        .collect();
    if !own.iter().any(|w| {
        w.trim_start_matches('"')
            .starts_with(&format!("{KEY_SLOT}="))
    }) {
        return Err(format!(
            "its options have no {KEY_SLOT}: not a Caisson entry"
        ));
    }
    let mut words: Vec<&str> = own;
    words.extend(base.iter().map(String::as_str));
    words.extend(args.iter().map(String::as_str));
    let new_line = format!("{OPTIONS} {}", words.join(" "));
    let mut out = String::with_capacity(text.len() + new_line.len());
    let mut placed = false;
    for line in text.lines() {
        if options_value(line).is_some() {
            if !placed {
                out.push_str(&new_line);
                out.push('\n');
                placed = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok((out != text).then_some(out))
}

/// The base command line file's words.
pub fn parse_base(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// Words a boot loader adds on its own (systemd-boot appends `initrd=` for
/// each initrd line); never part of the entry's options.
const LOADER_WORDS: &[&str] = &["initrd=", "BOOT_IMAGE="];

/// The words of the running command line that are not `caisson.*` (nor the
/// boot loader's): what the entry's base + args were when the node booted.
pub fn extra_words(proc_cmdline: &str) -> Vec<String> {
    raw_words(proc_cmdline)
        .into_iter()
        .filter(|w| !is_caisson_word(w) && !LOADER_WORDS.iter().any(|p| w.starts_with(p)))
        .map(str::to_string)
        .collect()
}

/// Which of `entries` (file name, text) the node booted from: the running
/// slot's; of several, the one whose `caisson.root` is the running one.
pub fn pick_entry<'a>(
    entries: &'a [(String, String)],
    running: &KernelCmdline,
) -> Result<&'a (String, String), String> {
    let slot: Slot = running
        .value(KEY_SLOT)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("the running command line has no valid {KEY_SLOT}"))?;
    let of_slot: Vec<&(String, String)> = entries
        .iter()
        .filter(|(name, _)| BootEntry::parse_file_name(name).is_ok_and(|e| e.slot == slot))
        .collect();
    let root = running.value(KEY_ROOT);
    let names = |v: &[&(String, String)]| {
        v.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match of_slot.as_slice() {
        [] => Err(format!("no entry for slot {slot} in {ENTRIES_DIR}")),
        [one] => Ok(one),
        several => {
            let same_root: Vec<&(String, String)> = several
                .iter()
                .copied()
                .filter(|(_, text)| {
                    root.is_some()
                        && KernelCmdline::parse(&entry_options(text)).value(KEY_ROOT) == root
                })
                .collect();
            match same_root.as_slice() {
                [one] => Ok(one),
                _ => Err(format!(
                    "{} entries for slot {slot} ({}) and not exactly one with {KEY_ROOT}={}",
                    several.len(),
                    names(several),
                    root.unwrap_or("?")
                )),
            }
        }
    }
}

/// Rewrite the running entry in the ESP mounted at `esp`. `device` names
/// the ESP in errors.
pub fn update_in(
    esp: &Path,
    device: &Path,
    running: &KernelCmdline,
    base: &[String],
    args: &[String],
) -> Result<Outcome, EntryError> {
    let dir = esp.join(ENTRIES_DIR);
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| EntryError::Io {
            device: device.to_path_buf(),
            action,
            path,
            source,
        }
    };
    let mut entries = Vec::new();
    for item in fs::read_dir(&dir).map_err(io("read directory", &dir))? {
        let item = item.map_err(io("read directory", &dir))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if BootEntry::parse_file_name(name).is_err() {
            continue;
        }
        let path = dir.join(name);
        let text = fs::read_to_string(&path).map_err(io("read", &path))?;
        entries.push((name.to_string(), text));
    }
    entries.sort();
    let (name, text) = pick_entry(&entries, running).map_err(|problem| EntryError::Entry {
        device: device.to_path_buf(),
        problem,
    })?;
    let path = dir.join(name);
    let new = plan_entry(text, base, args).map_err(|p| EntryError::Entry {
        device: device.to_path_buf(),
        problem: format!("{}: {p}", path.display()),
    })?;
    let Some(new) = new else {
        return Ok(Outcome::Unchanged(name.clone()));
    };
    let tmp = dir.join(format!(".{name}.new"));
    let written = (|| {
        let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(new.as_bytes()).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("rename over", &path))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", &dir))?;
    Ok(Outcome::Written(name.clone()))
}

/// The image's base command line.
pub fn read_base(path: &Path) -> Result<Vec<String>, EntryError> {
    fs::read_to_string(path)
        .map(|t| parse_base(&t))
        .map_err(|source| EntryError::Base {
            path: path.to_path_buf(),
            source,
        })
}

/// Find the ESP beside the root, load what mounting it needs (`load`),
/// mount it, rewrite the running entry, unmount.
pub fn update(
    args: &[String],
    load: impl FnMut(&'static str) -> Result<(), String>,
) -> Result<Outcome, EntryError> {
    let running = fs::read_to_string("/proc/cmdline")
        .map(|t| KernelCmdline::parse(&t))
        .map_err(|e| EntryError::Running(format!("read /proc/cmdline: {e}")))?;
    let base = read_base(Path::new(BASE_CMDLINE))?;
    with_esp(load, |esp, device| {
        update_in(esp, device, &running, &base, args)
    })
}

/// One user of the ESP mount point at a time (kernel args, upgrades,
/// blessing, rollback).
static ESP_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The running root's partition name, as `init` left it.
pub fn root_partition_name() -> Result<String, EntryError> {
    Ok(fs::read_to_string(ROOT_DEVICE_HINT)
        .map_err(|source| EntryError::Hint { source })?
        .trim()
        .to_string())
}

/// Find the ESP beside the root, load what mounting it needs (`load`),
/// mount it at [`ESP_MOUNT`], run `f(mount point, device)`, unmount.
pub fn with_esp<T, E: From<EntryError>>(
    mut load: impl FnMut(&'static str) -> Result<(), String>,
    f: impl FnOnce(&Path, &Path) -> Result<T, E>,
) -> Result<T, E> {
    let _held = ESP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let root = root_partition_name()?;
    let label = PartitionRole::Esp.label();
    let device = match caisson_devices::sibling_by_label(&root, label) {
        Ok(Some(dev)) => dev.dev_path,
        Ok(None) => return Err(EntryError::NoEsp { root }.into()),
        Err(e) => {
            return Err(EntryError::Devices {
                root,
                reason: e.to_string(),
            }
            .into())
        }
    };
    for module in ESP_MODULES {
        load(module).map_err(|reason| EntryError::Module {
            device: device.clone(),
            module,
            reason,
        })?;
    }
    let mount_err = |source| EntryError::Mount {
        device: device.clone(),
        source: Box::new(source),
    };
    create_dir_all(Path::new(ESP_MOUNT)).map_err(mount_err)?;
    let source = device.to_string_lossy();
    MountSpec {
        source: &source,
        target: ESP_MOUNT,
        fs_type: "vfat",
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        data: None,
    }
    .mount()
    .map_err(mount_err)?;
    let result = f(Path::new(ESP_MOUNT), &device);
    // Unmounting flushes whatever the fsyncs left; what was written stays
    // written even if it fails.
    if let Err(errno) = umount2(OsStr::new(ESP_MOUNT), MntFlags::empty()) {
        warn!(
            "boot entry: the ESP {}: unmount {ESP_MOUNT}: {errno}",
            device.display()
        );
    }
    result
}

#[cfg(test)]
#[path = "bootentry_tests.rs"]
mod tests;
