//! The kernel's `verity` target (Documentation/admin-guide/device-mapper/
//! verity.rst):
//!
//! ```text
//! <version> <dev> <hash_dev> <data_block_size> <hash_block_size>
//! <num_data_blocks> <hash_start_block> <algorithm> <digest> <salt>
//! [<#opt_params> <opt_params>]
//! ```

use crate::{Digest, BLOCK_SIZE, HASH_ALGORITHM, SECTOR_SIZE};

/// What the kernel does when a block does not match its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCorruption {
    /// The read fails with EIO (the target's default, no option).
    Eio,
    /// `restart_on_corruption`: the kernel restarts the machine.
    Restart,
}

/// One verity target covering the whole data area, ready to be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTarget {
    /// A path or `major:minor`.
    pub data_device: String,
    pub hash_device: String,
    pub data_blocks: u64,
    /// In hash blocks from the start of the hash device.
    pub hash_start_block: u64,
    pub root_hash: Digest,
    pub salt: Vec<u8>,
    pub on_corruption: OnCorruption,
}

impl VerityTarget {
    /// Data at the start of `device`, the hash area at `hash_offset` (a
    /// multiple of 4 KiB) on the same device: the data blocks end there, and
    /// the tree starts one block later, after the superblock.
    pub fn appended(
        device: &str,
        hash_offset: u64,
        root_hash: Digest,
        salt: Vec<u8>,
        on_corruption: OnCorruption,
    ) -> VerityTarget {
        let data_blocks = hash_offset / BLOCK_SIZE;
        VerityTarget {
            data_device: device.to_string(),
            hash_device: device.to_string(),
            data_blocks,
            hash_start_block: data_blocks + 1,
            root_hash,
            salt,
            on_corruption,
        }
    }

    /// Length of the mapped device in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.data_blocks * (BLOCK_SIZE / SECTOR_SIZE)
    }

    /// The target's parameter string (what follows `<start> <len> verity`).
    pub fn params(&self) -> String {
        let salt = if self.salt.is_empty() {
            "-".to_string()
        } else {
            hex::encode(&self.salt)
        };
        let mut line = format!(
            "1 {} {} {BLOCK_SIZE} {BLOCK_SIZE} {} {} {HASH_ALGORITHM} {} {salt}",
            self.data_device,
            self.hash_device,
            self.data_blocks,
            self.hash_start_block,
            hex::encode(self.root_hash),
        );
        match self.on_corruption {
            OnCorruption::Eio => {}
            OnCorruption::Restart => line.push_str(" 1 restart_on_corruption"),
        }
        line
    }

    /// The whole table line, as `dmsetup table` shows it.
    pub fn table_line(&self) -> String {
        format!("0 {} verity {}", self.sectors(), self.params())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_table_matches_the_kernel_syntax() {
        let t = VerityTarget::appended(
            "254:2",
            129 * 4096,
            [0x11; 32],
            vec![0xab, 0xcd],
            OnCorruption::Restart,
        );
        assert_eq!(t.data_blocks, 129);
        assert_eq!(t.hash_start_block, 130);
        assert_eq!(t.sectors(), 129 * 8);
        assert_eq!(
            t.table_line(),
            format!(
                "0 1032 verity 1 254:2 254:2 4096 4096 129 130 sha256 {} abcd 1 restart_on_corruption",
                "11".repeat(32)
            )
        );
        let eio = VerityTarget {
            salt: Vec::new(),
            on_corruption: OnCorruption::Eio,
            ..t
        };
        assert!(
            eio.params().ends_with(&format!("{} -", "11".repeat(32))),
            "{}",
            eio.params()
        );
    }
}
