//! Reading a bundle as a stream: the header is read and bounded up front,
//! each artifact is passed through to the caller and hashed on the way, and
//! nothing proportional to an artifact's size is ever held in memory.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::error::{BundleError, Section};
use crate::format::{
    MAGIC, MAGIC_PREFIX, MANIFEST_CAP, SIGNATURES_CAP, TRAILER_MARKER, TRAILER_MARKER_FIELD,
    TRAILER_SIZE,
};
use crate::keys::{self, SignatureBlock, SignatureEntry, TrustPolicy, Verified};
use crate::manifest::{Artifact, Manifest};

/// Chunk for draining an artifact the caller did not read to its end.
const DRAIN_CHUNK: usize = 16 << 10;

/// A bundle being read. Call order: [`BundleReader::open`], [`verify`],
/// [`next_artifact`] until `None` (finishing each), [`finish`].
///
/// [`verify`]: BundleReader::verify
/// [`next_artifact`]: BundleReader::next_artifact
/// [`finish`]: BundleReader::finish
pub struct BundleReader<R> {
    stream: Stream<R>,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signatures: SignatureBlock,
    verified: bool,
    /// Index of the next artifact [`BundleReader::next_artifact`] opens.
    next: usize,
    current: Option<Progress>,
}

/// The underlying reader, counted.
struct Stream<R> {
    inner: R,
    /// Bytes consumed from `inner` so far.
    offset: u64,
    /// Set by any error: a bundle that failed once is not read further.
    poisoned: bool,
}

/// The artifact being read.
struct Progress {
    index: usize,
    read: u64,
    hasher: Sha256,
}

impl<R: Read> BundleReader<R> {
    /// Read magic, manifest and signature block, each bounded; validate the
    /// manifest. Nothing is trusted yet: see [`BundleReader::verify`].
    pub fn open(inner: R) -> Result<BundleReader<R>, BundleError> {
        let mut stream = Stream {
            inner,
            offset: 0,
            poisoned: false,
        };
        stream.read_magic()?;
        let manifest_len =
            stream.read_len(Section::ManifestLength, Section::Manifest, MANIFEST_CAP)?;
        let manifest_at = stream.offset;
        let manifest_bytes = stream.read_vec(Section::Manifest, manifest_len)?;
        let manifest = Manifest::from_bytes(&manifest_bytes, manifest_at)?;
        let signatures_len = stream.read_len(
            Section::SignaturesLength,
            Section::Signatures,
            SIGNATURES_CAP,
        )?;
        let signatures_at = stream.offset;
        let block = stream.read_vec(Section::Signatures, signatures_len)?;
        let signatures: SignatureBlock =
            serde_json::from_slice(&block).map_err(|source| BundleError::Json {
                section: Section::Signatures,
                offset: signatures_at,
                source,
            })?;
        signatures.validate()?;
        Ok(BundleReader {
            stream,
            manifest,
            manifest_bytes,
            signatures,
            verified: false,
            next: 0,
            current: None,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest exactly as it is in the bundle: the signed bytes.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    pub fn signatures(&self) -> &[SignatureEntry] {
        &self.signatures.signatures
    }

    /// Bytes read from the underlying reader so far.
    pub fn offset(&self) -> u64 {
        self.stream.offset
    }

    /// Apply `policy` to the signatures (see [`TrustPolicy`] and the crate
    /// docs); artifacts can be read only once this has succeeded.
    pub fn verify(&mut self, policy: &TrustPolicy) -> Result<Verified, BundleError> {
        let verified = keys::check(policy, &self.manifest_bytes, &self.signatures)?;
        self.verified = true;
        Ok(verified)
    }

    /// For re-signing, which replaces the signatures it would check.
    pub(crate) fn skip_verification(&mut self) {
        self.verified = true;
    }

    /// The next artifact, in manifest order; `None` after the last. An
    /// artifact left unfinished is finished (read to its end and checked)
    /// first.
    pub fn next_artifact(&mut self) -> Result<Option<ArtifactReader<'_, R>>, BundleError> {
        if self.stream.poisoned {
            return Err(BundleError::Poisoned);
        }
        if !self.verified {
            return Err(BundleError::NotVerified);
        }
        self.finish_current()?;
        if self.next == self.manifest.artifacts.len() {
            return Ok(None);
        }
        self.current = Some(Progress {
            index: self.next,
            read: 0,
            hasher: Sha256::new(),
        });
        self.next += 1;
        Ok(Some(ArtifactReader { bundle: self }))
    }

    /// Read and check whatever artifacts are left, then the trailer; nothing
    /// may follow it.
    pub fn finish(mut self) -> Result<(), BundleError> {
        while let Some(a) = self.next_artifact()? {
            a.finish()?;
        }
        let trailer_at = self.stream.offset;
        let mut trailer = [0u8; TRAILER_SIZE];
        self.stream.fill(Section::Trailer, &mut trailer)?;
        let bad = |reason: String| BundleError::BadTrailer {
            offset: trailer_at,
            reason,
        };
        let (marker, len) = trailer.split_at(TRAILER_MARKER_FIELD);
        if &marker[..TRAILER_MARKER.len()] != TRAILER_MARKER
            || marker[TRAILER_MARKER.len()..].iter().any(|&b| b != 0)
        {
            return Err(bad("no CAISSON-BUNDLE-END marker".into()));
        }
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(len);
        let said = u64::from_le_bytes(len_bytes);
        if said != trailer_at {
            return Err(bad(format!(
                "it says {said} bytes precede it, but {trailer_at} did"
            )));
        }
        let end = self.stream.offset;
        match self.stream.read_up_to(Section::Trailer, &mut [0u8; 1])? {
            0 => Ok(()),
            _ => Err(BundleError::TrailingData { offset: end }),
        }
    }

    fn current_artifact(&self) -> Option<&Artifact> {
        self.current
            .as_ref()
            .and_then(|p| self.manifest.artifacts.get(p.index))
    }

    /// Pass bytes of the current artifact through, hashing them.
    fn read_current(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stream.poisoned {
            return Err(io::Error::other(BundleError::Poisoned));
        }
        let Some(progress) = self.current.as_mut() else {
            return Ok(0);
        };
        let Some(artifact) = self.manifest.artifacts.get(progress.index) else {
            return Ok(0);
        };
        let left = artifact.size - progress.read;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = loop {
            match self.stream.inner.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.stream.poisoned = true;
                return Err(e);
            }
        };
        if n == 0 {
            let (got, expected, kind) = (progress.read, artifact.size, artifact.kind);
            let e = self
                .stream
                .truncated(Section::Artifact(kind), got, expected);
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, e));
        }
        progress.hasher.update(&buf[..n]);
        progress.read += n as u64;
        self.stream.offset += n as u64;
        Ok(n)
    }

    /// Read the current artifact to its end and check size and sha256.
    fn finish_current(&mut self) -> Result<(), BundleError> {
        let Some(kind) = self.current_artifact().map(|a| a.kind) else {
            return Ok(());
        };
        let mut chunk = [0u8; DRAIN_CHUNK];
        loop {
            match self.read_current(&mut chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    let offset = self.stream.offset;
                    return Err(BundleError::from_io(e).unwrap_or_else(|source| {
                        BundleError::Read {
                            section: Section::Artifact(kind),
                            offset,
                            source,
                        }
                    }));
                }
            }
        }
        let Some(progress) = self.current.take() else {
            return Ok(());
        };
        let artifact = &self.manifest.artifacts[progress.index];
        let actual = hex::encode(progress.hasher.finalize());
        if actual != artifact.sha256 {
            self.stream.poisoned = true;
            return Err(BundleError::Digest {
                kind: artifact.kind,
                actual,
                expected: artifact.sha256.clone(),
            });
        }
        Ok(())
    }
}

impl<R: Read> Stream<R> {
    fn read_magic(&mut self) -> Result<(), BundleError> {
        let mut magic = [0u8; MAGIC.len()];
        let got = self.read_up_to(Section::Magic, &mut magic)?;
        // A short file that is not ours is "not a bundle", not "truncated".
        let compared = got.min(MAGIC_PREFIX);
        if magic[..compared] != MAGIC[..compared] {
            return Err(BundleError::BadMagic);
        }
        if got < MAGIC.len() {
            return Err(self.truncated(Section::Magic, got as u64, MAGIC.len() as u64));
        }
        if magic[MAGIC_PREFIX] != MAGIC[MAGIC_PREFIX] {
            return Err(BundleError::UnsupportedVersion {
                found: magic[MAGIC_PREFIX],
            });
        }
        Ok(())
    }

    fn read_len(&mut self, section: Section, of: Section, cap: u32) -> Result<usize, BundleError> {
        let mut len = [0u8; 4];
        self.fill(section, &mut len)?;
        let len = u32::from_le_bytes(len);
        if len > cap {
            return Err(BundleError::TooLarge {
                section: of,
                len: u64::from(len),
                cap: u64::from(cap),
                offset: self.offset,
            });
        }
        Ok(len as usize)
    }

    /// `len` is bounded by a cap before this is called.
    fn read_vec(&mut self, section: Section, len: usize) -> Result<Vec<u8>, BundleError> {
        let mut buf = vec![0u8; len];
        self.fill(section, &mut buf)?;
        Ok(buf)
    }

    fn fill(&mut self, section: Section, buf: &mut [u8]) -> Result<(), BundleError> {
        let got = self.read_up_to(section, buf)?;
        if got < buf.len() {
            return Err(self.truncated(section, got as u64, buf.len() as u64));
        }
        Ok(())
    }

    /// Fill `buf` as far as the stream allows; the count read.
    fn read_up_to(&mut self, section: Section, buf: &mut [u8]) -> Result<usize, BundleError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    self.poisoned = true;
                    return Err(BundleError::Read {
                        section,
                        offset: self.offset,
                        source,
                    });
                }
            }
        }
        Ok(got)
    }

    fn truncated(&mut self, section: Section, got: u64, expected: u64) -> BundleError {
        self.poisoned = true;
        BundleError::Truncated {
            section,
            got,
            expected,
            offset: self.offset,
        }
    }
}

/// One artifact's bytes, limited to its size and hashed as they pass.
/// [`ArtifactReader::finish`] checks them; a truncated stream surfaces as an
/// [`io::Error`] of kind `UnexpectedEof` that carries a
/// [`BundleError::Truncated`] (see [`BundleError::from_io`]).
pub struct ArtifactReader<'a, R> {
    bundle: &'a mut BundleReader<R>,
}

impl<R: Read> ArtifactReader<'_, R> {
    pub fn artifact(&self) -> &Artifact {
        // The reader exists only while its artifact is current.
        &self.bundle.manifest.artifacts[self.bundle.next - 1]
    }

    /// Where the bundle stream stands: for error messages.
    pub fn offset(&self) -> u64 {
        self.bundle.stream.offset
    }

    /// Read what the caller left unread, then check size and sha256.
    pub fn finish(self) -> Result<(), BundleError> {
        self.bundle.finish_current()
    }
}

impl<R: Read> Read for ArtifactReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.bundle.read_current(buf)
    }
}
