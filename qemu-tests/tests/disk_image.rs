//! The raw image as other tools see it (no VM), and its reproducibility.

use std::path::{Path, PathBuf};
use std::process::Command;

use qemu_tests::disk::{self, Partition};
use qemu_tests::tools::{run, run_unchecked, squashfs_listing, stdout};
use qemu_tests::{env, HarnessError};

type Result = std::result::Result<(), HarnessError>;

/// A partition of the test image copied to `target/qemu-tests/<test>/<label>.img`.
fn extract(test: &str, label: &str) -> std::result::Result<(PathBuf, Partition), HarnessError> {
    let image = env::test_image()?;
    let part = disk::partition(&image, label)?;
    let dir = env::fresh_dir(&format!("{test}.{label}"))?;
    let file = disk::extract(&image, &part, &dir.join(format!("{label}.img")))?;
    Ok((file, part))
}

#[test]
fn sgdisk_verifies_the_partition_table() -> Result {
    let image = env::test_image()?;
    let out = stdout(Command::new("sgdisk").arg("-v").arg(&image))?;
    assert!(out.contains("No problems found"), "sgdisk -v:\n{out}");
    let labels: Vec<String> = disk::partitions(&image)?
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(labels, ["ESP", "ROOT-A", "ROOT-B", "STATE", "DATA"]);
    Ok(())
}

#[test]
fn fsck_fat_finds_the_esp_clean() -> Result {
    let (esp, _) = extract("fsck_fat", "ESP")?;
    let out = run_unchecked(Command::new("fsck.fat").arg("-n").arg("-v").arg(&esp))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "fsck.fat -n {} ({}):\n{text}",
        esp.display(),
        out.status
    );
    Ok(())
}

#[test]
fn unsquashfs_reads_root_a_with_agent_payload_and_modules() -> Result {
    let image = env::test_image()?;
    let root = disk::partition(&image, "ROOT-A")?;
    let superblock = stdout(
        Command::new("unsquashfs")
            .arg("-s")
            .arg("-o")
            .arg(root.offset().to_string())
            .arg(&image),
    )?;
    assert!(
        superblock.contains("Compression zstd"),
        "unsquashfs -s:\n{superblock}"
    );

    let listing = squashfs_listing(&image, root.offset())?;
    let has = |path: &str| listing.iter().any(|e| e.path == path && e.kind == '-');
    for path in [
        "usr/bin/node-agent",
        "usr/bin/containerd",
        "usr/sbin/runc",
        "usr/lib/os-release",
    ] {
        assert!(has(path), "ROOT-A has no {path}");
    }
    let modules_dep = listing.iter().any(|e| {
        e.path
            .strip_prefix("usr/lib/modules/")
            .and_then(|p| p.split_once('/'))
            .is_some_and(|(_, f)| f == "modules.dep")
    });
    assert!(
        modules_dep,
        "ROOT-A has no usr/lib/modules/<kver>/modules.dep"
    );
    // The plain listing agrees (it is what an operator would run).
    let plain = stdout(
        Command::new("unsquashfs")
            .arg("-l")
            .arg("-o")
            .arg(root.offset().to_string())
            .arg(&image),
    )?;
    assert!(
        plain.contains("squashfs-root/usr/bin/node-agent"),
        "unsquashfs -l lacks the agent"
    );
    Ok(())
}

#[test]
fn e2fsck_finds_state_and_data_clean() -> Result {
    for label in ["STATE", "DATA"] {
        let (fs, _) = extract("e2fsck", label)?;
        run(Command::new("e2fsck").arg("-f").arg("-n").arg(&fs))?;
    }
    Ok(())
}

#[test]
fn systemd_dissect_recognises_esp_and_root() -> Result {
    let image = env::test_image()?;
    let out = run_unchecked(
        Command::new("systemd-dissect")
            .arg("--json=short")
            .arg(&image),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-dissect {} failed ({}):\n{text}{}",
        image.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| HarnessError::Disk {
        image: image.clone(),
        message: format!("systemd-dissect printed no JSON ({e}):\n{text}"),
    })?;
    let mounts = json["mounts"].as_array().cloned().unwrap_or_default();
    let find = |designator: &str| {
        mounts
            .iter()
            .find(|m| m["designator"] == designator)
            .cloned()
    };
    let esp = find("esp").unwrap_or_else(|| panic!("no esp in {json:#}"));
    assert_eq!(esp["fstype"], "vfat", "{json:#}");
    let root = find("root").unwrap_or_else(|| panic!("no root in {json:#}"));
    assert_eq!(root["partition_label"], "ROOT-A", "{json:#}");
    assert_eq!(root["fstype"], "squashfs", "{json:#}");
    assert_eq!(root["architecture"], "x86-64", "{json:#}");
    Ok(())
}

#[test]
fn same_inputs_build_byte_identical_images() -> Result {
    let dir = env::fresh_dir("same_inputs_build_byte_identical_images")?;
    let first = build_image(&dir.join("first"))?;
    let second = build_image(&dir.join("second"))?;
    let (a, b) = (sha256(&first)?, sha256(&second)?);
    assert_eq!(
        a,
        b,
        "two builds from the same inputs differ:\n  {a}  {}\n  {b}  {}",
        first.display(),
        second.display()
    );
    Ok(())
}

/// One image-builder run with the inputs `cargo xtask test` used.
fn build_image(out: &Path) -> std::result::Result<PathBuf, HarnessError> {
    std::fs::create_dir_all(out).map_err(|e| HarnessError::Io {
        action: "cannot create",
        path: out.into(),
        source: e,
    })?;
    let printed = stdout(
        Command::new(env::input(env::BUILDER_BIN)?)
            .arg("build")
            .arg(env::input(env::SPEC)?)
            .arg("--out")
            .arg(out)
            .arg("--init")
            .arg(env::input(env::INIT_BIN)?)
            .arg("--agent")
            .arg(env::input(env::AGENT_BIN)?)
            .arg("--artifacts")
            .arg(env::input(env::ARTIFACTS_DIR)?)
            .arg("--lock")
            .arg(env::input(env::LOCK)?),
    )?;
    let raw = std::fs::read_dir(out)
        .map_err(|e| HarnessError::Io {
            action: "cannot list",
            path: out.into(),
            source: e,
        })?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "raw"));
    raw.ok_or_else(|| HarnessError::Disk {
        image: out.into(),
        message: format!("the builder left no .raw image; it printed:\n{printed}"),
    })
}

/// sha256sum: a debug-built hasher would take minutes over a 5 GiB image.
fn sha256(path: &Path) -> std::result::Result<String, HarnessError> {
    let out = stdout(Command::new("sha256sum").arg(path))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}
