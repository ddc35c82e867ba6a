//! qcow2 for OpenStack: the raw disk converted by QEMU's own `qemu-img`,
//! with compressed clusters.
//!
//! Why a host tool and not a crate (see docs/architecture.md, "Outputs and
//! formats"): the Rust qcow2 crates either only read (`qcow`, `qcow2-core`),
//! are async-only on io_uring runtimes (`qcow2-rs`), or, like `fstool`,
//! are a young whole-filesystem toolkit with its own deflate codec and a
//! newer minimum Rust than ours. `qemu-img` is what OpenStack itself uses
//! to inspect and convert the images it is given.
//!
//! Determinism: one coroutine (`-m 1`) and in-order writes (no `-W`), so
//! compressed clusters are allocated in disk order; zlib compression; a
//! fixed cluster size and compat level; no timestamps in the format. The
//! output depends only on the raw image's bytes (not on its holes) and the
//! qemu-img version, as mke2fs's does on e2fsprogs'.

use std::io;
use std::path::Path;
use std::process::Command;

use crate::formats::FormatError;

/// The options that fix the output format, whatever qemu-img's defaults.
pub const OPTIONS: &str =
    "compat=1.1,cluster_size=65536,compression_type=zlib,lazy_refcounts=off,refcount_bits=16";

/// Convert `raw` into a compressed qcow2 at `out` (overwritten).
pub fn convert(raw: &Path, out: &Path) -> Result<(), FormatError> {
    let output = Command::new("qemu-img")
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("LC_ALL", "C")
        .args([
            "convert", "-q", "-m", "1", "-f", "raw", "-O", "qcow2", "-c", "-o",
        ])
        .arg(OPTIONS)
        .arg(raw)
        .arg(out)
        .output()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                FormatError::NoQemuImg
            } else {
                FormatError::Io {
                    what: "cannot run qemu-img for",
                    path: out.to_path_buf(),
                    source: e,
                }
            }
        })?;
    if !output.status.success() {
        return Err(FormatError::QemuImg {
            output: out.to_path_buf(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}
