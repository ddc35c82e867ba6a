//! Sealing the root image: the squashfs, zero-padded to a whole 4 KiB block,
//! then the dm-verity hash area (cryptsetup superblock, then the tree) that
//! `init` hands to the kernel and `veritysetup verify` checks independently.
//! The salt and the superblock UUID come from the image identity, so the
//! same inputs give the same bytes and the same root hash.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use caisson_layout::{derive_guid, VerityParams};
use caisson_verity::hash_reader;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// Domain separation for the salt: `sha256("caisson-verity-salt\0" || identity)`.
const SALT_DOMAIN: &[u8] = b"caisson-verity-salt\0";

#[derive(Debug, Error)]
pub enum SealError {
    #[error("dm-verity over {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("dm-verity over {path}: {source}")]
    Tree {
        path: PathBuf,
        source: caisson_verity::VerityError,
    },
}

/// What sealing added, for the boot entry and the build report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRoot {
    /// What goes on the slot's boot entry.
    pub params: VerityParams,
    /// Bytes of the squashfs itself.
    pub data_size: u64,
    /// Superblock block plus tree, bytes.
    pub hash_area_size: u64,
    /// The whole sealed image: data blocks, then the hash area.
    pub image_size: u64,
}

/// The salt of an image's root: derived, never random, so builds reproduce.
pub fn salt(identity: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SALT_DOMAIN);
    h.update(identity.as_bytes());
    h.finalize().into()
}

/// Append the hash area to `image` in place (after zero padding to 4 KiB)
/// and return the parameters `init` needs. The data is streamed once; only
/// the tree (1/128 of the data) is held in memory.
pub fn seal(image: &Path, identity: &str) -> Result<SealedRoot, SealError> {
    let io_err = |source| SealError::Io {
        path: image.to_path_buf(),
        source,
    };
    let salt = salt(identity);
    let tree = hash_reader(File::open(image).map_err(io_err)?, &salt).map_err(|source| {
        SealError::Tree {
            path: image.to_path_buf(),
            source,
        }
    })?;
    let hash_offset = tree.appended_hash_offset();
    let uuid = *derive_guid(identity, "verity").as_bytes();
    let mut file = OpenOptions::new().write(true).open(image).map_err(io_err)?;
    // The padding is part of the last data block's hash: zeroes, explicitly.
    file.set_len(hash_offset).map_err(io_err)?;
    file.seek(SeekFrom::Start(hash_offset)).map_err(io_err)?;
    let mut out = BufWriter::new(file);
    let hash_area_size = tree.write_hash_area(uuid, &mut out).map_err(io_err)?;
    out.flush().map_err(io_err)?;
    Ok(SealedRoot {
        params: VerityParams {
            root_hash: tree.root_hash_hex(),
            salt: hex::encode(tree.salt()),
            hash_offset,
        },
        data_size: tree.data_size(),
        hash_area_size,
        image_size: hash_offset + hash_area_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_is_derived_from_the_identity() {
        assert_eq!(salt("caisson-0.1.0"), salt("caisson-0.1.0"));
        assert_ne!(salt("caisson-0.1.0"), salt("caisson-0.1.1"));
        let mut h = Sha256::new();
        h.update(b"caisson-verity-salt\0caisson-0.1.0");
        assert_eq!(salt("caisson-0.1.0"), <[u8; 32]>::from(h.finalize()));
    }

    #[test]
    fn seal_pads_to_a_block_and_appends_superblock_and_tree() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("root.img");
        let data: Vec<u8> = (0..3 * 4096 + 10).map(|i| (i % 199) as u8).collect();
        std::fs::write(&image, &data).unwrap();
        let sealed = seal(&image, "t-1").unwrap();
        assert_eq!(sealed.data_size, data.len() as u64);
        assert_eq!(sealed.params.hash_offset, 4 * 4096);
        assert_eq!(sealed.params.data_blocks(), 4);
        assert_eq!(sealed.params.salt, hex::encode(salt("t-1")));
        // 4 blocks need one tree block; the superblock takes another.
        assert_eq!(sealed.hash_area_size, 2 * 4096);
        let bytes = std::fs::read(&image).unwrap();
        assert_eq!(bytes.len() as u64, sealed.image_size);
        assert_eq!(&bytes[..data.len()], &data[..]);
        assert!(bytes[data.len()..4 * 4096].iter().all(|&b| b == 0));
        assert_eq!(&bytes[4 * 4096..4 * 4096 + 8], b"verity\0\0");

        // Sealing the same bytes again gives the same root hash.
        std::fs::write(&image, &data).unwrap();
        assert_eq!(seal(&image, "t-1").unwrap(), sealed);
    }
}
