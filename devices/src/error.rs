use std::path::PathBuf;

use thiserror::Error;

/// Errors name the sysfs path, device or disk involved.
#[derive(Debug, Error)]
pub enum DevicesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Sysfs { path: PathBuf, reason: String },
    #[error("{path}: no GPT (no \"EFI PART\" header at LBA 1 for 512- or 4096-byte sectors)")]
    NoGpt { path: PathBuf },
    #[error("{path}: corrupt GPT: {reason}")]
    CorruptGpt { path: PathBuf, reason: String },
    #[error("block device {name} not found under {class_block}")]
    UnknownDevice { name: String, class_block: PathBuf },
    #[error("block device {name} is not a partition")]
    NotAPartition { name: String },
}

impl DevicesError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> DevicesError {
        DevicesError::Io {
            path: path.into(),
            source,
        }
    }
}
