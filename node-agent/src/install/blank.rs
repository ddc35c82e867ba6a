//! Is a disk blank? What a partition table or a file system leaves at the
//! start (and, for GPT's backup header, at the end) of a disk, the same
//! places `wipefs`/libblkid look. Pure: works on the bytes it is given.

/// Bytes read from the start and the end of a disk for [`signatures`]:
/// enough for btrfs's superblock at 64 KiB and ISO 9660's descriptor at
/// 32 KiB.
pub const HEAD_BYTES: usize = 128 << 10;
pub const TAIL_BYTES: usize = 64 << 10;

fn at(b: &[u8], offset: usize, magic: &[u8]) -> bool {
    b.get(offset..offset + magic.len()) == Some(magic)
}

/// What the disk holds, one phrase each (`"a GPT partition table"`); empty
/// when it looks blank. `head` is the disk's first bytes, `tail` its last.
pub fn signatures(head: &[u8], tail: &[u8]) -> Vec<&'static str> {
    let mut found = Vec::new();
    if at(head, 512, b"EFI PART") || at(head, 4096, b"EFI PART") {
        found.push("a GPT partition table");
    } else if tail.len() >= 512 && at(tail, tail.len() - 512, b"EFI PART") {
        found.push("a backup GPT header at its end");
    } else if at(head, 510, &[0x55, 0xAA])
        && head
            .get(446..510)
            .is_some_and(|p| p.iter().any(|&b| b != 0))
    {
        found.push("an MBR partition table");
    }
    let checks: &[(usize, &[u8], &'static str)] = &[
        (1024 + 0x38, &[0x53, 0xEF], "an ext2/3/4 file system"),
        (0, b"XFSB", "an XFS file system"),
        (0x10040, b"_BHRfS_M", "a btrfs file system"),
        (54, b"FAT12", "a FAT file system"),
        (54, b"FAT16", "a FAT file system"),
        (82, b"FAT32", "a FAT file system"),
        (3, b"NTFS    ", "an NTFS file system"),
        (3, b"EXFAT   ", "an exFAT file system"),
        (0x8001, b"CD001", "an ISO 9660 file system"),
        (0, b"LUKS\xba\xbe", "a LUKS container"),
        (512 + 24, b"LVM2 001", "an LVM physical volume"),
        (4096 - 10, b"SWAPSPACE2", "a swap area"),
        (0, b"hsqs", "a squashfs image"),
        (0, &[0xfc, 0x4e, 0x2b, 0xa9], "an md RAID member"),
        (4096, &[0xfc, 0x4e, 0x2b, 0xa9], "an md RAID member"),
    ];
    for (offset, magic, what) in checks {
        if at(head, *offset, magic) && !found.contains(what) {
            found.push(what);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> (Vec<u8>, Vec<u8>) {
        (vec![0u8; HEAD_BYTES], vec![0u8; TAIL_BYTES])
    }

    #[test]
    fn a_zeroed_disk_is_blank() {
        let (h, t) = blank();
        assert!(signatures(&h, &t).is_empty());
        // Random-looking data without a known magic is blank too.
        let noise: Vec<u8> = (0..HEAD_BYTES).map(|i| (i * 7 % 251) as u8 + 1).collect();
        assert!(signatures(&noise, &t).is_empty());
    }

    #[test]
    fn partition_tables_are_found_at_either_end() {
        let (mut h, t) = blank();
        h[512..520].copy_from_slice(b"EFI PART");
        h[510] = 0x55;
        h[511] = 0xAA;
        h[450] = 0xEE;
        assert_eq!(signatures(&h, &t), ["a GPT partition table"]);
        let (h, mut t) = blank();
        let n = t.len();
        t[n - 512..n - 504].copy_from_slice(b"EFI PART");
        assert_eq!(signatures(&h, &t), ["a backup GPT header at its end"]);
        let (mut h, t) = blank();
        h[510] = 0x55;
        h[511] = 0xAA;
        h[446 + 4] = 0x83;
        assert_eq!(signatures(&h, &t), ["an MBR partition table"]);
        // A boot signature with an empty table (a bare FAT boot sector) is
        // not a partition table.
        h[446 + 4] = 0;
        assert!(signatures(&h, &t).is_empty());
    }

    #[test]
    fn file_systems_on_the_whole_disk_are_found() {
        for (offset, magic, what) in [
            (1024 + 0x38, &b"\x53\xEF"[..], "an ext2/3/4 file system"),
            (0x10040, b"_BHRfS_M", "a btrfs file system"),
            (82, b"FAT32", "a FAT file system"),
            (0x8001, b"CD001", "an ISO 9660 file system"),
            (4086, b"SWAPSPACE2", "a swap area"),
            (0, b"LUKS\xba\xbe", "a LUKS container"),
        ] {
            let (mut h, t) = blank();
            h[offset..offset + magic.len()].copy_from_slice(magic);
            assert_eq!(signatures(&h, &t), [what]);
        }
    }

    #[test]
    fn short_reads_never_panic() {
        assert!(signatures(&[0x55], &[]).is_empty());
        assert!(signatures(&[], &[1, 2, 3]).is_empty());
    }
}
