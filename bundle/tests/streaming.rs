//! Reading a bundle never holds an artifact in memory: a 200 MiB root read
//! through a counting allocator raises the heap by no more than the header.
//! (This file is its own test binary so no other test shares the counter.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Cursor, Read};
use std::sync::atomic::{AtomicUsize, Ordering};

use caisson_bundle::{
    encode_header, encode_trailer, Artifact, ArtifactKind, BundleError, BundleReader, BundleVerity,
    ManifestBase, SigningKey, TrustPolicy,
};
use sha2::{Digest as _, Sha256};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const MIB: u64 = 1 << 20;

fn pattern(byte: u8, size: u64) -> io::Take<io::Repeat> {
    io::repeat(byte).take(size)
}

fn sha256_of(mut r: impl Read) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            return hex::encode(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

#[test]
fn a_200_mib_bundle_streams_through_in_bounded_memory() {
    let sizes = [
        (ArtifactKind::Root, 0x5a, 200 * MIB),
        (ArtifactKind::Kernel, 0x6b, 8 * MIB),
        (ArtifactKind::Initrd, 0x7c, 3 * MIB + 17),
    ];
    let artifacts = sizes
        .iter()
        .map(|&(kind, byte, size)| Artifact {
            kind,
            size,
            sha256: sha256_of(pattern(byte, size)),
        })
        .collect();
    let manifest = ManifestBase {
        name: "caisson".into(),
        version: "9.9.9".into(),
        kernel_release: "6.1.0-56-cloud-amd64".into(),
        source_date_epoch: 0,
        verity: BundleVerity {
            root_hash: "00".repeat(32),
            salt: "01".repeat(32),
            hash_offset: 199 * MIB,
        },
        cmdline: vec![],
    }
    .with_artifacts(artifacts);
    let key = SigningKey::from_seed(&[9; 32]);
    let header = encode_header(&manifest, Some(&key)).unwrap();
    let total = header.len() as u64 + sizes.iter().map(|s| s.2).sum::<u64>();
    let stream = || {
        Cursor::new(header.clone())
            .chain(pattern(0x5a, 200 * MIB))
            .chain(pattern(0x6b, 8 * MIB))
            .chain(pattern(0x7c, 3 * MIB + 17))
            .chain(Cursor::new(encode_trailer(total)))
    };
    let policy = TrustPolicy {
        trusted: vec![key.public()],
        allow_unsigned: false,
    };

    let input = stream();
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let mut r = BundleReader::open(input).unwrap();
    r.verify(&policy).unwrap();
    let mut seen = 0u64;
    while let Some(mut a) = r.next_artifact().unwrap() {
        seen += io::copy(&mut a, &mut io::sink()).unwrap();
        a.finish().unwrap();
    }
    r.finish().unwrap();
    let peak = PEAK.load(Ordering::SeqCst) - before;
    assert_eq!(seen, total - header.len() as u64);
    assert!(
        peak < 256 * 1024,
        "reading {total} bytes raised the heap by {peak} bytes"
    );

    // The same stream with one byte wrong deep in the root is refused.
    let bad = Cursor::new(header.clone())
        .chain(pattern(0x5a, 150 * MIB))
        .chain(pattern(0x5b, 1))
        .chain(pattern(0x5a, 50 * MIB - 1))
        .chain(pattern(0x6b, 8 * MIB))
        .chain(pattern(0x7c, 3 * MIB + 17))
        .chain(Cursor::new(encode_trailer(total)));
    let mut r = BundleReader::open(bad).unwrap();
    r.verify(&policy).unwrap();
    let mut root = r.next_artifact().unwrap().unwrap();
    io::copy(&mut root, &mut io::sink()).unwrap();
    let e = root.finish().unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::Digest {
                kind: ArtifactKind::Root,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(r.next_artifact(), Err(BundleError::Poisoned)));
}
