use std::path::PathBuf;

use nix::errno::Errno;
use thiserror::Error;

/// Why stage 1 failed. Each message names the path, device or module, so
/// the single FATAL line on the console is enough to debug a boot.
#[derive(Debug, Error)]
pub enum InitError {
    #[error("mount {fstype} {source_name} on {target}: {errno}")]
    Mount {
        source_name: String,
        target: PathBuf,
        fstype: String,
        errno: Errno,
    },
    #[error("create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cmdline(#[from] caisson_layout::CmdlineError),
    #[error("{}", crate::report::root_not_found(spec, *waited_secs, seen, module_failures))]
    RootNotFound {
        spec: String,
        waited_secs: u64,
        seen: Vec<String>,
        module_failures: Vec<String>,
    },
    #[error("root image {path}: {reason}")]
    RootImage { path: PathBuf, reason: String },
    #[error("{path} not found in the root filesystem from {device}")]
    NoAgent { path: PathBuf, device: PathBuf },
    #[error("the boot entry has no caisson.verity: refusing to boot an unverified root (an entry must carry the root hash, or say caisson.verity=off to boot unverified)")]
    VerityUnspecified,
    #[error("dm-verity over {device}: {reason}")]
    VeritySetup { device: PathBuf, reason: String },
    #[error(transparent)]
    DeviceMapper(#[from] crate::dm::DmError),
    #[error("mknod {path}: {errno}")]
    MakeNode { path: PathBuf, errno: Errno },
    #[error("root {device} failed dm-verity verification: its blocks do not match root hash {root_hash} (a corrupted root, or not the image this entry was written for); {cause}")]
    RootCorrupted {
        /// The device, and for a live boot the file behind it.
        device: String,
        root_hash: String,
        cause: Box<InitError>,
    },
    #[error("move mount {from} to {to}: {errno}")]
    MoveMount {
        from: PathBuf,
        to: PathBuf,
        errno: Errno,
    },
    #[error("switch root: {step}: {errno}")]
    SwitchRoot { step: &'static str, errno: Errno },
    #[error("exec {path}: {errno}")]
    Exec { path: String, errno: Errno },
}
