//! `[install]`: which disk a live node installs itself to.

use super::{has_control, Problems};
use crate::schema::{DiskSelector, Install};
use crate::size::SizeMatch;

pub(super) fn install(p: &mut Problems, i: &Install) {
    match (&i.disk, &i.disk_selector) {
        (Some(_), Some(_)) => p.add("install", "set either `disk` or `disk_selector`, not both"),
        (None, None) => p.add(
            "install",
            "expected `disk` (a device node like /dev/sda) or an [install.disk_selector]",
        ),
        (Some(disk), None) => {
            if let Err(why) = check_disk(disk) {
                p.add("install.disk", format!("{disk:?}: {why}"));
            }
        }
        (None, Some(s)) => selector(p, s),
    }
}

/// `/dev/<kernel name>` of a whole disk: letters and digits after `/dev/`.
fn check_disk(disk: &str) -> Result<(), String> {
    if disk.starts_with("/dev/disk/") {
        return Err(
            "the node has no udev to make /dev/disk/by-* links: select the disk with \
             [install.disk_selector] (serial, model, size, type) instead"
                .into(),
        );
    }
    let Some(name) = disk.strip_prefix("/dev/") else {
        return Err(
            "expected a whole disk's device node like /dev/sda, /dev/nvme0n1 or /dev/vdb".into(),
        );
    };
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        return Err(
            "expected a whole disk's device node like /dev/sda, /dev/nvme0n1 or /dev/vdb".into(),
        );
    }
    Ok(())
}

fn selector(p: &mut Problems, s: &DiskSelector) {
    let at = "install.disk_selector";
    if s.size.is_none() && s.model.is_none() && s.serial.is_none() && s.disk_type.is_none() {
        p.add(
            at,
            "expected at least one of `size`, `model`, `serial` and `type`",
        );
    }
    if let Some(size) = &s.size {
        if let Err(e) = SizeMatch::parse(size) {
            p.add(format!("{at}.size"), e);
        }
    }
    for (key, glob) in [("model", &s.model), ("serial", &s.serial)] {
        if let Some(g) = glob {
            if g.trim().is_empty() || has_control(g) {
                p.add(
                    format!("{at}.{key}"),
                    format!("{g:?}: expected a glob pattern (*, ?, [...]) on the disk's {key}"),
                );
            }
        }
    }
}
