//! Where things are: the workspace, its target dir, the artifacts and the
//! programs the xtask builds; and cargo invocations rooted there.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Directories that hold system tools but are often missing from a user's PATH.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// The Rust target the node's static programs are built for.
pub const NODE_TARGET: &str = "x86_64-unknown-linux-gnu";

pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
}

impl Workspace {
    pub fn locate() -> Result<Workspace> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .canonicalize()
            .context("cannot resolve the workspace root")?;
        // Honour CARGO_TARGET_DIR like cargo does; by default target/ in the workspace.
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
            Some(dir) => root.join(dir),
            None => root.join("target"),
        };
        Ok(Workspace { root, target_dir })
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("artifacts.lock")
    }

    pub fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    pub fn default_spec(&self) -> PathBuf {
        self.root.join("image-builder/specs/qemu.toml")
    }

    pub fn builder_bin(&self) -> PathBuf {
        self.target_dir.join("release/image-builder")
    }

    pub fn node_bin(&self, name: &str) -> PathBuf {
        self.target_dir.join(NODE_TARGET).join("release").join(name)
    }

    /// `cargo <args>` in the workspace root.
    pub fn cargo(&self) -> Command {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&self.root);
        cmd.env("CARGO_TARGET_DIR", &self.target_dir);
        cmd
    }
}

/// Make sure children find tools in the sbin directories (sgdisk, mke2fs, …).
pub fn extend_path() {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    for d in SBIN_DIRS {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(PathBuf::from(d));
        }
    }
    if let Ok(joined) = std::env::join_paths(dirs) {
        // Called first thing in main, before any thread exists.
        std::env::set_var("PATH", joined);
    }
}

/// Run a command to completion; fail with the command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

pub fn describe(cmd: &Command) -> String {
    let mut words: Vec<OsString> = vec![cmd.get_program().to_owned()];
    words.extend(cmd.get_args().map(|a| a.to_owned()));
    words
        .iter()
        .map(|w| w.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
