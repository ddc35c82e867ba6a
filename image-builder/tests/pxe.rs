//! The `pxe` output of real builds from the pinned packages: it rebuilds
//! byte-identical, its initramfs is the ESP's initrd followed by the sealed
//! root that ROOT-A holds, and `veritysetup` (not our code) accepts that
//! root under the command line's own parameters.

mod support;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use caisson_layout::{
    CaissonParams, DiskPlan, KernelCmdline, PartitionRole, RootSpec, RootVerity, SizesMiB,
};
use image_builder::build::{build, BuildOptions};
use image_builder::formats::Format;
use support::{run, tool, Fixture};

const IDENTITY: &str = "test-1.2.3";
const SIZES: SizesMiB = SizesMiB {
    esp: 64,
    root: 96,
    state: 16,
    data: 16,
};
const FILES: [&str; 4] = ["vmlinuz", "initramfs", "cmdline", "boot.ipxe"];

/// The fixture spec with `formats` and the loop driver a live boot needs.
fn with_formats(formats: &str) -> impl FnOnce(String) -> String + '_ {
    move |spec| {
        spec.replace("\"squashfs\"]", "\"squashfs\", \"loop\"]")
            .replace(
                "[disk]",
                &format!("[outputs]\nformats = {formats}\n\n[disk]"),
            )
    }
}

/// `len` bytes of `role`'s partition in the raw image, from its start.
fn partition_bytes(image: &Path, role: PartitionRole, len: Option<u64>) -> Vec<u8> {
    let plan = DiskPlan::new(IDENTITY, SIZES).unwrap();
    let p = plan.partition(role).unwrap();
    let mut f = File::open(image).unwrap();
    f.seek(SeekFrom::Start(p.offset)).unwrap();
    let mut out = Vec::new();
    f.take(len.unwrap_or(p.size)).read_to_end(&mut out).unwrap();
    out
}

#[test]
fn pxe_output_rebuilds_identical_and_carries_root_a_for_veritysetup() {
    let f = Fixture::new();
    let report = f.build(f.spec(with_formats(r#"["raw", "pxe"]"#))).unwrap();
    let pxe = f.out.join(format!("{IDENTITY}.pxe"));
    let listed: Vec<Format> = report.outputs.iter().map(|o| o.format).collect();
    assert_eq!(listed, [Format::Raw, Format::Pxe]);
    let published = report
        .outputs
        .iter()
        .find(|o| o.format == Format::Pxe)
        .unwrap();
    assert_eq!(published.path, pxe);
    let mut names: Vec<String> = std::fs::read_dir(&pxe)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["boot.ipxe", "cmdline", "initramfs", "vmlinuz"]);

    // A second build, pxe alone, elsewhere: the same bytes.
    let again_dir = f.dir.path().join("again");
    std::fs::create_dir(&again_dir).unwrap();
    let spec = f.spec(with_formats(r#"["pxe"]"#));
    build(&BuildOptions {
        out_dir: again_dir.clone(),
        ..f.options(spec)
    })
    .unwrap();
    assert!(
        !again_dir.join(format!("{IDENTITY}.raw")).exists(),
        "raw was not listed"
    );
    for file in FILES {
        let a = std::fs::read(pxe.join(file)).unwrap();
        let b = std::fs::read(again_dir.join(format!("{IDENTITY}.pxe")).join(file)).unwrap();
        assert!(
            a == b,
            "{file} differs between two builds of the same inputs"
        );
    }

    // The command line: the live root, and the verity parameters of the build.
    let cmdline = std::fs::read_to_string(pxe.join("cmdline")).unwrap();
    assert_eq!(cmdline.lines().count(), 1);
    let parsed = KernelCmdline::parse(&cmdline);
    let params = CaissonParams::from_cmdline(&parsed).unwrap();
    assert_eq!(params.root, RootSpec::Initrd("/caisson/root.img".into()));
    assert!(caisson_layout::is_live(&parsed));
    assert_eq!(parsed.value("console"), Some("ttyS0,115200"));
    let Some(RootVerity::Verified(verity)) = params.verity else {
        panic!("no verity parameters on {cmdline}");
    };
    assert_eq!(verity, report.verity.params);
    let script = std::fs::read_to_string(pxe.join("boot.ipxe")).unwrap();
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains(&format!("\nkernel vmlinuz {}\n", cmdline.trim_end())),
        "{script}"
    );
    assert!(script.contains("\ninitrd initramfs\nboot\n"), "{script}");

    // The ESP's kernel and initrd, as mtools reads them from the raw image.
    let raw = f.out.join(format!("{IDENTITY}.raw"));
    let esp = f.dir.path().join("esp.img");
    std::fs::write(&esp, partition_bytes(&raw, PartitionRole::Esp, None)).unwrap();
    let from_esp = |name: &str| -> Vec<u8> {
        let dest = f.dir.path().join(name.replace('/', "-"));
        run(tool("mcopy", "mtools")
            .arg("-i")
            .arg(&esp)
            .arg(format!("::{name}"))
            .arg(&dest));
        std::fs::read(dest).unwrap()
    };
    assert!(std::fs::read(pxe.join("vmlinuz")).unwrap() == from_esp("a/vmlinuz"));
    let initrd = from_esp("a/initrd");
    let initramfs = std::fs::read(pxe.join("initramfs")).unwrap();
    assert!(
        initramfs.starts_with(&initrd),
        "the initramfs must start with the ESP's initrd"
    );
    let cpio_at = initrd.len().next_multiple_of(4);
    assert!(initramfs[initrd.len()..cpio_at].iter().all(|&b| b == 0));
    assert_eq!(
        &initramfs[cpio_at..cpio_at + 6],
        b"070701",
        "an uncompressed newc cpio follows"
    );

    // Its root.img is ROOT-A's sealed root, and veritysetup agrees.
    let root = root_member(&initramfs[cpio_at..]);
    assert_eq!(root.len() as u64, report.verity.image_size);
    assert!(
        root == partition_bytes(&raw, PartitionRole::RootA, Some(root.len() as u64)),
        "root.img differs from ROOT-A"
    );
    let root_img = f.dir.path().join("root.img");
    std::fs::write(&root_img, &root).unwrap();
    veritysetup_verify(&root_img, &verity, true);
    let mut bad = root.clone();
    bad[5000] ^= 1;
    std::fs::write(&root_img, &bad).unwrap();
    veritysetup_verify(&root_img, &verity, false);
}

/// `caisson/root.img` from a newc archive (the `cpio` crate's reader).
fn root_member(mut archive: &[u8]) -> Vec<u8> {
    let mut names = Vec::new();
    loop {
        let mut entry = cpio::NewcReader::new(archive).unwrap();
        let name = entry.entry().name().to_string();
        assert!(
            !entry.entry().is_trailer(),
            "no caisson/root.img in {names:?}"
        );
        if name == "caisson/root.img" {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            return data;
        }
        names.push(name);
        archive = entry.finish().unwrap();
    }
}

fn veritysetup_verify(image: &PathBuf, verity: &caisson_layout::VerityParams, ok: bool) {
    let out = tool("veritysetup", "cryptsetup-bin")
        .arg("verify")
        .arg(image)
        .arg(image)
        .arg(&verity.root_hash)
        .arg(format!("--hash-offset={}", verity.hash_offset))
        .arg(format!("--salt={}", verity.salt))
        .output()
        .unwrap();
    assert_eq!(
        out.status.success(),
        ok,
        "veritysetup verify of {} with the cmdline's parameters: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
