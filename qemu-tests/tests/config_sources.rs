//! Where a node's first machine config comes from when neither STATE nor
//! the image has one: the platform's sources, each in QEMU with media made
//! by the tools platforms use (genisoimage as Nova runs it, cloud-localds,
//! QEMU's own fw_cfg and TFTP server) and servers in the test. Each test
//! boots the shared image (its own overlay) in maintenance mode with one
//! source, then checks through nodectl, with the config's own client
//! certificate, that the config applied and which source it came from.
//! Bad media (a corrupt config drive, user data that is not a Caisson
//! config, an invalid config, a URL that times out) are boots of the same
//! VMs before the good one: each leaves the node in maintenance mode with
//! nothing saved, and the next boot, with good media, applies.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qemu_tests::nodectl::{ApiNode, Nodectl, CALL};
use qemu_tests::{disk, env, net, tools, Boot, HarnessError, Vm, VmOptions};

type Outcome<T = ()> = std::result::Result<T, HarnessError>;

/// Boot to a reachable API under TCG, two VMs sharing two cores.
const TO_API: Duration = Duration::from_secs(300);
const NEXT_STEP: Duration = Duration::from_secs(90);
/// The URL test's agent tries 3 times, 10 s each, 2 s apart.
const URL_GIVES_UP: Duration = Duration::from_secs(120);
/// QEMU's first NIC, fixed so network data can name it.
const MAC: &str = "52:54:00:12:34:56";
const DHCP_ADDRESS: &str = "10.0.2.15";

/// A cluster made before the VM starts (its config goes on the media),
/// and the host ports that will reach the node's API.
struct Setup {
    name: String,
    dir: PathBuf,
    ctl: Nodectl,
    port: u16,
    /// Forwarded to the static address the platform's network data gives.
    static_port: u16,
    node_config: String,
}

impl Setup {
    fn new(name: &str) -> Outcome<Setup> {
        let bin = env::input(env::NODECTL_BIN)?;
        let dir = env::fresh_dir(&format!("{name}.nodectl"))?;
        let port = net::free_port()?;
        let static_port = net::free_port()?;
        let ctl = Nodectl::new(&bin, &dir, &format!("127.0.0.1:{port}"));
        let cluster = ctl.gen_cluster()?;
        let node_config = read(&cluster.node_config)?;
        Ok(Setup {
            name: name.to_string(),
            dir,
            ctl,
            port,
            static_port,
            node_config,
        })
    }

    /// The generated config plus `extra` TOML.
    fn config(&self, extra: &str) -> String {
        format!("{}\n{extra}", self.node_config)
    }

    /// A user-mode NIC with the API forwarded to the DHCP address and,
    /// when given, to `static_ip` too.
    fn nic(&self, static_ip: Option<&str>, extra: &str) -> String {
        let mut nic = format!(
            "user,model=virtio-net-pci,mac={MAC}{extra},hostfwd=tcp:127.0.0.1:{}-{DHCP_ADDRESS}:50443",
            self.port
        );
        if let Some(ip) = static_ip {
            nic.push_str(&format!(
                ",hostfwd=tcp:127.0.0.1:{}-{ip}:50443",
                self.static_port
            ));
        }
        nic
    }

    fn start(&self, mut opts: VmOptions, nic: String) -> Outcome<ApiNode> {
        opts.network = false;
        opts.extra_args.extend(["-nic".to_string(), nic]);
        let vm = Vm::start(opts)?;
        Ok(ApiNode {
            vm,
            ctl: self.ctl.clone(),
            cluster: qemu_tests::nodectl::Cluster {
                secrets: self.dir.join("secrets"),
                node_config: self.dir.join("node.toml"),
            },
            port: self.port,
        })
    }

    /// Talk to the node on its static address from now on.
    fn use_static(&self, node: &mut ApiNode) -> Outcome {
        let bin = env::input(env::NODECTL_BIN)?;
        node.ctl = Nodectl::new(&bin, &self.dir, &format!("127.0.0.1:{}", self.static_port));
        node.port = self.static_port;
        Ok(())
    }

    fn media(&self) -> Outcome<PathBuf> {
        let dir = self.dir.join("media");
        std::fs::create_dir_all(&dir).map_err(HarnessError::io("cannot create", &dir))?;
        Ok(dir)
    }
}

fn read(path: &Path) -> Outcome<String> {
    std::fs::read_to_string(path).map_err(HarnessError::io("cannot read", path))
}

fn write(path: &Path, data: &[u8]) -> Outcome {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(HarnessError::io("cannot create", parent))?;
    }
    std::fs::write(path, data).map_err(HarnessError::io("cannot write", path))
}

/// A fresh directory holding `files`.
fn tree(dir: &Path, files: &[(&str, &[u8])]) -> Outcome<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(HarnessError::io("cannot clear", dir))?;
    }
    for (name, data) in files {
        write(&dir.join(name), data)?;
    }
    Ok(dir.to_path_buf())
}

/// A config drive as Nova makes it (nova/virt/configdrive.py's flags).
fn config_drive(media: &Path, iso: &Path, files: &[(&str, &[u8])]) -> Outcome {
    let root = tree(&media.join("config-drive"), files)?;
    tools::run(
        Command::new("genisoimage")
            .arg("-o")
            .arg(iso)
            .args(["-ldots", "-allow-lowercase", "-allow-multidot", "-l"])
            .args([
                "-publisher",
                "OpenStack Compute",
                "-quiet",
                "-J",
                "-r",
                "-V",
                "config-2",
            ])
            .arg(&root),
    )?;
    Ok(())
}

/// Point every volume descriptor's root directory (the primary one's and
/// Joliet's, which the kernel falls back to) far past the end of the
/// medium: the label still reads `config-2`, the filesystem does not.
fn corrupt_root_directory(iso: &Path) -> Outcome {
    let mut data = std::fs::read(iso).map_err(HarnessError::io("cannot read", iso))?;
    let mut corrupted = 0;
    for sector in 16..32 {
        let d = sector * 2048;
        assert_eq!(
            &data[d + 1..d + 6],
            b"CD001",
            "no volume descriptor in sector {sector}"
        );
        match data[d] {
            255 => break,
            1 | 2 => {
                let extent = d + 156 + 2; // root directory record: extent, both-endian
                let lba: u32 = 0x00ff_fff0;
                data[extent..extent + 4].copy_from_slice(&lba.to_le_bytes());
                data[extent + 4..extent + 8].copy_from_slice(&lba.to_be_bytes());
                corrupted += 1;
            }
            _ => {}
        }
    }
    assert!(
        corrupted >= 1,
        "genisoimage wrote no volume descriptor with a root directory"
    );
    std::fs::write(iso, data).map_err(HarnessError::io("cannot write", iso))
}

/// OpenStack attaches config drives as CD-ROMs. The cloud kernel has no
/// AHCI (q35's SATA), so the drive sits on virtio-scsi, as Nova does for
/// images with `hw_cdrom_bus=scsi hw_scsi_model=virtio-scsi`.
fn cdrom(iso: &Path) -> Vec<String> {
    vec![
        "-device".into(),
        "virtio-scsi-pci,id=scsi0".into(),
        "-drive".into(),
        format!(
            "file={},if=none,id=cd0,media=cdrom,readonly=on,format=raw",
            iso.display()
        ),
        "-device".into(),
        "scsi-cd,drive=cd0,bus=scsi0.0".into(),
    ]
}

/// `cloud-localds` (Debian's cloud-image-utils), iso9660 or vfat.
fn nocloud_seed(
    media: &Path,
    seed: &Path,
    vfat: bool,
    user_data: &str,
    meta_data: &str,
    network_config: Option<&str>,
) -> Outcome {
    let (ud, md, nc) = (
        media.join("user-data"),
        media.join("meta-data"),
        media.join("network-config"),
    );
    write(&ud, user_data.as_bytes())?;
    write(&md, meta_data.as_bytes())?;
    let _ = std::fs::remove_file(seed);
    let mut cmd = Command::new("cloud-localds");
    if vfat {
        cmd.args(["--filesystem", "vfat"]);
    }
    if let Some(n) = network_config {
        write(&nc, n.as_bytes())?;
        cmd.arg(format!("--network-config={}", nc.display()));
    }
    tools::run(cmd.arg(seed).arg(&ud).arg(&md))?;
    Ok(())
}

/// Kernel, initrd and slot A's options from the image's ESP, to boot
/// directly with `extra` on the command line.
fn direct_boot(dir: &Path, extra: &str) -> Outcome<Boot> {
    let image = env::test_image()?;
    let esp = disk::partition(&image, "ESP")?;
    let (kernel, initrd, entry) = (
        dir.join("vmlinuz"),
        dir.join("initrd"),
        dir.join("entry.conf"),
    );
    tools::mcopy_out(&image, esp.offset(), "a/vmlinuz", &kernel)?;
    tools::mcopy_out(&image, esp.offset(), "a/initrd", &initrd)?;
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
        .find(|n| n.starts_with("caisson-") && n.contains("-a"))
        .unwrap_or_else(|| panic!("no slot A entry on the ESP:\n{listing}"))
        .to_string();
    tools::mcopy_out(
        &image,
        esp.offset(),
        &format!("loader/entries/{name}"),
        &entry,
    )?;
    let text = read(&entry)?;
    let options = text
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .unwrap_or_else(|| panic!("no options line in {name}:\n{text}"));
    Ok(Boot::DirectKernel {
        kernel,
        initrd,
        append: format!("{options} {extra}"),
    })
}

/// An HTTP server in the test: answers `GET path` from `files` (the query
/// ignored), 404 otherwise; while `stall` is set it accepts and never
/// answers. Records every request line.
struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stall: Arc<AtomicBool>,
}

impl Server {
    fn start(files: BTreeMap<String, Vec<u8>>) -> Server {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("bind a port for the test's HTTP server");
        let port = listener.local_addr().expect("its port").port();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let stall = Arc::new(AtomicBool::new(false));
        let (seen, stalling) = (requests.clone(), stall.clone());
        let files = Arc::new(files);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (seen, stalling, files) = (seen.clone(), stalling.clone(), files.clone());
                std::thread::spawn(move || {
                    let Ok(clone) = stream.try_clone() else {
                        return;
                    };
                    let mut reader = BufReader::new(clone);
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0
                            || header.trim().is_empty()
                        {
                            break;
                        }
                    }
                    seen.lock().unwrap().push(line.trim().to_string());
                    let mut stream = stream;
                    if stalling.load(Ordering::SeqCst) {
                        // Until the client gives up and closes.
                        let _ = reader.read(&mut [0u8; 64]);
                        return;
                    }
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
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                });
            }
        });
        Server {
            port,
            requests,
            stall,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// The `config` health check's detail, e.g. `applied (from nocloud)`.
/// nodectl exits 1 while the node is not ready (its API restarting for a
/// new address, say); the answer is read all the same.
fn config_health(node: &mut ApiNode) -> Outcome<String> {
    let ctl = node.ctl.clone();
    let answer = qemu_tests::process::retry(TO_API, Duration::from_millis(500), || {
        let finished = ctl.run(&["-o", "json", "health"], CALL)?;
        let result = qemu_tests::nodectl::json_result(&finished.stdout).map_err(|message| {
            HarnessError::Output {
                command: finished.command.clone(),
                message,
            }
        })?;
        let detail = result["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "config"))
            .and_then(|c| c["detail"].as_str())
            .map(str::to_string);
        detail.ok_or_else(|| HarnessError::Output {
            command: finished.command.clone(),
            message: format!("no config check in {result}"),
        })
    });
    node.vm.context(answer)
}

/// The config applied and came from `short`: host name, health, mutual TLS
/// with the config's own CA.
fn assert_applied_from(node: &mut ApiNode, short: &str, hostname: &str) -> Outcome {
    node.vm.wait_for_line("api: serving mTLS", NEXT_STEP)?;
    let version = node.ctl.json(&["version"], CALL);
    let version = match version {
        Ok(v) => v,
        Err(_) => {
            node.until_ok(&["version"], TO_API)?;
            node.json(&["version"])?
        }
    };
    assert_eq!(version["hostname"], hostname, "{version}");
    assert_eq!(version["maintenance"], false, "{version}");
    let detail = config_health(node)?;
    assert_eq!(
        detail,
        format!("applied (from {short})"),
        "{}",
        node.vm.tail()
    );
    Ok(())
}

/// Maintenance mode after a refusal, and nothing saved on STATE.
fn assert_maintenance_with_nothing_saved(vm: &mut Vm) -> Outcome {
    vm.wait_for("the maintenance line", NEXT_STEP, |l| {
        l.contains("maintenance mode: ") && l.contains("certificate fingerprint")
    })?;
    let console = vm.console_text();
    assert!(
        !console.contains("config: saved the config from"),
        "a refused config was saved:\n{}",
        vm.tail()
    );
    assert!(!console.contains("panicked"), "{}", vm.tail());
    Ok(())
}

/// Power the node off with its power button and wait for QEMU to end.
fn power_off(vm: &mut Vm) -> Outcome {
    if !vm.console_text().contains("for the power button") {
        vm.wait_for_line("for the power button", NEXT_STEP)?;
    }
    vm.power_button()?;
    vm.wait_for_exit(NEXT_STEP)?;
    Ok(())
}

/// In a module so that `cargo xtask test config_sources` selects these tests.
mod config_sources {
    use super::*;

    #[test]
    fn config_drive_corrupt_then_cloud_config_are_refused_then_a_good_drive_with_static_network_data_is_applied_and_kept_on_state(
    ) -> Outcome {
        let s = Setup::new("cs_config_drive")?;
        let media = s.media()?;
        let iso = media.join("config-drive.iso");
        let user_data = s.config("[machine]\nhostname = \"drive-node\"\n");
        let network_data = format!(
            r#"{{"links": [{{"id": "tap0", "type": "phy", "ethernet_mac_address": "{MAC}", "mtu": 1500}}],
                "networks": [{{"id": "net0", "type": "ipv4", "link": "tap0", "ip_address": "10.0.2.21",
                               "netmask": "255.255.255.0",
                               "routes": [{{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.2.2"}}]}}],
                "services": [{{"type": "dns", "address": "10.0.2.3"}}]}}"#
        );
        let good: Vec<(&str, &[u8])> = vec![
            ("openstack/latest/user_data", user_data.as_bytes()),
            (
                "openstack/latest/meta_data.json",
                br#"{"uuid": "u-1", "hostname": "meta-name"}"#,
            ),
            (
                "openstack/latest/network_data.json",
                network_data.as_bytes(),
            ),
        ];

        // 1. The same drive with its root directory pointing off the medium.
        config_drive(&media, &iso, &good)?;
        corrupt_root_directory(&iso)?;
        let mut opts = VmOptions::new(&s.name);
        opts.extra_args = cdrom(&iso);
        let mut node = s.start(opts, s.nic(Some("10.0.2.21"), ""))?;
        let line = node.vm.wait_for_line(
            "config: cannot read the machine config from the OpenStack config drive",
            TO_API,
        )?;
        assert!(
            line.contains("iso9660 labelled \"config-2\"") && line.contains("cannot be mounted"),
            "{line}"
        );
        assert_maintenance_with_nothing_saved(&mut node.vm)?;
        power_off(&mut node.vm)?;

        // 2. A #cloud-config user_data: named for what it is, refused.
        config_drive(
            &media,
            &iso,
            &[(
                "openstack/latest/user_data",
                b"#cloud-config\nhostname: x\n",
            )],
        )?;
        node.vm.power_on()?;
        node.vm.wait_for_line(
            "config: found a machine config in the OpenStack config drive",
            TO_API,
        )?;
        node.vm.wait_for_line(
            "config: invalid machine config from the OpenStack config drive",
            NEXT_STEP,
        )?;
        let why = node.vm.wait_for_line(
            "openstack/latest/user_data: this is a cloud-init #cloud-config document",
            NEXT_STEP,
        )?;
        assert!(why.contains("not a Caisson machine config"), "{why}");
        assert_maintenance_with_nothing_saved(&mut node.vm)?;
        let fp = node.wait_for_maintenance(NEXT_STEP)?;
        let version = node.until_ok(
            &["--insecure", "--fingerprint", &fp, "-o", "json", "version"],
            TO_API,
        )?;
        assert!(version.contains("\"maintenance\":true"), "{version}");
        power_off(&mut node.vm)?;

        // 3. The good drive: its config, its static address, on STATE.
        config_drive(&media, &iso, &good)?;
        node.vm.power_on()?;
        node.vm.wait_for_line("config: found a machine config in the OpenStack config drive (/dev/sr0: openstack/latest/user_data)", TO_API)?;
        node.vm.wait_for_line("network.interfaces: mac 52:54:00:12:34:56: 10.0.2.21/24, gateway 10.0.2.2, mtu 1500 (from openstack/latest/network_data.json)", NEXT_STEP)?;
        let console = node.vm.console_text();
        assert!(
            console.contains("machine.hostname: the config's own is kept (openstack/latest/meta_data.json offers \"meta-name\")"),
            "{}",
            node.vm.tail()
        );
        node.vm.wait_for_line(
            "config: saved the config from config-drive on STATE",
            NEXT_STEP,
        )?;
        s.use_static(&mut node)?;
        assert_applied_from(&mut node, "config-drive", "drive-node")?;
        let shown = node.ok(&["get", "config"])?;
        assert!(
            shown.contains("10.0.2.21/24") && shown.contains(MAC),
            "{shown}"
        );

        // 4. A reboot reads STATE, never the drive (still attached).
        node.ok(&["reboot"])?;
        node.vm.wait_for_exit(NEXT_STEP)?;
        node.vm.power_on()?;
        node.vm
            .wait_for_line("config: using the machine config from STATE", TO_API)?;
        assert!(
            !node.vm.console_text().contains("asking the platform"),
            "{}",
            node.vm.tail()
        );
        assert_applied_from(&mut node, "STATE", "drive-node")?;
        Ok(())
    }

    #[test]
    fn nocloud_vfat_seed_with_an_invalid_config_is_refused_then_an_iso_seed_with_network_config_v2_and_meta_data_hostname_is_applied(
    ) -> Outcome {
        let s = Setup::new("cs_nocloud")?;
        let media = s.media()?;
        let seed = media.join("seed.img");
        nocloud_seed(
            &media,
            &seed,
            true,
            &s.config("[machine]\nhostname = \"not_valid!\"\n"),
            "instance-id: iid-1\n",
            None,
        )?;
        let mut opts = VmOptions::new(&s.name);
        opts.extra_args = vec![
            "-drive".into(),
            format!("file={},if=virtio,format=raw,readonly=on", seed.display()),
        ];
        let mut node = s.start(opts, s.nic(Some("10.0.2.20"), ""))?;
        node.vm.wait_for_line(
            "config: found a machine config in the NoCloud seed (/dev/vdb: user-data)",
            TO_API,
        )?;
        node.vm.wait_for_line(
            "config: invalid machine config from the NoCloud seed (/dev/vdb: user-data)",
            NEXT_STEP,
        )?;
        let why = node.vm.wait_for_line("/dev/vdb: user-data:", NEXT_STEP)?;
        assert!(
            why.contains("machine.hostname") && why.contains("not_valid!"),
            "{why}"
        );
        assert_maintenance_with_nothing_saved(&mut node.vm)?;
        power_off(&mut node.vm)?;

        let network_config = format!(
            "version: 2\nethernets:\n  nic0:\n    match:\n      macaddress: \"{MAC}\"\n    addresses: [10.0.2.20/24]\n    gateway4: 10.0.2.2\n    nameservers:\n      addresses: [10.0.2.3]\n"
        );
        nocloud_seed(
            &media,
            &seed,
            false,
            &s.config(""),
            "instance-id: iid-2\nlocal-hostname: seed-host\n",
            Some(&network_config),
        )?;
        node.vm.power_on()?;
        node.vm.wait_for_line(
            "config: found a machine config in the NoCloud seed (/dev/vdb: user-data)",
            TO_API,
        )?;
        node.vm.wait_for_line(
            "config: machine.hostname = \"seed-host\" (from meta-data)",
            NEXT_STEP,
        )?;
        node.vm.wait_for_line("network.interfaces: mac 52:54:00:12:34:56: 10.0.2.20/24, gateway 10.0.2.2 (from network-config)", NEXT_STEP)?;
        node.vm
            .wait_for_line("config: saved the config from nocloud on STATE", NEXT_STEP)?;
        s.use_static(&mut node)?;
        assert_applied_from(&mut node, "nocloud", "seed-host")?;
        let shown = node.ok(&["get", "config"])?;
        assert!(
            shown.contains("10.0.2.20/24") && shown.contains("10.0.2.3"),
            "{shown}"
        );
        // Only the static address: nothing answers on DHCP's.
        let via_dhcp = s.ctl.run(&["version"], Duration::from_secs(15))?;
        assert!(
            !via_dhcp.success(),
            "still answering on {DHCP_ADDRESS}:\n{}",
            via_dhcp.output()
        );
        Ok(())
    }

    #[test]
    fn fw_cfg_opt_caisson_config_is_applied() -> Outcome {
        let s = Setup::new("cs_fw_cfg")?;
        let file = s.media()?.join("node.toml");
        write(
            &file,
            s.config("[machine]\nhostname = \"fwcfg-node\"\n")
                .as_bytes(),
        )?;
        let mut opts = VmOptions::new(&s.name);
        opts.extra_args = vec![
            "-fw_cfg".into(),
            format!("name=opt/caisson/config,file={}", file.display()),
        ];
        let mut node = s.start(opts, s.nic(None, ""))?;
        node.vm.wait_for_line(
            "config: found a machine config in QEMU fw_cfg (opt/caisson/config)",
            TO_API,
        )?;
        node.vm
            .wait_for_line("config: saved the config from fw_cfg on STATE", NEXT_STEP)?;
        assert_applied_from(&mut node, "fw_cfg", "fwcfg-node")?;
        Ok(())
    }

    #[test]
    fn kernel_command_line_url_that_times_out_leaves_maintenance_then_serves_the_config_with_talos_variables(
    ) -> Outcome {
        let s = Setup::new("cs_cmdline_url")?;
        let mut files = BTreeMap::new();
        files.insert(
            "/node.toml".to_string(),
            s.config("[machine]\nhostname = \"url-node\"\n")
                .into_bytes(),
        );
        let server = Server::start(files);
        server.stall.store(true, Ordering::SeqCst);
        let url = format!(
            "http://10.0.2.2:{}/node.toml?uuid=${{uuid}}&mac=${{mac}}&serial=${{serial}}&host=${{hostname}}",
            server.port
        );
        let files_dir = env::fresh_dir("cs_cmdline_url.boot")?;
        let mut opts = VmOptions::new(&s.name);
        opts.boot = direct_boot(&files_dir, &format!("caisson.config={url}"))?;
        opts.extra_args = vec![
            "-smbios".into(),
            "type=1,uuid=8c0a5d5e-6f4b-4e1c-9a36-0d1f2e3c4b5a,serial=SN-4711".into(),
        ];
        let mut node = s.start(opts, s.nic(None, ",hostname=dhcp-host"))?;

        // 1. The server takes the connection and never answers.
        let line = node.vm.wait_for_line("config: cannot read the machine config from the kernel command line's caisson.config URL", TO_API + URL_GIVES_UP)?;
        assert!(
            line.contains("no answer within 10s; gave up after 3 tries of 10 s each"),
            "{line}"
        );
        assert_maintenance_with_nothing_saved(&mut node.vm)?;
        let expected = "GET /node.toml?uuid=8c0a5d5e-6f4b-4e1c-9a36-0d1f2e3c4b5a\
                        &mac=52%3A54%3A00%3A12%3A34%3A56&serial=SN-4711&host=dhcp-host HTTP/1.1"
            .to_string();
        // Three tries, each with the variables as Talos substitutes them
        // (the host name DHCP offered, not the one derived at boot).
        assert_eq!(server.requests(), vec![expected.clone(); 3]);
        power_off(&mut node.vm)?;

        // 2. The same URL, answered.
        server.stall.store(false, Ordering::SeqCst);
        node.vm.power_on()?;
        node.vm.wait_for_line(
            "config: found a machine config in the kernel command line's caisson.config URL",
            TO_API,
        )?;
        node.vm.wait_for_line(
            "config: saved the config from cmdline-url on STATE",
            NEXT_STEP,
        )?;
        assert_applied_from(&mut node, "cmdline-url", "url-node")?;
        assert_eq!(server.requests(), vec![expected; 4]);
        Ok(())
    }

    #[test]
    fn kernel_command_line_tftp_url_is_read_from_qemus_own_tftp_server() -> Outcome {
        let s = Setup::new("cs_tftp_url")?;
        let tftp = env::fresh_dir("cs_tftp_url.tftp")?;
        write(
            &tftp.join(format!("nodes/{MAC}.toml")),
            s.config("[machine]\nhostname = \"tftp-node\"\n").as_bytes(),
        )?;
        let files_dir = env::fresh_dir("cs_tftp_url.boot")?;
        let mut opts = VmOptions::new(&s.name);
        opts.boot = direct_boot(
            &files_dir,
            "caisson.config=tftp://10.0.2.2/nodes/${mac}.toml",
        )?;
        let mut node = s.start(opts, s.nic(None, &format!(",tftp={}", tftp.display())))?;
        node.vm.wait_for_line(
            "config: found a machine config in the kernel command line's caisson.config URL (tftp://10.0.2.2/nodes/52:54:00:12:34:56.toml)",
            TO_API,
        )?;
        assert_applied_from(&mut node, "cmdline-url", "tftp-node")?;
        Ok(())
    }

    #[test]
    fn openstack_metadata_service_on_169_254_169_254_is_asked_because_dmi_says_openstack() -> Outcome
    {
        let s = Setup::new("cs_metadata")?;
        let mut files = BTreeMap::new();
        files.insert(
            "/openstack/latest/user_data".to_string(),
            s.config("[machine]\nhostname = \"metadata-node\"\n")
                .into_bytes(),
        );
        files.insert(
            "/openstack/latest/meta_data.json".to_string(),
            br#"{"hostname": "md-name"}"#.to_vec(),
        );
        let server = Server::start(files);
        let relay = env::input(env::FIXTURES_DIR)?.join("tcp-relay");
        assert!(
            relay.is_file(),
            "{} is missing: cargo build -p caisson-test-fixtures",
            relay.display()
        );
        let nic = format!(
            "user,model=virtio-net-pci,mac={MAC},net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15,\
             guestfwd=tcp:169.254.169.254:80-cmd:{} 127.0.0.1:{},hostfwd=tcp:127.0.0.1:{}-169.254.0.15:50443",
            relay.display(),
            server.port,
            s.port
        );
        let mut opts = VmOptions::new(&s.name);
        opts.extra_args = vec![
            "-smbios".into(),
            "type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova".into(),
        ];
        let mut node = s.start(opts, nic)?;
        node.vm.wait_for_line(
            "config: found a machine config in the metadata service (http://169.254.169.254/openstack/latest/user_data)",
            TO_API,
        )?;
        node.vm
            .wait_for_line("config: saved the config from metadata on STATE", NEXT_STEP)?;
        assert_applied_from(&mut node, "metadata", "metadata-node")?;
        let requests = server.requests();
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with("GET /openstack/latest/user_data ")),
            "{requests:?}"
        );
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with("GET /openstack/latest/network_data.json ")),
            "{requests:?}"
        );
        Ok(())
    }
}
