//! Known vectors from the independent implementation: `veritysetup format`
//! (Debian `cryptsetup-bin`) over the same data, salt and UUID must give the
//! same root hash and byte-identical superblock and tree, and
//! `veritysetup verify` must accept the hash area we write ourselves.
//!
//! These tests fail, never skip, when veritysetup is missing: `cargo xtask`
//! installs cryptsetup-bin.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use caisson_verity::{hash_reader, Superblock, BLOCK_SIZE, SUPERBLOCK_SIZE};

const UUID_TEXT: &str = "6f1c9a52-8a3e-4d1b-9f4e-2f0a4b5c6d7e";
const UUID: [u8; 16] = [
    0x6f, 0x1c, 0x9a, 0x52, 0x8a, 0x3e, 0x4d, 0x1b, 0x9f, 0x4e, 0x2f, 0x0a, 0x4b, 0x5c, 0x6d, 0x7e,
];

fn veritysetup() -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join("veritysetup");
        if p.exists() {
            return p;
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in path.split(':') {
            let p = Path::new(dir).join("veritysetup");
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "veritysetup not found: install Debian's cryptsetup-bin (`cargo xtask` installs the \
         test tools). These tests compare our hash trees with veritysetup's and do not skip."
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run veritysetup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// Deterministic data with some all-zero blocks (xorshift).
fn sample_data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    if len > 3 * 4096 {
        data[4096..2 * 4096].fill(0);
    }
    data
}

/// Format `data` (padded to whole blocks) with veritysetup, hash area
/// appended; then compare with ours.
fn compare_with_veritysetup(len: usize, salt: &[u8]) {
    let data = sample_data(len);
    let ours = hash_reader(&data[..], salt).unwrap();
    let blocks = ours.geometry().data_blocks();
    let hash_offset = ours.appended_hash_offset();
    assert_eq!(blocks, (len as u64).div_ceil(BLOCK_SIZE));

    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs.img");
    let mut f = std::fs::File::create(&theirs).unwrap();
    f.write_all(&data).unwrap();
    f.set_len(hash_offset + ours.geometry().hash_area_size())
        .unwrap();
    drop(f);
    let salt_hex = if salt.is_empty() {
        "-".to_string()
    } else {
        hex::encode(salt)
    };
    let out = run(Command::new(veritysetup())
        .arg("format")
        .arg(format!("--hash-offset={hash_offset}"))
        .arg(format!("--data-blocks={blocks}"))
        .arg(format!("--salt={salt_hex}"))
        .arg(format!("--uuid={UUID_TEXT}"))
        .arg(&theirs)
        .arg(&theirs));
    let root_line = out
        .lines()
        .find(|l| l.starts_with("Root hash:"))
        .unwrap_or_else(|| panic!("no root hash in: {out}"));
    assert_eq!(
        root_line.split_whitespace().last().unwrap(),
        ours.root_hash_hex(),
        "root hash of {len} bytes"
    );

    let mut f = std::fs::File::open(&theirs).unwrap();
    let mut sb = vec![0u8; SUPERBLOCK_SIZE];
    f.seek(SeekFrom::Start(hash_offset)).unwrap();
    f.read_exact(&mut sb).unwrap();
    assert_eq!(
        sb,
        ours.superblock(UUID).to_bytes(),
        "superblock of {len} bytes"
    );
    assert_eq!(Superblock::parse(&sb).unwrap().data_blocks, blocks);
    let mut tree = vec![0u8; ours.tree().len()];
    f.seek(SeekFrom::Start(hash_offset + BLOCK_SIZE)).unwrap();
    f.read_exact(&mut tree).unwrap();
    assert!(tree == ours.tree(), "tree bytes of {len} bytes differ");

    // The other way round: our hash area, veritysetup verifies it.
    let mine = dir.path().join("ours.img");
    let mut f = std::fs::File::create(&mine).unwrap();
    f.write_all(&data).unwrap();
    f.set_len(hash_offset).unwrap();
    f.seek(SeekFrom::Start(hash_offset)).unwrap();
    ours.write_hash_area(UUID, &mut f).unwrap();
    drop(f);
    let verify = |img: &Path| {
        Command::new(veritysetup())
            .arg("verify")
            .arg(format!("--hash-offset={hash_offset}"))
            .arg(img)
            .arg(img)
            .arg(ours.root_hash_hex())
            .output()
            .unwrap()
    };
    let ok = verify(&mine);
    assert!(
        ok.status.success(),
        "veritysetup verify refused our hash area: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // One flipped data byte must be caught.
    let mut f = OpenOptions::new()
        .write(true)
        .read(true)
        .open(&mine)
        .unwrap();
    let at = (len / 2) as u64;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[byte[0] ^ 1]).unwrap();
    drop(f);
    let bad = verify(&mine);
    assert!(
        !bad.status.success(),
        "veritysetup verify accepted a flipped byte at {at}"
    );
}

#[test]
fn one_block_no_tree() {
    compare_with_veritysetup(4096, &[0x5a; 32]);
}

#[test]
fn partial_last_block_counts_as_zero_padded() {
    compare_with_veritysetup(2 * 4096 - 100, &[0x01, 0x02, 0x03]);
}

#[test]
fn two_levels_without_salt() {
    compare_with_veritysetup(129 * 4096, &[]);
}

#[test]
fn three_levels_with_a_partial_top() {
    // 16385 blocks (64 MiB + 4 KiB): levels of 129, 2 and 1 blocks.
    compare_with_veritysetup(16385 * 4096 - 1, &[0xc3; 32]);
}

#[test]
fn longest_salt() {
    compare_with_veritysetup(300 * 4096, &[0x77; 256]);
}
