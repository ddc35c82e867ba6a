//! STATE and DATA: empty ext4 file systems made by e2fsprogs' `mke2fs` into
//! a temporary file (no Rust crate can make ext4; see README). Determinism:
//! the UUID and directory-hash seed are derived from the image identity,
//! `E2FSPROGS_FAKE_TIME` pins every timestamp, and our own `mke2fs.conf`
//! pins the feature set instead of the build host's `/etc/mke2fs.conf`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;
use uuid::Uuid;

/// Features of Debian bookworm's ext4 defaults, minus `orphan_file` and
/// `metadata_csum_seed` (newer than some kernels and e2fsck we meet).
pub const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

#[derive(Debug, Error)]
pub enum Ext4Error {
    #[error(
        "mke2fs not found; install e2fsprogs (apt-get install e2fsprogs) to build STATE and DATA"
    )]
    NoMke2fs,
    #[error("cannot prepare {file} for mke2fs: {source}")]
    Io { file: PathBuf, source: io::Error },
    #[error("mke2fs failed for {label} ({status}): {stderr}")]
    Failed {
        label: String,
        status: String,
        stderr: String,
    },
}

/// What to make.
#[derive(Debug, Clone)]
pub struct Ext4Spec<'a> {
    pub label: &'a str,
    pub uuid: Uuid,
    pub hash_seed: Uuid,
    pub size: u64,
    pub epoch: u64,
}

/// Make an empty ext4 of `spec.size` bytes at `work/<label>.ext4`. The
/// journal is kept: STATE holds config and the audit log, and a power cut
/// must not cost them.
pub fn make(spec: &Ext4Spec<'_>, work: &Path) -> Result<PathBuf, Ext4Error> {
    let conf = work.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).map_err(|source| Ext4Error::Io {
        file: conf.clone(),
        source,
    })?;
    let image = work.join(format!("{}.ext4", spec.label));
    let file = std::fs::File::create(&image).map_err(|source| Ext4Error::Io {
        file: image.clone(),
        source,
    })?;
    file.set_len(spec.size).map_err(|source| Ext4Error::Io {
        file: image.clone(),
        source,
    })?;
    drop(file);
    let output = Command::new("mke2fs")
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", spec.epoch.to_string())
        .env("LC_ALL", "C")
        .args(["-q", "-F", "-t", "ext4", "-L", spec.label, "-U"])
        .arg(spec.uuid.to_string())
        .arg("-E")
        .arg(format!(
            "hash_seed={},root_owner=0:0,nodiscard",
            spec.hash_seed
        ))
        .arg(&image)
        .output()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Ext4Error::NoMke2fs
            } else {
                Ext4Error::Io {
                    file: image.clone(),
                    source: e,
                }
            }
        })?;
    if !output.status.success() {
        return Err(Ext4Error::Failed {
            label: spec.label.to_string(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_make_the_same_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Ext4Spec {
            label: "STATE",
            uuid: Uuid::parse_str("11111111-2222-4333-8444-555555555555").unwrap(),
            hash_seed: Uuid::parse_str("66666666-7777-4888-9999-aaaaaaaaaaaa").unwrap(),
            size: 16 << 20,
            epoch: 1_700_000_000,
        };
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let fa = std::fs::read(make(&spec, &a).unwrap()).unwrap();
        let fb = std::fs::read(make(&spec, &b).unwrap()).unwrap();
        assert_eq!(fa.len(), 16 << 20);
        assert!(fa == fb, "two mke2fs runs differ");
        // Superblock at 1024: magic at +0x38, UUID at +0x68, label at +0x78.
        assert_eq!(&fa[1024 + 0x38..1024 + 0x3a], &[0x53, 0xEF]);
        assert_eq!(&fa[1024 + 0x68..1024 + 0x78], spec.uuid.as_bytes());
        assert_eq!(&fa[1024 + 0x78..1024 + 0x7d], b"STATE");
    }
}
