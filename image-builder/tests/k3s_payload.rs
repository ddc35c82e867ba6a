//! `[k3s]` and `[[images]]`: the k3s binary and the image archives land
//! where the agent looks for them (`caisson_layout::paths`), the build
//! report says what each adds, a pinned file that is not in `artifacts/`
//! fails with the way to obtain it, and a dynamic k3s must find its
//! libraries like any payload binary.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use caisson_layout::{paths, DiskPlan, PartitionRole, SizesMiB};
use image_builder::build::{build, BuildError, BuildOptions};
use image_builder::elf::ElfError;
use image_builder::lock::{self, LockError};
use support::{lock_path, run, tiny_static_elf, tool, Fixture};

const MIB: usize = 1 << 20;
const K3S_URL: &str = "https://github.com/k3s-io/k3s/releases/download/v1.30.3%2Bk3s1/k3s";

/// Bytes that do not compress away, so sizes in the image are real.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// A `kind = "file"` lock entry for `bytes`.
fn file_entry(name: &str, file: &str, bytes: &[u8], source: &str) -> String {
    let sha256 = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(bytes))
    };
    format!(
        "\n[[artifact]]\nname = \"{name}\"\nkind = \"file\"\nfile = \"{file}\"\n\
         sha256 = \"{sha256}\"\nsource = \"{source}\"\n"
    )
}

/// The real lock plus `entries`, written into the fixture's directory.
fn lock_with(f: &Fixture, entries: &[String]) -> PathBuf {
    let mut text = std::fs::read_to_string(lock_path()).unwrap();
    for e in entries {
        text.push_str(e);
    }
    let path = f.dir.path().join("artifacts.lock");
    std::fs::write(&path, text).unwrap();
    path
}

fn with_tables(tables: &str) -> impl FnOnce(String) -> String + '_ {
    move |s| format!("{s}\n{tables}")
}

/// `-lln` lines of ROOT-A's squashfs: path (without `squashfs-root/`) →
/// (permissions, size).
fn root_listing(image: &Path, dir: &Path) -> Vec<(String, String, u64)> {
    let sizes = SizesMiB {
        esp: 64,
        root: 96,
        state: 16,
        data: 16,
    };
    let part = DiskPlan::new("test-1.2.3", sizes)
        .unwrap()
        .partition(PartitionRole::RootA)
        .unwrap()
        .clone();
    let root = dir.join("root-a.img");
    let mut src = std::fs::File::open(image).unwrap();
    use std::io::{Read, Seek, SeekFrom};
    src.seek(SeekFrom::Start(part.offset)).unwrap();
    let mut dst = std::fs::File::create(&root).unwrap();
    std::io::copy(&mut src.take(part.size), &mut dst).unwrap();
    let listing = run(tool("unsquashfs", "squashfs-tools").arg("-lln").arg(&root));
    listing
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let path = words.last()?.strip_prefix("squashfs-root/")?;
            let size = words.get(2)?.parse().ok()?;
            Some((path.to_string(), words[0].to_string(), size))
        })
        .collect()
}

#[test]
fn k3s_stand_in_airgap_and_image_archives_are_baked_at_the_agents_paths_with_their_sizes() {
    let f = Fixture::new();
    let mut stand_in = tiny_static_elf();
    stand_in.resize(3 * MIB / 2, 0x90);
    let airgap = pattern(2 * MIB, 1);
    let ticker_oci = pattern(MIB / 2, 2);
    let pause = pattern(3 * MIB, 3);
    std::fs::write(f.dir.path().join("k3s-stand-in"), &stand_in).unwrap();
    std::fs::write(f.dir.path().join("ticker.oci.tar"), &ticker_oci).unwrap();
    let artifacts = f.artifacts_copy();
    std::fs::write(artifacts.join("k3s-airgap-images-amd64.tar.zst"), &airgap).unwrap();
    std::fs::write(artifacts.join("pause.tar"), &pause).unwrap();
    let lock = lock_with(
        &f,
        &[
            file_entry(
                "k3s-airgap-images-amd64",
                "k3s-airgap-images-amd64.tar.zst",
                &airgap,
                "https://example.invalid/k3s-airgap-images-amd64.tar.zst",
            ),
            file_entry(
                "pause",
                "pause.tar",
                &pause,
                "https://example.invalid/pause.tar",
            ),
        ],
    );
    // Relative paths start at the spec's directory, as everywhere in a spec.
    let spec = f.spec(with_tables(
        "[k3s]\nbinary_path = \"k3s-stand-in\"\nairgap_images = [\"k3s-airgap-images-amd64\"]\n\n\
         [[images]]\npath = \"ticker.oci.tar\"\n\n[[images]]\nartifact = \"pause\"\n",
    ));

    // The CLI, so the printed report is checked too.
    let out = Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .arg("build")
        .arg(&spec)
        .arg("--out")
        .arg(&f.out)
        .arg("--lock")
        .arg(&lock)
        .arg("--artifacts")
        .arg(&artifacts)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    let line = |component: &str| {
        report
            .lines()
            .find(|l| {
                l.trim_start()
                    .strip_prefix("root")
                    .is_some_and(|r| r.trim_start().starts_with(component))
            })
            .unwrap_or_else(|| panic!("no `root {component}` line in:\n{report}"))
            .to_string()
    };
    for (component, mib) in [
        ("k3s: binary", "1.5 MiB"),
        ("k3s: air-gap k3s-airgap-images-amd64.tar.zst", "2.0 MiB"),
        ("image: ticker.oci.tar", "0.5 MiB"),
        ("image: pause.tar", "3.0 MiB"),
    ] {
        let l = line(component);
        assert!(l.contains(&format!("{mib} uncompressed")), "{l}");
    }
    for component in [
        "payload: containerd",
        "payload: runc",
        "agent",
        "libraries",
        "modules",
        "(all)",
    ] {
        line(component);
    }
    assert!(
        report.contains("k3s-stand-in is a local file, not pinned in artifacts.lock"),
        "an unpinned k3s is said out loud:\n{report}"
    );

    let scratch = tempfile::tempdir().unwrap();
    let image = f.out.join("test-1.2.3.raw");
    let listing = root_listing(&image, scratch.path());
    let entry = |path: &str| {
        let path = path.trim_start_matches('/');
        listing
            .iter()
            .find(|(p, _, _)| p == path)
            .map(|(_, mode, size)| (mode.as_str(), *size))
            .unwrap_or_else(|| panic!("{path} is not in the root"))
    };
    let k3s_images = paths::K3S_IMAGES_DIR;
    let images = paths::IMAGES_DIR;
    assert_eq!(
        entry(paths::K3S_BINARY),
        ("-rwxr-xr-x", stand_in.len() as u64)
    );
    assert_eq!(
        entry(&format!("{k3s_images}/k3s-airgap-images-amd64.tar.zst")),
        ("-rw-r--r--", airgap.len() as u64)
    );
    assert_eq!(
        entry(&format!("{images}/ticker.oci.tar")),
        ("-rw-r--r--", ticker_oci.len() as u64)
    );
    assert_eq!(
        entry(&format!("{images}/pause.tar")),
        ("-rw-r--r--", pause.len() as u64)
    );
    assert_eq!(entry(k3s_images).0, "drwxr-xr-x");
    let cat = tool("unsquashfs", "squashfs-tools")
        .arg("-cat")
        .arg(scratch.path().join("root-a.img"))
        .arg(format!("{}/pause.tar", images.trim_start_matches('/')))
        .output()
        .unwrap();
    assert!(cat.stdout == pause, "the archive is baked byte for byte");
}

#[test]
fn a_pinned_k3s_missing_from_artifacts_fails_saying_how_to_obtain_it() {
    let f = Fixture::new();
    let k3s = tiny_static_elf();
    let lock = lock_with(&f, &[file_entry("k3s", "k3s", &k3s, K3S_URL)]);
    let spec = f.spec(with_tables("[k3s]\nartifact = \"k3s\"\n"));
    let e = build(&BuildOptions {
        lock: Some(lock.clone()),
        ..f.options(spec.clone())
    })
    .unwrap_err();
    assert!(
        matches!(e, BuildError::Lock(LockError::Missing { ref name, .. }) if name == "k3s"),
        "{e}"
    );
    let sha256 = lock::sha256_file(&{
        let p = f.dir.path().join("k3s-bytes");
        std::fs::write(&p, &k3s).unwrap();
        p
    })
    .unwrap();
    let msg = e.to_string();
    for want in [
        format!("download {K3S_URL} on a connected machine"),
        format!("check that its sha256 is {sha256}"),
        format!("copy it to {}/ as k3s", f.artifacts.display()),
    ] {
        assert!(msg.contains(&want), "{want:?} not in: {msg}");
    }
    f.assert_no_output();

    // The CLI prints the same instructions.
    let out = Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .arg("build")
        .arg(&spec)
        .arg("--out")
        .arg(&f.out)
        .arg("--lock")
        .arg(&lock)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("download {K3S_URL} on a connected machine")),
        "{stderr}"
    );
    f.assert_no_output();
}

#[test]
fn a_dynamic_k3s_whose_libraries_are_not_pinned_fails() {
    let f = Fixture::new();
    // The test binary is dynamic and needs libgcc_s.so.1, which neither
    // libc6 nor libseccomp2 ships.
    let me = std::env::current_exe().unwrap();
    let spec = f.spec(with_tables(&format!(
        "[k3s]\nbinary_path = \"{}\"\n",
        me.display()
    )));
    let e = f.build(spec).unwrap_err();
    let BuildError::Elf(ElfError::Unresolved {
        soname, needed_by, ..
    }) = &e
    else {
        panic!("{e}")
    };
    assert_eq!(
        (soname.as_str(), needed_by.as_str()),
        ("libgcc_s.so.1", "usr/bin/k3s")
    );
    f.assert_no_output();
}

#[test]
fn archives_must_be_pinned_files_with_names_of_their_own() {
    let f = Fixture::new();
    // A Debian package is not an image archive.
    let e = f
        .build(f.spec(with_tables("[[images]]\nartifact = \"runc\"\n")))
        .unwrap_err();
    assert!(
        matches!(e, BuildError::ArtifactKind { ref key, .. } if key == "images[0].artifact"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("takes a plain file (kind = \"file\")"),
        "{e}"
    );
    f.assert_no_output();

    // Two archives of one name, from different directories.
    for dir in ["a", "b"] {
        std::fs::create_dir(f.dir.path().join(dir)).unwrap();
        std::fs::write(f.dir.path().join(dir).join("same.tar"), dir).unwrap();
    }
    let e = f
        .build(f.spec(with_tables(
            "[[images]]\npath = \"a/same.tar\"\n\n[[images]]\npath = \"b/same.tar\"\n",
        )))
        .unwrap_err();
    assert!(
        matches!(e, BuildError::ImageFileName { ref key, .. } if key == "images[1].path"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("another archive already has this name"),
        "{e}"
    );

    // `k3s` is the air-gap directory's name.
    std::fs::write(f.dir.path().join("k3s"), "x").unwrap();
    let e = f
        .build(f.spec(with_tables("[[images]]\npath = \"k3s\"\n")))
        .unwrap_err();
    assert!(matches!(e, BuildError::ImageFileName { .. }), "{e}");

    // A local file that is not there is named with its key.
    let e = f
        .build(f.spec(with_tables("[[images]]\npath = \"absent.tar\"\n")))
        .unwrap_err();
    assert!(
        matches!(e, BuildError::LocalFile { ref key, .. } if key == "images[0].path"),
        "{e}"
    );
    assert!(e.to_string().contains("absent.tar"), "{e}");
    f.assert_no_output();
}
