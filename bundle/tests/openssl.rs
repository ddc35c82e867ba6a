//! The independent check: OpenSSL 3 reads our key files, verifies the
//! signatures we write over the manifest bytes, and signs to the same bytes
//! with a key it generated (Ed25519 is deterministic).

mod support;

use std::path::Path;
use std::process::Command;

use caisson_bundle::{BundleReader, PublicKey, SigningKey};
use support::{key, Files};

/// `openssl`, or None after saying loudly why the test is skipped.
fn openssl() -> Option<Command> {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => Some(Command::new("openssl")),
        _ => {
            eprintln!(
                "SKIPPED: openssl is not installed (Debian package openssl); the independent check of bundle signatures did not run"
            );
            None
        }
    }
}

fn run(mut cmd: Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: Command) -> Vec<u8> {
    let desc = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{desc} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn pkeyutl_verify(pub_pem: &Path, message: &Path, sig: &Path) -> std::process::Output {
    let mut c = Command::new("openssl");
    c.args(["pkeyutl", "-verify", "-pubin", "-inkey"])
        .arg(pub_pem)
        .arg("-rawin")
        .arg("-in")
        .arg(message)
        .arg("-sigfile")
        .arg(sig);
    run(c)
}

#[test]
fn openssl_verifies_the_manifest_signature_we_wrote() {
    let Some(_) = openssl() else { return };
    let files = Files::new();
    let k = key(5);
    let dir = files.dir.path();
    let bundle = files.bundle(Some(&k));
    let r = BundleReader::open(&bundle[..]).unwrap();
    let manifest = dir.join("manifest.json");
    std::fs::write(&manifest, r.manifest_bytes()).unwrap();
    let sig = dir.join("sig.bin");
    std::fs::write(&sig, hex::decode(&r.signatures()[0].signature).unwrap()).unwrap();
    let public = dir.join("pub.pem");
    std::fs::write(&public, k.public().to_pem()).unwrap();

    let out = pkeyutl_verify(&public, &manifest, &sig);
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully"),
        "openssl refused our signature: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut changed = r.manifest_bytes().to_vec();
    changed[10] ^= 1;
    std::fs::write(&manifest, changed).unwrap();
    let out = pkeyutl_verify(&public, &manifest, &sig);
    assert!(
        !out.status.success(),
        "openssl accepted a signature over changed bytes"
    );
}

#[test]
fn openssl_reads_our_key_files_and_we_read_its() {
    let Some(_) = openssl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let k = key(6);
    let secret = dir.path().join("ours.key");
    std::fs::write(&secret, k.to_pem().as_bytes()).unwrap();
    // openssl derives the public key from our PKCS#8 file: same SPKI PEM.
    let Some(mut c) = openssl() else { return };
    c.args(["pkey", "-pubout", "-in"]).arg(&secret);
    assert_eq!(String::from_utf8(ok(c)).unwrap(), k.public().to_pem());

    // A key openssl generated: we read both halves, and our signature of a
    // message equals the one openssl makes.
    let theirs = dir.path().join("theirs.key");
    let Some(mut c) = openssl() else { return };
    c.args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&theirs);
    ok(c);
    let Some(mut c) = openssl() else { return };
    c.args(["pkey", "-pubout", "-in"]).arg(&theirs);
    let their_pub = PublicKey::from_pem(&String::from_utf8(ok(c)).unwrap()).unwrap();
    let their_key = SigningKey::from_pem(&std::fs::read_to_string(&theirs).unwrap()).unwrap();
    assert_eq!(their_key.public(), their_pub);
    assert_eq!(
        *their_key.to_pem(),
        std::fs::read_to_string(&theirs).unwrap()
    );

    let message = dir.path().join("message");
    std::fs::write(&message, b"{\"format\":1}").unwrap();
    let Some(mut c) = openssl() else { return };
    c.args(["pkeyutl", "-sign", "-rawin", "-inkey"])
        .arg(&theirs)
        .arg("-in")
        .arg(&message);
    let signature = ok(c);
    assert_eq!(
        hex::encode(signature),
        their_key.sign(b"{\"format\":1}").signature
    );
}
