//! Loading modules into the running kernel with `finit_module(2)`: the only
//! part of this crate that talks to the kernel.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

use crate::{KmodError, ModuleIndex};

/// Loads modules with their dependencies and remembers what is loaded, so
/// each module is loaded at most once per boot.
#[derive(Debug)]
pub struct Loader {
    modules_dir: PathBuf,
    index: ModuleIndex,
    loaded: BTreeSet<String>,
}

impl Loader {
    /// `modules_dir` is `/usr/lib/modules/<kver>`. What is already loaded
    /// is read from `/proc/modules`; if that cannot be read the set starts
    /// empty, which is harmless because the kernel answers EEXIST.
    pub fn new(modules_dir: PathBuf, index: ModuleIndex) -> Loader {
        let loaded = std::fs::read_to_string("/proc/modules")
            .map(|text| parse_proc_modules(&text))
            .unwrap_or_default();
        Loader::with_loaded(modules_dir, index, loaded)
    }

    /// As `new`, with the set of loaded modules given (tests, or callers
    /// that have already read /proc/modules).
    pub fn with_loaded(
        modules_dir: PathBuf,
        index: ModuleIndex,
        loaded: BTreeSet<String>,
    ) -> Loader {
        Loader {
            modules_dir,
            index,
            loaded,
        }
    }

    pub fn index(&self) -> &ModuleIndex {
        &self.index
    }

    pub fn is_loaded(&self, name: &str) -> bool {
        self.loaded.contains(&crate::normalize(name))
    }

    /// The modules `load_with_deps(name)` would load, in order.
    pub fn pending(&self, name: &str) -> Result<Vec<String>, KmodError> {
        let order = self.index.load_order(&[name])?;
        Ok(order
            .into_iter()
            .filter(|m| !self.loaded.contains(m))
            .collect())
    }

    /// Load `name` and whatever it needs, dependencies first. A module the
    /// kernel already has (EEXIST) counts as loaded. Returns the modules
    /// this call loaded. Builtins need nothing and return an empty list.
    pub fn load_with_deps(&mut self, name: &str) -> Result<Vec<String>, KmodError> {
        let mut newly = Vec::new();
        for module in self.pending(name)? {
            if self.load_one(&module)? {
                newly.push(module.clone());
            }
            self.loaded.insert(module);
        }
        Ok(newly)
    }

    /// true if loaded now, false if the kernel already had it.
    fn load_one(&self, name: &str) -> Result<bool, KmodError> {
        let rel = self
            .index
            .path_of(name)
            .ok_or_else(|| KmodError::UnknownModule {
                name: name.to_string(),
            })?;
        let path = self.modules_dir.join(rel);
        let file = std::fs::File::open(&path).map_err(|source| KmodError::Open {
            name: name.to_string(),
            path: path.clone(),
            source,
        })?;
        match finit_module(&file, NO_PARAMS, ModuleInitFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(errno) => Err(KmodError::Load {
                name: name.to_string(),
                path,
                errno,
            }),
        }
    }
}

const NO_PARAMS: &CStr = c"";

/// Module names from `/proc/modules` (first word of each line).
pub fn parse_proc_modules(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(crate::normalize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> ModuleIndex {
        ModuleIndex::parse(
            "kernel/virtio_blk.ko: kernel/virtio_ring.ko kernel/virtio.ko\nkernel/virtio_ring.ko: kernel/virtio.ko\nkernel/virtio.ko:\n",
            "",
            "kernel/fs/ext4/ext4.ko\n",
        )
        .unwrap()
    }

    #[test]
    fn proc_modules_names_are_the_first_word() {
        let text = "virtio_blk 24576 2 - Live 0x0000000000000000\nvirtio_ring 40960 3 virtio_blk,virtio_pci, Live 0x0\n";
        assert_eq!(
            parse_proc_modules(text),
            BTreeSet::from(["virtio_blk".to_string(), "virtio_ring".to_string()])
        );
    }

    #[test]
    fn already_loaded_modules_and_builtins_are_not_loaded_again() {
        let loader = Loader::with_loaded(
            "/nonexistent".into(),
            index(),
            BTreeSet::from(["virtio".to_string()]),
        );
        assert_eq!(
            loader.pending("virtio_blk").unwrap(),
            ["virtio_ring", "virtio_blk"]
        );
        assert!(loader.pending("ext4").unwrap().is_empty());
        assert!(matches!(
            loader.pending("nope"),
            Err(KmodError::UnknownModule { .. })
        ));
    }

    #[test]
    fn a_missing_module_file_fails_before_any_syscall_naming_module_and_path() {
        // virtio is marked loaded, so the first file touched is virtio_ring,
        // which does not exist: the loader must stop there with context.
        let dir = tempfile::tempdir().unwrap();
        let mut loader = Loader::with_loaded(
            dir.path().into(),
            index(),
            BTreeSet::from(["virtio".to_string()]),
        );
        match loader.load_with_deps("virtio_blk") {
            Err(e @ KmodError::Open { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("virtio_ring") && msg.contains("kernel/virtio_ring.ko"),
                    "{msg}"
                );
            }
            other => panic!("expected Open error, got {other:?}"),
        }
        assert!(!loader.is_loaded("virtio_ring"));
        assert_eq!(loader.load_with_deps("ext4").unwrap(), Vec::<String>::new());
    }
}
