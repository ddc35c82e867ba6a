//! The block-device ioctls the installer and DATA's growth need, on an
//! open file descriptor: sizes, re-reading a partition table, dropping the
//! page cache, zeroing a range, resizing one partition in the kernel, and
//! growing a mounted ext4.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use nix::libc::{c_int, c_longlong, c_void};

// <linux/fs.h>
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), c_int);
nix::ioctl_none!(blkrrpart, 0x12, 95);
nix::ioctl_none!(blkflsbuf, 0x12, 97);
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);
// <linux/ext4.h>: EXT4_IOC_RESIZE_FS = _IOW('f', 16, __u64)
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

/// <linux/blkpg.h>
const BLKPG_ADD_PARTITION: c_int = 1;
const BLKPG_RESIZE_PARTITION: c_int = 3;
const BLKPG_DEVNAMELTH: usize = 64;
const BLKPG_VOLNAMELTH: usize = 64;

#[repr(C)]
pub struct BlkpgIoctlArg {
    op: c_int,
    flags: c_int,
    datalen: c_int,
    data: *mut c_void,
}

#[repr(C)]
struct BlkpgPartition {
    /// Bytes.
    start: c_longlong,
    /// Bytes.
    length: c_longlong,
    pno: c_int,
    devname: [u8; BLKPG_DEVNAMELTH],
    volname: [u8; BLKPG_VOLNAMELTH],
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The device's size in bytes.
pub fn size(dev: &File) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    unsafe { blkgetsize64(dev.as_raw_fd(), &mut size) }.map_err(errno)?;
    Ok(size)
}

/// The logical block (sector) size the device addresses: 512 or 4096.
pub fn logical_block_size(dev: &File) -> io::Result<u64> {
    let mut size: c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer.
    unsafe { blksszget(dev.as_raw_fd(), &mut size) }.map_err(errno)?;
    u64::try_from(size).map_err(|_| io::Error::other(format!("BLKSSZGET said {size}")))
}

/// Make the kernel read the disk's partition table again (fails with EBUSY
/// while a partition of it is in use).
pub fn reread_partitions(dev: &File) -> io::Result<()> {
    // SAFETY: BLKRRPART takes no argument.
    unsafe { blkrrpart(dev.as_raw_fd()) }
        .map(drop)
        .map_err(errno)
}

/// Write back and drop the device's cached pages, so the next read comes
/// from the disk itself.
pub fn flush_buffers(dev: &File) -> io::Result<()> {
    // SAFETY: BLKFLSBUF takes no argument.
    unsafe { blkflsbuf(dev.as_raw_fd()) }
        .map(drop)
        .map_err(errno)
}

/// Zero `len` bytes from `start` (both multiples of the logical block
/// size); the kernel uses the device's write-zeroes command when it has one.
pub fn zero_range(dev: &File, start: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let range = [start, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer.
    unsafe { blkzeroout(dev.as_raw_fd(), &range) }
        .map(drop)
        .map_err(errno)
}

/// Tell the kernel that partition `number` of the disk `disk` now spans
/// `length` bytes from `start` (BLKPG_RESIZE_PARTITION; the start cannot
/// move). Works while the partition is mounted.
pub fn resize_partition(disk: &File, number: u32, start: u64, length: u64) -> io::Result<()> {
    blkpg_partition(disk, BLKPG_RESIZE_PARTITION, number, start, length)
}

/// Register partition `number` (`length` bytes from `start`) with the
/// kernel without it reading the table (BLKPG_ADD_PARTITION).
pub fn add_partition(disk: &File, number: u32, start: u64, length: u64) -> io::Result<()> {
    blkpg_partition(disk, BLKPG_ADD_PARTITION, number, start, length)
}

fn blkpg_partition(disk: &File, op: c_int, number: u32, start: u64, length: u64) -> io::Result<()> {
    let to_ll = |v: u64| {
        c_longlong::try_from(v).map_err(|_| io::Error::other(format!("{v} is out of range")))
    };
    let mut part = BlkpgPartition {
        start: to_ll(start)?,
        length: to_ll(length)?,
        pno: c_int::try_from(number).map_err(|_| io::Error::other("partition number"))?,
        devname: [0; BLKPG_DEVNAMELTH],
        volname: [0; BLKPG_VOLNAMELTH],
    };
    let arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: the argument and the partition it points at live across the call.
    unsafe { blkpg(disk.as_raw_fd(), &arg) }
        .map(drop)
        .map_err(errno)
}

/// Grow the ext4 file system mounted where `dir` (any file or directory in
/// it) lives to `blocks` file-system blocks, online.
pub fn ext4_resize(dir: &File, blocks: u64) -> io::Result<()> {
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count).
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &blocks) }
        .map(drop)
        .map_err(errno)
}
