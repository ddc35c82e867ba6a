//! The config store on STATE: `config/current.toml` (what the node runs)
//! and `config/previous.toml` (what it ran before), mode 0600 in a 0700
//! directory.
//!
//! Every write is atomic: the text goes to a temporary file in the same
//! directory, is fsynced, renamed over the target, and the directory is
//! fsynced. A power cut at any point leaves either the old or the new file,
//! never a torn one. Replacing the current config writes `previous.toml`
//! first (a copy of the running config, not a rename of `current.toml`), so
//! there is no moment without a `current.toml`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

pub const CONFIG_DIR: &str = "config";
pub const CURRENT: &str = "current.toml";
pub const PREVIOUS: &str = "previous.toml";
/// Temporary files are `.<name>.tmp`; a crash can leave one behind.
const TEMP_PREFIX: &str = ".";
const TEMP_SUFFIX: &str = ".tmp";

#[derive(Debug, Error)]
#[error("config store: {action} {}: {source}", path.display())]
pub struct StoreError {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

fn err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError {
        action,
        path,
        source,
    }
}

#[derive(Debug, Clone)]
pub struct ConfigStore {
    dir: PathBuf,
}

impl ConfigStore {
    /// The store under `state` (the STATE mount point).
    pub fn new(state: &Path) -> ConfigStore {
        ConfigStore {
            dir: state.join(CONFIG_DIR),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    pub fn previous_path(&self) -> PathBuf {
        self.dir.join(PREVIOUS)
    }

    /// The current config's text; `None` when there is none.
    pub fn current(&self) -> Result<Option<String>, StoreError> {
        read_optional(&self.current_path())
    }

    pub fn previous(&self) -> Result<Option<String>, StoreError> {
        read_optional(&self.previous_path())
    }

    /// Make `new` current, keeping `previous` (the config running until
    /// now; `None` in maintenance mode) as the previous one.
    pub fn commit(&self, new: &str, previous: Option<&str>) -> Result<(), StoreError> {
        self.ensure_dir()?;
        match previous {
            Some(text) => write_atomic(&self.previous_path(), text.as_bytes())?,
            None => remove_durably(&self.previous_path())?,
        }
        write_atomic(&self.current_path(), new.as_bytes())
    }

    /// Put the store back as it was before a commit whose live apply
    /// failed: the current config first, since that is what the next boot
    /// reads. `None`: no such file.
    pub fn restore(&self, current: Option<&str>, previous: Option<&str>) -> Result<(), StoreError> {
        self.put(&self.current_path(), current)?;
        self.put(&self.previous_path(), previous)
    }

    fn put(&self, path: &Path, text: Option<&str>) -> Result<(), StoreError> {
        match text {
            Some(text) => {
                self.ensure_dir()?;
                write_atomic(path, text.as_bytes())
            }
            None => remove_durably(path),
        }
    }

    /// Delete temporary files a crash left behind; their names, for the log.
    pub fn clean_temp_files(&self) -> Result<Vec<String>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(err("list", &self.dir)(e)),
        };
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(err("list", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(err("remove", &path))?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    fn ensure_dir(&self) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(err("create", &self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(err("chmod", &self.dir))
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("read", path)(e)),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{TEMP_PREFIX}{name}{TEMP_SUFFIX}"))
}

/// Temporary file, fsync, rename, fsync of the directory. Mode 0600.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let temp = temp_path(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(err("create", &temp))?;
    // A stale temporary file keeps its old mode: set it again.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err("chmod", &temp))?;
    f.write_all(contents).map_err(err("write", &temp))?;
    f.sync_all().map_err(err("fsync", &temp))?;
    drop(f);
    std::fs::rename(&temp, path).map_err(err("rename into place", path))?;
    sync_parent(path)
}

fn remove_durably(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("remove", path)(e)),
    }
}

fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn commit_keeps_the_running_config_as_previous_with_owner_only_modes() {
        let state = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(state.path());
        assert_eq!(store.current().unwrap(), None);
        store.commit("one", None).unwrap();
        assert_eq!(store.current().unwrap().as_deref(), Some("one"));
        assert_eq!(store.previous().unwrap(), None);
        store.commit("two", Some("one")).unwrap();
        assert_eq!(store.current().unwrap().as_deref(), Some("two"));
        assert_eq!(store.previous().unwrap().as_deref(), Some("one"));
        assert_eq!(mode(&store.current_path()), 0o600);
        assert_eq!(mode(&store.previous_path()), 0o600);
        assert_eq!(mode(store.dir()), 0o700);
        // From maintenance mode (nothing running) the old previous goes.
        store.commit("three", None).unwrap();
        assert_eq!(store.previous().unwrap(), None);
    }

    #[test]
    fn a_crash_while_writing_never_loses_the_current_config() {
        let state = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(state.path());
        store.commit("good", None).unwrap();
        // Crash after the temporary file was (partly) written, before the
        // rename: the current config is untouched.
        std::fs::write(temp_path(&store.current_path()), "half-writ").unwrap();
        assert_eq!(store.current().unwrap().as_deref(), Some("good"));
        // Crash between writing previous.toml and current.toml.
        write_atomic(&store.previous_path(), b"good").unwrap();
        assert_eq!(store.current().unwrap().as_deref(), Some("good"));
        // The next boot cleans up; the next write works over a stale
        // temporary file (even one with a wider mode).
        let stale = temp_path(&store.current_path());
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
        store.commit("better", Some("good")).unwrap();
        assert_eq!(mode(&store.current_path()), 0o600);
        std::fs::write(&stale, "x").unwrap();
        assert_eq!(store.clean_temp_files().unwrap(), [".current.toml.tmp"]);
        assert_eq!(store.current().unwrap().as_deref(), Some("better"));
        let names: Vec<String> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn restore_puts_back_both_files_or_removes_them() {
        let state = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(state.path());
        store.commit("old", Some("older")).unwrap();
        store.commit("new", Some("old")).unwrap();
        store.restore(Some("old"), Some("older")).unwrap();
        assert_eq!(store.current().unwrap().as_deref(), Some("old"));
        assert_eq!(store.previous().unwrap().as_deref(), Some("older"));
        store.restore(None, None).unwrap();
        assert_eq!(store.current().unwrap(), None);
        assert_eq!(store.previous().unwrap(), None);
        store.restore(None, None).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let state = tempfile::tempdir().unwrap();
        let blocker = state.path().join("config");
        std::fs::write(&blocker, "a file where the directory should be").unwrap();
        let store = ConfigStore::new(state.path());
        let e = store.commit("x", None).unwrap_err().to_string();
        assert!(
            e.contains("config store: create") && e.contains("config"),
            "{e}"
        );
    }
}
