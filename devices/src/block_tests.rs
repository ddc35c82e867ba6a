use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::*;
use crate::test_disk::{make_disk, ROOT_A_GUID};

/// A fake /sys and /dev: virtio disk vda (a real sgdisk GPT image) with
/// partitions 1, 2 and 4, a blank disk vdb, and an empty loop0.
struct Fake {
    dir: tempfile::TempDir,
    roots: SysRoots,
}

fn add(sys: &Path, device_dir: &str, name: &str, sectors: u64, partition: Option<u32>) {
    let dir = sys.join("devices").join(device_dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
    if let Some(n) = partition {
        std::fs::write(dir.join("partition"), format!("{n}\n")).unwrap();
    }
    let link = sys.join("class/block").join(name);
    std::os::unix::fs::symlink(PathBuf::from("../../devices").join(device_dir), link).unwrap();
}

fn fake() -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    let dev = dir.path().join("dev");
    std::fs::create_dir_all(sys.join("class/block")).unwrap();
    std::fs::create_dir_all(&dev).unwrap();
    let vda = "pci0000:00/0000:00:04.0/virtio1/block/vda";
    add(&sys, vda, "vda", 16384, None);
    add(&sys, &format!("{vda}/vda1"), "vda1", 2048, Some(1));
    add(&sys, &format!("{vda}/vda2"), "vda2", 4096, Some(2));
    add(&sys, &format!("{vda}/vda4"), "vda4", 2048, Some(4));
    add(
        &sys,
        "pci0000:00/0000:00:05.0/virtio2/block/vdb",
        "vdb",
        128,
        None,
    );
    add(&sys, "virtual/block/loop0", "loop0", 0, None);
    make_disk(&dev.join("vda"));
    std::fs::write(dev.join("vdb"), vec![0u8; 65536]).unwrap();
    let roots = SysRoots::new(&sys, &dev);
    Fake { dir, roots }
}

#[test]
fn lists_disks_and_partitions_sorted_with_sizes_and_parents() {
    let f = fake();
    let devices = list_block_devices_in(&f.roots).unwrap();
    let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["loop0", "vda", "vda1", "vda2", "vda4", "vdb"]);
    let vda2 = &devices[3];
    assert_eq!(vda2.dev_path, f.dir.path().join("dev/vda2"));
    assert_eq!(vda2.size_bytes, 4096 * 512);
    assert_eq!(
        vda2.partition,
        Some(PartitionInfo {
            parent: "vda".into(),
            number: 2
        })
    );
    assert_eq!(devices[1].partition, None);
}

#[test]
fn finds_the_root_by_partuuid_and_state_by_label() {
    let f = fake();
    let root = RootSpec::PartUuid(Uuid::parse_str(ROOT_A_GUID).unwrap());
    assert_eq!(
        find_partition_in(&root, &f.roots).unwrap().map(|d| d.name),
        Some("vda2".to_string())
    );
    let state = RootSpec::PartLabel("STATE".into());
    assert_eq!(
        find_partition_in(&state, &f.roots).unwrap().map(|d| d.name),
        Some("vda4".to_string())
    );
    let absent = RootSpec::PartUuid(Uuid::nil());
    assert_eq!(find_partition_in(&absent, &f.roots).unwrap(), None);
}

#[test]
fn a_partition_the_kernel_has_not_created_yet_is_not_found() {
    let f = fake();
    std::fs::remove_file(f.roots.class_block.join("vda2")).unwrap();
    let root = RootSpec::PartUuid(Uuid::parse_str(ROOT_A_GUID).unwrap());
    assert_eq!(find_partition_in(&root, &f.roots).unwrap(), None);
}

#[test]
fn siblings_are_found_on_the_same_disk_only() {
    let f = fake();
    assert_eq!(
        sibling_by_label_in("vda2", "STATE", &f.roots)
            .unwrap()
            .map(|d| d.name),
        Some("vda4".to_string())
    );
    assert_eq!(
        sibling_by_label_in("vda2", "ESP", &f.roots)
            .unwrap()
            .map(|d| d.name),
        Some("vda1".to_string())
    );
    assert_eq!(
        sibling_by_label_in("vda2", "ROOT-B", &f.roots).unwrap(),
        None
    );
    assert!(matches!(
        sibling_by_label_in("vda", "STATE", &f.roots),
        Err(DevicesError::NotAPartition { .. })
    ));
    match sibling_by_label_in("sdz1", "STATE", &f.roots) {
        Err(e @ DevicesError::UnknownDevice { .. }) => {
            assert!(e.to_string().contains("sdz1"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_sysfs_values_name_the_file() {
    let f = fake();
    let size = std::fs::canonicalize(f.roots.class_block.join("vdb"))
        .unwrap()
        .join("size");
    std::fs::write(&size, "lots\n").unwrap();
    match list_block_devices_in(&f.roots) {
        Err(e @ DevicesError::Sysfs { .. }) => assert!(e.to_string().contains("vdb/size"), "{e}"),
        other => panic!("{other:?}"),
    }
    let missing = SysRoots::new(&f.dir.path().join("nosys"), Path::new("/dev"));
    assert!(matches!(
        list_block_devices_in(&missing),
        Err(DevicesError::Io { .. })
    ));
}
