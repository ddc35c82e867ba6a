//! One QEMU virtual machine owned by one test.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::console::{Console, TAIL_LINES};
use crate::qemu::{copy_ovmf_vars, create_overlay_of, DiskBus, ImageFormat, NicModel, QemuArgs};
use crate::qmp::Qmp;
use crate::{env, HarnessError, Result};

const POLL: Duration = Duration::from_millis(100);

/// How the machine starts.
#[derive(Debug, Clone)]
pub enum Boot {
    /// OVMF, then systemd-boot from the image's ESP: the real boot chain.
    Uefi,
    /// `-kernel`/`-initrd`/`-append` under SeaBIOS; the disk is still attached.
    DirectKernel {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
    /// A network boot under SeaBIOS (`-boot n`): QEMU's iPXE ROM gets
    /// `bootfile` from the user-mode network's TFTP server, which serves
    /// `tftp_dir`. Network on, whatever `VmOptions::network` says; no disk
    /// unless `VmOptions::image` names one.
    Pxe { tftp_dir: PathBuf, bootfile: String },
}

#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Names the VM's directory under `target/qemu-tests/`.
    pub name: String,
    /// The image to boot; default: `$CAISSON_TEST_IMAGE`.
    pub image: Option<PathBuf>,
    /// The format of `image` (raw unless said).
    pub image_format: ImageFormat,
    /// The disk's controller; virtio unless said.
    pub disk_bus: DiskBus,
    /// The NIC's model; virtio-net unless said.
    pub nic: NicModel,
    pub memory_mib: u32,
    pub boot: Boot,
    /// When false (the default) a guest reboot ends QEMU (`-no-reboot`).
    pub allow_reboot: bool,
    pub network: bool,
    /// Guest TCP ports reachable from the host, each on a free port of
    /// 127.0.0.1 ([`Vm::host_port`]); needs `network`.
    pub forward_ports: Vec<u16>,
    pub extra_args: Vec<String>,
}

impl VmOptions {
    /// OVMF boot of the test image, 1 GiB, network on, reboot ends QEMU.
    pub fn new(name: &str) -> VmOptions {
        VmOptions {
            name: name.to_string(),
            image: None,
            image_format: ImageFormat::Raw,
            disk_bus: DiskBus::Virtio,
            nic: NicModel::VirtioNet,
            memory_mib: 1024,
            boot: Boot::Uefi,
            allow_reboot: false,
            network: true,
            forward_ports: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

pub struct Vm {
    dir: PathBuf,
    /// To start QEMU again on the same disk and variable store.
    args: QemuArgs,
    /// QEMU processes started so far (1 + restarts after power cuts).
    runs: u32,
    child: Child,
    console: Console,
    qmp_socket: PathBuf,
    qmp: Option<Qmp>,
    started: Instant,
    exit: Option<ExitStatus>,
    /// (guest port, host port)
    forwards: Vec<(u16, u16)>,
}

impl Vm {
    /// Prepare `target/qemu-tests/<name>/` and start QEMU.
    pub fn start(opts: VmOptions) -> Result<Vm> {
        let image = match (&opts.image, &opts.boot) {
            (Some(image), _) => Some(image.clone()),
            // A diskless node.
            (None, Boot::Pxe { .. }) => None,
            (None, _) => Some(env::test_image()?),
        };
        let dir = env::fresh_dir(&opts.name)?;
        let overlay = match &image {
            Some(image) => Some(create_overlay_of(
                image,
                opts.image_format,
                &dir.join("overlay.qcow2"),
            )?),
            None => None,
        };
        let console_log = dir.join("console.log");
        let qmp_socket = dir.join("qmp.sock");
        let mut args = QemuArgs::new(opts.memory_mib);
        args = match &opts.boot {
            Boot::Uefi => args.uefi(&copy_ovmf_vars(&dir)?),
            Boot::DirectKernel {
                kernel,
                initrd,
                append,
            } => args.direct_kernel(kernel, initrd, append),
            // SeaBIOS, QEMU's default firmware.
            Boot::Pxe { .. } => args,
        };
        if let Some(overlay) = &overlay {
            args = args.disk(overlay, opts.disk_bus);
        }
        args = args.headless(&console_log, &qmp_socket);
        let mut forwards = Vec::new();
        let pxe = match &opts.boot {
            Boot::Pxe { tftp_dir, bootfile } => Some((tftp_dir, bootfile)),
            _ => None,
        };
        if opts.network || pxe.is_some() {
            for &guest in &opts.forward_ports {
                forwards.push((guest, crate::net::free_port()?));
            }
            let host_guest: Vec<(u16, u16)> = forwards.iter().map(|&(g, h)| (h, g)).collect();
            args = match pxe {
                Some((dir, bootfile)) => args.pxe_net(opts.nic, &host_guest, dir, bootfile),
                None => args.user_net_on(opts.nic, &host_guest),
            };
        }
        if !opts.allow_reboot {
            args = args.no_reboot();
        }
        args = args.extra(&opts.extra_args);
        std::fs::write(dir.join("qemu.cmdline"), format!("{:?}\n", args.args()))
            .map_err(HarnessError::io("cannot write", dir.join("qemu.cmdline")))?;
        let started = Instant::now();
        let child = spawn(&args, &dir)?;
        Ok(Vm {
            dir,
            args,
            runs: 1,
            child,
            console: Console::new(&console_log),
            qmp_socket,
            qmp: None,
            started,
            exit: None,
            forwards,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host port (on 127.0.0.1) that reaches the guest's TCP port `guest`,
    /// if `VmOptions::forward_ports` asked for it.
    pub fn host_port(&self, guest: u16) -> Option<u16> {
        self.forwards
            .iter()
            .find(|(g, _)| *g == guest)
            .map(|(_, h)| *h)
    }

    /// Adds the console tail to an error that does not carry it yet (a host
    /// command that failed while this VM ran), so every failure shows what
    /// the node said.
    pub fn context<T>(&mut self, result: Result<T>) -> Result<T> {
        result.map_err(|e| match e {
            e @ (HarnessError::Timeout { .. }
            | HarnessError::Exited { .. }
            | HarnessError::StillRunning { .. }
            | HarnessError::WithConsole { .. }) => e,
            e => HarnessError::WithConsole {
                error: Box::new(e),
                console: self.console.path().to_path_buf(),
                tail: self.tail(),
            },
        })
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Wait for a console line containing `needle`; see [`Vm::wait_for`].
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for(&format!("a line containing {needle:?}"), timeout, |l| {
            l.contains(needle)
        })
    }

    /// Wait for a console line satisfying `matches`, searching from the line
    /// that matched last (inclusive), so a sequence of waits checks order.
    /// Fails early if QEMU exits; errors carry the last console lines.
    pub fn wait_for(
        &mut self,
        expected: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.console.find_next(&matches) {
                return Ok(line);
            }
            if let Some(status) = self.poll_exit()? {
                if let Some(line) = self.console.find_next_final(&matches) {
                    return Ok(line);
                }
                return Err(HarnessError::Exited {
                    expected: expected.to_string(),
                    status,
                    console: self.console.path().to_path_buf(),
                    tail: self.tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    expected: expected.to_string(),
                    waited: timeout,
                    console: self.console.path().to_path_buf(),
                    tail: self.tail(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The whole console so far.
    pub fn console_text(&mut self) -> String {
        self.console.text()
    }

    /// The last lines of the console and QEMU's stderr, for failure messages.
    pub fn tail(&mut self) -> String {
        let mut tail = self.console.tail(TAIL_LINES);
        if let Ok(stderr) = std::fs::read_to_string(self.dir.join("qemu.stderr")) {
            if !stderr.trim().is_empty() {
                tail.push_str("\n--- QEMU stderr ---\n");
                tail.push_str(stderr.trim_end());
            }
        }
        tail
    }

    /// The QMP connection, opened on first use.
    pub fn qmp(&mut self) -> Result<&mut Qmp> {
        let qmp = match self.qmp.take() {
            Some(qmp) => qmp,
            None => Qmp::connect(&self.qmp_socket, Duration::from_secs(10))?,
        };
        Ok(self.qmp.insert(qmp))
    }

    /// Press the ACPI power button (QMP `system_powerdown`).
    pub fn power_button(&mut self) -> Result<()> {
        self.qmp()?.system_powerdown()
    }

    /// QEMU's exit status once it has exited by itself within `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::StillRunning {
                    waited: timeout,
                    console: self.console.path().to_path_buf(),
                    tail: self.tail(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn poll_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .map_err(HarnessError::io("cannot wait for QEMU in", &self.dir))?;
        }
        Ok(self.exit)
    }
}

fn spawn(args: &QemuArgs, dir: &Path) -> Result<Child> {
    let stderr_path = dir.join("qemu.stderr");
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stderr_path)
        .map_err(HarnessError::io("cannot create", &stderr_path))?;
    let mut cmd = args.command();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    cmd.spawn().map_err(|source| HarnessError::Spawn {
        program: crate::qemu::QEMU.into(),
        source,
    })
}

impl Vm {
    /// Pull the plug: SIGKILL QEMU at once, whatever the guest is doing.
    /// Writes the guest had not flushed to the virtual disk are lost, as
    /// they would be on a real power cut.
    pub fn power_cut(&mut self) -> Result<()> {
        if self.poll_exit()?.is_none() {
            let _ = self.child.kill();
            let status = self
                .child
                .wait()
                .map_err(HarnessError::io("cannot wait for QEMU in", &self.dir))?;
            self.exit = Some(status);
        }
        Ok(())
    }

    /// Power on again after QEMU ended (a power cut, a shutdown): the same
    /// disk overlay and EFI variable store, a fresh console log
    /// (`console.log.<n>` keeps the earlier ones).
    pub fn power_on(&mut self) -> Result<()> {
        if self.poll_exit()?.is_none() {
            return Err(HarnessError::StillRunning {
                waited: Duration::ZERO,
                console: self.console.path().to_path_buf(),
                tail: self.tail(),
            });
        }
        let log = self.console.path().to_path_buf();
        let kept = self.dir.join(format!("console.log.{}", self.runs));
        std::fs::rename(&log, &kept).map_err(HarnessError::io("cannot keep", &log))?;
        self.qmp = None;
        let _ = std::fs::remove_file(&self.qmp_socket);
        self.child = spawn(&self.args, &self.dir)?;
        self.runs += 1;
        self.exit = None;
        self.started = Instant::now();
        self.console = Console::new(&log);
        Ok(())
    }

    /// The qcow2 overlay holding the VM's disk writes.
    pub fn overlay(&self) -> PathBuf {
        self.dir.join("overlay.qcow2")
    }
}

impl Drop for Vm {
    /// Kill our own QEMU (by pid, SIGKILL) and reap it, also when a test panics.
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
