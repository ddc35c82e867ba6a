//! Deterministic OCI image-layout archives: the same [`ImageSpec`] and file
//! contents give the same bytes, so an archive baked into a root image does
//! not change that image's dm-verity root hash from one build to the next.
//!
//! # Format
//!
//! An uncompressed tar (the "OCI archive" `ctr images import` and
//! `skopeo copy oci-archive:` read) of an [OCI image layout]:
//!
//! ```text
//! blobs/                      directory entries come before their contents
//! blobs/sha256/
//! blobs/sha256/<hex>          the layer, the config and the manifest, sorted by digest
//! index.json                  one manifest, with its platform and both name annotations
//! oci-layout                  {"imageLayoutVersion":"1.0.0"}
//! ```
//!
//! Choices, and why:
//!
//! - **One uncompressed layer** (`application/vnd.oci.image.layer.v1.tar`):
//!   its digest is its diff id, nothing depends on a compressor's version,
//!   and the root image is squashfs-compressed anyway. containerd 1.6
//!   imports and unpacks it like any other layer.
//! - **Every tar entry** (outer archive and layer) is GNU-format with mtime
//!   [`ImageSpec::created`], uid/gid 0, no user or group names, and is
//!   written in byte order of its path. The layer's parent directories are
//!   added (mode 0755) so the archive unpacks on its own; file modes are
//!   the spec's, never the host file's.
//! - **JSON** is compact with fields in declaration order (serde structs,
//!   never maps with unstable order); `created` is RFC 3339 UTC.
//! - **Names**: `io.containerd.image.name` carries the full reference
//!   (`localhost/caisson-test/ticker:1`), which containerd's importer uses
//!   as the image name as is; `org.opencontainers.image.ref.name` carries the
//!   tag (`1`), as containerd's own exporter writes it and as the OCI
//!   annotation spec means it (the full reference when there is no tag).
//! - **The layer is built in memory** before anything is written: its size
//!   and digest go into the config and the manifest, and the outer tar needs
//!   each blob's size up front. System-container images are small; a failed
//!   source read therefore writes nothing.
//!
//! [OCI image layout]: https://github.com/opencontainers/image-spec/blob/v1.0.2/image-layout.md

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The name containerd's importer gives the image, taken as is.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI reference name: the tag.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Mode of the directories the layer adds for its files.
const DIR_MODE: u32 = 0o755;

/// What goes into one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The full reference the image is imported as, e.g.
    /// `localhost/caisson-test/ticker:1`.
    pub reference: String,
    pub files: Vec<ImageFile>,
    /// The process the container runs (`Entrypoint`); `cmd` follows it.
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// GOARCH spelling: `amd64`, `arm64`.
    pub architecture: String,
    pub os: String,
    /// Seconds since the epoch: the config's `created` and every tar mtime
    /// (pass `SOURCE_DATE_EPOCH` for reproducible builds).
    pub created: u64,
}

impl ImageSpec {
    /// An empty linux/amd64 image created at the epoch.
    pub fn new(reference: impl Into<String>) -> ImageSpec {
        ImageSpec {
            reference: reference.into(),
            files: Vec::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: Vec::new(),
            architecture: "amd64".to_string(),
            os: "linux".to_string(),
            created: 0,
        }
    }
}

/// One regular file in the image's single layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Absolute or relative to the image root (`/ticker`, `usr/bin/x`);
    /// no `.` or `..` components.
    pub path_in_image: String,
    pub source: FileSource,
    /// Permission bits, e.g. `0o755`.
    pub mode: u32,
}

#[derive(Clone, PartialEq, Eq)]
pub enum FileSource {
    /// Read from the build host when the archive is written.
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// Shows the host path or the byte count, never the bytes.
impl fmt::Debug for FileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileSource::Host(p) => f.debug_tuple("Host").field(p).finish(),
            FileSource::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
        }
    }
}

/// A content digest, `sha256:<64 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    pub fn sha256(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex digits alone: the blob's file name under `blobs/sha256/`.
    pub fn hex(&self) -> &str {
        self.0.strip_prefix("sha256:").unwrap_or(&self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Error)]
pub enum OciError {
    #[error("image {reference:?}: file path {path:?} {why}")]
    InvalidPath {
        reference: String,
        path: String,
        why: &'static str,
    },
    #[error("image {reference:?}: {path:?} is given twice (or is also a parent directory)")]
    Duplicate { reference: String, path: String },
    #[error("image {reference:?}: reading {path}: {source}")]
    ReadSource {
        reference: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("image {reference:?}: the reference is empty")]
    NoReference { reference: String },
    #[error("image {reference:?}: writing the archive: {source}")]
    Write {
        reference: String,
        source: io::Error,
    },
}

/// Write `image` as an OCI archive to `out`. Returns the manifest's digest,
/// which containerd lists as the imported image's target.
pub fn write_archive(image: &ImageSpec, out: &mut impl Write) -> Result<Digest, OciError> {
    let blobs = Blobs::build(image)?;
    let manifest = blobs.manifest.digest.clone();
    write_layout(image, &blobs, out).map_err(|source| OciError::Write {
        reference: image.reference.clone(),
        source,
    })?;
    Ok(manifest)
}

/// Bytes with their digest.
struct Blob {
    digest: Digest,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: Digest::sha256(&bytes),
            bytes,
        }
    }

    fn descriptor<'a>(&self, media_type: &'static str) -> Descriptor<'a> {
        Descriptor {
            media_type,
            digest: self.digest.as_str().to_string(),
            size: self.bytes.len() as u64,
            platform: None,
            annotations: None,
        }
    }
}

struct Blobs {
    layer: Blob,
    config: Blob,
    manifest: Blob,
}

impl Blobs {
    fn build(image: &ImageSpec) -> Result<Blobs, OciError> {
        if image.reference.trim().is_empty() {
            return Err(OciError::NoReference {
                reference: image.reference.clone(),
            });
        }
        let layer = Blob::new(layer_tar(image)?);
        let config = Blob::new(json(&ImageConfig {
            created: rfc3339(image.created),
            architecture: &image.architecture,
            os: &image.os,
            config: RunConfig {
                env: &image.env,
                entrypoint: &image.entrypoint,
                cmd: &image.cmd,
            },
            rootfs: RootFs {
                kind: "layers",
                // Uncompressed: the layer's digest is its diff id.
                diff_ids: vec![layer.digest.as_str()],
            },
            history: vec![History {
                created: rfc3339(image.created),
                created_by: "caisson-oci",
            }],
        }));
        let manifest = Blob::new(json(&Manifest {
            schema_version: 2,
            media_type: MEDIA_TYPE_MANIFEST,
            config: config.descriptor(MEDIA_TYPE_CONFIG),
            layers: vec![layer.descriptor(MEDIA_TYPE_LAYER)],
        }));
        Ok(Blobs {
            layer,
            config,
            manifest,
        })
    }
}

fn write_layout(image: &ImageSpec, blobs: &Blobs, out: &mut impl Write) -> io::Result<()> {
    let mut annotations = BTreeMap::new();
    annotations.insert(ANNOTATION_CONTAINERD_NAME, image.reference.clone());
    annotations.insert(
        ANNOTATION_REF_NAME,
        oci_ref_name(&image.reference).to_string(),
    );
    let index = json(&Index {
        schema_version: 2,
        media_type: MEDIA_TYPE_INDEX,
        manifests: vec![Descriptor {
            platform: Some(Platform {
                architecture: &image.architecture,
                os: &image.os,
            }),
            annotations: Some(annotations),
            ..blobs.manifest.descriptor(MEDIA_TYPE_MANIFEST)
        }],
    });
    let mut entries: Vec<(String, Option<&[u8]>)> = vec![
        ("blobs/".to_string(), None),
        ("blobs/sha256/".to_string(), None),
        ("index.json".to_string(), Some(&index)),
        (
            "oci-layout".to_string(),
            Some(br#"{"imageLayoutVersion":"1.0.0"}"#),
        ),
    ];
    for blob in [&blobs.layer, &blobs.config, &blobs.manifest] {
        entries.push((
            format!("blobs/sha256/{}", blob.digest.hex()),
            Some(&blob.bytes),
        ));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tar = tar::Builder::new(out);
    for (path, data) in entries {
        match data {
            None => append_dir(&mut tar, &path, image.created)?,
            Some(bytes) => append_file(&mut tar, &path, 0o644, image.created, bytes)?,
        }
    }
    tar.into_inner()?.flush()
}

/// The layer: every file and its parent directories, in path order.
fn layer_tar(image: &ImageSpec) -> Result<Vec<u8>, OciError> {
    enum Entry<'a> {
        Dir,
        File(&'a ImageFile),
    }
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for file in &image.files {
        let path = clean_path(&image.reference, &file.path_in_image)?;
        let duplicate = || OciError::Duplicate {
            reference: image.reference.clone(),
            path: path.clone(),
        };
        if entries.insert(path.clone(), Entry::File(file)).is_some() {
            return Err(duplicate());
        }
        let mut parent = path.as_str();
        while let Some((dir, _)) = parent.rsplit_once('/') {
            if let Some(Entry::File(_)) = entries.get(dir) {
                return Err(OciError::Duplicate {
                    reference: image.reference.clone(),
                    path: dir.to_string(),
                });
            }
            entries.insert(dir.to_string(), Entry::Dir);
            parent = dir;
        }
    }
    let write_err = |source| OciError::Write {
        reference: image.reference.clone(),
        source,
    };
    let mut tar = tar::Builder::new(Vec::new());
    // A directory sorts before its contents: a prefix sorts first.
    for (path, entry) in &entries {
        match entry {
            Entry::Dir => {
                append_dir(&mut tar, &format!("{path}/"), image.created).map_err(write_err)?
            }
            Entry::File(file) => {
                let bytes = match &file.source {
                    FileSource::Bytes(b) => std::borrow::Cow::Borrowed(b.as_slice()),
                    FileSource::Host(p) => {
                        std::borrow::Cow::Owned(fs::read(p).map_err(|source| {
                            OciError::ReadSource {
                                reference: image.reference.clone(),
                                path: p.clone(),
                                source,
                            }
                        })?)
                    }
                };
                append_file(&mut tar, path, file.mode & 0o7777, image.created, &bytes)
                    .map_err(write_err)?;
            }
        }
    }
    tar.into_inner().map_err(write_err)
}

/// `path` relative to the image root, without a leading or trailing slash.
fn clean_path(reference: &str, path: &str) -> Result<String, OciError> {
    let invalid = |why| OciError::InvalidPath {
        reference: reference.to_string(),
        path: path.to_string(),
        why,
    };
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(invalid("names no file"));
    }
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in trimmed.split('/') {
        match part {
            "" => {
                return Err(invalid(
                    "has an empty component (\"//\" or a trailing slash)",
                ))
            }
            "." | ".." => return Err(invalid("has a \".\" or \"..\" component")),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str, mtime: u64) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, DIR_MODE, mtime, 0);
    tar.append_data(&mut h, path, io::empty())
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    mtime: u64,
    bytes: &[u8],
) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, mtime, bytes.len() as u64);
    tar.append_data(&mut h, path, bytes)
}

/// The tag of `name:tag` (the last `:` after the last `/`, before any
/// `@digest`); the whole reference when it has none.
fn oci_ref_name(reference: &str) -> &str {
    let name = reference.split_once('@').map_or(reference, |(n, _)| n);
    let last = name.rsplit_once('/').map_or(name, |(_, l)| l);
    match last.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag,
        _ => reference,
    }
}

fn json(value: &impl Serialize) -> Vec<u8> {
    // Serializing these structs (strings, numbers, vectors, string maps)
    // cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
fn rfc3339(epoch: u64) -> String {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm, for days since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<&'static str, String>>,
}

#[derive(Serialize)]
struct Platform<'a> {
    architecture: &'a str,
    os: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor<'static>,
    layers: Vec<Descriptor<'static>>,
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    created: String,
    architecture: &'a str,
    os: &'a str,
    config: RunConfig<'a>,
    rootfs: RootFs<'a>,
    history: Vec<History>,
}

#[derive(Serialize)]
struct RunConfig<'a> {
    #[serde(rename = "Env", skip_serializing_if = "<[String]>::is_empty")]
    env: &'a [String],
    #[serde(rename = "Entrypoint", skip_serializing_if = "<[String]>::is_empty")]
    entrypoint: &'a [String],
    #[serde(rename = "Cmd", skip_serializing_if = "<[String]>::is_empty")]
    cmd: &'a [String],
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<&'a str>,
}

#[derive(Serialize)]
struct History {
    created: String,
    created_by: &'static str,
}

#[cfg(test)]
mod tests;
