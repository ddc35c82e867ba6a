//! Coldplug, as udev does it at boot: every device's modalias under
//! /sys/devices is matched against `modules.alias`, and each matching module
//! is loaded with its dependencies. Loading a driver makes new devices
//! appear (the ACPI button driver registers an input device, which evdev
//! then matches), so passes repeat until one loads nothing new.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caisson_kmod::loader::Loader;
use caisson_kmod::{KmodError, ModuleIndex};
use tracing::debug;

pub const SYS_DEVICES: &str = "/sys/devices";
/// Enough for the deepest chain seen (bus → device → input → evdev) with
/// room to spare; bounds the work if a driver keeps creating devices.
pub const MAX_PASSES: u32 = 8;
/// Drivers may finish probing just after finit_module returns.
const SETTLE: Duration = Duration::from_millis(20);

/// The kernel and module tree coldplug works against; a fake in tests.
pub trait Modules {
    fn modaliases(&self) -> Vec<String>;
    fn matching(&self, modalias: &str) -> Vec<String>;
    /// Load `name` and its dependencies; the modules loaded by this call.
    fn load(&mut self, name: &str) -> Result<Vec<String>, String>;
    fn settle(&self) {}
}

/// What coldplug did, for the summary line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub loaded: Vec<String>,
    pub passes: u32,
    pub failed: Vec<(String, String)>,
}

impl Report {
    /// `coldplug: loaded 3 modules (button, evdev, virtio_net) in 3 passes; 1 failed (floppy)`
    pub fn summary(&self) -> String {
        let mut line = format!(
            "coldplug: loaded {} module{} ({}) in {} pass{}; {} failed",
            self.loaded.len(),
            if self.loaded.len() == 1 { "" } else { "s" },
            self.loaded.join(", "),
            self.passes,
            if self.passes == 1 { "" } else { "es" },
            self.failed.len(),
        );
        if !self.failed.is_empty() {
            let names: Vec<&str> = self.failed.iter().map(|(name, _)| name.as_str()).collect();
            line.push_str(&format!(" ({})", names.join(", ")));
        }
        line
    }
}

/// Run passes until one loads nothing new, or `max_passes`. Each module is
/// tried at most once: one that failed will fail again.
pub fn coldplug(modules: &mut impl Modules, max_passes: u32) -> Report {
    let mut report = Report::default();
    let mut tried = BTreeSet::new();
    while report.passes < max_passes {
        report.passes += 1;
        let pass_started = Instant::now();
        let aliases = modules.modaliases();
        let wanted: BTreeSet<String> = aliases
            .iter()
            .flat_map(|alias| modules.matching(alias))
            .collect();
        debug!(
            "coldplug: pass {}: {} modaliases, {} matching modules, scanned in {} ms",
            report.passes,
            aliases.len(),
            wanted.len(),
            pass_started.elapsed().as_millis()
        );
        let mut loaded_this_pass = 0;
        for name in wanted {
            if !tried.insert(name.clone()) {
                continue;
            }
            let load_started = Instant::now();
            match modules.load(&name) {
                Ok(newly) => {
                    debug!(
                        "coldplug: {name}: loaded {newly:?} in {} ms",
                        load_started.elapsed().as_millis()
                    );
                    loaded_this_pass += newly.len();
                    report.loaded.extend(newly);
                }
                Err(e) => {
                    debug!("coldplug: {name}: {e}");
                    report.failed.push((name, e));
                }
            }
        }
        if loaded_this_pass == 0 {
            break;
        }
        modules.settle();
    }
    report.loaded.sort();
    report
}

/// The running kernel's modules, loaded with `finit_module`.
pub struct KernelModules {
    pub sys_devices: PathBuf,
    pub loader: Loader,
}

impl KernelModules {
    /// Reads the module index of `modules_dir` (`/usr/lib/modules/<kver>`).
    pub fn open(modules_dir: &Path) -> Result<KernelModules, KmodError> {
        let index = ModuleIndex::load(modules_dir)?;
        Ok(KernelModules {
            sys_devices: PathBuf::from(SYS_DEVICES),
            loader: Loader::new(modules_dir.to_path_buf(), index),
        })
    }
}

impl Modules for KernelModules {
    fn modaliases(&self) -> Vec<String> {
        caisson_devices::modaliases(&self.sys_devices)
    }

    fn matching(&self, modalias: &str) -> Vec<String> {
        self.loader.index().match_modalias(modalias)
    }

    fn load(&mut self, name: &str) -> Result<Vec<String>, String> {
        self.loader.load_with_deps(name).map_err(|e| e.to_string())
    }

    fn settle(&self) {
        std::thread::sleep(SETTLE);
    }
}

/// `/usr/lib/modules/<running kernel release>`.
pub fn modules_dir() -> std::io::Result<PathBuf> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    Ok(Path::new(caisson_layout::paths::MODULES_ROOT).join(release.trim()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A machine where loading a driver can create new devices.
    #[derive(Default)]
    struct FakeMachine {
        devices: Vec<String>,
        aliases: BTreeMap<&'static str, Vec<&'static str>>,
        /// module → (dependencies loaded with it, devices it creates)
        effects: BTreeMap<&'static str, (Vec<&'static str>, Vec<&'static str>)>,
        broken: Vec<&'static str>,
        loaded: BTreeSet<String>,
        load_calls: Vec<String>,
    }

    impl Modules for FakeMachine {
        fn modaliases(&self) -> Vec<String> {
            self.devices.clone()
        }
        fn matching(&self, modalias: &str) -> Vec<String> {
            self.aliases
                .get(modalias)
                .map(|m| m.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default()
        }
        fn load(&mut self, name: &str) -> Result<Vec<String>, String> {
            self.load_calls.push(name.to_string());
            if self.broken.contains(&name) {
                return Err("finit_module: ENODEV".into());
            }
            let (deps, creates) = self.effects.get(name).cloned().unwrap_or_default();
            let mut newly = Vec::new();
            for m in deps.iter().copied().chain([name]) {
                if self.loaded.insert(m.to_string()) {
                    newly.push(m.to_string());
                }
            }
            self.devices.extend(creates.iter().map(|d| d.to_string()));
            Ok(newly)
        }
    }

    fn machine() -> FakeMachine {
        let mut m = FakeMachine {
            devices: vec![
                "acpi:LNXPWRBN:".into(),
                "pci:virtio-net".into(),
                "pci:floppy".into(),
            ],
            ..Default::default()
        };
        m.aliases.insert("acpi:LNXPWRBN:", vec!["button"]);
        m.aliases.insert("pci:virtio-net", vec!["virtio_net"]);
        m.aliases.insert("pci:floppy", vec!["floppy"]);
        m.aliases.insert("input:power", vec!["evdev"]);
        m.effects.insert("button", (vec![], vec!["input:power"]));
        m.effects
            .insert("virtio_net", (vec!["net_failover", "failover"], vec![]));
        m.broken.push("floppy");
        m
    }

    #[test]
    fn passes_repeat_until_new_devices_stop_appearing() {
        let mut m = machine();
        let report = coldplug(&mut m, MAX_PASSES);
        assert_eq!(
            report.loaded,
            ["button", "evdev", "failover", "net_failover", "virtio_net"]
        );
        // 1: button, virtio_net; 2: evdev (for the button's input device); 3: nothing new.
        assert_eq!(report.passes, 3);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].0, "floppy");
        // A failed module is not retried on later passes.
        assert_eq!(m.load_calls.iter().filter(|c| *c == "floppy").count(), 1);
    }

    #[test]
    fn passes_are_bounded() {
        let mut m = machine();
        // evdev keeps creating devices that want a new module: never settles.
        m.effects.insert("evdev", (vec![], vec!["input:power"]));
        let report = coldplug(&mut m, 2);
        assert_eq!(report.passes, 2);
    }

    #[test]
    fn already_loaded_modules_do_not_cause_another_pass() {
        let mut m = machine();
        m.broken.clear();
        m.aliases.clear();
        m.aliases.insert("pci:virtio-net", vec!["virtio_net"]);
        m.loaded.insert("virtio_net".into());
        m.loaded.insert("net_failover".into());
        m.loaded.insert("failover".into());
        let report = coldplug(&mut m, MAX_PASSES);
        assert_eq!(
            report,
            Report {
                loaded: vec![],
                passes: 1,
                failed: vec![]
            }
        );
    }

    #[test]
    fn the_summary_names_what_was_loaded_and_what_failed() {
        let report = Report {
            loaded: vec!["button".into(), "evdev".into()],
            passes: 3,
            failed: vec![("floppy".into(), "ENODEV".into())],
        };
        assert_eq!(
            report.summary(),
            "coldplug: loaded 2 modules (button, evdev) in 3 passes; 1 failed (floppy)"
        );
        let one = Report {
            loaded: vec!["evdev".into()],
            passes: 1,
            failed: vec![],
        };
        assert_eq!(
            one.summary(),
            "coldplug: loaded 1 module (evdev) in 1 pass; 0 failed"
        );
    }
}
