//! The VM disk formats, checked by tools we did not write: `qemu-img info`,
//! `check` and `compare` for qcow2 and the VMDK, the `tar` crate and a
//! SHA-256 of our own for the OVA's order and manifest, and roxmltree for
//! the OVF descriptor.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use image_builder::formats::{Converter, Format};
use image_builder::lock;
use image_builder::ova::{OvaInputs, VmHardware};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{run, tool, Fixture};

const MIB: u64 = 1 << 20;
/// 100 MiB: four grain tables' worth, one of them all zeros.
const RAW_SIZE: u64 = 100 * MIB;

/// A sparse raw disk with data here and there: a "boot sector", noise that
/// compresses poorly, a repeated pattern that compresses well, a chunk
/// straddling two grains, the last sector, and 32 MiB of nothing.
fn fake_raw(dir: &Path) -> PathBuf {
    let path = dir.join("disk.raw");
    let f = File::create(&path).unwrap();
    f.set_len(RAW_SIZE).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..3 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let pattern: Vec<u8> = b"caisson "
        .iter()
        .copied()
        .cycle()
        .take(MIB as usize)
        .collect();
    f.write_all_at(b"\x55\xaa boot", 510).unwrap();
    f.write_all_at(&noise, 2 * MIB).unwrap();
    f.write_all_at(&pattern, 20 * MIB).unwrap();
    f.write_all_at(b"straddles a grain boundary", 30 * MIB - 10)
        .unwrap();
    // 33..65 MiB: untouched, a grain table with no grains
    f.write_all_at(&noise[..MIB as usize], 70 * MIB).unwrap();
    f.write_all_at(b"last sector", RAW_SIZE - 512).unwrap();
    path
}

fn inputs() -> OvaInputs<'static> {
    OvaInputs {
        name: "test",
        version: "1.2.3",
        hardware: VmHardware {
            cpus: 2,
            memory_mib: 4096,
        },
        epoch: 1_700_000_000,
    }
}

/// Convert `raw` into every disk format, published into `dir`.
fn convert_all(raw: &Path, dir: &Path) -> BTreeMap<Format, PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut converter = Converter::new(raw, dir, inputs());
    for format in [Format::Qcow2, Format::Vmdk, Format::Ova] {
        converter.make(format).unwrap();
    }
    converter
        .finish(true)
        .into_iter()
        .map(|p| {
            p.file.persist(&p.path).unwrap();
            (p.format, p.path)
        })
        .collect()
}

fn qemu_img(args: &[&str], file: &Path) -> String {
    run(tool("qemu-img", "qemu-utils").args(args).arg(file))
}

fn info(file: &Path) -> Value {
    serde_json::from_str(&qemu_img(&["info", "--output=json"], file)).unwrap()
}

fn compare(raw: &Path, format: &str, image: &Path) {
    let out = run(tool("qemu-img", "qemu-utils")
        .args(["compare", "-f", "raw", "-F", format])
        .arg(raw)
        .arg(image));
    assert!(out.contains("Images are identical"), "{out}");
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn qcow2_is_compressed_and_qemu_img_finds_it_clean_and_identical() {
    let dir = tempfile::tempdir().unwrap();
    let raw = fake_raw(dir.path());
    let out = convert_all(&raw, &dir.path().join("out"));
    let qcow2 = &out[&Format::Qcow2];
    let info = info(qcow2);
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"], RAW_SIZE, "{info}");
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1", "{info}");
    assert_eq!(
        info["format-specific"]["data"]["compression-type"], "zlib",
        "{info}"
    );
    let check: Value = serde_json::from_str(&qemu_img(&["check", "--output=json"], qcow2)).unwrap();
    assert_eq!(check["check-errors"], 0, "{check}");
    assert!(
        check["compressed-clusters"].as_u64().unwrap_or(0) > 0,
        "no compressed clusters: {check}"
    );
    compare(&raw, "qcow2", qcow2);
    let size = std::fs::metadata(qcow2).unwrap().len();
    assert!(size < 10 * MIB, "sparse and compressed: {size} bytes");
}

#[test]
fn vmdk_is_a_stream_optimized_vmdk_to_qemu_img_and_reads_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let raw = fake_raw(dir.path());
    let out = convert_all(&raw, &dir.path().join("out"));
    let vmdk = &out[&Format::Vmdk];
    assert_eq!(vmdk.file_name().unwrap(), "test-1.2.3.vmdk");
    let info = info(vmdk);
    assert_eq!(info["format"], "vmdk", "{info}");
    assert_eq!(info["virtual-size"], RAW_SIZE, "{info}");
    let data = &info["format-specific"]["data"];
    assert_eq!(data["create-type"], "streamOptimized", "{info}");
    assert_eq!(data["parent-cid"], 0xffff_ffffu64, "{info}");
    assert_eq!(data["extents"][0]["compressed"], true, "{info}");
    // The same words in qemu-img's human output, as the issue asks.
    let human = qemu_img(&["info"], vmdk);
    assert!(human.contains("file format: vmdk"), "{human}");
    assert!(human.contains("create type: streamOptimized"), "{human}");
    let check = qemu_img(&["check"], vmdk);
    assert!(check.contains("No errors were found"), "{check}");
    compare(&raw, "vmdk", vmdk);
}

#[test]
fn ova_holds_ovf_manifest_and_vmdk_in_order_and_the_manifest_hashes_match() {
    let dir = tempfile::tempdir().unwrap();
    let raw = fake_raw(dir.path());
    let out = convert_all(&raw, &dir.path().join("out"));
    let mut archive = tar::Archive::new(File::open(&out[&Format::Ova]).unwrap());
    let mut members = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        assert!(header.as_ustar().is_some(), "ustar headers");
        assert_eq!(header.mode().unwrap(), 0o644);
        assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
        assert_eq!(header.mtime().unwrap(), 1_700_000_000);
        let name = entry.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        members.push((name, bytes));
    }
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["test-1.2.3.ovf", "test-1.2.3.mf", "test-1.2.3.vmdk"],
        "OVF first, then the manifest, then the disk"
    );
    let standalone = std::fs::read(&out[&Format::Vmdk]).unwrap();
    assert!(members[2].1 == standalone, "the OVA carries the same VMDK");

    let manifest = String::from_utf8(members[1].1.clone()).unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    assert_eq!(lines.len(), 2, "{manifest}");
    for (line, (name, bytes)) in lines.iter().zip([&members[0], &members[2]]) {
        assert_eq!(
            *line,
            format!("SHA256({name})= {}", sha256(bytes)),
            "manifest line for {name}"
        );
    }

    let ovf = String::from_utf8(members[0].1.clone()).unwrap();
    check_ovf(&ovf, standalone.len() as u64);
}

/// The OVF read back by an XML parser: the disk's file, size and capacity,
/// EFI, the NIC and controller, and the guestinfo properties.
fn check_ovf(ovf: &str, vmdk_size: u64) {
    let doc = roxmltree::Document::parse(ovf).unwrap_or_else(|e| panic!("{e}\n{ovf}"));
    const OVF: &str = "http://schemas.dmtf.org/ovf/envelope/1";
    const RASD: &str =
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
    const VMW: &str = "http://www.vmware.com/schema/ovf";
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "Envelope");
    assert_eq!(root.tag_name().namespace(), Some(OVF));
    let all = |name: &str| -> Vec<roxmltree::Node> {
        doc.descendants()
            .filter(|n| n.has_tag_name((OVF, name)))
            .collect()
    };
    let attr = |n: &roxmltree::Node, name: &str| n.attribute((OVF, name)).map(str::to_string);

    let files = all("File");
    assert_eq!(files.len(), 1);
    assert_eq!(attr(&files[0], "href").as_deref(), Some("test-1.2.3.vmdk"));
    assert_eq!(attr(&files[0], "size"), Some(vmdk_size.to_string()));
    let disks = all("Disk");
    assert_eq!(disks.len(), 1);
    assert_eq!(attr(&disks[0], "capacity"), Some(RAW_SIZE.to_string()));
    assert_eq!(
        attr(&disks[0], "capacityAllocationUnits").as_deref(),
        Some("byte")
    );
    assert_eq!(attr(&disks[0], "fileRef"), attr(&files[0], "id"));
    assert!(attr(&disks[0], "format")
        .unwrap_or_default()
        .ends_with("#streamOptimized"));

    let hardware = &all("VirtualHardwareSection")[0];
    assert_eq!(
        attr(hardware, "transport").as_deref(),
        Some("com.vmware.guestInfo"),
        "properties reach the guest as guestinfo"
    );
    let configs: BTreeMap<String, String> = hardware
        .children()
        .filter(|n| n.has_tag_name((VMW, "Config")))
        .map(|n| {
            (
                n.attribute((VMW, "key")).unwrap_or_default().to_string(),
                n.attribute((VMW, "value")).unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(configs.get("firmware").map(String::as_str), Some("efi"));

    // RASD items by resource type: 6 SCSI controller, 17 disk, 10 NIC.
    let items: Vec<BTreeMap<String, String>> = all("Item")
        .iter()
        .map(|item| {
            item.children()
                .filter(|c| c.tag_name().namespace() == Some(RASD))
                .map(|c| {
                    (
                        c.tag_name().name().to_string(),
                        c.text().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .collect();
    let of_type = |t: &str| -> Vec<&BTreeMap<String, String>> {
        items.iter().filter(|i| i["ResourceType"] == t).collect()
    };
    let scsi = of_type("6");
    assert_eq!(scsi.len(), 1);
    assert_eq!(scsi[0]["ResourceSubType"], "VirtualSCSI", "pvscsi");
    let disk = of_type("17");
    assert_eq!(disk.len(), 1);
    assert_eq!(
        disk[0]["Parent"], scsi[0]["InstanceID"],
        "the disk is on pvscsi"
    );
    assert_eq!(disk[0]["HostResource"], "ovf:/disk/vmdisk1");
    let nic = of_type("10");
    assert_eq!(nic.len(), 1);
    assert_eq!(nic[0]["ResourceSubType"], "VmxNet3");
    assert_eq!(of_type("3")[0]["VirtualQuantity"], "2");
    assert_eq!(of_type("4")[0]["VirtualQuantity"], "4096");
    for item in all("Item") {
        let names: Vec<&str> = item
            .children()
            .filter(|c| c.tag_name().namespace() == Some(RASD))
            .map(|c| c.tag_name().name())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(
            names, sorted,
            "RASD elements in schema (alphabetical) order"
        );
    }

    let properties: BTreeMap<String, roxmltree::Node> = all("Property")
        .into_iter()
        .map(|p| (attr(&p, "key").unwrap_or_default(), p))
        .collect();
    assert_eq!(
        properties.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "guestinfo.caisson.config",
            "guestinfo.caisson.config.encoding",
            "guestinfo.hostname"
        ]
    );
    for p in properties.values() {
        assert_eq!(attr(p, "userConfigurable").as_deref(), Some("true"));
        assert_eq!(attr(p, "type").as_deref(), Some("string"));
    }
    let encoding = &properties["guestinfo.caisson.config.encoding"];
    assert_eq!(attr(encoding, "value").as_deref(), Some("base64"));
    assert_eq!(
        attr(encoding, "qualifiers").as_deref(),
        Some("ValueMap{\"base64\",\"gzip+base64\"}")
    );
}

#[test]
fn converting_twice_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let raw = fake_raw(dir.path());
    let a = convert_all(&raw, &dir.path().join("a"));
    let b = convert_all(&raw, &dir.path().join("b"));
    assert_eq!(a.len(), 3);
    for (format, path) in &a {
        assert_eq!(
            lock::sha256_file(path).unwrap(),
            lock::sha256_file(&b[format]).unwrap(),
            "{format} differs between two conversions of one raw image"
        );
    }
}

#[test]
fn an_ova_alone_leaves_no_vmdk_behind() {
    let dir = tempfile::tempdir().unwrap();
    let raw = fake_raw(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut converter = Converter::new(&raw, &out, inputs());
    converter.make(Format::Ova).unwrap();
    let pending = converter.finish(false);
    assert_eq!(
        pending.iter().map(|p| p.format).collect::<Vec<_>>(),
        [Format::Ova]
    );
    drop(pending);
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "temporaries removed"
    );
}

/// A real build that lists qcow2 and ova but not raw: only those and the
/// bundle are published, and the two disks hold the same bytes.
#[test]
fn a_build_publishes_exactly_the_listed_formats() {
    let f = Fixture::new();
    let spec = f.spec(|s| {
        s.replace("\"squashfs\"]", "\"squashfs\", \"vmw_pvscsi\"]")
            + "\n[outputs]\nformats = [\"ova\", \"qcow2\"]\n"
    });
    let report = f.build(spec).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&f.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["test-1.2.3.bundle", "test-1.2.3.ova", "test-1.2.3.qcow2"],
        "no raw, no standalone vmdk, no temporaries"
    );
    let formats: Vec<Format> = report.outputs.iter().map(|o| o.format).collect();
    assert_eq!(formats, [Format::Qcow2, Format::Ova]);
    let qcow2 = &report.outputs[0];
    assert_eq!(qcow2.path, f.out.join("test-1.2.3.qcow2"));
    assert_eq!(qcow2.size, std::fs::metadata(&qcow2.path).unwrap().len());
    assert!(report.steps.iter().any(|(s, _)| s == "ova image"));

    // The OVA's disk and the qcow2 are the same disk.
    let scratch = tempfile::tempdir().unwrap();
    let mut archive = tar::Archive::new(File::open(f.out.join("test-1.2.3.ova")).unwrap());
    archive.unpack(scratch.path()).unwrap();
    let vmdk = scratch.path().join("test-1.2.3.vmdk");
    let out = run(tool("qemu-img", "qemu-utils")
        .args(["compare", "-f", "vmdk", "-F", "qcow2"])
        .arg(&vmdk)
        .arg(&qcow2.path));
    assert!(out.contains("Images are identical"), "{out}");
    let info = info(&vmdk);
    assert_eq!(info["virtual-size"], report.image_size);
}
