//! The VM disk formats boot. One image is built by the release builder
//! with `[outputs] formats = ["raw", "qcow2", "vmdk"]` (and `vmw_pvscsi` in
//! the initrd, as an OVA needs):
//!
//! - its qcow2, under OVMF on a virtio disk (as OpenStack runs it), reaches
//!   the maintenance API;
//! - its stream-optimized VMDK on the hardware the OVA declares, a pvscsi
//!   disk and a vmxnet3 NIC, reaches the maintenance API too. Debian's OVMF
//!   has no pvscsi driver (vSphere's firmware has), so that VM starts the
//!   image's own kernel and initrd with slot A's boot entry options
//!   directly: what is tested is that init finds and verifies the root on
//!   pvscsi and the agent's network comes up on vmxnet3.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use qemu_tests::nodectl::ApiNode;
use qemu_tests::qemu::{DiskBus, ImageFormat, NicModel};
use qemu_tests::{disk, env, tools, Boot, HarnessError, VmOptions};

type Result = std::result::Result<(), HarnessError>;
type Outcome<T> = std::result::Result<T, HarnessError>;

/// Two VMs may share two cores with whatever else runs.
const TO_API: Duration = Duration::from_secs(240);

/// The built outputs.
#[derive(Debug, Clone)]
struct Built {
    raw: PathBuf,
    qcow2: PathBuf,
    vmdk: PathBuf,
}

/// The test spec with its relative paths made absolute, the pvscsi driver
/// in the initrd and `[outputs] formats = ["raw", "qcow2", "vmdk"]`.
fn derive_spec(spec: &Path) -> std::result::Result<String, String> {
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
    let modules = table
        .get_mut("initrd")
        .and_then(|t| t.get_mut("modules"))
        .and_then(|m| m.as_array_mut())
        .ok_or("the spec has no initrd.modules")?;
    if !modules.iter().any(|m| m.as_str() == Some("vmw_pvscsi")) {
        modules.push("vmw_pvscsi".into());
    }
    let mut outputs = toml::Table::new();
    let formats = ["raw", "qcow2", "vmdk"].map(toml::Value::from);
    outputs.insert("formats".into(), toml::Value::Array(formats.to_vec()));
    table.insert("outputs".into(), toml::Value::Table(outputs));
    let out = toml::to_string(&table).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Written by qemu-tests/tests/formats.rs: {} with vmw_pvscsi, writing raw, qcow2 and vmdk.\n{out}",
        spec.display()
    ))
}

fn build() -> Outcome<Built> {
    let dir = env::fresh_dir("formats.image")?;
    let spec_in = env::input(env::SPEC)?;
    let text = derive_spec(&spec_in).map_err(|message| HarnessError::Output {
        command: format!("deriving the formats spec from {}", spec_in.display()),
        message,
    })?;
    let out = env::build_derived_image(&dir, &text, "formats test image (raw, qcow2, vmdk)")?;
    let find = |ext: &str| -> Outcome<PathBuf> {
        let names: Vec<PathBuf> = std::fs::read_dir(&out)
            .map_err(HarnessError::io("cannot list", &out))?
            .flatten()
            .map(|e| e.path())
            .collect();
        names
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .cloned()
            .ok_or_else(|| HarnessError::Output {
                command: format!("image-builder build {}", dir.join("spec.toml").display()),
                message: format!("no .{ext} in {}: {names:?}", out.display()),
            })
    };
    Ok(Built {
        raw: find("raw")?,
        qcow2: find("qcow2")?,
        vmdk: find("vmdk")?,
    })
}

/// Built once per test binary.
fn built() -> Built {
    static BUILT: OnceLock<std::result::Result<Built, String>> = OnceLock::new();
    match BUILT.get_or_init(|| build().map_err(|e| e.to_string())) {
        Ok(b) => b.clone(),
        Err(e) => panic!("building the formats test image: {e}"),
    }
}

/// Boot to maintenance mode, then answer `nodectl version` over the
/// forwarded API port with the console's fingerprint.
fn reaches_the_maintenance_api(node: &mut ApiNode) -> Result {
    node.vm
        .wait_for_line("caisson-init: root verified by dm-verity", TO_API)?;
    let fingerprint = node.wait_for_maintenance(TO_API)?;
    let version = node.until_ok(
        &["--insecure", "--fingerprint", &fingerprint, "version"],
        TO_API,
    )?;
    assert!(version.contains("0.1.0"), "nodectl version:\n{version}");
    let console = node.vm.console_text();
    for bad in ["Kernel panic", "caisson-init: FATAL"] {
        assert!(!console.contains(bad), "{bad}:\n{}", node.vm.tail());
    }
    Ok(())
}

#[test]
fn the_builders_qcow2_boots_under_ovmf_to_the_maintenance_api() -> Result {
    let built = built();
    let check = tools::stdout(Command::new("qemu-img").arg("check").arg(&built.qcow2))?;
    assert!(check.contains("No errors were found"), "{check}");

    let mut opts = VmOptions::new("formats_qcow2_boots");
    opts.image = Some(built.qcow2);
    opts.image_format = ImageFormat::Qcow2;
    let mut node = ApiNode::start(opts)?;
    reaches_the_maintenance_api(&mut node)
}

#[test]
fn the_builders_vmdk_boots_on_pvscsi_with_vmxnet3_to_the_maintenance_api() -> Result {
    let built = built();
    let info = tools::stdout(Command::new("qemu-img").arg("info").arg(&built.vmdk))?;
    assert!(info.contains("create type: streamOptimized"), "{info}");

    // The kernel, initrd and slot A's options, from the raw image's ESP.
    let files = env::fresh_dir("formats_vmdk_boots.files")?;
    let esp = disk::partition(&built.raw, "ESP")?;
    let (kernel, initrd, entry) = (
        files.join("vmlinuz"),
        files.join("initrd"),
        files.join("entry.conf"),
    );
    tools::mcopy_out(&built.raw, esp.offset(), "a/vmlinuz", &kernel)?;
    tools::mcopy_out(&built.raw, esp.offset(), "a/initrd", &initrd)?;
    tools::mcopy_out(
        &built.raw,
        esp.offset(),
        "loader/entries/caisson-0.1.0-a.conf",
        &entry,
    )?;
    let text = std::fs::read_to_string(&entry).map_err(HarnessError::io("cannot read", &entry))?;
    let options = text
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap_or_else(|| panic!("no options line in slot A's entry:\n{text}"))
        .to_string();

    let mut opts = VmOptions::new("formats_vmdk_boots");
    opts.image = Some(built.vmdk);
    opts.image_format = ImageFormat::Vmdk;
    opts.disk_bus = DiskBus::Pvscsi;
    opts.nic = NicModel::Vmxnet3;
    opts.boot = Boot::DirectKernel {
        kernel,
        initrd,
        append: options,
    };
    let mut node = ApiNode::start(opts)?;
    reaches_the_maintenance_api(&mut node)?;
    let console = node.vm.console_text();
    assert!(
        console.contains("vmw_pvscsi") || console.contains("VMware PVSCSI"),
        "the root disk came through pvscsi: {}",
        node.vm.tail()
    );
    Ok(())
}
