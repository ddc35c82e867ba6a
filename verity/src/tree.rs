//! The hash tree: its geometry, and building it from a stream of data.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::superblock::Superblock;
use crate::target::{OnCorruption, VerityTarget};
use crate::{Digest, VerityError, BLOCK_SIZE, DIGEST_SIZE, HASHES_PER_BLOCK, MAX_SALT_SIZE};

const BLOCK: usize = BLOCK_SIZE as usize;
/// log2(HASHES_PER_BLOCK)
const HASH_PER_BLOCK_BITS: u32 = HASHES_PER_BLOCK.trailing_zeros();

/// How many hash blocks each level of the tree has. Level 0 holds the
/// digests of the data blocks; the last level is a single block whose
/// salted digest is the root hash. One data block needs no tree at all:
/// the root hash is that block's digest (as in the kernel and cryptsetup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    data_blocks: u64,
    /// Blocks per level, level 0 first.
    levels: Vec<u64>,
}

impl Geometry {
    pub fn new(data_blocks: u64) -> Geometry {
        // The kernel's and cryptsetup's rule: the fewest levels whose
        // fan-out covers every data block.
        let mut count = 0u32;
        while data_blocks > 0
            && HASH_PER_BLOCK_BITS * count < 64
            && (data_blocks - 1) >> (HASH_PER_BLOCK_BITS * count) != 0
        {
            count += 1;
        }
        let levels = (1..=count)
            .map(|i| {
                let shift = HASH_PER_BLOCK_BITS * i;
                if shift >= 64 {
                    1
                } else {
                    data_blocks.div_ceil(1u64 << shift)
                }
            })
            .collect();
        Geometry {
            data_blocks,
            levels,
        }
    }

    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    /// Hash blocks of level `level` (0 = the digests of the data).
    pub fn level_blocks(&self, level: usize) -> u64 {
        self.levels.get(level).copied().unwrap_or(0)
    }

    /// Where level `level` starts in the tree, in blocks: the levels nearer
    /// the root come first on disk.
    pub fn level_start(&self, level: usize) -> u64 {
        self.levels.iter().skip(level + 1).sum()
    }

    pub fn tree_blocks(&self) -> u64 {
        self.levels.iter().sum()
    }

    /// Bytes the hash area takes: the superblock's block, then the tree.
    pub fn hash_area_size(&self) -> u64 {
        (1 + self.tree_blocks()) * BLOCK_SIZE
    }
}

/// Salted sha256 as format 1 defines it: sha256(salt || block).
#[derive(Clone)]
struct SaltedHasher {
    after_salt: Sha256,
}

impl SaltedHasher {
    fn new(salt: &[u8]) -> SaltedHasher {
        let mut after_salt = Sha256::new();
        after_salt.update(salt);
        SaltedHasher { after_salt }
    }

    fn digest(&self, block: &[u8]) -> Digest {
        let mut h = self.after_salt.clone();
        h.update(block);
        h.finalize().into()
    }
}

/// Feeds data through in any chunk sizes; each full 4 KiB block is hashed
/// as it completes, and only the level-0 digests are kept (32 bytes per
/// 4 KiB of data).
pub struct TreeBuilder {
    salt: Vec<u8>,
    hasher: SaltedHasher,
    partial: Vec<u8>,
    leaves: Vec<u8>,
    data_size: u64,
}

impl TreeBuilder {
    pub fn new(salt: &[u8]) -> Result<TreeBuilder, VerityError> {
        if salt.len() > MAX_SALT_SIZE {
            return Err(VerityError::SaltTooLong { len: salt.len() });
        }
        Ok(TreeBuilder {
            salt: salt.to_vec(),
            hasher: SaltedHasher::new(salt),
            partial: Vec::with_capacity(BLOCK),
            leaves: Vec::new(),
            data_size: 0,
        })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.data_size += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (BLOCK - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < BLOCK {
                return;
            }
            let digest = self.hasher.digest(&self.partial);
            self.leaves.extend_from_slice(&digest);
            self.partial.clear();
        }
        let mut blocks = data.chunks_exact(BLOCK);
        for block in &mut blocks {
            let digest = self.hasher.digest(block);
            self.leaves.extend_from_slice(&digest);
        }
        self.partial.extend_from_slice(blocks.remainder());
    }

    /// The last partial block counts as if padded with zeroes to 4 KiB:
    /// whoever writes the data must write (or leave) those zeroes too.
    pub fn finish(mut self) -> Result<HashTree, VerityError> {
        if !self.partial.is_empty() {
            self.partial.resize(BLOCK, 0);
            let digest = self.hasher.digest(&self.partial);
            self.leaves.extend_from_slice(&digest);
        }
        let data_blocks = (self.leaves.len() / DIGEST_SIZE) as u64;
        if data_blocks == 0 {
            return Err(VerityError::Empty);
        }
        let geometry = Geometry::new(data_blocks);
        let mut tree = vec![0u8; (geometry.tree_blocks() * BLOCK_SIZE) as usize];
        // `below` holds the digests of the level under the one being filled.
        let mut below = self.leaves;
        for level in 0..geometry.levels() {
            let start = (geometry.level_start(level) * BLOCK_SIZE) as usize;
            let blocks = geometry.level_blocks(level) as usize;
            let area = &mut tree[start..start + blocks * BLOCK];
            // Digests are 32 bytes, a power of two: they are packed as is.
            area[..below.len()].copy_from_slice(&below);
            below = area
                .chunks_exact(BLOCK)
                .flat_map(|block| self.hasher.digest(block))
                .collect();
        }
        let mut root_hash = [0u8; DIGEST_SIZE];
        root_hash.copy_from_slice(&below[..DIGEST_SIZE]);
        Ok(HashTree {
            geometry,
            salt: self.salt,
            root_hash,
            tree,
            data_size: self.data_size,
        })
    }
}

/// Build the tree over everything `reader` yields, 1 MiB at a time.
pub fn hash_reader(mut reader: impl Read, salt: &[u8]) -> Result<HashTree, VerityError> {
    let mut builder = TreeBuilder::new(salt)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => builder.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(VerityError::Read(e)),
        }
    }
    builder.finish()
}

/// A finished tree over some data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashTree {
    geometry: Geometry,
    salt: Vec<u8>,
    root_hash: Digest,
    tree: Vec<u8>,
    data_size: u64,
}

impl HashTree {
    pub fn root_hash(&self) -> &Digest {
        &self.root_hash
    }

    pub fn root_hash_hex(&self) -> String {
        hex::encode(self.root_hash)
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Bytes of data read, before padding to whole blocks.
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    /// The tree in on-disk order (top level first), every block padded.
    pub fn tree(&self) -> &[u8] {
        &self.tree
    }

    /// When the hash area follows the data on the same device: the first
    /// byte after the last (zero-padded) data block.
    pub fn appended_hash_offset(&self) -> u64 {
        self.geometry.data_blocks() * BLOCK_SIZE
    }

    pub fn superblock(&self, uuid: [u8; 16]) -> Superblock {
        Superblock {
            uuid,
            data_blocks: self.geometry.data_blocks(),
            salt: self.salt.clone(),
        }
    }

    /// What goes at the hash offset: the superblock, zeroes to the end of
    /// its block, then the tree. Returns the bytes written.
    pub fn write_hash_area(&self, uuid: [u8; 16], out: &mut impl Write) -> io::Result<u64> {
        let mut first = vec![0u8; BLOCK];
        let sb = self.superblock(uuid).to_bytes();
        first[..sb.len()].copy_from_slice(&sb);
        out.write_all(&first)?;
        out.write_all(&self.tree)?;
        Ok(self.geometry.hash_area_size())
    }

    /// The kernel target for data and hash area on one device, the hash
    /// area at `appended_hash_offset`.
    pub fn appended_target(&self, device: &str, on_corruption: OnCorruption) -> VerityTarget {
        VerityTarget::appended(
            device,
            self.appended_hash_offset(),
            self.root_hash,
            self.salt.clone(),
            on_corruption,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_the_kernels_level_rule() {
        let cases: [(u64, &[u64]); 7] = [
            (1, &[]),
            (2, &[1]),
            (128, &[1]),
            (129, &[2, 1]),
            (16384, &[128, 1]),
            (16385, &[129, 2, 1]),
            // A 2 GiB partition.
            (524288, &[4096, 32, 1]),
        ];
        for (blocks, levels) in cases {
            let g = Geometry::new(blocks);
            let got: Vec<u64> = (0..g.levels()).map(|l| g.level_blocks(l)).collect();
            assert_eq!(got, levels, "{blocks} data blocks");
            assert_eq!(g.tree_blocks(), levels.iter().sum::<u64>());
        }
        let g = Geometry::new(16385);
        assert_eq!(
            [g.level_start(2), g.level_start(1), g.level_start(0)],
            [0, 1, 3]
        );
        assert_eq!(g.hash_area_size(), (1 + 132) * 4096);
        assert_eq!(Geometry::new(u64::MAX).levels(), 10);
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn chunk_sizes_do_not_change_the_tree() {
        let data = data(129 * 4096 + 100);
        let mut whole = TreeBuilder::new(b"salt").unwrap();
        whole.update(&data);
        let whole = whole.finish().unwrap();
        for chunk in [1, 7, 4095, 4097, 65536] {
            let mut b = TreeBuilder::new(b"salt").unwrap();
            for c in data.chunks(chunk) {
                b.update(c);
            }
            assert_eq!(b.finish().unwrap(), whole, "chunks of {chunk}");
        }
        assert_eq!(whole.geometry().data_blocks(), 130);
        assert_eq!(whole.data_size(), data.len() as u64);
        assert_eq!(whole.appended_hash_offset(), 130 * 4096);
    }

    #[test]
    fn one_block_has_no_tree_and_its_digest_is_the_root() {
        let block = data(4096);
        let tree = hash_reader(&block[..], b"s").unwrap();
        assert!(tree.tree().is_empty());
        let mut h = Sha256::new();
        h.update(b"s");
        h.update(&block);
        let expected: Digest = h.finalize().into();
        assert_eq!(tree.root_hash(), &expected);
    }

    #[test]
    fn two_levels_hash_the_salted_blocks_below() {
        let data = data(129 * 4096);
        let tree = hash_reader(&data[..], b"").unwrap();
        let h = SaltedHasher::new(b"");
        let top = &tree.tree()[..4096];
        let leaf0 = &tree.tree()[4096..8192];
        let leaf1 = &tree.tree()[8192..12288];
        assert_eq!(&leaf0[..32], &h.digest(&data[..4096]));
        assert_eq!(&leaf1[..32], &h.digest(&data[128 * 4096..]));
        assert!(leaf1[32..].iter().all(|&b| b == 0), "padding is zeroes");
        assert_eq!(&top[..32], &h.digest(leaf0));
        assert_eq!(&top[32..64], &h.digest(leaf1));
        assert_eq!(tree.root_hash(), &h.digest(top));
    }

    #[test]
    fn empty_data_and_long_salts_are_refused() {
        assert!(matches!(hash_reader(&[][..], b""), Err(VerityError::Empty)));
        assert!(matches!(
            TreeBuilder::new(&[0; 257]),
            Err(VerityError::SaltTooLong { len: 257 })
        ));
    }

    #[test]
    fn hash_area_is_superblock_block_then_tree() {
        let tree = hash_reader(&data(3 * 4096)[..], &[7; 32]).unwrap();
        let mut area = Vec::new();
        let n = tree.write_hash_area([1; 16], &mut area).unwrap();
        assert_eq!(n, area.len() as u64);
        assert_eq!(area.len(), 2 * 4096);
        assert_eq!(&area[..8], b"verity\0\0");
        assert!(area[512..4096].iter().all(|&b| b == 0));
        assert_eq!(&area[4096..], tree.tree());
    }
}
