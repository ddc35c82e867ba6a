//! The build's outputs: which formats a spec may list (`[outputs] formats`),
//! and the disk formats converted from the raw image (qcow2, VMDK, OVA),
//! each written under a temporary name in the output directory for the
//! build to publish with the rest.
//!
//! The raw disk is always built first (every other disk format is converted
//! from it) but is only published when `raw` is listed. An OVA embeds the
//! VMDK: listing `ova` makes one, and it is published as a `.vmdk` of its
//! own only when `vmdk` is listed too.

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tempfile::NamedTempFile;
use thiserror::Error;

use crate::ova::{self, OvaInputs};
use crate::qcow2;
use crate::vmdk::{self, VmdkInfo};

/// One output format of `image-builder build`. The order is the order in
/// which they are made (a VMDK before the OVA that embeds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `<identity>.raw`: the GPT disk; also the USB image.
    Raw,
    /// `<identity>.qcow2`: compressed, for OpenStack.
    Qcow2,
    /// `<identity>.vmdk`: stream-optimized, for vSphere.
    Vmdk,
    /// `<identity>.ova`: OVF + manifest + the VMDK, for vSphere.
    Ova,
    /// `<identity>.pxe/`: kernel, initramfs with the root, cmdline, iPXE script.
    Pxe,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Ova,
        Format::Pxe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Ova => "ova",
            Format::Pxe => "pxe",
        }
    }

    /// The published name in the output directory.
    pub fn output_name(self, identity: &str) -> String {
        format!("{identity}.{}", self.as_str())
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Error)]
pub enum FormatError {
    #[error(
        "qemu-img not found; install qemu-utils (apt-get install qemu-utils) to build qcow2 images"
    )]
    NoQemuImg,
    #[error("qemu-img convert to {output} failed ({status}): {stderr}")]
    QemuImg {
        output: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("raw image {path} is {size} bytes, not a whole number of 512-byte sectors")]
    Unaligned { path: PathBuf, size: u64 },
    #[error("{path}: the VMDK would pass 2 TiB, beyond its 32-bit sector offsets")]
    TooLarge { path: PathBuf },
    #[error("{path}: the VMDK descriptor is {len} bytes, more than its 10 KiB")]
    DescriptorTooLong { path: PathBuf, len: usize },
}

impl FormatError {
    pub fn io(what: &'static str, path: &Path) -> impl Fn(io::Error) -> FormatError {
        let path = path.to_path_buf();
        move |source| FormatError::Io {
            what,
            path: path.clone(),
            source,
        }
    }
}

/// An output written under a temporary name, to be renamed to `path`.
#[derive(Debug)]
pub struct Pending {
    pub format: Format,
    pub file: NamedTempFile,
    pub path: PathBuf,
}

/// A published output, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub format: Format,
    pub path: PathBuf,
    /// Apparent size in bytes.
    pub size: u64,
    /// Bytes the file system allocated for it (a sparse raw image is
    /// mostly holes).
    pub allocated: u64,
}

impl Output {
    pub fn measure(format: Format, path: &Path) -> io::Result<Output> {
        let meta = std::fs::metadata(path)?;
        Ok(Output {
            format,
            path: path.to_path_buf(),
            size: meta.len(),
            allocated: meta.blocks() * 512,
        })
    }
}

/// Converts one raw image into the disk formats, in the output directory.
pub struct Converter<'a> {
    raw: &'a Path,
    out_dir: &'a Path,
    identity: String,
    ova: OvaInputs<'a>,
    /// The VMDK, once made (an OVA needs one even when `vmdk` is not listed).
    vmdk: Option<(NamedTempFile, VmdkInfo)>,
    pending: Vec<Pending>,
}

impl<'a> Converter<'a> {
    pub fn new(raw: &'a Path, out_dir: &'a Path, ova: OvaInputs<'a>) -> Converter<'a> {
        Converter {
            raw,
            out_dir,
            identity: format!("{}-{}", ova.name, ova.version),
            ova,
            vmdk: None,
            pending: Vec::new(),
        }
    }

    /// Make `format` (qcow2, vmdk or ova; raw and pxe are not conversions).
    pub fn make(&mut self, format: Format) -> Result<(), FormatError> {
        match format {
            Format::Raw | Format::Pxe => Ok(()),
            Format::Qcow2 => {
                let file = self.temporary(format)?;
                qcow2::convert(self.raw, file.path())?;
                sync(&file)?;
                self.pending.push(Pending {
                    format,
                    file,
                    path: self.out_dir.join(format.output_name(&self.identity)),
                });
                Ok(())
            }
            Format::Vmdk => self.vmdk().map(drop),
            Format::Ova => {
                let mut file = self.temporary(format)?;
                let path = file.path().to_path_buf();
                let (vmdk, info) = self.vmdk()?;
                ova::write(&vmdk, &info, &self.ova, file.as_file_mut(), &path)?;
                sync(&file)?;
                self.pending.push(Pending {
                    format,
                    file,
                    path: self.out_dir.join(format.output_name(&self.identity)),
                });
                Ok(())
            }
        }
    }

    /// What was made, ready to publish; `publish_vmdk`: whether the VMDK
    /// is an output of its own (else it was only for the OVA and is removed).
    pub fn finish(mut self, publish_vmdk: bool) -> Vec<Pending> {
        if let (true, Some((file, _))) = (publish_vmdk, self.vmdk.take()) {
            self.pending.push(Pending {
                format: Format::Vmdk,
                file,
                path: self.out_dir.join(Format::Vmdk.output_name(&self.identity)),
            });
        }
        self.pending.sort_by_key(|p| p.format);
        self.pending
    }

    /// The VMDK's temporary path and what it holds, made on first use.
    fn vmdk(&mut self) -> Result<(PathBuf, VmdkInfo), FormatError> {
        if let Some((file, info)) = &self.vmdk {
            return Ok((file.path().to_path_buf(), info.clone()));
        }
        let mut file = self.temporary(Format::Vmdk)?;
        let path = file.path().to_path_buf();
        let name = Format::Vmdk.output_name(&self.identity);
        let info = vmdk::write(self.raw, &self.identity, &name, file.as_file_mut(), &path)?;
        sync(&file)?;
        self.vmdk = Some((file, info.clone()));
        Ok((path, info))
    }

    fn temporary(&self, format: Format) -> Result<NamedTempFile, FormatError> {
        tempfile::Builder::new()
            .prefix(&format!(".{}.", self.identity))
            .suffix(&format!(".{format}.partial"))
            .tempfile_in(self.out_dir)
            .map_err(FormatError::io(
                "cannot create a temporary file in",
                self.out_dir,
            ))
    }
}

/// Durable before it is renamed into place (whoever wrote it).
fn sync(file: &NamedTempFile) -> Result<(), FormatError> {
    file.as_file()
        .sync_all()
        .map_err(FormatError::io("cannot sync", file.path()))
}

/// The byte ranges of `file` (`len` bytes) that may hold data, from the
/// file system's SEEK_DATA/SEEK_HOLE (a built raw image is mostly holes);
/// the whole file where the file system cannot tell.
pub fn data_ranges(file: &File, path: &Path, len: u64) -> Result<Vec<Range<u64>>, FormatError> {
    use rustix::fs::{seek, SeekFrom};
    use rustix::io::Errno;
    let mut ranges = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match seek(file, SeekFrom::Data(pos)) {
            Ok(start) => start,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) if pos == 0 => {
                let whole = 0..len;
                return Ok(vec![whole]);
            }
            Err(e) => {
                return Err(FormatError::Io {
                    what: "cannot find the data in",
                    path: path.to_path_buf(),
                    source: e.into(),
                })
            }
        };
        let end = seek(file, SeekFrom::Hole(start))
            .map_err(|e| FormatError::Io {
                what: "cannot find the holes in",
                path: path.to_path_buf(),
                source: e.into(),
            })?
            .min(len);
        if end <= start {
            break;
        }
        ranges.push(start..end);
        pos = end;
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn names_follow_the_identity() {
        assert_eq!(
            Format::Qcow2.output_name("caisson-0.1.0"),
            "caisson-0.1.0.qcow2"
        );
        assert_eq!(
            Format::Pxe.output_name("caisson-0.1.0"),
            "caisson-0.1.0.pxe"
        );
        let mut sorted = Format::ALL;
        sorted.sort();
        assert_eq!(sorted, Format::ALL, "a VMDK is made before its OVA");
    }

    #[test]
    fn data_ranges_skip_holes_and_cover_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let f = File::create(&path).unwrap();
        let len = 64 << 20;
        f.set_len(len).unwrap();
        f.write_all_at(b"a", 10).unwrap();
        f.write_all_at(b"b", 40 << 20).unwrap();
        f.sync_all().unwrap();
        let ranges = data_ranges(&f, &path, len).unwrap();
        for at in [10, 40 << 20] {
            assert!(ranges.iter().any(|r| r.contains(&at)), "{at} in {ranges:?}");
        }
        assert!(ranges.iter().all(|r| r.end <= len));
        let covered: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        // tmpfs and ext4 report holes; a file system that cannot says "all data".
        assert!(
            covered < len || ranges.first() == Some(&(0..len)),
            "{ranges:?}"
        );
    }
}
