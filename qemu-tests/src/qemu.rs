//! The QEMU command line shared by the tests, `xtask demo` and `xtask bench`:
//! q35 under TCG (no KVM on our machines), OVMF or direct kernel boot, one
//! virtio disk on a qcow2 overlay.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tools::run;
use crate::{HarnessError, Result};

pub const QEMU: &str = "qemu-system-x86_64";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// A QEMU command line under construction.
#[derive(Debug, Clone)]
pub struct QemuArgs {
    args: Vec<OsString>,
}

impl QemuArgs {
    /// q35, TCG, one vCPU, `memory_mib` of RAM.
    pub fn new(memory_mib: u32) -> QemuArgs {
        let mut q = QemuArgs { args: Vec::new() };
        q.push([
            "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1",
        ]);
        q.push(["-m".to_string(), memory_mib.to_string()]);
        q
    }

    /// Boot through OVMF with the given private copy of the variable store.
    pub fn uefi(mut self, vars: &Path) -> QemuArgs {
        self.push([
            "-drive".to_string(),
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                escape(Path::new(OVMF_CODE))
            ),
        ]);
        self.push([
            "-drive".to_string(),
            format!("if=pflash,format=raw,unit=1,file={}", escape(vars)),
        ]);
        self
    }

    /// Boot a kernel and initrd directly (SeaBIOS, no boot loader).
    pub fn direct_kernel(mut self, kernel: &Path, initrd: &Path, append: &str) -> QemuArgs {
        self.push([
            "-kernel".into(),
            kernel.as_os_str().to_owned(),
            "-initrd".into(),
            initrd.as_os_str().to_owned(),
        ]);
        self.push(["-append", append]);
        self
    }

    pub fn virtio_disk(mut self, qcow2: &Path) -> QemuArgs {
        self.push([
            "-drive".to_string(),
            format!("file={},if=virtio,format=qcow2", escape(qcow2)),
        ]);
        self
    }

    /// The disk on the controller `bus`.
    pub fn disk(mut self, qcow2: &Path, bus: DiskBus) -> QemuArgs {
        match bus {
            DiskBus::Virtio => self.virtio_disk(qcow2),
            DiskBus::Pvscsi => {
                self.push(["-device", "pvscsi,id=pvscsi0"]);
                self.push([
                    "-drive".to_string(),
                    format!("file={},if=none,id=disk0,format=qcow2", escape(qcow2)),
                ]);
                self.push(["-device", "scsi-hd,drive=disk0,bus=pvscsi0.0"]);
                self
            }
        }
    }

    /// User-mode networking on a virtio NIC (the guest gets 10.0.2.15 by
    /// DHCP). Each `(host, guest)` pair forwards TCP `127.0.0.1:host` to the
    /// guest's port `guest`.
    pub fn user_net(self, forwards: &[(u16, u16)]) -> QemuArgs {
        self.user_net_on(NicModel::VirtioNet, forwards)
    }

    /// [`QemuArgs::user_net`] on a NIC of the given model.
    pub fn user_net_on(mut self, model: NicModel, forwards: &[(u16, u16)]) -> QemuArgs {
        let mut nic = format!("user,model={}", model.as_str());
        for (host, guest) in forwards {
            nic.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        self.push(["-nic".to_string(), nic]);
        self
    }

    /// [`QemuArgs::user_net_on`] whose DHCP offers `bootfile` from QEMU's
    /// TFTP server on `tftp_dir`, and boot from the network (`-boot n`):
    /// the NIC's iPXE ROM (QEMU's default `efi-virtio.rom`, which carries
    /// the BIOS image too) runs the script.
    pub fn pxe_net(
        mut self,
        model: NicModel,
        forwards: &[(u16, u16)],
        tftp_dir: &Path,
        bootfile: &str,
    ) -> QemuArgs {
        let mut nic = format!(
            "user,model={},tftp={},bootfile={}",
            model.as_str(),
            escape(tftp_dir),
            bootfile.replace(',', ",,")
        );
        for (host, guest) in forwards {
            nic.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        self.push(["-nic".to_string(), nic]);
        self.push(["-boot", "n"]);
        self
    }

    /// A guest reboot ends QEMU instead of restarting the machine.
    pub fn no_reboot(mut self) -> QemuArgs {
        self.push(["-no-reboot"]);
        self
    }

    /// No display; serial console to `log`; QMP on the unix socket `qmp`.
    pub fn headless(mut self, log: &Path, qmp: &Path) -> QemuArgs {
        self.push(["-display", "none", "-monitor", "none"]);
        self.push(["-serial".to_string(), format!("file:{}", log.display())]);
        self.push([
            "-qmp".to_string(),
            format!("unix:{},server=on,wait=off", qmp.display()),
        ]);
        self
    }

    /// Serial console and monitor multiplexed on this terminal (Ctrl-A X
    /// quits, Ctrl-A C switches to the monitor). The monitor is named
    /// explicitly: a `-qmp` option would otherwise drop the default one.
    pub fn interactive(mut self) -> QemuArgs {
        self.push(["-nographic", "-serial", "mon:stdio"]);
        self
    }

    pub fn extra<I, S>(mut self, args: I) -> QemuArgs
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.push(args);
        self
    }

    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(QEMU);
        cmd.args(&self.args);
        cmd
    }

    fn push<I, S>(&mut self, args: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
    }
}

/// `-drive file=` treats ',' as a separator; QEMU escapes it by doubling.
fn escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// The controller a VM's disk is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskBus {
    #[default]
    Virtio,
    /// VMware's paravirtual SCSI, as an OVA declares it. Debian's OVMF has
    /// no driver for it: boot such a VM with `Boot::DirectKernel`.
    Pvscsi,
}

/// The model of a VM's NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NicModel {
    #[default]
    VirtioNet,
    /// VMware's vmxnet3, as an OVA declares it.
    Vmxnet3,
}

impl NicModel {
    /// QEMU's device name.
    pub fn as_str(self) -> &'static str {
        match self {
            NicModel::VirtioNet => "virtio-net-pci",
            NicModel::Vmxnet3 => "vmxnet3",
        }
    }
}

/// The format of a built image a VM boots from (its overlay's backing file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    #[default]
    Raw,
    Qcow2,
    Vmdk,
}

impl ImageFormat {
    /// QEMU's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
        }
    }
}

/// A qcow2 overlay at `overlay` whose backing file is the raw `base`, so the
/// VM's writes never reach the built image.
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<PathBuf> {
    create_overlay_of(base, ImageFormat::Raw, overlay)
}

/// A qcow2 overlay over `base`, read as `format`.
pub fn create_overlay_of(base: &Path, format: ImageFormat, overlay: &Path) -> Result<PathBuf> {
    let base = std::fs::canonicalize(base).map_err(HarnessError::io("cannot resolve", base))?;
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format.as_str(), "-b"])
        .arg(&base)
        .arg(overlay))?;
    Ok(overlay.to_path_buf())
}

/// A private copy of the OVMF variable store in `dir`.
pub fn copy_ovmf_vars(dir: &Path) -> Result<PathBuf> {
    let dest = dir.join("OVMF_VARS_4M.fd");
    std::fs::copy(OVMF_VARS, &dest).map_err(HarnessError::io("cannot copy ", OVMF_VARS))?;
    Ok(dest)
}
