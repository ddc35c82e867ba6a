//! The logs the API serves: the agent's own lines ([`ring`], fed by the
//! console logger) and the kernel's ([`kmsg`], read from /dev/kmsg).

pub mod kmsg;
pub mod ring;

pub use ring::{agent_log, LogRing};
