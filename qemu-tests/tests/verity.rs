//! dm-verity over the root, under the real boot chain: a root whose bytes
//! do not match the root hash on its boot entry never reaches the agent.
//! Each test boots a sparse copy of the test image with bytes of ROOT-A's
//! squashfs flipped (the shared image is never written).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use caisson_layout::{CaissonParams, KernelCmdline, RootVerity};
use qemu_tests::{disk, env, tools, Boot, HarnessError, Vm, VmOptions};

type Result = std::result::Result<(), HarnessError>;

/// OVMF + systemd-boot + kernel to init under TCG, with other VMs about.
const TO_INIT: Duration = Duration::from_secs(180);
const NEXT_STEP: Duration = Duration::from_secs(60);
/// init reboots 5 s after its FATAL line; -no-reboot turns that into an exit.
const TO_EXIT: Duration = Duration::from_secs(30);
const BLOCK: u64 = 4096;

fn is_agent_banner(line: &str) -> bool {
    line.contains("node-agent ") && line.contains(" running as PID 1")
}

/// `<work>/<name>/corrupt.raw`: a copy of the test image that keeps its
/// holes, so it costs the image's data, not its 5 GiB.
fn sparse_copy(name: &str) -> std::result::Result<(PathBuf, disk::Partition), HarnessError> {
    let image = env::test_image()?;
    let dir = env::fresh_dir(&format!("{name}.disk"))?;
    let copy = dir.join("corrupt.raw");
    tools::run(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&image)
            .arg(&copy),
    )?;
    let root = disk::partition(&copy, "ROOT-A")?;
    Ok((copy, root))
}

/// Flip the lowest bit of the byte at `offset`.
fn flip(image: &Path, offset: u64) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[byte[0] ^ 1]).unwrap();
}

/// The squashfs superblock's `inode_table_start`: everything before it
/// (after the superblock's block) is file data, which mounting never reads.
fn inode_table_start(image: &Path, root: &disk::Partition) -> u64 {
    let mut f = std::fs::File::open(image).unwrap();
    let mut sb = [0u8; 96];
    f.seek(SeekFrom::Start(root.offset())).unwrap();
    f.read_exact(&mut sb).unwrap();
    assert_eq!(&sb[..4], b"hsqs", "ROOT-A does not start with a squashfs");
    u64::from_le_bytes(sb[64..72].try_into().unwrap())
}

fn assert_never_reached_the_agent(vm: &mut Vm) {
    let console = vm.console_text();
    assert!(
        !console.lines().any(is_agent_banner),
        "the agent started on a corrupted root:\n{}",
        vm.tail()
    );
    assert!(
        !console.contains("Kernel panic"),
        "the machine must restart, not panic:\n{}",
        vm.tail()
    );
}

#[test]
fn corrupt_root_read_while_mounting_is_fatal_in_init_and_reboots() -> Result {
    let (image, root) = sparse_copy("verity_corrupt_superblock_block")?;
    // Inside the squashfs's first 4 KiB block but past its 96-byte
    // superblock: squashfs itself would mount this; only verity notices.
    flip(&image, root.offset() + 3000);
    let mut opts = VmOptions::new("verity_corrupt_superblock_block");
    opts.image = Some(image);
    opts.network = false;
    let mut vm = Vm::start(opts)?;
    vm.wait_for_line("caisson-init: dm-verity table:", TO_INIT)?;
    let fatal = vm.wait_for_line("caisson-init: FATAL:", NEXT_STEP)?;
    assert!(
        fatal.contains("failed dm-verity verification") && fatal.contains("EIO"),
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
        console.contains("device-mapper: verity:") && console.contains("data block 0 is corrupted"),
        "the kernel names the bad block:\n{}",
        vm.tail()
    );
    assert_never_reached_the_agent(&mut vm);
    Ok(())
}

#[test]
fn corrupt_file_data_read_after_switch_root_restarts_the_machine() -> Result {
    let (image, root) = sparse_copy("verity_corrupt_file_data")?;
    // One bit in every block of file data, none in the squashfs tables:
    // the mount succeeds, and exec of the agent reads a bad block.
    let data_end = inode_table_start(&image, &root) / BLOCK;
    assert!(data_end > 16, "implausible inode table start");
    for block in 1..data_end - 1 {
        flip(&image, root.offset() + block * BLOCK + BLOCK / 2);
    }
    let mut opts = VmOptions::new("verity_corrupt_file_data");
    opts.image = Some(image);
    opts.network = false;
    let mut vm = Vm::start(opts)?;
    vm.wait_for_line("caisson-init: root verified by dm-verity", TO_INIT)?;
    vm.wait_for_line("caisson-init: switching root", NEXT_STEP)?;
    vm.wait_for("the kernel's dm-verity corruption report", NEXT_STEP, |l| {
        l.contains("device-mapper: verity:") && l.contains("is corrupted")
    })?;
    vm.wait_for_line("dm-verity device corrupted", NEXT_STEP)?;
    let status = vm.wait_for_exit(TO_EXIT)?;
    assert!(
        status.success(),
        "QEMU exited with {status}:\n{}",
        vm.tail()
    );
    assert_never_reached_the_agent(&mut vm);
    Ok(())
}

#[test]
fn entry_without_caisson_verity_is_refused_and_reboots() -> Result {
    // Kernel and initrd from the image's ESP, booted directly so the command
    // line can leave out caisson.verity.
    let image = env::test_image()?;
    let files = env::fresh_dir("verity_unspecified.files")?;
    let esp = disk::partition(&image, "ESP")?;
    let root = disk::partition(&image, "ROOT-A")?;
    let (kernel, initrd) = (files.join("vmlinuz"), files.join("initrd"));
    tools::mcopy_out(&image, esp.offset(), "a/vmlinuz", &kernel)?;
    tools::mcopy_out(&image, esp.offset(), "a/initrd", &initrd)?;
    let mut opts = VmOptions::new("verity_unspecified");
    opts.boot = Boot::DirectKernel {
        kernel,
        initrd,
        append: format!(
            "console=ttyS0 caisson.slot=a caisson.root=PARTUUID={}",
            root.unique_guid
        ),
    };
    opts.network = false;
    let mut vm = Vm::start(opts)?;
    let fatal = vm.wait_for_line("caisson-init: FATAL:", TO_INIT)?;
    assert!(
        fatal.contains("no caisson.verity") && fatal.contains("caisson.verity=off"),
        "{fatal}"
    );
    let status = vm.wait_for_exit(TO_EXIT)?;
    assert!(
        status.success(),
        "QEMU exited with {status}:\n{}",
        vm.tail()
    );
    assert_never_reached_the_agent(&mut vm);
    Ok(())
}

#[test]
fn veritysetup_accepts_root_a_with_the_parameters_of_its_boot_entry() -> Result {
    // The independent check, end to end: the options line systemd-boot
    // will pass, and the partition as written, judged by cryptsetup.
    let image = env::test_image()?;
    let dir = env::fresh_dir("verity_veritysetup")?;
    let esp = disk::partition(&image, "ESP")?;
    let entry = dir.join("entry.conf");
    let listing = tools::stdout(
        Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-b")
            .arg("-i")
            .arg(tools::mtools_image(&image, esp.offset()))
            .arg("::loader/entries"),
    )?;
    let name = listing
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .find(|n| n.starts_with("caisson-") && n.ends_with("-a.conf"))
        .unwrap_or_else(|| panic!("no slot A entry on the ESP:\n{listing}"));
    tools::mcopy_out(
        &image,
        esp.offset(),
        &format!("loader/entries/{name}"),
        &entry,
    )?;
    let text = std::fs::read_to_string(&entry).unwrap();
    let options = text
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap_or_else(|| panic!("no options line in the entry:\n{text}"));
    let params = CaissonParams::from_cmdline(&KernelCmdline::parse(options)).unwrap();
    let Some(RootVerity::Verified(verity)) = params.verity else {
        panic!("slot A's entry does not carry a root hash: {options}")
    };
    let part = disk::partition(&image, "ROOT-A")?;
    let root = disk::extract(&image, &part, &dir.join("ROOT-A.img"))?;
    let verify = tools::run_unchecked(
        Command::new("veritysetup")
            .arg("verify")
            .arg(format!("--hash-offset={}", verity.hash_offset))
            .arg(&root)
            .arg(&root)
            .arg(&verity.root_hash),
    )?;
    assert!(
        verify.status.success(),
        "veritysetup verify refused ROOT-A with the entry's root hash: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let dump = tools::stdout(
        Command::new("veritysetup")
            .arg("dump")
            .arg(format!("--hash-offset={}", verity.hash_offset))
            .arg(&root),
    )?;
    assert!(
        dump.contains(&verity.salt),
        "superblock salt differs from the entry's:\n{dump}"
    );
    Ok(())
}
