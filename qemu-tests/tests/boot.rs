//! Booting the built image under QEMU. The VMs of this file run in parallel
//! (`--test-threads=2`), each on its own overlay.

use std::time::Duration;

use caisson_layout::paths::{DATA_MOUNT, STATE_MOUNT};
use qemu_tests::{disk, env, tools, Boot, HarnessError, Vm, VmOptions};

type Result = std::result::Result<(), HarnessError>;

/// OVMF + systemd-boot + kernel + init + agent under TCG takes 12-20 s alone;
/// two VMs share two cores with whatever else runs.
const TO_BANNER: Duration = Duration::from_secs(180);
const NEXT_STEP: Duration = Duration::from_secs(60);

fn is_banner_for_slot_a(line: &str) -> bool {
    line.contains("node-agent ") && line.contains(" running as PID 1 (slot a)")
}

/// Neither the kernel nor stage 1 gave up along the way.
fn assert_no_fatal_errors(vm: &mut Vm) {
    let console = vm.console_text();
    for bad in ["Kernel panic", "caisson-init: FATAL"] {
        assert!(
            !console.contains(bad),
            "the console shows {bad:?}:\n{}",
            vm.tail()
        );
    }
}

#[test]
fn boots_under_ovmf_to_agent_banner_with_state_and_data_mounted() -> Result {
    let mut vm = Vm::start(VmOptions::new("boots_under_ovmf_to_agent_banner"))?;
    vm.wait_for_line("caisson-init: root verified by dm-verity", TO_BANNER)?;
    vm.wait_for(
        "the agent banner for slot a",
        TO_BANNER,
        is_banner_for_slot_a,
    )?;
    for phase in ["coldplug", "state", "data"] {
        vm.wait_for_line(&format!("phase {phase}: ok"), NEXT_STEP)?;
    }
    assert_no_fatal_errors(&mut vm);
    Ok(())
}

#[test]
fn acpi_power_button_shuts_down_in_order_and_qemu_exits() -> Result {
    let mut vm = Vm::start(VmOptions::new("acpi_power_button_shuts_down"))?;
    vm.wait_for_line("boot: ready", TO_BANNER)?;
    // A press before the agent listens on the input devices would be lost
    // (the agent says "input: watching /dev/input/eventN for the power button").
    if !vm.console_text().contains("for the power button") {
        vm.wait_for_line("for the power button", NEXT_STEP)?;
    }
    vm.power_button()?;
    vm.wait_for_line("shutdown: power-off requested by power button", NEXT_STEP)?;
    vm.wait_for_line("shutdown: powering off", NEXT_STEP)?;
    let status = vm.wait_for_exit(Duration::from_secs(30))?;
    assert!(
        status.success(),
        "QEMU exited with {status}:\n{}",
        vm.tail()
    );

    // Between the request and the power-off, DATA and STATE were unmounted.
    let console = vm.console_text();
    let shutdown: Vec<&str> = console
        .lines()
        .skip_while(|l| !l.contains("shutdown: power-off requested"))
        .take_while(|l| !l.contains("shutdown: powering off"))
        .collect();
    for (what, mount) in [("DATA", DATA_MOUNT), ("STATE", STATE_MOUNT)] {
        assert!(
            shutdown
                .iter()
                .any(|l| l.contains("shutdown: unmounted")
                    && (l.contains(mount) || l.contains(what))),
            "no `shutdown: unmounted {mount}` before powering off; the shutdown said:\n{}",
            shutdown.join("\n")
        );
    }
    assert_no_fatal_errors(&mut vm);
    Ok(())
}

#[test]
fn init_reports_missing_root_and_reboots() -> Result {
    // Kernel and initrd straight from the image's ESP, booted without firmware
    // so the command line can name a root that does not exist.
    let image = env::test_image()?;
    let files = env::fresh_dir("init_reports_missing_root.files")?;
    let esp = disk::partition(&image, "ESP")?;
    let (kernel, initrd) = (files.join("vmlinuz"), files.join("initrd"));
    tools::mcopy_out(&image, esp.offset(), "a/vmlinuz", &kernel)?;
    tools::mcopy_out(&image, esp.offset(), "a/initrd", &initrd)?;

    let mut opts = VmOptions::new("init_reports_missing_root");
    opts.boot = Boot::DirectKernel {
        kernel,
        initrd,
        append: "console=ttyS0 caisson.slot=a caisson.root=PARTUUID=00000000-0000-0000-0000-000000000001 caisson.rootwait=3 caisson.verity=off"
            .into(),
    };
    opts.network = false;
    let mut vm = Vm::start(opts)?;
    vm.wait_for_line("caisson-init: FATAL: root partition", TO_BANNER)?;
    vm.wait_for_line("block devices seen", NEXT_STEP)?;
    // init reboots after 5 s; -no-reboot turns the reboot into QEMU's exit.
    let status = vm.wait_for_exit(Duration::from_secs(30))?;
    assert!(
        status.success(),
        "QEMU exited with {status}:\n{}",
        vm.tail()
    );
    assert!(
        !vm.console_text().contains("Kernel panic"),
        "init must reboot, not panic:\n{}",
        vm.tail()
    );
    Ok(())
}
