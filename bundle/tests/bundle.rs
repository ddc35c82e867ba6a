//! A bundle reads back exactly as written, and every kind of damage is
//! refused with an error that says what did not match and where.

mod support;

use std::io::Read;

use caisson_bundle::{
    sign_bundle, ArtifactKind, BundleError, BundleReader, Section, TrustPolicy, MAGIC,
};
use sha2::{Digest as _, Sha256};
use support::{key, offsets, read_all, trusting, Files};

fn flip(bundle: &[u8], at: usize) -> Vec<u8> {
    let mut b = bundle.to_vec();
    b[at] ^= 0x20;
    b
}

#[test]
fn round_trip_gives_back_manifest_and_artifacts() {
    let files = Files::new();
    let k = key(1);
    let bundle = files.bundle(Some(&k));
    assert_eq!(&bundle[..16], &MAGIC);
    let (verified, artifacts) = read_all(&bundle[..], &trusting(&[&k])).unwrap();
    assert_eq!(verified.signed_by, Some(k.public().key_id()));
    assert_eq!(
        artifacts.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        ArtifactKind::ORDER
    );
    for (kind, bytes) in &artifacts {
        assert_eq!(*bytes, files.contents(*kind), "{kind}");
    }

    let r = BundleReader::open(&bundle[..]).unwrap();
    let m = r.manifest();
    assert_eq!(m.identity(), "caisson-0.2.0");
    assert_eq!(m.verity.params().hash_offset, 8192);
    let root = m.artifact(ArtifactKind::Root).unwrap();
    assert_eq!(root.size, support::ROOT_SIZE as u64);
    assert_eq!(
        root.sha256,
        hex::encode(Sha256::digest(files.contents(ArtifactKind::Root)))
    );
    assert_eq!(r.signatures().len(), 1);
    assert_eq!(r.signatures()[0].key_id, k.public().key_id());
}

#[test]
fn same_inputs_and_key_give_the_same_bytes() {
    let files = Files::new();
    assert_eq!(files.bundle(Some(&key(1))), files.bundle(Some(&key(1))));
    assert_eq!(files.bundle(None), files.bundle(None));
    assert_ne!(files.bundle(Some(&key(1))), files.bundle(Some(&key(2))));
}

#[test]
fn a_flipped_byte_in_any_artifact_is_named_with_both_digests() {
    let files = Files::new();
    let k = key(1);
    let bundle = files.bundle(Some(&k));
    let o = offsets(&bundle);
    for (kind, start, size) in [
        (ArtifactKind::Root, o.root, support::ROOT_SIZE),
        (ArtifactKind::Kernel, o.kernel, support::KERNEL_SIZE),
        (ArtifactKind::Initrd, o.initrd, support::INITRD_SIZE),
    ] {
        for at in [start, start + size / 2, start + size - 1] {
            let e = read_all(&flip(&bundle, at)[..], &trusting(&[&k])).unwrap_err();
            let BundleError::Digest {
                kind: named,
                ref actual,
                ref expected,
            } = e
            else {
                panic!("byte {at}: expected a digest mismatch, got {e}");
            };
            assert_eq!(named, kind);
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("bundle: the {kind} artifact's sha256 is {actual}, the manifest says {expected}")),
                "{msg}"
            );
            assert_ne!(actual, expected);
        }
    }
}

#[test]
fn a_changed_manifest_fails_its_signature() {
    let files = Files::new();
    let k = key(1);
    let bundle = files.bundle(Some(&k));
    let o = offsets(&bundle);
    let text = String::from_utf8(bundle[o.manifest..o.signatures - 4].to_vec()).unwrap();
    // A change that still parses and validates: the epoch's last digit.
    let at = o.manifest + text.find("1700000000").unwrap() + 9;
    let changed = flip(&bundle, at); // '0' ^ 0x20 is '\x10': invalid JSON
    let e = read_all(&changed[..], &trusting(&[&k])).unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::Json {
                section: Section::Manifest,
                ..
            }
        ),
        "{e}"
    );
    let mut changed = bundle.clone();
    changed[at] = b'1';
    let e = read_all(&changed[..], &trusting(&[&k])).unwrap_err();
    assert!(
        matches!(e, BundleError::BadSignature { ref key_id } if *key_id == k.public().key_id()),
        "{e}"
    );
    // With unsigned bundles allowed, a bad trusted signature still fails.
    let lax = TrustPolicy {
        allow_unsigned: true,
        ..trusting(&[&k])
    };
    let e = read_all(&changed[..], &lax).unwrap_err();
    assert!(matches!(e, BundleError::BadSignature { .. }), "{e}");
}

#[test]
fn a_corrupt_signature_is_refused() {
    let files = Files::new();
    let k = key(1);
    let bundle = files.bundle(Some(&k));
    let o = offsets(&bundle);
    let block = String::from_utf8(bundle[o.signatures..o.root].to_vec()).unwrap();
    let at = o.signatures + block.find("\"signature\":\"").unwrap() + 13 + 40;
    let mut changed = bundle.clone();
    changed[at] = if bundle[at] == b'0' { b'1' } else { b'0' };
    let e = read_all(&changed[..], &trusting(&[&k])).unwrap_err();
    assert!(matches!(e, BundleError::BadSignature { .. }), "{e}");
    assert!(e.to_string().contains("does not verify"), "{e}");
}

#[test]
fn a_bundle_signed_by_an_untrusted_key_is_refused_by_key_id() {
    let files = Files::new();
    let (good, other) = (key(1), key(2));
    let bundle = files.bundle(Some(&other));
    let e = read_all(&bundle[..], &trusting(&[&good])).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "bundle: signed by key {}, which upgrade.trusted_keys does not list",
            other.public().key_id()
        )
    );
    // Signatures by unknown keys count as none: allow_unsigned accepts it.
    let lax = TrustPolicy {
        allow_unsigned: true,
        ..trusting(&[&good])
    };
    let (v, _) = read_all(&bundle[..], &lax).unwrap();
    assert_eq!(v.signed_by, None);
    assert_eq!(v.ignored, [other.public().key_id()]);
}

#[test]
fn unsigned_bundles_need_allow_unsigned() {
    let files = Files::new();
    let bundle = files.bundle(None);
    let e = read_all(&bundle[..], &trusting(&[&key(1)])).unwrap_err();
    assert!(matches!(e, BundleError::Unsigned), "{e}");
    assert_eq!(
        e.to_string(),
        "bundle: unsigned, and the node's config does not allow unsigned bundles (upgrade.allow_unsigned)"
    );
    let lax = TrustPolicy {
        trusted: vec![],
        allow_unsigned: true,
    };
    let (v, artifacts) = read_all(&bundle[..], &lax).unwrap();
    assert_eq!(v.signed_by, None);
    assert_eq!(artifacts.len(), 3);
}

#[test]
fn artifacts_are_not_handed_out_before_verify() {
    let bundle = Files::new().bundle(None);
    let mut r = BundleReader::open(&bundle[..]).unwrap();
    assert!(matches!(r.next_artifact(), Err(BundleError::NotVerified)));
    let e = BundleReader::open(&bundle[..])
        .unwrap()
        .finish()
        .unwrap_err();
    assert!(matches!(e, BundleError::NotVerified), "{e}");
}

#[test]
fn truncation_anywhere_names_the_section_and_the_count() {
    let files = Files::new();
    let k = key(1);
    let bundle = files.bundle(Some(&k));
    let o = offsets(&bundle);
    let cases = [
        (0, Section::Magic, 0, 16),
        (10, Section::Magic, 10, 16),
        (18, Section::ManifestLength, 2, 4),
        (
            o.manifest + 30,
            Section::Manifest,
            30,
            (o.signatures - 4 - o.manifest) as u64,
        ),
        (o.signatures - 1, Section::SignaturesLength, 3, 4),
        (
            o.signatures + 5,
            Section::Signatures,
            5,
            (o.root - o.signatures) as u64,
        ),
        (
            o.root,
            Section::Artifact(ArtifactKind::Root),
            0,
            support::ROOT_SIZE as u64,
        ),
        (
            o.root + 4097,
            Section::Artifact(ArtifactKind::Root),
            4097,
            support::ROOT_SIZE as u64,
        ),
        (
            o.kernel + 1,
            Section::Artifact(ArtifactKind::Kernel),
            1,
            support::KERNEL_SIZE as u64,
        ),
        (
            o.initrd + 700,
            Section::Artifact(ArtifactKind::Initrd),
            700,
            support::INITRD_SIZE as u64,
        ),
        (o.trailer, Section::Trailer, 0, 32),
        (o.trailer + 31, Section::Trailer, 31, 32),
    ];
    for (len, section, got, expected) in cases {
        let e = read_all(&bundle[..len], &trusting(&[&k])).unwrap_err();
        match e {
            BundleError::Truncated {
                section: s,
                got: g,
                expected: x,
                offset,
            } => {
                assert_eq!((s, g, x), (section, got as u64, expected), "cut at {len}");
                assert_eq!(offset, len as u64, "cut at {len}");
            }
            other => panic!("cut at {len}: expected truncation in {section}, got {other}"),
        }
    }
    let e = read_all(&bundle[..o.kernel + 1], &trusting(&[&k])).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "bundle: truncated in the kernel artifact after 1 of {} bytes (the stream ends at offset {})",
            support::KERNEL_SIZE,
            o.kernel + 1
        )
    );
}

#[test]
fn data_after_the_trailer_is_refused() {
    let files = Files::new();
    let mut bundle = files.bundle(None);
    let end = bundle.len();
    bundle.push(0);
    let lax = TrustPolicy {
        trusted: vec![],
        allow_unsigned: true,
    };
    let e = read_all(&bundle[..], &lax).unwrap_err();
    assert!(
        matches!(e, BundleError::TrailingData { offset } if offset == end as u64),
        "{e}"
    );
}

#[test]
fn a_damaged_trailer_is_refused() {
    let files = Files::new();
    let bundle = files.bundle(None);
    let o = offsets(&bundle);
    let lax = TrustPolicy {
        trusted: vec![],
        allow_unsigned: true,
    };
    for (at, why) in [
        (o.trailer, "no CAISSON-BUNDLE-END marker"),
        (o.trailer + 20, "no CAISSON-BUNDLE-END marker"),
        (o.trailer + 24, "bytes precede it"),
    ] {
        let e = read_all(&flip(&bundle, at)[..], &lax).unwrap_err();
        assert!(
            matches!(e, BundleError::BadTrailer { offset, .. } if offset == o.trailer as u64),
            "{e}"
        );
        assert!(e.to_string().contains(why), "{e}");
    }
}

#[test]
fn not_a_bundle_and_oversized_headers_are_named() {
    let e = read_all(&b"#!/bin/sh\necho hello\n"[..], &TrustPolicy::default()).unwrap_err();
    assert_eq!(e.to_string(), "bundle: not a Caisson bundle (bad magic)");
    let e = read_all(&b"CAISS"[..], &TrustPolicy::default()).unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::Truncated {
                section: Section::Magic,
                ..
            }
        ),
        "{e}"
    );
    let mut v2 = MAGIC.to_vec();
    v2[15] = 2;
    let e = read_all(&v2[..], &TrustPolicy::default()).unwrap_err();
    assert!(
        matches!(e, BundleError::UnsupportedVersion { found: 2 }),
        "{e}"
    );

    // A huge declared length is refused before anything is allocated.
    let mut huge = MAGIC.to_vec();
    huge.extend_from_slice(&(2u32 << 20).to_le_bytes());
    let e = read_all(&huge[..], &TrustPolicy::default()).unwrap_err();
    assert!(
        matches!(e, BundleError::TooLarge { section: Section::Manifest, len, .. } if len == 2 << 20),
        "{e}"
    );
    let bundle = Files::new().bundle(None);
    let o = offsets(&bundle);
    let mut big_sigs = bundle[..o.signatures - 4].to_vec();
    big_sigs.extend_from_slice(&(65u32 << 10).to_le_bytes());
    let e = read_all(&big_sigs[..], &TrustPolicy::default()).unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::TooLarge {
                section: Section::Signatures,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn an_artifact_left_half_read_is_still_checked() {
    let files = Files::new();
    let k = key(1);
    let bundle = flip(
        &files.bundle(Some(&k)),
        offsets(&files.bundle(Some(&k))).kernel + 4000,
    );
    let mut r = BundleReader::open(&bundle[..]).unwrap();
    r.verify(&trusting(&[&k])).unwrap();
    let mut some = [0u8; 100];
    // Read a little of the root and let its reader go.
    r.next_artifact()
        .unwrap()
        .unwrap()
        .read_exact(&mut some)
        .unwrap();
    // The root is drained and checked (good), then the kernel is opened.
    let mut kernel = r.next_artifact().unwrap().unwrap();
    assert_eq!(kernel.artifact().kind, ArtifactKind::Kernel);
    kernel.read_exact(&mut some).unwrap();
    let e = r.finish().unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::Digest {
                kind: ArtifactKind::Kernel,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn signing_an_unsigned_bundle_equals_signing_while_writing() {
    let files = Files::new();
    let k = key(3);
    let path = files.dir.path().join("b.bundle");
    std::fs::write(&path, files.bundle(None)).unwrap();
    let signed = files.dir.path().join("signed.bundle");
    let m = sign_bundle(&path, &k, &signed).unwrap();
    assert_eq!(m.version, "0.2.0");
    assert_eq!(std::fs::read(&signed).unwrap(), files.bundle(Some(&k)));

    // In place, replacing the signature by another key.
    let other = key(4);
    sign_bundle(&signed, &other, &signed).unwrap();
    assert_eq!(std::fs::read(&signed).unwrap(), files.bundle(Some(&other)));
    let left: Vec<_> = std::fs::read_dir(files.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn signing_checks_the_artifacts_and_leaves_the_output_alone_on_error() {
    let files = Files::new();
    let bundle = files.bundle(None);
    let path = files.dir.path().join("b.bundle");
    std::fs::write(&path, flip(&bundle, offsets(&bundle).initrd + 3)).unwrap();
    let out = files.dir.path().join("out.bundle");
    let e = sign_bundle(&path, &key(1), &out).unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::Digest {
                kind: ArtifactKind::Initrd,
                ..
            }
        ),
        "{e}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(files.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn a_payload_that_does_not_fit_the_format_is_refused_before_writing() {
    let files = Files::new();
    let mut payloads = files.payloads();
    payloads.swap(1, 2);
    let mut out = Vec::new();
    let e = caisson_bundle::write_bundle(support::base(), &payloads, None, &mut out).unwrap_err();
    assert!(
        matches!(e, BundleError::InvalidManifest { ref field, .. } if field == "artifacts"),
        "{e}"
    );
    assert!(out.is_empty());
}
