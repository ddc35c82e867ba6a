//! `artifacts.lock`: every input of an image, pinned by package, version and
//! sha256. `xtask fetch` fills `artifacts/` from it; the builder only reads.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum LockError {
    #[error("cannot read lock file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("lock file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("lock file {path}: version {found} is not supported (expected {LOCK_VERSION})")]
    Version { path: PathBuf, found: u32 },
    #[error("lock file {path}: artifact {name:?} appears twice")]
    Duplicate { path: PathBuf, name: String },
    #[error("lock file {path}: artifact {name:?}: sha256 {sha256:?} is not 64 hex digits")]
    BadDigest {
        path: PathBuf,
        name: String,
        sha256: String,
    },
    #[error("artifact {name:?} is not pinned in {path}")]
    NotPinned { path: PathBuf, name: String },
    #[error("artifact {name:?} ({package} {version}) is missing: expected {file}; run `cargo xtask fetch`")]
    Missing {
        name: String,
        package: String,
        version: String,
        file: PathBuf,
    },
    #[error("cannot read artifact {file}: {source}")]
    ReadArtifact { file: PathBuf, source: io::Error },
    #[error("artifact {name:?} ({file}) has sha256 {actual}, but artifacts.lock pins {expected}")]
    Mismatch {
        name: String,
        file: PathBuf,
        expected: String,
        actual: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// How specs refer to this artifact.
    pub name: String,
    /// Debian package name.
    pub package: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
    /// A meta-package whose dependency names the concrete package on update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<String>,
}

impl Artifact {
    /// The file name `apt-get download` gives this package.
    pub fn file_name(&self) -> String {
        // apt escapes the epoch colon in file names.
        format!(
            "{}_{}_{}.deb",
            self.package,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    pub suite: String,
    #[serde(rename = "artifact", default)]
    pub artifacts: Vec<Artifact>,
}

impl Lock {
    pub fn load(path: &Path) -> Result<Lock, LockError> {
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Lock::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Lock, LockError> {
        let lock: Lock = toml::from_str(text).map_err(|e| LockError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if lock.version != LOCK_VERSION {
            return Err(LockError::Version {
                path: path.to_path_buf(),
                found: lock.version,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &lock.artifacts {
            if !seen.insert(a.name.as_str()) {
                return Err(LockError::Duplicate {
                    path: path.to_path_buf(),
                    name: a.name.clone(),
                });
            }
            if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(LockError::BadDigest {
                    path: path.to_path_buf(),
                    name: a.name.clone(),
                    sha256: a.sha256.clone(),
                });
            }
        }
        Ok(lock)
    }

    pub fn get(&self, lock_path: &Path, name: &str) -> Result<&Artifact, LockError> {
        self.artifacts
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| LockError::NotPinned {
                path: lock_path.to_path_buf(),
                name: name.to_string(),
            })
    }

    /// Render with a header comment; used by `xtask fetch --update`.
    pub fn render(&self, header: &str) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!("{header}{body}")
    }
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Find `artifact` in `dir` and check its sha256 against the pin.
pub fn verify(dir: &Path, artifact: &Artifact) -> Result<PathBuf, LockError> {
    let file = dir.join(artifact.file_name());
    if !file.exists() {
        return Err(LockError::Missing {
            name: artifact.name.clone(),
            package: artifact.package.clone(),
            version: artifact.version.clone(),
            file,
        });
    }
    let actual = sha256_file(&file).map_err(|source| LockError::ReadArtifact {
        file: file.clone(),
        source,
    })?;
    if !actual.eq_ignore_ascii_case(&artifact.sha256) {
        return Err(LockError::Mismatch {
            name: artifact.name.clone(),
            file,
            expected: artifact.sha256.clone(),
            actual,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"
version = 1
suite = "bookworm"
[[artifact]]
name = "runc"
package = "runc"
version = "1:1.1.5"
arch = "amd64"
sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
"#;

    #[test]
    fn parses_and_names_files_like_apt() {
        let lock = Lock::parse(Path::new("a.lock"), LOCK).unwrap();
        let a = lock.get(Path::new("a.lock"), "runc").unwrap();
        assert_eq!(a.file_name(), "runc_1%3a1.1.5_amd64.deb");
        let e = lock.get(Path::new("a.lock"), "k3s").unwrap_err();
        assert!(e.to_string().contains("\"k3s\" is not pinned"), "{e}");
    }

    #[test]
    fn rejects_unknown_keys_and_bad_digests() {
        let e = Lock::parse(
            Path::new("a.lock"),
            &LOCK.replace("arch =", "colour = \"x\"\narch ="),
        )
        .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = Lock::parse(Path::new("a.lock"), &LOCK.replace("2cf24dba", "zz")).unwrap_err();
        assert!(matches!(e, LockError::BadDigest { .. }), "{e}");
    }

    #[test]
    fn verify_detects_missing_and_mismatched_files() {
        let dir = tempfile::tempdir().unwrap();
        let lock = Lock::parse(Path::new("a.lock"), LOCK).unwrap();
        let a = &lock.artifacts[0];
        assert!(matches!(
            verify(dir.path(), a),
            Err(LockError::Missing { .. })
        ));
        std::fs::write(dir.path().join(a.file_name()), b"hello").unwrap();
        // sha256("hello") is the pinned digest.
        assert_eq!(
            verify(dir.path(), a).unwrap(),
            dir.path().join(a.file_name())
        );
        std::fs::write(dir.path().join(a.file_name()), b"hellO").unwrap();
        let e = verify(dir.path(), a).unwrap_err();
        assert!(
            e.to_string().contains("artifacts.lock pins 2cf24dba"),
            "{e}"
        );
    }

    #[test]
    fn render_round_trips() {
        let lock = Lock::parse(Path::new("a.lock"), LOCK).unwrap();
        let again = Lock::parse(Path::new("a.lock"), &lock.render("# header\n")).unwrap();
        assert_eq!(again, lock);
    }
}
