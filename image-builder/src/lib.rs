//! image-builder: pinned artifacts + an image spec → bootable disk images.
//! The builder never touches the network.
//!
//! [`build::build`] is the whole pipeline; the other modules each own one
//! concept: the spec, the lock, `.deb` reading, the planned file tree, the
//! ELF closure, the squashfs root, the initramfs, the ESP, ext4 via mke2fs
//! and the raw GPT disk; [`bundle`] writes the signed update bundle beside
//! the image and holds the operator's key-file commands.

// Build errors are rare and carry paths for the user; their size does not matter.
#![allow(clippy::result_large_err)]

pub mod build;
pub mod bundle;
pub mod deb;
pub mod disk;
pub mod elf;
pub mod esp;
pub mod ext4;
pub mod formats;
pub mod initrd;
mod inputs;
pub mod install_payload;
pub mod lock;
pub mod machine_config;
pub mod ova;
pub mod pxe;
pub mod qcow2;
mod rootfs;
pub mod spec;
pub mod squashfs;
pub mod tree;
pub mod verity;
pub mod vmdk;
