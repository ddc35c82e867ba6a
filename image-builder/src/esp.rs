//! The EFI system partition: moved to `caisson-disk` (shared with the
//! node's installer); re-exported here for the builder's callers.

pub use caisson_disk::esp::*;
