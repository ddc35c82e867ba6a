//! A read-only loop device over the root image file of a live boot
//! (`caisson.root=initrd:/caisson/root.img`), through the loop driver's
//! ioctls (`linux/loop.h`): `LOOP_CTL_GET_FREE` on `/dev/loop-control`,
//! then `LOOP_CONFIGURE` (Linux 5.8+) on the free device, which binds the
//! file, sets the flags and the size in one call.
//!
//! Why not the `loopdev-3` crate: its build script runs bindgen over
//! `linux/loop.h` (libclang and kernel headers on every build host), the
//! reason `dm.rs` is hand-written too. The one structure we pass is
//! encoded by a pure function with tests.
//!
//! The loop device holds the file open for as long as it exists, so when
//! `switch_root` deletes the initramfs the file's name goes but its pages
//! stay: the root image lives on in memory, reachable as `/dev/loopN`.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use caisson_devices::BlockDevice;
use nix::errno::Errno;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::error::InitError;

pub const LOOP_CONTROL: &str = "/dev/loop-control";

const LOOP_CTL_GET_FREE: u64 = 0x4C82;
const LOOP_CONFIGURE: u64 = 0x4C0A;
const LOOP_CLR_FD: u64 = 0x4C01;
/// `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: u64 = 0x8008_1272;

const LO_FLAGS_READ_ONLY: u32 = 1;
/// The loop driver's block major.
const LOOP_MAJOR: u64 = 7;

/// `sizeof(struct loop_config)`: fd, block_size, `struct loop_info64`
/// (232 bytes), 8 reserved u64.
pub const CONFIG_SIZE: usize = 304;
/// Offsets in `struct loop_config`.
const OFF_FD: usize = 0;
const OFF_BLOCK_SIZE: usize = 4;
const OFF_INFO: usize = 8;
/// Offsets in `struct loop_info64`.
const INFO_OFF_FLAGS: usize = 52;
const INFO_OFF_FILE_NAME: usize = 56;
const LO_NAME_SIZE: usize = 64;

/// Tries when another opener takes the free device between our two calls.
const ATTEMPTS: u32 = 5;

/// The argument of `LOOP_CONFIGURE` for `fd`: read-only, the default
/// 512-byte logical blocks, the whole file, its name (truncated, NUL
/// terminated) for `losetup -l`.
pub fn encode_config(fd: u32, file_name: &str) -> [u8; CONFIG_SIZE] {
    let mut buf = [0u8; CONFIG_SIZE];
    let mut put = |offset: usize, bytes: &[u8]| {
        if let Some(dst) = buf.get_mut(offset..offset + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(OFF_FD, &fd.to_ne_bytes());
    put(OFF_BLOCK_SIZE, &0u32.to_ne_bytes());
    put(OFF_INFO + INFO_OFF_FLAGS, &LO_FLAGS_READ_ONLY.to_ne_bytes());
    let name = file_name.as_bytes();
    let name = name.get(..LO_NAME_SIZE - 1).unwrap_or(name);
    put(OFF_INFO + INFO_OFF_FILE_NAME, name);
    buf
}

/// A loop device bound to the root image.
#[derive(Debug)]
pub struct AttachedLoop {
    pub device: BlockDevice,
    pub backing_file: PathBuf,
}

/// Check the image, bind it to a free loop device read-only, and describe
/// the device like any other root device.
pub fn attach(image: &Path) -> Result<AttachedLoop, InitError> {
    let fail = |reason: String| InitError::RootImage {
        path: image.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(image).map_err(|e| {
        fail(format!(
            "{e} (the initramfs does not carry it: was it built as the pxe output's initramfs?)"
        ))
    })?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() == 0 || meta.len() % 512 != 0 {
        return Err(fail(format!(
            "{} bytes: a root image is a non-empty whole number of 512-byte sectors (truncated?)",
            meta.len()
        )));
    }
    let file = File::open(image).map_err(|e| fail(format!("open: {e}")))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .map_err(|e| {
            fail(format!(
                "open {LOOP_CONTROL}: {e} (is the loop module in the initrd's module list?)"
            ))
        })?;
    let mut last = Errno::EBUSY;
    for _ in 0..ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let number = unsafe { nix::libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        let number = u32::try_from(
            Errno::result(number)
                .map_err(|errno| fail(format!("{LOOP_CONTROL}: LOOP_CTL_GET_FREE: {errno}")))?,
        )
        .map_err(|_| {
            fail(format!(
                "{LOOP_CONTROL}: LOOP_CTL_GET_FREE gave a negative number"
            ))
        })?;
        let name = format!("loop{number}");
        let node = device_node(&name, number).map_err(&fail)?;
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&node)
            .map_err(|e| fail(format!("open {}: {e}", node.display())))?;
        let fd = u32::try_from(file.as_raw_fd()).map_err(|_| fail("bad file descriptor".into()))?;
        let config = encode_config(fd, &image.display().to_string());
        // SAFETY: `config` is a `struct loop_config` of the kernel's size;
        // the kernel only reads it.
        let res =
            unsafe { nix::libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, config.as_ptr()) };
        match Errno::result(res) {
            Ok(_) => {
                let size_bytes = device_size(&dev).map_err(|errno| {
                    // Unbind again: a device whose size we cannot read is no use.
                    // SAFETY: LOOP_CLR_FD takes no argument.
                    let _ = unsafe { nix::libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD as _) };
                    fail(format!("{}: BLKGETSIZE64: {errno}", node.display()))
                })?;
                return Ok(AttachedLoop {
                    device: BlockDevice {
                        name,
                        dev_path: node,
                        size_bytes,
                        partition: None,
                    },
                    backing_file: image.to_path_buf(),
                });
            }
            // Someone bound it first: ask for another.
            Err(Errno::EBUSY) => last = Errno::EBUSY,
            Err(errno) => {
                return Err(fail(format!(
                    "{}: LOOP_CONFIGURE: {errno} (the kernel needs Linux 5.8 or later)",
                    node.display()
                )))
            }
        }
    }
    Err(fail(format!(
        "no loop device could be bound after {ATTEMPTS} tries: {last}"
    )))
}

/// `/dev/loopN`: devtmpfs makes it as the driver adds the device; if it is
/// not there yet, wait a little, then make it ourselves (there is no udev).
fn device_node(name: &str, number: u32) -> Result<PathBuf, String> {
    let node = Path::new("/dev").join(name);
    let is_block = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false)
    };
    if crate::steps::wait_for(Duration::from_secs(1), Duration::from_millis(20), || {
        is_block(&node).then_some(())
    })
    .is_some()
    {
        return Ok(node);
    }
    let minor = sysfs_minor(name).unwrap_or(u64::from(number));
    match mknod(
        &node,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o600),
        makedev(LOOP_MAJOR, minor),
    ) {
        Ok(()) | Err(Errno::EEXIST) => Ok(node),
        Err(errno) => Err(format!("mknod {}: {errno}", node.display())),
    }
}

/// The minor number from `/sys/class/block/<name>/dev` ("7:0").
fn sysfs_minor(name: &str) -> Option<u64> {
    let text =
        std::fs::read_to_string(Path::new("/sys/class/block").join(name).join("dev")).ok()?;
    text.trim().split_once(':')?.1.parse().ok()
}

fn device_size(dev: &File) -> Result<u64, Errno> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    let res =
        unsafe { nix::libc::ioctl(dev.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    Errno::result(res).map(|_| size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_config_layout_matches_linux_loop_h() {
        let buf = encode_config(7, "/caisson/root.img");
        assert_eq!(buf.len(), 304);
        assert_eq!(&buf[0..4], &7u32.to_ne_bytes());
        assert_eq!(&buf[4..8], &[0, 0, 0, 0], "block_size 0: the default");
        // loop_info64 at 8: five u64, then lo_number, encrypt type, key size,
        // lo_flags at 8 + 40 + 12 = 60.
        assert_eq!(&buf[60..64], &1u32.to_ne_bytes(), "LO_FLAGS_READ_ONLY");
        assert_eq!(&buf[64..64 + 17], b"/caisson/root.img");
        assert_eq!(buf[64 + 17], 0);
        assert!(buf[64 + 64..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_long_file_name_is_truncated_and_stays_nul_terminated() {
        let long = format!("/{}", "x".repeat(100));
        let buf = encode_config(3, &long);
        assert_eq!(&buf[64..64 + 63], &long.as_bytes()[..63]);
        assert_eq!(buf[64 + 63], 0);
    }

    #[test]
    fn a_missing_or_ragged_image_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("root.img");
        let e = attach(&missing).unwrap_err().to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(e.contains("pxe output"), "{e}");

        std::fs::write(&missing, vec![0u8; 1000]).unwrap();
        let e = attach(&missing).unwrap_err().to_string();
        assert!(e.contains("1000 bytes"), "{e}");
        let e = attach(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
