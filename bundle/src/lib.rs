//! Caisson update bundles: one file that carries a new OS version to a
//! node's inactive A/B slot, with an Ed25519-signed manifest.
//!
//! # Format (container version 1)
//!
//! ```text
//! magic        16 bytes  b"CAISSON-BUNDLE\0\x01" (the last byte is the container version)
//! manifest_len u32 LE    at most 1 MiB
//! manifest     JSON      the Manifest, compact, fields in declaration order;
//!                        exactly these bytes are signed
//! sigs_len     u32 LE    at most 64 KiB
//! signatures   JSON      {"signatures":[{"key_id":"<16 hex>","signature":"<128 hex>"}]}
//!                        (an empty list: unsigned)
//! artifacts              the bytes of each manifest artifact, in manifest order
//!                        (root, kernel, initrd), back to back, no padding
//! trailer      32 bytes  b"CAISSON-BUNDLE-END", zero-padded to 24 bytes, then
//!                        u64 LE: the length of everything before the trailer
//! ```
//!
//! - The root artifact is the slot's partition contents: the squashfs padded
//!   to 4 KiB, then its dm-verity hash area; `verity.hash_offset` is where
//!   that area starts. Kernel and initrd go to the slot's ESP directory.
//! - A key id is the first 16 hex digits of the sha256 of the 32-byte
//!   Ed25519 public key. Signatures are plain Ed25519 (RFC 8032) over the
//!   manifest bytes, so `openssl pkeyutl -verify -rawin` checks them.
//! - The manifest binds each artifact by size and sha256, so one signature
//!   over a few hundred bytes covers the whole bundle; the trailer catches a
//!   stream cut short exactly at an artifact boundary.
//!
//! # Trust
//!
//! [`BundleReader::verify`] applies a [`TrustPolicy`]: a bundle is accepted
//! when a key the policy trusts signed it, or when it is unsigned and the
//! policy allows unsigned bundles. A signature by a trusted key that does not
//! verify is an error even if another trusted signature does (it means
//! tampering). Signatures by keys the policy does not list are not checked;
//! they count as no signature (so `allow_unsigned` accepts them, and
//! otherwise the error names their key ids).
//!
//! # Streaming
//!
//! [`BundleReader`] reads the header (bounded: 1 MiB + 64 KiB at most), then
//! hands out each artifact as an [`ArtifactReader`] that passes bytes through
//! and hashes them; [`ArtifactReader::finish`] checks size and sha256. No
//! buffer grows with an artifact, so a node with a 40 MiB memory limit can
//! install a 600 MiB bundle. The caller must treat what it wrote from an
//! artifact as untrusted until `finish` has returned `Ok`.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use caisson_bundle::{BundleReader, TrustPolicy};
//! let policy = TrustPolicy { trusted: vec![], allow_unsigned: true };
//! let mut r = BundleReader::open(std::fs::File::open("caisson-0.2.0.bundle")?)?;
//! let verified = r.verify(&policy)?;
//! while let Some(mut a) = r.next_artifact()? {
//!     std::io::copy(&mut a, &mut std::io::sink())?;
//!     a.finish()?;
//! }
//! r.finish()?;
//! # let _ = verified; Ok(()) }
//! ```

mod error;
mod format;
mod keys;
mod manifest;
mod reader;
mod writer;

pub use error::{BundleError, Section};
pub use format::{
    encode_header, encode_trailer, MAGIC, MANIFEST_CAP, SIGNATURES_CAP, TRAILER_MARKER,
    TRAILER_SIZE,
};
pub use keys::{
    PublicKey, SignatureBlock, SignatureEntry, SigningKey, TrustPolicy, Verified, KEY_ID_LEN,
};
pub use manifest::{Artifact, ArtifactKind, BundleVerity, Manifest, ManifestBase, MANIFEST_FORMAT};
pub use reader::{ArtifactReader, BundleReader};
pub use writer::{sign_bundle, write_bundle, Payload};
