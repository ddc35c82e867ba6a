//! The initramfs: a zstd-compressed newc cpio with `init`, the console
//! node, the mount points `init` uses, and the modules it loads with a
//! `modules.dep` pruned to their closure (docs/architecture.md,
//! "Initramfs").
//!
//! Deterministic: entries sorted by path (a parent always sorts before its
//! children, which the kernel's unpacker needs as it creates no parents),
//! inode numbers assigned in that order, uid/gid 0, one mtime, a fixed
//! zstd level and a single-threaded encoder. The `cpio` crate's newc
//! writer takes raw mode bits and rdev numbers, so directories and the
//! character device need no special handling.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use caisson_kmod::{KmodError, ModuleIndex};
use caisson_layout::paths;
use thiserror::Error;

/// Fixed so the same inputs give the same bytes; 19 is what Debian's
/// initramfs-tools uses, and the kernel decompresses it quickly.
pub const ZSTD_LEVEL: i32 = 19;

pub struct InitrdInput<'a> {
    /// The static `caisson-init` binary.
    pub init_binary: &'a Path,
    pub kernel_release: &'a str,
    /// Extracted `lib/modules/<kver>` the index describes.
    pub modules_dir: &'a Path,
    pub index: &'a ModuleIndex,
    /// Modules `init` loads (with their dependencies). Builtins are
    /// accepted and left out.
    pub modules: &'a [String],
    /// Modification time of every entry (SOURCE_DATE_EPOCH).
    pub mtime: u64,
}

#[derive(Debug, Error)]
pub enum InitrdError {
    #[error("initrd: module {name:?} is neither a loadable module nor built into the kernel")]
    UnknownModule { name: String },
    #[error("initrd: module index: {0}")]
    Kmod(#[from] KmodError),
    #[error("initrd: read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd: {path} is {size} bytes, more than newc's 4 GiB limit")]
    TooLarge { path: String, size: usize },
    #[error("initrd: mtime {mtime} does not fit newc's 32-bit field")]
    Mtime { mtime: u64 },
    #[error("initrd: writing the archive: {source}")]
    Write { source: std::io::Error },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// One archive member, keyed by its path (no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Member {
    Dir,
    File { data: Vec<u8>, perm: u32 },
    CharDev { major: u32, minor: u32, perm: u32 },
}

pub fn build_initrd(input: &InitrdInput) -> Result<Vec<u8>, InitrdError> {
    let members = members(input)?;
    let cpio = write_cpio(&members, input.mtime)?;
    compress(&cpio)
}

/// Loadable modules to list for `init`, in the given order, each once;
/// builtins dropped; anything else is an error naming it.
fn loadable(index: &ModuleIndex, modules: &[String]) -> Result<Vec<String>, InitrdError> {
    let mut out: Vec<String> = Vec::new();
    for name in modules {
        let name = caisson_kmod::normalize(name);
        if index.path_of(&name).is_some() {
            if !out.contains(&name) {
                out.push(name);
            }
        } else if !index.is_builtin(&name) {
            return Err(InitrdError::UnknownModule { name });
        }
    }
    Ok(out)
}

fn rel(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

/// Every member of the archive, with all parent directories.
fn members(input: &InitrdInput) -> Result<BTreeMap<String, Member>, InitrdError> {
    let list = loadable(input.index, input.modules)?;
    let names: Vec<&str> = list.iter().map(String::as_str).collect();
    let pruned = input.index.prune(&names)?;
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| InitrdError::Read {
            path: path.into(),
            source,
        })
    };

    let mut m = BTreeMap::new();
    for dir in ["dev", "proc", "sys", "run", &rel(paths::SYSROOT)] {
        m.insert(dir.to_string(), Member::Dir);
    }
    m.insert(
        "init".into(),
        Member::File {
            data: read(input.init_binary)?,
            perm: 0o755,
        },
    );
    m.insert(
        "dev/console".into(),
        Member::CharDev {
            major: 5,
            minor: 1,
            perm: 0o600,
        },
    );
    let module_list: String = list.iter().map(|n| format!("{n}\n")).collect();
    m.insert(
        rel(paths::INITRD_MODULE_LIST),
        Member::File {
            data: module_list.into_bytes(),
            perm: 0o644,
        },
    );
    let release = format!("{}\n", input.kernel_release);
    m.insert(
        rel(paths::INITRD_KERNEL_RELEASE),
        Member::File {
            data: release.into_bytes(),
            perm: 0o644,
        },
    );
    let kdir = format!("{}/{}", rel(paths::MODULES_ROOT), input.kernel_release);
    m.insert(
        format!("{kdir}/{}", caisson_kmod::MODULES_DEP),
        Member::File {
            data: pruned.render_dep().into_bytes(),
            perm: 0o644,
        },
    );
    for module in pruned.modules() {
        if let Some(path) = pruned.path_of(module) {
            m.insert(
                format!("{kdir}/{path}"),
                Member::File {
                    data: read(&input.modules_dir.join(path))?,
                    perm: 0o644,
                },
            );
        }
    }
    add_parents(&mut m);
    Ok(m)
}

fn add_parents(members: &mut BTreeMap<String, Member>) {
    let mut parents = Vec::new();
    for path in members.keys() {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            parents.push(parent.to_string());
            p = parent;
        }
    }
    for parent in parents {
        members.entry(parent).or_insert(Member::Dir);
    }
}

fn write_cpio(members: &BTreeMap<String, Member>, mtime: u64) -> Result<Vec<u8>, InitrdError> {
    let mtime = u32::try_from(mtime).map_err(|_| InitrdError::Mtime { mtime })?;
    let werr = |source| InitrdError::Write { source };
    let mut out = Vec::new();
    for (ino, (path, member)) in (1u32..).zip(members) {
        let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match member {
            Member::Dir => (S_IFDIR | 0o755, 2, &[], (0, 0)),
            Member::File { data, perm } => (S_IFREG | perm, 1, data, (0, 0)),
            Member::CharDev { major, minor, perm } => (S_IFCHR | perm, 1, &[], (*major, *minor)),
        };
        let size = u32::try_from(data.len()).map_err(|_| InitrdError::TooLarge {
            path: path.clone(),
            size: data.len(),
        })?;
        let mut w = cpio::newc::Builder::new(path)
            .ino(ino)
            .mode(mode)
            .uid(0)
            .gid(0)
            .nlink(nlink)
            .mtime(mtime)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut out, size);
        w.write_all(data).map_err(werr)?;
        w.finish().map_err(werr)?;
    }
    cpio::newc::trailer(&mut out).map_err(werr)?;
    Ok(out)
}

fn compress(cpio: &[u8]) -> Result<Vec<u8>, InitrdError> {
    let werr = |source| InitrdError::Write { source };
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(werr)?;
    encoder.include_checksum(true).map_err(werr)?;
    encoder.write_all(cpio).map_err(werr)?;
    encoder.finish().map_err(werr)
}

#[cfg(test)]
#[path = "initrd_tests.rs"]
mod tests;
