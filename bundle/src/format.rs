//! The container's fixed parts: magic, length-prefixed manifest and
//! signature block, trailer. See the crate docs for the layout.

use crate::error::BundleError;
use crate::keys::{SignatureBlock, SigningKey};
use crate::manifest::Manifest;

/// `CAISSON-BUNDLE`, a NUL, then the container version (1).
pub const MAGIC: [u8; 16] = *b"CAISSON-BUNDLE\0\x01";
/// The part of the magic that says "a Caisson bundle" whatever its version.
pub(crate) const MAGIC_PREFIX: usize = 15;
/// Longest manifest a reader accepts, bytes.
pub const MANIFEST_CAP: u32 = 1 << 20;
/// Longest signature block a reader accepts, bytes.
pub const SIGNATURES_CAP: u32 = 64 << 10;
/// The trailer's marker, zero-padded to 24 bytes; a u64 LE length follows.
pub const TRAILER_MARKER: &[u8] = b"CAISSON-BUNDLE-END";
pub const TRAILER_SIZE: usize = 32;
pub(crate) const TRAILER_MARKER_FIELD: usize = 24;

/// Magic, manifest and signature block for `manifest`, signed by `key`
/// when there is one. The manifest is validated first.
pub fn encode_header(
    manifest: &Manifest,
    key: Option<&SigningKey>,
) -> Result<Vec<u8>, BundleError> {
    manifest.validate()?;
    let bytes = manifest.to_bytes();
    let block = SignatureBlock {
        signatures: key.map(|k| k.sign(&bytes)).into_iter().collect(),
    };
    encode_header_raw(&bytes, &block)
}

/// The header around manifest bytes as they are (signing keeps them as read).
pub(crate) fn encode_header_raw(
    manifest: &[u8],
    block: &SignatureBlock,
) -> Result<Vec<u8>, BundleError> {
    let signatures = block.to_bytes();
    let too_large = |section, len: usize, cap: u32| BundleError::TooLarge {
        section,
        len: len as u64,
        cap: u64::from(cap),
        offset: 0,
    };
    let manifest_len = u32::try_from(manifest.len())
        .ok()
        .filter(|&n| n <= MANIFEST_CAP)
        .ok_or_else(|| too_large(crate::Section::Manifest, manifest.len(), MANIFEST_CAP))?;
    let signatures_len = u32::try_from(signatures.len())
        .ok()
        .filter(|&n| n <= SIGNATURES_CAP)
        .ok_or_else(|| too_large(crate::Section::Signatures, signatures.len(), SIGNATURES_CAP))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + manifest.len() + signatures.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&manifest_len.to_le_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(&signatures_len.to_le_bytes());
    out.extend_from_slice(&signatures);
    Ok(out)
}

/// The trailer that closes a bundle of `len_before` bytes (header and
/// artifacts): a reader that sees it knows the stream was not cut short.
pub fn encode_trailer(len_before: u64) -> [u8; TRAILER_SIZE] {
    let mut t = [0u8; TRAILER_SIZE];
    t[..TRAILER_MARKER.len()].copy_from_slice(TRAILER_MARKER);
    t[TRAILER_MARKER_FIELD..].copy_from_slice(&len_before.to_le_bytes());
    t
}
