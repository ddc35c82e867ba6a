//! Talking to containerd 1.6: its gRPC API over the unix socket (version,
//! CRI status, images), the health [`ContainerdProbe`], importing image
//! archives with `ctr` once per content, and the `ctr run` command lines of
//! the machine config's system containers.
//!
//! The gRPC client is small on purpose: unary calls only, messages written
//! by hand with `prost`'s derive (no protoc at build time), HTTP/2 by
//! hyper. Everything that changes containerd's state (import, run, clean
//! up) goes through `ctr`, containerd's own client, started through the
//! agent's [`Reaper`](crate::reaper::Reaper).

pub mod containers;
pub mod grpc;
pub mod images;
pub mod probe;

use std::path::PathBuf;

use thiserror::Error;

pub use containers::{cleanup_argv, container_id, run_argv, RunOptions, SYSTEM_NAMESPACE};
pub use grpc::{cri_status_config, list_images, version, Version};
pub use images::{import_archive, ImportOutcome, ImportReport, IMPORT_STATE_DIR};
pub use probe::ContainerdProbe;

/// `ctr` in the root image (from Debian's containerd package).
pub const CTR_PATH: &str = "/usr/bin/ctr";
/// containerd's snapshotter for `ctr` imports and runs; the CRI plugin's
/// too (`caisson-runtime-config` renders `snapshotter = "overlayfs"`), so
/// an image unpacked once serves both.
pub const SNAPSHOTTER: &str = "overlayfs";

/// How to reach containerd with `ctr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctr {
    /// The `ctr` program.
    pub binary: PathBuf,
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// runc, handed to the shim for `ctr run` so that it does not depend
    /// on containerd's `PATH`.
    pub runc: PathBuf,
}

impl Ctr {
    /// The node's: `/usr/bin/ctr`, `/run/containerd/containerd.sock`,
    /// `/usr/sbin/runc`.
    pub fn node() -> Ctr {
        Ctr {
            binary: PathBuf::from(CTR_PATH),
            socket: PathBuf::from(caisson_runtime_config::CONTAINERD_SOCKET),
            runc: PathBuf::from(caisson_runtime_config::RUNC_PATH),
        }
    }

    /// `--address <socket> --namespace <namespace>`: the global flags that
    /// come before every `ctr` subcommand.
    fn global_args(&self, namespace: &str) -> Vec<String> {
        vec![
            "--address".to_string(),
            self.socket.display().to_string(),
            "--namespace".to_string(),
            namespace.to_string(),
        ]
    }
}

/// Everything that can go wrong talking to containerd. Each variant names
/// the socket (or archive) and the gRPC method or `ctr` command involved.
#[derive(Debug, Error)]
pub enum ContainerdError {
    #[error("{method} on {}: no socket there (containerd is not running)", socket.display())]
    NoSocket { socket: PathBuf, method: String },
    #[error("{method} on {}: connection refused (containerd is not listening)", socket.display())]
    Refused { socket: PathBuf, method: String },
    #[error("{method} on {}: connecting: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        method: String,
        source: std::io::Error,
    },
    #[error("{method} on {}: {detail}", socket.display())]
    Transport {
        socket: PathBuf,
        method: String,
        detail: String,
    },
    #[error("{method} on {}: no answer within {seconds} s", socket.display())]
    Timeout {
        socket: PathBuf,
        method: String,
        seconds: u64,
    },
    /// containerd answered with a gRPC error status.
    #[error("{method} on {}: gRPC status {code} ({}): {message}", socket.display(), grpc::code_name(*code))]
    Status {
        socket: PathBuf,
        method: String,
        code: u32,
        message: String,
    },
    #[error("{method} on {}: unreadable answer: {detail}", socket.display())]
    Decode {
        socket: PathBuf,
        method: String,
        detail: String,
    },
    #[error("image archive {}: {what}: {source}", archive.display())]
    Archive {
        archive: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("image archive {}: {why}", archive.display())]
    ArchiveName { archive: PathBuf, why: &'static str },
    #[error("`{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// `ctr` ran and failed; `output` is the end of what it printed.
    #[error("`{command}` {status}: {output}")]
    Ctr {
        command: String,
        status: String,
        output: String,
    },
    #[error("import marker {}: {source}", path.display())]
    Marker {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{namespace:?} is not a containerd namespace (letters, digits, '-', '.', '_', starting with a letter or digit)")]
    InvalidNamespace { namespace: String },
    #[error("system container {container:?}: {why}")]
    Container { container: String, why: String },
}

impl ContainerdError {
    /// The gRPC status code, when containerd answered with one.
    pub fn grpc_code(&self) -> Option<u32> {
        match self {
            ContainerdError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// `argv` as one line for logs and errors: words with spaces or quotes are
/// quoted.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
