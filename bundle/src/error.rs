//! One error type for reading, verifying, writing and signing bundles. Each
//! variant says what did not match and where: the byte offset in the
//! stream, or the artifact.

use std::fmt;
use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::manifest::ArtifactKind;

/// The part of the bundle being read when something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Magic,
    ManifestLength,
    Manifest,
    SignaturesLength,
    Signatures,
    Artifact(ArtifactKind),
    Trailer,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Section::Magic => f.write_str("the magic"),
            Section::ManifestLength => f.write_str("the manifest length"),
            Section::Manifest => f.write_str("the manifest"),
            Section::SignaturesLength => f.write_str("the signature block length"),
            Section::Signatures => f.write_str("the signature block"),
            Section::Artifact(kind) => write!(f, "the {kind} artifact"),
            Section::Trailer => f.write_str("the trailer"),
        }
    }
}

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("bundle: not a Caisson bundle (bad magic)")]
    BadMagic,
    #[error("bundle: container version {found}; this reader knows version 1")]
    UnsupportedVersion { found: u8 },
    #[error("bundle: truncated in {section} after {got} of {expected} bytes (the stream ends at offset {offset})")]
    Truncated {
        section: Section,
        got: u64,
        expected: u64,
        offset: u64,
    },
    #[error("bundle: {section} at offset {offset} is {len} bytes, more than the limit of {cap}")]
    TooLarge {
        section: Section,
        len: u64,
        cap: u64,
        offset: u64,
    },
    #[error("bundle: {section} at offset {offset} is not valid: {source}")]
    Json {
        section: Section,
        offset: u64,
        source: serde_json::Error,
    },
    #[error("bundle: manifest format {found}; this reader knows format 1")]
    ManifestFormat { found: u32 },
    #[error("bundle: manifest `{field}`: {reason}")]
    InvalidManifest { field: String, reason: String },
    #[error("bundle: the signature block's `{field}`: {reason}")]
    InvalidSignatures { field: String, reason: String },
    #[error("bundle: unsigned, and the node's config does not allow unsigned bundles (upgrade.allow_unsigned)")]
    Unsigned,
    #[error("bundle: signed by key {}, which upgrade.trusted_keys does not list", key_ids.join(", "))]
    UntrustedSigner { key_ids: Vec<String> },
    #[error("bundle: the signature by trusted key {key_id} does not verify: the manifest was changed after signing, or the signature is corrupt")]
    BadSignature { key_id: String },
    #[error("bundle: artifacts are read only after verify() has accepted the bundle")]
    NotVerified,
    #[error("bundle: the {kind} artifact's sha256 is {actual}, the manifest says {expected}")]
    Digest {
        kind: ArtifactKind,
        actual: String,
        expected: String,
    },
    #[error("bundle: bad trailer at offset {offset}: {reason}")]
    BadTrailer { offset: u64, reason: String },
    #[error("bundle: data follows the trailer, at offset {offset}")]
    TrailingData { offset: u64 },
    #[error("bundle: an earlier error ended this read")]
    Poisoned,
    #[error("bundle: reading {section} at offset {offset}: {source}")]
    Read {
        section: Section,
        offset: u64,
        source: io::Error,
    },
    #[error("bundle: writing: {0}")]
    Write(#[source] io::Error),
    #[error("bundle: {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("bundle: the {kind} payload {path} changed while the bundle was written (sha256 {actual} now, {expected} when first read)")]
    PayloadChanged {
        kind: ArtifactKind,
        path: PathBuf,
        actual: String,
        expected: String,
    },
    #[error("{what}: {reason}")]
    Key { what: &'static str, reason: String },
    #[error("signing key: no randomness from the operating system: {0}")]
    Random(String),
}

impl BundleError {
    /// The bundle error an [`io::Error`] from an artifact's `Read` carries,
    /// if it carries one (truncation, or a read after an earlier failure).
    pub fn from_io(e: io::Error) -> Result<BundleError, io::Error> {
        if !e.get_ref().is_some_and(|inner| inner.is::<BundleError>()) {
            return Err(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|inner| inner.downcast::<BundleError>()) {
            Some(Ok(b)) => Ok(*b),
            Some(Err(other)) => Err(io::Error::new(kind, other)),
            None => Err(io::Error::from(kind)),
        }
    }
}
