//! A machine config embedded in the root, so a node boots configured
//! without STATE ever having held one (`node-agent` looks at STATE first,
//! then here). It is parsed and validated with `caisson_config` before
//! anything else is built: a config the node would refuse fails the build,
//! naming file, line, column and key path, and leaves no output.

use std::io;
use std::path::{Path, PathBuf};

use caisson_config::ConfigErrors;
use thiserror::Error;

use crate::build::BuildError;
use crate::rootfs::RootBuilder;

/// Where `node-agent` reads it (`caisson_layout::paths::EMBEDDED_CONFIG`),
/// relative to the root.
pub fn embedded_path() -> &'static str {
    caisson_layout::paths::EMBEDDED_CONFIG.trim_start_matches('/')
}

/// Only PID 1 reads it, and it may hold the cluster CA key.
pub const MODE: u32 = 0o600;

#[derive(Debug, Error)]
pub enum MachineConfigError {
    #[error("machine config {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("machine config {path} is invalid; the node would refuse it:\n{}", indent(.errors))]
    Invalid { path: PathBuf, errors: ConfigErrors },
}

fn indent(errors: &ConfigErrors) -> String {
    let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
    lines.join("\n")
}

/// A machine config that parsed and validated, with its exact text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfigFile {
    pub path: PathBuf,
    pub text: String,
}

impl MachineConfigFile {
    /// Read and validate. Errors name the file as given, so they read
    /// `cfg.toml:3:12: machine.hostname: …`.
    pub fn load(path: &Path) -> Result<MachineConfigFile, MachineConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| MachineConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::check(path, text)
    }

    pub fn check(path: &Path, text: String) -> Result<MachineConfigFile, MachineConfigError> {
        caisson_config::parse(&path.display().to_string(), &text).map_err(|errors| {
            MachineConfigError::Invalid {
                path: path.to_path_buf(),
                errors,
            }
        })?;
        Ok(MachineConfigFile {
            path: path.to_path_buf(),
            text,
        })
    }

    /// Put the validated text (not the file, which may have changed since)
    /// into the root at [`embedded_path`], staged as `staged`.
    pub(crate) fn embed(&self, root: &mut RootBuilder, staged: &Path) -> Result<(), BuildError> {
        std::fs::write(staged, &self.text).map_err(|source| BuildError::Staging {
            path: staged.to_path_buf(),
            source,
        })?;
        root.add_file("machine config", embedded_path(), staged, MODE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    #[test]
    fn an_invalid_config_names_file_line_column_and_key() {
        let text = "version = 1\n[machine]\nhostname = 5\n".to_string();
        let e = MachineConfigFile::check(Path::new("cfg/node.toml"), text).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("machine config cfg/node.toml is invalid; the node would refuse it:\n  cfg/node.toml:3:"),
            "{msg}"
        );
        assert!(msg.contains(": machine.hostname: "), "{msg}");

        let e = MachineConfigFile::check(Path::new("c.toml"), "version = 7\n".into()).unwrap_err();
        assert!(e.to_string().contains("c.toml:1:"), "{e}");
        let e = MachineConfigFile::load(Path::new("/nonexistent/c.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("machine config /nonexistent/c.toml: "),
            "{e}"
        );
    }

    #[test]
    fn a_valid_config_is_embedded_as_validated_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let text = include_str!("../../machine-configs/single-node-dhcp.toml").to_string();
        let config = MachineConfigFile::check(Path::new("node.toml"), text.clone()).unwrap();
        let mut root = RootBuilder::new();
        let staged = dir.path().join("config.toml");
        config.embed(&mut root, &staged).unwrap();
        assert_eq!(
            root.tree.get(embedded_path()),
            Some(&Node::File {
                mode: 0o600,
                size: text.len() as u64,
                source: Some(staged.clone()),
            })
        );
        assert_eq!(
            root.tree.get("usr/lib/caisson"),
            Some(&Node::Dir { mode: 0o755 })
        );
        assert_eq!(std::fs::read_to_string(&staged).unwrap(), text);
    }
}
