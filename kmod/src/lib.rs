//! Kernel modules for Caisson: our own `depmod` (an index generated from each
//! `.ko`'s `.modinfo` section, because Debian's kernel package ships no
//! `modules.dep` and generates it at install time), parsing of the index
//! files, dependency ordering, modalias matching, and a `finit_module` loader.
//!
//! Everything except [`loader`] is pure computation over bytes and files, so
//! the image builder (build host), `init` and the agent share one
//! implementation of "which modules, in which order".

mod error;
mod fnmatch;
mod index;
pub mod loader;
mod modinfo;
mod order;

#[cfg(test)]
mod elf_fixture;

pub use error::KmodError;
pub use fnmatch::fnmatch;
pub use index::{ModuleIndex, MODULES_ALIAS, MODULES_BUILTIN, MODULES_DEP};
pub use modinfo::{modinfo_from_elf, modinfo_from_file, ModInfo};

/// The kernel treats `-` and `_` in module names as the same character;
/// `modules.dep` file names use either, `/proc/modules` always uses `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name a file path stands for: its file name without the
/// `.ko` (and compression) suffix, normalized.
pub fn name_from_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.zst", ".ko.xz", ".ko.gz", ".ko"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))
        .unwrap_or(file);
    normalize(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_turns_dashes_into_underscores_only() {
        assert_eq!(normalize("virtio-rng"), "virtio_rng");
        assert_eq!(normalize("amd-uncore-x"), "amd_uncore_x");
        assert_eq!(normalize("virtio_blk"), "virtio_blk");
        assert_eq!(normalize("Foo.Bar"), "Foo.Bar");
    }

    #[test]
    fn names_come_from_file_stems_with_any_compression_suffix() {
        assert_eq!(
            name_from_path("kernel/drivers/char/hw_random/virtio-rng.ko"),
            "virtio_rng"
        );
        assert_eq!(
            name_from_path("kernel/fs/squashfs/squashfs.ko.zst"),
            "squashfs"
        );
        assert_eq!(name_from_path("kernel/fs/xfs/xfs.ko.xz"), "xfs");
        assert_eq!(name_from_path("ext4.ko"), "ext4");
    }
}
