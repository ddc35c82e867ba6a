//! The install payload in the root image (`/usr/lib/caisson/install/`):
//! what a node booted live needs, besides its own root, to write a whole
//! disk: systemd-boot's EFI binary, the kernel, the disk initrd, the empty
//! STATE and DATA ext4 file systems (the ones the raw image carries),
//! zstd-compressed at a fixed level, and a manifest with sizes, sha256 and
//! the spec's disk sizes. The format is `caisson_disk::payload`'s, which the
//! agent's installer reads.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use caisson_disk::payload::{
    self, DiskSizes, InstallManifest, PayloadFile, Template, MANIFEST_FORMAT, TEMPLATE_ZSTD_LEVEL,
};
use caisson_layout::SizesMiB;
use sha2::{Digest, Sha256};

use crate::build::BuildError;
use crate::rootfs::RootBuilder;

/// The component name in the build report.
pub const COMPONENT: &str = "install payload";

pub(crate) struct PayloadInputs<'a> {
    pub version: &'a str,
    pub kernel_release: &'a str,
    pub sizes: SizesMiB,
    pub bootloader: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The empty STATE and DATA ext4 images the raw disk gets too.
    pub state: &'a Path,
    pub data: &'a Path,
}

fn staging_err(path: &Path) -> impl FnOnce(io::Error) -> BuildError + '_ {
    move |source| BuildError::Staging {
        path: path.to_path_buf(),
        source,
    }
}

fn hash_file(path: &Path) -> Result<PayloadFile, BuildError> {
    let mut f = File::open(path).map_err(staging_err(path))?;
    let mut h = Sha256::new();
    let size = io::copy(&mut f, &mut h).map_err(staging_err(path))?;
    Ok(PayloadFile {
        size,
        sha256: hex::encode(h.finalize()),
    })
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
    size: u64,
}

impl<R: io::Read> io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// `src` compressed into `dest` (single-threaded zstd at the fixed level:
/// the same input gives the same bytes); `src`'s size and sha256, read once.
fn compress(src: &Path, dest: &Path) -> Result<PayloadFile, BuildError> {
    let input = File::open(src).map_err(staging_err(src))?;
    let mut input = Hashing {
        inner: input,
        sha: Sha256::new(),
        size: 0,
    };
    let out = File::create(dest).map_err(staging_err(dest))?;
    let mut out = BufWriter::new(out);
    zstd::stream::copy_encode(&mut input, &mut out, TEMPLATE_ZSTD_LEVEL)
        .map_err(staging_err(dest))?;
    out.flush().map_err(staging_err(dest))?;
    Ok(PayloadFile {
        size: input.size,
        sha256: hex::encode(input.sha.finalize()),
    })
}

/// Compress the templates, write the manifest into `staging`, and add the
/// payload to the root tree.
pub(crate) fn add(
    root: &mut RootBuilder,
    inputs: &PayloadInputs<'_>,
    staging: &Path,
) -> Result<InstallManifest, BuildError> {
    let mut files: Vec<(&str, PathBuf)> = vec![
        (payload::BOOTLOADER, inputs.bootloader.to_path_buf()),
        (payload::KERNEL, inputs.kernel.to_path_buf()),
        (payload::INITRD, inputs.initrd.to_path_buf()),
    ];
    let mut templates = std::collections::BTreeMap::new();
    for (label, name, ext4) in [
        ("STATE", payload::STATE_TEMPLATE, inputs.state),
        ("DATA", payload::DATA_TEMPLATE, inputs.data),
    ] {
        let compressed = staging.join(name);
        let raw = compress(ext4, &compressed)?;
        templates.insert(
            label.to_string(),
            Template {
                file: name.to_string(),
                size: raw.size,
                sha256: raw.sha256,
            },
        );
        files.push((name, compressed));
    }
    let mut manifest = InstallManifest {
        format: MANIFEST_FORMAT,
        version: inputs.version.to_string(),
        kernel_release: inputs.kernel_release.to_string(),
        disk: DiskSizes::from(inputs.sizes),
        files: Default::default(),
        templates,
    };
    for (name, path) in &files {
        manifest.files.insert(name.to_string(), hash_file(path)?);
    }
    let manifest_file = staging.join("install-manifest.json");
    std::fs::write(&manifest_file, manifest.to_json()).map_err(staging_err(&manifest_file))?;
    files.push((payload::MANIFEST, manifest_file));
    let dir = payload::INSTALL_DIR.trim_start_matches('/');
    for (name, path) in &files {
        root.add_file(COMPONENT, &format!("{dir}/{name}"), path, 0o644)?;
    }
    Ok(manifest)
}
