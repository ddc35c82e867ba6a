//! image-builder: pinned artifacts + an image spec → bootable disk images.
//! The builder never touches the network.

pub mod initrd;
pub mod lock;
