use std::io::Read;

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
    index: ModuleIndex,
}

/// A module tree with fake .ko contents (build_initrd copies bytes; it
/// never parses them) and an index over it.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let modules = dir.path().join("modules");
    for rel in [
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/fs/squashfs/squashfs.ko",
        "kernel/fs/vfat/vfat.ko",
    ] {
        let path = modules.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("module {rel}")).unwrap();
    }
    std::fs::write(dir.path().join("init"), b"\x7fELF static init").unwrap();
    let index = ModuleIndex::parse(
        "kernel/drivers/virtio/virtio.ko:\n\
         kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n\
         kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
         kernel/fs/squashfs/squashfs.ko:\n\
         kernel/fs/vfat/vfat.ko:\n",
        "",
        "kernel/fs/ext4/ext4.ko\n",
    )
    .unwrap();
    Fixture { dir, index }
}

fn build(f: &Fixture, modules: &[&str]) -> Result<Vec<u8>, InitrdError> {
    let modules: Vec<String> = modules.iter().map(|m| m.to_string()).collect();
    build_initrd(&InitrdInput {
        init_binary: &f.dir.path().join("init"),
        kernel_release: "6.1.0-test",
        modules_dir: &f.dir.path().join("modules"),
        index: &f.index,
        modules: &modules,
        mtime: 1_700_000_000,
    })
}

struct Unpacked {
    name: String,
    mode: u32,
    ino: u32,
    uid: u32,
    mtime: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

fn unpack(initrd: &[u8]) -> Vec<Unpacked> {
    let cpio = zstd::decode_all(initrd).unwrap();
    let mut rest: &[u8] = &cpio;
    let mut out = Vec::new();
    loop {
        let mut reader = cpio::newc::Reader::new(rest).unwrap();
        if reader.entry().is_trailer() {
            break;
        }
        let e = reader.entry();
        let (name, mode, ino, uid, mtime, rdev) = (
            e.name().to_string(),
            e.mode(),
            e.ino(),
            e.uid(),
            e.mtime(),
            (e.rdev_major(), e.rdev_minor()),
        );
        let mut data = Vec::new();
        reader.read_to_end(&mut data).unwrap();
        rest = reader.finish().unwrap();
        out.push(Unpacked {
            name,
            mode,
            ino,
            uid,
            mtime,
            rdev,
            data,
        });
    }
    out
}

const KDIR: &str = "usr/lib/modules/6.1.0-test";

#[test]
fn initrd_holds_init_console_mount_points_and_the_module_closure() {
    let f = fixture();
    let entries = unpack(&build(&f, &["virtio_blk", "ext4", "squashfs"]).unwrap());
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let expected = [
        "dev",
        "dev/console",
        "etc",
        "etc/caisson",
        "etc/caisson/initrd-modules",
        "etc/caisson/kernel-release",
        "init",
        "proc",
        "run",
        "sys",
        "sysroot",
        "usr",
        "usr/lib",
        "usr/lib/modules",
        KDIR,
        "usr/lib/modules/6.1.0-test/kernel",
        "usr/lib/modules/6.1.0-test/kernel/drivers",
        "usr/lib/modules/6.1.0-test/kernel/drivers/block",
        "usr/lib/modules/6.1.0-test/kernel/drivers/block/virtio_blk.ko",
        "usr/lib/modules/6.1.0-test/kernel/drivers/virtio",
        "usr/lib/modules/6.1.0-test/kernel/drivers/virtio/virtio.ko",
        "usr/lib/modules/6.1.0-test/kernel/drivers/virtio/virtio_ring.ko",
        "usr/lib/modules/6.1.0-test/kernel/fs",
        "usr/lib/modules/6.1.0-test/kernel/fs/squashfs",
        "usr/lib/modules/6.1.0-test/kernel/fs/squashfs/squashfs.ko",
        "usr/lib/modules/6.1.0-test/modules.dep",
    ];
    assert_eq!(names, expected);
    let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
    assert_eq!(get("init").mode, 0o100755);
    assert_eq!(get("init").data, b"\x7fELF static init");
    assert_eq!(get("dev/console").mode, 0o020600);
    assert_eq!(get("dev/console").rdev, (5, 1));
    assert_eq!(get("sysroot").mode, 0o040755);
    assert_eq!(
        get("etc/caisson/initrd-modules").data,
        b"virtio_blk\nsquashfs\n"
    );
    assert_eq!(get("etc/caisson/kernel-release").data, b"6.1.0-test\n");
    assert_eq!(
        String::from_utf8(get(&format!("{KDIR}/modules.dep")).data.clone()).unwrap(),
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
         kernel/drivers/virtio/virtio.ko:\n\
         kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n\
         kernel/fs/squashfs/squashfs.ko:\n"
    );
    assert_eq!(
        get(&format!("{KDIR}/kernel/fs/squashfs/squashfs.ko")).data,
        b"module kernel/fs/squashfs/squashfs.ko"
    );
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.ino, i as u32 + 1, "{}", e.name);
        assert_eq!((e.uid, e.mtime), (0, 1_700_000_000), "{}", e.name);
    }
}

#[test]
fn the_same_inputs_give_the_same_bytes() {
    let f = fixture();
    let a = build(&f, &["virtio_blk", "squashfs"]).unwrap();
    let b = build(&f, &["virtio_blk", "squashfs"]).unwrap();
    assert_eq!(a, b);
    let c = build(&f, &["virtio_blk", "vfat"]).unwrap();
    assert_ne!(a, c);
}

#[test]
fn unknown_modules_are_named_and_missing_files_reported() {
    let f = fixture();
    match build(&f, &["virtio_blk", "nvme_fabrics"]) {
        Err(e @ InitrdError::UnknownModule { .. }) => {
            assert!(e.to_string().contains("nvme_fabrics"), "{e}")
        }
        other => panic!("expected UnknownModule, got {:?}", other.map(|b| b.len())),
    }
    std::fs::remove_file(f.dir.path().join("modules/kernel/fs/vfat/vfat.ko")).unwrap();
    match build(&f, &["vfat"]) {
        Err(e @ InitrdError::Read { .. }) => assert!(e.to_string().contains("vfat.ko"), "{e}"),
        other => panic!("expected Read error, got {:?}", other.map(|b| b.len())),
    }
}
