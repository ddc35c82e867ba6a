use std::path::Path;

use super::*;
use crate::elf_fixture::module_elf;

/// A small lib/modules/<kver> tree: virtio stack, squashfs, a dashed name,
/// ext4 built in, and a `build` symlink whose module must not be indexed.
fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = &dir.path().join("modules");
    let module = |rel: &str, info: &[&str]| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, module_elf(info)).unwrap();
    };
    module(
        "kernel/drivers/virtio/virtio.ko",
        &["name=virtio", "depends="],
    );
    module(
        "kernel/drivers/virtio/virtio_ring.ko",
        &["name=virtio_ring", "depends=virtio"],
    );
    module(
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        &["name=virtio_pci_modern_dev", "depends="],
    );
    module(
        "kernel/drivers/virtio/virtio_pci.ko",
        &[
            "alias=pci:v00001AF4d*sv*sd*bc*sc*i*",
            "depends=virtio_ring,virtio,virtio_pci_modern_dev",
            "name=virtio_pci",
        ],
    );
    module(
        "kernel/drivers/block/virtio_blk.ko",
        &[
            "alias=virtio:d00000002v*",
            "depends=virtio,virtio_ring",
            "name=virtio_blk",
        ],
    );
    module(
        "kernel/drivers/char/hw_random/virtio-rng.ko",
        &[
            "alias=virtio:d00000004v*",
            "depends=virtio_ring,virtio",
            "name=virtio_rng",
        ],
    );
    module(
        "kernel/fs/squashfs/squashfs.ko",
        &["alias=fs-squashfs", "depends=", "name=squashfs"],
    );
    std::fs::write(
        root.join("modules.builtin"),
        "kernel/fs/ext4/ext4.ko\nkernel/drivers/nvme/host/nvme-core.ko\n",
    )
    .unwrap();
    std::fs::write(root.join("notes.ko.txt"), b"not a module").unwrap();
    let hidden = dir.path().join("headers");
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::write(hidden.join("ghost.ko"), module_elf(&["name=ghost"])).unwrap();
    std::os::unix::fs::symlink(&hidden, root.join("build")).unwrap();
    Tree {
        root: root.clone(),
        _dir: dir,
    }
}

struct Tree {
    root: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tree {
    fn path(&self) -> &Path {
        &self.root
    }
}

const EXPECTED_DEP: &str = "\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/fs/squashfs/squashfs.ko:
";

#[test]
fn generate_reads_every_module_and_the_builtin_list() {
    let dir = tree();
    let index = ModuleIndex::generate(dir.path()).unwrap();
    assert_eq!(
        index.modules().collect::<Vec<_>>(),
        [
            "squashfs",
            "virtio",
            "virtio_blk",
            "virtio_pci",
            "virtio_pci_modern_dev",
            "virtio_ring",
            "virtio_rng"
        ]
    );
    assert!(
        !index.contains("ghost"),
        "modules behind the build symlink must not be indexed"
    );
    assert_eq!(
        index.path_of("virtio-rng"),
        Some("kernel/drivers/char/hw_random/virtio-rng.ko")
    );
    assert!(
        index.is_builtin("ext4") && index.is_builtin("nvme-core") && index.contains("nvme_core")
    );
    assert!(!index.is_builtin("squashfs") && index.contains("squashfs"));
    assert_eq!(index.render_dep(), EXPECTED_DEP);
    assert_eq!(
        index.render_builtin(),
        "kernel/drivers/nvme/host/nvme-core.ko\nkernel/fs/ext4/ext4.ko\n"
    );
    assert!(index
        .render_alias()
        .contains("\nalias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n"));
}

#[test]
fn rendered_files_parse_back_to_the_same_index_text_and_order() {
    let generated = ModuleIndex::generate(tree().path()).unwrap();
    let parsed = ModuleIndex::parse(
        &generated.render_dep(),
        &generated.render_alias(),
        &generated.render_builtin(),
    )
    .unwrap();
    assert_eq!(parsed.render_dep(), generated.render_dep());
    assert_eq!(parsed.render_alias(), generated.render_alias());
    assert_eq!(parsed.render_builtin(), generated.render_builtin());
    let all: Vec<&str> = generated.modules().collect();
    assert_eq!(
        parsed.load_order(&all).unwrap(),
        generated.load_order(&all).unwrap()
    );
    assert_eq!(parsed.aliases_of("virtio_blk"), ["virtio:d00000002v*"]);
}

#[test]
fn write_to_then_load_gives_the_same_files() {
    let dir = tree();
    let index = ModuleIndex::generate(dir.path()).unwrap();
    index.write_to(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("modules.dep")).unwrap(),
        EXPECTED_DEP
    );
    let loaded = ModuleIndex::load(dir.path()).unwrap();
    assert_eq!(loaded.render_alias(), index.render_alias());
    assert!(loaded.is_builtin("ext4"));
}

#[test]
fn load_without_alias_or_builtin_files_is_fine_but_needs_modules_dep() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        ModuleIndex::load(dir.path()),
        Err(KmodError::Io { .. })
    ));
    std::fs::write(
        dir.path().join("modules.dep"),
        "kernel/a.ko: kernel/b.ko\nkernel/b.ko:\n",
    )
    .unwrap();
    let index = ModuleIndex::load(dir.path()).unwrap();
    assert_eq!(index.load_order(&["a"]).unwrap(), ["b", "a"]);
}

#[test]
fn load_order_puts_dependencies_first_once_and_skips_builtins() {
    let index = ModuleIndex::generate(tree().path()).unwrap();
    let order = index
        .load_order(&["virtio_blk", "ext4", "virtio-pci", "virtio_blk", "squashfs"])
        .unwrap();
    assert_eq!(
        order,
        [
            "squashfs",
            "virtio",
            "virtio_pci_modern_dev",
            "virtio_ring",
            "virtio_blk",
            "virtio_pci"
        ]
    );
    assert!(index.load_order(&["ext4"]).unwrap().is_empty());
    match index.load_order(&["virtio_blk", "vfat"]) {
        Err(KmodError::UnknownModule { name }) => assert_eq!(name, "vfat"),
        other => panic!("expected UnknownModule, got {other:?}"),
    }
}

#[test]
fn prune_keeps_only_the_closure_with_its_aliases() {
    let index = ModuleIndex::generate(tree().path()).unwrap();
    let pruned = index.prune(&["virtio_blk", "ext4"]).unwrap();
    assert_eq!(
        pruned.modules().collect::<Vec<_>>(),
        ["virtio", "virtio_blk", "virtio_ring"]
    );
    assert_eq!(
        pruned.render_dep(),
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
         kernel/drivers/virtio/virtio.ko:\n\
         kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n"
    );
    assert_eq!(
        pruned.match_modalias("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"),
        Vec::<String>::new()
    );
    assert_eq!(
        pruned.match_modalias("virtio:d00000002v00001AF4"),
        ["virtio_blk"]
    );
    assert!(matches!(
        index.prune(&["nope"]),
        Err(KmodError::UnknownModule { .. })
    ));
}

#[test]
fn modalias_matching_is_sorted_and_deduplicated() {
    let alias = "alias virtio:d00000002v* zz_blk\nalias virtio:d0000000[0-3]v* aa_any\nalias virtio:d*v00001AF4 aa_any\nalias pci:* other\n";
    let dep = "kernel/zz_blk.ko:\nkernel/aa_any.ko:\nkernel/other.ko:\n";
    let index = ModuleIndex::parse(dep, alias, "").unwrap();
    assert_eq!(
        index.match_modalias("virtio:d00000002v00001AF4"),
        ["aa_any", "zz_blk"]
    );
    assert_eq!(
        index.match_modalias("virtio:d00000005v00001AF4"),
        ["aa_any"]
    );
    assert!(index.match_modalias("usb:v1234").is_empty());
}

#[test]
fn malformed_index_lines_are_reported_with_file_and_line() {
    match ModuleIndex::parse("kernel/a.ko:\nkernel/b.ko kernel/a.ko\n", "", "") {
        Err(KmodError::Parse { file, line, .. }) => assert_eq!((file, line), ("modules.dep", 2)),
        other => panic!("{other:?}"),
    }
    match ModuleIndex::parse("kernel/a.ko:\n", "# c\nalias x\n", "") {
        Err(e @ KmodError::Parse { .. }) => {
            assert!(e.to_string().contains("modules.alias line 2"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn broken_trees_fail_generation_naming_the_culprit() {
    let write = |root: &Path, rel: &str, info: &[&str]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, module_elf(info)).unwrap();
    };
    let missing = tempfile::tempdir().unwrap();
    write(missing.path(), "kernel/a.ko", &["name=a", "depends=gone"]);
    match ModuleIndex::generate(missing.path()) {
        Err(KmodError::UnknownDependency { module, dependency }) => {
            assert_eq!((module.as_str(), dependency.as_str()), ("a", "gone"))
        }
        other => panic!("{other:?}"),
    }
    let dup = tempfile::tempdir().unwrap();
    write(dup.path(), "kernel/x/a.ko", &["name=a"]);
    write(dup.path(), "updates/a.ko", &["name=a"]);
    assert!(matches!(
        ModuleIndex::generate(dup.path()),
        Err(KmodError::DuplicateModule { .. })
    ));
    let cycle = tempfile::tempdir().unwrap();
    write(cycle.path(), "kernel/a.ko", &["name=a", "depends=b"]);
    write(cycle.path(), "kernel/b.ko", &["name=b", "depends=a"]);
    match ModuleIndex::generate(cycle.path()) {
        Err(KmodError::DependencyCycle { modules }) => assert_eq!(modules, ["a", "b"]),
        other => panic!("{other:?}"),
    }
    let bad = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(bad.path().join("kernel")).unwrap();
    std::fs::write(bad.path().join("kernel/junk.ko"), b"junk").unwrap();
    match ModuleIndex::generate(bad.path()) {
        Err(e @ KmodError::InModule { .. }) => assert!(e.to_string().contains("junk.ko"), "{e}"),
        other => panic!("{other:?}"),
    }
}
