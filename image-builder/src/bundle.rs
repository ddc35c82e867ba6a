//! The update bundle a build writes beside its raw image (see the
//! `caisson-bundle` crate for the format), and the operator's key files:
//! `keygen`, `sign` and `verify-bundle` are thin commands over these.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use caisson_bundle::{
    write_bundle, ArtifactKind, BundleError, BundleReader, BundleVerity, Manifest, ManifestBase,
    Payload, PublicKey, SigningKey, TrustPolicy, Verified,
};
use caisson_layout::VerityParams;
use thiserror::Error;

use crate::spec::Spec;

/// Buffer for streaming bundles to and from disk.
const CHUNK: usize = 256 << 10;

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("key file {path}: {source}")]
    Key { path: PathBuf, source: BundleError },
    #[error("key file {path} already exists; keygen never overwrites a key")]
    Exists { path: PathBuf },
}

/// A PKCS#8 PEM secret key, e.g. from `image-builder keygen`.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let text = read_key_file(path)?;
    let key = SigningKey::from_pem(&text).map_err(|source| KeyFileError::Key {
        path: path.to_path_buf(),
        source,
    })?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "signing key {} is readable by group or others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    Ok(key)
}

/// An SPKI PEM public key, e.g. `PREFIX.pub` from `image-builder keygen`.
pub fn load_public_key(path: &Path) -> Result<PublicKey, KeyFileError> {
    let text = read_key_file(path)?;
    PublicKey::from_pem(&text).map_err(|source| KeyFileError::Key {
        path: path.to_path_buf(),
        source,
    })
}

fn read_key_file(path: &Path) -> Result<zeroize::Zeroizing<String>, KeyFileError> {
    std::fs::read_to_string(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// What `keygen` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairFiles {
    /// `PREFIX.key`, mode 0600.
    pub secret: PathBuf,
    /// `PREFIX.pub`, mode 0644.
    pub public: PathBuf,
    pub key_id: String,
}

/// A new signing key in `PREFIX.key` (0600) and its public key in
/// `PREFIX.pub`. Refuses to overwrite either file.
pub fn keygen(prefix: &Path) -> Result<KeyPairFiles, KeyFileError> {
    let with_ext = |ext: &str| {
        let mut p = prefix.as_os_str().to_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    let (secret, public) = (with_ext(".key"), with_ext(".pub"));
    for path in [&secret, &public] {
        if path.symlink_metadata().is_ok() {
            return Err(KeyFileError::Exists { path: path.clone() });
        }
    }
    let key = SigningKey::generate().map_err(|source| KeyFileError::Key {
        path: secret.clone(),
        source,
    })?;
    write_new(&secret, 0o600, key.to_pem().as_bytes())?;
    if let Err(e) = write_new(&public, 0o644, key.public().to_pem().as_bytes()) {
        // Half a key pair is worse than none: the next keygen would refuse.
        let _ = std::fs::remove_file(&secret);
        return Err(e);
    }
    Ok(KeyPairFiles {
        secret,
        public,
        key_id: key.public().key_id(),
    })
}

/// Create `path` (never replacing a file), write, sync.
fn write_new(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => KeyFileError::Exists {
                path: path.to_path_buf(),
            },
            _ => io_err(e),
        })?;
    // The umask may have narrowed `mode`; a public key should be readable.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err)?;
    file.write_all(bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// The bundle's file name for an image identity: `<name>-<version>.bundle`.
pub fn file_name(identity: &str) -> String {
    format!("{identity}.bundle")
}

/// What a build puts in its bundle: the sealed root (squashfs, then its
/// dm-verity hash area), the kernel and the initrd, as staged files.
pub(crate) struct BuildInputs<'a> {
    pub spec: &'a Spec,
    pub kernel_release: &'a str,
    pub epoch: u64,
    pub verity: &'a VerityParams,
    pub root: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
}

/// Write the bundle under a temporary name in `out_dir`, synced; the
/// caller renames it into place once the whole build has succeeded.
pub(crate) fn write_partial(
    out_dir: &Path,
    inputs: &BuildInputs<'_>,
    key: Option<&SigningKey>,
) -> Result<(tempfile::NamedTempFile, u64), BundleFileError> {
    let spec = inputs.spec;
    let base = ManifestBase {
        name: spec.image.name.clone(),
        version: spec.image.version.clone(),
        kernel_release: inputs.kernel_release.to_string(),
        source_date_epoch: inputs.epoch,
        verity: BundleVerity::from(inputs.verity),
        cmdline: spec.kernel.cmdline.clone(),
    };
    let payloads = [
        (ArtifactKind::Root, inputs.root),
        (ArtifactKind::Kernel, inputs.kernel),
        (ArtifactKind::Initrd, inputs.initrd),
    ]
    .map(|(kind, path)| Payload { kind, path });
    let dir_err = |source| BundleFileError::Io {
        path: out_dir.to_path_buf(),
        source,
    };
    let partial = tempfile::Builder::new()
        .prefix(&format!(".{}.", spec.identity()))
        .suffix(".bundle.partial")
        .tempfile_in(out_dir)
        .map_err(dir_err)?;
    let path = partial.path().to_path_buf();
    let io_err = |source| BundleFileError::Io {
        path: path.clone(),
        source,
    };
    let mut out = BufWriter::with_capacity(CHUNK, partial);
    write_bundle(base, &payloads, key, &mut out)?;
    let partial = out.into_inner().map_err(|e| io_err(e.into_error()))?;
    partial.as_file().sync_all().map_err(io_err)?;
    let size = partial.as_file().metadata().map_err(io_err)?.len();
    Ok((partial, size))
}

#[derive(Debug, Error)]
pub enum BundleFileError {
    #[error("bundle file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// What a full read of a bundle file found.
#[derive(Debug, Clone)]
pub struct BundleCheck {
    pub manifest: Manifest,
    pub verified: Verified,
    pub size: u64,
}

/// Read a bundle file the way a node does: header, signatures against
/// `policy`, every artifact's size and sha256, trailer.
pub fn check_file(path: &Path, policy: &TrustPolicy) -> Result<BundleCheck, BundleError> {
    let file = File::open(path).map_err(|source| BundleError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let mut r = BundleReader::open(BufReader::with_capacity(CHUNK, file))?;
    let verified = r.verify(policy)?;
    while let Some(mut a) = r.next_artifact()? {
        let kind = a.artifact().kind;
        if let Err(e) = io::copy(&mut a, &mut io::sink()) {
            let offset = a.offset();
            return Err(
                BundleError::from_io(e).unwrap_or_else(|source| BundleError::Read {
                    section: caisson_bundle::Section::Artifact(kind),
                    offset,
                    source,
                }),
            );
        }
        a.finish()?;
    }
    let manifest = r.manifest().clone();
    let size = r.offset();
    r.finish()?;
    Ok(BundleCheck {
        manifest,
        verified,
        // Header and artifacts, then the trailer.
        size: size + caisson_bundle::TRAILER_SIZE as u64,
    })
}
