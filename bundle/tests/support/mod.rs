//! A small bundle made from files in a temporary directory, and a reader
//! that takes a bundle through every step a node takes.

#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;

use caisson_bundle::{
    write_bundle, ArtifactKind, BundleError, BundleReader, BundleVerity, ManifestBase, Payload,
    SigningKey, TrustPolicy, Verified,
};

pub const ROOT_SIZE: usize = 3 * 4096;
pub const KERNEL_SIZE: usize = 5000;
pub const INITRD_SIZE: usize = 777;

pub fn key(n: u8) -> SigningKey {
    SigningKey::from_seed(&[n; 32])
}

pub fn base() -> ManifestBase {
    ManifestBase {
        name: "caisson".into(),
        version: "0.2.0".into(),
        kernel_release: "6.1.0-56-cloud-amd64".into(),
        source_date_epoch: 1_700_000_000,
        verity: BundleVerity {
            root_hash: "5a".repeat(32),
            salt: "c3".repeat(32),
            hash_offset: 2 * 4096,
        },
        cmdline: vec!["console=ttyS0,115200".into()],
    }
}

/// Root, kernel and initrd files with distinct contents.
pub struct Files {
    pub dir: tempfile::TempDir,
    pub paths: Vec<(ArtifactKind, PathBuf)>,
}

impl Files {
    pub fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for (kind, size, seed) in [
            (ArtifactKind::Root, ROOT_SIZE, 1u32),
            (ArtifactKind::Kernel, KERNEL_SIZE, 2),
            (ArtifactKind::Initrd, INITRD_SIZE, 3),
        ] {
            let bytes: Vec<u8> = (0..size as u32)
                .map(|i| (i.wrapping_mul(seed * 31 + 7) >> 3) as u8)
                .collect();
            let path = dir.path().join(kind.as_str());
            std::fs::write(&path, bytes).unwrap();
            paths.push((kind, path));
        }
        Files { dir, paths }
    }

    pub fn payloads(&self) -> Vec<Payload<'_>> {
        self.paths
            .iter()
            .map(|(kind, path)| Payload { kind: *kind, path })
            .collect()
    }

    pub fn bundle(&self, key: Option<&SigningKey>) -> Vec<u8> {
        let mut out = Vec::new();
        write_bundle(base(), &self.payloads(), key, &mut out).unwrap();
        out
    }

    pub fn contents(&self, kind: ArtifactKind) -> Vec<u8> {
        let (_, path) = self.paths.iter().find(|(k, _)| *k == kind).unwrap();
        std::fs::read(path).unwrap()
    }
}

/// Where the parts of a bundle written by [`Files::bundle`] are.
pub struct Offsets {
    pub manifest: usize,
    pub signatures: usize,
    pub root: usize,
    pub kernel: usize,
    pub initrd: usize,
    pub trailer: usize,
}

pub fn offsets(bundle: &[u8]) -> Offsets {
    let u32_at = |at: usize| u32::from_le_bytes(bundle[at..at + 4].try_into().unwrap()) as usize;
    let manifest = 20;
    let signatures = manifest + u32_at(16) + 4;
    let root = signatures + u32_at(signatures - 4);
    let kernel = root + ROOT_SIZE;
    let initrd = kernel + KERNEL_SIZE;
    let trailer = initrd + INITRD_SIZE;
    assert_eq!(trailer + 32, bundle.len());
    Offsets {
        manifest,
        signatures,
        root,
        kernel,
        initrd,
        trailer,
    }
}

/// Each artifact's kind and bytes, in stream order.
pub type Artifacts = Vec<(ArtifactKind, Vec<u8>)>;

/// Everything a node does with a bundle: open, verify, stream each
/// artifact out, finish each, finish the bundle.
pub fn read_all(
    bundle: impl Read,
    policy: &TrustPolicy,
) -> Result<(Verified, Artifacts), BundleError> {
    let mut r = BundleReader::open(bundle)?;
    let verified = r.verify(policy)?;
    let mut artifacts = Vec::new();
    while let Some(mut a) = r.next_artifact()? {
        let kind = a.artifact().kind;
        let mut bytes = Vec::new();
        if let Err(e) = a.read_to_end(&mut bytes) {
            return Err(BundleError::from_io(e).expect("a bundle error"));
        }
        a.finish()?;
        artifacts.push((kind, bytes));
    }
    r.finish()?;
    Ok((verified, artifacts))
}

pub fn trusting(keys: &[&SigningKey]) -> TrustPolicy {
    TrustPolicy {
        trusted: keys.iter().map(|k| k.public()).collect(),
        allow_unsigned: false,
    }
}
