//! The manifest: what the bundle carries and how to check it. It is the one
//! signed part of a bundle; each artifact is bound to it by size and sha256.
//! Its JSON is compact, with the fields in declaration order, so the same
//! manifest always serializes to the same bytes. A reader never re-serializes:
//! the signature covers the bytes as they came.

use std::fmt;

use caisson_layout::VerityParams;
use serde::{Deserialize, Serialize};

use crate::error::{BundleError, Section};

/// The only manifest format this crate writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// Data and hash blocks of the root's dm-verity, bytes.
const VERITY_BLOCK: u64 = 4096;
/// Longest image name, version and kernel release we accept.
const MAX_WORD: usize = 128;

/// One file of the new OS version, in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// The squashfs followed by its dm-verity hash area: the slot's
    /// partition contents, block for block.
    Root,
    /// The kernel image (`vmlinuz`).
    Kernel,
    /// The initramfs, as the ESP holds it.
    Initrd,
}

impl ArtifactKind {
    /// The stream order every bundle follows.
    pub const ORDER: [ArtifactKind; 3] = [
        ArtifactKind::Root,
        ArtifactKind::Kernel,
        ArtifactKind::Initrd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Root => "root",
            ArtifactKind::Kernel => "kernel",
            ArtifactKind::Initrd => "initrd",
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub kind: ArtifactKind,
    pub size: u64,
    /// sha256 of the artifact's bytes: 64 lower-case hex digits.
    pub sha256: String,
}

/// The root's dm-verity parameters, as the slot's boot entry will carry
/// them ([`VerityParams`] with a wire form of its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleVerity {
    pub root_hash: String,
    pub salt: String,
    pub hash_offset: u64,
}

impl BundleVerity {
    pub fn params(&self) -> VerityParams {
        VerityParams {
            root_hash: self.root_hash.clone(),
            salt: self.salt.clone(),
            hash_offset: self.hash_offset,
        }
    }
}

impl From<&VerityParams> for BundleVerity {
    fn from(p: &VerityParams) -> Self {
        BundleVerity {
            root_hash: p.root_hash.clone(),
            salt: p.salt.clone(),
            hash_offset: p.hash_offset,
        }
    }
}

/// What a bundle carries. Field order is the wire order: do not reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The image name, e.g. "caisson".
    pub name: String,
    /// The image version; it becomes part of the slot's boot entry name
    /// `caisson-<version>-<slot>[+N[-M]].conf`.
    pub version: String,
    pub kernel_release: String,
    pub source_date_epoch: u64,
    pub verity: BundleVerity,
    /// The image's base kernel command line (the spec's `[kernel] cmdline`);
    /// the node adds the `caisson.*` words itself.
    pub cmdline: Vec<String>,
    /// Stream order: root, kernel, initrd.
    pub artifacts: Vec<Artifact>,
}

/// Everything in a manifest but the artifacts, which the writer measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestBase {
    pub name: String,
    pub version: String,
    pub kernel_release: String,
    pub source_date_epoch: u64,
    pub verity: BundleVerity,
    pub cmdline: Vec<String>,
}

impl ManifestBase {
    pub fn with_artifacts(self, artifacts: Vec<Artifact>) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            name: self.name,
            version: self.version,
            kernel_release: self.kernel_release,
            source_date_epoch: self.source_date_epoch,
            verity: self.verity,
            cmdline: self.cmdline,
            artifacts,
        }
    }
}

/// Just enough to tell a newer format from a broken manifest.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

impl Manifest {
    /// `<name>-<version>`, the image identity.
    pub fn identity(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }

    pub fn artifact(&self, kind: ArtifactKind) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.kind == kind)
    }

    /// Bytes of all artifacts together (valid manifests cannot overflow).
    pub fn payload_size(&self) -> u64 {
        self.artifacts
            .iter()
            .fold(0u64, |n, a| n.saturating_add(a.size))
    }

    /// The canonical bytes: compact JSON, fields in declaration order.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, integers and vectors always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse and validate manifest bytes found at `offset` in a bundle.
    pub fn from_bytes(bytes: &[u8], offset: u64) -> Result<Manifest, BundleError> {
        let json = |source| BundleError::Json {
            section: Section::Manifest,
            offset,
            source,
        };
        let FormatOnly { format } = serde_json::from_slice(bytes).map_err(json)?;
        if format != MANIFEST_FORMAT {
            return Err(BundleError::ManifestFormat { found: format });
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(json)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Everything a node relies on before it writes a byte to a slot.
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.format != MANIFEST_FORMAT {
            return Err(BundleError::ManifestFormat { found: self.format });
        }
        word("name", &self.name, "._-")?;
        // The version is part of the boot entry's file name: '+' would read as
        // a boot counter there, '/' as a directory.
        word("version", &self.version, "._~-")?;
        word("kernel_release", &self.kernel_release, "._~+-")?;
        for (i, w) in self.cmdline.iter().enumerate() {
            if w.is_empty() || w.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    format!("cmdline[{i}]"),
                    format!("{w:?} is not one word"),
                ));
            }
            if w.starts_with("caisson.") {
                return Err(invalid(
                    format!("cmdline[{i}]"),
                    format!("{w:?}: caisson.* parameters are the node's to set"),
                ));
            }
        }
        self.validate_artifacts()?;
        self.validate_verity()
    }

    fn validate_artifacts(&self) -> Result<(), BundleError> {
        let kinds: Vec<ArtifactKind> = self.artifacts.iter().map(|a| a.kind).collect();
        if kinds != ArtifactKind::ORDER {
            return Err(invalid(
                "artifacts".into(),
                format!("the kinds are {kinds:?}; a bundle carries exactly root, kernel, initrd, in that order"),
            ));
        }
        let mut total = 0u64;
        for (i, a) in self.artifacts.iter().enumerate() {
            if a.size == 0 {
                return Err(invalid(
                    format!("artifacts[{i}].size"),
                    format!("the {} artifact is empty", a.kind),
                ));
            }
            total = total.checked_add(a.size).ok_or_else(|| {
                invalid(
                    format!("artifacts[{i}].size"),
                    "the sizes add up to more than 2^64".into(),
                )
            })?;
            if !is_lower_hex(&a.sha256, 64) {
                return Err(invalid(
                    format!("artifacts[{i}].sha256"),
                    format!("{:?} is not 64 lower-case hex digits", a.sha256),
                ));
            }
        }
        let root = &self.artifacts[0];
        if root.size % VERITY_BLOCK != 0 {
            return Err(invalid(
                "artifacts[0].size".into(),
                format!(
                    "the root artifact is {} bytes, not a whole number of 4 KiB blocks",
                    root.size
                ),
            ));
        }
        Ok(())
    }

    fn validate_verity(&self) -> Result<(), BundleError> {
        let v = &self.verity;
        if !is_lower_hex(&v.root_hash, 64) {
            return Err(invalid(
                "verity.root_hash".into(),
                format!("{:?} is not 64 lower-case hex digits", v.root_hash),
            ));
        }
        if v.salt.len() < 2
            || v.salt.len() > 512
            || v.salt.len() % 2 != 0
            || !is_lower_hex(&v.salt, v.salt.len())
        {
            return Err(invalid(
                "verity.salt".into(),
                format!("{:?} is not 1 to 256 bytes of lower-case hex", v.salt),
            ));
        }
        let root_size = self
            .artifact(ArtifactKind::Root)
            .map(|a| a.size)
            .unwrap_or(0);
        if v.hash_offset == 0 || v.hash_offset % VERITY_BLOCK != 0 {
            return Err(invalid(
                "verity.hash_offset".into(),
                format!("{} is not a positive multiple of 4096", v.hash_offset),
            ));
        }
        // The hash area (superblock, then tree) follows the data in the root.
        if v.hash_offset >= root_size {
            return Err(invalid(
                "verity.hash_offset".into(),
                format!(
                    "{} is not inside the {root_size}-byte root artifact, so it has no room for the hash area",
                    v.hash_offset
                ),
            ));
        }
        Ok(())
    }
}

fn invalid(field: String, reason: String) -> BundleError {
    BundleError::InvalidManifest { field, reason }
}

/// Non-empty ASCII letters and digits plus `extra`, at most [`MAX_WORD`].
fn word(field: &str, value: &str, extra: &str) -> Result<(), BundleError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_WORD
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field.into(),
            format!("{value:?} must be 1 to {MAX_WORD} ASCII letters, digits or any of {extra:?}"),
        ))
    }
}

pub(crate) fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        ManifestBase {
            name: "caisson".into(),
            version: "0.2.0".into(),
            kernel_release: "6.1.0-56-cloud-amd64".into(),
            source_date_epoch: 1_700_000_000,
            verity: BundleVerity {
                root_hash: "ab".repeat(32),
                salt: "cd".repeat(32),
                hash_offset: 8192,
            },
            cmdline: vec!["console=ttyS0,115200".into()],
        }
        .with_artifacts(vec![
            Artifact {
                kind: ArtifactKind::Root,
                size: 16384,
                sha256: "01".repeat(32),
            },
            Artifact {
                kind: ArtifactKind::Kernel,
                size: 10,
                sha256: "02".repeat(32),
            },
            Artifact {
                kind: ArtifactKind::Initrd,
                size: 20,
                sha256: "03".repeat(32),
            },
        ])
    }

    fn field_of(e: BundleError) -> String {
        match e {
            BundleError::InvalidManifest { field, .. } => field,
            other => panic!("expected an invalid manifest, got {other}"),
        }
    }

    #[test]
    fn bytes_are_compact_json_in_declaration_order() {
        let text = String::from_utf8(sample().to_bytes()).unwrap();
        assert!(
            text.starts_with(r#"{"format":1,"name":"caisson","version":"0.2.0","kernel_release":"6.1.0-56-cloud-amd64","source_date_epoch":1700000000,"verity":{"root_hash":"#),
            "{text}"
        );
        assert!(
            text.contains(r#""artifacts":[{"kind":"root","size":16384,"sha256":"#),
            "{text}"
        );
        assert_eq!(Manifest::from_bytes(text.as_bytes(), 0).unwrap(), sample());
    }

    #[test]
    fn a_newer_format_is_named_as_such() {
        let text = r#"{"format":2,"whatever":"comes next"}"#;
        let e = Manifest::from_bytes(text.as_bytes(), 20).unwrap_err();
        assert!(matches!(e, BundleError::ManifestFormat { found: 2 }), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text =
            String::from_utf8(sample().to_bytes())
                .unwrap()
                .replacen('{', r#"{"extra":1,"#, 1);
        let e = Manifest::from_bytes(text.as_bytes(), 20).unwrap_err();
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");
        assert!(e.to_string().contains("offset 20"), "{e}");
    }

    #[test]
    fn versions_that_break_the_entry_name_are_refused() {
        for bad in ["", "1.0+1", "1/0", "1 0", "1.0\n", "é"] {
            let mut m = sample();
            m.version = bad.into();
            assert_eq!(field_of(m.validate().unwrap_err()), "version", "{bad:?}");
        }
        for good in ["0.2.0", "1.0~rc1", "2024.05.01-3", "v1_2"] {
            let mut m = sample();
            m.version = good.into();
            m.validate().unwrap();
        }
    }

    #[test]
    fn artifacts_must_be_root_kernel_initrd_in_order() {
        let mut m = sample();
        m.artifacts.swap(1, 2);
        assert_eq!(field_of(m.validate().unwrap_err()), "artifacts");
        let mut m = sample();
        m.artifacts.pop();
        assert_eq!(field_of(m.validate().unwrap_err()), "artifacts");
        let mut m = sample();
        let extra = m.artifacts[2].clone();
        m.artifacts.push(extra);
        assert_eq!(field_of(m.validate().unwrap_err()), "artifacts");
    }

    #[test]
    fn artifact_fields_are_checked() {
        let mut m = sample();
        m.artifacts[1].size = 0;
        assert_eq!(field_of(m.validate().unwrap_err()), "artifacts[1].size");
        let mut m = sample();
        m.artifacts[2].sha256 = "AB".repeat(32);
        assert_eq!(field_of(m.validate().unwrap_err()), "artifacts[2].sha256");
        let mut m = sample();
        m.artifacts[0].size = 16385;
        assert_eq!(field_of(m.validate().unwrap_err()), "artifacts[0].size");
        let mut m = sample();
        m.artifacts[1].size = u64::MAX;
        assert_eq!(field_of(m.validate().unwrap_err()), "artifacts[1].size");
    }

    #[test]
    fn verity_fields_are_checked() {
        type Edit = fn(&mut BundleVerity);
        let cases: [(Edit, &str); 6] = [
            (|v| v.root_hash = "ab".repeat(31), "verity.root_hash"),
            (|v| v.salt = "a".into(), "verity.salt"),
            (|v| v.salt = "ab".repeat(257), "verity.salt"),
            (|v| v.hash_offset = 0, "verity.hash_offset"),
            (|v| v.hash_offset = 4097, "verity.hash_offset"),
            (|v| v.hash_offset = 16384, "verity.hash_offset"),
        ];
        for (edit, field) in cases {
            let mut m = sample();
            edit(&mut m.verity);
            assert_eq!(field_of(m.validate().unwrap_err()), field);
        }
        let mut m = sample();
        m.verity.salt = "ab".repeat(256);
        m.validate().unwrap();
    }

    #[test]
    fn cmdline_words_are_single_and_not_caissons() {
        for bad in ["", "a b", "caisson.slot=a"] {
            let mut m = sample();
            m.cmdline = vec![bad.into()];
            assert_eq!(field_of(m.validate().unwrap_err()), "cmdline[0]", "{bad:?}");
        }
    }

    #[test]
    fn verity_params_round_trip() {
        let v = sample().verity;
        assert_eq!(BundleVerity::from(&v.params()), v);
    }
}
