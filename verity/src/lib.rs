//! dm-verity for Caisson's read-only roots, in the on-disk format that
//! `veritysetup format` writes and the kernel's `verity` target reads:
//! format 1, sha256, 4 KiB data and hash blocks, a salt chosen by the caller.
//!
//! - [`TreeBuilder`] / [`hash_reader`] stream the data once (it is never held
//!   in memory) and build the hash tree, about 1/128 of the data's size.
//! - [`HashTree`] gives the root hash, the tree bytes in on-disk order (top
//!   level first), and the [`Superblock`] that lets `veritysetup verify`
//!   read the parameters back from the hash area.
//! - [`VerityTarget`] renders the kernel's table line for the same device.
//!
//! The crate does no I/O of its own beyond the reader and writer it is given,
//! so `init`, the builder and (later) the agent share one implementation.

mod superblock;
mod target;
mod tree;

use thiserror::Error;

pub use superblock::{Superblock, SUPERBLOCK_SIZE};
pub use target::{OnCorruption, VerityTarget};
pub use tree::{hash_reader, Geometry, HashTree, TreeBuilder};

/// Data and hash block size, bytes.
pub const BLOCK_SIZE: u64 = 4096;
/// The kernel counts in 512-byte sectors.
pub const SECTOR_SIZE: u64 = 512;
/// sha256 digest size; a power of two, so format 1 stores digests unpadded.
pub const DIGEST_SIZE: usize = 32;
/// Digests per hash block.
pub const HASHES_PER_BLOCK: u64 = BLOCK_SIZE / DIGEST_SIZE as u64;
/// The kernel's crypto API name and the superblock's algorithm field.
pub const HASH_ALGORITHM: &str = "sha256";
/// The superblock has room for 256 bytes of salt.
pub const MAX_SALT_SIZE: usize = 256;

pub type Digest = [u8; DIGEST_SIZE];

#[derive(Debug, Error)]
pub enum VerityError {
    #[error("dm-verity salt is {len} bytes; the superblock holds at most {MAX_SALT_SIZE}")]
    SaltTooLong { len: usize },
    #[error("reading the data to protect: {0}")]
    Read(#[source] std::io::Error),
    #[error("there is no data to protect (0 bytes)")]
    Empty,
    #[error("dm-verity superblock: {0}")]
    Superblock(String),
}
