//! Real builds from the pinned packages, checked by independent tools
//! (sgdisk, fsck.fat, unsquashfs, e2fsck) rather than by our own readers.

mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use caisson_layout::{DiskPlan, PartitionRole, SizesMiB};
use image_builder::build::build;
use image_builder::deb::Deb;
use image_builder::elf::{self, ElfRoot};
use image_builder::lock::{self, Lock};
use image_builder::tree::{usr_merged, FsTree, Node};
use support::{artifacts_dir, lock_path, run, tool, Fixture};

const IDENTITY: &str = "test-1.2.3";
const SIZES: SizesMiB = SizesMiB {
    esp: 64,
    root: 96,
    state: 16,
    data: 16,
};

fn deb(name: &str) -> Deb {
    let lock = Lock::load(&lock_path()).unwrap();
    Deb::new(artifacts_dir().join(lock.get(&lock_path(), name).unwrap().file_name()))
}

/// Copy one partition out of the image, as `dd` would.
fn partition(image: &Path, role: PartitionRole, dir: &Path) -> PathBuf {
    let plan = DiskPlan::new(IDENTITY, SIZES).unwrap();
    let p = plan.partition(role).unwrap();
    let mut src = File::open(image).unwrap();
    src.seek(SeekFrom::Start(p.offset)).unwrap();
    let out = dir.join(format!("{}.img", p.label));
    let mut dst = File::create(&out).unwrap();
    let copied = std::io::copy(&mut src.take(p.size), &mut dst).unwrap();
    assert_eq!(copied, p.size);
    dst.flush().unwrap();
    out
}

#[test]
fn image_passes_independent_checks_and_rebuilds_byte_identical() {
    let f = Fixture::new();
    let machine_config =
        std::fs::read_to_string(support::workspace().join("machine-configs/single-node-dhcp.toml"))
            .unwrap();
    std::fs::write(f.dir.path().join("node.toml"), &machine_config).unwrap();
    let spec = f.spec(|s| {
        s.replace(
            "source_date_epoch = 1700000000",
            "source_date_epoch = 1700000000\nconfig = \"node.toml\"",
        )
    });
    let report = f.build(spec.clone()).unwrap();
    let image = f.out.join(format!("{IDENTITY}.raw"));
    assert_eq!(report.image, image);
    let mut left: Vec<_> = std::fs::read_dir(&f.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [format!("{IDENTITY}.bundle"), format!("{IDENTITY}.raw")],
        "only the image and its bundle remain: no staging, no temporary"
    );
    unsigned_bundle_needs_allow_unsigned(&report.bundle);

    let out2 = f.dir.path().join("out2");
    build(&image_builder::build::BuildOptions {
        out_dir: out2.clone(),
        ..f.options(spec)
    })
    .unwrap();
    assert_eq!(
        lock::sha256_file(&image).unwrap(),
        lock::sha256_file(&out2.join(format!("{IDENTITY}.raw"))).unwrap(),
        "two builds of one spec must be byte-identical"
    );
    assert_eq!(
        std::fs::read(&report.bundle).unwrap(),
        std::fs::read(out2.join(format!("{IDENTITY}.bundle"))).unwrap(),
        "and so must their bundles"
    );
    std::fs::remove_dir_all(&out2).unwrap();

    let gpt = run(tool("sgdisk", "gdisk").arg("-v").arg(&image));
    assert!(gpt.contains("No problems found"), "{gpt}");
    let table = run(tool("sgdisk", "gdisk").arg("-p").arg(&image));
    for label in ["ESP", "ROOT-A", "ROOT-B", "STATE", "DATA"] {
        assert!(table.contains(label), "{table}");
    }

    let scratch = tempfile::tempdir().unwrap();
    let esp = partition(&image, PartitionRole::Esp, scratch.path());
    run(tool("fsck.fat", "dosfstools").arg("-n").arg(&esp));
    let fs = fatfs::FileSystem::new(File::open(&esp).unwrap(), fatfs::FsOptions::new()).unwrap();
    let mut entry = String::new();
    fs.root_dir()
        .open_file("loader/entries/caisson-1.2.3-a.conf")
        .unwrap()
        .read_to_string(&mut entry)
        .unwrap();
    let root_a = DiskPlan::new(IDENTITY, SIZES)
        .unwrap()
        .partition(PartitionRole::RootA)
        .unwrap()
        .part_guid;
    let verity = &report.verity.params;
    assert!(
        entry.contains(&format!(
            "options caisson.slot=a caisson.root=PARTUUID={root_a} caisson.verity={} \
             caisson.verity.salt={} caisson.verity.hashoffset={} console=ttyS0,115200\n",
            verity.root_hash, verity.salt, verity.hash_offset
        )),
        "{entry}"
    );
    for file in [
        "EFI/BOOT/BOOTX64.EFI",
        "a/vmlinuz",
        "a/initrd",
        "loader/loader.conf",
    ] {
        let size = report.esp_files[file];
        assert!(size > 0, "{file}");
    }
    drop(fs);

    let root = partition(&image, PartitionRole::RootA, scratch.path());
    root_a_passes_veritysetup_and_a_flipped_byte_fails(&root, &report.verity);
    let stats = run(tool("unsquashfs", "squashfs-tools").arg("-s").arg(&root));
    assert!(stats.contains("Compression zstd"), "{stats}");
    let listing = run(tool("unsquashfs", "squashfs-tools").arg("-lln").arg(&root));
    for line in listing.lines().filter(|l| l.contains("squashfs-root")) {
        assert!(
            line.contains(" 0/0 ") && line.contains("2023-11-14 22:13"),
            "owner and time must be fixed: {line}"
        );
    }
    for want in [
        "squashfs-root/usr/bin/node-agent",
        "squashfs-root/usr/bin/containerd",
        "squashfs-root/usr/sbin/runc",
        "squashfs-root/usr/lib/x86_64-linux-gnu/libc.so.6",
        "squashfs-root/usr/lib/x86_64-linux-gnu/libseccomp.so.2 -> libseccomp.so.2.5.4",
        "squashfs-root/usr/lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "squashfs-root/usr/lib/modules/6.1.0-56-cloud-amd64/modules.dep",
        "squashfs-root/usr/lib/modules/6.1.0-56-cloud-amd64/kernel/fs/squashfs/squashfs.ko",
        "squashfs-root/usr/lib/os-release",
        "squashfs-root/lib -> usr/lib",
        "squashfs-root/var",
    ] {
        assert!(listing.contains(want), "root lacks {want}");
    }
    assert!(
        !listing.contains("libm.so.6"),
        "only the closure of the payload is shipped"
    );
    let embedded = listing
        .lines()
        .find(|l| l.ends_with("squashfs-root/usr/lib/caisson/config.toml"))
        .expect("the machine config is embedded");
    assert!(embedded.starts_with("-rw------- 0/0 "), "{embedded}");
    let cat = run(tool("unsquashfs", "squashfs-tools")
        .arg("-cat")
        .arg(&root)
        .arg("usr/lib/caisson/config.toml"));
    assert_eq!(cat, machine_config, "embedded byte for byte");
    install_payload_matches_the_image(&root, &image, scratch.path());

    for role in [PartitionRole::State, PartitionRole::Data] {
        let fs = partition(&image, role, scratch.path());
        run(tool("e2fsck", "e2fsprogs").arg("-fn").arg(&fs));
        let header = run(tool("dumpe2fs", "e2fsprogs").arg("-h").arg(&fs));
        assert!(
            header.contains(&format!("Filesystem volume name:   {}", role.label())),
            "{header}"
        );
    }
}

/// `usr/lib/caisson/install/`: the manifest names the spec's disk sizes and
/// every file's sha256, and each template expands to exactly the image's
/// own STATE or DATA partition.
fn install_payload_matches_the_image(root: &Path, image: &Path, scratch: &Path) {
    use caisson_disk::payload::{self, InstallManifest};
    use sha2::{Digest, Sha256};
    let dir = scratch.join("payload");
    run(tool("unsquashfs", "squashfs-tools")
        .arg("-d")
        .arg(&dir)
        .arg(root)
        .arg("usr/lib/caisson/install"));
    let payload_dir = dir.join("usr/lib/caisson/install");
    let text = std::fs::read_to_string(payload_dir.join(payload::MANIFEST)).unwrap();
    let manifest = InstallManifest::parse(&text).unwrap();
    assert_eq!(manifest.version, "1.2.3");
    assert_eq!(SizesMiB::from(manifest.disk), SIZES);
    let mut names: Vec<String> = std::fs::read_dir(&payload_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "data.ext4.zst",
            "initrd",
            "manifest.json",
            "state.ext4.zst",
            "systemd-bootx64.efi",
            "vmlinuz"
        ]
    );
    for (name, want) in &manifest.files {
        let bytes = std::fs::read(payload_dir.join(name)).unwrap();
        assert_eq!(bytes.len() as u64, want.size, "{name}");
        assert_eq!(hex::encode(Sha256::digest(&bytes)), want.sha256, "{name}");
    }
    for (label, role) in [
        ("STATE", PartitionRole::State),
        ("DATA", PartitionRole::Data),
    ] {
        let t = manifest.template(label).unwrap();
        let compressed = std::fs::read(payload_dir.join(&t.file)).unwrap();
        let expanded = zstd::decode_all(&compressed[..]).unwrap();
        let own = std::fs::read(partition(image, role, scratch)).unwrap();
        assert!(expanded == own, "{label} template != the image's {label}");
        assert_eq!(hex::encode(Sha256::digest(&expanded)), t.sha256);
    }
}

/// A build without --signing-key writes an unsigned bundle: `verify-bundle`
/// refuses it unless told to allow unsigned bundles.
fn unsigned_bundle_needs_allow_unsigned(bundle: &Path) {
    let verify = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_image-builder"))
            .arg("verify-bundle")
            .arg(bundle)
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = verify(&[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("unsigned, and the node's config does not allow unsigned bundles"),
        "{stderr}"
    );
    let allowed = verify(&["--allow-unsigned"]);
    let stdout = String::from_utf8_lossy(&allowed.stdout);
    assert!(allowed.status.success(), "{allowed:?}");
    assert!(
        stdout.contains(&format!("image           {IDENTITY}")),
        "{stdout}"
    );
    assert!(stdout.contains("unsigned, allowed"), "{stdout}");
}

/// The independent check of the builder's dm-verity: cryptsetup's
/// `veritysetup verify` reads the superblock at the hash offset and must
/// accept ROOT-A as built, then refuse it with one squashfs byte flipped.
fn root_a_passes_veritysetup_and_a_flipped_byte_fails(
    root: &Path,
    verity: &image_builder::verity::SealedRoot,
) {
    let p = &verity.params;
    assert_eq!(p.hash_offset, verity.data_size.div_ceil(4096) * 4096);
    assert_eq!(p.salt, hex::encode(image_builder::verity::salt(IDENTITY)));
    let verify = |img: &Path| {
        tool("veritysetup", "cryptsetup-bin")
            .arg("verify")
            .arg(format!("--hash-offset={}", p.hash_offset))
            .arg(img)
            .arg(img)
            .arg(&p.root_hash)
            .output()
            .unwrap()
    };
    let ok = verify(root);
    assert!(
        ok.status.success(),
        "veritysetup verify refused ROOT-A: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dump = run(tool("veritysetup", "cryptsetup-bin")
        .arg("dump")
        .arg(format!("--hash-offset={}", p.hash_offset))
        .arg(root));
    assert!(
        dump.contains(&format!("Data blocks:     \t{}", p.data_blocks())),
        "{dump}"
    );
    assert!(
        dump.contains(&format!("Salt:            \t{}", p.salt)),
        "{dump}"
    );

    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(root)
        .unwrap();
    let at = verity.data_size / 2;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[byte[0] ^ 0x40]).unwrap();
    f.flush().unwrap();
    let bad = verify(root);
    assert!(
        !bad.status.success(),
        "veritysetup verify accepted ROOT-A with byte {at} flipped"
    );
    // Put it back: the squashfs checks below read the same copy.
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&byte).unwrap();
    f.flush().unwrap();
}

#[test]
fn deb_reader_sees_symlinks_of_real_packages() {
    let dir = tempfile::tempdir().unwrap();
    let libc = deb("libc6")
        .extract(dir.path(), |p| {
            p == "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
        })
        .unwrap();
    assert_eq!(
        libc.get("lib64/ld-linux-x86-64.so.2"),
        Some(&Node::Symlink {
            target: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into()
        })
    );
    let Some(Node::File {
        source: Some(ld),
        mode,
        ..
    }) = libc.get("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    else {
        panic!("ld.so not extracted")
    };
    assert_eq!(*mode, 0o755);
    assert_eq!(&std::fs::read(ld).unwrap()[..4], b"\x7fELF");
    let runc = deb("runc").extract(dir.path(), |_| false).unwrap();
    assert_eq!(
        runc.get("usr/bin/runc"),
        Some(&Node::Symlink {
            target: "../sbin/runc".into()
        })
    );
    assert!(
        matches!(
            runc.get("usr/sbin/runc"),
            Some(Node::File { source: None, .. })
        ),
        "listed, not extracted"
    );
}

#[test]
fn elf_closure_of_real_runc_and_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let mut libs = FsTree::new();
    for name in ["libc6", "libseccomp2"] {
        let tree = deb(name)
            .extract(&dir.path().join(name), |p| !p.starts_with("usr/share/"))
            .unwrap();
        for (path, node) in tree.iter() {
            libs.insert(&usr_merged(path), node.clone()).unwrap();
        }
    }
    let mut roots = Vec::new();
    for (name, file) in [
        ("runc", "usr/sbin/runc"),
        ("containerd", "usr/bin/containerd-shim-runc-v2"),
    ] {
        let tree = deb(name)
            .extract(&dir.path().join(name), |p| p == file)
            .unwrap();
        let Some(Node::File {
            source: Some(src), ..
        }) = tree.get(file)
        else {
            panic!("{file}")
        };
        roots.push(ElfRoot {
            name: file.to_string(),
            file: src.clone(),
        });
    }
    let closure = elf::closure(&roots, &libs, elf::read_deps).unwrap();
    let want: BTreeSet<String> = [
        "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "usr/lib/x86_64-linux-gnu/libc.so.6",
        "usr/lib/x86_64-linux-gnu/libseccomp.so.2",
        "usr/lib/x86_64-linux-gnu/libseccomp.so.2.5.4",
        "usr/lib64/ld-linux-x86-64.so.2",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(closure, want);
}
