//! Contracts shared by every Caisson program: how the disk is laid out, how
//! slots and boot entries are named, what the kernel command line carries and
//! where things live in the root. This crate never does I/O, so the builder,
//! `init` and `node-agent` can all rely on it and it is tested in isolation.

pub mod boot_entry;
pub mod cmdline;
pub mod guid;
pub mod partitions;
pub mod paths;
pub mod slot;
pub mod slots;

pub use boot_entry::{BootEntry, BootEntryError};
pub use cmdline::{is_live, CaissonParams, CmdlineError, KernelCmdline, RootSpec, RootVerity, VerityParams};
pub use guid::derive_guid;
pub use partitions::{DiskPlan, PartitionPlan, PartitionRole, PlanError, SizesMiB};
pub use slot::Slot;
