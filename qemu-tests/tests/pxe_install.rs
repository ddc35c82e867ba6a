//! The whole bare-metal path, network to disk: SeaBIOS runs the NIC's iPXE
//! ROM, which gets `boot.ipxe` from QEMU's built-in TFTP server; the node
//! boots live from the builder's `pxe` output, reads its machine config
//! from `caisson.config=http://…` on the kernel command line (an HTTP
//! server in this test), and that config's `[install]` makes it install
//! itself to the empty 8 GiB virtio disk and reboot. The disk then boots
//! alone under OVMF, serves the API over mTLS with that config, and its
//! DATA has grown to the disk's end.
//!
//! The TFTP directory is a copy of `$CAISSON_TEST_PXE_DIR` (kernel and
//! initramfs linked) whose `boot.ipxe` appends the config URL. The shared
//! test image's layout (2 GiB slots) is 4994 MiB, so the target is 8 GiB.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qemu_tests::nodectl::{Nodectl, API_PORT, CALL};
use qemu_tests::process::retry;
use qemu_tests::qemu::ImageFormat;
use qemu_tests::{env, tools, Boot, HarnessError, Vm, VmOptions};

type Outcome<T = ()> = std::result::Result<T, HarnessError>;

/// SeaBIOS + iPXE + TFTP of ~75 MiB + kernel + agent under TCG.
const TO_AGENT: Duration = Duration::from_secs(300);
/// From the config to the installer's reboot: ROOT-A, ESP, templates,
/// read-back, under TCG.
const TO_INSTALLED: Duration = Duration::from_secs(600);
/// OVMF + systemd-boot + kernel + agent + growing DATA under TCG.
const TO_API: Duration = Duration::from_secs(300);
const NEXT_STEP: Duration = Duration::from_secs(120);
/// The initramfs holds the root image twice at its peak.
const MEMORY_MIB: u32 = 2048;
const HOSTNAME: &str = "pxe-installed-1";
/// The shared test image's layout: ESP 512, two 2048 MiB slots, STATE 128
/// and DATA 256 MiB, each after the first MiB.
const DATA_START_MIB: u64 = 1 + 512 + 2048 + 2048 + 128;
const TARGET_MIB: u64 = 8192;

/// An HTTP server in the test answering `GET path` from `files` (the query
/// ignored), 404 otherwise. Records every request line.
struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(files: BTreeMap<String, Vec<u8>>) -> Server {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("bind a port for the test's HTTP server");
        let port = listener.local_addr().expect("its port").port();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                let mut reader = BufReader::new(clone);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                }
                seen.lock().unwrap().push(line.trim().to_string());
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                let (status, body) = match files.get(path) {
                    Some(b) => ("200 OK", b.clone()),
                    None => ("404 Not Found", Vec::new()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let mut stream = stream;
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        Server { port, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A TFTP directory like `pxe` (kernel and initramfs linked, or copied)
/// whose `boot.ipxe` and `cmdline` end with `extra`.
fn pxe_dir_with_args(pxe: &Path, dir: &Path, extra: &str) -> Outcome {
    for name in ["vmlinuz", "initramfs"] {
        let (from, to) = (pxe.join(name), dir.join(name));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(HarnessError::io("cannot copy", &from))?;
        }
    }
    let script_in = pxe.join("boot.ipxe");
    let script =
        std::fs::read_to_string(&script_in).map_err(HarnessError::io("cannot read", &script_in))?;
    let mut kernel_lines = 0;
    let script: String = script
        .lines()
        .map(|l| {
            if l.starts_with("kernel ") {
                kernel_lines += 1;
                format!("{l} {extra}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_eq!(kernel_lines, 1, "{}:\n{script}", script_in.display());
    let cmdline_in = pxe.join("cmdline");
    let cmdline = std::fs::read_to_string(&cmdline_in)
        .map_err(HarnessError::io("cannot read", &cmdline_in))?;
    for (name, text) in [
        ("boot.ipxe", script),
        ("cmdline", format!("{} {extra}\n", cmdline.trim_end())),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(HarnessError::io("cannot write", &path))?;
    }
    Ok(())
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

/// In a module so that `cargo xtask test pxe_install` selects it.
mod pxe_install {
    use super::*;

    /// iPXE over TFTP → live boot → config from the kernel command line's
    /// HTTP URL → install to the empty 8 GiB disk → reboot; the disk alone
    /// under OVMF serves the API over mTLS with the config's host name,
    /// runs from slot A (not live), and grew DATA to the disk's end.
    #[test]
    fn pxe_boots_live_takes_its_config_from_a_cmdline_url_installs_itself_to_an_empty_disk_that_then_boots_with_it(
    ) -> Outcome {
        let pxe = env::input(env::PXE_DIR)?;
        let ctl_dir = env::fresh_dir("pxe_install.nodectl")?;
        let bin = env::input(env::NODECTL_BIN)?;
        let cluster = Nodectl::new(&bin, &ctl_dir, "127.0.0.1:1").gen_cluster()?;
        let config = cluster.config_with(
            &ctl_dir.join("install.toml"),
            &format!("[machine]\nhostname = \"{HOSTNAME}\"\n\n[install]\ndisk = \"/dev/vda\"\n"),
        )?;
        let config_text =
            std::fs::read(&config).map_err(HarnessError::io("cannot read", &config))?;
        let server = Server::start(BTreeMap::from([("/node.toml".to_string(), config_text)]));
        let url = format!("http://10.0.2.2:{}/node.toml", server.port);

        let tftp = env::fresh_dir("pxe_install.tftp")?;
        pxe_dir_with_args(&pxe, &tftp, &format!("caisson.config={url}"))?;
        let disks = env::fresh_dir("pxe_install.disks")?;
        let target = disks.join("target.qcow2");
        tools::run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&target)
                .arg(format!("{TARGET_MIB}M")),
        )?;

        let mut opts = VmOptions::new("pxe_install_live");
        opts.memory_mib = MEMORY_MIB;
        opts.boot = Boot::Pxe {
            tftp_dir: tftp,
            bootfile: "boot.ipxe".into(),
        };
        // The only disk, written in place (no overlay): /dev/vda.
        opts.extra_args.extend([
            "-drive".to_string(),
            format!(
                "file={},if=none,id=target,format=qcow2",
                target.display().to_string().replace(',', ",,")
            ),
            "-device".to_string(),
            "virtio-blk-pci,drive=target,serial=target-8g".to_string(),
        ]);
        let mut vm = Vm::start(opts)?;
        vm.wait_for("the live boot's command line with the URL", TO_AGENT, |l| {
            l.contains("Command line:") && l.contains("caisson.live") && l.contains(&url)
        })?;
        let found = vm.wait_for_line(
            "config: found a machine config in the kernel command line's caisson.config URL",
            TO_AGENT,
        )?;
        assert!(found.contains(&url), "{found}");
        let at_config = vm.elapsed();
        let target_line = vm.wait_for_line("install: target /dev/", NEXT_STEP)?;
        assert!(
            target_line.contains("install: target /dev/vda (8192 MiB, virtio, model \"-\", serial \"target-8g\") (from install.disk)"),
            "{target_line}"
        );
        vm.wait_for_line("install: root-a: ", TO_INSTALLED)?;
        vm.wait_for_line("install: verify: ", TO_INSTALLED)?;
        let done = vm.wait_for_line("install: done in ", TO_INSTALLED)?;
        let at_done = vm.elapsed();
        vm.wait_for_line("reboot requested by the installer", NEXT_STEP)?;
        let status = vm.wait_for_exit(NEXT_STEP)?;
        assert!(
            status.success(),
            "QEMU exited with {status}:\n{}",
            vm.tail()
        );
        let console = vm.console_text();
        assert!(
            console.contains("live: STATE and DATA are in memory"),
            "{}",
            vm.tail()
        );
        for step in [
            "payload", "geometry", "zero", "esp", "root-a", "state", "data", "gpt", "config",
            "verify",
        ] {
            assert!(
                console.contains(&format!("install: {step}: ")),
                "no `install: {step}:` line:\n{}",
                vm.tail()
            );
        }
        assert!(
            !console.contains("Kernel panic") && !console.contains("panicked"),
            "{}",
            vm.tail()
        );
        let requests = server.requests();
        assert!(
            !requests.is_empty() && requests.iter().all(|r| r == "GET /node.toml HTTP/1.1"),
            "{requests:?}"
        );
        drop(vm);

        // The installed disk alone, under OVMF.
        let mut opts = VmOptions::new("pxe_install_installed");
        opts.image = Some(target.clone());
        opts.image_format = ImageFormat::Qcow2;
        opts.forward_ports = vec![API_PORT];
        let mut vm = Vm::start(opts)?;
        let port = vm.host_port(API_PORT).unwrap_or(API_PORT);
        let ctl = Nodectl::new(&bin, &ctl_dir, &format!("127.0.0.1:{port}"));
        let grew = vm.wait_for_line("data: grew DATA from ", TO_API)?;
        // The last MiB boundary before the backup GPT.
        assert_eq!(
            grew_mib(&grew),
            Some((256, TARGET_MIB - 1 - DATA_START_MIB)),
            "{grew}"
        );
        vm.wait_for_line("config: using the machine config from STATE", NEXT_STEP)?;
        vm.wait_for_line("which it was installed to: nothing to install", NEXT_STEP)?;
        let version = retry(TO_API, Duration::from_millis(500), || {
            ctl.json(&["version"], CALL)
        });
        let version = vm.context(version)?;
        let at_api = vm.elapsed();
        assert_eq!(version["hostname"], HOSTNAME, "{version}");
        assert_eq!(version["maintenance"], false, "{version}");
        assert_eq!(version["live"], false, "{version}");
        assert_eq!(version["slot"], "a", "{version}");
        let shown = vm.context(ctl.ok(&["get", "config"], CALL))?;
        assert!(
            shown.contains(HOSTNAME) && shown.contains("/dev/vda"),
            "{shown}"
        );
        let console = vm.console_text();
        let cmdline = console
            .lines()
            .find(|l| l.contains("Command line:"))
            .unwrap_or_default()
            .to_string();
        assert!(
            cmdline.contains("caisson.slot=a")
                && !cmdline.contains("caisson.live")
                && !cmdline.contains("caisson.config="),
            "the installed boot must not carry the live boot's arguments: {cmdline}"
        );
        eprintln!(
            "bench: pxe install: QEMU start → config from the URL {:.1} s, → install done {:.1} s; \
             install {:.1} s by the agent's clock; installed disk: OVMF start → API {:.1} s; {grew}",
            at_config.as_secs_f64(),
            at_done.as_secs_f64(),
            done_seconds(&done).unwrap_or(0.0),
            at_api.as_secs_f64(),
        );
        Ok(())
    }
}

#[test]
fn pxe_install_console_lines_parse() {
    assert_eq!(
        done_seconds("[  80.1] install: done in 41.3 s: /dev/vda is disk x"),
        Some(41.3)
    );
    assert_eq!(
        grew_mib("data: grew DATA from 256 to 3454 MiB (GPT entry and backup header, kernel partition, ext4 online)"),
        Some((256, 3454))
    );
}
