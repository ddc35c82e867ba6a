//! Our depmod over a real Debian kernel's module tree. The tree is found
//! through CAISSON_KERNEL_MODULES_DIR (lib/modules/<kver> of an extracted
//! linux-image .deb; `cargo xtask test` extracts it). Unset outside CI: the
//! test says so and passes; unset under CI, or set to something that is not a
//! module tree: the test fails.

use std::path::PathBuf;

use caisson_kmod::ModuleIndex;

const VAR: &str = "CAISSON_KERNEL_MODULES_DIR";

fn tree() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os(VAR) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{VAR} is not set under CI: run the suite through `cargo xtask test`"
        );
        eprintln!("{VAR} is not set; skipping the real kernel tree test");
        return None;
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("kernel").is_dir(),
        "{VAR}={} has no kernel/ directory",
        dir.display()
    );
    assert!(
        dir.join("modules.builtin").is_file(),
        "{VAR}={} has no modules.builtin",
        dir.display()
    );
    Some(dir)
}

#[test]
fn depmod_over_the_real_debian_tree() {
    let Some(dir) = tree() else { return };
    let index = ModuleIndex::generate(&dir).unwrap();
    assert!(
        index.modules().count() > 500,
        "expected a full kernel's modules"
    );

    let order = index.load_order(&["virtio_blk"]).unwrap();
    for dep in ["virtio", "virtio_ring"] {
        let at = order
            .iter()
            .position(|m| m == dep)
            .unwrap_or_else(|| panic!("{dep} not in {order:?}"));
        assert!(
            at < order.len() - 1,
            "{dep} must load before virtio_blk: {order:?}"
        );
    }
    assert_eq!(order.last().map(String::as_str), Some("virtio_blk"));
    assert!(
        index.is_builtin("ext4"),
        "ext4 is built into the cloud kernel"
    );
    assert!(index.contains("squashfs") && !index.is_builtin("squashfs"));

    assert!(
        index
            .aliases_of("button")
            .iter()
            .any(|a| a.starts_with("acpi*:LNXPWRBN:")),
        "button aliases: {:?}",
        index.aliases_of("button")
    );
    let power_button = index.match_modalias("input:b0019v0000p0001e0000-e0,1,k74,ramlsfw");
    assert!(
        power_button.contains(&"evdev".to_string()),
        "{power_button:?}"
    );
    let virtio_pci_dev =
        index.match_modalias("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00");
    assert!(
        virtio_pci_dev.contains(&"virtio_pci".to_string()),
        "{virtio_pci_dev:?}"
    );

    // What the initramfs carries round-trips through the rendered files.
    let pruned = index
        .prune(&[
            "virtio_pci",
            "virtio_blk",
            "virtio_scsi",
            "squashfs",
            "ext4",
        ])
        .unwrap();
    let parsed = ModuleIndex::parse(
        &pruned.render_dep(),
        &pruned.render_alias(),
        &pruned.render_builtin(),
    )
    .unwrap();
    assert_eq!(parsed.render_dep(), pruned.render_dep());
    let full = index.render_dep();
    assert_eq!(
        ModuleIndex::parse(&full, "", "").unwrap().render_dep(),
        full
    );
}
