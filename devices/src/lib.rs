//! Block devices as sysfs shows them, their GPTs, and the modaliases of
//! every device: what `init` needs to find the root, and what the agent
//! needs to find STATE/DATA and to coldplug drivers.
//!
//! Every function has a variant taking the sysfs and /dev roots
//! ([`SysRoots`]) so tests run on a fake tree.

mod block;
mod crc32;
mod error;
mod gpt;
mod modalias;

#[cfg(test)]
mod test_disk;

pub use block::{
    find_partition, find_partition_in, list_block_devices, list_block_devices_in, sibling_by_label,
    sibling_by_label_in, sibling_partition, sibling_partition_in, BlockDevice, PartitionInfo, SysRoots,
};
pub use error::DevicesError;
pub use gpt::{read_gpt, GptPartition};
pub use modalias::modaliases;
