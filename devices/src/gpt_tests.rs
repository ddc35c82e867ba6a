use std::os::unix::fs::FileExt;

use super::*;
use crate::test_disk::{make_disk, ESP_GUID, ROOT_A_GUID, ROOT_TYPE, STATE_GUID};

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

#[test]
fn reads_the_entries_sgdisk_wrote_numbered_by_slot() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    make_disk(&disk);
    let parts = read_gpt(&disk).unwrap();
    let summary: Vec<(u32, &str, Uuid)> = parts
        .iter()
        .map(|p| (p.number, p.label.as_str(), p.guid))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "ESP", uuid(ESP_GUID)),
            (2, "ROOT-A", uuid(ROOT_A_GUID)),
            (4, "STATE", uuid(STATE_GUID))
        ]
    );
    assert_eq!((parts[0].first_lba, parts[0].last_lba), (2048, 4095));
    assert_eq!((parts[1].first_lba, parts[1].last_lba), (4096, 8191));
    assert_eq!(parts[1].type_guid, uuid(ROOT_TYPE));
    assert_eq!(
        parts[0].type_guid,
        uuid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    );
}

#[test]
fn a_corrupt_primary_header_falls_back_to_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    make_disk(&disk);
    let file = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    file.write_all_at(b"\xff\xff", 512 + 60).unwrap(); // inside the disk GUID: CRC now wrong
    let parts = read_gpt(&disk).unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[1].label, "ROOT-A");
    // Now break the backup as well: the error must say both are bad.
    let backup = 8 * 1024 * 1024 - 512;
    file.write_all_at(b"\xff\xff", backup + 60).unwrap();
    match read_gpt(&disk) {
        Err(e @ DevicesError::CorruptGpt { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("header CRC mismatch") && msg.contains("disk.img"),
                "{msg}"
            );
        }
        other => panic!("expected CorruptGpt, got {other:?}"),
    }
}

#[test]
fn a_corrupt_entry_array_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    make_disk(&disk);
    let file = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    // Primary entries at LBA 2 and backup entries before the backup header.
    file.write_all_at(b"X", 1024 + 56 + 128).unwrap();
    file.write_all_at(b"X", 8 * 1024 * 1024 - 512 - 32 * 512 + 56 + 128)
        .unwrap();
    match read_gpt(&disk) {
        Err(e) => assert!(e.to_string().contains("entry array CRC mismatch"), "{e}"),
        Ok(p) => panic!("corrupt entries accepted: {p:?}"),
    }
}

#[test]
fn disks_without_a_gpt_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.img");
    std::fs::write(&blank, vec![0u8; 64 * 1024]).unwrap();
    assert!(matches!(read_gpt(&blank), Err(DevicesError::NoGpt { .. })));
    let tiny = dir.path().join("tiny.img");
    std::fs::write(&tiny, b"short").unwrap();
    assert!(matches!(read_gpt(&tiny), Err(DevicesError::NoGpt { .. })));
    assert!(matches!(
        read_gpt(&dir.path().join("missing")),
        Err(DevicesError::Io { .. })
    ));
}

#[test]
fn header_validation_rejects_wrong_lba_and_bad_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    make_disk(&disk);
    let bytes = std::fs::read(&disk).unwrap();
    let sector = &bytes[512..1024];
    assert!(parse_header(sector, 1).is_ok());
    assert!(parse_header(sector, 2).unwrap_err().contains("LBA 1"));
    let mut bad = sector.to_vec();
    bad[12] = 40; // header size 40 < 92
    assert!(parse_header(&bad, 1).unwrap_err().contains("header size"));
}
