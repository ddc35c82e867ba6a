//! Bad input gets an error that names the culprit, and the output
//! directory is left empty: no image, no partial file, no staging.

mod support;

use image_builder::build::BuildError;
use image_builder::elf::ElfError;
use image_builder::lock::{Lock, LockError};
use image_builder::machine_config::MachineConfigError;
use image_builder::spec::SpecError;
use support::{lock_path, Fixture};

#[test]
fn missing_artifact_is_named_with_the_fetch_hint() {
    let f = Fixture::new();
    let copy = f.artifacts_copy();
    let lock = Lock::load(&lock_path()).unwrap();
    let runc = lock.get(&lock_path(), "runc").unwrap();
    std::fs::remove_file(copy.join(runc.file_name())).unwrap();
    let mut opts = f.options(f.spec(|s| s));
    opts.artifacts_dir = Some(copy);
    let e = image_builder::build::build(&opts).unwrap_err();
    assert!(
        matches!(e, BuildError::Lock(LockError::Missing { ref name, .. }) if name == "runc"),
        "{e}"
    );
    assert!(e.to_string().contains("cargo xtask fetch"), "{e}");
    f.assert_no_output();
}

#[test]
fn sha256_mismatch_is_refused() {
    let f = Fixture::new();
    let copy = f.artifacts_copy();
    let lock = Lock::load(&lock_path()).unwrap();
    let name = lock.get(&lock_path(), "libseccomp2").unwrap().file_name();
    let target = copy.join(&name);
    let mut bytes = std::fs::read(&target).unwrap();
    std::fs::remove_file(&target).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&target, bytes).unwrap();
    let mut opts = f.options(f.spec(|s| s));
    opts.artifacts_dir = Some(copy);
    let e = image_builder::build::build(&opts).unwrap_err();
    assert!(
        matches!(e, BuildError::Lock(LockError::Mismatch { .. })),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("libseccomp2") && msg.contains("artifacts.lock pins"),
        "{msg}"
    );
    f.assert_no_output();
}

#[test]
fn unknown_spec_key_names_the_key_path_and_position() {
    let f = Fixture::new();
    let e = f
        .build(f.spec(|s| s.replace("esp_mib = 64", "esp_mib = 64\nesp_size = 64")))
        .unwrap_err();
    assert!(
        matches!(e, BuildError::Spec(SpecError::Parse { .. })),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("`disk.esp_size`") && msg.contains("unknown field"),
        "{msg}"
    );
    assert!(msg.contains("spec.toml:37:1"), "{msg}");
    f.assert_no_output();
}

#[test]
fn ill_typed_spec_key_names_the_key_path_and_position() {
    let f = Fixture::new();
    let e = f
        .build(f.spec(|s| s.replace("root_mib = 96", "root_mib = \"96\"")))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("`disk.root_mib`") && msg.contains("expected u64"),
        "{msg}"
    );
    assert!(msg.contains("spec.toml:37:12"), "{msg}");
    f.assert_no_output();
}

#[test]
fn root_tree_larger_than_its_partition_is_refused_with_sizes() {
    let f = Fixture::new();
    let e = f
        .build(f.spec(|s| s.replace("root_mib = 96", "root_mib = 16")))
        .unwrap_err();
    let BuildError::RootTooBig {
        size, capacity_mib, ..
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!(capacity_mib, 16);
    assert!(size > 16 << 20);
    assert!(e.to_string().contains("disk.root_mib"), "{e}");
    f.assert_no_output();
}

#[test]
fn missing_kernel_module_is_named() {
    let f = Fixture::new();
    // The cloud kernel has no AHCI driver, neither as a module nor built in.
    let e = f
        .build(f.spec(|s| s.replace("\"squashfs\"]", "\"squashfs\", \"ahci\"]")))
        .unwrap_err();
    assert!(
        matches!(e, BuildError::MissingModule { ref name, .. } if name == "ahci"),
        "{e}"
    );
    assert!(e.to_string().contains("6.1.0-56-cloud-amd64"), "{e}");
    f.assert_no_output();
}

#[test]
fn unresolved_library_names_the_library_and_the_binary() {
    let f = Fixture::new();
    let e = f
        .build(f.spec(|s| s.replace("[\"libc6\", \"libseccomp2\"]", "[\"libc6\"]")))
        .unwrap_err();
    let BuildError::Elf(ElfError::Unresolved {
        soname, needed_by, ..
    }) = &e
    else {
        panic!("{e}")
    };
    assert_eq!(
        (soname.as_str(), needed_by.as_str()),
        ("libseccomp.so.2", "usr/sbin/runc")
    );
    f.assert_no_output();
}

#[test]
fn dynamic_init_is_refused() {
    let f = Fixture::new();
    // Any glibc program will do; the test binary itself is one.
    let me = std::env::current_exe().unwrap();
    let mut opts = f.options(f.spec(|s| s));
    opts.init = Some(me);
    let e = image_builder::build::build(&opts).unwrap_err();
    assert!(
        matches!(e, BuildError::NotStatic { what: "init", .. }),
        "{e}"
    );
    f.assert_no_output();
}

#[test]
fn payload_file_absent_from_its_package_is_named() {
    let f = Fixture::new();
    let e = f
        .build(f.spec(|s| s.replace("usr/sbin/runc\"]", "usr/sbin/runc\", \"usr/sbin/nope\"]")))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("\"runc\"") && msg.contains("usr/sbin/nope"),
        "{msg}"
    );
    f.assert_no_output();
}

/// The machine-configs example with `edit` applied.
fn machine_config(edit: impl FnOnce(String) -> String) -> String {
    let example = support::workspace().join("machine-configs/single-node-dhcp.toml");
    edit(std::fs::read_to_string(example).unwrap())
}

#[test]
fn an_invalid_machine_config_names_file_line_column_and_key() {
    let f = Fixture::new();
    let config = f.dir.path().join("node.toml");
    std::fs::write(
        &config,
        machine_config(|c| c.replace("hostname = \"edge-1\"", "hostname = \"edge_1!\"")),
    )
    .unwrap();
    let mut opts = f.options(f.spec(|s| s));
    opts.config = Some(config.clone());
    let e = image_builder::build::build(&opts).unwrap_err();
    assert!(
        matches!(
            e,
            BuildError::MachineConfig(MachineConfigError::Invalid { .. })
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{}:7:12: machine.hostname: ", config.display())),
        "{msg}"
    );
    f.assert_no_output();
}

#[test]
fn a_machine_config_named_by_the_spec_is_validated_too() {
    let f = Fixture::new();
    std::fs::write(
        f.dir.path().join("node.toml"),
        machine_config(|c| c.replace("port = 50443", "port = \"50443\"")),
    )
    .unwrap();
    let spec = f.spec(|s| {
        s.replace(
            "source_date_epoch = 1700000000",
            "source_date_epoch = 1700000000\nconfig = \"node.toml\"",
        )
    });
    let e = f.build(spec).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("node.toml:") && msg.contains(": api.port: "),
        "{msg}"
    );
    f.assert_no_output();

    let missing = f.spec(|s| {
        s.replace(
            "source_date_epoch = 1700000000",
            "source_date_epoch = 1700000000\nconfig = \"absent.toml\"",
        )
    });
    let e = f.build(missing).unwrap_err();
    assert!(
        matches!(
            e,
            BuildError::MachineConfig(MachineConfigError::Read { .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("absent.toml"), "{e}");
    f.assert_no_output();
}

#[test]
fn a_version_override_that_would_break_the_entry_name_is_refused() {
    let f = Fixture::new();
    let e = image_builder::build::build(&image_builder::build::BuildOptions {
        version: Some("1.0+2".into()),
        ..f.options(f.spec(|s| s))
    })
    .unwrap_err();
    assert!(matches!(e, BuildError::Version { .. }), "{e}");
    assert!(e.to_string().contains("\"1.0+2\""), "{e}");
    f.assert_no_output();
}

#[test]
fn a_signing_key_that_is_not_a_key_is_refused_before_building() {
    let f = Fixture::new();
    let key = f.dir.path().join("release.key");
    std::fs::write(&key, "not a key\n").unwrap();
    let e = image_builder::build::build(&image_builder::build::BuildOptions {
        signing_key: Some(key.clone()),
        ..f.options(f.spec(|s| s))
    })
    .unwrap_err();
    assert!(matches!(e, BuildError::SigningKey(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&key.display().to_string()) && msg.contains("PKCS#8"),
        "{msg}"
    );
    f.assert_no_output();
}
