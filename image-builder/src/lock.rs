//! `artifacts.lock`: every input of an image, pinned by sha256: Debian
//! packages by package, version and arch (`xtask fetch` downloads them),
//! plain files such as the k3s binary by file name and source URL (the user
//! downloads them; `xtask fetch` says how). The builder only reads.

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
    #[error("lock file {path}: artifact {name:?}: another artifact is already the file {file:?}")]
    DuplicateFile {
        path: PathBuf,
        name: String,
        file: String,
    },
    #[error("lock file {path}: artifact {name:?}: sha256 {sha256:?} is not 64 hex digits")]
    BadDigest {
        path: PathBuf,
        name: String,
        sha256: String,
    },
    #[error("artifact {name:?} is not pinned in {path}")]
    NotPinned { path: PathBuf, name: String },
    #[error("artifact {name:?} ({what}) is missing: expected {file}; {hint}")]
    Missing {
        name: String,
        /// `package version`, or `file <name>`.
        what: String,
        file: PathBuf,
        /// `run cargo xtask fetch`, or how to download a file artifact.
        hint: String,
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

/// One pinned input: how specs name it, its sha256, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawArtifact", into = "RawArtifact")]
pub struct Artifact {
    /// How specs refer to this artifact.
    pub name: String,
    pub sha256: String,
    pub origin: Origin,
}

/// Where an artifact comes from, which decides its file name in
/// `artifacts/` and how `cargo xtask fetch` obtains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A Debian package, downloaded with `apt-get download`.
    Deb(DebPin),
    /// A plain file (the k3s binary, an air-gap image archive) that the
    /// user downloads from `source` and copies into `artifacts/`.
    File(FilePin),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebPin {
    pub package: String,
    pub version: String,
    pub arch: String,
    /// A meta-package whose dependency names the concrete package on update.
    pub follows: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePin {
    /// Its file name in `artifacts/` (and in the image).
    pub file: String,
    /// Where to download it from, e.g. the release URL.
    pub source: String,
    /// Informational, e.g. `v1.30.3+k3s1`.
    pub version: Option<String>,
}

/// `kind` in the lock file; `deb` when left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Deb,
    File,
}

impl Kind {
    fn is_deb(&self) -> bool {
        *self == Kind::Deb
    }
}

/// An `[[artifact]]` table as written; [`Artifact`] is its checked form.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    name: String,
    #[serde(default, skip_serializing_if = "Kind::is_deb")]
    kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    follows: Option<String>,
}

impl TryFrom<RawArtifact> for Artifact {
    type Error = String;

    fn try_from(raw: RawArtifact) -> Result<Artifact, String> {
        let name = raw.name;
        let refuse = |kind: &str, key: &str, set: bool| -> Result<(), String> {
            if set {
                Err(format!(
                    "artifact {name:?}: `{key}` does not apply to kind = \"{kind}\""
                ))
            } else {
                Ok(())
            }
        };
        let need = |kind: &str, key: &str, value: Option<String>| {
            value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("artifact {name:?} (kind = \"{kind}\") needs `{key}`"))
        };
        let origin = match raw.kind {
            Kind::Deb => {
                refuse("deb", "file", raw.file.is_some())?;
                refuse("deb", "source", raw.source.is_some())?;
                Origin::Deb(DebPin {
                    package: need("deb", "package", raw.package)?,
                    version: need("deb", "version", raw.version)?,
                    arch: need("deb", "arch", raw.arch)?,
                    follows: raw.follows,
                })
            }
            Kind::File => {
                refuse("file", "package", raw.package.is_some())?;
                refuse("file", "arch", raw.arch.is_some())?;
                refuse("file", "follows", raw.follows.is_some())?;
                let file = need("file", "file", raw.file)?;
                if !is_plain_file_name(&file) {
                    return Err(format!(
                        "artifact {name:?}: file {file:?} must be a plain file name (no '/')"
                    ));
                }
                Origin::File(FilePin {
                    file,
                    source: need("file", "source", raw.source)?,
                    version: raw.version,
                })
            }
        };
        Ok(Artifact {
            name,
            sha256: raw.sha256,
            origin,
        })
    }
}

impl From<Artifact> for RawArtifact {
    fn from(a: Artifact) -> RawArtifact {
        let mut raw = RawArtifact {
            name: a.name,
            kind: Kind::Deb,
            package: None,
            version: None,
            arch: None,
            file: None,
            sha256: a.sha256,
            source: None,
            follows: None,
        };
        match a.origin {
            Origin::Deb(d) => {
                raw.package = Some(d.package);
                raw.version = Some(d.version);
                raw.arch = Some(d.arch);
                raw.follows = d.follows;
            }
            Origin::File(f) => {
                raw.kind = Kind::File;
                raw.file = Some(f.file);
                raw.source = Some(f.source);
                raw.version = f.version;
            }
        }
        raw
    }
}

/// A name that stays in its directory: not empty, no `/`, not `.` or `..`.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

impl Artifact {
    /// Its file name in `artifacts/`: for a package, the name `apt-get
    /// download` gives it; for a file, the pinned `file`.
    pub fn file_name(&self) -> String {
        match &self.origin {
            // apt escapes the epoch colon in file names.
            Origin::Deb(d) => format!(
                "{}_{}_{}.deb",
                d.package,
                d.version.replace(':', "%3a"),
                d.arch
            ),
            Origin::File(f) => f.file.clone(),
        }
    }

    /// The Debian package, when it is one.
    pub fn deb(&self) -> Option<&DebPin> {
        match &self.origin {
            Origin::Deb(d) => Some(d),
            Origin::File(_) => None,
        }
    }

    /// The plain-file pin, when it is one.
    pub fn file(&self) -> Option<&FilePin> {
        match &self.origin {
            Origin::Deb(_) => None,
            Origin::File(f) => Some(f),
        }
    }

    /// What it is, for messages: `runc 1.1.5+ds1-1+deb12u1`, `file k3s (v1.30.3+k3s1)`.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::Deb(d) => format!("{} {}", d.package, d.version),
            Origin::File(f) => match &f.version {
                Some(v) => format!("file {} {v}", f.file),
                None => format!("file {}", f.file),
            },
        }
    }
}

/// How to obtain a file artifact by hand; `cargo xtask fetch` and the
/// builder say the same.
pub fn obtain_hint(artifact: &Artifact, dir: &Path) -> String {
    match &artifact.origin {
        Origin::Deb(_) => "run `cargo xtask fetch`".to_string(),
        Origin::File(f) => format!(
            "download {} on a connected machine, check that its sha256 is {}, \
             and copy it to {}/ as {}",
            f.source,
            artifact.sha256,
            dir.display(),
            f.file
        ),
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
        let mut files = std::collections::BTreeSet::new();
        for a in &lock.artifacts {
            if !seen.insert(a.name.as_str()) {
                return Err(LockError::Duplicate {
                    path: path.to_path_buf(),
                    name: a.name.clone(),
                });
            }
            if !files.insert(a.file_name()) {
                return Err(LockError::DuplicateFile {
                    path: path.to_path_buf(),
                    name: a.name.clone(),
                    file: a.file_name(),
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
            what: artifact.describe(),
            file,
            hint: obtain_hint(artifact, dir),
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
        let lock = Lock::parse(Path::new("a.lock"), &format!("{LOCK}{K3S}")).unwrap();
        let text = lock.render("# header\n");
        let again = Lock::parse(Path::new("a.lock"), &text).unwrap();
        assert_eq!(again, lock);
        assert!(
            !text.contains("kind = \"deb\""),
            "deb is the default: {text}"
        );
        assert!(text.contains("kind = \"file\""), "{text}");
    }

    const K3S: &str = r#"
[[artifact]]
name = "k3s"
kind = "file"
file = "k3s"
version = "v1.30.3+k3s1"
sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
source = "https://github.com/k3s-io/k3s/releases/download/v1.30.3%2Bk3s1/k3s"
"#;

    #[test]
    fn file_artifacts_are_named_by_their_file_and_say_how_to_get_them() {
        let lock = Lock::parse(Path::new("a.lock"), &format!("{LOCK}{K3S}")).unwrap();
        let k3s = lock.get(Path::new("a.lock"), "k3s").unwrap();
        assert_eq!(k3s.file_name(), "k3s");
        assert_eq!(k3s.describe(), "file k3s v1.30.3+k3s1");
        assert!(k3s.deb().is_none());
        let dir = tempfile::tempdir().unwrap();
        let e = verify(dir.path(), k3s).unwrap_err();
        assert!(matches!(e, LockError::Missing { .. }), "{e}");
        let msg = e.to_string();
        for want in [
            "artifact \"k3s\" (file k3s v1.30.3+k3s1) is missing",
            "download https://github.com/k3s-io/k3s/releases/download/v1.30.3%2Bk3s1/k3s on a connected machine",
            "sha256 is 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        ] {
            assert!(msg.contains(want), "{msg}");
        }
        assert!(
            !msg.contains("cargo xtask fetch"),
            "fetch cannot download it: {msg}"
        );
        std::fs::write(dir.path().join("k3s"), b"hello").unwrap();
        assert_eq!(verify(dir.path(), k3s).unwrap(), dir.path().join("k3s"));
    }

    #[test]
    fn file_artifacts_refuse_package_keys_and_need_a_source() {
        let parse = |text: String| Lock::parse(Path::new("a.lock"), &format!("{LOCK}{text}"));
        let e =
            parse(K3S.replace("kind = \"file\"", "kind = \"file\"\narch = \"amd64\"")).unwrap_err();
        assert!(
            e.to_string()
                .contains("`arch` does not apply to kind = \"file\""),
            "{e}"
        );
        let e = parse(K3S.replace("source = ", "# source = ")).unwrap_err();
        assert!(e.to_string().contains("needs `source`"), "{e}");
        let e = parse(K3S.replace("file = \"k3s\"", "file = \"../k3s\"")).unwrap_err();
        assert!(e.to_string().contains("plain file name"), "{e}");
        let e = parse(K3S.replace("kind = \"file\"", "kind = \"tarball\"")).unwrap_err();
        assert!(e.to_string().contains("tarball"), "{e}");
        let e = parse(
            LOCK.replace("name = \"runc\"", "name = \"runc2\"")
                .replace("version = 1\nsuite = \"bookworm\"", ""),
        )
        .unwrap_err();
        assert!(matches!(e, LockError::DuplicateFile { .. }), "{e}");
    }
}
