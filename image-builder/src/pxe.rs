//! The `pxe` output: `<out>/<identity>.pxe/` with what a network boot needs
//! for a live (diskless) node.
//!
//! ```text
//! vmlinuz     the kernel, as on the ESP
//! initramfs   the disk initrd (zstd cpio), zero-padded to 4 bytes, then an
//!             uncompressed newc cpio holding caisson/root.img: the sealed
//!             root (squashfs + dm-verity hash area), byte for byte ROOT-A's
//! cmdline     one line: caisson.slot=a caisson.root=initrd:/caisson/root.img
//!             caisson.live, the verity parameters as the ESP entry has them,
//!             then the spec's [kernel] cmdline
//! boot.ipxe   #!ipxe: kernel + cmdline, initrd, boot; names relative to the
//!             script, so one directory serves over TFTP or HTTP
//! ```
//!
//! The kernel unpacks concatenated initramfs archives in order, each
//! compressed or not (Documentation/driver-api/early-userspace/
//! buffer-format.rst); an uncompressed archive must start on a 4-byte
//! boundary, hence the padding. The root stays uncompressed: it is a
//! squashfs already, and `init` reads it in place through a loop device.
//!
//! Deterministic: the first part is the disk initrd's own bytes; the
//! second has fixed inode numbers, uid/gid 0 and the build's mtime.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use caisson_layout::cmdline::{DEFAULT_ROOTWAIT, KEY_LIVE};
use caisson_layout::{paths, CaissonParams, RootSpec, RootVerity, Slot, VerityParams};
use thiserror::Error;

pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRAMFS_FILE: &str = "initramfs";
pub const CMDLINE_FILE: &str = "cmdline";
pub const SCRIPT_FILE: &str = "boot.ipxe";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

#[derive(Debug, Error)]
pub enum PxeError {
    #[error("pxe: {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "pxe: the root image {path} is {size} bytes, more than a newc cpio member can hold (4 GiB)"
    )]
    RootTooLarge { path: PathBuf, size: u64 },
    #[error("pxe: mtime {mtime} does not fit newc's 32-bit field")]
    Mtime { mtime: u64 },
    #[error("pxe: initrd.modules must list \"loop\": a live boot reads the root image through a loop device, and kernel {kernel_release} has loop as a module")]
    NoLoop { kernel_release: String },
}

/// The loop driver `init` needs for the initramfs's root image: listed in
/// `initrd.modules`, or built into the kernel.
pub fn check_modules(
    modules: &[String],
    loop_builtin: bool,
    kernel_release: &str,
) -> Result<(), PxeError> {
    if loop_builtin || modules.iter().any(|m| m == "loop") {
        Ok(())
    } else {
        Err(PxeError::NoLoop {
            kernel_release: kernel_release.to_string(),
        })
    }
}

/// What goes into the directory.
#[derive(Debug, Clone)]
pub struct PxeInputs<'a> {
    pub kernel: &'a Path,
    /// The disk initrd, exactly as written to the ESP.
    pub initrd: &'a Path,
    /// The sealed root: squashfs, then its dm-verity hash area.
    pub root_image: &'a Path,
    pub verity: &'a VerityParams,
    /// The spec's `[kernel] cmdline` words.
    pub cmdline: &'a [String],
    /// SOURCE_DATE_EPOCH.
    pub mtime: u64,
}

/// What was written, for the build report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PxeReport {
    pub kernel_size: u64,
    pub initramfs_size: u64,
    /// The kernel command line, one line without the newline.
    pub cmdline: String,
}

/// The live boot's kernel command line words: the `caisson.*` words as a
/// slot's entry renders them, with the initramfs image as root and
/// `caisson.live`, then the spec's words.
pub fn cmdline_words(verity: &VerityParams, spec_cmdline: &[String]) -> Vec<String> {
    let params = CaissonParams {
        slot: Slot::A,
        root: RootSpec::Initrd(paths::INITRD_ROOT_IMAGE.to_string()),
        rootwait: DEFAULT_ROOTWAIT,
        verity: Some(RootVerity::Verified(verity.clone())),
    };
    let mut words = params.render();
    // After slot and root, before the verity words.
    let at = words.len().min(2);
    words.insert(at, KEY_LIVE.to_string());
    words.extend(spec_cmdline.iter().cloned());
    words
}

/// The iPXE script. iPXE resolves the file names against the script's own
/// URI, so the directory can be served as is over TFTP or HTTP.
pub fn ipxe_script(cmdline: &str) -> String {
    format!(
        "#!ipxe\n\
         # Caisson live boot: the files sit beside this script.\n\
         kernel {KERNEL_FILE} {cmdline}\n\
         initrd {INITRAMFS_FILE}\n\
         boot\n"
    )
}

/// Write the four files into `dir` (which must exist and be empty) and
/// fsync them.
pub fn write(dir: &Path, inputs: &PxeInputs<'_>) -> Result<PxeReport, PxeError> {
    let kernel_path = dir.join(KERNEL_FILE);
    let kernel_size =
        std::fs::copy(inputs.kernel, &kernel_path).map_err(|source| PxeError::Io {
            action: "copy the kernel to",
            path: kernel_path.clone(),
            source,
        })?;
    let initramfs_path = dir.join(INITRAMFS_FILE);
    let initramfs_size = {
        let file = create(&initramfs_path)?;
        let mut out = BufWriter::new(file);
        let initrd = std::fs::read(inputs.initrd).map_err(|source| PxeError::Io {
            action: "read the initrd",
            path: inputs.initrd.to_path_buf(),
            source,
        })?;
        let size = write_initramfs(&mut out, &initrd, inputs.root_image, inputs.mtime)?;
        let file = out.into_inner().map_err(|e| PxeError::Io {
            action: "write",
            path: initramfs_path.clone(),
            source: e.into_error(),
        })?;
        sync(&file, &initramfs_path)?;
        size
    };
    let cmdline = cmdline_words(inputs.verity, inputs.cmdline).join(" ");
    write_small(&dir.join(CMDLINE_FILE), format!("{cmdline}\n").as_bytes())?;
    write_small(&dir.join(SCRIPT_FILE), ipxe_script(&cmdline).as_bytes())?;
    sync(&open(&kernel_path)?, &kernel_path)?;
    sync(&open(dir)?, dir)?;
    Ok(PxeReport {
        kernel_size,
        initramfs_size,
        cmdline,
    })
}

/// The initramfs: `initrd`, zeros to a 4-byte boundary, then a newc cpio
/// with `caisson/` and `caisson/root.img` streamed from `root_image`.
/// Returns the bytes written.
pub fn write_initramfs(
    out: &mut impl Write,
    initrd: &[u8],
    root_image: &Path,
    mtime: u64,
) -> Result<u64, PxeError> {
    let werr = |source| PxeError::Io {
        action: "write the initramfs with",
        path: root_image.to_path_buf(),
        source,
    };
    let mtime32 = u32::try_from(mtime).map_err(|_| PxeError::Mtime { mtime })?;
    let mut counted = Counting {
        inner: out,
        bytes: 0,
    };
    counted.write_all(initrd).map_err(werr)?;
    let pad = (4 - initrd.len() % 4) % 4;
    counted.write_all(&[0u8; 3][..pad]).map_err(werr)?;

    let image_rel = paths::INITRD_ROOT_IMAGE.trim_start_matches('/');
    let dir_rel = image_rel.rsplit_once('/').map_or("", |(d, _)| d);
    let mut root = open(root_image)?;
    let size = root
        .metadata()
        .map_err(|source| PxeError::Io {
            action: "stat",
            path: root_image.to_path_buf(),
            source,
        })?
        .len();
    let size32 = u32::try_from(size).map_err(|_| PxeError::RootTooLarge {
        path: root_image.to_path_buf(),
        size,
    })?;
    // Parents first: the kernel's unpacker creates no directories itself.
    let mut ino = 1u32;
    for dir in parents(dir_rel) {
        let w = cpio::newc::Builder::new(&dir)
            .ino(ino)
            .mode(S_IFDIR | 0o755)
            .uid(0)
            .gid(0)
            .nlink(2)
            .mtime(mtime32)
            .write(&mut counted, 0);
        w.finish().map_err(werr)?;
        ino += 1;
    }
    let mut w = cpio::newc::Builder::new(image_rel)
        .ino(ino)
        .mode(S_IFREG | 0o444)
        .uid(0)
        .gid(0)
        .nlink(1)
        .mtime(mtime32)
        .write(&mut counted, size32);
    let copied = io::copy(&mut root, &mut w).map_err(|source| PxeError::Io {
        action: "copy into the initramfs",
        path: root_image.to_path_buf(),
        source,
    })?;
    if copied != size {
        return Err(PxeError::Io {
            action: "copy into the initramfs",
            path: root_image.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{copied} of {size} bytes: the file changed while it was read"),
            ),
        });
    }
    w.finish().map_err(werr)?;
    cpio::newc::trailer(&mut counted).map_err(werr)?;
    Ok(counted.bytes)
}

/// `a`, `a/b` for `a/b`; nothing for "".
fn parents(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = String::new();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(part);
        out.push(at.clone());
    }
    out
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    bytes: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn create(path: &Path) -> Result<File, PxeError> {
    File::create(path).map_err(|source| PxeError::Io {
        action: "create",
        path: path.to_path_buf(),
        source,
    })
}

fn open(path: &Path) -> Result<File, PxeError> {
    File::open(path).map_err(|source| PxeError::Io {
        action: "open",
        path: path.to_path_buf(),
        source,
    })
}

fn sync(file: &File, path: &Path) -> Result<(), PxeError> {
    file.sync_all().map_err(|source| PxeError::Io {
        action: "fsync",
        path: path.to_path_buf(),
        source,
    })
}

fn write_small(path: &Path, bytes: &[u8]) -> Result<(), PxeError> {
    let mut file = create(path)?;
    file.write_all(bytes).map_err(|source| PxeError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })?;
    sync(&file, path)
}

/// Write the directory under a temporary name in `out_dir`
/// (`.<identity>.pxe.XXXXXX`, removed on drop) for the build to publish
/// with [`publish`] once every output is ready.
pub fn write_partial(
    out_dir: &Path,
    identity: &str,
    inputs: &PxeInputs<'_>,
) -> Result<(tempfile::TempDir, PxeReport), PxeError> {
    let dir = tempfile::Builder::new()
        .prefix(&format!(".{identity}.pxe."))
        .tempdir_in(out_dir)
        .map_err(|source| PxeError::Io {
            action: "create a temporary directory in",
            path: out_dir.to_path_buf(),
            source,
        })?;
    let report = write(dir.path(), inputs)?;
    Ok((dir, report))
}

/// `<identity>.pxe`, the published directory's name.
pub fn dir_name(identity: &str) -> String {
    format!("{identity}.pxe")
}

/// Bytes of the published directory's files: apparent, and allocated.
pub fn measure(dir: &Path) -> Result<(u64, u64), PxeError> {
    use std::os::unix::fs::MetadataExt;
    let err = |source| PxeError::Io {
        action: "measure",
        path: dir.to_path_buf(),
        source,
    };
    let (mut size, mut allocated) = (0, 0);
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let meta = entry.map_err(err)?.metadata().map_err(err)?;
        size += meta.len();
        allocated += meta.blocks() * 512;
    }
    Ok((size, allocated))
}

/// Replace `final_dir` (an older build's, if any) with the finished
/// `partial` directory.
pub fn publish(partial: &Path, final_dir: &Path) -> Result<(), PxeError> {
    let err = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| PxeError::Io {
            action,
            path,
            source,
        }
    };
    match std::fs::remove_dir_all(final_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("remove the older", final_dir)(e)),
    }
    std::fs::rename(partial, final_dir).map_err(err("rename into place", final_dir))?;
    if let Some(parent) = final_dir.parent() {
        sync(&open(parent)?, parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn verity() -> VerityParams {
        VerityParams {
            root_hash: "ab".repeat(32),
            salt: "01".repeat(32),
            hash_offset: 8192,
        }
    }

    #[test]
    fn the_cmdline_is_the_entrys_caisson_words_with_the_initrd_root_and_live() {
        let words = cmdline_words(&verity(), &["console=ttyS0,115200".to_string()]);
        assert_eq!(
            words.join(" "),
            format!(
                "caisson.slot=a caisson.root=initrd:/caisson/root.img caisson.live \
                 caisson.verity={} caisson.verity.salt={} caisson.verity.hashoffset=8192 \
                 console=ttyS0,115200",
                "ab".repeat(32),
                "01".repeat(32)
            )
        );
        // init and the agent read back what was written.
        let cmdline = caisson_layout::KernelCmdline::parse(&words.join(" "));
        let params = CaissonParams::from_cmdline(&cmdline).unwrap();
        assert_eq!(params.root, RootSpec::Initrd("/caisson/root.img".into()));
        assert_eq!(params.verity, Some(RootVerity::Verified(verity())));
        assert!(caisson_layout::is_live(&cmdline));
    }

    #[test]
    fn the_ipxe_script_names_the_files_relative_to_itself() {
        assert_eq!(
            ipxe_script("caisson.live console=ttyS0"),
            "#!ipxe\n# Caisson live boot: the files sit beside this script.\n\
             kernel vmlinuz caisson.live console=ttyS0\ninitrd initramfs\nboot\n"
        );
    }

    struct Fixture {
        dir: tempfile::TempDir,
        kernel: PathBuf,
        root: PathBuf,
        root_bytes: Vec<u8>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz-x");
        std::fs::write(&kernel, b"MZ kernel bytes").unwrap();
        let root = dir.path().join("root.img");
        let root_bytes: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&root, &root_bytes).unwrap();
        Fixture {
            dir,
            kernel,
            root,
            root_bytes,
        }
    }

    fn build(f: &Fixture, name: &str, initrd: &[u8]) -> PathBuf {
        let out = f.dir.path().join(name);
        std::fs::create_dir(&out).unwrap();
        let initrd_file = f.dir.path().join(format!("{name}.initrd"));
        std::fs::write(&initrd_file, initrd).unwrap();
        let v = verity();
        let cmdline = ["console=ttyS0".to_string()];
        let report = write(
            &out,
            &PxeInputs {
                kernel: &f.kernel,
                initrd: &initrd_file,
                root_image: &f.root,
                verity: &v,
                cmdline: &cmdline,
                mtime: 1_700_000_000,
            },
        )
        .unwrap();
        assert_eq!(report.kernel_size, 15);
        assert_eq!(
            report.initramfs_size,
            std::fs::metadata(out.join(INITRAMFS_FILE)).unwrap().len()
        );
        out
    }

    /// (name, mode, mtime, data) of each member until the trailer.
    fn members(mut r: impl Read) -> Vec<(String, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut entry = cpio::NewcReader::new(r).unwrap();
            if entry.entry().is_trailer() {
                return out;
            }
            let (name, mode, mtime) = (
                entry.entry().name().to_string(),
                entry.entry().mode(),
                entry.entry().mtime(),
            );
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((name, mode, mtime, data));
            r = entry.finish().unwrap();
        }
    }

    #[test]
    fn the_initramfs_is_the_initrd_padded_then_a_cpio_of_the_root_and_rebuilds_identical() {
        let f = fixture();
        let initrd = b"zstd-compressed initrd, 39 bytes long!!".to_vec();
        assert_eq!(initrd.len() % 4, 3);
        let a = build(&f, "a", &initrd);
        let b = build(&f, "b", &initrd);
        for file in [KERNEL_FILE, INITRAMFS_FILE, CMDLINE_FILE, SCRIPT_FILE] {
            assert_eq!(
                std::fs::read(a.join(file)).unwrap(),
                std::fs::read(b.join(file)).unwrap(),
                "{file} differs between two builds"
            );
        }

        let bytes = std::fs::read(a.join(INITRAMFS_FILE)).unwrap();
        assert_eq!(&bytes[..initrd.len()], &initrd[..]);
        assert_eq!(&bytes[initrd.len()..40], &[0], "padded to 4 bytes");
        let second = &bytes[40..];
        assert_eq!(bytes.len() % 4, 0);
        let got = members(second);
        let names: Vec<&str> = got.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(names, ["caisson", "caisson/root.img"]);
        assert_eq!(got[0].1, 0o040755);
        assert_eq!(got[1].1, 0o100444);
        assert!(got.iter().all(|m| m.2 == 1_700_000_000));
        assert_eq!(
            got[1].3, f.root_bytes,
            "root.img must be the sealed root, byte for byte"
        );

        let cmdline = std::fs::read_to_string(a.join(CMDLINE_FILE)).unwrap();
        assert!(cmdline.ends_with(" console=ttyS0\n") && cmdline.lines().count() == 1);
        let script = std::fs::read_to_string(a.join(SCRIPT_FILE)).unwrap();
        assert!(script.contains(&format!("kernel vmlinuz {}", cmdline.trim_end())));
    }

    #[test]
    fn an_aligned_initrd_gets_no_padding() {
        let f = fixture();
        let initrd = vec![0x28u8; 64];
        let out = build(&f, "aligned", &initrd);
        let bytes = std::fs::read(out.join(INITRAMFS_FILE)).unwrap();
        assert_eq!(
            &bytes[64..70],
            b"070701",
            "the cpio starts right after the initrd"
        );
    }

    #[test]
    fn the_loop_driver_must_be_in_the_initrd_unless_built_in() {
        let listed = ["virtio_blk".to_string(), "loop".to_string()];
        assert!(check_modules(&listed, false, "6.1.0").is_ok());
        assert!(check_modules(&listed[..1], true, "6.1.0").is_ok());
        let e = check_modules(&listed[..1], false, "6.1.0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("initrd.modules") && e.contains("\"loop\"") && e.contains("6.1.0"),
            "{e}"
        );
    }

    #[test]
    fn publish_replaces_an_older_directory() {
        let f = fixture();
        let old = build(&f, "caisson-1.pxe", b"old!");
        std::fs::write(old.join("stale"), b"x").unwrap();
        let new = build(&f, ".partial", b"new!");
        publish(&new, &old).unwrap();
        assert!(!new.exists());
        assert!(!old.join("stale").exists());
        assert!(old.join(SCRIPT_FILE).is_file());
        let e =
            write_initramfs(&mut Vec::new(), b"", &f.dir.path().join("missing"), 0).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
