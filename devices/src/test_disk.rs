//! GPT disk images for tests, made by sgdisk (gdisk package) so the reader
//! is checked against an independent writer.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const ESP_GUID: &str = "11111111-2222-4333-8444-555555555555";
pub const ROOT_A_GUID: &str = "6f1c9a52-8a3e-4d1b-9f4e-2f0a4b5c6d7e";
pub const STATE_GUID: &str = "0a0b0c0d-0e0f-4a1b-8c2d-3e4f5a6b7c8d";
pub const ROOT_TYPE: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";

fn sgdisk() -> PathBuf {
    for candidate in ["/usr/sbin/sgdisk", "/sbin/sgdisk", "/usr/bin/sgdisk"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "sgdisk not found: install the gdisk package (these tests need an independent GPT writer)"
    );
}

/// An 8 MiB disk: 1 ESP (1 MiB at LBA 2048), 2 ROOT-A (2 MiB), no 3,
/// 4 STATE (1 MiB), with fixed GUIDs.
pub fn make_disk(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(8 * 1024 * 1024).unwrap();
    drop(f);
    let status = Command::new(sgdisk())
        .args(["-o", "-U", "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"])
        .args([
            "-n",
            "1:2048:+1M",
            "-t",
            "1:ef00",
            "-c",
            "1:ESP",
            "-u",
            &format!("1:{ESP_GUID}"),
        ])
        .args([
            "-n",
            "2:0:+2M",
            "-t",
            &format!("2:{ROOT_TYPE}"),
            "-c",
            "2:ROOT-A",
            "-u",
            &format!("2:{ROOT_A_GUID}"),
        ])
        .args([
            "-n",
            "4:0:+1M",
            "-t",
            "4:8300",
            "-c",
            "4:STATE",
            "-u",
            &format!("4:{STATE_GUID}"),
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "sgdisk failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}
