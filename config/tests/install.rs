//! `[install]`, as an operator meets it: a disk by device node, or a
//! selector, never both; errors carry the key path and its line.

use caisson_config::{parse, DiskType, SizeMatch, SizeOp};

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----";

fn base(extra: &str) -> String {
    format!("version = 1\n[api]\nca_cert = \"\"\"\n{CA}\n\"\"\"\nca_key = \"\"\"\n{KEY}\n\"\"\"\n{extra}\n")
}

fn errors(text: &str) -> Vec<String> {
    match parse("n.toml", text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

fn find<'a>(all: &'a [String], needle: &str) -> &'a str {
    all.iter()
        .find(|m| m.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in {all:#?}"))
}

#[test]
fn a_disk_or_a_selector_parses_into_typed_values_and_wipe_defaults_to_false() {
    let c = parse("n.toml", &base("[install]\ndisk = \"/dev/nvme0n1\"\n")).unwrap();
    let i = c.install.unwrap();
    assert_eq!(i.disk.as_deref(), Some("/dev/nvme0n1"));
    assert!(!i.wipe);

    let c = parse(
        "n.toml",
        &base(
            "[install]\nwipe = true\n[install.disk_selector]\nsize = \">= 100GB\"\n\
             model = \"Samsung SSD 8*\"\nserial = \"S4EV*\"\ntype = \"nvme\"\n",
        ),
    )
    .unwrap();
    let i = c.install.unwrap();
    assert!(i.wipe && i.disk.is_none());
    let s = i.disk_selector.unwrap();
    assert_eq!(s.disk_type, Some(DiskType::Nvme));
    assert_eq!(s.model.as_deref(), Some("Samsung SSD 8*"));
    assert_eq!(
        SizeMatch::parse(s.size.as_deref().unwrap()).unwrap(),
        SizeMatch {
            op: SizeOp::AtLeast,
            bytes: 100_000_000_000
        }
    );
    // Absent: absent, and not written back.
    let c = parse("n.toml", &base("")).unwrap();
    assert!(c.install.is_none());
    assert!(!toml::to_string(&c).unwrap().contains("install"));
}

#[test]
fn disk_and_selector_are_exclusive_and_one_is_required() {
    let e = errors(&base(
        "[install]\ndisk = \"/dev/sda\"\n[install.disk_selector]\nsize = \"4GiB\"\n",
    ));
    assert!(
        find(&e, "n.toml:").contains(": install: set either `disk` or `disk_selector`, not both")
    );
    let e = errors(&base("[install]\nwipe = true\n"));
    find(&e, "install: expected `disk`");
    let e = errors(&base("[install]\n[install.disk_selector]\n"));
    find(
        &e,
        "install.disk_selector: expected at least one of `size`, `model`, `serial` and `type`",
    );
}

#[test]
fn bad_values_name_their_key_and_line() {
    let e = errors(&base("[install]\ndisk = \"sda\"\n"));
    let m = find(&e, "install.disk:");
    assert!(m.starts_with("n.toml:14:"), "{m}");
    assert!(
        m.contains("expected a whole disk's device node like /dev/sda"),
        "{m}"
    );
    let e = errors(&base("[install]\ndisk = \"/dev/disk/by-id/wwn-0x5000\"\n"));
    find(&e, "no udev");
    let e = errors(&base("[install]\ndisk = \"/dev/../sda\"\n"));
    find(&e, "install.disk:");

    let e = errors(&base(
        "[install.disk_selector]\nsize = \"four gigs\"\nmodel = \"\"\n",
    ));
    find(
        &e,
        "install.disk_selector.size: \"four gigs\": expected a size like",
    );
    find(
        &e,
        "install.disk_selector.model: \"\": expected a glob pattern",
    );

    let e = errors(&base("[install.disk_selector]\ntype = \"floppy\"\n"));
    let m = find(&e, "install.disk_selector.type");
    assert!(m.contains("ssd") && m.contains("virtio"), "{m}");
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let e = errors(&base("[install]\ndisk = \"/dev/sda\"\nforce = true\n"));
    find(&e, "unknown field `force`");
    let e = errors(&base("[install.disk_selector]\nvendor = \"x\"\n"));
    let m = find(&e, "unknown field `vendor`");
    assert!(m.contains("install.disk_selector"), "{m}");
}
