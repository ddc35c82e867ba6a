//! Device-mapper through its ioctls on `/dev/mapper/control`
//! (`linux/dm-ioctl.h`, interface version 4): create a device, load a
//! table, resume (which swaps a loaded table in), and read the targets'
//! status. That is all stage 1 needs.
//!
//! Why not the `devicemapper` crate: its `-sys` crate runs bindgen at build
//! time (libclang and libdevmapper headers on every build host) and brings a
//! second `nix`. The four ioctls below are a fixed, documented ABI; their
//! encoding is kept in pure functions with tests.

use std::fs::File;
use std::os::fd::AsRawFd;

use nix::errno::Errno;

pub const CONTROL: &str = "/dev/mapper/control";

const DM_IOCTL_TYPE: u8 = 0xfd;
/// We speak 4.0.0; the kernel accepts any older minor.
const DM_VERSION: [u32; 3] = [4, 0, 0];
/// `sizeof(struct dm_ioctl)`.
const HEADER_SIZE: usize = 312;
/// `sizeof(struct dm_target_spec)`.
const TARGET_SPEC_SIZE: usize = 40;
const NAME_LEN: usize = 128;
const TARGET_TYPE_LEN: usize = 16;

const DM_DEV_CREATE_CMD: u8 = 3;
const DM_DEV_SUSPEND_CMD: u8 = 6;
const DM_TABLE_LOAD_CMD: u8 = 9;
const DM_TABLE_STATUS_CMD: u8 = 12;

const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;
/// Resume without freezing the file system: ours is a read-only squashfs.
const DM_SKIP_LOCKFS_FLAG: u32 = 1 << 10;

// Offsets in `struct dm_ioctl`.
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_FLAGS: usize = 28;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;

/// One line of a table (or of a status reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub start: u64,
    pub length: u64,
    pub kind: String,
    /// Table parameters, or the status text in a status reply.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNumber {
    pub major: u32,
    pub minor: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DmError {
    #[error("device-mapper: open {CONTROL}: {0} (is dm_mod loaded?)")]
    Open(Errno),
    #[error("device-mapper: {what} {name}: {errno}")]
    Ioctl {
        what: &'static str,
        name: String,
        errno: Errno,
    },
    #[error("device-mapper: {0}")]
    Encoding(String),
}

/// The ioctl argument: header, then (for a table load) the targets.
pub fn encode(name: &str, flags: u32, targets: &[Target], room: usize) -> Result<Vec<u8>, DmError> {
    if name.is_empty() || name.len() >= NAME_LEN || name.contains('/') {
        return Err(DmError::Encoding(format!("bad device name {name:?}")));
    }
    let mut buf = vec![0u8; HEADER_SIZE];
    for (i, v) in DM_VERSION.iter().enumerate() {
        put_u32(&mut buf, 4 * i, *v)?;
    }
    put_u32(&mut buf, OFF_DATA_START, HEADER_SIZE as u32)?;
    put_u32(&mut buf, OFF_TARGET_COUNT, targets.len() as u32)?;
    put_u32(&mut buf, OFF_FLAGS, flags)?;
    put(&mut buf, OFF_NAME, name.as_bytes())?;
    for t in targets {
        if t.kind.len() >= TARGET_TYPE_LEN || t.text.contains('\0') {
            return Err(DmError::Encoding(format!("bad target {:?}", t.kind)));
        }
        let at = buf.len();
        // spec, parameters, NUL, padded so the next spec is 8-byte aligned.
        let len = (TARGET_SPEC_SIZE + t.text.len() + 1).next_multiple_of(8);
        buf.resize(at + len, 0);
        put_u64(&mut buf, at, t.start)?;
        put_u64(&mut buf, at + 8, t.length)?;
        put_u32(&mut buf, at + 20, len as u32)?;
        put(&mut buf, at + 24, t.kind.as_bytes())?;
        put(&mut buf, at + TARGET_SPEC_SIZE, t.text.as_bytes())?;
    }
    buf.resize(buf.len() + room, 0);
    let size = buf.len() as u32;
    put_u32(&mut buf, OFF_DATA_SIZE, size)?;
    Ok(buf)
}

/// `dev` of a reply, in the kernel's `huge_encode_dev` format.
pub fn decode_dev(buf: &[u8]) -> DevNumber {
    let dev = get_u64(buf, OFF_DEV);
    DevNumber {
        major: ((dev & 0xfff00) >> 8) as u32,
        minor: ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32,
    }
}

/// The targets of a status reply: each spec is followed by its status text,
/// and `next` counts from the start of the data area.
pub fn decode_status(buf: &[u8]) -> Result<Vec<Target>, DmError> {
    let bad = |what: &str| Err(DmError::Encoding(format!("status reply: {what}")));
    if buf.len() < HEADER_SIZE {
        return bad("shorter than the header");
    }
    if get_u32(buf, OFF_FLAGS) & DM_BUFFER_FULL_FLAG != 0 {
        return bad("buffer full");
    }
    let data = get_u32(buf, OFF_DATA_START) as usize;
    let count = get_u32(buf, OFF_TARGET_COUNT) as usize;
    let mut targets = Vec::with_capacity(count.min(16));
    let mut next = 0usize;
    for _ in 0..count {
        let at = data.saturating_add(next);
        let (Some(spec), Some(text)) = (buf.get(at..at + TARGET_SPEC_SIZE), buf.get(at + TARGET_SPEC_SIZE..)) else {
            return bad("target outside the buffer");
        };
        let Some(end) = text.iter().position(|&b| b == 0) else {
            return bad("unterminated status");
        };
        targets.push(Target {
            start: get_u64(spec, 0),
            length: get_u64(spec, 8),
            kind: c_string(spec.get(24..24 + TARGET_TYPE_LEN).unwrap_or_default()),
            text: String::from_utf8_lossy(text.get(..end).unwrap_or_default()).into_owned(),
        });
        next = get_u32(spec, 20) as usize;
    }
    Ok(targets)
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(b.get(..end).unwrap_or(b)).into_owned()
}

// Bounds-checked field access: this runs in PID 1, so a layout mistake must
// become an error, never a panic.
fn put(b: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), DmError> {
    at.checked_add(bytes.len())
        .and_then(|end| b.get_mut(at..end))
        .map(|dst| dst.copy_from_slice(bytes))
        .ok_or_else(|| DmError::Encoding(format!("field at {at} (+{}) is outside the {}-byte buffer", bytes.len(), b.len())))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) -> Result<(), DmError> {
    put(b, at, &v.to_ne_bytes())
}

fn put_u64(b: &mut [u8], at: usize, v: u64) -> Result<(), DmError> {
    put(b, at, &v.to_ne_bytes())
}

/// Reads past the end give 0; callers check lengths where it matters.
fn get_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at.saturating_add(4))
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_ne_bytes)
        .unwrap_or(0)
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at.saturating_add(8))
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_ne_bytes)
        .unwrap_or(0)
}

/// An open `/dev/mapper/control`.
pub struct Control {
    file: File,
}

impl Control {
    pub fn open() -> Result<Control, DmError> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map(|file| Control { file })
            .map_err(|e| DmError::Open(Errno::from_raw(e.raw_os_error().unwrap_or(0))))
    }

    fn call(&self, what: &'static str, name: &str, cmd: u8, buf: &mut [u8]) -> Result<(), DmError> {
        let request = nix::request_code_readwrite!(DM_IOCTL_TYPE, cmd, HEADER_SIZE);
        // SAFETY: `buf` is a dm_ioctl header followed by its payload, and
        // its `data_size` field is the buffer's length, so the kernel reads
        // and writes within it.
        let res = unsafe { nix::libc::ioctl(self.file.as_raw_fd(), request, buf.as_mut_ptr()) };
        Errno::result(res)
            .map(drop)
            .map_err(|errno| DmError::Ioctl {
                what,
                name: name.to_string(),
                errno,
            })
    }

    /// A new device with no table yet.
    pub fn create(&self, name: &str) -> Result<DevNumber, DmError> {
        let mut buf = encode(name, 0, &[], 0)?;
        self.call("create", name, DM_DEV_CREATE_CMD, &mut buf)?;
        Ok(decode_dev(&buf))
    }

    /// Load `targets` as the device's inactive table; `resume` makes it live.
    pub fn load_read_only(&self, name: &str, targets: &[Target]) -> Result<(), DmError> {
        let mut buf = encode(name, DM_READONLY_FLAG, targets, 0)?;
        self.call("load the table of", name, DM_TABLE_LOAD_CMD, &mut buf)
    }

    /// Resume the device, swapping in a loaded table if there is one.
    pub fn resume(&self, name: &str) -> Result<(), DmError> {
        let mut buf = encode(name, DM_SKIP_LOCKFS_FLAG, &[], 0)?;
        self.call("resume", name, DM_DEV_SUSPEND_CMD, &mut buf)
    }

    /// Each live target's status (`STATUSTYPE_INFO`).
    pub fn status(&self, name: &str) -> Result<Vec<Target>, DmError> {
        let mut buf = encode(name, 0, &[], 4096)?;
        self.call("status of", name, DM_TABLE_STATUS_CMD, &mut buf)?;
        decode_status(&buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verity(text: &str) -> Target {
        Target {
            start: 0,
            length: 1032,
            kind: "verity".into(),
            text: text.into(),
        }
    }

    #[test]
    fn load_argument_is_header_then_aligned_target_spec_and_params() {
        let buf = encode(
            "caisson-root",
            DM_READONLY_FLAG,
            &[verity("1 254:2 254:2")],
            0,
        )
        .unwrap();
        // 312 + 40 + "1 254:2 254:2\0" (14) = 366, padded to 368.
        assert_eq!(buf.len(), 368);
        assert_eq!(get_u32(&buf, 0), 4);
        assert_eq!(get_u32(&buf, OFF_DATA_SIZE), 368);
        assert_eq!(get_u32(&buf, OFF_DATA_START), 312);
        assert_eq!(get_u32(&buf, OFF_TARGET_COUNT), 1);
        assert_eq!(get_u32(&buf, OFF_FLAGS), 1);
        assert_eq!(&buf[48..61], b"caisson-root\0");
        assert_eq!(get_u64(&buf, 312 + 8), 1032);
        assert_eq!(get_u32(&buf, 312 + 20), 56);
        assert_eq!(&buf[312 + 24..312 + 31], b"verity\0");
        assert_eq!(&buf[352..367], b"1 254:2 254:2\0\0");
    }

    #[test]
    fn bad_names_and_targets_are_refused_before_the_kernel_sees_them() {
        assert!(encode("", 0, &[], 0).is_err());
        assert!(encode(&"x".repeat(128), 0, &[], 0).is_err());
        assert!(encode("a/b", 0, &[], 0).is_err());
        let long_kind = Target {
            kind: "x".repeat(16),
            ..verity("")
        };
        assert!(encode("r", 0, &[long_kind], 0).is_err());
    }

    #[test]
    fn dev_numbers_decode_from_the_huge_encoding() {
        let mut buf = encode("r", 0, &[], 0).unwrap();
        // major 254, minor 0x123: (minor & 0xff) | major << 8 | (minor & ~0xff) << 12
        let dev: u64 = 0x23 | (254 << 8) | (0x100 << 12);
        put_u64(&mut buf, OFF_DEV, dev).unwrap();
        assert_eq!(
            decode_dev(&buf),
            DevNumber {
                major: 254,
                minor: 0x123
            }
        );
    }

    #[test]
    fn status_reply_is_read_spec_by_spec() {
        // What the kernel writes back: data_start, count, specs with `next`
        // counted from the data area.
        let mut buf = encode("r", 0, &[verity("V"), verity("C")], 0).unwrap();
        // Our encoder's `next` is per spec; the kernel's is from the start.
        put_u32(&mut buf, 312 + 20, 48).unwrap();
        put_u32(&mut buf, 312 + 48 + 20, 96).unwrap();
        let targets = decode_status(&buf).unwrap();
        assert_eq!(
            targets.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
            ["V", "C"]
        );
        assert_eq!(targets[0].kind, "verity");
        put_u32(&mut buf, OFF_FLAGS, DM_BUFFER_FULL_FLAG).unwrap();
        assert!(decode_status(&buf).is_err());
        put_u32(&mut buf, OFF_FLAGS, 0).unwrap();
        put_u32(&mut buf, OFF_TARGET_COUNT, 3).unwrap();
        assert!(
            decode_status(&buf).is_err(),
            "a count past the buffer is an error"
        );
    }
}
