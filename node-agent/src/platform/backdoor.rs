//! VMware's guest RPC over the "backdoor" I/O ports (0x5658, 0x5659):
//! `info-get` and `info-set` of guestinfo keys, as open-vm-tools'
//! `message.c` does them (open a channel with cookies, send the command's
//! size then its bytes over the high-bandwidth port, receive the reply's
//! size then its bytes, acknowledge, close).
//!
//! Why not the `vmw_backdoor` crate: it has no `info-set` (so it cannot
//! scrub the config as Ignition does), it receives into a buffer through
//! a pointer taken from a shared slice, and it sizes that buffer from
//! whatever length the host reports. The port access here is three small
//! `asm!` blocks.
//!
//! Only ever used when DMI says the machine is VMware's (see `dmi`): on
//! other hypervisors the port may be someone else's (QEMU emulates part
//! of it). It cannot run on our test machines; the register encoding and
//! the reply parsing are unit-tested.

const MAGIC: u32 = 0x564D_5868; // "VMXh"
const PORT_LB: u16 = 0x5658;
const PORT_HB: u16 = 0x5659;
const CMD_GETVERSION: u32 = 10;
const CMD_MESSAGE: u32 = 0x1E;
const RPCI_PROTOCOL: u32 = 0x4943_5052; // "RPCI"
const FLAG_COOKIE: u32 = 0x8000_0000;

const TYPE_OPEN: u32 = 0;
const TYPE_SENDSIZE: u32 = 1;
const TYPE_RECVSIZE: u32 = 3;
const TYPE_RECVSTATUS: u32 = 5;
const TYPE_CLOSE: u32 = 6;

const STATUS_SUCCESS: u32 = 0x0001;
const STATUS_DORECV: u32 = 0x0002;
const STATUS_HB: u32 = 0x0080;

/// A guestinfo value larger than this is refused (the host says the size).
pub const MAX_REPLY: usize = 1 << 20;

/// The six registers of a backdoor call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Regs {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
    pub esi: u32,
    pub edi: u32,
}

/// A low-bandwidth message call: `ecx` = subtype << 16 | command,
/// `edx` = channel << 16 | port.
pub fn message_call(subtype: u32, channel: u16, ebx: u32, cookies: (u32, u32)) -> Regs {
    Regs {
        eax: MAGIC,
        ebx,
        ecx: (subtype << 16) | CMD_MESSAGE,
        edx: (u32::from(channel) << 16) | u32::from(PORT_LB),
        esi: cookies.0,
        edi: cookies.1,
    }
}

/// The status half of a result register.
pub fn status(reg: u32) -> u32 {
    reg >> 16
}

/// `1 <value>` / `0 No value found`: the value, or `None` when unset.
pub fn parse_info_get(reply: &[u8]) -> Result<Option<String>, String> {
    match reply.split_first() {
        Some((b'1', rest)) => Ok(Some(
            String::from_utf8_lossy(rest.strip_prefix(b" ").unwrap_or(rest)).into_owned(),
        )),
        Some((b'0', _)) => Ok(None),
        _ => Err(format!(
            "unexpected guestinfo reply {:?}",
            String::from_utf8_lossy(reply.get(..reply.len().min(40)).unwrap_or_default())
        )),
    }
}

/// `1 ` is success.
pub fn parse_info_set(reply: &[u8]) -> Result<(), String> {
    match reply.first() {
        Some(b'1') => Ok(()),
        _ => Err(format!(
            "the host refused: {:?}",
            String::from_utf8_lossy(reply)
        )),
    }
}

/// The port I/O. Both blocks save and restore `rbx` and `rbp` by hand:
/// LLVM reserves them, and the backdoor uses them as arguments.
#[cfg(target_arch = "x86_64")]
mod port {
    use super::{Regs, MAGIC, PORT_HB};
    use std::arch::asm;

    /// `in eax, dx` on the low-bandwidth port.
    ///
    /// # Safety
    /// The caller holds I/O permission for the port (`ioperm`) and knows
    /// the machine is VMware's.
    pub unsafe fn call(r: Regs) -> Regs {
        let (mut eax, mut ecx, mut edx, mut esi, mut edi) = (r.eax, r.ecx, r.edx, r.esi, r.edi);
        let mut rbx = u64::from(r.ebx);
        asm!(
            "xchg {b}, rbx",
            "in eax, dx",
            "xchg {b}, rbx",
            b = inout(reg) rbx,
            inout("eax") eax,
            inout("ecx") ecx,
            inout("edx") edx,
            inout("esi") esi,
            inout("edi") edi,
            options(nostack),
        );
        Regs {
            eax,
            ebx: rbx as u32,
            ecx,
            edx,
            esi,
            edi,
        }
    }

    /// `rep outsb` of `data` on the high-bandwidth port; returns `ebx`.
    ///
    /// # Safety
    /// As [`call`]; `data` stays valid for the call.
    pub unsafe fn send(channel: u16, cookies: (u32, u32), data: &[u8]) -> u32 {
        let mut rbx = u64::from(super::STATUS_SUCCESS << 16);
        let dx = (u32::from(channel) << 16) | u32::from(PORT_HB);
        asm!(
            "push rbp",
            "mov rbp, {bp}",
            "xchg {b}, rbx",
            "rep outsb",
            "xchg {b}, rbx",
            "pop rbp",
            bp = in(reg) u64::from(cookies.0),
            b = inout(reg) rbx,
            inout("eax") MAGIC => _,
            inout("rcx") data.len() => _,
            in("edx") dx,
            inout("rsi") data.as_ptr() => _,
            inout("edi") cookies.1 => _,
        );
        rbx as u32
    }

    /// `rep insb` into `buf` from the high-bandwidth port; returns `ebx`.
    ///
    /// # Safety
    /// As [`call`].
    pub unsafe fn receive(channel: u16, cookies: (u32, u32), buf: &mut [u8]) -> u32 {
        let mut rbx = u64::from(super::STATUS_SUCCESS << 16);
        let dx = (u32::from(channel) << 16) | u32::from(PORT_HB);
        asm!(
            "push rbp",
            "mov rbp, {bp}",
            "xchg {b}, rbx",
            "rep insb",
            "xchg {b}, rbx",
            "pop rbp",
            bp = in(reg) u64::from(cookies.1),
            b = inout(reg) rbx,
            inout("eax") MAGIC => _,
            inout("rcx") buf.len() => _,
            in("edx") dx,
            inout("esi") cookies.0 => _,
            inout("rdi") buf.as_mut_ptr() => _,
        );
        rbx as u32
    }
}

/// An open RPC channel; closed and the port permission dropped on drop.
#[cfg(target_arch = "x86_64")]
pub struct Rpc {
    channel: u16,
    cookies: (u32, u32),
}

#[cfg(target_arch = "x86_64")]
impl Rpc {
    /// Get port access, check the backdoor answers, open a channel.
    pub fn open() -> Result<Rpc, String> {
        // SAFETY: ioperm only changes this process's I/O bitmap.
        if unsafe { nix::libc::ioperm(u64::from(PORT_LB), 2, 1) } != 0 {
            return Err(format!(
                "ioperm(0x5658, 2): {}",
                std::io::Error::last_os_error()
            ));
        }
        let version = Regs {
            eax: MAGIC,
            ebx: !MAGIC,
            ecx: CMD_GETVERSION,
            edx: u32::from(PORT_LB),
            ..Regs::default()
        };
        // SAFETY: permission held; the DMI gate said VMware.
        let r = unsafe { port::call(version) };
        if r.ebx != MAGIC {
            drop_permission();
            return Err("the VMware backdoor does not answer (GETVERSION)".into());
        }
        let open = message_call(TYPE_OPEN, 0, RPCI_PROTOCOL | FLAG_COOKIE, (0, 0));
        // SAFETY: as above.
        let r = unsafe { port::call(open) };
        if status(r.ecx) & STATUS_SUCCESS == 0 {
            drop_permission();
            return Err("the host refused to open a guest RPC channel".into());
        }
        Ok(Rpc {
            channel: status(r.edx) as u16,
            cookies: (r.esi, r.edi),
        })
    }

    fn low(&self, subtype: u32, ebx: u32) -> Regs {
        // SAFETY: the channel was opened with permission held.
        unsafe { port::call(message_call(subtype, self.channel, ebx, self.cookies)) }
    }

    /// Send `command` (NUL-free text) and return the reply.
    pub fn command(&mut self, command: &str) -> Result<Vec<u8>, String> {
        let size = u32::try_from(command.len()).map_err(|_| "command too long")?;
        let r = self.low(TYPE_SENDSIZE, size);
        if status(r.ecx) & STATUS_SUCCESS == 0 {
            return Err("the host refused the command's size".into());
        }
        if status(r.ecx) & STATUS_HB == 0 {
            return Err("the host offers no high-bandwidth backdoor".into());
        }
        // SAFETY: as above; the slice lives across the call.
        let sent = unsafe { port::send(self.channel, self.cookies, command.as_bytes()) };
        if status(sent) & STATUS_SUCCESS == 0 {
            return Err("sending the command failed".into());
        }
        let r = self.low(TYPE_RECVSIZE, 0);
        if status(r.ecx) & STATUS_SUCCESS == 0 {
            return Err("the host gave no reply size".into());
        }
        if status(r.ecx) & STATUS_DORECV == 0 {
            return Ok(Vec::new());
        }
        if status(r.edx) != TYPE_SENDSIZE {
            return Err("the host's reply is out of order".into());
        }
        let len = r.ebx as usize;
        if len > MAX_REPLY {
            return Err(format!(
                "the host's reply of {len} bytes is over {MAX_REPLY}"
            ));
        }
        let mut reply = vec![0u8; len];
        // SAFETY: as above; `reply` is ours, mutable and `len` long.
        let got = unsafe { port::receive(self.channel, self.cookies, &mut reply) };
        if status(got) & STATUS_SUCCESS == 0 {
            return Err("receiving the reply failed".into());
        }
        let _ = self.low(TYPE_RECVSTATUS, STATUS_SUCCESS);
        Ok(reply)
    }

    pub fn info_get(&mut self, key: &str) -> Result<Option<String>, String> {
        parse_info_get(&self.command(&format!("info-get {key}"))?)
    }

    pub fn info_set(&mut self, key: &str, value: &str) -> Result<(), String> {
        parse_info_set(&self.command(&format!("info-set {key} {value}"))?)
    }
}

#[cfg(target_arch = "x86_64")]
fn drop_permission() {
    // SAFETY: as in `open`.
    unsafe {
        nix::libc::ioperm(u64::from(PORT_LB), 2, 0);
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for Rpc {
    fn drop(&mut self) {
        let _ = self.low(TYPE_CLOSE, 0);
        drop_permission();
    }
}

/// Not x86: there is no backdoor port.
#[cfg(not(target_arch = "x86_64"))]
pub struct Rpc;

#[cfg(not(target_arch = "x86_64"))]
impl Rpc {
    pub fn open() -> Result<Rpc, String> {
        Err("the VMware backdoor exists on x86_64 only".into())
    }
    pub fn info_get(&mut self, _key: &str) -> Result<Option<String>, String> {
        Err("no backdoor".into())
    }
    pub fn info_set(&mut self, _key: &str, _value: &str) -> Result<(), String> {
        Err("no backdoor".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_calls_encode_subtype_channel_and_port() {
        let open = message_call(TYPE_OPEN, 0, RPCI_PROTOCOL | FLAG_COOKIE, (0, 0));
        assert_eq!(open.eax, 0x564D_5868);
        assert_eq!(open.ebx, 0xC943_5052, "RPCI with the cookie flag");
        assert_eq!(open.ecx, 0x0000_001E);
        assert_eq!(open.edx, 0x0000_5658);
        let size = message_call(TYPE_SENDSIZE, 3, 42, (0xAAAA_0001, 0xBBBB_0002));
        assert_eq!(size.ecx, 0x0001_001E);
        assert_eq!(size.edx, 0x0003_5658);
        assert_eq!(
            (size.ebx, size.esi, size.edi),
            (42, 0xAAAA_0001, 0xBBBB_0002)
        );
        assert_eq!(message_call(TYPE_CLOSE, 0xffff, 0, (0, 0)).edx, 0xFFFF_5658);
        assert_eq!(status(0x0083_0000) & STATUS_HB, STATUS_HB);
        assert_eq!(status(0x0083_0000) & STATUS_SUCCESS, STATUS_SUCCESS);
        assert_eq!(u32::from_be_bytes(*b"VMXh"), MAGIC);
        assert_eq!(u32::from_le_bytes(*b"RPCI"), RPCI_PROTOCOL);
    }

    #[test]
    fn info_get_and_set_replies() {
        assert_eq!(
            parse_info_get(b"1 dmVyc2lvbg==").unwrap().as_deref(),
            Some("dmVyc2lvbg==")
        );
        assert_eq!(parse_info_get(b"1 ").unwrap().as_deref(), Some(""));
        assert_eq!(parse_info_get(b"0 No value found").unwrap(), None);
        assert!(parse_info_get(b"").is_err());
        assert!(parse_info_get(b"x").is_err());
        assert!(parse_info_set(b"1 ").is_ok());
        assert!(parse_info_set(b"0 Permission denied")
            .unwrap_err()
            .contains("Permission denied"));
    }
}
