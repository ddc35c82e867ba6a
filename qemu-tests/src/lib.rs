//! Test harness for Caisson images under QEMU.
//!
//! Every VM gets its own directory under `target/qemu-tests/<name>/` (wiped at
//! start) holding a qcow2 overlay over the shared built image, a private copy
//! of the OVMF variable store, the serial console log and the QMP socket. The
//! built image itself is never written. A [`Vm`] kills its QEMU when dropped,
//! also when the test panics.
//!
//! The tests get their inputs from the environment that `cargo xtask test`
//! sets (see [`env`]); without it they fail with a message saying so.

pub mod console;
pub mod disk;
pub mod env;
mod error;
pub mod net;
pub mod nodectl;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod tools;
mod vm;

pub use error::HarnessError;
pub use vm::{Boot, Vm, VmOptions};

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
