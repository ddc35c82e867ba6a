//! Live (diskless) boot over PXE, as bare metal boots from the network:
//! SeaBIOS (QEMU's default firmware) runs the NIC's iPXE ROM, which gets
//! `boot.ipxe` from QEMU's built-in TFTP server serving the builder's `pxe`
//! output (`$CAISSON_TEST_PXE_DIR`, built with the test image), then the
//! kernel and the initramfs that carries the root image. No disk at all.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use qemu_tests::nodectl::{ApiNode, CALL};
use qemu_tests::{env, Boot, HarnessError, Vm, VmOptions};

type Outcome<T = ()> = std::result::Result<T, HarnessError>;

/// SeaBIOS + iPXE + TFTP of ~75 MiB + kernel + agent under TCG, with
/// another VM sharing the two cores.
const TO_API: Duration = Duration::from_secs(300);
const NEXT_STEP: Duration = Duration::from_secs(60);
/// init reboots 5 s after its FATAL line; -no-reboot turns that into an exit.
const TO_EXIT: Duration = Duration::from_secs(30);
/// The initramfs holds the root image twice at its peak (the loaded
/// archive and the unpacked file), on top of the kernel and the agent.
const MEMORY_MIB: u32 = 2048;
const HOSTNAME: &str = "pxe-live-1";
/// Where the pxe output's initramfs carries the root image.
const ROOT_MEMBER: &[u8] = b"caisson/root.img\0";

fn pxe_options(name: &str, tftp_dir: PathBuf) -> VmOptions {
    let mut opts = VmOptions::new(name);
    opts.memory_mib = MEMORY_MIB;
    opts.boot = Boot::Pxe {
        tftp_dir,
        bootfile: "boot.ipxe".into(),
    };
    opts
}

fn is_agent_banner(line: &str) -> bool {
    line.contains("node-agent ") && line.contains(" running as PID 1")
}

/// In a module so that `cargo xtask test pxe` selects these tests.
mod pxe {
    use super::*;

    /// The whole live path: iPXE over TFTP → init binds the initramfs's
    /// root image to a loop device and verifies it with dm-verity → the
    /// agent puts STATE and DATA in memory and serves the maintenance API
    /// → a first config applied with `--insecure` lands on the tmpfs STATE
    /// → upgrades and rollback are refused (there is no slot).
    #[test]
    fn pxe_boots_live_with_the_root_verified_from_the_initramfs_and_takes_a_config_into_memory(
    ) -> Outcome {
        let pxe_dir = env::input(env::PXE_DIR)?;
        let mut node = ApiNode::start(pxe_options("pxe_live_boot", pxe_dir))?;
        let config = node.cluster.config_with(
            &node.ctl.dir().join("live.toml"),
            &format!("[machine]\nhostname = \"{HOSTNAME}\"\n"),
        )?;
        let config = config.display().to_string();

        let kernel = node.vm.wait_for_line("Linux version", TO_API)?;
        let at_kernel = node.vm.elapsed();
        assert!(!kernel.is_empty());
        node.vm
            .wait_for("the live boot's command line", NEXT_STEP, |l| {
                l.contains("Command line:")
                    && l.contains("caisson.root=initrd:/caisson/root.img")
                    && l.contains("caisson.live")
            })?;
        node.vm.wait_for_line(
            "caisson-init: root is /dev/loop0 (loop over /caisson/root.img from the initramfs)",
            NEXT_STEP,
        )?;
        let verified = node
            .vm
            .wait_for_line("caisson-init: root verified by dm-verity", NEXT_STEP)?;
        assert!(
            verified.contains("from the initramfs image /caisson/root.img"),
            "{verified}"
        );
        node.vm
            .wait_for("the agent's banner", NEXT_STEP, is_agent_banner)?;
        let at_agent = node.vm.elapsed();
        node.vm
            .wait_for_line("live: STATE and DATA are in memory", NEXT_STEP)?;
        node.vm.wait_for_line(
            "state: mounted tmpfs on /run/caisson/state (live: in memory)",
            NEXT_STEP,
        )?;
        node.vm
            .wait_for_line("data: mounted tmpfs on /var (live: in memory)", NEXT_STEP)?;

        let fp = node.wait_for_maintenance(NEXT_STEP)?;
        let insecure = ["--insecure", "--fingerprint", fp.as_str()];
        let version = node.until_ok(
            &[&["-o", "json"][..], &insecure[..], &["version"]].concat(),
            TO_API,
        )?;
        let at_api = node.vm.elapsed();
        eprintln!(
            "pxe: QEMU start → kernel {:.1} s, → agent {:.1} s, → maintenance API answering {:.1} s (TCG, {} MiB)",
            at_kernel.as_secs_f64(),
            at_agent.as_secs_f64(),
            at_api.as_secs_f64(),
            MEMORY_MIB
        );
        let version =
            qemu_tests::nodectl::json_result(&version).map_err(|message| HarnessError::Output {
                command: "nodectl version".into(),
                message,
            })?;
        assert_eq!(version["live"], true, "{version}");
        assert_eq!(version["maintenance"], true, "{version}");
        assert_eq!(version["slots"], serde_json::json!([]), "{version}");

        node.ok(&[&insecure[..], &["apply-config", "-f", &config]].concat())?;
        node.vm.wait_for(
            "a server certificate for the configured host name",
            NEXT_STEP,
            |l| l.contains("api: serving mTLS") && l.contains(HOSTNAME),
        )?;
        node.until_ok(&["version"], NEXT_STEP)?;
        let version = node.json(&["version"])?;
        assert_eq!(version["hostname"], HOSTNAME, "{version}");
        assert_eq!(version["maintenance"], false, "{version}");
        assert_eq!(version["live"], true, "{version}");
        let table = node.ok(&["version"])?;
        assert!(table.contains("normal, live"), "{table}");
        // Read back from the tmpfs STATE it was committed to.
        let saved = node.ok(&["get", "config"])?;
        assert!(saved.contains(HOSTNAME), "{saved}");

        let upgrade = node.run(
            &["upgrade", "--url", "http://10.0.2.2:9/caisson.bundle"],
            CALL,
        )?;
        assert!(
            !upgrade.success() && upgrade.output().contains("booted live"),
            "an upgrade of a live node must be refused:\n{}",
            upgrade.output()
        );
        let rollback = node.run(&["rollback"], CALL)?;
        assert!(
            !rollback.success() && rollback.output().contains("no A/B slot"),
            "a rollback of a live node must be refused:\n{}",
            rollback.output()
        );

        let console = node.vm.console_text();
        assert!(
            console.contains("upgrade: live boot: no boot entries to read, no slot on trial"),
            "the trial watcher must not look for an ESP:\n{}",
            node.vm.tail()
        );
        for never in [
            "/dev/vda",
            "/dev/sda",
            "/dev/nvme",
            "Kernel panic",
            "panicked",
        ] {
            assert!(
                !console.contains(never),
                "a diskless live boot mentions {never:?}:\n{}",
                node.vm.tail()
            );
        }
        Ok(())
    }

    /// One bit flipped in the root image inside a copy of the initramfs:
    /// the kernel unpacks it as before, but dm-verity refuses the first
    /// block the mount reads, init says so in one FATAL line naming the
    /// loop device and its file, and nothing is mounted or started.
    #[test]
    fn a_tampered_root_image_in_the_pxe_initramfs_fails_dm_verity_and_nothing_mounts() -> Outcome {
        let pxe_dir = env::input(env::PXE_DIR)?;
        let copy = env::fresh_dir("pxe_tampered_root.tftp")?;
        for entry in
            std::fs::read_dir(&pxe_dir).map_err(HarnessError::io("cannot list", &pxe_dir))?
        {
            let from = entry
                .map_err(HarnessError::io("cannot list", &pxe_dir))?
                .path();
            if let Some(name) = from.file_name() {
                std::fs::copy(&from, copy.join(name))
                    .map_err(HarnessError::io("cannot copy", &from))?;
            }
        }
        let initramfs = copy.join("initramfs");
        let root_at = root_image_offset(&initramfs);
        // Inside the squashfs's first 4 KiB block, past its 96-byte
        // superblock: squashfs itself would mount this; only verity notices.
        flip(&initramfs, root_at + 3000);

        let mut vm = Vm::start(pxe_options("pxe_tampered_root", copy))?;
        vm.wait_for_line(
            "caisson-init: root is /dev/loop0 (loop over /caisson/root.img from the initramfs)",
            TO_API,
        )?;
        let fatal = vm.wait_for_line("caisson-init: FATAL:", NEXT_STEP)?;
        assert!(
            fatal.contains("failed dm-verity verification")
                && fatal.contains("/dev/loop0 (loop over /caisson/root.img from the initramfs)")
                && fatal.contains("EIO"),
            "{fatal}"
        );
        let status = vm.wait_for_exit(TO_EXIT)?;
        assert!(
            status.success(),
            "QEMU exited with {status}:\n{}",
            vm.tail()
        );
        let console = vm.console_text();
        assert!(
            console.contains("data block 0 is corrupted"),
            "the kernel names the bad block:\n{}",
            vm.tail()
        );
        for never in ["root verified by dm-verity", "switching root"] {
            assert!(
                !console.contains(never),
                "{never:?} after a failed verification:\n{}",
                vm.tail()
            );
        }
        assert!(
            !console.lines().any(is_agent_banner) && !console.contains("Kernel panic"),
            "the agent must never start on a tampered root, and init must not panic:\n{}",
            vm.tail()
        );
        Ok(())
    }
}

/// Where `caisson/root.img`'s bytes start in the initramfs: after the disk
/// initrd (zstd, where the name cannot appear as is), the newc header of
/// that member, whose name, like its data, is 4-byte aligned.
fn root_image_offset(initramfs: &Path) -> u64 {
    let bytes = std::fs::read(initramfs).unwrap();
    let name_at = bytes
        .windows(ROOT_MEMBER.len())
        .position(|w| w == ROOT_MEMBER)
        .expect("the initramfs has no caisson/root.img member");
    let header = name_at - 110;
    assert_eq!(&bytes[header..header + 6], b"070701", "not a newc header");
    let field = |i: usize| {
        let hex = std::str::from_utf8(&bytes[header + 6 + 8 * i..header + 14 + 8 * i]).unwrap();
        u64::from_str_radix(hex, 16).unwrap()
    };
    let (size, namesize) = (field(6), field(11));
    assert_eq!(namesize as usize, ROOT_MEMBER.len());
    let data = (header as u64 + 110 + namesize).next_multiple_of(4);
    assert_eq!(
        &bytes[data as usize..data as usize + 4],
        b"hsqs",
        "root.img is not a squashfs"
    );
    assert!(data + size <= bytes.len() as u64);
    data
}

/// Flip the lowest bit of the byte at `offset`.
fn flip(file: &Path, offset: u64) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[byte[0] ^ 1]).unwrap();
}
