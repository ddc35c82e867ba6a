//! The update bundle a build writes beside its image: it carries exactly
//! what the image's ROOT-A and ESP hold, under the version asked for, and
//! the offline key commands (`keygen`, `sign`, `verify-bundle`) work on it.

mod support;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use caisson_bundle::{ArtifactKind, BundleReader, TrustPolicy};
use caisson_layout::{DiskPlan, PartitionRole, SizesMiB};
use image_builder::build::{build, BuildOptions};
use image_builder::bundle::{check_file, load_public_key};
use sha2::{Digest as _, Sha256};
use support::{run, tool, Fixture};

const SIZES: SizesMiB = SizesMiB {
    esp: 64,
    root: 96,
    state: 16,
    data: 16,
};

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_image-builder"))
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// sha256 of `len` bytes of `file` from `offset`.
fn sha256_range(file: &Path, offset: u64, len: u64) -> String {
    let mut f = File::open(file).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut h = Sha256::new();
    let copied = std::io::copy(&mut f.take(len), &mut h).unwrap();
    assert_eq!(copied, len);
    hex::encode(h.finalize())
}

fn esp_file_sha256(image: &Path, identity: &str, path: &str) -> String {
    let plan = DiskPlan::new(identity, SIZES).unwrap();
    let esp = plan.partition(PartitionRole::Esp).unwrap();
    let mut f = File::open(image).unwrap();
    f.seek(SeekFrom::Start(esp.offset)).unwrap();
    let part = fscommon::StreamSlice::new(f, esp.offset, esp.offset + esp.size).unwrap();
    let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new()).unwrap();
    let mut bytes = Vec::new();
    fs.root_dir()
        .open_file(path)
        .unwrap_or_else(|e| panic!("ESP {path}: {e}"))
        .read_to_end(&mut bytes)
        .unwrap();
    hex::encode(Sha256::digest(&bytes))
}

#[test]
fn a_signed_build_of_an_overridden_version_carries_its_image_in_its_bundle() {
    let f = Fixture::new();
    let keys = f.dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let release = keys.join("release");
    let made = output(cli().arg("keygen").arg("--out").arg(&release));
    assert!(made.status.success(), "{made:?}");
    let (secret, public) = (keys.join("release.key"), keys.join("release.pub"));
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secret key is the owner's alone");
    let again = output(cli().arg("keygen").arg("--out").arg(&release));
    assert!(!again.status.success(), "keygen must not overwrite a key");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    let key_id = load_public_key(&public).unwrap().key_id();

    let report = build(&BuildOptions {
        version: Some("7.0.1".into()),
        signing_key: Some(secret.clone()),
        ..f.options(f.spec(|s| s))
    })
    .unwrap();
    let identity = "test-7.0.1";
    let image = f.out.join(format!("{identity}.raw"));
    let bundle = f.out.join(format!("{identity}.bundle"));
    assert_eq!((&report.image, &report.bundle), (&image, &bundle));
    let mut left: Vec<_> = std::fs::read_dir(&f.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [format!("{identity}.bundle"), format!("{identity}.raw")]
    );
    assert_eq!(
        report.bundle_size,
        std::fs::metadata(&bundle).unwrap().len()
    );
    assert_eq!(report.bundle_signed_by.as_deref(), Some(key_id.as_str()));

    // The manifest says what the report says, signed by the key.
    let trusted = TrustPolicy {
        trusted: vec![load_public_key(&public).unwrap()],
        allow_unsigned: false,
    };
    let mut r = BundleReader::open(File::open(&bundle).unwrap()).unwrap();
    assert_eq!(r.verify(&trusted).unwrap().signed_by, Some(key_id.clone()));
    let m = r.manifest().clone();
    assert_eq!((m.name.as_str(), m.version.as_str()), ("test", "7.0.1"));
    assert_eq!(m.kernel_release, report.kernel_release);
    assert_eq!(m.source_date_epoch, report.epoch);
    assert_eq!(m.verity.params(), report.verity.params);
    assert_eq!(m.cmdline, ["console=ttyS0,115200"]);
    drop(r);
    assert_eq!(
        check_file(&bundle, &trusted).unwrap().size,
        report.bundle_size
    );

    // Each artifact is what the image holds: ROOT-A's first bytes, and the
    // slot's kernel and initrd on the ESP.
    let root = m.artifact(ArtifactKind::Root).unwrap();
    assert_eq!(root.size, report.verity.image_size);
    let root_a = DiskPlan::new(identity, SIZES)
        .unwrap()
        .partition(PartitionRole::RootA)
        .unwrap()
        .clone();
    assert_eq!(root.sha256, sha256_range(&image, root_a.offset, root.size));
    let kernel = m.artifact(ArtifactKind::Kernel).unwrap();
    assert_eq!(
        kernel.sha256,
        esp_file_sha256(&image, identity, "a/vmlinuz")
    );
    assert_eq!(kernel.size, report.esp_files["a/vmlinuz"]);
    let initrd = m.artifact(ArtifactKind::Initrd).unwrap();
    assert_eq!(initrd.sha256, esp_file_sha256(&image, identity, "a/initrd"));

    // The overridden version is everywhere the spec's would be.
    esp_file_sha256(&image, identity, "loader/entries/caisson-7.0.1-a.conf");
    let scratch = tempfile::tempdir().unwrap();
    let root_img = scratch.path().join("root.img");
    let mut src = File::open(&image).unwrap();
    src.seek(SeekFrom::Start(root_a.offset)).unwrap();
    std::io::copy(
        &mut src.take(root.size),
        &mut File::create(&root_img).unwrap(),
    )
    .unwrap();
    let os_release = run(tool("unsquashfs", "squashfs-tools")
        .arg("-cat")
        .arg(&root_img)
        .arg("usr/lib/os-release"));
    assert!(os_release.contains("VERSION_ID=7.0.1\n"), "{os_release}");
    assert_eq!(
        report.verity.params.salt,
        hex::encode(image_builder::verity::salt(identity))
    );

    // verify-bundle: the right key passes, another key fails and says why.
    let ok = output(
        cli()
            .arg("verify-bundle")
            .arg(&bundle)
            .arg("--key")
            .arg(&public),
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        stdout.contains("test-7.0.1") && stdout.contains(&key_id),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
    let other = keys.join("other");
    assert!(output(cli().arg("keygen").arg("--out").arg(&other))
        .status
        .success());
    let other_pub = keys.join("other.pub");
    let refused = output(
        cli()
            .arg("verify-bundle")
            .arg(&bundle)
            .arg("--key")
            .arg(&other_pub),
    );
    assert!(!refused.status.success(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "signed by key {key_id}, which upgrade.trusted_keys does not list"
        )),
        "{stderr}"
    );

    // sign: re-signing with the same key reproduces the bytes (Ed25519 is
    // deterministic); signing with another key switches which key verifies.
    let copy = scratch.path().join("copy.bundle");
    let signed = output(
        cli()
            .arg("sign")
            .arg("--key")
            .arg(&secret)
            .arg(&bundle)
            .arg("--out")
            .arg(&copy),
    );
    assert!(signed.status.success(), "{signed:?}");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&bundle).unwrap()
    );
    let resigned = output(
        cli()
            .arg("sign")
            .arg("--key")
            .arg(keys.join("other.key"))
            .arg(&copy),
    );
    assert!(resigned.status.success(), "{resigned:?}");
    let verify = |key: &Path| {
        output(cli().arg("verify-bundle").arg(&copy).arg("--key").arg(key))
            .status
            .success()
    };
    assert!(verify(&other_pub), "signed in place with the other key");
    assert!(!verify(&public), "the first key's signature was replaced");

    // A flipped root byte fails verify-bundle, naming the artifact.
    let mut bytes = std::fs::read(&copy).unwrap();
    let at = bytes.len() - 32 - (initrd.size + kernel.size) as usize - 100;
    bytes[at] ^= 1;
    std::fs::write(&copy, bytes).unwrap();
    let bad = output(
        cli()
            .arg("verify-bundle")
            .arg(&copy)
            .arg("--key")
            .arg(&other_pub),
    );
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("the root artifact's sha256 is"), "{stderr}");
}
