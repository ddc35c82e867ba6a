//! QEMU's fw_cfg: `-fw_cfg name=opt/caisson/config,file=node.toml` shows
//! up, once the `qemu_fw_cfg` module is loaded, as
//! `/sys/firmware/qemu_fw_cfg/by_name/opt/caisson/config/raw`. The module
//! is loaded only when the firmware has the device (ACPI `QEMU0002`).

use std::path::{Path, PathBuf};

pub const NAME: &str = "opt/caisson/config";
pub const MODULE: &str = "qemu_fw_cfg";

/// Where sysfs shows fw_cfg and whether the firmware has it; tests point
/// these into a temporary tree.
#[derive(Debug, Clone)]
pub struct Paths {
    pub sysfs: PathBuf,
    pub acpi_device: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            sysfs: PathBuf::from("/sys/firmware/qemu_fw_cfg"),
            acpi_device: PathBuf::from("/sys/bus/acpi/devices/QEMU0002:00"),
        }
    }
}

impl Paths {
    pub fn raw(&self) -> PathBuf {
        self.sysfs.join("by_name").join(NAME).join("raw")
    }

    /// The firmware has fw_cfg (the device, or the driver already bound).
    pub fn present(&self) -> bool {
        self.acpi_device.exists() || self.sysfs.exists()
    }
}

/// The entry's bytes, loading the module when needed. `Ok(None)`: no
/// fw_cfg on this machine, or no entry of that name.
pub fn read(
    paths: &Paths,
    load: &mut dyn FnMut(&str) -> Result<(), String>,
    max: usize,
) -> Result<Option<Vec<u8>>, String> {
    if !paths.present() {
        return Ok(None);
    }
    if !paths.sysfs.exists() {
        load(MODULE).map_err(|e| format!("loading {MODULE}: {e}"))?;
    }
    super::read_limited(&paths.raw(), max)
}

/// For messages: the file read.
pub fn describe(paths: &Paths) -> String {
    Path::new(&paths.raw()).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_entry_loading_the_module_only_when_the_device_exists() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            sysfs: dir.path().join("qemu_fw_cfg"),
            acpi_device: dir.path().join("QEMU0002:00"),
        };
        let loaded = std::cell::RefCell::new(Vec::new());
        let mut load = |m: &str| {
            loaded.borrow_mut().push(m.to_string());
            Ok(())
        };
        // No device: nothing loaded, nothing read.
        assert_eq!(read(&paths, &mut load, 100).unwrap(), None);
        std::fs::create_dir(&paths.acpi_device).unwrap();
        // The device but no entry: the module is loaded, then nothing.
        assert_eq!(read(&paths, &mut load, 100).unwrap(), None);
        let raw = paths.raw();
        std::fs::create_dir_all(raw.parent().unwrap()).unwrap();
        std::fs::write(&raw, "version = 1\n").unwrap();
        assert_eq!(
            read(&paths, &mut load, 100).unwrap().unwrap(),
            b"version = 1\n"
        );
        assert_eq!(
            *loaded.borrow(),
            ["qemu_fw_cfg"],
            "loaded once, while sysfs had no qemu_fw_cfg"
        );
        assert!(read(&paths, &mut load, 4)
            .unwrap_err()
            .contains("larger than 4 bytes"));
        assert!(describe(&paths).ends_with("by_name/opt/caisson/config/raw"));
    }

    #[test]
    fn a_module_that_does_not_load_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            sysfs: dir.path().join("qemu_fw_cfg"),
            acpi_device: dir.path().to_path_buf(),
        };
        let e = read(&paths, &mut |_| Err("no such module".into()), 10).unwrap_err();
        assert_eq!(e, "loading qemu_fw_cfg: no such module");
    }
}
