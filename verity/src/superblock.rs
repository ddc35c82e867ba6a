//! cryptsetup's on-disk verity superblock (`struct verity_sb`): 512 bytes at
//! the hash offset, little-endian, so `veritysetup verify` and `dump` can
//! read the parameters without being told them. The kernel never reads it,
//! and `init` does not trust it: the command line carries what the kernel
//! needs, and the root hash pins the rest.

use crate::{VerityError, BLOCK_SIZE, HASH_ALGORITHM, MAX_SALT_SIZE};

pub const SUPERBLOCK_SIZE: usize = 512;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
const SB_VERSION: u32 = 1;
/// Hash type 1: the "normal" format (0 is Chrome OS's).
const HASH_TYPE: u32 = 1;

// Field offsets in `struct verity_sb`.
const OFF_VERSION: usize = 8;
const OFF_HASH_TYPE: usize = 12;
const OFF_UUID: usize = 16;
const OFF_ALGORITHM: usize = 32;
const ALGORITHM_LEN: usize = 32;
const OFF_DATA_BLOCK_SIZE: usize = 64;
const OFF_HASH_BLOCK_SIZE: usize = 68;
const OFF_DATA_BLOCKS: usize = 72;
const OFF_SALT_SIZE: usize = 80;
const OFF_SALT: usize = 88;

/// The parameters Caisson varies; everything else is fixed (format 1,
/// sha256, 4 KiB blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Raw bytes of the UUID, in its textual order.
    pub uuid: [u8; 16],
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

impl Superblock {
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        b[..8].copy_from_slice(SIGNATURE);
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&SB_VERSION.to_le_bytes());
        b[OFF_HASH_TYPE..OFF_HASH_TYPE + 4].copy_from_slice(&HASH_TYPE.to_le_bytes());
        b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.uuid);
        b[OFF_ALGORITHM..OFF_ALGORITHM + HASH_ALGORITHM.len()]
            .copy_from_slice(HASH_ALGORITHM.as_bytes());
        let block = BLOCK_SIZE as u32;
        b[OFF_DATA_BLOCK_SIZE..OFF_DATA_BLOCK_SIZE + 4].copy_from_slice(&block.to_le_bytes());
        b[OFF_HASH_BLOCK_SIZE..OFF_HASH_BLOCK_SIZE + 4].copy_from_slice(&block.to_le_bytes());
        b[OFF_DATA_BLOCKS..OFF_DATA_BLOCKS + 8].copy_from_slice(&self.data_blocks.to_le_bytes());
        // TreeBuilder refuses longer salts; clamp rather than panic.
        let salt = &self.salt[..self.salt.len().min(MAX_SALT_SIZE)];
        b[OFF_SALT_SIZE..OFF_SALT_SIZE + 2].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        b[OFF_SALT..OFF_SALT + salt.len()].copy_from_slice(salt);
        b
    }

    /// Read a superblock back, refusing anything but Caisson's parameters.
    pub fn parse(b: &[u8]) -> Result<Superblock, VerityError> {
        let bad = |what: String| Err(VerityError::Superblock(what));
        if b.len() < SUPERBLOCK_SIZE {
            return bad(format!("{} bytes, expected {SUPERBLOCK_SIZE}", b.len()));
        }
        if &b[..8] != SIGNATURE {
            return bad("no \"verity\" signature".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        for (what, got, want) in [
            ("version", u32_at(OFF_VERSION), SB_VERSION),
            ("hash type", u32_at(OFF_HASH_TYPE), HASH_TYPE),
            (
                "data block size",
                u32_at(OFF_DATA_BLOCK_SIZE),
                BLOCK_SIZE as u32,
            ),
            (
                "hash block size",
                u32_at(OFF_HASH_BLOCK_SIZE),
                BLOCK_SIZE as u32,
            ),
        ] {
            if got != want {
                return bad(format!("{what} is {got}, expected {want}"));
            }
        }
        let algorithm = &b[OFF_ALGORITHM..OFF_ALGORITHM + ALGORITHM_LEN];
        let name_len = algorithm
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(ALGORITHM_LEN);
        if &algorithm[..name_len] != HASH_ALGORITHM.as_bytes() {
            let name = String::from_utf8_lossy(&algorithm[..name_len]).into_owned();
            return bad(format!("algorithm {name:?}, expected {HASH_ALGORITHM}"));
        }
        let salt_size = u16::from_le_bytes([b[OFF_SALT_SIZE], b[OFF_SALT_SIZE + 1]]) as usize;
        if salt_size > MAX_SALT_SIZE {
            return bad(format!("salt size {salt_size} is over {MAX_SALT_SIZE}"));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[OFF_UUID..OFF_UUID + 16]);
        let mut blocks = [0u8; 8];
        blocks.copy_from_slice(&b[OFF_DATA_BLOCKS..OFF_DATA_BLOCKS + 8]);
        Ok(Superblock {
            uuid,
            data_blocks: u64::from_le_bytes(blocks),
            salt: b[OFF_SALT..OFF_SALT + salt_size].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            uuid: *b"0123456789abcdef",
            data_blocks: 0x0102_0304,
            salt: vec![0xab; 32],
        }
    }

    #[test]
    fn fields_sit_where_cryptsetup_puts_them() {
        let b = sample().to_bytes();
        assert_eq!(&b[..8], b"verity\0\0");
        assert_eq!(b[8..16], [1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&b[16..32], b"0123456789abcdef");
        assert_eq!(&b[32..39], b"sha256\0");
        assert_eq!(b[64..72], [0, 0x10, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(b[72..80], [4, 3, 2, 1, 0, 0, 0, 0]);
        assert_eq!(b[80..82], [32, 0]);
        assert!(b[82..88].iter().all(|&c| c == 0));
        assert!(b[88..120].iter().all(|&c| c == 0xab));
        assert!(b[120..].iter().all(|&c| c == 0));
    }

    #[test]
    fn parse_reads_back_and_refuses_foreign_parameters() {
        let sb = sample();
        assert_eq!(Superblock::parse(&sb.to_bytes()).unwrap(), sb);
        let mut other = sb.to_bytes();
        other[32..39].copy_from_slice(b"sha1\0\0\0");
        let e = Superblock::parse(&other).unwrap_err().to_string();
        assert!(e.contains("algorithm \"sha1\""), "{e}");
        let mut small_blocks = sb.to_bytes();
        small_blocks[64..68].copy_from_slice(&512u32.to_le_bytes());
        let e = Superblock::parse(&small_blocks).unwrap_err().to_string();
        assert!(e.contains("data block size is 512"), "{e}");
        assert!(Superblock::parse(&[0; 512]).is_err());
        assert!(Superblock::parse(&[0; 10]).is_err());
    }
}
