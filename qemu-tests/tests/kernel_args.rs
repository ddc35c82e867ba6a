//! `kernel.args` of the machine config, end to end: applied through the API,
//! written by the agent into the running slot's boot entry on the ESP, and
//! on the kernel's command line after a reboot through the API.

use std::time::Duration;

use qemu_tests::nodectl::ApiNode;
use qemu_tests::{HarnessError, VmOptions};

type Outcome<T = ()> = std::result::Result<T, HarnessError>;

/// Boot to a reachable API under TCG on shared cores.
const TO_API: Duration = Duration::from_secs(240);
const NEXT_STEP: Duration = Duration::from_secs(60);
const HOSTNAME: &str = "qemu-args-1";
/// Harmless arguments the kernel accepts (caisson.* ones are refused by the
/// config's validation).
const ARGS: [&str; 2] = ["nowatchdog", "printk.devkmsg=on"];

/// In a module so that `cargo xtask test kernel_args` selects these tests.
mod kernel_args {
    use super::*;

    #[test]
    fn kernel_args_applied_with_mode_reboot_are_in_the_boot_entry_and_on_the_next_kernels_command_line(
    ) -> Outcome {
        let mut opts = VmOptions::new("kernel_args_reboot");
        opts.allow_reboot = true;
        let mut node = ApiNode::start(opts)?;
        let first = node.cluster.config_with(
            &node.ctl.dir().join("first.toml"),
            &format!("[machine]\nhostname = \"{HOSTNAME}\"\n"),
        )?;
        node.apply_first_config(&first, TO_API)?;
        let version = node.json(&["version"])?;
        let image_version = version["image_version"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let slot = version["slot"].as_str().unwrap_or_default().to_string();
        // The builder writes the entry without a boot counter.
        let entry = format!("caisson-{image_version}-{slot}.conf");

        let dmesg = node.ok(&["dmesg"])?;
        let before = command_line(&dmesg).unwrap_or_default();
        for arg in ARGS {
            assert!(!before.contains(arg), "{arg} before the apply: {before}");
        }

        let quoted: Vec<String> = ARGS.iter().map(|a| format!("\"{a}\"")).collect();
        let with_args = node.cluster.config_with(
            &node.ctl.dir().join("args.toml"),
            &format!(
                "[machine]\nhostname = \"{HOSTNAME}\"\n[kernel]\nargs = [{}]\n",
                quoted.join(", ")
            ),
        )?;
        let with_args = with_args.display().to_string();

        // no-reboot refuses: the arguments need one.
        let refused = node.run(
            &["apply-config", "-f", &with_args, "--mode", "no-reboot"],
            qemu_tests::nodectl::CALL,
        )?;
        assert!(
            !refused.success() && refused.output().contains("kernel.args"),
            "no-reboot must refuse kernel.args:\n{}",
            refused.output()
        );

        let applied = node.ok(&["apply-config", "-f", &with_args, "--mode", "reboot"])?;
        let said =
            format!("kernel.args: written to the boot entry {entry}; effective after a reboot");
        assert!(
            applied.contains(&said),
            "the apply must name the entry, under its own name:\n{applied}"
        );
        node.vm.wait_for_line(
            &format!(
                "boot entry: wrote kernel.args [{}] to {entry}",
                ARGS.join(" ")
            ),
            NEXT_STEP,
        )?;
        node.vm.wait_for_line("shutdown: rebooting", NEXT_STEP)?;
        node.vm
            .wait_for("the agent banner after the reboot", TO_API, |l| {
                l.contains("node-agent ") && l.contains(" running as PID 1")
            })?;
        node.vm
            .wait_for_line("config: using the machine config from STATE", NEXT_STEP)?;
        node.vm.wait_for_line("api: serving mTLS", NEXT_STEP)?;
        node.until_ok(&["version"], TO_API)?;

        let dmesg = node.ok(&["dmesg"])?;
        let after = command_line(&dmesg).unwrap_or_default();
        for arg in ARGS {
            assert!(
                after.split_whitespace().any(|w| w == arg),
                "{arg} missing from the kernel's command line after the reboot: {after}"
            );
        }
        assert!(after.contains("caisson.slot="), "{after}");
        // The boot that runs with them has nothing left to write.
        let console = node.vm.console_text();
        let after_reboot = console
            .rsplit_once("shutdown: rebooting")
            .map_or("", |(_, rest)| rest);
        assert!(
            !after_reboot.contains("boot entry: wrote"),
            "the entry was rewritten again at boot:\n{}",
            node.vm.tail()
        );
        assert!(!console.contains("panicked"), "{}", node.vm.tail());
        Ok(())
    }
}

/// The kernel's `Command line: …` line of a dmesg listing.
fn command_line(dmesg: &str) -> Option<String> {
    dmesg
        .lines()
        .find_map(|l| l.split_once("Command line: "))
        .map(|(_, rest)| rest.trim().to_string())
}
