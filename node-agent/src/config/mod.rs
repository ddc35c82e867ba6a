//! The machine config on the node: where it comes from at boot
//! ([`source`]), what applying it changes live and what needs a reboot
//! ([`plan`], pure), the kernel settings it writes ([`sysctl`]), and the
//! `try`-mode confirmation window ([`tryout`], pure).

pub mod plan;
pub mod source;
pub mod sysctl;
pub mod tryout;

pub use plan::{plan, ApplyPlan, LiveStep};
pub use source::{BootConfig, Source};
