//! Reading Debian packages without dpkg: a `.deb` is an `ar` archive whose
//! `data.tar[.xz|.zst|.gz]` member holds the files. We stream that member
//! once, record every entry in an [`FsTree`] and write only the selected
//! files to a staging directory, so memory stays flat even for the kernel's
//! ~100 MiB of modules.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::tree::{normalize, FsTree, Node, TreeError};

#[derive(Debug, Error)]
pub enum DebError {
    #[error("cannot open package {deb}: {source}")]
    Open { deb: PathBuf, source: io::Error },
    #[error("{deb} is not a Debian package: {reason}")]
    NotADeb { deb: PathBuf, reason: String },
    #[error("{deb}: data member {member:?} uses a compression we do not read (expected .xz, .zst, .gz or none)")]
    Compression { deb: PathBuf, member: String },
    #[error("{deb}: cannot read {what}: {source}")]
    Read {
        deb: PathBuf,
        what: String,
        source: io::Error,
    },
    #[error("{deb}: entry {entry:?}: {reason}")]
    BadEntry {
        deb: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{deb}: {source}")]
    Tree { deb: PathBuf, source: TreeError },
    #[error("{deb}: cannot write {file}: {source}")]
    Write {
        deb: PathBuf,
        file: PathBuf,
        source: io::Error,
    },
    #[error(
        "{deb}: hard link {entry} points at {target}, which comes later or is not a regular file"
    )]
    Hardlink {
        deb: PathBuf,
        entry: String,
        target: String,
    },
}

/// What one `data.tar` entry is. Paths are normalised (no `./`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
    },
    Symlink {
        target: String,
    },
    /// A hard link to an earlier entry, by its normalised path.
    Hardlink {
        target: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebEntry {
    pub path: String,
    pub kind: EntryKind,
}

/// A package on disk. Nothing is read until asked.
#[derive(Debug, Clone)]
pub struct Deb {
    path: PathBuf,
}

impl Deb {
    pub fn new(path: impl Into<PathBuf>) -> Deb {
        Deb { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_err(&self, what: impl Into<String>) -> impl FnOnce(io::Error) -> DebError + '_ {
        let what = what.into();
        move |source| DebError::Read {
            deb: self.path.clone(),
            what,
            source,
        }
    }

    /// Stream every entry of `data.tar` to `visit`, with a reader over the
    /// contents of regular files (empty for other kinds).
    pub fn walk(
        &self,
        mut visit: impl FnMut(&DebEntry, &mut dyn Read) -> Result<(), DebError>,
    ) -> Result<(), DebError> {
        let file = File::open(&self.path).map_err(|source| DebError::Open {
            deb: self.path.clone(),
            source,
        })?;
        let mut ar = ar::Archive::new(BufReader::new(file));
        let mut saw_version = false;
        while let Some(member) = ar.next_entry() {
            let member = member.map_err(|e| DebError::NotADeb {
                deb: self.path.clone(),
                reason: e.to_string(),
            })?;
            let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
            if name == "debian-binary" {
                saw_version = true;
                continue;
            }
            let Some(compression) = name.strip_prefix("data.tar") else {
                continue;
            };
            if !saw_version {
                return Err(DebError::NotADeb {
                    deb: self.path.clone(),
                    reason: "no debian-binary member first".into(),
                });
            }
            let decoded: Box<dyn Read + '_> = match compression {
                "" => Box::new(member),
                ".xz" => Box::new(liblzma::read::XzDecoder::new_multi_decoder(member)),
                ".zst" => Box::new(
                    zstd::stream::read::Decoder::new(member)
                        .map_err(self.read_err(name.clone()))?,
                ),
                ".gz" => Box::new(flate2::read::GzDecoder::new(member)),
                _ => {
                    return Err(DebError::Compression {
                        deb: self.path.clone(),
                        member: name,
                    })
                }
            };
            return self.walk_tar(decoded, &name, &mut visit);
        }
        Err(DebError::NotADeb {
            deb: self.path.clone(),
            reason: "no data.tar member".into(),
        })
    }

    fn walk_tar(
        &self,
        data: impl Read,
        member: &str,
        visit: &mut impl FnMut(&DebEntry, &mut dyn Read) -> Result<(), DebError>,
    ) -> Result<(), DebError> {
        let mut tar = tar::Archive::new(data);
        let entries = tar.entries().map_err(self.read_err(member))?;
        for entry in entries {
            let mut entry = entry.map_err(self.read_err(member))?;
            let raw_path = entry
                .path()
                .map_err(self.read_err(member))?
                .to_string_lossy()
                .into_owned();
            let bad = |reason: String| DebError::BadEntry {
                deb: self.path.clone(),
                entry: raw_path.clone(),
                reason,
            };
            let path = normalize(&raw_path).map_err(|e| bad(e.to_string()))?;
            let header = entry.header();
            let mode = header.mode().map_err(|e| bad(e.to_string()))? & 0o7777;
            let link = || -> Result<String, DebError> {
                let l = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("link without a target".into()))?;
                String::from_utf8(l.into_owned())
                    .map_err(|_| bad("link target is not UTF-8".into()))
            };
            let kind = match header.entry_type() {
                tar::EntryType::Directory => EntryKind::Dir { mode },
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File {
                    mode,
                    size: entry.size(),
                },
                tar::EntryType::Symlink => EntryKind::Symlink { target: link()? },
                tar::EntryType::Link => {
                    let target = normalize(&link()?).map_err(|e| bad(e.to_string()))?;
                    EntryKind::Hardlink { target }
                }
                other => return Err(bad(format!("unsupported entry type {other:?}"))),
            };
            if path.is_empty() {
                continue; // "./" itself
            }
            visit(&DebEntry { path, kind }, &mut entry)?;
        }
        Ok(())
    }

    /// Record every entry in a tree (package paths, not usr-merged) and copy
    /// the regular files that `select` accepts to `dest/<path>`. Hard links
    /// share their target's staged copy.
    pub fn extract(&self, dest: &Path, select: impl Fn(&str) -> bool) -> Result<FsTree, DebError> {
        let mut tree = FsTree::new();
        let tree_err = |source| DebError::Tree {
            deb: self.path.clone(),
            source,
        };
        self.walk(|entry, contents| {
            let node = match &entry.kind {
                EntryKind::Dir { mode } => Node::Dir { mode: *mode },
                EntryKind::Symlink { target } => Node::Symlink {
                    target: target.clone(),
                },
                EntryKind::File { mode, size } => {
                    let source = if select(&entry.path) {
                        let file = dest.join(&entry.path);
                        write_file(&file, contents).map_err(|source| DebError::Write {
                            deb: self.path.clone(),
                            file: file.clone(),
                            source,
                        })?;
                        Some(file)
                    } else {
                        None
                    };
                    Node::File {
                        mode: *mode,
                        size: *size,
                        source,
                    }
                }
                EntryKind::Hardlink { target } => match tree.get(target) {
                    Some(Node::File { mode, size, source }) => {
                        let source = if select(&entry.path) {
                            source.clone()
                        } else {
                            None
                        };
                        Node::File {
                            mode: *mode,
                            size: *size,
                            source,
                        }
                    }
                    _ => {
                        return Err(DebError::Hardlink {
                            deb: self.path.clone(),
                            entry: entry.path.clone(),
                            target: target.clone(),
                        })
                    }
                },
            };
            tree.insert(&entry.path, node).map_err(tree_err)
        })?;
        Ok(tree)
    }
}

fn write_file(path: &Path, contents: &mut dyn Read) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = File::create(path)?;
    io::copy(contents, &mut out)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Build a small `.deb` in memory: a directory, a file, a symlink and a
    /// hard link, with `data.tar` compressed as `compression` says.
    pub(crate) fn synthetic_deb(compression: &str, files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        tar.append_data(&mut dir, "./usr/", io::empty()).unwrap();
        for (path, data, mode) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            tar.append_data(&mut h, format!("./{path}"), *data).unwrap();
        }
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        tar.append_link(&mut link, "./lib64/ld.so", "/lib/x86_64-linux-gnu/ld.so")
            .unwrap();
        let mut hard = tar::Header::new_gnu();
        hard.set_entry_type(tar::EntryType::Link);
        hard.set_mode(0o755);
        hard.set_size(0);
        tar.append_link(&mut hard, "./usr/bin/hard", format!("./{}", files[0].0))
            .unwrap();
        let tar = tar.into_inner().unwrap();
        let (name, data) = match compression {
            "xz" => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(&tar).unwrap();
                ("data.tar.xz", e.finish().unwrap())
            }
            "zst" => ("data.tar.zst", zstd::encode_all(&tar[..], 1).unwrap()),
            "gz" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar).unwrap();
                ("data.tar.gz", e.finish().unwrap())
            }
            _ => ("data.tar", tar),
        };
        let mut ar = ar::Builder::new(Vec::new());
        ar.append(
            &ar::Header::new(b"debian-binary".to_vec(), 4),
            &b"2.0\n"[..],
        )
        .unwrap();
        ar.append(&ar::Header::new(b"control.tar.gz".to_vec(), 0), &b""[..])
            .unwrap();
        ar.append(
            &ar::Header::new(name.as_bytes().to_vec(), data.len() as u64),
            &data[..],
        )
        .unwrap();
        ar.into_inner().unwrap()
    }

    #[test]
    fn reads_every_compression_and_entry_kind() {
        for compression in ["xz", "zst", "gz", "none"] {
            let dir = tempfile::tempdir().unwrap();
            let deb_path = dir.path().join("t.deb");
            let files: &[(&str, &[u8], u32)] = &[
                ("usr/bin/tool", b"#!tool", 0o755),
                ("lib/x86_64-linux-gnu/ld.so", b"ELF", 0o755),
            ];
            std::fs::write(&deb_path, synthetic_deb(compression, files)).unwrap();
            let staging = dir.path().join("staging");
            let tree = Deb::new(&deb_path)
                .extract(&staging, |p| p != "lib/x86_64-linux-gnu/ld.so")
                .unwrap();
            let Some(Node::File {
                mode,
                size,
                source: Some(src),
            }) = tree.get("usr/bin/tool")
            else {
                panic!("{compression}: {tree:?}")
            };
            assert_eq!((*mode, *size), (0o755, 6));
            assert_eq!(std::fs::read(src).unwrap(), b"#!tool");
            assert_eq!(
                tree.get("usr/bin/hard"),
                tree.get("usr/bin/tool"),
                "hard link shares the file"
            );
            assert!(matches!(
                tree.get("lib/x86_64-linux-gnu/ld.so"),
                Some(Node::File { source: None, .. })
            ));
            assert_eq!(
                tree.get("lib64/ld.so"),
                Some(&Node::Symlink {
                    target: "/lib/x86_64-linux-gnu/ld.so".into()
                })
            );
            assert_eq!(tree.get("usr"), Some(&Node::Dir { mode: 0o755 }));
        }
    }

    #[test]
    fn rejects_files_that_are_not_packages() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.deb");
        std::fs::write(&p, b"not an ar archive").unwrap();
        let e = Deb::new(&p).extract(dir.path(), |_| true).unwrap_err();
        assert!(matches!(e, DebError::NotADeb { .. }), "{e}");
        assert!(e.to_string().contains("x.deb"), "{e}");
        let e = Deb::new(dir.path().join("missing.deb"))
            .walk(|_, _| Ok(()))
            .unwrap_err();
        assert!(matches!(e, DebError::Open { .. }), "{e}");
    }
}
