//! The root image: an [`FsTree`] written as a zstd squashfs by `backhand`,
//! with every inode owned by root and stamped with the build's epoch.
//! The tree is sorted, so the same tree always gives the same bytes.

use std::fs::File;
use std::io::{self, BufWriter, Cursor};
use std::path::{Path, PathBuf};

use backhand::compression::Compressor;
use backhand::{FilesystemCompressor, FilesystemReader, FilesystemWriter, NodeHeader};
use thiserror::Error;

use crate::tree::{FsTree, Node};

#[derive(Debug, Error)]
pub enum SquashfsError {
    #[error("squashfs: cannot add {path}: {message}")]
    Add { path: String, message: String },
    #[error("squashfs: {path} was never extracted from its package")]
    NoSource { path: String },
    #[error("squashfs: cannot write {file}: {source}")]
    Io { file: PathBuf, source: io::Error },
    #[error("squashfs: writing {file} failed: {message}")]
    Write { file: PathBuf, message: String },
}

/// Write `tree` to `out` and return the image's size in bytes.
pub fn write(tree: &FsTree, epoch: u32, out: &Path) -> Result<u64, SquashfsError> {
    let failed = |e: backhand::BackhandError| SquashfsError::Write {
        file: out.to_path_buf(),
        message: e.to_string(),
    };
    let seed = root_seed(epoch).map_err(failed)?;
    let mut fs = FilesystemWriter::from_fs_reader(&seed).map_err(failed)?;
    fs.set_time(epoch);
    fs.set_only_root_id();
    let zstd =
        FilesystemCompressor::new(Compressor::Zstd, None).map_err(|e| SquashfsError::Write {
            file: out.to_path_buf(),
            message: e.to_string(),
        })?;
    fs.set_compressor(zstd);
    for (path, node) in tree.iter() {
        let add = |e: backhand::BackhandError| SquashfsError::Add {
            path: path.to_string(),
            message: e.to_string(),
        };
        match node {
            Node::Dir { mode } => fs.push_dir(path, header(*mode, epoch)).map_err(add)?,
            Node::Symlink { target } => fs
                .push_symlink(target, path, header(0o777, epoch))
                .map_err(add)?,
            Node::File { mode, source, .. } => {
                let source = source.clone().ok_or_else(|| SquashfsError::NoSource {
                    path: path.to_string(),
                })?;
                fs.push_file_from_path(source, path, header(*mode, epoch))
                    .map_err(add)?
            }
        }
    }
    let file = File::create(out).map_err(|source| SquashfsError::Io {
        file: out.to_path_buf(),
        source,
    })?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let (_, size) = fs.write(&mut w).map_err(|e| SquashfsError::Write {
        file: out.to_path_buf(),
        message: e.to_string(),
    })?;
    let file = w.into_inner().map_err(|e| SquashfsError::Io {
        file: out.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(|source| SquashfsError::Io {
        file: out.to_path_buf(),
        source,
    })?;
    Ok(size)
}

/// backhand's writer has no setter for the root directory's mtime, but a
/// writer made from a reader copies the reader's root header. So: write an
/// empty image, read it back, stamp its root, and start from that.
fn root_seed(epoch: u32) -> Result<FilesystemReader<'static>, backhand::BackhandError> {
    let mut empty = Cursor::new(Vec::new());
    FilesystemWriter::default().write(&mut empty)?;
    empty.set_position(0);
    let mut reader = FilesystemReader::from_reader(empty)?;
    reader.root.root_mut().header = header(0o755, epoch);
    Ok(reader)
}

fn header(mode: u32, epoch: u32) -> NodeHeader {
    NodeHeader::new((mode & 0o7777) as u16, 0, 0, epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_tree_gives_same_bytes_and_a_readable_image() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("hello");
        std::fs::write(&src, b"hello squashfs\n").unwrap();
        let mut t = FsTree::new();
        t.insert(
            "usr/bin/hello",
            Node::File {
                mode: 0o755,
                size: 15,
                source: Some(src),
            },
        )
        .unwrap();
        t.insert(
            "bin",
            Node::Symlink {
                target: "usr/bin".into(),
            },
        )
        .unwrap();
        t.insert("tmp", Node::Dir { mode: 0o1777 }).unwrap();
        let (a, b) = (dir.path().join("a.sqfs"), dir.path().join("b.sqfs"));
        let size = write(&t, 1_700_000_000, &a).unwrap();
        write(&t, 1_700_000_000, &b).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(bytes, std::fs::read(&b).unwrap());
        assert_eq!(&bytes[..4], b"hsqs");
        let back = FilesystemReader::from_reader(Cursor::new(bytes)).unwrap();
        assert_eq!(back.mod_time, 1_700_000_000);
        for node in &back.root.nodes {
            assert_eq!(
                (node.header.mtime, node.header.uid, node.header.gid),
                (1_700_000_000, 0, 0),
                "{node:?}"
            );
        }
        assert_eq!(
            back.root.nodes.len(),
            6,
            "root, bin, tmp, usr, usr/bin, usr/bin/hello"
        );
        let e = write(&t, 0, Path::new("/nonexistent/dir/x")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir/x"), "{e}");
    }
}
