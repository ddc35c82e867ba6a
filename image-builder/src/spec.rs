//! The image spec: a TOML file naming the image, its artifacts and what goes
//! where. Unknown keys are errors, and every error names the key path and the
//! line and column it is on.

use std::io;
use std::path::{Path, PathBuf};

use caisson_layout::SizesMiB;
use serde::Deserialize;
use thiserror::Error;

use crate::formats::Format;

#[derive(Debug, Error)]
pub enum SpecError {
    #[error("cannot read spec {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("spec {path}:{line}:{column}: key `{key}`: {message}")]
    Parse {
        path: PathBuf,
        key: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("spec {path}: key `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub image: ImageSection,
    #[serde(default)]
    pub artifacts: ArtifactsSection,
    pub programs: ProgramsSection,
    pub kernel: KernelSection,
    pub initrd: InitrdSection,
    pub bootloader: BootloaderSection,
    #[serde(default)]
    pub payload: Vec<Payload>,
    #[serde(default)]
    pub libraries: LibrariesSection,
    /// k3s and its air-gap images; an image without it has no k3s.
    #[serde(default)]
    pub k3s: Option<K3sSection>,
    /// Image archives for system containers, under `paths::IMAGES_DIR`.
    #[serde(default)]
    pub images: Vec<ImageArchive>,
    #[serde(default)]
    pub disk: DiskSection,
    /// Which files `build` writes besides the update bundle.
    #[serde(default)]
    pub outputs: OutputsSection,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    pub name: String,
    pub version: String,
    /// Every timestamp in the image; `SOURCE_DATE_EPOCH` overrides it.
    pub source_date_epoch: u64,
    /// A machine config to embed (relative to the spec file); `--config`
    /// overrides it.
    #[serde(default)]
    pub config: Option<PathBuf>,
}

/// Paths are relative to the spec file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsSection {
    pub lock: PathBuf,
    pub dir: PathBuf,
}

impl Default for ArtifactsSection {
    fn default() -> Self {
        ArtifactsSection {
            lock: PathBuf::from("artifacts.lock"),
            dir: PathBuf::from("artifacts"),
        }
    }
}

/// Caisson's own static programs; paths relative to the spec file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramsSection {
    pub init: PathBuf,
    pub agent: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    pub artifact: String,
    /// Appended after the `caisson.*` parameters on the entry's options line.
    #[serde(default)]
    pub cmdline: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitrdSection {
    /// Modules `init` loads, with their dependencies; built-ins are allowed.
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootloaderSection {
    pub artifact: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub artifact: String,
    /// Package paths (`usr/bin/containerd`); they land usr-merged.
    pub files: Vec<String>,
}

/// `[k3s]`: the binary goes to `paths::K3S_BINARY`, each air-gap archive
/// to `paths::K3S_IMAGES_DIR/<its file name>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3sSection {
    /// The k3s binary, an artifact of `kind = "file"` in the lock.
    #[serde(default)]
    pub artifact: Option<String>,
    /// Instead of `artifact`: a local file, unpinned. For test images that
    /// carry a stand-in (relative to the spec file).
    #[serde(default)]
    pub binary_path: Option<PathBuf>,
    /// Air-gap image archives, artifacts of `kind = "file"` in the lock.
    #[serde(default)]
    pub airgap_images: Vec<String>,
}

/// One `[[images]]` entry: an OCI or docker-archive tar (possibly
/// compressed) baked as `paths::IMAGES_DIR/<its file name>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageArchive {
    /// An artifact of `kind = "file"` in the lock.
    #[serde(default)]
    pub artifact: Option<String>,
    /// Instead of `artifact`: a local file, unpinned (relative to the spec).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// Where a baked file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<'a> {
    Artifact(&'a str),
    Path(&'a Path),
}

impl K3sSection {
    /// Validation guarantees exactly one of the two.
    pub fn binary(&self) -> Source<'_> {
        match (&self.artifact, &self.binary_path) {
            (Some(a), _) => Source::Artifact(a),
            (None, Some(p)) => Source::Path(p),
            (None, None) => Source::Artifact(""),
        }
    }
}

impl ImageArchive {
    /// Validation guarantees exactly one of the two.
    pub fn source(&self) -> Source<'_> {
        match (&self.artifact, &self.path) {
            (Some(a), _) => Source::Artifact(a),
            (None, Some(p)) => Source::Path(p),
            (None, None) => Source::Artifact(""),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibrariesSection {
    /// Packages the payload's shared libraries are taken from.
    #[serde(default)]
    pub artifacts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskSection {
    pub esp_mib: u64,
    pub root_mib: u64,
    pub state_mib: u64,
    pub data_mib: u64,
}

impl Default for DiskSection {
    fn default() -> Self {
        let d = SizesMiB::default();
        DiskSection {
            esp_mib: d.esp,
            root_mib: d.root,
            state_mib: d.state,
            data_mib: d.data,
        }
    }
}

impl DiskSection {
    pub fn sizes(&self) -> SizesMiB {
        SizesMiB {
            esp: self.esp_mib,
            root: self.root_mib,
            state: self.state_mib,
            data: self.data_mib,
        }
    }
}

/// `[outputs]`: the formats to write (the bundle is always written).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsSection {
    /// raw, qcow2, vmdk, ova, pxe; default `["raw"]`.
    #[serde(default = "default_formats")]
    pub formats: Vec<Format>,
    /// The virtual machine an OVA describes.
    #[serde(default)]
    pub ova: OvaSection,
}

fn default_formats() -> Vec<Format> {
    vec![Format::Raw]
}

impl Default for OutputsSection {
    fn default() -> Self {
        OutputsSection {
            formats: default_formats(),
            ova: OvaSection::default(),
        }
    }
}

impl OutputsSection {
    pub fn wants(&self, format: Format) -> bool {
        self.formats.contains(&format)
    }

    /// The listed formats in the order they are made.
    pub fn in_build_order(&self) -> Vec<Format> {
        let mut formats = self.formats.clone();
        formats.sort();
        formats
    }
}

/// `[outputs.ova]`: the OVF's virtual hardware defaults, changeable at
/// deploy time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OvaSection {
    pub cpus: u32,
    pub memory_mib: u64,
}

impl Default for OvaSection {
    fn default() -> Self {
        OvaSection {
            cpus: 2,
            memory_mib: 4096,
        }
    }
}

/// A spec and the directory its relative paths start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSpec {
    pub path: PathBuf,
    pub base: PathBuf,
    pub spec: Spec,
}

impl LoadedSpec {
    pub fn load(path: &Path) -> Result<LoadedSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let spec = Spec::parse(path, &text)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Ok(LoadedSpec {
            path: path.to_path_buf(),
            base,
            spec,
        })
    }

    /// A path from the spec, relative to the spec's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        self.base.join(p)
    }
}

impl Spec {
    pub fn parse(path: &Path, text: &str) -> Result<Spec, SpecError> {
        let de = toml::Deserializer::new(text);
        let spec: Spec = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = inner
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or((0, 0));
            SpecError::Parse {
                path: path.to_path_buf(),
                key,
                line,
                column,
                message: inner.message().to_string(),
            }
        })?;
        spec.validate(path)?;
        Ok(spec)
    }

    /// `<name>-<version>`: the image's file name stem and the seed of its GUIDs.
    pub fn identity(&self) -> String {
        format!("{}-{}", self.image.name, self.image.version)
    }

    fn validate(&self, path: &Path) -> Result<(), SpecError> {
        let invalid = |key: &str, reason: String| SpecError::Invalid {
            path: path.to_path_buf(),
            key: key.into(),
            reason,
        };
        let word = |key: &str, value: &str, extra: &str| -> Result<(), SpecError> {
            let ok = !value.is_empty()
                && value.chars().all(|c| {
                    c.is_ascii_alphanumeric() || c == '.' || c == '_' || extra.contains(c)
                });
            if ok {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("{value:?} must be non-empty ASCII letters, digits, '.', '_'{extra:?}"),
                ))
            }
        };
        word("image.name", &self.image.name, "-")?;
        // '+' would read as a boot counter in the entry's file name.
        word("image.version", &self.image.version, "-")?;
        if self.image.source_date_epoch > u64::from(u32::MAX) {
            return Err(invalid(
                "image.source_date_epoch",
                "must fit in 32 bits (squashfs stores u32)".into(),
            ));
        }
        for (i, p) in self.payload.iter().enumerate() {
            if p.files.is_empty() {
                return Err(invalid(
                    &format!("payload[{i}].files"),
                    "lists no files".into(),
                ));
            }
            for f in &p.files {
                if crate::tree::normalize(f)
                    .map(|n| n.is_empty())
                    .unwrap_or(true)
                {
                    return Err(invalid(
                        &format!("payload[{i}].files"),
                        format!("{f:?} is not a path inside the package"),
                    ));
                }
            }
        }
        if let Some(k3s) = &self.k3s {
            exactly_one(
                "k3s",
                "artifact",
                k3s.artifact.is_some(),
                "binary_path",
                k3s.binary_path.is_some(),
            )
            .map_err(|reason| invalid("k3s", reason))?;
            if let Some(p) = &k3s.binary_path {
                if p.as_os_str().is_empty() {
                    return Err(invalid("k3s.binary_path", "is empty".into()));
                }
            }
        }
        for (i, image) in self.images.iter().enumerate() {
            let key = format!("images[{i}]");
            exactly_one(
                &key,
                "artifact",
                image.artifact.is_some(),
                "path",
                image.path.is_some(),
            )
            .map_err(|reason| invalid(&key, reason))?;
            if let Some(p) = &image.path {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if !crate::lock::is_plain_file_name(name) || p.ends_with("..") {
                    return Err(invalid(
                        &format!("{key}.path"),
                        format!("{} has no usable file name", p.display()),
                    ));
                }
            }
        }
        for (i, m) in self.initrd.modules.iter().enumerate() {
            if m.is_empty() || m.contains('/') {
                return Err(invalid(
                    &format!("initrd.modules[{i}]"),
                    format!("{m:?} is not a module name"),
                ));
            }
        }
        self.validate_outputs(path)?;
        for (i, w) in self.kernel.cmdline.iter().enumerate() {
            if w.is_empty() || w.chars().any(char::is_whitespace) || w.starts_with("caisson.") {
                return Err(invalid(
                    &format!("kernel.cmdline[{i}]"),
                    format!(
                        "{w:?} must be one word, and caisson.* parameters are set by the builder"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Spec {
    // `is_multiple_of` is Rust 1.87; the workspace's minimum is 1.80.
    #[allow(clippy::manual_is_multiple_of)]
    fn validate_outputs(&self, path: &Path) -> Result<(), SpecError> {
        let invalid = |key: String, reason: String| SpecError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        let outputs = &self.outputs;
        if outputs.formats.is_empty() {
            return Err(invalid(
                "outputs.formats".into(),
                "lists no format; give one or more of raw, qcow2, vmdk, ova, pxe".into(),
            ));
        }
        for (i, format) in outputs.formats.iter().enumerate() {
            if outputs.formats[..i].contains(format) {
                return Err(invalid(
                    format!("outputs.formats[{i}]"),
                    format!("{format:?} is listed twice", format = format.as_str()),
                ));
            }
        }
        // The OVF puts the disk on a pvscsi controller: without its driver
        // in the initrd, init would never see the root.
        if outputs.wants(Format::Ova) && !self.initrd.modules.iter().any(|m| m == PVSCSI) {
            return Err(invalid(
                "outputs.formats".into(),
                format!(
                    "\"ova\" declares a pvscsi disk, so initrd.modules must list {PVSCSI:?} (init could not find the root without it)"
                ),
            ));
        }
        let ova = &outputs.ova;
        if ova.cpus == 0 || ova.cpus > 768 {
            return Err(invalid(
                "outputs.ova.cpus".into(),
                format!("{} is not between 1 and 768", ova.cpus),
            ));
        }
        if ova.memory_mib < 256 || ova.memory_mib % VSPHERE_MEMORY_STEP_MIB != 0 {
            return Err(invalid(
                "outputs.ova.memory_mib".into(),
                format!(
                    "{} must be at least 256 and a multiple of 4 (vSphere's rule)",
                    ova.memory_mib
                ),
            ));
        }
        Ok(())
    }
}

/// vSphere sizes VM memory in steps of 4 MiB.
const VSPHERE_MEMORY_STEP_MIB: u64 = 4;

/// The driver of VMware's paravirtual SCSI controller.
pub const PVSCSI: &str = "vmw_pvscsi";

/// Exactly one of two alternative keys of `table` is set.
fn exactly_one(table: &str, a: &str, has_a: bool, b: &str, has_b: bool) -> Result<(), String> {
    match (has_a, has_b) {
        (true, false) | (false, true) => Ok(()),
        (true, true) => Err(format!("give `{table}.{a}` or `{table}.{b}`, not both")),
        (false, false) => Err(format!(
            "needs `{table}.{a}` (pinned in the lock) or `{table}.{b}`"
        )),
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const MINIMAL: &str = r#"
[image]
name = "caisson"
version = "0.1.0"
source_date_epoch = 1700000000

[programs]
init = "init"
agent = "agent"

[kernel]
artifact = "kernel"
cmdline = ["console=ttyS0,115200"]

[initrd]
modules = ["virtio_blk"]

[bootloader]
artifact = "systemd-boot-efi"

[[payload]]
artifact = "runc"
files = ["usr/sbin/runc"]

[disk]
esp_mib = 256
"#;

    fn parse(text: &str) -> Result<Spec, SpecError> {
        Spec::parse(Path::new("s.toml"), text)
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.identity(), "caisson-0.1.0");
        assert_eq!(
            s.disk.sizes(),
            SizesMiB {
                esp: 256,
                ..SizesMiB::default()
            }
        );
        assert_eq!(s.artifacts, ArtifactsSection::default());
        assert!(s.libraries.artifacts.is_empty());
    }

    #[test]
    fn unknown_key_names_key_path_line_and_column() {
        let e =
            parse(&MINIMAL.replace("esp_mib = 256", "esp_mib = 256\nesp_size = 1")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("disk.esp_size"), "{msg}");
        assert!(msg.contains("s.toml:27:1"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn ill_typed_key_names_key_path_line_and_column() {
        let e = parse(&MINIMAL.replace("esp_mib = 256", "esp_mib = \"big\"")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("key `disk.esp_mib`"), "{msg}");
        assert!(msg.contains("s.toml:26:11"), "{msg}");
        let e = parse(&MINIMAL.replace("files = [\"usr/sbin/runc\"]", "files = [1]")).unwrap_err();
        assert!(e.to_string().contains("payload[0].files[0]"), "{e}");
    }

    #[test]
    fn missing_section_and_bad_values_are_named() {
        let e = parse(&MINIMAL.replace("[bootloader]\nartifact = \"systemd-boot-efi\"", ""))
            .unwrap_err();
        assert!(e.to_string().contains("bootloader"), "{e}");
        let e = parse(&MINIMAL.replace("0.1.0", "0.1.0+1")).unwrap_err();
        assert!(e.to_string().contains("image.version"), "{e}");
        let e =
            parse(&MINIMAL.replace("\"console=ttyS0,115200\"", "\"caisson.slot=b\"")).unwrap_err();
        assert!(e.to_string().contains("kernel.cmdline[0]"), "{e}");
        let e = parse(&MINIMAL.replace("usr/sbin/runc", "../x")).unwrap_err();
        assert!(e.to_string().contains("payload[0].files"), "{e}");
    }

    #[test]
    fn k3s_and_images_take_an_artifact_or_a_local_file() {
        let s = parse(&format!(
            "{MINIMAL}\n[k3s]\nartifact = \"k3s\"\nairgap_images = [\"k3s-airgap-images-amd64\"]\n\n\
             [[images]]\nartifact = \"pause\"\n\n[[images]]\npath = \"fixtures/ticker.oci.tar\"\n"
        ))
        .unwrap();
        let k3s = s.k3s.as_ref().unwrap();
        assert_eq!(k3s.binary(), Source::Artifact("k3s"));
        assert_eq!(k3s.airgap_images, ["k3s-airgap-images-amd64"]);
        assert_eq!(s.images[0].source(), Source::Artifact("pause"));
        assert_eq!(
            s.images[1].source(),
            Source::Path(Path::new("fixtures/ticker.oci.tar"))
        );
        let s = parse(&format!(
            "{MINIMAL}\n[k3s]\nbinary_path = \"/abs/k3s-stand-in\"\n"
        ))
        .unwrap();
        assert_eq!(
            s.k3s.unwrap().binary(),
            Source::Path(Path::new("/abs/k3s-stand-in"))
        );
        assert_eq!(parse(MINIMAL).unwrap().k3s, None);
    }

    #[test]
    fn k3s_and_images_need_exactly_one_source() {
        let e = parse(&format!("{MINIMAL}\n[k3s]\nairgap_images = []\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("needs `k3s.artifact` (pinned in the lock) or `k3s.binary_path`"),
            "{e}"
        );
        let e = parse(&format!(
            "{MINIMAL}\n[k3s]\nartifact = \"k3s\"\nbinary_path = \"k\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        let e = parse(&format!(
            "{MINIMAL}\n[[images]]\nartifact = \"a\"\npath = \"b\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("key `images[0]`"), "{e}");
        let e = parse(&format!("{MINIMAL}\n[[images]]\npath = \"..\"\n")).unwrap_err();
        assert!(e.to_string().contains("images[0].path"), "{e}");
        let e = parse(&format!(
            "{MINIMAL}\n[k3s]\nartifact = \"k3s\"\nimages = []\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("k3s.images") && e.to_string().contains("unknown field"),
            "{e}"
        );
    }

    #[test]
    fn outputs_default_to_raw_and_list_formats_in_build_order() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.outputs.formats, [Format::Raw]);
        assert_eq!(s.outputs.ova, OvaSection::default());
        let s = parse(&format!(
            "{}\n[outputs]\nformats = [\"ova\", \"raw\", \"qcow2\", \"pxe\", \"vmdk\"]\n\n[outputs.ova]\ncpus = 4\n",
            MINIMAL.replace("\"virtio_blk\"]", "\"virtio_blk\", \"vmw_pvscsi\"]")
        ))
        .unwrap();
        assert_eq!(s.outputs.in_build_order(), Format::ALL);
        assert_eq!(
            s.outputs.ova,
            OvaSection {
                cpus: 4,
                memory_mib: 4096
            }
        );
    }

    #[test]
    fn unknown_duplicate_or_missing_formats_name_their_key() {
        let with = |formats: &str| parse(&format!("{MINIMAL}\n[outputs]\nformats = {formats}\n"));
        let e = with("[\"raw\", \"iso\"]").unwrap_err().to_string();
        assert!(e.contains("key `outputs.formats[1]`"), "{e}");
        assert!(e.contains("unknown variant `iso`"), "{e}");
        assert!(e.contains("qcow2"), "the error lists what is allowed: {e}");
        let e = with("[\"raw\", \"qcow2\", \"raw\"]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `outputs.formats[2]`: \"raw\" is listed twice"),
            "{e}"
        );
        let e = with("[]").unwrap_err().to_string();
        assert!(e.contains("key `outputs.formats`: lists no format"), "{e}");
        let e = parse(&format!("{MINIMAL}\n[outputs]\nformat = [\"raw\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outputs.format") && e.contains("unknown field"),
            "{e}"
        );
    }

    #[test]
    fn an_ova_needs_the_pvscsi_driver_and_sane_hardware() {
        let e = parse(&format!("{MINIMAL}\n[outputs]\nformats = [\"ova\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `outputs.formats`") && e.contains("vmw_pvscsi"),
            "{e}"
        );
        let base = MINIMAL.replace("\"virtio_blk\"]", "\"virtio_blk\", \"vmw_pvscsi\"]");
        let ova = |table: &str| {
            parse(&format!(
                "{base}\n[outputs]\nformats = [\"ova\"]\n\n[outputs.ova]\n{table}\n"
            ))
        };
        assert!(ova("").is_ok());
        let e = ova("cpus = 0").unwrap_err().to_string();
        assert!(e.contains("key `outputs.ova.cpus`"), "{e}");
        let e = ova("memory_mib = 1022").unwrap_err().to_string();
        assert!(e.contains("key `outputs.ova.memory_mib`"), "{e}");
    }
}
