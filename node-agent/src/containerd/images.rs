//! Importing image archives into containerd, once per content.
//!
//! `ctr images import` reads OCI and Docker archives (plain tar). A
//! `.tar.zst` or `.tar.gz` is decompressed here, in Rust, and piped to
//! `ctr images import -` (ctr 1.6 reads stdin for `-`); the compression is
//! recognised by the file's first bytes, not its name. Images are unpacked
//! into the overlayfs snapshotter during the import, the one k3s's CRI and
//! `ctr run` use, so the first start does not pay for it.
//!
//! An import that succeeded leaves a marker,
//! `<state_dir>/<namespace>/<archive file name>.<sha256 of the archive>.imported`:
//! the same archive is not imported again (a node boots with the same
//! archives every time), a changed one is. A failed import leaves none.
//! The markers live on DATA, next to containerd's content store: wiping one
//! wipes the other.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use sha2::{Digest, Sha256};

use super::{shell_words, ContainerdError, Ctr, SNAPSHOTTER};
use crate::reaper::Reaper;

/// Where the node keeps its import markers.
pub const IMPORT_STATE_DIR: &str = "/var/lib/caisson/containerd-imports";
const MARKER_SUFFIX: &str = ".imported";
/// The most of ctr's output kept for a report or an error.
const OUTPUT_KEPT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    Imported,
    /// Its marker was there: this content was imported before.
    AlreadyImported,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub archive: PathBuf,
    pub namespace: String,
    /// Of the archive file as it is on disk, hex.
    pub sha256: String,
    pub marker: PathBuf,
    pub outcome: ImportOutcome,
    /// The end of what `ctr` printed; empty when nothing was imported.
    pub output: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn sniff(first: &[u8]) -> Compression {
        if first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if first.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else {
            Compression::None
        }
    }
}

/// `ctr … images import --snapshotter overlayfs <input>`; `input` is a
/// file or `-` for standard input. Images are named by the archive (an
/// `io.containerd.image.name` annotation, or a Docker archive's tags).
pub fn import_argv(ctr: &Ctr, namespace: &str, input: &str) -> Vec<String> {
    let mut argv = vec![ctr.binary.display().to_string()];
    argv.extend(ctr.global_args(namespace));
    argv.extend(
        ["images", "import", "--snapshotter", SNAPSHOTTER, input]
            .iter()
            .map(|s| s.to_string()),
    );
    argv
}

/// Import `archive` into `namespace` unless its marker under `state_dir`
/// says this content was imported before. `ctr` is started through
/// `reaper`, which must be reaping (the agent's SIGCHLD loop).
pub async fn import_archive(
    reaper: &Reaper,
    ctr: &Ctr,
    namespace: &str,
    archive: &Path,
    state_dir: &Path,
) -> Result<ImportReport, ContainerdError> {
    check_namespace(namespace)?;
    let name = archive
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ContainerdError::ArchiveName {
            archive: archive.to_path_buf(),
            why: "has no UTF-8 file name",
        })?
        .to_string();
    let owned = archive.to_path_buf();
    let (sha256, compression) =
        blocking(move || hash_and_sniff(&owned))
            .await
            .map_err(|source| ContainerdError::Archive {
                archive: archive.to_path_buf(),
                what: "reading",
                source,
            })?;
    let dir = state_dir.join(namespace);
    let marker = dir.join(marker_name(&name, &sha256));
    let mut report = ImportReport {
        archive: archive.to_path_buf(),
        namespace: namespace.to_string(),
        sha256,
        marker: marker.clone(),
        outcome: ImportOutcome::AlreadyImported,
        output: String::new(),
    };
    if marker.exists() {
        return Ok(report);
    }
    report.output = run_import(reaper, ctr, namespace, archive, compression).await?;
    let contents = format!(
        "archive {}\nsha256 {}\nnamespace {namespace}\n",
        archive.display(),
        report.sha256
    );
    let (d, m) = (dir.clone(), marker.clone());
    blocking(move || write_marker(&d, &m, contents.as_bytes()))
        .await
        .map_err(|source| ContainerdError::Marker {
            path: marker.clone(),
            source,
        })?;
    let keep = marker.clone();
    // Markers of this archive's earlier contents; a failure only leaves clutter.
    let _ = blocking(move || prune_markers(&dir, &name, &keep)).await;
    report.outcome = ImportOutcome::Imported;
    Ok(report)
}

/// `<archive file name>.<sha256>.imported`.
pub fn marker_name(archive_file_name: &str, sha256: &str) -> String {
    format!("{archive_file_name}.{sha256}{MARKER_SUFFIX}")
}

/// containerd namespaces are labels; this one also names a directory.
fn check_namespace(namespace: &str) -> Result<(), ContainerdError> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 76
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        && namespace.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ContainerdError::InvalidNamespace {
            namespace: namespace.to_string(),
        })
    }
}

async fn run_import(
    reaper: &Reaper,
    ctr: &Ctr,
    namespace: &str,
    archive: &Path,
    compression: Compression,
) -> Result<String, ContainerdError> {
    let input = match compression {
        Compression::None => archive.display().to_string(),
        Compression::Gzip | Compression::Zstd => "-".to_string(),
    };
    let argv = import_argv(ctr, namespace, &input);
    let command = shell_words(&argv);
    let spawn_error = |source| ContainerdError::Spawn {
        command: command.clone(),
        source,
    };
    let (output_read, output_write) = cloexec_pipe().map_err(spawn_error)?;
    let (stdin, feed) = match compression {
        Compression::None => (Stdio::null(), None),
        Compression::Gzip | Compression::Zstd => {
            let (r, w) = cloexec_pipe().map_err(spawn_error)?;
            (Stdio::from(r), Some(w))
        }
    };
    let spawned = {
        let Some((program, args)) = argv.split_first() else {
            return Err(spawn_error(io::Error::other("empty command line")));
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(stdin)
            .stdout(Stdio::from(output_write.try_clone().map_err(spawn_error)?))
            .stderr(Stdio::from(output_write));
        // The Command owns the child's ends of the pipes: it must be gone
        // before we read to the end of the output.
        reaper.spawn(&mut cmd).map_err(spawn_error)?
    };
    let fed = feed.map(|w| {
        let archive = archive.to_path_buf();
        tokio::task::spawn_blocking(move || feed_decompressed(&archive, compression, w))
    });
    let output = tokio::task::spawn_blocking(move || read_tail(output_read, OUTPUT_KEPT));
    let status = spawned.exit.await;
    let fed = match fed {
        None => Ok(()),
        Some(task) => task.await.unwrap_or_else(|e| Err(io::Error::other(e))),
    };
    let output = output
        .await
        .unwrap_or_else(|e| format!("(output lost: {e})"));
    let status = match status {
        Ok(s) if s.success() => match fed {
            Ok(()) => return Ok(output),
            Err(e) => format!("exited with status 0, but the archive was not read whole ({e})"),
        },
        Ok(s) => match fed {
            Ok(()) => s.to_string(),
            Err(e) => format!("{s} (feeding the decompressed archive: {e})"),
        },
        Err(_) => "exit status lost (the reaper is not running)".to_string(),
    };
    Err(ContainerdError::Ctr {
        command,
        status,
        output,
    })
}

/// Run blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

fn cloexec_pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

fn hash_and_sniff(archive: &Path) -> io::Result<(String, Compression)> {
    let mut file = File::open(archive)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut first = Vec::new();
    loop {
        let n = file.read(&mut buf)?;
        let Some(chunk) = buf.get(..n) else { break };
        if n == 0 {
            break;
        }
        if first.len() < 4 {
            first.extend(chunk.iter().take(4 - first.len()));
        }
        hasher.update(chunk);
    }
    Ok((hex::encode(hasher.finalize()), Compression::sniff(&first)))
}

fn feed_decompressed(
    archive: &Path,
    compression: Compression,
    stdin: std::os::fd::OwnedFd,
) -> io::Result<()> {
    let mut out = File::from(stdin);
    let file = io::BufReader::new(File::open(archive)?);
    let mut reader: Box<dyn Read> = match compression {
        Compression::Zstd => Box::new(zstd::Decoder::with_buffer(file)?),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        Compression::None => Box::new(file),
    };
    io::copy(&mut reader, &mut out)?;
    out.flush()
}

/// Everything from `fd` until EOF; the last `keep` bytes of it, trimmed.
fn read_tail(fd: std::os::fd::OwnedFd, keep: usize) -> String {
    let mut file = File::from(fd);
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = file.read(&mut buf) {
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        tail.extend_from_slice(chunk);
        if tail.len() > 2 * keep {
            tail.drain(..tail.len() - keep);
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    String::from_utf8_lossy(&tail).trim().to_string()
}

/// Write the marker durably: a temporary file, fsync, rename, fsync the
/// directory.
fn write_marker(dir: &Path, marker: &Path, contents: &[u8]) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = marker.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, marker)?;
    File::open(dir)?.sync_all()
}

/// Remove the markers of `name`'s other contents.
fn prune_markers(dir: &Path, name: &str, keep: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some((archive, hash)) = file
            .strip_suffix(MARKER_SUFFIX)
            .and_then(|s| s.rsplit_once('.'))
        else {
            continue;
        };
        if archive == name && hash.len() == 64 && path != keep {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_recognised_by_content() {
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::sniff(b"blobs/"), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
    }

    #[test]
    fn the_import_command_line() {
        let ctr = Ctr::node();
        assert_eq!(
            shell_words(&import_argv(&ctr, "caisson", "-")),
            "/usr/bin/ctr --address /run/containerd/containerd.sock --namespace caisson images import --snapshotter overlayfs -"
        );
    }

    #[test]
    fn markers_name_archive_and_content_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        assert_eq!(
            marker_name("x.tar.zst", &a),
            format!("x.tar.zst.{a}.imported")
        );
        for m in [
            marker_name("x.tar.zst", &a),
            marker_name("x.tar.zst", &b),
            marker_name("x.tar", &a),
            marker_name("y.tar.zst", &a),
        ] {
            std::fs::write(dir.path().join(m), "").unwrap();
        }
        let keep = dir.path().join(marker_name("x.tar.zst", &b));
        prune_markers(dir.path(), "x.tar.zst", &keep).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                marker_name("x.tar", &a),
                marker_name("x.tar.zst", &b),
                marker_name("y.tar.zst", &a)
            ]
        );
    }

    #[test]
    fn hashing_and_tails() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.tar.gz");
        std::fs::write(&f, [0x1f, 0x8b, 1, 2, 3]).unwrap();
        let (hash, c) = hash_and_sniff(&f).unwrap();
        assert_eq!(c, Compression::Gzip);
        assert_eq!(hash, hex::encode(Sha256::digest([0x1f, 0x8b, 1, 2, 3])));
        let (r, w) = cloexec_pipe().unwrap();
        let mut w = File::from(w);
        w.write_all(&vec![b'x'; 10_000]).unwrap();
        w.write_all(b"the end\n").unwrap();
        drop(w);
        let tail = read_tail(r, 100);
        assert!(tail.ends_with("the end") && tail.len() == 99, "{tail}");
    }

    #[test]
    fn namespaces_must_be_labels() {
        assert!(check_namespace("caisson").is_ok());
        assert!(check_namespace("k8s.io").is_ok());
        for bad in ["", "..", "a/b", ".x", "a b"] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
    }
}
