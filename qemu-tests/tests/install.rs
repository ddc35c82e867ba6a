//! Install to disk under QEMU, USB-style: the built raw image is disk 1
//! (the "stick", read through an overlay), empty qcow2 disks are the
//! targets. A config with `[install]` applied in maintenance mode makes the
//! node write the whole layout to its target, verify it and reboot; the
//! target then boots alone under OVMF with that config on its STATE, and
//! DATA grows to the disk's end on that first boot.
//!
//! The image is built here, once per test binary, from the test spec with
//! `[disk] root_mib = 1024`: the test spec's 2 GiB slots (a 4994 MiB
//! layout) do not fit the 4 GiB target the issue measures, a 1 GiB slot
//! layout (2946 MiB) does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use qemu_tests::nodectl::{ApiNode, Nodectl, API_PORT, CALL};
use qemu_tests::process::retry;
use qemu_tests::qemu::ImageFormat;
use qemu_tests::{env, tools, HarnessError, Vm, VmOptions};

type Outcome<T = ()> = std::result::Result<T, HarnessError>;

const MIB: u64 = 1 << 20;
/// Boot to the maintenance API under TCG, two VMs sharing two cores.
const TO_API: Duration = Duration::from_secs(300);
/// From the apply to the installer's reboot: ROOT-A, ESP, templates,
/// read-back, under TCG.
const TO_INSTALLED: Duration = Duration::from_secs(600);
const NEXT_STEP: Duration = Duration::from_secs(120);
/// The layout of the image this file builds: ESP 512, two 1024 MiB slots,
/// STATE 128 and DATA 256 MiB, each after the first MiB.
const DATA_START_MIB: u64 = 1 + 512 + 1024 + 1024 + 128;

/// The test spec, its relative paths made absolute, with 1 GiB slots and
/// only the raw output.
fn derive_spec(spec: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(spec).map_err(|e| format!("{}: {e}", spec.display()))?;
    let mut table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", spec.display()))?;
    let base = spec.parent().unwrap_or(Path::new("."));
    for (section, key) in [
        ("artifacts", "lock"),
        ("artifacts", "dir"),
        ("programs", "init"),
        ("programs", "agent"),
        ("image", "config"),
    ] {
        let value = table
            .get_mut(section)
            .and_then(|t| t.as_table_mut())
            .and_then(|t| t.get_mut(key));
        if let Some(value) = value {
            if let Some(p) = value.as_str().filter(|p| !Path::new(p).is_absolute()) {
                *value = toml::Value::String(base.join(p).display().to_string());
            }
        }
    }
    let disk = table
        .entry("disk")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(disk) = disk.as_table_mut() {
        disk.insert("root_mib".into(), toml::Value::Integer(1024));
    }
    let mut outputs = toml::Table::new();
    outputs.insert(
        "formats".into(),
        toml::Value::Array(vec![toml::Value::String("raw".into())]),
    );
    table.insert("outputs".into(), toml::Value::Table(outputs));
    let out = toml::to_string(&table).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Written by qemu-tests/tests/install.rs: {} with 1 GiB slots.\n{out}",
        spec.display()
    ))
}

fn build_image() -> Outcome<PathBuf> {
    let dir = env::fresh_dir("install.image")?;
    let spec_in = env::input(env::SPEC)?;
    let text = derive_spec(&spec_in).map_err(|message| HarnessError::Output {
        command: format!("deriving the install spec from {}", spec_in.display()),
        message,
    })?;
    let out = env::build_derived_image(&dir, &text, "install test image")?;
    let raw = out.join("caisson-0.1.0.raw");
    if !raw.is_file() {
        return Err(HarnessError::Output {
            command: format!("image-builder build {}", dir.join("spec.toml").display()),
            message: format!("no {} was written", raw.display()),
        });
    }
    // Only the disk image is booted.
    let _ = std::fs::remove_file(out.join("caisson-0.1.0.bundle"));
    Ok(raw)
}

fn install_image() -> PathBuf {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match IMAGE.get_or_init(|| build_image().map_err(|e| e.to_string())) {
        Ok(p) => p.clone(),
        Err(e) => panic!("building the install test image: {e}"),
    }
}

/// An empty qcow2 disk of `size` (qemu-img's notation: `4G`).
fn empty_disk(dir: &Path, name: &str, size: &str) -> Outcome<PathBuf> {
    let path = dir.join(format!("{name}.qcow2"));
    tools::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg(size),
    )?;
    Ok(path)
}

/// QEMU arguments for one more virtio disk with a serial number, in PCI
/// slot `slot`. QEMU creates the image's `if=virtio` drive after every
/// `-device`, in the first free slot: slots from 0x10 up keep the image
/// first (`vda`) and these disks after it in order (`vdb`, `vdc`).
fn extra_disk(args: &mut Vec<String>, path: &Path, id: &str, serial: &str, slot: u8) {
    args.extend([
        "-drive".to_string(),
        format!(
            "file={},if=none,id={id},format=qcow2",
            path.display().to_string().replace(',', ",,")
        ),
        "-device".to_string(),
        format!("virtio-blk-pci,drive={id},serial={serial},addr={slot:#04x}"),
    ]);
}

/// `install: done in 41.3 s: …` → 41.3
fn done_seconds(line: &str) -> Option<f64> {
    line.split("install: done in ")
        .nth(1)?
        .split(" s")
        .next()?
        .parse()
        .ok()
}

/// `data: grew DATA from 256 to 1406 MiB (…)` → (256, 1406)
fn grew_mib(line: &str) -> Option<(u64, u64)> {
    let rest = line.split("data: grew DATA from ").nth(1)?;
    let (from, rest) = rest.split_once(" to ")?;
    let to = rest.split(" MiB").next()?;
    Some((from.parse().ok()?, to.parse().ok()?))
}

/// `qemu-img convert` to a sparse raw file, for host tools.
fn to_raw(qcow2: &Path, raw: &Path) -> Outcome {
    tools::run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
            .arg(qcow2)
            .arg(raw),
    )
    .map(drop)
}

/// What `sgdisk -p` prints for the disk.
fn sgdisk_print(raw: &Path) -> Outcome<String> {
    tools::stdout(Command::new("sgdisk").arg("-p").arg(raw))
}

/// Apply `config` to a node in maintenance mode and wait for the installer
/// to reboot it (`-no-reboot`: QEMU exits). Returns the console's
/// `install: done` line and the wall time from the apply to QEMU's exit.
fn apply_and_wait_for_install(
    node: &mut ApiNode,
    config: &Path,
    insecure: &[&str],
) -> Outcome<(String, Duration)> {
    let config = config.display().to_string();
    let applied = Instant::now();
    node.ok(&[insecure, &["apply-config", "-f", config.as_str()]].concat())?;
    node.vm
        .wait_for_line("install: target /dev/", TO_INSTALLED)?;
    node.vm.wait_for_line("install: root-a: ", TO_INSTALLED)?;
    node.vm.wait_for_line("install: verify: ", TO_INSTALLED)?;
    let done = node.vm.wait_for_line("install: done in ", TO_INSTALLED)?;
    node.vm
        .wait_for_line("reboot requested by the installer", NEXT_STEP)?;
    node.vm.wait_for_exit(NEXT_STEP)?;
    Ok((done, applied.elapsed()))
}

/// Boot `disk` alone under OVMF (through an overlay) and reach its API with
/// the nodectl whose cluster configured it.
fn boot_installed(name: &str, disk: &Path, ctl_dir: &Path) -> Outcome<(Vm, Nodectl)> {
    let mut opts = VmOptions::new(name);
    opts.image = Some(disk.to_path_buf());
    opts.image_format = ImageFormat::Qcow2;
    opts.forward_ports = vec![API_PORT];
    let vm = Vm::start(opts)?;
    let port = vm.host_port(API_PORT).unwrap_or(API_PORT);
    let ctl = Nodectl::new(
        &env::input(env::NODECTL_BIN)?,
        ctl_dir,
        &format!("127.0.0.1:{port}"),
    );
    Ok((vm, ctl))
}

mod install {
    use super::*;

    /// (a) The USB flow: maintenance → `[install] disk = "/dev/vdb"` →
    /// every step on the console → reboot; the 4 GiB target boots alone,
    /// serves the API with the config (mTLS, its host name), reports that
    /// it runs from the disk it was installed to, and its DATA grew from
    /// 256 MiB to the disk's end (the agent's line, the kernel's EXT4-fs
    /// lines via `nodectl dmesg`, sgdisk on the host).
    #[test]
    fn a_live_node_installs_itself_to_an_empty_4_gib_disk_that_then_boots_with_its_config_and_a_grown_data(
    ) -> Outcome {
        let image = install_image();
        let disks = env::fresh_dir("install_usb.disks")?;
        let target = empty_disk(&disks, "target", "4G")?;
        let mut opts = VmOptions::new("install_usb");
        opts.image = Some(image);
        extra_disk(&mut opts.extra_args, &target, "target", "target-4g", 0x10);
        let mut node = ApiNode::start(opts)?;
        let config = node.cluster.config_with(
            &disks.join("install.toml"),
            "[machine]\nhostname = \"installed-1\"\n\n[install]\ndisk = \"/dev/vdb\"\n",
        )?;
        let fp = node.wait_for_maintenance(TO_API)?;
        let insecure = ["--insecure", "--fingerprint", fp.as_str()];
        node.until_ok(&[&insecure[..], &["version"]].concat(), TO_API)?;
        let (done, wall) = apply_and_wait_for_install(&mut node, &config, &insecure)?;
        let console = node.vm.console_text();
        for step in [
            "payload", "geometry", "zero", "esp", "root-a", "state", "data", "gpt", "config",
            "verify",
        ] {
            assert!(
                console.contains(&format!("install: {step}: ")),
                "no `install: {step}:` line:\n{}",
                node.vm.tail()
            );
        }
        assert!(console.contains("install: target /dev/vdb (4096 MiB, virtio, model \"-\", serial \"target-4g\") (from install.disk)"));
        let took = done_seconds(&done).unwrap_or(0.0);
        eprintln!(
            "bench: install to a 4 GiB disk: {took:.1} s by the agent's clock, {:.1} s from the apply to QEMU's exit",
            wall.as_secs_f64()
        );
        let ctl_dir = node.ctl.dir().to_path_buf();
        drop(node);

        // The target as written, checked on the host.
        let raw = disks.join("target.raw");
        to_raw(&target, &raw)?;
        let verify = tools::stdout(Command::new("sgdisk").arg("-v").arg(&raw))?;
        assert!(verify.contains("No problems found"), "{verify}");
        let table = sgdisk_print(&raw)?;
        for label in ["ESP", "ROOT-A", "ROOT-B", "STATE", "DATA"] {
            assert!(table.contains(label), "{table}");
        }
        std::fs::remove_file(&raw).map_err(HarnessError::io("cannot remove", &raw))?;

        // The installed disk alone.
        let (mut vm, ctl) = boot_installed("install_usb_installed", &target, &ctl_dir)?;
        let grew = vm.wait_for_line("data: grew DATA from ", TO_API)?;
        // The last MiB boundary before the backup GPT: 4095 MiB.
        assert_eq!(
            grew_mib(&grew),
            Some((256, 4095 - DATA_START_MIB)),
            "{grew}"
        );
        vm.wait_for_line("config: using the machine config from STATE", NEXT_STEP)?;
        vm.wait_for_line("which it was installed to: nothing to install", NEXT_STEP)?;
        let version = retry(TO_API, Duration::from_millis(500), || {
            ctl.ok(&["version"], CALL)
        });
        let version = vm.context(version)?;
        assert!(version.contains("0.1.0"), "{version}");
        let shown = vm.context(ctl.ok(&["get", "config"], CALL))?;
        assert!(
            shown.contains("installed-1") && shown.contains("/dev/vdb"),
            "{shown}"
        );
        let dmesg = vm.context(ctl.ok(&["dmesg"], CALL))?;
        assert!(
            dmesg.contains("EXT4-fs (vda5): resized filesystem to"),
            "the kernel did not grow ext4:\n{dmesg}"
        );
        // The next boot of the same disk (same overlay) grows nothing.
        vm.power_button()?;
        vm.wait_for_exit(NEXT_STEP)?;
        vm.power_on()?;
        vm.wait_for_line("boot: ready", TO_API)?;
        let console = vm.console_text();
        assert!(
            console.contains("phase data: ok") && !console.contains("data: grew DATA"),
            "{console}"
        );
        Ok(())
    }

    /// (b) Two empty disks (4 and 6 GiB) and a selector: one that matches
    /// both is refused with both listed and nothing written; `size = ">=
    /// 5GiB"` picks the 6 GiB disk, which gets the layout, and the 4 GiB
    /// disk stays all zeros (qemu-img compare against a fresh blank disk).
    #[test]
    fn a_disk_selector_writes_only_the_one_disk_it_selects_of_two() -> Outcome {
        let image = install_image();
        let disks = env::fresh_dir("install_selector.disks")?;
        let small = empty_disk(&disks, "small", "4G")?;
        let big = empty_disk(&disks, "big", "6G")?;
        let blank = empty_disk(&disks, "blank", "4G")?;
        let mut opts = VmOptions::new("install_selector");
        opts.image = Some(image);
        extra_disk(&mut opts.extra_args, &small, "small", "small-1", 0x10);
        extra_disk(&mut opts.extra_args, &big, "big", "big-1", 0x11);
        let mut node = ApiNode::start(opts)?;
        let ambiguous = node.cluster.config_with(
            &disks.join("ambiguous.toml"),
            "[install.disk_selector]\ntype = \"virtio\"\n",
        )?;
        node.apply_first_config(&ambiguous, TO_API)?;
        let refused = node
            .vm
            .wait_for_line("install.disk_selector matches 2 disks", NEXT_STEP)?;
        assert!(refused.contains("it must match exactly one"), "{refused}");
        let console = node.vm.console_text();
        assert!(console.contains("serial \"small-1\"") && console.contains("serial \"big-1\""));
        assert!(console.contains("the boot medium /dev/vda is never a candidate"));
        let selective = node.cluster.config_with(
            &disks.join("selective.toml"),
            "[install.disk_selector]\nsize = \">= 5GiB\"\ntype = \"virtio\"\n",
        )?;
        let (done, wall) = apply_and_wait_for_install(&mut node, &selective, &[])?;
        let console = node.vm.console_text();
        assert!(
            console.contains("install: target /dev/vdc (6144 MiB, virtio, model \"-\", serial \"big-1\") (from install.disk_selector)"),
            "{}",
            node.vm.tail()
        );
        eprintln!(
            "bench: install to a 6 GiB disk chosen by selector: {:.1} s by the agent's clock, {:.1} s wall",
            done_seconds(&done).unwrap_or(0.0),
            wall.as_secs_f64()
        );
        drop(node);

        let same = tools::stdout(
            Command::new("qemu-img")
                .args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"])
                .arg(&small)
                .arg(&blank),
        );
        assert!(same.is_ok(), "the 4 GiB disk was written: {same:?}");
        let raw = disks.join("big.raw");
        to_raw(&big, &raw)?;
        let table = sgdisk_print(&raw)?;
        assert!(
            table.contains("ROOT-A") && table.contains("DATA"),
            "{table}"
        );
        let size = std::fs::metadata(&raw)
            .map_err(HarnessError::io("cannot stat", &raw))?
            .len();
        assert_eq!(size, 6144 * MIB);
        std::fs::remove_file(&raw).map_err(HarnessError::io("cannot remove", &raw))?;
        Ok(())
    }
}

#[test]
fn console_lines_parse() {
    assert_eq!(
        done_seconds("[  80.1] install: done in 41.3 s: /dev/vdb is disk x"),
        Some(41.3)
    );
    assert_eq!(
        grew_mib("data: grew DATA from 256 to 1406 MiB (GPT entry and backup header, kernel partition, ext4 online)"),
        Some((256, 1406))
    );
    assert_eq!(grew_mib("data: mounted"), None);
}
