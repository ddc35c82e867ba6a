//! caisson-disk: writes a Caisson disk from `caisson_layout::DiskPlan`. One
//! implementation for the two writers of the layout: the image builder
//! (a sparse image file) and the node's installer (an opened block device).
//!
//! - [`writer`]: protective MBR, primary and backup GPT, each partition's
//!   contents, read-back hashes;
//! - [`esp`]: the EFI system partition (FAT32 via fatfs, systemd-boot,
//!   `loader.conf`, slot A's blessed entry) and its read-back check;
//! - [`grow`]: the last partition (DATA) grown to the disk's end, backup GPT
//!   moved there;
//! - [`payload`]: the install payload the builder puts in the root image
//!   and the installer reads (`/usr/lib/caisson/install/manifest.json`).
//!
//! The crate does I/O only on the `Read + Write + Seek` it is given (and on
//! host files an ESP plan names); device ioctls are the caller's.

// The node's installer runs this in PID 1, which must not panic.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod esp;
pub mod grow;
pub mod payload;
pub mod writer;

pub use esp::{Content, EspError, EspInputs, EspPlan};
pub use grow::{grow_last_partition, GrowError, Growth};
pub use writer::{gpt_entries, DiskError, DiskWriter, Fill};
