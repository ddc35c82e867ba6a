//! The root file system of an image, assembled as a sorted [`FsTree`]:
//! skeleton (usr-merge links, mount points, os-release, base command line), the agent, payload
//! files with their symlink chains, k3s and image archives, libraries and
//! kernel modules, with a byte count per component for the build report.

use std::collections::BTreeMap;
use std::path::Path;

use caisson_layout::paths;

use crate::build::BuildError;
use crate::elf::ElfRoot;
use crate::inputs::Baked;
use crate::tree::{self, usr_merged, FsTree, Node};

/// The root file system being assembled, with a byte count per component.
pub(crate) struct RootBuilder {
    pub(crate) tree: FsTree,
    /// Uncompressed bytes each part of the root adds, e.g. `payload: runc`.
    pub(crate) components: BTreeMap<String, u64>,
    /// The agent and payload files: their shared-library needs must be met.
    pub(crate) elf_roots: Vec<ElfRoot>,
    pub(crate) closure: Vec<String>,
}

impl RootBuilder {
    pub(crate) fn new() -> RootBuilder {
        RootBuilder {
            tree: FsTree::new(),
            components: BTreeMap::new(),
            elf_roots: Vec::new(),
            closure: Vec::new(),
        }
    }

    pub(crate) fn insert(
        &mut self,
        component: &str,
        path: &str,
        node: Node,
    ) -> Result<(), BuildError> {
        // An identical entry added twice counts once.
        let size = match &node {
            Node::File { size, .. } if self.tree.get(&tree::normalize(path)?).is_none() => {
                Some(*size)
            }
            _ => None,
        };
        self.tree.insert(path, node)?;
        if let Some(size) = size {
            *self.components.entry(component.to_string()).or_default() += size;
        }
        Ok(())
    }

    /// usr-merge links, mount points, os-release.
    pub(crate) fn skeleton(
        &mut self,
        name: &str,
        version: &str,
        os_release_file: &Path,
    ) -> Result<(), BuildError> {
        for dir in ["usr/bin", "usr/sbin", "usr/lib", "usr/lib64"] {
            self.insert("skeleton", dir, Node::Dir { mode: 0o755 })?;
        }
        for (link, target) in tree::USR_MERGE_LINKS {
            self.insert(
                "skeleton",
                link,
                Node::Symlink {
                    target: target.to_string(),
                },
            )?;
        }
        for dir in paths::ROOT_MOUNT_POINTS {
            let mode = if *dir == "tmp" { 0o1777 } else { 0o755 };
            self.insert("skeleton", dir, Node::Dir { mode })?;
        }
        let text = os_release(name, version);
        std::fs::write(os_release_file, &text).map_err(|source| BuildError::Staging {
            path: os_release_file.to_path_buf(),
            source,
        })?;
        let node = Node::File {
            mode: 0o644,
            size: text.len() as u64,
            source: Some(os_release_file.to_path_buf()),
        };
        self.insert("skeleton", paths::OS_RELEASE.trim_start_matches('/'), node)
    }

    /// `usr/lib/caisson/cmdline`: the base command line, one line, for the
    /// agent to rebuild the boot entry's options with the config's args.
    pub(crate) fn base_cmdline(
        &mut self,
        words: &[String],
        staged: &Path,
    ) -> Result<(), BuildError> {
        let text = base_cmdline(words);
        std::fs::write(staged, &text).map_err(|source| BuildError::Staging {
            path: staged.to_path_buf(),
            source,
        })?;
        self.add_file("skeleton", paths::BASE_CMDLINE, staged, 0o644)
    }

    pub(crate) fn add_file(
        &mut self,
        component: &str,
        image_path: &str,
        host: &Path,
        mode: u32,
    ) -> Result<(), BuildError> {
        let size = std::fs::metadata(host)
            .map_err(|source| BuildError::Staging {
                path: host.to_path_buf(),
                source,
            })?
            .len();
        let node = Node::File {
            mode,
            size,
            source: Some(host.to_path_buf()),
        };
        self.insert(component, image_path.trim_start_matches('/'), node)
    }

    /// The k3s binary, air-gap and image archives. The binary is an ELF
    /// root like the payload: a dynamic one must find its libraries.
    pub(crate) fn add_baked(&mut self, baked: &[Baked]) -> Result<(), BuildError> {
        for b in baked {
            self.add_file(&b.component, &b.image_path, &b.host, b.mode)?;
            if b.image_path == paths::K3S_BINARY {
                self.elf_roots.push(ElfRoot {
                    name: b.image_path.trim_start_matches('/').to_string(),
                    file: b.host.clone(),
                });
            }
        }
        Ok(())
    }

    /// A chain of package paths (symlinks, then the file) into the root, usr-merged.
    pub(crate) fn add_chain(
        &mut self,
        component: &str,
        pkg: &FsTree,
        chain: &[String],
        artifact: &str,
    ) -> Result<(), BuildError> {
        for path in chain {
            let node = pkg.get(path).cloned().ok_or_else(|| BuildError::Artifact {
                artifact: artifact.to_string(),
                reason: format!("has no {path}"),
            })?;
            if let Node::Dir { .. } = node {
                return Err(BuildError::Artifact {
                    artifact: artifact.to_string(),
                    reason: format!("{path} is a directory"),
                });
            }
            if let Node::File {
                source: Some(file), ..
            } = &node
            {
                let name = usr_merged(path);
                self.elf_roots.push(ElfRoot {
                    name,
                    file: file.clone(),
                });
            }
            self.insert(component, &usr_merged(path), node)?;
        }
        Ok(())
    }

    /// A host directory tree (sorted) under `image_dir`.
    pub(crate) fn add_host_dir(
        &mut self,
        component: &str,
        host: &Path,
        image_dir: &str,
    ) -> Result<(), BuildError> {
        let staging = |source| BuildError::Staging {
            path: host.to_path_buf(),
            source,
        };
        let mut entries: Vec<_> = std::fs::read_dir(host)
            .map_err(staging)?
            .collect::<Result<_, _>>()
            .map_err(staging)?;
        entries.sort_by_key(|e| e.file_name());
        self.insert(component, image_dir, Node::Dir { mode: 0o755 })?;
        for entry in entries {
            let host_path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let image_path = format!("{image_dir}/{name}");
            let meta = std::fs::symlink_metadata(&host_path).map_err(staging)?;
            if meta.is_dir() {
                self.add_host_dir(component, &host_path, &image_path)?;
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&host_path).map_err(staging)?;
                self.insert(
                    component,
                    &image_path,
                    Node::Symlink {
                        target: target.to_string_lossy().into_owned(),
                    },
                )?;
            } else {
                self.add_file(component, &image_path, &host_path, 0o644)?;
            }
        }
        Ok(())
    }
}

/// The words, space-separated, one line.
pub fn base_cmdline(words: &[String]) -> String {
    format!("{}\n", words.join(" "))
}

pub fn os_release(name: &str, version: &str) -> String {
    format!(
        "NAME=\"Caisson\"\nID=caisson\nVERSION=\"{version}\"\nVERSION_ID={version}\n\
         PRETTY_NAME=\"Caisson {version}\"\nIMAGE_ID={name}\nIMAGE_VERSION={version}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_command_line_is_the_spec_words_on_one_line() {
        let words = ["console=ttyS0,115200".to_string(), "quiet".to_string()];
        assert_eq!(base_cmdline(&words), "console=ttyS0,115200 quiet\n");
        assert_eq!(base_cmdline(&[]), "\n");
    }
}
