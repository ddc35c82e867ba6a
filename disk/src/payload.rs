//! The install payload: what the builder puts under [`INSTALL_DIR`] in the
//! root image so that a node booted live can write a whole disk with no
//! other input. The installer copies the root image itself from the running
//! root's backing device; everything else a disk needs is here, described
//! by [`InstallManifest`] (`manifest.json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// In the root image.
pub const INSTALL_DIR: &str = "/usr/lib/caisson/install";
/// systemd-boot's EFI binary, installed as `EFI/BOOT/BOOTX64.EFI`.
pub const BOOTLOADER: &str = "systemd-bootx64.efi";
pub const KERNEL: &str = "vmlinuz";
/// The disk initrd (the PXE initramfs is a different one).
pub const INITRD: &str = "initrd";
/// Empty ext4 file systems made by the builder, zstd-compressed.
pub const STATE_TEMPLATE: &str = "state.ext4.zst";
pub const DATA_TEMPLATE: &str = "data.ext4.zst";
pub const MANIFEST: &str = "manifest.json";
/// The templates' zstd level: fixed, so builds reproduce; the templates
/// are almost all zeros, which every level compresses to almost nothing.
pub const TEMPLATE_ZSTD_LEVEL: i32 = 9;
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("install manifest: {0}")]
    Parse(String),
    #[error("install manifest: format {found}, this agent reads format {MANIFEST_FORMAT}")]
    Format { found: u32 },
    #[error("install manifest: no entry for {0}")]
    Missing(String),
}

/// One payload file as shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadFile {
    pub size: u64,
    /// Hex.
    pub sha256: String,
}

/// A file-system template: the compressed file, and what it expands to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Under [`INSTALL_DIR`].
    pub file: String,
    /// Uncompressed bytes: the partition's size in the image.
    pub size: u64,
    /// Hex sha256 of the uncompressed bytes.
    pub sha256: String,
}

/// The spec's `[disk]` sizes, MiB: an installed disk gets the same layout
/// as the image (DATA then grows on first boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSizes {
    pub esp_mib: u64,
    pub root_mib: u64,
    pub state_mib: u64,
    pub data_mib: u64,
}

impl From<DiskSizes> for caisson_layout::SizesMiB {
    fn from(d: DiskSizes) -> Self {
        caisson_layout::SizesMiB {
            esp: d.esp_mib,
            root: d.root_mib,
            state: d.state_mib,
            data: d.data_mib,
        }
    }
}

impl From<caisson_layout::SizesMiB> for DiskSizes {
    fn from(s: caisson_layout::SizesMiB) -> Self {
        DiskSizes {
            esp_mib: s.esp,
            root_mib: s.root,
            state_mib: s.state,
            data_mib: s.data,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallManifest {
    pub format: u32,
    /// The image's version: the installed slot A's entry carries it.
    pub version: String,
    pub kernel_release: String,
    pub disk: DiskSizes,
    /// By file name under [`INSTALL_DIR`], every file but the manifest.
    pub files: BTreeMap<String, PayloadFile>,
    /// `STATE` and `DATA`.
    pub templates: BTreeMap<String, Template>,
}

impl InstallManifest {
    /// Pretty JSON with sorted keys and a final newline: stable bytes.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    pub fn parse(text: &str) -> Result<InstallManifest, ManifestError> {
        let m: InstallManifest =
            serde_json::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        if m.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format { found: m.format });
        }
        for name in [BOOTLOADER, KERNEL, INITRD] {
            if !m.files.contains_key(name) {
                return Err(ManifestError::Missing(name.to_string()));
            }
        }
        for label in ["STATE", "DATA"] {
            let t = m
                .templates
                .get(label)
                .ok_or_else(|| ManifestError::Missing(format!("the {label} template")))?;
            if !m.files.contains_key(&t.file) {
                return Err(ManifestError::Missing(t.file.clone()));
            }
        }
        Ok(m)
    }

    pub fn template(&self, label: &str) -> Result<&Template, ManifestError> {
        self.templates
            .get(label)
            .ok_or_else(|| ManifestError::Missing(format!("the {label} template")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> InstallManifest {
        let file = |n: u64| PayloadFile {
            size: n,
            sha256: "ab".repeat(32),
        };
        InstallManifest {
            format: MANIFEST_FORMAT,
            version: "0.1.0".into(),
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            disk: DiskSizes {
                esp_mib: 512,
                root_mib: 2048,
                state_mib: 128,
                data_mib: 256,
            },
            files: [BOOTLOADER, KERNEL, INITRD, STATE_TEMPLATE, DATA_TEMPLATE]
                .iter()
                .map(|n| (n.to_string(), file(7)))
                .collect(),
            templates: [
                ("STATE", STATE_TEMPLATE, 128u64),
                ("DATA", DATA_TEMPLATE, 256),
            ]
            .iter()
            .map(|(l, f, mib)| {
                (
                    l.to_string(),
                    Template {
                        file: f.to_string(),
                        size: mib << 20,
                        sha256: "cd".repeat(32),
                    },
                )
            })
            .collect(),
        }
    }

    #[test]
    fn the_manifest_round_trips_as_stable_json() {
        let m = manifest();
        let text = m.to_json();
        assert_eq!(text, m.clone().to_json());
        assert!(text.ends_with("}\n"));
        assert_eq!(InstallManifest::parse(&text).unwrap(), m);
        assert_eq!(m.template("DATA").unwrap().size, 256 << 20);
    }

    #[test]
    fn a_manifest_missing_a_file_or_of_another_format_is_refused() {
        let mut m = manifest();
        m.files.remove(KERNEL);
        let e = InstallManifest::parse(&m.to_json()).unwrap_err();
        assert_eq!(e.to_string(), "install manifest: no entry for vmlinuz");
        let mut m = manifest();
        m.format = 2;
        assert!(matches!(
            InstallManifest::parse(&m.to_json()),
            Err(ManifestError::Format { found: 2 })
        ));
        let mut m = manifest();
        m.templates.remove("STATE");
        assert!(InstallManifest::parse(&m.to_json())
            .unwrap_err()
            .to_string()
            .contains("STATE template"));
    }
}
