//! Every device's `modalias` under /sys/devices: what coldplug matches
//! against `modules.alias`.

use std::collections::BTreeSet;
use std::path::Path;

/// The contents of every `modalias` file under `sys_devices`, trimmed,
/// sorted and without duplicates. Symlinks (`subsystem`, `driver`,
/// `device`…) are not followed: they lead back into the tree and would
/// loop. Unreadable entries are skipped: sysfs has files that refuse reads
/// and devices that vanish while we walk.
pub fn modaliases(sys_devices: &Path) -> Vec<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![sys_devices.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                stack.push(entry.path());
            } else if file_type.is_file() && entry.file_name() == "modalias" {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    let alias = text.trim();
                    if !alias.is_empty() {
                        found.insert(alias.to_string());
                    }
                }
            }
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_modaliases_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let devices = dir.path().join("devices");
        let pci = devices.join("pci0000:00/0000:00:04.0");
        let virtio = pci.join("virtio1");
        std::fs::create_dir_all(&virtio).unwrap();
        std::fs::write(
            pci.join("modalias"),
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n",
        )
        .unwrap();
        std::fs::write(virtio.join("modalias"), "virtio:d00000002v00001AF4\n").unwrap();
        let other = devices.join("platform/serial8250");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("modalias"), "platform:serial8250\n").unwrap();
        std::fs::write(other.join("uevent"), "DRIVER=serial8250\n").unwrap();
        let dup = devices.join("platform/serial8250/again");
        std::fs::create_dir_all(&dup).unwrap();
        std::fs::write(dup.join("modalias"), "platform:serial8250").unwrap();
        std::fs::write(devices.join("platform/modalias"), "  \n").unwrap();
        // A loop back to the top and a link to a modalias outside the tree.
        std::os::unix::fs::symlink(&devices, virtio.join("subsystem")).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("modalias"), "acpi:OUTSIDE:").unwrap();
        std::os::unix::fs::symlink(&outside, pci.join("driver")).unwrap();

        assert_eq!(
            modaliases(&devices),
            [
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
                "platform:serial8250",
                "virtio:d00000002v00001AF4",
            ]
        );
        assert!(modaliases(&dir.path().join("absent")).is_empty());
    }
}
