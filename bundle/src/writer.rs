//! Writing bundles from host files, and re-signing existing ones. Payloads
//! are streamed twice (hash to fill the manifest, then copy), never loaded.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::BundleError;
use crate::format::{encode_header, encode_header_raw, encode_trailer};
use crate::keys::{SignatureBlock, SigningKey};
use crate::manifest::{Artifact, ArtifactKind, Manifest, ManifestBase};
use crate::reader::BundleReader;

/// Copy and hash buffer, bytes.
const CHUNK: usize = 256 << 10;

/// One artifact to bundle: a file on the host, read when the bundle is written.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    pub kind: ArtifactKind,
    pub path: &'a Path,
}

/// Write a bundle of `payloads` (root, kernel, initrd, in that order) to
/// `out`, signed by `key` when given. Returns the manifest written. The
/// manifest is validated before any byte is written; a payload that changes
/// between hashing and copying is an error (and `out` holds a partial
/// bundle, which whoever owns `out` must discard).
pub fn write_bundle(
    manifest_base: ManifestBase,
    payloads: &[Payload<'_>],
    key: Option<&SigningKey>,
    out: &mut impl Write,
) -> Result<Manifest, BundleError> {
    let mut buf = vec![0u8; CHUNK];
    let mut artifacts = Vec::with_capacity(payloads.len());
    for p in payloads {
        let (size, sha256) = hash_copy(p.path, &mut buf, &mut io::sink())?;
        artifacts.push(Artifact {
            kind: p.kind,
            size,
            sha256,
        });
    }
    let manifest = manifest_base.with_artifacts(artifacts);
    let header = encode_header(&manifest, key)?;
    out.write_all(&header).map_err(BundleError::Write)?;
    let mut total = header.len() as u64;
    for (p, a) in payloads.iter().zip(&manifest.artifacts) {
        let (size, sha256) = hash_copy(p.path, &mut buf, out)?;
        if size != a.size || sha256 != a.sha256 {
            return Err(BundleError::PayloadChanged {
                kind: p.kind,
                path: p.path.to_path_buf(),
                actual: sha256,
                expected: a.sha256.clone(),
            });
        }
        total += size;
    }
    out.write_all(&encode_trailer(total))
        .map_err(BundleError::Write)?;
    out.flush().map_err(BundleError::Write)?;
    Ok(manifest)
}

/// Stream `path` into `out`; its size and sha256.
fn hash_copy(
    path: &Path,
    buf: &mut [u8],
    out: &mut impl Write,
) -> Result<(u64, String), BundleError> {
    let file_err = |source| BundleError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(file_err)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(file_err(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(BundleError::Write)?;
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Replace the signature block of the bundle at `input` with one signature
/// by `key`, writing the result to `output` (which may be `input`). The
/// manifest bytes are kept as they are; every artifact is checked against
/// them while it is copied, and the trailer too. The new bundle is written
/// beside `output` under a temporary name, synced, and renamed into place.
pub fn sign_bundle(input: &Path, key: &SigningKey, output: &Path) -> Result<Manifest, BundleError> {
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::File { path, source }
    };
    let source = File::open(input).map_err(file_err(input))?;
    let mut reader = BundleReader::open(BufReader::with_capacity(CHUNK, source))?;
    reader.skip_verification();
    let block = SignatureBlock {
        signatures: vec![key.sign(reader.manifest_bytes())],
    };
    let header = encode_header_raw(reader.manifest_bytes(), &block)?;
    let manifest = reader.manifest().clone();

    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let stem = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = tempfile::Builder::new()
        .prefix(&format!(".{stem}."))
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(file_err(&dir))?;
    let partial_path = partial.path().to_path_buf();
    let mut out = BufWriter::with_capacity(CHUNK, partial);
    out.write_all(&header).map_err(file_err(&partial_path))?;
    let mut total = header.len() as u64;
    // Where the artifacts start in `input`, for read errors.
    let mut input_offset = reader.offset();
    let mut buf = vec![0u8; CHUNK];
    while let Some(mut artifact) = reader.next_artifact()? {
        let kind = artifact.artifact().kind;
        loop {
            let n = artifact.read(&mut buf).map_err(|e| {
                BundleError::from_io(e).unwrap_or_else(|source| BundleError::Read {
                    section: crate::Section::Artifact(kind),
                    offset: input_offset,
                    source,
                })
            })?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(file_err(&partial_path))?;
            total += n as u64;
            input_offset += n as u64;
        }
        artifact.finish()?;
    }
    reader.finish()?;
    out.write_all(&encode_trailer(total))
        .map_err(file_err(&partial_path))?;
    let partial = out
        .into_inner()
        .map_err(|e| file_err(&partial_path)(e.into_error()))?;
    publish(partial, output)?;
    Ok(manifest)
}

/// Sync the finished file and rename it over `output`, durably.
fn publish(partial: tempfile::NamedTempFile, output: &Path) -> Result<(), BundleError> {
    use std::os::unix::fs::PermissionsExt;
    let out = |source| BundleError::File {
        path: output.to_path_buf(),
        source,
    };
    let file = partial.as_file();
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(out)?;
    file.sync_all().map_err(out)?;
    partial.persist(output).map_err(|e| out(e.error))?;
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(out)?;
    Ok(())
}
